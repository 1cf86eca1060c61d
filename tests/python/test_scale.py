"""Streaming attribution at scale (attribute --top K with --out DIR, groups,
resume, MPI) and explain's out-of-core outputs, checked against the dense
contributions of `explain` and against single-process runs."""
import os
import pathlib
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import SOURCE_DIR
from pkutil import pk, pk_exe, pk_run, save_data

DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"
NPY = ["proponents.npy", "proponent_values.npy", "opponents.npy", "opponent_values.npy"]


def digits(n):
    import gzip
    with gzip.open(DIGITS, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", skiprows=1, max_rows=n)
    return rows[:, :-1], rows[:, -1]


def dense_lists(phi, k):
    """pk_rank's order from a dense row: strongest first, ties by index."""
    pos = sorted((i for i in range(len(phi)) if phi[i] > 0), key=lambda i: (-phi[i], i))[:k]
    neg = sorted((i for i in range(len(phi)) if phi[i] < 0), key=lambda i: (phi[i], i))[:k]
    return pos, neg


def read_dir(d):
    out = {n[:-4]: np.load(d / n) for n in NPY}
    s = np.genfromtxt(d / "summary.csv", delimiter=",", names=True)
    out["summary"] = np.atleast_1d(s)
    return out


def check_against_dense(att, contrib, pred, bias, classes, k):
    """Returns how many of the lists are exactly the dense ranking's."""
    Q = contrib.shape[0]
    ident = [0, 0]
    assert att["proponents"].shape == (Q, k) and att["proponents"].dtype == np.int64
    assert att["opponent_values"].shape == (Q, k) and att["opponent_values"].dtype == np.float64
    for q in range(Q):
        c = classes[q]
        phi = contrib[q, :, c]
        scale = np.max(np.abs(phi))
        assert scale > 0
        pos, neg = dense_lists(phi, k)
        for sign, idx, val, want in ((1, att["proponents"][q], att["proponent_values"][q], pos),
                                     (-1, att["opponents"][q], att["opponent_values"][q], neg)):
            n = len(want)
            got = list(idx[:n])
            assert np.all(idx[n:] == -1) and np.all(np.isnan(val[n:]))
            assert np.max(np.abs(val[:n] - phi[got]), initial=0) <= 1e-12 * scale
            # strongest first, exact ties by the smaller index, in the values computed
            for j in range(n - 1):
                a, b = sign * val[j], sign * val[j + 1]
                assert a > b or (a == b and got[j] < got[j + 1]), f"query {q}: not in order at {j}"
            # the same lists as the dense ranking: identical, except that entries
            # whose dense values agree to rounding (1e-13) may trade places
            assert np.max(np.abs(phi[got] - phi[want]), initial=0) <= 1e-13 * scale
            ident[0] += got == want
            ident[1] += 1
        row = att["summary"][q]
        assert int(row["class"]) == c
        assert abs(row["total"] - phi.sum()) <= 1e-10 * scale
        assert abs(row["pred"] - pred[q, c]) <= 1e-13 * max(1.0, abs(pred[q, c]))
        assert abs(row["bias"] - bias[q, c]) <= 1e-13 * max(1.0, abs(bias[q, c]))
    return ident


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Digits with ten duplicated rows (exact ties in the contributions)."""
    d = tmp_path_factory.mktemp("scale")
    X, y = digits(320)
    Xt = np.vstack([X[:210], X[:10]])
    yt = np.concatenate([y[:210], y[:10]])
    return {"dir": d, "train": save_data(d, "train", Xt, yt), "query": save_data(d, "q", X[300:320], y[300:320]),
            "qlabels": y[300:320].astype(int)}


RUNS = {
    # several epochs with a short last batch: an example's slot opens and closes many times
    "sgd_epochs": ["--optim", "sgd", "--batch", "40", "--lr", "0.1", "--steps", "23"],
    # one epoch: every example is final after its only step
    "sgd_epoch1": ["--optim", "sgd", "--batch", "32", "--lr", "0.1", "--steps", "7"],
    # full batch: all examples open throughout
    "gd": ["--optim", "gd", "--lr", "0.2", "--steps", "12"],
    # the backward sweep (src/kernel/backward.c), ranked from the group's dense rows
    "momentum": ["--optim", "momentum", "--batch", "50", "--lr", "0.05", "--steps", "9"],
    "sgd_decay": ["--optim", "sgd", "--batch", "55", "--lr", "0.1", "--steps", "8", "--weight-decay", "0.01"],
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def run(request, data):
    name = request.param
    d = data["dir"] / name
    pk("train", "--data", data["train"], "--standardize", "--model", "mlp:10:tanh", "--loss", "softmax",
       *RUNS[name], "--seed", "3", "--quiet", "--threads", "1", "--out", d / "run")
    pk("explain", d / "run", "--query", data["query"], "--quad", "gl2", "--no-kernel", "--out", d / "ex",
       "--threads", "1")
    ex = {k: np.load(d / "ex" / f"{k}.npy") for k in ("pred", "bias", "contrib")}
    return {"dir": d, "run": d / "run", "name": name, **ex}


@pytest.mark.parametrize("cls", ["pred", "label", "3"])
def test_topk_equals_dense_ranking(run, data, cls):
    out = run["dir"] / f"att_{cls}"
    k = 15
    pk("attribute", run["run"], "--query", data["query"], "--top", k, "--class", cls, "--out", out, "--threads", "1")
    classes = {"pred": run["pred"].argmax(1), "label": data["qlabels"], "3": np.full(20, 3)}[cls]
    same, lists = check_against_dense(read_dir(out), run["contrib"], run["pred"], run["bias"], classes, k)
    # only the duplicated rows (full-batch gd) can make near-ties
    assert same == lists if run["name"] != "gd" else same >= lists // 2
    assert not (out / ".parts").exists(), "the parts of a finished job must be removed"


def test_ties_are_ranked_by_index(run, data):
    """Rows 210..219 repeat rows 0..9; with full-batch gd both copies see every
    step, so their contributions are equal: the smaller index comes first."""
    if run["name"] != "gd":
        pytest.skip("exact ties need both copies in the same batches: full-batch gd")
    out = run["dir"] / "ties"
    pk("attribute", run["run"], "--query", data["query"], "--top", 220, "--class", "pred", "--out", out,
       "--threads", "1")
    att = read_dir(out)
    seen = 0
    for q in range(20):
        for idx, val in ((att["proponents"][q], att["proponent_values"][q]),
                         (att["opponents"][q], att["opponent_values"][q])):
            pos = {int(i): j for j, i in enumerate(idx) if i >= 0}
            for a in range(10):
                if a in pos:
                    # a copy's contribution equals the original's up to rounding,
                    # and nothing else falls between them
                    b = a + 210
                    assert b in pos and abs(pos[a] - pos[b]) == 1
                    assert abs(val[pos[a]] - val[pos[b]]) <= 1e-13 * np.nanmax(np.abs(val))
                    if val[pos[a]] == val[pos[b]]:
                        assert pos[a] < pos[b], "an exact tie goes to the smaller index"
                    seen += 1
    assert seen >= 150


def test_group_size_does_not_change_the_result(run, data):
    a, b = run["dir"] / "g_all", run["dir"] / "g_3"
    common = ["--query", data["query"], "--top", 8, "--threads", "1"]
    pk("attribute", run["run"], *common, "--out", a)
    out = pk("attribute", run["run"], *common, "--group", 3, "--out", b)
    assert "7 groups of 3 queries" in out
    A, B = read_dir(a), read_dir(b)
    for kind in ("proponent", "opponent"):
        va, vb = A[kind + "_values"], B[kind + "_values"]
        scale = np.nanmax(np.abs(va))
        assert np.array_equal(np.isnan(va), np.isnan(vb))
        assert np.nanmax(np.abs(va - vb)) <= 1e-13 * scale
        same = A[kind + "s"] == B[kind + "s"]
        # where the lists differ, it is two entries equal to rounding trading places
        assert same.all() or (run["name"] == "gd" and same.mean() > 0.9)


def test_csv_json_and_table_come_from_the_same_lists(run, data):
    d = run["dir"]
    pk("attribute", run["run"], "--query", data["query"], "--first", 4, "--top", 3, "--out", d / "t")
    pk("attribute", run["run"], "--query", data["query"], "--first", 4, "--top", 3, "--out", d / "t.csv")
    att = read_dir(d / "t")
    rows = np.genfromtxt(d / "t.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    for r in rows:
        q, j = int(r["query"]), int(r["rank"]) - 1
        kind = "proponent" if r["kind"] == "proponent" else "opponent"
        assert att[kind + "s"][q, j] == r["index"]
        assert att[kind + "_values"][q, j] == r["contribution"]


# ------------------------------------------------------------ resume, stop


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory):
    """A run whose replay takes a while: full-batch gd on 1,200 digits."""
    d = tmp_path_factory.mktemp("slow")
    X, y = digits(1300)
    train = save_data(d, "train", X[:1200], y[:1200])
    query = save_data(d, "q", X[1200:1260], y[1200:1260])
    pk("train", "--data", train, "--standardize", "--model", "mlp:40,40:tanh", "--loss", "softmax", "--optim", "gd",
       "--lr", "0.1", "--steps", "80", "--seed", "5", "--quiet", "--threads", "1", "--out", d / "run")
    ref = d / "ref"
    pk("attribute", d / "run", "--query", query, "--top", 6, "--group", 10, "--out", ref, "--threads", "1")
    return {"dir": d, "run": d / "run", "query": query, "ref": ref}


def same_results(a, b):
    for n in NPY + ["summary.csv"]:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def start_attribute(r, out, extra=()):
    cmd = [str(pk_exe()), "attribute", str(r["run"]), "--query", r["query"], "--top", "6", "--group", "10",
           "--out", str(out), "--threads", "1", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_parts(p, parts, n, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if parts.is_dir() and len([f for f in parts.iterdir() if f.name.endswith(".bin")]) >= n:
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_stopped_job_resumes_to_the_same_result(slow_run, sig):
    out = slow_run["dir"] / f"stop_{sig.name}"
    p = start_attribute(slow_run, out)
    assert wait_for_parts(p, out / ".parts", 2), "the job ended before two groups were kept: make the run slower"
    assert p.poll() is None, "the job must still be running when it is stopped"
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert p.returncode == -signal.SIGKILL
    else:
        assert p.returncode == 1, err
        assert "stopped" in err and ".parts" in err and "the same command continues" in err
    assert not (out / "proponents.npy").exists(), "a stopped job must not leave final outputs"
    kept = len(list((out / ".parts").glob("group-*.bin")))
    assert 2 <= kept < 6
    assert not [f for f in (out / ".parts").iterdir() if ".tmp" in f.name], "no temporary files left"
    p = start_attribute(slow_run, out)
    stdout, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert f"{kept} groups were kept" in stdout
    same_results(out, slow_run["ref"])
    assert not (out / ".parts").exists()


def test_damaged_or_foreign_parts_are_recomputed(slow_run):
    out = slow_run["dir"] / "damaged"
    p = start_attribute(slow_run, out)
    assert wait_for_parts(p, out / ".parts", 3)
    p.kill()
    p.wait()
    parts = sorted((out / ".parts").glob("group-*.bin"))
    b = bytearray(parts[0].read_bytes())
    b[40] ^= 1                               # a flipped bit in the rows: the crc catches it
    parts[0].write_bytes(bytes(b))
    parts[1].write_bytes(parts[1].read_bytes()[:-9])   # torn
    stdout = pk("attribute", slow_run["run"], "--query", slow_run["query"], "--top", 6, "--group", 10, "--out", out,
                "--threads", "1")
    assert f"{len(parts) - 2} group" in stdout
    same_results(out, slow_run["ref"])
    # parts of another job (other queries, another k) in the directory are not used
    p = start_attribute(slow_run, out, ["--top", "5", "--first", "20"])
    p.communicate(timeout=300)
    assert p.returncode == 0
    ref5 = slow_run["dir"] / "ref5"
    pk("attribute", slow_run["run"], "--query", slow_run["query"], "--top", 5, "--first", 20, "--group", 10,
       "--out", ref5, "--threads", "1")
    same_results(out, ref5)


def test_progress_reports_steps_queries_rate_and_eta(slow_run):
    p = pk_run("attribute", slow_run["run"], "--query", slow_run["query"], "--first", 20, "--top", 3, "--group", 10,
               "--progress", "--out", slow_run["dir"] / "prog", "--threads", "1")
    lines = [l for l in p.stderr.splitlines() if l.startswith("attribute: group")]
    assert lines, p.stderr
    last = lines[-1]
    assert "group 2/2" in last and "step 80/80" in last and "10/20 queries done" in last
    assert "steps/s" in last and "ETA 0m00s" in last


def test_explain_stops_cleanly_on_sigint(slow_run):
    out = slow_run["dir"] / "ex_stop"
    cmd = [str(pk_exe()), "explain", str(slow_run["run"]), "--query", slow_run["query"], "--out", str(out),
           "--threads", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not out.is_dir() and time.time() - t0 < 60:
        time.sleep(0.001)
    time.sleep(0.05)
    assert p.poll() is None, "explain ended before it could be stopped: make the run slower"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "stopped" in err and "nothing was written" in err
    assert not out.exists(), "the output directory explain made must be removed again"


# ------------------------------------------------------------- out of core


def test_explain_writes_groups_into_memory_mappable_npy(data):
    d = data["dir"] / "ooc"
    pk("train", "--data", data["train"], "--standardize", "--model", "mlp:16:tanh", "--loss", "softmax", "--optim",
       "sgd", "--batch", "50", "--lr", "0.1", "--steps", "12", "--seed", "2", "--quiet", "--threads", "1",
       "--out", d / "run")
    one, many = d / "ex_one", d / "ex_many"
    q = ["--query", data["query"], "--mode", "full", "--threads", "1"]
    pk("explain", d / "run", *q, "--out", one)
    # outputs of 20 queries: 20 x 220 x 10 x (1 + 10) doubles = 3.7 MiB; allow 2 MiB
    out = pk("explain", d / "run", *q, "--mem", 2, "--out", many)
    assert "groups of" in out
    for n in ("pred", "bias", "contrib", "kernel", "regularisation"):
        a = np.load(one / f"{n}.npy")
        b = np.load(many / f"{n}.npy", mmap_mode="r")
        assert isinstance(b, np.memmap) and b.shape == a.shape
        np.testing.assert_allclose(np.asarray(b), a, rtol=1e-12, atol=1e-14 * np.max(np.abs(a)))
    import json
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, many))
    moved = np.max(np.abs(np.load(one / "pred.npy") - np.load(one / "bias.npy")))
    # the error of the representation, a difference of nearly equal sums, agrees to rounding
    assert s2["n_query"] == 20 and abs(s1["max_abs_err"] - s2["max_abs_err"]) <= 1e-13 * moved
    assert 0 < s1["max_abs_err"] < 1e-4 * moved


# ---------------------------------------------------------------------- MPI


def mpirun():
    exe = shutil.which("mpirun")
    if not exe:
        pytest.skip("mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev; scripts/deps.sh does)")
    return exe


def test_mpi_two_ranks_equal_one_process(slow_run):
    exe = mpirun()
    out = slow_run["dir"] / "mpi"
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", ASAN_OPTIONS="detect_leaks=0")
    cmd = [exe, "-np", "2", "--oversubscribe", str(pk_exe()), "attribute", str(slow_run["run"]), "--query",
           slow_run["query"], "--top", "6", "--out", str(out), "--threads", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 MPI ranks" in p.stdout, "the binary was built without MPI (cmake found no libopenmpi-dev?)"
    # without --group, as many equal groups on every rank: one each
    assert "2 groups of 30 queries" in p.stdout, p.stdout
    same_results(out, slow_run["ref"])


def test_executable_does_not_link_mpi():
    """MPI is the module libpathkernel-mpi.so, dlopened under mpirun only:
    libmpi and its dependencies would cost every process start ~2.6 ms."""
    ldd = shutil.which("ldd")
    if not ldd:
        pytest.skip("ldd is not installed")
    p = subprocess.run([ldd, str(pk_exe())], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    libs = [line.split()[0] for line in p.stdout.splitlines() if line.strip()]
    assert libs, p.stdout
    mpi = [lib for lib in libs if lib.startswith(("libmpi", "libopen-rte", "libopen-pal", "libhwloc"))]
    assert not mpi, f"{pk_exe()} links {mpi}"


def test_mpirun_without_the_module_says_so(tmp_path):
    """Launched by mpirun (as OpenMPI's environment says) with no module to
    load: one line naming the module looked for, exit 2, no crash."""
    cache = pk_exe().parent / "CMakeCache.txt"
    prefix = [ln.split("=", 1)[1] for ln in cache.read_text().splitlines()
              if ln.startswith("CMAKE_INSTALL_PREFIX:")] if cache.is_file() else []
    if prefix and list(pathlib.Path(prefix[0]).glob("lib*/pathkernel/libpathkernel-mpi.so")):
        pytest.skip(f"the MPI module is installed under {prefix[0]}")
    exe = tmp_path / "pathkernel"
    shutil.copy(pk_exe(), exe)
    env = dict(os.environ, OMPI_COMM_WORLD_SIZE="1", ASAN_OPTIONS="detect_leaks=0")
    p = subprocess.run([str(exe), "attribute", str(tmp_path / "norun"), "--query", "x"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stdout == "", p.stdout + p.stderr
    assert "launched by mpirun, but MPI support is not available" in p.stderr, p.stderr
    assert str(tmp_path / "libpathkernel-mpi.so") in p.stderr, p.stderr
    assert "not a run directory" not in p.stderr


def test_bad_options_are_refused_before_any_work(slow_run, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    base = ["attribute", slow_run["run"], "--query", slow_run["query"]]
    for extra, want in ((["--group", "0"], "--group"), (["--out", afile], "not a directory"),
                        (["--out", tmp_path / "x.txt"], "FILE.csv"), (["--top", "0"], "--top")):
        p = pk_run(*base, *extra, expect=2)
        assert want in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert afile.read_text() == "keep me" and not (tmp_path / "x.txt").exists()
    # a job too large for the memory budget says so, with the numbers
    p = pk_run(*base, "--mem", "1", "--out", tmp_path / "m", expect=2)
    assert "MiB" in p.stderr and "--mem" in p.stderr
