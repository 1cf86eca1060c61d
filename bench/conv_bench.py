#!/usr/bin/python3
"""Convolutional networks: pathkernel against PyTorch (float64, CPU), LeNet-5
(`--model lenet5`: conv 6@5x5 pad 2, tanh, avg-pool 2, conv 16@5x5, tanh,
avg-pool 2, dense 120, tanh, dense 84, tanh, dense 10; 61,706 parameters).

(i) Tangent kernel, full 10 x 10 blocks, between the first 200 Fashion-MNIST
    training images (x) and the first 200 test images (y), pixels / 255, at
    the weights after 5 sgd steps (batch 64, lr 0.1) on the first 2,000
    training images. Methods:

      pathkernel        `pathkernel kernel RUN --x .. --y .. --mode full --out K.npy`,
                        the whole process (start, loading, computing, writing 32 MB).
      functorch jac     make_functional + vmap(jacrev) Jacobians in chunks, contracted
                        with einsum per parameter tensor (functorch's NTK tutorial).
      functorch ntk-vps NTK-vector products (the tutorial's second method), timed on
                        the first VPS_ROWS rows of x and scaled to 200 (it is linear in
                        the rows; the scaled time is marked as such).
      torch per-example per-example Jacobians of both sides by vmap(jacrev) as one
                        (n C, P) matrix each, then one matrix product: the shortest
                        PyTorch a user would write.
      torch structured  MATH.md sections 4 and 8 in PyTorch: per-output deltas by
                        autograd, im2col by F.unfold, form A per conv layer
                        (per-example gradients G^T P, one product over pairs) and
                        (delta delta^T) o (a a^T) per dense layer.
    The Gram of x (K(x, x), 200 x 200): pathkernel with `--x` alone (each
    pair of examples computed once, then mirrored) against the structured
    formula with its one side formed once, interleaved the same way.
    Every result is checked against pathkernel's. pathkernel runs REPEATS
    times, each run followed by a fresh process of the structured formula
    (interleaved, since the machine's load drifts) that makes one untimed
    first call and STEADY timed ones, of which the fastest counts: torch's
    allocator takes a few calls to settle; functorch and the per-example method
    each run in a process of their own (so that no other method's memory or
    threads disturb it: functorch's churn made the structured formula 1.7
    times slower when they shared one), one untimed first call and then
    REPEATS timed calls; medians. CPU time over wall
    time for pathkernel. The GEMM part: the multiply-adds of pathkernel's
    products (counted below) over its time, against this machine's DGEMM
    peak (best 2000^3 product with the same threads).

(ii) Training LeNet-5 on the first 2,000 training images, sgd batch 64, lr
    0.1, STEPS steps: `pathkernel train` as a whole process against PyTorch's
    loop (same initial weights, the same batches read from the run,
    forward + cross-entropy + backward + SGD step, data already in memory),
    same thread count (torch.set_num_threads and OpenBLAS's).

Run:  /usr/bin/python3 bench/conv_bench.py [--repeats 3] [--threads 1,2] [--steps 96] [--only kernel|train]
Writes bench/results/conv_bench.json.
"""
import argparse
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
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from benchlib import FMNIST, load_fashion, openblas_handle, write_results  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
DT = torch.float64
N = 200
VPS_ROWS = 20
STEADY = 6  # timed calls of the structured formula per process, after an untimed first
nn = torch.nn
F = torch.nn.functional


def set_threads(n, blas):
    torch.set_num_threads(n)
    if blas is not None:
        blas.openblas_set_num_threads(n)


def med(xs):
    return statistics.median(xs)


def rel_diff(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def lenet(wdir):
    """LeNet-5 as nn.Sequential holding the exported weights (W1.npy ...)."""
    mods = [nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(),
            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
            nn.Linear(84, 10)]
    net = nn.Sequential(*mods).to(DT)
    params = [m for m in mods if hasattr(m, "weight")]
    for l, m in enumerate(params, 1):
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(np.load(pathlib.Path(wdir) / f"W{l}.npy")))
            m.bias.copy_(torch.from_numpy(np.load(pathlib.Path(wdir) / f"b{l}.npy")))
    return net


