"""pathkernel lds: the linear datamodeling score of each attribution method
(docs/ATTRIBUTION.md, "LDS"), checked against scipy's spearmanr on the same
subsets and retrained targets, the retraining against `pathkernel train` on
the subset, the gradient baselines against torch, and a stopped job
(SIGINT, SIGKILL) against an uninterrupted one."""
import csv
import gzip
import json
import os
import pathlib
import signal
import struct
import subprocess
import time
import zlib

import numpy as np
import pytest

from conftest import SOURCE_DIR
from pkutil import load_weights, pk, pk_exe, pk_run, rel_err, save_data

scipy_stats = pytest.importorskip("scipy.stats")
DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"


def digits(n):
    with gzip.open(DIGITS, "rt") as f:
        A = np.loadtxt(f, delimiter=",", max_rows=n)
    return A[:, :-1] / 16.0, A[:, -1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("lds-data")
    X, y = digits(130)
    return {"dir": d, "train": save_data(d, "train", X[:90], y[:90]), "test": save_data(d, "test", X[90:], y[90:]),
            "X": X, "y": y}


CONFIG = ["--model", "mlp:8:tanh", "--loss", "softmax", "--optim", "sgd", "--lr", "0.2", "--batch", "16",
          "--epochs", "3", "--seed", "4"]


def lds(data, out, *extra):
    return pk("lds", "--data", data["train"], "--test", data["test"], *CONFIG, "--out", out, "--quiet", *extra)


def read_piece(path):
    buf = pathlib.Path(path).read_bytes()
    assert buf[:5] == b"PKLDS"
    (n,) = struct.unpack_from("<Q", buf, 16)
    assert len(buf) == 24 + 8 * n + 4
    (crc,) = struct.unpack_from("<I", buf, len(buf) - 4)
    assert crc == zlib.crc32(buf[:-4])
    return np.frombuffer(buf, "<f8", n, 24).copy()


def table(out):
    with open(out / "lds.csv") as f:
        return {r["method"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def job(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lds") / "job"
    lds(data, out, "--subsets", "15", "--ensembles", "1,2", "--quad", "gl4")
    return out


def test_lds_equals_scipy_spearmanr(job):
    """Every method's LDS from its kept scores, the subsets and the retrained
    targets, recomputed with scipy.stats.spearmanr: equal to 1e-12."""
    Q, N = 40, 90
    sub = np.load(job / "subsets.npy")
    R = np.load(job / "retrained.npy")
    M = sub.shape[0]
    assert R.shape == (M, Q) and sub.shape == (M, 45)
    sc = job / "scores"
    scores = {"exact:gl4": read_piece(sc / "exact-gl4-seed-4.bin"), "left": read_piece(sc / "left-seed-4.bin"),
              "grad-dot": read_piece(sc / "grad-seed-4.bin"), "grad-cos": read_piece(sc / "grad-cos-seed-4.bin")}
    scores["ensemble:1"] = scores["exact:gl4"]
    scores["ensemble:2"] = (scores["exact:gl4"] + read_piece(sc / "exact-gl4-seed-5.bin")) / 2
    t = table(job)
    assert list(t) == ["exact:gl4", "left", "grad-dot", "grad-cos", "ensemble:1", "ensemble:2"]
    for name, s in scores.items():
        s = s.reshape(Q, N)
        pred = np.stack([s[:, idx].sum(axis=1) for idx in sub])          # (M, Q)
        rho = np.array([scipy_stats.spearmanr(pred[:, q], R[:, q]).correlation for q in range(Q)])
        ok = ~np.isnan(rho)
        mean, se = rho[ok].mean(), rho[ok].std(ddof=1) / np.sqrt(ok.sum())
        assert abs(float(t[name]["lds"]) - mean) <= 1e-12, name
        assert abs(float(t[name]["stderr"]) - se) <= 1e-12, name
        assert int(t[name]["valid"]) == ok.sum()
    j = json.loads((job / "lds.json").read_text())
    assert j["subsets"] == 15 and j["target"] == "loss" and j["steps"] == 3 * 6 and j["subset_steps"] == 3 * 3


def test_exact_scores_are_explain_target_loss(job, data, tmp_path):
    """The exact method's scores are explain --target loss of the kept run."""
    pk("explain", job / "runs" / "seed-4", "--query", data["test"], "--quad", "gl4", "--target", "loss",
       "--out", tmp_path / "e")
    phi = np.load(tmp_path / "e" / "contrib.npy")[:, :, 0]
    assert np.array_equal(read_piece(job / "scores" / "exact-gl4-seed-4.bin").reshape(phi.shape), phi)


def test_retrained_target_is_train_on_the_subset(job, data, tmp_path):
    """Subset 3 retrained by `pathkernel train` on its rows (same seed, its
    epochs' steps): the loss at the test points equals retrained.npy's row."""
    idx = np.load(job / "subsets.npy")[3]
    X, y = data["X"], data["y"]
    spec = save_data(tmp_path, "sub", X[:90][idx], y[:90][idx])
    run = tmp_path / "run"
    pk("train", "--data", spec, *CONFIG[:-4], "--steps", "9", "--seed", "4", "--quiet", "--out", run)
    pk("weights", run, "--out", tmp_path / "w")
    h = X[90:]
    layers = load_weights(tmp_path / "w")
    for i, (W, b) in enumerate(layers):
        h = h @ W.T + b
        h = np.tanh(h) if i + 1 < len(layers) else h
    m = h.max(axis=1)
    loss = m + np.log(np.exp(h - m[:, None]).sum(axis=1)) - h[np.arange(40), y[90:].astype(int)]
    assert rel_err(np.load(job / "retrained.npy")[3], loss) < 1e-12


def test_gradient_scores_against_torch(job, data):
    torch = pytest.importorskip("torch")
    layers = load_weights_of_run(job / "runs" / "seed-4")
    X, y = torch.from_numpy(data["X"]), torch.from_numpy(data["y"].astype(np.int64))
    params = [torch.from_numpy(a).requires_grad_() for W, b in layers for a in (W, b)]

    def out(x):
        h = x
        for i in range(len(layers)):
            h = h @ params[2 * i].T + params[2 * i + 1]
            h = torch.tanh(h) if i + 1 < len(layers) else h
        return h

    def grad(x, yy):
        loss = torch.nn.functional.cross_entropy(out(x[None]), yy[None])
        return torch.cat([g.ravel() for g in torch.autograd.grad(loss, params)]).numpy()

    gq = np.stack([grad(X[90 + q], y[90 + q]) for q in range(40)])
    gi = np.stack([grad(X[i], y[i]) for i in range(90)])
    dot = -gq @ gi.T
    cos = dot / np.outer(np.linalg.norm(gq, axis=1), np.linalg.norm(gi, axis=1))
    assert rel_err(read_piece(job / "scores" / "grad-seed-4.bin").reshape(40, 90), dot) < 1e-12
    assert rel_err(read_piece(job / "scores" / "grad-cos-seed-4.bin").reshape(40, 90), cos) < 1e-12


def load_weights_of_run(run):
    d = pathlib.Path(run).parent / (pathlib.Path(run).name + "-w")
    if not d.exists():
        pk("weights", run, "--out", d)
    return load_weights(d)


def test_more_methods_do_not_retrain(job, data):
    """A second call asking for a larger ensemble reuses the subsets' results
    (their files untouched) and trains only the new run."""
    before = {p.name: p.stat().st_mtime_ns for p in (job / "retrain").iterdir()}
    lds(data, job, "--subsets", "15", "--ensembles", "1,2,3", "--quad", "gl4")
    after = {p.name: p.stat().st_mtime_ns for p in (job / "retrain").iterdir()}
    assert before == after
    assert (job / "runs" / "seed-6").is_dir()
    assert list(table(job))[-1] == "ensemble:3"


def without_seconds(out):
    rows = [r[:-1] for r in csv.reader(open(out / "lds.csv"))]
    j = json.loads((out / "lds.json").read_text())
    j.pop("seconds_retrain")
    for m in j["methods"]:
        m.pop("seconds")
    return rows, j


def stopped_then_continued(data, out, sig):
    """Start the job, stop it with `sig` once a few subsets are kept, then
    run the same command to the end."""
    args = [str(pk_exe()), "lds", "--data", data["train"], "--test", data["test"], *CONFIG, "--out", str(out),
            "--subsets", "60", "--ensembles", "1,2", "--threads", "1"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 60:
        r = out / "retrain"
        if r.is_dir() and len(list(r.glob("subset-*.bin"))) >= 5:
            break
        time.sleep(0.002)
    p.send_signal(sig)
    so, se = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("the job finished before it could be stopped")
    if sig == signal.SIGINT:
        assert p.returncode == 1 and "the same command continues the job" in se, se
    kept = len(list((out / "retrain").glob("subset-*.bin")))
    assert 0 < kept < 60
    assert not (out / "lds.csv").exists()
    subprocess.run(args, check=True, capture_output=True)
    return kept


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_stopped_job_continues_to_the_same_files(data, tmp_path, sig):
    whole = tmp_path / "whole"
    pk("lds", "--data", data["train"], "--test", data["test"], *CONFIG, "--out", whole, "--subsets", "60",
       "--ensembles", "1,2", "--quiet")
    part = tmp_path / "part"
    stopped_then_continued(data, part, sig)
    for f in ("retrained.npy", "predicted.npy", "per_query.npy", "full.npy", "subsets.npy"):
        assert (whole / f).read_bytes() == (part / f).read_bytes(), f
    assert without_seconds(whole) == without_seconds(part)


def test_threads_do_not_change_the_files(data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    lds(data, a, "--subsets", "8", "--ensembles", "none", "--threads", "1")
    lds(data, b, "--subsets", "8", "--ensembles", "none", "--threads", "2")
    for f in ("retrained.npy", "predicted.npy", "per_query.npy"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_bad_input(data, tmp_path):
    base = ["lds", "--data", data["train"], "--test", data["test"], *CONFIG]
    p = pk_run(*base, "--out", tmp_path / "x", "--target", "outputs", expect=2)
    assert "--target outputs" in p.stderr
    p = pk_run(*base, "--out", tmp_path / "x", "--alpha", "1.5", expect=2)
    assert "--alpha 1.5" in p.stderr
    p = pk_run(*base, expect=2)
    assert "--out DIR is required" in p.stderr
    # a directory holding another job's work is refused, and left alone
    lds(data, tmp_path / "j", "--subsets", "4", "--ensembles", "none")
    p = pk_run(*base[:-2], "--seed", "9", "--out", tmp_path / "j", "--subsets", "4", expect=2)
    assert "another LDS job" in p.stderr
    assert (tmp_path / "j" / "lds.csv").exists()
    assert not os.path.exists(tmp_path / "x")


def test_python_package_same_as_cli(job, data, tmp_path):
    """pathkernel.lds on the same arrays gives the CLI's numbers bit for bit,
    and Run.explain/attribute take the same targets."""
    if os.environ.get("PK_SANITIZE") == "1":
        pytest.skip("an ASan-instrumented library cannot be loaded into an uninstrumented Python")
    import sys
    sys.path.insert(0, str(SOURCE_DIR / "python"))
    import pathkernel as pkg
    X, y = data["X"], data["y"]
    r = pkg.lds(X[:90], y[:90].astype(int), X[90:], y[90:].astype(int), tmp_path / "py", model="mlp:8:tanh",
                loss="softmax", optim="sgd", lr=0.2, batch=16, epochs=3, seed=4, subsets=15, ensembles=(1, 2),
                quad="gl4")
    t = table(job)
    assert r.methods == ["exact:gl4", "left", "grad-dot", "grad-cos", "ensemble:1", "ensemble:2"]
    for m in r.methods:
        assert r.lds[m] == float(t[m]["lds"]) and r.stderr[m] == float(t[m]["stderr"])
    assert np.array_equal(r.retrained[:15], np.load(job / "retrained.npy")[:15])
    run = pkg.open_run(job / "runs" / "seed-4")
    e = run.explain(X[90:95], quad="gl4", target="margin", y=y[90:95])
    pk("explain", job / "runs" / "seed-4", "--query", data["test"], "--first", "5", "--quad", "gl4", "--target",
       "margin", "--out", tmp_path / "e")
    assert np.array_equal(e.contrib, np.load(tmp_path / "e" / "contrib.npy")) and e.kernel is None
    a = run.attribute(X[90:95], top=3, target="loss", y=y[90:95])
    pk("attribute", job / "runs" / "seed-4", "--query", data["test"], "--first", "5", "--target", "loss",
       "--top", "3", "--out", tmp_path / "a.json")
    qs = json.loads((tmp_path / "a.json").read_text())["queries"]
    for got, want in zip(a, qs):
        assert got.proponents.tolist() == [p["index"] for p in want["proponents"]]
        assert abs(got.total - want["total"]) <= 1e-14 * abs(want["total"])  # JSON prints 15 digits


def test_report_lds_section(job, tmp_path):
    out = tmp_path / "r.html"
    pk("report", job / "runs" / "seed-4", "--first", "4", "--lds", job, "--show", "2", "--out", out)
    html = out.read_text()
    assert 'id="fig-lds"' in html and 'id="fig-lds-points"' in html
    for m in table(job):
        assert f">{m}</text>" in html
    assert "test point 1: Spearman" in html and "test point 2:" not in html
    p = pk_run("report", job / "runs" / "seed-4", "--lds", tmp_path / "nope", "--out", out, expect=2)
    assert "--lds" in p.stderr
