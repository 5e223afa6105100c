"""The emulator's dialects (``Emulator(dialect=...)``, ``--dialect``): each reading of an
open point of the docs, checked on the wire.

Clients here are websockets' own sync client and websocket-client's raw frames, never
c2sync's client: these tests check the emulator's bytes, so that tests of the client run
against each reading (and users' own tests) can trust them.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import websocket
from websockets.sync.client import ClientConnection

from c2sync.emulator import DIALECTS, Emulator
from c2sync.emulator._dialect import Dialect, parse_dialect
from c2sync.emulator._rules import SignalLog

from .test_emulator import (
    KEY,
    OTHER,
    REPO,
    STRATEGY,
    WAIT,
    closed_by_server,
    connected,
    now_ts,
    recv,
    request,
    subscribe,
)

FORBIDDEN_TEXT = "Not authorized to subscribe to Strategy"  # docs/protocol.md section 6


@pytest.fixture
def make() -> Iterator[Any]:
    """Start emulators with both strategies and slow heartbeats (no acks needed), in a
    dialect; keyword arguments override the rest. Every one is closed at the end."""
    started: list[Emulator] = []

    def start(dialect: dict[str, Any] | None = None, **options: Any) -> Emulator:
        emu = Emulator(api_keys={KEY}, strategies={STRATEGY, OTHER}, dialect=dialect, **options)
        started.append(emu)
        return emu.start()

    yield start
    for emu in started:
        emu.close()


def until(ws: ClientConnection, msg_type: str) -> dict[str, Any]:
    """The next message of ``msg_type``, skipping heartbeats."""
    while True:
        message = recv(ws)
        if message["msg_type"] == msg_type:
            return message
        assert message["msg_type"] == "heartbeat", message


def answer(ws: ClientConnection, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Send a subscription request; the next message that is not a heartbeat."""
    ws.send(request(*args, **kwargs))
    while True:
        message = recv(ws)
        if message["msg_type"] != "heartbeat":
            return message


def whole_seconds(offset: float = 0.0) -> str:
    when = datetime.now(timezone.utc) + timedelta(seconds=offset)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- choosing a dialect -------------------------------------------------------------------


def test_dialects_table_names_every_point_with_its_default() -> None:
    """DIALECTS lists each point; its defaults are today's readings, and an emulator made
    without a dialect reports exactly those."""
    assert list(DIALECTS) == [
        "seq_scope",
        "resume_from",
        "ack_request_id",
        "ack_payload",
        "errors",
        "positions_seq",
        "gap_from",
        "v",
        "extra_fields",
        "frames",
        "replay",
        "timestamps",
        "pings",
        "heartbeat_close_code",
    ]
    defaults = {name: point.default for name, point in DIALECTS.items()}
    assert defaults == {
        "seq_scope": "strategy",
        "resume_from": "both",
        "ack_request_id": "echo",
        "ack_payload": "echo",
        "errors": "flat",
        "positions_seq": "absent",
        "gap_from": "string",
        "v": 4,
        "extra_fields": "none",
        "frames": "text",
        "replay": "after_ack",
        "timestamps": "lenient",
        "pings": "off",
        "heartbeat_close_code": 1000,
    }
    for point in DIALECTS.values():
        assert not point.values or point.values[0] == point.default
    assert Emulator().dialect == defaults
    assert parse_dialect(None) == parse_dialect({}) == Dialect()


def test_dialect_is_checked_on_construction() -> None:
    """An unknown name or value is a ValueError listing the allowed ones; integer points
    take ints or digit strings."""
    with pytest.raises(ValueError, match="the dialects are: seq_scope, resume_from"):
        Emulator(dialect={"frame": "binary"})
    with pytest.raises(ValueError, match=r"frames must be text \| binary, not 'bin'"):
        Emulator(dialect={"frames": "bin"})
    with pytest.raises(ValueError, match="v must be an integer >= 4"):
        Emulator(dialect={"v": 3})
    with pytest.raises(ValueError, match="v must be an integer >= 4"):
        Emulator(dialect={"v": True})
    with pytest.raises(ValueError, match="1000-1003, 1007-1014 or 3000-4999"):
        Emulator(dialect={"heartbeat_close_code": 1005})
    with pytest.raises(TypeError):
        Emulator(dialect=["frames=binary"])  # type: ignore[arg-type]
    emu = Emulator(dialect={"v": "5", "heartbeat_close_code": 4000, "frames": "binary"})
    assert (emu.dialect["v"], emu.dialect["heartbeat_close_code"]) == (5, 4000)
    assert emu.dialect["frames"] == "binary" and emu.dialect["seq_scope"] == "strategy"


