"""pk_data_load against numpy: every input format is written with numpy into
tmp_path, loaded by the library through tests/tools/pk_data_dump (which
writes what it loaded as .npy), and compared exactly with the arrays numpy
wrote. Also example selection (--first/--random), moments/standardisation,
the fingerprint, the class count and the real data sets."""
import ctypes
import gzip
import io
import pathlib
import struct
import subprocess

import numpy as np
import pytest

FMNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


def dump(tool, spec, out, *args, expect_rc=0):
    """Run pk_data_dump; return (x, y, meta) on success, the process otherwise."""
    p = subprocess.run([str(tool("pk_data_dump")), str(spec), str(out), *map(str, args)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == expect_rc, (p.returncode, p.stderr)
    if expect_rc != 0:
        return p
    assert p.stderr == ""
    meta = {}
    for line in (out / "meta.txt").read_text().splitlines():
        k, _, v = line.partition(" ")
        meta[k] = v
    x = np.load(out / "x.npy")
    y = np.load(out / "y.npy")
    assert x.dtype == np.float64 and y.dtype == np.float64
    assert x.shape == (int(meta["n"]), int(meta["d"]))
    assert y.shape == (int(meta["n"]), int(meta["ty"]))
    assert meta["source"] == str(spec)
    return x, y, meta


def same(a, b):
    """Bit-exact equality of two float64 arrays (so -0.0 and NaN payloads count)."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(a.view(np.uint64), b.view(np.uint64))


def fnv1a(data, h=0xCBF29CE484222325):
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def save_npy(path, arr, version=None):
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=version)
    return path


# ------------------------------------------------------------------- npy

DTYPES = ["<f8", "<f4", "<i8", "<i4", "|u1"]


def sample(dtype, shape, rng):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        a = rng.standard_normal(shape) * 10.0 ** rng.integers(-30, 30, shape)
        a.flat[0] = -0.0
        if a.size > 1:
            a.flat[1] = np.finfo(dt).tiny / 4  # subnormal
        if a.size > 2:
            a.flat[2] = np.finfo(dt).max
        return a.astype(dt)
    if dt.kind == "u":
        return rng.integers(0, 256, shape).astype(dt)
    info = np.iinfo(dt)
    a = rng.integers(info.min, info.max, shape, endpoint=True).astype(dt)
    a.flat[0] = info.min
    if a.size > 1:
        a.flat[1] = info.max
    return a


@pytest.mark.parametrize("fdt", DTYPES)
@pytest.mark.parametrize("tdt", DTYPES)
def test_npy_dtypes(tool, tmp_path, fdt, tdt):
    rng = np.random.default_rng(10 * DTYPES.index(fdt) + DTYPES.index(tdt))
    X = sample(fdt, (7, 5), rng)
    Y = sample(tdt, (7,), rng)
    f = save_npy(tmp_path / "f.npy", X)
    t = save_npy(tmp_path / "t.npy", Y)
    x, y, meta = dump(tool, f"npy:{f},{t}", tmp_path / "out")
    assert same(x, X.astype(np.float64))
    assert same(y, Y.astype(np.float64).reshape(-1, 1))
    assert (meta["img_h"], meta["img_w"]) == ("0", "0")


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_versions(tool, tmp_path, version):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 3))
    Y = rng.standard_normal((4, 2)).astype(np.float32)
    f = save_npy(tmp_path / "f.npy", X, version)
    t = save_npy(tmp_path / "t.npy", Y, version)
    x, y, meta = dump(tool, f"npy:{f},{t}", tmp_path / "out")
    assert same(x, X) and same(y, Y.astype(np.float64))
    assert meta["ty"] == "2"


def test_npy_1d_features(tool, tmp_path):
    X = np.arange(9, dtype=np.int32) - 4
    Y = np.arange(9, dtype=np.uint8)
    f = save_npy(tmp_path / "f.npy", X)
    t = save_npy(tmp_path / "t.npy", Y)
    x, y, meta = dump(tool, f"npy:{f},{t}", tmp_path / "out")
    assert same(x, X.astype(np.float64).reshape(-1, 1))
    assert meta["d"] == "1" and meta["classes"] == "9"


def test_npy_3d_images(tool, tmp_path):
    rng = np.random.default_rng(2)
    X = rng.integers(0, 256, (6, 4, 3)).astype(np.uint8)
    Y = rng.standard_normal((6, 3))
    f = save_npy(tmp_path / "f.npy", X)
    t = save_npy(tmp_path / "t.npy", Y)
    x, y, meta = dump(tool, f"npy:{f},{t}", tmp_path / "out")
    assert same(x, X.reshape(6, 12).astype(np.float64))
    assert same(y, Y)
    assert (meta["d"], meta["img_h"], meta["img_w"], meta["ty"]) == ("12", "4", "3", "3")
    assert meta["classes"] == "none"   # real-valued targets are not class labels


def test_npy_write_matches_numpy_bytes(tool, tmp_path):
    """pk_npy_write produces exactly the bytes of numpy.save (header padding included)."""
    for n, d in [(1, 1), (3, 4), (123456, 1), (10, 0)]:
        X = np.arange(n * d, dtype=np.float64).reshape(n, d) / 7
        Y = np.ones(n)
        f = save_npy(tmp_path / "f.npy", X)
        t = save_npy(tmp_path / "t.npy", Y)
        out = tmp_path / f"out{n}_{d}"
        if d == 0:
            dump(tool, f"npy:{f},{t}", out, expect_rc=2)
            continue
        dump(tool, f"npy:{f},{t}", out)
        ref = io.BytesIO()
        np.save(ref, X)
        assert (out / "x.npy").read_bytes() == ref.getvalue()


# ------------------------------------------------ pk_npy_read/write (ctypes)

@pytest.fixture(scope="module")
def npy_api(libpathkernel):
    lib = libpathkernel
    size8 = ctypes.c_size_t * 8
    lib.pk_npy_write.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_double),
                                 ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
    lib.pk_npy_write.restype = ctypes.c_int
    lib.pk_npy_read.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_double)),
                                ctypes.POINTER(ctypes.c_size_t), size8]
    lib.pk_npy_read.restype = ctypes.c_int
    lib.pk_last_error.restype = ctypes.c_char_p
    libc = ctypes.CDLL(None)
    libc.free.argtypes = [ctypes.c_void_p]

    def write(path, a, shape=None):
        a = np.asarray(a, dtype=np.float64, order="C")   # keeps 0-d arrays 0-d
        shape = a.shape if shape is None else shape
        shp = (ctypes.c_size_t * max(len(shape), 1))(*shape)
        rc = lib.pk_npy_write(str(path).encode(), a.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                              len(shape), shp)
        return rc, lib.pk_last_error().decode() if rc else ""

    def read(path):
        ptr = ctypes.POINTER(ctypes.c_double)()
        nd = ctypes.c_size_t()
        shp = size8()
        rc = lib.pk_npy_read(str(path).encode(), ctypes.byref(ptr), ctypes.byref(nd), shp)
        if rc:
            assert not ptr, "no array may be returned on failure"
            return rc, lib.pk_last_error().decode()
        shape = tuple(shp[i] for i in range(nd.value))
        n = int(np.prod(shape, dtype=np.int64))
        out = np.ctypeslib.as_array(ptr, (max(n, 1),))[:n].copy().reshape(shape)
        libc.free(ptr)
        return rc, out

    return write, read


SHAPES = [(), (0,), (1,), (5,), (3, 4), (0, 3), (2, 3, 4), (1,) * 8, (2, 1, 2, 1, 2, 1, 2, 1)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_npy_write_read_roundtrip(npy_api, tmp_path, shape):
    write, read = npy_api
    rng = np.random.default_rng(len(shape))
    a = np.asarray(rng.standard_normal(shape))
    p = tmp_path / "a.npy"
    assert write(p, a) == (0, "")
    assert not list(tmp_path.glob("*.tmp.*")), "temporary file left behind"
    ref = io.BytesIO()
    np.save(ref, a)
    assert p.read_bytes() == ref.getvalue(), "not the bytes numpy.save writes"
    b = np.load(p)
    assert b.shape == shape and same(b, a)
    rc, c = read(p)
    assert rc == 0 and c.shape == shape and same(c, a)


def test_npy_write_header_padding_like_numpy(npy_api, tmp_path):
    """numpy leaves 21 - digits(shape[0]) spare spaces; visible with long shapes."""
    write, _ = npy_api
    for shape in [(0, 10**12, 10**12, 10**12), (0, 10**15, 10**15, 10**15, 10**15)]:
        p = tmp_path / "z.npy"
        assert write(p, np.zeros(1), shape)[0] == 0
        ref = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            ref, {"descr": "<f8", "fortran_order": False, "shape": shape})
        assert p.read_bytes() == ref.getvalue()


def test_npy_write_rejects(npy_api, tmp_path):
    write, _ = npy_api
    rc, msg = write(tmp_path / "a.npy", np.zeros(1), (1,) * 9)
    assert rc == 2 and str(tmp_path / "a.npy") in msg
    rc, msg = write(tmp_path / "no_such_dir" / "a.npy", np.zeros(3))
    assert rc == 3 and "no_such_dir" in msg            # PK_ERR_IO


@pytest.mark.parametrize("dtype", DTYPES)
def test_npy_read_dtypes(npy_api, tmp_path, dtype):
    _, read = npy_api
    a = sample(dtype, (3, 2, 2), np.random.default_rng(4))
    p = save_npy(tmp_path / "a.npy", a, (2, 0))
    rc, b = read(p)
    assert rc == 0 and same(b, a.astype(np.float64))


def test_npy_read_errors_name_path_and_offset(npy_api, tmp_path):
    _, read = npy_api
    p = tmp_path / "short.npy"
    p.write_bytes(npy_bytes(np.zeros((4, 4)))[:-8])
    rc, msg = read(p)
    assert rc == 2 and msg.startswith(f"{p}: byte offset 128:"), msg
    # a missing input is the caller's bad input: PK_ERR_INPUT (2), like a malformed one
    rc, msg = read(tmp_path / "nope.npy")
    assert rc == 2 and msg.startswith(str(tmp_path / "nope.npy")) and "cannot open" in msg, msg


def npy_bytes(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


# ------------------------------------------------------------------- csv

def csv_text(X, Y, header=None, eol="\n"):
    rows = [] if header is None else [header]
    for xr, yv in zip(X, Y):
        rows.append(",".join(repr(float(v)) for v in list(xr) + [yv]))
    return eol.join(rows) + eol


def csv_data(seed=3, n=11, d=4):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * 10.0 ** rng.integers(-8, 8, (n, d))
    X[0, 0] = 0.0
    X[1, 1] = -1e-300
    X[2, -1] = 123456789.0
    Y = rng.integers(0, 3, n).astype(np.float64)
    return X, Y


@pytest.mark.parametrize("variant", ["plain", "header", "crlf", "trailing_blank", "spaces", "bom"])
def test_csv(tool, tmp_path, variant):
    X, Y = csv_data()
    header = "a,b,c,d,label" if variant in ("header", "bom") else None
    text = csv_text(X, Y, header, "\r\n" if variant == "crlf" else "\n")
    if variant == "trailing_blank":
        text += "\n\n  \n"
    if variant == "spaces":
        text = text.replace(",", " , ")
    if variant == "bom":
        text = "\ufeff" + text
    p = tmp_path / "data.csv"
    p.write_text(text, encoding="utf-8", newline="")
    x, y, meta = dump(tool, p, tmp_path / "out")
    assert same(x, X) and same(y, Y.reshape(-1, 1))
    assert meta["classes"] == str(int(Y.max()) + 1)


def test_csv_gz(tool, tmp_path):
    X, Y = csv_data(4, n=50, d=2)
    p = tmp_path / "data.csv.gz"
    p.write_bytes(gzip.compress(csv_text(X, Y, "x1,x2,y").encode()))
    x, y, _ = dump(tool, p, tmp_path / "out")
    assert same(x, X) and same(y, Y.reshape(-1, 1))


def test_csv_without_newline_at_end(tool, tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("1,2,3\n4,5e-3,-6")
    x, y, _ = dump(tool, p, tmp_path / "out")
    assert same(x, [[1, 2], [4, 5e-3]]) and same(y, [[3], [-6]])


def test_repo_digits_csv(tool, tmp_path, source_dir):
    p = source_dir / "data" / "digits.csv.gz"
    if not p.exists():
        pytest.skip(f"{p} not present")
    ref = np.loadtxt(p, delimiter=",")
    x, y, meta = dump(tool, p, tmp_path / "out")
    assert same(x, ref[:, :-1]) and same(y, ref[:, -1:])
    assert meta["classes"] == "10"


# -------------------------------------------------------------- svmlight

def test_svmlight(tool, tmp_path):
    rng = np.random.default_rng(5)
    n, d = 20, 9
    X = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.4)
    X[X == 0] = 0.0                         # absent entries are +0.0, not -0.0
    X[3, d - 1] = 2.5                       # d = max index seen
    Y = rng.standard_normal(n)
    lines = ["# a comment line", ""]
    for i in range(n):
        toks = [repr(float(Y[i]))] + [f"{j + 1}:{X[i, j]!r}" for j in range(d) if X[i, j] != 0]
        line = " ".join(toks)
        if i % 3 == 0:
            line += "  # trailing comment 1:2"
        if i % 4 == 0:
            line = line.replace(" ", "\t", 1) + "\r"
        lines.append(line)
    for ext in ("svm", "libsvm"):
        p = tmp_path / f"data.{ext}"
        p.write_text("\n".join(lines) + "\n\n")
        x, y, meta = dump(tool, p, tmp_path / f"out_{ext}")
        assert same(x, X) and same(y, Y.reshape(-1, 1))
        assert meta["d"] == str(d)


def test_svmlight_example_without_features(tool, tmp_path):
    p = tmp_path / "d.svm"
    p.write_text("1 2:0.5\n0\n-1 1:3 3:1e-2\n")
    x, y, _ = dump(tool, p, tmp_path / "out")
    assert same(x, [[0, 0.5, 0], [0, 0, 0], [3, 0, 1e-2]]) and same(y, [[1], [0], [-1]])


# ------------------------------------------------------------------- idx

def idx_images(a):
    n, h, w = a.shape
    return struct.pack(">IIII", 0x803, n, h, w) + a.astype(np.uint8).tobytes()


def idx_labels(a):
    return struct.pack(">II", 0x801, len(a)) + a.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gz_images,gz_labels", [(False, False), (True, True), (True, False)])
def test_idx(tool, tmp_path, gz_images, gz_labels):
    rng = np.random.default_rng(6)
    imgs = rng.integers(0, 256, (13, 5, 7)).astype(np.uint8)
    imgs[0, 0, 0], imgs[0, 0, 1] = 0, 255
    labs = rng.integers(0, 10, 13).astype(np.uint8)
    bi, bl = idx_images(imgs), idx_labels(labs)
    # Names say nothing about compression: gzip is detected by its magic.
    ip, lp = tmp_path / "images.idx", tmp_path / "labels.gz"
    ip.write_bytes(gzip.compress(bi) if gz_images else bi)
    lp.write_bytes(gzip.compress(bl) if gz_labels else bl)
    x, y, meta = dump(tool, f"idx:{ip},{lp}", tmp_path / "out")
    assert same(x, imgs.reshape(13, 35) / 255.0)
    assert same(y, labs.reshape(-1, 1).astype(np.float64))
    assert (meta["img_h"], meta["img_w"], meta["d"]) == ("5", "7", "35")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_first_reads_a_prefix(tool, tmp_path, gz):
    """--first N reads only the first N examples: they match numpy, a file cut
    off after them still loads, one cut off inside them says where, and asking
    for more than the header declares is an error."""
    rng = np.random.default_rng(7)
    imgs = rng.integers(0, 256, (20, 4, 3)).astype(np.uint8)
    labs = rng.integers(0, 10, 20).astype(np.uint8)
    bi, bl = idx_images(imgs), idx_labels(labs)
    pack = gzip.compress if gz else (lambda b: b)
    ip, lp = tmp_path / "i.idx", tmp_path / "l.idx"
    ip.write_bytes(pack(bi))
    lp.write_bytes(pack(bl))
    x, y, _ = dump(tool, f"idx:{ip},{lp}", tmp_path / "a", "--first", 6)
    assert same(x, imgs[:6].reshape(6, 12) / 255.0)
    assert same(y, labs[:6].reshape(-1, 1).astype(np.float64))
    cut_i, cut_l = tmp_path / "ci.idx", tmp_path / "cl.idx"
    cut_i.write_bytes(pack(bi[:16 + 8 * 12]))        # 8 whole images of 20 declared
    cut_l.write_bytes(pack(bl[:8 + 8]))
    x, y, _ = dump(tool, f"idx:{cut_i},{cut_l}", tmp_path / "b", "--first", 6)
    assert same(x, imgs[:6].reshape(6, 12) / 255.0)
    r = subprocess.run([str(tool("pk_data_dump")), f"idx:{cut_i},{cut_l}", str(tmp_path / "c"), "--first", "10"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(str(cut_i)) and "image 8 of the first 10" in r.stderr, r.stderr
    dump(tool, f"idx:{ip},{lp}", tmp_path / "d", "--first", 21, expect_rc=2)


def parse_idx_gz(path):
    b = gzip.decompress(path.read_bytes())
    magic, n = struct.unpack(">II", b[:8])
    if magic == 0x803:
        h, w = struct.unpack(">II", b[8:16])
        return np.frombuffer(b, np.uint8, offset=16).reshape(n, h, w)
    assert magic == 0x801
    return np.frombuffer(b, np.uint8, offset=8)


def test_fashion_mnist_test_first_100(tool, tmp_path):
    ip = FMNIST / "t10k-images-idx3-ubyte.gz"
    lp = FMNIST / "t10k-labels-idx1-ubyte.gz"
    if not ip.exists() or not lp.exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    imgs, labs = parse_idx_gz(ip), parse_idx_gz(lp)
    x, y, meta = dump(tool, "fashion-mnist:test", tmp_path / "out", "--first", 100)
    assert same(x, imgs[:100].reshape(100, 784) / 255.0)
    assert same(y, labs[:100].reshape(-1, 1).astype(np.float64))
    assert (meta["img_h"], meta["img_w"], meta["classes"]) == ("28", "28", "10")


# ------------------------------------------------------------- selection

@pytest.fixture
def indexed_csv(tmp_path):
    """CSV whose first feature is the example index: selections are readable."""
    n = 1000
    X = np.column_stack([np.arange(n), np.sin(np.arange(n))])
    Y = np.arange(n) % 7
    p = tmp_path / "idx.csv"
    p.write_text(csv_text(X, Y, "i,s,y"))
    return p, X, Y


def test_first(tool, tmp_path, indexed_csv):
    p, X, Y = indexed_csv
    x, y, meta = dump(tool, p, tmp_path / "a", "--first", 37)
    assert same(x, X[:37]) and same(y, Y[:37].reshape(-1, 1))
    x, _, _ = dump(tool, p, tmp_path / "b", "--first", 1000)
    assert same(x, X)
    dump(tool, p, tmp_path / "c", "--first", 1001, expect_rc=2)


def random_rows(tool, p, out, n, seed):
    x, y, _ = dump(tool, p, out, "--random", n, "--seed", seed)
    return x[:, 0].astype(np.int64), x, y


def test_random(tool, tmp_path, indexed_csv):
    p, X, Y = indexed_csv
    i1, x, y = random_rows(tool, p, tmp_path / "a", 50, 1)
    assert len(i1) == 50
    assert np.all(np.diff(i1) > 0), "indices must be sorted and distinct (data order kept)"
    assert i1.min() >= 0 and i1.max() < 1000
    assert same(x, X[i1]) and same(y, Y[i1].reshape(-1, 1))
    i1b, _, _ = random_rows(tool, p, tmp_path / "b", 50, 1)
    assert np.array_equal(i1, i1b), "same seed must give the same subset"
    i2, _, _ = random_rows(tool, p, tmp_path / "c", 50, 2)
    assert not np.array_equal(i1, i2), "different seeds should give different subsets"
    # Not just the first rows, and spread over the data.
    assert i1.max() > 500 and not np.array_equal(i1, np.arange(50))
    iall, _, _ = random_rows(tool, p, tmp_path / "d", 1000, 9)
    assert np.array_equal(iall, np.arange(1000))
    dump(tool, p, tmp_path / "e", "--random", 1001, "--seed", 1, expect_rc=2)
    dump(tool, p, tmp_path / "f", "--random", 5, "--first", 5, expect_rc=2)


def test_random_is_uniformish(tool, tmp_path, indexed_csv):
    """Each example is chosen about equally often over many seeds."""
    p, _, _ = indexed_csv
    small = tmp_path / "small.csv"
    small.write_text("".join(f"{i},0\n" for i in range(10)))
    counts = np.zeros(10)
    for seed in range(200):
        x, _, _ = dump(tool, small, tmp_path / f"s{seed}", "--random", 3, "--seed", seed)
        counts[x[:, 0].astype(int)] += 1
    # 600 draws, 60 expected per example; a gross bias (e.g. never the last) fails.
    assert counts.min() > 30 and counts.max() < 95, counts


# ------------------------------------------- moments, fingerprint, classes

def test_moments_and_standardize(tool, tmp_path):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40, 5)) * [1, 1e3, 1e-3, 1, 1] + [0, 5, -2, 0, 0]
    X[:, 3] = 0.1          # constant, and 40 x 0.1 / 40 != 0.1 in floating point
    X[:, 4] = 7.0
    Y = np.zeros(40)
    f = save_npy(tmp_path / "f.npy", X)
    t = save_npy(tmp_path / "t.npy", Y)
    x, _, _ = dump(tool, f"npy:{f},{t}", tmp_path / "out", "--standardize")
    mean = np.load(tmp_path / "out" / "mean.npy")
    std = np.load(tmp_path / "out" / "std.npy")
    ref_std = X.std(axis=0)          # population (divide by n)
    ref_std[np.ptp(X, axis=0) == 0] = 1   # numpy gives 4e-17 for the 0.1 column
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(std, ref_std, rtol=1e-12)
    assert std[3] == 1 and std[4] == 1
    np.testing.assert_allclose(x, (X - X.mean(axis=0)) / ref_std, rtol=1e-10, atol=1e-12)
    assert np.all(x[:, 3:] == 0), "a constant feature standardises to exactly 0"


def test_fingerprint(tool, tmp_path):
    X = np.arange(12, dtype=np.float64).reshape(4, 3) / 3
    Y = np.array([[0.5, 1], [2, 3], [4, 5], [6, 7.25]])
    f = save_npy(tmp_path / "f.npy", X)
    t = save_npy(tmp_path / "t.npy", Y)
    _, _, meta = dump(tool, f"npy:{f},{t}", tmp_path / "a")
    ref = fnv1a(struct.pack("<3Q", 4, 3, 2) + X.tobytes() + Y.tobytes())
    assert int(meta["fingerprint"]) == ref
    X2 = X.copy()
    X2[3, 2] = np.nextafter(X2[3, 2], 10)
    save_npy(f, X2)
    _, _, meta2 = dump(tool, f"npy:{f},{t}", tmp_path / "b")
    assert int(meta2["fingerprint"]) != ref


@pytest.mark.parametrize("labels,expect", [
    ([0, 1, 2, 1], "3"), ([4, 4], "5"), ([0], "1"),
    ([0, 1.5], "none"), ([0, -1], "none"), ([2e9, 0], "none"),
])
def test_classes(tool, tmp_path, labels, expect):
    Y = np.array(labels, dtype=np.float64)
    f = save_npy(tmp_path / "f.npy", np.zeros((len(Y), 2)))
    t = save_npy(tmp_path / "t.npy", Y)
    _, _, meta = dump(tool, f"npy:{f},{t}", tmp_path / "out")
    assert meta["classes"] == expect
