"""A query's result does not depend on which other queries share its group,
its block of products, its MPI rank or the memory budget: the output files
are byte-identical, on the OpenBLAS kernel the machine picks and on
Haswell's (some machines set OPENBLAS_CORETYPE=Haswell; the two kernels
treat the rows of a product differently, see pk_gemm_rows in the library)."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import SOURCE_DIR
from pkutil import pk_exe

DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"
Q = 7  # queries: groups of 2 and 3 leave a short last group


def has_avx2():
    try:
        return " avx2" in open("/proc/cpuinfo").read()
    except OSError:
        return False


def env_for(kernel):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if kernel != "default":
        env["OPENBLAS_CORETYPE"] = kernel
    return env


@pytest.fixture(params=["default", "Haswell"])
def kernel(request):
    if request.param == "Haswell" and not has_avx2():
        pytest.skip("Haswell's kernels need AVX2, which this CPU lacks")
    return request.param


def cli(kernel, *args):
    cmd = [str(pk_exe())] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env_for(kernel))
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def train(kernel, d, optim):
    extra = {"sgd": ["--optim", "sgd", "--batch", "40"],
             "momentum": ["--optim", "momentum", "--momentum", "0.9", "--batch", "40"]}[optim]
    run = d / f"run-{optim}"
    cli(kernel, "train", "--data", DIGITS, "--first", 240, "--standardize", "--model", "mlp:12,8:tanh", "--loss",
        "softmax", "--lr", "0.05", "--steps", 14, "--seed", 3, "--quiet", *extra, "--out", run)
    return run


def files(d):
    """Every output file's bytes (the summary's timing lines excepted)."""
    out = {}
    for p in sorted(d.iterdir()):
        if p.name == "summary.json":
            summary = json.loads(p.read_text())
            assert summary.pop("seconds") >= 0
            summary.pop("ranks", None)  # how many processes did it: not a result
            out[p.name] = summary
        elif p.is_file():
            out[p.name] = p.read_bytes()
    assert out, f"{d} is empty"
    return out


def assert_same(a, b):
    fa, fb = files(a), files(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], f"{a.name} and {b.name} differ in {name}"


QUERY = ["--query", DIGITS, "--first", Q]


@pytest.mark.parametrize("optim", ["sgd", "momentum"])
def test_attribute_groups_blocks_and_budgets(tmp_path, kernel, optim):
    """Groups of 1, 2, 3 and all queries, blocks of 1 and 4 queries, and two
    --mem budgets: the same bytes in every file."""
    run = train(kernel, tmp_path, optim)
    ref = tmp_path / "all"
    cli(kernel, "attribute", run, *QUERY, "--top", 5, "--group", Q, "--out", ref, "--quiet")
    variants = [("--group", 1), ("--group", 2), ("--group", 3), ("--block", 1), ("--block", 4),
                ("--mem", 1), ("--mem", 64)]
    for opt, val in variants:
        out = tmp_path / f"{opt[2:]}-{val}"
        cli(kernel, "attribute", run, *QUERY, "--top", 5, opt, val, "--out", out, "--quiet")
        assert_same(out, ref)


@pytest.mark.parametrize("optim", ["sgd", "momentum"])
def test_explain_blocks_and_budgets(tmp_path, kernel, optim):
    """explain in one group and in groups a small --mem forces, and in blocks
    of 1 and 3 queries: byte-identical contributions, kernels, predictions."""
    run = train(kernel, tmp_path, optim)
    ref = tmp_path / "one"
    cli(kernel, "explain", run, *QUERY, "--mode", "full", "--out", ref)
    budget = {"sgd": 1, "momentum": 2}[optim]  # MiB: less than all the outputs, more than one query's
    for opt, val in (("--block", 1), ("--block", 3), ("--mem", budget)):
        out = tmp_path / f"{opt[2:]}-{val}"
        printed = cli(kernel, "explain", run, *QUERY, "--mode", "full", opt, val, "--out", out)
        if opt == "--mem":
            assert "groups of" in printed  # the budget did split the queries
        for name in ("pred.npy", "bias.npy", "contrib.npy", "kernel.npy", "regularisation.npy"):
            assert (out / name).read_bytes() == (ref / name).read_bytes(), f"{opt} {val}: {name} differs"


def test_mpi_ranks(tmp_path, kernel):
    """Two MPI ranks, each taking every other group, write what one process does."""
    exe = shutil.which("mpirun")
    if not exe:
        pytest.skip("mpirun is not installed (scripts/deps.sh installs openmpi-bin)")
    run = train(kernel, tmp_path, "sgd")
    one, two = tmp_path / "np1", tmp_path / "np2"
    cli(kernel, "attribute", run, *QUERY, "--top", 5, "--group", 2, "--out", one, "--quiet")
    env = dict(env_for(kernel), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", ASAN_OPTIONS="detect_leaks=0")
    export = ["-x", "OPENBLAS_CORETYPE"] if kernel != "default" else []  # the kernel reaches every rank
    cmd = [exe, "-np", "2", "--oversubscribe", *export, str(pk_exe()), "attribute", str(run), *map(str, QUERY), "--top", "5", "--group", "2", "--out", str(two)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 MPI ranks" in p.stdout, "the binary was built without MPI (cmake found no libopenmpi-dev?)"
    assert_same(two, one)
