"""book/profiles.yml: every override names a parameter of its chapter, and the chapter's own
validation cell accepts the overridden values (the only check of the ``gpu`` profile a CPU can run)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import ROOT, run_dpnb
from dpnb import book


def _cells(chapter: book.Chapter) -> tuple[str, str]:
    """The source of the ``parameters`` cell and of the code cell after it (the validation)."""
    cells = json.loads(chapter.source(ROOT).read_text())["cells"]
    i = next(k for k, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
    validation = next(c for c in cells[i + 1:] if c["cell_type"] == "code")
    return "".join(cells[i]["source"]), "".join(validation["source"])


@pytest.mark.parametrize("profile", ["smoke", "gpu"])
@pytest.mark.parametrize("chapter", book.chapters(ROOT), ids=lambda c: c.name)
def test_profile_overrides_are_parameters_the_chapter_accepts(chapter: book.Chapter, profile: str) -> None:
    parameters, validation = _cells(chapter)
    namespace: dict[str, Any] = {}
    exec(parameters, namespace)
    overrides = book.profile_parameters(ROOT, profile, chapter.name)
    unknown = set(overrides) - set(namespace)
    assert not unknown, f"{profile} profile sets parameters {chapter.name} does not have: {sorted(unknown)}"
    namespace.update(overrides)
    exec(validation, namespace)  # raises ParameterError on a value out of range
    assert namespace["profile"] == profile


def test_a_bad_override_is_caught_by_the_validation() -> None:
    chapter = next(c for c in book.chapters(ROOT) if c.name == "gswgan")
    parameters, validation = _cells(chapter)
    namespace: dict[str, Any] = {}
    exec(parameters, namespace)
    namespace["num_discriminators"] = 1
    with pytest.raises(ValueError, match="num_discriminators"):
        exec(validation, namespace)


@pytest.mark.parametrize("chapter", book.chapters(ROOT), ids=lambda c: c.name)
def test_every_parameter_of_a_chapter_has_a_rule_and_every_rule_a_parameter(chapter: book.Chapter) -> None:
    from dpnb import chapters

    parameters, _ = _cells(chapter)
    namespace: dict[str, Any] = {}
    exec(parameters, namespace)
    names = {k for k in namespace if not k.startswith("__")}
    assert names == set(chapters.rules(chapter.name)), chapter.name
    checked = chapters.parameters(chapter.name, namespace)  # the book profile passes its own checks
    assert set(checked) == names


def test_chapter_rules_take_choices_and_sizes_from_the_modules() -> None:
    from dpnb import chapters, cost
    from dpnb.params import ParameterError

    namespace: dict[str, Any] = {}
    exec(_cells(next(c for c in book.chapters(ROOT) if c.name == "mnist"))[0], namespace)
    with pytest.raises(ParameterError, match="cost_methods must be one of " + repr(cost.METHODS[0])):
        chapters.parameters("mnist", dict(namespace, cost_methods=["jax"]))
    with pytest.raises(ParameterError, match=r"batch_size must be an integer in \[1, 2000\]"):
        chapters.parameters("mnist", dict(namespace, train_limit=2000, batch_size=4096))
    with pytest.raises(ParameterError, match='-y "target_epsilons: '):
        chapters.parameters("mnist", dict(namespace, target_epsilons="[-1]"))
    exec(_cells(next(c for c in book.chapters(ROOT) if c.name == "gswgan"))[0], namespace := {})
    checked = chapters.parameters("gswgan", dict(namespace, noise_multiplier=1.07))
    assert checked["target_epsilon"] is None  # a given sigma overrides the target
    with pytest.raises(ParameterError, match="loss must be one of"):
        exec(_cells(next(c for c in book.chapters(ROOT) if c.name == "dpgan"))[0], namespace := {})
        chapters.parameters("dpgan", dict(namespace, loss="lsgan"))


# ------------------------------------------------------- the gpu profile's --tiny overlay (dpnb.chapters.shrinks)

def _full(chapter: book.Chapter, profile: str, tiny: bool = False) -> dict[str, Any]:
    return {**book.notebook_defaults(chapter.source(ROOT)),
            **book.profile_parameters(ROOT, profile, chapter.name, tiny=tiny)}


@pytest.mark.parametrize("chapter", book.chapters(ROOT), ids=lambda c: c.name)
def test_tiny_overlay_keeps_the_gpu_code_paths_and_passes_the_chapter_checks(chapter: book.Chapter) -> None:
    from dpnb import chapters

    gpu, tiny = _full(chapter, "gpu"), _full(chapter, "gpu", tiny=True)
    assert tiny["profile"] == "gpu-tiny"
    assert chapters.code_path(tiny) == chapters.code_path(gpu)  # same models, sizes of images, mechanisms
    chapters.parameters(chapter.name, dict(tiny))  # and the chapter accepts the shrunk values
    for name, value in tiny.items():  # everything that changed went down
        if name != "profile":
            assert chapters.shrinks(name, gpu[name], value) is None, name


def test_an_overlay_that_changes_a_code_path_is_refused(tmp_path: Path) -> None:
    from dpnb.params import ParameterError

    checkout = tmp_path / "checkout"
    (checkout / "book").mkdir(parents=True)
    shutil.copytree(ROOT / "nbs", checkout / "nbs")
    for bad, message in [("scale_model: cnn", "scale_model: the tiny overlay keeps it (wrn-16-4), got cnn"),
                         ("cnn_epochs: 60", "cnn_epochs: the tiny overlay may only lower it (30), got 60"),
                         ("seeds: [0, 1, 2, 3]", "may only shorten the list [0, 1, 2]"),
                         ("architectures: [\"tanh + GroupNorm\"]", "architectures: the tiny overlay keeps it"),
                         ("nope: 1", "cifar10 has no parameter 'nope'")]:
        profiles = (ROOT / "book" / "profiles.yml").read_text()
        profiles = profiles.replace("\n  cifar10:\n    validation_size: 200", "\n  unused:\n    validation_size: 200")
        (checkout / "book" / "profiles.yml").write_text(
            profiles.replace("gpu-tiny:\n", f"gpu-tiny:\n  cifar10:\n    {bad}\n", 1))
        with pytest.raises(ParameterError, match=re.escape(message)):
            book.profile_parameters(checkout, "gpu", "cifar10", tiny=True)
    with pytest.raises(ParameterError, match="--tiny shrinks the gpu profile; got --profile smoke"):
        book.profile_parameters(ROOT, "smoke", "cifar10", tiny=True)


@pytest.mark.slow
@pytest.mark.gpu_tiny
def test_gpu_code_paths_run_under_the_tiny_overlay(tmp_path: Path) -> None:
    """`dpnb book --profile gpu --tiny` for every chapter whose gpu code paths differ from its smoke
    profile's (WRN-16-4, 128-px images, width-64 generators, 1,000 GS-WGAN discriminators, ...); a chapter
    whose gpu-tiny parameters choose the same code as its smoke parameters runs in the smoke build.
    Not in `make test` (it would take it past 12 minutes): `make test-tiny` runs it."""
    from dpnb import chapters

    differ = [c.name for c in book.chapters(ROOT)
              if chapters.code_path(_full(c, "gpu", tiny=True)) != chapters.code_path(_full(c, "smoke"))]
    assert {"cifar10", "flowers", "dpgan", "gswgan", "latent"} <= set(differ)
    build = tmp_path / "tiny"
    proc = run_dpnb("book", "--profile", "gpu", "--tiny", "--only", *differ, "--build-dir", str(build), "--no-html",
                    "--workers", "2", timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in differ:
        assert f"{name} (gpu-tiny profile" in proc.stdout
        rows = pd.read_csv(build / "results" / f"{name}.csv")
        assert len(rows) and (rows["profile"] == "gpu-tiny").all(), name  # never mistaken for gpu results
    assert "wrn-16-4" in pd.read_csv(build / "results" / "cifar10.csv")["experiment"].str.cat()
