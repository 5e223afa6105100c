"""The ``c2sync`` command (also ``python -m c2sync``): check a key, listen, run the emulator,
or watch a demo.

::

    c2sync check                      # is my key accepted? prints the round-trip time
    c2sync listen --signal 12345678   # print each message until Ctrl-C
    c2sync emulator --signal-every 2  # a local server for testing your own code
    c2sync demo                       # the whole flow in ten seconds, no key, no network
    c2sync record --to sqlite:///signals.db --strategy 12345678   # a journal, each once

The key comes from ``--api-key`` or ``C2_API_KEY``; the URL from ``--url`` or ``C2_WS_URL``
(default :data:`c2sync.DEFAULT_URL`). Every error is one line on stderr, and the exit status
says what went wrong (:data:`EXIT_CODES`). The API key is never printed, even when a server
echoes it in a message: what the commands print of the server's messages has it masked as
``***`` (the library's own errors and log lines already do).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TextIO

from . import (
    DEFAULT_URL,
    POSITIONS,
    SIGNAL,
    AuthenticationError,
    Client,
    ConnectionClosed,
    HandshakeError,
    Message,
    QueueOverflow,
    ServerError,
    State,
    __version__,
)
from ._cli_parser import (
    EXIT_AUTH,
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_SUBSCRIPTION,
    EXIT_TERMINATED,
    KEY_ENV,
    PROG,
    URL_ENV,
    build_parser,
)
from ._format import format_message
from ._proxy import safe_url
from ._redact import Redactor

__all__ = [
    "EXIT_AUTH",
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NETWORK",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_SUBSCRIPTION",
    "EXIT_TERMINATED",
    "format_message",
    "main",
]

logger = logging.getLogger("c2sync.cli")


class _Failure(Exception):
    """A failure to report as one line on stderr, with its exit status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _exit_status(error: BaseException) -> int:
    """The documented exit status for an error the library raised."""
    if isinstance(error, AuthenticationError):
        return EXIT_AUTH
    if isinstance(error, HandshakeError):
        return EXIT_REFUSED
    if isinstance(error, ConnectionClosed) and error.code == 1008:
        return EXIT_REFUSED  # docs/protocol.md section 2: the connection-limit race
    if isinstance(error, ServerError):
        return EXIT_SUBSCRIPTION
    if isinstance(error, (TimeoutError, OSError, ConnectionClosed)):
        return EXIT_NETWORK
    return EXIT_ERROR


def _describe(error: BaseException) -> str:
    """One readable line for an error (the library's messages never hold the key)."""
    if isinstance(error, AuthenticationError):
        why = error.message or "Invalid API key"
        return f"the API key was refused (HTTP 401: {why}); check --api-key or {KEY_ENV}"
    if isinstance(error, ConnectionClosed) and error.code == 1008:
        return (
            "the server closed the connection at once (1008): too many connections for "
            "this key? wait a few seconds and try again"
        )
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and not isinstance(error, TimeoutError):
        return f"cannot reach the server: {text}"
    if isinstance(error, TimeoutError):
        return f"timed out: {text}"
    if isinstance(error, ServerError):
        return f"the server refused: {text}"
    return text


@contextmanager
def _logging_for(verbose: int) -> Iterator[None]:
    """Show the library's log on stderr only when asked: the commands print their own
    status lines, and a failure is reported once, as one line. Restored afterwards, so
    calling main() in-process leaves the caller's logging as it was."""
    root = logging.getLogger("c2sync")
    level = root.level
    handler: logging.Handler | None = None
    if not verbose:
        root.setLevel(logging.CRITICAL + 1)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
        )
        root.addHandler(handler)
        root.setLevel(logging.INFO if verbose == 1 else logging.DEBUG)
    try:
        yield
    finally:
        root.setLevel(level)
        if handler is not None:
            root.removeHandler(handler)


def _shown(url: str) -> str:
    """The URL for every line that names it: no ``user:password@``, query or fragment
    (``Options.safe_url`` is the same function)."""
    return safe_url(url)


def _connect(client: Client, url: str, timeout: float) -> None:
    """``client.connect()``, with a timeout said as what timed out and where: a bare
    socket timeout reads "timed out", which tells a user nothing."""
    try:
        client.connect()
    except TimeoutError as exc:
        detail = " ".join(str(exc).split())
        where = _shown(url)
        text = f"timed out after {timeout:g} s connecting to {where}"
        if detail and detail.lower() != "timed out" and where not in detail:
            text += f" ({detail})"
        raise _Failure(
            EXIT_NETWORK, f"{text}; check the host and port, or raise --connect-timeout"
        ) from exc


