"""Start-up: ``import c2sync`` against ``import websocket``, in fresh interpreters, interleaved.

``python benchmarks/startup.py [--rounds N] [--json PATH] [--variant NAME=PATH] [--top K]``

Each round starts one fresh interpreter per target, in an order rotated from round to round
(so a burst of load on the machine hits all of them alike), and times two things:

- ``wall``: the whole ``python -c "import X"`` process, start to exit, as a cron job or a
  ``c2sync`` command pays it;
- ``cpu``: the CPU time (user + system) the process used, the same span: on a loaded
  machine it moves much less than the wall time, which also counts the waits for a core;
- ``import``: the ``import X`` statement alone, timed inside the process (interpreter
  start-up and ``site`` left out).

Targets: ``python`` (``pass``: the interpreter's own floor), ``websocket`` (websocket-client),
``c2sync``, ``c2sync-cli`` (``python -m c2sync -V``) and, with ``--variant NAME=PATH``,
``c2sync@NAME``: the ``c2sync`` package found in ``PATH`` (a directory holding a
``c2sync/``), for before/after comparisons in one run. The checkout's own ``c2sync`` is the
one measured (the repository root goes first on ``PYTHONPATH``).

``--no-site`` starts every interpreter with ``-S`` (the installed packages' directory put on
``PYTHONPATH`` instead): an editable install's ``site`` imports ``pathlib``, ``re`` and
``urllib.parse`` before any user code, so without it the counts and times are those of a
regular install.

The summary gives medians and ranges over rounds; ``x ws`` is the median of the
per-round ratios to ``import websocket``. It also counts the modules each import adds to
``sys.modules``, a number that does not depend on the machine's load, and lists the
``python -X importtime`` entries of ``import c2sync`` with the largest cumulative times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import site
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# What each target runs: the statement timed inside the interpreter.
STATEMENTS = {
    "python": "pass",
    "websocket": "import websocket",
    "c2sync": "import c2sync",
}
CLI = "c2sync-cli"  # python -m c2sync -V: argument parsing and the version, nothing else

_TIMED = (
    "import sys, time\n"
    "t0 = time.perf_counter(); before = len(sys.modules)\n"
    "{statement}\n"
    "t1 = time.perf_counter()\n"
    "print(t1 - t0, len(sys.modules) - before)\n"
)


NO_SITE = False  # --no-site: every interpreter with -S


def _python() -> list[str]:
    return [sys.executable, "-S"] if NO_SITE else [sys.executable]


def _env(path: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure with the bytecode cache, as users run
    paths = [path, env.get("PYTHONPATH", "")]
    if NO_SITE:
        paths += site.getsitepackages()
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _command(target: str) -> list[str]:
    if target == CLI:
        return [*_python(), "-m", "c2sync", "-V"]
    base = target.partition("@")[0]
    return [*_python(), "-c", _TIMED.format(statement=STATEMENTS[base])]


def run_once(target: str, path: str) -> dict[str, float]:
    """One fresh interpreter: its wall time and, but for the CLI, the import's own time."""
    command = _command(target)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        command, env=_env(path), cwd=path, capture_output=True, text=True, timeout=60
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # one child at a time: its own
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode != 0:
        raise RuntimeError(f"{target} failed: {proc.stderr[-2000:]}")
    result = {"wall_ms": wall * 1e3, "cpu_ms": cpu * 1e3}
    if target != CLI:
        seconds, modules = proc.stdout.split()
        result["import_ms"] = float(seconds) * 1e3
        result["modules"] = int(modules)
    return result


