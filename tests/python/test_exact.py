"""The exact rule for piecewise-linear networks (MATH.md section 12):
`--quad exact` splits every step w_t + s D_t at each example's kinks and
integrates each piece with Gauss-Legendre of the piece's degree.

  1. verify --quad exact within 1e-11 relative on ReLU MLPs with 1, 2 and
     3 hidden layers trained with gd, sgd, momentum and Adam (and a
     leaky_relu one with AdamW and weight decay), where gl8 is far off.
  2. A constructed gd step in which a second-layer unit of the query
     crosses zero and back (its two ends on the same side, no first-layer
     unit crossing): exact, where one piece with the same nodes (gl2, what
     a search for kinks at the ends of the step would do) is not.
  3. PyTorch, independently: the pieces of every step found by bisection
     of the activation pattern on a grid, each integrated by Gauss-Legendre
     of rising order until two orders agree; the contributions phi_i(x)
     and the paper's path kernel (pieces of both arguments) to 1e-11.
  4. The rule is refused for smooth activations (exit 2, the reason and
     the advice); the bits do not depend on the thread count.
  5. The targets of MATH.md section 11: output:C, label and the margin
     (cut at its kinks and where its runner-up changes) to rounding where
     gl8 is far off for the margin, against numpy forward passes; the
     margin's bits depend on neither the thread count nor the block.
"""
import json

import numpy as np
import pytest

from pkutil import load_weights, pk, pk_run, rel_err, save_data, target_np, traj_batches


def noisy_digits(tmp_path, n=300, seed=0):
    """The first n digits of data/digits.csv.gz, pixels / 16 plus N(0, 0.25^2) noise."""
    from conftest import SOURCE_DIR
    import gzip
    raw = np.loadtxt(gzip.open(SOURCE_DIR / "data" / "digits.csv.gz", "rt"), delimiter=",")
    x = raw[:n, :-1] / 16.0 + np.random.default_rng(seed).normal(0, 0.25, (n, 64))
    return save_data(tmp_path, "digits", x, raw[:n, -1].astype(np.int64))


def verify(run, data, quad, first=40):
    out = pk("verify", run, "--query", data, "--first", first, "--quad", quad, "--tol", "1", "--json")
    return json.loads(out)


@pytest.mark.parametrize("optim", ["gd", "sgd", "momentum", "adam"])
@pytest.mark.parametrize("widths", ["24", "24,16", "24,16,12"])
def test_verify_exact(tmp_path, optim, widths):
    data = noisy_digits(tmp_path)
    lr = {"gd": "0.5", "sgd": "0.1", "momentum": "0.05", "adam": "0.01"}[optim]
    batch = [] if optim == "gd" else ["--batch", "32"]
    run = tmp_path / "run"
    pk("train", "--data", data, "--model", f"mlp:{widths}:relu", "--optim", optim, "--lr", lr, "--steps", "40",
       *batch, "--out", run, "--quiet")
    ex, gl8 = verify(run, data, "exact"), verify(run, data, "gl8")
    print(f"mlp:{widths}:relu {optim}: exact {ex['max_rel_err']:.2e} ({ex['pieces']:.3f} pieces per query "
          f"and step, {ex['piece_nodes']} nodes each), gl8 {gl8['max_rel_err']:.2e}")
    assert ex["max_rel_err"] <= 1e-11
    assert ex["pieces"] > 1.0, "no query had a kink: the test would not test the rule"
    assert gl8["max_rel_err"] > 1e3 * ex["max_rel_err"]


@pytest.mark.parametrize("optim", ["adamw", "sgd"])
def test_leaky_relu(tmp_path, optim):
    """leaky_relu under AdamW (the backward sweep) and sgd (the walk along the pieces, sweep.c)."""
    data = noisy_digits(tmp_path)
    run = tmp_path / "run"
    extra = ["--weight-decay", "0.01"] if optim == "adamw" else []
    pk("train", "--data", data, "--model", "mlp:24,16:leaky_relu:0.2", "--optim", optim,
       "--lr", "0.01" if optim == "adamw" else "0.1", *extra, "--batch", "32", "--steps", "40", "--out", run,
       "--quiet")
    ex = verify(run, data, "exact")
    assert ex["max_rel_err"] <= 1e-11 and ex["pieces"] > 1.0


