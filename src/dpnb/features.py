"""Fixed feature extractors (ScatterNet, pretrained backbones) and a disk cache of their outputs.

Features computed by a fixed, data-independent function of each image cost no privacy budget;
only the model trained on them sees private data through DP-SGD (Tramèr & Boneh, ICLR 2021,
Sec. 3). Since they never change, they are computed once and cached on disk:
``$DPNB_CACHE`` (``dpnb book`` uses ``book/_build/cache``), else ``~/.cache/dpnb``.

* :func:`scatternet`: scattering transform (:mod:`dpnb.scattering`) followed by a
  parameter-free GroupNorm, Tramèr & Boneh's "ScatterNet + data normalisation" (Sec. 3.1);
  :func:`group_normalize` does the same for cached raw scattering coefficients.
* :func:`backbone`: a torchvision ResNet-18 cut after ``layer3`` or after the pooling layer,
  with ImageNet weights when they are in ``$TORCH_HOME`` (or downloadable), else an error
  :class:`WeightsUnavailable` that says so; ``weights="none"`` gives a randomly initialised one.

Example::

    >>> import torch
    >>> f = scatternet(J=2, shape=(32, 32), channels=3)
    >>> f(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 243, 8, 8])
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dpnb.models import out_of_place_residuals
from dpnb.params import check_choice
from dpnb.scattering import Scattering2D, num_coefficients
from dpnb.store import WeightsUnavailable, atomic_save, cache_dir, hub_state_dict, load_tensors

BACKBONE_WEIGHTS = ("imagenet", "none")


class ScatterNet(nn.Module):
    """Scattering of each colour channel, stacked to ``(C*K, h, w)``, then GroupNorm without parameters."""

    def __init__(self, *, J: int, shape: tuple[int, int], channels: int, L: int = 8, groups: int | None = None):
        super().__init__()
        self.scattering = Scattering2D(J=J, shape=shape, L=L)
        self.out_channels = channels * num_coefficients(J=J, L=L)
        # Tramèr & Boneh normalise 243 = 3 x 81 channels in 27 groups of 9; elsewhere take the
        # most groups of at least 9 channels that divide the channel count (651 = 31 x 21 for J=3).
        if groups is None:
            groups = max(g for g in range(1, self.out_channels // 9 + 1) if self.out_channels % g == 0)
        self.norm = nn.GroupNorm(groups, self.out_channels, affine=False)

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """The raw scattering coefficients ``(B, C*K, h, w)``, before the normalisation."""
        return self.scattering(x).flatten(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.coefficients(x))


def group_normalize(features: torch.Tensor, *, groups: int, chunk_size: int = 4096) -> torch.Tensor:
    """Parameter-free GroupNorm of ``(..., channels, h, w)`` features in ``groups`` groups, as float32.

    Tramèr & Boneh's data normalisation (ICLR 2021, Sec. 3.1) applied to cached raw scattering
    coefficients (:meth:`ScatterNet.coefficients`), so that one cache serves models that normalise
    differently. Per example (and per view), so it costs no privacy budget. Written chunk by
    chunk into one output tensor: the full-size float32 copy is made once.
    """
    if features.ndim < 4 or features.shape[-3] % groups:
        raise ValueError(f"groups must divide the channel count of (..., channels, h, w) features, got "
                         f"groups={groups} for shape {tuple(features.shape)}")
    flat = features.reshape(-1, *features.shape[-3:])
    out = torch.empty(flat.shape, dtype=torch.float32, device=features.device)
    for start in range(0, len(flat), chunk_size):
        out[start:start + chunk_size] = nn.functional.group_norm(flat[start:start + chunk_size].float(), groups)
    return out.reshape(features.shape)


def normalized_views(views: list[FeatureSet], *, groups: int) -> TensorDataset:
    """One dataset from cached raw features of the same images: :func:`group_normalize` of each,
    stacked to ``(N, K, ...)`` for ``K > 1`` views (e.g. image and mirror image), ``(N, ...)`` for one."""
    if any(not torch.equal(v.labels, views[0].labels) for v in views[1:]):
        raise ValueError("views must hold the same images in the same order (their labels differ)")
    x = views[0].features if len(views) == 1 else torch.stack([v.features for v in views], dim=1)
    return TensorDataset(group_normalize(x, groups=groups), views[0].labels)


def scatternet(*, J: int, shape: tuple[int, int], channels: int = 3, L: int = 8) -> ScatterNet:
    """Tramèr & Boneh's ScatterNet features: J scales, L=8 angles, normalised per example."""
    return ScatterNet(J=J, shape=shape, channels=channels, L=L)


def imagenet_state_dict(name: str = "resnet18") -> dict[str, torch.Tensor]:
    """The torchvision ImageNet weights of ``name`` from ``$TORCH_HOME/hub/checkpoints`` or the internet."""
    from torchvision.models import get_model_weights

    return hub_state_dict(get_model_weights(name).DEFAULT.url,
                          what=f"backbone_weights='imagenet': {name} ImageNet weights",
                          fallback="or use backbone_weights='none'")


