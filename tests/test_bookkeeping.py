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
    "conv, ghost norm": (lambda: nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.Tanh(), nn.Flatten(),
                                               nn.Linear(32 * 2 * 2, 3)), lambda b: torch.randn(b, 16, 4, 4)),
    "conv, per-example by grouped backward": (lambda: nn.Sequential(nn.Conv2d(8, 4, 3, dilation=2), nn.Flatten(),
                                                                     nn.Linear(4 * 2 * 2, 3)),
                                              lambda b: torch.randn(b, 8, 6, 6)),
    "conv, per-example by unfolding": (
        lambda: nn.Sequential(nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), bias=False), nn.Flatten(),
                              nn.Linear(4 * 4 * 6, 3)),
        lambda b: torch.randn(b, 3, 7, 7)),
    "embedding": (Tokens, lambda b: torch.randint(0, 7, (b, 6))),
    "mnist_cnn": (models.mnist_cnn, lambda b: torch.randn(b, 1, 28, 28)),
    "cifar_cnn": (lambda: models.cifar_cnn(width=8), lambda b: torch.randn(b, 3, 32, 32)),
    "scatter_cnn": (lambda: models.scatter_cnn(in_channels=12, num_classes=10, width=8, groups=None, grid=4),
                    lambda b: torch.randn(b, 12, 8, 8)),
}


def _case(case: str, batch: int, *, seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A model of ``CASES``, a batch of its inputs and random labels."""
    torch.manual_seed(seed)
    make_model, make_x = CASES[case]
    model = make_model()
    y = torch.randint(0, 3 if case not in ("mnist_cnn", "cifar_cnn", "scatter_cnn") else 10, (batch,))
    return model, make_x(batch), y


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch", [7, 1])
def test_clipped_sum_equals_per_example_gradients(case: str, batch: int) -> None:
    model, x, y = _case(case, batch, seed=0)
    for C in (1e-3, 1e3):  # every example clipped, and none
        want, want_norms = _reference(model, x, y, C)
        got, norms = BookKeeping(model).clipped_sum(x, y, max_grad_norm=C)
        torch.testing.assert_close(norms, want_norms, rtol=1e-5, atol=1e-7)
        for name in want:  # 1e-5 relative, in norm (float32 sums of thousands of terms)
            err = float((got[name] - want[name]).norm() / want[name].norm().clamp(min=1e-12))
            assert err < 1e-5, f"{case}, C = {C}: {name} differs by {err:.1e} relative"


def _func_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, C: float) -> tuple[dict, torch.Tensor]:
    """torch.func per-example gradients (vmap over grad), then the core's clip and sum."""
    import copy

    from torch.func import functional_call, grad, vmap

    model = copy.deepcopy(model)
    for m in model.modules():  # the channels-last max-pooling of dpnb.models cannot run under vmap; same numbers
        if isinstance(m, models.MaxPool2d):
            m.__class__ = nn.MaxPool2d
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    return clip_and_sum(vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y), max_grad_norm=C)


def _opacus_ghost(model: nn.Module, x: torch.Tensor, y: torch.Tensor, C: float) -> tuple[dict, torch.Tensor]:
    """Opacus's ghost clipping: norms from a first backward pass, the clipped sum from a second."""
    import copy

    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    gsm = GradSampleModuleFastGradientClipping(copy.deepcopy(model), max_grad_norm=C, use_ghost_clipping=True,
                                               loss_reduction="sum")
    losses = nn.functional.cross_entropy(gsm(x), y, reduction="none")
    losses.sum().backward(retain_graph=True)
    norms = gsm.get_norm_sample()
    coeff = gsm.get_clipping_coef()
    gsm.zero_grad(set_to_none=True)
    gsm.disable_hooks()
    (coeff * losses).sum().backward()
    return {n.removeprefix("_module."): p.grad for n, p in gsm.named_parameters()}, norms


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", ["mnist_cnn", "cifar_cnn", "scatter_cnn", "conv, ghost norm", "conv + groupnorm"])
@pytest.mark.parametrize("batch", [70, 1])  # 70: more than one block of bookkeeping.CHUNK examples
def test_clipped_sum_equals_opacus_ghost_clipping_and_torch_func(case: str, batch: int) -> None:
    model, x, y = _case(case, batch, seed=2)
    got, norms = BookKeeping(model).clipped_sum(x, y, max_grad_norm=0.05)
    for label, (want, want_norms) in {"torch.func": _func_reference(model, x, y, 0.05),
                                      "Opacus ghost clipping": _opacus_ghost(model, x, y, 0.05)}.items():
        torch.testing.assert_close(norms, want_norms, rtol=1e-5, atol=1e-7, msg=label)
        for name in want:
            err = float((got[name] - want[name]).norm() / want[name].norm().clamp(min=1e-12))
            assert err < 1e-5, f"{case} against {label}: {name} differs by {err:.1e} relative"