def _api_key(args: argparse.Namespace) -> str:
    key: str | None = args.api_key or os.environ.get(KEY_ENV)
    if not key:
        raise _Failure(EXIT_AUTH, f"no API key: pass --api-key KEY or set {KEY_ENV}")
    return key


def _url(args: argparse.Namespace) -> str:
    url: str = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    if not url.startswith(("ws://", "wss://")):
        raise _Failure(
            EXIT_AUTH, f"the URL must start with ws:// or wss://, not {_shown(url)!r}"
        )
    return url


# listen's status lines come from the dispatcher thread (on_state) while the main thread
# prints messages and errors; print() writes the text and the newline separately, so two
# threads could merge their lines. Every line goes out whole, through one lock.
_OUTPUT_LOCK = threading.Lock()


def _emit(text: str, stream: TextIO) -> None:
    with _OUTPUT_LOCK:
        stream.write(text + "\n")
        stream.flush()


def _err(text: str) -> None:
    _emit(f"{PROG}: {text}", sys.stderr)


# check ------------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    key, url = _api_key(args), _url(args)
    client = Client(key, url=url, connect_timeout=args.connect_timeout, reconnect=False)
    started = time.perf_counter()
    try:
        _connect(client, url, args.connect_timeout)
        elapsed = time.perf_counter() - started
        print(f"connected to {_shown(url)}")
        # The first message is always connection.connected: anything else raises
        # ProtocolError above (docs/protocol.md section 4).
        first = client.connected_message
        raw = json.dumps(dict(first.raw), default=str) if first is not None else "{}"
        print(f"first message: {Redactor(key)(raw)}")
        steps = "TCP + TLS + upgrade" if url.startswith("wss://") else "TCP + upgrade"
        print(f"round-trip: {elapsed * 1000:.1f} ms ({steps} + connection.connected)")
        if args.strategy is not None:
            started = time.perf_counter()
            try:
                client.subscribe(SIGNAL, args.strategy, timeout=args.connect_timeout)
            except ServerError as exc:
                print("the API key is valid")  # the connection proved it; the strategy did not
                raise _Failure(
                    EXIT_SUBSCRIPTION,
                    f"the API key is valid, but the subscription to {SIGNAL} {args.strategy} "
                    f"was refused: {' '.join(str(exc).split())}",
                ) from exc
            elapsed = time.perf_counter() - started
            print(
                f"subscribed to {SIGNAL} {args.strategy}: "
                f"subscription.ack after {elapsed * 1000:.1f} ms"
            )
        print("the API key is valid")
    finally:
        client.close()
    return EXIT_OK


# listen -----------------------------------------------------------------------------------


def _status_printer(url: str, stream: TextIO) -> Callable[[State], None]:
    """An ``on_state`` callback printing one status line per change of state (the URL as
    :func:`_shown`: whatever the caller passes)."""
    url = _shown(url)
    opened = 0

    def on_state(state: State) -> None:
        nonlocal opened
        if state is State.CONNECTING:
            text = f"connecting to {url}"
        elif state is State.OPEN:
            opened += 1
            text = f"connected to {url}" if opened == 1 else "reconnected; subscriptions restored"
        elif state is State.RECONNECTING:
            text = "connection lost; reconnecting (signals will resume from the last seq_id)"
        elif not opened:
            return  # the connect failed: its error line says why, and nothing was open
        else:
            text = "closed"
        _emit(f"{PROG}: {text}", stream)

    return on_state


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM (``kill``, ``docker stop``, systemd) stop like Ctrl-C: a clean close."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM for a moment (close() is bounded, about a second)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _listen(args: argparse.Namespace) -> int:
    if not args.signal and not args.positions:
        raise _Failure(EXIT_AUTH, "listen needs at least one --signal ID or --positions ID")
    if args.resume_from is not None and len(args.signal) != 1:
        raise _Failure(EXIT_AUTH, "--resume-from needs exactly one --signal ID")
    key, url = _api_key(args), _url(args)
    if args.max_queue < 1:
        raise _Failure(EXIT_AUTH, "--max-queue must be at least 1")
    client = Client(
        key,
        url=url,
        connect_timeout=args.connect_timeout,
        checkpoint=args.checkpoint or None,
        max_queue=args.max_queue,
    )
    client.on_state(_status_printer(url, sys.stderr))
    with _sigterm_as_interrupt():
        return _listen_loop(args, client, url, key)


