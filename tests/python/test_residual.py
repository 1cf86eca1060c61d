"""Residual blocks and dropout (issue 21) against PyTorch float64 and
functorch, as tests/python/test_conv.py does for convolutions: a residual MLP
and a residual CNN (one block with a 1x1 projection of stride 2) built as
PyTorch modules (`y = x + F(x)`, `y = P x + F(x)`) holding pathkernel's
weights. Predictions (1e-12), 25 steps of sgd and Adam (weights to 1e-10),
the tangent kernel against functorch's empirical NTK (1e-12). With dropout,
PyTorch gets pathkernel's masks, recomputed here from the documented hash of
(seed, step, example, layer, unit) (MATH.md section 9); a wrong mask moves the
weights by far more than 1e-10. Then the exact path kernel (verify --quad
gl4 within 1e-9) on residual, dropout and residual + dropout tanh networks
trained with sgd and Adam, and a dropout run stopped and resumed equal to an
uninterrupted one byte for byte.

Run:  /usr/bin/python3 -m pytest -q tests/python/test_residual.py
"""
import json
import signal
import subprocess
import time

import numpy as np
import pytest

from pkutil import assert_top_is_explains, batches, load_weights, pk, pk_exe, pk_run, read_traj, rel_err, save_data

torch = pytest.importorskip("torch", reason="needs torch: run with Debian's /usr/bin/python3")
functorch = pytest.importorskip("functorch", reason="needs functorch (torch 1.13) for the eNTK")
nn = torch.nn
torch.set_num_threads(1)
DT = torch.float64
SEED = 5

# name: (spec, input shape (C, H, W) or (d,), classes)
NETS = {
    "mlp": ("dense:12;tanh;res(dense:12;tanh;dense:12);tanh;res(dense:7;tanh;dense:7;proj);tanh;dense", (10,), 3),
    "cnn": ("conv:4,3,pad=1;tanh;res(conv:4,3,pad=1;tanh;conv:4,3,pad=1);tanh;"
            "res(conv:6,3,stride=2,pad=1;tanh;conv:6,3,pad=1;proj);tanh;flatten;dense", (2, 8, 8), 3),
    "mlp_drop": ("dense:12;tanh;dropout:0.5;res(dense:12;tanh;dropout:0.2;dense:12);tanh;dense", (10,), 3),
    "cnn_drop": ("conv:4,3,pad=1;tanh;dropout:0.3;res(conv:4,3,pad=1;tanh;conv:4,3,pad=1);tanh;flatten;"
                 "dropout:0.5;dense", (2, 8, 8), 3),
}
ACT = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "identity": nn.Identity}
M64 = (1 << 64) - 1


