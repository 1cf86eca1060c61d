"""Tangent kernels, the exact path kernel and per-example contributions
(MATH.md sections 2-4) against independent computations.

Run:  /usr/bin/python3 -m pytest -q tests/python/test_kernels.py
Needs Debian's python3-torch (1.13, with functorch) and python3-numpy, and a
built tree (PK_BUILD and PK_SOURCE as in conftest.py; data/digits.csv.gz is
read from PK_SOURCE). About 5 s on 2 cores.

  1. `pathkernel kernel` (full blocks and trace, every activation, depths 0-3,
     standard and ntk parameterisation) against the empirical NTK that
     functorch computes from the exported weights (vmap(jacrev) and a
     contraction over all parameters).
  2. A linear model: the contribution kernel of `explain --kernel path-batch` against
     sum_t eta_t/|B_t| 1[i in B_t] (x.x_i + 1), computed in numpy from the
     recorded batches and learning rates of trajectory.bin.
  3. `verify` passes with gl4 and fails with left on tanh/softplus MLPs; the
     left rule's error halves with the learning rate at fixed eta*T.
  4. `convergence` slopes near 1 (left), 2 (mid) and 4 (gl2), and the slopes
     it prints agree with a least-squares fit of the errors it writes.
  5. Completeness pred = bias + sum_i contrib with gl4 for softmax, logistic
     and two-output mse; summary.json agrees with numpy; coef * kernel =
     contrib for one output, NaN coefficients exactly where the kernel is 0.
  6. `explain --threads 1` and `--threads 2` write identical bytes.

Every comparison is a max relative error max|got - want| / max|want| unless
said otherwise.
"""
import csv
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
functorch = pytest.importorskip("functorch")
from functorch import jacrev, make_functional, vmap  # noqa: E402

from conftest import SOURCE_DIR  # noqa: E402  (tests/python is on sys.path)
from pkutil import load_weights, pk, pk_run, rel_err, save_data, traj_batches  # noqa: E402

torch.set_num_threads(1)  # tiny matrices
DT = torch.float64
ACTS = ["identity", "tanh", "relu", "sigmoid", "softplus", "gelu"]
SIGMA_W, SIGMA_B = 1.5, 0.3
DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"

# ------------------------------------------------------------------ helpers


def make_act(name):
    nn = torch.nn
    return {"identity": nn.Identity, "tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
            "softplus": nn.Softplus, "gelu": lambda: nn.GELU(approximate="none")}[name]()


def act_fn(name):
    F = torch.nn.functional
    return {"identity": lambda z: z, "tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
            "softplus": F.softplus, "gelu": lambda z: F.gelu(z, approximate="none")}[name]


def contract(Jx, Jy):
    """K[a, b, k, l] = sum_p Jx[a, k, p] Jy[b, l, p] summed over parameter tensors."""
    K = 0
    for jx, jy in zip(Jx, Jy):
        K = K + torch.einsum("akp,blp->abkl", jx.flatten(2), jy.flatten(2))
    return K.detach().numpy()


def ntk_standard(layers, act, X, Y):
    """Empirical NTK of the standard parameterisation: nn.Sequential holding
    the exported weights, functorch Jacobians w.r.t. its parameters."""
    mods = []
    for i, (W, b) in enumerate(layers):
        lin = torch.nn.Linear(W.shape[1], W.shape[0], dtype=DT)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        mods.append(lin)
        if i + 1 < len(layers):
            mods.append(make_act(act))
    fmodel, params = make_functional(torch.nn.Sequential(*mods))
    f = lambda p, x: fmodel(p, x.unsqueeze(0)).squeeze(0)  # noqa: E731
    jac = vmap(jacrev(f), (None, 0))
    return contract(jac(params, torch.from_numpy(X)), jac(params, torch.from_numpy(Y)))


