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

from torch import nn

from dpnb.params import check_choice

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "selu": nn.SELU}


def mnist_cnn(*, activation: str = "tanh", num_classes: int = 10) -> nn.Sequential:
    """The 26k-parameter MNIST CNN of Tramèr & Boneh (2021, Table 9): 16c8s2-pool-32c4s2-pool-32-10."""
    act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=8, stride=2, padding=3), act(),
        nn.MaxPool2d(kernel_size=2, stride=1),
        nn.Conv2d(16, 32, kernel_size=4, stride=2), act(),
        nn.MaxPool2d(kernel_size=2, stride=1),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32), act(),
        nn.Linear(32, num_classes),
    )
