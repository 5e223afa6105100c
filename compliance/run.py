"""Measure c2sync's RFC 6455 compliance with the Autobahn|Testsuite (issue 17).

Usage: ``python compliance/run.py [--check] [--python2 PATH] [--env DIR] [--skip-if-no-python2]``
with the Python that has c2sync installed (the project's virtualenv).

1. Makes (once) a Python 2.7 virtualenv holding ``autobahntestsuite`` and the exact
   versions in ``requirements-py27.txt`` (the suite runs on Python 2.7 only). It is cached
   in ``$C2SYNC_AUTOBAHN_ENV`` or ``~/.cache/c2sync/autobahn-py27`` and rebuilt only when
   the requirements change, so CI's fresh clones reuse it.
2. Starts ``wstest -m fuzzingserver`` on 127.0.0.1 (a free port, no web port) for cases
   1-7, 9.1-9.2 and 10.
3. Runs the echo client twice (``autobahn_client.py``): agent ``c2sync`` over c2sync's
   frame reader, agent ``websocket-client`` over websocket-client's own loop.
4. Prints one table per agent, by case group, from the server's JSON report, and lists
   every case that is not OK.

With ``--check`` it exits 1 when any c2sync case is anything but OK or INFORMATIONAL:
NON-STRICT counts as a failure, UNIMPLEMENTED (compression cases, not run here) would too.
The one exception is the documented deviation (a text message that is not UTF-8: the
library skips it, docs/api-contract.md "Receiving"; the echo client closes with 1007 as
RFC 6455 asks),
whose cases may be NON-STRICT (not failed fast enough) but not FAILED.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-py27.txt"
CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.1.*", "9.2.*", "10.*"]
EXCLUDED: list[str] = []  # none of the cases above is slow against a local echo client
AGENTS = (("c2sync", "c2sync"), ("websocket-client", "websocket-client"))
SERVER_START = 60.0  # seconds the fuzzing server may take to listen
AGENT_TIMEOUT = 150.0  # seconds one agent's whole run may take (a bound; ~15-20 s here)
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
ACCEPTED = {"OK", "INFORMATIONAL"}


def find_python2(given: str | None) -> str | None:
    """A Python 2.7 interpreter that runs: the one given, ``$C2SYNC_PYTHON2``, pyenv's, or
    the one on PATH (a pyenv shim there may name a version that is not active)."""
    candidates = [given, os.environ.get("C2SYNC_PYTHON2")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/2.7*/bin/python2.7")))
    candidates.append(shutil.which("python2.7"))
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (2, 7))"],
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == b"True":
            return candidate
    return None


def ensure_env(python2: str, env: Path) -> Path:
    """The cached virtualenv's ``wstest``, made first if missing or out of date."""
    stamp = hashlib.sha256(REQUIREMENTS.read_bytes() + python2.encode()).hexdigest()
    marker = env / ".c2sync-complete"
    wstest = env / "bin" / "wstest"
    if marker.exists() and marker.read_text() == stamp and wstest.exists():
        return wstest
    print(f"making the Autobahn testsuite environment in {env} (once)", flush=True)
    shutil.rmtree(env, ignore_errors=True)
    bootstrap = env.with_name(env.name + "-virtualenv")
    shutil.rmtree(bootstrap, ignore_errors=True)
    quiet = ["--quiet", "--disable-pip-version-check"]
    # The last virtualenv that runs on 2.7, kept outside the interpreter's site-packages.
    subprocess.run(
        [python2, "-m", "pip", "install", *quiet, "--target", str(bootstrap), "virtualenv<20.22"],
        check=True,
    )
    subprocess.run(
        [python2, "-m", "virtualenv", "--quiet", str(env)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(bootstrap)},
    )
    subprocess.run(
        [str(env / "bin" / "pip"), "install", *quiet, "-r", str(REQUIREMENTS)], check=True
    )
    marker.write_text(stamp)
    return wstest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(server: subprocess.Popen[bytes], port: int) -> None:
    """Block until the server accepts connections (it says nothing when it does), or fail
    once it exits or SERVER_START passes."""
    deadline = time.monotonic() + SERVER_START
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the fuzzing server exited with {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the fuzzing server did not listen within {SERVER_START} s"
                ) from None
        try:
            server.wait(0.1)  # the retry interval; returns at once if the server dies
        except subprocess.TimeoutExpired:
            pass


