"""``python -m c2sync.emulator`` and ``c2sync emulator``: run the emulator in the foreground."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .._spec import HEARTBEAT_GRACE, HEARTBEAT_INTERVAL
from ._dialect import DIALECTS, Value, parse_dialect_option
from ._emulator import Emulator

__all__ = ["main"]

_DEFAULT_STRATEGY = 12345678

# Stopped by a signal, the emulator exits as a shell reports a process killed by it
# (128 + the signal's number), after closing every connection cleanly.
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM (``kill``, ``docker stop``) into :class:`_Stopped`.

    A SIGINT ignored when the process started stays ignored, as ``c2sync listen`` (and
    Python itself) leaves it: a shell script starts its background jobs (``&``) so, on
    purpose, for a Ctrl-C meant for the foreground command to spare them. SIGTERM still
    stops the emulator.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise _Stopped(signum)

    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signals.append(signal.SIGINT)
    previous = {sig: signal.signal(sig, stop) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _dialect(text: str) -> tuple[str, Value]:
    try:
        return parse_dialect_option(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dialects_help() -> str:
    lines = [
        f"  {name}={point.allowed} (default {point.default})"
        for name, point in DIALECTS.items()
    ]
    return "dialects (--dialect NAME=VALUE):\n" + "\n".join(lines)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a local Collective2 API v4 WebSocket emulator until Ctrl-C.",
        epilog=f"{_dialects_help()}\n\n"
        "exit status: 130 after Ctrl-C, 143 after SIGTERM, 1 if it could not start. "
        "Started with SIGINT ignored (a script's background job), it keeps ignoring it: "
        "stop it with SIGTERM (kill).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "--positions-every",
        type=_positive,
        metavar="SECONDS",
        help="publish a generated strategy.positions update on every strategy this often",
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
    parser.add_argument(
        "--dialect",
        action="append",
        dest="dialect",
        type=_dialect,
        default=[],
        metavar="NAME=VALUE",
        help="read an open point of the docs another way; repeatable (the list is below)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log connections")
    return parser


def _publish_until(
    stop: threading.Event,
    emulator: Emulator,
    strategies: Sequence[int],
    signal_every: float | None,
    positions_every: float | None,
) -> None:
    """Publish signals and positions updates on every strategy at their periods until
    ``stop`` is set (or a signal handler raises); with neither period, just wait."""
    publish = {emulator.publish_signal: signal_every, emulator.publish_positions: positions_every}
    periods = {fn: every for fn, every in publish.items() if every is not None}
    due = {fn: time.monotonic() + every for fn, every in periods.items()}
    while True:
        if not due:
            stop.wait()  # in main(), ended by a signal handler's exception only
            return
        fn = min(due, key=due.__getitem__)
        if stop.wait(max(0.0, due[fn] - time.monotonic())):
            return
        for strategy in strategies:
            fn(strategy)
        due[fn] += periods[fn]


def main(argv: Sequence[str] | None = None, prog: str = "python -m c2sync.emulator") -> int:
    """Run the emulator in the foreground until Ctrl-C.

    Prints the URL to connect to on its first line of output. The API keys are never
    printed or logged.

    Args:
        argv: the arguments, without the program name; None reads ``sys.argv``.
        prog: the program name shown in the help.

    Returns:
        The exit status: 130 after Ctrl-C (SIGINT), 143 after SIGTERM, 1 when the server
        could not start (a port in use, say).
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
            dialect=dict(args.dialect),
        )
        emulator.start()
    except (OSError, ValueError, RuntimeError, TimeoutError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            why = (
                f"port {args.port} on {args.host} is already in use (another emulator?); "
                "choose another with --port, or --port 0 for any free one"
            )
        else:
            why = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: cannot start the emulator: {why}", file=sys.stderr)
        return 1
    stop = threading.Event()  # never set: the waits below end on their timeout or a signal
    status = EXIT_SIGINT
    try:
        with _stop_on_signals():  # before the URL: whoever read it may signal at once
            print(emulator.url, flush=True)
            print(
                f"strategies: {', '.join(map(str, strategies))}; "
                f"{len(api_keys)} API key(s) accepted; Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            if args.dialect:
                chosen = ", ".join(f"{name}={value}" for name, value in args.dialect)
                print(f"dialect: {chosen}", file=sys.stderr, flush=True)
            _publish_until(stop, emulator, strategies, args.signal_every, args.positions_every)
    except _Stopped as stopped:
        status = EXIT_SIGTERM if stopped.signum == signal.SIGTERM else EXIT_SIGINT
    except KeyboardInterrupt:  # Ctrl-C before the handlers were in place
        pass
    finally:
        emulator.close()
    print(f"emulator stopped (exit status {status})", file=sys.stderr, flush=True)
    return status
