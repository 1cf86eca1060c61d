"""What the benchmarks share: Fashion-MNIST straight from Debian's files,
and the OpenBLAS that torch loaded (to set its thread count)."""
import ctypes
import gzip
import json
import pathlib

import numpy as np

FMNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


def load_fashion(split, n):
    """First n images of split "train" or "test" as (n, 784) float64 in
    [0, 1], and their labels (n,) int64."""
    pre = "train" if split == "train" else "t10k"
    with gzip.open(FMNIST / f"{pre}-images-idx3-ubyte.gz") as f:
        raw = f.read(16 + n * 784)
    with gzip.open(FMNIST / f"{pre}-labels-idx1-ubyte.gz") as f:
        lab = f.read(8 + n)
    assert int.from_bytes(raw[:4], "big") == 2051 and int.from_bytes(lab[:4], "big") == 2049
    x = np.frombuffer(raw, np.uint8, n * 784, 16).reshape(n, 784).astype(np.float64) / 255.0
    y = np.frombuffer(lab, np.uint8, n, 8).astype(np.int64)
    return x, y


def openblas_handle():
    """(library, path) of the OpenBLAS that torch loaded (through
    libblas.so.3), or (None, None): torch does not set its thread count."""
    paths = []
    for line in open("/proc/self/maps"):
        parts = line.split()
        if len(parts) >= 6 and "openblas" in parts[-1] and ".so" in parts[-1] and parts[-1] not in paths:
            paths.append(parts[-1])
    for path in sorted(paths, key=lambda p: "libopenblas" not in p):
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_set_num_threads.argtypes = [ctypes.c_int]
            lib.openblas_get_num_threads.restype = ctypes.c_int
            return lib, path
        except (OSError, AttributeError):
            pass
    return None, None


def write_results(path, doc):
    """Write a benchmark's results as indented JSON (creating the folder)."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
