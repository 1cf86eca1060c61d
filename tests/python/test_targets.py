"""Exact decomposition of a target g(f(x)) (MATH.md section 11): explain and
attribute --target output:C | label | margin | loss. The query's backward pass
at every quadrature node is seeded with dg/df at that node, so
g(f(x; w_T)) - g(f(x; w_0)) = sum_i phi_i^g(x) to the quadrature error, for
sgd, momentum and Adam; checked against numpy forward passes of the exported
weights and against an independent torch computation of phi^g."""
import gzip
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import SOURCE_DIR  # noqa: E402
from pkutil import load_weights, pk, pk_run, rel_err, target_np, traj_batches  # noqa: E402

torch.set_num_threads(1)
DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"
N, NQ = 120, 16

OPTIMS = {
    "sgd": ["sgd", "--lr", "0.1", "--batch", "20"],
    "momentum": ["momentum", "--momentum", "0.8", "--lr", "0.03", "--batch", "20"],
    "adam": ["adam", "--lr", "0.005", "--batch", "20"],
}
TARGETS = ["output:3", "label", "margin", "loss"]


def digits(n):
    with gzip.open(DIGITS, "rt") as f:
        A = np.loadtxt(f, delimiter=",", max_rows=n)
    return A[:, :-1], A[:, -1].astype(np.int64)


def forward_np(layers, X):
    h = X
    for i, (W, b) in enumerate(layers):
        h = h @ W.T + b
        if i + 1 < len(layers):
            h = np.tanh(h)
    return h


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("targets")
    out = {}
    for name, optim in OPTIMS.items():
        run = d / name
        pk("train", "--data", DIGITS, "--first", str(N), "--standardize", "--model", "mlp:12:tanh", "--loss",
           "softmax", "--optim", *optim, "--steps", "30", "--seed", "3", "--quiet", "--out", run)
        out[name] = run
    return out


def query_x(run):
    X, y = digits(NQ)
    ms = np.load(pathlib.Path(run) / "standardize.npy")
    return (X - ms[0]) / ms[1], y


def runner_up_changes(run, tmp_path, Xq, y, T):
    """Queries whose largest other logit (the margin's) changes along the
    path: sampled at 33 points of every step, from the exported weights."""
    ws = []
    for t in range(T + 1):
        pk("weights", run, "--step", str(t), "--out", tmp_path / f"w{t}")
        ws.append(load_weights(tmp_path / f"w{t}"))
    changed = np.zeros(len(y), bool)
    first = None
    for t in range(T):
        for s in np.linspace(0, 1, 33):
            layers = [((1 - s) * W0 + s * W1, (1 - s) * b0 + s * b1)
                      for (W0, b0), (W1, b1) in zip(ws[t], ws[t + 1])]
            F = forward_np(layers, Xq)
            F[np.arange(len(y)), y] = -np.inf
            r = F.argmax(axis=1)
            first = r if first is None else first
            changed |= r != first
    return changed


@pytest.mark.parametrize("optim", list(OPTIMS))
@pytest.mark.parametrize("target", TARGETS)
def test_target_sum_gl4(runs, tmp_path, optim, target):
    """pred_g - bias_g - sum_i phi_i^g within 1e-9 (relative) with gl4, and
    pred_g, bias_g equal to g of a numpy forward pass of the weights."""
    run = runs[optim]
    out = tmp_path / "e"
    pk("explain", run, "--query", DIGITS, "--first", str(NQ), "--quad", "gl4", "--target", target, "--out", out)
    pred, bias, phi = np.load(out / "pred.npy"), np.load(out / "bias.npy"), np.load(out / "contrib.npy")
    assert pred.shape == (NQ, 1) and bias.shape == (NQ, 1) and phi.shape == (NQ, N, 1)
    assert not (out / "kernel.npy").exists()
    Xq, y = query_x(run)
    pk("weights", run, "--step", "0", "--out", tmp_path / "w0")
    pk("weights", run, "--step", "final", "--out", tmp_path / "wT")
    assert rel_err(bias[:, 0], target_np(target, forward_np(load_weights(tmp_path / "w0"), Xq), y)) < 1e-12
    assert rel_err(pred[:, 0], target_np(target, forward_np(load_weights(tmp_path / "wT"), Xq), y)) < 1e-12
    moved = (pred - bias)[:, 0]
    resid = moved - phi.sum(axis=1)[:, 0]
    if target == "margin":
        # the margin is piecewise smooth: where the largest other logit changes
        # the integrand jumps, and the steps are cut there (MATH.md section 11);
        # the check means something only if such changes happen
        assert runner_up_changes(run, tmp_path, Xq, y, 30).sum() >= NQ // 2
    e = np.abs(resid).max() / np.abs(moved).max()
    assert e < 1e-9, f"{optim} {target}: pred - bias - sum phi is {e:.3g} of pred - bias"


