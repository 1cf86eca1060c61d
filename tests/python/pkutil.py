"""What the Python tests share: running the CLI, comparing arrays, reading a
run directory's files (formats in src/run/run.h) and exported weights."""
import pathlib
import struct
import subprocess
import zlib

import numpy as np
import pytest

from conftest import BUILD_DIR


def pk_exe():
    exe = BUILD_DIR / "pathkernel"
    if not exe.is_file():
        pytest.fail(f"{exe} does not exist: build it first (cmake --build {BUILD_DIR})")
    return exe


def pk_run(*args, expect=0):
    """Run the CLI; fail the test (with the command line and stderr) unless it
    exits with `expect` (None: any). Returns the CompletedProcess."""
    cmd = [str(pk_exe())] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if expect is not None and p.returncode != expect:
        pytest.fail(f"{' '.join(cmd)}\nexit {p.returncode} (expected {expect})\n"
                    f"stdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def pk(*args):
    """The CLI's stdout; the test fails on a non-zero exit."""
    return pk_run(*args).stdout


def rel_err(got, want):
    """max |got - want| / max |want|, after checking shapes and finiteness."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    assert np.all(np.isfinite(got)), "non-finite values"
    scale = np.max(np.abs(want))
    assert scale > 0, "reference is all zeros: the comparison would mean nothing"
    return float(np.max(np.abs(got - want)) / scale)


def save_data(d, name, x, y):
    """npy:X,Y spec of a data set saved under d."""
    d = pathlib.Path(d)
    np.save(d / f"{name}_x.npy", np.ascontiguousarray(x, dtype=np.float64))
    np.save(d / f"{name}_y.npy", np.ascontiguousarray(y))
    return f"npy:{d / f'{name}_x.npy'},{d / f'{name}_y.npy'}"


def load_weights(d, n_layers=None):
    """[(W1, b1), (W2, b2), ...] (effective weights) from `pathkernel weights`."""
    d = pathlib.Path(d)
    layers, l = [], 1
    while (d / f"W{l}.npy").exists():
        layers.append((np.load(d / f"W{l}.npy"), np.load(d / f"b{l}.npy")))
        l += 1
    assert layers, f"no W1.npy in {d}"
    if n_layers is not None:
        assert len(layers) == n_layers, f"{d}: {len(layers)} layers exported, expected {n_layers}"
    return layers


def read_traj(path):
    """trajectory.bin: dict with T, N, lr, loss (T), off (T+1), idx (total);
    checks magic, version, sizes and crc32."""
    buf = pathlib.Path(path).read_bytes()
    assert buf[:8] == b"PKTRAJ\0\0", "bad magic"
    version, zero, T, N, total = struct.unpack_from("<IIQQQ", buf, 8)
    assert version == 1 and zero == 0
    assert len(buf) == 40 + 16 * T + 8 * (T + 1) + 4 * total + 4, "sizes do not match the file"
    (crc,) = struct.unpack_from("<I", buf, len(buf) - 4)
    assert crc == zlib.crc32(buf[:-4]), "crc32 mismatch"
    o = 40
    lr = np.frombuffer(buf, "<f8", T, o); o += 8 * T
    loss = np.frombuffer(buf, "<f8", T, o); o += 8 * T
    off = np.frombuffer(buf, "<u8", T + 1, o); o += 8 * (T + 1)
    idx = np.frombuffer(buf, "<u4", total, o)
    assert off[0] == 0 and off[-1] == total and np.all(np.diff(off.astype(np.int64)) >= 0)
    return {"T": T, "N": N, "lr": lr.copy(), "loss": loss.copy(), "off": off, "idx": idx}


def batches(tr):
    """The example indices of every step (an empty range = all, in order)."""
    out = []
    for t in range(tr["T"]):
        a, b = int(tr["off"][t]), int(tr["off"][t + 1])
        out.append(tr["idx"][a:b].astype(np.int64) if b > a else np.arange(tr["N"]))
    return out


def traj_batches(path):
    """(lr (T), the batch of every step, N) of a run's trajectory.bin."""
    tr = read_traj(path)
    return tr["lr"], batches(tr), tr["N"]


def target_np(target, F, y):
    """g of the logits F (n, C) with labels y, written out in numpy."""
    n = F.shape[0]
    if target.startswith("output:"):
        return F[:, int(target[7:])]
    lab = F[np.arange(n), y]
    if target == "label":
        return lab
    if target == "margin":
        other = F.copy()
        other[np.arange(n), y] = -np.inf
        return lab - other.max(axis=1)
    m = F.max(axis=1)
    return m + np.log(np.exp(F - m[:, None]).sum(axis=1)) - lab   # cross-entropy


def assert_top_is_explains(at_dir, pred, contrib, top=3):
    """attribute's proponents (DIR output) are the `top` largest of explain's
    contributions to each query's predicted class, values to 1e-10."""
    got = np.load(pathlib.Path(at_dir) / "proponents.npy")
    vals = np.load(pathlib.Path(at_dir) / "proponent_values.npy")
    for q in range(len(pred)):
        phi = contrib[q, :, int(np.argmax(pred[q]))]
        want = np.argsort(-phi, kind="stable")[:top]
        assert list(got[q]) == list(want), (q, got[q], want)
        assert rel_err(vals[q], phi[want]) < 1e-10
