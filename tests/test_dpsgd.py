"""The DP-SGD core (dpnb.dpsgd) and each loop built on it: sensitivity, noise, denominator, rate, steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dpnb import dpsgd, privacy
from dpnb.params import ParameterError
from dpnb.train import TrainConfig, opacus_steps_per_epoch, train


def test_clipped_sum_moves_by_at_most_C_when_one_example_is_removed() -> None:
    g = torch.Generator().manual_seed(0)
    C = 0.7
    size = torch.linspace(0.02, 0.5, 20)[:, None]  # per-example gradient norms from about 0.1 to 2.2
    grads = {"w": size[:, :, None] * torch.randn(20, 5, 3, generator=g), "b": size * torch.randn(20, 3, generator=g)}
    full, norms = dpsgd.clip_and_sum(grads, max_grad_norm=C)
    assert (norms > C).any() and (norms < C).any()  # both clipped and unclipped examples
    for i in range(20):
        rest, _ = dpsgd.clip_and_sum({k: torch.cat([v[:i], v[i + 1:]]) for k, v in grads.items()}, max_grad_norm=C)
        moved = math.sqrt(sum(float((full[k] - rest[k]).pow(2).sum()) for k in grads))
        expected = min(float(norms[i]), C)  # exactly the removed example's clipped norm
        assert moved == pytest.approx(expected, rel=1e-4) and moved <= C * (1 + 1e-5)


def test_empty_batch_gives_zero_sum() -> None:
    sums, norms = dpsgd.clip_and_sum({"w": torch.zeros(0, 4)}, max_grad_norm=1.0)
    assert torch.equal(sums["w"], torch.zeros(4)) and norms.numel() == 0


def test_core_noise_denominator_rate_and_steps() -> None:
    g = torch.Generator().manual_seed(1)
    N, B, sigma, C = 1000, 30, 2.0, 0.5
    core = dpsgd.DPSGD(dataset_size=N, batch_size=B, epochs=2, max_grad_norm=C, noise_multiplier=sigma,
                       delta=1e-5, generator=g)
    assert core.sample_rate == 1 / math.ceil(N / B) and core.steps_per_epoch == 34
    assert core.expected_batch_size == pytest.approx(N / 34)
    sizes = torch.tensor([len(core.sample()) for _ in range(2000)], dtype=torch.float)
    assert sizes.mean().item() == pytest.approx(core.expected_batch_size, rel=0.02)  # Poisson at the stated rate
    assert sizes.var().item() == pytest.approx(N * core.sample_rate * (1 - core.sample_rate), rel=0.1)
    noisy = core.privatize({"w": torch.zeros(200_000)})["w"]
    assert noisy.std().item() == pytest.approx(sigma * C / core.expected_batch_size, rel=0.01)  # σC / (qN)
    assert core.steps == 1 and core.event() == privacy.SampledGaussianEvent(sigma, core.sample_rate, 1)
    assert core.epsilons()["epsilon_rdp"] == privacy.epsilon(core.event(), delta=1e-5, accountant="rdp")


def test_core_calibrates_for_its_planned_steps() -> None:
    core = dpsgd.DPSGD(dataset_size=600, batch_size=60, epochs=3, max_grad_norm=1.0, target_epsilon=2.0,
                       delta=1e-5, accountant="rdp")
    plan = privacy.SampledGaussianEvent(core.noise_multiplier, 0.1, 30)
    assert privacy.epsilon(plan, delta=1e-5, accountant="rdp") <= 2.0
    assert privacy.epsilon(plan.with_noise(core.noise_multiplier * 0.99), delta=1e-5, accountant="rdp") > 2.0
    with pytest.raises(ParameterError, match="exactly one of noise_multiplier and target_epsilon"):
        dpsgd.DPSGD(dataset_size=600, batch_size=60, epochs=3, max_grad_norm=1.0, delta=1e-5)


def test_poisson_rate_is_opacus_loader_rate() -> None:
    from opacus.data_loader import DPDataLoader
    from torch.utils.data import DataLoader

    for n, b in [(930, 10), (60_000, 256), (1000, 300), (50, 50)]:
        loader = DPDataLoader.from_data_loader(DataLoader(TensorDataset(torch.zeros(n, 1)), batch_size=b))
        q, per_epoch = dpsgd.poisson_rate(dataset_size=n, batch_size=b)
        assert loader.sample_rate == q and per_epoch == math.ceil(n / b)
        assert len(loader) == opacus_steps_per_epoch(q)  # what Opacus's sampler runs: int(1/q)


def test_opacus_run_reports_and_calibrates_for_what_ran() -> None:
    """N = 930, B = 10: Opacus samples at 1/93 but runs int(93.0000...1 ...) = 92 steps an epoch."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(930, 3, generator=g), torch.randint(0, 2, (930,), generator=g)
    run = train(nn.Linear(3, 2), TensorDataset(x, y), None,
                TrainConfig(epochs=2, batch_size=10, lr=0.1, target_epsilon=1.0, max_grad_norm=1.0,
                            accountant="prv"), progress=False)
    assert run.sample_rate == pytest.approx(1 / 93) and run.steps == 2 * 92
    ran = privacy.SampledGaussianEvent(run.noise_multiplier, 1 / 93, 184)
    assert run.epsilon["prv"] == pytest.approx(privacy.epsilon(ran, delta=1e-5, accountant="prv"))
    assert run.epsilon["prv"] <= 1.0  # the target is met for the run that actually ran