def modules_loaded(statement: str, path: str) -> list[str]:
    """The modules ``statement`` adds to a fresh interpreter's ``sys.modules``, sorted."""
    code = (
        "import sys; before = set(sys.modules)\n"
        f"{statement}\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [*_python(), "-c", code],
        env=_env(path),
        cwd=path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def c2sync_file(path: str) -> str:
    """Which ``c2sync`` a fresh interpreter imports with ``path`` first."""
    return subprocess.run(
        [*_python(), "-c", "import c2sync; print(c2sync.__file__)"],
        env=_env(path),
        cwd=path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def importtime_top(statement: str, path: str, top: int) -> list[tuple[int, int, str]]:
    """``python -X importtime``'s entries with the largest cumulative times (us), one run."""
    proc = subprocess.run(
        [*_python(), "-X", "importtime", "-c", statement],
        env=_env(path),
        cwd=path,  # "-c" puts the working directory first on sys.path
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|")
        rows.append((int(cumulative_us), int(self_us), name.rstrip()))
    rows.sort(reverse=True)
    return rows[:top]


def _stat(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(rounds: int, variants: dict[str, str]) -> dict[str, Any]:
    targets = ["python", "websocket", "c2sync", CLI] + [f"c2sync@{v}" for v in variants]
    paths = {t: variants.get(t.partition("@")[2], str(ROOT)) for t in targets}
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    for _ in range(2):  # warm the bytecode caches and the page cache, unmeasured
        for target in targets:
            run_once(target, paths[target])
    for r in range(rounds):
        shift = r % len(targets)
        for target in targets[shift:] + targets[:shift]:
            runs[target].append(run_once(target, paths[target]))
    summary: dict[str, Any] = {}
    base = runs["websocket"]
    for target in targets:
        entry: dict[str, Any] = {}
        for key in ("wall_ms", "cpu_ms", "import_ms"):
            values = [run[key] for run in runs[target] if key in run]
            if not values:
                continue
            entry[key] = _stat(values)
            ratios = [run[key] / b[key] for run, b in zip(runs[target], base) if b[key] > 0]
            entry[key.replace("_ms", "_x_websocket")] = _stat(ratios)
        if target != CLI:
            entry["modules"] = runs[target][0]["modules"]
        summary[target] = entry
    return {"summary": summary, "runs": runs}


def render(result: dict[str, Any], rounds: int) -> str:
    lines = [
        f"Start-up, {rounds} interleaved rounds{' (python -S)' if result['no_site'] else ''}, "
        "medians (min-max), ms; load average " + " ".join(f"{x:.2f}" for x in result["load"]),
        f"{'target':14s} {'process wall':>21s} {'x ws':>5s} {'process cpu':>21s} {'x ws':>5s} "
        f"{'import alone':>21s} {'x ws':>5s} {'modules':>7s}",
    ]
    for target, entry in result["summary"].items():
        cells = [f"{target:14s}"]
        for key in ("wall_ms", "cpu_ms", "import_ms"):
            if key in entry:
                s = entry[key]
                x = entry[key.replace("_ms", "_x_websocket")]["median"]
                cells.append(f"{s['median']:6.1f} ({s['min']:.1f}-{s['max']:.1f})".rjust(21))
                cells.append(f"{x:5.2f}")
            else:
                cells.append(f"{'-':>21s} {'-':>5s}")
        cells.append(f"{entry.get('modules', '-'):>7}")
        lines.append(" ".join(cells))
    for target, file in result["files"].items():
        lines.append(f"{target} is {file}")
    lines.append("")
    lines.append("python -X importtime -c 'import c2sync', largest cumulative (us, one run):")
    for cumulative, self_us, name in result["importtime"]:
        lines.append(f"  {cumulative:8d} {self_us:8d}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/startup.py", description=__doc__)
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also measure the c2sync found in PATH, as c2sync@NAME",
    )
    parser.add_argument("--top", type=int, default=15, help="importtime entries to list")
    parser.add_argument(
        "--modules", action="store_true", help="also list the modules import c2sync loads"
    )
    parser.add_argument(
        "--no-site", action="store_true", help="run every interpreter with -S (see above)"
    )
    args = parser.parse_args(argv)
    global NO_SITE
    NO_SITE = args.no_site
    variants = dict(v.split("=", 1) for v in args.variant)
    result = measure(args.rounds, variants)
    result["load"] = list(os.getloadavg())
    result["python"] = sys.version.split()[0]
    result["no_site"] = NO_SITE
    result["importtime"] = importtime_top("import c2sync", str(ROOT), args.top)
    result["files"] = {"c2sync": c2sync_file(str(ROOT))}
    result["files"].update({f"c2sync@{v}": c2sync_file(p) for v, p in variants.items()})
    result["loaded"] = {
        name: modules_loaded(STATEMENTS[name.partition("@")[0]], path)
        for name, path in [("websocket", str(ROOT)), ("c2sync", str(ROOT))]
        + [(f"c2sync@{v}", p) for v, p in variants.items()]
    }
    print(render(result, args.rounds))
    if args.modules:
        print("\nimport c2sync loads:", " ".join(result["loaded"]["c2sync"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
