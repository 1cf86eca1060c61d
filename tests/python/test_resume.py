"""Interruption (issue 7): `pathkernel train --resume RUN` continues a run that
was killed at any instant (SIGKILL included) or stopped (SIGINT/SIGTERM) from
the last checkpoint its journal's complete records reach, and the finished
directory is byte for byte the one an uninterrupted run leaves.

The kills land at seeded random points: the test waits until the journal
(RUN/journal.bin, format in src/run/run.h) holds a random number of steps,
then a random fraction of a step longer, and signals. Every kill is checked to
have landed mid-run (the process died of it or stopped early, and the journal
held fewer steps than requested). A damaged journal or checkpoint must be
detected by its checksum and never trusted: resume falls back to the last good
record, or refuses with one line naming the file.

Run:  PK_BUILD=build /usr/bin/python3 -m pytest -q tests/python/test_resume.py
"""
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import time
import zlib

import pytest

from conftest import SOURCE_DIR
from pkutil import pk_exe, pk_run, read_traj

DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"
HDR, REC = 60, 36            # journal header and record sizes
T, KEEP = 2000, 23           # 2000 is not a multiple of 23: the last checkpoint is off the grid
P_SGD = 64 * 96 + 96 + 96 * 96 + 96 + 96 * 10 + 10   # parameters of mlp:96,96:tanh on digits
# 600 examples in batches of 37: 16 full batches and one of 8 per epoch
COMMON = ["--data", DIGITS, "--first", 600, "--model", "mlp:96,96:tanh", "--loss", "softmax", "--batch", 37,
          "--steps", T, "--keep", KEEP, "--seed", 5, "--quiet"]
CONFIGS = {
    "sgd": ["--optim", "sgd", "--lr", 0.05],
    # optimiser state, and a learning-rate schedule whose position matters
    "momentum": ["--optim", "momentum", "--lr", 0.01, "--momentum", 0.8, "--weight-decay", 1e-3,
                 "--schedule", "step", "--step-every", 300, "--gamma", 0.7],
    "adam": ["--optim", "adam", "--lr", 2e-3, "--schedule", "cosine", "--lr-min", 1e-4, "--standardize"],
}


