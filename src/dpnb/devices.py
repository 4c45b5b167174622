"""Where tensors live: the device a chapter or a run asked for, with a one-line error for CUDA without CUDA,
and the host allocator's settings for training on CPU (:func:`tune_allocator`).

    >>> select_device("cpu").type
    'cpu'
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

from dpnb.params import ParameterError, check_choice

__all__ = ["DEVICES", "select_device", "tune_allocator"]

DEVICES = ("auto", "cpu", "cuda")


def select_device(device: str = "auto") -> torch.device:
    """``cuda`` when asked for or (``auto``) available, else ``cpu``."""
    device = check_choice("device", device, DEVICES)
    tune_allocator()
    if device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device must be 'auto' or 'cpu' on this machine: CUDA is not available")
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD = 2**30
_tuned: bool | None = None


def tune_allocator() -> bool:
    """Keep PyTorch's CPU temporaries in the process's heap between training steps (glibc only; once per process).

    glibc serves each allocation over its mmap threshold (at most 32 MiB) with fresh pages and
    unmaps them on free, and returns free heap above its trim threshold to the system, so every
    step of a model on CPU page-faults its activations and gradients in anew. Measured on 2 cores
    (``dpnb bench`` and single steps): the MNIST CNN's non-private step at batch 1024 took
    40 ms instead of 64-77 ms with the allocator tuned, the CIFAR-10 chapter's CNN's
    380-450 ms instead of 900-930 ms; private and non-private training gain alike. The tuning
    serves every allocation from the heap (``M_MMAP_MAX`` = 0) and keeps up to 1 GiB of freed
    heap for reuse (``M_TRIM_THRESHOLD``); the numbers computed do not change, peak memory does
    not grow, but the process holds on to its peak. ``DPNB_TUNE_MALLOC=0`` leaves the allocator
    alone. Returns whether the settings are in force.
    """
    global _tuned
    if _tuned is None:
        _tuned = False
        if sys.platform.startswith("linux") and os.environ.get("DPNB_TUNE_MALLOC", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _tuned = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                _tuned = False
    return _tuned
