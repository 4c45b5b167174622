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


def linear_head(*, in_features: int, num_classes: int) -> nn.Sequential:
    """Flatten, then one linear layer: the classifier of Tramèr & Boneh's ScatterNet+linear (Sec. 3)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))


def scatter_cnn(*, in_channels: int, num_classes: int, width: int = 64, activation: str = "tanh",
                groups: int = 8, first_kernel: int = 3) -> nn.Sequential:
    """A small CNN on scattering maps, after Tramèr & Boneh (2021, Table 10): two convolutions with
    GroupNorm and ``tanh``, max-pooling between them, global average pooling, a linear classifier.
    ``first_kernel=1`` makes the first layer a cheap channel mixer (for the 651 maps of J=3)."""
    act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
    return nn.Sequential(
        nn.Conv2d(in_channels, width, kernel_size=first_kernel, padding=first_kernel // 2),
        nn.GroupNorm(groups, width), act(),
        MaxPool2d(kernel_size=2, stride=2),
        nn.Conv2d(width, width, kernel_size=3, padding=1), nn.GroupNorm(groups, width), act(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def _basic_block_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)  # torchvision writes `out += identity`, in place


def out_of_place_residuals(model: nn.Module) -> nn.Module:
    """Make torchvision ResNet ``BasicBlock``s add their shortcut out of place and use copying ReLUs.

    Opacus's per-sample-gradient hooks wrap module outputs in custom autograd functions; the
    in-place ``out += identity`` and ``ReLU(inplace=True)`` of torchvision's blocks then fail
    ("Output 0 of BackwardHookFunction is a view and is being modified inplace"). Same numbers.
    """
    import types

    from torchvision.models.resnet import BasicBlock

    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
        if isinstance(m, BasicBlock):
            m.forward = types.MethodType(_basic_block_forward, m)  # type: ignore[method-assign]
    return model
