"""Real write failures: every command that writes reports a failed write with
the path and the system's reason, exits 1, leaves no half-written file under
the final name and no temporary file, and never damages what was there before.

The failures are real, not simulated:

* EFBIG  -- RLIMIT_FSIZE set in the child (SIGXFSZ ignored): the write that
            crosses the limit fails in the middle of the largest output file;
* EACCES -- the CLI run as nobody (setpriv) against a 0555 directory (as root,
            chmod alone does not stop a write); a plain 0555 directory when
            the tests do not run as root;
* ENOSPC -- a small tmpfs filled up to a little less than the output needs;
* EROFS  -- a read-only bind mount.

EFBIG and EACCES run everywhere (CI is a fresh Debian 12 container as root);
ENOSPC and EROFS need mount and skip, saying so, where it is not permitted.

Each case runs twice: into a fresh name (nothing may appear under it) and over
a previous output (it must stay byte for byte as it was). Exit status 1 for
every write failure: the output location is not the command's input data.
"""
import errno
import hashlib
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import tempfile

import numpy as np
import pytest

from pkutil import pk_exe

SENTINEL = b"previous output: must survive a failed write\n"
ERRTEXT = {errno.EFBIG: "File too large", errno.EACCES: "Permission denied",
           errno.ENOSPC: "No space left on device", errno.EROFS: "Read-only file system"}
IS_ROOT = os.geteuid() == 0


# ------------------------------------------------------------------ setup

