"""Does dropout change the kernel machine? The same 784-128-10 tanh MLP on
2,000 Fashion-MNIST training images (10% of the labels flipped, sgd, batch
64, lr 0.1, 960 steps: docs/ATTRIBUTION.md's setting A) with dropout 0, 0.2
and 0.5 after the hidden layer. For each: the representation's error (gl4),
how far the tangent kernel moved, how the path kernel relates to the final
tangent kernel, and how well exact self-influence finds the flipped labels
(docs/ATTRIBUTION.md, "Dropout").

Run by hand:  python3 bench/dropout_fmnist.py [OUT_DIR]   (PK_BUILD: the build directory)
"""
import gzip
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

PK = pathlib.Path(os.environ.get("PK_BUILD", "build")).resolve() / "pathkernel"
OUT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "dropout-fmnist")
Q = 100  # test queries


def pk(*args):
    return subprocess.run([str(PK), *map(str, args)], check=True, capture_output=True, text=True).stdout


def cos_rows(A, B):
    """Mean over rows of the cosine between A's and B's rows."""
    return float(np.mean(np.sum(A * B, 1) / (np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1))))


# the first Q test images as the loader reads them (pixels / 255), flat
with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz") as f:
    XQ = np.frombuffer(f.read(), np.uint8, Q * 784, 16).reshape(Q, 784) / 255.0
with gzip.open("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz") as f:
    YQ = np.frombuffer(f.read(), np.uint8, Q, 8).astype(np.int64)
OUT.mkdir(parents=True, exist_ok=True)
np.save(OUT / "q_x.npy", XQ)
np.save(OUT / "q_y.npy", YQ)
qspec = f"npy:{OUT / 'q_x.npy'},{OUT / 'q_y.npy'}"
rows = []
for p in (0.0, 0.2, 0.5):
    d = OUT / f"p{p}"
    t0 = time.time()
    if not (d / "mislabel.json").exists():
        pk("mislabel", "--data", "fashion-mnist:train", "--first", 2000, "--standardize", "--flip", 0.1,
           "--model", f"flatten;dense:128;tanh;dropout:{p};dense", "--loss", "softmax", "--optim", "sgd",
           "--batch", 64, "--lr", 0.1, "--steps", 960, "--seed", 0, "--keep", 96, "--out", d, "--quiet")
    ml = json.loads((d / "mislabel.json").read_text())
    run, train = d / "run", f"npy:{d / 'data_x.npy'},{d / 'data_y.npy'}"
    # the representation (gl4) and the path kernel K^p(x, x_i) (trace) of Q test images
    pk("explain", run, "--query", qspec, "--quad", "gl4", "--out", d / "ex")
    s = json.loads((d / "ex" / "summary.json").read_text())
    Kp = np.load(d / "ex" / "kernel.npy")                      # (Q, N)
    contrib = np.load(d / "ex" / "contrib.npy")                # (Q, N, C)
    pred = np.load(d / "ex" / "pred.npy")
    # tangent kernels (trace) of the test images against the training set, at init and final
    for at in ("init", "final"):
        pk("kernel", run, "--x", qspec, "--y", train, "--at", at, "--mode", "trace",
           "--out", d / f"K_{at}.npy")
    K0, KT = np.load(d / "K_init.npy"), np.load(d / "K_final.npy")
    move = float(np.linalg.norm(KT - K0) / np.linalg.norm(K0))
    flipped = np.loadtxt(d / "mislabel.csv", delimiter=",", skiprows=1, usecols=None, dtype=str)
    header = (d / "mislabel.csv").read_text().splitlines()[0].split(",")
    fcol, scol = header.index("flipped"), header.index("self_influence")
    fl = flipped[:, fcol].astype(int) == 1
    si = flipped[:, scol].astype(float)
    # share of |contributions| to each query's predicted class held by flipped examples
    c = np.abs(contrib[np.arange(Q), :, np.argmax(pred, 1)])
    rows.append({
        "p": p, "train_acc": ml["train_accuracy"], "gl4_rel_err": s["max_rel_err"],
        "kernel_movement": move, "cos_Kp_KT": cos_rows(Kp, KT), "cos_Kp_K0": cos_rows(Kp, K0),
        "Kp_mean": float(np.mean(Kp)),
        "flipped_share": float(np.sum(c[:, fl]) / np.sum(c)),
        "si_auc": ml["scores"]["self_influence"]["auc"], "si_top10": ml["scores"]["self_influence"]["found_top10"],
        "si_flipped_over_clean": float(np.median(si[fl]) / np.median(si[~fl])),
        "tracin5_auc": ml["scores"]["tracin5"]["auc"], "final_loss_auc": ml["scores"]["final_loss"]["auc"],
        "seconds": time.time() - t0,
    })
    print(json.dumps(rows[-1]), flush=True)
(OUT / "summary.json").write_text(json.dumps(rows, indent=1))
