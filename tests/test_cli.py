"""The ``c2sync`` command: check, listen, emulator and demo, their one-line errors and exit
statuses, and that the API key is never printed."""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from c2sync import cli, parse_message
from c2sync.emulator import Emulator

from .conftest import API_KEY, FORBIDDEN_STRATEGY, STRATEGY, WAIT

RUN_BOUND = 30.0  # seconds a command may run; never reached when it works


def command() -> list[str]:
    """The installed console script when there is one, else ``python -m c2sync``."""
    script = Path(sys.executable).with_name("c2sync")
    return [str(script)] if script.exists() else [sys.executable, "-m", "c2sync"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("C2_API_KEY", "C2_WS_URL")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """Run ``cli.main(argv)`` in-process; return (status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            status = cli.main(list(argv))
        except SystemExit as exc:  # argparse: usage errors and --help
            status = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return status, out, err

    yield run


def assert_one_line_error(err: str) -> None:
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("c2sync: ")
    assert "Traceback" not in err


class Lines:
    """A subprocess's output lines, read in a thread so every wait is bounded."""

    def __init__(self, stream: IO[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def next(self) -> str:
        line = self.queue.get(timeout=WAIT)
        assert line is not None, f"the stream ended; lines so far: {self.seen}"
        self.seen.append(line)
        return line

    def until(self, predicate: Callable[[str], bool]) -> str:
        while True:
            line = self.next()
            if predicate(line):
                return line

    def rest(self) -> list[str]:
        self.thread.join(WAIT)
        while True:
            line = self.queue.get_nowait()
            if line is None:
                return self.seen
            self.seen.append(line)


@pytest.fixture
def listen(
    emulator: Emulator,
) -> Iterator[Callable[..., tuple[subprocess.Popen[str], Lines, Lines]]]:
    """Start ``c2sync listen ...`` against the emulator; it is stopped when the test ends."""
    processes: list[subprocess.Popen[str]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
        process = subprocess.Popen(
            [*command(), "listen", *args],
            env=clean_env(C2_API_KEY=API_KEY, C2_WS_URL=emulator.url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        assert process.stdout is not None and process.stderr is not None
        return process, Lines(process.stdout), Lines(process.stderr)

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT)


def wait_subscribed(emulator: Emulator, channel: str = "strategy.signal") -> None:
    emulator.wait_for(
        lambda: any(
            (channel, STRATEGY) in r.subscriptions for r in emulator.connections if r.is_open
        ),
        WAIT,
    )


# check ----------------------------------------------------------------------------------


def test_check_good_key(emulator: Emulator, run_main: Callable[..., tuple[int, str, str]]) -> None:
    """`c2sync check` with a valid key prints the first message and round-trip time; exit 0."""
    status, out, err = run_main("check", "--url", emulator.url, "--api-key", API_KEY)
    assert status == 0, err
    assert 'first message: {"msg_type": "connection.connected"' in out
    assert "round-trip: " in out and " ms " in out
    assert out.strip().endswith("the API key is valid")
    assert API_KEY not in out + err
    emulator.wait_for_connections(0, WAIT)
    assert emulator.connections[0].close_code == 1000


def test_check_times_a_subscription(
    emulator: Emulator, run_main: Callable[..., tuple[int, str, str]]
) -> None:
    """`c2sync check --strategy ID` also reports the subscription's round trip."""
    status, out, _ = run_main(
        "check", "--url", emulator.url, "--api-key", API_KEY, "--strategy", str(STRATEGY)
    )
    assert status == 0
    assert f"subscribed to strategy.signal {STRATEGY}: subscription.ack after " in out


def test_check_bad_key_subprocess(emulator: Emulator) -> None:
    """`c2sync check` with a refused key exits 2 with one readable line and no traceback."""
    bad_key = "sk-wrong-0123456789abcdef"
    result = subprocess.run(
        [*command(), "check"],
        env=clean_env(C2_API_KEY=bad_key, C2_WS_URL=emulator.url),
        capture_output=True,
        text=True,
        timeout=RUN_BOUND,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_line_error(result.stderr)
    assert "API key was refused (HTTP 401" in result.stderr
    assert bad_key not in result.stderr


def test_check_verbose_with_a_refused_key_closes_nothing(emulator: Emulator) -> None:
    """`c2sync check -v` with a refused key logs no close of a WebSocket that never opened:
    the state goes CLOSED saying no connection was opened, and no "closing (code 1000)"."""
    result = subprocess.run(
        [*command(), "check", "-v", "--url", emulator.url],
        env=clean_env(C2_API_KEY="sk-wrong-0123456789abcdef"),
        capture_output=True,
        text=True,
        timeout=RUN_BOUND,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.endswith("state: CLOSED (no connection was opened)") for line in lines)
    assert not any(line.endswith("state: CLOSED") for line in lines), lines
    assert "closing (code" not in result.stderr
    assert lines[-1].startswith("c2sync: the API key was refused")


def test_check_refused_strategy_says_the_key_is_valid(
    emulator: Emulator, run_main: Callable[..., tuple[int, str, str]]
) -> None:
    """`c2sync check --strategy ID` refused: the key was fine (said on stdout, as on
    success), and the error line names the strategy refused."""
    forbidden = str(FORBIDDEN_STRATEGY)
    code, out, err = run_main(
        "check", "--url", emulator.url, "--api-key", API_KEY, "--strategy", forbidden
    )
    assert code == cli.EXIT_SUBSCRIPTION
    assert out.strip().endswith("the API key is valid")
    assert_one_line_error(err)
    assert "the API key is valid, but" in err and f"strategy.signal {forbidden}" in err
    assert "FORBIDDEN" in err


@pytest.mark.parametrize(
    "key, strategy, before",
    [
        pytest.param("sk-wrong-0123456789abcdef", STRATEGY, [], id="refused-key"),
        pytest.param(API_KEY, FORBIDDEN_STRATEGY, ["connected to"], id="refused-strategy"),
    ],
)
def test_listen_says_the_error_before_closed(
    emulator: Emulator, key: str, strategy: int, before: list[str]
) -> None:
    """`c2sync listen` failing prints its error line before any "closed" status line, and
    no "closed" at all when no connection was ever open."""
    result = subprocess.run(
        [*command(), "listen", "--signal", str(strategy), "--url", emulator.url],
        env=clean_env(C2_API_KEY=key),
        capture_output=True,
        text=True,
        timeout=RUN_BOUND,
    )
    lines = [line.removeprefix("c2sync: ") for line in result.stderr.splitlines()]
    assert lines[0].startswith("connecting to"), lines
    error = next(i for i, line in enumerate(lines) if "refused" in line)
    assert [line.split(" ws")[0] for line in lines[1:error]] == before
    assert lines[error + 1 :] == (["closed"] if before else []), lines


@pytest.mark.parametrize(
    "setup, extra, status, text",
    [
        pytest.param(lambda emu: None, ["--api-key", ""], 2, "no API key", id="no-key"),
        pytest.param(
            lambda emu: emu.refuse_next(1, 429, headers={"Retry-After": "3"}),
            [],
            3,
            "HTTP 429 RATE_LIMITED",
            id="429",
        ),
        pytest.param(
            lambda emu: emu.refuse_next(1, 503), [], 3, "HTTP 503 SERVICE_UNAVAILABLE", id="503"
        ),
        pytest.param(lambda emu: emu.accept_then_close(1), [], 3, "(1008)", id="1008"),
        pytest.param(
            lambda emu: (emu.stop_heartbeats(), emu.override_first_message(None)),
            ["--connect-timeout", "0.5"],
            4,
            "timed out",
            id="timeout",
        ),
        pytest.param(
            lambda emu: emu.override_first_message('{"msg_type": "heartbeat"}'),
            [],
            1,
            "expected connection.connected first",
            id="protocol-error",
        ),
        pytest.param(
            lambda emu: None,
            ["--strategy", str(FORBIDDEN_STRATEGY)],
            5,
            "FORBIDDEN",
            id="forbidden",
        ),
    ],
)
def test_check_exit_statuses(
    emulator: Emulator,
    run_main: Callable[..., tuple[int, str, str]],
    setup: Callable[[Emulator], Any],
    extra: list[str],
    status: int,
    text: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each kind of failure gives its documented exit status and one line on stderr."""
    monkeypatch.delenv("C2_API_KEY", raising=False)
    setup(emulator)
    args = ["check", "--url", emulator.url, "--api-key", API_KEY, *extra]
    code, _, err = run_main(*args)
    assert code == status, err
    assert_one_line_error(err)
    assert text in err
    assert API_KEY not in err


def test_check_unreachable_host(run_main: Callable[..., tuple[int, str, str]]) -> None:
    """A port nobody listens on gives exit status 4 and one line."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        status, _, err = run_main("check", "--url", f"ws://127.0.0.1:{port}/ws", "--api-key", "k")
    assert status == 4
    assert_one_line_error(err)
    assert "cannot reach the server" in err


def test_check_unresolvable_host(
    run_main: Callable[..., tuple[int, str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host name that does not resolve gives exit status 4 and one line, no traceback."""

    def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    status, _, err = run_main("check", "--url", "ws://c2sync-test.invalid/ws", "--api-key", "k")
    assert status == 4
    assert_one_line_error(err)
    assert "cannot reach the server: cannot resolve the host of ws://c2sync-test.invalid/ws" in err


def test_url_and_key_from_the_environment(
    emulator: Emulator,
    run_main: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --url and --api-key, C2_WS_URL and C2_API_KEY are used."""
    monkeypatch.setenv("C2_API_KEY", API_KEY)
    monkeypatch.setenv("C2_WS_URL", emulator.url)
    status, out, _ = run_main("check")
    assert status == 0
    assert f"connected to {emulator.url}" in out


def test_usage_errors_are_one_line(run_main: Callable[..., tuple[int, str, str]]) -> None:
    """A wrong command line is one line on stderr and exit status 2."""
    status, _, err = run_main("listen", "--signal", "-5")
    assert status == 2
    assert_one_line_error(err.replace("c2sync listen: error:", "c2sync: error:"))
    assert "a strategy id is a positive integer, not -5" in err
    status, _, err = run_main("listen", "--api-key", "k", "--url", "ws://127.0.0.1:9/ws")
    assert status == 2
    assert err.strip() == "c2sync: listen needs at least one --signal ID or --positions ID"


def test_help_documents_exit_statuses() -> None:
    """`python -m c2sync --help` lists the commands and every exit status."""
    result = subprocess.run(
        [sys.executable, "-m", "c2sync", "--help"],
        capture_output=True,
        text=True,
        timeout=RUN_BOUND,
    )
    assert result.returncode == 0
    for name in ("check", "listen", "emulator", "demo"):
        assert name in result.stdout
    for code in cli.EXIT_CODES:
        assert f"  {code:>3}  " in result.stdout


def test_format_message_masks_secrets_before_cutting_the_line() -> None:
    """format_message(secrets=...) shows *** for the key, even where the 120-character cut
    falls inside it (no first characters left at the cut); without secrets, as before."""
    frame = {"msg_type": "x.padded", "pad": "p" * 50, "echo": API_KEY}
    message = parse_message(json.dumps(frame, separators=(",", ":")))
    plain = cli.format_message(message)
    assert plain.endswith("...") and API_KEY[:8] in plain  # the cut falls inside the key
    masked = cli.format_message(message, secrets=(API_KEY,))
    assert API_KEY[:8] not in masked and '"echo":"***"' in masked
    payload = {"strategy_id": 1, "from": 0, "message": API_KEY}
    gap = parse_message(json.dumps({"msg_type": "gap", "payload": payload}))
    assert API_KEY not in cli.format_message(gap, secrets=(API_KEY,))


# listen ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_listen_json_lines_and_stop(
    emulator: Emulator,
    listen: Callable[..., tuple[subprocess.Popen[str], Lines, Lines]],
    stop: signal.Signals,
) -> None:
    """`listen --json` prints valid JSON lines; SIGINT/SIGTERM stop it cleanly with exit 0."""
    process, out, err = listen("--signal", str(STRATEGY), "--positions", str(STRATEGY), "--json")
    err.until(lambda line: "listening" in line)
    wait_subscribed(emulator, "strategy.positions")
    for _ in range(3):
        emulator.publish_signal(STRATEGY)
    emulator.publish_positions(STRATEGY)
    messages = [json.loads(out.next()) for _ in range(4)]
    assert [m["msg_type"] for m in messages] == ["strategy.signal"] * 3 + ["strategy.positions"]
    assert [m.get("seq_id") for m in messages[:3]] == [1, 2, 3]
    assert all(m["payload"]["StrategyId"] == STRATEGY for m in messages)

    process.send_signal(stop)
    assert process.wait(WAIT) == 0  # EXIT_CODES: listen stopped by Ctrl-C exits 0
    stderr = "\n".join(err.rest())
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert API_KEY not in stderr + "\n".join(out.rest())
    emulator.wait_for_connections(0, WAIT)
    assert emulator.connections[0].close_code == 1000


def test_listen_prints_a_compact_line_by_default(
    emulator: Emulator, listen: Callable[..., tuple[subprocess.Popen[str], Lines, Lines]]
) -> None:
    """`listen` without --json prints one short line per message (time, type, strategy,
    seq_id, the order's side, quantity, symbol, price), not the whole 600-character payload."""
    process, out, err = listen("--signal", str(STRATEGY), "--positions", str(STRATEGY))
    err.until(lambda line: "listening" in line)
    wait_subscribed(emulator, "strategy.positions")
    payload = {
        "StrategyId": STRATEGY,
        "SignalId": 150000001,
        "C2Symbol": {"FullSymbol": "@ESZ5", "SymbolType": "future"},
        "Side": "1",
        "OrderType": "2",
        "Quantity": 5,
        "Limit": 5210.25,
        "Notes": "x" * 600,
    }
    emulator.publish_signal(STRATEGY, payload)
    emulator.publish_signal(STRATEGY)  # a generated one, about 550 bytes of JSON
    emulator.publish_positions(STRATEGY)
    lines = [out.next() for _ in range(3)]
    assert all(len(line) <= 120 for line in lines), lines
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d strategy\.signal strategy={STRATEGY} seq_id=1 "
        r"BUY 5 @ESZ5 limit 5210\.25 \(SignalId 150000001\)",
        lines[0],
    ), lines[0]
    assert re.match(
        rf"\d\d:\d\d:\d\d strategy\.signal strategy={STRATEGY} seq_id=2 "
        r"(BUY|SELL) \d+ \S+ (market|limit|stop)",
        lines[1],
    ), lines[1]
    assert re.match(
        rf"\d\d:\d\d:\d\d strategy\.positions strategy={STRATEGY} 2 open: \S+ [+-]\d+ @ ",
        lines[2],
    ), lines[2]
    process.send_signal(signal.SIGINT)
    assert process.wait(WAIT) == 0


def test_listen_reports_reconnect_and_resumes(
    emulator: Emulator, listen: Callable[..., tuple[subprocess.Popen[str], Lines, Lines]]
) -> None:
    """`listen` reports connect and reconnect, then prints the signals missed meanwhile."""
    process, out, err = listen("--signal", str(STRATEGY))
    # The state lines come from the client's dispatcher thread, in order; "subscribed to"
    # and "listening" from the main thread once connect() and subscribe() returned, which
    # need not wait for the dispatcher: they may come before, between or after.
    err.until(lambda line: line == f"c2sync: connected to {emulator.url}")
    assert f"c2sync: connecting to {emulator.url}" in err.seen[:-1], err.seen
    wait_subscribed(emulator)
    emulator.publish_signal(STRATEGY)
    assert f" strategy.signal strategy={STRATEGY} seq_id=1 " in out.next()

    emulator.drop()
    err.until(lambda line: "reconnecting" in line)
    emulator.publish_signal(STRATEGY)
    emulator.publish_signal(STRATEGY)
    err.until(lambda line: "reconnected" in line)
    assert f" strategy.signal strategy={STRATEGY} seq_id=2 " in out.next()
    assert f" strategy.signal strategy={STRATEGY} seq_id=3 " in out.next()
    resumes = [r.resume_from for r in emulator.connections[-1].subscription_requests]
    assert resumes == [1]

    process.send_signal(signal.SIGINT)
    assert process.wait(WAIT) == 0  # EXIT_CODES: listen stopped by Ctrl-C exits 0
    assert "Traceback" not in "\n".join(err.rest())


def test_listen_resume_from(
    emulator: Emulator, listen: Callable[..., tuple[subprocess.Popen[str], Lines, Lines]]
) -> None:
    """`c2sync listen --resume-from N` replays the signals after N first."""
    for _ in range(4):
        emulator.publish_signal(STRATEGY)
    process, out, _ = listen("--signal", str(STRATEGY), "--resume-from", "2", "--json")
    assert [json.loads(out.next())["seq_id"] for _ in range(2)] == [3, 4]
    process.send_signal(signal.SIGINT)
    assert process.wait(WAIT) == 0  # EXIT_CODES: listen stopped by Ctrl-C exits 0


def test_listen_slow_output_is_replayed_or_reported(emulator: Emulator) -> None:
    """When `listen`'s output blocks, the overflow is replayed (1000) and the rest is a GAP."""
    count = 1300  # ~850 kB of JSON: far more than a pipe holds while nobody reads it
    process = subprocess.Popen(
        [*command(), "listen", "--signal", str(STRATEGY), "--json", "--max-queue", "1000"],
        env=clean_env(C2_API_KEY=API_KEY, C2_WS_URL=emulator.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        err = Lines(process.stderr)
        err.until(lambda line: "listening" in line)
        wait_subscribed(emulator)
        for _ in range(count):
            emulator.publish_signal(STRATEGY)
        # The client has read and queued every signal, while its printing is stuck on the full
        # pipe. An ack for a heartbeat sent after the last signal says it has read them all
        # (frames are read in order), but the reader sends the acks of a batch before it
        # queues the batch's messages. So: a second heartbeat, sent after that first ack came
        # back (it cannot be in the batch that held the first heartbeat), acknowledged too;
        # the reader handles one batch at a time, so the first batch was queued by then.
        published_at = time.monotonic()

        def all_queued() -> bool:
            beats = emulator.connections[-1].heartbeats
            acks = [b.acked_at for b in beats if b.sent_at > published_at and b.acked_at]
            return bool(acks) and any(b.sent_at > acks[0] and b.acked_at for b in beats)

        emulator.wait_for(all_queued, WAIT)
        out = Lines(process.stdout)  # now read: the client's main thread resumes
        messages = []
        while not messages or messages[-1]["msg_type"] != "gap":
            messages.append(json.loads(out.next()))
        seq_ids = [m["seq_id"] for m in messages[:-1]]
        assert seq_ids == list(range(1, len(seq_ids) + 1))  # none lost before the gap, no dups
        resumed_from = int(messages[-1]["payload"]["from"])
        assert seq_ids[-1] == resumed_from + 1000  # the replay filled what it could
        err.until(lambda line: "dropped: output too slow; replaying" in line)
        process.send_signal(signal.SIGINT)
        assert process.wait(WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)


def test_listen_survives_a_dns_blip_while_reconnecting(
    emulator: Emulator,
    run_main: Callable[..., tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`listen` keeps reconnecting through a transient name-resolution failure."""
    real_getaddrinfo = socket.getaddrinfo
    failures = [0]

    def flaky_dns(*args: Any, **kwargs: Any) -> Any:
        if failures[0] > 0:
            failures[0] -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real_getaddrinfo(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", flaky_dns)
    result: list[tuple[int, str, str]] = []
    args = ("listen", "--signal", str(STRATEGY), "--url", emulator.url, "--api-key", API_KEY)
    thread = threading.Thread(target=lambda: result.append(run_main(*args)), daemon=True)
    thread.start()
    try:
        wait_subscribed(emulator)
        failures[0] = 1  # the next resolution fails once, as on a flaky network
        emulator.drop()
        # A second accepted handshake after the failed resolution: listen went through it.
        emulator.wait_for(lambda: emulator.handshakes_accepted >= 2, WAIT)
        assert failures[0] == 0, "the failing resolution was never attempted"
        assert thread.is_alive(), f"listen ended: {result}"
        wait_subscribed(emulator)
    finally:
        # Stop listen: the next reconnect is refused with 401, which ends it (exit 2).
        emulator.refuse_next(5, 401)
        emulator.drop()
        thread.join(WAIT)
    assert not thread.is_alive()


def test_listen_bad_key(emulator: Emulator) -> None:
    """`c2sync listen` with a refused key exits 2 with one line (after its status lines)."""
    result = subprocess.run(
        [*command(), "listen", "--signal", str(STRATEGY), "--url", emulator.url],
        env=clean_env(C2_API_KEY="nope-nope"),
        capture_output=True,
        text=True,
        timeout=RUN_BOUND,
    )
    assert result.returncode == 2
    errors = [t for t in result.stderr.splitlines() if "refused" in t]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "nope-nope" not in result.stderr


# emulator and demo ------------------------------------------------------------------------


# Run a command with SIGINT ignored, as a shell script starts `command &`: `trap "" INT`
# sets SIG_IGN, which exec keeps.
SIGINT_IGNORED = ["sh", "-c", 'trap "" INT; exec "$@"', "sh"]


def start_emulator_command(
    *args: str, prefix: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], str]:
    """`c2sync emulator --port 0 --api-key cli-key --strategy 424242 ARGS`; its URL."""
    process = subprocess.Popen(
        [
            *prefix,
            *command(),
            "emulator",
            "--port",
            "0",
            "--api-key",
            "cli-key",
            "--strategy",
            "424242",
            *args,
        ],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, Lines(process.stdout).next()


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=WAIT)


@pytest.mark.parametrize(
    "stop, status",
    [(signal.SIGINT, cli.EXIT_INTERRUPTED), (signal.SIGTERM, cli.EXIT_TERMINATED)],
    ids=["SIGINT", "SIGTERM"],
)
def test_emulator_command_serves_until_stopped(stop: signal.Signals, status: int) -> None:
    """`c2sync emulator` prints its URL, serves and publishes, and stops on Ctrl-C (exit
    130) or SIGTERM (exit 143) as EXIT_CODES says, closing its connections first."""
    import c2sync

    process, url = start_emulator_command("--signal-every", "0.1")
    try:
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/ws")
        with c2sync.connect("cli-key", url=url, connect_timeout=WAIT) as client:
            client.subscribe(c2sync.SIGNAL, 424242)
            message = client.recv(timeout=WAIT)
            assert isinstance(message, c2sync.Signal) and message.strategy_id == 424242
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=WAIT)
        assert process.returncode == status, stderr
        assert "emulator stopped" in stderr
        assert "Traceback" not in stderr and "cli-key" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)


def test_demo_shows_the_resume() -> None:
    """`c2sync demo` needs no key or network, shows the drop and lossless resume; exit 0."""
    result = subprocess.run(
        [*command(), "demo"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=RUN_BOUND,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "state: RECONNECTING" in out
    assert "emulator published seq_id=4 while the client is disconnected" in out
    assert "the client resubscribed with resume_from=3" in out
    assert "(published while disconnected; replayed)" in out
    assert "published: [1, 2, 3, 4, 5, 6, 7, 8]" in out
    assert "received:  [1, 2, 3, 4, 5, 6, 7, 8]" in out
    assert "no signal lost, none duplicated" in out
    heartbeats = next(t for t in out.splitlines() if "acks_sent=" in t and "emulator received" in t)
    assert "heartbeats=0" not in heartbeats
    # The numbers it prints agree (issue 28: "heartbeats=5 acks_sent=5; ... received 6 acks").
    counts = re.search(r"heartbeats=(\d+) acks_sent=(\d+); the emulator received (\d+) acks", out)
    assert counts and len(set(counts.groups())) == 1, heartbeats
    final = re.search(r"client.stats: messages=(\d+) heartbeats=(\d+) acks_sent=(\d+)", out)
    assert final and final.group(2) == final.group(3), out
    assert int(final.group(1)) >= 8  # the 8 signals and the positions update, at least
    assert "Traceback" not in result.stderr


def test_main_leaves_the_callers_logging_as_it_was(
    emulator: Emulator, run_main: Callable[..., tuple[int, str, str]]
) -> None:
    """Calling cli.main() in-process does not silence or re-handle the library's logging."""
    log = logging.getLogger("c2sync")
    level, handlers = log.level, list(log.handlers)
    for verbose in ([], ["-v"]):
        run_main("check", "--url", emulator.url, "--api-key", API_KEY, *verbose)
        assert (log.level, log.handlers) == (level, handlers)


def test_emulator_command_publishes_positions_for_listen() -> None:
    """`c2sync emulator --positions-every S` publishes strategy.positions updates (its
    --help says so), and `c2sync listen --positions ID` prints them as positions lines."""
    help_text = subprocess.run(
        [*command(), "emulator", "--help"], capture_output=True, text=True, timeout=RUN_BOUND
    ).stdout
    assert "--positions-every SECONDS" in help_text
    emulator, url = start_emulator_command("--positions-every", "0.1")
    listener = subprocess.Popen(
        [*command(), "listen", "--positions", "424242", "--url", url],
        env=clean_env(C2_API_KEY="cli-key"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None
        line = Lines(listener.stdout).next()
        assert "strategy.positions" in line and "424242" in line, line
    finally:
        stop_process(listener)
        stop_process(emulator)


def test_emulator_started_with_sigint_ignored_keeps_ignoring_it() -> None:
    """A script's background `c2sync emulator &` (SIGINT ignored on purpose) is not stopped
    by SIGINT, as `listen` is not: SIGINT then SIGTERM exits 143, from the SIGTERM. (A
    handled SIGINT would win: pending signals run lowest number first.)"""
    process, _ = start_emulator_command(prefix=SIGINT_IGNORED)
    try:
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT)
        assert process.returncode == cli.EXIT_TERMINATED, stderr
    finally:
        stop_process(process)


def test_listen_started_with_sigint_ignored_keeps_ignoring_it(emulator: Emulator) -> None:
    """A script's background `c2sync listen &` keeps listening after a SIGINT (the shell
    ignored it on purpose), and stops cleanly on SIGTERM."""
    process = subprocess.Popen(
        [*SIGINT_IGNORED, *command(), "listen", "--signal", str(STRATEGY), "--url", emulator.url],
        env=clean_env(C2_API_KEY=API_KEY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        wait_subscribed(emulator)
        process.send_signal(signal.SIGINT)
        emulator.publish_signal(STRATEGY)
        assert "seq_id=1" in Lines(process.stdout).next()  # still listening
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT)
        assert process.returncode == cli.EXIT_OK, stderr
    finally:
        stop_process(process)


URL_SECRETS = ("S3cretUrlPw", "S3cretQuery", "S3cretFragment")


def secret_url(emulator: Emulator) -> str:
    """The emulator's URL with a password, a query and a fragment: none may be printed."""
    scheme, rest = emulator.url.split("://", 1)
    return f"{scheme}://bob:S3cretUrlPw@{rest}?token=S3cretQuery#S3cretFragment"


def assert_no_url_secret(text: str) -> None:
    assert not [secret for secret in URL_SECRETS if secret in text], text


def test_check_and_listen_print_no_url_password_query_or_fragment(
    emulator: Emulator,
    run_main: Callable[..., tuple[int, str, str]],
    listen: Callable[..., tuple[subprocess.Popen[str], Lines, Lines]],
) -> None:
    """The URL's user:password@, query and fragment never reach check's or listen's output:
    every line names the URL as ``Options.safe_url`` does."""
    url = secret_url(emulator)
    status, out, err = run_main("check", "--url", url, "--api-key", API_KEY)
    assert status == 0, err
    assert "connected to ws://***@127.0.0.1:" in out
    assert_no_url_secret(out + err)

    process, out_lines, err_lines = listen("--url", url, "--signal", str(STRATEGY))
    err_lines.until(lambda line: "listening" in line)
    process.send_signal(signal.SIGINT)
    assert process.wait(WAIT) == 0
    printed = "\n".join(err_lines.rest() + out_lines.rest())
    assert "connecting to ws://***@127.0.0.1:" in printed
    assert_no_url_secret(printed)
