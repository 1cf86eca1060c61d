"""Messages in the API's terms: the library names a parameter by its API name
in parentheses ("a smaller learning rate (lr)"), never a flag of the CLI;
the CLI rewrites those names into its flags (cli_message, cli/common.c), and
the Python package passes the library's words on, which match its keyword
arguments."""
import os
import re
import sys

import numpy as np
import pytest

from conftest import BUILD_DIR, SOURCE_DIR
from pkutil import pk_run, save_data

STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


def library_strings():
    """(file, literal) for every string literal of the library's sources."""
    for f in sorted(SOURCE_DIR.glob("src/*/*.[ch]")):
        for lit in STRING.findall(COMMENT.sub("", f.read_text())):
            yield f.relative_to(SOURCE_DIR), lit


def test_the_library_names_no_flag_of_the_cli():
    bad = [f"{f}: {lit}" for f, lit in library_strings()
           if re.search(r"(?<![\w-])--[a-z]", lit) or "`pathkernel " in lit]
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = tmp_path_factory.mktemp("msg")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20, 4))
    y = (X[:, 0] > 0).astype(np.int64)
    return {"dir": d, "X": X, "y": y, "spec": save_data(d, "tr", X, y)}


# (CLI options, the CLI's message, the library's message through Python, train() keywords)
CASES = [
    (["--lr", "-1"], "--lr must be a positive number, got -1", "learning rate (lr) must be a positive number, got -1",
     {"lr": -1.0}),
    (["--optim", "sgd"], "sgd needs a mini-batch size (--batch B); use gd for full batches",
     "sgd needs a mini-batch size (batch); use gd for full batches", {"optim": "sgd"}),
    (["--optim", "gd", "--batch", "5"], "gd is full-batch: use no mini-batch size (--batch 0) or sgd (--optim sgd)",
     "gd is full-batch: use no mini-batch size (batch 0) or sgd (optim sgd)", {"optim": "gd", "batch": 5}),
    (["--steps", "0"], "number of steps (--steps) must be at least 1", "number of steps (steps) must be at least 1",
     {"steps": 0}),
    (["--weight-decay", "-1"], "weight decay (--weight-decay) must be a non-negative number, got -1",
     "weight decay (weight_decay) must be a non-negative number, got -1", {"weight_decay": -1.0}),
]


@pytest.mark.parametrize("opts,cli,api,kw", CASES, ids=[c[0][1] + c[0][0] for c in CASES])
def test_the_cli_says_its_flags_and_python_the_api_names(digits, tmp_path, opts, cli, api, kw):
    p = pk_run("train", "--data", digits["spec"], "--steps", "3", *opts, "--quiet", "--out", tmp_path / "c",
               expect=2)
    assert p.stderr == f"pathkernel train: {cli}\n", p.stderr
    if os.environ.get("PK_SANITIZE") == "1":
        return  # an ASan-instrumented library cannot be loaded into this Python
    os.environ["PATHKERNEL_LIB"] = str((BUILD_DIR / "libpathkernel.so").resolve())
    sys.path.insert(0, str(SOURCE_DIR / "python"))
    import pathkernel as pkg
    args = {"steps": 3, **kw}
    with pytest.raises(ValueError) as ei:
        pkg.train(digits["X"], digits["y"], out=tmp_path / "p", **args)
    assert str(ei.value) == api


def test_other_commands_rewrite_the_names_too(tmp_path):
    """mislabel trains through the library too, and says its own flags; a
    run that is still training points every command at `pathkernel train
    --resume RUN` (the library: `pk_train_resume RUN`)."""
    data = SOURCE_DIR / "data" / "digits.csv.gz"
    p = pk_run("mislabel", "--data", data, "--first", "100", "--flip", "0.1", "--lr", "-1", "--steps", "3",
               "--quiet", expect=2)
    assert p.stderr.strip().endswith("--lr must be a positive number, got -1"), p.stderr
    run = tmp_path / "r"
    pk_run("train", "--data", data, "--first", "30", "--steps", "2", "--quiet", "--out", run)
    meta = (run / "run.json").read_text().replace('"complete"', '"running"')
    (run / "run.json").write_text(meta)
    p = pk_run("info", run, expect=2)
    assert f"run `pathkernel train --resume {run}` to finish it" in p.stderr, p.stderr
