"""Leave-one-out diagnostics (issue 22; MATH.md section 7, "Leave-one-out"):
`pathkernel loo` against an explicit refit without each example in numpy
(200 examples, to 1e-10), in trace and full mode, on the paper's path
kernel and the tangent kernels; the ridge chosen over the grid is the one
numpy's leave-one-out error chooses; the kernel it used is the `kernel`
command's; refusals name what is wrong."""
import csv
import gzip
import json

import numpy as np
import pytest

from conftest import SOURCE_DIR
from pkutil import pk, pk_run

DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"
N = 200


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("loo")
    pk("train", "--data", DIGITS, "--first", N, "--standardize", "--model", "mlp:16:tanh", "--loss", "softmax",
       "--optim", "sgd", "--batch", "32", "--lr", "0.1", "--steps", "40", "--seed", "2", "--out", d / "run",
       "--quiet")
    with gzip.open(DIGITS, "rt") as f:
        a = np.loadtxt(f, delimiter=",", max_rows=N)
    np.save(d / "x.npy", a[:, :-1])
    np.save(d / "y.npy", a[:, -1])
    return d


def refit_residuals(K, Y, lam, only=None):
    """y_i - yhat_{-i} by refitting kernel ridge regression without example i:
    K (n, n) with Y (n, C) (trace), or K (n, n, C, C) on vec Y (full; for
    the examples `only`, NaN elsewhere: each refit is a (n-1) C system)."""
    n = Y.shape[0]
    if K.ndim == 4:
        c = K.shape[2]
        M = K.transpose(0, 2, 1, 3).reshape(n * c, n * c)
        out = np.full_like(Y, np.nan)
        for i in range(n) if only is None else only:
            keep = np.array([j for j in range(n) if j != i])
            rows = (keep[:, None] * c + np.arange(c)).ravel()
            a = np.linalg.solve(M[np.ix_(rows, rows)] + lam * np.eye(len(rows)), Y[keep].ravel())
            out[i] = Y[i] - M[np.ix_(i * c + np.arange(c), rows)] @ a
        return out
    out = np.empty_like(Y)
    for i in range(n):
        keep = np.arange(n) != i
        a = np.linalg.solve(K[np.ix_(keep, keep)] + lam * np.eye(n - 1), Y[keep])
        out[i] = Y[i] - K[i, keep] @ a
    return out


@pytest.mark.parametrize("kernel,mode", [("tangent-final", "trace"), ("path", "trace"), ("tangent-init", "full")])
def test_loo_equals_refit(run, kernel, mode, tmp_path):
    o = tmp_path / "o"
    extra = ["--ridge", "0.7"] if mode == "full" else []
    pk("loo", run / "run", "--kernel", kernel, "--mode", mode, "--out", o, "--save-kernel", "--threads", "2", *extra)
    K = np.load(o / "kernel.npy")
    info = json.loads((o / "loo.json").read_text())
    rows = list(csv.DictReader(open(o / "loo.csv")))
    y = np.array([float(r["label"]) for r in rows]).astype(int)
    C = 10
    Y = np.eye(C)[y]
    lam = info["ridge"]
    assert info["kernel"] == kernel and info["mode"] == mode and info["n"] == N
    # the kernel the machine used is the `kernel` command's
    at = {"tangent-final": "final", "tangent-init": "init", "path": "path"}[kernel]
    pk("kernel", run / "run", "--x", f"npy:{run / 'x.npy'},{run / 'y.npy'}", "--at", at, "--mode", mode,
       "--out", tmp_path / "K.npy")
    Kc = np.load(tmp_path / "K.npy")
    assert Kc.shape == K.shape
    assert np.abs(Kc - K).max() <= 1e-12 * np.abs(K).max()
    # dual coefficients and residuals against numpy
    if mode == "full":
        M = K.transpose(0, 2, 1, 3).reshape(N * C, N * C)
        alpha = np.linalg.solve(M + lam * np.eye(N * C), Y.ravel()).reshape(N, C)
    else:
        alpha = np.linalg.solve(K + lam * np.eye(N), Y)
    assert np.abs(np.load(o / "alpha.npy") - alpha).max() <= 1e-10 * np.abs(alpha).max()
    got = np.load(o / "resid.npy")
    only = np.random.default_rng(0).choice(N, 12, replace=False) if mode == "full" else None
    want = refit_residuals(K, Y, lam, only)
    err = np.nanmax(np.abs(got - want))
    print(f"{kernel} {mode}: max |resid - refit| = {err:.3g}")
    assert err <= 1e-10
    # the score is the own class's residual; the prediction y - r's largest output; the accuracy theirs
    np.testing.assert_array_equal([float(r["score"]) for r in rows], got[np.arange(N), y])
    pred = np.argmax(Y - got, axis=1)
    assert [float(r["loo_pred"]) for r in rows] == list(pred.astype(float))
    assert info["loo_accuracy"] == pytest.approx(np.mean(pred == y), abs=1e-15)
    if mode == "trace":  # the grid: numpy's leave-one-out error chooses the same ridge
        errs = [np.mean((refit_residuals(K, Y, g["ridge"]) ** 2).sum(1)) for g in info["grid"]]
        np.testing.assert_allclose([g["mean_sq_resid"] for g in info["grid"]], errs, rtol=1e-9)
        assert info["ridge"] == info["grid"][int(np.argmin(errs))]["ridge"]
        assert info["ridge_chosen"] is True


