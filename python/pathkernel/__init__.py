"""pathkernel: train dense networks by gradient descent, record the whole path,
and read the trained network as an exact kernel machine over its training
examples -- a ctypes binding of libpathkernel.

    >>> import numpy as np, pathkernel as pk
    >>> run = pk.train(X, y, model="mlp:16:tanh", steps=50, out="run")
    >>> run.predict(X[:3])                   # (3, C) outputs
    >>> e = run.explain(X[:3])               # pred = bias + contrib.sum(1) + ...
    >>> run.attribute(X[:3], top=5)          # strongest proponents / opponents

pathkernel.torch (which imports torch; nothing else here does) records a
PyTorch training loop as a run and moves weights between the two.

The library is found through $PATHKERNEL_LIB, else the build tree
(build/libpathkernel.so next to python/), else the linker's search path.
Queries are given in the raw feature space: a run's standardisation (from
`pathkernel train --standardize` or train(..., standardize=True)) is applied
as the CLI applies it. Library failures raise ValueError (bad input) or
RuntimeError (anything else) with the library's message.
"""
import ctypes
import os
import pathlib
import shutil
import tempfile

import numpy as np

from . import _capi
from ._capi import lib as _lib

__all__ = ["train", "open_run", "lds", "Lds", "load_data", "Data", "ntk", "Run", "Explanation", "Attribution", "Loo", "set_threads", "get_threads",
           "PathkernelError", "PathkernelInputError", "__version__"]
__version__ = "0.1.0"


class PathkernelError(RuntimeError):
    """A library failure other than bad input (I/O, memory, divergence, an
    inconsistent run directory). `status` is the pk_status code."""

    def __init__(self, msg, status):
        super().__init__(msg)
        self.status = status


class PathkernelInputError(ValueError):
    """A library failure caused by bad input (PK_ERR_INPUT)."""

    def __init__(self, msg, status=_capi.PK_ERR_INPUT):
        super().__init__(msg)
        self.status = status


def _check(status):
    """Raise for a non-zero pk_status, with pk_last_error() as the message."""
    if status == _capi.PK_OK:
        return
    L = _lib()
    msg = (L.pk_last_error() or b"").decode("utf-8", "replace")
    if not msg:
        msg = (L.pk_status_str(status) or b"error").decode("utf-8", "replace")
    if status == _capi.PK_ERR_INPUT:
        raise PathkernelInputError(msg, status)
    raise PathkernelError(msg, status)


def set_threads(n):
    """Threads used by BLAS and the library's loops (0 = all cores); results
    never depend on it."""
    n = int(n)
    if n < 0 or n > 1024:
        raise ValueError(f"threads: {n} is not in 0..1024")
    _lib().pk_threads_set(n)


def get_threads():
    """Threads the library currently uses."""
    return int(_lib().pk_threads_get())


# ---------------------------------------------------------------- arrays

def _ptr(a):
    return a.ctypes.data_as(_capi.P_dbl)


def _as_matrix(a, name, d=None):
    """(n, d) float64 C-contiguous array (no copy when it already is one)."""
    if isinstance(a, np.ndarray) and a.dtype == np.float64 and a.flags.c_contiguous and a.ndim == 2:
        out = a
    else:
        arr = np.asarray(a)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"{name}: expected numbers, got an array of dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"{name}: complex numbers are not supported (dtype {arr.dtype})")
        if arr.ndim != 2:
            raise ValueError(f"{name}: expected a 2-d array (examples, features), got {arr.ndim} dimension(s) "
                             f"with shape {arr.shape}")
        out = np.ascontiguousarray(arr, dtype=np.float64)
    if out.shape[0] == 0:
        raise ValueError(f"{name}: no examples (shape {out.shape})")
    if out.shape[1] == 0:
        raise ValueError(f"{name}: no features (shape {out.shape})")
    if d is not None and out.shape[1] != d:
        raise ValueError(f"{name}: {out.shape[1]} features per example, the run has {d}")
    if not np.all(np.isfinite(out)):
        bad = np.argwhere(~np.isfinite(out))[0]
        raise ValueError(f"{name}: NaN or Inf at [{bad[0]}, {bad[1]}]")
    return out


def _flat_images(X):
    """Images (n, C, H, W) or (n, H, W) as rows (n, C H W), NCHW order; any
    other array as it is."""
    if isinstance(X, np.ndarray) and X.ndim in (3, 4):
        return X.reshape(X.shape[0], -1)
    return X


def _image_shape(X, input_shape):
    """(C, H, W) of the examples: input_shape, or X's own when it is (n, C,
    H, W) or (n, H, W); None for rows without a shape."""
    if input_shape is not None:
        try:
            shape = tuple(int(v) for v in input_shape)
        except (TypeError, ValueError):
            raise ValueError(f"input_shape: expected (C, H, W), got {input_shape!r}") from None
        if len(shape) != 3 or min(shape) <= 0:
            raise ValueError(f"input_shape: expected three positive integers (C, H, W), got {input_shape!r}")
        return shape
    arr = np.asarray(X) if not isinstance(X, np.ndarray) else X
    if arr.ndim == 4:
        return tuple(arr.shape[1:])
    if arr.ndim == 3:
        return (1,) + tuple(arr.shape[1:])
    return None


def _as_targets(y, n):
    """(n, ty) float64 targets from (n,) class indices or (n, k) reals."""
    arr = np.asarray(y)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"y: expected numbers, got an array of dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"y: complex numbers are not supported (dtype {arr.dtype})")
    if arr.ndim not in (1, 2):
        raise ValueError(f"y: expected (n,) class indices or (n, k) targets, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"y: {arr.shape[0]} targets for {n} examples in X")
    if arr.ndim == 2 and arr.shape[1] == 0:
        raise ValueError(f"y: no target columns (shape {arr.shape})")
    out = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"y: NaN or Inf at index {np.argwhere(~np.isfinite(out))[0].tolist()}")
    return out


def _data(x, y=None, classes=None, features=None):
    """A pk_data viewing x (n, d) and y (n, ty) (which must stay alive), with
    the names of the classes and the features (_names() arrays, kept alive by
    the caller)."""
    d = _capi.pk_data()
    d.n, d.d = x.shape
    d.x = _ptr(x)
    if y is not None:
        d.ty = 1 if y.ndim == 1 else y.shape[1]
        d.y = _ptr(y)
    if classes is not None:
        d.class_names = ctypes.cast(classes, ctypes.POINTER(ctypes.c_char_p))
        d.n_class_names = len(classes)
    if features is not None:
        d.feature_names = ctypes.cast(features, ctypes.POINTER(ctypes.c_char_p))
    return d


