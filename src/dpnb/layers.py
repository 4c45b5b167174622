"""Building blocks below the training loops: weight-standardised convolution and parameter averaging.

:class:`WSConv2d` (Qiao et al. 2019) and :class:`EMA` (De et al. 2022, Sec. 3.3) are used by the
CIFAR-10 scale experiments (:mod:`dpnb.scale`) and by both generative chapters (:mod:`dpnb.gan`,
:mod:`dpnb.gswgan`, whose released generator is an EMA of the iterates).

    >>> import torch
    >>> from torch import nn
    >>> ema = EMA(nn.Linear(2, 1), decay=0.5)
    >>> ema.updates, ema.current_decay
    (0, 0.5)
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from dpnb.params import check_number

__all__ = ["WSConv2d", "standardize_weights", "EMA", "RandomView"]


class WSConv2d(nn.Conv2d):
    """Convolution with weight standardisation (Qiao et al. 2019): each output filter's weights are
    shifted and scaled to zero mean and unit variance before use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def standardize_weights(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Conv2d`` of ``model`` by a :class:`WSConv2d` with the same parameters."""
    for name, child in list(model.named_children()):
        if type(child) is nn.Conv2d:
            ws = WSConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                          child.dilation, child.groups, child.bias is not None)
            ws.load_state_dict(child.state_dict())
            setattr(model, name, ws)
        else:
            standardize_weights(child)
    return model


class EMA:
    """Exponential moving average of parameters, ``avg = decay * avg + (1 - decay) * params``
    (De et al. 2022, Sec. 3.3; post-processing of the DP iterates, so free of privacy cost).

    With ``warmup``, update ``t`` (from 0) uses ``min(decay, (1 + t) / (10 + t))``, the schedule of
    TensorFlow's ``ExponentialMovingAverage(num_updates=...)``: a short run is then an average of
    its recent iterates, not mostly of the initial weights (decay 0.99 over 50 steps keeps 60% of them).
    """

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool = False) -> None:
        self.decay = check_number("ema_decay", decay, low=0, high=1, high_open=True)
        self.warmup = warmup
        self.updates = 0
        self.average = copy.deepcopy(model).eval()
        for p in self.average.parameters():
            p.requires_grad_(False)

    @property
    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        t = self.updates
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay
        for a, p in zip(self.average.parameters(), model.parameters()):
            a.mul_(d).add_(p.detach(), alpha=1 - d)
        self.updates += 1


class RandomView(nn.Module):
    """Inputs of shape ``(B, K, ...)`` hold K fixed views of each example (e.g. an image's scattering
    features and those of its mirror image); ``model`` sees one of them.

    In training mode each example's view is drawn uniformly (torch's global generator, which
    :func:`dpnb.train.train` seeds): random augmentation, one view and so one gradient per example,
    which DP-SGD clips as any other; σ and ε do not change. In evaluation mode the output is the
    log of the views' mean predicted probabilities (test-time augmentation, post-processing), so
    its argmax is the averaged prediction and its cross-entropy that prediction's loss.

        >>> import torch
        >>> m = RandomView(nn.Flatten()).eval()
        >>> x = torch.log(torch.tensor([[[0.2, 0.8]], [[0.6, 0.4]]])).transpose(0, 1)  # 1 example, 2 views
        >>> m(x).exp()
        tensor([[0.4000, 0.6000]])
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"RandomView needs inputs of shape (batch, views, ...), got {tuple(x.shape)}")
        if self.training:
            pick = torch.randint(x.shape[1], (x.shape[0],), device=x.device)
            return self.model(x[torch.arange(x.shape[0], device=x.device), pick])
        b, k = x.shape[:2]
        logp = F.log_softmax(self.model(x.flatten(0, 1)), dim=-1).view(b, k, -1)
        return torch.logsumexp(logp, dim=1) - math.log(k)

