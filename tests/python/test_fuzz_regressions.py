"""Inputs that made a fuzz target of fuzz/ crash (tests/fuzz_regressions/
<target>/<file>, kept exactly as the fuzzer produced them), fed through the
normal path that the target stands for: pk_data_dump for the data formats,
the CLI (`pathkernel info`) for the run directory's files. Each must end
cleanly: never a signal (or a sanitizer report), a bad input refused with one
line on stderr that names the file.

Exit statuses: data inputs 0 or 2 (PK_ERR_INPUT); a damaged run directory is
PK_ERR_STATE, which the CLI documents as exit 1.

The transformations mirror the fuzz targets: fuzz_traj / fuzz_ckpt append a
valid crc32 to the input (as the targets do), fuzz_run_json's input is
run.json next to a valid trajectory.bin (or, for a .bin, the trajectory next
to a valid run.json).
"""
import gzip
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

from conftest import BUILD_DIR, SOURCE_DIR

REG = SOURCE_DIR / "tests" / "fuzz_regressions"
CORPUS = SOURCE_DIR / "fuzz" / "corpus"
CASES = sorted(p for p in REG.glob("*/*") if p.is_file())


def with_crc(b):
    return b + struct.pack("<I", zlib.crc32(b))


def run(cmd):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    assert p.returncode >= 0, f"{cmd}: killed by signal {-p.returncode}\n{p.stderr}"
    assert "Sanitizer" not in p.stderr, f"{cmd}: sanitizer report\n{p.stderr}"
    return p


def check_refusal(p, allowed, path):
    assert p.returncode in allowed, f"exit {p.returncode}\nstderr: {p.stderr}"
    if p.returncode:
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one line on stderr, got: {p.stderr!r}"
        assert str(path) in lines[0], f"message does not name {path}: {lines[0]}"


def data_dump(tool, tmp_path, spec, path):
    p = run([tool("pk_data_dump"), spec, tmp_path / "out"])
    check_refusal(p, (0, 2), path)


def run_dir(tmp_path, run_json, traj, name_bad):
    d = tmp_path / "run"
    d.mkdir()
    (d / "run.json").write_bytes(run_json)
    (d / "trajectory.bin").write_bytes(traj)
    np.save(d / "standardize.npy", np.array([[0.0, 0.0], [1.0, 1.0]]))
    exe = BUILD_DIR / "pathkernel"
    p = run([exe, "info", d])
    # the message names the damaged file, or the directory for run.json errors
    check_refusal(p, (0, 1, 2), d)


def fixed_npy(tmp_path, name, arr):
    path = tmp_path / name
    np.save(path, arr)
    return path


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_regression(case, tmp_path, tool):
    target, data = case.parent.name, case.read_bytes()
    if target in ("fuzz_data_csv", "fuzz_data_svm", "fuzz_gzip"):
        ext = {"fuzz_data_csv": ".csv", "fuzz_data_svm": ".svm", "fuzz_gzip": ".csv.gz"}[target]
        f = tmp_path / ("in" + ext)
        f.write_bytes(data)
        data_dump(tool, tmp_path, str(f), f)
        if target != "fuzz_gzip":
            g = tmp_path / ("in" + ext + ".gz")
            g.write_bytes(gzip.compress(data, mtime=0))
            shutil.rmtree(tmp_path / "out", ignore_errors=True)
            data_dump(tool, tmp_path, str(g), g)
    elif target == "fuzz_npy":
        f = tmp_path / "in.npy"
        f.write_bytes(data)
        y = fixed_npy(tmp_path, "y.npy", np.array([0.0, 1.0]))
        x = fixed_npy(tmp_path, "x.npy", np.arange(6.0).reshape(2, 3))
        data_dump(tool, tmp_path, f"npy:{f},{y}", f)
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        data_dump(tool, tmp_path, f"npy:{x},{f}", f)
    elif target == "fuzz_data_idx":
        f = tmp_path / "in.idx"
        f.write_bytes(data)
        lab = tmp_path / "labels.idx"
        lab.write_bytes(struct.pack(">II", 0x801, 2) + bytes([3, 7]))
        img = tmp_path / "images.idx"
        img.write_bytes(struct.pack(">IIII", 0x803, 2, 2, 2) + bytes([0, 64, 128, 255, 1, 2, 3, 4]))
        data_dump(tool, tmp_path, f"idx:{f},{lab}", f)
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        data_dump(tool, tmp_path, f"idx:{img},{f}", f)
    elif target == "fuzz_traj":
        run_dir(tmp_path, (CORPUS / "fuzz_run_json" / "run.json").read_bytes(), with_crc(data),
                "trajectory.bin")
    elif target == "fuzz_run_json":
        valid_traj = with_crc((CORPUS / "fuzz_run_json" / "traj.bin").read_bytes())
        if case.suffix == ".bin":
            run_dir(tmp_path, (CORPUS / "fuzz_run_json" / "run.json").read_bytes(),
                    with_crc(data), "trajectory.bin")
        else:
            run_dir(tmp_path, data, valid_traj, "run.json")
    else:
        pytest.fail(f"no normal path known for fuzz target {target} ({case})")