def _names(names, what, unique=True):
    """A C array of UTF-8 strings from a list of names (one line each,
    distinct when `unique`)."""
    names = [str(s) for s in names]
    for s in names:
        if not s or "\n" in s or "\r" in s:
            raise ValueError(f"{what}: {s!r} is not a name (one line, not empty)")
    if unique and len(set(names)) != len(names):
        raise ValueError(f"{what}: a name appears twice")
    return (ctypes.c_char_p * len(names))(*(s.encode() for s in names))


def _read_names(arr, n):
    return [arr[i].decode() for i in range(n)] if arr else None


def _class_targets(y, classes):
    """Text labels y (n,) -> (class indices (n,) float64, classes): through
    `classes` (their order) when given, else their sorted distinct values."""
    labels = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(y, dtype=object).ravel()]
    if classes is None:
        classes = sorted(set(labels))
    classes = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    missing = [(i, s) for i, s in enumerate(labels) if s not in index]
    if missing:
        i, s = missing[0]
        raise ValueError(f"y: label {s!r} (example {i}) is not one of the classes {classes}")
    return np.array([index[s] for s in labels], dtype=np.float64), classes


class _RunDir:
    """A new run directory `out` (a temporary one for None) holding the
    training data, train_x.npy (with the images' shape when `shape`) and
    train_y.npy, which `spec` (bytes) names for the run; refused(extra)
    removes what was made when the library refused before writing run.json."""

    def __init__(self, out, x, y, shape):
        if out is None:
            out = tempfile.mkdtemp(prefix="pathkernel-run-")
        self.path = pathlib.Path(out)
        if (self.path / "run.json").exists():
            raise ValueError(f"{self.path} already holds a run: remove it or choose another out")
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.xp, self.yp = self.path / "train_x.npy", self.path / "train_y.npy"
        np.save(self.xp, x.reshape((x.shape[0],) + tuple(shape)) if shape else x)  # the CLI reads the shape back
        np.save(self.yp, y)
        self.spec = f"npy:{self.xp.resolve()},{self.yp.resolve()}".encode()
        self.out = os.fsencode(os.fspath(self.path))

    def refused(self, extra=()):
        if (self.path / "run.json").exists():
            return
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        self.xp.unlink(missing_ok=True)
        self.yp.unlink(missing_ok=True)
        for d in extra:
            shutil.rmtree(d, ignore_errors=True)


class Data:
    """A data set loaded by load_data(): x (n, d) float64 features, y (n,)
    class indices (NaN: no label) or (n, k) targets, classes (the names of
    classes 0, 1, ..., or None), features (the header's names of the d
    columns of x, or None), warning (what loading let pass, or None) and
    source (the spec)."""

    def __init__(self, x, y, classes, features, warning, source):
        self.x, self.y, self.classes, self.features = x, y, classes, features
        self.warning, self.source = warning, source

    def __repr__(self):
        return (f"Data({self.source!r}, n={self.x.shape[0]}, d={self.x.shape[1]}, "
                f"classes={self.classes!r})")


def load_data(spec, sep=None, label_column=None, class_names=None, allow_unseen=False, first=0, random=0,
              seed=0):
    """Load a data spec as the CLI does (`--data SPEC`): PATH.csv, .csv.gz,
    .tsv, .tsv.gz, npy:X.npy,Y.npy, PATH.svm, idx:IMAGES,LABELS,
    fashion-mnist:train|test. For CSV and TSV: sep (one character; None
    detects comma, semicolon or tab) and label_column (a header name, or an
    index, 0-based, negative from the end; None: the last column). Text labels
    become class indices: through class_names (a list, in class order) when
    given, else their sorted distinct values; allow_unseen: a label not among
    class_names gets NaN and a warning instead of an error. first/random/seed
    select examples. Returns a Data."""
    L = _lib()
    lo = L.pk_load_opts_defaults()
    if sep is not None:
        if not isinstance(sep, str) or len(sep.encode()) != 1:
            raise ValueError(f"sep: {sep!r} is not one character")
        lo.sep = sep.encode()
    col_b = None
    if label_column is not None:
        col_b = str(label_column).encode()
        lo.label_column = col_b
    names = None
    if class_names is not None:
        names = _names(class_names, "class_names")
        lo.class_names = ctypes.cast(names, ctypes.POINTER(ctypes.c_char_p))
        lo.n_class_names = len(names)
    lo.allow_unseen = 1 if allow_unseen else 0
    lo.first, lo.random, lo.seed = _size(first, "first"), _size(random, "random"), _size(seed, "seed")
    d = _capi.pk_data()
    _check(L.pk_data_load(str(spec).encode(), ctypes.byref(lo), ctypes.byref(d)))
    try:
        n, dim, ty = d.n, d.d, d.ty
        x = np.ctypeslib.as_array(d.x, (n, dim)).copy()
        y = np.ctypeslib.as_array(d.y, (n, ty)).copy()
        if ty == 1:
            y = y[:, 0]
        classes = _read_names(d.class_names, d.n_class_names)
        features = _read_names(d.feature_names, dim)
        warning = d.warning.decode() if d.warning else None
    finally:
        L.pk_data_free(ctypes.byref(d))
    return Data(x, y, classes, features, warning, str(spec))


def _parse_quad(quad):
    q = _capi.pk_quad()
    _check(_lib().pk_quad_parse(str(quad).encode(), ctypes.byref(q)))
    return q


def _parse_target(target):
    t = _capi.pk_target()
    _check(_lib().pk_target_parse(str(target).encode(), ctypes.byref(t)))
    return t


def _target_labels(y, Q, ty, target):
    """The queries' targets for a target that reads them, (Q, ty) float64."""
    if y is None:
        raise ValueError(f"target={target!r} reads the queries' labels: pass y")
    a = _as_targets(y, Q)
    if a.size != Q * ty:
        raise ValueError(f"y: {a.size // Q} target columns per query, the run's loss needs {ty}")
    return a.reshape(Q, ty)


