"""pathkernel.torch (issue 17): PyTorch training loops recorded as pathkernel
runs, against pathkernel's own training and against PyTorch itself.

For an MLP and LeNet-5 on Fashion-MNIST, each with SGD, SGD with momentum
and weight decay, Adam and AdamW under torch's StepLR: PyTorch (float64)
trains from the weights pathkernel.train starts from (from_torch) on the
batches pathkernel drew, while a Recorder writes the run. Then
- pathkernel's own training (from_torch, then pathkernel.train) reproduces
  PyTorch's weights after 25 steps to 1e-10 (relative);
- `verify --quad gl4` on the recorded run is within 1e-9 and the recorded
  steps follow from the optimiser to 1e-12;
- the top-5 proponents and opponents of the recorded run equal those of
  pathkernel's run;
- to_torch(run) reproduces `pathkernel predict` to 1e-12.
A float32 loop's residual is reported; unsupported modules and optimisers
are refused by name; a skipped rec.step() and a clipped gradient are caught
with their step number; the README's script runs and prints its output.

Run:  /usr/bin/python3 -m pytest -q tests/python/test_pytorch_recorder.py
"""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import BUILD_DIR, SOURCE_DIR
from pkutil import pk, pk_run, rel_err, save_data

if os.environ.get("PK_SANITIZE") == "1":
    pytest.skip("an ASan-instrumented library cannot be loaded into an uninstrumented Python; "
                "tests/test_record.c runs the recorded replay in the sanitizer build", allow_module_level=True)
torch = pytest.importorskip("torch", reason="needs torch: run with Debian's /usr/bin/python3")
if not pathlib.Path("/usr/share/datasets/fashion-mnist").is_dir():
    pytest.skip("needs Debian's dataset-fashion-mnist", allow_module_level=True)

os.environ["PATHKERNEL_LIB"] = str((BUILD_DIR / "libpathkernel.so").resolve())
sys.path.insert(0, str(SOURCE_DIR / "python"))
import pathkernel as pkg  # noqa: E402
from pathkernel.torch import Recorder, from_torch, to_torch  # noqa: E402

nn, F = torch.nn, torch.nn.functional
torch.set_num_threads(1)
pkg.set_threads(1)   # small products: on a shared 2-core machine a second thread only waits
DT = torch.float64
STEPS = 25


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    """256 training and 4 query images of Fashion-MNIST (pixels / 255)."""
    d = tmp_path_factory.mktemp("fmnist")
    tr = pkg.load_data("fashion-mnist:train", first=256)
    te = pkg.load_data("fashion-mnist:test", first=4)
    return {"dir": d, "X": tr.x, "y": tr.y.astype(np.int64), "Q": te.x,
            "qspec": save_data(d, "q", te.x.reshape(-1, 1, 28, 28), te.y.astype(np.int64))}


def make_net(kind, dtype=DT, seed=0):
    torch.manual_seed(seed)
    if kind == "mlp":
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.Tanh(), nn.Linear(32, 10))
    else:  # the layers of pathkernel's preset lenet5
        net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(),
                            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84),
                            nn.Tanh(), nn.Linear(84, 10))
    return net.to(dtype)


# name: (torch optimiser, pathkernel.train arguments)
OPTIMS = {
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.02), dict(optim="sgd", lr=0.02)),
    "momentum_wd": (lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, weight_decay=5e-3),
                    dict(optim="momentum", lr=0.02, momentum=0.9, weight_decay=5e-3)),
    "adam": (lambda p: torch.optim.Adam(p, lr=5e-4), dict(optim="adam", lr=5e-4)),
    "adamw": (lambda p: torch.optim.AdamW(p, lr=5e-4, weight_decay=0.05), dict(optim="adamw", lr=5e-4, weight_decay=0.05)),
}
BATCH = {"mlp": 32, "lenet5": 16}
SCHED = dict(schedule="step", step_every=10, gamma=0.5)   # torch.optim.lr_scheduler.StepLR(opt, 10, 0.5)


def images(X, kind):
    return X.reshape(-1, 1, 28, 28) if kind == "lenet5" else X


