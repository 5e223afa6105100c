"""The ``c2sync`` command's words: exit statuses, argument types, the parser.

Called by :func:`c2sync.cli.main` on the user's thread, once per run. Guarantees: a usage
error is one line on stderr with exit status 2 (no usage dump); ``--help`` lists every exit
status (:data:`EXIT_CODES`); the key is never printed.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import NoReturn

from ._spec import DEFAULT_URL

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
    "KEY_ENV",
    "PROG",
    "URL_ENV",
    "build_parser",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_AUTH = 2
EXIT_REFUSED = 3
EXIT_NETWORK = 4
EXIT_SUBSCRIPTION = 5
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

#: What each exit status means (shown by ``c2sync --help`` and in the README).
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success (and `listen` or `record` stopped with Ctrl-C or SIGTERM)",
    EXIT_ERROR: "any other error (the server broke the protocol, the emulator could not start)",
    EXIT_AUTH: "no API key, the key was refused (HTTP 401), or a wrong command line",
    EXIT_REFUSED: "the server refused the connection: HTTP 429 (rate or connection limit), "
    "503 or another status, or a 1008 close right after the upgrade",
    EXIT_NETWORK: "a timeout or a network error (host unreachable, connection lost, TLS)",
    EXIT_SUBSCRIPTION: "the server refused a subscription (e.g. FORBIDDEN)",
    EXIT_INTERRUPTED: "interrupted with Ctrl-C (any command but `listen` and `record`)",
    EXIT_TERMINATED: "`emulator` stopped with SIGTERM (`kill`, `docker stop`)",
}

KEY_ENV = "C2_API_KEY"
URL_ENV = "C2_WS_URL"
PROG = "c2sync"


# Arguments ------------------------------------------------------------------------------


def _strategy_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a strategy id: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a strategy id is a positive integer, not {text}")
    return value


def _seq_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seq_id: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seq_id is not negative: {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_AUTH, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _wrap(text: str) -> str:
    return textwrap.fill(text, 78)


def _epilog() -> str:
    lines = ["exit status:"]
    for code, text in EXIT_CODES.items():
        lines.append(
            textwrap.fill(text, 78, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
        )
    lines.append("")
    lines.append(f"The key comes from --api-key or ${KEY_ENV}; the URL from --url or ${URL_ENV}")
    lines.append(f"(default {DEFAULT_URL}). The key is never printed.")
    return "\n".join(lines)


def build_parser(version: str) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="A synchronous client for the Collective2 API v4 WebSocket.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-V", "--version", action="version", version=f"c2sync {version}"
    )

    connection = _Parser(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument("--api-key", metavar="KEY", help=f"the API key (default: ${KEY_ENV})")
    group.add_argument(
        "--url", metavar="URL", help=f"the WebSocket URL (default: ${URL_ENV}, else {DEFAULT_URL})"
    )
    group.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="seconds to wait for the connection (10)",
    )
    verbosity = _Parser(add_help=False)
    verbosity.add_argument(
        "-v", "--verbose", action="count", default=0, help="show the library's log (-vv: debug)"
    )

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    check = commands.add_parser(
        "check",
        parents=[connection, verbosity],
        help="verify the API key: connect, print the first message and the round-trip time",
        description=_wrap(
            "Connect, print the first message and the round-trip time, and close. "
            "With --strategy, also time a subscription's round trip."
        ),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--strategy",
        type=_strategy_id,
        metavar="ID",
        help="also subscribe to this strategy's signals and time the server's ack",
    )

    listen = commands.add_parser(
        "listen",
        parents=[connection, verbosity],
        help="subscribe and print each message until Ctrl-C",
        description=_wrap(
            "Subscribe and print each message until Ctrl-C (or SIGTERM). Lost connections "
            "are re-opened and signals resumed, as the library does. Status lines go to stderr."
        ),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen.add_argument(
        "--signal",
        type=_strategy_id,
        action="append",
        default=[],
        metavar="ID",
        help="subscribe to this strategy's signals (repeatable)",
    )
    listen.add_argument(
        "--positions",
        type=_strategy_id,
        action="append",
        default=[],
        metavar="ID",
        help="subscribe to this strategy's position updates (repeatable)",
    )
    listen.add_argument(
        "--resume-from",
        type=_seq_id,
        metavar="N",
        help="replay the signals after seq_id N (needs exactly one --signal)",
    )
    listen.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="keep the last processed seq_id per strategy in FILE and resume from it",
    )
    listen.add_argument(
        "--json", action="store_true", help="print each message as one line of JSON (as received)"
    )
    listen.add_argument(
        "--max-queue",
        type=int,
        default=10_000,
        metavar="N",
        help="messages held while the output is slow; beyond it the oldest are dropped "
        "and replayed (10000)",
    )

    record = commands.add_parser(
        "record",
        parents=[connection, verbosity],
        help="keep every signal, position update and gap in a database, each once",
        description=_wrap(
            "Write every signal (and with --positions every position update), and every "
            "gap, into the table c2sync_journal of a SQLite or PostgreSQL database, each "
            "exactly once across reconnects, restarts and kills: the signals' checkpoint "
            "commits with each row. Until Ctrl-C (or SIGTERM); exit 0."
        ),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    record.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="sqlite:///signals.db (sqlite:////abs/path.db) or postgresql://user@host/db",
    )
    record.add_argument(
        "--strategy",
        type=_strategy_id,
        action="append",
        default=[],
        metavar="ID",
        help="record this strategy's signals (repeatable)",
    )
    record.add_argument(
        "--positions",
        action="store_true",
        help="also record the position updates of every --strategy",
    )

    commands.add_parser(
        "emulator",
        add_help=False,
        help="run the local emulator (see c2sync emulator --help)",
        description="Run the local Collective2 emulator; every option is the emulator's.",
    )

    demo = commands.add_parser(
        "demo",
        parents=[verbosity],
        help="watch signals, heartbeats, a dropped connection and its resume (no key needed)",
        description=_wrap(
            "Start the emulator in-process, connect to it, and show in about ten seconds: "
            "signals arriving, heartbeats answered, a dropped connection, the signals "
            "published meanwhile, and the resume without loss. Needs no key and no network."
        ),
    )
    demo.add_argument(
        "--strategy",
        type=_strategy_id,
        default=12345678,
        metavar="ID",
        help="the strategy id the demo uses (12345678)",
    )
    return parser
