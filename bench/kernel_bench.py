#!/usr/bin/python3
"""Tangent-kernel and explain cost: pathkernel against PyTorch (float64, CPU).

(i) Tangent kernel (empirical NTK, full 10 x 10 blocks) of a 784-512-512-10
    tanh MLP between the first 200 Fashion-MNIST training images (x) and the
    first 200 test images (y), pixels / 255, at the weights after one gd step
    (lr 0.1, softmax, on the 200 training images). Methods:

      pathkernel     `pathkernel kernel RUN --x .. --y .. --mode full --out K.npy`,
                     the whole process (start, loading the run and the inputs,
                     computing, writing the 32 MB result).
      pk compute     pk_kernel_tangent alone, timed by bench/kernel_timer.c (built
                     here against build/libpathkernel.a); used for GFLOP/s.
      functorch jac  make_functional + vmap(jacrev) Jacobians (chunks of examples:
                     a full 200-example Jacobian is 10.7 GB) contracted with einsum
                     per parameter tensor, summed (the functorch NTK tutorial's
                     "Jacobian contraction").
      functorch ntk-vps  NTK-vector products (the tutorial's second method): per
                     query x, vjp of f(x) with the C basis vectors, then jvp of f(Y)
                     along each; vmapped over the basis and over chunks of x.
      handwritten    the structured formula of MATH.md section 4 in plain PyTorch:
                     per layer a forward, backprop of per-output deltas, Gram of
                     activations and of deltas, Hadamard product, sum; timed as
                     compute + np.save of the (200, 200, 10, 10) result.

    All results are checked against pathkernel's (max relative difference).
    DGEMM peak: best of REPEATS 2000 x 2000 float64 products, both with torch
    (torch's OpenBLAS) and in kernel_timer (the OpenBLAS pathkernel links),
    same thread count. Achieved GFLOP/s of pathkernel = the GEMM flops
    pk_kernel_tangent does (structured_flops below: activation Grams, delta
    Grams of the hidden layers -- the last one over its C (C + 1) / 2
    symmetric output pairs only --, forward and delta-backprop GEMMs of both
    sides, each side once) / pk compute time; also reported against the flops
    of the plain formula (every output pair of every layer's delta Gram,
    "all pairs"), the count used before pathkernel skipped the redundant ones.
    CPU seconds (user + system, all threads) are reported next to wall-clock
    seconds for pathkernel: they are less sensitive to other jobs.

(ii) explain for a whole run: 784-256-10 tanh MLP, softmax, sgd batch 100, lr
    0.05, 200 steps on the first 1,000 Fashion-MNIST training images; 100
    queries (first 100 test images), default options (gl2, contributions and
    trace path kernel). Seconds of the explain process and the training
    process, and their ratio.

Medians of REPEATS (default 15: the machine's own noise moves single runs of
this 0.13 s process by 20-30%, and the ratio of medians of 7 between 1.43 and
1.65) except explain (EXPLAIN_REPEATS, default 5) and functorch
(FT_REPEATS, default 1: it takes minutes). Threads: every method with the same count (default 2, then 1
for the quick methods; --ft-threads1 also runs functorch with 1 thread).
Writes bench/results/kernel_bench.json.

Run:  /usr/bin/python3 bench/kernel_bench.py [--repeats 3] [--threads 2,1] [--skip-functorch]
Environment: PK_SOURCE (default: the tree this file is in), PK_BUILD (default
PK_SOURCE/build).
"""
import argparse
import json
import os
import pathlib
import platform
import re
import resource
import shutil
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
SOURCE = pathlib.Path(os.environ.get("PK_SOURCE", HERE.parent))
BUILD = pathlib.Path(os.environ.get("PK_BUILD", SOURCE / "build"))
OPENBLAS_OMP = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
DT = torch.float64
DIMS = [784, 512, 512, 10]
N_X = N_Y = 200


def set_torch_threads(n, blas):
    torch.set_num_threads(n)
    if blas is not None:
        blas.openblas_set_num_threads(n)


