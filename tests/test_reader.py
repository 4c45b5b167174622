"""What a reader sees: progress where a person watches, none in the pages; files named, not paths."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from dpnb import book, progress
from dpnb.results import Results


@pytest.mark.parametrize("value, shown", [("0", False), ("off", False), ("False", False), ("1", True), ("", True)])
def test_progress_switch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str,
                         shown: bool) -> None:
    monkeypatch.setenv(progress.ENV, value)
    assert list(progress.progress(range(3), desc="work", mininterval=0)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert ("work" in err) == shown  # a terminal bar on stderr, or nothing at all


def test_silent_bar_keeps_the_methods_callers_use(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(progress.ENV, "0")
    bar = progress.progress(range(2), desc="epochs")
    for _ in bar:
        bar.set_postfix({"loss": 1.0})
    assert len(bar) == 2 and capsys.readouterr().err == ""


def test_injected_parameters_cell_is_removed_from_the_page(tmp_path: Path) -> None:
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "x = 1"},
                    {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": "x = 2"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    book.hide_injected_parameters(path)
    tags = [c["metadata"]["tags"] for c in json.loads(path.read_text())["cells"]]
    assert tags == [["parameters"], ["injected-parameters", "remove-cell"]]
    assert not list(tmp_path.glob("*.tmp"))


def test_results_save_writes_extra_tables_beside_the_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPNB_RESULTS", str(tmp_path))
    r = Results(chapter="demo", profile="smoke")
    r.add(experiment="e", dataset="d", model="m", dp=False, epsilon=None, delta=None, accountant="", metric="x",
          value=1.0, seconds=0.0)
    path = r.save(history=pd.DataFrame({"step": [1, 2]}))
    assert path.name == "demo.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.csv", "demo_history.csv"]
    assert pd.read_csv(tmp_path / "demo_history.csv")["step"].tolist() == [1, 2]


def test_a_mean_over_seeds_records_its_count_and_spread_and_one_seed_no_spread() -> None:
    r = Results(chapter="demo", profile="smoke")
    row = dict(experiment="e", dataset="d", model="m", dp=True, epsilon=1.0, delta=1e-5, accountant="prv",
               metric="x", seconds=0.0)
    assert r.add_over_seeds(values=[0.2, 0.4, 0.9], **row) == pytest.approx((0.5, 0.360555), rel=1e-5)
    assert r.add_over_seeds(values=[0.3], **row) == (0.3, None)
    df = r.frame()
    assert df["seeds"].tolist() == [3, 1] and df["std"].iloc[0] == pytest.approx(0.360555, rel=1e-5)
    assert pd.isna(df["std"].iloc[1])
    with pytest.raises(ValueError):
        r.add_over_seeds(values=[], **row)


def test_page_stylesheet_wraps_code_and_outputs() -> None:
    assert "pre-wrap" in book.PAGE_CSS and "cell_input" in book.PAGE_CSS and "cell_output" in book.PAGE_CSS
