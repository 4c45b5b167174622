"""The book's datasets, found under ``$DPNB_DATA`` or fetched by torchvision.

All datasets load through torchvision's own classes rooted at :func:`data_root`:

* ``mnist``, ``fashion-mnist``: the idx files (``.gz`` are extracted, no network needed);
* ``cifar10``: the official python batches (what ``CIFAR10(download=True)`` fetches) **or** an
  image folder ``cifar10/{train,test}/<class>/*`` (as in ``../shared/data``); either way the
  labels follow CIFAR-10's class order and the split is the official one;
* ``flowers102``: the official splits ``train``/``val``/``test`` (1020/1020/6149 images) and a
  larger-training split, ``large-train`` (the 6149-image official test split) with
  ``large-test`` (official train + val, 2040 images): 10 images per class starve DP-SGD.

When files are missing and cannot be downloaded, :class:`DataUnavailable` says which dataset,
which folder was searched and how to provide it.

Example::

    >>> from dpnb.data import NUM_CLASSES, check_batch_size
    >>> NUM_CLASSES["flowers102"]
    102
    >>> check_batch_size(256, dataset_size=60_000)
    256
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from dpnb.params import ParameterError, Unavailable, check_choice, check_int
from dpnb.store import load_tensors, save_tensors

DATASETS = ("mnist", "fashion-mnist", "cifar10", "flowers102")
SPLITS = {
    "mnist": ("train", "test"),
    "fashion-mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "flowers102": ("train", "val", "test", "large-train", "large-test"),
}
TRAIN_SIZES = {"mnist": 60_000, "fashion-mnist": 60_000, "cifar10": 50_000}  # public metadata of each dataset
TEST_SIZES = {"mnist": 10_000, "fashion-mnist": 10_000, "cifar10": 10_000}
NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "flowers102": 102}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
#: Per-channel (mean, std) of each training set, for ``transforms.Normalize``.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "flowers102": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet statistics
}
_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "cifar10 or cifar-10-batches-py",
            "flowers102": "flowers-102"}


class DataUnavailable(Unavailable):
    """A dataset is neither on disk nor downloadable; the message says how to provide it."""


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root`` if given, else ``$DPNB_DATA``, else ``data/`` in the checkout (or the working folder)."""
    if root is not None:
        return Path(root)
    if os.environ.get("DPNB_DATA"):
        return Path(os.environ["DPNB_DATA"])
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "src" / "dpnb").is_dir():
            return d / "data"
    return here / "data"


def _unavailable(name: str, root: Path, err: BaseException) -> DataUnavailable:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return DataUnavailable(
        f"{name}: not found under {root} (looked for {_FOLDERS[name]}; torchvision said: {first}). "
        f"Set DPNB_DATA to a folder that holds {_FOLDERS[name]} (the layout torchvision uses), "
        "or run once on a machine with internet access."
    )


def load_dataset(name: str, *, split: str = "train", root: str | os.PathLike[str] | None = None,
                 transform: Callable[[Any], Any] | None = None, download: bool = True) -> Dataset:
    """One split of a dataset as a torchvision dataset (PIL images unless ``transform`` says otherwise)."""
    from torchvision import datasets

    name = check_choice("dataset", name, DATASETS)
    split = check_choice("split", split, SPLITS[name])
    base = data_root(root)
    try:
        if name in ("mnist", "fashion-mnist"):
            cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
            return cls(str(base), train=split == "train", transform=transform, download=download)
        if name == "cifar10":
            return _cifar10(base, split, transform, download)
        if split == "large-train":
            return datasets.Flowers102(str(base), split="test", transform=transform, download=download)
        if split == "large-test":
            return ConcatDataset([datasets.Flowers102(str(base), split=s, transform=transform,
                                                      download=download) for s in ("train", "val")])
        return datasets.Flowers102(str(base), split=split, transform=transform, download=download)
    except DataUnavailable:
        raise
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found", URLError, ...
        raise _unavailable(name, base, e) from None


def _cifar10(base: Path, split: str, transform: Callable[[Any], Any] | None, download: bool) -> Dataset:
    from torchvision import datasets

    folder = base / "cifar10" / split
    if folder.is_dir():
        ds = datasets.ImageFolder(str(folder), transform=transform)
        if tuple(ds.classes) != CIFAR10_CLASSES:
            raise DataUnavailable(f"cifar10: {folder} has classes {ds.classes}, expected {list(CIFAR10_CLASSES)}")
        return ds
    return datasets.CIFAR10(str(base), train=split == "train", transform=transform, download=download)


def cifar10_storage(*, root: str | os.PathLike[str] | None = None) -> str:
    """How the CIFAR-10 images that :func:`load_dataset` reads are stored, as a phrase for the chapter's text.

    The torchvision copy holds the original pixels; an image-folder copy is read from its files: for JPEG
    files, the chroma subsampling PIL reports for the first training image.
    """
    folder = data_root(root) / "cifar10" / "train"
    if not folder.is_dir():
        return "the original CIFAR-10 pixels (torchvision's copy)"
    first = next(p for c in sorted(folder.iterdir()) if c.is_dir() for p in sorted(c.iterdir()))
    from PIL import Image, JpegImagePlugin

    with Image.open(first) as im:
        if im.format != "JPEG":
            return f"{im.format} files"
        sampling = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(JpegImagePlugin.get_sampling(im), "unknown")
    return f"JPEG files (lossy, chroma subsampling {sampling}), not the original pixels"