def timed_process(cmd):
    """Wall seconds and CPU seconds (children's user + system) of a command."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"conv_bench: {' '.join(map(str, cmd))} failed:\n{p.stderr}")
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), p.stdout


# ------------------------------------------------------------ (i) kernels

def functorch_jac(net, X, Y, chunk=50):
    from functorch import jacrev, make_functional, vmap
    fmodel, params = make_functional(net)
    params = tuple(p.detach() for p in params)
    t0 = time.perf_counter()
    jac = vmap(jacrev(lambda p, x: fmodel(p, x.unsqueeze(0)).squeeze(0)), (None, 0))
    K = torch.zeros(X.shape[0], Y.shape[0], 10, 10, dtype=DT)
    for i in range(0, X.shape[0], chunk):
        Jx = [j.flatten(2) for j in jac(params, X[i:i + chunk])]
        for k in range(0, Y.shape[0], chunk):
            Jy = [j.flatten(2) for j in jac(params, Y[k:k + chunk])]
            K[i:i + chunk, k:k + chunk] = torch.stack(
                [torch.einsum("Naf,Mbf->NMab", a, b) for a, b in zip(Jx, Jy)]).sum(0)
    return time.perf_counter() - t0, K.numpy()


def functorch_ntk_vps(net, X, Y, rows):
    from functorch import jvp, make_functional, vjp, vmap
    fmodel, params = make_functional(net)
    params = tuple(p.detach() for p in params)
    t0 = time.perf_counter()

    def row(x):
        _, vjp_fn = vjp(lambda p: fmodel(p, x.unsqueeze(0)).squeeze(0), params)

        def one(vec):
            (g,) = vjp_fn(vec)                                   # J_x^T e_k, parameter-shaped
            return jvp(lambda p: fmodel(p, Y), (params,), (g,))[1]  # J_Y J_x^T e_k (ny, C)

        return vmap(one)(torch.eye(10, dtype=DT))

    K = torch.stack([row(X[i]) for i in range(rows)]).permute(0, 2, 1, 3).contiguous()
    return time.perf_counter() - t0, K.numpy()


def torch_per_example(net, X, Y):
    from functorch import jacrev, make_functional, vmap
    fmodel, params = make_functional(net)
    params = tuple(p.detach() for p in params)
    t0 = time.perf_counter()
    jac = vmap(jacrev(lambda p, x: fmodel(p, x.unsqueeze(0)).squeeze(0)), (None, 0))

    def J(Z):  # (n C, P)
        parts = []
        for i in range(0, Z.shape[0], 50):
            parts.append(torch.cat([j.flatten(2) for j in jac(params, Z[i:i + 50])], dim=2))
        return torch.cat(parts).reshape(Z.shape[0] * 10, -1)

    K = (J(X) @ J(Y).T).reshape(X.shape[0], 10, Y.shape[0], 10).permute(0, 2, 1, 3).contiguous()
    return time.perf_counter() - t0, K.numpy()


def torch_structured(net, X, Y):
    """Per layer with parameters: inputs a and per-output deltas (autograd,
    one backward per output); conv: V = G^T unfold(a), dense: the Gram
    product; summed over layers."""
    t0 = time.perf_counter()
    layers = [m for m in net if hasattr(m, "weight")]

    def side(Z):
        acts, outs = [], []
        h = Z
        for m in net:
            if hasattr(m, "weight"):
                acts.append(h)
                h = m(h)
                outs.append(h)
            else:
                h = m(h)
        deltas = [[] for _ in layers]
        for k in range(10):
            gs = torch.autograd.grad(h[:, k].sum(), outs, retain_graph=True)
            for l, g in enumerate(gs):
                deltas[l].append(g)
        feats = []
        for l, m in enumerate(layers):
            D = torch.stack(deltas[l], 1)  # (n, C, out...)
            a = acts[l].detach()
            if isinstance(m, nn.Conv2d):
                P = F.unfold(a, m.kernel_size, padding=m.padding, stride=m.stride)  # (n, d, T)
                G = D.flatten(3)                                                      # (n, C, p, T)
                V = torch.einsum("nkpt,ndt->nkpd", G, P).flatten(2)                  # (n, C, p d)
                feats.append(("conv", V, G.sum(3)))
            else:
                feats.append(("dense", a, D))
        return feats

    fx = side(X.requires_grad_(False))
    fy = fx if Y is X else side(Y)  # a Gram: its one side, as a user would write it
    K = torch.zeros(X.shape[0], Y.shape[0], 10, 10, dtype=DT)
    with torch.no_grad():
        for (kind, ax, dx), (_, ay, dy) in zip(fx, fy):
            if kind == "conv":
                K += torch.einsum("ikv,jlv->ijkl", ax, ay) + torch.einsum("ikp,jlp->ijkl", dx, dy)
            else:
                A = ax @ ay.T + 1.0
                K += A[:, :, None, None] * torch.einsum("iko,jlo->ijkl", dx, dy)
    return time.perf_counter() - t0, K.numpy()


def pk_kernel_flops(nx, ny, C=10):
    """Multiply-adds x 2 of pathkernel's products for LeNet-5, full blocks:
    forward and per-output delta backprop of both sides, form A's
    per-example gradients (conv1, conv2) and the products over pairs."""
    conv = [(784, 25, 6), (100, 150, 16)]    # (T, d, p)
    dense = [(400, 120), (120, 84), (84, 10)]
    n = nx + ny
    f = 0.0
    for T, d, p in conv:
        f += n * T * d * p                    # forward
        f += n * C * T * d * p                # V = G^T P of every row
        f += nx * C * ny * C * (p * d + p)    # pairs
    f += n * C * 100 * 150 * 16               # conv2's delta backprop (to conv1)
    for din, dout in dense:
        f += n * din * dout + n * C * din * dout   # forward, delta backprop
        f += nx * ny * din + nx * C * ny * C * dout  # activation and delta Grams
    return 2 * f


def dgemm_peak(threads, blas):
    set_threads(threads, blas)
    a, b = torch.rand(2000, 2000, dtype=DT), torch.rand(2000, 2000, dtype=DT)
    a @ b
    best = min(_t(lambda: a @ b) for _ in range(3))
    return 2 * 2000 ** 3 / best * 1e-9


def _t(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------- (ii) training

def torch_train(wdir, X, Y, batches, lr):
    net = lenet(wdir)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    t0 = time.perf_counter()
    for idx in batches:
        ib = torch.from_numpy(idx)
        opt.zero_grad()
        F.cross_entropy(net(X[ib]), Y[ib]).backward()
        opt.step()
    return time.perf_counter() - t0


def read_batches(run):
    sys.path.insert(0, str(HERE.parent / "tests" / "python"))
    from pkutil import batches, read_traj
    return batches(read_traj(pathlib.Path(run) / "trajectory.bin"))


def child(args):
    """One PyTorch method alone in this process: an untimed first call (its
    result saved for the check), then REPEATS timed calls; prints the
    seconds as JSON."""
    blas, _ = openblas_handle()
    set_threads(int(args.threads), blas)
    work = pathlib.Path(args.work)
    net = lenet(work / "wT")
    X, Y = torch.from_numpy(np.load(work / "x.npy")), torch.from_numpy(np.load(work / "y.npy"))
    fn = {"functorch_jac": functorch_jac, "torch_per_example": torch_per_example,
          "torch_structured": torch_structured,
          "torch_structured_gram": lambda net, X, Y: torch_structured(net, X, X)}[args.child]
    _, K = fn(net, X, Y)
    np.save(work / f"K-{args.child}.npy", K)
    print(json.dumps([fn(net, X, Y)[0] for _ in range(args.repeats)]))


def in_child(method, work, n, repeats):
    """Seconds of REPEATS calls of a PyTorch method in a fresh process (so
    that no other method's memory or threads disturb it) and its result."""
    p = subprocess.run([sys.executable, __file__, "--child", method, "--work", str(work), "--threads", str(n),
                        "--repeats", str(repeats)], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"conv_bench: {method} failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1]), np.load(work / f"K-{method}.npy")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--skip-vps", action="store_true", help="leave out functorch's NTK-vector products")
    ap.add_argument("--only", choices=("kernel", "train"), help="run one part only: (i) kernel or (ii) train")
    ap.add_argument("--pathkernel", default=str(pathlib.Path(os.environ.get("PK_BUILD", HERE.parent / "build")) / "pathkernel"))
    ap.add_argument("--out", default=str(HERE / "results" / "conv_bench.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    exe = pathlib.Path(args.pathkernel)
    if not exe.is_file():
        sys.exit(f"conv_bench: {exe} not found: build first or pass --pathkernel")
    if not FMNIST.is_dir():
        sys.exit(f"conv_bench: {FMNIST} missing: apt-get install dataset-fashion-mnist")
    blas, _ = openblas_handle()
    threads = [int(t) for t in args.threads.split(",")]
    R = args.repeats
    doc = {"load_before": os.getloadavg(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
           "kernel": {}, "train": {}}
    with tempfile.TemporaryDirectory(prefix="pk-conv-") as work:
        work = pathlib.Path(work)
        Xtr, ytr = load_fashion("train", 2000)
        Xte, _ = load_fashion("test", N)
        np.save(work / "x.npy", Xtr[:N].reshape(N, 1, 28, 28))
        np.save(work / "y.npy", Xte.reshape(N, 1, 28, 28))
        np.save(work / "l.npy", np.zeros(N, dtype=np.int64))
        run = work / "run"
        subprocess.run([str(exe), "train", "--data", "fashion-mnist:train", "--first", "2000", "--model", "lenet5",
                        "--loss", "softmax", "--optim", "sgd", "--batch", "64", "--lr", "0.1", "--steps", "5",
                        "--seed", "0", "--out", str(run), "--quiet"], check=True)
        subprocess.run([str(exe), "weights", str(run), "--out", str(work / "wT")], check=True, capture_output=True)
        subprocess.run([str(exe), "weights", str(run), "--step", "0", "--out", str(work / "w0")], check=True,
                       capture_output=True)
        net = lenet(work / "wT")
        X = torch.from_numpy(Xtr[:N].reshape(N, 1, 28, 28))
        Y = torch.from_numpy(Xte.reshape(N, 1, 28, 28))
        flops = pk_kernel_flops(N, N)
        for n in (threads if args.only != "train" else []):
            set_threads(n, blas)
            rec = {k: [] for k in ("pathkernel", "pathkernel_cpu", "functorch_jac", "torch_per_example",
                                   "torch_structured", "functorch_vps_scaled")}
            errs = {}
            # pathkernel and its closest peer, the structured formula in
            # torch, interleaved (the machine's load drifts): each repeat a
            # fresh torch process whose fastest of STEADY calls counts (its
            # allocator settles over the first few: 1.7, 0.8, 0.8, 0.7, 0.5,
            # 0.5 s measured)
            for r in range(R):
                wall, cpu, _ = timed_process([str(exe), "kernel", str(run), "--x", f"npy:{work}/x.npy,{work}/l.npy",
                                              "--y", f"npy:{work}/y.npy,{work}/l.npy", "--mode", "full",
                                              "--threads", str(n), "--out", str(work / "K.npy")])
                rec["pathkernel"].append(wall)
                rec["pathkernel_cpu"].append(cpu)
                t, K = in_child("torch_structured", work, n, STEADY)
                rec["torch_structured"].append(min(t))
            Kpk = np.load(work / "K.npy")
            errs["torch_structured"] = rel_diff(K, Kpk)
            for name in ("functorch_jac", "torch_per_example"):
                rec[name], K = in_child(name, work, n, R)
                errs[name] = rel_diff(K, Kpk)
            if not args.skip_vps:
                s, K = functorch_ntk_vps(net, X, Y, VPS_ROWS)
                rec["functorch_vps_scaled"].append(s * N / VPS_ROWS)
                errs["functorch_vps"] = rel_diff(K, Kpk[:VPS_ROWS])
            # the Gram of x (K(x, x)): pathkernel with --x alone (each pair
            # once), the structured formula with its side formed once
            gram = {"pathkernel": [], "torch_structured": []}
            for r in range(R):
                wall, _, _ = timed_process([str(exe), "kernel", str(run), "--x", f"npy:{work}/x.npy,{work}/l.npy",
                                            "--mode", "full", "--threads", str(n), "--out", str(work / "G.npy")])
                gram["pathkernel"].append(wall)
                t, G = in_child("torch_structured_gram", work, n, STEADY)
                gram["torch_structured"].append(min(t))
            errs["torch_structured_gram"] = rel_diff(G, np.load(work / "G.npy"))
            m = {k: med(v) for k, v in rec.items() if v}
            mg = {k: med(v) for k, v in gram.items()}
            best_fn = min(m["functorch_jac"], m.get("functorch_vps_scaled", float("inf")))
            best_torch = min(m["torch_per_example"], m["torch_structured"])
            peak = dgemm_peak(n, blas)
            doc["kernel"][n] = {
                "median_s": m, "max_rel_diff_vs_pathkernel": errs,
                "speedup_vs_functorch": best_fn / m["pathkernel"],
                "speedup_vs_best_torch": best_torch / m["pathkernel"],
                "pathkernel_cpu_over_wall": m["pathkernel_cpu"] / m["pathkernel"],
                "gemm_gflops": flops / m["pathkernel"] * 1e-9, "dgemm_peak_gflops": peak,
                "fraction_of_peak": flops / m["pathkernel"] * 1e-9 / peak,
                "gram_median_s": mg, "gram_speedup_vs_torch_structured": mg["torch_structured"] / mg["pathkernel"],
            }
            print(f"kernel, {n} thread(s): pathkernel {m['pathkernel']:.2f} s (cpu/wall "
                  f"{m['pathkernel_cpu'] / m['pathkernel']:.2f}), functorch jac {m['functorch_jac']:.2f} s"
                  + (f", ntk-vps {m['functorch_vps_scaled']:.1f} s (scaled)" if "functorch_vps_scaled" in m else "")
                  + f", torch per-example {m['torch_per_example']:.2f} s, torch structured "
                  f"{m['torch_structured']:.2f} s: {best_fn / m['pathkernel']:.0f}x functorch, "
                  f"{best_torch / m['pathkernel']:.2f}x the best torch; products at "
                  f"{flops / m['pathkernel'] * 1e-9:.1f} GFLOP/s = {flops / m['pathkernel'] * 1e-9 / peak:.0%} of "
                  f"{peak:.1f}; max rel diff {max(errs.values()):.1e}", flush=True)
            print(f"kernel of x against itself, {n} thread(s): pathkernel {mg['pathkernel']:.2f} s, torch structured "
                  f"{mg['torch_structured']:.2f} s: {mg['torch_structured'] / mg['pathkernel']:.2f}x", flush=True)

        # (ii) training
        Xt, Yt = torch.from_numpy(Xtr.reshape(2000, 1, 28, 28)), torch.from_numpy(ytr)
        for n in (threads if args.only != "kernel" else []):
            set_threads(n, blas)
            pkw, pkc, th = [], [], []
            for r in range(R):
                out = work / f"t{n}-{r}"
                wall, cpu, _ = timed_process([str(exe), "train", "--data", "fashion-mnist:train", "--first", "2000",
                                              "--model", "lenet5", "--loss", "softmax", "--optim", "sgd",
                                              "--batch", "64", "--lr", "0.1", "--steps", str(args.steps),
                                              "--seed", "0", "--threads", str(n), "--quiet", "--out", str(out)])
                pkw.append(wall)
                pkc.append(cpu)
                th.append(torch_train(work / "w0", Xt, Yt, read_batches(out), 0.1))
                subprocess.run(["rm", "-rf", str(out)], check=True)
            doc["train"][n] = {"pathkernel_process_s": med(pkw), "torch_loop_s": med(th),
                               "speedup": med(th) / med(pkw), "pathkernel_cpu_over_wall": med(pkc) / med(pkw)}
            print(f"train, {n} thread(s), {args.steps} steps: pathkernel {med(pkw):.2f} s (process, cpu/wall "
                  f"{med(pkc) / med(pkw):.2f}), torch {med(th):.2f} s (loop): {med(th) / med(pkw):.2f}x", flush=True)
    doc["load_after"] = os.getloadavg()
    write_results(args.out, doc)


if __name__ == "__main__":
    main()