@pytest.fixture(scope="module")
def world():
    """A directory everyone may read (pytest's tmp_path is 0700 under root,
    and the EACCES cases run the CLI as nobody): data, queries and a run."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="pk-faults-"))
    base.chmod(0o755)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((120, 6))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    np.savetxt(base / "data.csv", np.c_[x, y], delimiter=",", fmt="%.6f")
    np.savetxt(base / "query.csv", np.c_[x[:10], y[:10]], delimiter=",", fmt="%.6f")
    run = base / "run"
    p = subprocess.run([str(pk_exe())] + train_args(base, run), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    k = np.exp(-((x[:, None, :] - x[None, :, :]) ** 2).sum(-1) / 12.0)
    np.save(base / "K.npy", k)
    np.save(base / "Y.npy", np.eye(3)[y])
    np.save(base / "KQ.npy", k[:10])
    yield base
    for d, _, _ in os.walk(base):
        os.chmod(d, 0o755)
    shutil.rmtree(base, ignore_errors=True)


def train_args(w, out):
    return ["train", "--data", w / "data.csv", "--model", "mlp:8:tanh", "--loss", "softmax", "--optim",
            "sgd", "--batch", "16", "--lr", "0.1", "--steps", "40", "--keep", "10", "--out", out, "--quiet"]


SMALL_NET = ["--model", "mlp:8:tanh", "--loss", "softmax", "--optim", "sgd", "--batch", "16", "--lr", "0.1",
             "--steps", "40"]

# (name, kind, argv(world, out)): kind "file" or "dir" is what --out names;
# "run" is train's run directory. demo, compare, mislabel and convergence
# write a directory that holds runs (placed file by file as training goes):
# a failure removes the runs and the --out directory they made, and leaves
# whatever the directory held before as it was.
COMMANDS = [
    ("train", "run", train_args),
    ("explain", "dir", lambda w, o: ["explain", w / "run", "--query", w / "query.csv", "--mode", "full", "--out", o]),
    ("kernel", "file", lambda w, o: ["kernel", w / "run", "--x", w / "data.csv", "--out", o]),
    ("attribute", "file", lambda w, o: ["attribute", w / "run", "--query", w / "query.csv", "--out", o]),
    ("weights", "dir", lambda w, o: ["weights", w / "run", "--out", o]),
    ("report", "file", lambda w, o: ["report", w / "run", "--out", o]),
    ("export-libsvm", "dir", lambda w, o: ["export-libsvm", w / "run", "--kernel", "tangent-final",
                                           "--query", w / "query.csv", "--out", o]),
    ("predict", "file", lambda w, o: ["predict", w / "run", "--data", w / "data.csv", "--out", o]),
    ("selfinfluence", "file", lambda w, o: ["selfinfluence", w / "run", "--out", o]),
    ("ntk", "file", lambda w, o: ["ntk", "--model", "mlp:16:relu", "--x", w / "data.csv", "--out", o]),
    ("krr", "dir", lambda w, o: ["krr", "--kernel", w / "K.npy", "--targets", w / "Y.npy",
                                 "--query-kernel", w / "KQ.npy", "--out", o]),
    ("demo", "dir", lambda w, o: ["demo", "--out", o]),  # the embedded digits, about 5 s of CPU
    ("compare", "dir", lambda w, o: ["compare", "--data", w / "data.csv", "--test", w / "query.csv", *SMALL_NET,
                                     "--widths", "4,16", "--out", o]),
    ("mislabel", "dir", lambda w, o: ["mislabel", "--data", w / "data.csv", "--flip", "0.1", *SMALL_NET, "--quiet",
                                      "--out", o]),
    # six rules: convergence.csv is the largest file, so that EFBIG hits it after the runs
    ("convergence", "dir", lambda w, o: ["convergence", "--data", w / "data.csv", "--query", w / "query.csv",
                                         "--model", "mlp:8:tanh", "--loss", "softmax", "--optim", "gd", "--time", "1",
                                         "--lrs", "0.4,0.3,0.2,0.1", "--rules", "left,mid,gl1,gl2,gl3,gl4",
                                         "--out", o]),
]
OUT_NAME = {"kernel": "K.npy", "ntk": "ntk.npy", "attribute": "attr.csv", "report": "report.html", "predict": "pred.npy",
            "selfinfluence": "si.csv"}
IDS = [c[0] for c in COMMANDS]


def out_path(loc, name):
    return loc / OUT_NAME.get(name, "out")


def files_under(p):
    p = pathlib.Path(p)
    if p.is_file():
        return {p.name: p}
    return {str(f.relative_to(p)): f for f in sorted(p.rglob("*")) if f.is_file()}


def digest(p):
    return {k: hashlib.sha256(f.read_bytes()).hexdigest() for k, f in files_under(p).items()}


@pytest.fixture(scope="module")
def reference(world):
    """What each command writes when nothing fails: {name: {file: size}}."""
    ref = {}
    base = world / "reference"
    base.mkdir()
    for name, kind, argv in COMMANDS:
        out = out_path(base / name, name)
        out.parent.mkdir()
        p = subprocess.run([str(pk_exe())] + [str(a) for a in argv(world, out)], capture_output=True, text=True)
        assert p.returncode == 0, (name, p.stderr)
        sizes = {k: f.stat().st_size for k, f in files_under(out).items()}
        assert sizes and max(sizes.values()) > 0, name
        ref[name] = sizes
    return ref


def place_previous(out, kind):
    """A previous output under the final name: a file, or a directory of the
    same file names; returns its digest."""
    if kind == "file":
        out.write_bytes(SENTINEL)
    elif kind == "dir":
        out.mkdir()
        for n in ("pred.npy", "contrib.npy", "W1.npy", "b2.npy", "train.svm", "query.svm", "alpha.npy",
                  "summary.json"):
            (out / n).write_bytes(SENTINEL)
    return digest(out)


# ------------------------------------------------------------ injections

def can_mount():
    if not IS_ROOT or not shutil.which("mount"):
        return False
    d = tempfile.mkdtemp(prefix="pk-mount-probe-")
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", d], check=True)
        return ok
    finally:
        os.rmdir(d)


MOUNT_OK = can_mount()
needs_mount = pytest.mark.skipif(not MOUNT_OK, reason="mount is not permitted here (not root, or no "
                                 "CAP_SYS_ADMIN in this container): the ENOSPC/EROFS cases need a tmpfs / bind mount")


def fsize_limit(limit):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def fill(fs_dir, room):
    """Fill the filesystem of fs_dir, then free `room` bytes (whole pages)."""
    filler = fs_dir / ".filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - room // 4096 * 4096))


class Fault:
    """Sets up `loc` (the directory that holds the output) so that writing
    there fails with `err`; run() runs the CLI under it."""

    def __init__(self, err, world, ref_sizes):
        self.err, self.world, self.largest = err, world, max(ref_sizes.values())
        self.loc = pathlib.Path(tempfile.mkdtemp(prefix="pk-fault-", dir=world))
        self.loc.chmod(0o755)
        self.mounted = False

    def prepare(self, previous):
        """Before the fault is armed: write the previous output (a callable)."""
        if self.err == errno.ENOSPC:
            # small tmpfs: room for the previous output and a little less than the largest file
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(self.loc)], check=True)
            self.mounted = True
        result = previous()
        if self.err == errno.ENOSPC:
            fill(self.loc, self.largest // 2)
        elif self.err == errno.EROFS:
            subprocess.run(["mount", "--bind", str(self.loc), str(self.loc)], check=True)
            self.mounted = True
            subprocess.run(["mount", "-o", "remount,bind,ro", str(self.loc)], check=True)
        elif self.err == errno.EACCES:
            for d, _, _ in os.walk(self.loc):
                os.chmod(d, 0o555)
        return result

    def run(self, argv):
        cmd = [str(pk_exe())] + [str(a) for a in argv]
        pre = None
        if self.err == errno.EFBIG:
            pre = fsize_limit(max(1, self.largest // 2))
        elif self.err == errno.EACCES and IS_ROOT:
            cmd = NOBODY + [str(nobody_exe(self.world))] + cmd[1:]
        return subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pre, timeout=120)

    def disarm(self):
        """Lift the fault (the tmpfs stays mounted until cleanup, for the checks)."""
        if self.mounted and self.err == errno.EROFS:
            subprocess.run(["umount", str(self.loc)], check=True)
            self.mounted = False
        if self.err == errno.EACCES:
            for d, _, _ in os.walk(self.loc):
                os.chmod(d, 0o755)
        if self.err == errno.ENOSPC:
            (self.loc / ".filler").unlink()

    def cleanup(self):
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.loc)], check=False)
        shutil.rmtree(self.loc, ignore_errors=True)


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def nobody_exe(world):
    """A copy of the CLI that nobody may run: the build tree may sit under a
    0700 home directory (the CLI links the library statically). The demo's
    data goes beside it as in the build tree (share/pathkernel)."""
    exe = world / "pathkernel"
    if not exe.exists():
        shutil.copy2(pk_exe(), exe)
        exe.chmod(0o755)
        data = world / "share" / "pathkernel" / "digits.csv.gz"
        data.parent.mkdir(parents=True)
        shutil.copy2(pk_exe().parent / "share" / "pathkernel" / "digits.csv.gz", data)
        for d in (data.parent.parent, data.parent):
            d.chmod(0o755)
        data.chmod(0o644)
        p = subprocess.run(NOBODY + [str(exe), "--version"], capture_output=True, text=True)
        assert p.returncode == 0, f"nobody cannot run {exe}: {p.stderr}"
    return exe


FAULTS = [
    pytest.param(errno.EFBIG, id="EFBIG-rlimit"),
    pytest.param(errno.EACCES, id="EACCES-nobody",
                 marks=pytest.mark.skipif(IS_ROOT and not shutil.which("setpriv"),
                                          reason="setpriv (util-linux) is needed to drop root")),
    pytest.param(errno.ENOSPC, id="ENOSPC-tmpfs", marks=needs_mount),
    pytest.param(errno.EROFS, id="EROFS-robind", marks=needs_mount),
]


def temp_files(loc):
    return [str(f) for f in pathlib.Path(loc).rglob("*") if ".tmp." in f.name]


def check_failure(p, err, out):
    assert p.returncode >= 0, f"killed by signal {-p.returncode}: {p.stderr}"
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, f"not one line: {p.stderr!r}"
    assert str(out) in lines[0], f"{out} not named: {lines[0]}"
    assert ERRTEXT[err] in lines[0], f"{ERRTEXT[err]!r} not in: {lines[0]}"
    print(f"\nFAULT {errno.errorcode[err]} exit {p.returncode}: {lines[0]}")


# ----------------------------------------------------------------- tests

@pytest.mark.parametrize("err", FAULTS)
@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "over-previous"])
@pytest.mark.parametrize("name,kind,argv", COMMANDS, ids=IDS)
def test_write_failure(world, reference, name, kind, argv, previous, err):
    if kind == "run" and previous:
        pytest.skip("train refuses a directory that holds a run (exit 2) before writing anything; "
                    "test_train_failure_keeps_other_runs covers a run beside the new one")
    f = Fault(err, world, reference[name])
    try:
        out = out_path(f.loc, name)
        before = f.prepare(lambda: place_previous(out, kind) if previous else None)
        p = f.run(argv(world, out))
        f.disarm()
        check_failure(p, err, out)
        assert temp_files(f.loc) == [], "temporary files left behind"
        if previous:
            assert digest(out) == before, "the previous output was changed"
        elif kind == "file":
            assert not out.exists(), "a file appeared under the final name"
        elif kind == "dir":  # a directory the command made is removed again
            assert not out.exists(), f"{out} was left behind: {sorted(files_under(out))}"
        else:
            check_run_not_trusted(world, out)
    finally:
        f.cleanup()


def check_run_not_trusted(world, run):
    """A run whose training hit a write error is refused by later commands."""
    if not run.exists():
        return
    for argv in (["info", run], ["predict", run, "--data", world / "query.csv", "--out", world / "never.npy"]):
        p = subprocess.run([str(pk_exe())] + [str(a) for a in argv], capture_output=True, text=True)
        assert p.returncode in (1, 2), (argv, p.returncode, p.stdout, p.stderr)
        assert str(run) in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    assert not (world / "never.npy").exists()


@pytest.mark.parametrize("name", ["demo", "compare", "mislabel", "convergence"])
def test_over_an_earlier_output_of_its_own(world, reference, name):
    """--out DIR holding an earlier output of the same command. demo runs
    again into the same DIR: made to fail after training (EFBIG at
    explain/contrib.npy), it puts the earlier run back. compare, mislabel and
    convergence refuse a run directory that holds a run (exit 2) and must not
    have written anything before (mislabel wrote data_x/data_y.npy first)."""
    argv = {c[0]: c[2] for c in COMMANDS}[name]
    f = Fault(errno.EFBIG, world, reference[name])
    try:
        out = f.loc / "out"
        p = subprocess.run([str(pk_exe())] + [str(a) for a in argv(world, out)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        if name == "demo":  # the demo is deterministic: mark the earlier run, so that a rewritten one shows
            (out / "run" / "steps.csv").write_bytes(SENTINEL)
        before = digest(out)
        if name == "demo":
            check_failure(f.run(argv(world, out)), errno.EFBIG, out)
        else:
            again = argv(world, out) + (["--flip-seed", "5"] if name == "mislabel" else [])  # other labels
            p = subprocess.run([str(pk_exe())] + [str(a) for a in again], capture_output=True, text=True)
            assert p.returncode == 2, (p.returncode, p.stderr)
            assert len(p.stderr.splitlines()) == 1 and "already holds a run" in p.stderr, p.stderr
        assert digest(out) == before, "the earlier output was changed"
        assert temp_files(f.loc) == []
    finally:
        f.cleanup()


@pytest.mark.parametrize("err", FAULTS)
def test_train_failure_keeps_other_runs(world, reference, err):
    """Training into a new directory that fails leaves a complete run beside it as it was."""
    f = Fault(err, world, reference["train"])
    try:
        prev = f.loc / "prev"
        before = f.prepare(lambda: (shutil.copytree(world / "run", prev), digest(prev))[1])
        p = f.run(train_args(world, f.loc / "new"))
        f.disarm()
        check_failure(p, err, f.loc / "new")
        assert digest(prev) == before
        assert subprocess.run([str(pk_exe()), "info", prev], capture_output=True).returncode == 0
        assert temp_files(f.loc) == []
        check_run_not_trusted(world, f.loc / "new")
    finally:
        f.cleanup()


@needs_mount
def test_train_enospc_in_the_middle(world):
    """The disk fills up after the first checkpoints: train stops with the
    path and ENOSPC, and the run it leaves is refused by later commands."""
    loc = pathlib.Path(tempfile.mkdtemp(prefix="pk-fault-", dir=world))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(loc)], check=True)
    try:
        fill(loc, 3 * 4096)  # run.json, standardize/step 0, then no more
        run = loc / "run"
        p = subprocess.run([str(pk_exe())] + [str(a) for a in train_args(world, run)],
                           capture_output=True, text=True, timeout=120)
        (loc / ".filler").unlink()
        check_failure(p, errno.ENOSPC, run)
        assert (run / "run.json").exists(), "the failure should come after training started"
        assert temp_files(loc) == []
        check_run_not_trusted(world, run)
    finally:
        subprocess.run(["umount", "-l", str(loc)], check=False)
        shutil.rmtree(loc, ignore_errors=True)


def test_efbig_hits_the_middle_of_a_large_write(world, reference, tmp_path):
    """The rlimit cuts a large write short: a 120 x 120 x 3 x 3 kernel is
    ~1 MiB, the limit 64 KiB."""
    assert reference["kernel"]["K.npy"] > 8 * 65536
    f = Fault(errno.EFBIG, world, {"K.npy": 2 * 65536})
    try:
        out = f.loc / "K.npy"
        p = f.run(["kernel", world / "run", "--x", world / "data.csv", "--out", out])
        check_failure(p, errno.EFBIG, out)
        assert not out.exists() and temp_files(f.loc) == []
    finally:
        f.cleanup()


@pytest.mark.parametrize("case", ["is-a-directory", "missing-parent"])
def test_bad_output_names(world, tmp_path, case):
    """--out naming a directory, or a file in a directory that does not exist:
    the same one-line failure, nothing left behind."""
    if case == "is-a-directory":
        out, text = tmp_path / "adir", "Is a directory"
        out.mkdir()
    else:
        out, text = tmp_path / "no" / "such" / "pred.npy", "No such file or directory"
    p = subprocess.run([str(pk_exe()), "predict", world / "run", "--data", world / "query.csv", "--out", out],
                       capture_output=True, text=True)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert len(p.stderr.splitlines()) == 1 and str(out) in p.stderr and text in p.stderr, p.stderr
    assert temp_files(tmp_path) == []
    assert out.is_dir() if case == "is-a-directory" else not out.parent.exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_stdout_on_a_full_disk(world):
    """What a command prints is output too: `info RUN > /dev/full` fails."""
    with open("/dev/full", "w") as full:
        p = subprocess.run([str(pk_exe()), "info", world / "run"], stdout=full, stderr=subprocess.PIPE, text=True)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert p.stderr == "pathkernel info: writing standard output failed: No space left on device\n", p.stderr
