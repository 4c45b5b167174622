"""Where tensors live: the device a chapter or a run asked for, with a one-line error for CUDA without CUDA.

    >>> select_device("cpu").type
    'cpu'
"""

from __future__ import annotations

import torch

from dpnb.params import ParameterError, check_choice

__all__ = ["DEVICES", "select_device"]

DEVICES = ("auto", "cpu", "cuda")


def select_device(device: str = "auto") -> torch.device:
    """``cuda`` when asked for or (``auto``) available, else ``cpu``."""
    device = check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device must be 'auto' or 'cpu' on this machine: CUDA is not available")
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
