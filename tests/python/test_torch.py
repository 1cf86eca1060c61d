"""pathkernel against PyTorch (float64): forward passes, training paths,
replay from sparse checkpoints, and determinism of the run directory.

Run:  /usr/bin/python3 -m pytest -q tests/python/test_torch.py
Needs torch and numpy (Debian's python3-torch / python3-numpy; the module is
skipped without torch) and a built tree (PK_BUILD, see conftest.py). The
thread test also needs Debian's dataset-fashion-mnist.

Comparisons with torch use the max relative error over one tensor,
max|pathkernel - torch| / max|torch|; comparisons of pathkernel with itself
(replay, determinism) are bit for bit.
"""
import csv
import pathlib
import subprocess

import numpy as np
import pytest

from pkutil import batches, load_weights, read_traj, rel_err

torch = pytest.importorskip("torch", reason="needs torch: run with Debian's /usr/bin/python3")
nn = torch.nn

torch.set_num_threads(1)  # tiny matrices: threads only add noise and time
DT = torch.float64
ACTS = ["identity", "tanh", "relu", "sigmoid", "softplus", "gelu"]
FMNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="session")
def pk(build_dir):
    """pk("train", ...) runs the CLI (build_dir from conftest.py) and returns
    its stdout; fails the test with the command and stderr on a non-zero exit."""
    exe = build_dir / "pathkernel"
    if not exe.is_file():
        pytest.fail(f"{exe} does not exist: build it first (cmake --build {build_dir})")

    def run(*args):
        cmd = [str(exe)] + [str(a) for a in args]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            pytest.fail(f"{' '.join(cmd)}\nexit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
        return p.stdout

    return run


def make_act(name):
    return {
        "identity": nn.Identity,
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "softplus": nn.Softplus,
        "gelu": lambda: nn.GELU(approximate="none"),
    }[name]()


def torch_mlp(layers, act):
    """nn.Sequential(Linear, act, ..., Linear) in float64 holding `layers`."""
    mods = []
    for i, (W, b) in enumerate(layers):
        lin = nn.Linear(W.shape[1], W.shape[0], dtype=DT)
        assert b.shape == (W.shape[0],)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        mods.append(lin)
        if i + 1 < len(layers):
            mods.append(make_act(act))
    return nn.Sequential(*mods)


def read_steps_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "lr", "batch_size", "loss"]
    return [(int(s), float(lr), int(b), float(l)) for s, lr, b, l in rows[1:]]


def ckpt_files(run):
    return sorted(p.name for p in (pathlib.Path(run) / "weights").iterdir())


# ---------------------------------------------------------------- data sets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Small random float64 data sets as npy specs: features (100, 5) and
    targets for each loss (softmax: 4 classes, logistic: 0/1, mse: 2 columns)."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(20240611)
    X = rng.standard_normal((100, 5)) * 1.5
    np.save(d / "X.npy", X)
    ys = {
        "softmax": rng.integers(0, 4, 100).astype(np.int64),
        "logistic": rng.integers(0, 2, 100).astype(np.float64),
        "mse": np.stack([np.sin(X[:, 0]) + 0.1 * X[:, 1], X[:, 2] * X[:, 3]], axis=1),
    }
    specs = {}
    for name, y in ys.items():
        np.save(d / f"Y_{name}.npy", y)
        specs[name] = f"npy:{d / 'X.npy'},{d / f'Y_{name}.npy'}"
    return {"dir": d, "X": X, "Y": ys, "spec": specs}


# ------------------------------------------------- 1. forward pass / predict

MODELS = ["linear"] + [f"mlp:{h}:{a}" for a in ACTS for h in ("16", "16,12", "16,12,8")]
PARAMS = {
    "standard": ["--param", "standard"],
    "ntk": ["--param", "ntk", "--sigma-w", "1.5", "--sigma-b", "0.2"],
}


@pytest.mark.parametrize("param", list(PARAMS))
@pytest.mark.parametrize("model", MODELS)
def test_predict_matches_torch(pk, data, tmp_path, model, param):
    spec = data["spec"]["softmax"]
    run = tmp_path / "run"
    pk("train", "--data", spec, "--model", model, *PARAMS[param], "--loss", "softmax",
       "--optim", "gd", "--lr", "0.5", "--steps", "3", "--seed", "7", "--out", run, "--quiet")
    n_layers = 1 if model == "linear" else model.count(",") + 2
    act = "identity" if model == "linear" else model.rsplit(":", 1)[1]
    preds = {}
    for step in ("0", "final"):
        wdir = tmp_path / f"w{step}"
        pk("weights", run, "--step", step, "--out", wdir)
        layers = load_weights(wdir, n_layers)
        out = tmp_path / f"p{step}.npy"
        pk("predict", run, "--data", spec, "--step", step, "--out", out)
        got = np.load(out)
        assert got.dtype == np.float64 and got.shape == (100, 4)
        with torch.no_grad():
            want = torch_mlp(layers, act)(torch.from_numpy(data["X"])).numpy()
        err = rel_err(got, want)
        assert err < 1e-12, f"{model} {param} step {step}: max relative error {err:.3g}"
        preds[step] = got
    # training moved the weights, so the two checks looked at different models
    assert rel_err(preds["0"], preds["final"]) > 1e-6


