"""The paper's path kernel (MATH.md section 3, "The paper's path kernel"),
K^p(x, y) = sum_t eta_t sum_q c_q K^g_{w_t + s_q D_t}(x, y), against
independent computations and its invariants.

  1. `kernel --at path` of the training set against itself: symmetric bit
     for bit (full blocks and trace) and positive semi-definite (smallest
     eigenvalue >= -1e-12 x the largest), gd and sgd runs of tanh and ReLU
     MLPs; the same bytes with 1 and 2 threads.
  2. One gd step with the left rule: lr x the tangent kernel at w_0.
  3. PyTorch: functorch's empirical NTK at every node w_t + s_q (w_{t+1} -
     w_t) of the exported weights, summed with eta_t c_q (gd, sgd, momentum,
     Adam: eta_t is the run's learning rate for every optimiser).
  4. A linear model: K^p = (sum_t eta_t) (x . x' + 1), every rule.
  5. explain: kernel.npy is the paper's kernel (the bytes of `kernel --at
     path`), coef = phi / K^p, and pred = bias + sum_i a_i(x) K^p(x, x_i) to
     gl4's error; `--kernel path-batch` is the contribution kernel.
  6. Kernel machines: compare fits KRR without touching the kernel, and a
     failed Cholesky fails the command; krr refuses a kernel that is not
     symmetric.
"""
import numpy as np
import pytest

from conftest import SOURCE_DIR
from pkutil import load_weights, pk, pk_run, rel_err, save_data, traj_batches

torch = pytest.importorskip("torch")
pytest.importorskip("functorch")
from test_kernels import ntk_standard  # noqa: E402  (functorch's eNTK of exported weights)

DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"


def quad_rule(name):
    """Nodes s_q on [0, 1] and weights c_q (sum 1), computed here (numpy's Gauss-Legendre)."""
    if name == "left":
        return np.array([0.0]), np.array([1.0])
    if name == "mid":
        return np.array([0.5]), np.array([1.0])
    x, w = np.polynomial.legendre.leggauss(int(name[2:]))
    return (x + 1) / 2, w / 2


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """40 and 150 training digits (10 classes; 150 make blocks of examples
    off the diagonal) and 9 other digits as queries, npy specs."""
    d = tmp_path_factory.mktemp("pkdigits")
    a = np.loadtxt(DIGITS, delimiter=",")
    return {"train": save_data(d, "tr", a[:40, :-1], a[:40, -1].astype(np.int64)),
            "train150": save_data(d, "tr150", a[:150, :-1], a[:150, -1].astype(np.int64)),
            "query": save_data(d, "q", a[100:109, :-1], a[100:109, -1].astype(np.int64)),
            "dir": d}


def train(run, data, model, optim, lr, steps, *extra):
    opt = {"gd": ["--optim", "gd"], "sgd": ["--optim", "sgd", "--batch", "8"],
           "momentum": ["--optim", "momentum", "--momentum", "0.9", "--batch", "8"],
           "adam": ["--optim", "adam", "--batch", "8"]}[optim]
    pk("train", "--data", data, "--model", model, "--loss", "softmax", *opt, "--lr", lr, "--steps", steps,
       "--seed", "4", "--quiet", "--out", run, *extra)


# ------------------------------------------------ 1. symmetric, PSD, threads


@pytest.mark.parametrize("optim", ["gd", "sgd"])
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_symmetric_and_psd(digits, tmp_path, act, optim):
    run = tmp_path / "run"
    train(run, digits["train150"], f"mlp:16:{act}", optim, 0.1, 25, "--standardize")
    for mode in ("full", "trace"):
        outs = {}
        for threads in ("1", "2"):
            outs[threads] = tmp_path / f"K-{mode}-{threads}.npy"
            pk("kernel", run, "--at", "path", "--x", digits["train150"], "--mode", mode, "--out", outs[threads],
               "--threads", threads)
        assert outs["1"].read_bytes() == outs["2"].read_bytes(), f"{mode}: --threads 1 and 2 differ"
        K = np.load(outs["1"])
        M = K.transpose(0, 2, 1, 3).reshape(1500, 1500) if mode == "full" else K
        assert M.shape == ((1500, 1500) if mode == "full" else (150, 150))
        assert np.array_equal(M, M.T), f"{act} {optim} {mode}: not symmetric bit for bit"
        ev = np.linalg.eigvalsh(M)
        assert ev[-1] > 0 and ev[0] >= -1e-12 * ev[-1], f"{act} {optim} {mode}: eigenvalues {ev[0]:.3g} .. {ev[-1]:.3g}"
    # the trace is the trace of the full blocks
    assert rel_err(np.load(tmp_path / "K-trace-1.npy"), np.einsum("abkk->ab", np.load(tmp_path / "K-full-1.npy"))) < 1e-14