def _parse_mode(mode):
    if mode == "full":
        return _capi.PK_KMODE_FULL
    if mode == "trace":
        return _capi.PK_KMODE_TRACE
    raise ValueError(f"mode: '{mode}' is not full or trace")


def _size(v, name, minimum=0):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name}: {v} is less than {minimum}")
    return int(v)


def _real(v, name):
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {v!r}") from None
    if not np.isfinite(f):
        raise ValueError(f"{name}: {v!r} is not finite")
    return f


# ------------------------------------------------------------------ results

class Loo:
    """What Run.loo computes for N training examples and C outputs (MATH.md
    section 7, "Leave-one-out"):

    alpha (N, C)       dual coefficients (K + ridge I)^-1 Y (full mode: on vec Y)
    resid (N, C)       y_i - yhat_{-i}, exact: the residual on the machine refitted without i
    score (N,)         the mislabel score: the residual of the example's own class (softmax)
    pred (N,)          the leave-one-out predicted class (NaN for mse)
    accuracy           the leave-one-out accuracy (NaN for mse)
    ridge, ridge_relative   the ridge used, absolute and over the kernel's mean diagonal
    grid, grid_err, grid_acc   (G,) ridges tried (relative), mean |r_i|^2 and accuracy at each
    kernel             the kernel the machine used when keep_kernel, else None
    seconds_kernel, seconds_solve
    """


class Explanation:
    """What Run.explain computes for Q queries, N training examples and C
    outputs (MATH.md section 3):

    pred (Q, C)            f(x; w_T)
    bias (Q, C)            f(x; w_0)
    contrib (Q, N, C)      phi_i(x): pred = bias + contrib.sum(1) + regularisation + quadrature error
    kernel                 path kernel: (Q, N) in trace mode or for one output, else (Q, N, C, C)
    coef (Q, N)            phi_i(x) / K^p(x, x_i) for one output (NaN where the kernel is 0), else None
    regularisation (Q, C)  what weight decay moved, owned by no example (zeros without decay)
    max_abs_err, max_rel_err   the representation's residual
    quad, steps, seconds   the rule, the steps replayed and the time taken
    pieces, piece_nodes    the exact rule: pieces per query and step (mean), nodes per piece (else 0)
    """

    def __repr__(self):
        Q, N, C = self.contrib.shape
        return (f"Explanation(Q={Q}, N={N}, C={C}, quad={self.quad!r}, "
                f"max_abs_err={self.max_abs_err:.3g}, max_rel_err={self.max_rel_err:.3g})")


class Attribution:
    """Attribution of one query's output `cls` (Run.attribute): the training
    examples that pushed f_cls(x) up most (proponents, strongest first) and
    down most (opponents), with their contributions phi_i(x)[cls]; exact ties
    are ranked by the smaller index, as `pathkernel attribute` ranks them.

    query, cls, pred, bias, total (sum of all contributions), regularisation,
    residual (pred - bias - total - regularisation), proponents and opponents
    (int64 index arrays), proponent_contrib and opponent_contrib (float64).
    """

    def __repr__(self):
        return (f"Attribution(query={self.query}, cls={self.cls}, proponents={self.proponents.tolist()}, "
                f"opponents={self.opponents.tolist()})")


# --------------------------------------------------------------------- runs