def imagenet_weights_available(name: str = "resnet18") -> bool:
    """True when :func:`imagenet_state_dict` would succeed (file present or downloadable)."""
    try:
        imagenet_state_dict(name)
    except WeightsUnavailable:
        return False
    return True


def _fuse_batchnorm(block: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution before it (exact; DP needs no BatchNorm)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in list(block.children()):
        _fuse_batchnorm(child)
    names = list(block._modules)
    for a, b in zip(names, names[1:]):
        conv, bn = block._modules[a], block._modules[b]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            block._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
            block._modules[b] = nn.Identity()
    return block


def vgg16_features(*, weights: str) -> nn.Sequential:
    """torchvision's VGG16 without its classifier: 13 convolutions with ReLU and 5 max-pools, 14.7M
    parameters, 512 channels at 1/32 of the input size. Plain VGG16 has no BatchNorm, so it is
    DP-compatible as it is; its ReLUs are made to copy, for Opacus's hooks. ``weights="imagenet"``
    raises :class:`WeightsUnavailable` when they cannot be had.

        >>> f = vgg16_features(weights="none")
        >>> tuple(f(torch.zeros(1, 3, 64, 64)).shape), sum(p.numel() for p in f.parameters())
        ((1, 512, 2, 2), 14714688)
    """
    from torchvision.models import vgg16

    weights = check_choice("backbone_weights", weights, BACKBONE_WEIGHTS)
    net = vgg16(weights=None)
    if weights == "imagenet":
        net.load_state_dict(imagenet_state_dict("vgg16"))
    for m in net.features.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return net.features


def backbone(*, weights: str, cut: str = "pool") -> tuple[nn.Module, nn.Module]:
    """ResNet-18 split into a frozen trunk and the rest: ``(trunk, rest)``.

    ``cut="pool"``: the trunk ends with global average pooling (512 features), ``rest`` is empty;
    ``cut="layer3"``: the trunk ends after ``layer3`` and ``rest`` is ``layer4`` + pooling, with
    its BatchNorms folded into the convolutions, so that it can be fine-tuned under DP.
    ``weights="imagenet"`` raises :class:`WeightsUnavailable` when they cannot be had.
    """
    from torchvision.models import resnet18

    weights = check_choice("backbone_weights", weights, BACKBONE_WEIGHTS)
    cut = check_choice("cut", cut, ("pool", "layer3"))
    net = resnet18(weights=None)
    if weights == "imagenet":
        net.load_state_dict(imagenet_state_dict("resnet18"))
    net.eval()
    out_of_place_residuals(net)  # Opacus's hooks break on in-place additions and activations
    stem = [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3]
    tail = [net.layer4, net.avgpool, nn.Flatten()]
    if cut == "pool":
        return nn.Sequential(*stem, *tail).eval(), nn.Sequential()
    return nn.Sequential(*stem).eval(), _fuse_batchnorm(nn.Sequential(*tail))


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
    for mod in ("scattering.py", "features.py"):
        h.update((Path(__file__).parent / mod).read_bytes())
    return h.hexdigest()[:16]


class FeatureSet(Dataset):
    """Cached features (stored as float16) and labels; items come back as float32."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[i].float(), self.labels[i]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All features (float32) and labels at once."""
        return self.features.float(), self.labels


@torch.no_grad()
def extract(dataset: Dataset, extractor: Callable[[torch.Tensor], torch.Tensor], *, key: str,
            batch_size: int = 128, device: torch.device | str = "cpu", cache: bool = True,
            progress: bool = True, num_workers: int = 0) -> FeatureSet:
    """Features of every image of ``dataset`` (in order), from the cache when ``key`` was computed before.

    ``key`` must describe the dataset, its transform and the extractor; the cache file name also
    hashes the source of :mod:`dpnb.scattering` and this module. Files are written atomically.
    """
    from dpnb.progress import progress as progress_bar

    path = cache_dir() / f"{key.replace('/', '_')}-{_digest(key, len(dataset))}.pt"  # type: ignore[arg-type]
    if cache and path.is_file():
        d = load_tensors(path)
        return FeatureSet(d["features"], d["labels"])
    if isinstance(extractor, nn.Module):
        extractor = extractor.to(device).eval()
    feats, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    for x, y in progress_bar(loader, desc=f"features {key}", enable=progress, mininterval=10):
        feats.append(extractor(x.to(device)).to("cpu", torch.float16))
        labels.append(torch.as_tensor(y))
    out = FeatureSet(torch.cat(feats), torch.cat(labels))
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(path, lambda tmp: torch.save({"features": out.features, "labels": out.labels}, tmp))
    return out
