"""dpnb.data on tiny files in each real on-disk format, and on the real data when DPNB_DATA is set."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpnb import data
from dpnb.params import ParameterError


def _write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, code, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """The extracted idx files that torchvision's MNIST reads (no .gz, so no md5 check)."""
    rng = np.random.default_rng(0)
    for folder in ("MNIST", "FashionMNIST"):
        raw = tmp_path / folder / "raw"
        raw.mkdir(parents=True)
        for prefix, n in (("train", 20), ("t10k", 8)):
            _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
            _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return tmp_path


def test_mnist_from_idx_files(tiny_mnist: Path) -> None:
    for name in ("mnist", "fashion-mnist"):
        train = data.load_dataset(name, split="train", root=tiny_mnist)
        test = data.load_dataset(name, split="test", root=tiny_mnist)
        assert len(train) == 20 and len(test) == 8
        assert data.targets(train).tolist() == [i % 10 for i in range(20)]


def test_mnist_tensors_are_normalised_and_subset_is_seeded(tiny_mnist: Path) -> None:
    full = data.mnist_tensors("mnist", root=tiny_mnist)
    x, y = full.tensors
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32
    raw = data.load_dataset("mnist", root=tiny_mnist).data.float() / 255
    torch.testing.assert_close(x[:, 0] * 0.3081 + 0.1307, raw)
    a = data.mnist_tensors("mnist", root=tiny_mnist, limit=7, seed=3).tensors[1]
    b = data.mnist_tensors("mnist", root=tiny_mnist, limit=7, seed=3).tensors[1]
    c = data.mnist_tensors("mnist", root=tiny_mnist, limit=7, seed=4).tensors[1]
    assert a.tolist() == b.tolist() and len(a) == 7
    assert a.tolist() != c.tolist()


def _cifar_image_folder(root: Path, per_class: int) -> dict[str, list[int]]:
    labels: dict[str, list[int]] = {}
    for split in ("train", "test"):
        labels[split] = []
        for label, cls in enumerate(data.CIFAR10_CLASSES):
            d = root / "cifar10" / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), (label * 25, i, 0)).save(d / f"{label * 100 + i}.jpg")
                labels[split].append(label)
    return labels


def test_cifar10_image_folder_uses_the_official_class_order(tmp_path: Path) -> None:
    labels = _cifar_image_folder(tmp_path, per_class=2)
    ds = data.load_dataset("cifar10", split="train", root=tmp_path)
    assert tuple(ds.classes) == data.CIFAR10_CLASSES
    assert sorted(data.targets(ds).tolist()) == sorted(labels["train"])
    img, label = ds[len(ds) - 1]
    assert label == 9 and img.size == (32, 32)  # the last folder is "truck", label 9


def test_cifar10_python_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as cifar

    # Tiny batches cannot match the published md5s; check existence only.
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [1, 5, 9]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(data.CIFAR10_CLASSES)}))
    train = data.load_dataset("cifar10", split="train", root=tmp_path, download=False)
    test = data.load_dataset("cifar10", split="test", root=tmp_path, download=False)
    assert len(train) == 15 and len(test) == 3
    assert tuple(train.classes) == data.CIFAR10_CLASSES
    assert data.targets(test).tolist() == [1, 5, 9]


def test_cifar10_image_folder_with_wrong_classes_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "cifar10" / "train" / "cats").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "cifar10" / "train" / "cats" / "0.jpg")
    with pytest.raises(data.DataUnavailable, match="expected"):
        data.load_dataset("cifar10", split="train", root=tmp_path)


def test_flowers_splits_including_the_larger_training_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.flowers102 as flowers
    from scipy.io import savemat

    monkeypatch.setattr(flowers, "check_integrity", lambda path, md5=None: Path(path).is_file())
    base = tmp_path / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    n = 12
    for i in range(1, n + 1):
        Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(base / "jpg" / f"image_{i:05d}.jpg")
    savemat(base / "imagelabels.mat", {"labels": np.array([(i % 3) + 1 for i in range(1, n + 1)])})
    savemat(base / "setid.mat", {"trnid": np.array([1, 2]), "valid": np.array([3, 4, 5]),
                                 "tstid": np.arange(6, n + 1)})
    sizes = {s: len(data.load_dataset("flowers102", split=s, root=tmp_path, download=False))
             for s in data.SPLITS["flowers102"]}
    assert sizes == {"train": 2, "val": 3, "test": 7, "large-train": 7, "large-test": 5}
    large_test = data.load_dataset("flowers102", split="large-test", root=tmp_path, download=False)
    assert data.targets(large_test).tolist() == [(i % 3) for i in range(1, 6)]


def test_missing_data_says_what_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(data.DataUnavailable) as e:
        data.load_dataset("mnist", root=tmp_path, download=False)
    msg = str(e.value)
    assert "mnist" in msg and str(tmp_path) in msg and "DPNB_DATA" in msg and "\n" not in msg


def test_bad_names_and_batch_sizes() -> None:
    with pytest.raises(ParameterError, match="dataset must be one of"):
        data.load_dataset("imagenet")
    with pytest.raises(ParameterError, match="split must be one of"):
        data.load_dataset("mnist", split="val")
    with pytest.raises(ParameterError, match=r"batch_size must be an integer in \[1, 100\], got 101"):
        data.check_batch_size(101, dataset_size=100)
    with pytest.raises(ParameterError, match="batch_size"):
        data.check_batch_size(0, dataset_size=100)


def test_data_root_prefers_argument_then_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DPNB_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    assert data.data_root("/x") == Path("/x")
    monkeypatch.delenv("DPNB_DATA")
    assert data.data_root().name == "data"


REAL = os.environ.get("DPNB_DATA")


@pytest.mark.skipif(not REAL, reason="DPNB_DATA is not set (CI sets it to ../shared/data)")
@pytest.mark.parametrize(
    "name, split, size, classes",
    [
        ("mnist", "train", 60_000, 10), ("mnist", "test", 10_000, 10),
        ("fashion-mnist", "train", 60_000, 10), ("fashion-mnist", "test", 10_000, 10),
        ("cifar10", "train", 50_000, 10), ("cifar10", "test", 10_000, 10),
        ("flowers102", "train", 1020, 102), ("flowers102", "val", 1020, 102), ("flowers102", "test", 6149, 102),
        ("flowers102", "large-train", 6149, 102), ("flowers102", "large-test", 2040, 102),
    ],
)
def test_real_sizes_and_classes(name: str, split: str, size: int, classes: int) -> None:
    ds = data.load_dataset(name, split=split)
    y = data.targets(ds)
    assert len(ds) == size == len(y)
    assert len(torch.unique(y)) == classes and int(y.min()) == 0 and int(y.max()) == classes - 1
    if name == "cifar10":
        counts = torch.bincount(y, minlength=10)
        assert (counts == size // 10).all()
