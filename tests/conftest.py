"""Shared fixtures: the repository root, the `dpnb` console script, and one smoke build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dpnb_command() -> list[str]:
    script = Path(sys.executable).with_name("dpnb")
    return [str(script)] if script.exists() else [sys.executable, "-m", "dpnb.cli"]


def run_dpnb(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([*dpnb_command(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dpnb book --profile smoke` into a fresh build folder, once per session."""
    build = tmp_path_factory.mktemp("book_build")
    # every chapter, two at a time (one thread each on this 2-core machine)
    proc = run_dpnb("book", "--profile", "smoke", "--build-dir", str(build), "--workers", "2", timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return build
