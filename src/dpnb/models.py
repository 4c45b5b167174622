"""Small models of the book, all DP-compatible (no BatchNorm, no in-place activations).

* :func:`mnist_cnn`: the end-to-end CNN of Papernot et al. (2021, "Tempered sigmoid
  activations") and Tramèr & Boneh (2021, Table 9) for MNIST: two strided convolutions with
  max-pooling, a 32-unit dense layer; ``tanh`` activations, which keep activations (and so
  gradients) bounded, work better under clipping than ReLU.

Example::

    >>> import torch
    >>> from dpnb.models import mnist_cnn
    >>> mnist_cnn()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpnb.params import check_choice

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "selu": nn.SELU}


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` computed in channels-last layout, returned in the usual layout.

    Same numbers; on CPU PyTorch's channels-last max-pooling is about twice as fast, which makes
    a whole DP-SGD epoch of :func:`mnist_cnn` about a third faster on 2 cores. It has no
    parameters, so Opacus needs no per-sample rule for it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), self.kernel_size, self.stride,
                         self.padding, self.dilation, ceil_mode=self.ceil_mode)
        return y.contiguous()


def mnist_cnn(*, activation: str = "tanh", num_classes: int = 10) -> nn.Sequential:
    """The 26k-parameter MNIST CNN of Tramèr & Boneh (2021, Table 9): 16c8s2-pool-32c4s2-pool-32-10."""
    act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=8, stride=2, padding=3), act(),
        MaxPool2d(kernel_size=2, stride=1),
        nn.Conv2d(16, 32, kernel_size=4, stride=2), act(),
        MaxPool2d(kernel_size=2, stride=1),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32), act(),
        nn.Linear(32, num_classes),
    )