# ------------------------------------------------------- 2. one step of gd


def test_one_gd_step_left_is_lr_times_tangent_kernel(digits, tmp_path):
    run = tmp_path / "run"
    train(run, digits["train"], "mlp:16,8:tanh", "gd", 0.3, 1, "--standardize")
    for y in ([], ["--y", digits["query"]]):
        pk("kernel", run, "--at", "path", "--quad", "left", "--x", digits["train"], *y, "--out", tmp_path / "Kp.npy")
        pk("kernel", run, "--at", "init", "--x", digits["train"], *y, "--out", tmp_path / "K0.npy")
        e = rel_err(np.load(tmp_path / "Kp.npy"), 0.3 * np.load(tmp_path / "K0.npy"))
        assert e < 1e-14, f"one gd step, left rule: differs from lr K^g(w_0) by {e:.3g}"


# ------------------------------------------------------------ 3. PyTorch


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("pksmall")
    r = np.random.default_rng(7)
    labels = np.array([0, 1, 2] * 5, dtype=np.int64)
    r.shuffle(labels)
    return {"train": save_data(d, "tr", r.normal(size=(15, 5)), labels),
            "qx": save_data(d, "qx", r.normal(size=(6, 5)), np.zeros(6)),
            "qy": save_data(d, "qy", r.normal(size=(4, 5)), np.zeros(4)),
            "QX": np.load(d / "qx_x.npy"), "QY": np.load(d / "qy_x.npy"), "X": np.load(d / "tr_x.npy")}


@pytest.mark.parametrize("optim,quad,act", [("gd", "gl2", "tanh"), ("sgd", "gl3", "tanh"), ("sgd", "mid", "relu"),
                                            ("momentum", "gl2", "tanh"), ("adam", "left", "tanh")])
def test_matches_functorch_at_every_node(small, tmp_path, optim, quad, act):
    run = tmp_path / "run"
    model = f"mlp:7,6:{act}"
    train(run, small["train"], model, optim, 0.05, 6, "--keep", "1", "--schedule", "cosine", "--lr-min", "0.01")
    lr, _, _ = traj_batches(run / "trajectory.bin")
    assert len(set(lr)) > 1, "the schedule should vary eta_t"
    steps = []
    for t in range(len(lr) + 1):
        pk("weights", run, "--step", t, "--out", tmp_path / f"w{t}")
        steps.append(load_weights(tmp_path / f"w{t}"))
    s_q, c_q = quad_rule(quad)
    cases = [(small["qx"], small["qy"], small["QX"], small["QY"]), (small["qx"], None, small["QX"], small["QX"])]
    for xs, ys, X, Y in cases:
        want = 0
        for t, eta in enumerate(lr):
            for s, c in zip(s_q, c_q):
                node = [(W0 + s * (W1 - W0), b0 + s * (b1 - b0)) for (W0, b0), (W1, b1) in zip(steps[t], steps[t + 1])]
                want = want + eta * c * ntk_standard(node, act, X, Y)
        out = tmp_path / "K.npy"
        pk("kernel", run, "--at", "path", "--quad", quad, "--x", xs, *(["--y", ys] if ys else []), "--out", out)
        e = rel_err(np.load(out), want)
        assert e < 1e-12, f"{optim} {quad} {act}: path kernel differs from functorch's sum by {e:.3g}"