class Run:
    """An opened run directory (from train() or `pathkernel train`).

    Attributes: path, steps (T), keep, n_train, n_params, dims (layer widths,
    inputs first), n_outputs, loss, optim, model (spec string), recorded (who
    took the steps of a run recorded from another trainer, e.g. "PyTorch
    1.13.1 float64": pathkernel.torch.Recorder; None for runs pathkernel
    trained), mean and std
    (the recorded feature standardisation, or None), classes (the names of
    classes 0, 1, ..., or None) and features (the names of the inputs from a
    CSV header, or None). Close with close() or use
    it as a context manager; it is closed when garbage-collected too.
    """

    def __init__(self, path, _train=None):
        self._h = None
        L = _lib()
        h = _capi.P_run()
        _check(L.pk_run_open(os.fsencode(os.fspath(path)), ctypes.byref(h)))
        self._h = h
        self._train = None
        m = L.pk_run_model(h)
        self.path = pathlib.Path(os.fsdecode(L.pk_run_dir(h)))
        self.steps = int(L.pk_run_steps(h))
        self.keep = int(L.pk_run_keep(h))
        self.n_train = int(L.pk_run_n_train(h))
        self.n_params = int(L.pk_model_n_params(m))
        self.n_inputs, self.n_outputs = int(L.pk_model_n_inputs(m)), int(L.pk_model_n_outputs(m))
        self.loss = L.pk_loss_name(L.pk_run_loss(h)).decode()
        self.optim = L.pk_optim_name(L.pk_run_optim(h).contents.kind).decode()
        buf = ctypes.create_string_buffer(2048)  # a spec with residual blocks may be long
        L.pk_model_spec(m, buf, 2048)
        self.model = buf.value.decode()
        # mlp:H1,H2,...:ACT: the widths from inputs to outputs
        hidden = self.model.split(":")[1] if self.model.startswith("mlp:") else ""
        self.dims = (self.n_inputs, *(int(h) for h in hidden.split(",") if h), self.n_outputs)
        mp, sp = L.pk_run_mean(h), L.pk_run_std(h)
        d = self.n_inputs
        self.mean = np.ctypeslib.as_array(mp, (d,)).copy() if mp else None
        self.std = np.ctypeslib.as_array(sp, (d,)).copy() if sp else None
        rec = L.pk_run_recorded(h)
        self.recorded = rec.decode() if rec else None
        nc = ctypes.c_size_t()
        self.classes = _read_names(L.pk_run_classes(h, ctypes.byref(nc)), nc.value)
        self.features = _read_names(L.pk_run_features(h), d)
        if _train is not None:
            self._attach(*_train)

    def _attach(self, x, y):
        """Give the run its training data (already standardised like the run)."""
        data = _data(x, y)
        _check(_lib().pk_run_attach_data(self._handle(), ctypes.byref(data)))
        self._train = (x, y, data)   # the library keeps a pointer: keep them alive

    def _handle(self):
        if self._h is None:
            raise ValueError("the run is closed")
        return self._h

    def close(self):
        """Close the run (idempotent)."""
        if self._h is not None:
            _lib().pk_run_close(self._h)
            self._h = None
            self._train = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        return (f"Run({str(self.path)!r}, model={self.model!r}, loss={self.loss!r}, optim={self.optim!r}, "
                f"steps={self.steps}, n_train={self.n_train})")

    # -- helpers

    def _queries(self, X, name="X"):
        """Queries as (n, d) float64 in the run's feature space (standardised
        by the library's own pk_data_standardize when the run records it)."""
        x = _as_matrix(_flat_images(X), name, self.n_inputs)
        if self.mean is not None:
            x = np.array(x, dtype=np.float64, order="C", copy=True)
            data = _data(x)
            _lib().pk_data_standardize(ctypes.byref(data), _ptr(self.mean), _ptr(self.std))
        return x

    def _step(self, step):
        if step is None or (isinstance(step, str) and step == "final"):
            return self.steps
        if isinstance(step, str) and step == "init":
            return 0
        t = _size(step, "step")
        if t > self.steps:
            raise ValueError(f"step {t}: the run has steps 0..{self.steps}")
        return t

    def weights(self, step=None):
        """Raw parameter vector w_t (P,) after step `step` (None or "final":
        the last, "init" or 0: the initial weights)."""
        t = self._step(step)
        w = np.empty(self.n_params)
        _check(_lib().pk_run_weights(self._handle(), t, _ptr(w)))
        return w

    def layers(self, step=None):
        """The effective weights of every layer with parameters at step `step`
        (as weights()): a list of (W, b) float64 pairs in nn.Linear's (out, in)
        and nn.Conv2d's (out, in, kh, kw) layouts, the files `pathkernel
        weights` writes."""
        w = self.weights(step)
        L = _lib()
        with tempfile.TemporaryDirectory(prefix="pathkernel-weights-") as d:
            _check(L.pk_model_weights_write(L.pk_run_model(self._handle()), _ptr(w), os.fsencode(d)))
            out, k = [], 1
            while os.path.exists(os.path.join(d, f"W{k}.npy")):
                out.append((np.load(os.path.join(d, f"W{k}.npy")), np.load(os.path.join(d, f"b{k}.npy"))))
                k += 1
        return out

    def batches(self):
        """The training examples of every step: a list of T int64 index
        arrays (a full batch lists all examples in order)."""
        L = _lib()
        out = []
        for t in range(self.steps):
            p, n = _capi.P_u32(), ctypes.c_size_t()
            _check(L.pk_run_batch(self._handle(), t, ctypes.byref(p), ctypes.byref(n)))
            out.append(np.ctypeslib.as_array(p, (n.value,)).astype(np.int64))
        return out

    def lrs(self):
        """The learning rate of every step, (T,) float64."""
        L = _lib()
        return np.array([L.pk_run_lr(self._handle(), t) for t in range(self.steps)])

    def step_residual(self):
        """For a recorded run, after a replay (explain, attribute, ...): the
        largest relative difference |w_{t+1} - step(w_t)| / |step(w_t) - w_t|
        between a recorded step and the step pathkernel's optimiser takes from
        the recorded w_t, and the step (1..T) it was at ((0.0, 0) before any
        replay). A step beyond the run's tolerance fails the replay itself."""
        at = ctypes.c_size_t()
        r = _lib().pk_run_step_residual(self._handle(), ctypes.byref(at))
        return float(r), int(at.value)

    # -- API

    def predict(self, X, step=None):
        """Outputs f(x; w_t) (n, C) for inputs X (n, d) in the raw feature
        space (logits for softmax/logistic); step as in weights()."""
        x = self._queries(X)
        w = self.weights(step)
        L = _lib()
        f = np.empty((x.shape[0], self.n_outputs))
        _check(L.pk_model_predict(L.pk_run_model(self._handle()), _ptr(w), _ptr(x), x.shape[0], _ptr(f)))
        return f

    def tangent_kernel(self, X, Y=None, at="final", mode="full"):
        """Empirical tangent kernel K(x, y) = J_x(w) J_y(w)^T at the weights of
        step `at` ("init", "final" or a step number) between X (nx, d) and Y
        (ny, d; default X): (nx, ny, C, C) with mode="full", (nx, ny) with
        mode="trace" (sum over outputs)."""
        km = _parse_mode(mode)
        x = self._queries(X, "X")
        y = x if Y is None else self._queries(Y, "Y")
        w = self.weights(at)
        C = self.n_outputs
        shape = (x.shape[0], y.shape[0], C, C) if km == _capi.PK_KMODE_FULL else (x.shape[0], y.shape[0])
        K = np.empty(shape)
        L = _lib()
        _check(L.pk_kernel_tangent(L.pk_run_model(self._handle()), _ptr(w), _ptr(x), x.shape[0], _ptr(y),
                                   y.shape[0], km, _ptr(K)))
        return K

    def path_kernel(self, X, Y=None, quad="gl2", mode="full"):
        """The paper's path kernel K^p(x, y) = sum_t eta_t sum_q c_q K^g(x, y)
        at the nodes w_t + s_q D_t of every step (MATH.md section 3): the
        tangent kernel integrated along the recorded path, symmetric and
        positive semi-definite, between X (nx, d) and Y (ny, d; default X),
        raw feature space: (nx, ny, C, C) with mode="full", (nx, ny) with
        mode="trace". Exactly symmetric when Y is omitted. quad: left, mid,
        gl1..gl8, exact (piecewise-linear networks: the kinks of both arguments). Replays the run (needs its training data)."""
        km = _parse_mode(mode)
        q = _parse_quad(quad)
        x = self._queries(X, "X")
        y = x if Y is None else self._queries(Y, "Y")
        C = self.n_outputs
        shape = (x.shape[0], y.shape[0], C, C) if km == _capi.PK_KMODE_FULL else (x.shape[0], y.shape[0])
        K = np.empty(shape)
        L = _lib()
        _check(L.pk_run_path_kernel(self._handle(), _ptr(x), x.shape[0], _ptr(y), y.shape[0], km, ctypes.byref(q),
                                    None, None, _ptr(K)))
        return K

    def loo(self, kernel="tangent-final", mode="trace", ridge=None, ridge_grid=None, quad="gl2",
            keep_kernel=False):
        """Leave-one-out diagnostics of the run's own kernel on its training
        set (pk_run_loo; `pathkernel loo`): kernel ridge regression with the
        kernel "path" (the paper's), "tangent-final", "tangent-init", "ntk" or
        "rbf", and every example's exact leave-one-out residual. ridge: the
        ridge (absolute), or None to choose it by leave-one-out error over
        ridge_grid (ridges relative to the kernel's mean diagonal; None: the
        library's grid). Returns a Loo. Needs the training data."""
        L = _lib()
        o = L.pk_loo_opts_defaults()
        k = ctypes.c_int()
        _check(L.pk_kernel_kind_parse(str(kernel).encode(), ctypes.byref(k)))
        o.kernel = k.value
        o.mode = _parse_mode(mode)
        o.quad = _parse_quad(quad)
        o.keep_kernel = 1 if keep_kernel else 0
        if ridge is not None and ridge_grid is not None:
            raise ValueError("ridge and ridge_grid exclude each other: give one")
        if ridge is not None:
            o.ridge = _real(ridge, "ridge")
        grid = None
        if ridge_grid is not None:
            grid = np.ascontiguousarray(np.asarray(ridge_grid, dtype=np.float64).ravel())
            if grid.size == 0:
                raise ValueError("ridge_grid: no ridge given")
            o.grid, o.n_grid = _ptr(grid), grid.size
        r = _capi.pk_loo()
        _check(L.pk_run_loo(self._handle(), ctypes.byref(o), ctypes.byref(r)))
        try:
            n, C, G = int(r.n), int(r.C), int(r.n_grid)

            def grab(p, shape):
                return np.ctypeslib.as_array(p, (int(np.prod(shape)),)).reshape(shape).copy() if p else None

            out = Loo()
            out.alpha, out.resid = grab(r.alpha, (n, C)), grab(r.resid, (n, C))
            out.score, out.pred = grab(r.score, (n,)), grab(r.pred, (n,))
            out.accuracy, out.ridge = float(r.accuracy), float(r.ridge)
            out.ridge_relative = float(r.ridge / r.mean_diag)
            out.grid, out.grid_err, out.grid_acc = grab(r.grid, (G,)), grab(r.grid_err, (G,)), grab(r.grid_acc, (G,))
            kshape = (n, n, C, C) if o.mode == _capi.PK_KMODE_FULL else (n, n)
            out.kernel = grab(r.K, kshape)
            out.seconds_kernel, out.seconds_solve = float(r.seconds_kernel), float(r.seconds_solve)
            return out
        finally:
            L.pk_loo_free(ctypes.byref(r))

    def _ty(self):
        return self.dims[-1] if self.loss == "mse" else 1

    def _explain(self, Xq, quad, mode, kernel, target=None, y=None):
        x = self._queries(Xq, "Xq")
        t = _parse_target("outputs" if target is None else target)
        if t.kind != 0:
            kernel = None   # the kernel belongs to the outputs (MATH.md section 11)
        if kernel not in (None, "path", "path-batch"):
            raise ValueError(f"kernel={kernel!r}: use 'path' (the paper's path kernel) or 'path-batch' "
                             "(the contribution kernel, with the batch indicator)")
        o = _lib().pk_explain_opts_defaults()
        o.quad = _parse_quad(quad)
        o.mode = _parse_mode(mode)
        o.want_contrib = 1
        o.want_kernel = 1 if kernel else 0
        o.batch_kernel = 1 if kernel == "path-batch" else 0
        o.target = t
        yq = None
        if t.kind in (2, 3, 4):   # label, margin, loss
            yq = _target_labels(y, x.shape[0], self._ty(), target)
            o.y = _ptr(yq)
        e = _capi.pk_explain()
        L = _lib()
        _check(L.pk_run_explain(self._handle(), _ptr(x), x.shape[0], ctypes.byref(o), ctypes.byref(e)))
        try:
            Q, N, C = int(e.Q), int(e.N), int(e.C)

            def grab(p, shape):
                if not p:
                    return None
                return np.ctypeslib.as_array(p, (int(np.prod(shape)),)).reshape(shape).copy()

            r = Explanation()
            r.pred = grab(e.pred, (Q, C))
            r.bias = grab(e.bias, (Q, C))
            r.contrib = grab(e.contrib, (Q, N, C))
            r.regularisation = grab(e.regularisation, (Q, C))
            if r.regularisation is None:
                r.regularisation = np.zeros((Q, C))
            full = e.mode == _capi.PK_KMODE_FULL and C > 1
            r.kernel = grab(e.kernel, (Q, N, C, C) if full else (Q, N))
            r.coef = None
            if r.kernel is not None and C == 1:
                k, c = r.kernel, r.contrib.reshape(Q, N)
                with np.errstate(divide="ignore", invalid="ignore"):
                    r.coef = np.where(k != 0.0, c / np.where(k != 0.0, k, 1.0), np.nan)
            r.max_abs_err, r.max_rel_err = float(e.max_abs_err), float(e.max_rel_err)
            r.seconds, r.steps = float(e.seconds), int(e.steps)
            r.quad = e.quad.decode()
            r.pieces, r.piece_nodes = float(e.pieces), int(e.piece_nodes)
            r.mode = "full" if e.mode == _capi.PK_KMODE_FULL else "trace"
        finally:
            L.pk_explain_free(ctypes.byref(e))
        return r

    def explain(self, Xq, quad="gl2", mode="trace", kernel="path", target=None, y=None):
        """Replay the run and compute the exact contribution phi_i(x) of every
        training example i to the prediction at each query (Q, d) (raw feature
        space): an Explanation with pred, bias, contrib, kernel, coef,
        regularisation, max_rel_err, max_abs_err. quad: left, mid, gl1..gl8, or
        exact (piecewise-linear networks: each step split at the kinks, exact
        to rounding; pieces: their mean number per query and step);
        mode: the path kernel as "trace" over outputs or "full" C x C blocks;
        kernel: "path", the paper's path kernel (path_kernel), or
        "path-batch", the contribution kernel with the batch indicator; coef
        (one output) is a_i(x) = phi_i(x) / K(x, x_i) with that kernel, so
        pred = bias + sum_i coef K (+ regularisation and quadrature error).
        target: None or "outputs" (every output), "output:C", "label",
        "margin" or "loss" (MATH.md section 11; y, the queries' labels, for
        the last three): pred, bias and contrib are then the target's, one
        column, and there is no kernel. Needs the training data: attached by
        train(), or loadable from the spec a CLI run recorded."""
        return self._explain(Xq, quad, mode, kernel, target, y)

    def attribute(self, Xq, top=10, quad="gl2", group=None, target=None, y=None):
        """For every query, the `top` strongest proponents (largest phi_i(x)[c]
        > 0) and opponents (most negative) of output c = the predicted class
        (argmax for softmax, else output 0), ranked like `pathkernel attribute`
        (exact ties by the smaller index). Returns a list of Attribution.
        The queries go in groups, one replay of the trajectory each: `group`
        queries, or (None) as many as one replay can take within 3/4 of the
        free memory, as the CLI plans them. target: None (the predicted
        class), "output:C", "label", "margin" or "loss" (y: the queries'
        labels for the last three), as `pathkernel attribute --target`."""
        top = _size(top, "top", 1)
        group = None if group is None else _size(group, "group", 1)
        x = self._queries(Xq, "Xq")
        Q = x.shape[0]
        L = _lib()
        # the attributed output: the prediction's class (softmax), else output 0
        C = self.dims[-1]
        cls = np.zeros(Q, dtype=np.uintp)
        t = _parse_target("outputs" if target is None else target)
        if target is not None and t.kind == 0:
            raise ValueError("target='outputs': use output:C, label, margin or loss (or None)")
        yq = None
        if t.kind in (2, 3, 4):
            yq = _target_labels(y, Q, self._ty(), target)
            if self.loss == "softmax":
                cls[:] = yq[:, 0].astype(np.uintp)
        if t.kind == 1:
            cls[:] = t.output
        if t.kind in (1, 2):   # an output per query: the cls of each row
            t = _capi.pk_target()
        if target is None and self.loss == "softmax" and Q:
            w = self.weights()
            f = np.empty((Q, C))
            _check(L.pk_model_predict(L.pk_run_model(self._handle()), _ptr(w), _ptr(x), Q, _ptr(f)))
            for q in range(Q):          # the first maximum, as the CLI picks it
                c = 0
                for k in range(1, C):
                    if f[q, k] > f[q, c]:
                        c = k
                cls[q] = c
        o = L.pk_topk_opts_defaults()
        o.quad = _parse_quad(quad)
        o.top = top
        o.target = t
        col = {k: np.zeros(Q) for k in ("pred", "bias", "total", "regularisation")}
        idx = {k: np.zeros((Q, top), dtype=np.int64) for k in ("pro_idx", "opp_idx")}
        val = {k: np.zeros((Q, top)) for k in ("pro_val", "opp_val")}
        if group is None:
            group = L.pk_run_attribute_group(self._handle(), Q, ctypes.byref(o), ctypes.byref(_capi.c_size(0))) or 1
        for q0 in range(0, Q, group):
            q1 = min(Q, q0 + group)
            r = _capi.pk_topk(*(_ptr(col[k][q0:q1]) for k in ("pred", "bias", "total", "regularisation")),
                              idx["pro_idx"][q0:q1].ctypes.data_as(_capi.P_i64), _ptr(val["pro_val"][q0:q1]),
                              idx["opp_idx"][q0:q1].ctypes.data_as(_capi.P_i64), _ptr(val["opp_val"][q0:q1]))
            if yq is not None and t.kind != 0:
                o.y = _ptr(yq[q0:q1])
            _check(L.pk_run_attribute(self._handle(), _ptr(x[q0:q1]), q1 - q0,
                                      cls[q0:q1].ctypes.data_as(_capi.P_size), ctypes.byref(o), ctypes.byref(r)))
        out = []
        for q in range(Q):
            a = Attribution()
            a.query, a.cls = q, int(cls[q])
            a.pred, a.bias = float(col["pred"][q]), float(col["bias"][q])
            a.total, a.regularisation = float(col["total"][q]), float(col["regularisation"][q])
            a.residual = (a.pred - a.bias) - a.total - a.regularisation
            for kind, i, v in (("proponents", "pro_idx", "pro_val"), ("opponents", "opp_idx", "opp_val")):
                keep = idx[i][q] >= 0
                setattr(a, kind, idx[i][q][keep].copy())
                setattr(a, kind[:-1] + "_contrib", val[v][q][keep].copy())
            out.append(a)
        return out

    def self_influence(self, form="loss", quad="gl2"):
        """Exact self-influence of every training example (N,), in data order,
        of a gd/sgd run: form="loss" (how much example i's own gradient lowered
        its own loss along the path) or "kernel" (trace of the path kernel's
        diagonal); quad: left, mid, gl1..gl8, exact."""
        L = _lib()
        f = ctypes.c_int()
        _check(L.pk_si_form_parse(str(form).encode(), ctypes.byref(f)))
        q = _parse_quad(quad)
        si = np.empty(self.n_train)
        _check(L.pk_run_self_influence(self._handle(), f.value, ctypes.byref(q), _ptr(si)))
        return si