# -- seq_scope -----------------------------------------------------------------------------


def test_seq_scope_global_numbers_every_strategy_from_one_counter(make: Any) -> None:
    """seq_scope=global: a strategy's seq_ids jump (1, 3, 5); a resume replays that
    strategy's signals above resume_from, and a gap names the number resumed from."""
    emu = make({"seq_scope": "global"}, max_replay=1)
    seqs = [emu.publish_signal(s) for s in (STRATEGY, OTHER, STRATEGY, OTHER, STRATEGY)]
    assert seqs == [1, 2, 3, 4, 5]
    assert (emu.last_seq(STRATEGY), emu.last_seq(OTHER)) == (5, 4)
    with connected(emu.url) as ws:
        subscribe(ws, resume_from=3)
        assert until(ws, "strategy.signal")["seq_id"] == 5  # not OTHER's 4
        subscribe(ws, strategy_id=OTHER, request_id="r2")
        assert emu.publish_signal(OTHER) == 6
        live = until(ws, "strategy.signal")
        assert (live["seq_id"], live["payload"]["StrategyId"]) == (6, OTHER)
    with connected(emu.url) as ws:
        subscribe(ws, resume_from=1)  # two missed (3 and 5); max_replay=1
        assert until(ws, "strategy.signal")["seq_id"] == 3
        gap = until(ws, "gap")["payload"]
        assert gap["from"] == "1" and gap["channel"] == f"strategy.signal:{STRATEGY}"


def test_seq_scope_strategy_numbers_each_strategy_apart(make: Any) -> None:
    emu = make({"seq_scope": "strategy"})
    seqs = [emu.publish_signal(s) for s in (STRATEGY, OTHER, STRATEGY)]
    assert seqs == [1, 1, 2]


@pytest.mark.parametrize("scope", ["strategy", "global"])
def test_signal_log_gap_when_the_buffer_let_missed_signals_go(scope: str) -> None:
    """A resume below what the log still holds replays what it holds, then a gap, in
    either scope (the pure rule)."""
    log = SignalLog(replay_size=2, max_replay=10, dialect=Dialect(seq_scope=scope))
    for _ in range(4):
        seq = log.next_seq(STRATEGY)
        log.append(STRATEGY, seq, f"frame{seq}")
    replay = log.replay(STRATEGY, 1)
    assert replay.frames == ("frame3", "frame4")
    assert replay.gap is not None and "no longer holds" in replay.gap["message"]
    assert log.replay(STRATEGY, 2).gap is None
    assert log.replay(STRATEGY, 4).frames == ()


# -- resume_from ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reading, value, accepted",
    [
        ("both", 2, True),
        ("both", "2", True),
        ("number", 2, True),
        ("number", "2", False),
        ("string", "2", True),
        ("string", 2, False),
    ],
)
def test_resume_from_types_per_dialect(
    make: Any, reading: str, value: Any, accepted: bool
) -> None:
    """resume_from=number refuses a string, =string a number, =both takes either: the
    refusal is an INVALID_PARAMETER error on field ResumeFrom naming resume_from."""
    emu = make({"resume_from": reading})
    for _ in range(3):
        emu.publish_signal(STRATEGY)
    with connected(emu.url) as ws:
        first = answer(ws, resume_from=value)
        if accepted:
            assert first["msg_type"] == "subscription.ack"
            assert until(ws, "strategy.signal")["seq_id"] == 3
            return
        assert first["msg_type"] == "error" and first["request_id"] == "r1"
        assert first["payload"]["code"] == "INVALID_PARAMETER"
        assert first["payload"]["field"] == "ResumeFrom"
        assert "resume_from" in first["payload"]["message"]
        assert emu.connections[0].subscription_requests[0].error == "INVALID_PARAMETER"
        assert emu.connections[0].subscriptions == frozenset()
        other = "2" if isinstance(value, int) else 2
        assert answer(ws, resume_from=other, request_id="r2")["msg_type"] == "subscription.ack"


