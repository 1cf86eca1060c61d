#!/usr/bin/python3
"""Exact attribution of a whole test set to a whole training set (issue 8).

Setup (defaults): all 60,000 Fashion-MNIST training images (pixels / 255), a
784-256-256-10 tanh MLP, softmax, one epoch of sgd with batch 64 (938 steps,
the last batch 32), lr 0.05, seed 1. Then
    pathkernel attribute RUN --query fashion-mnist:test --top 20 --quad gl2 --out DIR
for all 10,000 test images: for each, the 20 strongest proponents and
opponents among the 60,000 training images of its predicted class, with the
sum over all of them (no queries x examples array is formed).

Measured with /usr/bin/time -v (wall clock, maximum resident set size) for the
whole process, training and attribute alike, with the same thread count.
Reported: wall time and peak memory against the targets (15 minutes, 4 GiB),
and the time per replayed step of attribute against the time per training
step (both whole-process times divided by the steps; attribute replays the
trajectory once per group of queries, every group's steps are counted).

--queries N attributes the first N test images only (for a quick look; the
time is then also extrapolated to 10,000: the replays of the trajectory that
10,000 queries take, one per group of at most 4,096, each timed alone on 8
queries, plus the per-query work, which grows linearly: per step the cost
is queries x batch).

Writes bench/results/scale_bench.json.
--model lenet5 (with --lr) measures LeNet-5 instead of the MLP (issue 11's
scale target: the same setting, under 15 minutes, 4 GiB, both cores busy).

Run:  /usr/bin/python3 bench/scale_bench.py [--queries 10000] [--threads 2] [--model lenet5]
Environment: PK_SOURCE, PK_BUILD as for the other benchmarks.
"""
import argparse
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import FMNIST, write_results  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = pathlib.Path(os.environ.get("PK_SOURCE", HERE.parent))
BUILD = pathlib.Path(os.environ.get("PK_BUILD", SOURCE / "build"))


def timed(cmd, env):
    """(wall seconds, max RSS bytes, stdout, CPU seconds) of a whole process."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + [str(c) for c in cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"scale_bench: {' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) * 1024
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([0-9.]+)", p.stderr).group(1)) for k in ("User", "System"))
    return wall, rss, p.stdout, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--model", default="mlp:256,256:tanh", help="the network (e.g. lenet5) [mlp:256,256:tanh]")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--keep-dir", help="keep the run and the results here")
    ap.add_argument("--out", default=str(HERE / "results" / "scale_bench.json"))
    args = ap.parse_args()
    exe = BUILD / "pathkernel"
    if not exe.is_file():
        sys.exit(f"scale_bench: {exe} not found: build first")
    if not FMNIST.is_dir():
        sys.exit(f"scale_bench: {FMNIST} missing: apt-get install dataset-fashion-mnist")
    work = pathlib.Path(args.keep_dir or tempfile.mkdtemp(prefix="pk_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    run, out = work / "run", work / "attr"
    for p in (run, out):
        shutil.rmtree(p, ignore_errors=True)
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    load0 = os.getloadavg()
    steps = 938
    train_cmd = [exe, "train", "--data", "fashion-mnist:train", "--model", args.model, "--loss", "softmax",
                 "--optim", "sgd", "--batch", 64, "--lr", args.lr, "--steps", steps, "--seed", 1, "--keep", steps,
                 "--quiet", "--threads", args.threads, "--out", run]
    t_train, rss_train, _, _ = timed(train_cmd, env)
    print(f"train: {steps} steps in {t_train:.1f} s ({1000 * t_train / steps:.2f} ms/step), {rss_train / 2**20:.0f} MiB")
    attr_cmd = [exe, "attribute", run, "--query", "fashion-mnist:test", "--first", args.queries, "--top", args.top,
                "--quad", "gl2", "--out", out, "--threads", args.threads, "--quiet"]
    t_attr, rss_attr, stdout, cpu_attr = timed(attr_cmd, env)
    summary = json.loads((out / "summary.json").read_text())
    groups = -(-args.queries // 4096)  # attribute's default: equal groups of at most 4096
    replayed = groups * steps
    res = np.genfromtxt(out / "summary.csv", delimiter=",", names=True)
    moved = np.abs(res["pred"] - res["bias"])
    print(f"attribute: {args.queries} queries x 60000 in {t_attr:.1f} s, {rss_attr / 2**30:.2f} GiB; "
          f"{groups} groups x {steps} steps = {1000 * t_attr / replayed:.1f} ms per replayed step "
          f"({t_attr / replayed / (t_train / steps):.1f}x a training step); CPU time over wall time "
          f"{cpu_attr / t_attr:.2f}; max |residual| {summary['max_abs_residual']:.3g}")
    # fewer queries: 10,000 take ceil(10000 / 4096) replays of the trajectory
    # (one per group, measured alone on 8 queries) plus the per-query work
    full, t_replay = t_attr, None
    if args.queries < 10000:
        shutil.rmtree(out, ignore_errors=True)
        few = list(attr_cmd)
        few[few.index("--first") + 1] = 8
        t_replay = timed(few, env)[0]
        per_query = max(t_attr - groups * t_replay, 0.0) / args.queries
        full = -(-10000 // 4096) * t_replay + 10000 * per_query
        print(f"one replay alone (8 queries): {t_replay:.1f} s; per query {1000 * per_query:.1f} ms")
    doc = {
        "benchmark": "scale_bench",
        "task": {"train": f"fashion-mnist:train (60000), {args.model}, softmax, sgd batch 64, lr {args.lr}, 938 steps",
                 "queries": f"fashion-mnist:test first {args.queries}", "top": args.top, "quad": "gl2",
                 "threads": args.threads},
        "environment": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_before": load0,
                        "loadavg_after": os.getloadavg(), "OMP_WAIT_POLICY": "passive"},
        "train": {"seconds": t_train, "max_rss_bytes": rss_train, "ms_per_step": 1000 * t_train / steps},
        "attribute": {"seconds": t_attr, "max_rss_bytes": rss_attr, "groups": groups,
                      "ms_per_replayed_step": 1000 * t_attr / replayed, "cpu_over_wall": cpu_attr / t_attr,
                      "replayed_step_over_training_step": (t_attr / replayed) / (t_train / steps),
                      "max_abs_residual": summary["max_abs_residual"],
                      "median_abs_pred_minus_bias": float(np.median(moved)),
                      "seconds_for_10000_queries": full, "seconds_8_queries": t_replay},
        "targets": {"seconds": 900, "bytes": 4 * 2**30,
                    "met": bool(full <= 900 and rss_attr <= 4 * 2**30)},
    }
    write_results(args.out, doc)
    print(f"10,000 queries: {full / 60:.1f} min (target 15), peak {rss_attr / 2**30:.2f} GiB (target 4): "
          f"{'met' if doc['targets']['met'] else 'NOT met'}")
    if not args.keep_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
