"""The Python package python/pathkernel (issue 9): its results equal the CLI's
on the same run to the last bit, bad arguments raise ValueError naming the
problem, library failures raise with the library's message, the package
installs offline into a venv, and the README's Python example runs as written."""
import csv
import ctypes
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import BUILD_DIR, SOURCE_DIR
from pkutil import pk, pk_run, save_data

if os.environ.get("PK_SANITIZE") == "1":
    pytest.skip("an ASan-instrumented library cannot be loaded into an uninstrumented Python; "
                "in the sanitizer build the same code runs through the CLI tests", allow_module_level=True)

LIB = (BUILD_DIR / "libpathkernel.so").resolve()
os.environ["PATHKERNEL_LIB"] = str(LIB)
sys.path.insert(0, str(SOURCE_DIR / "python"))
import pathkernel as pkg  # noqa: E402
from pathkernel import _capi  # noqa: E402


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    assert np.array_equal(a, b, equal_nan=True), f"max |diff| {np.nanmax(np.abs(a - b))}"


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pydata")
    rng = np.random.default_rng(9)
    X = rng.normal(size=(48, 5)) * np.array([1, 3, 0.5, 2, 10]) + np.array([0, 1, -2, 5, 3])
    y = (X[:, 0] + 0.3 * X[:, 1] > 0.5).astype(np.int64) + (X[:, 4] > 3)
    Xq = rng.normal(size=(6, 5)) * 2
    yq = np.zeros(6, dtype=np.int64)
    return {"dir": d, "X": X, "y": y, "Xq": Xq, "train": save_data(d, "tr", X, y), "query": save_data(d, "q", Xq, yq)}


@pytest.fixture(scope="module")
def cli_run(data):
    """A CLI run with standardisation, sgd mini-batches and keep > 1 (replay)."""
    out = data["dir"] / "clirun"
    pk("train", "--data", data["train"], "--standardize", "--model", "mlp:7,5:tanh", "--loss", "softmax",
       "--optim", "sgd", "--batch", "16", "--lr", "0.3", "--steps", "14", "--keep", "4", "--seed", "5",
       "--out", out, "--quiet")
    return out


# ------------------------------------------------------------------- layout

