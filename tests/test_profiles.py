"""book/profiles.yml: every override names a parameter of its chapter, and the chapter's own
validation cell accepts the overridden values (the only check of the ``gpu`` profile a CPU can run)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import ROOT
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