def open_run(path):
    """Open a run directory written by `pathkernel train` or train()."""
    return Run(path)


def _train_config(model, loss, optim, lr, steps, batch, seed, momentum, weight_decay, param, sigma_w, sigma_b):
    """A pk_train_opts of train()'s arguments, and the model's bytes (keep them alive)."""
    L = _lib()
    o = L.pk_train_opts_defaults()
    lc = ctypes.c_int()
    _check(L.pk_loss_parse(str(loss).encode(), ctypes.byref(lc)))
    oc = ctypes.c_int()
    _check(L.pk_optim_parse(str(optim).encode(), ctypes.byref(oc)))
    if param not in ("standard", "ntk"):
        raise ValueError(f"param: '{param}' is not standard or ntk")
    if not isinstance(model, str):
        raise ValueError(f"model: expected a spec string like 'mlp:64:tanh', got {model!r}")
    model_b = model.encode()
    o.model = model_b
    o.param = _capi.PK_PARAM_NTK if param == "ntk" else _capi.PK_PARAM_STANDARD
    o.sigma_w, o.sigma_b = _real(sigma_w, "sigma_w"), _real(sigma_b, "sigma_b")
    o.loss = lc.value
    o.optim.kind = oc.value
    o.optim.lr = _real(lr, "lr")
    o.optim.batch = _size(batch, "batch")
    o.optim.momentum = _real(momentum, "momentum")
    o.optim.weight_decay = _real(weight_decay, "weight_decay")
    o.steps = _size(steps, "steps")
    o.seed = _size(seed, "seed")
    if o.seed >= 1 << 64:
        raise ValueError(f"seed: {seed} does not fit in 64 bits")
    return o, model_b


