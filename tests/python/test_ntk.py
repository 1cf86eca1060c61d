"""Infinite-width NTK and NNGP (MATH.md section 6) against Monte-Carlo
estimates from random finite networks in the ntk parameterisation: the
empirical tangent kernel at initialisation (`pathkernel kernel --at init`)
and the output covariance at initialisation (`pathkernel predict --step 0`).
The error of one network must shrink like width^-1/2."""
import subprocess

import numpy as np
import pytest

from conftest import BUILD_DIR

PK = str(BUILD_DIR / "pathkernel")
N, D = 6, 5
SW, SB = 1.5, 0.3


def pk(*args):
    r = subprocess.run([PK, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("ntk")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D))
    np.save(d / "x.npy", X)
    np.save(d / "y.npy", np.zeros((N, 1)))
    np.save(d / "y128.npy", np.zeros((N, 128)))
    return d


def analytic(data, model, get):
    out = data / f"inf-{model.replace(':', '_').replace(',', '_')}-{get}.npy"
    pk("ntk", "--model", model, "--sigma-w", SW, "--sigma-b", SB, "--x", f"npy:{data}/x.npy,{data}/y.npy",
       "--get", get, "--out", out)
    return np.load(out)


def random_net(data, model, width, seed, targets="y.npy"):
    run = data / f"run-{model.replace(':', '_').replace(',', '_')}-{width}-{seed}-{targets}"
    spec = model.replace("W", str(width))
    pk("train", "--data", f"npy:{data}/x.npy,{data}/{targets}", "--model", spec, "--loss", "mse", "--param", "ntk",
       "--sigma-w", SW, "--sigma-b", SB, "--optim", "gd", "--lr", "1e-9", "--steps", 1, "--seed", seed,
       "--quiet", "--out", run)
    return run


@pytest.mark.parametrize("model", ["mlp:W:relu", "mlp:W,W:relu", "mlp:W:erf", "mlp:W,W:erf"])
def test_ntk_matches_wide_networks(data, model):
    theta = analytic(data, model.replace("W", "1"), "ntk")
    assert np.allclose(theta, theta.T) and np.all(np.linalg.eigvalsh(theta) > 0)
    widths, seeds = [64, 256, 1024], 32
    rms, means = [], []
    for width in widths:
        Ks = []
        for seed in range(seeds):
            run = random_net(data, model, width, seed)
            pk("kernel", run, "--at", "init", "--x", f"npy:{data}/x.npy,{data}/y.npy", "--mode", "trace",
               "--out", run / "K0.npy")
            Ks.append(np.load(run / "K0.npy"))
        Ks = np.array(Ks)
        err = np.linalg.norm(Ks - theta, axis=(1, 2)) / np.linalg.norm(theta)
        rms.append(np.sqrt(np.mean(err ** 2)))
        means.append(np.linalg.norm(Ks.mean(0) - theta) / np.linalg.norm(theta))
    slope = np.polyfit(np.log(widths), np.log(rms), 1)[0]
    print(model, "rms error per network", rms, "mean-of-32 error", means, "slope", slope)
    assert abs(slope + 0.5) < 0.15, (slope, rms)
    assert means[-1] < 0.05, means          # the Monte-Carlo mean at width 1024
    assert rms[-1] < rms[0] / 2.5


@pytest.mark.parametrize("model", ["mlp:W,W:relu", "mlp:W:erf"])
def test_nngp_matches_output_covariance(data, model):
    sigma = analytic(data, model.replace("W", "1"), "nngp")
    width, seeds = 1024, 12
    covs = []
    for seed in range(seeds):
        run = random_net(data, model, width, 100 + seed, targets="y128.npy")
        pk("predict", run, "--data", f"npy:{data}/x.npy,{data}/y128.npy", "--step", 0, "--out", run / "f0.npy")
        F = np.load(run / "f0.npy")            # (N, 128): 128 outputs, independent given the features
        covs.append(F @ F.T / F.shape[1])
    err = np.linalg.norm(np.mean(covs, 0) - sigma) / np.linalg.norm(sigma)
    print(model, "NNGP Monte-Carlo error", err)
    assert err < 0.1, err                       # 1,536 samples: about 0.04 expected


def test_tanh_is_refused(data):
    r = subprocess.run([PK, "ntk", "--model", "mlp:8:tanh", "--x", f"npy:{data}/x.npy,{data}/y.npy", "--out",
                        data / "no.npy"], capture_output=True, text=True)
    assert r.returncode == 2 and "relu and erf" in r.stderr and not (data / "no.npy").exists()
