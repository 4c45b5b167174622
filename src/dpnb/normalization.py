"""Data normalisation of features with differentially private statistics.

Tramèr & Boneh (ICLR 2021, Sec. 3.1) normalise ScatterNet features in one of two ways: per
example (a parameter-free GroupNorm, :func:`dpnb.features.group_normalize`, free of privacy
cost) or per channel over the whole training set, with a mean and a variance that are released
under DP. The second is their best linear model on CIFAR-10. :func:`private_standardizer`
computes those statistics:

* for each example ``i``, the channel means ``m_i`` and the channel means of squares ``s_i``
  of its ``(C, h, w)`` features (averages over the ``h w`` positions), two ``C``-vectors;
* each vector is clipped to an L2 norm of at most ``mean_bound`` (``m_i``) or
  ``square_bound`` (``s_i``), so one example moves each sum by at most that bound;
* the sums get Gaussian noise of std ``noise_multiplier * bound`` and are divided by ``N``:

.. math::
    \\hat\\mu = \\frac{1}{N}\\Big(\\sum_i \\mathrm{clip}(m_i) + \\mathcal N(0, \\sigma^2 B_m^2 I)\\Big),\\quad
    \\widehat{\\mathrm{Var}} = \\max\\Big(0,\\ \\frac{1}{N}\\Big(\\sum_i \\mathrm{clip}(s_i)
    + \\mathcal N(0, \\sigma^2 B_s^2 I)\\Big) - \\hat\\mu^2\\Big).

These are two Gaussian mechanisms on the whole dataset, recorded as
``SampledGaussianEvent.gaussian(noise_multiplier=σ, releases=2)``; a model trained on features
standardised with them passes that event to DP-SGD (``composed_with``), which calibrates its σ
so that ε covers both. ``N``, the size of the training set, is treated as public, as the
DP-SGD core treats it when it sets the sampling rate.

Unlike Tramèr & Boneh's code, which sets each bound to the median of the norms it clips
("technically a small privacy leak"), the bounds here are arguments: a caller that chooses them
by looking at the data must say so.

Example::

    >>> import torch
    >>> x = torch.rand(10_000, 4, 2, 2) * torch.tensor([1.0, 2, 3, 4]).view(4, 1, 1)
    >>> st = private_standardizer(x, mean_bound=6.0, square_bound=20.0, noise_multiplier=5.0,
    ...                           generator=torch.Generator().manual_seed(0))
    >>> st.mean.round(decimals=1), st.event.steps, st.event.sample_rate
    (tensor([0.5000, 1.0000, 1.5000, 2.0000]), 2, 1.0)
    >>> y = st(x); bool(y.mean().abs() < 0.05), bool((y.std() - 1).abs() < 0.05)
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpnb.dpsgd import add_noise, clip_factors
from dpnb.params import ParameterError, check_int, check_number
from dpnb.privacy import SampledGaussianEvent

__all__ = ["Standardizer", "private_standardizer"]

#: Added to the variance before the square root, as in BatchNorm.
VARIANCE_EPS = 1e-5


@dataclass(frozen=True)
class Standardizer:
    """Per-channel ``(x - mean) / sqrt(var + eps)`` of ``(..., C, h, w)`` features, and the record
    of the DP release of ``mean`` and ``var`` (``event``)."""

    mean: torch.Tensor
    var: torch.Tensor
    event: SampledGaussianEvent

    def __call__(self, features: torch.Tensor, *, chunk_size: int = 4096) -> torch.Tensor:
        """Standardised float32 copy of ``features`` (``(..., C, h, w)``), written chunk by chunk."""
        if features.ndim < 3 or features.shape[-3] != len(self.mean):
            raise ParameterError(f"features must be (..., {len(self.mean)}, h, w), got {tuple(features.shape)}")
        flat = features.reshape(-1, *features.shape[-3:])
        out = torch.empty(flat.shape, dtype=torch.float32, device=features.device)
        mean = self.mean.to(features.device).view(-1, 1, 1)
        inv_std = (self.var.to(features.device) + VARIANCE_EPS).rsqrt().view(-1, 1, 1)
        for start in range(0, len(flat), chunk_size):
            out[start:start + chunk_size] = (flat[start:start + chunk_size].float() - mean) * inv_std
        return out.reshape(features.shape)


def _clipped_sum(vectors: torch.Tensor, bound: float) -> torch.Tensor:
    return (vectors * clip_factors(vectors.norm(dim=1), max_grad_norm=bound)[:, None]).sum(0)


def private_standardizer(features: torch.Tensor, *, mean_bound: float, square_bound: float,
                         noise_multiplier: float, generator: torch.Generator | None = None,
                         chunk_size: int = 4096) -> Standardizer:
    """DP per-channel mean and variance of ``(N, C, h, w)`` private features (see the module text).

    ``noise_multiplier`` is σ of each of the two Gaussian releases (std ``σ * bound`` on each sum);
    the returned :class:`Standardizer` carries their record for the accountant.
    """
    if features.ndim != 4 or len(features) == 0:
        raise ParameterError(f"features must be a non-empty (N, C, h, w) tensor, got {tuple(features.shape)}")
    mean_bound = check_number("mean_bound", mean_bound, low=0, low_open=True)
    square_bound = check_number("square_bound", square_bound, low=0, low_open=True)
    sigma = check_number("noise_multiplier", noise_multiplier, low=0, low_open=True)
    chunk_size = check_int("chunk_size", chunk_size, low=1)
    n, c = features.shape[:2]
    sum_m = torch.zeros(c, dtype=torch.float64)
    sum_s = torch.zeros(c, dtype=torch.float64)
    for start in range(0, n, chunk_size):
        x = features[start:start + chunk_size].reshape(-1, c, features.shape[2] * features.shape[3]).double()
        sum_m += _clipped_sum(x.mean(2), mean_bound).cpu()
        sum_s += _clipped_sum(x.pow(2).mean(2), square_bound).cpu()
    mean = add_noise(sum_m, std=sigma * mean_bound, generator=generator) / n
    square = add_noise(sum_s, std=sigma * square_bound, generator=generator) / n
    var = (square - mean.pow(2)).clamp(min=0)
    return Standardizer(mean=mean.float(), var=var.float(),
                        event=SampledGaussianEvent.gaussian(noise_multiplier=sigma, releases=2))
