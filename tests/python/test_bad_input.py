"""Malformed data must be refused cleanly: exit status 2, one line on stderr
that names the offending file and says where and what, no crash, no output.

CASES is a module-level list of (name, maker) pairs; maker(tmp_path) writes
the bad input and returns a Bad(spec, path, where): the data spec to load,
the file path the message must name, and a fragment the message must contain
(where it is, or what is wrong). The same table drives pk_data_dump and,
once it is built, `pathkernel train --data SPEC ...`.
"""
import collections
import gzip
import io
import os
import resource
import struct
import subprocess

import numpy as np
import pytest

from conftest import BUILD_DIR

Bad = collections.namedtuple("Bad", "spec path where")


# ---------------------------------------------------------------- writers

def npy_bytes(arr, version=None):
    b = io.BytesIO()
    np.lib.format.write_array(b, arr, version=version)
    return b.getvalue()


def npy_raw(header, data=b"", version=1):
    """A .npy with a hand-written header dict (padded like numpy's)."""
    h = header.encode("latin1")
    pre = 10 if version == 1 else 12
    pad = 64 - (pre + len(h) + 1) % 64
    h = h + b" " * pad + b"\n"
    lenfield = struct.pack("<H", len(h)) if version == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes([version, 0]) + lenfield + h + data


def npy_pair(tmp, feats, targets):
    """Write features/targets (arrays or raw bytes); return the spec and paths."""
    f, t = tmp / "feats.npy", tmp / "targets.npy"
    f.write_bytes(feats if isinstance(feats, bytes) else npy_bytes(feats))
    t.write_bytes(targets if isinstance(targets, bytes) else npy_bytes(targets))
    return f"npy:{f},{t}", f, t


def good_x():
    return np.arange(15, dtype=np.float64).reshape(5, 3)


def good_y():
    return np.arange(5, dtype=np.float64)


def bad_npy_features(raw, where):
    def make(tmp):
        spec, f, _ = npy_pair(tmp, raw() if callable(raw) else raw, good_y())
        return Bad(spec, f, where)
    return make


def bad_npy_targets(raw, where):
    def make(tmp):
        spec, _, t = npy_pair(tmp, good_x(), raw() if callable(raw) else raw)
        return Bad(spec, t, where)
    return make


def text_file(name, content, where, gz=False):
    def make(tmp):
        p = tmp / name
        data = content.encode("latin1") if isinstance(content, str) else content
        p.write_bytes(gzip.compress(data) if gz else data)
        return Bad(str(p), p, where)
    return make


def raw_file(name, make_bytes, where):
    def make(tmp):
        p = tmp / name
        p.write_bytes(make_bytes())
        return Bad(str(p), p, where)
    return make


def idx_img(n, h, w, pixels=None):
    if pixels is None:
        pixels = bytes(n * h * w)
    return struct.pack(">IIII", 0x803, n, h, w) + pixels


def idx_lab(n, data=None):
    return struct.pack(">II", 0x801, n) + (bytes(n) if data is None else data)


def idx_pair(images, labels, name_bad, where="byte offset"):
    def make(tmp):
        ip, lp = tmp / "images.idx", tmp / "labels.idx"
        ip.write_bytes(images() if callable(images) else images)
        lp.write_bytes(labels() if callable(labels) else labels)
        return Bad(f"idx:{ip},{lp}", ip if name_bad == "images" else lp, where)
    return make


def random_pixels(n):
    return np.random.default_rng(n).integers(0, 256, n).astype(np.uint8).tobytes()


def corrupt_gzip():
    z = bytearray(gzip.compress(("1,2,3\n" * 2000).encode() + b"4,5,6\n"))
    for i in range(20, min(60, len(z) - 10)):
        z[i] ^= 0x5A
    return bytes(z)


