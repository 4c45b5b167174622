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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 2**30
_tuned: bool | None = None


def tune_allocator() -> bool:
    """Keep PyTorch's CPU temporaries of up to 32 MiB in the process's heap between training steps
    (glibc only; once per process).

    By default glibc serves allocations over a moving mmap threshold with fresh pages, unmaps them on
    free, and returns free heap above a trim threshold to the system, so each step of a small model
    on CPU page-faults part of its activations and gradients in anew. Measured on 2 cores, single
    steps of the MNIST CNN at batch 1024: 37 ms non-private (66 ms untuned), 52-53 ms with
    book-keeping clipping (76-81 ms). The tuning fixes the mmap threshold at 32 MiB (glibc's
    maximum) and keeps up to 1 GiB of freed heap for reuse; the numbers computed do not change.
    Allocations over 32 MiB (cached feature matrices, large batches of images) are still mapped
    and unmapped, so they cannot fragment the heap: serving those from the heap too was faster
    for the CIFAR-10 CNN at batch 1024 but took the CIFAR-10 chapter's kernel to 19.7 GiB resident (14.6 GiB at
    most with this setting).
    ``DPNB_TUNE_MALLOC=0`` leaves the allocator alone. Returns whether the settings are in force.
    """
    global _tuned
    if _tuned is None:
        _tuned = False
        if sys.platform.startswith("linux") and os.environ.get("DPNB_TUNE_MALLOC", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                    bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                _tuned = False
    return _tuned
