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