def group_of(case_id: str) -> str:
    major = case_id.split(".")[0]
    return ".".join(case_id.split(".")[:2]) if major == "9" else major


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def summarize(agent: str, results: dict[str, Any], deviations: set[str]) -> tuple[str, list[str]]:
    """The table for one agent, and the cases outside the deviation that are not accepted."""
    groups: dict[str, dict[str, int]] = {}
    total = dict.fromkeys(VERDICTS, 0)
    bad: list[str] = []
    notes: list[str] = []
    for case_id in sorted(results, key=case_key):
        verdict = results[case_id]["behavior"]
        close = results[case_id]["behaviorClose"]
        if close not in ACCEPTED and verdict in ACCEPTED:
            verdict = close  # a wrong closing handshake fails the case too
        row = groups.setdefault(group_of(case_id), dict.fromkeys(VERDICTS, 0))
        row[verdict] = row.get(verdict, 0) + 1
        total[verdict] = total.get(verdict, 0) + 1
        if verdict != "OK":
            mark = " (documented deviation: invalid UTF-8 text)" if case_id in deviations else ""
            notes.append(f"  {case_id}: {verdict}{mark}")
        # A deviation case may be NON-STRICT (Autobahn's "fail fast" on invalid UTF-8);
        # anything worse in it is still a failure.
        allowed = ACCEPTED | {"NON-STRICT"} if case_id in deviations else ACCEPTED
        if verdict not in allowed:
            bad.append(case_id)
    width = max(len(v) for v in VERDICTS)
    lines = [f"agent {agent}: {len(results)} cases"]
    lines.append("  group  " + " ".join(v.rjust(width) for v in VERDICTS))
    for name in sorted(groups, key=case_key):
        counts = groups[name]
        lines.append(f"  {name:<6} " + " ".join(str(counts[v]).rjust(width) for v in VERDICTS))
    lines.append("  total  " + " ".join(str(total[v]).rjust(width) for v in VERDICTS))
    if deviations:
        lines.append(
            f"  {len(deviations)} cases sent text that is not UTF-8: answered with 1007 here"
            " (RFC 6455 8.1); the library skips such a message (docs/api-contract.md 'Receiving')"
        )
    lines.extend(notes)
    return "\n".join(lines), bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 on any failed case")
    parser.add_argument("--python2", help="the Python 2.7 interpreter")
    parser.add_argument(
        "--env",
        default=os.environ.get("C2SYNC_AUTOBAHN_ENV")
        or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
            "c2sync",
            "autobahn-py27",
        ),
        help="where the Python 2.7 environment is cached",
    )
    parser.add_argument("--skip-if-no-python2", action="store_true")
    parser.add_argument("--reports", help="keep the server's reports in this folder")
    args = parser.parse_args(argv)
    started = time.monotonic()
    python2 = find_python2(args.python2)
    if python2 is None:
        message = "compliance: skipped, no Python 2.7 found (the Autobahn testsuite needs it)"
        print(message)
        return 0 if args.skip_if_no_python2 else 2
    wstest = ensure_env(python2, Path(args.env))
    work = Path(tempfile.mkdtemp(prefix="c2sync-autobahn-"))
    reports = Path(args.reports) if args.reports else work / "reports"
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    spec = {
        "url": url,
        "outdir": str(reports),
        "cases": CASES,
        "exclude-cases": EXCLUDED,
        "exclude-agent-cases": {},
    }
    (work / "spec.json").write_text(json.dumps(spec))
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(
        [str(wstest), "-m", "fuzzingserver", "-s", str(work / "spec.json"), "-u", "0"],
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = HERE / "autobahn_client.py"
    bad: list[str] = []
    passed = 0
    try:
        wait_listening(server, port)
        for agent, loop in AGENTS:
            agent_started = time.monotonic()
            deviations_file = work / f"{agent}.deviations.json"
            subprocess.run(
                [
                    sys.executable,
                    str(client),
                    url,
                    agent,
                    "--loop",
                    loop,
                    "--deviations",
                    str(deviations_file),
                ],
                check=True,
                timeout=AGENT_TIMEOUT,
            )
            index = json.loads((reports / "index.json").read_text())
            deviations = set(json.loads(deviations_file.read_text())["invalid_text"])
            if loop != "c2sync":
                deviations = set()  # websocket-client answers those itself
            table, agent_bad = summarize(agent, index[agent], deviations)
            print(f"{table}\n  ({time.monotonic() - agent_started:.1f} s)", flush=True)
            if agent == "c2sync":
                bad = agent_bad
                passed = len(index[agent]) - len(bad)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()
        if not args.reports:
            shutil.rmtree(work, ignore_errors=True)
    print(f"compliance: done in {time.monotonic() - started:.1f} s")
    if bad:
        print(f"compliance: c2sync cases not OK: {', '.join(bad)}")
    print(f"compliance: {passed} passed, {len(bad)} failed")
    return 1 if bad and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
