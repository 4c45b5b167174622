"""The book pipeline: smoke execution, results CSV, cache, failures, HTML in a real browser."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_dpnb
from dpnb import book
from dpnb.results import COLUMNS


def test_smoke_build_executes_every_chapter(smoke_build: Path) -> None:
    for ch in book.chapters(ROOT):
        nb = json.loads((smoke_build / "executed" / f"{ch.name}.ipynb").read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code and all(c.get("execution_count") for c in code)
        assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
        injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected and 'profile = "smoke"' in "".join(injected[0]["source"])


def test_results_csv_is_tidy(smoke_build: Path) -> None:
    for ch in book.chapters(ROOT):
        df = pd.read_csv(smoke_build / "results" / f"{ch.name}.csv")
        assert list(df.columns[: len(COLUMNS)]) == COLUMNS
        assert len(df) > 0
        assert (df["chapter"] == ch.name).all() and (df["profile"] == "smoke").all()
        with_eps = df[df["epsilon"].notna()]
        assert with_eps["delta"].notna().all(), "an epsilon without its delta"
        # the accountant and its sampling assumption (Poisson, GS-WGAN's sampling without replacement, or none:
        # a one-shot release of the whole data)
        sampling = with_eps["accountant"].fillna("").str.contains("Poisson|without replacement|no sampling")
        assert sampling.all(), "epsilon without accountant"
        private_utility = df[df["dp"] & df["metric"].str.contains("accuracy|epsilon|noise")]
        assert private_utility["epsilon"].notna().all(), "a private result without its epsilon"


def test_budget_results_match_the_library(smoke_build: Path) -> None:
    from dpnb import privacy

    df = pd.read_csv(smoke_build / "results" / "budget.csv")
    q, steps = privacy.sample_rate_and_steps(dataset_size=60_000, batch_size=256, epochs=5)  # smoke epochs
    ref = df[df["experiment"] == "reference run"].set_index("accountant")["value"]
    expected = privacy.rdp_epsilon(noise_multiplier=1.1, sample_rate=q, steps=steps, delta=1e-5)[0]
    assert ref["rdp (Poisson sampling, add/remove)"] == pytest.approx(expected)
    label = "{} (Poisson sampling, add/remove)".format
    assert ref[label("prv")] < ref[label("rdp")] < ref[label("rdp-mironov")]


@pytest.mark.slow
def test_flowers_smoke_run_records_every_experiment_with_its_budget(smoke_build: Path) -> None:
    """Flowers-102 as the smoke build ran it (its smoke profile has one epoch, as `-p epochs 1` would)."""
    profile = yaml.safe_load((ROOT / "book" / "profiles.yml").read_text())["smoke"]["flowers"]
    assert profile["epochs"] == 1
    df = pd.read_csv(smoke_build / "results" / "flowers.csv")
    acc = df[df["metric"].str.startswith("test_top")]
    assert set(acc["experiment"]) >= {"linear head, non-private", "linear head, DP", "deep head, DP",
                                      "official split, linear head, DP, equal q"}
    head = acc[acc["experiment"] == "linear head, DP"]
    assert head["seeds"].eq(len(profile["seeds"])).all() and head["std"].notna().all()  # the headline: a mean
    assert acc[acc["experiment"] == "deep head, DP"]["seeds"].eq(1).all()
    official = acc[acc["dataset"] == "Flowers-102 official"]
    assert len(official) == 4  # non-private and DP at equal q, top-1 and top-5
    assert acc["value"].between(0, 1).all()
    dp = acc[acc["dp"]]
    assert dp["delta"].eq(1e-5).all() and dp["accountant"].str.contains("prv").all()
    assert dp["epsilon"].between(0, 8.0 + 1e-6).all()
    assert (df["metric"] == "seconds_per_step").sum() == 2  # 2 methods x 1 batch size
    cache = Path(os.environ.get("DPNB_CACHE") or smoke_build / "cache")
    assert list(cache.glob("flowers102-*.pt"))  # features were cached


def test_unchanged_chapter_is_not_re_executed(smoke_build: Path) -> None:
    proc = run_dpnb("book", "--profile", "smoke", "--build-dir", str(smoke_build), "--no-html")
    assert proc.returncode == 0, proc.stderr
    for ch in book.chapters(ROOT):
        assert f"{ch.name}: cached" in proc.stdout, ch.name


def test_cache_key_depends_on_parameters_and_cells() -> None:
    ch = book.chapters(ROOT)[0]
    smoke = book.cache_key(ch.source(ROOT), book.profile_parameters(ROOT, "smoke", ch.name))
    default = book.cache_key(ch.source(ROOT), book.profile_parameters(ROOT, "book", ch.name))
    assert smoke != default
    assert smoke == book.cache_key(ch.source(ROOT), book.profile_parameters(ROOT, "smoke", ch.name))


def _copy_checkout(dest: Path) -> Path:
    dest.mkdir()
    for name in ("_toc.yml", "pyproject.toml"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "nbs", dest / "nbs")
    shutil.copytree(ROOT / "book", dest / "book", ignore=shutil.ignore_patterns("_build"))
    return dest


def test_failing_chapter_names_cell_and_error_and_leaves_no_html(tmp_path: Path) -> None:
    checkout = _copy_checkout(tmp_path / "checkout")
    (checkout / "book" / "profiles.yml").write_text("smoke:\n  budget:\n    epochs: 0\n")
    build = tmp_path / "build"
    proc = run_dpnb("book", "--profile", "smoke", "--build-dir", str(build), cwd=checkout)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("dpnb book: error: chapter nbs/budget failed in cell")
    assert "ParameterError: epochs must be > 0, got 0" in err
    assert not (build / "html").exists()
    assert not (build / "executed" / "budget.ipynb").exists()
    assert not (build / "results" / "budget.csv").exists()
    assert (build / "failed" / "budget.ipynb").exists()
    assert not [p for p in build.iterdir() if p.name.startswith("dpnb-")], "scratch folders left behind"


def test_parallel_build_reports_the_first_failing_chapter_and_starts_no_other(tmp_path: Path) -> None:
    checkout = _copy_checkout(tmp_path / "checkout")
    (checkout / "book" / "profiles.yml").write_text("smoke:\n  budget:\n    epochs: 0\n  mnist:\n    epochs: 0\n")
    build = tmp_path / "build"
    proc = run_dpnb("book", "--profile", "smoke", "--build-dir", str(build), "--workers", "2", cwd=checkout)
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]  # both failed; the book's first chapter is the one named
    assert err.startswith("dpnb book: error: chapter nbs/budget failed in cell") and "epochs must be" in err
    assert {p.name for p in (build / "failed").iterdir()} == {"budget.ipynb", "mnist.ipynb"}
    assert not (build / "executed").exists() or not list((build / "executed").iterdir())  # nothing else ran
    assert not (build / "html").exists()


def test_bad_profile_and_chapter_names() -> None:
    proc = run_dpnb("book", "--only", "nope", "--no-html")
    assert proc.returncode == 2 and "--only must be one of budget" in proc.stderr
    proc = run_dpnb("book", "--profile", "fast")
    assert proc.returncode == 2 and "invalid choice: 'fast'" in proc.stderr
    proc = run_dpnb("book", "--workers", "0", "--no-html")
    assert proc.returncode == 2 and "--workers and --threads must be integers >= 1" in proc.stderr


def test_html_pages_exist(smoke_build: Path) -> None:
    html = smoke_build / "html"
    assert (html / "index.html").is_file()
    for entry in book.toc_entries(ROOT):
        assert (html / f"{entry}.html").is_file(), entry
    assert (html / "mathjax" / "tex-chtml.js").is_file()
    page = (html / "nbs" / "budget.html").read_text()
    assert "mathjax/tex-chtml.js" in page and "cdn.jsdelivr.net/npm/mathjax" not in page
    assert "mybinder.org/v2/gh/" in page and "nbs/budget.ipynb" in page  # Binder launch button
    for ch in book.chapters(ROOT):  # each page opens with its question and the run's own answer
        text = (html / f"{ch.toc_file}.html").read_text()
        opening = text[text.index("Question."):][:6000]
        assert "What you will see" in opening and "glue:md" not in opening, ch.name
        assert "ε" in opening.split("What you will see", 1)[1][:3000], f"{ch.name}: no ε in the opening sentence"


def _require_chromium() -> None:
    from browser import CHROMIUM

    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}; `make test` installs it")
        pytest.skip("Chromium is not installed (make test installs it: apt-get install chromium)")


#: Full-page screenshots of the smoke build and a table of page heights, for a person to look at.
SCREENSHOTS = ROOT / "book" / "_build" / "screenshots" / "smoke"


def _machine_paths(smoke_build: Path) -> tuple[str, ...]:
    """Folders of the machine that built the book; none may appear in a page's text."""
    import sys
    import tempfile

    return (str(ROOT), str(smoke_build), sys.prefix, str(Path.home()), tempfile.gettempdir() + "/",
            "site-packages")


