"""The PRV accountant (Gopi, Lee & Wutschitz, NeurIPS 2021), through Opacus, within stated limits.

The PRV accountant composes the privacy-loss distribution of ``steps`` Poisson-subsampled
Gaussian mechanisms numerically (FFT on a grid) and returns an upper bound on ε within
``eps_error`` of the true ε of the composition. Its grid has

.. math::
    n = 2L / h,\\qquad h = \\frac{\\varepsilon_{\\rm err}}{\\sqrt{T \\ln(12/\\delta_{\\rm err})/2}},

points, where :math:`L` is an RDP bound on the privacy loss at :math:`\\delta_{\\rm err}/4` plus 3
(Gopi et al. 2021, Remark 5.6; Opacus's ``compute_safe_domain_size``), :math:`T` the steps and
:math:`\\delta_{\\rm err} = \\delta/1000`. Tiny σ, many steps or large ε make :math:`n` huge
(``--target-epsilon 1000`` asked Opacus for tens of GB). So :func:`grid_points` predicts
:math:`n` from dpnb's own RDP (no torch needed) before anything is allocated, the error is
widened to fit :data:`MAX_GRID_POINTS` when that keeps it within :data:`MAX_EPS_ERROR`, and
otherwise :class:`AccountantLimit` says, in one line, why PRV was not computed.

This module is the one bridge to Opacus's accountants: the budget chapter's cross-checks
(:mod:`dpnb.privacy.compare`) call :func:`opacus_epsilon` too.

Example::

    >>> round(prv_epsilon(noise_multiplier=1.1, sample_rate=256 / 60_000, steps=14_063, delta=1e-5), 2)
    2.39
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from dpnb.params import check_int, check_number
from dpnb.privacy import rdp

__all__ = ["AccountantLimit", "Mechanism", "MAX_GRID_POINTS", "MAX_EPS_ERROR", "grid_points", "prv_epsilon",
           "opacus_epsilon"]

#: Largest PRV grid computed. Measured with Opacus 1.6 on 2 cores: 3.9e6 points peaked at 1.83 GB
#: resident (about 0.85 GB of it torch and Opacus themselves) in 1.7 s; 3e6 keeps a call near 1.6 GB.
MAX_GRID_POINTS = 3_000_000
#: The widest ε error accepted when the default 0.01 does not fit the grid.
MAX_EPS_ERROR = 0.1


class AccountantLimit(ValueError):
    """The accountant cannot give this ε within the book's time and memory limits (one line)."""


#: One Poisson-subsampled Gaussian mechanism run ``steps`` times: (σ, q, steps).
Mechanism = tuple[float, float, int]


def grid_points(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                eps_error: float = 0.01, also: Sequence[Mechanism] = ()) -> float:
    """Points of the grid Opacus's ``PRVAccountant`` would allocate for this run (see module text),
    composed with the mechanisms ``also``.

    The domain bound uses dpnb's RDP on Opacus's own order grid, which equals Opacus's
    ``RDPAccountant`` there, so this is the number Opacus computes.
    """
    mechanisms = [(noise_multiplier, sample_rate, steps), *also]
    total = sum(t for _, _, t in mechanisms)
    delta_error = delta / 1000
    orders = rdp.DEFAULT_ORDERS
    curve = sum(t * rdp.sgm_rdp(noise_multiplier=s, sample_rate=q, orders=orders) for s, q, t in mechanisms)
    bound = max(rdp.rdp_to_epsilon(rdp=curve, orders=orders, delta=delta_error / 4)[0],
                *(rdp.rdp_epsilon(noise_multiplier=s, sample_rate=q, steps=1, delta=delta_error / (8 * total),
                                  orders=orders)[0] for s, q, _ in mechanisms))
    half_width = max(bound, eps_error) + 3
    mesh = eps_error / math.sqrt(total * math.log(12 / delta_error) / 2)
    return 2 * half_width / mesh


def _eps_error_that_fits(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                         eps_error: float, max_points: float, also: Sequence[Mechanism] = ()) -> float:
    """The smallest ε error ≥ ``eps_error`` whose grid has at most ``max_points`` points."""
    kw = dict(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta, also=also)
    n = grid_points(eps_error=eps_error, **kw)  # type: ignore[arg-type]
    if n <= max_points:
        return eps_error
    # n is about proportional to 1/eps_error (L depends on it only through max(L, eps_error))
    wider = eps_error * n / max_points * 1.01
    if wider <= MAX_EPS_ERROR and grid_points(eps_error=wider, **kw) <= max_points:  # type: ignore[arg-type]
        return wider
    raise AccountantLimit(
        f"its grid would need {n:.2g} points at eps_error {eps_error:g} "
        f"(limit {max_points:.2g}); "
        "the RDP value is a valid bound for this run")


def prv_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                eps_error: float = 0.01, max_points: float = MAX_GRID_POINTS, also: Sequence[Mechanism] = ()) -> float:
    """Upper bound on ε of ``steps`` Poisson-subsampled Gaussian steps (add/remove), PRV accountant,
    composed with the mechanisms ``also`` ((σ, q, steps) each; Gopi et al. 2021, Sec. 5.2).

    The error is ``eps_error`` unless that grid would exceed ``max_points``; then it is widened
    up to :data:`MAX_EPS_ERROR` (the result stays an upper bound, only a looser one), and past
    that :class:`AccountantLimit` is raised. See :func:`prv_epsilon_and_error` for the error used.
    """
    return prv_epsilon_and_error(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                                 delta=delta, eps_error=eps_error, max_points=max_points, also=also)[0]


def prv_epsilon_and_error(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                          eps_error: float = 0.01, max_points: float = MAX_GRID_POINTS,
                          also: Sequence[Mechanism] = ()) -> tuple[float, float]:
    """(ε upper bound, the ε error it was computed with): :func:`prv_epsilon` with its error."""
    sigma = check_number("noise_multiplier", noise_multiplier, low=0, low_open=True)
    q = check_number("sample_rate", sample_rate, low=0, high=1, low_open=True)
    steps = check_int("steps", steps, low=1)
    delta = check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
    eps_error = check_number("eps_error", eps_error, low=0, low_open=True)
    also = [(check_number("noise_multiplier", s_, low=0, low_open=True),
             check_number("sample_rate", q_, low=0, high=1, low_open=True), check_int("steps", t_, low=1))
            for s_, q_, t_ in also]
    err = _eps_error_that_fits(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta,
                               eps_error=eps_error, max_points=max_points, also=also)
    eps = opacus_epsilon("prv", noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, eps_error=err,
                         also=also)
    return max(eps, 0.0), err  # the numerical bound can dip below 0 for a negligible loss; ε is never negative


def opacus_epsilon(accountant: str, *, noise_multiplier: float, sample_rate: float, steps: int,
                   delta: float, eps_error: float = 0.01, also: Sequence[Mechanism] = ()) -> float:
    """ε of ``steps`` Poisson-sampled Gaussian steps by Opacus's ``rdp`` or ``prv`` accountant, as is,
    composed with the mechanisms ``also`` (Opacus's history holds one entry per mechanism).

    No limits: the cross-checks call it on settings known to be small. Opacus's warnings (best
    order at the grid's edge) are silenced; the caller compares numbers.
    """
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = {"rdp": RDPAccountant, "prv": PRVAccountant}[accountant]()
    acc.history = [(noise_multiplier, sample_rate, steps), *also]
    kw = {"eps_error": eps_error} if accountant == "prv" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta, **kw))
