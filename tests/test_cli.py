"""`dpnb privacy` and `dpnb bench`: the numbers, the JSON, and a one-line error with exit 2 for bad input.

The console script itself runs in a fresh process in a few tests (the reference run, one bad input, the
bench); the others call `dpnb.cli.main` in this process, which answers the same way without paying
4 to 6 s of imports per case.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from conftest import run_dpnb

Dpnb = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def dpnb(capsys: pytest.CaptureFixture[str]) -> Dpnb:
    """`dpnb ARGS...` in this process: exit status, stdout and stderr, as `run_dpnb` returns them."""
    from dpnb.cli import main

    def call(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse's own errors
            rc = e.code if isinstance(e.code, int) else 2
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["dpnb", *args], rc, out.out, out.err)

    return call

REF = ["--dataset-size", "60000", "--batch-size", "256", "--noise-multiplier", "1.1", "--epochs", "60",
       "--delta", "1e-5"]


def test_reference_run_text() -> None:
    proc = run_dpnb("privacy", *REF)
    assert proc.returncode == 0, proc.stderr
    assert "steps              = 14063" in proc.stdout
    assert "epsilon (RDP)      = 2.59" in proc.stdout
    assert "epsilon (PRV)      = 2.39" in proc.stdout
    assert "optimal RDP order  = 8.1" in proc.stdout


def test_reference_run_json(dpnb: Dpnb) -> None:
    proc = dpnb("privacy", *REF, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["steps"] == 14063
    assert out["sample_rate"] == pytest.approx(256 / 60000)
    assert out["delta"] == 1e-5
    assert set(out["epsilon"]) == {"rdp", "prv"}
    assert out["epsilon"]["rdp"] == pytest.approx(2.5967, abs=1e-4)
    assert out["epsilon"]["prv"] == pytest.approx(2.39, abs=0.02)


def test_sample_rate_and_steps_single_accountant(dpnb: Dpnb) -> None:
    proc = dpnb("privacy", "--sample-rate", "0.01", "--steps", "1000", "--noise-multiplier", "1.0",
                    "--accountant", "rdp", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert list(out["epsilon"]) == ["rdp"]
    assert out["steps"] == 1000 and out["sample_rate"] == 0.01


def test_target_epsilon_prints_calibrated_sigma(dpnb: Dpnb) -> None:
    proc = dpnb("privacy", "--sample-rate", "0.004", "--steps", "10000", "--target-epsilon", "2",
                    "--accountant", "rdp", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    sigma = out["noise_multiplier"]["rdp"]
    assert 0.5 < sigma < 5
    assert 1.98 <= out["epsilon"]["rdp"] <= 2.0
    # and feeding that sigma back gives the same epsilon
    back = json.loads(dpnb("privacy", "--sample-rate", "0.004", "--steps", "10000", "--noise-multiplier",
                               str(sigma), "--accountant", "rdp", "--json").stdout)
    assert back["epsilon"]["rdp"] == pytest.approx(out["epsilon"]["rdp"])


BAD = [
    (["--noise-multiplier", "0"], "--noise-multiplier must be > 0"),
    (["--noise-multiplier", "-1.1"], "--noise-multiplier must be > 0"),
    (["--noise-multiplier", "abc"], "--noise-multiplier must be a number > 0, got 'abc'"),
    (["--noise-multiplier", "nan"], "--noise-multiplier must be > 0"),
    (["--delta", "0"], "--delta must be in (0, 1)"),
    (["--delta", "1"], "--delta must be in (0, 1)"),
    (["--delta", "x"], "--delta must be a number in (0, 1)"),
    (["--batch-size", "70000"], "--batch-size must be at most --dataset-size (60000)"),
    (["--dataset-size", "1e9.5"], "--dataset-size must be an integer >= 1"),
    (["--epochs", "0"], "--epochs must be > 0"),
]


@pytest.mark.parametrize("override, message", BAD)
def test_bad_input_one_line_exit_2(override: list[str], message: str, dpnb: Dpnb) -> None:
    args = dict(zip(REF[::2], REF[1::2]))
    args.update(dict(zip(override[::2], override[1::2])))
    proc = dpnb("privacy", *[x for kv in args.items() for x in kv])
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dpnb privacy: error: ")
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_console_script_bad_input_is_one_line_exit_2() -> None:
    """The installed `dpnb` script, in its own process: exit status 2 and one line on stderr, no traceback."""
    proc = run_dpnb("privacy", "--sample-rate", "0.1", "--steps", "10", "--noise-multiplier", "1",
                    "--accountant", "moments")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpnb privacy: error: ") and "invalid choice: 'moments'" in lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sample-rate", "0", "--steps", "10", "--noise-multiplier", "1"], "--sample-rate must be in (0, 1]"),
        (["--sample-rate", "1.5", "--steps", "10", "--noise-multiplier", "1"], "--sample-rate must be in (0, 1]"),
        (["--sample-rate", "0.1", "--steps", "0", "--noise-multiplier", "1"],
         "--steps must be an integer in [1, 1e+12], got 0"),
        (["--sample-rate", "0.1", "--noise-multiplier", "1"], "give either --dataset-size"),
        (["--sample-rate", "0.1", "--steps", "5", "--epochs", "3", "--noise-multiplier", "1"], "give either"),
        (["--sample-rate", "0.1", "--steps", "10"], "exactly one of --noise-multiplier and --target-epsilon"),
        (["--sample-rate", "0.5", "--steps", "10000", "--target-epsilon", "1e-9", "--accountant", "rdp"],
         "target_epsilon=1e-09 is unreachable"),
        (["--sample-rate", "0.1", "--steps", "10", "--target-epsilon", "-1"], "--target-epsilon must be > 0"),
        (["--sample-rate", "0.1", "--steps", "10", "--noise-multiplier", "1", "--accountant", "moments"],
         "invalid choice: 'moments'"),
    ],
)
def test_more_bad_input(args: list[str], message: str, dpnb: Dpnb) -> None:
    proc = dpnb("privacy", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


DATA = pytest.mark.skipif(not __import__("os").environ.get("DPNB_DATA"),
                          reason="needs MNIST under DPNB_DATA (CI sets it to ../shared/data)")


@DATA
def test_bench_prints_a_table(tmp_path) -> None:
    out = tmp_path / "bench.csv"
    proc = run_dpnb("bench", "--batch-sizes", "64", "--methods", "non-private", "ghost", "--limit", "256",
                    "--max-batches", "2", "--csv", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("MNIST CNN") and "slowdown_vs_non_private" in lines[1]
    assert any(line.split()[0] == "ghost" for line in lines[2:])
    import pandas as pd

    df = pd.read_csv(out)
    assert set(df["method"]) == {"non-private", "ghost"}
    assert (df["samples_per_second"] > 0).all() and (df["peak_memory_mb"] > 0).all()
    assert df.loc[df["method"] == "non-private", "slowdown_vs_non_private"].item() == pytest.approx(1.0)


def test_bench_ratios_are_paired_within_a_repeat(monkeypatch) -> None:
    """Each slowdown divides by the non-private time of its own repeat; the summary takes medians."""
    from dpnb import cost

    times = {(0, "non-private"): 2.0, (0, "bk"): 3.0, (1, "non-private"): 4.0, (1, "bk"): 5.0,
             (2, "non-private"): 2.0, (2, "bk"): 4.0}
    calls = []

    def fake(*, method: str, batch_size: int, **_: object) -> dict:
        r = sum(1 for m, _ in calls if m == method)
        calls.append((method, batch_size))
        return dict(method=method, batch_size=batch_size, device="cpu", examples=10, samples_per_second=1.0,
                    seconds_per_epoch=times[r, method], peak_memory_mb=float(r), memory_kind="cpu peak RSS")

    monkeypatch.setattr(cost, "measure", fake)
    df = cost.measure_grid(methods=["non-private", "bk"], batch_sizes=[64], repeats=3, progress=False)
    assert calls == [("non-private", 64), ("bk", 64)] * 3  # interleaved, not all of one method first
    assert list(df["slowdown_vs_non_private"]) == [1.0, 1.5, 1.0, 1.25, 1.0, 2.0]
    row = cost.summarize(df).set_index("method").loc["bk"]
    assert (row["repeats"], row["slowdown_vs_non_private"], row["slowdown_min"], row["slowdown_max"],
            row["seconds_per_epoch"], row["peak_memory_mb"]) == (3, 1.5, 1.25, 2.0, 4.0, 2.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-sizes", "0"], "--batch-sizes must be an integer in [1, 60000], got 0"),
        (["--methods", "jax"], "invalid choice: 'jax'"),
        (["--max-batches", "0"], "--max-batches must be an integer >= 1"),
        (["--repeats", "0"], "--repeats must be an integer in [1, 100], got 0"),
    ],
)
def test_bench_bad_input(args: list[str], message: str, dpnb: Dpnb) -> None:
    proc = dpnb("bench", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_bench_without_data_is_one_line(tmp_path, monkeypatch, dpnb: Dpnb) -> None:
    monkeypatch.setenv("DPNB_DATA", str(tmp_path))  # an empty folder: MNIST is not there
    proc = dpnb("bench", "--max-batches", "1", "--batch-sizes", "64", timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpnb bench: error: mnist: not found under"), proc.stderr


@pytest.mark.parametrize("args", [
    ["--dataset-size", "60000", "--batch-size", "256", "--epochs", "60", "--target-epsilon", "1000"],
    ["--sample-rate", "0.5", "--steps", "10000", "--noise-multiplier", "0.5"],
    ["--sample-rate", "0.01", "--steps", "10000000", "--noise-multiplier", "1"],
    ["--sample-rate", "1", "--steps", "10", "--noise-multiplier", "1e-6"],
])
def test_prv_out_of_reach_is_reported_next_to_rdp(args: list[str], dpnb: Dpnb) -> None:
    """Inputs that used to exhaust memory (22 GB) or end in a traceback: RDP answers, PRV says why not."""
    proc = dpnb("privacy", *args, "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["epsilon"]["rdp"] > 0 and out["epsilon"]["prv"] is None
    assert "its grid would need" in out["unavailable"]["prv"]
    text = dpnb("privacy", *args, timeout=120)
    assert "= not computed (PRV): its grid would need" in text.stdout  # epsilon, or sigma for a target


def test_small_target_is_reached_by_both_accountants(dpnb: Dpnb) -> None:
    proc = dpnb("privacy", "--sample-rate", "0.01", "--steps", "100", "--target-epsilon", "0.1", "--json")
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and all(e <= 0.1 for e in out["epsilon"].values())
