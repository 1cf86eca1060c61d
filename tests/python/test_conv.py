"""Convolutional networks against PyTorch float64: nn.Sequential of Conv2d,
AvgPool2d, MaxPool2d, Flatten, Linear and activations loaded with
pathkernel's weights. Predictions (1e-12), 25 steps of every optimiser
(weights to 1e-10) and the tangent kernel against functorch's empirical NTK
(full blocks and trace, 1e-12), for LeNet-5, a net with stride 2, padding and
max pooling, and one whose late conv2d layer has more channels than positions
(MATH.md section 8's form B).

Run:  /usr/bin/python3 -m pytest -q tests/python/test_conv.py
"""
import re

import numpy as np
import pytest

from pkutil import assert_top_is_explains, batches, load_weights, pk, read_traj, rel_err, save_data

torch = pytest.importorskip("torch", reason="needs torch: run with Debian's /usr/bin/python3")
functorch = pytest.importorskip("functorch", reason="needs functorch (torch 1.13) for the eNTK")
nn = torch.nn
torch.set_num_threads(1)
DT = torch.float64

# name: (spec, input shape (C, H, W), classes)
NETS = {
    "lenet5": ("lenet5", (1, 28, 28), 10),
    "stride2": ("conv:6,3,stride=2,pad=2;relu;maxpool:2;conv:8,3,pad=1;tanh;avgpool:2;flatten;dense:16;tanh;dense",
                (3, 16, 16), 4),
    # second conv2d: 64 channels on 2 x 2 positions, d = 128: form B
    "late": ("conv:32,3,stride=2;tanh;conv:64,2;tanh;flatten;dense", (3, 8, 8), 4),
}
LENET5 = "conv:6,5,pad=2;tanh;avgpool:2;conv:16,5;tanh;avgpool:2;flatten;dense:120;tanh;dense:84;tanh;dense"
ACT = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "identity": nn.Identity}