def truncated_gzip():
    z = gzip.compress("".join(f"{i},{i * 2},{i % 3}\n" for i in range(3000)).encode())
    return z[: len(z) // 2]


def nonexistent(tmp):
    p = tmp / "missing.csv"
    return Bad(str(p), p, "cannot open")


def nonexistent_npy_targets(tmp):
    f = tmp / "feats.npy"
    f.write_bytes(npy_bytes(good_x()))
    t = tmp / "no_such_targets.npy"
    return Bad(f"npy:{f},{t}", t, "cannot open")


def unknown_spec(tmp):
    p = tmp / "data.txt"
    p.write_text("1,2,3\n")
    return Bad(str(p), p, "npy:FEATURES.npy,TARGETS.npy")


def npy_spec_without_targets(tmp):
    f = tmp / "feats.npy"
    f.write_bytes(npy_bytes(good_x()))
    return Bad(f"npy:{f}", f"npy:{f}", "npy:FEATURES.npy,TARGETS.npy")


def gzip_forged_isize():
    """A gzip member whose trailer claims 4 GiB - 1 uncompressed bytes."""
    z = bytearray(gzip.compress(b"1,2,3\n4,5,6\n"))
    z[-4:] = struct.pack("<I", 0xFFFFFFFF)
    return bytes(z)


def nan_in(a, i, v=np.nan):
    a = a.copy()
    a.flat[i] = v
    return a


CASES = [
    # --- npy
    ("npy_truncated_data", bad_npy_features(lambda: npy_bytes(good_x())[:-5], "byte offset 128")),
    ("npy_truncated_header", bad_npy_features(lambda: npy_bytes(good_x())[:40], "byte offset 10")),
    ("npy_only_magic", bad_npy_features(b"\x93NUMPY", "byte offset")),
    ("npy_wrong_magic", bad_npy_features(lambda: b"\x93NUMPZ" + npy_bytes(good_x())[6:], "byte offset 0")),
    ("npy_bad_version", bad_npy_features(lambda: npy_bytes(good_x())[:6] + b"\x04\x00" + npy_bytes(good_x())[8:], "version")),
    ("npy_fortran_order", bad_npy_features(lambda: npy_bytes(np.asfortranarray(good_x())), "Fortran")),
    ("npy_unsupported_dtype_i2", bad_npy_features(lambda: npy_bytes(good_x().astype("<i2")), "'<i2'")),
    ("npy_unsupported_dtype_complex", bad_npy_features(lambda: npy_bytes(good_x().astype(np.complex128)), "dtype")),
    ("npy_big_endian", bad_npy_features(lambda: npy_bytes(good_x().astype(">f8")), "big-endian")),
    ("npy_structured_dtype", bad_npy_features(lambda: npy_bytes(np.zeros(5, dtype=[("a", "<f8"), ("b", "<i4")])), "structured")),
    ("npy_garbage_header", bad_npy_features(lambda: npy_raw("{'descr': '<f8', garbage!!! ((((", bytes(40)), "byte offset")),
    ("npy_header_not_dict", bad_npy_features(lambda: npy_raw("\x00\xff\x01 binary" * 3, bytes(40)), "byte offset 10")),
    ("npy_unterminated_string", bad_npy_features(lambda: npy_raw("{'descr': '<f8", b""), "unterminated")),
    ("npy_missing_shape", bad_npy_features(lambda: npy_raw("{'descr': '<f8', 'fortran_order': False, }", bytes(8)), "missing 'shape'")),
    ("npy_nine_dims", bad_npy_features(lambda: npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", bytes(8)), "8 dimensions")),
    ("npy_huge_shape", bad_npy_features(lambda: npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", bytes(64)), "byte offset")),
    ("npy_shape_overflows_digits", bad_npy_features(lambda: npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999999999, 1), }", bytes(8)), "too large")),
    ("npy_header_len_past_end", bad_npy_features(lambda: b"\x93NUMPY\x01\x00\xff\xff{'descr'", "byte offset 10")),
    ("npy_v2_header_len_past_end", bad_npy_features(lambda: b"\x93NUMPY\x02\x00\xff\xff\xff\xff{'descr'", "byte offset 12")),
    ("npy_trailing_bytes", bad_npy_features(lambda: npy_bytes(good_x()) + b"extra", "unexpected bytes")),
    ("npy_nan_features", bad_npy_features(lambda: nan_in(good_x(), 7), "element 7")),
    ("npy_inf_features_f4", bad_npy_features(lambda: nan_in(good_x().astype(np.float32), 4, np.inf), "element 4")),
    ("npy_nan_targets", bad_npy_targets(lambda: nan_in(good_y(), 3), "element 3")),
    ("npy_row_mismatch", bad_npy_targets(lambda: np.arange(4.0), "4 rows")),
    ("npy_features_5d", bad_npy_features(lambda: np.zeros((5, 1, 2, 2, 1)), "shape (5, 1, 2, 2, 1)")),
    ("npy_features_scalar", bad_npy_features(lambda: np.float64(3.0).reshape(()), "shape ()")),
    ("npy_no_rows", bad_npy_features(lambda: np.zeros((0, 3)), "no examples")),
    ("npy_targets_3d", bad_npy_targets(lambda: np.zeros((5, 1, 1)), "shape (5, 1, 1)")),
    ("npy_empty_file", bad_npy_features(b"", "byte offset 0")),
    ("npy_targets_nonexistent", nonexistent_npy_targets),
    ("npy_spec_without_targets", npy_spec_without_targets),
    # declared sizes are checked against the file before anything is allocated
    ("npy_declares_80_gb", bad_npy_features(lambda: npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }", bytes(64)), "the shape declares 80000000000 bytes but the file has 64")),
    ("npy_targets_declare_8_gb", bad_npy_targets(lambda: npy_raw("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000,), }", bytes(40)), "declares 8000000000 bytes but the file has 40")),
    # --- csv
    ("csv_ragged", text_file("d.csv", "1,2,3\n4,5,6\n7,8\n", "line 3")),
    ("csv_ragged_long", text_file("d.csv", "a,b,c\n1,2,3\n4,5,6,7\n", "line 3")),
    ("csv_header_width", text_file("d.csv", "a,b\n1,2,3\n", "line 2")),
    ("csv_non_numeric", text_file("d.csv", "1,2,3\n4,5,6\n7,x8,9\n", "line 3, column 2")),
    ("csv_empty_field", text_file("d.csv", "1,2,3\n4,,6\n", "line 2, column 2")),
    ("csv_trailing_comma", text_file("d.csv", "1,2,3,\n4,5,6,\n", "line 1, column 4: empty field")),
    ("csv_nan", text_file("d.csv", "1,2,3\n4,nan,6\n", "line 2, column 2")),
    ("csv_inf_first_line", text_file("d.csv", "1,inf,3\n4,5,6\n", "line 1, column 2")),
    ("csv_overflow_to_inf", text_file("d.csv", "1,2,3\n4,5,1e999\n", "line 2, column 3")),
    ("csv_empty_file", text_file("d.csv", "", "empty")),
    ("csv_blank_only", text_file("d.csv", "\n\n  \r\n", "no examples")),
    ("csv_header_only", text_file("d.csv", "x1,x2,y\n", "line 1")),
    ("csv_single_column", text_file("d.csv", "1\n2\n", "line 1")),
    ("csv_blank_line_inside", text_file("d.csv", "1,2,3\n\n4,5,6\n", "line 2")),
    ("csv_nul_byte", text_file("d.csv", "1,2,3\n4,5\x006\n", "byte offset 9")),
    ("csv_control_chars", text_file("d.csv", "1,2,3\n4,5,\x1b[31m\r7\n", "line 2, column 3")),
    ("csv_gz_corrupt", raw_file("d.csv.gz", corrupt_gzip, "gzip")),
    ("csv_gz_truncated", raw_file("d.csv.gz", truncated_gzip, "gzip")),
    ("csv_gz_nan", text_file("d.csv.gz", "1,2,3\n4,5,NaN\n", "line 2, column 3", gz=True)),
    ("csv_nonexistent", nonexistent),
    ("csv_wide_line_then_blank_lines", text_file("d.csv", "1," * 20000 + "1\n" + "\n" * 200000 + "1,2\n", "line 2: empty line inside the data")),
    ("csv_gz_forged_size", raw_file("d.csv.gz", gzip_forged_isize, "gzip")),
    # --- svmlight
    ("svm_not_ascending", text_file("d.svm", "1 1:2 3:4\n0 2:1 2:3\n", "line 2")),
    ("svm_descending", text_file("d.svm", "1 5:2 3:4\n", "line 1")),
    ("svm_index_zero", text_file("d.svm", "1 0:2 3:4\n", "index 0")),
    ("svm_negative_index", text_file("d.svm", "1 1:1\n1 -3:2\n", "line 2")),
    ("svm_missing_colon", text_file("d.libsvm", "1 1:2\n0 2 3:1\n", "line 2")),
    ("svm_bad_value", text_file("d.svm", "1 1:2\n0 2:abc\n", "line 2")),
    ("svm_empty_value", text_file("d.svm", "1 1:\n", "line 1")),
    ("svm_bad_label", text_file("d.svm", "yes 1:2\n", "line 1")),
    ("svm_nan_label", text_file("d.svm", "1 1:2\nnan 1:3\n", "line 2")),
    ("svm_inf_value", text_file("d.svm", "1 1:2\n1 1:-inf\n", "line 2")),
    ("svm_huge_index", text_file("d.svm", "1 99999999999999999999:1\n", "too large")),
    ("svm_dense_over_memory_budget", text_file("d.svm", "1 4000000000:1\n" * 1000, "line 1: feature index 4000000000 makes the dense data 1000 examples x 4000000000 features")),
    ("svm_gz_dense_over_memory_budget", text_file("d.svm.gz", "1 1:1\n" * 100 + "0 3999999999:2\n", "line 101: feature index 3999999999", gz=True)),
    ("svm_comments_only", text_file("d.svm", "# nothing\n\n# here\n", "no examples")),
    ("svm_no_features", text_file("d.svm", "1\n0\n", "no features")),
    ("svm_empty_file", text_file("d.svm", "", "no examples")),
    # --- idx
    ("idx_wrong_magic", idx_pair(b"\x00\x00\x08\x04" + bytes(40), idx_lab(2), "images")),
    ("idx_not_idx", idx_pair(b"PK\x03\x04 not an idx file at all", idx_lab(2), "images")),
    ("idx_float_type", idx_pair(b"\x00\x00\x0d\x03" + bytes(40), idx_lab(2), "images")),
    ("idx_swapped", idx_pair(idx_lab(2), idx_img(2, 2, 2), "images")),
    ("idx_labels_wrong_magic", idx_pair(idx_img(2, 2, 2), b"\x00\x00\x08\x02" + bytes(10), "labels")),
    ("idx_huge_dims", idx_pair(struct.pack(">IIII", 0x803, 2**31, 2**31, 2**31), idx_lab(2), "images")),
    ("idx_huge_count", idx_pair(struct.pack(">IIII", 0x803, 2**32 - 1, 28, 28) + bytes(784), idx_lab(1), "images")),
    ("idx_short_header", idx_pair(b"\x00\x00\x08\x03\x00\x00", idx_lab(2), "images")),
    ("idx_truncated_pixels", idx_pair(idx_img(3, 4, 4)[:-5], idx_lab(3), "images")),
    ("idx_count_mismatch", idx_pair(idx_img(5, 2, 2), idx_lab(4), "labels")),
    ("idx_labels_truncated", idx_pair(idx_img(5, 2, 2), idx_lab(5)[:-1], "labels")),
    ("idx_labels_huge_count", idx_pair(idx_img(5, 2, 2), struct.pack(">II", 0x801, 2**32 - 1), "labels")),
    ("idx_declares_10_gb", idx_pair(struct.pack(">IIII", 0x803, 1000000, 100, 100) + bytes(100), idx_lab(1000000, b""), "images", "(10000000000 bytes) but 100 bytes follow")),
    ("idx_labels_declare_4_gb", idx_pair(idx_img(2, 2, 2), struct.pack(">II", 0x801, 4000000000) + bytes(2), "labels", "declares 4000000000 labels but 2 bytes follow")),
    ("idx_zero_images", idx_pair(idx_img(0, 2, 2), idx_lab(0), "images")),
    ("idx_gz_truncated", idx_pair(lambda: gzip.compress(idx_img(50, 8, 8, random_pixels(3200)))[:1600], idx_lab(50), "images", "gzip")),
    # --- spec forms
    ("unknown_spec", unknown_spec),
    ("fashion_mnist_bad_split", lambda tmp: Bad("fashion-mnist:valid", "fashion-mnist:valid", "train")),
    ("idx_spec_without_labels", lambda tmp: Bad(f"idx:{tmp / 'images.idx'}", f"idx:{tmp / 'images.idx'}", "idx:IMAGES,LABELS")),
]

IDS = [name for name, _ in CASES]


def run(cmd):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          errors="replace", timeout=120)


def test_table_is_large_and_unique():
    assert len(CASES) >= 20 and len(set(IDS)) == len(IDS)


@pytest.mark.parametrize("name,maker", CASES, ids=IDS)
def test_data_dump_rejects(tool, tmp_path, name, maker):
    bad = maker(tmp_path)
    out = tmp_path / "out"
    p = run([tool("pk_data_dump"), bad.spec, out])
    assert p.returncode >= 0, f"crashed with signal {-p.returncode}: {p.stderr}"
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and p.stderr.endswith("\n"), f"not one line: {p.stderr!r}"
    assert lines[0].startswith(str(bad.path)), f"does not start with {bad.path}: {lines[0]}"
    assert bad.where in lines[0], f"{bad.where!r} not in: {lines[0]}"
    assert len(lines[0]) < 400, lines[0]
    assert not out.exists(), "nothing may be written for bad input"


def cli():
    return BUILD_DIR / "pathkernel"


@pytest.mark.parametrize("name,maker", CASES, ids=IDS)
def test_cli_train_rejects(tmp_path, name, maker):
    if not cli().is_file():
        pytest.skip(f"{cli()} is not built yet")
    bad = maker(tmp_path)
    run_dir = tmp_path / "TMPRUN"
    p = run([cli(), "train", "--data", bad.spec, "--model", "linear", "--loss", "mse",
             "--optim", "gd", "--lr", "0.1", "--steps", "1", "--out", run_dir, "--quiet"])
    assert p.returncode >= 0, f"crashed with signal {-p.returncode}: {p.stderr}"
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert str(bad.path) in p.stderr, p.stderr
    assert not run_dir.exists(), "a run directory was created for bad data"


# ------------------------------------------------ mutations never crash

def valid_inputs(tmp):
    """Small valid files of every format, as (spec, [files to mutate])."""
    rng = np.random.default_rng(0)
    f, t = tmp / "f.npy", tmp / "t.npy"
    f.write_bytes(npy_bytes(rng.standard_normal((4, 3)).astype(np.float32)))
    t.write_bytes(npy_bytes(np.arange(4, dtype=np.int64)))
    c = tmp / "d.csv"
    c.write_text("a,b,y\n1.5,2,0\n3,4e-2,1\n-5,6,2\n")
    g = tmp / "d.csv.gz"
    g.write_bytes(gzip.compress(c.read_bytes()))
    s = tmp / "d.svm"
    s.write_text("1 1:0.5 3:2 # c\n0 2:1\n-1 1:1 2:2 3:3\n")
    ip, lp = tmp / "i.idx", tmp / "l.idx.gz"
    ip.write_bytes(idx_img(3, 2, 3, bytes(range(18))))
    lp.write_bytes(gzip.compress(idx_lab(3, b"\x01\x02\x03")))
    return [(f"npy:{f},{t}", [f, t]), (str(c), [c]), (str(g), [g]), (str(s), [s]),
            (f"idx:{ip},{lp}", [ip, lp])]


def test_mutations_never_crash(tool, tmp_path):
    """Truncations and byte flips of valid files load or fail with one line;
    never a crash (run this under the sanitizers: PK_DATA_DUMP=...)."""
    rng = np.random.default_rng(42)
    exe = tool("pk_data_dump")
    failures = 0
    for spec, files in valid_inputs(tmp_path):
        assert run([exe, spec, tmp_path / "ok"]).returncode == 0, spec
        for path in files:
            orig = path.read_bytes()
            variants = [orig[:k] for k in sorted(set(rng.integers(0, len(orig), 12)))]
            for _ in range(25):
                b = bytearray(orig)
                for i in rng.integers(0, len(b), rng.integers(1, 4)):
                    b[i] = int(rng.integers(0, 256))
                variants.append(bytes(b))
            for v in variants:
                path.write_bytes(v)
                p = run([exe, spec, tmp_path / "m"])
                assert p.returncode in (0, 2), (spec, v, p.returncode, p.stderr)
                if p.returncode == 2:
                    failures += 1
                    assert len(p.stderr.splitlines()) == 1, (v, p.stderr)
            path.write_bytes(orig)
    assert failures > 0


# ------------------------------------------ sizes checked before allocating

def test_csv_rows_bounded_by_the_file_not_its_line_count(tool, tmp_path):
    """A 20001-column first line and 200000 trailing blank lines (0.2 MB) used
    to reserve 200002 x 20000 doubles (32 GB) before reading row 2; the rows a
    file can hold are bounded by its bytes, so it loads in a 1 GiB address space."""
    if os.environ.get("PK_SANITIZE") == "1":
        pytest.skip("ASan reserves terabytes of address space: RLIMIT_AS cannot be applied")
    p = tmp_path / "wide.csv"
    p.write_text("1," * 20000 + "1\n" + "\n" * 200000)
    lim = 1 << 30
    r = subprocess.run([str(tool("pk_data_dump")), str(p), str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=120, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (lim, lim)))
    assert r.returncode == 0, r.stderr


def three_class_run(d, model, seed, steps):
    """A 3-class run of `model` on 30 examples of 2 features, in d/run."""
    if not cli().is_file():
        pytest.skip(f"{cli()} is not built yet")
    x = np.random.default_rng(seed).standard_normal((30, 2))
    np.savetxt(d / "train.csv", np.c_[x, (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)], delimiter=",", fmt="%.5f")
    p = run([cli(), "train", "--data", d / "train.csv", "--model", model, "--loss", "softmax",
             "--optim", "gd", "--lr", "0.1", "--steps", str(steps), "--out", d / "run", "--quiet"])
    assert p.returncode == 0, p.stderr
    return d


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A small 3-class run, for kernel's memory-budget checks."""
    return three_class_run(tmp_path_factory.mktemp("kernel_budget"), "mlp:4:tanh", 3, 3)


def test_kernel_blocks_shrink_under_mem(small_run):
    """200 x 200 x 3 x 3 in one block takes 1.4 MiB of working memory with
    two threads: under --mem 1 the kernel is computed in smaller blocks (the
    x side kept for several y blocks, the y side recomputed per block) and
    equals the one-block result, full and trace."""
    d = small_run
    x = np.random.default_rng(4).standard_normal((200, 2))
    np.savetxt(d / "x.csv", np.c_[x, np.zeros(200)], delimiter=",", fmt="%.5f")
    y = np.random.default_rng(8).standard_normal((150, 2))
    np.savetxt(d / "y.csv", np.c_[y, np.zeros(150)], delimiter=",", fmt="%.5f")
    for mode in ("full", "trace"):
        for ys in ([], ["--y", d / "y.csv"]):
            got = {}
            for mem in ([], ["--mem", "1"]):
                out = d / f"K-{mode}-{len(ys)}-{len(mem)}.npy"
                p = run([cli(), "kernel", d / "run", "--x", d / "x.csv", *ys, "--mode", mode, "--threads", "2",
                         "--out", out, *mem])
                assert p.returncode == 0, p.stderr
                got[len(mem)] = np.load(out)
            a, b = got[0], got[2]
            assert a.shape == b.shape == ((200, 150 if ys else 200) + ((3, 3) if mode == "full" else ()))
            assert np.allclose(a, b, rtol=1e-13, atol=1e-13 * np.abs(a).max()), (mode, ys, np.abs(a - b).max())


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """mlp:1024,1024 on 2 features: its smallest blocks need more than 1 MiB."""
    return three_class_run(tmp_path_factory.mktemp("kernel_wide"), "mlp:1024,1024:tanh", 11, 2)


def test_kernel_refuses_working_memory_over_mem(wide_run):
    """When even the smallest blocks need more than --mem, the kernel is
    refused before any work with the need and the --mem that fits, which
    then works (and one MiB less is refused)."""
    import re
    d = wide_run
    out = d / "K.npy"
    base = [cli(), "kernel", d / "run", "--x", d / "train.csv", "--threads", "2", "--out", out]
    p = run(base + ["--mem", "1"])
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    m = re.search(r"computing the kernel takes at least ([0-9.]+) MiB of memory \(its smallest blocks\), more than "
                  r"the 1\.0 MiB budget \(--mem; default 3/4 of free memory\): use --mem (\d+) or more", lines[0])
    assert m, lines[0]
    need, fits = float(m.group(1)), int(m.group(2))
    assert 1 < need <= fits < need + 1, (need, fits)
    assert not out.exists()
    if fits > 2:
        assert run(base + ["--mem", str(fits - 1)]).returncode == 2
    p = run(base + ["--mem", str(fits)])
    assert p.returncode == 0, p.stderr
    assert np.load(out).shape == (30, 30, 3, 3)


def peak_rss(cmd):
    """(exit status, stderr, peak RSS in bytes) of cmd, from wait4. The fork
    carries this process's own RSS into the number: compare two runs."""
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.stdout.close(); proc.stderr.close()
    return os.waitstatus_to_exitcode(status), err, usage.ru_maxrss * 1024


def test_kernel_streams_an_output_larger_than_mem(small_run):
    """1200 x 1200 x 3 x 3 doubles are 98.9 MiB: with --mem 8 the kernel is
    written as it is computed and the process never holds it (its peak RSS
    exceeds that of a 100 x 100 kernel by less than 40 MiB), and the file
    equals the one written without --mem, for 1 and 2 threads alike."""
    d = small_run
    x = np.random.default_rng(6).standard_normal((1200, 2))
    np.savetxt(d / "x1200.csv", np.c_[x, np.zeros(1200)], delimiter=",", fmt="%.5f")
    np.savetxt(d / "x100.csv", np.c_[x[:100], np.zeros(100)], delimiter=",", fmt="%.5f")
    rss, files = {}, {}
    for data, mem, threads in (("x100", "8", "2"), ("x1200", "8", "2"), ("x1200", None, "1"), ("x1200", None, "2")):
        out = d / f"K-{data}-{mem}-{threads}.npy"
        cmd = [cli(), "kernel", d / "run", "--x", d / f"{data}.csv", "--threads", threads, "--out", out]
        code, err, rss[data, mem, threads] = peak_rss(cmd + (["--mem", mem] if mem else []))
        assert code == 0, err
        files[data, mem, threads] = np.load(out)
    K = files["x1200", "8", "2"]
    assert K.shape == (1200, 1200, 3, 3) and K.nbytes > 98 * 2**20
    if os.environ.get("PK_SANITIZE") != "1":  # ASan's shadow memory is not ours
        grew = rss["x1200", "8", "2"] - rss["x100", "8", "2"]
        assert grew < 40 * 2**20, (grew, rss)
    assert np.array_equal(K, files["x1200", None, "2"]) and np.array_equal(K, files["x1200", None, "1"])
    assert np.allclose(K[:100, :100], files["x100", "8", "2"], rtol=1e-13, atol=1e-13)
    # Y is X: K(x, y) = K(y, x)^T
    assert np.allclose(K, K.transpose(1, 0, 3, 2), rtol=1e-12, atol=1e-13 * np.abs(K).max())
    assert np.all(np.isfinite(K)) and np.all(np.einsum("iikk->ik", K) > 0)


def test_kernel_refuses_more_than_the_disk_holds(small_run):
    """100000 inputs: a (100000, 100000, 3, 3) kernel is 670 GiB, streamed
    to its file; more than the file system holds fails at once (exit 1, the
    system's ENOSPC text), with what would fit."""
    import shutil
    d = small_run
    if shutil.disk_usage(d).free > 7.2e11:
        pytest.skip("this file system could hold the 670 GiB kernel")
    x = np.random.default_rng(5).standard_normal((100000, 2))
    np.savetxt(d / "big.csv", np.c_[x, np.zeros(len(x))], delimiter=",", fmt="%.3f")
    out = d / "Kbig.npy"
    p = run([cli(), "kernel", d / "run", "--x", d / "big.csv", "--out", out])
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert len(p.stderr.splitlines()) == 1, p.stderr
    assert f"{out}: No space left on device: a 100000 x 100000 kernel of 3 x 3 blocks is 686645.5 MiB" in p.stderr
    assert "MiB are free there" in p.stderr, p.stderr
    assert "--mode trace (76293.9 MiB)" in p.stderr and "--x inputs" in p.stderr, p.stderr
    assert not out.exists()
