"""dpnb.bookkeeping: the clipped per-example sum equals per-example gradients (one backward pass each),
clipped and summed, on every supported layer and on the book's models; unsupported models are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpnb import models
from dpnb.bookkeeping import BookKeeping, unsupported
from dpnb.dpsgd import clip_and_sum
from dpnb.params import ParameterError


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, C: float) -> tuple[dict, torch.Tensor]:
    """One backward pass per example (the plainest per-example gradients), then the core's clip and sum."""
    per_example: dict[str, list[torch.Tensor]] = {n: [] for n, _ in model.named_parameters()}
    for xi, yi in zip(x, y):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(xi[None]), yi[None]).backward()
        for n, p in model.named_parameters():
            per_example[n].append(p.grad.detach().clone())
    model.zero_grad(set_to_none=True)
    return clip_and_sum({n: torch.stack(g) for n, g in per_example.items()}, max_grad_norm=C)


class Tokens(nn.Module):
    """Embedding → mean over the sequence → linear: a sequence model with repeated tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 5, padding_idx=0)
        self.out = nn.Linear(5, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(idx).mean(1))


class Sequence(nn.Module):
    """A linear layer applied at each of T positions (the ghost norm's case)."""

    def __init__(self, t: int = 3) -> None:
        super().__init__()
        self.mix = nn.Linear(4, 6)
        self.out = nn.Linear(6 * t, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mix(x)).flatten(1))


CASES = {
    "linear": (lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)), lambda b: torch.randn(b, 6)),
    "sequence (ghost norm)": (Sequence, lambda b: torch.randn(b, 3, 4)),
    "sequence (per-example)": (lambda: Sequence(t=40), lambda b: torch.randn(b, 40, 4)),
    "conv + groupnorm": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, stride=2), nn.GroupNorm(2, 4),
                                               nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)),
                         lambda b: torch.randn(b, 2, 8, 8)),
    "embedding": (Tokens, lambda b: torch.randint(0, 7, (b, 6))),
    "mnist_cnn": (models.mnist_cnn, lambda b: torch.randn(b, 1, 28, 28)),
    "cifar_cnn": (lambda: models.cifar_cnn(width=8), lambda b: torch.randn(b, 3, 32, 32)),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch", [7, 1])
def test_clipped_sum_equals_per_example_gradients(case: str, batch: int) -> None:
    torch.manual_seed(0)
    make_model, make_x = CASES[case]
    model = make_model()
    x = make_x(batch)
    y = torch.randint(0, 3 if case not in ("mnist_cnn", "cifar_cnn") else 10, (batch,))
    for C in (1e-3, 1e3):  # every example clipped, and none
        want, want_norms = _reference(model, x, y, C)
        got, norms = BookKeeping(model).clipped_sum(x, y, max_grad_norm=C)
        torch.testing.assert_close(norms, want_norms, rtol=1e-5, atol=1e-7)
        for name in want:  # 1e-5 relative, in norm (float32 sums of thousands of terms)
            err = float((got[name] - want[name]).norm() / want[name].norm().clamp(min=1e-12))
            assert err < 1e-5, f"{case}, C = {C}: {name} differs by {err:.1e} relative"


def test_empty_batch_gives_zero_sums() -> None:
    model = models.mnist_cnn()
    sums, norms = BookKeeping(model).clipped_sum(torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long),
                                                 max_grad_norm=1.0)
    assert len(norms) == 0 and all(float(s.abs().sum()) == 0 for s in sums.values())
    assert set(sums) == {n for n, _ in model.named_parameters()}


def test_unsupported_layers_are_refused_in_one_line() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(2))
    assert unsupported(nn.Sequential(nn.Linear(2, 2))) == []
    with pytest.raises(ParameterError, match="groups=1"):
        BookKeeping(model)
    with pytest.raises(ParameterError, match="LayerNorm is not supported"):
        BookKeeping(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_agrees_with_opacus_per_sample_gradients_on_the_mnist_cnn() -> None:
    from opacus import GradSampleModule

    torch.manual_seed(1)
    model = models.mnist_cnn()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    got, norms = BookKeeping(model).clipped_sum(x, y, max_grad_norm=0.1)
    gsm = GradSampleModule(models.mnist_cnn(), loss_reduction="sum")
    gsm._module.load_state_dict(model.state_dict())
    nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    want, want_norms = clip_and_sum({n.removeprefix("_module."): p.grad_sample for n, p in gsm.named_parameters()},
                                    max_grad_norm=0.1)
    torch.testing.assert_close(norms, want_norms, rtol=1e-5, atol=1e-7)
    for name in want:
        assert float((got[name] - want[name]).norm() / want[name].norm()) < 1e-5, name
