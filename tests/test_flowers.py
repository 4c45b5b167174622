"""The Flowers-102 chapter from the command line: `papermill nbs/flowers.ipynb out.ipynb -p ...`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT

needs_data = pytest.mark.skipif(not os.environ.get("DPNB_DATA"), reason="needs the real data (DPNB_DATA)")


def papermill(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the papermill command line from the repository root, as a reader would."""
    exe = Path(sys.executable).with_name("papermill")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "papermill"]
    env = dict(os.environ, DPNB_RESULTS=str(tmp_path / "results"), DPNB_CACHE=str(tmp_path / "cache"),
               PYTHONWARNINGS="ignore")
    return subprocess.run([*cmd, "nbs/flowers.ipynb", str(tmp_path / "out.ipynb"), *args, "--no-progress-bar"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
@needs_data
def test_smoke_profile_with_one_epoch_from_the_command_line(tmp_path: Path) -> None:
    profile = yaml.safe_load((ROOT / "book" / "profiles.yml").read_text())["smoke"]["flowers"]
    (tmp_path / "smoke.yml").write_text(yaml.safe_dump(dict(profile, profile="smoke")))
    proc = papermill(tmp_path, "-f", str(tmp_path / "smoke.yml"), "-p", "epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "results" / "flowers.csv")
    acc = df[df["metric"].str.startswith("test_top")]
    assert set(acc["experiment"]) >= {"linear head, non-private", "linear head, DP", "deep head, DP",
                                      "official split, linear head, DP, equal q"}
    head = acc[acc["experiment"] == "linear head, DP"]
    assert head["seeds"].eq(len(profile["seeds"])).all() and head["std"].notna().all()  # the headline: a mean
    assert acc[acc["experiment"] == "deep head, DP"]["seeds"].eq(1).all()
    official = acc[acc["dataset"] == "Flowers-102 official"]
    assert len(official) == 4  # non-private and DP at equal q, top-1 and top-5
    assert acc["value"].between(0, 1).all()
    dp = acc[acc["dp"]]
    assert dp["delta"].eq(1e-5).all() and dp["accountant"].str.contains("prv").all()
    assert dp["epsilon"].between(0, 8.0 + 1e-6).all()
    assert (df["metric"] == "seconds_per_step").sum() == 2  # 2 methods x 1 batch size
    assert list((tmp_path / "cache").glob("flowers102-*.pt"))  # features were cached


@pytest.mark.parametrize("args,message", [
    (["-p", "batch_size", "0"], "batch_size must be an integer in [1, 6149], got 0"),
    (["-p", "target_epsilon", "-1"], "target_epsilon must be"),
])
def test_bad_parameters_fail_fast_with_the_message(tmp_path: Path, args: list[str], message: str) -> None:
    proc = papermill(tmp_path, *args, timeout=300)
    assert proc.returncode != 0
    assert "ParameterError" in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "cache").exists()  # stopped before any feature extraction


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_fails_fast(tmp_path: Path) -> None:
    proc = papermill(tmp_path, "-p", "device", "cuda", timeout=300)
    assert proc.returncode != 0
    assert "device must be 'auto' or 'cpu' on this machine: CUDA is not available" in proc.stderr
