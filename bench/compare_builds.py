#!/usr/bin/env python3
"""Do two builds of pathkernel compute the same bytes?

    python3 bench/compare_builds.py OLD/pathkernel NEW/pathkernel [--out DIR]

Trains a fixed set of runs (gd, sgd, momentum, adam, adamw with weight decay;
--keep 1 and --keep 5) with each binary on the embedded digits, and runs
kernel, explain, attribute and selfinfluence on each run. Prints, for every
output file, whether the two builds wrote the same bytes and, where they did
not, the largest relative difference of its arrays (max |a - b| / max |b|).
Exit status 0 when every run directory is byte-identical and every other
output is identical or within --tol (default 1e-14) relative; 1 otherwise."""
import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

SOURCE = pathlib.Path(__file__).resolve().parent.parent
DIGITS = SOURCE / "data" / "digits.csv.gz"

RUNS = {
    "gd-keep1": ["--optim", "gd", "--lr", "0.1", "--keep", "1"],
    "sgd-keep1": ["--optim", "sgd", "--batch", "64", "--lr", "0.1", "--keep", "1"],
    "sgd-keep5": ["--optim", "sgd", "--batch", "64", "--lr", "0.1", "--keep", "5"],
    "momentum-keep5": ["--optim", "momentum", "--momentum", "0.9", "--batch", "64", "--lr", "0.05", "--keep", "5"],
    "adam-keep1": ["--optim", "adam", "--batch", "64", "--lr", "0.005", "--keep", "1"],
    "adamw-wd-keep5": ["--optim", "adamw", "--batch", "64", "--lr", "0.005", "--weight-decay", "0.01",
                       "--keep", "5"],
}


RESIDUALS = {"max_abs_err", "max_rel_err", "max_abs_residual"}


def run(exe, *args):
    p = subprocess.run([str(exe)] + [str(a) for a in args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{exe} {' '.join(map(str, args))}: exit {p.returncode}\n{p.stderr}")


def kernel_inputs(work):
    """npy spec of the first 30 digits, the kernel's inputs."""
    import gzip
    with gzip.open(DIGITS, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", skiprows=1, max_rows=30)
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "x30.npy", rows[:, :-1])
    np.save(work / "y30.npy", rows[:, -1].astype(np.int64))
    return f"npy:{work / 'x30.npy'},{work / 'y30.npy'}"


def outputs(exe, work, name, extra):
    """Every file the commands write for one run, under work/name."""
    d = work / name
    common = ["--first", 400]
    run(exe, "train", "--data", DIGITS, *common, "--standardize", "--model", "mlp:24,16:tanh", "--loss",
        "softmax", "--steps", 30, "--seed", 7, "--quiet", *extra, "--out", d / "run")
    q = ["--query", DIGITS, "--first", 12]
    run(exe, "kernel", d / "run", "--at", "final", "--x", kernel_inputs(work), "--mode", "full",
        "--out", d / "kernel.npy")
    run(exe, "explain", d / "run", *q, "--mode", "full", "--quad", "gl2", "--out", d / "explain")
    run(exe, "attribute", d / "run", *q, "--top", 8, "--out", d / "attribute", "--quiet")
    if name.startswith(("gd", "sgd")):
        run(exe, "selfinfluence", d / "run", "--out", d / "si.csv")
    return d


def arrays(path):
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".csv":
        rows = np.genfromtxt(path, delimiter=",", skip_header=1)
        return np.atleast_1d(rows)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--tol", type=float, default=1e-14)
    ap.add_argument("--out", help="keep the outputs here (default: a temporary directory, removed)")
    a = ap.parse_args()
    work = pathlib.Path(a.out) if a.out else pathlib.Path(tempfile.mkdtemp(prefix="pk-compare-"))
    ok = True
    try:
        for name, extra in RUNS.items():
            old = outputs(a.old, work / "old", name, extra)
            new = outputs(a.new, work / "new", name, extra)
            for f in sorted(p for p in old.rglob("*") if p.is_file()):
                rel = f.relative_to(old)
                g = new / rel
                if not g.is_file():
                    print(f"{name}/{rel}: missing in the new build's output")
                    ok = False
                    continue
                if f.name == "summary.json":  # seconds and process counts differ by nature
                    fa, fb = (json.loads(p.read_text()) for p in (f, g))
                    for k in ("seconds", "ranks"):
                        fa.pop(k, None), fb.pop(k, None)
                    moved = sorted(k for k in fa if fa[k] != fb.get(k))
                    if set(moved) <= RESIDUALS and set(fa) == set(fb):
                        # the residual of the check, a difference of nearly equal sums: it moves with the last bits
                        print(f"{name}/{rel}: " + ("identical" if not moved else "residuals " + ", ".join(
                            f"{k} {fa[k]:.3g} -> {fb[k]:.3g}" for k in moved)))
                        continue
                    same = False
                else:
                    same = f.read_bytes() == g.read_bytes()
                if same:
                    print(f"{name}/{rel}: identical")
                    continue
                in_run = rel.parts[0] == "run"
                x, y = arrays(f), arrays(g)
                if x is None or y is None or x.shape != y.shape:
                    print(f"{name}/{rel}: DIFFERENT (not comparable as arrays)")
                    ok = False
                    continue
                scale = np.nanmax(np.abs(x)) or 1.0
                diff = float(np.nanmax(np.abs(x - y)) / scale)
                verdict = "DIFFERENT" if in_run or diff > a.tol else "within tolerance"
                print(f"{name}/{rel}: {verdict}, max relative difference {diff:.2e}")
                ok = ok and verdict != "DIFFERENT"
    finally:
        if not a.out:
            shutil.rmtree(work, ignore_errors=True)
    print("same results" if ok else "the builds differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
