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
  itself, :math:`g_i` is formed instead (mixed ghost clipping, Bu et al. 2022, Sec. 3.2); a
  convolution's norms are computed in blocks of :data:`CHUNK` examples (:func:`_conv_sq_norms`);
* the clipped sum is one product, :math:`S = \sum_{i,t} (c_i\delta_{it}) a_{it}^\top`; for a
  convolution, PyTorch's own weight-gradient kernel applied to :math:`c_i\delta_i`.

The backward pass computes the layers' output gradients only (no parameter gradient), and each
layer's share (norms, and what its sum needs) is taken from its output gradient inside that pass,
which then frees the gradient as non-private backpropagation does (:class:`_Tap`).
Supported: ``nn.Linear``, ``nn.Conv2d`` (``groups=1``, numeric padding),
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


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _unfold(x: torch.Tensor, m: nn.Conv2d) -> torch.Tensor:
    """``F.unfold(x, ...)`` for ``m``'s kernel, (B, C·kh·kw, T), as one strided copy of the padded input.

    Same numbers as ``F.unfold``; on CPU its ``im2col`` loops over the batch and was the largest single
    cost of a book-keeping step (3-8x slower than this copy on the book's CNNs, 2 cores).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_pair(m.kernel_size), _pair(m.stride), _pair(m.padding),
                                              _pair(m.dilation))
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    B, C, H, W = x.shape
    Ho, Wo = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
    x = x.contiguous()
    b, ch, r, col = x.stride()
    view = x.as_strided((B, C, kh, kw, Ho, Wo), (b, ch, r * dh, col * dw, r * sh, col * sw))
    return view.reshape(B, C * kh * kw, Ho * Wo)


def _conv_backward(m: nn.Conv2d, d: torch.Tensor, a: torch.Tensor, weight: torch.Tensor, groups: int,
                   bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight (and bias) gradient of ``m``'s convolution for output gradient ``d``, by PyTorch's own kernel."""
    _, gw, gb = torch.ops.aten.convolution_backward(
        d, a, weight, [d.shape[1]] if bias else None, list(_pair(m.stride)), list(_pair(m.padding)),
        list(_pair(m.dilation)), False, [0, 0], groups, [False, True, bias])
    return gw, gb


KEEP_ELEMENTS = 2**23  # per-example convolution gradients kept for the clipped sum up to 32 MiB (float32)
CHUNK = 64  # examples per block of a convolution's norm computation: its temporaries stay in cache


def _conv_sq_norms(m: nn.Conv2d, a: torch.Tensor, d: torch.Tensor, *, keep: bool = False
                   ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Squared per-example norms of a convolution's weight gradient, :data:`CHUNK` examples at a time,
    and, with ``keep``, the per-example gradients when they were formed (else None): one (n, p, k)
    block per chunk, not concatenated (a copy of up to :data:`KEEP_ELEMENTS` numbers saved).

    Three ways to the same numbers, chosen by the layer's shape (T = Ho·Wo positions, k = C·kh·kw,
    p output channels): the ghost norm :math:`\\sum_{t,s}(a_t\\cdot a_s)(\\delta_t\\cdot\\delta_s)` on the
    unfolded input when its Gram matrices cost under half the per-example gradients' products,
    T(k + p) < kp/2 (large layers, few positions); otherwise the per-example gradients themselves,
    as batched products with the unfolded input when the layer has fewer than 8 input channels, else
    from one convolution backward with one group per example. The rule follows timings of the book's
    CNNs on 2 CPU cores (``dpnb bench``); all three are tested against per-example gradients.
    """
    B, p = d.shape[:2]
    T = d.shape[2] * d.shape[3]
    k = m.weight[0].numel()
    ghost = T * (k + p) < k * p / 2
    norms, kept = [], []
    for s in range(0, B, CHUNK):
        ac, dc = a[s:s + CHUNK], d[s:s + CHUNK]
        d3 = dc.flatten(2)
        if ghost:
            at = _unfold(ac, m).transpose(1, 2)
            norms.append((torch.bmm(at, at.transpose(1, 2)) * torch.bmm(d3.transpose(1, 2), d3)).sum((1, 2)))
            continue
        if m.in_channels < 8:
            g = torch.bmm(d3, _unfold(ac, m).transpose(1, 2))
        else:
            n = len(ac)
            g, _ = _conv_backward(m, dc.reshape(1, n * p, *dc.shape[2:]), ac.reshape(1, -1, *ac.shape[2:]),
                                  m.weight.detach().repeat(n, 1, 1, 1), n, False)
            g = g.reshape(n, p, k)
        norms.append((g ** 2).sum((1, 2)))
        if keep:
            kept.append(g)
    return torch.cat(norms), (kept or None)


def _conv_terms(m: nn.Conv2d, a: torch.Tensor, d: torch.Tensor) -> "Terms":
    """Book-keeping terms of a convolution: input ``a`` (B, C, H, W), output gradient ``d`` (B, p, Ho, Wo).

    Norms by :func:`_conv_sq_norms`. The clipped sum: :math:`\\sum_i c_i g_i` from the per-example
    gradients when they were formed and are no larger than ``d`` (k ≤ T) or hold at most
    :data:`KEEP_ELEMENTS` numbers (one matrix-vector product instead of a convolution backward: on
    the MNIST CNN's second convolution 0.13 ms against 0.44 ms at batch 256, 2 cores), else one
    convolution backward of the clip-weighted output gradients :math:`c_i\\delta_i`, by the kernel
    non-private SGD uses for its weight gradient (``d`` is scaled in place, after the backward pass: nothing
    reads that gradient any more).
    """
    out = []
    if m.weight.requires_grad:
        B, p = d.shape[:2]
        k, T = m.weight[0].numel(), d.shape[2] * d.shape[3]
        sq, per_example = _conv_sq_norms(m, a, d, keep=k <= T or B * p * k <= KEEP_ELEMENTS)

        if per_example is not None:  # the sum from the kept blocks; a and d are not held for it
            def make(c: torch.Tensor, blocks: list[torch.Tensor] = per_example) -> torch.Tensor:
                sizes = [len(g) for g in blocks]
                return sum(torch.einsum("b,bpk->pk", ci, g) for ci, g in zip(c.split(sizes), blocks))
        else:
            def make(c: torch.Tensor, a: torch.Tensor = a, d: torch.Tensor = d) -> torch.Tensor:
                return _conv_backward(m, d.mul_(c[:, None, None, None]), a, m.weight.detach(), 1, False)[0]

        out.append(("weight", sq, make))
    if m.bias is not None and m.bias.requires_grad:
        gb = d.sum((2, 3))
        out.append(("bias", (gb ** 2).sum(1), lambda c: c @ gb))
    return out


class _Tap(torch.autograd.Function):
    """Identity on a layer's output whose backward hands the output gradient to ``callback`` as soon as
    autograd has it, then lets it flow on unchanged. ``leaf`` (a scalar that requires grad, given zero
    gradient) is what :meth:`BookKeeping.clipped_sum` differentiates for: autograd then runs every tap
    and the layers between them, and no parameter gradient."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, leaf: torch.Tensor, callback: Callable[[torch.Tensor], None]
                ) -> torch.Tensor:
        ctx.callback = callback
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, dz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        ctx.callback(dz)
        return dz, torch.zeros((), device=dz.device), None


