"""Data as users have it, end to end: class names in every answer.

- Fashion-MNIST gets its ten class names: train's summary, RUN/classes.txt,
  `attribute`'s table, CSV (class_name, label_name) and JSON, and the report,
  where headless Chromium's DOM holds the names as text.
- Iris with its species as text, written by pandas from scikit-learn's
  load_iris(as_frame=True) with the species column first, trains, explains
  and reports with no preprocessing; queries and --test data are mapped
  through the run's classes; a species the run never saw is an error naming
  the file, line and value where the label is needed, a warning where not.
- IDX data named with --class-names; a run from integer labels without a
  header holds exactly the files it held before (no classes.txt).
- The Python package: Run.classes, load_data, train() on text labels."""
import csv
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import BUILD_DIR, SOURCE_DIR

PK = BUILD_DIR / "pathkernel"
FMNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
FMNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                "Ankle boot"]


def pk(*args, expect=0):
    r = subprocess.run([str(PK), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == expect, f"pathkernel {' '.join(map(str, args))}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def chromium_dom(html, work):
    """The page as headless Chromium parsed it (--dump-dom); skips without Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (Debian package chromium; scripts/deps.sh installs it)")
    profile = work / "chromium-profile"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--dump-dom", html.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(work)})
    assert r.returncode == 0 and "</svg>" in r.stdout, r.stderr[-2000:]
    return r.stdout


def svg_texts(dom):
    """The text of every SVG <text> element, entities decoded."""
    import html as h
    return [h.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", dom)]


# ------------------------------------------------------------ Fashion-MNIST

@pytest.fixture(scope="module")
def fmnist_run(tmp_path_factory):
    if not (FMNIST / "train-labels-idx1-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)")
    work = tmp_path_factory.mktemp("fmnist")
    run = work / "run"
    r = pk("train", "--data", "fashion-mnist:train", "--first", 600, "--model", "mlp:16:tanh", "--optim", "sgd",
           "--batch", 100, "--lr", 0.1, "--steps", 12, "--out", run, "--quiet", "--threads", 2)
    return work, run, r.stdout


def test_fmnist_run_records_and_prints_its_class_names(fmnist_run):
    work, run, out = fmnist_run
    assert (run / "classes.txt").read_text() == "".join(n + "\n" for n in FMNIST_NAMES)
    assert "10 classes: 0 T-shirt/top, 1 Trouser, 2 Pullover" in out and "9 Ankle boot" in out


def test_fmnist_attribute_names_the_classes(fmnist_run):
    work, run, _ = fmnist_run
    table = pk("attribute", run, "--query", "fashion-mnist:test", "--first", 4, "--top", 5, "--threads", 2).stdout
    heads = re.findall(r"^query \d+  output (\d+) \(([^)]+)\):", table, re.M)
    assert len(heads) == 4 and all(FMNIST_NAMES[int(c)] == n for c, n in heads)
    rows = re.findall(r"^\s+\d+\s+\d+\s+(\d+)\s{2}(\S.{11})", table, re.M)
    assert len(rows) == 40 and all(FMNIST_NAMES[int(lab)].startswith(nm.strip()) for lab, nm in rows)

    pk("attribute", run, "--query", "fashion-mnist:test", "--first", 4, "--top", 5, "--out", work / "a.csv")
    got = list(csv.DictReader(open(work / "a.csv", newline="")))
    assert len(got) == 40
    for row in got:
        assert row["label_name"] == FMNIST_NAMES[int(float(row["label"]))]
        assert row["class_name"] == FMNIST_NAMES[int(row["class"])]
    assert {r["label_name"] for r in got} <= set(FMNIST_NAMES) and len({r["label_name"] for r in got}) > 1

    pk("attribute", run, "--query", "fashion-mnist:test", "--first", 4, "--top", 5, "--out", work / "a.json")
    js = json.loads((work / "a.json").read_text())
    for q in js["queries"]:
        assert q["class_name"] == FMNIST_NAMES[q["class"]]
        for item in q["proponents"] + q["opponents"]:
            assert item["label_name"] == FMNIST_NAMES[int(item["label"])]


def test_fmnist_report_shows_the_class_names_in_chromium(fmnist_run):
    work, run, _ = fmnist_run
    html = work / "report.html"
    pk("report", run, "--query", "fashion-mnist:test", "--first", 6, "--show", 2, "--top", 3, "--heat", 30,
       "--movement", 20, "--checkpoints", 2, "--out", html, "--threads", 2)
    dom = chromium_dom(html, work)
    texts = svg_texts(dom)
    # the heat map's class blocks are labelled by name, not by index
    assert sum(t in FMNIST_NAMES for t in texts) >= 4, texts
    # the query panels: the label, the predicted class and every proponent/opponent by name
    assert any(re.fullmatch(r"label \d \((.+)\)", t) and re.fullmatch(r"label (\d) \((.+)\)", t).group(2)
               == FMNIST_NAMES[int(t[6])] for t in texts)
    assert any(re.fullmatch(r"predicted class \d \((.+)\)", t) for t in texts)
    rows = [t for t in texts if re.fullmatch(r"#\d+  label \d \(.+\)", t)]
    assert len(rows) == 12 and all(FMNIST_NAMES[int(t.split("label ")[1][0])] in t for t in rows)
    # the captions and the run table, as rendered text
    assert re.search(r"to output \d \(class (T-shirt/top|Trouser|Pullover|Dress|Coat|Sandal|Shirt|Sneaker|Bag|"
                     r"Ankle boot)\) of query 0", dom)
    assert "9&nbsp;Ankle boot" in dom or "9\u00a0Ankle boot" in dom


def test_idx_data_named_with_class_names(tmp_path):
    if not (FMNIST / "train-labels-idx1-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed")
    names = tmp_path / "names.txt"
    names.write_text("".join(f"kind {c}\n" for c in range(10)))
    spec = f"idx:{FMNIST}/t10k-images-idx3-ubyte.gz,{FMNIST}/t10k-labels-idx1-ubyte.gz"
    pk("train", "--data", spec, "--first", 200, "--class-names", names, "--model", "linear", "--steps", 2,
       "--out", tmp_path / "run", "--quiet")
    assert (tmp_path / "run" / "classes.txt").read_text() == names.read_text()
    names.write_text("a\nb\n")
    r = pk("train", "--data", spec, "--first", 200, "--class-names", names, "--model", "linear", "--steps", 2,
           "--out", tmp_path / "run2", "--quiet", expect=2)
    assert "example 0 (0-based): label 9 is not one of the 2 classes named (--class-names), 0..1" in r.stderr
    assert not (tmp_path / "run2").exists()


# -------------------------------------------------------------------- iris

@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    pd = pytest.importorskip("pandas")  # Debian's python3-pandas
    datasets = pytest.importorskip("sklearn.datasets")  # Debian's python3-sklearn
    work = tmp_path_factory.mktemp("iris")
    bunch = datasets.load_iris(as_frame=True)
    df = bunch.frame.drop(columns="target")
    df.insert(0, "species", bunch.target_names[bunch.target])
    shuffled = df.sample(frac=1.0, random_state=0)
    shuffled.iloc[:120].to_csv(work / "train.csv", index=False)
    shuffled.iloc[120:].to_csv(work / "test.csv", index=False)
    return work, shuffled


def test_iris_trains_explains_and_reports_with_text_species(iris):
    work, df = iris
    run = work / "run"
    out = pk("train", "--data", work / "train.csv", "--label-column", "species", "--test", work / "test.csv",
             "--standardize", "--model", "mlp:16:tanh", "--optim", "gd", "--lr", 0.5, "--steps", 200,
             "--out", run, "--quiet").stdout
    assert "3 classes: 0 setosa, 1 versicolor, 2 virginica" in out
    acc = float(re.search(r"final test\s+loss \S+\s+accuracy (\S+)", out).group(1))
    assert acc >= 0.9, out
    assert (run / "classes.txt").read_text() == "setosa\nversicolor\nvirginica\n"
    assert (run / "features.txt").read_text().splitlines() == list(df.columns[1:])
    assert json.loads((run / "run.json").read_text())["data"]["label_column"] == "species"

    # the queries are read with the run's label column and classes, no options
    verify = pk("verify", run, "--query", work / "test.csv", "--quad", "gl4", "--json").stdout
    assert json.loads(verify)["max_rel_err"] < 1e-8
    pk("attribute", run, "--query", work / "test.csv", "--top", 3, "--class", "label", "--out", work / "a.csv")
    rows = list(csv.DictReader(open(work / "a.csv", newline="")))
    species = list(df.iloc[120:]["species"])
    for r in rows:
        assert r["class_name"] == species[int(r["query"])]   # --class label: the query's own species
        assert r["label_name"] in ("setosa", "versicolor", "virginica")
    train_species = list(df.iloc[:120]["species"])
    assert all(r["label_name"] == train_species[int(r["index"])] for r in rows)

    html = work / "iris.html"
    pk("report", run, "--query", work / "test.csv", "--first", 10, "--show", 2, "--top", 4, "--out", html)
    dom = chromium_dom(html, work)
    texts = svg_texts(dom)
    assert {"setosa", "versicolor", "virginica"} <= set(texts)
    assert sum(bool(re.fullmatch(r"#\d+  label \d \((setosa|versicolor|virginica)\)", t)) for t in texts) == 16
    feats = [t for t in texts if " = " in t and t.split(" = ")[0] in set(df.columns[1:])]
    assert len(feats) == 8, texts   # the (at most five) largest features of each of the two queries, by name


def test_iris_unseen_species_is_an_error_where_labels_matter(iris):
    work, df = iris
    run = work / "run-unseen"
    pk("train", "--data", work / "train.csv", "--label-column", "0", "--model", "linear", "--steps", 5,
       "--out", run, "--quiet")
    q = df.iloc[120:124].copy()
    q.iloc[2, 0] = "germanica"
    q.to_csv(work / "q.csv", index=False)
    r = pk("attribute", run, "--query", work / "q.csv", "--class", "label", expect=2)
    assert f"{work / 'q.csv'}: line 4, column 1: label 'germanica' is not one of the 3 known classes" in r.stderr
    r = pk("predict", run, "--data", work / "q.csv", "--out", work / "p.npy")
    assert "warning:" in r.stderr and "'germanica' on line 4" in r.stderr
    r = pk("train", "--data", work / "train.csv", "--label-column", "species", "--test", work / "q.csv",
           "--model", "linear", "--steps", 5, "--out", work / "run-bad-test", "--quiet", expect=2)
    assert "q.csv: line 4, column 1: label 'germanica'" in r.stderr


def test_python_package_reads_iris_as_the_cli(iris, tmp_path):
    if os.environ.get("PK_SANITIZE") == "1":
        pytest.skip("an ASan-instrumented library cannot be loaded into an uninstrumented Python")
    os.environ["PATHKERNEL_LIB"] = str((BUILD_DIR / "libpathkernel.so").resolve())
    sys.path.insert(0, str(SOURCE_DIR / "python"))
    import pathkernel as pkg
    work, df = iris
    d = pkg.load_data(work / "train.csv", label_column="species")
    assert d.classes == ["setosa", "versicolor", "virginica"] and d.features == list(df.columns[1:])
    assert np.array_equal(d.x, df.iloc[:120, 1:].to_numpy(dtype=np.float64))
    assert [d.classes[int(i)] for i in d.y] == list(df.iloc[:120]["species"])
    run = pkg.train(d.x, df.iloc[:120]["species"].to_numpy(), model="linear", steps=3, out=tmp_path / "r",
                    features=d.features)
    assert run.classes == d.classes and run.features == d.features
    assert pkg.open_run(work / "run").classes == d.classes
    order = ["virginica", "setosa", "versicolor"]
    run2 = pkg.train(d.x, df.iloc[:120]["species"].to_numpy(), classes=order, model="linear", steps=3,
                     out=tmp_path / "r2")
    assert run2.classes == order
    y2 = np.load(tmp_path / "r2" / "train_y.npy")
    assert [order[int(i)] for i in y2] == list(df.iloc[:120]["species"])
    with pytest.raises(ValueError, match="label 'germanica' is not one of the 3 known classes"):
        q = df.iloc[120:122].copy()
        q.iloc[1, 0] = "germanica"
        q.to_csv(tmp_path / "q.csv", index=False)
        pkg.load_data(tmp_path / "q.csv", label_column="species", class_names=run.classes)


# ------------------------------------------------------- integer labels as before

def test_integer_label_run_holds_the_files_it_held_before(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    np.savetxt(tmp_path / "d.csv", np.c_[x, (x[:, 0] > 0).astype(int)], delimiter=",", fmt="%.17g")
    run = tmp_path / "run"
    pk("train", "--data", tmp_path / "d.csv", "--model", "linear", "--steps", 3, "--out", run, "--quiet")
    assert sorted(p.name for p in run.iterdir()) == ["run.json", "steps.csv", "trajectory.bin", "weights"]
    data = json.loads((run / "run.json").read_text())["data"]
    assert "sep" not in data and "label_column" not in data
