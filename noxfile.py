"""Task runner: the suite on every supported Python found here, the floors, lint, types.

``nox -l`` lists the sessions; ``nox -s tests-3.9 floors`` runs some. A Python that is not
on this machine is skipped locally and is an error in CI (nox does that when ``CI`` is
set). Interpreters are found on PATH and, after it, in pyenv's versions directory.
Nothing is downloaded: a missing Python is never installed behind your back.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]
OLDEST, NEWEST = PYTHONS[0], PYTHONS[-1]

nox.options.download_python = "never"
nox.options.default_venv_backend = "venv"  # each Python's own venv: no virtualenv support matrix
nox.options.sessions = ["lint", "types", "tests", "floors"]
nox.options.error_on_missing_interpreters = os.environ.get("CI", "").lower() in ("1", "true")

# pyenv's interpreters, after whatever PATH already offers (its shims only answer for the
# selected versions, so they alone hide the rest).
_PYENV = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
os.environ["PATH"] = os.pathsep.join(
    [os.environ.get("PATH", ""), *sorted(glob.glob(os.path.join(_PYENV, "versions", "*", "bin")))]
)


def _floors_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_c2sync_floors", ROOT / ".ci" / "floors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The suite, installed as the README says (``pip install ".[test]"``)."""
    session.install(".[test]")
    session.run("python", "-m", "pytest", "-q", "-n", "2", *session.posargs)


@nox.session(python=OLDEST)
def floors(session: nox.Session) -> None:
    """Every declared lower bound at once, on the oldest Python: the suite and the demo.

    The constraints pin each requirement of setup.cfg (runtime and every extra) to its
    floor; pip picks the rest. ``C2SYNC_FLOORS`` tells tests/test_packaging.py to check
    that exactly those versions are the ones installed.
    """
    constraints = Path(session.create_tmp()) / "floors.txt"
    session.install("packaging")  # for .ci/floors.py, run here to evaluate markers for 3.9
    session.run("python", str(ROOT / ".ci" / "floors.py"), str(constraints))
    extras = ",".join(sorted(name for name in _floors_module().declared() if name))
    session.install("-c", str(constraints), f".[{extras}]")
    session.run("python", "-m", "pip", "freeze", "--exclude-editable")
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-n",
        "2",
        *session.posargs,
        env={"C2SYNC_FLOORS": str(constraints)},
    )
    session.run("c2sync", "demo")


def _dev_requirement(name: str) -> str:
    """The dev extra's requirement on ``name``, as setup.cfg spells it (one place to bump)."""
    for requirement in _floors_module().declared()["dev"]:
        if requirement.name == name:
            return str(requirement)
    raise LookupError(f"the dev extra does not name {name}")


@nox.session(python=NEWEST)
def mutants(session: nox.Session) -> None:
    """Mutation testing: each planted bug of tests/mutants.py (one per guarantee of
    docs/api-contract.md) must make the tests it names fail. ~3 minutes on 2 cores: each
    mutant runs only its own tests, two at a time, each in its own copy of the tree."""
    session.install(".[test]")
    session.run("python", "-m", "tests.mutants", *session.posargs)


@nox.session(python=NEWEST)
def lint(session: nox.Session) -> None:
    """ruff over everything shipped or run (its target version is py39)."""
    session.install(_dev_requirement("ruff"))
    session.run("ruff", "check", "c2sync", "tests", "samples", "benchmarks", "noxfile.py", ".ci")


@nox.session(python=[OLDEST, NEWEST])
def types(session: nox.Session) -> None:
    """mypy --strict for the oldest and the newest Python (each checks its own version)."""
    session.install(".[emulator,fast]", _dev_requirement("mypy"))
    session.run("mypy", "--strict", "--python-version", session.python, "c2sync")