# ---------------------------------------------------------- 4. linear model


@pytest.mark.parametrize("optim", ["gd", "sgd", "momentum"])
def test_linear_closed_form(tmp_path, optim):
    r = np.random.default_rng(11)
    X, Q = r.normal(size=(30, 4)), r.normal(size=(5, 4))
    data = save_data(tmp_path, "tr", X, X @ r.normal(size=4) + 0.5)
    qs = save_data(tmp_path, "q", Q, np.zeros(5))
    run = tmp_path / "run"
    extra = {"gd": ["--optim", "gd"], "sgd": ["--optim", "sgd", "--batch", "7"],
             "momentum": ["--optim", "momentum", "--batch", "7"]}[optim]
    pk("train", "--data", data, "--model", "linear", "--loss", "mse", *extra, "--lr", "0.05", "--steps", "12",
       "--schedule", "step", "--step-every", "5", "--gamma", "0.5", "--quiet", "--out", run)
    lr, _, _ = traj_batches(run / "trajectory.bin")
    want = lr.sum() * (Q @ X.T + 1.0)  # J_x = [x, 1] at every w
    for rule in ("left", "gl2", "gl5"):
        pk("kernel", run, "--at", "path", "--quad", rule, "--x", qs, "--y", data, "--mode", "trace",
           "--out", tmp_path / "K.npy")
        e = rel_err(np.load(tmp_path / "K.npy"), want)
        assert e < 1e-13, f"{optim} {rule}: {e:.3g}"


# ------------------------------------------------------------- 5. explain


def test_explain_representation_with_the_papers_kernel(tmp_path):
    """One output, sgd with few steps (some examples never in a batch): the
    paper's kernel is non-zero for all of them, a_i(x) = phi_i(x) / K^p(x, x_i)
    and f(x; w_T) = b(x) + sum_i a_i(x) K^p(x, x_i) to gl4's error."""
    r = np.random.default_rng(9)
    X, w = r.normal(size=(40, 6)), r.normal(size=6)
    data = save_data(tmp_path, "tr", X, np.sin(X @ w))
    qs = save_data(tmp_path, "q", r.normal(size=(7, 6)), np.zeros(7))
    run, out = tmp_path / "run", tmp_path / "ex"
    pk("train", "--data", data, "--model", "mlp:16:tanh", "--loss", "mse", "--optim", "sgd", "--batch", "5",
       "--lr", "0.1", "--steps", "6", "--seed", "3", "--quiet", "--out", run)
    _, batches, N = traj_batches(run / "trajectory.bin")
    assert len(np.unique(np.concatenate(batches))) < N, "every example was sampled: the test would not show the difference"
    pk("explain", run, "--query", qs, "--quad", "gl4", "--out", out)
    pred, bias = np.load(out / "pred.npy")[:, 0], np.load(out / "bias.npy")[:, 0]
    contrib, K, coef = np.load(out / "contrib.npy")[:, :, 0], np.load(out / "kernel.npy"), np.load(out / "coef.npy")
    assert K.shape == coef.shape == (7, N)
    assert np.all(K != 0) and np.all(np.isfinite(coef)), "the paper's kernel is zero nowhere here"
    assert np.all(np.abs(coef * K - contrib) <= 4 * np.finfo(float).eps * np.abs(contrib))
    moved = pred - bias
    rel = np.abs(moved - (coef * K).sum(1)).max() / np.abs(moved).max()
    assert rel < 1e-9, f"f = b + sum_i a_i K^p: relative error {rel:.3g}"
    # the kernel is the paper's: the bytes `kernel --at path` writes
    pk("kernel", run, "--at", "path", "--quad", "gl4", "--x", qs, "--y", data, "--mode", "trace",
       "--out", tmp_path / "K.npy")
    assert np.array_equal(np.load(tmp_path / "K.npy"), K)
    # --kernel path-batch: the contribution kernel, zero for the examples never sampled
    pk("explain", run, "--query", qs, "--quad", "gl4", "--kernel", "path-batch", "--out", tmp_path / "exb")
    Kb = np.load(tmp_path / "exb" / "kernel.npy")
    seen = np.zeros(N, bool)
    seen[np.concatenate(batches)] = True
    assert np.array_equal(Kb != 0, np.broadcast_to(seen, Kb.shape))
    pk("kernel", run, "--at", "path-batch", "--quad", "gl4", "--x", qs, "--mode", "trace", "--out", tmp_path / "Kb.npy")
    assert np.array_equal(np.load(tmp_path / "Kb.npy"), Kb)
    assert np.array_equal(np.load(tmp_path / "exb" / "contrib.npy")[:, :, 0], contrib)


