"""Small models of the book, all DP-compatible (no BatchNorm, no in-place activations).

* :func:`mnist_cnn`: the end-to-end CNN of Papernot et al. (2021, "Tempered sigmoid
  activations") and Tramèr & Boneh (2021, Table 9) for MNIST: two strided convolutions with
  max-pooling, a 32-unit dense layer; ``tanh`` activations, which keep activations (and so
  gradients) bounded, work better under clipping than ReLU.
* :func:`cifar_cnn` (the CIFAR-10 chapter's CNN and its variants), :func:`smoothnet` (Remerscheid
  et al. 2022's SmoothNet, W80D50 and smaller), :func:`wide_resnet` (De et al. 2022's WRN-16-4).

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

from dpnb.params import ParameterError, check_choice

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
                groups: int | None = 8, first_kernel: int = 3, grid: int = 1) -> nn.Sequential:
    """A small CNN on scattering maps: two convolutions (``width`` channels) with ``activation``,
    max-pooling between them, average pooling to a ``grid`` × ``grid`` map, a linear classifier.

    ``groups`` puts a GroupNorm of that many groups before each activation (``None``: none).
    Tramèr & Boneh's ScatterNet + CNN for CIFAR-10 (2021, ``models.py`` of their code) is
    ``groups=None, first_kernel=3, grid=4`` on the 8 × 8 maps of J = 2: conv 3×3, tanh, max-pool 2,
    conv 3×3, tanh, the 4 × 4 map flattened (1,024 features at width 64) into the classifier.
    ``grid=1`` is global average pooling (``width`` features); ``first_kernel=1`` makes the first
    layer a cheap channel mixer (for the 651 maps of J = 3).

    Example::

        >>> import torch
        >>> scatter_cnn(in_channels=243, num_classes=10, groups=None, grid=4)(torch.zeros(2, 243, 8, 8)).shape
        torch.Size([2, 10])
    """
    act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
    if groups is not None and (groups < 1 or width % groups):
        raise ParameterError(f"groups must be a positive divisor of width={width}, got {groups}")
    if grid < 1:
        raise ParameterError(f"grid must be an integer >= 1, got {grid}")

    def norm() -> list[nn.Module]:
        return [] if groups is None else [nn.GroupNorm(groups, width)]

    return nn.Sequential(
        nn.Conv2d(in_channels, width, kernel_size=first_kernel, padding=first_kernel // 2), *norm(), act(),
        MaxPool2d(kernel_size=2, stride=2),
        nn.Conv2d(width, width, kernel_size=3, padding=1), *norm(), act(),
        nn.AdaptiveAvgPool2d(grid), nn.Flatten(),
        nn.Linear(width * grid * grid, num_classes),
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


def cifar_architectures(width: int) -> dict[str, dict[str, object]]:
    """The CIFAR-10 chapter's architecture variants: ``cifar_cnn`` keyword arguments, each changing one
    thing from the first (widths relative to ``width``).

        >>> cifar_architectures(16)["wide (2x width, 1 stage)"]
        {'width': 32, 'activation': 'tanh', 'depth': 1}
    """
    variants: dict[str, dict[str, object]] = {
        "tanh + GroupNorm": dict(activation="tanh"),
        "ReLU + GroupNorm": dict(activation="relu"),
        "SELU without norm": dict(activation="selu", norm=False),
        "tanh without norm": dict(activation="tanh", norm=False),
        "tanh + pool then GroupNorm": dict(activation="tanh", pool_then_norm=True),
        "wide (2x width, 1 stage)": dict(activation="tanh", width=2 * width, depth=1),
        "deep (1/2 width, 3 stages)": dict(activation="tanh", width=width // 2, depth=3),
    }
    return {k: {"width": width} | v for k, v in variants.items()}


def cifar_cnn(*, activation: str = "tanh", norm: bool = True, pool_then_norm: bool = False, norm_first: bool = False,
              width: int = 32, depth: int = 2, groups: int = 8, num_classes: int = 10) -> nn.Sequential:
    """A small CIFAR-10 CNN with the SmoothNets knobs (Remerscheid et al. 2022): ``depth`` stages of
    two 3x3 convolutions (``width * 2**stage`` channels), each followed by the activation and, with
    ``norm``, GroupNorm; max-pooling closes a stage, before the last GroupNorm when
    ``pool_then_norm``. Global average pooling and a linear classifier at the end.

    ``norm_first`` puts GroupNorm between each convolution and its activation (conv, GroupNorm,
    activation, as in the blocks of De et al.'s WRN), the order that weight standardisation assumes:
    the normalisation then sees the convolution's output directly.

        >>> [type(m).__name__ for m in cifar_cnn(norm_first=True, activation="relu", depth=1)][:4]
        ['Conv2d', 'GroupNorm', 'ReLU', 'Conv2d']
    """
    act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
    if norm_first and (pool_then_norm or not norm):
        raise ParameterError("norm_first needs norm=True and pool_then_norm=False")
    layers: list[nn.Module] = []
    c_in = 3
    for stage in range(depth):
        c = width * 2 ** stage
        for i in range(2):
            last = i == 1
            if norm_first:
                layers += [nn.Conv2d(c_in, c, kernel_size=3, padding=1), nn.GroupNorm(min(groups, c), c), act()]
                if last:
                    layers.append(MaxPool2d(kernel_size=2, stride=2))
                c_in = c
                continue
            layers += [nn.Conv2d(c_in, c, kernel_size=3, padding=1), act()]
            if last and pool_then_norm:
                layers.append(MaxPool2d(kernel_size=2, stride=2))
            if norm:
                layers.append(nn.GroupNorm(min(groups, c), c))
            if last and not pool_then_norm:
                layers.append(MaxPool2d(kernel_size=2, stride=2))
            c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))


class _SmoothBlock(nn.Sequential):
    """SmoothNet's block (Remerscheid et al. 2022): 3x3 conv without bias, max-pool 3x3 stride 1
    (same size), GroupNorm, SELU."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), MaxPool2d(3, stride=1, padding=1),
                         nn.GroupNorm(min(groups, c_out), c_out), nn.SELU())