def test_struct_layout_matches_the_header(tmp_path):
    """Every ctypes struct has the C struct's size and every field its offset."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    lines = ['#include <pathkernel.h>', '#include <stdio.h>', '#include <stddef.h>', 'int main(void) {']
    want = []
    for name, st in _capi.STRUCTS.items():
        lines.append(f'printf("%zu\\n", sizeof({name}));')
        want.append((name, ctypes.sizeof(st)))
        for f in st._fields_:
            lines.append(f'printf("%zu\\n", offsetof({name}, {f[0]}));')
            want.append((f"{name}.{f[0]}", getattr(st, f[0]).offset))
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    subprocess.run([cc, f"-I{SOURCE_DIR / 'include'}", str(src), "-o", str(tmp_path / "layout")], check=True)
    got = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, check=True).stdout.split()
    assert len(got) == len(want)
    for (what, n), g in zip(want, got):
        assert int(g) == n, f"{what}: C says {g}, ctypes {n}"


# ------------------------------------------------------- same as the CLI

def test_predict_equals_cli(data, cli_run, tmp_path):
    run = pkg.open_run(cli_run)
    assert run.mean is not None and run.steps == 14 and run.keep == 4
    for step, arg in ((None, "final"), (0, "init"), (6, "6")):
        pk("predict", cli_run, "--data", data["query"], "--step", arg, "--out", tmp_path / "p.npy")
        same(run.predict(data["Xq"], step=step), np.load(tmp_path / "p.npy"))
    # other dtypes and layouts are converted, not refused
    same(run.predict(np.asfortranarray(data["Xq"])), run.predict(data["Xq"]))
    same(run.predict(data["Xq"].astype(np.float32)), run.predict(data["Xq"].astype(np.float32).astype(np.float64)))


@pytest.mark.parametrize("mode", ["full", "trace"])
@pytest.mark.parametrize("at", ["init", "final", 9])
def test_tangent_kernel_equals_cli(data, cli_run, tmp_path, mode, at):
    run = pkg.open_run(cli_run)
    pk("kernel", cli_run, "--x", data["query"], "--y", data["train"], "--at", at, "--mode", mode,
       "--out", tmp_path / "k.npy")
    same(run.tangent_kernel(data["Xq"], data["X"], at=at, mode=mode), np.load(tmp_path / "k.npy"))
    pk("kernel", cli_run, "--x", data["query"], "--mode", mode, "--out", tmp_path / "k2.npy")
    same(run.tangent_kernel(data["Xq"], mode=mode), np.load(tmp_path / "k2.npy"))


@pytest.mark.parametrize("mode,quad", [("full", "gl2"), ("trace", "left")])
def test_path_kernel_equals_cli(data, cli_run, tmp_path, mode, quad):
    run = pkg.open_run(cli_run)
    pk("kernel", cli_run, "--at", "path", "--quad", quad, "--x", data["query"], "--y", data["train"], "--mode", mode,
       "--out", tmp_path / "k.npy")
    same(run.path_kernel(data["Xq"], data["X"], quad=quad, mode=mode), np.load(tmp_path / "k.npy"))
    pk("kernel", cli_run, "--at", "path", "--quad", quad, "--x", data["train"], "--mode", mode,
       "--out", tmp_path / "k2.npy")
    K = run.path_kernel(data["X"], quad=quad, mode=mode)
    same(K, np.load(tmp_path / "k2.npy"))
    M = K.transpose(0, 2, 1, 3).reshape(K.shape[0] * K.shape[2], -1) if mode == "full" else K
    assert np.array_equal(M, M.T)
    with pytest.raises(ValueError, match="kernel='tangent'"):
        run.explain(data["Xq"], kernel="tangent")


@pytest.mark.parametrize("mode,quad,kernel", [("trace", "gl2", "path"), ("full", "gl4", "path"),
                                              ("trace", "left", "path"), ("full", "gl2", "path-batch")])
def test_explain_equals_cli(data, cli_run, tmp_path, mode, quad, kernel):
    run = pkg.open_run(cli_run)
    pk("explain", cli_run, "--query", data["query"], "--mode", mode, "--quad", quad, "--kernel", kernel,
       "--out", tmp_path)
    e = run.explain(data["Xq"], quad=quad, mode=mode, kernel=kernel)
    for name in ("pred", "bias", "contrib", "kernel", "regularisation"):
        same(getattr(e, name), np.load(tmp_path / f"{name}.npy"))
    assert e.coef is None  # three outputs
    summ = json.load(open(tmp_path / "summary.json"))
    # summary.json prints the numbers with cJSON's (shorter) formatting
    assert np.isclose(e.max_abs_err, summ["max_abs_err"], rtol=1e-14, atol=0) and e.quad == quad
    assert np.isclose(e.max_rel_err, summ["max_rel_err"], rtol=1e-14, atol=0)
    if quad != "left":
        assert e.max_rel_err < 1e-6


def test_attribute_equals_cli(data, cli_run, tmp_path):
    run = pkg.open_run(cli_run)
    pk("attribute", cli_run, "--query", data["query"], "--top", "4", "--out", tmp_path / "a.csv")
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    got = run.attribute(data["Xq"], top=4)
    assert len(got) == len(data["Xq"])
    for a in got:
        for kind, idx, phi in (("proponent", a.proponents, a.proponent_contrib),
                               ("opponent", a.opponents, a.opponent_contrib)):
            want = [r for r in rows if int(r["query"]) == a.query and r["kind"] == kind]
            assert [int(r["index"]) for r in want] == idx.tolist()
            assert all(int(r["class"]) == a.cls for r in want)
            assert [float(r["contribution"]) for r in want] == phi.tolist()
            assert np.all(phi > 0) if kind == "proponent" else np.all(phi < 0)
    pk("attribute", cli_run, "--query", data["query"], "--top", "4", "--out", tmp_path / "a.json")
    js = json.load(open(tmp_path / "a.json"))["queries"]
    for a, j in zip(got, js):   # cJSON prints 15 significant digits when they read back close enough
        assert j["class"] == a.cls
        for k in ("pred", "bias", "total", "regularisation", "residual"):
            assert np.isclose(getattr(a, k), j[k], rtol=1e-14, atol=1e-300), k


def test_attribute_in_groups_equals_one_group(data, cli_run):
    """Groups of 1, 2 and 3 queries (one replay each) give exactly what one
    replay of all of them gives."""
    run = pkg.open_run(cli_run)
    whole = run.attribute(data["Xq"], top=5, group=len(data["Xq"]))
    for g in (1, 2, 3):
        got = run.attribute(data["Xq"], top=5, group=g)
        for a, b in zip(got, whole):
            assert (a.cls, a.pred, a.bias, a.total, a.regularisation) == (b.cls, b.pred, b.bias, b.total,
                                                                        b.regularisation)
            assert a.proponents.tolist() == b.proponents.tolist() and a.opponents.tolist() == b.opponents.tolist()
            assert a.proponent_contrib.tolist() == b.proponent_contrib.tolist()
            assert a.opponent_contrib.tolist() == b.opponent_contrib.tolist()
    with pytest.raises(ValueError):
        run.attribute(data["Xq"], group=0)


def test_attribute_ties_by_smaller_index():
    """An example duplicated in the training set contributes exactly the same:
    the copies are ranked by index, as the CLI's pk_rank does."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(10, 3))
    X = np.vstack([X, X[:4]])
    y = np.r_[rng.integers(0, 2, 10), np.zeros(4, dtype=int)]
    y[:4] = 0
    run = pkg.train(X, y, model="mlp:4:tanh", steps=5, lr=0.5)
    for a in run.attribute(X[:3], top=14):
        for idx, phi in ((a.proponents, a.proponent_contrib), (a.opponents, a.opponent_contrib)):
            for j in range(len(idx) - 1):
                if phi[j] == phi[j + 1]:
                    assert idx[j] < idx[j + 1]