def test_path_batch_refuses_y(digits, tmp_path):
    run = tmp_path / "run"
    train(run, digits["train"], "mlp:8:tanh", "gd", 0.1, 2)
    p = pk_run("kernel", run, "--at", "path-batch", "--x", digits["query"], "--y", digits["query"],
               "--out", tmp_path / "K.npy", expect=2)
    assert "--y" in p.stderr and not (tmp_path / "K.npy").exists()
    p = pk_run("explain", run, "--query", digits["query"], "--kernel", "tangent", "--out", tmp_path / "ex", expect=2)
    assert "path-batch" in p.stderr


# ---------------------------------------------------------- 6. kernel machines


def test_compare_failed_cholesky_is_an_error(tmp_path):
    """A linear model's tangent and path kernels have rank d + 1 = 65 < 100
    examples: with no ridge, Cholesky fails, and compare says so (exit 1)."""
    p = pk_run("compare", "--data", DIGITS, "--first", 100, "--test", DIGITS, "--test-first", 20, "--model", "linear",
               "--loss", "mse", "--optim", "gd", "--lr", 0.01, "--steps", 3, "--ridge", 0, "--out", tmp_path / "cmp",
               expect=1)
    assert "kernel ridge regression on the path kernel" in p.stderr and "not positive definite" in p.stderr, p.stderr
    assert not (tmp_path / "cmp" / "compare.csv").exists()


def test_krr_refuses_an_asymmetric_kernel(tmp_path):
    K = np.eye(4) + 0.1
    K[0, 3] += 1e-6
    np.save(tmp_path / "K.npy", K)
    np.save(tmp_path / "Y.npy", np.ones(4))
    p = pk_run("krr", "--kernel", tmp_path / "K.npy", "--targets", tmp_path / "Y.npy", "--out", tmp_path / "o",
               expect=2)
    assert "not symmetric" in p.stderr and "--at path" in p.stderr


def test_too_large_for_memory_is_refused_before_any_work(digits, tmp_path):
    run = tmp_path / "run"
    train(run, digits["train"], "mlp:8:tanh", "gd", 0.1, 2)
    p = pk_run("kernel", run, "--at", "path", "--x", DIGITS, "--mode", "full", "--mem", 1, "--out", tmp_path / "K.npy",
               expect=2)
    assert "--mode trace" in p.stderr and "--mem" in p.stderr, p.stderr
    assert not (tmp_path / "K.npy").exists()


def test_gd_left_contribution_kernel_is_path_kernel_over_n(digits, tmp_path):
    """Full-batch gd, left rule: K^c = K^p / N (MATH.md section 3), both
    computed by pathkernel, the contribution kernel through explain's sweep."""
    run = tmp_path / "run"
    train(run, digits["train"], "mlp:16:tanh", "gd", 0.2, 7, "--standardize")
    common = ["--quad", "left", "--x", digits["query"], "--mode", "full"]
    pk("kernel", run, "--at", "path-batch", *common, "--out", tmp_path / "Kc.npy")
    pk("kernel", run, "--at", "path", *common, "--y", digits["train"], "--out", tmp_path / "Kp.npy")
    Kc, Kp = np.load(tmp_path / "Kc.npy"), np.load(tmp_path / "Kp.npy")
    assert Kc.shape == Kp.shape == (9, 40, 10, 10)
    e = rel_err(40 * Kc, Kp)
    assert e < 1e-13, f"N K^c differs from K^p by {e:.3g}"
