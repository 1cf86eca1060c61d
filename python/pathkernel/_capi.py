"""ctypes mirror of include/pathkernel.h: the structs (field order and types
exactly as in the header) and the prototypes of the functions the package
calls. Private: use the functions of the `pathkernel` package."""
import ctypes
import ctypes.util
import os
import pathlib
import sys
import sysconfig

c_size = ctypes.c_size_t
c_dbl = ctypes.c_double
c_int = ctypes.c_int          # C enums (pk_status, pk_act, pk_param, ...) are int
P_dbl = ctypes.POINTER(ctypes.c_double)
P_size = ctypes.POINTER(ctypes.c_size_t)

PK_OK, PK_ERR_INPUT = 0, 2
PK_PARAM_STANDARD, PK_PARAM_NTK = 0, 1
PK_KMODE_FULL, PK_KMODE_TRACE = 0, 1
PK_SI_LOSS, PK_SI_KERNEL = 0, 1


class pk_data(ctypes.Structure):
    """struct pk_data."""
    _fields_ = [("n", c_size), ("d", c_size), ("ty", c_size), ("x", P_dbl), ("y", P_dbl),
                ("img_h", c_size), ("img_w", c_size), ("img_c", c_size), ("source", ctypes.c_char_p),
                ("class_names", ctypes.POINTER(ctypes.c_char_p)), ("n_class_names", c_size),
                ("feature_names", ctypes.POINTER(ctypes.c_char_p)), ("warning", ctypes.c_char_p)]


class pk_load_opts(ctypes.Structure):
    """struct pk_load_opts."""
    _fields_ = [("first", c_size), ("random", c_size), ("seed", ctypes.c_uint64),
                ("sep", ctypes.c_char), ("label_column", ctypes.c_char_p),
                ("class_names", ctypes.POINTER(ctypes.c_char_p)), ("n_class_names", c_size),
                ("allow_unseen", c_int)]


class pk_optim(ctypes.Structure):
    """struct pk_optim."""
    _fields_ = [("kind", c_int), ("lr", c_dbl), ("batch", c_size), ("momentum", c_dbl),
                ("beta1", c_dbl), ("beta2", c_dbl), ("eps", c_dbl), ("weight_decay", c_dbl),
                ("schedule", c_int), ("step_every", c_size), ("gamma", c_dbl), ("lr_min", c_dbl)]


class pk_train_opts(ctypes.Structure):
    """struct pk_train_opts."""
    _fields_ = [("model", ctypes.c_char_p), ("param", c_int), ("sigma_w", c_dbl), ("sigma_b", c_dbl),
                ("loss", c_int), ("optim", pk_optim), ("steps", c_size), ("seed", ctypes.c_uint64),
                ("keep", c_size), ("init_dir", ctypes.c_char_p), ("out_dir", ctypes.c_char_p),
                ("data_spec", ctypes.c_char_p), ("load", ctypes.POINTER(pk_load_opts)),
                ("standardize", c_int), ("mean", P_dbl), ("std", P_dbl)]


class pk_quad(ctypes.Structure):
    """struct pk_quad."""
    _fields_ = [("name", ctypes.c_char * 8), ("n", c_size), ("s", c_dbl * 8), ("c", c_dbl * 8), ("exact", c_int),
                ("per_piece", c_size)]


class pk_target(ctypes.Structure):
    """struct pk_target."""
    _fields_ = [("kind", c_int), ("output", c_size)]


class pk_explain_opts(ctypes.Structure):
    """struct pk_explain_opts."""
    _fields_ = [("quad", pk_quad), ("want_contrib", c_int), ("want_kernel", c_int), ("mode", c_int),
                ("block", c_size), ("mem_limit", c_size), ("progress", ctypes.c_void_p), ("ctx", ctypes.c_void_p),
                ("batch_kernel", c_int), ("target", pk_target), ("y", P_dbl)]


class pk_topk_opts(ctypes.Structure):
    """struct pk_topk_opts."""
    _fields_ = [("quad", pk_quad), ("top", c_size), ("block", c_size), ("mem_limit", c_size),
                ("progress", ctypes.c_void_p), ("ctx", ctypes.c_void_p), ("target", pk_target), ("y", P_dbl)]


P_i64 = ctypes.POINTER(ctypes.c_int64)


class pk_topk(ctypes.Structure):
    """struct pk_topk (rows for n queries, caller-allocated)."""
    _fields_ = [("pred", P_dbl), ("bias", P_dbl), ("total", P_dbl), ("regularisation", P_dbl),
                ("pro_idx", P_i64), ("pro_val", P_dbl), ("opp_idx", P_i64), ("opp_val", P_dbl)]