def test_outputs_target_is_the_default(runs, tmp_path):
    run = runs["sgd"]
    a, b = tmp_path / "a", tmp_path / "b"
    pk("explain", run, "--query", DIGITS, "--first", "4", "--out", a, "--no-kernel")
    pk("explain", run, "--query", DIGITS, "--first", "4", "--out", b, "--no-kernel", "--target", "outputs")
    for f in ("pred.npy", "bias.npy", "contrib.npy"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    # output:C is column C of the outputs, bit for bit
    c = tmp_path / "c"
    pk("explain", run, "--query", DIGITS, "--first", "4", "--out", c, "--target", "output:7")
    assert np.array_equal(np.load(c / "contrib.npy")[:, :, 0], np.load(a / "contrib.npy")[:, :, 7])


def gl_nodes(K):
    x, w = np.polynomial.legendre.leggauss(K)
    return (x + 1) / 2, w / 2


@pytest.mark.parametrize("optim", ["sgd", "adam"])
@pytest.mark.parametrize("target", ["loss", "margin"])
def test_contributions_against_torch(tmp_path, optim, target):
    """phi_i^g(x) from torch: the query's gradient of g at each node (dg/df
    at the node, not at w_T) times the optimiser's bookkeeping (MATH.md
    sections 5 and 10), against explain --target within 1e-9."""
    T, n, nq = 8, 40, 6
    run = tmp_path / "run"
    opt = ["sgd", "--lr", "0.1", "--batch", "10"] if optim == "sgd" else ["adam", "--lr", "0.01", "--batch", "10"]
    pk("train", "--data", DIGITS, "--first", str(n), "--standardize", "--model", "mlp:6:tanh", "--loss", "softmax",
       "--optim", *opt, "--steps", T, "--seed", "5", "--quiet", "--out", run)
    pk("explain", run, "--query", DIGITS, "--first", str(nq), "--quad", "gl4", "--target", target,
       "--out", tmp_path / "e")
    X, y = digits(n)
    ms = np.load(run / "standardize.npy")
    X = torch.from_numpy((X - ms[0]) / ms[1])
    y = torch.from_numpy(y)
    ws, shapes = [], None
    for t in range(T + 1):
        pk("weights", run, "--step", str(t), "--out", tmp_path / f"w{t}")
        layers = load_weights(tmp_path / f"w{t}")
        shapes = [W.shape for W, _ in layers]
        ws.append(np.concatenate([np.concatenate([W.ravel(), b]) for W, b in layers]))

    def f(p, Xb):  # the tanh network of the flat weights p (W1, b1, W2, b2, ...)
        h, o = Xb, 0
        for i, (dout, din) in enumerate(shapes):
            h = h @ p[o:o + dout * din].reshape(dout, din).T + p[o + dout * din:o + dout * din + dout]
            o += dout * din + dout
            h = torch.tanh(h) if i + 1 < len(shapes) else h
        return h

    def g(p):  # (nq,) the target at the queries
        F = f(p, X[:nq])
        lab = F[torch.arange(nq), y[:nq]]
        if target == "loss":
            return torch.nn.functional.cross_entropy(F, y[:nq], reduction="none")
        other = F.clone()
        other[torch.arange(nq), y[:nq]] = -torch.inf
        return lab - other.max(dim=1).values

    def grad_g(w):  # (nq, P)
        return torch.autograd.functional.jacobian(g, torch.from_numpy(w)).numpy()

    def per_example(w, idx):  # (nb, P)
        def losses(p):
            return torch.nn.functional.cross_entropy(f(p, X[idx]), y[idx], reduction="none")
        return torch.autograd.functional.jacobian(losses, torch.from_numpy(w)).numpy()

    lr, bts, _ = traj_batches(run / "trajectory.bin")
    nodes, cw = gl_nodes(4)
    P = ws[0].size
    m, v = np.zeros(P), np.zeros(P)
    coef, pre, gs = [], [], []
    for t in range(T):
        gi = per_example(ws[t], bts[t])
        gs.append(gi)
        if optim == "sgd":
            coef.append(lr[t]); pre.append(np.ones(P))
        else:
            G = gi.mean(axis=0)
            m = 0.9 * m + 0.1 * G
            v = 0.999 * v + 0.001 * G * G
            coef.append(lr[t] * 0.1 / (1 - 0.9 ** (t + 1)))
            pre.append(1 / (np.sqrt(v / (1 - 0.999 ** (t + 1))) + 1e-8))
    decay = 0.0 if optim == "sgd" else 0.9
    H = np.zeros((nq, P))
    phi = np.zeros((nq, n))
    def pieces(t, q):
        """[0, 1] cut where query q's runner-up changes along step t (margin):
        a scan at 129 points, each change located by brentq on F_a - F_b."""
        if target != "margin":
            return [0.0, 1.0]
        from scipy.optimize import brentq
        w0, w1 = torch.from_numpy(ws[t]), torch.from_numpy(ws[t + 1])

        def logits(s):
            return f(w0 + s * (w1 - w0), X[q:q + 1])[0].detach().numpy()

        def runner(s):
            F = logits(s)
            F[int(y[q])] = -np.inf
            return int(F.argmax())

        grid = np.linspace(0, 1, 129)
        r = [runner(s) for s in grid]
        cuts = [brentq(lambda s: logits(s)[r[i]] - logits(s)[r[i + 1]], grid[i], grid[i + 1], xtol=1e-15)
                for i in range(128) if r[i] != r[i + 1]]
        return [0.0] + cuts + [1.0]

    n_cut = 0
    for t in reversed(range(T)):
        gbar = np.zeros((nq, P))
        for q in range(nq):
            cut = pieces(t, q)
            n_cut += len(cut) - 2
            for a, b in zip(cut[:-1], cut[1:]):
                gbar[q] += sum((b - a) * c * grad_g(ws[t] + (a + (b - a) * s) * (ws[t + 1] - ws[t]))[q]
                               for s, c in zip(nodes, cw))
        H = coef[t] * gbar * pre[t] + decay * H
        phi[:, bts[t]] -= H @ gs[t].T / len(bts[t])
    if target == "margin":
        assert n_cut > 0, "no runner-up changed: the cut steps go untested"
    got = np.load(tmp_path / "e" / "contrib.npy")[:, :, 0]
    e = rel_err(got, phi)
    assert e < 1e-9, f"contributions to the {target} differ from torch's by {e:.3g}"


def test_left_rule_error_halves_with_the_learning_rate(tmp_path):
    """The left rule (TracIn over every step) on the loss target: its error
    falls like eta (MATH.md section 3's table) at fixed eta * T."""
    errs = []
    for lr, T in ((0.2, 10), (0.1, 20), (0.05, 40)):
        run = tmp_path / f"r{T}"
        pk("train", "--data", DIGITS, "--first", "100", "--standardize", "--model", "mlp:10:tanh", "--loss",
           "softmax", "--optim", "gd", "--lr", repr(lr), "--steps", T, "--seed", "1", "--quiet", "--out", run)
        out = tmp_path / f"e{T}"
        pk("explain", run, "--query", DIGITS, "--first", "10", "--quad", "left", "--target", "loss", "--out", out)
        moved = np.load(out / "pred.npy") - np.load(out / "bias.npy")
        errs.append(np.abs(moved - np.load(out / "contrib.npy").sum(axis=1)).max())
    r1, r2 = errs[0] / errs[1], errs[1] / errs[2]
    assert 1.7 < r1 < 2.3 and 1.7 < r2 < 2.3, f"left-rule errors {errs}: ratios {r1:.3f}, {r2:.3f}"


@pytest.mark.parametrize("target", ["loss", "margin"])
def test_attribute_target_matches_explain(runs, tmp_path, target):
    """attribute --target loss (streaming, sgd; dense, adam) and margin
    (through explain's cut steps) rank explain's contributions."""
    import json
    for optim in ("sgd", "adam"):
        run = runs[optim]
        e = tmp_path / f"e-{optim}"
        pk("explain", run, "--query", DIGITS, "--first", "5", "--quad", "gl2", "--target", target, "--out", e)
        phi = np.load(e / "contrib.npy")[:, :, 0]
        j = tmp_path / f"a-{optim}.json"
        pk("attribute", run, "--query", DIGITS, "--first", "5", "--target", target, "--top", "3", "--out", j)
        qs = json.loads(j.read_text())["queries"]
        for q, row in enumerate(qs):
            want = np.argsort(-phi[q], kind="stable")[:3]
            assert [p["index"] for p in row["proponents"]] == want.tolist()
            assert rel_err([p["contribution"] for p in row["proponents"]], phi[q, want]) < 1e-12
            assert abs(row["total"] - phi[q].sum()) <= 1e-12 * np.abs(phi[q]).sum()


def test_bad_targets(runs, tmp_path):
    run = runs["sgd"]
    p = pk_run("explain", run, "--query", DIGITS, "--first", "3", "--target", "logit", "--out", tmp_path / "x",
               expect=2)
    assert "--target logit" in p.stderr and "output:C" in p.stderr
    p = pk_run("explain", run, "--query", DIGITS, "--first", "3", "--target", "output:10", "--out", tmp_path / "x",
               expect=2)
    assert "outputs 0..9" in p.stderr
    p = pk_run("attribute", run, "--query", DIGITS, "--first", "3", "--target", "loss", "--class", "2", expect=2)
    assert "one of them" in p.stderr


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_threads_and_blocks_identical_bytes(runs, tmp_path, optim):
    """Neither the thread count nor the block a query is in (the margin's
    cut steps are each query's own) changes a bit."""
    for target in ("margin", "loss"):
        outs = []
        for th, block in (("1", "5"), ("2", "5"), ("2", "16")):
            out = tmp_path / f"{target}-{th}-{block}"
            pk("explain", runs[optim], "--query", DIGITS, "--first", str(NQ), "--target", target, "--threads", th,
               "--block", block, "--out", out)
            outs.append(out)
        for f in ("pred.npy", "bias.npy", "contrib.npy"):
            for o in outs[1:]:
                assert (outs[0] / f).read_bytes() == (o / f).read_bytes(), (target, f, o.name)