def _receive(
    client: Client,
    handle: Callable[[Message], object],
    replay: Callable[[QueueOverflow], None],
    idle: Callable[[], None] | None = None,
    wait: float | None = None,
) -> NoReturn:
    """listen's and record's loop, until an exception (Ctrl-C): each message to
    ``handle``; an overflow to ``replay``, which resubscribes from its resume points;
    ``idle()`` when nothing came for ``wait`` seconds."""
    while True:
        try:
            message = client.recv(timeout=wait)
        except TimeoutError:
            if idle is not None:
                idle()
            continue
        except QueueOverflow as overflow:
            replay(overflow)
            continue
        handle(message)


def _listen_loop(args: argparse.Namespace, client: Client, url: str, key: str) -> int:
    hide = Redactor(key)  # for --json lines; format_message masks before it cuts
    clean = False
    try:
        _connect(client, url, args.connect_timeout)
        for strategy in args.signal:
            client.subscribe(SIGNAL, strategy, resume_from=args.resume_from)
            since = f", replaying after seq_id {args.resume_from}" if args.resume_from else ""
            _err(f"subscribed to {SIGNAL} {strategy}{since}")
        for strategy in args.positions:
            client.subscribe(POSITIONS, strategy)
            _err(f"subscribed to {POSITIONS} {strategy}")
        _err("listening; Ctrl-C to stop")

        def replay(overflow: QueueOverflow) -> None:
            # Our output was too slow (a blocked pipe, say): ask for a replay of what was
            # dropped rather than skip it (docs/api-contract.md "Back-pressure").
            _err(f"{overflow.dropped} message(s) dropped: output too slow; replaying")
            for strategy in args.signal:
                # No entry: no signal of this strategy has arrived, so none was dropped.
                seq_id = overflow.last_seq.get(strategy)
                if seq_id:
                    client.subscribe(SIGNAL, strategy, resume_from=seq_id)

        def show(message: Message) -> None:
            if args.json:
                line = hide(json.dumps(dict(message.raw), separators=(",", ":"), default=str))
            else:
                line = format_message(message, secrets=(key,))
            _emit(line, sys.stdout)

        _receive(client, show, replay)
    except KeyboardInterrupt:
        clean = True
        _err("stopped")
        return EXIT_OK
    except BrokenPipeError:
        clean = True
        # The reader of our output went away (`| head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as error:  # said before the close's "closed" status line, not after
        failure = _as_failure(error)
        _err(failure.text)
        return failure.status
    finally:
        with _signals_ignored():  # a second Ctrl-C must not cut the close short
            if clean:
                client.close()
            else:
                client.close(1011, "client error")


# emulator ---------------------------------------------------------------------------------


def _emulator(argv: Sequence[str]) -> int:
    try:
        from .emulator import main as emulator_main
    except ImportError as exc:
        from ._demo import EMULATOR_MISSING

        raise _Failure(EXIT_ERROR, EMULATOR_MISSING) from exc
    return emulator_main(list(argv), prog=f"{PROG} emulator")


# demo -------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from ._demo import DemoFailed, run

    try:
        run(args.strategy, sys.stdout)
    except DemoFailed as exc:
        raise _Failure(EXIT_ERROR, str(exc)) from exc
    return EXIT_OK


# record -------------------------------------------------------------------------------------


def _record(args: argparse.Namespace) -> int:
    from ._record import record  # it needs the helpers above

    return record(args)


# main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``c2sync`` command.

    Args:
        argv: the arguments without the program name; None reads ``sys.argv``.

    Returns:
        The exit status (see :data:`EXIT_CODES`).
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list and args_list[0] == "emulator":
            # Every option after `emulator` is the emulator's own (one parser, one help).
            return _emulator(args_list[1:])
        args = build_parser(__version__).parse_args(args_list)
        command: Callable[[argparse.Namespace], int] = {
            "check": _check,
            "listen": _listen,
            "demo": _demo,
            "record": _record,
        }[args.command]
        with _logging_for(getattr(args, "verbose", 0)):
            return command(args)
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except Exception as error:  # never a traceback: one line, and -v shows the details
        failure = _as_failure(error)
        _err(failure.text)
        return failure.status


def _as_failure(error: Exception) -> _Failure:
    """The one line and the exit status that report ``error``."""
    if isinstance(error, _Failure):
        return error
    if isinstance(error, ValueError):  # a value the library refused (e.g. a malformed URL)
        return _Failure(EXIT_AUTH, _describe(error))
    logger.debug("the command failed", exc_info=error)
    return _Failure(_exit_status(error), _describe(error))