# -- acks and errors -------------------------------------------------------------------------


@pytest.mark.parametrize("reading", ["echo", "absent"])
def test_ack_request_id(make: Any, reading: str) -> None:
    """ack_request_id=absent: neither acks nor errors carry request_id."""
    emu = make({"ack_request_id": reading})
    with connected(emu.url) as ws:
        ack = answer(ws)
        error = answer(ws, strategy_id=55555555, request_id="r2")
    assert (ack["msg_type"], error["msg_type"]) == ("subscription.ack", "error")
    if reading == "echo":
        assert (ack["request_id"], error["request_id"]) == ("r1", "r2")
    else:
        assert "request_id" not in ack and "request_id" not in error


@pytest.mark.parametrize(
    "reading, payload",
    [
        ("echo", {"action": "subscribe", "channel": "strategy.signal", "strategy_id": STRATEGY}),
        ("empty", {}),
        ("absent", None),
    ],
)
def test_ack_payload(make: Any, reading: str, payload: Any) -> None:
    emu = make({"ack_payload": reading})
    with connected(emu.url) as ws:
        ack = subscribe(ws)
    assert ack.get("payload", None) == payload
    assert ("payload" in ack) == (reading != "absent")


@pytest.mark.parametrize("reading", ["flat", "list"])
def test_errors_shape(make: Any, reading: str) -> None:
    """errors=list: only payload.errors, a list of {code, field, message}, even for one."""
    emu = make({"errors": reading})
    problem = {"code": "FORBIDDEN", "field": "StrategyId", "message": FORBIDDEN_TEXT}
    with connected(emu.url) as ws:
        error = answer(ws, strategy_id=55555555)
    assert error["msg_type"] == "error"
    assert error["payload"] == (problem if reading == "flat" else {"errors": [problem]})


# -- positions, gap, envelope --------------------------------------------------------------


@pytest.mark.parametrize("reading", ["absent", "present"])
def test_positions_seq(make: Any, reading: str) -> None:
    """positions_seq=present: positions carry 1, 2, ... of their own per strategy, apart
    from the signals' numbering."""
    emu = make({"positions_seq": reading})
    with connected(emu.url) as ws:
        subscribe(ws, channel="strategy.positions")
        subscribe(ws, channel="strategy.positions", strategy_id=OTHER, request_id="r2")
        subscribe(ws, request_id="r3")
        emu.publish_positions(STRATEGY)
        emu.publish_positions(STRATEGY)
        emu.publish_positions(OTHER)
        emu.publish_signal(STRATEGY)
        got = [until(ws, "strategy.positions") for _ in range(3)]
        signal_seq = until(ws, "strategy.signal")["seq_id"]
    assert signal_seq == 1
    if reading == "present":
        assert [(m["payload"]["StrategyId"], m["seq_id"]) for m in got] == [
            (STRATEGY, 1),
            (STRATEGY, 2),
            (OTHER, 1),
        ]
    else:
        assert all("seq_id" not in message for message in got)


@pytest.mark.parametrize("reading, expected", [("string", "1"), ("number", 1)])
def test_gap_from(make: Any, reading: str, expected: Any) -> None:
    emu = make({"gap_from": reading}, max_replay=1)
    for _ in range(3):
        emu.publish_signal(STRATEGY)
    with connected(emu.url) as ws:
        subscribe(ws, resume_from=1)
        assert until(ws, "strategy.signal")["seq_id"] == 2
        gap = until(ws, "gap")
    assert gap["payload"]["from"] == expected


