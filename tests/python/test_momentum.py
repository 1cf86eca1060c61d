"""The exact representation for momentum, Adam, AdamW and weight decay
(MATH.md section 5; src/kernel/backward.c) against independent computations.

Run:  /usr/bin/python3 -m pytest -q tests/python/test_momentum.py
Needs Debian's python3-torch and python3-numpy and a built tree (PK_BUILD and
PK_SOURCE as in conftest.py; data/digits.csv.gz is read from PK_SOURCE).

  1. `verify --quad gl4 --tol 1e-9` passes for tanh MLPs trained with
     momentum, adam and adamw (with and without weight decay), full batch and
     mini-batches, softmax on 10 digit classes and two-output mse; `--quad left`
     fails at the same tolerance (the check can fail).
  2. momentum with --momentum 0 gives the contributions and kernel of the
     same run trained with sgd (two different code paths: the backward
     sweep and kernel/path.c's forward sweep).
  3. Adam runs truncated at T = 1, 2, 3: the change of the prediction between
     T-1 and T equals the change of sum_i contrib; pred.npy equals a numpy
     forward pass of the exported weights of every step.
  4. An independent computation in torch (autograd Jacobians of the outputs
     and of every per-example loss at the recorded weights, the optimiser
     state rebuilt in numpy, Gauss-Legendre nodes computed by numpy) of
     contrib.npy, kernel.npy (trace and full) and regularisation.npy for
     momentum with L2 decay, Adam and AdamW with decoupled decay.
  5. With weight decay pred = bias + sum_i contrib + regularisation and the
     regularisation is non-zero; without decay it is exactly zero.

Every comparison is a max relative error max|got - want| / max|want|.
"""
import gzip
import json
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import SOURCE_DIR  # noqa: E402
from pkutil import pk, pk_run, rel_err  # noqa: E402

