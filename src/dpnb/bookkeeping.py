r"""Book-keeping clipping: the clipped per-example gradient sum in one backward pass.

DP-SGD needs :math:`S = \sum_i c_i g_i` with :math:`c_i = \min(1, C/\lVert g_i\rVert)`, where
:math:`g_i` is example i's gradient over *all* parameters (flat clipping, as Opacus). Opacus's
hooks materialise every :math:`g_i`; its ghost clipping gets the norms without them but runs a
second backward pass for :math:`S`. Book-keeping (Bu, Wang, Zha & Karypis, ICML 2023, Alg. 1) keeps
what one backward pass already has, each layer's input activations :math:`a` and output gradients
:math:`\partial L/\partial z`, and builds both from them:

* for a linear map :math:`z_t = W a_t` (t over a sequence or the positions of a convolution), the
  per-example gradient is :math:`g_i = \sum_t \delta_{it} a_{it}^\top` and its squared norm is
  :math:`\sum_{t,s} (a_{it}\cdot a_{is})(\delta_{it}\cdot\delta_{is})` (the ghost norm, Li et al.
  2022), computed without :math:`g_i`; when the T × T Gram matrices cost more than :math:`g_i`
  itself, :math:`g_i` is formed instead (mixed ghost clipping, Bu et al. 2022, Sec. 3.2);
* the clipped sum is one product, :math:`S = \sum_{i,t} (c_i\delta_{it}) a_{it}^\top`.

The backward pass asks autograd for the layers' output gradients only, so no parameter gradient
is computed twice. Supported: ``nn.Linear``, ``nn.Conv2d`` (``groups=1``, numeric padding),
``nn.GroupNorm`` (affine) and ``nn.Embedding``; a model with any other trainable parameter is
refused by :func:`unsupported` (the caller falls back to Opacus, with a one-line notice).

Example::

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    >>> bk = BookKeeping(model)
    >>> x, y = torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1])
    >>> sums, norms = bk.clipped_sum(x, y, max_grad_norm=0.5)
    >>> sorted(sums), norms.shape
    (['0.bias', '0.weight', '2.bias', '2.weight'], torch.Size([5]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from dpnb.dpsgd import clip_factors
from dpnb.params import ParameterError, check_number

__all__ = ["BookKeeping", "unsupported", "SUPPORTED"]

SUPPORTED = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.Embedding)


def _why_not(module: nn.Module) -> str | None:
    if not isinstance(module, SUPPORTED):
        return f"{type(module).__name__} is not supported"
    if isinstance(module, nn.Conv2d) and (module.groups != 1 or isinstance(module.padding, str)
                                          or module.padding_mode != "zeros"):
        return "Conv2d needs groups=1, numeric padding and zero padding mode"
    if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.scale_grad_by_freq
                                             or module.sparse):
        return "Embedding needs max_norm=None, scale_grad_by_freq=False and dense gradients"
    return None


def unsupported(model: nn.Module) -> list[str]:
    """One line per trainable parameter book-keeping cannot handle (empty: the model is supported)."""
    problems = []
    for name, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if own and (why := _why_not(module)):
            problems.append(f"{name or type(module).__name__}: {why}")
    return problems


def _linear_terms(a: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Squared per-example norms of g_i = Σ_t d_it a_itᵀ, and a function of the clip factors giving Σ_i c_i g_i.

    Channels first: ``a`` is (B, k, T), ``d`` is (B, p, T) (T positions: a sequence, or the output
    positions of a convolution). Ghost norm when 2T² < k·p (Li et al. 2022), else the per-example
    gradients, formed once and reused for the sum (Bu et al. 2022's layer-wise choice).
    """
    B, k, T = a.shape
    p = d.shape[1]
    if T == 1:
        a2, d2 = a[:, :, 0], d[:, :, 0]
        return (a2 ** 2).sum(1) * (d2 ** 2).sum(1), lambda c: (d2 * c[:, None]).T @ a2
    if 2 * T * T < k * p:
        at = a.transpose(1, 2)
        sq = (torch.bmm(at, a) * torch.bmm(d.transpose(1, 2), d)).sum((1, 2))
        return sq, lambda c: torch.bmm(d * c[:, None, None], at).sum(0)
    g = torch.bmm(d, a.transpose(1, 2))  # (B, p, k): the per-example gradients
    return (g ** 2).sum((1, 2)), lambda c: torch.einsum("b,bpk->pk", c, g)