def ntk_ntkparam(layers, act, X, Y, sigma_w, sigma_b):
    """Empirical NTK of the ntk parameterisation z = (sigma_w/sqrt(d_in)) W a
    + sigma_b c, with Jacobians w.r.t. the raw W, c recovered from the
    exported effective weights."""
    sw = [sigma_w / math.sqrt(W.shape[1]) for W, _ in layers]
    params = []
    for (W, b), s in zip(layers, sw):
        params += [torch.from_numpy(W / s), torch.from_numpy(b / sigma_b)]
    phi = act_fn(act)

    def f(p, x):
        a = x
        for l in range(len(layers)):
            a = sw[l] * (p[2 * l] @ a) + sigma_b * p[2 * l + 1]
            if l + 1 < len(layers):
                a = phi(a)
        return a

    jac = vmap(jacrev(f), (None, 0))
    return contract(jac(tuple(params), torch.from_numpy(X)), jac(tuple(params), torch.from_numpy(Y)))


def check_verify_json(stdout):
    s = json.loads(stdout)
    for k in ("max_abs_err", "max_rel_err", "quad", "steps", "n_train", "n_query"):
        assert k in s, f"verify --json lacks {k}: {stdout}"
    return s


# ------------------------------------------------------------ shared data


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Small random data sets (d = 5 features) as npy specs."""
    d = tmp_path_factory.mktemp("kdata")
    r = np.random.default_rng(20240601)
    X = r.normal(size=(12, 5))
    labels = np.array([0, 1, 2] * 4, dtype=np.int64)
    r.shuffle(labels)
    return {
        "dir": d,
        "mse3": save_data(d, "mse3", X, r.normal(size=(12, 3))),
        "softmax3": save_data(d, "sm3", X, labels),
        "qx": save_data(d, "qx", r.normal(size=(6, 5)), np.zeros(6)),
        "qy": save_data(d, "qy", r.normal(size=(4, 5)), np.zeros(4)),
        "QX": np.load(d / "qx_x.npy"),
        "QY": np.load(d / "qy_x.npy"),
    }


# --------------------------------------------- 1. tangent kernel vs functorch

KERNEL_CASES = [("linear", "identity")] + [
    (f"mlp:{','.join(['7'] * depth)}:{act}", act) for act in ACTS for depth in (1, 2, 3)]


@pytest.mark.parametrize("param", ["standard", "ntk"])
@pytest.mark.parametrize("model,act", KERNEL_CASES, ids=[m for m, _ in KERNEL_CASES])
def test_tangent_kernel_matches_functorch(small, tmp_path, model, act, param):
    # alternate the loss so that both 3-output losses are covered
    loss = "softmax" if (KERNEL_CASES.index((model, act)) + (param == "ntk")) % 2 else "mse"
    data = small["softmax3" if loss == "softmax" else "mse3"]
    extra = ["--param", "ntk", "--sigma-w", SIGMA_W, "--sigma-b", SIGMA_B] if param == "ntk" else []
    run = tmp_path / "run"
    pk("train", "--data", data, "--model", model, "--loss", loss, "--optim", "gd", "--lr", "0.2",
       "--steps", "3", "--seed", "7", "--quiet", "--threads", "1", "--out", run, *extra)
    # init once per (model, param): the first architecture of every parameterisation
    steps = [("final", "final")] + ([("init", "0")] if model == "linear" or model.startswith("mlp:7:tanh") else [])
    for at, step in steps:
        kfull, ktrace, wdir = tmp_path / f"Kf-{at}.npy", tmp_path / f"Kt-{at}.npy", tmp_path / f"w-{at}"
        common = ["kernel", run, "--at", at, "--x", small["qx"], "--y", small["qy"], "--threads", "1"]
        pk(*common, "--mode", "full", "--out", kfull)
        pk(*common, "--mode", "trace", "--out", ktrace)
        pk("weights", run, "--step", step, "--out", wdir)
        layers = load_weights(wdir)
        assert len(layers) == (1 if model == "linear" else model.count(",") + 2)
        if param == "ntk":
            ref = ntk_ntkparam(layers, act, small["QX"], small["QY"], SIGMA_W, SIGMA_B)
        else:
            ref = ntk_standard(layers, act, small["QX"], small["QY"])
        assert ref.shape == (6, 4, 3, 3)
        K = np.load(kfull)
        assert K.shape == ref.shape
        e = rel_err(K, ref)
        assert e < 1e-12, f"{model} {param} at {at}: full blocks differ from functorch, rel err {e:.3g}"
        Kt = np.load(ktrace)
        e = rel_err(Kt, np.einsum("abkk->ab", ref))
        assert e < 1e-12, f"{model} {param} at {at}: trace differs from functorch, rel err {e:.3g}"


def test_tangent_kernel_self_is_symmetric_psd(small, tmp_path):
    """--y omitted: K(x, x) as a (6C x 6C) matrix is symmetric positive semi-definite."""
    run = tmp_path / "run"
    pk("train", "--data", small["softmax3"], "--model", "mlp:7,7:tanh", "--loss", "softmax", "--optim", "gd",
       "--lr", "0.2", "--steps", "3", "--quiet", "--threads", "1", "--out", run)
    pk("kernel", run, "--x", small["qx"], "--mode", "full", "--out", tmp_path / "K.npy", "--threads", "1")
    K = np.load(tmp_path / "K.npy")
    assert K.shape == (6, 6, 3, 3)
    M = K.transpose(0, 2, 1, 3).reshape(18, 18)
    assert rel_err(M, M.T) < 1e-14
    ev = np.linalg.eigvalsh(0.5 * (M + M.T))
    assert ev.min() > -1e-12 * ev.max()


def test_mlp_trace_gram_mirrored_blocks(tmp_path):
    """--x alone, --mode trace, on an MLP: the Gram takes the blocks on and
    above the diagonal and mirrors them. 300 examples in blocks of 128 under
    --mem 1, and in one block without it: exactly symmetric, its upper
    triangle bit for bit the kernel against a copy of x (which takes every
    block), its lower triangle that kernel's to rounding."""
    r = np.random.default_rng(8)
    X = r.normal(size=(300, 5))
    spec = save_data(tmp_path, "x", X, np.arange(300) % 3)
    copy = save_data(tmp_path, "copy", X.copy(), np.arange(300) % 3)
    run = tmp_path / "run"
    pk("train", "--data", spec, "--model", "mlp:7,7:tanh", "--loss", "softmax", "--optim", "sgd", "--batch", "10",
       "--lr", "0.2", "--steps", "5", "--seed", "1", "--quiet", "--out", run)
    up = np.triu_indices(300)
    lo = np.tril_indices(300, -1)
    for mem in (["--mem", "1"], []):
        pk("kernel", run, "--x", spec, "--mode", "trace", *mem, "--out", tmp_path / "g.npy")
        pk("kernel", run, "--x", spec, "--y", copy, "--mode", "trace", *mem, "--out", tmp_path / "c.npy")
        G, Kc = np.load(tmp_path / "g.npy"), np.load(tmp_path / "c.npy")
        assert np.array_equal(G, G.T), f"{mem}: the Gram is not exactly symmetric"
        assert np.array_equal(G[up], Kc[up]), f"{mem}: upper triangle differs from x against a copy"
        assert rel_err(G[lo], Kc[lo]) < 1e-14