class pk_explain(ctypes.Structure):
    """struct pk_explain."""
    _fields_ = [("Q", c_size), ("N", c_size), ("C", c_size), ("mode", c_int),
                ("pred", P_dbl), ("bias", P_dbl), ("contrib", P_dbl), ("contrib_sum", P_dbl),
                ("kernel", P_dbl), ("regularisation", P_dbl), ("max_abs_err", c_dbl),
                ("max_rel_err", c_dbl), ("seconds", c_dbl), ("steps", c_size), ("quad", ctypes.c_char * 8),
                ("pieces", c_dbl), ("piece_nodes", c_size)]


class pk_loo_opts(ctypes.Structure):
    """struct pk_loo_opts."""
    _fields_ = [("kernel", c_int), ("mode", c_int), ("quad", pk_quad), ("ridge", c_dbl), ("grid", P_dbl),
                ("n_grid", c_size), ("mem_limit", c_size), ("keep_kernel", c_int)]


class pk_loo(ctypes.Structure):
    """struct pk_loo."""
    _fields_ = [("n", c_size), ("C", c_size), ("kernel", c_int), ("mode", c_int), ("ridge", c_dbl),
                ("mean_diag", c_dbl), ("n_grid", c_size), ("chosen", c_size), ("grid", P_dbl), ("grid_err", P_dbl),
                ("grid_acc", P_dbl), ("grid_score", P_dbl), ("Y", P_dbl), ("alpha", P_dbl), ("resid", P_dbl),
                ("score", P_dbl), ("pred", P_dbl), ("accuracy", c_dbl), ("err", c_dbl), ("K", P_dbl),
                ("seconds_kernel", c_dbl), ("seconds_solve", c_dbl)]


class pk_record_opts(ctypes.Structure):
    """struct pk_record_opts."""
    _fields_ = [("origin", ctypes.c_char_p), ("float32", c_int), ("step_tol", c_dbl)]


PK_LDS_MAX_ENSEMBLES = 8


class pk_lds_opts(ctypes.Structure):
    """struct pk_lds_opts."""
    _fields_ = [("train", pk_train_opts), ("epochs", c_size), ("target", pk_target), ("subsets", c_size),
                ("alpha", c_dbl), ("subset_seed", ctypes.c_uint64), ("reseed", c_int), ("quad", pk_quad),
                ("ensembles", c_size * PK_LDS_MAX_ENSEMBLES), ("n_ensembles", c_size), ("dir", ctypes.c_char_p),
                ("mem_limit", c_size), ("progress", ctypes.c_void_p), ("ctx", ctypes.c_void_p)]


class pk_lds(ctypes.Structure):
    """struct pk_lds."""
    _fields_ = [("M", c_size), ("Q", c_size), ("N", c_size), ("n_methods", c_size),
                ("name", ctypes.POINTER(ctypes.c_char * 32)), ("lds", P_dbl), ("se", P_dbl), ("valid", P_size),
                ("seconds", P_dbl), ("per_query", P_dbl), ("predicted", P_dbl), ("retrained", P_dbl),
                ("full", P_dbl), ("mask", ctypes.POINTER(ctypes.c_ubyte)), ("seconds_retrain", c_dbl),
                ("seconds_total", c_dbl), ("steps", c_size), ("subset_steps", c_size)]


STRUCTS = {"pk_record_opts": pk_record_opts, "pk_target": pk_target, "pk_lds_opts": pk_lds_opts, "pk_lds": pk_lds,
           "pk_data": pk_data, "pk_load_opts": pk_load_opts, "pk_optim": pk_optim,
           "pk_train_opts": pk_train_opts, "pk_quad": pk_quad, "pk_explain_opts": pk_explain_opts,
           "pk_explain": pk_explain, "pk_topk_opts": pk_topk_opts, "pk_topk": pk_topk,
           "pk_loo_opts": pk_loo_opts, "pk_loo": pk_loo}

P_run = ctypes.c_void_p
P_model = ctypes.c_void_p
P_recorder = ctypes.c_void_p
P_u32 = ctypes.POINTER(ctypes.c_uint32)