def test_envelope_v(make: Any) -> None:
    """v=5 on every message the server sends: connected, ack, signal, error, heartbeat."""
    emu = make({"v": 5}, heartbeat_interval=0.2, heartbeat_grace=5)
    with connected(emu.url) as ws:
        seen = {"subscription.ack": subscribe(ws)["v"]}
        emu.publish_signal(STRATEGY)
        ws.send(request(strategy_id=55555555, request_id="r2"))
        while len(seen) < 4:
            message = recv(ws)
            seen[message["msg_type"]] = message["v"]
    assert seen == {"subscription.ack": 5, "strategy.signal": 5, "error": 5, "heartbeat": 5}
    assert json.loads(emu_first_frame(emu))["v"] == 5  # connection.connected


def emu_first_frame(emu: Emulator) -> str | bytes:
    """The first frame a new connection receives, as received."""
    with RawClient(emu) as ws:
        return ws.recv()


class RawClient:
    """websocket-client's raw connection to ``emu``, closed on exit."""

    def __init__(self, emu: Emulator) -> None:
        self.ws = websocket.create_connection(
            emu.url, header=[f"Authorization: Bearer {KEY}"], timeout=WAIT
        )

    def __enter__(self) -> websocket.WebSocket:
        return self.ws

    def __exit__(self, *exc_info: object) -> None:
        self.ws.close(timeout=1)


@pytest.mark.parametrize("reading", ["none", "present"])
def test_extra_fields(make: Any, reading: str) -> None:
    """extra_fields=present: unknown fields, nested too, in every envelope and payload."""
    emu = make({"extra_fields": reading}, max_replay=1)
    for _ in range(3):
        emu.publish_signal(STRATEGY)
    with connected(emu.url) as ws:
        messages = [answer(ws, resume_from=1)]
        messages += [until(ws, "strategy.signal"), until(ws, "gap")]
        messages.append(answer(ws, strategy_id=55555555, request_id="r2"))
    messages.append(json.loads(emu_first_frame(emu)))
    kinds = [m["msg_type"] for m in messages]
    assert kinds == ["subscription.ack", "strategy.signal", "gap", "error", "connection.connected"]
    for message in messages:
        assert ("x_trace" in message) == (reading == "present")
        if "payload" in message:
            payload = message["payload"]
            assert ("x_trace" in payload) == (reading == "present")
            if reading == "present":
                assert payload["x_meta"]["x_nested"]["tags"] == ["a", "b"]
    if reading == "present":
        assert messages[0]["x_meta"]["region"] == "emu-1"


# -- frames --------------------------------------------------------------------------------


@pytest.mark.parametrize("reading", ["text", "binary"])
def test_frames(make: Any, reading: str) -> None:
    """frames=binary: every server message, connection.connected first, is a binary frame
    holding UTF-8 JSON; a client's binary JSON frame is read too."""
    kind = bytes if reading == "binary" else str
    emu = make({"frames": reading}, heartbeat_interval=0.2, heartbeat_grace=5)
    with RawClient(emu) as raw:
        opcode, data = raw.recv_data()
        assert opcode == (websocket.ABNF.OPCODE_BINARY if kind is bytes else 1)
        assert json.loads(data.decode("utf-8"))["msg_type"] == "connection.connected"
    with connected(emu.url) as ws:
        frames: list[str | bytes] = []
        ws.send(request())
        frames.append(ws.recv(timeout=WAIT))
        emu.wait_for(lambda: bool(emu.connections[-1].subscriptions))
        emu.publish_signal(STRATEGY)
        ws.send(request(strategy_id=55555555, request_id="r2"))
        while len(frames) < 4 or not any(b"heartbeat" in _bytes(f) for f in frames):
            frames.append(ws.recv(timeout=WAIT))
        assert all(type(frame) is kind for frame in frames)
        types = {json.loads(frame)["msg_type"] for frame in frames}
        assert {"subscription.ack", "strategy.signal", "error", "heartbeat"} <= types
        ws.send(request(strategy_id=OTHER, request_id="r3").encode())  # a binary request
        reply = until(ws, "subscription.ack" if kind is bytes else "error")
        if kind is str:
            assert reply["payload"]["message"] == "Binary frames are not supported"