def read_si(path):
    rows = list(csv.DictReader(open(path)))
    return np.array([float(r["self_influence"]) for r in rows])


@pytest.mark.parametrize("form,quad", [("loss", "gl2"), ("kernel", "gl2"), ("loss", "mid")])
def test_self_influence_equals_cli(cli_run, tmp_path, form, quad):
    run = pkg.open_run(cli_run)
    pk("selfinfluence", cli_run, "--form", form, "--quad", quad, "--out", tmp_path / "si.csv")
    same(run.self_influence(form=form, quad=quad), read_si(tmp_path / "si.csv"))


@pytest.mark.parametrize("model,sw,sb,get", [("mlp:64,64:relu", 1.4, 0.1, "ntk"), ("mlp:8:erf", 1.0, 0.0, "nngp"),
                                             ("mlp:3,3,3:relu", 1.0, 0.5, "ntk")])
def test_ntk_equals_cli(data, tmp_path, model, sw, sb, get):
    pk("ntk", "--model", model, "--sigma-w", sw, "--sigma-b", sb, "--get", get, "--x", data["query"],
       "--y", data["train"], "--out", tmp_path / "k.npy")
    same(pkg.ntk(data["Xq"], data["X"], model=model, sigma_w=sw, sigma_b=sb, get=get), np.load(tmp_path / "k.npy"))


def run_files(d):
    d = pathlib.Path(d)
    return sorted(p.relative_to(d).as_posix() for p in (d / "weights").iterdir()) + ["trajectory.bin"]


