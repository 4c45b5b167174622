"""dpnb.train: learning with and without DP, accounting, calibration, clipping, errors."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpnb import privacy
from dpnb.params import ParameterError
from dpnb.train import (
    TrainConfig,
    dp_problems,
    load_checkpoint,
    make_dp_compatible,
    make_private,
    save_checkpoint,
    train,
)


def blobs(n: int = 1200, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 6, generator=g) + 2.0 * y[:, None].float()
    return TensorDataset(x, y)


TRAIN, TEST = blobs(1200, 0), blobs(400, 1)
FAST = dict(epochs=2, batch_size=100, lr=0.5, max_grad_norm=1.0)


@pytest.mark.parametrize("dp", [False, True])
def test_tiny_run_learns(dp: bool) -> None:
    cfg = TrainConfig(**FAST, dp=dp, noise_multiplier=1.0 if dp else None)
    run = train(nn.Linear(6, 2), TRAIN, TEST, cfg, progress=False)
    assert run.test_accuracy > 0.85  # chance is 0.5
    assert list(run.history["epoch"]) == [1, 2]


def test_epsilon_matches_dpnb_privacy_and_opacus_own_accountant() -> None:
    cfg = TrainConfig(**FAST, noise_multiplier=0.9, delta=1e-5)
    run = train(nn.Linear(6, 2), TRAIN, TEST, cfg, progress=False)
    q, steps = 100 / 1200, 2 * 12
    assert run.sample_rate == pytest.approx(q) and run.steps == steps
    assert run.epsilon["rdp"] == pytest.approx(
        privacy.rdp_epsilon(noise_multiplier=0.9, sample_rate=q, steps=steps, delta=1e-5)[0], rel=1e-12)
    assert run.epsilon["prv"] == pytest.approx(
        privacy.prv_epsilon(noise_multiplier=0.9, sample_rate=q, steps=steps, delta=1e-5), rel=1e-12)
    # Opacus's accountant, fed by its own optimizer hooks, counted the same steps:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [(0.9, q, steps)]
    assert run.epsilon["prv"] == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)
    assert (run.history["epsilon_prv"].diff().dropna() > 0).all()


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_target_epsilon_lands_within_one_percent_below(accountant: str) -> None:
    cfg = TrainConfig(**FAST, target_epsilon=2.0, accountant=accountant)
    run = train(nn.Linear(6, 2), TRAIN, TEST, cfg, progress=False)
    assert 0.99 * 2.0 <= run.epsilon[accountant] <= 2.0


def _hand_clipped_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float) -> list[torch.Tensor]:
    total = [torch.zeros_like(p) for p in model.parameters()]
    for xi, yi in zip(x, y):
        model.zero_grad()
        nn.functional.cross_entropy(model(xi[None]), yi[None]).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
        factor = min(1.0, c / (norm + 1e-6))  # Opacus's flat clipping: C / (||g|| + 1e-6)
        for t, g in zip(total, grads):
            t += factor * g
    return total


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ghost"])
def test_clipping_matches_a_hand_computation(mode: str) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(16, 6) * 5, torch.randint(0, 3, (16,))
    c = 0.05  # small enough that every example is clipped
    expected = _hand_clipped_sum(base, x, y, c)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    model.load_state_dict(base.state_dict())
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    cfg = TrainConfig(epochs=1, batch_size=16, noise_multiplier=1e-9, max_grad_norm=c, grad_sample_mode=mode)
    _, model, optimizer, criterion, _, _ = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), loader, cfg)
    optimizer.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Full backward hook is firing...": inputs need no grad here
        criterion(model(x), y).backward()
    optimizer.pre_step()  # clip, sum, add (here negligible) noise, divide by the expected batch size
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad * optimizer.expected_batch_size, e, atol=1e-5, rtol=1e-4)
    total_norm = math.sqrt(sum(float((e**2).sum()) for e in expected))
    assert total_norm <= 16 * c + 1e-6


def test_batch_memory_manager_keeps_steps_and_epsilon() -> None:
    a = train(nn.Linear(6, 2), TRAIN, None, TrainConfig(**FAST, noise_multiplier=1.0), progress=False)
    b = train(nn.Linear(6, 2), TRAIN, None, TrainConfig(**FAST, noise_multiplier=1.0, max_physical_batch_size=16),
              progress=False)
    assert a.steps == b.steps == 24
    assert a.epsilon == b.epsilon


def test_same_seed_same_history() -> None:
    cfg = TrainConfig(**FAST, noise_multiplier=1.0, seed=7)
    cols = ["loss", "train_accuracy", "test_accuracy", "epsilon_prv"]
    def fresh() -> nn.Module:
        torch.manual_seed(1)  # the initial weights come from the global generator
        return nn.Linear(6, 2)

    h1 = train(fresh(), TRAIN, TEST, cfg, progress=False).history[cols]
    h2 = train(fresh(), TRAIN, TEST, cfg, progress=False).history[cols]
    assert h1.equals(h2)
    h3 = train(fresh(), TRAIN, TEST, TrainConfig(**FAST, noise_multiplier=1.0, seed=8), progress=False).history[cols]
    assert not h1.equals(h3)


def test_batchnorm_is_rejected_under_dp_and_fixable() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 2))
    data = TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 2, (64,)))
    with pytest.raises(ParameterError, match="BatchNorm"):
        train(model, data, None, TrainConfig(epochs=1, batch_size=16, noise_multiplier=1.0), progress=False)
    fixed = make_dp_compatible(model)
    assert not dp_problems(fixed)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixed.modules())
    assert not any(getattr(m, "inplace", False) for m in fixed.modules())
    train(fixed, data, None, TrainConfig(epochs=1, batch_size=16, noise_multiplier=1.0), progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), r"batch_size must be an integer in \[1, 1200\], got 0"),
        (dict(batch_size=5000), r"batch_size must be an integer in \[1, 1200\]"),
        (dict(epochs=0), "epochs must be an integer >= 1"),
        (dict(max_grad_norm=0.0), "max_grad_norm must be > 0"),
        (dict(delta=1.0), r"delta must be in \(0, 1\)"),
        (dict(noise_multiplier=1.0, target_epsilon=3.0), "exactly one of noise_multiplier and target_epsilon"),
        (dict(noise_multiplier=None), "exactly one of noise_multiplier and target_epsilon"),
        (dict(noise_multiplier=-1.0), "noise_multiplier must be > 0"),
        (dict(grad_sample_mode="jax"), "grad_sample_mode must be one of"),
        (dict(device="tpu"), "device must be one of"),
    ],
)
def test_bad_parameters(kwargs: dict, message: str) -> None:
    cfg = dict(epochs=1, batch_size=100, noise_multiplier=1.0)
    cfg.update(kwargs)
    with pytest.raises(ParameterError, match=message):
        train(nn.Linear(6, 2), TRAIN, None, TrainConfig(**cfg), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_request_without_cuda() -> None:
    with pytest.raises(ParameterError, match="CUDA is not available"):
        train(nn.Linear(6, 2), TRAIN, None, TrainConfig(epochs=1, batch_size=100, dp=False, device="cuda"),
              progress=False)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    run = train(nn.Linear(6, 2), TRAIN, None, TrainConfig(**FAST, noise_multiplier=1.0), progress=False)
    path = save_checkpoint(run.model, tmp_path / "m.pt")
    fresh = load_checkpoint(nn.Linear(6, 2), path)
    for a, b in zip(fresh.state_dict().values(), run.model._module.state_dict().values()):
        assert torch.equal(a, b)


def test_tensor_batches_are_gathered_at_once_and_equal_the_default_loader() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from dpnb.train import _loader

    ds = TensorDataset(torch.arange(50.0).reshape(25, 2), torch.arange(25))
    fast = list(_loader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3)))
    slow = list(DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert len(fast) == len(slow) == 4
    for (a, b), (c, d) in zip(fast, slow):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_book_keeping_mode_runs_the_same_mechanism_as_opacus() -> None:
    """grad_sample_mode 'bk': same sampling rate, steps, sigma and epsilon as Opacus's modes; it learns."""
    bk = train(nn.Linear(6, 2), TRAIN, TEST, TrainConfig(**FAST, target_epsilon=2.0, grad_sample_mode="bk"),
               progress=False)
    ghost = train(nn.Linear(6, 2), TRAIN, TEST, TrainConfig(**FAST, target_epsilon=2.0, grad_sample_mode="ghost"),
                  progress=False)
    assert (bk.sample_rate, bk.steps, bk.noise_multiplier) == (ghost.sample_rate, ghost.steps, ghost.noise_multiplier)
    assert bk.epsilon == pytest.approx(ghost.epsilon)
    assert bk.test_accuracy > 0.85