class Lds:
    """What lds() measured (docs/ATTRIBUTION.md, "LDS"), for M subsets, Q
    test points and the methods in `methods` (exact:RULE, left, grad-dot,
    grad-cos, ensemble:K):

    lds, stderr, valid, seconds   dicts by method: the mean Spearman correlation
                                  over the test points, its standard error, the
                                  test points with a correlation, the seconds
    per_query (methods, Q)        each test point's correlation (NaN: none)
    predicted (methods, M, Q)     the method's scores summed over subset m
    retrained (M, Q)              the target after retraining on subset m
    full (Q,)                     the target of the run on the whole training set
    subsets (M, N) bool           the subsets
    seconds_retrain, steps, subset_steps
    """

    def __repr__(self):
        return "Lds(" + ", ".join(f"{m}={self.lds[m]:.4f}" for m in self.methods) + ")"


def lds(X, y, Xtest, ytest, out, model="mlp:64:tanh", loss="softmax", optim="sgd", lr=0.1, steps=100, epochs=None,
        batch=64, seed=0, momentum=0.9, weight_decay=0.0, param="standard", sigma_w=1.0, sigma_b=0.0,
        target="loss", subsets=100, alpha=0.5, subset_seed=0, reseed=False, quad="gl2", ensembles=(1, 5, 20)):
    """The linear datamodeling score of every attribution method, as
    `pathkernel lds`: retrain the configuration (train()'s arguments; epochs
    E: every training set, whole or subset, trains E epochs) on `subsets`
    seeded subsets of a fraction `alpha` of (X, y), evaluate `target`
    (output:C, label, margin, loss) at (Xtest, ytest), and score each method.
    `out` is the work directory: what is there is reused (a stopped call
    continues), so that more subsets or ensembles do not retrain. Returns an
    Lds. X is used as given (no standardisation)."""
    x = _as_matrix(_flat_images(X), "X")
    xt = _as_matrix(_flat_images(Xtest), "Xtest", x.shape[1])
    yt = _as_targets(np.asarray(y), x.shape[0])
    ytt = _as_targets(np.asarray(ytest), xt.shape[0])
    L = _lib()
    o = L.pk_lds_opts_defaults()
    t, model_b = _train_config(model, loss, optim, lr, steps, batch, seed, momentum, weight_decay, param, sigma_w,
                               sigma_b)
    t.keep = 0
    o.train = t
    o.epochs = 0 if epochs is None else _size(epochs, "epochs", 1)
    o.target = _parse_target(target)
    o.subsets = _size(subsets, "subsets", 3)
    o.alpha = _real(alpha, "alpha")
    o.subset_seed = _size(subset_seed, "subset_seed")
    o.reseed = 1 if reseed else 0
    o.quad = _parse_quad(quad)
    ens = [int(_size(k, "ensembles", 1)) for k in ensembles]
    if len(ens) > _capi.PK_LDS_MAX_ENSEMBLES:
        raise ValueError(f"ensembles: at most {_capi.PK_LDS_MAX_ENSEMBLES} sizes")
    for i, k in enumerate(ens):
        o.ensembles[i] = k
    o.n_ensembles = len(ens)
    dir_b = os.fsencode(os.fspath(out))
    o.dir = dir_b
    dtr, dte = _data(x, yt), _data(xt, ytt)
    r = _capi.pk_lds()
    _check(L.pk_lds_run(ctypes.byref(dtr), ctypes.byref(dte), ctypes.byref(o), ctypes.byref(r)))
    try:
        M, Q, N, nm = int(r.M), int(r.Q), int(r.N), int(r.n_methods)

        def grab(p, shape, dtype=np.float64):
            return np.ctypeslib.as_array(p, (int(np.prod(shape)),)).reshape(shape).astype(dtype, copy=True)

        res = Lds()
        res.methods = [r.name[k].value.decode() for k in range(nm)]
        res.lds = {m: float(r.lds[k]) for k, m in enumerate(res.methods)}
        res.stderr = {m: float(r.se[k]) for k, m in enumerate(res.methods)}
        res.valid = {m: int(r.valid[k]) for k, m in enumerate(res.methods)}
        res.seconds = {m: float(r.seconds[k]) for k, m in enumerate(res.methods)}
        res.per_query = grab(r.per_query, (nm, Q))
        res.predicted = grab(r.predicted, (nm, M, Q))
        res.retrained = grab(r.retrained, (M, Q))
        res.full = grab(r.full, (Q,))
        res.subsets = grab(r.mask, (M, N), bool)
        res.seconds_retrain, res.steps, res.subset_steps = float(r.seconds_retrain), int(r.steps), int(r.subset_steps)
    finally:
        L.pk_lds_free(ctypes.byref(r))
    return res