def relu(z):
    return np.maximum(z, 0)


def forward(W, x):
    (W1, b1), (W2, b2), (W3, b3) = W
    z1 = W1 @ x + b1
    z2 = W2 @ relu(z1) + b2
    return z1, z2, W3 @ relu(z2) + b3


def gradient(W, x, y):
    """Half squared error's gradient of the 2-3-2-1 ReLU network, by hand."""
    (W1, b1), (W2, b2), (W3, b3) = W
    z1, z2, f = forward(W, x)
    r = f - y
    d2 = (W3.T @ r) * (z2 > 0)
    d1 = (W2.T @ d2) * (z1 > 0)
    return [(np.outer(d1, x), d1), (np.outer(d2, relu(z1)), d2), (np.outer(r, relu(z2)), r)]


def test_second_layer_unit_crosses_twice(tmp_path):
    # a seeded 2-3-2-1 network, one training example, one gd step of lr 3
    rng = np.random.default_rng(6)
    W = [(rng.normal(0, 1, (3, 2)), rng.normal(0, 1, 3)), (rng.normal(0, 1, (2, 3)), rng.normal(0, 1, 2)),
         (rng.normal(0, 1, (1, 2)), rng.normal(0, 1, 1))]
    xt, yt = rng.normal(0, 1, 2), rng.normal(0, 3, 1)
    lr = 3.0
    query = np.array([-0.41402383, 1.18246066])
    # the step's pre-activations of the query, sampled densely (numpy, by hand)
    D = [(-lr * a, -lr * b) for a, b in gradient(W, xt, yt)]
    s = np.linspace(0, 1, 4001)
    Z = [forward([(a + t * da, b + t * db) for (a, b), (da, db) in zip(W, D)], query) for t in s]
    z1, z2 = np.array([z[0] for z in Z]), np.array([z[1] for z in Z])
    assert np.all(np.sign(z1) == np.sign(z1[0])), "a first-layer unit crosses: not the case under test"
    sign = np.sign(z2[:, 1])
    assert sign[0] == sign[-1] and np.count_nonzero(np.diff(sign)) == 2, "unit 2 of layer 2 must cross twice"
    # unit 1 of layer 2 crosses once (its ends differ): a search at the ends would cut there only
    crossings = np.count_nonzero(np.diff(np.sign(z2), axis=0))
    assert crossings == 3
    init = tmp_path / "init"
    init.mkdir()
    for l, (Wl, bl) in enumerate(W, 1):
        np.save(init / f"W{l}.npy", Wl)
        np.save(init / f"b{l}.npy", bl)
    train = save_data(tmp_path, "train", xt[None, :], yt[None, :])
    q = save_data(tmp_path, "q", query[None, :], np.zeros((1, 1)))
    run = tmp_path / "run"
    pk("train", "--data", train, "--model", "mlp:3,2:relu", "--loss", "mse", "--optim", "gd", "--lr", lr,
       "--steps", "1", "--init", init, "--out", run, "--quiet")
    ex, gl2 = verify(run, q, "exact", 1), verify(run, q, "gl2", 1)
    print(f"double crossing: exact {ex['max_rel_err']:.2e} with {ex['pieces']:.0f} pieces; one piece with the "
          f"same 2 nodes (gl2) {gl2['max_rel_err']:.2e}")
    assert ex["pieces"] == crossings + 1 and ex["piece_nodes"] == 2
    assert ex["max_rel_err"] <= 1e-11
    assert gl2["max_rel_err"] > 1e-4


def test_refused_for_smooth(tmp_path):
    data = noisy_digits(tmp_path, 60)
    run = tmp_path / "run"
    pk("train", "--data", data, "--model", "mlp:8:tanh", "--steps", "3", "--out", run, "--quiet")
    p = pk_run("verify", run, "--query", data, "--quad", "exact", expect=2)
    assert "tanh" in p.stderr and "gl4" in p.stderr and "piecewise" in p.stderr
    p = pk_run("kernel", run, "--x", data, "--at", "path", "--quad", "exact", "--out", tmp_path / "k.npy", expect=2)
    assert "tanh" in p.stderr