def _bytes(frame: str | bytes) -> bytes:
    return frame if isinstance(frame, bytes) else frame.encode()


def test_send_raw_keeps_its_frame_type_under_binary(make: Any) -> None:
    """Fault knobs send as given: send_raw's text stays text under frames=binary."""
    emu = make({"frames": "binary"})
    with connected(emu.url) as ws:
        emu.send_raw('{"msg_type":"custom"}')
        assert ws.recv(timeout=WAIT) == '{"msg_type":"custom"}'


# -- replay order --------------------------------------------------------------------------


@pytest.mark.parametrize("reading", ["after_ack", "before_ack"])
def test_replay_order(make: Any, reading: str) -> None:
    """replay=before_ack: the replayed signals (and gap) come before subscription.ack."""
    emu = make({"replay": reading}, max_replay=2)
    for _ in range(4):
        emu.publish_signal(STRATEGY)
    with connected(emu.url) as ws:
        ws.send(request(resume_from=1))
        order = [(m["msg_type"], m.get("seq_id")) for m in (recv(ws) for _ in range(4))]
    replayed = [("strategy.signal", 2), ("strategy.signal", 3), ("gap", None)]
    ack = [("subscription.ack", None)]
    assert order == (ack + replayed if reading == "after_ack" else replayed + ack)


# -- timestamps ----------------------------------------------------------------------------


def test_strict_timestamps_take_only_the_documented_forms(make: Any) -> None:
    """timestamps=strict: 2024-01-01T12:00:00Z and Python's isoformat() (with or without
    microseconds) pass; milliseconds with Z does not: INVALID_PARAMETER, Timestamp, 'format
    is invalid'. The one-minute window still holds."""
    emu = make({"timestamps": "strict"})
    now = datetime.now(timezone.utc)
    good = [whole_seconds(), now.isoformat(), now.replace(microsecond=0).isoformat()]
    bad = [now_ts(), now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), now.isoformat()[:-6]]
    with connected(emu.url) as ws:
        for stamp in good:
            assert answer(ws, timestamp=stamp)["msg_type"] == "subscription.ack", stamp
        for stamp in bad:
            error = answer(ws, timestamp=stamp)
            assert error["msg_type"] == "error", stamp
            assert error["payload"]["code"] == "INVALID_PARAMETER"
            assert error["payload"]["field"] == "Timestamp"
            assert "format is invalid" in error["payload"]["message"]
        ws.send(json.dumps({"msg_type": "heartbeat.ack", "timestamp": now_ts()}))
        assert "format is invalid" in until(ws, "error")["payload"]["message"]
        late = answer(ws, timestamp=whole_seconds(-300))
        assert late["msg_type"] == "error" and "away from UTC" in late["payload"]["message"]


def test_lenient_timestamps_take_milliseconds(make: Any) -> None:
    emu = make({"timestamps": "lenient"})
    with connected(emu.url) as ws:
        assert answer(ws, timestamp=now_ts())["msg_type"] == "subscription.ack"
        late = answer(ws, timestamp=whole_seconds(-300))
        assert late["msg_type"] == "error" and "away from UTC" in late["payload"]["message"]


# -- pings and the heartbeat close code ----------------------------------------------------


def test_pings_on_sends_pings_counts_pongs_and_never_closes_for_missing_ones(
    make: Any,
) -> None:
    """pings=on: WebSocket pings arrive (every half heartbeat interval); a client that does
    not answer them is not closed; the pongs it then sends are counted."""
    emu = make({"pings": "on"}, heartbeat_interval=0.2, heartbeat_grace=WAIT)
    with RawClient(emu) as raw:
        pings = 0
        while pings < 3:  # read raw frames: websocket-client answers none of these pings
            frame = raw.recv_frame()  # the grace outlasts the test: no acks needed
            pings += frame.opcode == websocket.ABNF.OPCODE_PING
        record = emu.connections[0]
        assert record.is_open and record.pings_sent >= 3 and record.pongs_received == 0
        raw.pong(frame.data)
        emu.wait_for(lambda: emu.connections[0].pongs_received >= 1, WAIT)
        assert emu.connections[0].is_open


