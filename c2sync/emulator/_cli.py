"""``python -m c2sync.emulator`` and ``c2sync emulator``: run the emulator in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence

from .._spec import HEARTBEAT_GRACE, HEARTBEAT_INTERVAL
from ._emulator import Emulator

__all__ = ["main"]

_DEFAULT_STRATEGY = 12345678


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a local Collective2 API v4 WebSocket emulator until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port, 0 for any (8765)")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="an accepted API key; repeatable (default: $C2_API_KEY, else 'demo')",
    )
    parser.add_argument(
        "--strategy",
        action="append",
        dest="strategies",
        type=int,
        metavar="ID",
        help=f"a strategy clients may subscribe to; repeatable (default {_DEFAULT_STRATEGY})",
    )
    parser.add_argument(
        "--signal-every",
        type=_positive,
        metavar="SECONDS",
        help="publish a generated signal on every strategy this often",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=_positive,
        default=HEARTBEAT_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between heartbeats ({HEARTBEAT_INTERVAL:g})",
    )
    parser.add_argument(
        "--heartbeat-grace",
        type=float,
        default=HEARTBEAT_GRACE,
        metavar="SECONDS",
        help=f"grace after a missed ack before closing ({HEARTBEAT_GRACE:g})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m c2sync.emulator") -> int:
    """Run the emulator in the foreground until Ctrl-C.

    Prints the URL to connect to on its first line of output. The API keys are never
    printed or logged.

    Args:
        argv: the arguments, without the program name; None reads ``sys.argv``.
        prog: the program name shown in the help.

    Returns:
        The exit status: 0 after Ctrl-C, 1 when the server could not start.
    """
    args = _parser(prog).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    api_keys = args.api_keys or [os.environ.get("C2_API_KEY") or "demo"]
    strategies = args.strategies or [_DEFAULT_STRATEGY]
    try:
        emulator = Emulator(
            api_keys=api_keys,
            strategies=strategies,
            heartbeat_interval=args.heartbeat_interval,
            heartbeat_grace=args.heartbeat_grace,
            host=args.host,
            port=args.port,
        )
        emulator.start()
    except (OSError, ValueError) as exc:
        print(f"error: cannot start the emulator: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()  # never set: the waits below end on their timeout or Ctrl-C
    try:
        print(emulator.url, flush=True)
        print(
            f"strategies: {', '.join(map(str, strategies))}; "
            f"{len(api_keys)} API key(s) accepted; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        if args.signal_every is None:
            stop.wait()
        else:
            while not stop.wait(args.signal_every):
                for strategy in strategies:
                    emulator.publish_signal(strategy)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.close()
    print("emulator stopped", file=sys.stderr, flush=True)
    return 0