def test_functorch_survives_empty_poisson_batches() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 3, generator=g), torch.randint(0, 2, (200,), generator=g)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    run = train(model, TensorDataset(x, y), None,  # expected batch 1: about a third of the batches are empty
                TrainConfig(epochs=1, batch_size=1, lr=0.1, noise_multiplier=1.0, grad_sample_mode="functorch"),
                progress=False)
    assert run.steps == 200 and all(torch.isfinite(p).all() for p in run.model.parameters())


def test_augmult_survives_empty_batches_and_matches_the_core() -> None:
    from dpnb import scale

    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.rand(40, 1, 6, 6, generator=g), torch.randint(0, 2, (40,), generator=g))

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(32, 2))

    run = scale.train_augmult(model(), ds, None, epochs=1, batch_size=1, lr=0.1, max_grad_norm=1.0, delta=1e-5,
                              noise_multiplier=1.0, multiplicity=2, progress=False)
    core = dpsgd.DPSGD(dataset_size=40, batch_size=1, epochs=1, max_grad_norm=1.0, noise_multiplier=1.0, delta=1e-5)
    assert run["steps"] == 40 and run["sample_rate"] == core.sample_rate
    assert run["epsilon_rdp"] == privacy.epsilon(privacy.SampledGaussianEvent(1.0, 1 / 40, 40), delta=1e-5)


def test_augmult_update_is_the_clipped_sum_plus_noise_over_expected_batch() -> None:
    """σ tiny, q = 1, SGD lr 1, no momentum: the update equals the clipped per-example sum / N."""
    from dpnb import scale

    g = torch.Generator().manual_seed(3)
    n = 12
    ds = TensorDataset(torch.rand(n, 1, 6, 6, generator=g), torch.randint(0, 2, (n,), generator=g))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(32, 2))
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    out = scale.train_augmult(net, ds, None, epochs=1, batch_size=n, lr=1.0, momentum=0.0, max_grad_norm=0.05,
                              delta=1e-5, noise_multiplier=1e-9, multiplicity=0, chunk_size=5, progress=False)
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(32, 2))
    x, y = ds.tensors
    total, _ = scale.clipped_gradient_sum(ref, x[:, None], y, max_grad_norm=0.05)
    for k, p in out["model"].named_parameters():
        torch.testing.assert_close(before[k] - p.detach(), total[k] / n, rtol=1e-4, atol=1e-7)
