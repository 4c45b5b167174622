"""dpnb sweep: a grid of papermill runs on Dask, one tidy CSV, failures kept apart, re-runs cached;
and the engine underneath (dpnb.engine) on its own."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pandas as pd
import pytest

from conftest import ROOT, run_dpnb
from dpnb import engine, sweep
from dpnb.params import ParameterError


def _square_notebook(path: Path) -> Path:
    """A notebook with a parameters cell that records x² as a result, and refuses x = 2."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1\nlabel = 'square'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from dpnb.results import Results\n"
        "if x == 2:\n"
        "    raise ValueError('x = 2 is refused')\n"
        "r = Results(chapter='square', profile='book')\n"
        "r.add(experiment=label, dataset='none', model='x^2', dp=False, epsilon=None, delta=None, accountant='',\n"
        "      metric='value', value=x * x, seconds=0.0)\n"
        "r.save()\n")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_grid_parsing_and_points() -> None:
    grid = sweep.parse_grid([["x", "1", "2.5", "1e-5"], ["label", "a", "null", "[0, 1]"]])
    assert grid == {"x": [1, 2.5, 1e-5], "label": ["a", None, [0, 1]]}
    assert len(list(sweep.grid_points(grid))) == 9
    with pytest.raises(ParameterError, match="-p needs a parameter name and at least one value"):
        sweep.parse_grid([["x"]])
    with pytest.raises(ParameterError, match="-p x is given twice"):
        sweep.parse_grid([["x", "1"], ["x", "2"]])
    with pytest.raises(ParameterError, match="the grid has 1331 points; at most 1000"):
        sweep.parse_grid([[n, *map(str, range(11))] for n in "abc"])


def test_a_bad_grid_fails_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dpnb.cli import main

    out = tmp_path / "out"
    for args, message in [
        (["-p", "batch_size", "256", "0"], "dpnb sweep: error: point batch_size=0: batch_size must be an integer in "
                                           "[1, 60000], got 0\n"),
        (["-p", "epsilon", "1", "3"], "-p epsilon: mnist.ipynb has no such parameter"),
        ([], "give at least one -p NAME VALUE"),
    ]:
        assert main(["sweep", str(ROOT / "nbs" / "mnist.ipynb"), *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (args, err)
    assert main(["sweep", str(ROOT / "nbs" / "nope.ipynb"), "-p", "x", "1", "--out", str(out)]) == 2
    assert "NOTEBOOK must be an existing .ipynb file" in capsys.readouterr().err
    assert not out.exists()


def test_sweep_runs_every_point_keeps_failures_apart_and_skips_done_points(tmp_path: Path) -> None:
    nb = _square_notebook(tmp_path / "square.ipynb")
    out = tmp_path / "out"
    grid = ["-p", "x", "1", "2", "3", "-p", "label", "a"]
    proc = run_dpnb("sweep", str(nb), *grid, "--workers", "2", "--out", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[dpnb sweep] square: 3 points (book profile) on 2 local workers" in proc.stdout
    assert "2 of 3 points done" in proc.stdout
    assert "dpnb sweep: point x=2,label=a failed: point x=2,label=a failed in cell 2" in proc.stdout
    assert "ValueError: x = 2 is refused" in proc.stdout
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns[:2]) == ["x", "label"]  # the point's parameters lead
    assert sorted(zip(results["x"], results["label"], results["value"])) == [(1, "a", 1), (3, "a", 9)]
    points = pd.read_csv(out / "points.csv")
    assert list(points["state"]) == ["executed", "failed", "executed"]
    assert points.loc[points["state"] == "failed", "error"].str.contains("x = 2 is refused").all()
    assert (out / "square_x.png").stat().st_size > 10_000  # one figure per numeric swept parameter
    assert not (out / "square_label.png").exists()
    assert (out / "points" / "x=2,label=a" / "failed.ipynb").is_file()
    assert "x = 3" in (out / "points" / "x=3,label=a" / "square.ipynb").read_text()  # papermill's injected cell
    # again: the two done points are not re-executed, the failed one is
    proc = run_dpnb("sweep", str(nb), *grid, "--workers", "2", "--out", str(out))
    assert proc.returncode == 1
    assert proc.stdout.count(": cached in") == 2 and proc.stdout.count("FAILED") == 1
    assert len(pd.read_csv(out / "results.csv")) == 2


def _fail_on(x: int) -> int:
    if x == 1:
        raise ValueError("one")
    return x


def test_engine_keeps_the_order_and_stops_after_a_failure_when_asked() -> None:
    jobs = [engine.Job(i, _fail_on, (i,)) for i in range(4)]
    with engine.connect(workers=1) as client:
        assert engine.capacity(client) == 1
        every = engine.run(jobs, client=client)
        first = engine.run(jobs, client=client, stop_after_failure=True)
    assert [o.key for o in every] == [0, 1, 2, 3]
    assert [o.value for o in every if o.ok] == [0, 2, 3]
    assert isinstance(every[1].error, ValueError) and str(every[1].error) == "one"
    assert [o.key for o in first] == [0, 1]  # one slot: nothing started after job 1 failed


def test_each_point_starts_from_the_profile_and_is_checked_by_the_chapter_rules() -> None:
    from dpnb import book

    nb = ROOT / "nbs" / "mnist.ipynb"
    base = book.profile_parameters(ROOT, "smoke", "mnist")
    full = sweep.check_points(nb, {"seed": [0, 1]}, base)
    assert [p["seed"] for p in full] == [0, 1]
    assert all(p["train_limit"] == 2000 and p["profile"] == "smoke" for p in full)
    with pytest.raises(ParameterError, match="point validation_size=1500: validation_size must be an integer "
                                             r"in \[100, 1000\], got 1500"):
        sweep.check_points(nb, {"validation_size": [1500]}, base)  # valid in the book profile, not on 2,000 images
    with pytest.raises(ParameterError, match="-p profile: choose the profile with --profile"):
        sweep.check_points(nb, {"profile": ["gpu"]}, base)
