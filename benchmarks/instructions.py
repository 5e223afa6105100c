"""Instructions per signal, counted by valgrind's callgrind: the same clients, the same flood.

``python benchmarks/instructions.py`` runs each client of ``run.py``'s throughput scenario
under ``valgrind --tool=callgrind`` twice, for a short and a long flood, and divides the
difference in instructions executed by the client process by the difference in signals:
the instructions one signal costs, start-up and connection excluded.

Why beside ``run.py``: a shared VM's speed drifts between rounds (the same client's CPU
time per signal varied 9-20 µs within one run), while an instruction count is the same to
within 1 % from run to run, whatever else the machine does. It is not a time: it
leaves out cache misses, system calls and the cost of threads handing work to each other
(valgrind runs one thread at a time), which ``run.py`` measures. Read the two together.

Needs ``valgrind`` on the PATH (Debian: ``apt install valgrind``); about 3 minutes for
every client. Heartbeats are off (they would come at wall-clock times).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import BASELINE, BASELINES, C2SYNC_IMPLS, Runner, running_sender  # noqa: E402

_COLLECTED = re.compile(rb"Collected : (\d+)")
TIMEOUT = 600.0  # seconds for one client under valgrind (~50x slower than native)


def count(runner: Runner, impl: str, n: int) -> int:
    """Instructions the client process executes to connect, take ``n`` signals and close."""
    params = {"n": n, "hb": 0}
    cid, argv = runner._spec(impl, "throughput", params)
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={tmp}/callgrind.out",
            *argv,
        ]
        try:
            proc = subprocess.run(
                command, env=runner._env(impl), capture_output=True, timeout=TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{impl}: timed out under valgrind") from exc
    runner.sender.report(cid, timeout=20)  # collect it, so reports do not pile up
    found = _COLLECTED.findall(proc.stderr)
    if proc.returncode != 0 or not found:
        tail = proc.stderr.decode(errors="replace")[-800:]
        raise RuntimeError(f"{impl}: exit {proc.returncode}: {tail}")
    return int(found[-1])


def per_signal(runner: Runner, impl: str, short: int, long: int) -> float:
    return (count(runner, impl, long) - count(runner, impl, short)) / (long - short)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/instructions.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--short", type=int, default=2_000, help="signals of the short flood")
    parser.add_argument("--long", type=int, default=12_000, help="signals of the long flood")
    parser.add_argument(
        "--only", metavar="CLIENTS", help="comma-separated clients (default: every one)"
    )
    parser.add_argument("--json", metavar="PATH", help="write the counts to this JSON file")
    args = parser.parse_args(argv)
    if not 0 < args.short < args.long:
        parser.error("--short must be above 0 and below --long")
    impls = list(C2SYNC_IMPLS) + list(BASELINES)
    if args.only:
        impls = args.only.split(",")
        unknown = set(impls) - set(C2SYNC_IMPLS) - set(BASELINES)
        if unknown:
            parser.error(f"unknown clients: {', '.join(sorted(unknown))}")
    if shutil.which("valgrind") is None:
        print("valgrind is not on the PATH (Debian: apt install valgrind)", file=sys.stderr)
        return 2
    results: dict[str, float] = {}
    with running_sender() as sender:
        runner = Runner(sender, {}, verbose=False)
        for impl in impls:
            results[impl] = per_signal(runner, impl, args.short, args.long)
            print(f"  {impl:24s} {results[impl]:9,.0f} instructions/signal", flush=True)
    print()
    print(render(results))
    if args.json:
        report: dict[str, Any] = {"short": args.short, "long": args.long, "per_signal": results}
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def render(results: dict[str, float]) -> str:
    """The table: instructions per signal, and the baseline's count divided by each (above
    1: fewer instructions than the websocket-client loop)."""
    base = results.get(BASELINE)
    lines = [f"{'client':24s} {'instructions/signal':>20s} {'x ' + BASELINE:>20s}"]
    for impl, value in results.items():
        ratio = f"{base / value:.2f}" if base else "-"
        lines.append(f"{impl:24s} {value:20,.0f} {ratio:>20s}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
