"""Text generated from the run, placed where a reader looks first.

Every chapter opens with its question and a short *what you will see*: the number that answers
it. That number is only known at the end of the run, so the chapter computes the sentence where
the result is (:func:`headline`) and the opening cell pastes it with MyST-NB's ``glue:md``
directive, which Jupyter Book resolves when it builds the page::

    ```{glue:md} mnist-headline
    :format: myst
    ```

No result is typed into the opening: it is the run's own sentence. In ``jupyter lab`` the
directive shows as text; the sentence itself is displayed where it was computed.

Example::

    >>> headline("demo", "At ε = 1 the model reaches **97%**.", display=False)  # returns nothing to display
    >>> HEADLINES["demo"]
    'At ε = 1 the model reaches **97%**.'
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["headline", "glue_name", "HEADLINES", "mean_std", "over_seeds", "count", "against_spread"]

HEADLINES: dict[str, str] = {}  # the last opening sentence stored for each chapter in this process


def mean_std(mean: float, std: float | None, fmt: str) -> str:
    """``'mean ± std'`` in format ``fmt``; just the mean when ``std`` is missing (a single run).

        >>> mean_std(0.689, 0.0052, ".3f"), mean_std(0.97, None, ".1%")
        ('0.689 ± 0.005', '97.0%')
    """
    missing = std is None or std != std  # None or NaN
    return format(mean, fmt) + ("" if missing else f" ± {format(std, fmt)}")


def over_seeds(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample sd) of one value per seed; the sd is None for a single seed (nothing to spread).

        >>> over_seeds([0.5, 0.7]), over_seeds([0.5])
        ((0.6, 0.14142135623730948), (0.5, None))
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("over_seeds needs at least one value")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def count(n: int, noun: str) -> str:
    """``'3 seeds'``, ``'1 seed'``: a count with its noun in the right number.

        >>> count(3, "seed"), count(1, "seed")
        ('3 seeds', '1 seed')
    """
    return f"{n} {noun}{'' if n == 1 else 's'}"


def against_spread(diff: float, spread: float | None, *, band: float = 2.0) -> str:
    """What a difference from a baseline shows, against the baseline's seed-to-seed sd ``spread``:
    inside ``band`` sd it is not established; beyond it, it helps or hurts. Without a spread (one
    seed), it says so.

        >>> against_spread(0.093, 0.022), against_spread(-0.03, 0.022), against_spread(0.01, None)
        ('helps', 'inside the band of 2 sd: not established', 'no seed spread measured here')
    """
    if spread is None or spread != spread:
        return "no seed spread measured here"
    if abs(diff) <= band * spread:
        return f"inside the band of {band:g} sd: not established"
    return "helps" if diff > 0 else "hurts"


def glue_name(chapter: str) -> str:
    """The glue key of a chapter's opening sentence: ``"<chapter>-headline"``."""
    return f"{chapter}-headline"


def headline(chapter: str, text: str, *, display: bool = True) -> None:
    """Store ``text`` (Markdown) for the opening of ``chapter``'s page.

    With ``display`` (in a notebook), the text is also shown where it was computed. It returns
    ``None``, so that a call that ends a cell shows nothing more (a returned object would be
    displayed by Jupyter a second time).
    """
    from IPython.display import Markdown
    from IPython.display import display as show

    HEADLINES[chapter] = text
    md = Markdown(text)
    try:
        from myst_nb import glue
    except ImportError:  # pragma: no cover - myst-nb comes with jupyter-book
        glue = None
    if glue is not None and _in_kernel():
        glue(glue_name(chapter), md, display=False)
    if display and _in_kernel():
        show(md)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    return get_ipython() is not None