def verify(run, qspec):
    """`pathkernel verify --quad gl4 --tol 1e-9`: (max_rel_err, step residual, its step)."""
    out = pk("verify", run, "--query", qspec, "--quad", "gl4", "--tol", "1e-9", "--threads", "1")
    err = float(re.search(r"max_rel_err (\S+)", out).group(1))
    m = re.search(r"reproduces every recorded step to (\S+) of the step \(largest at step (\d+)\)", out)
    return err, (float(m.group(1)), int(m.group(2))) if m else None


@pytest.mark.parametrize("optim", list(OPTIMS))
@pytest.mark.parametrize("kind", ["mlp", "lenet5"])
def test_recorded_loop_against_pathkernel_and_torch(fmnist, tmp_path, kind, optim):
    make_opt, args = OPTIMS[optim]
    X, y, Q = images(fmnist["X"], kind), fmnist["y"], images(fmnist["Q"], kind)
    # pathkernel's training from the PyTorch model's initial weights
    net = make_net(kind)
    spec, init = from_torch(net, input_shape=(1, 28, 28))
    assert spec == ("mlp:32:tanh" if kind == "mlp" else
                    "in:1,28,28;conv:6,5,pad=2;tanh;avgpool:2;conv:16,5;tanh;avgpool:2;flatten;dense:120;tanh;"
                    "dense:84;tanh;dense")
    pk_run_ = pkg.train(X, y, model=spec, init=init, loss="softmax", batch=BATCH[kind], steps=STEPS, seed=7,
                        out=tmp_path / "pk", **args, **SCHED)
    # the same training in PyTorch, on pathkernel's batches, recorded
    opt = make_opt(net.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    rec = Recorder(net, opt, X, y, loss="softmax", out=tmp_path / "rec")
    for idx in pk_run_.batches():
        b = torch.from_numpy(idx)
        opt.zero_grad()
        F.cross_entropy(net(Xt[b]), yt[b]).backward()
        opt.step()
        rec.step(b)
        sched.step()
    run = rec.close()
    assert run.recorded.startswith("PyTorch ") and run.recorded.endswith(" float64")
    assert np.array_equal(run.lrs(), pk_run_.lrs()) and run.lrs()[-1] == args["lr"] / 4

    # from_torch + pathkernel.train reproduce PyTorch's own training
    got = np.concatenate([np.concatenate([W.ravel(), b]) for W, b in pk_run_.layers()])
    want = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy()
    err_train = rel_err(got, want)
    assert err_train < 1e-10, f"pathkernel.train vs PyTorch after {STEPS} steps: {err_train:.3g}"

    # the recorded run is exactly a kernel machine
    err, (step_rel, at) = verify(tmp_path / "rec", fmnist["qspec"])
    assert err < 1e-9 and step_rel < 1e-12 and 1 <= at <= STEPS, (err, step_rel, at)

    # the same proponents and opponents as pathkernel's own run
    for a, b in zip(run.attribute(Q, top=5), pk_run_.attribute(Q, top=5)):
        assert a.cls == b.cls
        assert a.proponents.tolist() == b.proponents.tolist(), (a, b)
        assert a.opponents.tolist() == b.opponents.tolist(), (a, b)
        assert rel_err(a.proponent_contrib, b.proponent_contrib) < 1e-8

    # to_torch reproduces `pathkernel predict`, at the end and at the start
    for step in ("final", "0"):
        pk("predict", tmp_path / "rec", "--data", fmnist["qspec"], "--step", step, "--out", tmp_path / "p.npy",
           "--threads", "1")
        with torch.no_grad():
            mine = to_torch(run, None if step == "final" else 0)(torch.from_numpy(Q)).numpy()
        e = rel_err(mine, np.load(tmp_path / "p.npy"))
        assert e < 1e-12, f"to_torch vs predict at step {step}: {e:.3g}"
    print(f"\n{kind} {optim}: train vs torch {err_train:.2e}, verify gl4 {err:.2e}, step residual {step_rel:.2e} "
          f"(step {at}), to_torch vs predict {e:.2e}")


def record_loop(tmp_path, dtype=DT, n=256, steps=12, clip_at=None, skip_at=None, X=None, y=None, name="rec",
                dropout=0.0):
    """An MLP trained by SGD with momentum on random data, recorded (with dropout on the inputs in
    training mode when asked)."""
    g = torch.Generator().manual_seed(3)
    if X is None:
        X = torch.randn(n, 20, generator=g, dtype=DT)
        y = torch.randint(0, 4, (n,), generator=g)
    net = nn.Sequential(nn.Linear(X.shape[1], 24), nn.Tanh(), nn.Linear(24, int(y.max()) + 1)).to(dtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    rec = Recorder(net, opt, X, y, loss="softmax", out=tmp_path / name)
    Xd = X.to(dtype)
    for t in range(1, steps + 1):
        b = torch.randperm(X.shape[0], generator=g)[:32]
        opt.zero_grad()
        F.cross_entropy(net(F.dropout(Xd[b], dropout) if dropout else Xd[b]), y[b]).backward()
        if t == clip_at:
            nn.utils.clip_grad_norm_(net.parameters(), 0.5 * float(torch.cat([p.grad.reshape(-1) for p in
                                                                                net.parameters()]).norm()))
        opt.step()
        if t != skip_at:
            rec.step(b)
    return rec


def test_float32_loop_residual_is_reported(tmp_path, fmnist):
    """float32 weights are recorded as float64 copies; what their rounding
    leaves is in verify's residual and in the step residual."""
    X, y = torch.from_numpy(fmnist["X"]).float(), torch.from_numpy(fmnist["y"])
    rec = record_loop(tmp_path, dtype=torch.float32, X=X, y=y, steps=STEPS)
    run = rec.close()
    assert run.recorded.endswith(" float32")
    out = pk_run("verify", tmp_path / "rec", "--query", fmnist["qspec"].replace("q_x", "q_x"), "--quad", "gl4",
                 "--tol", "1e-9", expect=None)
    err = float(re.search(r"max_rel_err (\S+)", out.stdout).group(1))
    step_rel, at = (float(v) for v in re.search(r"to (\S+) of the step \(largest at step (\d+)\)", out.stdout).groups())
    # float32 rounding: far above float64's, far below a wrong step
    assert 1e-9 < err < 1e-3 and 1e-8 < step_rel < 1e-1, out.stdout
    assert out.returncode == 1 and "FAILED" in out.stdout   # above 1e-9: reported, not hidden
    e = run.explain(fmnist["Q"], quad="gl4")
    assert e.max_rel_err == pytest.approx(err, rel=1e-2)
    print(f"\nfloat32 loop ({STEPS} steps of momentum sgd, 784-24-10 tanh): verify gl4 max_rel_err {err:.3g}, "
          f"step residual {step_rel:.3g} at step {int(at)}")


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class CustomAct(nn.Module):
    def forward(self, x):
        return _Square.apply(x)


REFUSED = {
    "BatchNorm1d": lambda: (nn.Sequential(nn.Linear(20, 8), nn.BatchNorm1d(8), nn.Linear(8, 4)), None),
    "Dropout": lambda: (nn.Sequential(nn.Linear(20, 8), nn.Dropout(0.5), nn.Linear(8, 4)), None),
    "LSTM": lambda: (nn.Sequential(nn.LSTM(20, 8), nn.Linear(8, 4)), None),
    "CustomAct": lambda: (nn.Sequential(nn.Linear(20, 8), CustomAct(), nn.Linear(8, 4)), None),
    "float16": lambda: (nn.Sequential(nn.Linear(20, 8), nn.Tanh(), nn.Linear(8, 4)).half(), None),
    "RMSprop": lambda: (nn.Sequential(nn.Linear(20, 8), nn.Tanh(), nn.Linear(8, 4)), torch.optim.RMSprop),
    "nesterov": lambda: (nn.Sequential(nn.Linear(20, 8), nn.Tanh(), nn.Linear(8, 4)),
                         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_is_refused_by_name(tmp_path, case):
    net, make_opt = REFUSED[case]()
    net = net if case == "float16" else net.double()
    opt = (make_opt or (lambda p: torch.optim.SGD(p, lr=0.1)))(net.parameters()) if case != "RMSprop" else \
        torch.optim.RMSprop(net.parameters(), lr=0.01)
    X, y = torch.randn(16, 20, dtype=DT), torch.randint(0, 4, (16,))
    with pytest.raises(ValueError) as e:
        Recorder(net, opt, X, y, out=tmp_path / "rec")
    msg = str(e.value)
    assert case in msg, msg
    assert ("SGD" in msg and "Adam" in msg) if case in ("RMSprop", "nesterov") else \
        ("float64" in msg if case == "float16" else "nn.Linear, nn.Conv2d" in msg), msg
    assert not (tmp_path / "rec").exists(), "a refused recorder leaves nothing behind"


def test_skipped_rec_step_is_caught(tmp_path):
    with pytest.raises(RuntimeError, match=r"called 2 times since rec.step\(\) recorded step 4: step 5 .*not recorded"):
        record_loop(tmp_path, skip_at=5)


def test_clipped_gradient_is_caught_with_its_step(tmp_path):
    run = record_loop(tmp_path, clip_at=7).close()
    with pytest.raises(pkg.PathkernelError, match=r"recorded step 7 does not follow from the recorded optimiser"):
        run.explain(np.zeros((2, 20)))
    X = np.random.default_rng(0).normal(size=(3, 20))
    q = save_data(tmp_path, "q", X, np.zeros(3, dtype=np.int64))
    for cmd in ("verify", "attribute"):
        p = pk_run(cmd, tmp_path / "rec", "--query", q, expect=1)
        assert "recorded step 7 does not follow" in p.stderr, p.stderr
    p = pk_run("selfinfluence", tmp_path / "rec", "--out", tmp_path / "si.csv", expect=None)
    assert p.returncode in (1, 2) and ("recorded step 7" in p.stderr or "not yet supported" in p.stderr), p.stderr
    # a loop without the clip records a run whose steps all follow
    ok = record_loop(tmp_path, name="ok").close()
    ok.explain(X)
    assert ok.step_residual()[0] < 1e-12


def test_dropout_in_the_loop_is_caught(tmp_path):
    """Dropout that PyTorch applies in training mode (here to the loop's inputs) makes the steps
    another network's: the first is named."""
    run = record_loop(tmp_path, dropout=0.2, steps=3).close()
    with pytest.raises(pkg.PathkernelError, match=r"recorded step 1 does not follow"):
        run.attribute(np.zeros((1, 20)))


def test_recorded_sgd_runs_every_command(tmp_path):
    """selfinfluence, kernel and report on a recorded sgd run, as on a trained one."""
    g = torch.Generator().manual_seed(5)
    X, y = torch.randn(64, 6, generator=g, dtype=DT), torch.randint(0, 3, (64,), generator=g)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    with Recorder(net, opt, X, y, out=tmp_path / "rec") as rec:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)   # made after the recorder
        for _ in range(10):
            b = torch.randperm(64, generator=g)[:16]
            opt.zero_grad()
            F.cross_entropy(net(X[b]), y[b]).backward()
            opt.step()
            sched.step()                        # before rec.step: the lr was read at optimizer.step()
            rec.step(b)
    run = rec.run
    assert run.lrs().tolist() == [0.2 * 0.5 ** (t // 3) for t in range(10)]
    si = run.self_influence(quad="gl4")
    assert si.shape == (64,) and np.all(np.isfinite(si))
    pkg.set_threads(2)          # bit for bit whatever the thread count, as for trained runs
    try:
        e2 = run.explain(X[:6].numpy(), quad="gl2")
    finally:
        pkg.set_threads(1)
    e1 = run.explain(X[:6].numpy(), quad="gl2")
    assert np.array_equal(e1.contrib, e2.contrib) and np.array_equal(e1.kernel, e2.kernel)
    q = save_data(tmp_path, "q", X[:5].numpy(), y[:5].numpy())
    pk("kernel", tmp_path / "rec", "--at", "final", "--x", q, "--out", tmp_path / "k.npy")
    pk("selfinfluence", tmp_path / "rec", "--out", tmp_path / "si.csv")
    cli = np.loadtxt(tmp_path / "si.csv", delimiter=",", skiprows=1)[:, 2]
    assert rel_err(cli, run.self_influence()) < 1e-15
    pk("report", tmp_path / "rec", "--query", q, "--first", "5", "--out", tmp_path / "r.html", "--threads", "1")
    assert "steps taken by PyTorch" in (tmp_path / "r.html").read_text()
    info = pk("info", tmp_path / "rec")
    assert "recorded  steps taken by PyTorch" in info, info
    p = pk_run("train", "--resume", tmp_path / "rec", expect=0)  # a complete run: nothing to do
    assert p.returncode == 0


@pytest.mark.parametrize("loss", ["softmax", "logistic", "mse"])
def test_each_loss(tmp_path, loss):
    """The loop's loss is pathkernel's: cross-entropy, logistic on output 0, half squared error."""
    g = torch.Generator().manual_seed(8)
    X = torch.randn(48, 5, generator=g, dtype=DT)
    y = {"softmax": torch.randint(0, 3, (48,), generator=g), "logistic": (X[:, 0] > 0).to(DT),
         "mse": torch.stack([X[:, 1], X[:, 2] * X[:, 3]], 1)}[loss]
    out = {"softmax": 3, "logistic": 1, "mse": 2}[loss]
    net = nn.Sequential(nn.Linear(5, 8), nn.Sigmoid(), nn.Linear(8, out)).double()
    crit = {"softmax": lambda f, t: F.cross_entropy(f, t),
            "logistic": lambda f, t: F.binary_cross_entropy_with_logits(f[:, 0], t),
            "mse": lambda f, t: 0.5 * ((f - t) ** 2).sum(1).mean()}[loss]
    opt = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=1e-3)   # L2 decay in Adam's gradient
    with Recorder(net, opt, X, y, loss=loss, out=tmp_path / "rec") as rec:
        for t in range(12):
            b = torch.arange(48) if t % 4 == 0 else torch.randperm(48, generator=g)[:12]   # full batches too
            opt.zero_grad()
            crit(net(X[b]), y[b]).backward()
            opt.step()
            rec.step(b)
    e = rec.run.explain(X[:4].numpy(), quad="gl4")
    assert e.max_rel_err < 1e-9 and rec.run.step_residual()[0] < 1e-12, (e.max_rel_err, rec.run.step_residual())


def test_to_torch_and_from_torch_other_layers(tmp_path):
    """Max pooling, stride, padding and relu: to_torch of a pathkernel run reproduces predict, and
    from_torch of that module gives the run's spec and weights back."""
    spec = "conv:6,3,stride=2,pad=2;relu;maxpool:2;conv:8,3,pad=1;gelu;avgpool:2;flatten;dense:16;softplus;dense"
    r = np.random.default_rng(4)
    X, y = r.uniform(0, 1, size=(24, 3, 16, 16)), np.arange(24) % 4
    run = pkg.train(X, y, model=spec, optim="sgd", lr=0.1, batch=8, steps=6, seed=2, out=tmp_path / "run")
    Q = r.uniform(0, 1, size=(5, 3, 16, 16))
    for step in (None, 3):
        with torch.no_grad():
            got = to_torch(run, step)(torch.from_numpy(Q)).numpy()
        assert rel_err(got, run.predict(Q, step=step)) < 1e-12
    spec2, init = from_torch(to_torch(run), input_shape=(3, 16, 16))
    assert spec2 == run.model == "in:3,16,16;" + spec
    for (W, b), (W2, b2) in zip(init, run.layers()):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
    res = pkg.train(X.reshape(24, -1), y, model="res(dense:8;tanh;dense:768);dense", steps=1, out=tmp_path / "res")
    with pytest.raises(ValueError, match="residual blocks have no nn.Sequential form"):
        to_torch(res)


def test_readme_script_runs(tmp_path):
    """The README's "Bring your PyTorch model" script is examples/pytorch_fmnist.py; it runs and
    prints what the README shows."""
    script = SOURCE_DIR / "examples" / "pytorch_fmnist.py"
    body = (SOURCE_DIR / "README.md").read_text().split("\n## Bring your PyTorch model\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    want = re.search(r"```text\n(.*?)```", body, re.S).group(1)
    assert code == script.read_text(), "README.md's script differs from examples/pytorch_fmnist.py"
    # one thread (torch's and pathkernel's): the printed digits do not depend on it, the time on a
    # shared machine does
    env = dict(os.environ, PYTHONPATH=str(SOURCE_DIR / "python"), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout == want


def test_the_package_does_not_import_torch():
    env = dict(os.environ, PYTHONPATH=str(SOURCE_DIR / "python"))
    p = subprocess.run([sys.executable, "-c", "import sys, pathkernel; print('torch' in sys.modules)"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0 and p.stdout.strip() == "False", (p.stdout, p.stderr)
