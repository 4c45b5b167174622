"""dpnb.features and dpnb.transfer: the feature cache, backbones, weights, top-k accuracy."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dpnb import features, transfer
from dpnb.params import ParameterError


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.flatten(1) * 2


def test_extract_caches_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPNB_CACHE", str(tmp_path))
    ds = TensorDataset(torch.rand(10, 3, 4, 4), torch.arange(10))
    f = Counting()
    a = features.extract(ds, f, key="toy", batch_size=4, progress=False)
    assert f.calls == 3 and len(a) == 10 and a.shape == (48,)
    b = features.extract(ds, f, key="toy", batch_size=4, progress=False)
    assert f.calls == 3  # second time from the cache
    torch.testing.assert_close(a.tensors()[0], b.tensors()[0])
    assert torch.equal(b.tensors()[1], torch.arange(10))
    torch.testing.assert_close(a.tensors()[0], ds.tensors[0].flatten(1) * 2, atol=1e-2, rtol=1e-3)  # float16
    assert len(list(tmp_path.glob("toy-*.pt"))) == 1 and not list(tmp_path.glob("*.tmp"))
    features.extract(ds, f, key="other", batch_size=4, progress=False)
    assert f.calls == 6  # another key is another file


def test_scatternet_features_are_normalised_per_example() -> None:
    f = features.scatternet(J=2, shape=(32, 32))
    out = f(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, 243, 8, 8)
    groups = out.reshape(3, 27, -1)
    torch.testing.assert_close(groups.mean(-1), torch.zeros(3, 27), atol=1e-4, rtol=0)
    assert features.scatternet(J=3, shape=(32, 32)).norm.num_groups == 31  # 651 = 31 x 21


def test_group_normalize_of_cached_scattering_equals_the_scatternet_normalisation() -> None:
    f = features.scatternet(J=2, shape=(32, 32))
    x = torch.rand(4, 3, 32, 32)
    raw = f.coefficients(x).half()  # as features.extract caches them
    torch.testing.assert_close(features.group_normalize(raw, groups=27, chunk_size=3), f(x), atol=2e-2, rtol=1e-2)
    finer = features.group_normalize(raw, groups=81)
    torch.testing.assert_close(finer.reshape(4, 81, -1).mean(-1), torch.zeros(4, 81), atol=1e-4, rtol=0)
    assert not torch.allclose(finer, f(x), atol=1e-2)  # a finer grouping is another normalisation
    with pytest.raises(ValueError, match="groups must divide"):
        features.group_normalize(raw, groups=100)


def test_normalized_views_stacks_views_of_the_same_images() -> None:
    raw = features.FeatureSet(torch.rand(5, 243, 8, 8).half(), torch.arange(5))
    mirror = features.FeatureSet(raw.features.flip(-1), torch.arange(5))
    one, two = features.normalized_views([raw], groups=81), features.normalized_views([raw, mirror], groups=81)
    assert one.tensors[0].shape == (5, 243, 8, 8) and two.tensors[0].shape == (5, 2, 243, 8, 8)
    torch.testing.assert_close(two.tensors[0][:, 0], one.tensors[0])
    with pytest.raises(ValueError, match="same images"):
        features.normalized_views([raw, features.FeatureSet(mirror.features, torch.arange(5).flip(0))], groups=81)


@pytest.mark.skipif(not os.environ.get("DPNB_DATA"), reason="needs the real data (DPNB_DATA)")
def test_cifar10_features_of_mirror_images_are_those_of_the_flipped_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dpnb import data

    monkeypatch.setenv("DPNB_CACHE", str(tmp_path))

    def top_rows(x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :2].flatten(1)

    kw = dict(name="rows", split="test", limit=20, seed=1, progress=False)
    plain = transfer.cifar10_features(top_rows, **kw)
    mirrored = transfer.cifar10_features(top_rows, mirrored=True, **kw)
    images, labels = data.cifar10_tensors(split="test", limit=20, seed=1, progress=False).tensors
    assert torch.equal(plain.labels, labels) and torch.equal(mirrored.labels, labels)
    torch.testing.assert_close(mirrored.features, top_rows(images.flip(-1)).half())
    assert not torch.equal(plain.features, mirrored.features)
    cached = sorted(p.name for p in tmp_path.glob("cifar10-test-*rows*"))
    assert [n.rsplit("-", 1)[0] for n in cached] == ["cifar10-test-mirrored-normalized-rows-limit20-seed1",
                                                     "cifar10-test-normalized-rows-limit20-seed1"]
    with pytest.raises(ParameterError, match="split"):
        transfer.cifar10_features(top_rows, name="rows", split="val")


def test_imagenet_weights_unavailable_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a: object, **k: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(features.WeightsUnavailable, match="resnet18-f37072fd.pth") as e:
        features.backbone(weights="imagenet")
    assert "\n" not in str(e.value) and "backbone_weights='none'" in str(e.value)
    assert not features.imagenet_weights_available()
    name, why = transfer.resolve_features("auto", backbone_weights="imagenet")
    assert name == "scatternet" and "cannot be downloaded" in why
    with pytest.raises(ParameterError, match="features='resnet18' with backbone_weights='imagenet'"):
        transfer.resolve_features("resnet18", backbone_weights="imagenet")
    with pytest.raises(ParameterError, match="resnet18 ImageNet weights are not in"):
        transfer.cifar10_backbone_features(weights="imagenet", limit=10, seed=0, device=torch.device("cpu"))
    with pytest.raises(ParameterError, match="features must be one of"):
        transfer.resolve_features("vgg", backbone_weights="none")


def test_imagenet_weights_are_read_from_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    saved = resnet18().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(saved, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    trunk, _ = features.backbone(weights="imagenet", cut="pool")
    assert torch.equal(trunk[0].weight, saved["conv1.weight"])
    assert transfer.resolve_features("auto", backbone_weights="imagenet")[0] == "resnet18"


def test_folding_batchnorm_keeps_the_outputs() -> None:
    import copy

    from torchvision.models import resnet18

    from dpnb.models import out_of_place_residuals

    torch.manual_seed(0)
    net = out_of_place_residuals(resnet18()).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    folded = features._fuse_batchnorm(copy.deepcopy(net.layer4))
    x = torch.rand(2, 256, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net.layer4(x), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


def test_backbone_cuts() -> None:
    torch.manual_seed(0)
    pool, nothing = features.backbone(weights="none", cut="pool")
    torch.manual_seed(0)
    trunk, rest = features.backbone(weights="none", cut="layer3")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert trunk(x).shape == (2, 256, 4, 4)
        torch.testing.assert_close(rest(trunk(x)), pool(x), atol=1e-4, rtol=1e-4)
    assert len(nothing) == 0 and pool(x).shape == (2, 512)


def test_deep_head_trains_with_opacus_hooks() -> None:
    from dpnb.train import TrainConfig, train

    torch.manual_seed(0)
    _, rest = features.backbone(weights="none", cut="layer3")
    model = nn.Sequential(rest, nn.Linear(512, 3)).train()
    ds = TensorDataset(torch.rand(16, 256, 4, 4), torch.arange(16) % 3)
    out = train(model, ds, ds, TrainConfig(epochs=1, batch_size=8, noise_multiplier=1.0, grad_sample_mode="hooks"),
                progress=False)
    assert out.steps == 2 and 0 <= out.test_accuracy <= 1


def test_top_k_accuracy() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [2.0, 3.0, 1.0]])
    labels = torch.tensor([0, 0, 2])
    assert transfer.top_k_accuracy(logits, labels, k=1) == pytest.approx(1 / 3)
    assert transfer.top_k_accuracy(logits, labels, k=2) == pytest.approx(1 / 3)
    assert transfer.top_k_accuracy(logits, labels, k=3) == 1.0


@pytest.mark.skipif(not os.environ.get("DPNB_DATA"), reason="needs the real data (DPNB_DATA)")
def test_vgg16_variants_train_what_they_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opacus import GradSampleModule

    monkeypatch.setenv("DPNB_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no ImageNet weights here

    def offline(*a: object, **k: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    kw = dict(limit=24, seed=0, device=torch.device("cpu"), image_size=32)
    with pytest.raises(ParameterError, match="vgg16 ImageNet weights"):
        transfer.cifar10_vgg16("fully pretrained", **kw)
    head, train, test, weights = transfer.cifar10_vgg16("fully pretrained", backbone_weights="none", **kw)
    assert isinstance(head, nn.Linear) and weights == "none"  # frozen features: only the head is trained
    assert train.tensors[0].shape == (24, 512) and test.tensors[0].shape == (24, 512)
    clf, train2, _, _ = transfer.cifar10_vgg16("features pretrained, classifier trained", backbone_weights="none",
                                               **kw)
    assert [type(m).__name__ for m in clf] == ["Linear", "ReLU", "Linear"]
    torch.testing.assert_close(train2.tensors[0], train.tensors[0])  # the same cached features
    net, images, _, w = transfer.cifar10_vgg16("from scratch", **kw)
    assert w == "none" and images.tensors[0].shape == (24, 3, 32, 32)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) > 14_700_000  # every layer trains
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    # Opacus's per-example gradients on the whole VGG16 equal autograd's, example by example
    x, y = images.tensors[0][:2], images.tensors[1][:2]
    gsm = GradSampleModule(net, loss_reduction="sum")
    nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    first = next(p for p in net.parameters())
    per_example = first.grad_sample.clone()
    gsm._close()
    for i in range(2):
        net.zero_grad()
        nn.functional.cross_entropy(net(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        torch.testing.assert_close(per_example[i], first.grad, rtol=1e-4, atol=1e-6)