Terms = list[tuple[str, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]


class BookKeeping:
    """Clipped per-example gradient sums of ``model``'s trainable parameters, in one backward pass.

    ``criterion(logits, targets)`` must return one loss per example (``reduction="none"``); the
    default is the cross-entropy. The model must pass :func:`unsupported` (else ``ParameterError``),
    and each supported module may be called once per forward pass.

    Each layer's terms (its per-example squared norms and what its clipped sum needs) are computed
    inside the backward pass, the moment its output gradient exists (:class:`_Tap`), and that
    gradient is then released: like non-private backpropagation, the pass never holds every layer's
    output gradient at once, and each is used while it is still in cache.
    """

    def __init__(self, model: nn.Module, *, criterion: Callable[..., torch.Tensor] | None = None) -> None:
        problems = unsupported(model)
        if problems:
            raise ParameterError("book-keeping clipping cannot handle this model: " + "; ".join(problems))
        self.model = model
        self.criterion = criterion or (lambda z, y: F.cross_entropy(z, y, reduction="none"))
        self.layers = {name: m for name, m in model.named_modules()
                       if any(p.requires_grad for p in m.parameters(recurse=False))}
        self._inputs: dict[str, torch.Tensor] = {}  # layer → its input, until its terms are computed
        self._outputs: dict[str, torch.Tensor] = {}  # layer → a storage-less copy of its output (for a zero gradient)
        self._terms_of: dict[str, Terms] = {}
        self._leaf: torch.Tensor | None = None  # set only inside clipped_sum: the hooks record then
        self.last_output: torch.Tensor | None = None  # the logits of the last batch (detached)
        for name, module in self.layers.items():
            module.register_forward_hook(self._hook(name))

    def _hook(self, name: str) -> Callable[..., torch.Tensor | None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            if self._leaf is None:
                return None
            if name in self._inputs or name in self._terms_of:
                raise ParameterError(f"book-keeping clipping needs each layer called once per forward; {name} was "
                                     "called again")
            self._inputs[name] = inputs[0].detach()
            self._outputs[name] = torch.empty_like(output, device="meta")  # holding output would keep it alive

            def on_gradient(dz: torch.Tensor) -> None:
                self._terms_of[name] = self._terms(module, self._inputs.pop(name), dz.detach())

            return _Tap.apply(output, self._leaf, on_gradient)
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
        self._inputs, self._outputs, self._terms_of = {}, {}, {}
        self._leaf = torch.zeros((), device=x.device, requires_grad=True)
        try:
            logits = self.model(x)
            self.last_output = logits.detach()
            losses = self.criterion(logits, y)
            if self._outputs:
                torch.autograd.grad(losses.sum(), [self._leaf], allow_unused=True)
            for name in list(self._inputs):  # a layer whose output the loss does not use: zero gradient
                out = self._outputs[name]
                self._terms_of[name] = self._terms(self.layers[name], self._inputs.pop(name),
                                                   torch.zeros(out.shape, dtype=out.dtype, device=x.device))
            terms = {n: self._terms_of[n] for n in self.layers if n in self._terms_of}
        finally:
            self._inputs, self._outputs, self._terms_of, self._leaf = {}, {}, {}, None
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
    def _terms(m: nn.Module, a: torch.Tensor, g: torch.Tensor) -> Terms:
        """(parameter, squared per-example norms, clipped sum from clip factors) for each parameter of ``m``."""
        out = []
        B = a.shape[0]
        if isinstance(m, nn.Conv2d):
            return _conv_terms(m, a, g)
        if isinstance(m, nn.Linear):  # (B, ..., k) → (B, k, T)
            a3 = a.reshape(B, -1, a.shape[-1]).transpose(1, 2)
            d3 = g.reshape(B, -1, g.shape[-1]).transpose(1, 2)
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
