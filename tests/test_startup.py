"""Start-up (issue 27): ``import c2sync`` and the ``c2sync`` command load only what they need.

What connecting or a rare path needs (msgspec, ssl for ``wss://``, hashlib for the upgrade,
random for the backoff's jitter, email.utils for a ``Retry-After`` date, tempfile for a
checkpoint's write, html for a notebook's view) is imported when first used; websocket-client
is not imported at all. Each check runs a fresh interpreter and reads ``sys.modules``: no
timing here (timings are benchmarks/startup.py's, in benchmarks/README.md "Start-up").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import c2sync

ROOT = Path(__file__).resolve().parent.parent

# Modules `import c2sync` must leave for later (a package stands for its submodules).
LAZY = [
    "asyncio",
    "bz2",
    "decimal",
    "email",
    "hashlib",
    "html",
    "http",
    "lzma",
    "msgspec",
    "pandas",
    "random",
    "shutil",
    "sqlite3",
    "ssl",
    "tempfile",
    "uuid",
    "websocket",
    "websockets",
    "c2sync.emulator",
    "c2sync._demo",
]
# argparse formats help and --version with shutil's terminal size (and so bz2 and lzma).
ARGPARSE_OWN = {"shutil", "bz2", "lzma"}

# Modules `import c2sync` adds to an interpreter started without site (-S, so that an
# editable checkout and a regular install count alike): 131 on CPython 3.11 (195 before
# issue 27); the bound leaves room for other Pythons' standard libraries, not for a new
# habit.
MAX_MODULES = 140
MAX_CLI_EXTRA = 25  # what the command adds on top: argparse, gettext, shutil, signal...


def added_modules(code: str) -> set[str]:
    """The modules that ``code`` adds to a fresh interpreter's ``sys.modules``."""
    script = (
        "import sys\n"
        "before = set(sys.modules)\n"
        f"{code}\n"
        "print()\n"
        "print(' '.join(sorted(set(sys.modules) - before)))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "C2SYNC_PURE_PYTHON"}
    # Without site (-S): what site and .pth files load first (an editable install's finder
    # pulls in a dozen modules) would hide modules from the count, so an editable checkout
    # and CI's regular install would count differently. The path is set by hand instead:
    # where this c2sync lives, then the site directories.
    where = str(Path(c2sync.__file__).resolve().parent.parent)
    paths = [where] + [p for p in sys.path if "-packages" in p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    result = subprocess.run(
        [sys.executable, "-S", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.splitlines()[-1].split())


def offenders(modules: set[str], lazy: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in lazy))


def test_import_leaves_the_heavy_modules_for_later() -> None:
    """``import c2sync`` loads none of the modules only a connection or a rare path needs."""
    assert offenders(added_modules("import c2sync"), LAZY) == []


def test_import_loads_a_bounded_number_of_modules() -> None:
    """``import c2sync`` adds at most MAX_MODULES modules (a count, not a time)."""
    modules = added_modules("import c2sync")
    assert "c2sync.client" in modules  # the measurement saw the import
    assert len(modules) <= MAX_MODULES, sorted(modules)


def test_every_public_name_without_the_heavy_modules() -> None:
    """``from c2sync import X`` for every X in ``__all__`` (and a policy, a checkpoint and a
    client built, not connected) still imports none of them."""
    code = (
        "import c2sync\n"
        "from c2sync import *\n"
        "names = [getattr(c2sync, name) for name in c2sync.__all__]\n"
        "c2sync.ReconnectPolicy()\n"
        "c2sync.FileCheckpoint('unused.json')\n"
        "c2sync.Client('sk-not-a-key', url='ws://127.0.0.1:9/ws')\n"
    )
    assert offenders(added_modules(code), LAZY) == []


@pytest.mark.parametrize("argv", [["-V"], ["--help"], ["check", "--help"]])
def test_the_command_imports_only_what_it_needs(argv: list[str]) -> None:
    """``c2sync -V`` and ``--help`` import c2sync, argparse and the command, nothing heavy."""
    code = f"from c2sync import cli\ntry:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass"
    modules = added_modules(code)
    assert offenders(modules, [m for m in LAZY if m not in ARGPARSE_OWN]) == []
    assert len(modules) <= MAX_MODULES + MAX_CLI_EXTRA, sorted(modules)


def test_the_lazy_imports_happen_on_first_use() -> None:
    """What was left out is there once used: the decoder at the first parse, the jitter's
    random at the first backoff, email.utils for a Retry-After date."""
    code = (
        "import sys, c2sync\n"
        "from c2sync.reconnect import parse_retry_after\n"
        "c2sync.parse_message('{\"msg_type\": \"heartbeat\"}')\n"
        "next(c2sync.ReconnectPolicy().delays())\n"
        "parse_retry_after('Wed, 21 Oct 2015 07:28:00 GMT')\n"
    )
    modules = added_modules(code)
    assert {"random", "email.utils"} <= modules
    try:
        import msgspec  # noqa: F401
    except ImportError:
        return
    assert "msgspec" in modules  # the [fast] path, picked at the first parse


def test_the_startup_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/startup.py measures every target and counts modules (one round, no
    timing checked: its numbers belong to benchmarks/README.md)."""
    out = tmp_path / "startup.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--rounds", "1",
         "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    summary = data["summary"]
    for target in ("python", "websocket", "c2sync", "c2sync-cli"):
        assert summary[target]["wall_ms"]["median"] > 0, target
    assert summary["c2sync"]["import_ms"]["median"] > 0
    assert summary["c2sync"]["modules"] == len(data["loaded"]["c2sync"])
    assert data["files"]["c2sync"] == str(ROOT / "c2sync" / "__init__.py")
    assert "x ws" in result.stdout
    assert summary["c2sync"]["cpu_ms"]["median"] > 0
