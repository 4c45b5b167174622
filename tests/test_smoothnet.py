"""SmoothNet (Remerscheid et al. 2022): the paper's W80D50 layout and size, and DP-SGD on it."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dpnb import models
from dpnb.train import TrainConfig, dp_problems, train


def test_w80d50_has_the_reference_layout_and_size() -> None:
    m = models.smoothnet(width=8, depth=5)
    # 3,391,853: the count from TUM-AIMED PrivateModelArchitectures' definition (the authors' notebook: "3400K")
    assert sum(p.numel() for p in m.parameters()) == 3_391_853
    seen: dict[str, tuple[int, ...]] = {}
    for name in ("0", "1", "3", "5"):  # stage 0, transition, stage 1, last channels
        m.get_submodule(name).register_forward_hook(lambda _m, _i, out, name=name: seen.update({name: out.shape}))
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert seen["0"] == (2, 3 + 5 * 64, 32, 32)  # the input and five blocks of 64 channels
    assert seen["1"] == (2, (3 + 5 * 64) // 2, 32, 32)  # halved by the 1x1 convolution
    assert seen["3"] == (2, 161 + 5 * 128, 16, 16)
    assert seen["5"] == (2, 128, 8, 8)  # the head keeps the last block's 128 channels
    blocks = [b for b in m.modules() if isinstance(b, nn.Conv2d) and b.kernel_size == (3, 3)]
    assert len(blocks) == 10 and all(b.bias is None for b in blocks)
    assert not [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]


def test_smoothnet_is_dp_compatible_and_opacus_per_example_gradients_are_exact() -> None:
    from opacus import GradSampleModule

    torch.manual_seed(0)
    m = models.smoothnet(width=0.5, depth=2)
    assert dp_problems(m) == []
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 4, 9])
    gsm = GradSampleModule(m, loss_reduction="sum")
    nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    for i in range(3):  # each example's own gradient, by plain autograd
        m2 = models.smoothnet(width=0.5, depth=2)
        m2.load_state_dict(m.state_dict())
        nn.functional.cross_entropy(m2(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        for (name, p), p2 in zip(m.named_parameters(), m2.parameters()):
            torch.testing.assert_close(p.grad_sample[i], p2.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_dp_sgd_with_ghost_clipping_trains_a_small_smoothnet() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, 32, 32, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # a learnable two-class rule
    ds = TensorDataset(x, y)
    run = train(models.smoothnet(width=0.25, depth=1, num_classes=2), ds, ds,
                TrainConfig(epochs=3, batch_size=64, lr=0.5, momentum=0.9, target_epsilon=8.0, max_grad_norm=1.0,
                            grad_sample_mode="ghost"), progress=False)
    assert run.epsilon["prv"] <= 8.0 + 1e-6
    assert run.test_accuracy > 0.6
