"""The book's results page, generated from every chapter's results CSV when the book is built.

:func:`results_page` reads ``<build>/results/<chapter>.csv`` (the tidy rows each chapter saved with
:class:`dpnb.results.Results`) and writes MyST Markdown: one table per chapter with every number, its
spread over seeds, its ε with δ and accountant (sampling and adjacency in the label), and the
profile it was computed under; then the test accuracies beside the published figures for the same
dataset at a nearby ε, with the gap. Nothing on the page is typed by hand.

Example::

    >>> import pandas as pd, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> pd.DataFrame([dict(chapter="mnist", experiment="privacy-utility", dataset="MNIST", model="cnn", dp=True,
    ...                    epsilon=3.0, delta=1e-5, accountant="prv (Poisson sampling, add/remove)",
    ...                    metric="test_accuracy", value=0.97, seconds=60.0, profile="book", seeds=1, std=None)]
    ...              ).to_csv(d / "mnist.csv", index=False)
    >>> page = results_page(d, chapters=[("mnist", "MNIST")])
    >>> "97.00%" in page and "Tramèr & Boneh 2021" in page
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from dpnb.published import published

__all__ = ["results_page", "comparison", "family"]

DATASETS = {"MNIST": "mnist", "CIFAR-10": "cifar10"}  # the published() key of a results CSV's dataset


def _value(metric: str, value: float, std: float | None) -> str:
    from dpnb.prose import mean_std

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return mean_std(value, std, ".2%" if "accuracy" in metric or metric.startswith("tpr") else ".4g")


def _epsilon(row: pd.Series) -> str:
    if pd.isna(row["epsilon"]):
        return "no DP" if not row["dp"] else "none recorded"
    return f"{row['epsilon']:.3g} (δ = {row['delta']:g}, {row['accountant']})"


def family(text: str) -> str:
    """The kind of model a label names, so that only like is compared with like.

        >>> family("ScatterNet + linear"), family("3 ScatterNet: ScatterNet + CNN"), family("end-to-end CNN")
        ('ScatterNet + linear', 'ScatterNet + CNN', 'trained end to end')
    """
    t = text.lower()
    if "scatter" in t:
        return "ScatterNet + linear" if "linear" in t else "ScatterNet + CNN"
    if any(k in t for k in ("backbone", "resnet", "pretrained", "imagenet", "transfer")):
        return "pretrained backbone"
    return "trained end to end"


def comparison(frame: pd.DataFrame, *, tolerance: float = 0.25) -> pd.DataFrame:
    """Each published accuracy beside the book's best DP test accuracy on the same dataset, for the same
    kind of model (:func:`family`), whose ε is within ``tolerance`` (relative) of the published ε;
    ``gap`` is the book's minus the published, in points.

    Accountants differ between the two sides (both are named): the comparison is loose by design.
    """
    rows = []
    acc = frame[(frame["metric"] == "test_accuracy") & frame["dp"].astype(bool) & frame["epsilon"].notna()]
    for dataset, key in DATASETS.items():
        ours = acc[acc["dataset"].str.startswith(dataset)]
        kinds = (ours["experiment"] + " " + ours["model"].astype(str)).map(family)
        for pub in published(key).itertuples():
            near = ours[((ours["epsilon"] - pub.epsilon).abs() <= tolerance * pub.epsilon)
                        & (kinds == family(pub.model))]
            if near.empty:
                continue
            best = near.loc[near["value"].idxmax()]
            rows.append(dict(dataset=dataset, kind=family(pub.model), published=f"{pub.source}, {pub.model}",
                             published_epsilon=f"{pub.epsilon:g} ({pub.accountant})",
                             published_accuracy=pub.test_accuracy,
                             book=f"{best['chapter']}: {best['experiment']}", book_data=best["dataset"],
                             book_epsilon=_epsilon(best),
                             book_accuracy=best["value"], seeds=int(best.get("seeds", 1) or 1), profile=best["profile"],
                             gap=100 * (best["value"] - pub.test_accuracy)))
    return pd.DataFrame(rows)


def _table(df: pd.DataFrame, columns: dict[str, str]) -> str:
    head = "| " + " | ".join(columns.values()) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(str(r[c]).replace("|", "/") for c in columns) + " |\n" for _, r in df.iterrows())
    return head + body


def results_page(results_dir: Path, *, chapters: Sequence[tuple[str, str]]) -> str:
    """The MyST Markdown of the results page: ``chapters`` is ``[(name, title), ...]`` in book order."""
    frames = []
    for name, _ in chapters:
        path = Path(results_dir) / f"{name}.csv"
        if path.is_file():
            frames.append(pd.read_csv(path))
    out = ["# Results\n",
           "Every number the chapters measured, as saved in their results CSVs when this book was built "
           "(`book/_build/results/`). A value with ± is a mean over the stated number of seeds with its "
           "standard deviation; the others are single runs. Each ε carries its δ and accountant, whose label "
           "names the sampling scheme and the adjacency. The profile says where a number comes from: `book` is "
           "a 2-core CPU in minutes, far from the published runs' budgets.\n"]
    if not frames:
        return "".join(out) + "\nNo chapter has been executed in this build.\n"
    frame = pd.concat(frames, ignore_index=True)
    if "seeds" not in frame:
        frame["seeds"], frame["std"] = 1, None
    frame["seeds"] = frame["seeds"].fillna(1).astype(int)
    cmp = comparison(frame)
    if len(cmp):
        shown = pd.DataFrame({
            "published": [f"{r.published}: **{r.published_accuracy:.1%}** at ε = {r.published_epsilon}"
                          for r in cmp.itertuples()],
            "this book": [f"{r.book} ({r.book_data}; ε = {r.book_epsilon}; {r.seeds} seed{'s' * (r.seeds > 1)}, "
                          f"{r.profile} profile)" for r in cmp.itertuples()],
            "accuracy here": cmp["book_accuracy"].map("{:.2%}".format),
            "gap (points)": cmp["gap"].map("{:+.1f}".format)})
        out.append("\n## Beside the published figures\n\nThe book's best DP test accuracy on the same dataset, for "
                   "the same kind of model, at an ε within 25% of the published one. The accountants and the "
                   "training budgets differ (both are named), so the gap is a measurement of this build, not a "
                   "verdict on a method.\n\n")
        out.append(_table(shown, {c: c for c in shown.columns}))
    for name, title in chapters:
        part = frame[frame["chapter"] == name]
        if part.empty:
            continue
        what = [f"{r.experiment} ({r.model}; {r.dataset})" for r in part.itertuples()]
        shown = pd.DataFrame({
            "experiment": what, "metric": part["metric"].tolist(),
            "value": [_value(m, v, sd) + ("" if n == 1 else f" ({n} seeds)")
                      for m, v, sd, n in zip(part["metric"], part["value"], part["std"], part["seeds"])],
            "ε": [_epsilon(r) for _, r in part.iterrows()]})
        profiles = ", ".join(sorted(part["profile"].astype(str).unique()))
        out.append(f"\n## {title}\n\nProfile: `{profiles}`.\n\n")
        out.append(_table(shown, {c: c for c in shown.columns}))
    return "".join(out)