def test_threads_same_bits(tmp_path):
    data = noisy_digits(tmp_path, 200)
    run = tmp_path / "run"
    pk("train", "--data", data, "--model", "mlp:16,12:relu", "--optim", "sgd", "--batch", "20", "--lr", "0.2",
       "--steps", "30", "--out", run, "--quiet")
    for t in ("1", "2"):
        pk("explain", run, "--query", data, "--first", "30", "--quad", "exact", "--threads", t,
           "--out", tmp_path / f"e{t}")
    for f in ("contrib.npy", "kernel.npy", "pred.npy"):
        assert (tmp_path / "e1" / f).read_bytes() == (tmp_path / "e2" / f).read_bytes(), f


# ----------------------------------------------------------- PyTorch reference

torch = None


def torch_net(sizes):
    """f(w, x) of a ReLU MLP with the flat parameters w (nn.Linear layout, W then b per layer)."""
    def f(w, x):
        h, o = x, 0
        for l in range(len(sizes) - 1):
            din, dout = sizes[l], sizes[l + 1]
            Wl = w[o:o + din * dout].reshape(dout, din)
            o += din * dout
            bl = w[o:o + dout]
            o += dout
            h = h @ Wl.T + bl
            if l < len(sizes) - 2:
                h = torch.relu(h)
        return h
    return f


def pattern(sizes, w, x):
    """The signs of every hidden pre-activation of x at w (a tuple)."""
    h, o, out = x, 0, []
    for l in range(len(sizes) - 2):
        din, dout = sizes[l], sizes[l + 1]
        z = h @ w[o:o + din * dout].reshape(dout, din).T + w[o + din * dout:o + din * dout + dout]
        o += din * dout + dout
        out.extend((z > 0).tolist())
        h = torch.relu(z)
    return tuple(out)


def breakpoints(sizes, w, D, xs, grid=2001):
    """Where the pattern of any x in xs changes along w + s D: a grid, then bisection to 1e-15."""
    def pat(s):
        return tuple(pattern(sizes, w + s * D, x) for x in xs)
    ss = np.linspace(0, 1, grid)
    pats = [pat(s) for s in ss]
    cuts = []
    for k in range(grid - 1):
        if pats[k] != pats[k + 1]:
            lo, hi, plo = ss[k], ss[k + 1], pats[k]
            while hi - lo > 1e-15:
                mid = 0.5 * (lo + hi)
                if pat(mid) == plo:
                    lo = mid
                else:
                    hi = mid
            cuts.append(0.5 * (lo + hi))
    return [0.0] + cuts + [1.0]


def integrate(F, cuts):
    """Sum over pieces of the integral of F (a function of s returning an array): Gauss-Legendre of
    rising order on each piece until two orders agree to 1e-15 relative."""
    total = 0
    for a, b in zip(cuts[:-1], cuts[1:]):
        prev = None
        for n in (4, 8, 16, 32):
            x, c = np.polynomial.legendre.leggauss(n)
            val = sum(0.5 * (b - a) * ci * F(a + 0.5 * (b - a) * (xi + 1)) for xi, ci in zip(x, c))
            if prev is not None and np.max(np.abs(val - prev)) <= 1e-15 * max(np.max(np.abs(val)), 1e-300):
                break
            prev = val
        total = total + val
    return total


