"""dpnb train: one DP-SGD run from the command line, alone and under torchrun (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import ROOT, run_dpnb
from dpnb import distributed, models, train
from dpnb.params import ParameterError

RUN = ["--dataset", "mnist", "--limit", "2000", "--test-limit", "500", "--epochs", "2", "--batch-size", "128",
       "--learning-rate", "2", "--momentum", "0.9", "--max-grad-norm", "0.1", "--target-epsilon", "8", "--seed", "1"]


def _need_data() -> None:
    if not (Path(os.environ.get("DPNB_DATA", "data")) / "MNIST").is_dir():
        pytest.skip("MNIST is not under $DPNB_DATA")


def test_one_process_and_two_torchrun_processes_run_the_same_mechanism(tmp_path: Path) -> None:
    _need_data()
    one = run_dpnb("train", *RUN, "--json", "--out", str(tmp_path / "one" / "run.json"))
    assert one.returncode == 0, one.stderr
    solo = json.loads(one.stdout.strip().splitlines()[-1])
    assert solo["processes"] == 1 and solo["backend"] is None
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "dpnb.launch", *RUN,
                          "--json", "--out", str(tmp_path / "two" / "run.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stdout + two.stderr
    lines = [line for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone reports
    dist = json.loads(lines[0])
    assert dist["processes"] == 2 and dist["backend"] == "gloo"
    # the global run is the single-process mechanism: same q, steps, sigma and hence epsilon
    for key in ("sample_rate", "steps", "noise_multiplier", "epsilon_prv", "epsilon_rdp", "delta"):
        assert dist[key] == pytest.approx(solo[key], rel=1e-12), key
    assert dist["epsilon_prv"] == pytest.approx(8.0, abs=0.05)
    assert dist["sampling"] == "Poisson" and dist["adjacency"] == "add/remove"
    assert dist["test_accuracy"] > 0.3 and solo["test_accuracy"] > 0.3  # chance is 0.1
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["run.json"]  # one file, no partial copies
    written = json.loads((tmp_path / "two" / "run.json").read_text())
    assert written["processes"] == 2 and len(written["history"]) == 2


def test_bad_flags_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from dpnb.cli import main

    for args, message in [
        (["--epochs", "0"], "--epochs must be an integer in [1, 10000], got 0"),
        (["--dataset", "svhn"], "--dataset must be one of 'mnist', 'fashion-mnist', 'cifar10'; got 'svhn'"),
        (["--noise-multiplier", "1", "--target-epsilon", "3"], "give exactly one of --noise-multiplier"),
        (["--target-epsilon", "-3"], "--target-epsilon must be > 0, got -3"),
        (["--batch-size", "5000", "--limit", "1000", "--sigma", "1"], "--batch-size must be an integer in [1, 1000]"),
        (["--delta", "1", "--sigma", "1"], "--delta must be in (0, 1)"),
    ]:
        assert main(["train", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("dpnb train: error: ") and message in err, (args, err)


def test_too_small_a_batch_for_the_processes_is_refused_before_training() -> None:
    ds = TensorDataset(torch.randn(1000, 1, 28, 28), torch.randint(0, 10, (1000,)))
    world = distributed.World(rank=0, size=4, local_rank=0, backend="gloo")
    config = train.TrainConfig(batch_size=100, noise_multiplier=1.0)
    with pytest.raises(ParameterError, match="batch_size must be at least 128 with 4 processes"):
        train._distribute(models.mnist_cnn(), ds, config, world)
    with pytest.raises(ParameterError, match="grad_sample_mode 'bk' runs in one process"):
        train._distribute(models.mnist_cnn(), ds, train.TrainConfig(batch_size=512, noise_multiplier=1.0,
                                                                    grad_sample_mode="bk"), world)
