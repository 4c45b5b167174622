"""dpnb.normalization: DP per-channel statistics, their sensitivity, noise and accounting."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from dpnb import privacy
from dpnb.linear import train_linear
from dpnb.normalization import private_standardizer
from dpnb.params import ParameterError
from dpnb.train import TrainConfig


def _features(n: int = 500, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, 3, 3, generator=g) * torch.arange(1.0, 7).view(6, 1, 1) + torch.arange(6.0).view(6, 1, 1)


def _exact(x: torch.Tensor, bound_m: float = 1e9, bound_s: float = 1e9):
    st = private_standardizer(x, mean_bound=bound_m, square_bound=bound_s, noise_multiplier=1e-12,
                              generator=torch.Generator().manual_seed(0), chunk_size=64)
    return st


def test_without_clipping_or_noise_the_statistics_are_the_data_s() -> None:
    x = _features()
    st = _exact(x)
    per_channel = x.transpose(0, 1).reshape(6, -1).double()
    torch.testing.assert_close(st.mean.double(), per_channel.mean(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.var.double(), per_channel.var(1, unbiased=False), rtol=1e-4, atol=1e-4)
    y = st(x)
    torch.testing.assert_close(y.transpose(0, 1).reshape(6, -1).mean(1), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.transpose(0, 1).reshape(6, -1).std(1, unbiased=False), torch.ones(6),
                               atol=1e-3, rtol=0)


def test_one_example_moves_each_sum_by_at_most_its_bound() -> None:
    x = _features()
    outlier = torch.full((1, 6, 3, 3), 1e3)
    for bound_m, bound_s in [(2.0, 5.0), (0.5, 50.0)]:
        a, b = _exact(x, bound_m, bound_s), _exact(torch.cat([x, outlier]), bound_m, bound_s)
        sum_m = (b.mean.double() * 501 - a.mean.double() * 500).norm()
        sum_s = ((b.var + b.mean.pow(2)).double() * 501 - (a.var + a.mean.pow(2)).double() * 500).norm()
        assert bound_m * 0.99 <= sum_m <= bound_m * (1 + 1e-4)  # the outlier is clipped to exactly the bound
        assert bound_s * 0.99 <= sum_s <= bound_s * (1 + 1e-3)


def test_noise_has_std_sigma_times_bound_over_n() -> None:
    x = _features(n=200)
    means = torch.stack([private_standardizer(x, mean_bound=2.0, square_bound=5.0, noise_multiplier=3.0,
                                              generator=torch.Generator().manual_seed(s)).mean for s in range(400)])
    expected = 3.0 * 2.0 / 200
    assert means.std(0).mean().item() == pytest.approx(expected, rel=0.1)


def test_the_release_is_accounted_with_the_training_run() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 2, 2, 2, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    st = private_standardizer(x, mean_bound=1.0, square_bound=2.0, noise_multiplier=4.0, generator=g)
    assert st.event == privacy.SampledGaussianEvent.gaussian(noise_multiplier=4.0, releases=2)
    cfg = TrainConfig(epochs=3, batch_size=200, lr=1.0, momentum=0.9, target_epsilon=2.0, max_grad_norm=1.0)
    data = TensorDataset(st(x), y)
    alone = train_linear(data, data, cfg, num_classes=2, progress=False)
    both = train_linear(data, data, cfg, num_classes=2, composed_with=(st.event,), progress=False)
    assert both.noise_multiplier > alone.noise_multiplier
    covered = privacy.SampledGaussianEvent(both.noise_multiplier, both.sample_rate, both.steps,
                                           composed_with=(st.event,))
    assert both.event == covered  # the record the result carries is the one ε was computed for
    assert both.epsilon["prv"] == pytest.approx(privacy.epsilon(covered, delta=cfg.delta, accountant="prv"))
    assert 1.9 <= both.epsilon["prv"] <= 2.0
    assert both.test_accuracy > 0.8
    with pytest.raises(ParameterError, match="composed_with needs a DP run"):
        train_linear(data, data, TrainConfig(epochs=1, batch_size=200, lr=1.0, dp=False), num_classes=2,
                     composed_with=(st.event,), progress=False)


@pytest.mark.parametrize("mode", ["bk", "hooks"])
def test_train_accounts_the_release_with_the_run_too(mode: str) -> None:
    """``dpnb.train.train`` (the CNNs' loop) composes the statistics' release as train_linear does."""
    from dpnb.train import train

    g = torch.Generator().manual_seed(2)
    x = torch.randn(1200, 2, 2, 2, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    st = private_standardizer(x, mean_bound=1.0, square_bound=2.0, noise_multiplier=4.0, generator=g)
    cfg = TrainConfig(epochs=2, batch_size=100, lr=0.5, target_epsilon=2.0, max_grad_norm=1.0, grad_sample_mode=mode)
    data = TensorDataset(st(x), y)
    net = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 2))  # noqa: E731
    alone = train(net(), data, None, cfg, progress=False)
    both = train(net(), data, None, cfg, progress=False, composed_with=(st.event,))
    assert both.noise_multiplier > alone.noise_multiplier
    covered = privacy.SampledGaussianEvent(both.noise_multiplier, both.sample_rate, both.steps,
                                           composed_with=(st.event,))
    assert both.event == covered
    assert both.epsilon["prv"] == pytest.approx(privacy.epsilon(covered, delta=cfg.delta, accountant="prv"))
    assert both.history["epsilon_prv"].iloc[-1] == pytest.approx(both.epsilon["prv"])
    assert 1.98 <= both.epsilon["prv"] <= 2.0
    with pytest.raises(ParameterError, match="composed_with needs a DP run"):
        train(net(), data, None, TrainConfig(epochs=1, batch_size=100, lr=0.5, dp=False), progress=False,
              composed_with=(st.event,))


@pytest.mark.parametrize("kwargs, message", [
    (dict(mean_bound=0.0), "mean_bound must be > 0"),
    (dict(square_bound=-1.0), "square_bound must be > 0"),
    (dict(noise_multiplier=0.0), "noise_multiplier must be > 0"),
])
def test_bad_input_is_named(kwargs: dict, message: str) -> None:
    args = dict(mean_bound=1.0, square_bound=1.0, noise_multiplier=1.0) | kwargs
    with pytest.raises(ParameterError, match=message):
        private_standardizer(_features(n=10), **args)
    with pytest.raises(ParameterError, match="non-empty"):
        private_standardizer(torch.zeros(0, 6, 3, 3), mean_bound=1.0, square_bound=1.0, noise_multiplier=1.0)
    with pytest.raises(ParameterError, match=r"must be \(\.\.\., 6, h, w\)"):
        _exact(_features(n=10))(torch.zeros(4, 5, 3, 3))