# ------------------------------------------------------- 2. linear model


@pytest.fixture(scope="module")
def linear_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("lin")
    r = np.random.default_rng(11)
    X = r.normal(size=(30, 4))
    y = X @ r.normal(size=4) + 0.5 + 0.1 * r.normal(size=30)
    Q = r.normal(size=(5, 4))
    return {"train": save_data(d, "tr", X, y), "query": save_data(d, "q", Q, np.zeros(5)), "X": X, "Q": Q}


@pytest.mark.parametrize("optim", ["gd", "sgd"])
def test_linear_path_kernel_closed_form(linear_data, tmp_path, optim):
    run = tmp_path / "run"
    extra = ["--batch", "7"] if optim == "sgd" else []
    pk("train", "--data", linear_data["train"], "--model", "linear", "--loss", "mse", "--optim", optim,
       "--lr", "0.05", "--steps", "12", "--seed", "3", "--quiet", "--threads", "1", "--out", run, *extra)
    lr, batches, N = traj_batches(run / "trajectory.bin")
    assert N == 30 and len(lr) == 12
    assert np.all(lr == 0.05)
    if optim == "sgd":  # epochs of ceil(30/7) = 5 slices of a permutation, the last one of 2
        assert [len(b) for b in batches] == [7, 7, 7, 7, 2] * 2 + [7, 7]
        for e in range(2):
            assert sorted(np.concatenate(batches[5 * e:5 * e + 5])) == list(range(N))
    else:
        assert all(np.array_equal(b, np.arange(N)) for b in batches)
    weight = np.zeros(N)  # sum_t eta_t / |B_t| 1[i in B_t]  (with multiplicity)
    for eta, b in zip(lr, batches):
        np.add.at(weight, b, eta / len(b))
    X, Q = linear_data["X"], linear_data["Q"]
    want = (Q @ X.T + 1.0) * weight[None, :]   # J_x = [x, 1] for every w
    for rule in ("left", "mid", "gl2", "gl4"):
        out = tmp_path / f"ex-{rule}"
        pk("explain", run, "--query", linear_data["query"], "--quad", rule, "--kernel", "path-batch", "--out", out,
           "--threads", "1")
        K = np.load(out / "kernel.npy")
        assert K.shape == (5, N)
        e = rel_err(K, want)
        assert e < 1e-12, f"{optim} {rule}: path kernel differs from the closed form, rel err {e:.3g}"
        pk("verify", run, "--query", linear_data["query"], "--quad", rule, "--tol", "1e-12", "--threads", "1")