def test_pages_render_in_chromium(smoke_build: Path) -> None:
    _require_chromium()
    from browser import inspect_pages, serve, unexpected_errors

    html = smoke_build / "html"
    pages = ["index"] + book.toc_entries(ROOT)
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    with serve(html) as base:
        reports = inspect_pages([f"{base}/{p}.html" for p in pages], screenshot_dir=SCREENSHOTS,
                                machine_paths=_machine_paths(smoke_build))
    pd.DataFrame([dict(page=p, screens=round(r.screens, 1), output_blocks=r.output_blocks,
                       stderr_blocks=r.stderr_blocks, wide_code_cells=r.wide_code_cells)
                  for p, r in zip(pages, reports)]).to_csv(SCREENSHOTS / "pages.csv", index=False)
    for page, r in zip(pages, reports):
        assert r.stderr_blocks == 0, f"{page}: {r.stderr_blocks} stderr output blocks"
        assert not r.warnings, (page, r.warnings[:3])
        assert not r.paths, f"{page} shows folders of the build machine: {r.paths}"
        assert r.visible_injected_parameters == 0, f"{page}: papermill's injected-parameters cell is visible"
        assert r.wide_code_cells == 0, f"{page}: {r.wide_code_cells} code cells scroll sideways"
        assert r.title and r.h1, page
        assert r.h1.strip().rstrip("#") in r.title, page
        assert not r.broken_images, (page, r.broken_images)
        assert r.math_nodes == r.math_rendered and r.math_errors == 0, (page, r)
        assert not unexpected_errors(r), (page, r.console_errors)
        assert not r.failed_requests, (page, r.failed_requests)
    by_page = dict(zip(pages, reports))
    for ch in book.chapters(ROOT):
        r = by_page[ch.toc_file]
        assert r.images >= 3, f"{ch.name}: chapter figures missing"
        assert r.math_rendered > 0, f"{ch.name}: chapter math not rendered"
    assert by_page["nbs/budget"].math_rendered > 20


