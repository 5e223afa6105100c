"""The distribution: ``python -m build`` makes an sdist and a wheel that ``twine check``
accepts, and the wheel installs into a fresh virtualenv where ``c2sync demo`` runs.

Slow (30-60 s) and needs a package index for the build backend and the dependencies; it is
skipped, with the reason, when pip cannot reach one.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
STEP_BOUND = 300.0  # seconds any one step may take (pip over a slow network)


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_BOUND
    )
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def outside_env() -> dict[str, str]:
    """The environment without anything pointing Python back at this checkout."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "C2_API_KEY", "C2_WS_URL")
    }


@pytest.fixture(scope="module")
def index_reachable(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip unless pip (with its own configuration) can download from a package index."""
    probe = tmp_path_factory.mktemp("probe")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(probe), "attrs"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(outside_env(), PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"pip cannot reach a package index: {last}")


@pytest.fixture(scope="module")
def dist(index_reachable: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sdist and the wheel built from (a copy of) the working tree: setuptools writes
    build/ and *.egg-info beside the sources, so two test workers building from the tree
    itself would race."""
    out = tmp_path_factory.mktemp("dist")
    source = tmp_path_factory.mktemp("source") / "c2sync"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], cwd=out)
    yield out


# What a checkout holds besides its sources: virtualenvs, caches, build output.
NOT_SOURCE = (
    ".git",
    ".venv",
    ".ci-venv",
    ".nox",
    ".ci-nox",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    "_build",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
)


def only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.timeout(900)
def test_build_and_twine_check(dist: Path) -> None:
    """`python -m build` makes an sdist and a wheel that `twine check --strict` accepts."""
    sdist, wheel = only(dist, "*.tar.gz"), only(dist, "*.whl")
    output = run(
        [sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)], cwd=dist
    )
    assert output.count("PASSED") == 2

    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for path in (
        "README.rst",
        "samples/notebook.ipynb",
        "samples/callbacks.py",
        "c2sync/cli.py",
        "c2sync/py.typed",
        "docs/protocol.md",  # the design documents the code cites travel with it
        "docs/api-contract.md",
        "docs/conf.py",
    ):
        assert path in names, path

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "c2sync = c2sync.cli:main" in archive.read(entry_points).decode()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert "Description-Content-Type: text/x-rst" in archive.read(metadata).decode()
    assert {"c2sync/cli.py", "c2sync/__main__.py", "c2sync/py.typed"} <= names


@pytest.mark.timeout(900)
def test_wheel_installs_and_demo_runs(dist: Path, tmp_path: Path) -> None:
    """The wheel installs into a fresh virtualenv where `c2sync demo` runs and resumes."""
    wheel = only(dist, "*.whl")
    venv = tmp_path / "venv"
    env = outside_env()
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{wheel}[emulator]",
        ],
        cwd=tmp_path,
        env=env,
    )
    # Installed, not borrowed from this checkout.
    location = run(
        [str(python), "-c", "import c2sync; print(c2sync.__file__)"], cwd=tmp_path, env=env
    )
    assert Path(location.strip()).is_relative_to(venv)

    output = run([str(bin_dir / "c2sync"), "demo"], cwd=tmp_path, env=env)
    assert "received:  [1, 2, 3, 4, 5, 6, 7, 8]" in output
    assert "no signal lost, none duplicated" in output


# Declared floors ------------------------------------------------------------------------------
# setup.cfg's lower bounds are promises: the noxfile's `floors` session installs every one of
# them at once (constraints written by .ci/floors.py) and runs this suite and the demo. These
# tests read setup.cfg themselves, so a floor added or raised there without the session
# installing it fails here.


def declared_requirements() -> list[tuple[str, Requirement]]:
    """Every requirement in setup.cfg with the extra it belongs to ("" for runtime)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    sections = [("", config.get("options", "install_requires"))]
    sections += config.items("options.extras_require")
    return [
        (extra, Requirement(line))
        for extra, text in sections
        for line in text.splitlines()
        if line.strip()
    ]


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return max(bounds) if bounds else None


def test_every_requirement_declares_a_floor() -> None:
    """No dependency is unbounded below: each one's floor is a version the floors session
    can install and test."""
    unbounded = [str(r) for _, r in declared_requirements() if lower_bound(r) is None]
    assert unbounded == []
    assert declared_requirements(), "setup.cfg declares no requirement: was it read?"


def test_websocket_client_is_never_1_9_1() -> None:
    """Python 3.9 gets websocket-client 1.9.0 exactly, 3.10+ at least 1.9.2: no Python can
    resolve to 1.9.1, which broke close() (API.md)."""
    pins = [(x, r) for x, r in declared_requirements() if r.name == "websocket-client"]
    assert pins and all(extra == "" for extra, _ in pins), "a runtime dependency only"
    for python, wanted in (("3.9", "1.9.0"), ("3.10", "1.9.2"), ("3.13", "1.9.2")):
        environment = {"python_version": python}
        applying = [r for _, r in pins if r.marker is None or r.marker.evaluate(environment)]
        assert len(applying) == 1, (python, applying)
        assert not applying[0].specifier.contains("1.9.1"), (python, applying)
        assert lower_bound(applying[0]) == Version(wanted), (python, applying)


@pytest.mark.skipif(
    not os.environ.get("C2SYNC_FLOORS"), reason="runs in the floors session: nox -s floors"
)
def test_the_floors_session_installed_every_declared_floor() -> None:
    """Under `nox -s floors`, every floor setup.cfg declares for this Python (runtime and
    every extra) is pinned in the constraints and is exactly the version installed."""
    constraints = {}
    for line in Path(os.environ["C2SYNC_FLOORS"]).read_text(encoding="utf-8").splitlines():
        name, _, version = line.partition("==")
        constraints[canonicalize_name(name)] = Version(version)
    wrong = []
    for extra, requirement in declared_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        floor = lower_bound(requirement)
        installed = Version(importlib.metadata.version(name))
        if constraints.get(name) != floor or installed != floor:
            wrong.append(f"{name}: floor {floor}, pinned {constraints.get(name)}, got {installed}")
    assert wrong == []