@pytest.mark.parametrize("widths,seed", [("6,4", "2"), ("6", "2"), ("6,5,4", "3")])
def test_torch_reference(tmp_path, widths, seed):
    """explain --quad exact against PyTorch on pieces found by bisection; one, two and three
    hidden layers: an MLP's contributions take the walk along each query's pieces (sweep.c), whose
    first and last layers, middle layers and deeper backward changes differ with the depth."""
    global torch
    torch = pytest.importorskip("torch")
    from functorch import jacrev
    rng = np.random.default_rng(3)
    N, Q, d, C = 10, 4, 5, 3
    X = rng.normal(0, 1, (N, d))
    y = rng.integers(0, C, N)
    Xq = rng.normal(0, 1, (Q, d))
    train = save_data(tmp_path, "train", X, y)
    query = save_data(tmp_path, "q", Xq, np.zeros(Q, dtype=np.int64))
    run = tmp_path / "run"
    T, sizes = 6, [d, *map(int, widths.split(",")), C]
    pk("train", "--data", train, "--model", f"mlp:{widths}:relu", "--optim", "sgd", "--batch", "4", "--lr", "1.5",
       "--steps", T, "--seed", seed, "--out", run, "--quiet")
    pk("explain", run, "--query", query, "--quad", "exact", "--out", tmp_path / "ex")
    phi = np.load(tmp_path / "ex" / "contrib.npy")
    Kp = np.load(tmp_path / "ex" / "kernel.npy")
    lr, batches, _ = traj_batches(run / "trajectory.bin")
    W = []
    for t in range(T + 1):
        pk("weights", run, "--step", t, "--out", tmp_path / f"w{t}")
        W.append(np.concatenate([np.concatenate([Wl.ravel(), bl]) for Wl, bl in
                                 load_weights(tmp_path / f"w{t}")]))
    f = torch_net(sizes)
    tX, tQ = torch.tensor(X), torch.tensor(Xq)
    J = jacrev(f)  # (C, P) at (w, x)

    def loss_grad(w, i):
        w = w.clone().requires_grad_(True)
        l = torch.nn.functional.cross_entropy(f(w, tX[i:i + 1]), torch.tensor([int(y[i])]))
        return torch.autograd.grad(l, w)[0]

    ref_phi = np.zeros((Q, N, C))
    ref_K = np.zeros((Q, N))
    kinked = 0
    for t in range(T):
        w, D = torch.tensor(W[t]), torch.tensor(W[t + 1] - W[t])
        B = batches[t]
        g = {int(i): loss_grad(w, int(i)).numpy() for i in B}
        cut = {("q", q): breakpoints(sizes, w, D, [tQ[q]]) for q in range(Q)}
        cut.update({("x", i): breakpoints(sizes, w, D, [tX[i]]) for i in range(N)})
        for q in range(Q):
            kinked += len(cut[("q", q)]) > 2
            Jbar = integrate(lambda s: J(w + s * D, tQ[q]).numpy(), cut[("q", q)])
            for i in B:
                ref_phi[q, i] -= lr[t] / len(B) * (Jbar @ g[int(i)])
            for i in range(N):  # the paper's kernel: the pieces of both arguments
                both = sorted(set(cut[("q", q)]) | set(cut[("x", i)]))
                ref_K[q, i] += lr[t] * integrate(
                    lambda s: np.sum(J(w + s * D, tQ[q]).numpy() * J(w + s * D, tX[i]).numpy()), both)
    e_phi, e_K = rel_err(phi, ref_phi), rel_err(Kp, ref_K)
    pk("explain", run, "--query", query, "--quad", "gl8", "--out", tmp_path / "g8")
    g_phi = rel_err(np.load(tmp_path / "g8" / "contrib.npy"), ref_phi)
    g_K = rel_err(np.load(tmp_path / "g8" / "kernel.npy"), ref_K)
    print(f"PyTorch reference: contributions {e_phi:.2e}, path kernel {e_K:.2e} (gl8: {g_phi:.2e}, {g_K:.2e}); "
          f"{kinked} of {Q * T} query-steps have a kink")
    assert kinked >= Q * T // 4, "too few kinks for the test to mean anything"
    assert e_phi <= 1e-11 and e_K <= 1e-11
    assert g_phi > 1e-6 and g_K > 1e-6, "the reference does not tell the rules apart"