@pytest.mark.parametrize("case", ["mnist_cnn", "cifar_cnn"])
def test_clipped_sum_without_kept_per_example_gradients(case: str, monkeypatch) -> None:
    """Over the memory cap a convolution's clipped sum is one convolution backward of c_i δ_i: same sums."""
    from dpnb import bookkeeping

    model, x, y = _case(case, 70, seed=3)
    want, want_norms = _func_reference(model, x, y, 0.05)
    monkeypatch.setattr(bookkeeping, "KEEP_ELEMENTS", 0)
    got, norms = BookKeeping(model).clipped_sum(x, y, max_grad_norm=0.05)
    torch.testing.assert_close(norms, want_norms, rtol=1e-5, atol=1e-7)
    for name in want:
        err = float((got[name] - want[name]).norm() / want[name].norm().clamp(min=1e-12))
        assert err < 1e-5, f"{case}: {name} differs by {err:.1e} relative"


def test_the_three_convolution_norms_are_the_ones_chosen() -> None:
    """Each case above reaches the norm computation its name says (the rule in _conv_sq_norms)."""
    from dpnb.bookkeeping import _conv_sq_norms

    seen = {}
    for case in ("conv, ghost norm", "conv, per-example by grouped backward", "conv, per-example by unfolding"):
        conv = CASES[case][0]()[0]
        a = CASES[case][1](3)
        d = torch.randn_like(conv(a))
        _, kept = _conv_sq_norms(conv, a, d, keep=True)
        T, k, p = d.shape[2] * d.shape[3], conv.weight[0].numel(), d.shape[1]
        seen[case] = ("ghost" if kept is None else "per-example", T * (k + p) < k * p / 2, conv.in_channels < 8)
    assert seen == {"conv, ghost norm": ("ghost", True, False),
                    "conv, per-example by grouped backward": ("per-example", False, False),
                    "conv, per-example by unfolding": ("per-example", False, True)}


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


class Branches(nn.Module):
    """A layer whose output reaches the loss twice (a residual), and one whose output it never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.unused, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        self.unused(h)
        return self.out(h + torch.tanh(self.b(h)))


def test_residual_and_unused_layers_match_per_example_gradients() -> None:
    """Gradients that meet at a residual are summed before a layer sees them; an unused layer's sum is zero."""
    torch.manual_seed(4)
    model, x, y = Branches(), torch.randn(9, 4), torch.randint(0, 3, (9,))
    got, norms = BookKeeping(model).clipped_sum(x, y, max_grad_norm=0.3)
    want, want_norms = _func_reference(model, x, y, 0.3)  # torch.func: zero gradients for the unused layer
    torch.testing.assert_close(norms, want_norms, rtol=1e-5, atol=1e-7)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)
    assert float(got["unused.weight"].abs().sum()) == 0.0 and float(got["unused.bias"].abs().sum()) == 0.0


def test_a_layer_called_twice_is_refused_in_one_line_and_the_next_batch_works() -> None:
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.Tanh(), lin)
    bk = BookKeeping(model)
    with pytest.raises(ParameterError, match="called once per forward; 0 was called again"):
        bk.clipped_sum(torch.randn(4, 3), torch.randint(0, 3, (4,)), max_grad_norm=1.0)
    model2 = nn.Sequential(nn.Linear(3, 3))
    bk2 = BookKeeping(model2)
    sums, norms = bk2.clipped_sum(torch.randn(4, 3), torch.randint(0, 3, (4,)), max_grad_norm=1.0)
    assert norms.shape == (4,)
    assert "Tap" not in type(model2(torch.randn(2, 3)).grad_fn).__name__  # the hooks are idle outside clipped_sum
    assert "Tap" not in type(model(torch.randn(2, 3)).grad_fn).__name__  # and after a refused batch
