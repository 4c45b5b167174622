"""Every nbs/NAME.ipynb is the jupytext twin of nbs/NAME.py, committed without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))


def _cells(nb: dict) -> list[tuple[str, str, list[str]]]:
    return [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"],
             sorted(c.get("metadata", {}).get("tags", []))) for c in nb["cells"]]


def test_every_py_has_a_notebook_and_back() -> None:
    assert NOTEBOOKS, "no notebooks under nbs/"
    assert sorted(p.stem for p in (ROOT / "nbs").glob("*.py")) == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync(ipynb: Path) -> None:
    from_py = jupytext.read(ipynb.with_suffix(".py"))
    raw = json.loads(ipynb.read_text())
    assert _cells(raw) == _cells(json.loads(jupytext.writes(from_py, fmt="ipynb")))


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_outputs_and_one_parameters_cell(ipynb: Path) -> None:
    nb = json.loads(ipynb.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_listed_in_toc(ipynb: Path) -> None:
    from dpnb.book import chapters

    assert ipynb.stem in [c.name for c in chapters(ROOT)]
