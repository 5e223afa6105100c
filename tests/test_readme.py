"""README.rst: its Python examples run against the emulator, its set-up commands match CI,
and it is valid reStructuredText."""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from c2sync.emulator import Emulator

from .conftest import API_KEY, RUN_BOUND, run_example

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
SKIP_MARK = ".. readme-test: skip"


def code_blocks(language: str) -> list[tuple[int, str, bool]]:
    """``(line number, code, skipped)`` for each ``.. code-block:: <language>``.

    A block is skipped when the nearest non-blank line before it is
    ``.. readme-test: skip`` (an RST comment: invisible to readers).
    """
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)\.\. code-block:: *(\S+)\s*$", line)
        if not match or match.group(2) != language:
            continue
        indent = len(match.group(1))
        previous = next((lines[i] for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        skipped = previous.strip().startswith(SKIP_MARK)
        body: list[str] = []
        for text in lines[number + 1 :]:
            if text.strip() and len(text) - len(text.lstrip()) <= indent:
                break
            body.append(text)
        code = "\n".join(body)
        width = min(len(t) - len(t.lstrip()) for t in body if t.strip())
        blocks.append((number + 1, "\n".join(t[width:] for t in code.splitlines()), skipped))
    return blocks


PYTHON_BLOCKS = code_blocks("python")


def test_readme_has_runnable_examples() -> None:
    """The README shows Python examples, and only illustrations are left unexecuted."""
    runnable = [block for block in PYTHON_BLOCKS if not block[2]]
    assert len(runnable) >= 6
    assert len(PYTHON_BLOCKS) - len(runnable) <= 1


@pytest.mark.parametrize(
    "line, code",
    [pytest.param(line, code, id=f"line-{line}") for line, code, skip in PYTHON_BLOCKS if not skip],
)
def test_readme_example_runs(line: int, code: str, publishing: Emulator, tmp_path: Path) -> None:
    """Each README Python example runs unchanged, given only C2_API_KEY and C2_WS_URL."""
    run_example(code, publishing.url, tmp_path, f"README line {line}")


def test_ten_line_example_prints_signals(publishing: Emulator, tmp_path: Path) -> None:
    """The first-screen example (the first Python block) prints three signals and exits."""
    _, code, skipped = PYTHON_BLOCKS[0]
    assert not skipped
    assert len([t for t in code.splitlines() if t.strip()]) <= 10
    env = dict(os.environ, C2_API_KEY=API_KEY, C2_WS_URL=publishing.url)
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_BOUND,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert len(printed) == 3
    seq_ids = [int(text.split()[0]) for text in printed]
    assert seq_ids == sorted(seq_ids) and len(set(seq_ids)) == 3
    # signal.describe(): the order as a person reads it, not the payload's codes.
    assert all(re.match(r"\d+ (BUY|SELL) \d+ \S+ (market|limit|stop)", text) for text in printed)
    assert not any("'Side'" in text for text in printed), printed


def console_commands() -> list[str]:
    return [code.strip() for _, code, _ in code_blocks("console")]


def test_readme_setup_commands() -> None:
    """The first screen gives exactly the two set-up commands: run the demo, run the tests."""
    head = README.read_text(encoding="utf-8").split("\n.. contents::")[0]
    assert head.count(".. code-block:: console") == 2
    demo, tests = console_commands()[:2]
    venv = "python3 -m venv .venv && . .venv/bin/activate && "
    assert demo == venv + 'pip install ".[emulator]" && c2sync demo'
    assert tests == venv + 'pip install ".[test]" && python -m pytest -q -n 2'


def test_readme_test_command_is_what_ci_runs() -> None:
    """The README's test command is the one .ci/run runs, so newcomers run what CI runs."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    _, tests = console_commands()[:2]
    install, pytest_call = (part.strip() for part in tests.split("&&")[2:4])
    assert shlex.split(install)[-1] == ".[test]"
    ci_installs = [shlex.split(t) for t in ci.splitlines() if "pip install" in t]
    assert any(words[-1] == ".[test]" for words in ci_installs)
    ci_pytest = [t.strip() for t in ci.splitlines() if t.strip().startswith("python -m pytest")]
    assert len(ci_pytest) == 1
    assert ci_pytest[0] == pytest_call


def test_readme_is_valid_restructuredtext() -> None:
    """README.rst renders on PyPI (readme_renderer, as twine check does) with no warning."""
    rst = pytest.importorskip("readme_renderer.rst")
    docutils_core = pytest.importorskip("docutils.core")
    text = README.read_text(encoding="utf-8")
    warnings = io.StringIO()
    assert rst.render(text, stream=warnings) is not None, warnings.getvalue()
    assert warnings.getvalue() == ""
    docutils_core.publish_doctree(
        text, settings_overrides={"halt_level": 2, "report_level": 1, "warning_stream": warnings}
    )
