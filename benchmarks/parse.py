"""Micro-benchmark of ``parse_message`` on the benchmark's ~550-byte signal, per decoder path.

``python benchmarks/parse.py [--repeat N]`` prints the best and median microseconds per
message of N timing runs (each parses 20,000 distinct frames) for every decoder path this
Python can import: ``json`` (the standard library) and ``msgspec`` (the ``[fast]`` extra).
It decides what the codec keeps: a change stays only if it shows here and in run.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from sender import signal_text  # noqa: E402

from c2sync import _decode, codec  # noqa: E402


def measure(decode: object, frames: list[str], repeat: int) -> list[float]:
    parse = codec._parse  # the path-picking seam the codec tests use too
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for text in frames:
            parse(text, decode)  # type: ignore[arg-type]
        runs.append((time.perf_counter() - t0) / len(frames) * 1e6)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/parse.py", description=__doc__)
    parser.add_argument("--repeat", type=int, default=15, help="timing runs (default 15)")
    parser.add_argument("-n", type=int, default=20_000, help="frames per run (default 20,000)")
    args = parser.parse_args(argv)
    frames = [signal_text(i, 1_700_000_000_000 + i) for i in range(1, args.n + 1)]
    print(f"parse_message, {len(frames[0])}-byte strategy.signal, us per message")
    for name, decode in _decode.available().items():
        runs = measure(decode, frames, args.repeat)
        print(f"  {name:8s} best {min(runs):.2f}  median {statistics.median(runs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
