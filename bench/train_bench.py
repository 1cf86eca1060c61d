#!/usr/bin/python3
"""Training throughput: pathkernel against PyTorch (float64, CPU).

The task: a 784-256-256-10 tanh MLP, softmax loss, full-batch gradient
descent (lr 0.1) on the first 2,000 Fashion-MNIST training images (pixels /
255, no standardisation), STEPS steps (default 50), with N threads (1 and 2).

  pathkernel  `pathkernel train ... --quiet --threads N` as a whole process,
              timed from outside (data loading, checkpoint writing and the
              final report included, nothing subtracted). Its own
              "T steps in X s" line (the training loop alone, checkpoints
              included) is reported as well.
  PyTorch     the same network from the same step-0 weights (exported from
              the first pathkernel run), data already in memory as float64
              tensors; each step is forward + loss + backward + SGD step.
              torch.set_num_threads(N), and since Debian's torch does its
              float64 matmuls in OpenBLAS (pthread build), whose thread count
              torch does not set, openblas_set_num_threads(N) as well.

Every measurement is repeated REPEATS times (default 3), pathkernel and
PyTorch interleaved so that background load hits both alike; the table
shows medians. Writes bench/results/train_bench.json.

Run:  /usr/bin/python3 bench/train_bench.py [--steps 50] [--repeats 3] [--threads 1,2]
Environment: PK_BUILD (default: build/ next to bench/) locates the pathkernel
binary; OPENBLAS_CORETYPE and the like are passed through untouched.
"""
import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import FMNIST, load_fashion, openblas_handle, write_results  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
MODEL = "mlp:256,256:tanh"
N_TRAIN = 2000
LR = 0.1


def pathkernel_train(exe, workdir, threads, steps, tag, extra=(), env_extra=None):
    out = pathlib.Path(workdir) / f"run-{tag}"
    cmd = [str(exe), "train", "--data", "fashion-mnist:train", "--first", str(N_TRAIN),
           "--model", MODEL, "--loss", "softmax", "--optim", "gd", "--lr", str(LR),
           "--steps", str(steps), "--seed", "0", "--threads", str(threads), "--quiet",
           "--out", str(out), *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env_extra or {})))
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"train_bench: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr}")
    m = re.search(r"(\d+) steps in ([0-9.]+) s", p.stdout)
    fl = re.search(r"final train loss ([0-9.eE+-]+)", p.stdout)
    if not m or int(m.group(1)) != steps:
        sys.exit(f"train_bench: unexpected output of pathkernel train:\n{p.stdout}")
    return {"wall_s": wall, "internal_s": float(m.group(2)), "final_loss": float(fl.group(1)) if fl else None,
            "line": next(l for l in p.stdout.splitlines() if "steps in" in l), "run": out}


