"""dpnb.devices: the device choice and the host allocator's settings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dpnb.devices import select_device
from dpnb.params import ParameterError

# tuned twice (the second call is a no-op), then: does a freed 16 MiB tensor stay in the process for reuse,
# and does a freed 128 MiB one go back to the system (mapped, so it cannot fragment the heap)?
_ASK = """
import torch
from dpnb.devices import tune_allocator
tuned = tune_allocator(), tune_allocator()
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS:")).split()[1]) / 1024
before = rss()
x = torch.ones(2**22)
del x
kept = rss() - before > 8
before = rss()
y = torch.ones(2**25)
del y
print(*tuned, kept, rss() - before < 64)
"""


def test_unknown_device_is_one_line_error() -> None:
    with pytest.raises(ParameterError, match="device must be one of"):
        select_device("tpu")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("setting", ["1", "0"])
def test_allocator_is_tuned_once_unless_switched_off(setting: str) -> None:
    env = {**os.environ, "DPNB_TUNE_MALLOC": setting}
    out = subprocess.run([sys.executable, "-c", _ASK], capture_output=True, text=True, env=env, check=True)
    tuned, tuned_again, kept, big_returned = out.stdout.split("\n")[0].split()
    assert (tuned, tuned_again) == ((("True",) * 2) if setting == "1" else (("False",) * 2))
    if setting == "1":  # untuned, glibc's moving mmap threshold decides where a 16 MiB block goes
        assert kept == "True"
    assert big_returned == "True"