def test_chapter_opens_from_disk(smoke_build: Path) -> None:
    _require_chromium()
    from browser import inspect_pages, unexpected_errors

    (r,) = inspect_pages([(smoke_build / "html" / "nbs" / "budget.html").as_uri()])
    assert r.images >= 3 and not r.broken_images
    assert r.math_rendered == r.math_nodes > 20
    assert not unexpected_errors(r)


BAD_PARAMETERS = [
    ("mnist", {"batch_size": 0}, "batch_size must be an integer in [1, 60000], got 0"),
    ("mnist", {"target_epsilons": "[-1]"},  # what `papermill -p target_epsilons "[-1]"` hands the notebook
     """target_epsilons must be a list, got the string '[-1]' (papermill -p passes text: give lists as -y"""),
    ("cifar10", {"epsilon": -1}, "epsilon must be > 0, got -1"),
    ("cifar10", {"architectures": ["ReLU + BatchNorm"]}, "architectures must be one of"),
    ("cifar10", {"scale_model": "vgg"}, "scale_model must be one of"),
    ("cifar10", {"scatter_normalization": "groups-100"},
     "scatter_normalization must be one of 'groups-1', 'groups-3', 'groups-9', 'groups-27', 'groups-81', "
     "'groups-243', 'private'; got 'groups-100'"),
    ("cifar10", {"scatter_stats_noise_multiplier": 0}, "scatter_stats_noise_multiplier must be > 0"),
    ("dpgan", {"loss": "hinge"}, "loss must be one of"),
    ("dpgan", {"epsilons": [10.0, 0]}, "epsilons must be > 0, got 0"),
    ("gswgan", {"num_discriminators": 1}, "num_discriminators must be an integer in [2, 30000], got 1"),
    ("gswgan", {"fid_features": "vgg"}, "fid_features must be one of"),
    ("latent", {"clip_quantile": 1.5}, "clip_quantile must be"),
    ("latent", {"fashion_autoencoder": "vae"}, "fashion_autoencoder must be one of"),
    ("cifar10", {"scale_noise_multiplier": 10.0, "scale_epsilons": [1.0, 8.0]},  # a stated recipe's sigma: one target
     "scale_epsilons must have one value (the target of the recipe whose scale_noise_multiplier is given)"),
    ("cifar10", {"scale_learning_rates": [4.0, -1.0]}, "scale_learning_rates must be > 0, got -1"),
    ("cifar10", {"e2e_limit": 1000, "e2e_batch_size": 2000},
     "e2e_batch_size must be an integer in [1, 1000], got 2000"),
    ("cifar10", {"e2e_batch_size": 46_000}, "e2e_batch_size must be an integer in [1, 45000], got 46000"),
]