def mix(z):
    """splitmix64's finaliser on uint64 arrays (MATH.md section 9)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def masks(p, seed, step, examples, layer, units):
    """(len(examples), units) inverted-dropout masks, as pk_dropout_mask draws them."""
    key = mix(np.uint64(seed))
    key = mix(key ^ np.uint64(step))
    key = mix(key ^ np.asarray(examples, dtype=np.uint64))
    key = mix(key ^ np.uint64(layer))
    h = mix(key[:, None] ^ np.arange(units, dtype=np.uint64)[None, :])
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return np.where(u >= p, 1.0 / (1.0 - p), 0.0)


class Ctx:
    """The (step, examples) a training batch draws its masks from; None: test time."""
    now = None


class Dropout(nn.Module):
    """nn.Dropout with pathkernel's masks (layer: its index in pathkernel's flat list)."""

    def __init__(self, p, layer):
        super().__init__()
        self.p, self.layer = p, layer

    def forward(self, x):
        if Ctx.now is None or self.p == 0:
            return x
        step, ex = Ctx.now
        m = masks(self.p, SEED, step, ex, self.layer, x[0].numel())
        return x * torch.from_numpy(m).reshape(x.shape)


class Res(nn.Module):
    def __init__(self, body, proj):
        super().__init__()
        self.body, self.proj = body, proj

    def forward(self, x):
        return (x if self.proj is None else self.proj(x)) + self.body(x)


def split(spec):
    """Top-level elements of a spec (';' outside parentheses)."""
    out, depth, cur = [], 0, ""
    for ch in spec:
        if ch == ";" and not depth:
            out.append(cur)
            cur = ""
            continue
        depth += (ch == "(") - (ch == ")")
        cur += ch
    return out + [cur]


def build(spec, shape, weights):
    """The modules a spec describes, holding the exported weights (in
    pathkernel's order: a block's body, then its projection)."""
    it = iter(weights)
    k = [0]  # pathkernel's flat layer index

    def load(m, W, b):
        assert m.weight.shape == W.shape and m.bias.shape == b.shape, (m, m.weight.shape, W.shape)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(W))
            m.bias.copy_(torch.from_numpy(b))
        return m

    def seq(elements, shape):
        mods = []
        for el in elements:
            if el.startswith("res("):
                inner = split(el[4:-1])
                proj = inner[-1] == "proj"
                body, out = seq(inner[:-1] if proj else inner, shape)
                P = None
                if proj:
                    W, b = next(it)
                    if len(shape) == 1:
                        P = load(nn.Linear(shape[0], out[0], dtype=DT), W, b)
                    else:
                        stride = next(s for s in range(1, shape[1] + 1)
                                      if (shape[1] - 1) // s + 1 == out[1] and (shape[2] - 1) // s + 1 == out[2])
                        P = load(nn.Conv2d(shape[0], out[0], 1, stride=stride, dtype=DT), W, b)
                    k[0] += 1
                k[0] += 1  # the merge
                mods.append(Res(body, P))
                shape = out
                continue
            name, _, args = el.partition(":")
            k[0] += 1
            if name == "dropout":
                mods.append(Dropout(float(args), k[0] - 1))
                continue
            pos = [int(a) for a in args.split(",") if a and "=" not in a]
            kw = dict(a.split("=") for a in args.split(",") if "=" in a)
            if name == "conv":
                W, b = next(it)
                s, pd = int(kw.get("stride", 1)), int(kw.get("pad", 0))
                mods.append(load(nn.Conv2d(shape[0], pos[0], pos[1], stride=s, padding=pd, dtype=DT), W, b))
                shape = (pos[0], (shape[1] + 2 * pd - pos[1]) // s + 1, (shape[2] + 2 * pd - pos[1]) // s + 1)
            elif name == "flatten":
                mods.append(nn.Flatten())
                shape = (int(np.prod(shape)),)
            elif name == "dense":
                W, b = next(it)
                mods.append(load(nn.Linear(W.shape[1], W.shape[0], dtype=DT), W, b))
                shape = (W.shape[0],)
            else:
                mods.append(ACT[name]())
        return nn.Sequential(*mods), shape

    net, _ = seq(split(spec), shape)
    assert next(it, None) is None, "weights left over"
    return net


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Per net: 24 training examples with labels, and 5 queries."""
    d = tmp_path_factory.mktemp("res")
    r = np.random.default_rng(20261207)
    out = {}
    for name, (_, shape, C) in NETS.items():
        X = r.uniform(-1, 1, size=(24, *shape))
        y = np.arange(24) % C
        r.shuffle(y)
        Q = r.uniform(-1, 1, size=(5, *shape))
        out[name] = {"X": X, "y": y.astype(np.int64), "Q": Q,
                     "spec": save_data(d, f"{name}_tr", X, y.astype(np.int64)),
                     "qspec": save_data(d, f"{name}_q", Q, np.zeros(5, dtype=np.int64))}
    return out


def train(name, data, run, optim_args, steps=25):
    pk("train", "--data", data[name]["spec"], "--model", NETS[name][0], "--loss", "softmax", *optim_args,
       "--steps", str(steps), "--seed", str(SEED), "--out", run, "--quiet")


@pytest.mark.parametrize("name", list(NETS))
def test_predictions_match_torch(data, tmp_path, name):
    spec, shape, C = NETS[name]
    run = tmp_path / "run"
    train(name, data, run, ["--optim", "sgd", "--lr", "0.1", "--batch", "8"], steps=6)
    info = pk("info", run)
    assert "res(" in info and ("dropout" in info) == ("drop" in name), info
    Ctx.now = None
    for step in ("0", "final"):
        pk("weights", run, "--step", step, "--out", tmp_path / f"w{step}")
        net = build(spec, shape, load_weights(tmp_path / f"w{step}"))
        pk("predict", run, "--data", data[name]["qspec"], "--step", step, "--out", tmp_path / "p.npy")
        got = np.load(tmp_path / "p.npy")
        with torch.no_grad():
            want = net(torch.from_numpy(data[name]["Q"])).numpy()
        err = rel_err(got, want)
        assert err < 1e-12, f"{name} step {step}: max relative error {err:.3g}"
        print(f"predictions {name} step {step}: {err:.3g}")


OPTIMS = {
    "sgd": ["--optim", "sgd", "--lr", "0.1", "--batch", "8"],
    "adam": ["--optim", "adam", "--lr", "0.01", "--batch", "8"],
}


