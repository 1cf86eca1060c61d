"""The Python package against an installed library: `cmake --install` of the
build into a temporary prefix, then the package imported in a fresh Python
from outside the source tree (so that its build-tree lookup cannot apply),
with no PATHKERNEL_LIB, finds the installed libpathkernel.so.0 (a) when the
package is installed under the same prefix (P/lib/python3.X/site-packages
beside P/lib) and (b) from anywhere when LD_LIBRARY_PATH names P/lib; in
both, a small train and explain work and the process has loaded the
installed library and no other. About 3 s."""
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import BUILD_DIR, SOURCE_DIR

if os.environ.get("PK_SANITIZE") == "1":
    pytest.skip("an ASan-instrumented library cannot be loaded into an uninstrumented Python; "
                "the sanitizer build tests the installed library through tests/install/install_test.sh",
                allow_module_level=True)

PROGRAM = r"""
import numpy as np
import pathkernel as pk
from pathkernel import _capi
rng = np.random.default_rng(0)
X = rng.normal(size=(40, 3))
y = (X[:, 0] > 0).astype(int)
run = pk.train(X, y, model="mlp:8:tanh", loss="softmax", optim="sgd", lr=0.3, steps=20, batch=10,
               seed=1, out="run")
e = run.explain(X[:2], quad="gl4")
assert e.max_rel_err < 1e-8, e.max_rel_err
maps = [line.split()[-1] for line in open("/proc/self/maps") if "libpathkernel" in line]
print("library", _capi.library_path())
print("loaded", sorted(set(maps)))
print("max_rel_err", e.max_rel_err)
"""


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    cmake = shutil.which("cmake")
    if not cmake:
        pytest.skip("cmake not found")
    p = tmp_path_factory.mktemp("installed") / "prefix"
    r = subprocess.run([cmake, "--install", str(BUILD_DIR), "--prefix", str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lib = p / "lib" / "libpathkernel.so.0"
    if not lib.is_file():
        pytest.skip(f"{lib} not installed (CMAKE_INSTALL_LIBDIR is not lib)")
    return p


def run_python(package_parent, cwd, extra_env):
    """PROGRAM in a fresh interpreter importing pathkernel from package_parent,
    with none of the variables that would point it at the build tree."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PATHKERNEL_LIB", "LD_LIBRARY_PATH", "PYTHONPATH", "PK_LIBRARY")}
    env.update(PYTHONPATH=str(package_parent), **extra_env)
    r = subprocess.run([sys.executable, "-c", PROGRAM], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.splitlines())


def check_loaded(out, prefix):
    lib = (prefix / "lib").resolve()
    assert out["library"].startswith(str(lib)), out
    loaded = eval(out["loaded"])
    assert loaded == [str(lib / "libpathkernel.so.0.1.0")], loaded
    assert float(out["max_rel_err"]) < 1e-8


def test_package_installed_in_the_same_prefix(prefix, tmp_path):
    # where pip puts a package under the prefix: P/lib/python3.X/site-packages
    site = pathlib.Path(sysconfig.get_path("purelib", "posix_prefix", vars={"base": str(prefix)}))
    shutil.copytree(SOURCE_DIR / "python" / "pathkernel", site / "pathkernel")
    out = run_python(site, tmp_path, {})
    check_loaded(out, prefix)


def test_package_anywhere_with_ld_library_path(prefix, tmp_path):
    pkgs = tmp_path / "pkgs"
    shutil.copytree(SOURCE_DIR / "python" / "pathkernel", pkgs / "pathkernel")
    work = tmp_path / "work"
    work.mkdir()
    out = run_python(pkgs, work, {"LD_LIBRARY_PATH": str(prefix / "lib")})
    check_loaded(out, prefix)