# ------------------------------------------- 3. verify on smooth MLPs


@pytest.fixture(scope="module")
def smooth_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("smooth")
    r = np.random.default_rng(5)
    X = r.normal(size=(40, 5))
    return {"train": save_data(d, "tr", X, np.sin(X.sum(1, keepdims=True))),
            "query": save_data(d, "q", r.normal(size=(4, 5)), np.zeros(4))}


@pytest.mark.parametrize("optim", ["gd", "sgd"])
@pytest.mark.parametrize("act", ["tanh", "softplus"])
def test_verify_smooth_mlp(smooth_data, tmp_path, act, optim):
    run = tmp_path / "run"
    extra = ["--batch", "10"] if optim == "sgd" else []
    pk("train", "--data", smooth_data["train"], "--model", f"mlp:16,16:{act}", "--loss", "mse",
       "--optim", optim, "--lr", "0.1", "--steps", "20", "--seed", "1", "--quiet", "--threads", "1",
       "--out", run, *extra)
    q = ["--query", smooth_data["query"], "--threads", "1"]
    ok = pk_run("verify", run, *q, "--quad", "gl4", "--tol", "1e-9", "--json", expect=None)
    s = check_verify_json(ok.stdout)
    assert ok.returncode == 0, f"verify gl4 failed: {ok.stdout}{ok.stderr}"
    assert s["max_rel_err"] <= 1e-9 and s["quad"] == "gl4" and s["steps"] == 20
    bad = pk_run("verify", run, *q, "--quad", "left", "--tol", "1e-9", "--json", expect=None)
    s = check_verify_json(bad.stdout)
    assert bad.returncode == 1, f"verify left should fail at tol 1e-9 (exit {bad.returncode}): {bad.stdout}"
    assert s["max_rel_err"] > 1e-9


@pytest.mark.parametrize("act", ["tanh", "softplus"])
def test_left_error_halves_with_lr(smooth_data, tmp_path, act):
    """Fixed eta*T = 2: the left rule's error is O(eta)."""
    errs = []
    for lr, steps in ((0.1, 20), (0.05, 40)):
        run = tmp_path / f"run-{lr}"
        pk("train", "--data", smooth_data["train"], "--model", f"mlp:16,16:{act}", "--loss", "mse",
           "--optim", "gd", "--lr", lr, "--steps", steps, "--seed", "1", "--quiet", "--threads", "1",
           "--out", run)
        p = pk_run("verify", run, "--query", smooth_data["query"], "--quad", "left", "--tol", "1e-9",
                   "--json", "--threads", "1", expect=1)
        errs.append(check_verify_json(p.stdout)["max_abs_err"])
    ratio = errs[0] / errs[1]
    assert 1.6 <= ratio <= 2.5, f"left error ratio for lr 0.1 -> 0.05 is {ratio:.3f} ({errs})"


# ------------------------------------------------------- 4. convergence