class _DenseStack(nn.Module):
    """Blocks that each read the concatenation of the stack's input and every earlier block's output;
    the stack returns that concatenation including the last output (no bottlenecks)."""

    def __init__(self, c_in: int, c_out: int, blocks: int, groups: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_SmoothBlock(c_in + i * c_out, c_out, groups) for i in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.cat([x, block(x)], dim=1)
        return x


class _LastChannels(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -self.n:]


def smoothnet(*, width: float = 8.0, depth: float = 5.0, groups: int = 8, num_classes: int = 10) -> nn.Sequential:
    """SmoothNet (Remerscheid et al. 2022, "SmoothNets: Optimizing CNN architecture design for
    differentially private deep learning"; TUM-AIMED PrivateModelArchitectures,
    ``classification/SmoothNet.py``): a wide DenseNet without bottlenecks, SELU and GroupNorm.

    Two dense stacks of ``round(depth)`` blocks with ``round(8 * width)`` and ``round(16 * width)``
    output channels per block; between them a 1x1 convolution halving the channels and 2x2 average
    pooling; the head pools 2x2, keeps the last block's channels, pools adaptively to 4x4 and ends in
    fully connected 256 → 128 → classes with SELU. The paper's W80D50 is ``width=8, depth=5``
    (3,391,853 parameters); smaller ``width``/``depth`` give the book profile's version.

        >>> sum(p.numel() for p in smoothnet(width=1, depth=1).parameters())
        101017
    """
    c0, c1, n = round(8 * width), round(16 * width), round(depth)
    if c0 < 1 or n < 1:
        from dpnb.params import ParameterError

        raise ParameterError(f"width and depth must give at least one channel and one block; got {width}, {depth}")
    out0 = 3 + n * c0
    mid = out0 // 2
    return nn.Sequential(
        _DenseStack(3, c0, n, groups),
        nn.Conv2d(out0, mid, 1, bias=False), nn.AvgPool2d(2, 2),
        _DenseStack(mid, c1, n, groups),
        nn.AvgPool2d(2, 2), _LastChannels(c1), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(16 * c1, 256), nn.SELU(), nn.Linear(256, 128), nn.SELU(), nn.Linear(128, num_classes))


class _WideBlock(nn.Module):
    """Pre-activation residual block of a wide ResNet, GroupNorm instead of BatchNorm."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int = 16) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.n2, self.c2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.ReLU()
        self.short = (nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out
                      else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.n1(x))
        out = self.c1(h)
        out = self.c2(self.act(self.n2(out)))
        return out + (self.short(h) if not isinstance(self.short, nn.Identity) else x)


def wide_resnet(*, depth: int = 16, width: int = 4, num_classes: int = 10) -> nn.Sequential:
    """WRN-``depth``-``width`` (Zagoruyko & Komodakis 2016) with GroupNorm, as De et al. (2022) train
    with DP-SGD (use :func:`dpnb.scale.standardize_weights` for their weight standardisation)."""
    n = (depth - 4) // 6
    chans = [16, 16 * width, 32 * width, 64 * width]
    layers: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, 1, 1, bias=False)]
    for stage in range(3):
        for i in range(n):
            layers.append(_WideBlock(chans[stage] if i == 0 else chans[stage + 1], chans[stage + 1],
                                     stride=(1 if stage == 0 or i > 0 else 2)))
    return nn.Sequential(*layers, nn.GroupNorm(16, chans[3]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(chans[3], num_classes))


#: The scale section's models (CIFAR-10 chapter, section 4): the chapter's CNN, the same CNN in De et al.'s
#: block order, and their WRN-16-4.
SCALE_MODELS = ("cnn-norm-first", "cnn", "wrn-16-4")


def scale_model(name: str, *, width: int) -> nn.Module:
    """A fresh model of :data:`SCALE_MODELS`: ``cnn`` is :func:`cifar_cnn` (tanh, then GroupNorm),
    ``cnn-norm-first`` the same CNN with conv → GroupNorm → ReLU, ``wrn-16-4`` :func:`wide_resnet`
    (``width`` is the CNNs' first-stage channels; the WRN ignores it).

        >>> [type(m).__name__ for m in scale_model("cnn-norm-first", width=8)][:3]
        ['Conv2d', 'GroupNorm', 'ReLU']
    """
    name = check_choice("scale_model", name, SCALE_MODELS)
    if name == "wrn-16-4":
        return wide_resnet(depth=16, width=4)
    return cifar_cnn(width=width) if name == "cnn" else cifar_cnn(width=width, activation="relu", norm_first=True)
