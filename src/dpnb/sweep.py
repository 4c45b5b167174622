"""``dpnb sweep``: every point of a parameter grid of a chapter, executed on Dask distributed.

::

    dpnb sweep nbs/mnist.ipynb -p target_epsilon 1 3 8 -p seed 0 1 2 --workers 2
    dpnb sweep nbs/budget.ipynb -p noise_multiplier 0.8 1.1 2 --profile smoke --scheduler tcp://host:8786

The grid is the product of the ``-p NAME VALUE ...`` lists (values are read as numbers, ``null``,
``true``/``false`` or YAML lists such as ``[0,1]``). Each point is the chosen profile's parameters
(:func:`dpnb.book.profile_parameters`) with the point's values on top, checked before anything
runs: a name the notebook's ``parameters`` cell does not have, or a value the chapter's rules
(:mod:`dpnb.chapters`) reject, stops the sweep with one line and nothing written.

Every point is one job on the engine of :mod:`dpnb.engine` (a ``LocalCluster`` of ``--workers``
processes, or the scheduler at ``--scheduler``), executed by papermill with the same mechanism and
content-keyed cache as ``dpnb book`` (:func:`dpnb.book.execute_notebook`): a point whose notebook,
parameters and ``dpnb`` source are unchanged since it last succeeded is not run again. A point
that fails is reported with its error and does not stop the others. The output folder
(``--out``, default ``book/_build/sweeps/<notebook>``) holds:

- ``points/<point>/<notebook>.ipynb`` and the tables that run saved (``<notebook>.csv``, ...);
- ``results.csv``: every successful point's ``<notebook>.csv`` rows, with the swept parameters as
  columns (a name that clashes with a results column gets the prefix ``param_``);
- ``points.csv``: one row per point, its state (executed, cached, failed), seconds and error;
- ``<notebook>_<parameter>.png``: per swept parameter, each recorded metric against it (mean and
  standard deviation over the other swept parameters).

Example (the grid and its checks; no notebook runs)::

    >>> parse_grid([["target_epsilon", "1", "3"], ["seed", "0", "1"]])
    {'target_epsilon': [1, 3], 'seed': [0, 1]}
    >>> [p for p in grid_points({"a": [1, 2], "b": ["x"]})]
    [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
    >>> point_name({"target_epsilon": 3.0, "seeds": [0, 1]})
    'target_epsilon=3.0,seeds=0-1'
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from dpnb.book import PROFILES, ChapterFailed, execute_notebook, find_root, notebook_defaults, profile_parameters
from dpnb.params import ParameterError
from dpnb.results import COLUMNS
from dpnb.store import atomic_save, save_csv

__all__ = ["parse_value", "parse_grid", "grid_points", "point_name", "notebook_defaults", "check_points",
           "collect", "plot", "sweep", "add_arguments", "main"]

MAX_POINTS = 1000  # a grid larger than this is almost surely a typo


def parse_value(text: str) -> Any:
    """A command-line value: an int, a float (``1e-5`` too), or YAML (``null``, ``true``, ``[0,1]``, text).

        >>> [parse_value(s) for s in ("3", "1e-5", "null", "[0, 1]", "wgan-gp")]
        [3, 1e-05, None, [0, 1], 'wgan-gp']
    """
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_grid(pairs: Sequence[Sequence[str]]) -> dict[str, list[Any]]:
    """``[[name, value, ...], ...]`` (the ``-p`` options) → ``{name: [values]}``, in the order given."""
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        if len(pair) < 2:
            raise ParameterError(f"-p needs a parameter name and at least one value; got {' '.join(pair)!r}")
        name, *values = pair
        if name in grid:
            raise ParameterError(f"-p {name} is given twice; list all its values after one -p")
        grid[name] = [parse_value(v) for v in values]
    if not grid:
        raise ParameterError("give at least one -p NAME VALUE [VALUE ...]")
    size = 1
    for values in grid.values():
        size *= len(values)
    if size > MAX_POINTS:
        raise ParameterError(f"the grid has {size} points; at most {MAX_POINTS} are allowed")
    return grid


def grid_points(grid: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Every combination of the grid's values, the first parameter varying slowest."""
    names = list(grid)
    for combo in itertools.product(*(grid[n] for n in names)):
        yield dict(zip(names, combo))


def _slug(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_slug(v) for v in value)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", str(value))