_PROTOS = {
    # name: (restype, argtypes)
    "pk_last_error": (ctypes.c_char_p, []),
    "pk_status_str": (ctypes.c_char_p, [c_int]),
    "pk_threads_set": (None, [c_int]),
    "pk_threads_get": (c_int, []),
    "pk_data_standardize": (None, [ctypes.POINTER(pk_data), P_dbl, P_dbl]),
    "pk_data_moments": (None, [ctypes.POINTER(pk_data), P_dbl, P_dbl]),
    "pk_model_new": (c_int, [ctypes.c_char_p, c_size, c_size, c_int, c_dbl, c_dbl, ctypes.POINTER(P_model)]),
    "pk_model_free": (None, [P_model]),
    "pk_model_spec": (None, [P_model, ctypes.c_char_p, c_size]),
    "pk_model_n_params": (c_size, [P_model]),
    "pk_model_n_inputs": (c_size, [P_model]),
    "pk_model_n_outputs": (c_size, [P_model]),
    "pk_model_predict": (c_int, [P_model, P_dbl, P_dbl, c_size, P_dbl]),
    "pk_loss_parse": (c_int, [ctypes.c_char_p, ctypes.POINTER(c_int)]),
    "pk_loss_name": (ctypes.c_char_p, [c_int]),
    "pk_optim_parse": (c_int, [ctypes.c_char_p, ctypes.POINTER(c_int)]),
    "pk_optim_name": (ctypes.c_char_p, [c_int]),
    "pk_schedule_parse": (c_int, [ctypes.c_char_p, ctypes.POINTER(c_int)]),
    "pk_train_opts_defaults": (pk_train_opts, []),
    "pk_load_opts_defaults": (pk_load_opts, []),
    "pk_train": (c_int, [ctypes.POINTER(pk_data), ctypes.POINTER(pk_train_opts), ctypes.c_void_p, ctypes.c_void_p]),
    "pk_run_open": (c_int, [ctypes.c_char_p, ctypes.POINTER(P_run)]),
    "pk_run_close": (None, [P_run]),
    "pk_run_model": (P_model, [P_run]),
    "pk_run_loss": (c_int, [P_run]),
    "pk_run_optim": (ctypes.POINTER(pk_optim), [P_run]),
    "pk_run_steps": (c_size, [P_run]),
    "pk_run_keep": (c_size, [P_run]),
    "pk_run_dir": (ctypes.c_char_p, [P_run]),
    "pk_run_n_train": (c_size, [P_run]),
    "pk_run_data_spec": (ctypes.c_char_p, [P_run]),
    "pk_run_mean": (P_dbl, [P_run]),
    "pk_run_classes": (ctypes.POINTER(ctypes.c_char_p), [P_run, P_size]),
    "pk_run_features": (ctypes.POINTER(ctypes.c_char_p), [P_run]),
    "pk_data_load": (c_int, [ctypes.c_char_p, ctypes.POINTER(pk_load_opts), ctypes.POINTER(pk_data)]),
    "pk_data_free": (None, [ctypes.POINTER(pk_data)]),
    "pk_run_std": (P_dbl, [P_run]),
    "pk_run_weights": (c_int, [P_run, c_size, P_dbl]),
    "pk_run_batch": (c_int, [P_run, c_size, ctypes.POINTER(P_u32), P_size]),
    "pk_run_lr": (c_dbl, [P_run, c_size]),
    "pk_run_recorded": (ctypes.c_char_p, [P_run]),
    "pk_run_step_residual": (c_dbl, [P_run, P_size]),
    "pk_model_weights_write": (c_int, [P_model, P_dbl, ctypes.c_char_p]),
    "pk_record_opts_defaults": (pk_record_opts, []),
    "pk_record_begin": (c_int, [ctypes.POINTER(pk_data), ctypes.POINTER(pk_train_opts), ctypes.POINTER(pk_record_opts),
                                P_dbl, ctypes.POINTER(P_recorder)]),
    "pk_record_step": (c_int, [P_recorder, c_dbl, P_u32, c_size, P_dbl, P_dbl]),
    "pk_record_end": (c_int, [P_recorder]),
    "pk_record_free": (None, [P_recorder]),
    "pk_run_attach_data": (c_int, [P_run, ctypes.POINTER(pk_data)]),
    "pk_kernel_tangent": (c_int, [P_model, P_dbl, P_dbl, c_size, P_dbl, c_size, c_int, P_dbl]),
    "pk_kernel_infinite": (c_int, [P_model, P_dbl, c_size, P_dbl, c_size, c_int, P_dbl]),
    "pk_quad_parse": (c_int, [ctypes.c_char_p, ctypes.POINTER(pk_quad)]),
    "pk_explain_opts_defaults": (pk_explain_opts, []),
    "pk_target_parse": (c_int, [ctypes.c_char_p, ctypes.POINTER(pk_target)]),
    "pk_lds_opts_defaults": (pk_lds_opts, []),
    "pk_lds_run": (c_int, [ctypes.POINTER(pk_data), ctypes.POINTER(pk_data), ctypes.POINTER(pk_lds_opts),
                           ctypes.POINTER(pk_lds)]),
    "pk_lds_free": (None, [ctypes.POINTER(pk_lds)]),
    "pk_lds_score": (c_int, [P_dbl, ctypes.POINTER(ctypes.c_ubyte), P_dbl, c_size, c_size, c_size, P_dbl, P_dbl,
                             P_dbl, P_dbl, P_size]),
    "pk_spearman": (c_dbl, [P_dbl, c_size, P_dbl, c_size, c_size]),
    "pk_run_explain": (c_int, [P_run, P_dbl, c_size, ctypes.POINTER(pk_explain_opts), ctypes.POINTER(pk_explain)]),
    "pk_explain_free": (None, [ctypes.POINTER(pk_explain)]),
    "pk_run_path_kernel": (c_int, [P_run, P_dbl, c_size, P_dbl, c_size, c_int, ctypes.POINTER(pk_quad),
                                   ctypes.c_void_p, ctypes.c_void_p, P_dbl]),
    "pk_kernel_kind_parse": (c_int, [ctypes.c_char_p, ctypes.POINTER(c_int)]),
    "pk_loo_opts_defaults": (pk_loo_opts, []),
    "pk_run_loo": (c_int, [P_run, ctypes.POINTER(pk_loo_opts), ctypes.POINTER(pk_loo)]),
    "pk_loo_free": (None, [ctypes.POINTER(pk_loo)]),
    "pk_si_form_parse": (c_int, [ctypes.c_char_p, ctypes.POINTER(c_int)]),
    "pk_run_self_influence": (c_int, [P_run, c_int, ctypes.POINTER(pk_quad), P_dbl]),
    "pk_rank": (c_int, [P_dbl, c_size, c_size, c_int, c_size, P_size, P_size]),
    "pk_topk_opts_defaults": (pk_topk_opts, []),
    "pk_run_attribute": (c_int, [P_run, P_dbl, c_size, P_size, ctypes.POINTER(pk_topk_opts), ctypes.POINTER(pk_topk)]),
    "pk_run_attribute_group": (c_size, [P_run, c_size, ctypes.POINTER(pk_topk_opts), ctypes.POINTER(c_size)]),
}

