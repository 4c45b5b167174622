"""dpnb.models: the ScatterNet CNN's layouts and its one-line parameter errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpnb import models
from dpnb.params import ParameterError


def test_scatter_cnn_in_tramer_and_boneh_layout() -> None:
    """Their CIFAR-10 ScatterNet CNN: conv3x3(243->64), tanh, pool, conv3x3(64->64), tanh, 4x4 map -> linear."""
    m = models.scatter_cnn(in_channels=243, num_classes=10, groups=None, first_kernel=3, grid=4)
    assert not any(isinstance(layer, nn.GroupNorm) for layer in m)
    assert sum(p.numel() for p in m.parameters()) == (243 * 9 + 1) * 64 + (64 * 9 + 1) * 64 + (64 * 16 + 1) * 10
    assert m(torch.zeros(3, 243, 8, 8)).shape == (3, 10)


def test_scatter_cnn_global_pooling_and_groupnorm() -> None:
    m = models.scatter_cnn(in_channels=12, num_classes=5, width=16, groups=4, first_kernel=1)
    assert sum(isinstance(layer, nn.GroupNorm) for layer in m) == 2
    assert m[-1].in_features == 16  # grid 1: global average pooling
    assert m(torch.randn(2, 12, 8, 8)).shape == (2, 5)


@pytest.mark.parametrize("kw,message", [
    (dict(groups=5), "groups must be a positive divisor of width=64, got 5"),
    (dict(groups=0), "groups must be a positive divisor of width=64, got 0"),
    (dict(grid=0), "grid must be an integer >= 1, got 0"),
])
def test_scatter_cnn_bad_parameters_in_one_line(kw: dict, message: str) -> None:
    with pytest.raises(ParameterError, match=f"^{message}$"):
        models.scatter_cnn(in_channels=3, num_classes=2, **kw)


def test_random_view_trains_on_one_drawn_view_and_evaluates_the_mean_prediction() -> None:
    from dpnb.layers import RandomView

    torch.manual_seed(0)
    inner = models.scatter_cnn(in_channels=4, num_classes=3, width=8, groups=None, grid=2)
    x = torch.randn(6, 2, 4, 8, 8)  # 6 examples, 2 views each
    m = RandomView(inner).train()
    torch.manual_seed(5)
    got = m(x)
    torch.manual_seed(5)
    pick = torch.randint(2, (6,))
    assert 0 < int(pick.sum()) < 6  # both views drawn in this batch
    torch.testing.assert_close(got, inner(x[torch.arange(6), pick]))
    m.eval()
    probs = torch.stack([inner(x[:, k]).softmax(-1) for k in range(2)]).mean(0)
    torch.testing.assert_close(m(x).exp(), probs)
    with pytest.raises(ValueError, match="RandomView needs inputs of shape"):
        m(torch.zeros(6, 3))


def test_book_keeping_through_random_view_clips_the_drawn_views() -> None:
    """One clipped gradient per example, of the view it drew: the same sums as on those views alone."""
    from dpnb.bookkeeping import BookKeeping
    from dpnb.layers import RandomView

    torch.manual_seed(1)
    inner = models.scatter_cnn(in_channels=4, num_classes=3, width=8, groups=None, grid=2)
    x, y = torch.randn(9, 2, 4, 8, 8), torch.randint(0, 3, (9,))
    torch.manual_seed(7)
    got, norms = BookKeeping(RandomView(inner)).clipped_sum(x, y, max_grad_norm=0.05)
    torch.manual_seed(7)
    pick = torch.randint(2, (9,))
    want, want_norms = BookKeeping(inner).clipped_sum(x[torch.arange(9), pick], y, max_grad_norm=0.05)
    torch.testing.assert_close(norms, want_norms)
    for name, g in want.items():
        torch.testing.assert_close(got[f"model.{name}"], g)
