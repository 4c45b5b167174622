"""dpnb.summary: the generated results page compares like with like and types nothing by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dpnb.summary import comparison, results_page


def _row(**kw: object) -> dict[str, object]:
    base = dict(chapter="cifar10", experiment="x", dataset="CIFAR-10", model="m", dp=True, epsilon=3.0, delta=1e-5,
                accountant="prv (Poisson sampling, add/remove)", metric="test_accuracy", value=0.5, seconds=1.0,
                profile="book", seeds=1, std=None)
    return base | kw


def test_comparison_matches_kind_of_model_and_epsilon() -> None:
    frame = pd.DataFrame([_row(experiment="3 ScatterNet: ScatterNet + linear", value=0.65),
                          _row(experiment="1 end-to-end", model="cifar_cnn", value=0.40),
                          _row(experiment="1 end-to-end", model="cifar_cnn", value=0.45, epsilon=8.0),
                          _row(experiment="non-private", dp=False, epsilon=None, value=0.7)])
    cmp = comparison(frame)
    linear = cmp[cmp["published"].str.contains("ScatterNet \\+ linear")].iloc[0]
    assert linear["book_accuracy"] == 0.65 and round(linear["gap"], 6) == round(100 * (0.65 - 0.670), 6)
    end_to_end = cmp[cmp["published"] == "Tramèr & Boneh 2021, end-to-end CNN"].iloc[0]
    assert end_to_end["book_accuracy"] == 0.40  # the epsilon = 8 run is not compared with an epsilon = 3 figure
    assert not cmp["published"].str.contains("ScatterNet \\+ CNN").any()  # no ScatterNet + CNN run here


def test_results_page_lists_every_row_with_its_spread(tmp_path: Path) -> None:
    pd.DataFrame([_row(chapter="audit", experiment="one-run audit", metric="epsilon_lower_bound", value=0.5,
                       seeds=3, std=0.25)]).to_csv(tmp_path / "audit.csv", index=False)
    page = results_page(tmp_path, chapters=[("audit", "Auditing"), ("mnist", "MNIST")])
    assert "## Auditing" in page and "0.5 ± 0.25 (3 seeds)" in page
    assert "## MNIST" not in page  # a chapter without results gets no section
    assert "No chapter" not in page
    assert "No chapter" in results_page(tmp_path / "empty", chapters=[("mnist", "MNIST")])