class BookKeeping:
    """Clipped per-example gradient sums of ``model``'s trainable parameters, in one backward pass.

    ``criterion(logits, targets)`` must return one loss per example (``reduction="none"``); the
    default is the cross-entropy. The model must pass :func:`unsupported` (else ``ParameterError``),
    and each supported module may be called once per forward pass.
    """

    def __init__(self, model: nn.Module, *, criterion: Callable[..., torch.Tensor] | None = None) -> None:
        problems = unsupported(model)
        if problems:
            raise ParameterError("book-keeping clipping cannot handle this model: " + "; ".join(problems))
        self.model = model
        self.criterion = criterion or (lambda z, y: F.cross_entropy(z, y, reduction="none"))
        self.layers = {name: m for name, m in model.named_modules()
                       if any(p.requires_grad for p in m.parameters(recurse=False))}
        self._records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._active = False  # record only inside clipped_sum
        self.last_output: torch.Tensor | None = None  # the logits of the last batch (detached)
        for name, module in self.layers.items():
            module.register_forward_hook(self._hook(name))

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            if not self._active:
                return
            if name in self._records:
                raise ParameterError(f"book-keeping clipping needs each layer called once per forward; {name} was "
                                     "called again")
            self._records[name] = (inputs[0].detach(), output)
        return hook

    def clipped_sum(self, x: torch.Tensor, y: torch.Tensor, *, max_grad_norm: float
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(``{parameter name: Σ_i c_i g_i}``, the per-example gradient norms ‖g_i‖) for the batch (x, y).

        An empty batch gives zero sums and no norms. The clip factor is Opacus's, min(1, C/(‖g_i‖ + 1e-6)).
        """
        C = check_number("max_grad_norm", max_grad_norm, low=0, low_open=True)
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if len(x) == 0:
            self.last_output = None
            return {n: torch.zeros_like(p) for n, p in params.items()}, torch.zeros(0, device=x.device)
        self._records, self._active = {}, True
        try:
            logits = self.model(x)
            self.last_output = logits.detach()
            losses = self.criterion(logits, y)
            names = [n for n in self.layers if n in self._records]
            outputs = [self._records[n][1] for n in names]
            grads = torch.autograd.grad(losses.sum(), outputs, allow_unused=True)
            terms: dict[str, list[tuple[str, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]] = {}
            for name, grad in zip(names, grads):
                a = self._records[name][0]
                g = torch.zeros_like(self._records[name][1]) if grad is None else grad.detach()
                terms[name] = self._terms(self.layers[name], a, g)
        finally:
            self._records, self._active = {}, False
        sq = sum(t[1] for parts in terms.values() for t in parts)
        norms = torch.sqrt(sq)  # type: ignore[arg-type]
        c = clip_factors(norms, max_grad_norm=C)
        sums = {n: torch.zeros_like(p) for n, p in params.items()}
        for layer, parts in terms.items():
            for pname, _, make in parts:
                full = f"{layer}.{pname}" if layer else pname
                sums[full] = make(c).reshape(params[full].shape)
        return sums, norms

    @staticmethod
    def _terms(m: nn.Module, a: torch.Tensor, g: torch.Tensor
               ) -> list[tuple[str, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]:
        """(parameter, squared per-example norms, clipped sum from clip factors) for each parameter of ``m``."""
        out = []
        B = a.shape[0]
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if isinstance(m, nn.Linear):  # (B, ..., k) → (B, k, T)
                a3 = a.reshape(B, -1, a.shape[-1]).transpose(1, 2)
                d3 = g.reshape(B, -1, g.shape[-1]).transpose(1, 2)
            else:
                a3 = F.unfold(a.contiguous(), m.kernel_size, dilation=m.dilation,  # type: ignore[arg-type]
                              padding=m.padding, stride=m.stride)  # type: ignore[arg-type]
                d3 = g.flatten(2)
            if m.weight.requires_grad:
                sq, make = _linear_terms(a3, d3)
                out.append(("weight", sq, make))
            if m.bias is not None and m.bias.requires_grad:
                gb = d3.sum(2)
                out.append(("bias", (gb ** 2).sum(1), lambda c, gb=gb: c @ gb))
        elif isinstance(m, nn.GroupNorm):
            x_hat = F.group_norm(a, m.num_groups, eps=m.eps)
            if m.weight is not None and m.weight.requires_grad:
                gw = (g * x_hat).flatten(2).sum(2)
                out.append(("weight", (gw ** 2).sum(1), lambda c, gw=gw: (gw * c[:, None]).sum(0)))
            if m.bias is not None and m.bias.requires_grad:
                gb = g.flatten(2).sum(2)
                out.append(("bias", (gb ** 2).sum(1), lambda c, gb=gb: (gb * c[:, None]).sum(0)))
        elif isinstance(m, nn.Embedding):
            idx, d = a.reshape(B, -1), g.reshape(B, -1, g.shape[-1])
            if m.padding_idx is not None:
                d = d * (idx != m.padding_idx)[..., None]
            same = (idx[:, :, None] == idx[:, None, :]).to(d.dtype)
            sq = (same * (d @ d.transpose(1, 2))).sum((1, 2))

            def make(c: torch.Tensor, idx: torch.Tensor = idx, d: torch.Tensor = d) -> torch.Tensor:
                total = torch.zeros(m.num_embeddings, d.shape[-1], dtype=d.dtype, device=d.device)
                return total.index_add_(0, idx.flatten(), (d * c[:, None, None]).flatten(0, 1))

            out.append(("weight", sq, make))
        return out
