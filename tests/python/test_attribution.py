"""Attribution commands (issue 5): `attribute`, `selfinfluence`, `mislabel`,
against independent computations.

Run:  /usr/bin/python3 -m pytest -q tests/python/test_attribution.py
Needs Debian's python3-torch and python3-numpy and a built tree (PK_BUILD,
PK_SOURCE as in conftest.py; data/digits.csv.gz from PK_SOURCE). About 15 s
on 2 cores.

  1. attribute: the top-K lists of every output format (csv, json, table) are
     what numpy derives from explain's contrib.npy (positives largest first,
     negatives most negative first, exact ties by the smaller index), with the
     training labels, share = contribution / (pred - bias)[c], total = sum of
     all contributions, residual = pred - bias - total within the quadrature
     error; --class pred / label / a number; exact ties (duplicated examples,
     full-batch gd) ordered by index.
  2. selfinfluence --form kernel equals the diagonal of explain's path kernel
     with the training set as queries; --form loss equals a torch autograd
     computation from the exported weights of every step (per-example
     gradients at the Gauss-Legendre nodes of each step); with one training
     example the loss form is exactly minus the change of its loss.
  3. mislabel: the CSV's flips are consistent, the JSON's AUCs and found
     fractions agree with numpy (pairwise Mann-Whitney, ties 1/2), its
     self-influence column is what `selfinfluence` gives on the run it left,
     and on digits (500 examples, 10% flipped) the exact self-influence AUC
     exceeds 0.8.
  4. Bad input: exit 2.
"""
import csv
import gzip
import json
import math
import pathlib

import numpy as np
import pytest

from conftest import SOURCE_DIR
from pkutil import load_weights, pk, pk_run, rel_err, save_data, traj_batches

torch = pytest.importorskip("torch")
torch.set_num_threads(1)
DT = torch.float64
DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"


def digits(n):
    with gzip.open(DIGITS, "rt") as f:
        a = np.loadtxt(f, delimiter=",", max_rows=n)
    return a[:, :-1], a[:, -1]


