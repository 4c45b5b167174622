"""One search, written once: the largest value at which a monotone condition still holds.

Used where the book inverts a monotone quantity without a closed form: the most steps within a
privacy budget (:func:`dpnb.privacy.steps_within`) and the largest ε an audit rejects
(:func:`dpnb.audit.epsilon_lower_bound`).

Example::

    >>> largest(lambda x: x * x <= 2, low=0.0, first=1.0, limit=10.0, tolerance=1e-9) - 2 ** 0.5 < 1e-8
    True
    >>> largest(lambda t: t <= 37, low=1, first=2, limit=10**6, tolerance=1, integer=True)
    37
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["largest"]


def largest(holds: Callable[[float], bool], *, low: float, first: float, limit: float, tolerance: float,
            integer: bool = False) -> float:
    """The largest x in [low, limit] with ``holds(x)``, for a condition that holds up to a threshold and fails
    above it; ``holds(low)`` must be true (the caller checks).

    Doubling from ``first`` brackets the threshold, then bisection narrows it to ``tolerance``
    (integers: to the exact value, ``tolerance=1``). Returns ``limit`` when the condition still holds there.
    """
    lo, hi = low, first
    while holds(hi):
        lo, hi = hi, 2 * hi
        if hi > limit:
            if holds(limit):
                return limit
            hi = limit
            break
    while hi - lo > tolerance:
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo
