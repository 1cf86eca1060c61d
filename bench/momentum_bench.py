#!/usr/bin/python3
"""explain for an Adam run: peak memory and time of the backward sweep
(src/kernel/backward.c, MATH.md section 5) beside the memory that per-example
optimiser buffers would need.

Setup (defaults): 784-256-10 tanh MLP, softmax, Adam (lr 0.001, batch 64),
300 steps on the first 2,000 Fashion-MNIST training images (pixels / 255);
100 queries, the first 100 Fashion-MNIST test images; `explain` with its
default options (gl2, contributions and the trace path kernel). Measured with
/usr/bin/time -v (maximum resident set size, wall-clock), the whole process;
`verify` of the same run and queries likewise (it needs no per-example
products: the batch's share of a step is H_x(s) G_s, a dot product).

The backward sweep keeps one dense C x P matrix H_x per query, so its memory
is Q x C x P doubles (plus outputs Q x N x C and a segment of the trajectory),
independent of N; a tool that keeps per-example optimiser buffers (the
per-example share of Adam's first moment, a P-vector per example and output
for the C outputs) needs N x P x C doubles instead, computed, not run.

If the full size takes too long, --steps S runs S steps and reports the time
extrapolated linearly to --full-steps (default 300): the sweep's cost per step
is the same at every step. Writes bench/results/momentum_bench.json.

Run:  /usr/bin/python3 bench/momentum_bench.py [--steps 300] [--threads 2]
Environment: PK_SOURCE (default: the tree this file is in), PK_BUILD
(default PK_SOURCE/build).
"""
import argparse
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

SOURCE = pathlib.Path(os.environ.get("PK_SOURCE", pathlib.Path(__file__).resolve().parents[1]))
BUILD = pathlib.Path(os.environ.get("PK_BUILD", SOURCE / "build"))


def timed(cmd):
    """Run under /usr/bin/time -v: (seconds, max RSS bytes, stdout)."""
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-v"] + [str(c) for c in cmd], capture_output=True, text=True)
    secs = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{p.stdout}\n{p.stderr}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return secs, int(m.group(1)) * 1024 if m else None, p.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pathkernel", default=str(BUILD / "pathkernel"))
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--full-steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-verify", action="store_true", help="skip timing `verify`")
    ap.add_argument("--out", default=str(SOURCE / "bench" / "results" / "momentum_bench.json"))
    a = ap.parse_args()
    if not pathlib.Path("/usr/share/datasets/fashion-mnist").is_dir():
        sys.exit("needs Debian's dataset-fashion-mnist")
    pk = a.pathkernel
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        run, out = pathlib.Path(tmp) / "run", pathlib.Path(tmp) / "ex"
        t_train, rss_train, _ = timed([pk, "train", "--data", "fashion-mnist:train", "--first", a.n_train,
                                       "--model", f"mlp:{a.hidden}:tanh", "--loss", "softmax", "--optim", "adam",
                                       "--lr", a.lr, "--batch", a.batch, "--steps", a.steps, "--seed", 1,
                                       "--quiet", "--threads", a.threads, "--out", run])
        t_ex, rss_ex, text = timed([pk, "explain", run, "--query", "fashion-mnist:test", "--first", a.queries,
                                    "--out", out, "--threads", a.threads])
        summary = json.loads((out / "summary.json").read_text())
        t_ver = rss_ver = None
        if not a.no_verify:  # verify: no per-example outputs, the batch sum is H G_s
            t_ver, rss_ver, _ = timed([pk, "verify", run, "--query", "fashion-mnist:test", "--first", a.queries,
                                       "--tol", "1", "--threads", a.threads])
    P = 784 * a.hidden + a.hidden + a.hidden * 10 + 10
    C, N, Q = 10, a.n_train, a.queries
    per_example = N * P * C * 8
    H = Q * C * P * 8
    outputs = (Q * N * C + Q * N + 4 * Q * C) * 8
    scale = a.full_steps / a.steps
    res = {
        "setup": {"model": f"784-{a.hidden}-10 tanh", "params": P, "n_train": N, "queries": Q, "outputs": C,
                  "optim": "adam", "lr": a.lr, "batch": a.batch, "steps": a.steps, "full_steps": a.full_steps,
                  "quad": summary["quad"], "threads": a.threads},
        "train_seconds": t_train,
        "explain_seconds": t_ex,
        "explain_seconds_extrapolated_full": t_ex * scale if a.steps != a.full_steps else t_ex,
        "explain_internal_seconds": summary["seconds"],
        "explain_max_rss_bytes": rss_ex,
        "verify_seconds": t_ver,
        "verify_max_rss_bytes": rss_ver,
        "train_max_rss_bytes": rss_train,
        "dense_H_bytes": H,
        "output_bytes": outputs,
        "per_example_buffers_bytes": per_example,
        "max_rel_err": summary["max_rel_err"],
        "environment": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "loadavg_before": load0, "loadavg_after": os.getloadavg()},
        "explain_stdout": text.strip(),
    }
    gib = 1024.0 ** 3
    print(f"Adam run 784-{a.hidden}-10 tanh (P = {P}), N = {N}, batch {a.batch}, {a.steps} steps; "
          f"{Q} queries, {summary['quad']}, {a.threads} threads")
    print(f"{'':44s} {'GiB':>9s} {'seconds':>9s}")
    print(f"{'train':44s} {rss_train / gib:9.3f} {t_train:9.1f}")
    print(f"{'explain (measured, max RSS)':44s} {rss_ex / gib:9.3f} {t_ex:9.1f}")
    if t_ver is not None:
        print(f"{'verify (measured, max RSS)':44s} {rss_ver / gib:9.3f} {t_ver:9.1f}")
    if a.steps != a.full_steps:
        print(f"{'explain extrapolated to %d steps' % a.full_steps:44s} {'':9s} {t_ex * scale:9.1f}")
    print(f"{'  of which dense H (Q x C x P doubles)':44s} {H / gib:9.3f}")
    print(f"{'  of which outputs (contrib, kernel)':44s} {outputs / gib:9.3f}")
    print(f"{'per-example buffers (N x P x C doubles)':44s} {per_example / gib:9.3f} {'(computed)':>9s}")
    print(f"max_rel_err {summary['max_rel_err']:.3g}; load average {load0[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
