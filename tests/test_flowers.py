"""The Flowers-102 chapter from the command line: `papermill nbs/flowers.ipynb out.ipynb -p ...`
(its smoke-build results are checked in test_book.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