@pytest.mark.parametrize("chapter,parameters,message", BAD_PARAMETERS)
def test_bad_parameter_is_refused_by_the_chapter_rules(chapter: str, parameters: dict, message: str) -> None:
    from dpnb import chapters
    from dpnb.params import ParameterError

    values = {**book.notebook_defaults(ROOT / "nbs" / f"{chapter}.ipynb"), **parameters}
    with pytest.raises(ParameterError) as e:
        chapters.parameters(chapter, values)
    assert message in str(e.value)


@pytest.mark.parametrize("chapter,parameters,message", [BAD_PARAMETERS[i] for i in (1, 5, 8)])
def test_bad_notebook_parameter_fails_in_the_first_cells(tmp_path: Path, chapter: str, parameters: dict,
                                                         message: str) -> None:
    """The rules above are what a chapter's first code cell runs (three chapters executed to show it)."""
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(ROOT / "nbs" / f"{chapter}.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters=parameters, kernel_name="python3", progress_bar=False,
                            cwd=str(ROOT))
    assert e.value.ename == "ParameterError"
    assert message in e.value.evalue
    assert e.value.cell_index <= 4  # the validation cell, right after the parameters


def test_the_opening_sentence_is_not_shown_twice(smoke_build: Path) -> None:
    """prose.headline stores the sentence for the page's opening and displays nothing where it is called:
    a returned object at the end of a cell would repeat it, as a stray output, in the middle of the page."""
    for ch in book.chapters(ROOT):
        cells = json.loads((smoke_build / "executed" / f"{ch.name}.ipynb").read_text())["cells"]
        calls = [c for c in cells if c["cell_type"] == "code" and "prose.headline(" in "".join(c["source"])]
        assert calls, f"{ch.name}: no prose.headline call"
        for c in calls:
            assert not [o for o in c.get("outputs", []) if o.get("output_type") == "execute_result"], ch.name