@pytest.mark.parametrize("cfg", [
    dict(model="mlp:6:tanh", loss="softmax", optim="sgd", lr=0.2, steps=9, batch=8, seed=3, keep=2),
    dict(model="mlp:5,4:relu", loss="mse", optim="momentum", lr=0.05, steps=7, momentum=0.8, weight_decay=0.01,
         param="ntk", sigma_w=1.3, sigma_b=0.2, standardize=True),
    # a residual block and dropout (MATH.md section 9): the same masks from both
    dict(model="dense:6;tanh;dropout:0.5;res(dense:6;tanh;dropout:0.2;dense:6);tanh;dense", loss="softmax",
         optim="sgd", lr=0.2, steps=9, batch=8, seed=3, keep=2),
])
def test_train_equals_cli(data, tmp_path, cfg):
    X = data["X"]
    y = data["y"] if cfg["loss"] == "softmax" else np.c_[np.sin(X[:, 0]), X[:, 1] * 0.1]
    spec = save_data(tmp_path, "d", X, y)
    run = pkg.train(X, y, out=tmp_path / "py", **cfg)
    flags = {"model": "--model", "loss": "--loss", "optim": "--optim", "lr": "--lr", "steps": "--steps",
             "batch": "--batch", "seed": "--seed", "keep": "--keep", "momentum": "--momentum",
             "weight_decay": "--weight-decay", "param": "--param", "sigma_w": "--sigma-w", "sigma_b": "--sigma-b"}
    args = ["train", "--data", spec, "--out", tmp_path / "cli", "--quiet"]
    for k, v in cfg.items():
        args += ["--standardize"] if k == "standardize" else [flags[k], v]
    pk(*args)
    files = run_files(tmp_path / "cli")
    assert files == run_files(tmp_path / "py") and len(files) > 2
    for f in files + (["standardize.npy"] if cfg.get("standardize") else []):
        assert (tmp_path / "py" / f).read_bytes() == (tmp_path / "cli" / f).read_bytes(), f
    # the run's own training data (attached) and the CLI's (loaded from the spec) explain alike
    e = run.explain(data["Xq"])
    pk("explain", tmp_path / "py", "--query", data["query"], "--out", tmp_path / "ex")
    same(e.contrib, np.load(tmp_path / "ex" / "contrib.npy"))
    same(e.pred, np.load(tmp_path / "ex" / "pred.npy"))
    if y.ndim == 2:
        assert e.coef is None
    same(run.predict(data["Xq"]), pkg.open_run(tmp_path / "cli").predict(data["Xq"]))


def test_coef_one_output(data, tmp_path):
    X = data["X"]
    run = pkg.train(X, np.sin(X[:, :1]), model="mlp:4:tanh", loss="mse", steps=6, lr=0.05, out=tmp_path / "r")
    pk("explain", tmp_path / "r", "--query", data["query"], "--out", tmp_path / "ex")
    e = run.explain(data["Xq"])
    same(e.coef, np.load(tmp_path / "ex" / "coef.npy"))
    same(e.kernel, np.load(tmp_path / "ex" / "kernel.npy"))


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("X,y,match", [
    (np.array([["a", "b"], ["c", "d"]]), [0, 1], "X: expected numbers.*<U1"),
    (np.array([[1.0, None], [2.0, 3.0]], dtype=object), [0, 1], "X: expected numbers.*object"),
    (np.array([[1.0, np.nan], [2.0, 3.0]]), [0, 1], r"X: NaN or Inf at \[0, 1\]"),
    (np.array([[1.0, np.inf], [2.0, 3.0]]), [0, 1], "X: NaN or Inf"),
    (np.zeros(4), [0, 1, 0, 1], "X: expected a 2-d array.*1 dimension"),
    (np.zeros((2, 2, 2, 2, 2)), [0, 1], "X: expected a 2-d array.*5 dimension"),  # 3-d and 4-d: images
    (np.zeros((3, 2)), [0, 1], "y: 2 targets for 3 examples"),
    (np.zeros((2, 2)), [0, np.nan], "y: NaN or Inf"),
    (np.zeros((2, 2)), [["a"], ["b"]], r"y: text labels must be one column \(n,\)"),   # (n,) text labels are classes
    (np.zeros((2, 2)), np.array([None, "a"], dtype=object), "y: expected numbers"),
    (np.zeros((2, 2)), np.zeros((2, 1, 1)), r"y: expected \(n,\) class indices"),
    (np.zeros((0, 2)), [], "X: no examples"),
])
def test_bad_arrays_raise_value_error(tmp_path, X, y, match):
    with pytest.raises(ValueError, match=match):
        pkg.train(X, y, out=tmp_path / "r")
    assert not (tmp_path / "r" / "run.json").exists()


def test_bad_arguments_raise_value_error(data, cli_run, tmp_path):
    run = pkg.open_run(cli_run)
    with pytest.raises(ValueError, match="Xq?: 4 features per example, the run has 5"):
        run.predict(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="X: NaN"):
        run.tangent_kernel(np.full((1, 5), np.nan))
    with pytest.raises(ValueError, match="mode: 'diag' is not full or trace"):
        run.tangent_kernel(data["Xq"], mode="diag")
    with pytest.raises(ValueError, match="step 15: the run has steps 0..14"):
        run.predict(data["Xq"], step=15)
    with pytest.raises(ValueError, match="top: 0 is less than 1"):
        run.attribute(data["Xq"], top=0)
    with pytest.raises(ValueError, match="gl9"):
        run.explain(data["Xq"], quad="gl9")
    with pytest.raises(ValueError, match="get: 'x' is not ntk or nngp"):
        pkg.ntk(data["Xq"], get="x")
    with pytest.raises(ValueError, match="steps: expected an integer"):
        pkg.train(data["X"], data["y"], steps="10", out=tmp_path / "a")
    with pytest.raises(ValueError, match="lr: .* is not finite"):
        pkg.train(data["X"], data["y"], lr=float("nan"), out=tmp_path / "b")
    with pytest.raises(ValueError, match="already holds a run"):
        pkg.train(data["X"], data["y"], out=cli_run)