def test_loo_refusals(run, tmp_path):
    r = pk_run("loo", run / "run", "--kernel", "path-batch", "--out", tmp_path / "x", expect=2)
    assert "not positive semi-definite" in r.stderr or "neither" in r.stderr
    r = pk_run("loo", run / "run", "--mode", "full", "--mem", "1", "--out", tmp_path / "x", expect=2)
    assert "2000 x 2000" in r.stderr and "--mem" in r.stderr and "28.8 GB" in r.stderr, r.stderr
    r = pk_run("loo", run / "run", "--ridge-grid", "0.1,-1", "--out", tmp_path / "x", expect=2)
    assert "'-1'" in r.stderr
    r = pk_run("loo", run / "run", "--ridge", "1", "--ridge-grid", "0.1", "--out", tmp_path / "x", expect=2)
    assert not (tmp_path / "x").exists()


def test_report_draws_largest_residuals(run, tmp_path):
    """report's leave-one-out section: the 12 training examples with the
    largest own-class residuals, in order, as images with their given and
    predicted labels, the same as `loo` writes."""
    import re
    pk("loo", run / "run", "--out", tmp_path / "o", "--threads", "2")
    rows = list(csv.DictReader(open(tmp_path / "o" / "loo.csv")))
    score = np.array([float(r["score"]) for r in rows])
    order = np.lexsort((np.arange(N), -score))[:12]
    pk("report", run / "run", "--out", tmp_path / "r.html", "--first", "2", "--show", "1", "--heat", "10",
       "--movement", "2", "--checkpoints", "1", "--threads", "2")
    html = (tmp_path / "r.html").read_text()
    sec = re.search(r'<section id="loo">(.*?)</section>', html, re.S).group(1)
    assert re.search(r"<h2>\([a-z]\) The training labels the other examples do not support", sec)
    got = [int(i) for i in re.findall(r'class="loo-example" data-index="(\d+)"', sec)]
    assert got == list(order)
    assert sec.count('data-kind="train"') == 12  # drawn as images (8x8 digits)
    for i in got[:3]:
        r = rows[i]
        assert f"given {r['label']}" in sec.replace(".0<", "<") or f"given {float(r['label']):g}" in sec
        assert f"predicted {float(r['loo_pred']):g}" in sec
    pk("report", run / "run", "--out", tmp_path / "r2.html", "--first", "2", "--show", "0", "--heat", "10",
       "--movement", "2", "--checkpoints", "1", "--loo", "none")
    assert 'id="loo"' not in (tmp_path / "r2.html").read_text()
    r = pk_run("report", run / "run", "--out", tmp_path / "r3.html", "--loo", "path-batch", expect=2)
    assert "positive semi-definite" in r.stderr


def test_python_loo_equals_cli(run, tmp_path):
    """Run.loo is the CLI's computation: the same bits."""
    import os
    import sys
    if os.environ.get("PK_SANITIZE") == "1":
        pytest.skip("an ASan-instrumented library cannot be loaded into an uninstrumented Python")
    from conftest import BUILD_DIR
    os.environ["PATHKERNEL_LIB"] = str((BUILD_DIR / "libpathkernel.so").resolve())
    sys.path.insert(0, str(SOURCE_DIR / "python"))
    import pathkernel as pkg
    pk("loo", run / "run", "--out", tmp_path / "o", "--ridge-grid", "0.01,0.1,1")
    r = pkg.open_run(run / "run")
    got = r.loo(ridge_grid=[0.01, 0.1, 1], keep_kernel=True)
    info = json.loads((tmp_path / "o" / "loo.json").read_text())
    assert got.ridge == info["ridge"] and list(got.grid) == [0.01, 0.1, 1]
    assert np.array_equal(got.alpha, np.load(tmp_path / "o" / "alpha.npy"))
    assert np.array_equal(got.resid, np.load(tmp_path / "o" / "resid.npy"))
    assert got.kernel.shape == (N, N) and got.accuracy == info["loo_accuracy"]
    with pytest.raises(ValueError, match="positive semi-definite"):
        r.loo(kernel="path-batch")
    with pytest.raises(ValueError, match="exclude"):
        r.loo(ridge=1.0, ridge_grid=[1.0])


def test_loo_same_bits_whatever_the_threads(run, tmp_path):
    """The kernel, the factorisation and the C x C blocks give the same bits on 1 and 2 threads."""
    for t in (1, 2):
        pk("loo", run / "run", "--out", tmp_path / f"t{t}", "--threads", t, "--top", "0")
        pk("loo", run / "run", "--out", tmp_path / f"f{t}", "--threads", t, "--mode", "full", "--ridge", "0.5",
           "--kernel", "tangent-init", "--top", "0")
    for d in ("t", "f"):
        for f in ("alpha.npy", "resid.npy", "loo.csv"):
            assert (tmp_path / f"{d}1" / f).read_bytes() == (tmp_path / f"{d}2" / f).read_bytes(), (d, f)
