"""Fixed-kernel machines (MATH.md section 7): kernel ridge regression
against a direct solve, and LIBSVM's precomputed-kernel export run through
Debian's svm-train -t 4 / svm-predict unchanged."""
import shutil
import subprocess

import numpy as np
import pytest

from conftest import BUILD_DIR, SOURCE_DIR

PK = str(BUILD_DIR / "pathkernel")
DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"


def pk(*args, rc=0):
    r = subprocess.run([PK, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == rc, r.stderr
    return r


def test_krr_matches_direct_solve(tmp_path):
    rng = np.random.default_rng(3)
    X, Q = rng.normal(size=(40, 3)), rng.normal(size=(7, 3))
    sq = lambda A, B: ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    K, KQ = np.exp(-sq(X, X) / 2), np.exp(-sq(Q, X) / 2)
    Y = rng.normal(size=(40, 3))
    for name, a in [("K", K), ("KQ", KQ), ("Y", Y)]:
        np.save(tmp_path / f"{name}.npy", a)
    pk("krr", "--kernel", tmp_path / "K.npy", "--targets", tmp_path / "Y.npy", "--ridge", 1e-3,
       "--query-kernel", tmp_path / "KQ.npy", "--out", tmp_path / "out")
    alpha = np.linalg.solve(K + 1e-3 * np.eye(40), Y)
    got = np.load(tmp_path / "out" / "alpha.npy")
    assert np.abs(got - alpha).max() <= 1e-10 * np.abs(alpha).max()
    pred = np.load(tmp_path / "out" / "pred.npy")
    assert np.abs(pred - KQ @ alpha).max() <= 1e-10 * np.abs(KQ @ alpha).max()


def test_krr_not_positive_definite(tmp_path):
    np.save(tmp_path / "K.npy", -np.eye(5))
    np.save(tmp_path / "Y.npy", np.ones(5))
    r = pk("krr", "--kernel", tmp_path / "K.npy", "--targets", tmp_path / "Y.npy", "--out", tmp_path / "o", rc=1)
    assert "not positive definite" in r.stderr and "--ridge" in r.stderr
    assert not (tmp_path / "o" / "alpha.npy").exists()


def parse_precomputed(path):
    labels, rows = [], []
    for i, line in enumerate(path.read_text().splitlines()):
        parts = line.split()
        labels.append(float(parts[0]))
        idx, vals = zip(*(p.split(":") for p in parts[1:]))
        assert idx[0] == "0" and vals[0] == str(i + 1)            # 0:ID, 1-based
        assert list(map(int, idx[1:])) == list(range(1, len(idx)))
        rows.append([float(v) for v in vals[1:]])
    return np.array(labels), np.array(rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("svm")
    pk("train", "--data", DIGITS, "--first", 300, "--standardize", "--model", "mlp:32:relu", "--loss", "softmax",
       "--optim", "sgd", "--batch", 50, "--lr", 0.05, "--steps", 60, "--quiet", "--out", d / "run")
    return d


@pytest.mark.skipif(not shutil.which("svm-train"), reason="Debian's libsvm-tools is not installed")
@pytest.mark.parametrize("kind", ["path", "tangent-init", "tangent-final", "rbf", "ntk", "path-batch"])
def test_libsvm_roundtrip(run, kind):
    out = run / f"svm-{kind}"
    pk("export-libsvm", run / "run", "--kernel", kind, "--query", DIGITS, "--first", 200, "--out", out)
    ytr, Ktr = parse_precomputed(out / "train.svm")
    yq, Kq = parse_precomputed(out / "query.svm")
    assert Ktr.shape == (300, 300) and Kq.shape == (200, 300)
    if kind == "path":  # the paper's path kernel: symmetric bit for bit
        assert np.array_equal(Ktr, Ktr.T)
    elif kind != "path-batch":  # the contribution kernel is not symmetric: batches and Jbar on the query side
        assert np.allclose(Ktr, Ktr.T, rtol=1e-9, atol=1e-12 * np.abs(Ktr).max())
    assert np.allclose(Kq, Ktr[:200], rtol=1e-9, atol=1e-12 * np.abs(Ktr).max())   # the queries are the first 200
    data = np.loadtxt(DIGITS, delimiter=",")
    assert np.array_equal(ytr, data[:300, -1]) and np.array_equal(yq, data[:200, -1])
    if kind == "rbf":  # independent: the median heuristic over the standardised features
        x = data[:300, :-1]
        sd = x.std(0)
        x = (x - x.mean(0)) / np.where(sd > 0, sd, 1)
        D = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        h = np.median(D[np.triu_indices(300, 1)])
        assert np.allclose(Ktr, np.exp(-D ** 2 / (2 * h * h)), rtol=1e-9, atol=1e-12)
    subprocess.run(["svm-train", "-q", "-t", "4", "-c", "10", out / "train.svm", out / "model"], check=True)
    r = subprocess.run(["svm-predict", out / "query.svm", out / "model", out / "pred"], capture_output=True,
                       text=True, check=True)
    pred = np.loadtxt(out / "pred")
    acc = (pred == yq).mean()
    print(kind, r.stdout.strip(), acc)
    assert acc > 0.9, (kind, acc)       # training points: an SVM fits them


def test_compare_table(tmp_path):
    out = tmp_path / "cmp"
    pk("compare", "--data", DIGITS, "--first", 300, "--test", DIGITS, "--standardize", "--model", "mlp:32:relu",
           "--loss", "softmax", "--optim", "sgd", "--batch", 50, "--lr", 0.05, "--steps", 60, "--widths", "16,256",
           "--out", out)
    lines = (out / "compare.csv").read_text().split("\n\n")
    rows = [l.split(",") for l in lines[0].splitlines()[1:]]
    assert [r_[0] for r_ in rows] == ["network"] + ["krr"] * 5 + ["svm"], rows
    assert [r_[1] for r_ in rows[1:6]] == ["path", "tangent-init", "tangent-final", "rbf", "ntk"]
    for r_ in rows:
        assert 0.5 < float(r_[2]) <= 1.0, r_           # accuracies of working machines on digits
    # the network row agrees with pathkernel predict on the kept run
    pk("predict", out / "run", "--data", DIGITS, "--out", tmp_path / "p.npy")
    y = np.loadtxt(DIGITS, delimiter=",")[:, -1]
    acc = (np.load(tmp_path / "p.npy").argmax(1) == y).mean()
    assert abs(acc - float(rows[0][2])) < 1e-12
    widths = [l.split(",") for l in lines[1].splitlines()[1:]]
    change = {int(w[0]): float(w[3]) for w in widths}
    assert change[256] < change[16], change             # the lazy regime: wider moves less
    # kernel change recomputed from the tangent kernels of the kept width runs
    for w in (16, 256):
        run = out / f"width-{w}"
        for at in ("init", "final"):
            pk("kernel", run, "--at", at, "--x", f"{DIGITS}", "--mode", "trace", "--out", tmp_path / f"K{at}.npy")
        K0, KT = (np.load(tmp_path / f"K{a}.npy")[:300, :300] for a in ("init", "final"))
        assert abs(np.linalg.norm(KT - K0) / np.linalg.norm(K0) - change[w]) < 1e-9 * change[w]