def torch_net(spec, shape, classes, weights):
    """The nn.Sequential a spec describes, holding the exported weights."""
    spec = LENET5 if spec == "lenet5" else spec
    mods, c, it = [], shape[0], iter(weights)
    flat = None
    for el in spec.split(";"):
        name, _, args = el.partition(":")
        pos = [int(a) for a in args.split(",") if a and "=" not in a]
        kw = dict(a.split("=") for a in args.split(",") if "=" in a)
        if name == "conv":
            W, b = next(it)
            m = nn.Conv2d(c, pos[0], pos[1], stride=int(kw.get("stride", 1)), padding=int(kw.get("pad", 0)), dtype=DT)
            c = pos[0]
        elif name in ("avgpool", "maxpool"):
            k = pos[0]
            mods.append((nn.AvgPool2d if name == "avgpool" else nn.MaxPool2d)(k, stride=int(kw.get("stride", k))))
            continue
        elif name == "flatten":
            mods.append(nn.Flatten())
            continue
        elif name == "dense":
            W, b = next(it)
            m = nn.Linear(W.shape[1], W.shape[0], dtype=DT)
        else:
            mods.append(ACT[name]())
            continue
        assert m.weight.shape == W.shape and m.bias.shape == b.shape, (name, m.weight.shape, W.shape)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(W))
            m.bias.copy_(torch.from_numpy(b))
        mods.append(m)
    assert next(it, None) is None, "weights left over"
    return nn.Sequential(*mods)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Per net: 24 training images (N, C, H, W) with labels, and 5 queries."""
    d = tmp_path_factory.mktemp("conv")
    r = np.random.default_rng(20261207)
    out = {}
    for name, (_, shape, C) in NETS.items():
        X = r.uniform(0, 1, size=(24, *shape))
        y = np.arange(24) % C
        r.shuffle(y)
        Q = r.uniform(0, 1, size=(5, *shape))
        out[name] = {"X": X, "y": y.astype(np.int64), "Q": Q,
                     "spec": save_data(d, f"{name}_tr", X, y.astype(np.int64)),
                     "qspec": save_data(d, f"{name}_q", Q, np.zeros(5, dtype=np.int64))}
    return out


def train(name, images, run, optim_args, steps=25):
    spec = NETS[name][0]
    pk("train", "--data", images[name]["spec"], "--model", spec, "--loss", "softmax", *optim_args,
       "--steps", str(steps), "--seed", "5", "--out", run, "--quiet")


@pytest.mark.parametrize("name", list(NETS))
def test_predictions_match_torch(images, tmp_path, name):
    spec, shape, C = NETS[name]
    run = tmp_path / "run"
    train(name, images, run, ["--optim", "sgd", "--lr", "0.1", "--batch", "8"], steps=6)
    for step in ("0", "final"):
        pk("weights", run, "--step", step, "--out", tmp_path / f"w{step}")
        net = torch_net(spec, shape, C, load_weights(tmp_path / f"w{step}"))
        pk("predict", run, "--data", images[name]["qspec"], "--step", step, "--out", tmp_path / "p.npy")
        got = np.load(tmp_path / "p.npy")
        with torch.no_grad():
            want = net(torch.from_numpy(images[name]["Q"])).numpy()
        err = rel_err(got, want)
        assert err < 1e-12, f"{name} step {step}: max relative error {err:.3g}"


def test_spec_is_recorded_with_its_shape(images, tmp_path):
    run = tmp_path / "run"
    train("lenet5", images, run, ["--optim", "gd", "--lr", "0.1"], steps=1)
    info = pk("info", run)
    assert "in:1,28,28;" + LENET5 in info, info
    # 61,706 parameters: LeNet-5 as PyTorch counts them
    assert re.search(r"61,?706 param", info), info


OPTIMS = {
    "gd": ["--optim", "gd", "--lr", "0.1"],
    "sgd": ["--optim", "sgd", "--lr", "0.1", "--batch", "8"],
    "momentum": ["--optim", "momentum", "--momentum", "0.9", "--lr", "0.05", "--batch", "8"],
    "adam": ["--optim", "adam", "--lr", "0.003", "--batch", "8"],
    "adamw": ["--optim", "adamw", "--lr", "0.003", "--batch", "8", "--weight-decay", "0.1"],
}


@pytest.mark.parametrize("optim", list(OPTIMS))
@pytest.mark.parametrize("name", ["lenet5", "stride2"])
def test_training_matches_torch(images, tmp_path, name, optim):
    spec, shape, C = NETS[name]
    run = tmp_path / "run"
    train(name, images, run, OPTIMS[optim])
    pk("weights", run, "--step", "0", "--out", tmp_path / "w0")
    pk("weights", run, "--step", "final", "--out", tmp_path / "wT")
    net = torch_net(spec, shape, C, load_weights(tmp_path / "w0"))
    params = list(net.parameters())
    args = OPTIMS[optim]
    lr = float(args[args.index("--lr") + 1])
    if optim in ("gd", "sgd"):
        opt = torch.optim.SGD(params, lr=lr)
    elif optim == "momentum":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    elif optim == "adam":
        opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    tr = read_traj(run / "trajectory.bin")
    assert tr["T"] == 25
    X, y = torch.from_numpy(images[name]["X"]), torch.from_numpy(images[name]["y"])
    for t, idx in enumerate(batches(tr)):
        for g in opt.param_groups:
            g["lr"] = float(tr["lr"][t])
        ib = torch.from_numpy(idx)
        opt.zero_grad()
        nn.functional.cross_entropy(net(X[ib]), y[ib]).backward()
        opt.step()
    got = load_weights(tmp_path / "wT")
    want = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in net if hasattr(m, "weight")]
    moved = rel_err(got[0][0], load_weights(tmp_path / "w0")[0][0])
    assert moved > 1e-4, "training did not move the first layer: the comparison would mean nothing"
    for l, ((Wg, bg), (Ww, bw)) in enumerate(zip(got, want), 1):
        for what, g, w in ((f"W{l}", Wg, Ww), (f"b{l}", bg, bw)):
            err = rel_err(g, w)
            assert err < 1e-10, f"{name} {optim}: {what} max relative error {err:.3g} after 25 steps"


def functorch_entk(net, X, Y):
    """K (nx, ny, C, C) = J_x J_y^T by Jacobian contraction over all parameters."""
    fnet, params = functorch.make_functional(net)

    def jac(x):
        j = functorch.vmap(functorch.jacrev(lambda p, xi: fnet(p, xi.unsqueeze(0)).squeeze(0)), (None, 0))(params, x)
        return [t.reshape(t.shape[0], t.shape[1], -1) for t in j]

    Jx, Jy = jac(torch.from_numpy(X)), jac(torch.from_numpy(Y))
    return sum(torch.einsum("akp,blp->abkl", a, b) for a, b in zip(Jx, Jy)).detach().numpy()


@pytest.mark.parametrize("name", list(NETS))
def test_tangent_kernel_matches_functorch(images, tmp_path, name):
    spec, shape, C = NETS[name]
    run = tmp_path / "run"
    train(name, images, run, ["--optim", "sgd", "--lr", "0.1", "--batch", "8"], steps=4)
    pk("weights", run, "--step", "final", "--out", tmp_path / "w")
    net = torch_net(spec, shape, C, load_weights(tmp_path / "w"))
    X, Q = images[name]["X"][:7], images[name]["Q"]
    ref = functorch_entk(net, Q, X)
    assert ref.shape == (5, 7, C, C)
    xspec = save_data(tmp_path, "x7", X, images[name]["y"][:7])
    for mode in ("full", "trace"):
        pk("kernel", run, "--x", images[name]["qspec"], "--y", xspec, "--mode", mode, "--out", tmp_path / "K.npy")
        K = np.load(tmp_path / "K.npy")
        want = ref if mode == "full" else np.einsum("abkk->ab", ref)
        err = rel_err(K, want)
        assert err < 1e-12, f"{name} {mode}: differs from functorch's eNTK, rel err {err:.3g}"


def test_tangent_kernel_in_blocks_matches_functorch(tmp_path):
    """Enough examples that the kernel is taken in blocks: y sides of 50
    examples (two pieces of 25 for 10 outputs) against x blocks of 16 under
    a small --mem or one of 130, and the first convolution (form A) kept as
    gradient rows while the second (form B) keeps its deltas. Against
    functorch in both modes, for x against y and x against itself; the same
    bits with 1 and 3 threads (y sides of 50 and 100 examples). x against
    itself (a Gram: each pair taken once, then mirrored) is exactly
    symmetric and its upper triangle has the bits of x against a copy of x
    (no pair left out or mirrored)."""
    spec = "conv:4,3,pad=1;tanh;avgpool:2;conv:6,3;tanh;flatten;dense:12;tanh;dense"
    r = np.random.default_rng(7)
    X, Q = r.uniform(0, 1, size=(130, 1, 8, 8)), r.uniform(0, 1, size=(60, 1, 8, 8))
    y = np.arange(130) % 10
    xspec = save_data(tmp_path, "x", X, y)
    qspec = save_data(tmp_path, "q", Q, np.zeros(60, dtype=np.int64))
    run = tmp_path / "run"
    pk("train", "--data", xspec, "--model", spec, "--loss", "softmax", "--optim", "sgd", "--lr", "0.1", "--batch", "16",
       "--steps", "3", "--seed", "2", "--out", run, "--quiet")
    pk("weights", run, "--step", "final", "--out", tmp_path / "w")
    net = torch_net(spec, (1, 8, 8), 10, load_weights(tmp_path / "w"))
    refs = {"q": functorch_entk(net, Q, X), "x": functorch_entk(net, X, X)}
    for mode in ("full", "trace"):
        for what, args in (("q", ["--x", qspec, "--y", xspec]), ("x", ["--x", xspec])):
            want = refs[what] if mode == "full" else np.einsum("abkk->ab", refs[what])
            got = {}
            for threads, mem in (("1", []), ("3", []), ("2", ["--mem", "8"])):
                out = tmp_path / f"K-{mode}-{what}-{threads}.npy"
                pk("kernel", run, *args, "--mode", mode, "--threads", threads, *mem, "--out", out)
                got[threads] = np.load(out)
                err = rel_err(got[threads], want)
                assert err < 1e-12, f"{mode} {what}, {threads} threads {mem}: rel err {err:.3g} against functorch"
            assert np.array_equal(got["1"], got["3"]), f"{mode} {what}: bits differ between 1 and 3 threads"
        gram = got["2"]  # x blocks of 16 against y steps of 50: steps that straddle a block's start
        assert np.array_equal(gram, gram.swapaxes(0, 1).swapaxes(2, 3) if mode == "full" else gram.T), \
            f"{mode}: the Gram is not exactly symmetric"
        copy = tmp_path / f"K-{mode}-copy.npy"
        pk("kernel", run, "--x", xspec, "--y", save_data(tmp_path, "xcopy", X, y), "--mode", mode, "--threads", "2",
           "--mem", "8", "--out", copy)
        # (x, kx) <= (y, ky) in the order of K's rows and columns
        n, r = len(X), (10 if mode == "full" else 1)
        flat = lambda K: K.transpose(0, 2, 1, 3).reshape(n * r, n * r) if mode == "full" else K
        upper = np.triu_indices(n * r)
        assert np.array_equal(flat(gram)[upper], flat(np.load(copy))[upper]), \
            f"{mode}: the Gram's upper triangle differs from x against a copy"


def test_path_kernel_in_blocks_matches_functorch(tmp_path):
    """The paper's path kernel in blocks (x blocks of 128, y blocks of 32:
    130 examples make five) through a convolution kept as gradient rows:
    under the left rule after three gd steps it is lr times the sum of the
    tangent kernels at w_0, w_1, w_2 (functorch). Under the exact rule on a
    ReLU / max-pool net, the kernel of 64 examples against themselves (two
    y blocks) equals the one assembled from calls on 32 at a time."""
    r = np.random.default_rng(11)
    X, Q = r.uniform(0, 1, size=(130, 1, 8, 8)), r.uniform(0, 1, size=(60, 1, 8, 8))
    xspec = save_data(tmp_path, "x", X, np.arange(130) % 10)
    qspec = save_data(tmp_path, "q", Q, np.zeros(60, dtype=np.int64))
    spec = "conv:4,3,pad=1;tanh;avgpool:2;conv:6,3;tanh;flatten;dense:12;tanh;dense"
    run = tmp_path / "run"
    pk("train", "--data", xspec, "--model", spec, "--loss", "softmax", "--optim", "gd", "--lr", "0.2", "--steps", "3",
       "--seed", "4", "--out", run, "--quiet")
    ref = 0
    for t in range(3):
        pk("weights", run, "--step", str(t), "--out", tmp_path / f"w{t}")
        ref = ref + 0.2 * functorch_entk(torch_net(spec, (1, 8, 8), 10, load_weights(tmp_path / f"w{t}")), Q, X)
    for mode in ("full", "trace"):
        pk("kernel", run, "--at", "path", "--quad", "left", "--x", qspec, "--y", xspec, "--mode", mode,
           "--out", tmp_path / "Kp.npy")
        want = ref if mode == "full" else np.einsum("abkk->ab", ref)
        err = rel_err(np.load(tmp_path / "Kp.npy"), want)
        assert err < 1e-12, f"{mode}: path kernel differs from the sum of functorch's eNTKs, rel err {err:.3g}"
    relu = "conv:4,3,pad=1;relu;maxpool:2;conv:6,3;relu;flatten;dense:12;relu;dense"
    run = tmp_path / "relu"
    pk("train", "--data", xspec, "--model", relu, "--loss", "softmax", "--optim", "sgd", "--lr", "0.3", "--batch", "26",
       "--steps", "3", "--seed", "4", "--out", run, "--quiet")
    x64 = save_data(tmp_path, "x64", X[:64], np.arange(64) % 10)
    pk("kernel", run, "--at", "path", "--quad", "exact", "--x", x64, "--mode", "full", "--out", tmp_path / "Ke.npy")
    K = np.load(tmp_path / "Ke.npy")
    cuts = [0, 32, 64]
    got = np.zeros_like(K)
    for a, b in zip(cuts, cuts[1:]):
        sa = save_data(tmp_path, f"c{a}", X[a:b], np.arange(a, b) % 10)
        for c, e in zip(cuts, cuts[1:]):
            sc = save_data(tmp_path, f"c{c}", X[c:e], np.arange(c, e) % 10)
            pk("kernel", run, "--at", "path", "--quad", "exact", "--x", sa, "--y", sc, "--mode", "full",
               "--out", tmp_path / "Kc.npy")
            got[a:b, c:e] = np.load(tmp_path / "Kc.npy")
    err = rel_err(got, K)
    assert err < 1e-12, f"exact rule: blocks of 64 against calls of 32, rel err {err:.3g}"


BAD_SPECS = [
    ("conv:6,31;tanh;flatten;dense", "window does not fit"),
    ("conv:6,5;tanh;dense", "add flatten"),
    ("conv:6,5;tanh;flatten", "last layer must be dense"),
    ("conv:6;flatten;dense", "conv takes OUT,K"),
    ("conv:6,5,dilation=2;flatten;dense", "unknown option"),
    ("pool:2;flatten;dense", "unknown layer 'pool'"),
]


@pytest.mark.parametrize("spec,why", BAD_SPECS)
def test_bad_specs_are_refused_before_training(images, tmp_path, spec, why):
    from pkutil import pk_run
    p = pk_run("train", "--data", images["lenet5"]["spec"], "--model", spec, "--loss", "softmax", "--optim", "gd",
               "--lr", "0.1", "--steps", "1", "--out", tmp_path / "run", expect=2)
    assert why in p.stderr, p.stderr
    assert "conv" in p.stderr or "pool" in p.stderr
    assert not (tmp_path / "run").exists(), "a refused spec left a run directory"


def test_conv_on_flat_data_names_the_fix(tmp_path):
    from pkutil import pk_run
    spec = save_data(tmp_path, "flat", np.random.default_rng(1).normal(size=(10, 16)), np.arange(10) % 2)
    p = pk_run("train", "--data", spec, "--model", "conv:2,3;flatten;dense", "--loss", "softmax", "--optim", "gd",
               "--lr", "0.1", "--steps", "1", "--out", tmp_path / "run", expect=2)
    assert "--input-shape" in p.stderr, p.stderr


# ------------------------------------------------- exact path kernel on CNNs

SMALL = "conv:4,3,stride=2,pad=2;tanh;avgpool:2;conv:6,2;tanh;flatten;dense:8;tanh;dense"


def test_verify_gl4_tanh_avgpool_sgd(images, tmp_path):
    """The forward sweep (sgd): gl4 within 1e-9 of the prediction, and
    contributions that add up to it (explain's summary)."""
    run = tmp_path / "run"
    pk("train", "--data", images["stride2"]["spec"], "--model", SMALL, "--loss", "softmax", "--optim", "sgd",
       "--lr", "0.1", "--batch", "8", "--steps", "30", "--seed", "2", "--out", run, "--quiet")
    out = pk("verify", run, "--query", images["stride2"]["qspec"], "--quad", "gl4", "--tol", "1e-9", "--json")
    import json
    s = json.loads(out)
    assert s["max_rel_err"] < 1e-9 and s["steps"] == 30, s
    # the left rule is not that close: the check can fail
    p = pk_run_any("verify", run, "--query", images["stride2"]["qspec"], "--quad", "left", "--json")
    assert json.loads(p.stdout)["max_rel_err"] > 1e-6


@pytest.mark.parametrize("name", list(NETS))
def test_contributions_are_the_path_kernel_times_the_loss_deltas(images, tmp_path, name):
    """One sgd step: phi_i(x) = -K^p(x, x_i) R_i with R_i = softmax(f(x_i;
    w_0)) - e_{y_i} from PyTorch. The contributions sum a query's gradient
    rows over the nodes before they meet the batch (kernel/rowsum.c); the
    contribution kernel takes every node's products one by one."""
    spec, shape, C = NETS[name]
    run = tmp_path / "run"
    train(name, images, run, ["--optim", "sgd", "--lr", "0.1", "--batch", "8"], steps=1)
    out = tmp_path / "ex"
    pk("explain", run, "--query", images[name]["qspec"], "--quad", "gl4", "--mode", "full", "--kernel", "path-batch",
       "--out", out)
    contrib, K = np.load(out / "contrib.npy"), np.load(out / "kernel.npy")
    pk("weights", run, "--step", "0", "--out", tmp_path / "w0")
    net = torch_net(spec, shape, C, load_weights(tmp_path / "w0"))
    idx = batches(read_traj(run / "trajectory.bin"))[0]
    with torch.no_grad():
        R = torch.softmax(net(torch.from_numpy(images[name]["X"][idx])), dim=1).numpy()
    R[np.arange(len(idx)), images[name]["y"][idx]] -= 1.0
    want = -np.einsum("qikl,il->qik", K[:, idx], R)
    assert np.abs(want).max() > 1e-6
    e = rel_err(contrib[:, idx], want)
    assert e < 1e-12, f"{name}: phi_i != -K^p R_i: {e:.3g}"


def test_attribute_agrees_with_explain(images, tmp_path):
    """attribute's replay (a conv2d first layer moved by its forward pass
    with D_t, the gradient rows summed a step) ranks and values the
    examples as explain's contributions do."""
    run = tmp_path / "run"
    train("stride2", images, run, ["--optim", "sgd", "--lr", "0.1", "--batch", "8"], steps=9)
    ex = tmp_path / "ex"
    pk("explain", run, "--query", images["stride2"]["qspec"], "--quad", "gl4", "--no-kernel", "--out", ex)
    pred, contrib = np.load(ex / "pred.npy"), np.load(ex / "contrib.npy")
    pk("attribute", run, "--query", images["stride2"]["qspec"], "--quad", "gl4", "--top", "3", "--out",
       tmp_path / "at")
    assert_top_is_explains(tmp_path / "at", pred, contrib)


def pk_run_any(*args):
    from pkutil import pk_run
    return pk_run(*args, expect=None)


@pytest.mark.parametrize("optim", [["--optim", "momentum", "--lr", "0.05"],
                                   ["--optim", "adam", "--lr", "0.003"],
                                   ["--optim", "adamw", "--lr", "0.003", "--weight-decay", "0.2"]],
                         ids=["momentum", "adam", "adamw"])
def test_backward_sweep_on_conv_is_exact(images, tmp_path, optim):
    """Momentum and Adam go through the backward sweep (MATH.md section 5),
    conv2d layers by their rows' gradients: with gl8 the contributions,
    the regularisation and the bias add up to the prediction to rounding."""
    run = tmp_path / "run"
    pk("train", "--data", images["stride2"]["spec"], "--model", SMALL, "--loss", "softmax", *optim,
       "--batch", "8", "--steps", "12", "--seed", "2", "--out", run, "--quiet")
    pk("explain", run, "--query", images["stride2"]["qspec"], "--quad", "gl8", "--out", tmp_path / "ex")
    e = {k: np.load(tmp_path / "ex" / f"{k}.npy") for k in ("pred", "bias", "contrib", "regularisation")}
    moved = e["pred"] - e["bias"]
    resid = moved - e["contrib"].sum(axis=1) - e["regularisation"]
    assert np.abs(moved).max() > 1e-3
    assert np.abs(resid).max() / np.abs(moved).max() < 1e-11
    if "adamw" in optim:
        assert np.abs(e["regularisation"]).max() > 1e-6, "decay moved nothing: the check would not see it"


def test_backward_sweep_kernel_one_step(images, tmp_path):
    """One momentum step from w_0: phi_i(x)_k = -sum_k2 r_{i,k2}
    K(x, x_i)_{k,k2} with the contribution kernel (`--kernel path-batch`,
    which carries eta/|B|, MATH.md section 3), with r the softmax residuals at w_0 (computed here in numpy):
    the kernel the sweep writes is the one its contributions are made of."""
    run = tmp_path / "run"
    X, y = images["stride2"]["X"], images["stride2"]["y"]
    pk("train", "--data", images["stride2"]["spec"], "--model", SMALL, "--loss", "softmax", "--optim", "momentum",
       "--lr", "0.1", "--steps", "1", "--seed", "4", "--out", run, "--quiet")
    pk("explain", run, "--query", images["stride2"]["qspec"], "--quad", "gl4", "--mode", "full",
       "--kernel", "path-batch", "--out", tmp_path / "ex")
    pk("predict", run, "--data", images["stride2"]["spec"], "--step", "0", "--out", tmp_path / "f0.npy")
    f0 = np.load(tmp_path / "f0.npy")
    p = np.exp(f0 - f0.max(axis=1, keepdims=True))
    r = p / p.sum(axis=1, keepdims=True) - np.eye(f0.shape[1])[y]
    K = np.load(tmp_path / "ex" / "kernel.npy")
    phi = np.load(tmp_path / "ex" / "contrib.npy")
    assert K.shape == (5, 24, 4, 4)
    want = -np.einsum("qikl,il->qik", K, r)
    assert rel_err(phi, want) < 1e-12


# ----------------------------------------------------------------- report

def png_headers(html):
    import base64
    import struct
    uris = re.findall(r'class="example"[^>]*href="data:image/png;base64,([^"]+)"', html)
    return [struct.unpack(">IIBB", base64.b64decode(u)[16:26]) for u in uris]


def test_report_draws_images_with_their_channels(images, tmp_path):
    """3-channel data as RGB pictures (PNG colour type 2), one channel as
    grey (type 0), each at the image's own size."""
    for name, ctype in (("stride2", 2), ("lenet5", 0)):
        run = tmp_path / name
        train(name, images, run, ["--optim", "sgd", "--lr", "0.1", "--batch", "8"], steps=3)
        pk("report", run, "--query", images[name]["qspec"], "--first", "2", "--out", tmp_path / f"{name}.html")
        heads = png_headers((tmp_path / f"{name}.html").read_text())
        _, (c, h, w), _ = NETS[name]
        assert heads, "no example images in the report"
        assert all(hd == (w, h, 8, ctype) for hd in heads), heads[:3]


# ------------------------------------------------- the paper's path kernel

@pytest.mark.parametrize("name", ["stride2", "late"])
def test_path_kernel_of_a_cnn_is_symmetric_psd(images, tmp_path, name):
    """The paper's path kernel (MATH.md section 3) through conv layers of
    both forms (section 8): exactly symmetric, positive semi-definite, and
    after one gd step with the left rule lr times the tangent kernel at w_0."""
    run = tmp_path / "run"
    train(name, images, run, ["--optim", "sgd", "--lr", "0.1", "--batch", "8"], steps=6)
    pk("kernel", run, "--at", "path", "--x", images[name]["spec"], "--mode", "full", "--out", tmp_path / "K.npy")
    K = np.load(tmp_path / "K.npy")
    n, _, C, _ = K.shape
    M = K.transpose(0, 2, 1, 3).reshape(n * C, n * C)
    assert np.array_equal(M, M.T)
    ev = np.linalg.eigvalsh(M)
    assert ev[0] >= -1e-12 * ev[-1]
    one = tmp_path / "one"
    train(name, images, one, ["--optim", "gd", "--lr", "0.3"], steps=1)
    pk("kernel", one, "--at", "path", "--quad", "left", "--x", images[name]["qspec"], "--y", images[name]["spec"],
       "--mode", "full", "--out", tmp_path / "Kp.npy")
    pk("kernel", one, "--at", "init", "--x", images[name]["qspec"], "--y", images[name]["spec"], "--mode", "full",
       "--out", tmp_path / "K0.npy")
    assert rel_err(np.load(tmp_path / "Kp.npy"), 0.3 * np.load(tmp_path / "K0.npy")) < 1e-14