torch.set_num_threads(1)
DT = torch.float64
DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Digits (first 300, 10 classes) as CSV, and a two-output regression on
    the same features as npy."""
    d = tmp_path_factory.mktemp("momentum")
    with gzip.open(DIGITS, "rt") as f:
        A = np.loadtxt(f, delimiter=",", max_rows=300)
    X = A[:, :-1]
    Y = np.stack([np.sin(X[:, 20] / 4.0) + 0.1 * X[:, 30] / 16, np.cos(X[:, 36] / 5.0)], axis=1)
    np.save(d / "X.npy", X)
    np.save(d / "Y.npy", Y)
    return {"softmax": [DIGITS, "--first", "300"], "mse": [f"npy:{d / 'X.npy'},{d / 'Y.npy'}"]}


def train(sets, loss, out, optim, *extra, model="mlp:16:tanh", steps=20, seed=1):
    pk("train", "--data", *sets[loss], "--standardize", "--model", model, "--loss", loss,
       "--optim", *optim, "--steps", steps, "--seed", seed, "--quiet", "--out", out, *extra)
    return out


def query(sets, loss, n=12):
    # the first n training examples and their own standardisation (applied by the run)
    return ["--query", sets[loss][0], "--first", str(n)]


def verify_json(p):
    s = json.loads(p.stdout)
    for k in ("max_abs_err", "max_rel_err", "max_abs_regularisation", "quad", "steps"):
        assert k in s, f"verify --json lacks {k}: {p.stdout}"
    return s


# ------------------------------------------------------------- 1. verify

OPTS = {
    "momentum": (["momentum", "--momentum", "0.9", "--lr", "0.05"], []),
    "momentum-batch": (["momentum", "--momentum", "0.9", "--lr", "0.05", "--batch", "32"], []),
    "momentum-l2": (["momentum", "--momentum", "0.9", "--lr", "0.05", "--batch", "32"], ["--weight-decay", "0.05"]),
    "sgd-l2": (["sgd", "--lr", "0.1", "--batch", "32"], ["--weight-decay", "0.05"]),
    "gd-l2": (["gd", "--lr", "0.1"], ["--weight-decay", "0.05"]),
    "adam": (["adam", "--lr", "0.005"], []),
    "adam-batch": (["adam", "--lr", "0.005", "--batch", "32"], []),
    "adam-l2": (["adam", "--lr", "0.005", "--batch", "32"], ["--weight-decay", "0.05"]),
    "adamw": (["adamw", "--lr", "0.005"], ["--weight-decay", "0.1"]),
    "adamw-batch": (["adamw", "--lr", "0.005", "--batch", "32"], ["--weight-decay", "0.1"]),
}


@pytest.mark.parametrize("loss", ["softmax", "mse"])
@pytest.mark.parametrize("case", list(OPTS))
def test_verify_gl4(sets, tmp_path, case, loss):
    optim, extra = OPTS[case]
    # --keep 3: the backward sweep replays its segments from sparse checkpoints
    run = train(sets, loss, tmp_path / "run", optim, *extra, "--keep", "3")
    q = query(sets, loss)
    ok = pk_run("verify", run, *q, "--quad", "gl4", "--tol", "1e-9", "--json", expect=None)
    s = verify_json(ok)
    assert ok.returncode == 0, f"{case} {loss}: verify gl4 failed: {ok.stdout}{ok.stderr}"
    assert s["max_rel_err"] <= 1e-9 and s["steps"] == 20
    if extra:
        assert s["max_abs_regularisation"] > 1e-6, "weight decay but no regularisation term"
    else:
        assert s["max_abs_regularisation"] == 0.0
    if case in ("momentum-batch", "adamw"):
        bad = pk_run("verify", run, *q, "--quad", "left", "--tol", "1e-9", "--json", expect=None)
        s = verify_json(bad)
        assert bad.returncode == 1, f"verify left should fail at 1e-9: {bad.stdout}"
        assert s["max_rel_err"] > 1e-9


def test_small_memory_budget_segments(sets, tmp_path):
    """A budget that forces one query per block and segments of a few steps
    (P = 4810: 2 MiB hold the outputs, one dense H, the batch deltas and a
    few steps)
    gives the same numbers as the default plan; a budget too small for one
    query fails with a message that says how much one query needs."""
    run = train(sets, "softmax", tmp_path / "run", ["adam", "--lr", "0.005", "--batch", "32"], "--keep", "7",
                model="mlp:64:tanh")
    q = query(sets, "softmax", 6)
    pk("explain", run, *q, "--quad", "gl2", "--out", tmp_path / "a")
    pk("explain", run, *q, "--quad", "gl2", "--out", tmp_path / "b", "--mem", "2", "--block", "1")
    for name in ("contrib.npy", "kernel.npy", "pred.npy", "regularisation.npy"):
        a, b = np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name)
        if name == "regularisation.npy":
            assert np.all(a == 0) and np.all(b == 0)
        else:  # blocks of another size: GEMMs of another shape, the same numbers to rounding
            assert rel_err(b, a) < 1e-12, name
    big = train(sets, "softmax", tmp_path / "big", ["adam", "--lr", "0.005", "--batch", "32"],
                model="mlp:256,256:tanh", steps=2)
    p = pk_run("explain", big, *q, "--out", tmp_path / "d", "--mem", "1", expect=None)
    assert p.returncode == 2 and "one query needs" in p.stderr, p.stderr


# ------------------------------------------------- 2. momentum 0 is sgd


def test_momentum_zero_is_sgd(sets, tmp_path):
    a = train(sets, "softmax", tmp_path / "sgd", ["sgd", "--lr", "0.1", "--batch", "32"])
    b = train(sets, "softmax", tmp_path / "mom", ["momentum", "--momentum", "0", "--lr", "0.1", "--batch", "32"])
    q = query(sets, "softmax")
    for run, out in ((a, "ea"), (b, "eb")):
        pk("explain", run, *q, "--quad", "gl2", "--out", tmp_path / out)
    for name in ("contrib.npy", "kernel.npy", "pred.npy", "bias.npy"):
        x, y = np.load(tmp_path / "ea" / name), np.load(tmp_path / "eb" / name)
        e = rel_err(y, x)
        assert e < 1e-12, f"{name}: momentum 0 differs from sgd by {e:.3g}"
    assert np.all(np.load(tmp_path / "eb" / "regularisation.npy") == 0)
    # the contributions are not trivially equal (zero, or equal everywhere)
    c = np.load(tmp_path / "ea" / "contrib.npy")
    assert np.abs(c).max() > 1e-3 and np.count_nonzero(c) > c.size // 2


# --------------------------------------------- 3. truncated Adam runs


def forward_np(wdir, X):
    l, h = 1, X
    while (pathlib.Path(wdir) / f"W{l}.npy").exists():
        W, b = np.load(pathlib.Path(wdir) / f"W{l}.npy"), np.load(pathlib.Path(wdir) / f"b{l}.npy")
        h = h @ W.T + b
        l += 1
        if (pathlib.Path(wdir) / f"W{l}.npy").exists():
            h = np.tanh(h)
    return h


def test_adam_truncated_runs(sets, tmp_path):
    q = query(sets, "softmax")
    preds, sums = {}, {}
    for T in (1, 2, 3):
        run = train(sets, "softmax", tmp_path / f"r{T}", ["adam", "--lr", "0.005", "--batch", "32"], steps=T)
        out = tmp_path / f"e{T}"
        pk("explain", run, *q, "--quad", "gl4", "--out", out)
        preds[T] = np.load(out / "pred.npy")
        sums[T] = np.load(out / "contrib.npy").sum(axis=1)
        bias = np.load(out / "bias.npy")
        # pred against a numpy forward pass of the exported weights of every step
        pk("weights", run, "--step", "final", "--out", tmp_path / f"w{T}")
        pk("weights", run, "--step", "0", "--out", tmp_path / f"w0-{T}")
        ms = np.load(run / "standardize.npy")
        with gzip.open(DIGITS, "rt") as f:
            A = np.loadtxt(f, delimiter=",", max_rows=12)
        qx = (A[:, :-1] - ms[0]) / ms[1]
        assert rel_err(preds[T], forward_np(tmp_path / f"w{T}", qx)) < 1e-12
        assert rel_err(bias, forward_np(tmp_path / f"w0-{T}", qx)) < 1e-12
        if T == 1:
            assert rel_err(sums[1], preds[1] - bias) < 1e-10
        else:
            moved = preds[T] - preds[T - 1]
            e = rel_err(sums[T] - sums[T - 1], moved)
            assert e < 1e-10, f"step {T}: change of sum_i contrib differs from the change of pred by {e:.3g}"
            assert np.abs(moved).max() > 1e-4


# ---------------------------------------- 4. independent torch computation


def gl_nodes(K):
    x, w = np.polynomial.legendre.leggauss(K)
    return (x + 1) / 2, w / 2


def load_layers(wdir):
    out, l = [], 1
    while (pathlib.Path(wdir) / f"W{l}.npy").exists():
        out.append((np.load(pathlib.Path(wdir) / f"W{l}.npy"), np.load(pathlib.Path(wdir) / f"b{l}.npy")))
        l += 1
    return out


def flat(layers):
    return np.concatenate([np.concatenate([W.ravel(), b]) for W, b in layers])


def model_fn(shapes):
    def f(p, X):
        o, h = 0, X
        for i, (dout, din) in enumerate(shapes):
            W = p[o:o + dout * din].reshape(dout, din); o += dout * din
            b = p[o:o + dout]; o += dout
            h = h @ W.T + b
            if i + 1 < len(shapes):
                h = torch.tanh(h)
        return h
    return f


def read_batches(run, T, N):
    import struct
    buf = (pathlib.Path(run) / "trajectory.bin").read_bytes()
    _, _, T_, N_, total = struct.unpack_from("<IIQQQ", buf, 8)
    assert T_ == T and N_ == N
    o = 40
    lr = np.frombuffer(buf, "<f8", T, o); o += 16 * T
    off = np.frombuffer(buf, "<u8", T + 1, o); o += 8 * (T + 1)
    idx = np.frombuffer(buf, "<u4", total, o)
    return lr, [idx[off[t]:off[t + 1]].astype(np.int64) if off[t + 1] > off[t] else np.arange(N) for t in range(T)]


CASES = {
    "momentum-l2": (["momentum", "--momentum", "0.8", "--lr", "0.05", "--batch", "20"], 0.05),
    "adam": (["adam", "--lr", "0.005", "--batch", "20"], 0.0),
    "adamw": (["adamw", "--lr", "0.005", "--batch", "20"], 0.2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_against_torch(sets, tmp_path, case):
    optim, wd = CASES[case]
    kind = optim[0]
    T, N, NQ = 4, 60, 5
    run = tmp_path / "run"
    pk("train", "--data", DIGITS, "--first", str(N), "--standardize", "--model", "mlp:6:tanh", "--loss",
       "softmax", "--optim", *optim, "--weight-decay", repr(wd), "--steps", T, "--seed", "2", "--quiet",
       "--out", run)
    for mode in ("trace", "full"):
        pk("explain", run, "--query", DIGITS, "--first", str(NQ), "--quad", "gl4", "--mode", mode, "--kernel", "path-batch",
           "--out", tmp_path / mode)
    ms = np.load(run / "standardize.npy")
    with gzip.open(DIGITS, "rt") as f:
        A = np.loadtxt(f, delimiter=",", max_rows=N)
    X = torch.from_numpy((A[:, :-1] - ms[0]) / ms[1])
    y = torch.from_numpy(A[:, -1].astype(np.int64))
    Xq = X[:NQ]
    ws = []
    for t in range(T + 1):
        pk("weights", run, "--step", str(t), "--out", tmp_path / f"w{t}")
        ws.append(flat(load_layers(tmp_path / f"w{t}")))
    shapes = [W.shape for W, _ in load_layers(tmp_path / "w0")]
    f = model_fn(shapes)
    lr, bts = read_batches(run, T, N)
    nodes, weights = gl_nodes(4)
    P = ws[0].size

    def jac_out(w):  # (NQ, C, P)
        return torch.autograd.functional.jacobian(lambda p: f(p, Xq), torch.from_numpy(w)).numpy()

    def per_example_grads(w, idx):  # (nb, P): gradients of the per-example losses
        def losses(p):
            return torch.nn.functional.cross_entropy(f(p, X[idx]), y[idx], reduction="none")
        return torch.autograd.functional.jacobian(losses, torch.from_numpy(w)).numpy()

    # forward in numpy: optimiser state and preconditioners from the batch gradients
    m = np.zeros(P); v = np.zeros(P)
    b1, b2, eps = 0.9, 0.999, 1e-8
    coef, pre, gs = [], [], []
    for t in range(T):
        g = per_example_grads(ws[t], bts[t])
        gs.append(g)
        G = g.mean(axis=0) + (wd * ws[t] if kind != "adamw" else 0)
        if kind == "momentum":
            coef.append(lr[t]); pre.append(np.ones(P))
        else:
            m = b1 * m + (1 - b1) * G
            v = b2 * v + (1 - b2) * G * G
            vhat = v / (1 - b2 ** (t + 1))
            coef.append(lr[t] * (1 - b1) / (1 - b1 ** (t + 1)))
            pre.append(1 / (np.sqrt(vhat) + eps))
    decay = 0.8 if kind == "momentum" else b1
    H = np.zeros((NQ, 10, P))
    phi = np.zeros((NQ, N, 10))
    Kt = np.zeros((NQ, N))
    Kf = np.zeros((NQ, N, 10, 10))
    reg = np.zeros((NQ, 10))
    for t in reversed(range(T)):
        Jbar = sum(c * jac_out(ws[t] + s * (ws[t + 1] - ws[t])) for s, c in zip(nodes, weights))
        H = coef[t] * Jbar * pre[t] + decay * H
        idx = bts[t]
        nb = len(idx)
        phi[:, idx, :] -= np.einsum("qkp,jp->qjk", H, gs[t]) / nb
        Jb = torch.autograd.functional.jacobian(lambda p: f(p, X[idx]), torch.from_numpy(ws[t])).numpy()
        Kf[:, idx] += np.einsum("qkp,jlp->qjkl", H, Jb) / nb
        Kt[:, idx] += np.einsum("qkp,jkp->qj", H, Jb) / nb
        if kind == "adamw":
            reg += Jbar @ (-lr[t] * wd * ws[t])
        elif wd:
            reg -= H @ (wd * ws[t])
    got = tmp_path / "trace"
    e = rel_err(np.load(got / "contrib.npy"), phi)
    assert e < 1e-9, f"contrib differs from the torch computation by {e:.3g}"
    e = rel_err(np.load(got / "kernel.npy"), Kt)
    assert e < 1e-9, f"trace kernel differs by {e:.3g}"
    e = rel_err(np.load(tmp_path / "full" / "kernel.npy"), Kf)
    assert e < 1e-9, f"full kernel differs by {e:.3g}"
    r = np.load(got / "regularisation.npy")
    if wd:
        e = rel_err(r, reg)
        assert e < 1e-9, f"regularisation differs by {e:.3g}"
    else:
        assert np.all(r == 0)
    # and the whole: pred - bias = sum contrib + regularisation
    pred, bias = np.load(got / "pred.npy"), np.load(got / "bias.npy")
    assert rel_err(phi.sum(axis=1) + reg, pred - bias) < 1e-9


# ------------------------------------------------------ 5. regularisation


@pytest.mark.parametrize("case", ["sgd-l2", "momentum-l2", "adam-l2", "adamw-batch"])
def test_regularisation_completes_the_sum(sets, tmp_path, case):
    optim, extra = OPTS[case]
    run = train(sets, "mse", tmp_path / "run", optim, *extra)
    out = tmp_path / "ex"
    pk("explain", run, *query(sets, "mse"), "--quad", "gl4", "--out", out)
    pred, bias = np.load(out / "pred.npy"), np.load(out / "bias.npy")
    contrib, reg = np.load(out / "contrib.npy"), np.load(out / "regularisation.npy")
    assert reg.shape == pred.shape
    assert np.abs(reg).max() > 1e-6
    e = rel_err(bias + contrib.sum(axis=1) + reg, pred)
    assert e < 1e-9, f"pred != bias + sum contrib + regularisation: {e:.3g}"
    # without the regularisation term the sum is visibly off (it is not negligible)
    assert rel_err(bias + contrib.sum(axis=1), pred) > 1e-6
    s = json.loads((out / "summary.json").read_text())
    assert s["max_abs_regularisation"] == pytest.approx(np.abs(reg).max(), rel=1e-12)
    # the same optimiser without decay: regularisation exactly zero
    run0 = train(sets, "mse", tmp_path / "run0", optim)
    pk("explain", run0, *query(sets, "mse"), "--quad", "gl4", "--out", tmp_path / "ex0")
    assert np.all(np.load(tmp_path / "ex0" / "regularisation.npy") == 0)


# ------------------------------------------------------------ 6. threads


def test_threads_identical_bytes(sets, tmp_path):
    """The backward sweep's results do not depend on the thread count."""
    run = train(sets, "softmax", tmp_path / "run", ["adamw", "--lr", "0.005", "--batch", "32"],
                "--weight-decay", "0.1", model="mlp:32,16:tanh", steps=8)
    for n in ("1", "2"):
        pk("explain", run, *query(sets, "softmax", 40), "--mode", "full", "--threads", n, "--out", tmp_path / n)
    for name in ("contrib.npy", "kernel.npy", "regularisation.npy", "pred.npy"):
        a, b = (tmp_path / "1" / name).read_bytes(), (tmp_path / "2" / name).read_bytes()
        assert a == b, f"explain --threads 1 and --threads 2 wrote different {name}"


@pytest.mark.parametrize("case", ["momentum-l2", "adam-l2", "adamw-batch"])
def test_exact_to_rounding(sets, tmp_path, case):
    """With enough quadrature nodes the only error left is rounding: the
    representation itself (H recursion, P_s, decay terms) has no error floor."""
    optim, extra = OPTS[case]
    run = train(sets, "softmax", tmp_path / "run", optim, *extra)
    p = pk_run("verify", run, *query(sets, "softmax"), "--quad", "gl6", "--tol", "1e-13", "--json", expect=None)
    assert p.returncode == 0, f"{case}: gl6 not exact to rounding: {p.stdout}"
