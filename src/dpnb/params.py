"""Parameter checks shared by the CLI, the library and the notebooks' ``parameters`` cells.

Every check raises :class:`ParameterError` with one line that names the parameter, the
allowed range and the value received, so that a bad ``papermill -p`` or CLI flag fails in
the first cell with a message a reader can act on.

Example::

    >>> from dpnb.params import check_number
    >>> check_number("delta", 1e-5, low=0, high=1, low_open=True, high_open=True)
    1e-05
    >>> check_number("delta", 2, low=0, high=1, low_open=True, high_open=True)
    Traceback (most recent call last):
    ...
    dpnb.params.ParameterError: delta must be in (0, 1), got 2
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any


class ParameterError(ValueError):
    """A parameter is outside its allowed range; the message is one line."""


class Unavailable(RuntimeError):
    """Data or weights are neither on disk nor downloadable; the one-line message says how to provide them."""


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "a finite number"


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite number within the given bounds."""
    allowed = _range(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ParameterError(f"{name} must be a number {allowed}, got {value!r}") from None
    v = float(value)
    bad = not math.isfinite(v)
    bad |= low is not None and (v < low or (low_open and v == low))
    bad |= high is not None and (v > high or (high_open and v == high))
    if bad:
        raise ParameterError(f"{name} must be {allowed}, got {value:g}")
    return v


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int if it is a whole number within ``[low, high]``."""
    allowed = _range(low, high, False, False)
    if isinstance(value, bool):
        raise ParameterError(f"{name} must be an integer {allowed}, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be an integer {allowed}, got {value!r}") from None
    if not math.isfinite(f) or not f.is_integer():
        raise ParameterError(f"{name} must be an integer {allowed}, got {value!r}")
    v = int(f)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ParameterError(f"{name} must be an integer {allowed}, got {v}")
    return v


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``."""
    options = tuple(choices)
    if value not in options:
        raise ParameterError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def check_each(name: str, values: Any, check: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """``[check(name, v, *args, **kwargs) for v in values]`` after checking that ``values`` is a list.

    A list given on papermill's command line with ``-p`` arrives as a string (``-p x "[1, 2]"``
    hands the notebook ``'[1, 2]'``); that gets a message showing the ``-y`` form that works.

        >>> check_each("target_epsilons", [1, 8], check_number, low=0, low_open=True)
        [1.0, 8.0]
        >>> check_each("target_epsilons", "[-1]", check_number, low=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dpnb.params.ParameterError: target_epsilons must be a list, got the string '[-1]' (papermill -p ...
    """
    if isinstance(values, (str, bytes)):
        raise ParameterError(f"{name} must be a list, got the string {values!r} "
                             f'(papermill -p passes text: give lists as -y "{name}: [...]")')
    if not isinstance(values, (list, tuple)) or not values:
        raise ParameterError(f"{name} must be a non-empty list, got {values!r}")
    return [check(name, v, *args, **kwargs) for v in values]


def check_budget(*, dp: Any, noise_multiplier: Any, target_epsilon: Any) -> None:
    """With ``dp`` true, exactly one of ``noise_multiplier`` (σ > 0) and ``target_epsilon`` (> 0) must be set."""
    if not dp:
        return
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ParameterError("with dp=True give exactly one of noise_multiplier and target_epsilon")
    if noise_multiplier is not None:
        check_number("noise_multiplier", noise_multiplier, low=0, low_open=True)
    else:
        check_number("target_epsilon", target_epsilon, low=0, low_open=True)