def test_library_errors_carry_its_message(data, tmp_path):
    missing = tmp_path / "nope"
    p = pk_run("info", missing, expect=2)
    msg = p.stderr.strip().split("pathkernel info: ", 1)[1]
    with pytest.raises(ValueError) as ei:
        pkg.open_run(missing)
    assert str(ei.value) == msg
    # errors found by the library itself: its message, ValueError for bad input
    with pytest.raises(ValueError, match="optim"):
        pkg.train(data["X"], data["y"], optim="lbfgs", out=tmp_path / "a")
    with pytest.raises(ValueError, match="mlp"):
        pkg.train(data["X"], data["y"], model="cnn:3", out=tmp_path / "b")
    assert not (tmp_path / "b").exists()   # nothing left behind
    with pytest.raises(ValueError):
        pkg.train(data["X"], data["y"] + 0.5, out=tmp_path / "c")   # not class indices
    with pytest.raises(ValueError, match="relu or erf|relu|erf"):
        pkg.ntk(data["Xq"], model="mlp:8:tanh")
    # a gd/sgd-only computation on an adam run: the library refuses, Python survives
    run = pkg.train(data["X"], data["y"], optim="adam", lr=0.01, steps=3, model="mlp:3:tanh", out=tmp_path / "d")
    with pytest.raises((ValueError, RuntimeError)) as ei:
        run.self_influence()
    assert str(ei.value)
    run.close()
    with pytest.raises(ValueError, match="closed"):
        run.predict(data["Xq"])


# ----------------------------------------------------------------- install

