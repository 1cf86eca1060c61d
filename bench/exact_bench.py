#!/usr/bin/env python3
"""The exact rule (MATH.md section 12) against the Gauss-Legendre rules:
error of `verify` and cost of `explain` / `verify`, with the mean pieces per
query and step.

  digits    mlp:64:relu on 1,000 noisy digits (data/digits.csv.gz, pixels / 16
            plus N(0, 0.25^2) noise, seed 0), sgd lr 0.1 batch 64, 300 steps;
            verify on 100 queries with every rule; explain (contributions
            only, with the paper's kernel, with the contribution kernel) with
            gl4 and exact, REPEATS times interleaved, medians.
  fashion   784-256-256-10 ReLU MLP, one sgd epoch (lr 0.1, batch 64, 157 steps)
            on the first 10,000 Fashion-MNIST training images; verify on the
            first --queries (1,000) test images with gl4 and exact, then
            explain's contributions (--no-kernel) with both, REPEATS times
            interleaved, medians.
  lenet     the same data and steps with LeNet-5 on ReLU and max pooling
            (conv:6,5,pad=2;relu;maxpool:2;conv:16,5;relu;maxpool:2;flatten;
            dense:120;relu;dense:84;relu;dense); verify on --lenet-queries.

usage: bench/exact_bench.py [--build DIR] [--work DIR] [--repeats R] [--queries Q]
                            [--lenet-queries Q] [--only digits,fashion,lenet]
Timings are wall (and CPU) seconds of the CLI (2 threads unless --threads);
the machine's load is printed with them.
"""
import argparse
import gzip
import json
import os
import pathlib
import statistics
import subprocess
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
LENET = "conv:6,5,pad=2;relu;maxpool:2;conv:16,5;relu;maxpool:2;flatten;dense:120;relu;dense:84;relu;dense"


def run(pk, *args, cpu=False):
    t, c = time.time(), os.times()
    p = subprocess.run([str(pk)] + [str(a) for a in args], capture_output=True, text=True)
    if p.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(map(str, args))}: exit {p.returncode}\n{p.stderr}")
    c2 = os.times()
    if cpu:
        return p.stdout, time.time() - t, (c2.children_user - c.children_user) + (c2.children_system - c.children_system)
    return p.stdout, time.time() - t


def explain_times(pk, rund, query, first, threads, repeats, work, kernel):
    """explain with gl4 and exact, interleaved, repeats times: medians of wall and CPU seconds."""
    times = {q: ([], []) for q in ("gl4", "exact")}
    kern = ["--no-kernel"] if kernel == "none" else ["--kernel", kernel]
    for _ in range(repeats):
        for q in ("gl4", "exact"):
            _, sec, cpu = run(pk, "explain", rund, "--query", query, "--first", first, "--quad", q, *kern,
                              "--threads", threads, "--out", work / f"e-{q}", cpu=True)
            times[q][0].append(sec)
            times[q][1].append(cpu)
    med = {q: (statistics.median(w), statistics.median(c)) for q, (w, c) in times.items()}
    g, e = med["gl4"], med["exact"]
    print(f"explain {first} queries, kernel {kernel}: gl4 {g[0]:.2f} s wall / {g[1]:.2f} s CPU, exact {e[0]:.2f} s "
          f"/ {e[1]:.2f} s (medians of {repeats}, interleaved; exact / gl4 = {e[0] / g[0]:.2f} wall, "
          f"{e[1] / g[1]:.2f} CPU; load {load():.1f})")


def verify(pk, rund, query, first, quad, threads):
    out, sec = run(pk, "verify", rund, "--query", query, "--first", first, "--quad", quad, "--json",
                   "--threads", threads)
    return json.loads(out), sec


def load():
    return os.getloadavg()[0]


def digits(pk, work, repeats, threads):
    raw = np.loadtxt(gzip.open(ROOT / "data" / "digits.csv.gz", "rt"), delimiter=",")
    x = np.ascontiguousarray(raw[:1000, :-1] / 16.0 + np.random.default_rng(0).normal(0, 0.25, (1000, 64)))
    np.save(work / "dx.npy", x)
    np.save(work / "dy.npy", np.ascontiguousarray(raw[:1000, -1].astype(np.int64)))
    data = f"npy:{work / 'dx.npy'},{work / 'dy.npy'}"
    runD = work / "digits-run"
    if not runD.exists():
        run(pk, "train", "--data", data, "--model", "mlp:64:relu", "--optim", "sgd", "--lr", "0.1", "--batch", "64",
            "--steps", "300", "--out", runD, "--quiet")
    print("digits: mlp:64:relu, 1,000 noisy digits, sgd lr 0.1 batch 64, 300 steps; verify on 100 queries")
    print("| rule | max relative error | verify s |")
    print("|---|---|---|")
    for q in ("left", "mid", "gl2", "gl4", "gl8", "exact"):
        v, sec = verify(pk, runD, data, 100, q, threads)
        extra = f" ({v['pieces']:.3f} pieces per query and step)" if "pieces" in v else ""
        print(f"| {q} | {v['max_rel_err']:.2e}{extra} | {sec:.2f} |")
    for kernel in ("none", "path", "path-batch"):
        explain_times(pk, runD, data, 100, threads, repeats, work, kernel)


def fashion_like(pk, work, name, model, queries, threads, repeats=1):
    runF = work / f"{name}-run"
    if not runF.exists():
        run(pk, "train", "--data", "fashion-mnist:train", "--first", 10000, "--model", model, "--optim", "sgd",
            "--lr", "0.1", "--batch", "64", "--steps", "157", "--out", runF, "--quiet")
    print(f"{name}: {model}, one sgd epoch (157 steps, lr 0.1, batch 64) on 10,000 Fashion-MNIST images; "
          f"verify on {queries} test images")
    res = {}
    for q in ("gl4", "exact"):
        v, sec = verify(pk, runF, "fashion-mnist:test", queries, q, threads)
        res[q] = (v, sec)
        extra = f", {v['pieces']:.3f} pieces per query and step, {v['piece_nodes']} nodes each" if "pieces" in v else ""
        print(f"  {q}: max relative error {v['max_rel_err']:.2e}, {sec:.1f} s{extra} (load {load():.1f})")
    print(f"  exact / gl4 time: {res['exact'][1] / res['gl4'][1]:.2f}")
    if name != "lenet":
        explain_times(pk, runF, "fashion-mnist:test", queries, threads, repeats, work, "none")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--work", default="/tmp/pk-exact-bench")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--lenet-queries", type=int, default=20)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--only", default="digits,fashion,lenet")
    a = ap.parse_args()
    pk = pathlib.Path(a.build) / "pathkernel"
    work = pathlib.Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    only = a.only.split(",")
    print(f"{os.cpu_count()} CPUs, load {load():.1f} at the start")
    if "digits" in only:
        digits(pk, work, a.repeats, a.threads)
    if "fashion" in only:
        fashion_like(pk, work, "fashion", "mlp:256,256:relu", a.queries, a.threads, a.repeats)
    if "lenet" in only:
        fashion_like(pk, work, "lenet", LENET, a.lenet_queries, a.threads)


if __name__ == "__main__":
    main()
