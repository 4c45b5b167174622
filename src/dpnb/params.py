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


# --- declared parameters: one rule per parameter, checked in order --------------------------------------

Bound = Any  # a number, None, or a function of the values checked so far (e.g. ``lambda p: p["n_train"]``)


def _bound(b: Bound, done: dict[str, Any]) -> Any:
    return b(done) if callable(b) else b


class Rule:
    """One parameter's check: ``rule(name, value, done)`` returns the checked value or raises
    :class:`ParameterError`; ``done`` holds the parameters checked before it, for bounds that
    depend on them."""

    def __call__(self, name: str, value: Any, done: dict[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class Int(Rule):
    """A whole number in ``[low, high]``."""

    def __init__(self, low: Bound = None, high: Bound = None) -> None:
        self.low, self.high = low, high

    def __call__(self, name: str, value: Any, done: dict[str, Any]) -> int:
        return check_int(name, value, low=_bound(self.low, done), high=_bound(self.high, done))


class Number(Rule):
    """A finite number between ``low`` and ``high``; ``open="low"``, ``"high"`` or ``"both"`` excludes ends.

        >>> validate({"delta": Number(0, 1, open="both")}, {"delta": 1e-5})
        {'delta': 1e-05}
    """

    def __init__(self, low: Bound = None, high: Bound = None, *, open: str = "") -> None:
        self.low, self.high, self.open = low, high, open

    def __call__(self, name: str, value: Any, done: dict[str, Any]) -> float:
        return check_number(name, value, low=_bound(self.low, done), high=_bound(self.high, done),
                            low_open=self.open in ("low", "both"), high_open=self.open in ("high", "both"))


class Positive(Number):
    """A finite number > 0."""

    def __init__(self) -> None:
        super().__init__(0, None, open="low")


class Choice(Rule):
    """One of ``options`` (a sequence, or a function of the values checked so far)."""

    def __init__(self, options: Any) -> None:
        self.options = options

    def __call__(self, name: str, value: Any, done: dict[str, Any]) -> Any:
        return check_choice(name, value, _bound(self.options, done))


class Flag(Choice):
    """``True`` or ``False``."""

    def __init__(self) -> None:
        super().__init__((True, False))


class Each(Rule):
    """A non-empty list whose every item passes ``rule`` (a list given as text gets the ``-y`` hint)."""

    def __init__(self, rule: Rule, *, empty: bool = False) -> None:
        self.rule, self.empty = rule, empty

    def __call__(self, name: str, value: Any, done: dict[str, Any]) -> list[Any]:
        if self.empty and isinstance(value, (list, tuple)) and not value:
            return []
        return check_each(name, value, lambda n, v: self.rule(n, v, done))


class Maybe(Rule):
    """``None``, or a value that passes ``rule``."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def __call__(self, name: str, value: Any, done: dict[str, Any]) -> Any:
        return None if value is None else self.rule(name, value, done)


class Unless(Rule):
    """``None`` when the parameter ``other`` (checked before) is set, else ``rule``: e.g. a target ε that a
    given noise multiplier overrides."""

    def __init__(self, other: str, rule: Rule) -> None:
        self.other, self.rule = other, rule

    def __call__(self, name: str, value: Any, done: dict[str, Any]) -> Any:
        return None if done.get(self.other) is not None else self.rule(name, value, done)


class Device(Rule):
    """``auto``, ``cpu`` or ``cuda``, resolved to the device that will run (``cuda`` without CUDA stops)."""

    def __call__(self, name: str, value: Any, done: dict[str, Any]) -> str:
        from dpnb.devices import select_device

        return select_device(value).type


def validate(rules: dict[str, Rule], values: dict[str, Any]) -> dict[str, Any]:
    """Check every parameter named in ``rules``, in order, and return the checked values.

    A parameter missing from ``values`` is an error too, so that a chapter cannot forget one.

        >>> validate({"n": Int(1), "k": Int(1, high=lambda p: p["n"])}, {"n": 10, "k": 3.0})
        {'n': 10, 'k': 3}
        >>> validate({"n": Int(1), "k": Int(1, high=lambda p: p["n"])}, {"n": 10, "k": 30})
        Traceback (most recent call last):
        ...
        dpnb.params.ParameterError: k must be an integer in [1, 10], got 30
    """
    missing = [k for k in rules if k not in values]
    if missing:
        raise ParameterError(f"parameters missing: {', '.join(missing)}")
    done: dict[str, Any] = {}
    for name, rule in rules.items():
        done[name] = rule(name, values[name], done)
    return done