# --------------------------------------------------- 2. training agreement

OPTIMS = {
    "gd": (["--optim", "gd", "--lr", "0.1"], None),
    "sgd": (["--optim", "sgd", "--lr", "0.1", "--batch", "16"], 16),
    "momentum": (["--optim", "momentum", "--momentum", "0.9", "--lr", "0.05"], None),
    "momentum-batch": (["--optim", "momentum", "--momentum", "0.9", "--lr", "0.05", "--batch", "16"], 16),
    "adam": (["--optim", "adam", "--lr", "0.01"], None),
    "adam-batch": (["--optim", "adam", "--lr", "0.01", "--batch", "16"], 16),
    "adamw": (["--optim", "adamw", "--lr", "0.01"], None),
    "adamw-batch": (["--optim", "adamw", "--lr", "0.01", "--batch", "16"], 16),
}
STEPS = 25


def torch_loss(loss, f, y):
    """Mean over the batch, as pathkernel defines its losses."""
    if loss == "mse":
        return 0.5 * ((f - y) ** 2).sum(dim=1).mean()
    if loss == "logistic":
        return nn.functional.binary_cross_entropy_with_logits(f[:, 0], y)
    return nn.functional.cross_entropy(f, y)


def check_schedule(tr, B):
    """Full batches for B None; else epochs of consecutive slices of a
    permutation, the last one shorter (100 = 6 * 16 + 4)."""
    T, N = tr["T"], tr["N"]
    sizes = np.diff(tr["off"].astype(np.int64))
    if B is None:
        assert np.all(sizes == 0), "full-batch run recorded explicit batches"
        return
    per_epoch = -(-N // B)
    want = [B if (t % per_epoch) + 1 < per_epoch else N - (per_epoch - 1) * B for t in range(T)]
    assert list(sizes) == want
    bs = batches(tr)
    for e in range(0, T, per_epoch):
        ep = bs[e:e + per_epoch]
        if len(ep) == per_epoch:
            assert sorted(np.concatenate(ep).tolist()) == list(range(N)), f"epoch at step {e} is not a permutation"


class ScaledMLP(nn.Module):
    """The ntk parameterisation: z = s_w W a + s_b c with raw (W, c)."""

    def __init__(self, layers, act, sw, sb):
        super().__init__()
        self.sw = [float(sw / np.sqrt(W.shape[1])) for W, _ in layers]
        self.sb = sb
        self.W = nn.ParameterList([nn.Parameter(torch.from_numpy(W / s).clone()) for (W, _), s in zip(layers, self.sw)])
        self.c = nn.ParameterList([nn.Parameter(torch.from_numpy(b / sb).clone()) for _, b in layers])
        self.act = make_act(act)

    def forward(self, x):
        for l, (W, c) in enumerate(zip(self.W, self.c)):
            x = self.sw[l] * (x @ W.T) + self.sb * c
            if l + 1 < len(self.W):
                x = self.act(x)
        return x

    def effective(self):
        return [(self.sw[l] * W.detach().numpy(), self.sb * c.detach().numpy())
                for l, (W, c) in enumerate(zip(self.W, self.c))]


def train_both(pk, data, tmp_path, loss, optim, extra=(), ntk=None, wd=0.0):
    """Train with pathkernel, replay the recorded batches and learning rates in
    torch from the exported step-0 weights; return what both produced. `wd`:
    --weight-decay, torch's weight_decay (L2 for SGD/Adam, decoupled for AdamW)."""
    args, B = OPTIMS[optim]
    if wd:
        extra = [*extra, "--weight-decay", repr(wd)]
    run = tmp_path / "run"
    param = ["--param", "ntk", "--sigma-w", str(ntk[0]), "--sigma-b", str(ntk[1])] if ntk else []
    pk("train", "--data", data["spec"][loss], "--model", "mlp:16,16:tanh", "--loss", loss, *args, *param,
       *extra, "--steps", STEPS, "--seed", "3", "--out", run, "--quiet")
    pk("weights", run, "--step", "0", "--out", tmp_path / "w0")
    pk("weights", run, "--step", "final", "--out", tmp_path / "wT")
    tr = read_traj(run / "trajectory.bin")
    assert tr["T"] == STEPS and tr["N"] == 100
    check_schedule(tr, B)

    layers0 = load_weights(tmp_path / "w0", 3)
    if ntk:
        model = ScaledMLP(layers0, "tanh", *ntk)
    else:
        model = torch_mlp(layers0, "tanh")
    params = list(model.parameters())
    kind = args[1]
    lr0 = float(tr["lr"][0])
    if kind in ("gd", "sgd"):
        opt = torch.optim.SGD(params, lr=lr0, weight_decay=wd)
    elif kind == "momentum":
        opt = torch.optim.SGD(params, lr=lr0, momentum=0.9, weight_decay=wd)
    elif kind == "adamw":  # AdamW's default weight_decay is 0.01: always pass it
        opt = torch.optim.AdamW(params, lr=lr0, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    else:
        opt = torch.optim.Adam(params, lr=lr0, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    X = torch.from_numpy(data["X"])
    Y = torch.from_numpy(data["Y"][loss])
    losses = []
    for t, idx in enumerate(batches(tr)):
        for g in opt.param_groups:
            g["lr"] = float(tr["lr"][t])
        ib = torch.from_numpy(idx)
        opt.zero_grad()
        l = torch_loss(loss, model(X[ib]), Y[ib])
        l.backward()
        opt.step()
        losses.append(l.item())
    final = model.effective() if ntk else [(m.weight.detach().numpy(), m.bias.detach().numpy())
                                           for m in model if isinstance(m, nn.Linear)]
    return run, tr, load_weights(tmp_path / "wT", 3), final, np.array(losses)


def check_agreement(run, tr, got, want, losses, tol=1e-10):
    for l, ((Wg, bg), (Ww, bw)) in enumerate(zip(got, want), 1):
        for name, g, w in ((f"W{l}", Wg, Ww), (f"b{l}", bg, bw)):
            err = rel_err(g, w)
            assert err < tol, f"{name}: max relative error {err:.3g} after {STEPS} steps"
    rows = read_steps_csv(run / "steps.csv")
    assert [r[0] for r in rows] == list(range(1, STEPS + 1))
    csv_loss = np.array([r[3] for r in rows])
    assert np.array_equal(csv_loss, tr["loss"]), "steps.csv and trajectory.bin disagree"
    assert np.array_equal(np.array([r[1] for r in rows]), tr["lr"])
    assert [r[2] for r in rows] == [len(b) for b in batches(tr)]
    lerr = np.abs(csv_loss - losses) / np.abs(losses)
    assert lerr.max() < tol, f"batch loss differs at step {int(lerr.argmax()) + 1}: relative {lerr.max():.3g}"


@pytest.mark.parametrize("loss", ["softmax", "logistic", "mse"])
@pytest.mark.parametrize("optim", list(OPTIMS))
def test_training_matches_torch(pk, data, tmp_path, optim, loss):
    run, tr, got, want, losses = train_both(pk, data, tmp_path, loss, optim)
    assert np.all(tr["lr"] == float(OPTIMS[optim][0][OPTIMS[optim][0].index("--lr") + 1]))
    check_agreement(run, tr, got, want, losses)
    # the path moved: a no-op optimiser would not pass by accident
    assert rel_err(got[0][0], load_weights(tmp_path / "w0")[0][0]) > 1e-4


@pytest.mark.parametrize("loss", ["softmax", "mse"])
@pytest.mark.parametrize("optim", list(OPTIMS))
def test_weight_decay_matches_torch(pk, data, tmp_path, optim, loss):
    """--weight-decay against torch's weight_decay: L2 added to the gradient for
    SGD (gd, sgd, momentum) and Adam, decoupled w -= lr*lambda*w for AdamW."""
    wd = 0.3
    run, tr, got, want, losses = train_both(pk, data, tmp_path, loss, optim, wd=wd)
    check_agreement(run, tr, got, want, losses)
    info = pk("info", run)
    assert "weight decay 0.3" in info, info
    # the decay changed the path: without it the final weights differ
    run0, _, got0, _, _ = train_both(pk, data, tmp_path / "nodecay", loss, optim)
    assert rel_err(got[0][0], got0[0][0]) > 1e-6, "weight decay had no effect"


@pytest.mark.parametrize("optim", ["sgd", "momentum", "adam-batch"])
def test_training_matches_torch_ntk_cosine(pk, data, tmp_path, optim):
    """ntk scales in the backward pass, and a recorded cosine schedule."""
    run, tr, got, want, losses = train_both(pk, data, tmp_path, "softmax", optim,
                                            extra=["--schedule", "cosine", "--lr-min", "0.001"], ntk=(1.5, 0.2))
    lr = float(OPTIMS[optim][0][OPTIMS[optim][0].index("--lr") + 1])
    t = np.arange(STEPS)
    want_lr = 0.001 + 0.5 * (lr - 0.001) * (1 + np.cos(np.pi * t / STEPS))
    assert np.max(np.abs(tr["lr"] - want_lr)) < 1e-15
    check_agreement(run, tr, got, want, losses)


# ------------------------------------------- 3. replay between checkpoints


@pytest.mark.parametrize("optim", ["sgd", "momentum", "adam-batch"])
def test_keep_replay_is_exact(pk, data, tmp_path, optim):
    args, _ = OPTIMS[optim]
    spec = data["spec"]["softmax"]
    common = ["train", "--data", spec, "--model", "mlp:16,16:tanh", "--loss", "softmax", *args,
              "--steps", "23", "--seed", "5", "--quiet"]
    pk(*common, "--keep", "1", "--out", tmp_path / "k1")
    pk(*common, "--keep", "5", "--out", tmp_path / "k5")
    assert ckpt_files(tmp_path / "k5") == [f"step-{s:08d}.pkw" for s in (0, 5, 10, 15, 20, 23)]
    assert len(ckpt_files(tmp_path / "k1")) == 24
    for step in ("13", "22"):
        out = {}
        for k in ("k1", "k5"):
            out[k] = tmp_path / f"{k}-{step}.npy"
            pk("predict", tmp_path / k, "--data", spec, "--step", step, "--out", out[k])
            pk("weights", tmp_path / k, "--step", step, "--out", tmp_path / f"{k}-w{step}")
        assert np.array_equal(np.load(out["k1"]), np.load(out["k5"])), f"predictions at step {step} differ"
        for (a, b), (c, d) in zip(load_weights(tmp_path / f"k1-w{step}"), load_weights(tmp_path / f"k5-w{step}")):
            assert np.array_equal(a, c) and np.array_equal(b, d), f"weights at step {step} differ"
    # step 13 is not step 10 or 15: the replay did something
    assert not np.array_equal(np.load(tmp_path / "k1-13.npy"), np.load(tmp_path / "k1-22.npy"))


# ---------------------------------------------------------- 4. determinism


def tree(d):
    d = pathlib.Path(d)
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("optim", ["sgd", "adam-batch"])
def test_same_config_same_bytes(pk, data, tmp_path, optim):
    """Two identical trainings leave byte-identical run directories, run.json
    included (it holds nothing time- or place-dependent for the same data)."""
    common = ["train", "--data", data["spec"]["mse"], "--model", "mlp:16,16:tanh", "--loss", "mse",
              *OPTIMS[optim][0], "--steps", "20", "--keep", "3", "--seed", "11", "--quiet"]
    pk(*common, "--out", tmp_path / "a")
    pk(*common, "--out", tmp_path / "b")
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert "run.json" in a and "trajectory.bin" in a and "steps.csv" in a
    assert sorted(a) == sorted(b)
    differ = [name for name in a if a[name] != b[name]]
    assert not differ, f"files differ between identical runs: {differ}"
    # a different seed does change the path (the comparison above can fail)
    pk(*common[:-3], "--seed", "12", "--quiet", "--out", tmp_path / "c")
    assert tree(tmp_path / "c")["trajectory.bin"] != a["trajectory.bin"]


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_threads_do_not_change_results(pk, tmp_path):
    """784-256-256-10: large enough for OpenBLAS to thread its dgemm calls.
    pk_threads_set (include/pathkernel.h) promises that results never depend
    on the thread count."""
    common = ["train", "--data", "fashion-mnist:train", "--first", "512", "--standardize",
              "--model", "mlp:256,256:tanh", "--loss", "softmax", "--optim", "sgd", "--batch", "256",
              "--lr", "0.1", "--steps", "5", "--seed", "1", "--quiet"]
    runs = {}
    for n in ("1", "2"):
        runs[n] = tmp_path / f"t{n}"
        pk(*common, "--threads", n, "--out", runs[n])
    final = "weights/step-00000005.pkw"
    a, b = tree(runs["1"]), tree(runs["2"])
    differ = sorted(name for name in a if a[name] != b.get(name))
    same_final = (runs["1"] / final).read_bytes() == (runs["2"] / final).read_bytes()
    assert same_final, \
        f"--threads 1 and --threads 2 give different final weights (files that differ: {differ})"
    assert not differ, f"--threads 1 and --threads 2 runs differ in {differ}"