def train(X, y, model="mlp:64:tanh", loss="softmax", optim="gd", lr=0.1, steps=100, batch=0, seed=0,
          out=None, momentum=0.9, weight_decay=0.0, param="standard", sigma_w=1.0, sigma_b=0.0, keep=1,
          standardize=False, input_shape=None, classes=None, features=None, init=None, beta1=0.9, beta2=0.999,
          eps=1e-8, schedule="constant", step_every=100, gamma=0.5, lr_min=0.0):
    """Train a network on X (n, d), or images (n, C, H, W) / (n, H, W), and y
    ((n,) class indices for softmax / logistic, or (n, k) real targets for
    mse) and return the opened Run.

    y may hold text labels (str): the classes are then their sorted distinct
    values, or `classes` (a list, in class order) when given; with class
    indices, `classes` names them. The names are recorded in the run
    (Run.classes, RUN/classes.txt); so are `features`, the names of the d
    columns of X, when given (Run.features, RUN/features.txt).

    model "mlp:H1,H2,...:ACT", "linear", "lenet5" or a layer sequence such as
    "conv:6,5,pad=2;tanh;avgpool:2;flatten;dense:84;tanh;dense", with
    residual blocks "res(dense:64;tanh;dense:64)" or "res(...;proj)" and
    "dropout:0.5" (the CLI's --model, MATH.md section 9); input_shape (C, H, W) reads rows of X as images (images
    carry their own); loss mse | logistic | softmax;
    optim gd | sgd | momentum | adam | adamw; batch 0 = full batch; keep:
    store the weights every `keep` steps; param "standard" or "ntk" (with
    sigma_w, sigma_b); standardize: scale features by the training mean/std
    (recorded, applied to later queries). The same settings of `pathkernel
    train` give bit-identical weights.

    init: the initial weights instead of the seeded ones: a directory of
    W1.npy b1.npy ... (`pathkernel weights`), or a list of (W, b) pairs in
    nn.Linear's / nn.Conv2d's layouts, one per layer with parameters (the
    second value of pathkernel.torch.from_torch); saved in the run directory
    as init/. beta1, beta2, eps: Adam's; schedule "constant", "step" (lr *
    gamma^(t // step_every), torch's StepLR) or "cosine" (down to lr_min).

    out is the run directory (created; it must not hold a run yet; default: a
    new temporary directory). The training data are saved there as
    train_x.npy / train_y.npy and recorded as the run's data spec, so that the
    CLI (explain, attribute, selfinfluence, ...) works on the run too.
    """
    shape = _image_shape(X, input_shape)
    x = _as_matrix(_flat_images(X), "X")
    if shape is not None and shape[0] * shape[1] * shape[2] != x.shape[1]:
        raise ValueError(f"input_shape {shape} is {shape[0] * shape[1] * shape[2]} values per example, X has "
                         f"{x.shape[1]}")
    ya = np.asarray(y)
    text = ya.dtype.kind in "US" or (ya.dtype.kind == "O" and all(isinstance(v, (str, bytes)) for v in ya.ravel()))
    if text:   # text labels: class indices through the classes
        if ya.ndim != 1:
            raise ValueError(f"y: text labels must be one column (n,), got shape {ya.shape}")
        ya, classes = _class_targets(ya, classes)
    yt = _as_targets(ya, x.shape[0])
    names = None
    if classes is not None:
        names = _names(classes, "classes")
        if yt.ndim != 1 or not np.all((yt >= 0) & (yt == np.floor(yt)) & (yt < len(names))):
            raise ValueError(f"classes: {len(names)} names, but y holds targets that are not class indices "
                             f"0..{len(names) - 1}")
    fnames = None
    if features is not None:
        fnames = _names(features, "features", unique=False)
        if len(fnames) != x.shape[1]:
            raise ValueError(f"features: {len(fnames)} names for {x.shape[1]} columns of X")
    L = _lib()
    o, model_b = _train_config(model, loss, optim, lr, steps, batch, seed, momentum, weight_decay, param, sigma_w,
                               sigma_b)
    lo = L.pk_load_opts_defaults()
    o.optim.beta1, o.optim.beta2, o.optim.eps = _real(beta1, "beta1"), _real(beta2, "beta2"), _real(eps, "eps")
    sc = ctypes.c_int()
    _check(L.pk_schedule_parse(str(schedule).encode(), ctypes.byref(sc)))
    o.optim.schedule = sc.value
    o.optim.step_every = _size(step_every, "step_every", 1)
    o.optim.gamma, o.optim.lr_min = _real(gamma, "gamma"), _real(lr_min, "lr_min")
    o.keep = _size(keep, "keep", 1)
    rd = _RunDir(out, x, yt, shape)
    outp = rd.path
    init_b, made = None, []
    if init is not None:
        if isinstance(init, (str, os.PathLike)):
            init_b = os.fsencode(os.fspath(init))
        else:
            idir = outp / "init"
            idir.mkdir(exist_ok=True)
            made.append(idir)
            for k, pair in enumerate(init, 1):
                try:
                    W, b = pair
                except (TypeError, ValueError):
                    raise ValueError(f"init: item {k - 1} is not a (W, b) pair") from None
                np.save(idir / f"W{k}.npy", np.ascontiguousarray(W, dtype=np.float64))
                np.save(idir / f"b{k}.npy", np.ascontiguousarray(b, dtype=np.float64))
            init_b = os.fsencode(os.fspath(idir.resolve()))
        o.init_dir = init_b
    o.out_dir = rd.out
    o.data_spec = rd.spec
    o.load = ctypes.pointer(lo)
    xt = x
    if standardize:
        d = x.shape[1]
        mean, std = np.empty(d), np.empty(d)
        xt = x.copy()
        data = _data(xt, yt)
        L.pk_data_moments(ctypes.byref(data), _ptr(mean), _ptr(std))
        L.pk_data_standardize(ctypes.byref(data), _ptr(mean), _ptr(std))
        o.standardize, o.mean, o.std = 1, _ptr(mean), _ptr(std)
    data = _data(xt, yt, names, fnames)
    if shape is not None:
        data.img_c, data.img_h, data.img_w = shape
    try:
        _check(L.pk_train(ctypes.byref(data), ctypes.byref(o), None, None))
    except PathkernelInputError:
        rd.refused(made)   # refused before training: leave no half-made run behind
        raise
    return Run(outp, _train=(xt, yt))