def tree(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def records(run):
    """Complete records the journal holds now (0 when there is none yet)."""
    try:
        return max(0, (os.stat(run / "journal.bin").st_size - HDR) // REC)
    except FileNotFoundError:
        return 0


def status(run):
    return json.loads((run / "run.json").read_text())["status"]


def same_tree(got, want):
    a, b = tree(got), tree(want)
    assert sorted(a) == sorted(b), f"files differ: {sorted(set(a) ^ set(b))}"
    differ = [n for n in a if a[n] != b[n]]
    assert not differ, f"files differ from the uninterrupted run: {differ}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of each configuration (two threads), made once."""
    base = tmp_path_factory.mktemp("reference")
    made = {}

    def get(name):
        if name not in made:
            made[name] = base / name
            pk_run("train", *COMMON, *CONFIGS[name], "--threads", 2, "--out", made[name])
        return made[name]
    return get


def interrupt(args, run, target, sig, rng, kills):
    """Start the CLI, wait until run's journal holds `target` steps (None: a
    random 0-50 ms after the start), then up to a few steps longer, and send
    sig. Checks the signal landed mid-run; returns the journal's steps then."""
    p = subprocess.Popen([str(pk_exe())] + [str(a) for a in args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    if target is None:
        time.sleep(rng.uniform(0, 0.05))
    else:
        deadline = time.monotonic() + 300
        while records(run) < target:
            assert p.poll() is None, f"finished before step {target}: {p.stderr.read()}"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.0005)
        time.sleep(rng.uniform(0, 0.004))
    p.send_signal(sig)
    rc = p.wait()
    err = p.stderr.read()
    n = records(run)
    assert n < T, f"the signal came too late: the journal holds all {T} steps"
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL, f"exit {rc}: {err}"
        if (run / "run.json").exists():
            assert status(run) == "running"
    else:  # SIGINT, SIGTERM: stop after the current step, a valid shorter run, exit 1
        assert rc == 1, f"exit {rc}: {err}"
        assert "interrupted after step" in err and "--resume" in err, err
        meta = json.loads((run / "run.json").read_text())
        assert meta["status"] == "stopped" and meta["steps"] == n < T
    kills.append((signal.Signals(sig).name, target, n))
    return n


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resume_after_kills_is_byte_identical(tmp_path, reference, name):
    """Kill a run five times (SIGKILL, SIGKILL right after a resume starts,
    SIGTERM, SIGINT, SIGKILL), resuming each time with another thread count;
    the finished run equals the uninterrupted one byte for byte."""
    rng = random.Random(f"resume-{name}")
    run = tmp_path / "run"
    kills = []
    n = interrupt(["train", *COMMON, *CONFIGS[name], "--out", run], run, rng.randint(T // 10, T // 4),
                  signal.SIGKILL, rng, kills)
    assert n > 0
    # a killed run is refused by the readers with the way out
    p = pk_run("predict", run, "--data", DIGITS, "--first", 3, "--out", tmp_path / "p.npy", expect=2)
    assert f"pathkernel train --resume {run}" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    resume = ["train", "--resume", run]
    interrupt(resume + ["--threads", 1], run, None, signal.SIGKILL, rng, kills)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        n = max(n, records(run))
        n = interrupt(resume + ["--threads", 2], run, rng.randint(n + 1, n + (T * 9 // 10 - n) // 2), sig, rng, kills)
        if sig != signal.SIGKILL:  # a stopped run is usable as it stands
            out = pk_run("info", run).stdout
            assert str(n) in out
    out = pk_run(*resume, "--threads", 1).stdout
    assert out.startswith(f"resumed {run} at step ") and "final train loss" in out
    same_tree(run, reference(name))
    assert not (run / "journal.bin").exists()
    print(f"{name}: (signal, target step, journal steps at the kill) {kills}")


# ------------------------------------------------------------ damaged files


@pytest.fixture
def killed(tmp_path):
    """An sgd run killed at a seeded point past step 300."""
    run = tmp_path / "run"
    rng = random.Random(f"killed-{tmp_path.name}")
    n = interrupt(["train", *COMMON, *CONFIGS["sgd"], "--out", run], run, rng.randint(300, T // 2),
                  signal.SIGKILL, rng, [])
    return run, n


def resumed_from(out):
    return int(out.split(" at step ")[1].split()[0])


def fnv1a(b):
    h = 0xcbf29ce484222325
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def journal_bytes(tr, keep, P, S):
    """journal.bin of a whole trajectory, built from the format in src/run/run.h."""
    head = b"PKJOURNL" + struct.pack("<II5Q", 1, 0, tr["T"], tr["N"], P, S, keep)
    out = [head + struct.pack("<I", zlib.crc32(head))]
    for t in range(tr["T"]):
        a, b = int(tr["off"][t]), int(tr["off"][t + 1])
        h = fnv1a(struct.pack("<Q", b - a) + tr["idx"][a:b].astype("<u4").tobytes())
        rec = struct.pack("<QddQ", t + 1, tr["lr"][t], tr["loss"][t], h)
        out.append(rec + struct.pack("<I", zlib.crc32(rec)))
    return b"".join(out)


def test_journal_format_as_documented(killed, reference, tmp_path):
    """The journal a killed run left is, record for record, the one built in
    Python from the format and the uninterrupted run's trajectory; and a
    journal so built lets a run killed after its last step finish."""
    run, n = killed
    ref = reference("sgd")
    want = journal_bytes(read_traj(ref / "trajectory.bin"), KEEP, P_SGD, 0)
    assert len(want) == HDR + T * REC
    assert (run / "journal.bin").read_bytes()[:HDR + n * REC] == want[:HDR + n * REC]
    done = tmp_path / "done"
    shutil.copytree(ref, done)
    (done / "journal.bin").write_bytes(want)
    (done / "trajectory.bin").unlink()
    (done / "steps.csv").unlink()
    meta = json.loads((done / "run.json").read_text())
    meta.update(status="running", steps=0)
    (done / "run.json").write_text(json.dumps(meta))
    out = pk_run("train", "--resume", done).stdout
    assert resumed_from(out) == T and f"held {T} complete steps" in out, out
    same_tree(done, ref)


def test_torn_journal_tail_is_dropped(killed, reference):
    run, n = killed
    j = run / "journal.bin"
    size = HDR + n * REC
    with open(j, "r+b") as f:  # the last record cut short, as a kill in mid-write would leave it
        f.truncate(size - 17)
    out = pk_run("train", "--resume", run).stdout
    assert "19 bytes of a torn or damaged record" in out, out
    assert resumed_from(out) == (n - 1) // KEEP * KEEP
    same_tree(run, reference("sgd"))


def test_damaged_record_is_not_trusted(killed, reference):
    """A flipped bit in a middle record: that record and everything after it
    are dropped; the run continues from the checkpoint before it."""
    run, n = killed
    j = run / "journal.bin"
    m = n // 2                                  # 0-based record: step m + 1
    b = bytearray(j.read_bytes())
    b[HDR + m * REC + 20] ^= 0x04               # inside its batch loss
    j.write_bytes(bytes(b))
    out = pk_run("train", "--resume", run).stdout
    assert resumed_from(out) == m // KEEP * KEEP, out
    assert f"held {m} complete steps" in out
    same_tree(run, reference("sgd"))


def test_damaged_checkpoint_falls_back(killed, reference):
    run, n = killed
    newest = n // KEEP * KEEP
    ck = run / "weights" / f"step-{newest:08d}.pkw"
    b = bytearray(ck.read_bytes())
    b[len(b) // 2] ^= 0x10
    ck.write_bytes(bytes(b))
    out = pk_run("train", "--resume", run).stdout
    assert resumed_from(out) == newest - KEEP, out
    same_tree(run, reference("sgd"))


def one_line_naming(p, what):
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert what in lines[0], lines[0]
    return lines[0]


def test_damaged_journal_header_is_refused(killed):
    run, _ = killed
    j = run / "journal.bin"
    b = bytearray(j.read_bytes())
    b[20] ^= 1                                  # the step count in the header
    j.write_bytes(bytes(b))
    before = tree(run)
    msg = one_line_naming(pk_run("train", "--resume", run, expect=2), str(j))
    assert "header" in msg and "damaged" in msg
    assert tree(run) == before, "a refused resume changed the run"


def test_forged_record_is_refused(killed):
    """A record whose checksum is right but whose learning rate is not the
    run's: not a torn write but a changed file; refused, not trusted."""
    run, n = killed
    j = run / "journal.bin"
    b = bytearray(j.read_bytes())
    o = HDR + 5 * REC
    struct.pack_into("<d", b, o + 8, 0.5)
    struct.pack_into("<I", b, o + 32, zlib.crc32(bytes(b[o:o + 32])))
    j.write_bytes(bytes(b))
    msg = one_line_naming(pk_run("train", "--resume", run, expect=2), str(j))
    assert "step 6" in msg and "does not follow from run.json" in msg


def test_missing_journal_is_refused(killed):
    run, _ = killed
    (run / "journal.bin").unlink()
    one_line_naming(pk_run("train", "--resume", run, expect=2), str(run / "journal.bin"))


def test_changed_data_is_refused(tmp_path):
    data = tmp_path / "d.csv"
    rows = ["%s,%d" % (",".join(str((i * 7 + k) % 5) for k in range(4)), i % 3) for i in range(60)]
    data.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    pk_run("train", "--data", data, "--model", "mlp:4:tanh", "--optim", "sgd", "--batch", 7, "--steps", 50,
           "--quiet", "--out", run)
    mark_running(run)
    data.write_text("\n".join(rows[:-1] + ["1,1,1,1,0"]) + "\n")
    one_line_naming(pk_run("train", "--resume", run, expect=2), str(data))


def mark_running(run):
    """Make a finished run look killed (status running), as run.json is during training."""
    meta = json.loads((run / "run.json").read_text())
    meta["status"] = "running"
    (run / "run.json").write_text(json.dumps(meta))
    (run / "journal.bin").write_bytes(b"")  # whatever: the data check comes first


def test_refusals(tmp_path, reference):
    # not a run
    (tmp_path / "empty").mkdir()
    one_line_naming(pk_run("train", "--resume", tmp_path / "empty", expect=2), "not a run directory")
    # training options come from run.json only
    p = pk_run("train", "--resume", tmp_path / "empty", "--lr", 0.1, expect=2)
    assert "drop --lr" in one_line_naming(p, "--resume")
    p = pk_run("train", "--data", DIGITS, "--resume", tmp_path / "empty", expect=2)
    one_line_naming(p, "drop --data")
    # a diverged run would diverge again
    run = tmp_path / "div"
    pk_run("train", "--data", DIGITS, "--first", 200, "--model", "mlp:16:relu", "--loss", "mse", "--optim", "gd",
           "--lr", 1e3, "--steps", 100, "--quiet", "--out", run, expect=1)
    one_line_naming(pk_run("train", "--resume", run, expect=2), "diverged")
    # a new run into a directory that holds one points at --resume
    ref = reference("sgd")
    p = pk_run("train", *COMMON, *CONFIGS["sgd"], "--out", ref, expect=2)
    one_line_naming(p, f"pathkernel train --resume {ref}")


def test_complete_run_is_left_alone(reference):
    ref = reference("sgd")
    before = tree(ref)
    p = pk_run("train", "--resume", ref)
    assert "already complete" in p.stdout and f"({T} steps)" in p.stdout
    assert tree(ref) == before


# ------------------------------------------------- trajectory.bin's sizes


def test_trajectory_sizes_checked_against_run_json(tmp_path):
    """trajectory.bin declaring another N than run.json (with a valid crc32)
    is refused before anything is sized from it."""
    run = tmp_path / "run"
    pk_run("train", "--data", DIGITS, "--first", 50, "--model", "mlp:4:tanh", "--optim", "gd", "--steps", 3,
           "--quiet", "--out", run)
    tp = run / "trajectory.bin"
    b = bytearray(tp.read_bytes()[:-4])
    struct.pack_into("<Q", b, 24, 2**32 - 1)    # N: every step is full-batch, so N sizes an index table
    tp.write_bytes(bytes(b) + struct.pack("<I", zlib.crc32(bytes(b))))
    t0 = time.monotonic()
    p = pk_run("info", run, expect=1)
    msg = one_line_naming(p, str(tp))
    assert "run.json says 3 and 50" in msg and "4294967295 examples" in msg
    assert time.monotonic() - t0 < 10