def test_pings_off_sends_none(make: Any) -> None:
    emu = make({"pings": "off"}, heartbeat_interval=0.2, heartbeat_grace=WAIT)
    with RawClient(emu) as raw:
        beats = 0
        while beats < 3:
            frame = raw.recv_frame()
            assert frame.opcode != websocket.ABNF.OPCODE_PING
            beats += json.loads(frame.data)["msg_type"] == "heartbeat"
    assert emu.connections[0].pings_sent == 0


@pytest.mark.parametrize("code", [None, 1008, 1011, 4000])
def test_heartbeat_close_code(make: Any, code: int | None) -> None:
    """A client that never acks is closed with the dialect's code (default 1000), reason
    'heartbeat timeout'."""
    dialect = {} if code is None else {"heartbeat_close_code": code}
    emu = make(dialect, heartbeat_interval=0.2, heartbeat_grace=0.2)
    with connected(emu.url) as ws:
        closed = closed_by_server(ws)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (code or 1000, "heartbeat timeout")


# -- forbid / allow ------------------------------------------------------------------------


def test_forbid_refuses_new_subscriptions_until_allowed(make: Any) -> None:
    """forbid(): new subscriptions to the strategy, both channels, get the docs' FORBIDDEN
    error; those held already keep streaming; allow() undoes it."""
    emu = make()
    with connected(emu.url) as ws:
        subscribe(ws)
        emu.forbid(STRATEGY)
        problem = {"code": "FORBIDDEN", "field": "StrategyId", "message": FORBIDDEN_TEXT}
        for channel in ("strategy.signal", "strategy.positions"):
            error = answer(ws, channel=channel, request_id="r2")
            assert (error["msg_type"], error["payload"]) == ("error", problem)
        assert answer(ws, strategy_id=OTHER, request_id="r3")["msg_type"] == "subscription.ack"
        emu.publish_signal(STRATEGY)
        assert until(ws, "strategy.signal")["seq_id"] == 1  # the held subscription
        emu.allow(STRATEGY)
        assert answer(ws, channel="strategy.positions")["msg_type"] == "subscription.ack"
    with pytest.raises(ValueError):
        emu.forbid(0)


# -- the command line ----------------------------------------------------------------------


def _run_emulator(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "c2sync.emulator", "--port", "0", "--api-key", KEY]
    return subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )


def test_command_line_dialect_flags_are_applied() -> None:
    """--dialect NAME=VALUE (repeatable) reaches the emulator: binary frames, v=5."""
    with _run_emulator("--dialect", "frames=binary", "--dialect", "v=5") as process:
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], WAIT)
            assert ready, "no URL printed"
            url = process.stdout.readline().strip()
            ws = websocket.create_connection(
                url, header=[f"Authorization: Bearer {KEY}"], timeout=WAIT
            )
            try:
                first = ws.recv()
            finally:
                ws.close(timeout=1)
            assert isinstance(first, bytes) and json.loads(first)["v"] == 5
            process.send_signal(signal.SIGINT)
            assert process.wait(WAIT) == 130
            assert process.stderr is not None
            assert "dialect: frames=binary, v=5" in process.stderr.read()
        finally:
            process.kill()


def test_command_line_refuses_a_bad_dialect_with_the_allowed_values() -> None:
    with _run_emulator("--dialect", "replay=later") as process:
        _, err = process.communicate(timeout=WAIT)
    assert process.returncode == 2
    assert "replay must be after_ack | before_ack, not 'later'" in err
    assert "Traceback" not in err
    with _run_emulator("--help") as process:
        out, _ = process.communicate(timeout=WAIT)
    assert "--dialect NAME=VALUE" in out
    for name, point in DIALECTS.items():
        assert f"  {name}={point.allowed} (default {point.default})" in out