def test_install_into_venv(tmp_path):
    py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    probe = subprocess.run([py, "-c", "import venv, ensurepip, pip"], capture_output=True)
    if probe.returncode:
        pytest.skip("venv/ensurepip/pip not available (apt-get install python3-venv python3-pip)")
    src = tmp_path / "src"
    shutil.copytree(SOURCE_DIR / "python", src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    v = tmp_path / "V"
    subprocess.run([py, "-m", "venv", "--system-site-packages", str(v)], check=True, capture_output=True)
    p = subprocess.run([str(v / "bin" / "pip"), "install", "--no-build-isolation", "--no-index", str(src)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    env = dict(os.environ, PATHKERNEL_LIB=str(LIB))
    env.pop("PYTHONPATH", None)
    code = ("import numpy as np, pathkernel as pk; print(pk.__file__); "
            "print(pk.ntk(np.eye(2), model='mlp:4:relu').shape)")
    p = subprocess.run([str(v / "bin" / "python"), "-c", code], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    where, shape = p.stdout.split("\n")[:2]
    assert str(v) in where and shape == "(2, 2)"


# ------------------------------------------------------------------ README

def readme_example(k=0):
    text = (SOURCE_DIR / "README.md").read_text()
    sec = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", sec, re.S)[k]
    out = re.findall(r"```text\n(.*?)```", sec, re.S)[k]
    return code, out


@pytest.mark.parametrize("k", [0, 1])
def test_readme_example_runs_as_written(tmp_path, k):
    code, want = readme_example(k)
    env = dict(os.environ, PYTHONPATH=str(SOURCE_DIR / "python"), PATHKERNEL_LIB=str(LIB))
    code = code.replace('"data/digits.csv.gz"', repr(str(SOURCE_DIR / "data" / "digits.csv.gz")))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == want


def test_float64_c_arrays_are_used_without_copy():
    x = np.zeros((3, 2))
    assert pkg._as_matrix(x, "X") is x
    f = np.asfortranarray(np.ones((3, 2)))
    c = pkg._as_matrix(f, "X")
    assert c is not f and c.flags.c_contiguous and np.array_equal(c, f)
    i = pkg._as_matrix(np.ones((3, 2), dtype=np.int32), "X")
    assert i.dtype == np.float64


# --------------------------------------------------------------- images

def test_images_train_like_the_cli(tmp_path):
    """Images (n, C, H, W) train a conv net with the same bits as the CLI
    on the same array saved as npy, and queries may be images too."""
    rng = np.random.default_rng(3)
    X = rng.uniform(0, 1, size=(30, 2, 9, 9))
    y = np.arange(30) % 3
    model = "conv:4,3,stride=2;tanh;maxpool:2;flatten;dense"
    run = pkg.train(X, y, model=model, optim="sgd", batch=8, lr=0.2, steps=9, seed=2, out=tmp_path / "py")
    spec = save_data(tmp_path, "im", X, y)
    pk("train", "--data", spec, "--model", model, "--loss", "softmax", "--optim", "sgd", "--batch", "8",
       "--lr", "0.2", "--steps", "9", "--seed", "2", "--out", tmp_path / "cli", "--quiet")
    cli = pkg.open_run(tmp_path / "cli")
    same(run.weights(), cli.weights())
    same(run.predict(X[:4]), run.predict(X[:4].reshape(4, -1)))
    # rows with an input_shape are the same model
    flat = pkg.train(X.reshape(30, -1), y, model=model, optim="sgd", batch=8, lr=0.2, steps=9, seed=2,
                     input_shape=(2, 9, 9), out=tmp_path / "flat")
    same(flat.weights(), run.weights())
    with pytest.raises(ValueError, match="input_shape"):
        pkg.train(X.reshape(30, -1), y, model=model, input_shape=(2, 9, 8), out=tmp_path / "bad")


@pytest.mark.parametrize("mode", ["full", "trace"])
def test_mlp_gram_in_memory_equals_cli(tmp_path, mode):
    """An MLP's Gram taken into an array (pk_kernel_tangent, through the
    same row segments as the CLI's file) equals the CLI's bit for bit; the
    trace Gram, whose blocks above the diagonal are mirrored, is exactly
    symmetric. 300 examples and 10 outputs: full blocks of 256, two of
    them."""
    r = np.random.default_rng(9)
    X = r.normal(size=(300, 6))
    spec = save_data(tmp_path, "x", X, np.arange(300) % 10)
    run = tmp_path / "run"
    pk("train", "--data", spec, "--model", "mlp:8:tanh", "--loss", "softmax", "--optim", "sgd", "--batch", "20",
       "--lr", "0.2", "--steps", "4", "--seed", "3", "--out", run, "--quiet")
    pk("kernel", run, "--x", spec, "--mode", mode, "--out", tmp_path / "k.npy")
    K = pkg.open_run(run).tangent_kernel(X, mode=mode)
    same(K, np.load(tmp_path / "k.npy"))
    if mode == "trace":
        same(K, K.T)


@pytest.mark.parametrize("mode", ["full", "trace"])
def test_cnn_gram_in_memory_equals_cli(tmp_path, mode):
    """A CNN's Gram K(x, x) taken into an array (pk_kernel_tangent: each pair
    once, K(y, x) written by mirroring into the array) equals the one the
    CLI streams to its file (the same pairs mirrored through the sink) bit
    for bit, and is exactly symmetric. 70 examples: y steps of 50, so the
    second step mirrors into rows already written."""
    r = np.random.default_rng(5)
    X = r.uniform(0, 1, size=(70, 1, 6, 6))
    spec = save_data(tmp_path, "x", X, np.arange(70) % 3)
    run = tmp_path / "run"
    pk("train", "--data", spec, "--model", "conv:3,3,pad=1;tanh;avgpool:2;flatten;dense:5;tanh;dense", "--loss",
       "softmax", "--optim", "sgd", "--lr", "0.2", "--batch", "10", "--steps", "4", "--seed", "3", "--out", run,
       "--quiet")
    pk("kernel", run, "--x", spec, "--mode", mode, "--out", tmp_path / "k.npy")
    K = pkg.open_run(run).tangent_kernel(X.reshape(70, -1), mode=mode)
    same(K, np.load(tmp_path / "k.npy"))
    same(K, K.transpose(1, 0, 3, 2) if mode == "full" else K.T)
