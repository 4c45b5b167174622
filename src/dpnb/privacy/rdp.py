r"""Rényi DP of the sampled Gaussian mechanism, and its conversion to (ε, δ): pure functions.

DP-SGD (Abadi et al. 2016) releases, at every step, the sum of clipped per-example
gradients of a sampled batch plus Gaussian noise: the *sampled Gaussian mechanism* (SGM).
This module computes its Rényi-DP curve, composes it over the steps of training and converts
the result to (ε, δ)-DP, with the formulas written out so that the budget chapter can show
each of them. Every function is pure (numbers in, numbers out) and needs neither torch nor
Opacus; :mod:`dpnb.privacy.accountant` turns a record of what ran
(:class:`dpnb.privacy.events.SampledGaussianEvent`) into ε with them.

Example::

    >>> q, steps = 256 / 60_000, 14_063
    >>> eps, order = rdp_epsilon(noise_multiplier=1.1, sample_rate=q, steps=steps,
    ...                          delta=1e-5, conversion="mironov")
    >>> round(eps, 2), order
    (3.01, 8.8)

:func:`sgm_rdp` assumes Poisson sampling (each example joins each batch independently with
probability ``sample_rate``) and add/remove-one adjacency, which is what Opacus's
``DPDataLoader`` implements and what its accountants assume. :func:`wbk_subsampled_gaussian_rdp`
covers sampling without replacement under replace-one adjacency (GS-WGAN).

References (keys of ``book/references.bib``):

* ``mironov2017renyi``: I. Mironov, *Rényi Differential Privacy*, CSF 2017.
* ``mironov2019sgm``: I. Mironov, K. Talwar, L. Zhang, *Rényi Differential Privacy of the
  Sampled Gaussian Mechanism*, arXiv:1908.10530, 2019.
* ``balle2020hypothesis``: B. Balle et al., *Hypothesis Testing Interpretations and Rényi
  Differential Privacy*, AISTATS 2020.
* ``canonne2020discrete``: C. Canonne, G. Kamath, T. Steinke, *The Discrete Gaussian for
  Differential Privacy*, NeurIPS 2020.
* ``wang2019subsampled``: Y.-X. Wang, B. Balle, S. Kasiviswanathan, *Subsampled Rényi
  Differential Privacy and Analytical Moments Accountant*, AISTATS 2019 (sampling without
  replacement, replace-one adjacency: :func:`wbk_subsampled_gaussian_rdp`, used by GS-WGAN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy import special, stats

from dpnb.params import ParameterError, check_int, check_number

__all__ = [
    "DEFAULT_ORDERS",
    "LARGE_ORDERS",
    "ACCOUNTING_ORDERS",
    "Conversion",
    "gaussian_rdp",
    "gaussian_delta",
    "classic_gaussian_sigma",
    "sgm_rdp",
    "rdp_to_epsilon",
    "epsilon_by_order",
    "epsilon_curve",
    "rdp_epsilon",
    "wbk_subsampled_gaussian_rdp",
    "wbk_epsilon",
]

#: Rényi orders of Opacus's ``RDPAccountant`` (and of TF Privacy): 1.1 to 10.9 by 0.1, then 12 to 63.
#: Numbers computed on this grid compare one-to-one with theirs.
DEFAULT_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))

#: Integer orders past Opacus's grid. With orders up to 63 the conversion term alone is at least
#: about 0.1 at δ = 1e-5, whatever σ, so small targets looked unreachable; at order 65536 it is
#: below 1e-4. Integer orders are exact and cheap (a sum of α terms).
LARGE_ORDERS: tuple[int, ...] = (64, 72, 80, 96, 112, 128, 160, 192, 256, 384, 512, 768, 1024, 1536,
                                 2048, 4096, 8192, 16384, 32768, 65536)

#: The grid accounting uses: Opacus's, extended. Where Opacus's optimum lies inside its grid the
#: two agree exactly (larger orders only add candidates); past it, ε here is smaller and still a
#: valid bound.
ACCOUNTING_ORDERS: tuple[float, ...] = DEFAULT_ORDERS + tuple(float(a) for a in LARGE_ORDERS)

Conversion = Literal["balle", "mironov"]

#: Terms of the fractional-order series summed before an order is given up (see _log_a_fractional).
FRACTIONAL_TERMS = 1 << 18


def _check_mechanism(noise_multiplier: float, sample_rate: float) -> tuple[float, float]:
    sigma = check_number("noise_multiplier", noise_multiplier, low=0, low_open=True)
    q = check_number("sample_rate", sample_rate, low=0, high=1, low_open=True)
    return sigma, q


def _check_orders(orders: Sequence[float]) -> np.ndarray:
    a = np.asarray(orders, dtype=float)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 1):
        raise ParameterError("orders must be a non-empty list of finite numbers > 1")
    return a


# --------------------------------------------------------------------------------------
# Gaussian mechanism
# --------------------------------------------------------------------------------------


def gaussian_rdp(*, noise_multiplier: float, orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
    r"""RDP of the Gaussian mechanism with L2 sensitivity 1 and noise ``noise_multiplier``.

    :math:`\varepsilon(\alpha) = \alpha / (2\sigma^2)` (Mironov 2017, Proposition 7).
    """
    sigma = check_number("noise_multiplier", noise_multiplier, low=0, low_open=True)
    return _check_orders(orders) / (2 * sigma**2)


def gaussian_delta(*, noise_multiplier: float, epsilon: float) -> float:
    r"""Exact δ(ε) of one Gaussian mechanism with sensitivity 1 (Balle & Wang 2018, Thm. 8).

    .. math::
        \delta = \Phi(\tfrac{1}{2\sigma} - \varepsilon\sigma)
                 - e^{\varepsilon}\,\Phi(-\tfrac{1}{2\sigma} - \varepsilon\sigma).
    """
    sigma = check_number("noise_multiplier", noise_multiplier, low=0, low_open=True)
    eps = check_number("epsilon", epsilon, low=0)
    a = stats.norm.cdf(0.5 / sigma - eps * sigma)
    b = math.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma)
    return float(max(a - b, 0.0))


def classic_gaussian_sigma(*, epsilon: float, delta: float) -> float:
    r"""Noise of the textbook Gaussian mechanism, :math:`\sigma = \sqrt{2\ln(1.25/\delta)}/\varepsilon`.

    Valid for ε < 1 only (Dwork & Roth 2014, Theorem A.1).
    """
    eps = check_number("epsilon", epsilon, low=0, high=1, low_open=True, high_open=True)
    delta = check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
    return math.sqrt(2 * math.log(1.25 / delta)) / eps


# --------------------------------------------------------------------------------------
# Sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019)
# --------------------------------------------------------------------------------------


def _log_a_integer(alpha: int, q: float, sigma: float) -> float:
    r"""log A_α for integer α (Mironov et al. 2019, Section 3.3, Eq. for integer α).

    :math:`A_\alpha = \sum_{k=0}^{\alpha} \binom{\alpha}{k} (1-q)^{\alpha-k} q^k
    \exp\big(\tfrac{k^2-k}{2\sigma^2}\big)`.

    The binomial weights sum to one, so :math:`A_\alpha - 1` is the same sum with
    :math:`e^x - 1` in place of :math:`e^x`; its terms for k = 0, 1 vanish and the rest are
    positive. Summing those and taking ``log1p`` keeps full precision when A_α is close to 1
    (small q or large σ), where ``log`` of the plain sum would lose it.
    """
    k = np.arange(2, alpha + 1, dtype=float)
    if k.size == 0:
        return 0.0
    log_binom = special.gammaln(alpha + 1) - special.gammaln(k + 1) - special.gammaln(alpha - k + 1)
    x = (k * k - k) / (2 * sigma**2)
    log_expm1 = x + np.log(-np.expm1(-x))  # log(e^x - 1), stable for small and large x
    terms = log_binom + k * math.log(q) + (alpha - k) * math.log1p(-q) + log_expm1
    return float(np.logaddexp(0.0, special.logsumexp(terms)))


def _log_a_fractional(alpha: float, q: float, sigma: float) -> float:
    r"""log A_α for fractional α (Mironov et al. 2019, Section 3.3, the two-series form).

    With :math:`z_0 = \sigma^2 \ln(1/q - 1) + 1/2`, :math:`A_\alpha = A_0 + A_1` where

    .. math::
        A_0 = \sum_{i\ge 0} \binom{\alpha}{i} q^i (1-q)^{\alpha-i}
              e^{(i^2-i)/(2\sigma^2)}\, \Phi\!\big(\tfrac{z_0-i}{\sigma}\big),\quad
        A_1 = \sum_{i\ge 0} \binom{\alpha}{i} q^{\alpha-i} (1-q)^{i}
              e^{(j^2-j)/(2\sigma^2)}\, \Phi\!\big(\tfrac{j-z_0}{\sigma}\big),\ j=\alpha-i.

    The binomial coefficients of a fractional α change sign past ``ceil(α)``, so the series
    are summed with signs in log space; terms are added in doubling blocks until they drop below
    e^-40 (A_α ≥ 1, so that is far below float precision). For q near 1/2 and a large σ the
    tail decays slowly; past :data:`FRACTIONAL_TERMS` terms the order is dropped (``inf``), which
    keeps any ε computed from the curve a valid bound: the integer orders still count.
    """
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    total_log, total_sign = [], []
    start, block = 0, 64
    while True:
        i = np.arange(start, start + block, dtype=float)
        j = alpha - i
        log_binom = special.gammaln(alpha + 1) - special.gammaln(i + 1) - special.gammaln(j + 1)
        sign = special.gammasgn(j + 1)  # sign of binom(alpha, i); Γ(i+1) > 0
        s0 = (log_binom + i * math.log(q) + j * math.log1p(-q)
              + (i * i - i) / (2 * sigma**2) + special.log_ndtr((z0 - i) / sigma))
        s1 = (log_binom + j * math.log(q) + i * math.log1p(-q)
              + (j * j - j) / (2 * sigma**2) + special.log_ndtr((j - z0) / sigma))
        total_log.extend([s0, s1])
        total_sign.extend([sign, sign])
        if start > alpha and max(s0.max(), s1.max()) < -40:
            break
        start += block
        block *= 2  # for q near 1/2 the tail decays only polynomially
        if start > FRACTIONAL_TERMS:  # q near 1/2 with a large sigma: give up on this order
            return math.inf
    logs = np.concatenate(total_log)
    signs = np.concatenate(total_sign)
    value, sign = special.logsumexp(logs, b=signs, return_sign=True)
    if sign <= 0:  # pragma: no cover - A_alpha >= 1 mathematically
        raise RuntimeError("sampled Gaussian RDP series lost precision")
    return float(value)


def sgm_rdp(
    *, noise_multiplier: float, sample_rate: float, orders: Sequence[float] = DEFAULT_ORDERS
) -> np.ndarray:
    r"""RDP ε(α) of **one step** of the sampled Gaussian mechanism (Poisson rate ``sample_rate``).

    :math:`\varepsilon(\alpha) = \frac{1}{\alpha-1}\log A_\alpha` (Mironov, Talwar, Zhang 2019,
    Theorem 4 and Section 3.3). For ``sample_rate == 1`` this is the Gaussian mechanism.
    """
    sigma, q = _check_mechanism(noise_multiplier, sample_rate)
    a = _check_orders(orders)
    if q == 1.0:
        return a / (2 * sigma**2)
    out = np.empty_like(a)
    for n, alpha in enumerate(a):
        if float(alpha).is_integer():
            log_a = _log_a_integer(int(alpha), q, sigma)
        else:
            log_a = _log_a_fractional(float(alpha), q, sigma)
        out[n] = log_a / (alpha - 1)
    return out


def _eps_at_orders(rdp: np.ndarray, a: np.ndarray, delta: float, conversion: str) -> np.ndarray:
    if conversion == "mironov":
        eps = rdp + math.log(1 / delta) / (a - 1)
    elif conversion == "balle":
        eps = rdp + np.log1p(-1 / a) - (math.log(delta) + np.log(a)) / (a - 1)
    else:
        raise ParameterError(f"conversion must be 'balle' or 'mironov', got {conversion!r}")
    return np.where(np.isnan(eps), np.inf, eps)


def rdp_to_epsilon(
    *, rdp: Sequence[float], orders: Sequence[float], delta: float, conversion: Conversion = "balle"
) -> tuple[float, float]:
    r"""Best (ε, order) of an RDP curve at ``delta``.

    ``conversion="mironov"``: :math:`\varepsilon = \varepsilon(\alpha) + \frac{\log(1/\delta)}{\alpha-1}`
    (Mironov 2017, Proposition 3), what older tools printed.

    ``conversion="balle"``: :math:`\varepsilon = \varepsilon(\alpha) + \log\frac{\alpha-1}{\alpha}
    - \frac{\log\delta + \log\alpha}{\alpha-1}` (Balle et al. 2020, Theorem 21; Canonne et al.
    2020, Proposition 12), what Opacus and dp-accounting use now. It is never larger.
    """
    delta = check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
    a = _check_orders(orders)
    r = np.asarray(rdp, dtype=float)
    if r.shape != a.shape:
        raise ParameterError("rdp and orders must have the same length")
    eps = _eps_at_orders(r, a, delta, conversion)
    best = int(np.argmin(eps))
    return max(float(eps[best]), 0.0), float(a[best])


def epsilon_by_order(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
    conversion: Conversion = "balle",
) -> np.ndarray:
    """ε obtained at each order α (before taking the minimum), for plots of the conversion."""
    steps = check_int("steps", steps, low=1)
    delta = check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
    a = _check_orders(orders)
    rdp = steps * sgm_rdp(noise_multiplier=noise_multiplier, sample_rate=sample_rate, orders=a)
    return _eps_at_orders(rdp, a, delta, conversion)


def epsilon_curve(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: Sequence[int],
    delta: float,
    orders: Sequence[float] = ACCOUNTING_ORDERS,
    conversion: Conversion = "balle",
) -> np.ndarray:
    """RDP ε after each step count in ``steps``; the per-step curve is computed once."""
    per_step = sgm_rdp(noise_multiplier=noise_multiplier, sample_rate=sample_rate, orders=orders)
    return np.array([
        rdp_to_epsilon(rdp=check_int("steps", t, low=1) * per_step, orders=orders, delta=delta,
                       conversion=conversion)[0]
        for t in steps
    ])


def rdp_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    orders: Sequence[float] = ACCOUNTING_ORDERS,
    conversion: Conversion = "balle",
) -> tuple[float, float]:
    """(ε, optimal order) of ``steps`` SGM steps, by RDP composition (Mironov 2017, Prop. 1)."""
    steps = check_int("steps", steps, low=1)
    rdp = steps * sgm_rdp(noise_multiplier=noise_multiplier, sample_rate=sample_rate, orders=orders)
    return rdp_to_epsilon(rdp=rdp, orders=orders, delta=delta, conversion=conversion)


# --------------------------------------------------------------------------------------
# Subsampling without replacement, replace-one adjacency (Wang, Balle, Kasiviswanathan 2019)
# --------------------------------------------------------------------------------------

#: Integer orders for :func:`wbk_epsilon` (the bound below is stated for integer α ≥ 2).
WBK_ORDERS: tuple[int, ...] = tuple(range(2, 257))


def wbk_subsampled_gaussian_rdp(*, noise_multiplier: float, sample_rate: float,
                                orders: Sequence[int] = WBK_ORDERS) -> np.ndarray:
    r"""RDP upper bound of the Gaussian mechanism on a subsample drawn without replacement.

    Wang, Balle & Kasiviswanathan (AISTATS 2019), Theorem 9, for the Gaussian base mechanism
    (:math:`\varepsilon(j) = j / (2\sigma^2)`, :math:`\varepsilon(\infty) = \infty`), sampling
    ratio :math:`\gamma` and *replace-one* adjacency:

    .. math::
        \varepsilon'(\alpha) \le \tfrac{1}{\alpha-1}\log\Big(1 + \gamma^2\tbinom{\alpha}{2}
        \min\{4(e^{\varepsilon(2)}-1),\, 2e^{\varepsilon(2)}\}
        + \sum_{j=3}^{\alpha} \gamma^j \tbinom{\alpha}{j}\, 2\, e^{(j-1)\varepsilon(j)}\Big).

    This is the analysis GS-WGAN's privacy script runs (through autodp). It is a generic bound,
    looser than the exact Poisson/add-remove analysis of :func:`sgm_rdp`.
    """
    sigma, q = _check_mechanism(noise_multiplier, sample_rate)
    out = []
    for alpha in orders:
        alpha = check_int("orders", alpha, low=2)
        eps2 = 2 / (2 * sigma**2)
        terms = [0.0, 2 * math.log(q) + math.log(math.comb(alpha, 2))
                 + math.log(min(4 * math.expm1(eps2), 2 * math.exp(eps2)))]
        j = np.arange(3, alpha + 1, dtype=float)
        if j.size:
            log_binom = special.gammaln(alpha + 1) - special.gammaln(j + 1) - special.gammaln(alpha - j + 1)
            terms.extend(j * math.log(q) + log_binom + math.log(2) + (j - 1) * j / (2 * sigma**2))
        out.append(float(special.logsumexp(terms)) / (alpha - 1))
    return np.array(out)


def wbk_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                orders: Sequence[int] = WBK_ORDERS) -> tuple[float, float]:
    """(ε, order) of ``steps`` compositions of :func:`wbk_subsampled_gaussian_rdp`, Mironov's conversion.

    The conversion GS-WGAN's accountant (autodp's ``get_eps``) uses. Example: GS-WGAN's MNIST
    defaults give ε ≈ 10::

        >>> eps, order = wbk_epsilon(noise_multiplier=1.07, sample_rate=1 / 1000, steps=32 * 20_000, delta=1e-5)
        >>> round(eps, 2), order
        (9.99, 4.0)
    """
    steps = check_int("steps", steps, low=1)
    rdp = steps * wbk_subsampled_gaussian_rdp(noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                                              orders=orders)
    return rdp_to_epsilon(rdp=rdp, orders=[float(a) for a in orders], delta=delta, conversion="mironov")