def torch_train(name, data, run, optim, tmp_path, with_masks=True):
    spec, shape, C = NETS[name]
    pk("weights", run, "--step", "0", "--out", tmp_path / "w0")
    net = build(spec, shape, load_weights(tmp_path / "w0"))
    params = list(net.parameters())
    lr = float(OPTIMS[optim][OPTIMS[optim].index("--lr") + 1])
    opt = torch.optim.SGD(params, lr=lr) if optim == "sgd" else \
        torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    tr = read_traj(run / "trajectory.bin")
    X, y = torch.from_numpy(data[name]["X"]), torch.from_numpy(data[name]["y"])
    for t, idx in enumerate(batches(tr)):
        for g in opt.param_groups:
            g["lr"] = float(tr["lr"][t])
        Ctx.now = (t, idx) if with_masks else None
        ib = torch.from_numpy(idx)
        opt.zero_grad()
        nn.functional.cross_entropy(net(X[ib]), y[ib]).backward()
        opt.step()
    Ctx.now = None
    # Res registers its body before its projection: pathkernel's order
    return [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in net.modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("optim", list(OPTIMS))
@pytest.mark.parametrize("name", list(NETS))
def test_training_matches_torch(data, tmp_path, name, optim):
    run = tmp_path / "run"
    train(name, data, run, OPTIMS[optim])
    pk("weights", run, "--step", "final", "--out", tmp_path / "wT")
    got = load_weights(tmp_path / "wT")
    want = torch_train(name, data, run, optim, tmp_path)
    assert rel_err(got[0][0], load_weights(tmp_path / "w0")[0][0]) > 1e-4, "training did not move the first layer"
    worst = 0.0
    for l, ((Wg, bg), (Ww, bw)) in enumerate(zip(got, want), 1):
        for what, g, w in ((f"W{l}", Wg, Ww), (f"b{l}", bg, bw)):
            err = rel_err(g, w)
            assert err < 1e-10, f"{name} {optim}: {what} max relative error {err:.3g} after 25 steps"
            worst = max(worst, err)
    print(f"weights {name} {optim}: {worst:.3g}")
    if "drop" in name:  # without the masks PyTorch lands elsewhere: the comparison can fail
        plain = torch_train(name, data, run, optim, tmp_path, with_masks=False)
        assert max(rel_err(g[0], w[0]) for g, w in zip(got, plain)) > 1e-4


def functorch_entk(net, X, Y):
    """K (nx, ny, C, C) = J_x J_y^T by Jacobian contraction over all parameters."""
    fnet, params = functorch.make_functional(net)

    def jac(x):
        j = functorch.vmap(functorch.jacrev(lambda p, xi: fnet(p, xi.unsqueeze(0)).squeeze(0)), (None, 0))(params, x)
        return [t.reshape(t.shape[0], t.shape[1], -1) for t in j]

    Jx, Jy = jac(torch.from_numpy(X)), jac(torch.from_numpy(Y))
    return sum(torch.einsum("akp,blp->abkl", a, b) for a, b in zip(Jx, Jy)).detach().numpy()


@pytest.mark.parametrize("name", list(NETS))
def test_tangent_kernel_matches_functorch(data, tmp_path, name):
    """The tangent kernel of the network as it predicts (no masks)."""
    spec, shape, C = NETS[name]
    run = tmp_path / "run"
    train(name, data, run, ["--optim", "sgd", "--lr", "0.1", "--batch", "8"], steps=4)
    pk("weights", run, "--step", "final", "--out", tmp_path / "w")
    Ctx.now = None
    net = build(spec, shape, load_weights(tmp_path / "w"))
    X, Q = data[name]["X"][:7], data[name]["Q"]
    ref = functorch_entk(net, Q, X)
    assert ref.shape == (5, 7, C, C)
    xspec = save_data(tmp_path, "x7", X, data[name]["y"][:7])
    for mode in ("full", "trace"):
        pk("kernel", run, "--x", data[name]["qspec"], "--y", xspec, "--mode", mode, "--out", tmp_path / "K.npy")
        K = np.load(tmp_path / "K.npy")
        want = ref if mode == "full" else np.einsum("abkk->ab", ref)
        err = rel_err(K, want)
        assert err < 1e-12, f"{name} {mode}: differs from functorch's eNTK, rel err {err:.3g}"
        print(f"eNTK {name} {mode}: {err:.3g}")


# ------------------------------------------------------- exact path kernel

VERIFY = {
    "res": "dense:16;tanh;res(dense:16;tanh;dense:16);tanh;res(dense:8;tanh;dense:8;proj);tanh;dense",
    "dropout": "dense:16;tanh;dropout:0.5;dense:16;tanh;dropout:0.5;dense",
    "both": "dense:16;tanh;dropout:0.5;res(dense:16;tanh;dropout:0.5;dense:16);tanh;dense",
}


@pytest.mark.parametrize("optim", list(OPTIMS))
@pytest.mark.parametrize("net", list(VERIFY))
def test_verify_gl4(data, tmp_path, net, optim):
    """f(x; w_T) = b(x) + sum_i phi_i(x) within 1e-9 with gl4 (forward sweep
    for sgd, backward sweep for Adam), the training side through its masks."""
    run = tmp_path / "run"
    pk("train", "--data", data["mlp"]["spec"], "--model", VERIFY[net], "--loss", "softmax", *OPTIMS[optim],
       "--steps", "30", "--seed", "3", "--out", run, "--quiet")
    s = json.loads(pk("verify", run, "--query", data["mlp"]["qspec"], "--quad", "gl4", "--tol", "1e-9", "--json"))
    assert s["max_rel_err"] < 1e-9 and s["steps"] == 30, s
    left = json.loads(pk_run("verify", run, "--query", data["mlp"]["qspec"], "--quad", "left", "--json",
                             expect=None).stdout)
    assert left["max_rel_err"] > 1e-6, left  # the check can fail
    # every example's own contribution (its gradient through its own masks):
    # they add up to the prediction, in both sweeps
    out = tmp_path / "ex"
    pk("explain", run, "--query", data["mlp"]["qspec"], "--quad", "gl4", "--out", out)
    pred, bias, contrib = (np.load(out / f"{n}.npy") for n in ("pred", "bias", "contrib"))
    assert contrib.shape == (5, 24, 3)
    e = rel_err(bias + contrib.sum(axis=1), pred)
    assert e < 1e-9, f"{net} {optim}: pred != bias + sum of contributions: {e:.3g}"
    print(f"verify {net} {optim}: gl4 {s['max_rel_err']:.3g}, left {left['max_rel_err']:.3g}, explain sum {e:.3g}")


def tree(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_resumed_dropout_run_is_byte_identical(tmp_path):
    """Masks are drawn from (seed, step, example): a run stopped mid-way and
    resumed on another thread count leaves the uninterrupted run's bytes."""
    r = np.random.default_rng(4)
    X, y = r.normal(size=(400, 20)), np.arange(400) % 4
    spec = save_data(tmp_path, "d", X, y)
    args = ["train", "--data", spec, "--model", "dense:64;tanh;dropout:0.5;res(dense:64;tanh;dropout:0.2;dense:64);"
            "tanh;dense", "--loss", "softmax", "--optim", "adam", "--lr", "0.003", "--batch", "16",
            "--steps", "3000", "--keep", "37", "--seed", "9", "--quiet"]
    ref = tmp_path / "ref"
    pk_run(*args, "--threads", "2", "--out", ref)
    run = tmp_path / "run"
    p = subprocess.Popen([str(pk_exe())] + [str(a) for a in args] + ["--threads", "1", "--out", str(run)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "journal.bin").exists() or (run / "journal.bin").stat().st_size < 60 + 36 * 200:
        assert p.poll() is None, "finished before it could be stopped: " + p.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.001)
    p.send_signal(signal.SIGTERM)
    assert p.wait() == 1, p.stderr.read()
    assert json.loads((run / "run.json").read_text())["status"] == "stopped"
    pk_run("train", "--resume", run, "--threads", "2")
    a, b = tree(run), tree(ref)
    assert sorted(a) == sorted(b)
    assert [n for n in a if a[n] != b[n]] == []


@pytest.mark.parametrize("net", ["res", "dropout", "both"])
def test_path_kernel_sees_the_masks(data, tmp_path, net):
    """One sgd step: phi_i(x) = -K^p(x, x_i) R_i, R_i = dl_i/df at w_0 through
    example i's masks of step 0 (PyTorch's forward with pathkernel's masks):
    the training side of the path kernel is the masked network's Jacobian."""
    run = tmp_path / "run"
    pk("train", "--data", data["mlp"]["spec"], "--model", VERIFY[net], "--loss", "softmax", *OPTIMS["sgd"],
       "--steps", "1", "--seed", str(SEED), "--out", run, "--quiet")
    out = tmp_path / "ex"
    pk("explain", run, "--query", data["mlp"]["qspec"], "--quad", "gl4", "--mode", "full", "--kernel", "path-batch",
       "--out", out)
    contrib, K = np.load(out / "contrib.npy"), np.load(out / "kernel.npy")
    pk("weights", run, "--step", "0", "--out", tmp_path / "w0")
    torch_net = build(VERIFY[net], (10,), load_weights(tmp_path / "w0"))
    idx = batches(read_traj(run / "trajectory.bin"))[0]
    X, y = torch.from_numpy(data["mlp"]["X"][idx]), data["mlp"]["y"][idx]
    for masked in (True, False):
        Ctx.now = (0, idx) if masked else None
        with torch.no_grad():
            R = torch.softmax(torch_net(X), dim=1).numpy()
        Ctx.now = None
        R[np.arange(len(idx)), y] -= 1.0
        want = -np.einsum("qikl,il->qik", K[:, idx], R)
        e = rel_err(contrib[:, idx], want)
        if masked:
            assert e < 1e-10, f"{net}: phi_i != -K^p R_i: {e:.3g}"
        elif "dropout" in VERIFY[net]:  # without the masks it is far off: the check can fail
            assert e > 1e-3, e


@pytest.mark.parametrize("optim", list(OPTIMS))
def test_attribute_and_selfinfluence_agree_with_explain(data, tmp_path, optim):
    """attribute's top-k (its own replay, batch-sparse) are explain's largest
    contributions; selfinfluence --form kernel is the diagonal of explain's
    path kernel with the training examples as queries (test-time network on
    the query side, each example's masks on the training side)."""
    run = tmp_path / "run"
    pk("train", "--data", data["mlp"]["spec"], "--model", VERIFY["both"], "--loss", "softmax", *OPTIMS[optim],
       "--steps", "30", "--seed", "3", "--out", run, "--quiet")
    ex = tmp_path / "ex"
    pk("explain", run, "--query", data["mlp"]["spec"], "--quad", "gl4", "--kernel", "path-batch", "--out", ex)
    pred, contrib, K = (np.load(ex / f"{n}.npy") for n in ("pred", "contrib", "kernel"))
    pk("attribute", run, "--query", data["mlp"]["spec"], "--quad", "gl4", "--top", "3", "--out", tmp_path / "at")
    assert_top_is_explains(tmp_path / "at", pred, contrib)
    if optim == "sgd":
        pk("selfinfluence", run, "--form", "kernel", "--quad", "gl4", "--out", tmp_path / "si.csv")
        si = np.loadtxt(tmp_path / "si.csv", delimiter=",", skiprows=1, usecols=2)
        assert rel_err(si, np.diag(K)) < 1e-10


BAD_SPECS = [
    ("dense:8;tanh;res(dense:4);dense", "end it with ';proj'"),
    ("dense:8;res();dense", "has no layers"),
    ("dense:8;res(proj);dense", "has no layers"),
    ("dense:8;res(dense:8;tanh;dense", "res(LAYERS) or res(LAYERS;proj)"),
    ("dense:8;dropout:1;dense", "dropout:1: the probability must be a number in [0, 1)"),
    ("dense:8;dropout:half;dense", "the probability must be a number in [0, 1)"),
    ("dense:8;tanh;res(dense:8;tanh;dense)", "only the last dense layer may omit its width"),
    ("dense:8;tanh;res(dense:8)", "the last layer must be dense"),
]


@pytest.mark.parametrize("spec,why", BAD_SPECS)
def test_bad_specs_are_refused_before_training(data, tmp_path, spec, why):
    p = pk_run("train", "--data", data["mlp"]["spec"], "--model", spec, "--loss", "softmax", "--optim", "gd",
               "--lr", "0.1", "--steps", "1", "--out", tmp_path / "run", expect=2)
    assert why in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "run").exists(), "a refused spec left a run directory"


def test_threads_do_not_change_the_bits(data, tmp_path):
    """Masks and slots never depend on the thread count: training and
    explain with 1 and 2 threads write the same bytes."""
    out = {}
    for n in ("1", "2"):
        run = tmp_path / f"run{n}"
        pk("train", "--data", data["cnn_drop"]["spec"], "--model", NETS["cnn_drop"][0], "--loss", "softmax",
           *OPTIMS["adam"], "--steps", "12", "--seed", "7", "--threads", n, "--out", run, "--quiet")
        pk("explain", run, "--query", data["cnn_drop"]["qspec"], "--threads", n, "--out", tmp_path / f"ex{n}")
        out[n] = {p.name: p.read_bytes() for p in sorted((tmp_path / f"ex{n}").iterdir()) if p.suffix == ".npy"}
        out[n].update({p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.suffix == ".bin"})
    assert sorted(out["1"]) == sorted(out["2"]) and len(out["1"]) > 3
    assert [k for k in out["1"] if out["1"][k] != out["2"][k]] == []