def test_convergence_slopes(smooth_data, tmp_path):
    out = tmp_path / "conv"
    lrs = [0.1, 0.05, 0.025, 0.0125]
    stdout = pk("convergence", "--data", smooth_data["train"], "--query", smooth_data["query"],
                "--model", "mlp:16,16:tanh", "--param", "ntk", "--sigma-w", "2", "--sigma-b", "0.5",
                "--loss", "mse", "--optim", "gd", "--time", "0.8", "--lrs", ",".join(map(str, lrs)),
                "--rules", "left,mid,gl2", "--seed", "2", "--threads", "1", "--out", out)
    with open(out / "convergence.csv") as f:
        rows = list(csv.DictReader(f))
    slopes = {r["rule"]: float(r["max_abs_err"]) for r in rows if r["lr"] == "slope"}
    errs = {}
    for r in rows:
        if r["lr"] != "slope":
            lr = float(r["lr"])
            assert int(r["steps"]) == round(0.8 / lr)
            errs.setdefault(r["rule"], {})[lr] = float(r["max_abs_err"])
    assert set(slopes) == {"left", "mid", "gl2"} and all(len(v) == 4 for v in errs.values())
    # the printed slope line agrees with the csv
    line = next(l for l in stdout.splitlines() if l.startswith("slope")).split()[1:]
    assert [float(v) for v in line] == pytest.approx([slopes[k] for k in ("left", "mid", "gl2")], abs=1e-3)
    # in the asymptotic regime, above the rounding floor
    assert min(errs["gl2"].values()) > 5e-13, errs["gl2"]
    for rule, order in (("left", 1), ("mid", 2), ("gl2", 4)):
        x = np.log(lrs)
        y = np.log([errs[rule][lr] for lr in lrs])
        fit = np.polyfit(x, y, 1)[0]
        assert slopes[rule] == pytest.approx(fit, abs=1e-9), f"{rule}: csv slope {slopes[rule]} vs fit {fit}"
        assert abs(slopes[rule] - order) < 0.25, f"{rule}: slope {slopes[rule]:.3f}, expected {order}"
        # errors decrease monotonically with the learning rate
        assert all(np.diff(y) < 0), f"{rule}: errors not decreasing with lr: {errs[rule]}"


# ------------------------------------------------------- 5. completeness


@pytest.fixture(scope="module")
def compl_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("compl")
    r = np.random.default_rng(9)
    X = r.normal(size=(60, 6))
    w = r.normal(size=6)
    return {
        "logistic": save_data(d, "lg", X, (X @ w + 0.3 * r.normal(size=60) > 0).astype(np.float64)),
        "mse2": save_data(d, "m2", X, np.stack([np.sin(X @ w), np.cos(X[:, 0])], 1)),
        "mse1": save_data(d, "m1", X, np.sin(X @ w)),
        "query": save_data(d, "q", r.normal(size=(7, 6)), np.zeros(7)),
    }


COMPL_CASES = {
    # name: (data, loss, outputs, optimiser options)
    "softmax-digits": ("digits", "softmax", 10, ["--optim", "sgd", "--batch", "50"]),
    "logistic": ("logistic", "logistic", 1, ["--optim", "gd"]),
    "mse2": ("mse2", "mse", 2, ["--optim", "sgd", "--batch", "16"]),
}


def check_completeness(out, C):
    pred, bias, contrib = np.load(out / "pred.npy"), np.load(out / "bias.npy"), np.load(out / "contrib.npy")
    Q = pred.shape[0]
    assert pred.shape == bias.shape == (Q, C) and contrib.shape[0] == Q and contrib.shape[2] == C
    moved = pred - bias
    assert np.max(np.abs(moved)) > 1e-3, "training did not move the predictions: the test would be empty"
    resid = np.abs(moved - contrib.sum(axis=1))
    abs_err = float(resid.max())
    rel = abs_err / float(np.max(np.abs(moved)))
    assert rel < 1e-9, f"pred - bias - sum contrib: relative {rel:.3g}"
    s = json.loads((out / "summary.json").read_text())
    # the library accumulates sum_i contrib per step as it goes, numpy sums
    # the final contributions: the two may differ in the last bits
    tol = max(1e-12 * abs_err, 1e-15 * max(1.0, float(np.max(np.abs(moved)))))
    assert abs(s["max_abs_err"] - abs_err) <= tol, f"summary {s['max_abs_err']!r} vs numpy {abs_err!r} (tol {tol:.3g})"
    assert s["max_rel_err"] == pytest.approx(s["max_abs_err"] / np.max(np.abs(moved)), rel=1e-12)
    assert s["n_outputs"] == C and s["n_query"] == Q and s["quad"] == "gl4"
    return pred, bias, contrib


