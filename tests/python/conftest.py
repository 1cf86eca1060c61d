"""Shared pytest fixtures: where the build and the source are, and the helper
programs built from tests/tools/*.c.

PK_BUILD (default: build/ in the source tree) is the CMake build directory
and PK_SOURCE (default: the tree this file is in) the source directory. A helper program NAME
is BUILD/NAME unless the environment variable NAME.upper() (for example
PK_DATA_DUMP) points at another binary, e.g. one built by hand; the shared
library is BUILD/libpathkernel.so unless PK_LIBRARY names another.
"""
import ctypes
import os
import pathlib
import sys

import pytest

_TREE = pathlib.Path(__file__).resolve().parents[2]
SOURCE_DIR = pathlib.Path(os.environ.get("PK_SOURCE", _TREE))
BUILD_DIR = pathlib.Path(os.environ.get("PK_BUILD", SOURCE_DIR / "build"))

# Let test modules import each other's tables (e.g. test_bad_input.CASES).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def tool_path(name):
    """Path of the helper program `name`; fails the test if it is not built."""
    override = os.environ.get(name.upper())
    path = pathlib.Path(override) if override else BUILD_DIR / name
    if not path.is_file():
        pytest.fail(f"{path} does not exist: build it first "
                    f"(cmake --build {BUILD_DIR}) or set {name.upper()}")
    return path


@pytest.fixture(scope="session")
def build_dir():
    return BUILD_DIR


@pytest.fixture(scope="session")
def source_dir():
    return SOURCE_DIR


@pytest.fixture(scope="session")
def tool():
    """tool("pk_data_dump") -> pathlib.Path of the built helper program."""
    return tool_path


@pytest.fixture(scope="session")
def libpathkernel():
    """The shared library through ctypes (declare argtypes/restype before use)."""
    if os.environ.get("PK_SANITIZE") == "1":
        pytest.skip("an ASan-instrumented library cannot be loaded into an uninstrumented "
                    "Python; in the sanitizer build the same code runs through the CLI tests")
    path = pathlib.Path(os.environ.get("PK_LIBRARY", BUILD_DIR / "libpathkernel.so"))
    if not path.is_file():
        pytest.fail(f"{path} does not exist: build it first or set PK_LIBRARY")
    return ctypes.CDLL(str(path))