def test_maxpool_conv_and_residual(tmp_path):
    """ReLU / max-pool convolutions, average pooling, leaky_relu, a residual block and dropout."""
    x = np.load(noisy_digits(tmp_path, 200).split(":")[1].split(",")[0]).reshape(-1, 1, 8, 8)
    y = np.load(str(tmp_path / "digits_y.npy"))
    data = save_data(tmp_path, "img", x, y)
    models = {"sgd": "conv:4,3,pad=1;relu;maxpool:2;conv:6,3;relu;maxpool:2;flatten;dense:16;relu;dense",
              "momentum": "conv:4,3,pad=1;relu;avgpool:2;conv:6,3;leaky_relu:0.1;maxpool:2;flatten;dense",
              "adam": "conv:4,3,pad=1;relu;maxpool:2;flatten;res(dense:64;relu;dense:64);relu;dropout:0.2;dense"}
    for optim, model in models.items():
        run = tmp_path / optim
        pk("train", "--data", data, "--model", model, "--optim", optim, "--batch", "32",
           "--lr", {"sgd": "0.1", "momentum": "0.05", "adam": "0.01"}[optim], "--steps", "25", "--out", run, "--quiet")
        ex, gl8 = verify(run, data, "exact", 30), verify(run, data, "gl8", 30)
        print(f"{model} ({optim}): exact {ex['max_rel_err']:.2e} ({ex['pieces']:.3f} pieces), gl8 {gl8['max_rel_err']:.2e}")
        assert ex["max_rel_err"] <= 1e-11 and ex["pieces"] > 1.0


def test_attribute_and_self_influence(tmp_path):
    """attribute's streaming sweep and self-influence take the rule too: attribute's values are
    explain's contributions; one example, mse, gd: the loss form is l(w_0) - l(w_T) exactly; the
    kernel form is the diagonal of the contribution kernel."""
    data = noisy_digits(tmp_path, 150)
    run = tmp_path / "run"
    pk("train", "--data", data, "--model", "mlp:16,12:relu", "--optim", "sgd", "--batch", "25", "--lr", "0.2",
       "--steps", "30", "--out", run, "--quiet")
    pk("attribute", run, "--query", data, "--first", "12", "--quad", "exact", "--top", "4", "--out", tmp_path / "a.json")
    pk("explain", run, "--query", data, "--first", "12", "--quad", "exact", "--kernel", "path-batch",
       "--out", tmp_path / "e")
    att = json.loads((tmp_path / "a.json").read_text())
    phi = np.load(tmp_path / "e" / "contrib.npy")
    for q in att["queries"]:
        assert abs(q["residual"]) <= 1e-11 * abs(q["pred"] - q["bias"])
        for p in q["proponents"] + q["opponents"]:
            assert abs(p["contribution"] - phi[q["query"], p["index"], q["class"]]) <= 1e-12 * np.abs(phi).max()
    # the kernel form: trace K^c(x_i, x_i), explain's contribution kernel on the training set
    pk("selfinfluence", run, "--form", "kernel", "--quad", "exact", "--out", tmp_path / "sk.csv")
    pk("explain", run, "--query", data, "--quad", "exact", "--kernel", "path-batch", "--out", tmp_path / "all")
    Kc = np.load(tmp_path / "all" / "kernel.npy")
    sk = np.loadtxt(tmp_path / "sk.csv", delimiter=",", skiprows=1)[:, -1]
    assert rel_err(sk, np.diag(Kc)) <= 1e-12
    # the loss form, one example: l(w_0) - l(w_T)
    rng = np.random.default_rng(1)
    one = save_data(tmp_path, "one", rng.normal(0, 1, (1, 5)), rng.normal(0, 1, (1, 2)))
    pk("train", "--data", one, "--model", "mlp:6,5:relu", "--loss", "mse", "--optim", "gd", "--lr", "0.3",
       "--steps", "20", "--out", tmp_path / "r1", "--quiet")
    got = {}
    for q in ("gl4", "exact"):
        pk("selfinfluence", tmp_path / "r1", "--quad", q, "--out", tmp_path / f"s_{q}.csv")
        got[q] = np.loadtxt(tmp_path / f"s_{q}.csv", delimiter=",", skiprows=1)[-1]
    xs, ys = np.load(tmp_path / "one_x.npy"), np.load(tmp_path / "one_y.npy")
    loss = []
    for step in ("0", "final"):
        pk("weights", tmp_path / "r1", "--step", step, "--out", tmp_path / f"w{step}")
        h = xs
        layers = load_weights(tmp_path / f"w{step}", 3)
        for l, (W, b) in enumerate(layers):
            h = h @ W.T + b
            h = np.maximum(h, 0) if l < 2 else h
        loss.append(0.5 * np.sum((h - ys) ** 2))
    want = loss[0] - loss[1]
    print(f"self-influence, one example: exact {got['exact']!r}, gl4 {got['gl4']!r}, l(w_0) - l(w_T) {want!r}")
    assert abs(got["exact"] - want) <= 1e-12 * abs(want)
    assert abs(got["gl4"] - want) > 1e-6 * abs(want)


