"""The paper's path kernel against one tangent kernel: `pathkernel kernel
--at path` (sum over 300 steps x the quadrature nodes of tangent kernels,
MATH.md section 3) and `pathkernel kernel --at final` (one tangent kernel),
1,000 x 1,000 digits (the training set against itself), whole processes,
wall-clock and CPU seconds (user + system of the child), medians.

    /usr/bin/python3 bench/path_kernel_bench.py                 # trace x 3, full x 1: about 8 minutes on 2 cores
    /usr/bin/python3 bench/path_kernel_bench.py --modes trace   # about 1 minute
"""
import argparse
import ctypes
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import write_results  # noqa: E402

TREE = pathlib.Path(__file__).resolve().parents[1]
DIGITS = TREE / "data" / "digits.csv.gz"


def timed(cmd, env):
    """(wall seconds, CPU seconds of the child) of one run of cmd."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{p.stdout}{p.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def openblas_core():
    """The OpenBLAS kernel pathkernel's OpenBLAS picks here (OPENBLAS_CORETYPE as set)."""
    for path in ("/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0",
                 "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"):
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            return lib.openblas_get_corename().decode()
        except (OSError, AttributeError):
            pass
    return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pathkernel", default=str(pathlib.Path(os.environ.get("PK_BUILD", TREE / "build")) / "pathkernel"))
    ap.add_argument("--n", type=int, default=1000, help="examples [1000]")
    ap.add_argument("--steps", type=int, default=300, help="sgd steps [300]")
    ap.add_argument("--quad", default="gl2", help="quadrature rule of the path kernel [gl2]")
    ap.add_argument("--modes", default="trace,full", help="kernel modes [trace,full]")
    ap.add_argument("--repeats", default="3,1", help="repeats per mode, in the order of --modes [3,1]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(TREE / "bench" / "results" / "path_kernel_bench.json"))
    a = ap.parse_args()
    modes = a.modes.split(",")
    reps = [int(r) for r in a.repeats.split(",")]
    reps += [reps[-1]] * (len(modes) - len(reps))
    env = dict(os.environ)
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        tmp = pathlib.Path(tmp)
        data = np.loadtxt(DIGITS, delimiter=",")[: a.n]
        np.save(tmp / "x.npy", data[:, :-1])
        np.save(tmp / "y.npy", data[:, -1].astype(np.int64))
        spec = f"npy:{tmp / 'x.npy'},{tmp / 'y.npy'}"
        run = tmp / "run"
        subprocess.run([a.pathkernel, "train", "--data", spec, "--standardize", "--model", "mlp:64:tanh", "--loss",
                        "softmax", "--optim", "sgd", "--batch", "64", "--lr", "0.1", "--steps", str(a.steps),
                        "--seed", "0", "--quiet", "--out", run], check=True, capture_output=True)
        nodes = 1 if a.quad in ("left", "mid") else int(a.quad[2:])
        for mode, rep in zip(modes, reps):
            res = {"final": [], "path": []}
            for _ in range(rep):  # interleaved: the two see the same machine
                for at in ("final", "path"):
                    cmd = [a.pathkernel, "kernel", run, "--at", at, "--quad", a.quad, "--x", spec, "--mode", mode,
                           "--threads", str(a.threads), "--out", tmp / "K.npy"]
                    res[at].append(timed(cmd, env))
                    (tmp / "K.npy").unlink()
            med = {at: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for at, v in res.items()}
            row = {"mode": mode, "repeats": rep, "final_wall_s": med["final"][0], "final_cpu_s": med["final"][1],
                   "path_wall_s": med["path"][0], "path_cpu_s": med["path"][1],
                   "ratio_wall": med["path"][0] / med["final"][0], "ratio_cpu": med["path"][1] / med["final"][1],
                   "path_cores_used": med["path"][1] / med["path"][0],
                   "path_wall_per_node_s": med["path"][0] / (a.steps * nodes),
                   "tangent_kernels": a.steps * nodes, "all": res}
            rows.append(row)
    print(f"{a.n} x {a.n} digits, mlp:64:tanh (C = 10), {a.steps} sgd steps, --quad {a.quad} "
          f"({a.steps * nodes} tangent kernels), {a.threads} threads, OpenBLAS kernel {openblas_core()}")
    print(f"{'mode':6} {'rep':>3} {'final wall':>10} {'final cpu':>10} {'path wall':>10} {'path cpu':>10} "
          f"{'ratio wall':>10} {'ratio cpu':>10} {'cores':>6} {'per node':>9}")
    for r in rows:
        print(f"{r['mode']:6} {r['repeats']:3d} {r['final_wall_s']:10.3f} {r['final_cpu_s']:10.3f} "
              f"{r['path_wall_s']:10.2f} {r['path_cpu_s']:10.2f} {r['ratio_wall']:10.1f} {r['ratio_cpu']:10.1f} "
              f"{r['path_cores_used']:6.2f} {r['path_wall_per_node_s']:9.4f}")
    doc = {"n": a.n, "steps": a.steps, "quad": a.quad, "threads": a.threads, "model": "mlp:64:tanh",
           "openblas_core": openblas_core(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
           "cpus": os.cpu_count(), "loadavg_before": load0, "loadavg_after": os.getloadavg(), "rows": rows}
    write_results(a.out, doc)


if __name__ == "__main__":
    main()
