"""One way to account: ε of a :class:`~dpnb.privacy.events.SampledGaussianEvent`, and σ for a target.

:func:`epsilon` takes the record of what ran, a δ and an accountant, and either returns ε or
refuses, with one line, a combination it cannot bound:

==============================  ===========================================  =========================
sampling, adjacency             ``accountant="rdp"``                         ``accountant="prv"``
==============================  ===========================================  =========================
Poisson, add/remove             Mironov et al. 2019 + Balle et al. 2020      Gopi et al. 2021 (Opacus)
shards, replace-one             Wang, Balle, Kasiviswanathan 2019 Thm 9 +    refused
                                Mironov 2017 Prop. 3 (GS-WGAN's analysis)
shuffled (any)                  refused                                      refused
Poisson, replace-one            refused                                      refused
shards, add/remove              refused                                      refused
==============================  ===========================================  =========================

Shuffled fixed-size batches are what an ordinary ``DataLoader`` draws; DP-SGD's analyses do not
cover them, and published ε's for such runs silently assume Poisson sampling. :func:`label`
gives the text that names accountant, sampling and adjacency beside every ε in the book's CSVs.

:func:`calibrate_noise_multiplier` is the one calibrator: the smallest σ whose :func:`epsilon`
does not exceed a target, for any event :func:`epsilon` accepts.

Example::

    >>> from dpnb.privacy.events import SampledGaussianEvent
    >>> run = SampledGaussianEvent(noise_multiplier=1.1, sample_rate=256 / 60_000, steps=14_063)
    >>> round(epsilon(run, delta=1e-5, accountant="rdp"), 2)
    2.6
    >>> epsilon(SampledGaussianEvent(1.1, 0.01, 100, sampling="shuffled"), delta=1e-5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    dpnb.privacy.accountant.UnsupportedEvent: no accountant here bounds shuffled batches: DP-SGD's analyses ...
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Literal

from dpnb.params import ParameterError, check_choice, check_number
from dpnb.privacy import prv, rdp
from dpnb.privacy.events import SampledGaussianEvent
from dpnb.search import largest

__all__ = ["ACCOUNTANTS", "Accountant", "UnsupportedEvent", "epsilon", "label",
           "calibrate_noise_multiplier", "steps_within", "prv_eps_error", "SIGMA_MAX"]

Accountant = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
#: Calibration searches σ up to this value.
SIGMA_MAX = 1e6


class UnsupportedEvent(ParameterError):
    """No accountant here bounds this (sampling, adjacency, accountant) combination."""


def _analysis(event: SampledGaussianEvent, accountant: str) -> str:
    """Which analysis bounds ``event`` under ``accountant``; raises :class:`UnsupportedEvent`."""
    check_choice("accountant", accountant, ACCOUNTANTS)
    if event.sampling == "shuffled":
        raise UnsupportedEvent(
            "no accountant here bounds shuffled batches: DP-SGD's analyses assume Poisson sampling "
            "(use a Poisson sampler, e.g. Opacus's DPDataLoader)")
    if event.sampling == "poisson" and event.adjacency == "add/remove":
        return accountant  # "rdp" or "prv"
    if event.sampling == "shards" and event.adjacency == "replace-one":
        if accountant == "prv":
            raise UnsupportedEvent("the PRV accountant here covers Poisson sampling with add/remove adjacency "
                                   "only; for shards without replacement (replace-one) use accountant='rdp'")
        return "wbk"
    raise UnsupportedEvent(f"no accountant here bounds {event.sampling_text} under {event.adjacency} adjacency "
                           "(supported: Poisson with add/remove, shards with replace-one)")


def label(event: SampledGaussianEvent, accountant: str) -> str:
    """The accountant column of a results CSV, e.g. ``'prv (Poisson sampling, add/remove)'``.

    The shards analysis is named ``rdp-wbk`` so that it never reads as Opacus's RDP.
    """
    name = "rdp-wbk" if _analysis(event, accountant) == "wbk" else accountant
    return event.label(name)


@functools.lru_cache(maxsize=4096)  # deterministic; calibrations and repeated runs ask the same question
def epsilon(event: SampledGaussianEvent, *, delta: float, accountant: Accountant = "rdp",
            prv_eps_error: float = 0.01) -> float:
    """ε at ``delta`` of the run ``event`` describes, under ``accountant`` (see the module table).

    PRV returns an upper bound within ``prv_eps_error`` of the true ε (so never below it).
    Raises :class:`UnsupportedEvent` for a combination no analysis here bounds, and
    :class:`dpnb.privacy.prv.AccountantLimit` when PRV cannot be computed within its limits.
    """
    if event.noise_multiplier is None:
        raise ParameterError("epsilon needs the event's noise_multiplier (calibrate it first)")
    delta = check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
    kw = dict(noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate, steps=event.steps,
              delta=delta)
    analysis = _analysis(event, accountant)
    if event.composed_with:
        return _composed_epsilon(event, delta=delta, analysis=analysis, prv_eps_error=prv_eps_error)
    if analysis == "rdp":
        return rdp.rdp_epsilon(**kw)[0]  # type: ignore[arg-type]
    if analysis == "prv":
        return prv.prv_epsilon(**kw, eps_error=prv_eps_error)  # type: ignore[arg-type]
    return rdp.wbk_epsilon(**kw)[0]  # type: ignore[arg-type]


def _composed_epsilon(event: SampledGaussianEvent, *, delta: float, analysis: str, prv_eps_error: float) -> float:
    """ε of ``event`` with the releases composed with it: RDP curves add (Mironov 2017, Prop. 1);
    PRV convolves the loss distributions (Gopi et al. 2021, Sec. 5.2)."""
    others = event.composed_with
    if analysis not in ("rdp", "prv") or any(_analysis(o, analysis) != analysis for o in others):
        raise UnsupportedEvent("composition is supported for Poisson-sampled Gaussian mechanisms under "
                               "add/remove adjacency only")
    parts = [(event.noise_multiplier, event.sample_rate, event.steps)] + [
        (o.noise_multiplier, o.sample_rate, o.steps) for o in others]
    if analysis == "prv":
        s, q, t = parts[0]
        return prv.prv_epsilon(noise_multiplier=s, sample_rate=q, steps=t, delta=delta,  # type: ignore[arg-type]
                               eps_error=prv_eps_error, also=parts[1:])  # type: ignore[arg-type]
    orders = rdp.ACCOUNTING_ORDERS
    curve = sum(t * rdp.sgm_rdp(noise_multiplier=s, sample_rate=q, orders=orders) for s, q, t in parts)
    return rdp.rdp_to_epsilon(rdp=curve, orders=orders, delta=delta)[0]  # type: ignore[arg-type]


@functools.lru_cache(maxsize=512)  # runs and searches that share an event and a target calibrate once (PRV past
# max_seconds depends on the clock: the first answer is kept)
def calibrate_noise_multiplier(
    event: SampledGaussianEvent,
    *,
    target_epsilon: float,
    delta: float,
    accountant: Accountant = "rdp",
    sigma_max: float = SIGMA_MAX,
    rel_tol: float = 1e-3,
    max_seconds: float = 12.0,
) -> float:
    """Smallest σ whose :func:`epsilon` for ``event`` (its σ ignored) does not exceed ``target_epsilon``.

    ε decreases monotonically in σ. After bracketing the answer (doubling or halving σ), the
    bracket is narrowed by regula falsi on (log σ, log ε) with the Illinois modification, which
    needs far fewer accountant calls than bisection (PRV calls are the expensive part). The σ
    returned is the bracket's upper end, so its ε never exceeds the target; iteration stops when
    that ε is within ``rel_tol`` (relative) of the target or the bracket is that narrow.
    PRV starts from the RDP answer and runs with the error :func:`prv_eps_error` (its bound is
    never below that error, so small targets need a finer grid); past ``max_seconds`` of PRV
    calls the bracket's upper end is returned as it is (its ε is within the target, σ may be a
    little larger than needed). Raises :class:`ParameterError` when even ``sigma_max`` cannot
    reach the target.

        >>> e = SampledGaussianEvent(None, sample_rate=256 / 60_000, steps=14_063)
        >>> sigma = calibrate_noise_multiplier(e, target_epsilon=3.0, delta=1e-5)
        >>> round(sigma, 3), epsilon(e.with_noise(sigma), delta=1e-5) <= 3.0
        (1.014, True)
    """
    target = check_number("target_epsilon", target_epsilon, low=0, low_open=True)
    delta = check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
    _analysis(event, accountant)  # refuse before any work

    def f(sigma: float) -> float:  # > 0: too little noise; <= 0: within budget
        eps = epsilon(event.with_noise(sigma), delta=delta, accountant=accountant)
        return math.log(max(eps, 1e-300)) - math.log(target)

    def unreachable() -> ParameterError:
        return ParameterError(
            f"target_epsilon={target:g} is unreachable with noise_multiplier <= {sigma_max:g} "
            f"(sample_rate={event.sample_rate:g}, steps={event.steps}, delta={delta:g}, accountant={accountant}, "
            f"Rényi orders up to {max(rdp.ACCOUNTING_ORDERS):g}); raise the target or delta")

    if accountant == "prv":
        return _calibrate_prv(event, target=target, delta=delta, sigma_max=sigma_max, rel_tol=rel_tol,
                              max_seconds=max_seconds, unreachable=unreachable)
    hi, f_hi = 1.0, f(1.0)
    while f_hi > 0:
        hi *= 2
        if hi > sigma_max or (hi == 2048 and f(sigma_max) > 0):  # past σ = 1024, ask sigma_max once
            raise unreachable()
        f_hi = f(hi)
    lo, f_lo = hi / 2, f(hi / 2)
    while f_lo <= 0:  # targets that need sigma < 1: bracket from below as well
        hi, f_hi, lo = lo, f_lo, lo / 2
        if lo < 1e-3:
            return hi
        f_lo = f(lo)
    return _illinois(f, lo, f_lo, hi, f_hi, rel_tol)


def steps_within(event: SampledGaussianEvent, *, target_epsilon: float, delta: float,
                 accountant: Accountant = "rdp", steps_max: int = 10**8) -> int:
    """The most steps of ``event``'s mechanism (σ, q, sampling, adjacency; its own ``steps`` ignored)
    whose ε stays within ``target_epsilon``: 0 when even one step exceeds it, ``steps_max`` at most.

    ε grows with the number of steps, so bisection on it is exact (:func:`dpnb.search.largest`).

        >>> run = SampledGaussianEvent(noise_multiplier=1.1, sample_rate=256 / 60_000, steps=1)
        >>> t = steps_within(run, target_epsilon=2.6, delta=1e-5)
        >>> epsilon(run.with_steps(t), delta=1e-5) <= 2.6 < epsilon(run.with_steps(t + 1), delta=1e-5)
        True
    """
    target = check_number("target_epsilon", target_epsilon, low=0, low_open=True)

    def within(t: int) -> bool:
        return epsilon(event.with_steps(t), delta=delta, accountant=accountant) <= target

    if not within(1):
        return 0
    return int(largest(within, low=1, first=2, limit=steps_max, tolerance=1, integer=True))  # type: ignore[arg-type]


def prv_eps_error(target_epsilon: float) -> float:
    """The PRV error used to calibrate for ``target_epsilon``: 0.01, or a twentieth of a smaller target."""
    return min(0.01, target_epsilon / 20)


def _calibrate_prv(event: SampledGaussianEvent, *, target: float, delta: float, sigma_max: float,
                   rel_tol: float, max_seconds: float, unreachable: Callable[[], ParameterError]) -> float:
    err = prv_eps_error(target)
    deadline = time.monotonic() + max_seconds

    def f(sigma: float) -> float:
        eps = epsilon(event.with_noise(sigma), delta=delta, accountant="prv", prv_eps_error=err)
        return math.log(max(eps, 1e-300)) - math.log(target)

    try:  # RDP's σ is the usual upper end: PRV is tighter up to its error
        hi = calibrate_noise_multiplier(event, target_epsilon=target, delta=delta, accountant="rdp",
                                        sigma_max=sigma_max, rel_tol=rel_tol)
    except ParameterError:
        hi = 1.0
    f_hi = f(hi)
    while f_hi > 0:
        hi *= 2
        if hi > sigma_max:
            raise unreachable()
        if time.monotonic() > deadline:
            raise prv.AccountantLimit(f"PRV calibration found no sigma within {max_seconds:g} s "
                                      "(the RDP calibration is a valid answer)")
        f_hi = f(hi)
    lo = 0.85 * hi
    while (f_lo := f(lo)) <= 0:
        hi, f_hi, lo = lo, f_lo, 0.85 * lo
        if lo < 1e-3 or time.monotonic() > deadline:
            return hi
    return _illinois(f, lo, f_lo, hi, f_hi, rel_tol, deadline=deadline)


def _illinois(f: Callable[[float], float], lo: float, f_lo: float, hi: float, f_hi: float,
              rel_tol: float, deadline: float = math.inf) -> float:
    """Narrow a bracket f(lo) > 0 >= f(hi) by Illinois regula falsi in log σ; return its upper end.

    Stops early, returning the upper end (within budget), once ``time.monotonic()`` passes ``deadline``.
    """
    retained = 0  # which end survived the last step: +1 lo, -1 hi (Illinois bookkeeping)
    while hi - lo > rel_tol * hi and -f_hi > math.log1p(rel_tol) and time.monotonic() < deadline:
        a, b = math.log(lo), math.log(hi)
        x = b - f_hi * (b - a) / (f_hi - f_lo)
        x = min(max(x, a + 0.01 * (b - a)), b - 0.01 * (b - a))  # stay strictly inside
        mid = math.exp(x)
        f_mid = f(mid)
        if f_mid > 0:
            lo, f_lo = mid, f_mid
            if retained == -1:
                f_hi /= 2
            retained = -1
        else:
            hi, f_hi = mid, f_mid
            if retained == 1:
                f_lo /= 2
            retained = 1
    return hi