def ntk(X, Y=None, model="mlp:512:relu", sigma_w=1.0, sigma_b=0.0, get="ntk"):
    """Infinite-width kernel (nx, ny) of a fully connected network in the ntk
    parameterisation between X (nx, d) and Y (ny, d; default X), as `pathkernel
    ntk`: model "mlp:H1,...:relu" or ":erf" (widths ignored, depth counts),
    get "ntk" (Theta) or "nngp" (Sigma). Inputs are used as given."""
    if get not in ("ntk", "nngp"):
        raise ValueError(f"get: '{get}' is not ntk or nngp")
    if not isinstance(model, str):
        raise ValueError(f"model: expected a spec string like 'mlp:512:relu', got {model!r}")
    x = _as_matrix(X, "X")
    y = x if Y is None else _as_matrix(Y, "Y", x.shape[1])
    L = _lib()
    m = _capi.P_model()
    _check(L.pk_model_new(model.encode(), x.shape[1], 1, _capi.PK_PARAM_NTK, _real(sigma_w, "sigma_w"),
                          _real(sigma_b, "sigma_b"), ctypes.byref(m)))
    try:
        K = np.empty((x.shape[0], y.shape[0]))
        _check(L.pk_kernel_infinite(m, _ptr(x), x.shape[0], _ptr(y), y.shape[0], 1 if get == "nngp" else 0,
                                    _ptr(K)))
    finally:
        L.pk_model_free(m)
    return K
