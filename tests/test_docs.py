"""The documentation site (docs/): every Python example on its pages runs against the
emulator, every public name has a reference entry, and the build command is the same in
the README, CI and Read the Docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import c2sync
import c2sync.emulator
from c2sync.emulator import Emulator

from .conftest import run_example

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIP_MARK = "% docs-test: skip"  # a MyST comment: invisible to readers
BUILD = "sphinx-build -W -n --keep-going -b html docs docs/_build/html"


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


def python_blocks(page: Path) -> list[tuple[int, str, bool]]:
    """``(line number, code, skipped)`` for each fenced ```python block of a page; skipped
    when the nearest non-blank line before it starts with ``% docs-test: skip``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks = []
    number = 0
    while number < len(lines):
        if lines[number].strip() == "```python":
            previous = next((lines[i] for i in range(number - 1, -1, -1) if lines[i].strip()), "")
            end = lines.index("```", number + 1)
            code = "\n".join(lines[number + 1 : end])
            blocks.append((number + 1, code, previous.startswith(SKIP_MARK)))
            number = end
        number += 1
    return blocks


BLOCKS = [
    (page.relative_to(DOCS).as_posix(), line, code, skipped)
    for page in pages()
    for line, code, skipped in python_blocks(page)
]


def test_the_pages_have_examples_and_few_are_skipped() -> None:
    """The extractor finds the pages' examples, and only a handful are left unexecuted."""
    runnable = [block for block in BLOCKS if not block[3]]
    assert len(runnable) >= 10
    assert {page for page, *_ in runnable} >= {"quickstart.md", "receiving.md", "testing.md"}
    assert len(BLOCKS) - len(runnable) <= 8


@pytest.mark.parametrize(
    "page, line, code",
    [pytest.param(p, n, c, id=f"{p}:{n}") for p, n, c, skipped in BLOCKS if not skipped],
)
def test_docs_example_runs(
    page: str, line: int, code: str, publishing: Emulator, tmp_path: Path
) -> None:
    """Each Python example on a docs page runs unchanged, given only C2_API_KEY and
    C2_WS_URL pointing at an emulator that publishes signals."""
    run_example(code, publishing.url, tmp_path, f"docs/{page} line {line}")


def documented_names() -> set[str]:
    """The objects the reference pages document, as ``module.name``."""
    names = set()
    for page in (DOCS / "reference").glob("*.rst"):
        module = "c2sync"
        for line in page.read_text(encoding="utf-8").splitlines():
            current = re.match(r"\.\. currentmodule:: (\S+)", line)
            if current:
                module = current.group(1)
            auto = re.match(r"\.\. auto(?:function|class|exception|data):: (\S+)", line)
            if auto:
                names.add(f"{module}.{auto.group(1)}")
    return names


@pytest.mark.parametrize(
    "module",
    [c2sync, c2sync.emulator],
    ids=["c2sync", "c2sync.emulator"],
)
def test_every_public_name_has_a_reference_entry(module: object) -> None:
    """Each name in ``__all__`` (c2sync's and the emulator's: the checkpoint and reconnect
    classes included) is documented by an autodoc entry in docs/reference/."""
    name = getattr(module, "__name__")  # noqa: B009 (module is typed object)
    missing = {f"{name}.{n}" for n in getattr(module, "__all__")} - documented_names()  # noqa: B009
    assert not missing


def test_build_command_is_the_same_everywhere() -> None:
    """The README's build command is the one CI runs and Read the Docs runs."""
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    assert f'pip install ".[docs]" && {BUILD}' in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert BUILD in ci
    rtd = (ROOT / ".readthedocs.yaml").read_text(encoding="utf-8")
    assert "-W -n --keep-going -b html docs" in rtd
    assert "- docs" in rtd