def run(cmd, **kw):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"kernel_bench: {' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    p.cpu_s = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)  # user + system of the child
    return p, wall


def rel_diff(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def med(xs):
    return statistics.median(xs)


# --------------------------------------------------------------- flops


def structured_flops(nx, ny, dims):
    """GEMM flops of pk_kernel_tangent (full C x C blocks, x and y distinct,
    one block), counting a multiply-add as 2. Layer l = 0..L-1 maps dims[l]
    to dims[l+1]; C = dims[L].
      activation Grams   sum_l 2 nx ny dims[l]                     (every layer)
      delta Grams        sum_{l <= L-3} 2 (nx C) (ny C) dims[l+1]  (hidden layers but the last)
                         + 2 nx ny (C (C + 1) / 2) dims[L-1]       (last hidden layer: its deltas are
                           sw W_L[c,:] o act'(z), so its Gram is sum_j W_L[c,j] W_L[c',j] s_x,j s_y,j,
                           symmetric in (c, c'): one GEMM over the C (C + 1) / 2 pairs)
                         + 0                                       (output layer: deltas e_k, Gram = identity)
      forward            sum_l 2 (nx + ny) dims[l] dims[l+1]
      backprop           sum_{l=1}^{L-1} 2 (nx + ny) C dims[l+1] dims[l]   (per-output deltas, only for L >= 3)
    "all_pairs_total" is the plain formula the count was before: a delta Gram
    over all C^2 output pairs for every layer, the output layer's included."""
    C, L = dims[-1], len(dims) - 1
    gram_a = sum(2 * nx * ny * dims[l] for l in range(L))
    gram_d = sum(2 * (nx * C) * (ny * C) * dims[l + 1] for l in range(L - 2))
    if L >= 2:
        gram_d += 2 * nx * ny * (C * (C + 1) // 2) * dims[L - 1]
    fwd = sum(2 * (nx + ny) * dims[l] * dims[l + 1] for l in range(L))
    back = sum(2 * (nx + ny) * C * dims[l + 1] * dims[l] for l in range(1, L)) if L >= 3 else 0
    gram_d_all = sum(2 * (nx * C) * (ny * C) * dims[l + 1] for l in range(L))
    back_all = sum(2 * (nx + ny) * C * dims[l + 1] * dims[l] for l in range(1, L))
    return {"gram_activations": gram_a, "gram_deltas": gram_d, "forward": fwd, "backprop": back,
            "total": gram_a + gram_d + fwd + back,
            "all_pairs_gram_deltas": gram_d_all, "all_pairs_total": gram_a + gram_d_all + fwd + back_all}


# ------------------------------------------------------- torch methods


def torch_layers(wdir):
    layers, l = [], 1
    while (wdir / f"W{l}.npy").exists():
        layers.append((torch.from_numpy(np.load(wdir / f"W{l}.npy")), torch.from_numpy(np.load(wdir / f"b{l}.npy"))))
        l += 1
    return layers


def handwritten(layers, X, Y, out_path):
    """MATH.md section 4 in PyTorch; returns (seconds incl. np.save, K)."""
    t0 = time.perf_counter()
    L, C = len(layers), layers[-1][0].shape[0]

    def side(Z):
        a, h = [Z], Z
        for l, (W, b) in enumerate(layers[:-1]):
            h = torch.tanh(torch.addmm(b, h, W.t()))
            a.append(h)
        n = Z.shape[0]
        d = [None] * L
        d[L - 1] = torch.eye(C, dtype=DT).expand(n, C, C).reshape(n * C, C)
        for l in range(L - 1, 0, -1):  # d_{l-1} = (d_l W_l) * tanh'(z_{l-1})
            d[l - 1] = (d[l] @ layers[l][0]).view(n, C, -1).mul_((1 - a[l] * a[l]).unsqueeze(1)).view(n * C, -1)
        return a, d

    ax, dx = side(X)
    ay, dy = side(Y)
    nx, ny = X.shape[0], Y.shape[0]
    K = torch.zeros(nx, C, ny, C, dtype=DT)
    for l in range(L):
        A = torch.addmm(torch.ones(nx, ny, dtype=DT), ax[l], ay[l].t())   # a.a' + 1 (weights + bias)
        D = (dx[l] @ dy[l].t()).view(nx, C, ny, C)
        K.addcmul_(D, A.view(nx, 1, ny, 1))
    K = K.permute(0, 2, 1, 3).contiguous().numpy()
    np.save(out_path, K)
    return time.perf_counter() - t0, K


def functorch_model(layers):
    from functorch import make_functional
    mods = []
    for i, (W, b) in enumerate(layers):
        lin = torch.nn.Linear(W.shape[1], W.shape[0], dtype=DT)
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(b)
        mods.append(lin)
        if i + 1 < len(layers):
            mods.append(torch.nn.Tanh())
    fmodel, params = make_functional(torch.nn.Sequential(*mods))
    return fmodel, tuple(p.detach() for p in params)


def functorch_jac(layers, X, Y, chunk):
    """Jacobian contraction, chunked over examples; returns (seconds, K)."""
    from functorch import jacrev, vmap
    fmodel, params = functorch_model(layers)
    t0 = time.perf_counter()

    def f(p, x):
        return fmodel(p, x.unsqueeze(0)).squeeze(0)

    jac = vmap(jacrev(f), (None, 0))
    nx, ny, C = X.shape[0], Y.shape[0], layers[-1][0].shape[0]
    K = torch.zeros(nx, ny, C, C, dtype=DT)
    for i in range(0, nx, chunk):
        Jx = [j.flatten(2) for j in jac(params, X[i:i + chunk])]
        for k in range(0, ny, chunk):
            Jy = [j.flatten(2) for j in jac(params, Y[k:k + chunk])]
            K[i:i + chunk, k:k + chunk] = torch.stack(
                [torch.einsum("Naf,Mbf->NMab", a, b) for a, b in zip(Jx, Jy)]).sum(0)
            del Jy
        del Jx
    return time.perf_counter() - t0, K.numpy()


def functorch_ntk_vps(layers, X, Y, chunk):
    """NTK-vector products; returns (seconds, K)."""
    from functorch import jvp, vjp, vmap
    fmodel, params = functorch_model(layers)
    C = layers[-1][0].shape[0]
    t0 = time.perf_counter()

    def f_Y(p):
        return fmodel(p, Y)                       # (ny, C)

    def row(x):                                   # K[x, :, k, k'] as (C, ny, C)
        _, vjp_fn = vjp(lambda p: fmodel(p, x.unsqueeze(0)).squeeze(0), params)

        def slice_(vec):
            (g,) = vjp_fn(vec)                    # J_x^T e_k, parameter-shaped
            return jvp(f_Y, (params,), (g,))[1]   # J_Y J_x^T e_k  (ny, C)

        return vmap(slice_)(torch.eye(C, dtype=DT))

    rows = [vmap(row)(X[i:i + chunk]) for i in range(0, X.shape[0], chunk)]
    K = torch.cat(rows).permute(0, 2, 1, 3).contiguous()   # (nx, ny, C, C)
    return time.perf_counter() - t0, K.numpy()


def torch_dgemm_peak(n, repeats):
    a = torch.rand(n, n, dtype=DT)
    b = torch.rand(n, n, dtype=DT)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return best, 2 * n ** 3 / best * 1e-9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="tangent kernel repeats, interleaved [15]")
    ap.add_argument("--explain-repeats", type=int, default=5, help="explain and train repeats [5]")
    ap.add_argument("--ft-repeats", type=int, default=1, help="functorch repeats [1]")
    ap.add_argument("--threads", default="2,1", help="thread counts; functorch runs with the first only [2,1]")
    ap.add_argument("--ft-threads1", action="store_true", help="run functorch with every thread count")
    ap.add_argument("--skip-functorch", action="store_true")
    ap.add_argument("--skip-explain", action="store_true")
    ap.add_argument("--jac-chunk", type=int, default=50, help="examples per Jacobian chunk [50: 2.7 GB]")
    ap.add_argument("--vps-chunk", type=int, default=5, help="queries per NTK-vps vmap [5: fastest here]")
    ap.add_argument("--out", default=str(HERE / "results" / "kernel_bench.json"))
    args = ap.parse_args()
    exe = BUILD / "pathkernel"
    lib = BUILD / "libpathkernel.a"
    for p in (exe, lib):
        if not p.is_file():
            sys.exit(f"kernel_bench: {p} not found: build first (cmake --build {BUILD})")
    if not FMNIST.is_dir():
        sys.exit(f"kernel_bench: {FMNIST} missing: apt-get install dataset-fashion-mnist")
    threads = [int(t) for t in args.threads.split(",")]
    R = args.repeats
    blas, blas_path = openblas_handle()
    load0 = os.getloadavg()
    res = {"kernel": {}, "explain": {}}

    stamp = {"pathkernel_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(exe.stat().st_mtime)),
             "library_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(lib.stat().st_mtime))}
    with tempfile.TemporaryDirectory(prefix="pk-kbench-") as work:
        work = pathlib.Path(work)
        # private copies: a rebuild of the tree during the benchmark must not mix builds
        shutil.copy2(exe, work / "pathkernel")
        shutil.copy2(lib, work / "libpathkernel.a")
        exe, lib = work / "pathkernel", work / "libpathkernel.a"
        timer = work / "kernel_timer"
        run(["gcc", "-O2", "-std=c11", f"-I{SOURCE / 'include'}", "-I/usr/include/x86_64-linux-gnu/openblas-openmp",
             HERE / "kernel_timer.c", lib, f"-L{OPENBLAS_OMP}", f"-Wl,-rpath,{OPENBLAS_OMP}", "-lopenblas",
             "-lcjson", "-lisal", "-lz", "-fopenmp", "-lm", "-o", timer])

        # ---------------------------------------------------- (i) data, run
        Xn, _ = load_fashion("train", N_X)
        Yn, _ = load_fashion("test", N_Y)
        np.save(work / "x.npy", Xn); np.save(work / "y.npy", Yn)
        np.save(work / "tx.npy", np.zeros(N_X)); np.save(work / "ty.npy", np.zeros(N_Y))
        xs, ys = f"npy:{work / 'x.npy'},{work / 'tx.npy'}", f"npy:{work / 'y.npy'},{work / 'ty.npy'}"
        krun = work / "krun"
        run([exe, "train", "--data", "fashion-mnist:train", "--first", N_X, "--model", "mlp:512,512:tanh",
             "--loss", "softmax", "--optim", "gd", "--lr", "0.1", "--steps", "1", "--seed", "0", "--quiet",
             "--threads", threads[0], "--out", krun])
        wdir = work / "w"
        run([exe, "weights", krun, "--out", wdir])
        layers = torch_layers(wdir)
        assert [layers[0][0].shape[1]] + [W.shape[0] for W, _ in layers] == DIMS
        X, Y = torch.from_numpy(Xn), torch.from_numpy(Yn)
        flops = structured_flops(N_X, N_Y, DIMS)
        K_ref = None

        for ti, n in enumerate(threads):
            print(f"[tangent kernel, {n} thread(s)]", flush=True)
            set_torch_threads(n, blas)
            r = {}
            # pathkernel, whole process (a first call warms the page cache)
            kout = work / f"K-pk-{n}.npy"
            cmd = [exe, "kernel", krun, "--x", xs, "--y", ys, "--at", "final", "--mode", "full", "--out", kout,
                   "--threads", n]
            # the two whole-run timings interleaved (pk, handwritten, pk, ...),
            # each after one warm-up call, so that a slow phase of the machine
            # falls on both alike
            run(cmd)
            handwritten(layers, X, Y, work / "K-hw.npy")
            procs, hw = [], []
            for _ in range(R):
                procs.append(run(cmd))
                hw.append(handwritten(layers, X, Y, work / "K-hw.npy")[0])
            r["pathkernel_process_s"] = [wall for _, wall in procs]
            r["pathkernel_process_cpu_s"] = [p.cpu_s for p, _ in procs]
            r["handwritten_s"] = hw
            K_pk = np.load(kout)
            r["handwritten_max_rel_diff"] = rel_diff(np.load(work / "K-hw.npy"), K_pk)
            if K_ref is None:
                K_ref = K_pk
            r["pathkernel_threads_max_rel_diff"] = rel_diff(K_pk, K_ref)
            # pk_kernel_tangent alone, and the DGEMM peak of the same OpenBLAS
            p, _ = run([timer, krun, work / "x.npy", work / "y.npy", n, R, work / "K-timer.npy"])
            kt = json.loads(p.stdout)
            r["pathkernel_compute_s"] = kt["kernel_s"]
            r["pathkernel_compute_cpu_s"] = kt["kernel_cpu_s"]
            r["pk_openblas_dgemm_2000_gflops"] = kt["dgemm_gflops"]
            r["omp_threads_after_pk_kernel_tangent"] = kt["omp_threads_after_kernel"]
            r["timer_max_rel_diff"] = rel_diff(np.load(work / "K-timer.npy"), K_pk)
            tbest, tgf = torch_dgemm_peak(2000, max(R, 5))
            r["torch_dgemm_2000_gflops"] = tgf
            if not args.skip_functorch and (ti == 0 or args.ft_threads1):
                for name, fn, chunk in (("functorch_ntk_vps", functorch_ntk_vps, args.vps_chunk),
                                        ("functorch_jac", functorch_jac, args.jac_chunk)):
                    print(f"  {name} ...", flush=True)
                    times = []
                    for _ in range(args.ft_repeats):
                        t, K = fn(layers, X, Y, chunk)
                        times.append(t)
                    r[f"{name}_s"] = times
                    r[f"{name}_max_rel_diff"] = rel_diff(K, K_pk)
                    del K
                    print(f"  {name}: {med(times):.1f} s", flush=True)
            # summary
            pk_proc, pk_comp, hw_s = med(r["pathkernel_process_s"]), med(r["pathkernel_compute_s"]), med(r["handwritten_s"])
            r["median"] = {"pathkernel_process_s": pk_proc, "pathkernel_compute_s": pk_comp, "handwritten_s": hw_s,
                           "pathkernel_process_cpu_s": med(r["pathkernel_process_cpu_s"]),
                           "pathkernel_compute_cpu_s": med(r["pathkernel_compute_cpu_s"])}
            r["handwritten_over_pathkernel"] = hw_s / pk_proc
            r["pathkernel_gflops"] = flops["total"] / pk_comp * 1e-9
            r["pathkernel_gflops_all_pairs"] = flops["all_pairs_total"] / pk_comp * 1e-9
            peak = max(r["pk_openblas_dgemm_2000_gflops"], r["torch_dgemm_2000_gflops"])
            r["dgemm_peak_gflops"] = peak
            r["pathkernel_fraction_of_peak"] = r["pathkernel_gflops"] / peak
            if "functorch_jac_s" in r:
                fj, fv = med(r["functorch_jac_s"]), med(r["functorch_ntk_vps_s"])
                r["median"].update({"functorch_jac_s": fj, "functorch_ntk_vps_s": fv})
                r["functorch_best"] = "jac" if fj <= fv else "ntk_vps"
                r["functorch_over_pathkernel"] = min(fj, fv) / pk_proc
            res["kernel"][str(n)] = r

        # ----------------------------------------------------- (ii) explain
        if not args.skip_explain:
            for n in threads:
                print(f"[explain, {n} thread(s)]", flush=True)
                e = {"train_process_s": [], "train_loop_s": [], "explain_process_s": [], "explain_internal_s": []}
                for rep in range(args.explain_repeats):
                    erun, eout = work / f"erun-{n}-{rep}", work / f"eout-{n}-{rep}"
                    p, wall = run([exe, "train", "--data", "fashion-mnist:train", "--first", "1000",
                                   "--model", "mlp:256:tanh", "--loss", "softmax", "--optim", "sgd", "--batch", "100",
                                   "--lr", "0.05", "--steps", "200", "--seed", "0", "--quiet", "--threads", n,
                                   "--out", erun])
                    m = re.search(r"(\d+) steps in ([0-9.]+) s", p.stdout)
                    e["train_process_s"].append(wall)
                    e["train_loop_s"].append(float(m.group(2)))
                    p, wall = run([exe, "explain", erun, "--query", "fashion-mnist:test", "--first", "100",
                                   "--out", eout, "--threads", n])
                    s = json.loads((eout / "summary.json").read_text())
                    e["explain_process_s"].append(wall)
                    e["explain_internal_s"].append(s["seconds"])
                    e["summary"] = s
                    subprocess.run(["rm", "-rf", str(erun), str(eout)], check=True)
                e["median"] = {k: med(v) for k, v in e.items() if isinstance(v, list)}
                e["explain_over_train_process"] = e["median"]["explain_process_s"] / e["median"]["train_process_s"]
                e["explain_over_train_loop"] = e["median"]["explain_internal_s"] / e["median"]["train_loop_s"]
                res["explain"][str(n)] = e
    load1 = os.getloadavg()

    # ------------------------------------------------------------ report
    print(f"\nkernel_bench: tangent kernel of 784-512-512-10 tanh, {N_X} x {N_Y} Fashion-MNIST, full 10x10 blocks, "
          f"float64; medians of {R} (explain: {args.explain_repeats}, functorch: {args.ft_repeats})")
    print(f"flops pathkernel does: {flops['total'] / 1e9:.2f} GFLOP "
          f"(delta Grams {flops['gram_deltas'] / 1e9:.2f}, activation Grams {flops['gram_activations'] / 1e9:.2f}, "
          f"forward {flops['forward'] / 1e9:.2f}, backprop {flops['backprop'] / 1e9:.2f}); plain formula over all "
          f"output pairs: {flops['all_pairs_total'] / 1e9:.2f} GFLOP")
    fmt = "{:>7} | {:>12} | {:>12} | {:>12} | {:>12} | {:>12} | {:>9} | {:>9} | {:>10} | {:>10}"
    hdr = ("threads", "pk process", "pk compute", "handwritten", "ft jac", "ft ntk-vps", "ft/pk", "hw/pk",
           "pk GFLOP/s", "DGEMM peak")
    print(fmt.format(*hdr))
    print(fmt.format(*["-" * len(h) for h in hdr]))
    for n, r in res["kernel"].items():
        m = r["median"]
        print(fmt.format(n, f"{m['pathkernel_process_s']:.3f} s", f"{m['pathkernel_compute_s']:.3f} s",
                         f"{m['handwritten_s']:.3f} s",
                         f"{m['functorch_jac_s']:.1f} s" if "functorch_jac_s" in m else "-",
                         f"{m['functorch_ntk_vps_s']:.1f} s" if "functorch_ntk_vps_s" in m else "-",
                         f"{r['functorch_over_pathkernel']:.0f}x" if "functorch_over_pathkernel" in r else "-",
                         f"{r['handwritten_over_pathkernel']:.2f}x", f"{r['pathkernel_gflops']:.1f}",
                         f"{r['dgemm_peak_gflops']:.1f}"))
    for n, r in res["kernel"].items():
        if r["omp_threads_after_pk_kernel_tangent"] != int(n):
            print(f"  WARNING [{n} threads]: after pk_kernel_tangent the library runs on "
                  f"{r['omp_threads_after_pk_kernel_tangent']} OpenMP thread(s), not {n}")
        diffs = {k: f"{v:.1e}" for k, v in r.items() if k.endswith("max_rel_diff")}
        m = r["median"]
        print(f"  [{n} threads] CPU seconds (user + system) of pathkernel: process {m['pathkernel_process_cpu_s']:.3f}, "
              f"compute {m['pathkernel_compute_cpu_s']:.3f}; GFLOP/s counting the all-pairs formula's flops: "
              f"{r['pathkernel_gflops_all_pairs']:.1f}")
        print(f"  [{n} threads] DGEMM 2000: pk's OpenBLAS {r['pk_openblas_dgemm_2000_gflops']:.1f}, torch "
              f"{r['torch_dgemm_2000_gflops']:.1f} GFLOP/s; pathkernel at {100 * r['pathkernel_fraction_of_peak']:.0f}% "
              f"of peak; max rel diff vs pathkernel: {diffs}")
    if res["explain"]:
        print("\nexplain: 784-256-10 tanh, softmax, sgd batch 100 lr 0.05, 200 steps, 1000 training examples, "
              "100 queries, gl2, contributions + trace kernel")
        fmt2 = "{:>7} | {:>13} | {:>13} | {:>15} | {:>15} | {:>13} | {:>13}"
        hdr2 = ("threads", "train process", "train loop", "explain process", "explain own", "ratio process",
                "ratio own")
        print(fmt2.format(*hdr2))
        print(fmt2.format(*["-" * len(h) for h in hdr2]))
        for n, e in res["explain"].items():
            m = e["median"]
            print(fmt2.format(n, f"{m['train_process_s']:.2f} s", f"{m['train_loop_s']:.2f} s",
                              f"{m['explain_process_s']:.2f} s", f"{m['explain_internal_s']:.2f} s",
                              f"{e['explain_over_train_process']:.1f}x", f"{e['explain_over_train_loop']:.1f}x"))
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} ({os.cpu_count()} CPUs; background load "
          f"makes these numbers noisy)")

    doc = {
        "benchmark": "kernel_bench",
        "task": {
            "kernel": {"layers": DIMS, "activation": "tanh", "x": f"fashion-mnist:train first {N_X}",
                       "y": f"fashion-mnist:test first {N_Y}", "mode": "full", "weights": "after 1 gd step lr 0.1",
                       "dtype": "float64", "flops": flops},
            "explain": {"layers": [784, 256, 10], "activation": "tanh", "loss": "softmax", "optim": "sgd",
                        "batch": 100, "lr": 0.05, "steps": 200, "n_train": 1000, "n_query": 100, "quad": "gl2"},
            "repeats": R, "explain_repeats": args.explain_repeats, "functorch_repeats": args.ft_repeats,
            "jac_chunk": args.jac_chunk, "vps_chunk": args.vps_chunk,
        },
        "environment": {
            "platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": np.__version__, "openblas_in_torch": blas_path,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "loadavg_before": load0, "loadavg_after": load1, "pathkernel": str(BUILD / "pathkernel"), **stamp,
        },
        "notes": "Seconds are wall-clock. pathkernel_process_s: the whole `pathkernel kernel` process; "
                 "pathkernel_compute_s: pk_kernel_tangent alone (bench/kernel_timer.c). handwritten_s: compute + "
                 "np.save. functorch_*: compute only (weights and inputs already in memory). Ratios are other / "
                 "pathkernel process time (above 1: pathkernel is faster). pathkernel_gflops: the GEMM flops "
                 "pk_kernel_tangent does (task.kernel.flops.total, see structured_flops) / pathkernel_compute_s; "
                 "pathkernel_gflops_all_pairs: the plain formula's flops (all_pairs_total) / the same time. "
                 "*_cpu_s: CPU seconds (user + system, all threads) of the same runs.",
        "results": res,
    }
    write_results(args.out, doc)


if __name__ == "__main__":
    main()
