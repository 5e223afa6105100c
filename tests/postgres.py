"""A throwaway PostgreSQL server for the tests: initdb + pg_ctl on a temporary directory.

It listens on a unix socket only (no TCP port to collide with), trusts every local user,
and is stopped (``-m immediate``) and deleted at the end. The binaries are found on PATH,
else under /usr/lib/postgresql/*/bin (Debian's layout). initdb refuses to run as root: as
root, the server runs as the unprivileged user ``nobody`` (through ``runuser``), and owns
its directory. Where no server can be started the tests that need one are skipped with the
reason, except in CI (``CI=true``), where that is a failure: CI installs what they need.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

START_BOUND = 60.0  # seconds initdb or pg_ctl may take; never reached when it works


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true")


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail in CI, with the reason."""
    text = f"no PostgreSQL server for this test: {reason}"
    if in_ci():
        pytest.fail(text + " (CI must run every PostgreSQL test)", pytrace=False)
    pytest.skip(text)


def binaries() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    candidates = [str(Path(found).resolve().parent)] if found else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for directory in candidates:
        if all(os.access(os.path.join(directory, b), os.X_OK) for b in ("initdb", "pg_ctl")):
            return Path(directory)
    return None


def _as_server_user(directory: str) -> list[str]:
    """The command prefix running the server's tools: as ``nobody`` when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root and runuser is missing (initdb refuses root)")
    shutil.chown(directory, user="nobody")
    return [runuser, "-u", "nobody", "--"]


@contextmanager
def running_server() -> Iterator[str]:
    """Start a server; yield its ``postgresql://`` URL; stop it and delete everything."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed (pip install -e '.[test]')")
    bin_dir = binaries()
    if bin_dir is None:
        unavailable("initdb/pg_ctl not found on PATH or under /usr/lib/postgresql/*/bin")
    # A short path: a unix socket's path is limited to about 100 bytes.
    base = tempfile.mkdtemp(prefix="c2pg-")
    data, log = os.path.join(base, "data"), os.path.join(base, "log")
    started = False
    try:
        prefix = _as_server_user(base)
        initdb = [str(bin_dir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres"]
        _run([*prefix, *initdb, "--no-sync", "-E", "UTF8"])
        options = f"-c listen_addresses='' -k {base} -c fsync=off -c max_connections=40"
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", data, "-o", options, "-l", log, "-w"]
        _run([*prefix, *pg_ctl, "-t", str(int(START_BOUND)), "start"])
        started = True
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        tail = Path(log).read_text(errors="replace")[-500:] if os.path.exists(log) else ""
        shutil.rmtree(base, ignore_errors=True)
        unavailable(f"{exc} {tail}".strip())
    try:
        yield f"postgresql://postgres@/postgres?host={base}"
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=START_BOUND,
                check=False,
            )
        shutil.rmtree(base, ignore_errors=True)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=START_BOUND)
    if done.returncode != 0:
        tool = next(os.path.basename(c) for c in command if c.endswith(("initdb", "pg_ctl")))
        raise RuntimeError(f"{tool} failed: {done.stderr.strip()}")