def test_path_kernel_symmetric_psd(tmp_path):
    """The paper's kernel under the exact rule on the training set: symmetric bit for bit, positive
    semi-definite (the overlap weights W are Gram matrices), the same bits with 1 and 2 threads."""
    data = noisy_digits(tmp_path, 120)
    run = tmp_path / "run"
    pk("train", "--data", data, "--model", "mlp:16,12:relu", "--optim", "sgd", "--batch", "20", "--lr", "0.3",
       "--steps", "20", "--out", run, "--quiet")
    for mode in ("trace", "full"):
        K = {}
        for t in ("1", "2"):
            pk("kernel", run, "--at", "path", "--x", data, "--mode", mode, "--quad", "exact", "--threads", t,
               "--out", tmp_path / f"K{t}.npy")
            K[t] = np.load(tmp_path / f"K{t}.npy")
        assert K["1"].tobytes() == K["2"].tobytes()
        k = K["1"] if mode == "trace" else K["1"].transpose(0, 2, 1, 3).reshape(120 * 10, 120 * 10)
        assert np.array_equal(k, k.T)
        ev = np.linalg.eigvalsh(k)
        assert ev.min() >= -1e-12 * ev.max()


def test_mpi_ranks_same_bytes(tmp_path):
    """attribute --quad exact over two MPI ranks (every other group of queries each) writes the bytes of
    one process with one thread."""
    import os
    import shutil
    import subprocess
    from pkutil import pk_exe
    exe = shutil.which("mpirun")
    if not exe:
        pytest.skip("mpirun is not installed (scripts/deps.sh installs openmpi-bin)")
    data = noisy_digits(tmp_path, 150)
    run = tmp_path / "run"
    pk("train", "--data", data, "--model", "mlp:16,12:relu", "--optim", "sgd", "--batch", "25", "--lr", "0.2",
       "--steps", "30", "--out", run, "--quiet")
    args = ["attribute", str(run), "--query", data, "--first", "12", "--quad", "exact", "--top", "4", "--group", "3"]
    pk(*args, "--threads", "1", "--out", tmp_path / "one.json")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", ASAN_OPTIONS="detect_leaks=0")
    p = subprocess.run([exe, "-np", "2", "--oversubscribe", str(pk_exe()), *args, "--out", str(tmp_path / "two.json")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 MPI ranks" in p.stdout
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()


def test_python_package(tmp_path):
    """Run.explain and Run.path_kernel take quad="exact" (the ctypes structs carry its fields)."""
    import sys
    from conftest import SOURCE_DIR
    sys.path.insert(0, str(SOURCE_DIR / "python"))
    import pathkernel as pkg
    data = noisy_digits(tmp_path, 100)
    run = tmp_path / "run"
    pk("train", "--data", data, "--model", "mlp:16:relu", "--optim", "sgd", "--batch", "20", "--lr", "0.3",
       "--steps", "15", "--out", run, "--quiet")
    r = pkg.open_run(str(run))
    X = np.load(tmp_path / "digits_x.npy")[:8]
    e = r.explain(X, quad="exact")
    assert e.quad == "exact" and e.piece_nodes == 1 and e.pieces > 1.0 and e.max_rel_err <= 1e-11
    K = r.path_kernel(X, quad="exact", mode="trace")
    assert np.array_equal(K, K.T)


def relu_forward(layers, X):
    h = X
    for i, (W, b) in enumerate(layers):
        h = h @ W.T + b
        if i + 1 < len(layers):
            h = np.maximum(h, 0)
    return h


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_targets_exact(tmp_path, optim):
    """--quad exact with the targets of MATH.md section 11 on a ReLU MLP (the
    forward sweep for sgd, the backward sweep for Adam): a query's step is
    cut at its kinks and, for the margin, where its runner-up changes, and
    every row is seeded by its target. pred and bias are numpy forward passes
    of the exported weights; pred - bias - sum phi is rounding for output:C,
    label and the margin (linear in f between the cuts), where gl8 is far off
    for the margin; the loss (smooth, not a polynomial) is decomposed to the
    rule's order on each piece."""
    data = noisy_digits(tmp_path, n=200)
    run, T, nq = tmp_path / "run", 30, 30
    lr = {"sgd": "0.2", "adam": "0.01"}[optim]
    pk("train", "--data", data, "--model", "mlp:24,16:relu", "--loss", "softmax", "--optim", optim, "--lr", lr,
       "--batch", "25", "--steps", str(T), "--seed", "2", "--out", run, "--quiet")
    ws = []
    for t in range(T + 1):
        pk("weights", run, "--step", str(t), "--out", tmp_path / f"w{t}")
        ws.append(load_weights(tmp_path / f"w{t}"))
    Xq, y = query_inputs(data, nq)
    # the margin's runner-up changes along the path (sampled), or the test tests nothing
    changed, first = np.zeros(nq, bool), None
    for t in range(T):
        for s in np.linspace(0, 1, 17):
            layers = [((1 - s) * W0 + s * W1, (1 - s) * b0 + s * b1) for (W0, b0), (W1, b1) in zip(ws[t], ws[t + 1])]
            F = relu_forward(layers, Xq)
            F[np.arange(nq), y] = -np.inf
            r = F.argmax(axis=1)
            first = r if first is None else first
            changed |= r != first
    assert changed.sum() >= nq // 3
    errs = {}
    for target in ("output:3", "label", "margin", "loss"):
        for quad in ("exact", "gl8"):
            if quad == "gl8" and target != "margin":
                continue
            out = tmp_path / f"{target}-{quad}"
            pk("explain", run, "--query", data, "--first", str(nq), "--quad", quad, "--target", target, "--out", out)
            pred, bias, phi = np.load(out / "pred.npy"), np.load(out / "bias.npy"), np.load(out / "contrib.npy")
            assert rel_err(bias[:, 0], target_np(target, relu_forward(ws[0], Xq), y)) < 1e-12
            assert rel_err(pred[:, 0], target_np(target, relu_forward(ws[T], Xq), y)) < 1e-12
            moved = (pred - bias)[:, 0]
            errs[target, quad] = np.abs(moved - phi.sum(axis=1)[:, 0]).max() / np.abs(moved).max()
    print(optim, {k: f"{v:.2e}" for k, v in errs.items()})
    for target in ("output:3", "label", "margin"):
        assert errs[target, "exact"] <= 1e-11, (target, errs[target, "exact"])
    assert errs["margin", "gl8"] > 1e3 * errs["margin", "exact"]
    assert errs["loss", "exact"] <= 1e-6


def query_inputs(data, nq):
    """The first nq inputs and labels of an npy:X,Y spec written by save_data."""
    xs, ys = data[4:].split(",")
    return np.load(xs)[:nq], np.load(ys)[:nq].astype(np.int64)


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_margin_exact_threads_and_blocks(tmp_path, optim):
    """Under the exact rule too, a query's pieces (kinks and runner-up
    changes) are its own: neither the thread count nor its block changes a bit."""
    data = noisy_digits(tmp_path, n=200)
    run = tmp_path / "run"
    lr = {"sgd": "0.2", "adam": "0.01"}[optim]
    pk("train", "--data", data, "--model", "mlp:24,16:relu", "--loss", "softmax", "--optim", optim, "--lr", lr,
       "--batch", "25", "--steps", "20", "--seed", "2", "--out", run, "--quiet")
    outs = []
    for th, block in (("1", "5"), ("2", "5"), ("2", "16")):
        out = tmp_path / f"m-{th}-{block}"
        pk("explain", run, "--query", data, "--first", "20", "--quad", "exact", "--target", "margin", "--threads", th,
           "--block", block, "--out", out)
        outs.append(out)
    for f in ("pred.npy", "bias.npy", "contrib.npy"):
        for o in outs[1:]:
            assert (outs[0] / f).read_bytes() == (o / f).read_bytes(), (f, o.name)