def torch_model(w0):
    layers = []
    for i, (W, b) in enumerate(w0):
        lin = torch.nn.Linear(W.shape[1], W.shape[0], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i + 1 < len(w0):
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def torch_train(w0, X, Y, threads, steps, blas):
    """PyTorch's loop: returns its time and the final full-batch loss."""
    torch.set_num_threads(threads)
    if blas is not None:
        blas.openblas_set_num_threads(threads)
    model = torch_model(w0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    lossf = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss = lossf(model(X), Y)
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    with torch.no_grad():
        final = lossf(model(X), Y).item()
    return {"loop_s": secs, "final_loss": final}


def load_w0(wdir):
    return [(np.load(pathlib.Path(wdir) / f"W{l}.npy"), np.load(pathlib.Path(wdir) / f"b{l}.npy")) for l in range(1, 4)]


def torch_worker(wdir, threads, steps):
    """--torch-worker: one PyTorch measurement in a fresh process (after one
    untimed warm-up step), printed as JSON."""
    X_np, Y_np = load_fashion("train", N_TRAIN)
    X, Y = torch.from_numpy(X_np), torch.from_numpy(Y_np)
    blas, _ = openblas_handle()
    w0 = load_w0(wdir)
    torch_train(w0, X, Y, threads, 1, blas)
    print(json.dumps(torch_train(w0, X, Y, threads, steps, blas)))


def torch_child(wdir, threads, steps, env_extra):
    env = dict(os.environ, **env_extra)
    p = subprocess.run([sys.executable, __file__, "--torch-worker", str(wdir), "--threads", str(threads),
                        "--steps", str(steps)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"train_bench: PyTorch worker failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts [1,2]")
    ap.add_argument("--pathkernel", default=str(pathlib.Path(os.environ.get("PK_BUILD", HERE.parent / "build")) / "pathkernel"))
    ap.add_argument("--out", default=str(HERE / "results" / "train_bench.json"))
    ap.add_argument("--keep-variant", action=argparse.BooleanOptionalAction, default=True,
                    help="also time pathkernel with --keep STEPS (no per-step checkpoints) [on]")
    ap.add_argument("--passive-variant", action=argparse.BooleanOptionalAction, default=True,
                    help="also time both with OMP_WAIT_POLICY=passive (PyTorch in a child process) [on]")
    ap.add_argument("--torch-worker", metavar="W0DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args.torch_worker, int(args.threads), args.steps)
    exe = pathlib.Path(args.pathkernel)
    if not exe.is_file():
        sys.exit(f"train_bench: {exe} not found: build first or pass --pathkernel")
    if not FMNIST.is_dir():
        sys.exit(f"train_bench: {FMNIST} missing: apt-get install dataset-fashion-mnist")
    threads = [int(t) for t in args.threads.split(",")]
    steps, R = args.steps, args.repeats

    X_np, Y_np = load_fashion("train", N_TRAIN)
    X, Y = torch.from_numpy(X_np), torch.from_numpy(Y_np)
    blas, blas_path = openblas_handle()
    # libgomp's idle threads spin by default, which can starve OpenBLAS's own
    # threads (torch runs both): measured separately, not applied above.
    passive = args.passive_variant and "OMP_WAIT_POLICY" not in os.environ
    load0 = os.getloadavg()

    results = {}
    with tempfile.TemporaryDirectory(prefix="pk-bench-") as work:
        # the step-0 weights of the pathkernel runs (seed 0), for PyTorch
        first = pathkernel_train(exe, work, threads[0], 1, "init")
        wdir = pathlib.Path(work) / "w0"
        subprocess.run([str(exe), "weights", str(first["run"]), "--step", "0", "--out", str(wdir)],
                       check=True, capture_output=True)
        w0 = load_w0(wdir)
        torch_train(w0, X, Y, threads[0], 2, blas)  # warm torch's allocator and kernels once

        for n in threads:
            rec = {"pathkernel": [], "pathkernel_keep": [], "torch": [], "pathkernel_passive": [], "torch_passive": []}
            for r in range(R):
                pk = pathkernel_train(exe, work, n, steps, f"{n}-{r}")
                rec["pathkernel"].append(pk)
                subprocess.run(["rm", "-rf", str(pk["run"])], check=True)
                if args.keep_variant:
                    pkk = pathkernel_train(exe, work, n, steps, f"{n}-{r}-k", ["--keep", str(steps)])
                    rec["pathkernel_keep"].append(pkk)
                    subprocess.run(["rm", "-rf", str(pkk["run"])], check=True)
                rec["torch"].append(torch_train(w0, X, Y, n, steps, blas))
                if passive:
                    pkp = pathkernel_train(exe, work, n, steps, f"{n}-{r}-p", env_extra={"OMP_WAIT_POLICY": "passive"})
                    rec["pathkernel_passive"].append(pkp)
                    subprocess.run(["rm", "-rf", str(pkp["run"])], check=True)
                    rec["torch_passive"].append(torch_child(wdir, n, steps, {"OMP_WAIT_POLICY": "passive"}))
            results[n] = rec
    load1 = os.getloadavg()

    # ----------------------------------------------------------- summary
    summary = {}
    for n, rec in results.items():
        med = lambda xs: statistics.median(xs)
        pk_wall = med([m["wall_s"] for m in rec["pathkernel"]])
        pk_int = med([m["internal_s"] for m in rec["pathkernel"]])
        th = med([m["loop_s"] for m in rec["torch"]])
        s = {
            "pathkernel_process_s": pk_wall,
            "pathkernel_internal_s": pk_int,
            "torch_loop_s": th,
            "pathkernel_process_steps_per_s": steps / pk_wall,
            "pathkernel_internal_steps_per_s": steps / pk_int,
            "torch_steps_per_s": steps / th,
            "ratio_process": (steps / pk_wall) / (steps / th),
            "ratio_internal": (steps / pk_int) / (steps / th),
            "pathkernel_lines": [m["line"] for m in rec["pathkernel"]],
            "pathkernel_final_loss": rec["pathkernel"][0]["final_loss"],
            "torch_final_loss": rec["torch"][0]["final_loss"],
            "raw": {
                "pathkernel_process_s": [m["wall_s"] for m in rec["pathkernel"]],
                "pathkernel_internal_s": [m["internal_s"] for m in rec["pathkernel"]],
                "torch_loop_s": [m["loop_s"] for m in rec["torch"]],
            },
        }
        if rec["pathkernel_keep"]:
            kw = med([m["wall_s"] for m in rec["pathkernel_keep"]])
            ki = med([m["internal_s"] for m in rec["pathkernel_keep"]])
            s.update({
                "pathkernel_keep_process_steps_per_s": steps / kw,
                "pathkernel_keep_internal_steps_per_s": steps / ki,
                "ratio_keep_process": (steps / kw) / (steps / th),
                "ratio_keep_internal": (steps / ki) / (steps / th),
            })
            s["raw"]["pathkernel_keep_process_s"] = [m["wall_s"] for m in rec["pathkernel_keep"]]
            s["raw"]["pathkernel_keep_internal_s"] = [m["internal_s"] for m in rec["pathkernel_keep"]]
        if rec["torch_passive"]:
            tp = med([m["loop_s"] for m in rec["torch_passive"]])
            pw = med([m["wall_s"] for m in rec["pathkernel_passive"]])
            pi = med([m["internal_s"] for m in rec["pathkernel_passive"]])
            s.update({
                "torch_passive_steps_per_s": steps / tp,
                "pathkernel_passive_process_steps_per_s": steps / pw,
                "pathkernel_passive_internal_steps_per_s": steps / pi,
                "ratio_passive_process": (steps / pw) / (steps / tp),
                "ratio_passive_internal": (steps / pi) / (steps / tp),
                "torch_passive_final_loss": rec["torch_passive"][0]["final_loss"],
            })
            s["raw"]["torch_passive_loop_s"] = [m["loop_s"] for m in rec["torch_passive"]]
            s["raw"]["pathkernel_passive_process_s"] = [m["wall_s"] for m in rec["pathkernel_passive"]]
            s["raw"]["pathkernel_passive_internal_s"] = [m["internal_s"] for m in rec["pathkernel_passive"]]
        summary[str(n)] = s

    print(f"train_bench: {MODEL} 784-256-256-10, softmax, gd lr {LR}, {N_TRAIN} Fashion-MNIST examples, "
          f"{steps} steps, float64; medians of {R}")
    hdr = ("threads", "pathkernel process", "pathkernel own line", "PyTorch", "ratio process", "ratio own")
    fmt = "{:>7} | {:>18} | {:>19} | {:>10} | {:>13} | {:>9}"
    print(fmt.format(*hdr))
    print(fmt.format(*["-" * len(h) for h in hdr]))

    def row(n, proc, own, th):
        print(fmt.format(n, f"{proc:.2f} st/s", f"{own:.2f} st/s", f"{th:.2f} st/s", f"{proc / th:.2f}", f"{own / th:.2f}"))

    for n, s in summary.items():
        row(n, s["pathkernel_process_steps_per_s"], s["pathkernel_internal_steps_per_s"], s["torch_steps_per_s"])
    if args.keep_variant:
        print(f"pathkernel with --keep {steps} (checkpoints at steps 0 and {steps} only):")
        for n, s in summary.items():
            row(n, s["pathkernel_keep_process_steps_per_s"], s["pathkernel_keep_internal_steps_per_s"],
                s["torch_steps_per_s"])
    if passive:
        print("both with OMP_WAIT_POLICY=passive (PyTorch in a child process, after a warm-up step):")
        for n, s in summary.items():
            row(n, s["pathkernel_passive_process_steps_per_s"], s["pathkernel_passive_internal_steps_per_s"],
                s["torch_passive_steps_per_s"])
    print("pathkernel's own lines:")
    for n, s in summary.items():
        for line in s["pathkernel_lines"]:
            print(f"  [threads {n}] {line}")
    for n, s in summary.items():
        print(f"final loss, threads {n}: pathkernel {s['pathkernel_final_loss']:.6g}, PyTorch {s['torch_final_loss']:.6g}"
              + (f" (passive: {s['torch_passive_final_loss']:.6g})" if passive else ""))
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} "
          f"({os.cpu_count()} CPUs; background load makes these numbers noisy)")

    doc = {
        "benchmark": "train_bench",
        "task": {"model": MODEL, "layers": [784, 256, 256, 10], "loss": "softmax", "optim": "gd",
                 "lr": LR, "data": f"fashion-mnist:train --first {N_TRAIN} (pixels/255)", "steps": steps,
                 "dtype": "float64", "repeats": R},
        "environment": {
            "platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": np.__version__, "openblas_in_torch": blas_path,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "loadavg_before": load0, "loadavg_after": load1,
            "pathkernel": str(exe),
        },
        "notes": "steps/s = steps / seconds. pathkernel process: whole `pathkernel train` process incl. data "
                 "loading, per-step checkpoints (default --keep 1) and the final report; internal: the time in its "
                 "'steps in X s' line. PyTorch: the 50-step loop only, data in memory. ratio = pathkernel / PyTorch. "
                 "*_passive: pathkernel and PyTorch (in a child process) with OMP_WAIT_POLICY=passive (libgomp's spinning idle "
                 "threads otherwise compete with OpenBLAS's threads in torch), one untimed warm-up step first.",
        "results": summary,
    }
    write_results(args.out, doc)


if __name__ == "__main__":
    main()