def numpy_top(phi, k, sign):
    """Indices of the k strongest entries with sign * phi > 0, ties by index."""
    idx = np.nonzero(sign * phi > 0)[0]
    order = np.lexsort((idx, -sign * phi[idx]))  # primary: strength, then index
    return idx[order][:k]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------ 1. attribute


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits run on the first 200 examples; queries are rows 300..305 (not
    trained on), saved raw so that the test knows their labels."""
    d = tmp_path_factory.mktemp("attr")
    run = d / "run"
    pk("train", "--data", DIGITS, "--first", "200", "--standardize", "--model", "mlp:12:tanh", "--loss", "softmax",
       "--optim", "sgd", "--batch", "40", "--lr", "0.1", "--steps", "25", "--seed", "1", "--quiet", "--threads", "1",
       "--out", run)
    X, y = digits(306)
    query = ["--query", save_data(d, "q", X[300:306], y[300:306])]
    pk("explain", run, *query, "--quad", "gl4", "--out", d / "ex", "--threads", "1")
    return {"dir": d, "run": run, "query": query, "labels": y[:200], "qlabels": y[300:306].astype(int),
            "pred": np.load(d / "ex" / "pred.npy"), "bias": np.load(d / "ex" / "bias.npy"),
            "contrib": np.load(d / "ex" / "contrib.npy")}


def check_lists(rows_by_query, r, classes, k):
    pred, bias, contrib, labels = r["pred"], r["bias"], r["contrib"], r["labels"]
    Q = pred.shape[0]
    assert sorted(rows_by_query) == list(range(Q))
    for q in range(Q):
        c = classes[q]
        entry = rows_by_query[q]
        assert entry["class"] == c
        phi = contrib[q, :, c]
        moved = pred[q, c] - bias[q, c]
        for kind, sign in (("proponents", 1), ("opponents", -1)):
            got = entry[kind]
            want = numpy_top(phi, k, sign)
            assert [g["index"] for g in got] == list(want), f"query {q} {kind}"
            assert [g["rank"] for g in got] == list(range(1, len(want) + 1))
            vals = np.array([g["contribution"] for g in got])
            assert np.all(sign * np.diff(vals) <= 0), f"query {q} {kind} not sorted"
            assert np.all(sign * vals > 0)
            np.testing.assert_allclose(vals, phi[want], rtol=1e-12, atol=0)
            assert [g["label"] for g in got] == [labels[i] for i in want]
            np.testing.assert_allclose([g["share"] for g in got], phi[want] / moved, rtol=1e-12, atol=0)
        if "total" in entry:
            assert entry["total"] == pytest.approx(phi.sum(), rel=1e-12, abs=1e-14)
            # cJSON prints 15 significant digits where they round-trip to within an epsilon
            assert entry["pred"] == pytest.approx(pred[q, c], rel=1e-14)
            assert entry["bias"] == pytest.approx(bias[q, c], rel=1e-14)
            assert entry["residual"] == pytest.approx(moved - phi.sum(), rel=1e-6, abs=1e-14)
            assert abs(entry["residual"]) < 1e-9 * max(1.0, abs(moved)), "total + bias does not reproduce pred"


def csv_by_query(path):
    out = {}
    for row in read_csv(path):
        q = int(row["query"])
        e = out.setdefault(q, {"class": int(row["class"]), "proponents": [], "opponents": []})
        assert int(row["class"]) == e["class"]
        e[row["kind"] + "s"].append({"rank": int(row["rank"]), "index": int(row["index"]),
                                     "label": float(row["label"]), "contribution": float(row["contribution"]),
                                     "share": float(row["share"])})
    return out


def json_by_query(path):
    data = json.loads(pathlib.Path(path).read_text())
    return {e["query"]: e for e in data["queries"]}, data


def table_by_query(stdout):
    out, q, kind = {}, None, None
    for line in stdout.splitlines():
        w = line.split()
        if not w:
            continue
        if w[0] == "query":
            q = int(w[1])
            out[q] = {"class": int(w[3].rstrip(":")), "proponents": [], "opponents": []}
        elif w[0] in ("proponents", "opponents"):
            kind = w[0]
        elif w[0] != "rank":
            out[q][kind].append({"rank": int(w[0]), "index": int(w[1]), "label": float(w[2]),
                                 "contribution": float(w[3]), "share": float(w[4])})
    return out


def test_attribute_formats_match_explain(digits_run, tmp_path):
    r = digits_run
    k = 5
    classes = r["pred"].argmax(axis=1)
    base = ["attribute", r["run"], *r["query"], "--quad", "gl4", "--top", k, "--threads", "1"]
    pk(*base, "--out", tmp_path / "a.csv")
    pk(*base, "--out", tmp_path / "a.json")
    table = pk(*base)
    j, meta = json_by_query(tmp_path / "a.json")
    assert meta["top"] == k and meta["n_train"] == 200 and meta["quad"] == "gl4"
    check_lists(j, r, classes, k)
    c = csv_by_query(tmp_path / "a.csv")
    check_lists(c, r, classes, k)
    # the table rounds to 6 digits: compare indices exactly, values loosely
    t = table_by_query(table)
    for q in range(len(classes)):
        for kind in ("proponents", "opponents"):
            assert [e["index"] for e in t[q][kind]] == [e["index"] for e in j[q][kind]]
            np.testing.assert_allclose([e["contribution"] for e in t[q][kind]],
                                       [e["contribution"] for e in j[q][kind]], rtol=1e-5)


def test_attribute_class_variants(digits_run, tmp_path):
    r = digits_run
    base = ["attribute", r["run"], *r["query"], "--quad", "gl4", "--top", 3, "--threads", "1"]
    pk(*base, "--class", "7", "--out", tmp_path / "c7.json")
    j, _ = json_by_query(tmp_path / "c7.json")
    check_lists(j, r, [7] * len(j), 3)
    # label: each query's own class
    pk(*base, "--class", "label", "--out", tmp_path / "cl.json")
    j, _ = json_by_query(tmp_path / "cl.json")
    check_lists(j, r, r["qlabels"], 3)
    # pred is the default
    pk(*base, "--class", "pred", "--out", tmp_path / "cp.json")
    pk(*base, "--out", tmp_path / "cd.json")
    assert (tmp_path / "cp.json").read_text() == (tmp_path / "cd.json").read_text()


def test_attribute_one_output_and_ties(tmp_path):
    """Logistic, full-batch gd, every example duplicated: duplicates have
    identical contributions, which must be listed by the smaller index first;
    the default class of a one-output run is output 0."""
    r = np.random.default_rng(5)
    X = r.normal(size=(10, 3))
    y = (X[:, 0] + 0.3 * r.normal(size=10) > 0).astype(np.float64)
    X, y = np.concatenate([X, X]), np.concatenate([y, y])
    spec = save_data(tmp_path, "dup", X, y)
    qspec = save_data(tmp_path, "q", r.normal(size=(4, 3)), np.zeros(4))
    run = tmp_path / "run"
    pk("train", "--data", spec, "--model", "mlp:5:tanh", "--loss", "logistic", "--optim", "gd", "--lr", "0.3",
       "--steps", "8", "--seed", "2", "--quiet", "--threads", "1", "--out", run)
    pk("explain", run, "--query", qspec, "--quad", "gl4", "--out", tmp_path / "ex", "--threads", "1")
    contrib = np.load(tmp_path / "ex" / "contrib.npy")
    ties = sum(np.sum(contrib[q, :10, 0] == contrib[q, 10:, 0]) for q in range(4))
    assert ties > 0, "no exact ties: the tie-break is not exercised"
    pk("attribute", run, "--query", qspec, "--quad", "gl4", "--top", "20", "--out", tmp_path / "a.json",
       "--threads", "1")
    j, _ = json_by_query(tmp_path / "a.json")
    rr = {"pred": np.load(tmp_path / "ex" / "pred.npy"), "bias": np.load(tmp_path / "ex" / "bias.npy"),
          "contrib": contrib, "labels": y}
    check_lists(j, rr, [0] * 4, 20)
    for q in range(4):
        lst = j[q]["proponents"] + j[q]["opponents"]
        assert len(lst) == 20 - int(np.sum(contrib[q, :, 0] == 0))
        for a, b in zip(lst, lst[1:]):
            if a["contribution"] == b["contribution"]:
                assert a["index"] < b["index"]


# -------------------------------------------------------- 2. selfinfluence


def test_attribute_reconciles_with_weight_decay(tmp_path):
    """With decoupled weight decay (adamw) part of pred - bias belongs to no
    example: attribute reports it, and total + regularisation + residual is
    pred - bias with a residual at the quadrature error."""
    run = tmp_path / "run"
    pk("train", "--data", DIGITS, "--first", 200, "--standardize", "--model", "mlp:16:tanh", "--loss", "softmax",
       "--optim", "adamw", "--weight-decay", 0.5, "--batch", 50, "--lr", 0.01, "--steps", 12, "--quiet", "--out", run)
    pk("attribute", run, "--query", DIGITS, "--first", 5, "--quad", "gl4", "--top", 3, "--out", tmp_path / "a.json")
    res = json.loads((tmp_path / "a.json").read_text())
    queries = res["queries"] if isinstance(res, dict) else res
    for q in queries:
        moved = q["pred"] - q["bias"]
        assert abs(q["regularisation"]) > 1e-6, q
        assert abs(moved - q["total"] - q["regularisation"] - q["residual"]) <= 1e-12 * max(1.0, abs(moved))
        assert abs(q["residual"]) <= 1e-8 * max(1.0, abs(moved)), q


def test_selfinfluence_kernel_is_path_kernel_diagonal(digits_run, tmp_path):
    r = digits_run
    pk("selfinfluence", r["run"], "--form", "kernel", "--quad", "gl2", "--out", tmp_path / "si.csv", "--threads", "1")
    pk("explain", r["run"], "--query", DIGITS, "--first", "200", "--quad", "gl2", "--mode", "trace", "--kernel", "path-batch",
       "--out", tmp_path / "ex", "--threads", "1")
    K = np.load(tmp_path / "ex" / "kernel.npy")
    assert K.shape == (200, 200)
    rows = read_csv(tmp_path / "si.csv")
    assert [int(x["index"]) for x in rows] == list(range(200))
    assert [float(x["label"]) for x in rows] == list(r["labels"])
    si = np.array([float(x["self_influence"]) for x in rows])
    assert rel_err(si, np.diag(K)) < 1e-12
    assert np.all(si > 0)


GL2 = ([0.5 - 0.5 / math.sqrt(3), 0.5 + 0.5 / math.sqrt(3)], [0.5, 0.5])


def torch_self_influence(run, wdir_of, X, Y, loss, act, quad):
    """sum_t (eta_t/|B_t|) sum_q c_q <g_i(w_t + s_q D_t), g_i(w_t)> by autograd."""
    lr, batches, N = traj_batches(run / "trajectory.bin")
    W = [load_weights(wdir_of(t)) for t in range(len(lr) + 1)]
    phi = {"tanh": torch.tanh, "identity": lambda z: z}[act]

    def grad(layers, i):
        ps = [torch.tensor(a, dtype=DT, requires_grad=True) for Wb in layers for a in Wb]
        a = torch.tensor(X[i], dtype=DT)
        for l in range(len(layers)):
            a = ps[2 * l] @ a + ps[2 * l + 1]
            if l + 1 < len(layers):
                a = phi(a)
        if loss == "softmax":
            li = torch.logsumexp(a, 0) - a[int(Y[i])]
        else:
            li = 0.5 * torch.sum((a - torch.tensor(np.atleast_1d(Y[i]), dtype=DT)) ** 2)
        g = torch.autograd.grad(li, ps)
        return torch.cat([x.flatten() for x in g]).numpy()

    si = np.zeros(N)
    for t, (eta, b) in enumerate(zip(lr, batches)):
        w0, w1 = W[t], W[t + 1]
        for i in b:
            g0 = grad(w0, i)
            for s, c in zip(*quad):
                node = [(W0 + s * (W1 - W0), b0 + s * (b1 - b0)) for (W0, b0), (W1, b1) in zip(w0, w1)]
                si[i] += eta / len(b) * c * np.dot(grad(node, i), g0)
    return si


@pytest.mark.parametrize("model,act,loss", [("mlp:6:tanh", "tanh", "softmax"), ("linear", "identity", "mse")])
def test_selfinfluence_loss_against_torch(tmp_path, model, act, loss):
    r = np.random.default_rng(17)
    X = r.normal(size=(14, 4))
    Y = np.array([0, 1, 2] * 4 + [0, 1]) if loss == "softmax" else r.normal(size=14)
    spec = save_data(tmp_path, "d", X, Y)
    run = tmp_path / "run"
    pk("train", "--data", spec, "--model", model, "--loss", loss, "--optim", "sgd", "--batch", "4", "--lr", "0.2",
       "--steps", "7", "--seed", "4", "--quiet", "--threads", "1", "--out", run)
    for t in range(8):
        pk("weights", run, "--step", t, "--out", tmp_path / f"w{t}")
    want = torch_self_influence(run, lambda t: tmp_path / f"w{t}", X, Y, loss, act, GL2)
    _, batches, _ = traj_batches(run / "trajectory.bin")
    assert len(set(np.concatenate(batches))) == 14
    pk("selfinfluence", run, "--out", tmp_path / "si.csv", "--quad", "gl2", "--threads", "1")
    got = np.array([float(x["self_influence"]) for x in read_csv(tmp_path / "si.csv")])
    assert rel_err(got, want) < 1e-10
    # the left rule is TracIn summed over every step: different, and close
    want_left = torch_self_influence(run, lambda t: tmp_path / f"w{t}", X, Y, loss, act, ([0.0], [1.0]))
    pk("selfinfluence", run, "--out", tmp_path / "sil.csv", "--quad", "left", "--threads", "1")
    got_left = np.array([float(x["self_influence"]) for x in read_csv(tmp_path / "sil.csv")])
    assert rel_err(got_left, want_left) < 1e-10
    assert rel_err(got_left, got) > 1e-6


def test_selfinfluence_single_example_is_its_loss_drop(tmp_path):
    """N = 1, gd: the only contribution to the example's loss change is its
    own, so SI = loss(w_0) - loss(w_T) up to the quadrature error."""
    r = np.random.default_rng(3)
    X, Y = r.normal(size=(1, 4)), np.array([[1.5, -0.5]])
    spec = save_data(tmp_path, "one", X, Y)
    run = tmp_path / "run"
    pk("train", "--data", spec, "--model", "mlp:8:tanh", "--loss", "mse", "--optim", "gd", "--lr", "0.05",
       "--steps", "20", "--seed", "1", "--quiet", "--threads", "1", "--out", run)
    pk("predict", run, "--data", spec, "--step", "init", "--out", tmp_path / "p0.npy")
    pk("predict", run, "--data", spec, "--out", tmp_path / "pT.npy")
    l0 = 0.5 * np.sum((np.load(tmp_path / "p0.npy") - Y) ** 2)
    lT = 0.5 * np.sum((np.load(tmp_path / "pT.npy") - Y) ** 2)
    assert l0 - lT > 0.1
    pk("selfinfluence", run, "--out", tmp_path / "si.csv", "--quad", "gl4", "--threads", "1")
    si = float(read_csv(tmp_path / "si.csv")[0]["self_influence"])
    assert abs(si - (l0 - lT)) < 1e-9 * (l0 - lT)


# ------------------------------------------------------------- 3. mislabel


def mann_whitney_auc(score, pos):
    p, n = score[pos], score[~pos]
    diff = p[:, None] - n[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def test_mislabel_digits(tmp_path):
    out = tmp_path / "ml"
    stdout = pk("mislabel", "--data", DIGITS, "--first", "500", "--standardize", "--flip", "0.1", "--flip-seed", "3",
                "--model", "mlp:32:tanh", "--loss", "softmax", "--optim", "sgd", "--batch", "32", "--lr", "0.1",
                "--steps", "400", "--seed", "1", "--out", out, "--quiet", "--threads", "2")
    rows = read_csv(out / "mislabel.csv")
    summary = json.loads((out / "mislabel.json").read_text())
    assert len(rows) == 500 and summary["n"] == 500 and summary["n_flipped"] == 50
    _, y = digits(500)
    orig = np.array([float(r["original_label"]) for r in rows])
    lab = np.array([float(r["label"]) for r in rows])
    flipped = np.array([r["flipped"] == "1" for r in rows])
    assert np.array_equal(orig, y)
    assert flipped.sum() == 50 and np.array_equal(flipped, lab != orig)
    for name in ("self_influence", "final_loss", "grad_norm2", "tracin5", "loo_tangent_final", "loo_tangent_init"):
        s = np.array([float(r[name]) for r in rows])
        got = summary["scores"][name]
        assert got["auc"] == pytest.approx(mann_whitney_auc(s, flipped), abs=1e-12), name
        order = np.lexsort((np.arange(500), -s))
        for key, k in (("found_top5", 25), ("found_top10", 50), ("found_top20", 100)):
            assert got[key] == pytest.approx(flipped[order[:k]].sum() / 50, abs=1e-12), (name, key)
        assert f"{name}" in stdout
    assert summary["scores"]["self_influence"]["auc"] > 0.8
    # the leave-one-out scores are `loo`'s on the run it leaves, and each AUC at every ridge is that ridge's
    assert "loo_path" not in summary["scores"], "the path kernel's score is asked for, not a default"
    for kernel in ("tangent-final", "tangent-init"):
        pk("loo", out / "run", "--kernel", kernel, "--out", tmp_path / kernel, "--threads", "2")
        col = "loo_" + kernel.replace("-", "_")
        assert [float(r["score"]) for r in read_csv(tmp_path / kernel / "loo.csv")] == [float(r[col]) for r in rows]
        grid = summary["scores"][col]["loo"]["grid"]
        assert summary["scores"][col]["loo"]["ridge"] in [g["ridge"] for g in grid]
        assert summary["scores"][col]["seconds"] > 0
    # the run it leaves is a complete run: selfinfluence reproduces the column
    pk("selfinfluence", out / "run", "--out", tmp_path / "si.csv", "--threads", "1")
    si = [float(r["self_influence"]) for r in read_csv(tmp_path / "si.csv")]
    assert si == [float(r["self_influence"]) for r in rows]
    # the exact score of the baselines: final loss from the run's predictions
    pk("predict", out / "run", "--data", f"npy:{out / 'data_x.npy'},{out / 'data_y.npy'}", "--out", tmp_path / "p.npy")
    f = np.load(tmp_path / "p.npy")
    li = np.log(np.exp(f - f.max(1, keepdims=True)).sum(1)) + f.max(1) - f[np.arange(500), lab.astype(int)]
    np.testing.assert_allclose([float(r["final_loss"]) for r in rows], li, rtol=1e-10, atol=1e-14)


def test_auc_ties_averaged(tmp_path):
    """Pairs (x, 0), (x, 1) with the same x: a flipped example becomes a copy
    of its partner, so flipped and clean examples tie exactly in every score
    and the AUC must count those pairs 1/2 (Mann-Whitney)."""
    r = np.random.default_rng(8)
    X = np.repeat(r.normal(size=(20, 3)), 2, axis=0)
    y = np.tile([0.0, 1.0], 20)
    spec = save_data(tmp_path, "b", X, y)
    out = tmp_path / "ml"
    pk("mislabel", "--data", spec, "--flip", "0.2", "--model", "linear", "--loss", "logistic", "--optim", "gd",
       "--lr", "0.5", "--steps", "5", "--out", out, "--quiet", "--threads", "1")
    rows = read_csv(out / "mislabel.csv")
    summary = json.loads((out / "mislabel.json").read_text())
    flipped = np.array([r["flipped"] == "1" for r in rows])
    assert flipped.sum() == 8
    ties = 0
    for name in ("self_influence", "final_loss", "grad_norm2", "tracin5"):
        s = np.array([float(r[name]) for r in rows])
        ties += int(np.sum(s[flipped][:, None] == s[~flipped][None, :]))
        assert summary["scores"][name]["auc"] == pytest.approx(mann_whitney_auc(s, flipped), abs=1e-12), name
    assert ties > 0, "no ties between flipped and clean examples: the 1/2 rule is not exercised"


# ------------------------------------------------------------ 4. bad input


def test_bad_input(digits_run, tmp_path):
    run = digits_run["run"]
    q = ["--query", DIGITS, "--first", "2"]
    ml = ["mislabel", "--data", DIGITS, "--first", "100", "--model", "linear", "--steps", "2", "--quiet"]
    cases = [
        ["attribute", run, *q, "--class", "10"],
        ["attribute", run, *q, "--class", "foo"],
        ["attribute", run, *q, "--class", "-1"],
        ["attribute", run, *q, "--top", "0"],
        ["attribute", run, *q, "--top", "x"],
        ["attribute", run, *q, "--out", tmp_path / "a.txt"],
        ["attribute", run, *q, "--quad", "gl9"],
        ["attribute", run],
        ["attribute", run, *q, "--bogus"],
        ["attribute", tmp_path / "nope", *q],
        ["selfinfluence", run],
        ["selfinfluence", run, "--out", tmp_path / "s.csv", "--form", "both"],
        ["selfinfluence", run, "--out", tmp_path / "s.csv", "--quad", "right"],
        [*ml, "--flip", "0"],
        [*ml, "--flip", "1"],
        [*ml, "--flip", "1.5"],
        [*ml, "--flip", "-0.1"],
        [*ml, "--flip", "abc"],
        [*ml],
        [*ml, "--flip", "0.1", "--loss", "mse"],
        [*ml, "--flip", "0.1", "--optim", "momentum"],
    ]
    for args in cases:
        p = pk_run(*args, expect=None)
        assert p.returncode == 2, f"{args}: exit {p.returncode}, stderr {p.stderr}"
        assert p.stderr.strip(), f"{args}: no message"
    assert not (tmp_path / "a.txt").exists() and not (tmp_path / "s.csv").exists()
    # --class label on queries whose targets are not classes
    bad = save_data(tmp_path, "bq", np.zeros((2, 64)), np.array([0.5, 3.0]))
    p = pk_run("attribute", run, "--query", bad, "--class", "label", expect=2)
    assert "not a class" in p.stderr


def test_momentum_not_yet_supported(tmp_path):
    r = np.random.default_rng(1)
    spec = save_data(tmp_path, "m", r.normal(size=(20, 3)), np.arange(20) % 2)
    run = tmp_path / "run"
    pk("train", "--data", spec, "--model", "linear", "--loss", "softmax", "--optim", "momentum", "--lr", "0.1",
       "--steps", "3", "--quiet", "--threads", "1", "--out", run)
    p = pk_run("selfinfluence", run, "--out", tmp_path / "s.csv", expect=2)
    assert "not yet supported" in p.stderr
