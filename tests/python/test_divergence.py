"""Divergence (issue 7, item 3): when the loss or the weights become NaN/Inf,
training stops at once with a message naming the step and suggesting a
smaller learning rate, the run directory stays valid up to the last finite
step, and explain/verify work on it."""
import json

import numpy as np

from conftest import SOURCE_DIR
from pkutil import pk, pk_run

DIGITS = SOURCE_DIR / "data" / "digits.csv.gz"


def test_divergence_keeps_a_valid_run(tmp_path):
    run = tmp_path / "run"
    p = pk_run("train", "--data", DIGITS, "--first", 200, "--model", "mlp:16:relu", "--loss", "mse", "--optim", "gd",
               "--lr", 1e3, "--steps", 100, "--quiet", "--out", run, expect=1)
    msg = p.stderr.strip().splitlines()[-1]
    assert "diverged at step" in msg and "smaller --lr" in msg, msg
    step = int(msg.split("diverged at step ")[1].split()[0])
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "diverged" and meta["steps"] == step - 1 < 100
    # every recorded loss is finite and the stored final weights predict finitely
    lines = (run / "steps.csv").read_text().splitlines()[1:]
    assert len(lines) == step - 1 and all(np.isfinite(float(l.split(",")[3])) for l in lines)
    pk("predict", run, "--data", DIGITS, "--first", 5, "--out", tmp_path / "p.npy")
    assert np.all(np.isfinite(np.load(tmp_path / "p.npy")))
    # the exact representation holds on the run as it stands (relu: gl4 is exact between kinks)
    out = pk("verify", run, "--query", DIGITS, "--first", 5, "--quad", "gl4", "--json")
    assert json.loads(out)["steps"] == step - 1
    pk("explain", run, "--query", DIGITS, "--first", 3, "--out", tmp_path / "e")
    assert (tmp_path / "e" / "contrib.npy").exists()
