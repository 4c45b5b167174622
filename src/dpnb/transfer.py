"""Transfer learning under DP: fixed features, a DP-trained head, and top-k accuracy.

With features from a fixed extractor (a ScatterNet, or a backbone pretrained on public data),
DP-SGD only has to train the last layers: fewer parameters means less noise in total
(Tramèr & Boneh, ICLR 2021, Sec. 4; Kurakin et al. 2022; De et al. 2022, Sec. 5).
This module picks the feature extractor for a chapter's parameters and extracts (and caches)
the features of a dataset split once, so that training runs cost only the head.

Example::

    >>> resolve_features("scatternet", backbone_weights="none")
    ('scatternet', 'ScatterNet features (wavelet scattering, J=3, L=8): no learned weights')
    >>> import torch
    >>> top_k_accuracy(torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05]]), torch.tensor([0, 1]), k=2)
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dpnb import data
from dpnb.features import (
    FeatureSet,
    ScatterNet,
    WeightsUnavailable,
    backbone,
    extract,
    imagenet_weights_available,
    scatternet,
    vgg16_features,
)
from dpnb.params import ParameterError, check_choice

FEATURES = ("auto", "scatternet", "resnet18")
#: (training, validation, test) parts of each split choice, all official Flowers-102 parts: ``official``
#: trains on the 10 images per class of ``train``; ``large`` trains on the 6149 images of the official
#: ``test`` part and tests on the official ``train`` part. Both tune on the official ``val`` part.
FLOWERS_SPLITS = {"official": ("train", "val", "test"), "large": ("test", "val", "train")}
#: (training, validation, test) images of each split choice.
FLOWERS_SPLIT_SIZES = {"official": (1020, 1020, 6149), "large": (6149, 1020, 1020)}
SCATTER_J = 3


def resolve_features(features: str, *, backbone_weights: str) -> tuple[str, str]:
    """The extractor a run uses and a sentence saying why.

    ``auto`` takes the ImageNet ResNet-18 when ``backbone_weights="imagenet"`` and the weights can
    be had (``$TORCH_HOME`` or download), else the ScatterNet, which needs no weights at all.
    ``resnet18`` with ``imagenet`` weights that cannot be had is an error, not a silent fallback.
    """
    features = check_choice("features", features, FEATURES)
    backbone_weights = check_choice("backbone_weights", backbone_weights, ("imagenet", "none"))
    scat = f"ScatterNet features (wavelet scattering, J={SCATTER_J}, L=8): no learned weights"
    if features == "scatternet":
        return "scatternet", scat
    if features == "auto":
        if backbone_weights == "imagenet" and imagenet_weights_available("resnet18"):
            return "resnet18", "ResNet-18 pretrained on ImageNet (public data), frozen"
        why = ("ImageNet weights are not in $TORCH_HOME and cannot be downloaded here"
               if backbone_weights == "imagenet" else "backbone_weights='none'")
        return "scatternet", f"{scat} ({why})"
    if backbone_weights == "imagenet" and not imagenet_weights_available("resnet18"):
        raise ParameterError("features='resnet18' with backbone_weights='imagenet': the weights are not in "
                             "$TORCH_HOME/hub/checkpoints and cannot be downloaded; use features='scatternet', "
                             "features='auto' or backbone_weights='none'")
    if backbone_weights == "imagenet":
        return "resnet18", "ResNet-18 pretrained on ImageNet (public data), frozen"
    return "resnet18", "ResNet-18 with random weights (backbone_weights='none'): a control, not transfer"


@dataclass
class FeatureData:
    """Train, test and (where the split has one) validation features, with what produced them."""

    train: TensorDataset
    test: TensorDataset
    extractor: str
    description: str
    shape: tuple[int, ...]
    deep_head: nn.Module | None  # resnet18: layer4 (BatchNorm folded), fine-tuned in the "deeper" variant
    seconds: float
    validation: TensorDataset | None = None


def flowers_features(*, split: str, features: str, backbone_weights: str, image_size: int,
                     device: torch.device, limit: int | None = None, seed: int = 0,
                     progress: bool = True) -> FeatureData:
    """Flowers-102 features for the ``official`` (1020/1020/6149) or ``large`` (6149/1020/1020) split.

    Features are cached per official part (``train``, ``val``, ``test``), so the two splits share them.

    ScatterNet: images resized to ``image_size`` (centre crop), J=3 scattering + GroupNorm,
    ``(651, s/8, s/8)``. ResNet-18: ImageNet-normalised images through ``layer3``, ``(256, s/16, s/16)``;
    the frozen variant's head then sees ``layer4`` + pooling (512 features), the deeper variant
    fine-tunes ``layer4``. ``limit`` takes a seeded subset of each split (smoke runs).
    """
    import time

    from torchvision import transforms as T

    split = check_choice("split", split, FLOWERS_SPLITS)
    name, why = resolve_features(features, backbone_weights=backbone_weights)
    t0 = time.perf_counter()
    steps: list[Any] = [T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor()]
    deep_head: nn.Module | None = None
    if name == "scatternet":
        if image_size % 2 ** SCATTER_J:
            raise ParameterError(f"image_size must be a multiple of {2 ** SCATTER_J} for ScatterNet features, "
                                 f"got {image_size}")
        extractor: Any = scatternet(J=SCATTER_J, shape=(image_size, image_size))
    else:
        try:
            extractor, deep_head = backbone(weights=backbone_weights, cut="layer3")
        except WeightsUnavailable as e:
            raise ParameterError(str(e)) from None
        steps.append(T.Normalize(*data.NORMALIZATION["flowers102"]))
    key = f"flowers102-{{split}}-{name}-{backbone_weights if name != 'scatternet' else ''}-{image_size}"
    out = []
    for part in FLOWERS_SPLITS[split]:
        ds: Dataset = data.load_dataset("flowers102", split=part, transform=T.Compose(steps))
        k = key.format(split=part)
        if limit is not None and limit < len(ds):  # type: ignore[arg-type]
            ds, k = data.subset(ds, limit, seed=seed), f"{k}-limit{limit}-seed{seed}"
        fs = extract(ds, extractor, key=k, batch_size=64, device=device, progress=progress)
        out.append(TensorDataset(*fs.tensors()))
    shape = tuple(out[0].tensors[0].shape[1:])
    return FeatureData(train=out[0], validation=out[1], test=out[2], extractor=name, description=why, shape=shape,
                       deep_head=deep_head, seconds=time.perf_counter() - t0)


CIFAR10_SIZES = {"train": 50_000, "test": 10_000}


def cifar10_features(extractor: Any, *, name: str, split: str, mirrored: bool = False, limit: int | None = None,
                     seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 256,
                     progress: bool = True) -> FeatureSet:
    """Features (cached) of the CIFAR-10 ``split`` or of its mirror images, from a fixed ``extractor``.

    Images come from :func:`dpnb.data.cifar10_tensors` (decoded once, cached as uint8, normalised);
    a mirror image is the image flipped left to right, an exact view for augmentation multiplicity.
    ``limit`` below the split size takes a seeded subset. ``name`` describes the extractor in the
    cache key (``cifar10-{split}[-mirrored]-normalized-{name}[-limit{limit}-seed{seed}]``).
    """
    split = check_choice("split", split, tuple(CIFAR10_SIZES))
    key = f"cifar10-{split}{'-mirrored' if mirrored else ''}-normalized-{name}"
    if limit is not None and limit >= CIFAR10_SIZES[split]:
        limit = None
    if limit is not None:
        key = f"{key}-limit{limit}-seed{seed}"
    images, labels = data.cifar10_tensors(split=split, limit=limit, seed=seed, progress=progress).tensors
    dataset = TensorDataset(images.flip(-1) if mirrored else images, labels)
    return extract(dataset, extractor, key=key, batch_size=batch_size, device=device, progress=progress)


def cifar10_backbone_features(*, weights: str, limit: int, seed: int, device: torch.device, image_size: int = 64,
                              progress: bool = False) -> FeatureData:
    """ResNet-18 ``layer3`` maps of seeded CIFAR-10 subsets (``limit`` training images, as many test images).

    Images are upsampled to ``image_size`` and ImageNet-normalised; ``deep_head`` is ``layer4`` +
    pooling (BatchNorm folded), frozen by :func:`frozen_features` or fine-tuned under DP.
    ``weights="imagenet"`` that cannot be had is a :class:`~dpnb.params.ParameterError`.
    """
    import time

    from torchvision import transforms as T

    t0 = time.perf_counter()
    try:
        trunk, deep_head = backbone(weights=weights, cut="layer3")
    except WeightsUnavailable as e:
        raise ParameterError(str(e)) from None
    trunk = trunk.to(device)
    prep = T.Compose([T.Resize(image_size, antialias=False), T.Normalize(*data.NORMALIZATION["flowers102"])])
    out = []
    for split, n in (("train", limit), ("test", min(limit, CIFAR10_SIZES["test"]))):
        ds = data.cifar10_tensors(split=split, limit=n, seed=seed, normalize=False)
        fs = extract(TensorDataset(*ds.tensors), lambda x: trunk(prep(x)),  # noqa: B023 (used at once)
                     key=f"cifar10-{split}{n}-seed{seed}-resnet18-{weights}-layer3-{image_size}px",
                     device=device, progress=progress)
        out.append(TensorDataset(*fs.tensors()))
    description = ("ResNet-18 pretrained on ImageNet (public data)" if weights == "imagenet"
                   else "ResNet-18 with random weights")
    return FeatureData(train=out[0], test=out[1], extractor="resnet18", description=description,
                       shape=tuple(out[0].tensors[0].shape[1:]), deep_head=deep_head,
                       seconds=time.perf_counter() - t0)


#: The VGG16 variants of the original CIFAR-10 experiments: (weights, what DP-SGD trains).
VGG16_VARIANTS = {
    "fully pretrained": ("imagenet", "linear head on the frozen features"),
    "features pretrained, classifier trained": ("imagenet", "a new 2-layer classifier on the frozen features"),
    "from scratch": ("none", "every layer, from random initialisation"),
}


def _cifar10_images(*, limit: int, seed: int, image_size: int) -> tuple[TensorDataset, TensorDataset]:
    """Seeded CIFAR-10 subsets (``limit`` training images, as many test images), resized to ``image_size``
    and ImageNet-normalised."""
    from torchvision import transforms as T

    prep = T.Compose([T.Resize(image_size, antialias=False), T.Normalize(*data.NORMALIZATION["flowers102"])])
    out = []
    for split, n in (("train", limit), ("test", min(limit, CIFAR10_SIZES["test"]))):
        x, y = data.cifar10_tensors(split=split, limit=n, seed=seed, normalize=False).tensors
        out.append(TensorDataset(torch.cat([prep(b) for b in x.split(1024)]), y))
    return out[0], out[1]


def cifar10_vgg16(variant: str, *, limit: int, seed: int, device: torch.device, backbone_weights: str = "imagenet",
                  image_size: int = 64, hidden: int = 256,
                  progress: bool = False) -> tuple[nn.Module, TensorDataset, TensorDataset, str]:
    """One VGG16 variant (:data:`VGG16_VARIANTS`) on seeded CIFAR-10 subsets: ``(model, train, test, weights)``.

    ``backbone_weights="none"`` gives the pretrained variants random weights instead (to exercise the
    code where ImageNet weights are missing); the weights used are returned.

    The pretrained variants cache the frozen features once (512 x (image_size/32)^2 values per image)
    and return the trainable part alone: a linear layer, or Linear-ReLU-Linear with ``hidden`` units.
    ``from scratch`` returns the whole network (random VGG16 features, flattening, the same classifier)
    and the images themselves. Without ImageNet weights the pretrained variants raise
    :class:`~dpnb.params.ParameterError`.
    """
    weights, _ = VGG16_VARIANTS[check_choice("variant", variant, VGG16_VARIANTS)]
    if weights == "imagenet":
        weights = check_choice("backbone_weights", backbone_weights, ("imagenet", "none"))
    torch.manual_seed(seed)
    try:
        trunk = vgg16_features(weights=weights)
    except WeightsUnavailable as e:
        raise ParameterError(str(e)) from None
    train_set, test_set = _cifar10_images(limit=limit, seed=seed, image_size=image_size)
    dim = 512 * (image_size // 32) ** 2

    def classifier() -> nn.Sequential:
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    if variant == "from scratch":
        return nn.Sequential(trunk, nn.Flatten(), classifier()), train_set, test_set, weights
    trunk = trunk.to(device).eval()
    frozen = []
    for split, ds in (("train", train_set), ("test", test_set)):
        fs = extract(ds, lambda x: trunk(x).flatten(1),  # noqa: B023 (used at once)
                     key=f"cifar10-{split}{len(ds)}-seed{seed}-vgg16-{weights}-{image_size}px", device=device,
                     progress=progress)
        frozen.append(TensorDataset(*fs.tensors()))
    head = nn.Linear(dim, 10) if variant == "fully pretrained" else classifier()
    return head, frozen[0], frozen[1], weights


def frozen_features(fd: FeatureData, *, device: torch.device, batch_size: int = 256) -> FeatureData:
    """For ResNet-18 features: pass the cached ``layer3`` maps through the frozen ``layer4`` + pooling."""
    if fd.deep_head is None:
        return fd
    head = fd.deep_head.to(device).eval()

    @torch.no_grad()
    def run(ds: TensorDataset) -> TensorDataset:
        x, y = ds.tensors
        return TensorDataset(torch.cat([head(b.to(device)).cpu() for b in x.split(batch_size)]), y)

    train = run(fd.train)
    return FeatureData(train=train, validation=run(fd.validation) if fd.validation is not None else None,
                       test=run(fd.test), extractor=fd.extractor, description=fd.description,
                       shape=tuple(train.tensors[0].shape[1:]), deep_head=None, seconds=fd.seconds)


@torch.no_grad()
def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, *, k: int) -> float:
    """Fraction of examples whose label is among the ``k`` highest scores."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean())


@torch.no_grad()
def accuracies(model: nn.Module, dataset: Dataset, *, ks: tuple[int, ...] = (1, 5), batch_size: int = 1024,
               device: torch.device | None = None) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` of ``model`` on ``dataset``."""
    device = device or next(model.parameters()).device
    model.eval()
    logits, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        logits.append(model(x.to(device)).cpu())
        labels.append(y)
    model.train()
    lg, lb = torch.cat(logits), torch.cat(labels)
    return {f"top{k}": top_k_accuracy(lg, lb, k=k) for k in ks}


__all__ = ["FEATURES", "FLOWERS_SPLITS", "FLOWERS_SPLIT_SIZES", "resolve_features", "FeatureData", "flowers_features",
           "cifar10_backbone_features", "frozen_features", "top_k_accuracy", "accuracies", "ScatterNet"]