def targets(ds: Dataset) -> torch.Tensor:
    """Labels of a dataset from :func:`load_dataset` (or a subset of one), without decoding images."""
    if isinstance(ds, Subset):
        return targets(ds.dataset)[torch.as_tensor(ds.indices)]
    if isinstance(ds, ConcatDataset):
        return torch.cat([targets(d) for d in ds.datasets])
    if isinstance(ds, TensorDataset):
        return ds.tensors[1]
    for attr in ("targets", "_labels"):
        if hasattr(ds, attr):
            return torch.as_tensor(getattr(ds, attr))
    raise TypeError(f"cannot read the labels of {type(ds).__name__}")


def mnist_tensors(name: str = "mnist", *, split: str = "train", root: str | os.PathLike[str] | None = None,
                  limit: int | None = None, seed: int = 0, normalize: bool = True) -> TensorDataset:
    """MNIST or Fashion-MNIST as normalised float tensors (N, 1, 28, 28), optionally a seeded subset.

    ``normalize=False`` keeps pixels in [0, 1] (what the generative models produce).

    Holding the 60,000 images as one tensor (188 MB) avoids decoding PIL images in every epoch.
    """
    name = check_choice("dataset", name, ("mnist", "fashion-mnist"))
    ds = load_dataset(name, split=split, root=root)
    x, y = ds.data, ds.targets.clone()
    if limit is not None:
        idx = seeded_indices(len(y), check_int("limit", limit, low=1, high=len(y)), seed=seed)
        x, y = x[idx], y[idx]
    x = x.float().div_(255).unsqueeze(1)
    if normalize:
        mean, std = NORMALIZATION[name]
        x = (x - mean[0]) / std[0]
    return TensorDataset(x, y)


def cifar10_tensors(*, split: str = "train", root: str | os.PathLike[str] | None = None, limit: int | None = None,
                    seed: int = 0, normalize: bool = True, progress: bool = True) -> TensorDataset:
    """CIFAR-10 as float tensors (N, 3, 32, 32), optionally a seeded subset; ``normalize`` applies
    the per-channel training-set statistics (:data:`NORMALIZATION`), else values are in [0, 1].

    The decoded images are cached as uint8 under ``$DPNB_CACHE`` (see :func:`dpnb.store.cache_dir`):
    decoding 60,000 JPEGs once is enough.
    """
    from dpnb.store import cache_dir

    split = check_choice("split", split, SPLITS["cifar10"])
    path = cache_dir() / f"cifar10-{split}-uint8.pt"
    if path.is_file():
        d = load_tensors(path)
        x, y = d["images"], d["labels"]
        if limit is not None:
            idx = seeded_indices(len(y), check_int("limit", limit, low=1, high=len(y)), seed=seed)
            x, y = x[idx], y[idx]
    else:  # decode; a subset decodes only its own images and is not cached
        import numpy as np

        from dpnb.progress import progress as progress_bar

        ds = load_dataset("cifar10", split=split, root=root)
        y = targets(ds).clone()
        idx = (seeded_indices(len(y), check_int("limit", limit, low=1, high=len(y)), seed=seed)
               if limit is not None else torch.arange(len(y)))
        if hasattr(ds, "data"):  # python batches: already an array
            x = torch.as_tensor(ds.data).permute(0, 3, 1, 2)[idx].contiguous()
        else:
            x = torch.stack([torch.from_numpy(np.array(ds.loader(ds.samples[i][0]).convert("RGB"))).permute(2, 0, 1)
                             for i in progress_bar(idx.tolist(), desc=f"decode cifar10 {split}", enable=progress,
                                           mininterval=10)])
        y = y[idx]
        if limit is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_tensors({"images": x, "labels": y}, path)
    xf = x.float().div_(255)
    if normalize:
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION["cifar10"])
        xf = (xf - mean) / std
    return TensorDataset(xf, y)


def seeded_indices(n: int, k: int, *, seed: int) -> torch.Tensor:
    """``k`` of ``range(n)`` chosen uniformly without replacement, reproducibly."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k]


def holdout(n: int, *, validation: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, validation)`` of a seeded split of ``range(n)``: ``validation`` examples held out.

    One permutation of ``range(n)`` from ``seed``; its first ``validation`` entries are held out, the
    rest train. The split is a public choice (a seed and a size), not a statistic of the data.

        >>> tr, va = holdout(10, validation=3, seed=0)
        >>> len(tr), len(va), sorted(tr.tolist() + va.tolist()) == list(range(10))
        (7, 3, True)
    """
    n = check_int("n", n, low=1)
    v = check_int("validation", validation, low=0, high=n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[v:], perm[:v]


def subset(ds: Dataset, k: int, *, seed: int = 0) -> Subset:
    """A seeded random subset of ``k`` examples."""
    n = len(ds)  # type: ignore[arg-type]
    return Subset(ds, seeded_indices(n, check_int("subset size", k, low=1, high=n), seed=seed).tolist())


def check_batch_size(batch_size: Any, *, dataset_size: int) -> int:
    """A batch size must be a whole number in [1, dataset_size]."""
    return check_int("batch_size", batch_size, low=1, high=dataset_size)


__all__ = ["DATASETS", "SPLITS", "NUM_CLASSES", "CIFAR10_CLASSES", "NORMALIZATION", "DataUnavailable",
           "data_root", "load_dataset", "targets", "mnist_tensors", "cifar10_tensors", "seeded_indices", "subset",
           "check_batch_size", "ParameterError"]
