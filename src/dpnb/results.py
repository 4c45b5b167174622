"""Tidy results: one row per headline number, one CSV per chapter.

Every chapter records what it measured with :class:`Results` and saves it at its end to
``$DPNB_RESULTS/<chapter>.csv`` (``dpnb book`` sets ``DPNB_RESULTS``; run by hand, a chapter
writes to ``results/`` below the working folder). Each ε comes with its δ and accountant.

Example::

    >>> import tempfile, os
    >>> r = Results(chapter="budget", profile="smoke")
    >>> r.add(experiment="reference", dataset="none", model="DP-SGD", dp=True, epsilon=2.6,
    ...       delta=1e-5, accountant="rdp (Poisson)", metric="epsilon", value=2.6, seconds=0.1)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     os.environ["DPNB_RESULTS"] = d
    ...     print(r.save().name)
    budget.csv
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dpnb.store import save_csv

COLUMNS = ["chapter", "experiment", "dataset", "model", "dp", "epsilon", "delta", "accountant",
           "metric", "value", "seconds", "profile", "seeds", "std"]


def results_dir() -> Path:
    """Where chapters write their CSV: ``$DPNB_RESULTS``, else ``./results``."""
    return Path(os.environ.get("DPNB_RESULTS") or "results")


class Results:
    """Collects a chapter's headline rows and writes them as one tidy CSV."""

    def __init__(self, *, chapter: str, profile: str) -> None:
        self.chapter = chapter
        self.profile = profile
        self.rows: list[dict[str, object]] = []

    def add(self, *, experiment: str, dataset: str, model: str, dp: bool, epsilon: float | None,
            delta: float | None, accountant: str, metric: str, value: float,
            seconds: float, seeds: int = 1, std: float | None = None) -> None:
        """Record one number. An ε always comes with its δ and accountant; rows that report no
        ε (non-private runs, cost measurements) pass ``epsilon=None, delta=None, accountant=""``.

        A number that is a mean over several seeds gives their count (``seeds``) and standard
        deviation (``std``); a single run keeps ``seeds=1`` and an empty ``std``."""
        if epsilon is not None and (delta is None or not accountant):
            raise ValueError("an epsilon needs its delta and accountant")
        self.rows.append(dict(chapter=self.chapter, experiment=experiment, dataset=dataset,
                              model=model, dp=dp, epsilon=epsilon, delta=delta,
                              accountant=accountant, metric=metric, value=value,
                              seconds=seconds, profile=self.profile, seeds=seeds,
                              std=None if seeds == 1 else std))

    def add_over_seeds(self, *, values: Sequence[float], **row: Any) -> tuple[float, float | None]:
        """Record the mean of ``values`` (one per seed) with their count and sample standard deviation
        (empty for one seed); ``row`` is :meth:`add`'s other fields. Returns (mean, std).

            >>> r = Results(chapter="demo", profile="smoke")
            >>> r.add_over_seeds(values=[0.5, 0.7], experiment="e", dataset="d", model="m", dp=False, epsilon=None,
            ...                  delta=None, accountant="", metric="x", seconds=0.0)
            (0.6, 0.14142135623730948)
        """
        vals = [float(v) for v in values]
        if not vals:
            raise ValueError("add_over_seeds needs at least one value")
        mean = statistics.fmean(vals)
        std = statistics.stdev(vals) if len(vals) > 1 else None
        self.add(value=mean, seeds=len(vals), std=std, **row)
        return mean, std

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def save(self, **tables: pd.DataFrame) -> Path:
        """Write ``<results_dir>/<chapter>.csv`` atomically and return its path.

        Each extra table ``name=frame`` goes to ``<chapter>_<name>.csv`` beside it. Chapters print
        only the file names, never the folder (a path of the machine that built the book).
        """
        out = results_dir()
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.chapter}.csv"
        save_csv(self.frame(), path)
        for name, frame in tables.items():
            save_csv(frame, out / f"{self.chapter}_{name}.csv")
        return path


class SectionClock:
    """Wall-clock time of each section of a chapter run, for its "what this run cost" table.

    :meth:`start` charges the time since the previous call to the section that was running and
    starts the next one; calling a section's name again adds to it. ``clock`` is the time source
    (``time.perf_counter``; a test passes its own).

        >>> ticks = iter([0.0, 2.0, 5.0, 6.0])
        >>> c = SectionClock(first="data", clock=lambda: next(ticks))
        >>> c.start("training"); c.start("data"); c.start("summary")
        >>> c.frame().to_dict("list")
        {'section': ['data', 'training'], 'seconds': [3.0, 3.0], 'minutes': [0.05, 0.05]}
    """

    def __init__(self, *, first: str, clock: Any = None) -> None:
        import time

        self._clock = clock or time.perf_counter
        self.seconds: dict[str, float] = {}
        self._section, self._since = first, self._clock()

    def start(self, name: str) -> None:
        now = self._clock()
        self.seconds[self._section] = self.seconds.get(self._section, 0.0) + now - self._since
        self._section, self._since = name, now

    def frame(self) -> pd.DataFrame:
        """One row per finished section: ``section``, ``seconds``, ``minutes`` (the running one is not in it)."""
        df = pd.DataFrame({"section": list(self.seconds), "seconds": list(self.seconds.values())})
        return df.assign(minutes=df["seconds"] / 60)