_LIB = None


_NAMES = ("libpathkernel.so", "libpathkernel.so.0")


def _installed_dirs():
    """Library directories where an installed libpathkernel may be, most
    specific first: those of the prefix this package is installed under (a
    package in P/lib/python3.X/site-packages goes with a library in P/lib, as
    when both are installed into one prefix or venv), $LD_LIBRARY_PATH, then
    the standard ones (sys.prefix, /usr/local, /usr)."""
    arch = sysconfig.get_config_var("MULTIARCH")
    libs = ["lib", "lib64"] + ([f"lib/{arch}"] if arch else [])
    dirs = []
    here = pathlib.Path(__file__).resolve().parent
    for anc in here.parents:
        if anc.name in ("site-packages", "dist-packages"):
            # P/lib/python3.X/site-packages (or P/lib/python3/dist-packages)
            prefix = anc.parent.parent.parent
            dirs += [prefix / d for d in libs]
            break
    dirs += [pathlib.Path(d) for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for prefix in (sys.prefix, "/usr/local", "/usr"):
        dirs += [pathlib.Path(prefix) / d for d in libs]
    return dirs


def library_path():
    """Where the shared library is looked for: $PATHKERNEL_LIB, else the build
    tree (../../build/libpathkernel.so from the package), else an installed
    one: under the prefix the package is installed in, in $LD_LIBRARY_PATH,
    in the standard library directories (sys.prefix, /usr/local, /usr: lib,
    lib64, lib/<multiarch>), else where the linker finds it
    (ctypes.util.find_library). None when nothing is found."""
    env = os.environ.get("PATHKERNEL_LIB")
    if env:
        return env
    tree = pathlib.Path(__file__).resolve().parents[2] / "build" / "libpathkernel.so"
    if tree.is_file():
        return str(tree)
    for d in _installed_dirs():
        for name in _NAMES:
            if (d / name).is_file():
                return str(d / name)
    return ctypes.util.find_library("pathkernel")


def lib():
    """The loaded libpathkernel with its prototypes declared (loaded once)."""
    global _LIB
    if _LIB is None:
        path = library_path()
        if not path:
            raise OSError("libpathkernel.so not found: set PATHKERNEL_LIB to its path, build the tree "
                          "(cmake --build build), or install the library (cmake --install build --prefix P) "
                          "into the prefix of this package, a standard library directory or one in "
                          "LD_LIBRARY_PATH")
        try:
            h = ctypes.CDLL(path)
        except OSError as e:
            raise OSError(f"cannot load libpathkernel from {path}: {e}") from None
        for name, (res, args) in _PROTOS.items():
            f = getattr(h, name)
            f.restype, f.argtypes = res, args
        _LIB = h
    return _LIB