def test_book_keeping_step_is_clip_noise_scale() -> None:
    """With negligible noise, one bk step moves the weights by -lr * (clipped sum) / (q N)."""
    from dpnb.train import BookKeepingStep

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(16, 6) * 5, torch.randint(0, 3, (16,))
    expected = _hand_clipped_sum(model, x, y, 0.05)
    before = [p.detach().clone() for p in model.parameters()]
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = BookKeepingStep(model, opt, loader, TrainConfig(epochs=1, batch_size=4, noise_multiplier=1e-9,
                                                           max_grad_norm=0.05, grad_sample_mode="bk"))
    assert step.sample_rate == pytest.approx(0.25) and step.expected_batch_size == pytest.approx(4.0)
    step.step(x, y)
    for b, p, e in zip(before, model.parameters(), expected):
        torch.testing.assert_close(b - p.detach(), 0.1 * e / 4.0, atol=1e-6, rtol=1e-4)


def test_book_keeping_falls_back_to_opacus_on_an_unsupported_layer(capsys: pytest.CaptureFixture) -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    run = train(model, TRAIN, None, TrainConfig(**FAST, noise_multiplier=1.0, grad_sample_mode="bk"), progress=False)
    assert "LayerNorm is not supported" in capsys.readouterr().out and run.config.grad_sample_mode == "ghost"