def point_name(point: dict[str, Any]) -> str:
    """A folder name for a point, readable when short: ``name=value,...`` (else a hash)."""
    name = ",".join(f"{k}={_slug(v)}" for k, v in point.items())
    if len(name) <= 120:
        return name
    return "point-" + hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:12]


def check_points(notebook: Path, grid: dict[str, list[Any]], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The full parameters of every point, each checked by the chapter's rules before anything runs."""
    from dpnb import chapters

    defaults = notebook_defaults(notebook)
    base = {k: v for k, v in base.items() if k != "profile" or "profile" in defaults}  # a notebook of one's own
    unknown = [n for n in grid if n not in defaults]
    if unknown:
        raise ParameterError(f"-p {unknown[0]}: {notebook.name} has no such parameter "
                             f"(it has {', '.join(sorted(defaults))})")
    if "profile" in grid:
        raise ParameterError("-p profile: choose the profile with --profile")
    full = []
    for point in grid_points(grid):
        params = {**base, **point}
        if notebook.stem in chapters.RULES:
            try:
                chapters.parameters(notebook.stem, {**defaults, **params})
            except ParameterError as e:
                raise ParameterError(f"point {point_name(point)}: {e}") from None
        full.append(params)
    return full


def _run_point(root: Path, notebook: Path, params: dict[str, Any], folder: Path, cache: Path, force: bool,
               threads: int | None) -> tuple[str, float]:
    t0 = time.perf_counter()
    state = execute_notebook(root, notebook, name=notebook.stem, parameters=params,
                             executed=folder / f"{notebook.stem}.ipynb", results=folder,
                             failed=folder / "failed.ipynb", cache=cache, label=f"point {folder.name}",
                             force=force, threads=threads)
    return state, time.perf_counter() - t0


def collect(out: Path, name: str, points: Sequence[dict[str, Any]], done: Sequence[bool]) -> pd.DataFrame:
    """Every successful point's ``<name>.csv`` with the point's parameters as leading columns."""
    frames = []
    for point, ok in zip(points, done):
        csv = out / "points" / point_name(point) / f"{name}.csv"
        if not ok or not csv.is_file():
            continue
        df = pd.read_csv(csv)
        for i, (k, v) in enumerate(point.items()):
            col = f"param_{k}" if k in COLUMNS else k
            df.insert(i, col, json.dumps(v) if isinstance(v, (list, dict)) else v)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plot(results: pd.DataFrame, grid: dict[str, list[Any]], out: Path, name: str) -> list[Path]:
    """Per swept number (two values or more), each metric against it: one panel per metric, one line per
    experiment, model and accountant (at most eight; a series with several rows at one point is left
    out), mean ± sd over the other swept parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    paths: list[Path] = []
    if results.empty:
        return paths
    df = results.copy()
    acc = df["accountant"].fillna("").astype(str).str.split(" ").str[0]
    df["series"] = (df["experiment"].astype(str) + " (" + df["model"].astype(str) + ")"
                    + acc.map(lambda a: f", {a}" if a else "")).str.slice(0, 60)
    cols = [f"param_{k}" if k in COLUMNS else k for k in grid]
    keyed = df.assign(**{c: df[c].astype(str) for c in cols})
    # a series with several rows at one point (e.g. one per target epsilon) has no single value to plot
    ambiguous = keyed.groupby(["series", "metric", *cols]).size().loc[lambda n: n > 1].reset_index()["series"]
    df = df[~df["series"].isin(set(ambiguous))]
    top = df["series"].drop_duplicates().head(8)  # a legend beyond eight lines is unreadable
    df = df[df["series"].isin(top)]
    if df.empty:
        return paths
    for param, values in grid.items():
        col = f"param_{param}" if param in COLUMNS else param
        if len(values) < 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        metrics = list(df["metric"].drop_duplicates())
        g = sns.relplot(data=df, x=col, y="value", hue="series", col="metric", col_wrap=min(3, len(metrics)),
                        kind="line", marker="o", errorbar="sd", facet_kws=dict(sharey=False), height=3.2, aspect=1.3)
        g.set_axis_labels(param, "value")
        g.set_titles("{col_name}")
        eps = df["epsilon"].dropna()
        note = f"; epsilon {eps.min():.3g} to {eps.max():.3g} (delta, accountant: results.csv)" if len(eps) else ""
        g.figure.suptitle(f"{name}: sweep over {param}{note}", y=1.03)
        path = out / f"{name}_{param}.png"
        atomic_save(path, lambda p, fig=g.figure: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
        plt.close(g.figure)
        paths.append(path)
    return paths


def sweep(*, notebook: Path, grid: dict[str, list[Any]], profile: str = "book", workers: int = 1,
          scheduler: str | None = None, threads: int | None = None, out: Path | None = None,
          force: bool = False) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Run the grid; returns (``points.csv`` as a frame, [(point, error)] of the failed points)."""
    import os

    from dpnb import engine

    root = find_root()
    notebook = notebook.resolve()
    if not notebook.is_file() or notebook.suffix != ".ipynb":
        raise ParameterError(f"NOTEBOOK must be an existing .ipynb file; got {notebook}")
    if profile not in PROFILES:
        raise ParameterError(f"--profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    if workers < 1 or (threads is not None and threads < 1):
        raise ParameterError(f"--workers and --threads must be integers >= 1; got {workers} and {threads}")
    name = notebook.stem
    base = profile_parameters(root, profile, name)
    full = check_points(notebook, grid, base)  # before anything runs or is written
    points = list(grid_points(grid))
    out = (out or root / "book" / "_build" / "sweeps" / name).resolve()
    cache = root / "book" / "_build" / "cache"
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    jobs = [engine.Job(i, _run_point, (root, notebook, params, out / "points" / point_name(pt), cache, force,
                                       threads))
            for i, (pt, params) in enumerate(zip(points, full))]
    total = len(jobs)
    finished = 0

    def done(o: engine.Outcome) -> None:
        nonlocal finished
        finished += 1
        what = f"{o.value[0]} in {o.value[1]:.1f} s" if o.ok else f"FAILED: {o.error}"
        print(f"[dpnb sweep] {finished}/{total} {point_name(points[o.key])}: {what}", flush=True)

    print(f"[dpnb sweep] {name}: {total} point{'s' if total > 1 else ''} ({profile} profile) on "
          f"{scheduler or f'{workers} local worker' + ('s' if workers > 1 else '')}", flush=True)
    with engine.connect(workers=workers, scheduler=scheduler) as client:
        outcomes = engine.run(jobs, client=client, slots=None if scheduler else workers, on_done=done)
    rows, failures = [], []
    for o in outcomes:
        pt = points[o.key]
        error = "" if o.ok else (str(o.error) if isinstance(o.error, ChapterFailed)
                                 else f"{type(o.error).__name__}: {o.error}")
        if error:
            failures.append((point_name(pt), error))
        rows.append(dict(point=point_name(pt), **{k: json.dumps(v) if isinstance(v, list) else v
                                                  for k, v in pt.items()},
                         state=o.value[0] if o.ok else "failed", seconds=o.value[1] if o.ok else o.seconds,
                         error=error))
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    save_csv(table, out / "points.csv")
    results = collect(out, name, points, [o.ok for o in outcomes])
    if not results.empty:
        save_csv(results, out / "results.csv")
    figures = plot(results, grid, out, name)
    print(f"[dpnb sweep] {total - len(failures)} of {total} points done; results.csv, points.csv"
          + "".join(f", {f.name}" for f in figures) + f" in {out}", flush=True)
    return table, failures


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", metavar="NOTEBOOK", help="the chapter, e.g. nbs/mnist.ipynb")
    p.add_argument("-p", "--parameter", nargs="+", action="append", default=[], metavar=("NAME", "VALUE"),
                   dest="grid", help="a swept parameter and its values (repeat -p for a grid)")
    p.add_argument("--profile", choices=PROFILES, default="book", help="the profile each point starts from")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=1, metavar="N", help="local Dask worker processes (default 1)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="a running Dask scheduler (tcp://host:8786); its workers need this checkout and the data "
                        "at the same paths")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="threads per point (default: cores // workers)")
    p.add_argument("--out", default=None, help="output folder (default book/_build/sweeps/NOTEBOOK)")
    p.add_argument("--force", action="store_true", help="re-run points whose cached run is current")


def main(a: argparse.Namespace) -> int:
    grid = parse_grid(a.grid)
    _, failures = sweep(notebook=Path(a.notebook), grid=grid, profile=a.profile, workers=a.workers,
                        scheduler=a.scheduler, threads=a.threads, out=Path(a.out) if a.out else None, force=a.force)
    for point, error in failures:
        print(f"dpnb sweep: point {point} failed: {error}", flush=True)
    return 1 if failures else 0