@pytest.mark.parametrize("case", list(COMPL_CASES))
def test_completeness(compl_data, tmp_path, case):
    data, loss, C, opt = COMPL_CASES[case]
    run, out = tmp_path / "run", tmp_path / "ex"
    if data == "digits":
        train = ["--data", DIGITS, "--first", "300", "--standardize"]
        query = ["--query", DIGITS, "--random", "8", "--data-seed", "4"]
    else:
        train = ["--data", compl_data[data]]
        query = ["--query", compl_data["query"]]
    pk("train", *train, "--model", "mlp:16:tanh", "--loss", loss, *opt, "--lr", "0.1", "--steps", "15",
       "--seed", "2", "--quiet", "--threads", "1", "--out", run)
    pk("explain", run, *query, "--quad", "gl4", "--out", out, "--threads", "1")
    pred, bias, contrib = check_completeness(out, C)
    # the predictions are the run's own
    pk("predict", run, "--data", *(query[1:]), "--out", tmp_path / "p.npy", "--threads", "1")
    assert np.array_equal(np.load(tmp_path / "p.npy"), pred)


def test_coefficients_one_output(compl_data, tmp_path):
    """1 output, sgd with few steps so that some examples are never in a batch,
    the contribution kernel (--kernel path-batch, the indicator form):
    coef * kernel = contrib where the kernel is non-zero, NaN where it is 0,
    and such examples contribute nothing. (The paper's kernel:
    test_path_kernel.py.)"""
    run, out = tmp_path / "run", tmp_path / "ex"
    pk("train", "--data", compl_data["mse1"], "--model", "mlp:16:tanh", "--loss", "mse", "--optim", "sgd",
       "--batch", "5", "--lr", "0.1", "--steps", "6", "--seed", "3", "--quiet", "--threads", "1", "--out", run)
    pk("explain", run, "--query", compl_data["query"], "--quad", "gl4", "--kernel", "path-batch", "--out", out,
       "--threads", "1")
    pred, bias, contrib = check_completeness(out, 1)
    K, coef = np.load(out / "kernel.npy"), np.load(out / "coef.npy")
    assert K.shape == coef.shape == contrib.shape[:2]
    _, batches, N = traj_batches(run / "trajectory.bin")
    seen = np.zeros(N, bool)
    seen[np.concatenate(batches)] = True
    assert not seen.all(), "every example was sampled: the NaN branch is not exercised"
    nz = K != 0
    assert np.array_equal(nz, np.broadcast_to(seen, K.shape)), "kernel is zero exactly for unseen examples"
    assert np.all(np.isnan(coef[~nz])) and np.all(contrib[:, :, 0][~nz] == 0)
    assert np.all(np.isfinite(coef[nz]))
    c = contrib[:, :, 0][nz]
    assert np.all(np.abs(coef[nz] * K[nz] - c) <= 4 * np.finfo(float).eps * np.abs(c))


# ------------------------------------------------- 6. thread independence


def test_explain_threads_identical_bytes(tmp_path):
    run = tmp_path / "run"
    pk("train", "--data", DIGITS, "--first", "400", "--standardize", "--model", "mlp:64,64:tanh",
       "--loss", "softmax", "--optim", "sgd", "--batch", "200", "--lr", "0.1", "--steps", "6", "--seed", "5",
       "--quiet", "--threads", "2", "--out", run)
    outs = {}
    for n in ("1", "2"):
        outs[n] = tmp_path / f"ex{n}"
        pk("explain", run, "--query", DIGITS, "--random", "64", "--data-seed", "1", "--quad", "gl2",
           "--mode", "full", "--out", outs[n], "--threads", n)
    for name in ("contrib.npy", "kernel.npy", "pred.npy", "bias.npy"):
        a, b = (outs["1"] / name).read_bytes(), (outs["2"] / name).read_bytes()
        assert a == b, f"explain --threads 1 and --threads 2 wrote different {name}"
    assert np.load(outs["1"] / "kernel.npy").shape == (64, 400, 10, 10)
