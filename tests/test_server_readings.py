"""Servers that read the docs differently, through the public API, against scripted
raw-socket servers (tests/hostile.py): each test plays one reading byte by byte.

docs/api-contract.md "Servers that read the docs differently": the client sends only the
documented forms, accepts every plausible reading of what the docs leave open, and when a
server refuses a resubscription it tells the user (a message in their stream, on_error),
never carrying on silently with less than they asked for. The emulator's dialects play the
same readings for the whole user flow (tests/test_dialect_matrix.py).
"""

from __future__ import annotations

import json
import queue
import re
import threading
from datetime import datetime, timezone
from typing import Any

import pytest

import c2sync

from .conftest import API_KEY, WAIT, MakeServer
from .hostile import CONNECTED, Conn, frame, text

A = 11111111
B = 22222222
STAMP = datetime.now(timezone.utc).isoformat(timespec="milliseconds")[:23] + "Z"
DOCUMENTED_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def server_frame(msg_type: str, binary: bool = False, **fields: Any) -> bytes:
    obj = {"msg_type": msg_type, "id": f"msg_{msg_type}", "timestamp": STAMP, "v": 4, **fields}
    data = json.dumps(obj).encode("utf-8")
    return frame(0x2, data) if binary else frame(0x1, data)


def signal(strategy_id: int, seq: int, binary: bool = False) -> bytes:
    payload = {"strategy_id": strategy_id, "Note": "café"}
    return server_frame("strategy.signal", binary, seq_id=seq, payload=payload)


def ack_for(request: dict[str, Any], binary: bool = False) -> bytes:
    return server_frame(
        "subscription.ack", binary, request_id=request["request_id"], payload=request["payload"]
    )


class Script:
    """What a scripted server saw, shared between its connections and the test."""

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.frames: list[dict[str, Any]] = []  # every text frame the client sent
        self.count = 0
        self.lock = threading.Lock()

    def number(self) -> int:
        with self.lock:
            self.count += 1
            return self.count

    def read(self, conn: Conn) -> dict[str, Any]:
        """The client's next frame that is not a heartbeat ack, recorded."""
        while True:
            obj: dict[str, Any] = json.loads(conn.next_text())
            self.frames.append(obj)
            if obj["msg_type"] == "subscription.request":
                return obj


def drain(conn: Conn, script: Script) -> None:
    """Read (and record) until the client goes."""
    try:
        while True:
            script.read(conn)
    except (EOFError, OSError):
        pass


def test_a_refused_resubscription_reaches_the_user_and_the_rest_streams_on(
    make_server: MakeServer,
) -> None:
    """After a reconnect the server refuses strategy A's restore: recv() sees the
    ErrorMessage in order, on_error gets one ServerError naming the pair, A leaves
    subscriptions and subscription_stats, and B keeps streaming."""
    script = Script()

    def handler(conn: Conn) -> None:
        number = script.number()
        conn.accept()
        conn.sock.sendall(text(CONNECTED))
        for _ in range(2):  # A, then B (each subscribe() waits for its ack)
            request = script.read(conn)
            if number > 1 and request["payload"]["strategy_id"] == A:
                conn.sock.sendall(server_frame(
                    "error",
                    request_id=request["request_id"],
                    payload={"code": "FORBIDDEN", "field": "StrategyId",
                             "message": "Not authorized to subscribe to Strategy"},
                ))
            else:
                conn.sock.sendall(ack_for(request))
        if number == 1:
            conn.sock.sendall(signal(A, 1) + signal(B, 1))
            return  # the link drops
        conn.sock.sendall(signal(B, 2))
        drain(conn, script)

    server = make_server(handler)
    errors: list[BaseException] = []
    told = threading.Event()

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        if isinstance(exc, c2sync.ServerError):
            told.set()

    with c2sync.connect(API_KEY, url=server.url, connect_timeout=WAIT) as client:
        client.on_error(on_error)
        client.subscribe(c2sync.SIGNAL, A)
        client.subscribe(c2sync.SIGNAL, B)
        got = [client.recv(timeout=WAIT) for _ in range(4)]
        assert [(type(m).__name__, m.seq_id) for m in got] == [
            ("Signal", 1), ("Signal", 1), ("ErrorMessage", None), ("Signal", 2)
        ]
        assert [m.strategy_id for m in got if isinstance(m, c2sync.Signal)] == [A, B, B]
        refusal = got[2]
        assert isinstance(refusal, c2sync.ErrorMessage) and refusal.code == "FORBIDDEN"
        assert told.wait(WAIT)
        assert client.subscriptions == frozenset({(c2sync.SIGNAL, B)})
        assert set(client.subscription_stats) == {(c2sync.SIGNAL, B)}
        assert client.state is c2sync.State.OPEN
    refused = [e for e in errors if isinstance(e, c2sync.ServerError)]
    assert len(refused) == 1
    assert (refused[0].channel, refused[0].strategy_id) == (c2sync.SIGNAL, A)
    assert refused[0].code == "FORBIDDEN"


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_binary_json_frames_are_read_like_text(make_server: MakeServer, binary: bool) -> None:
    """A server that sends every message, connection.connected first, as a binary frame of
    UTF-8 JSON: the client connects, subscribes and receives exactly as with text."""
    script = Script()

    def handler(conn: Conn) -> None:
        conn.accept()
        conn.sock.sendall(server_frame("connection.connected", binary))
        request = script.read(conn)
        conn.sock.sendall(ack_for(request, binary))
        conn.sock.sendall(server_frame("heartbeat", binary) + signal(A, 1, binary))
        conn.sock.sendall(signal(A, 2, binary))
        drain(conn, script)

    server = make_server(handler)
    with c2sync.connect(API_KEY, url=server.url, connect_timeout=WAIT) as client:
        ack = client.subscribe(c2sync.SIGNAL, A)
        assert ack.strategy_id == A
        got = [client.recv(timeout=WAIT) for _ in range(2)]
        assert [(m.seq_id, m.payload["Note"]) for m in got] == [(1, "café"), (2, "café")]
        assert client.stats.malformed == 0
    acks = [f for f in script.frames if f["msg_type"] == "heartbeat.ack"]
    assert len(acks) == 1


def test_what_the_client_sends_has_the_documented_form(make_server: MakeServer) -> None:
    """Requests and heartbeat acks carry timestamps of the documented examples' exact form
    (2024-01-01T12:00:00Z), and only the documented fields."""
    script = Script()

    def handler(conn: Conn) -> None:
        conn.accept()
        conn.sock.sendall(text(CONNECTED))
        request = script.read(conn)
        conn.sock.sendall(ack_for(request))
        conn.sock.sendall(server_frame("heartbeat") + signal(A, 42))
        drain(conn, script)

    server = make_server(handler)
    with c2sync.connect(API_KEY, url=server.url, connect_timeout=WAIT) as client:
        client.subscribe(c2sync.SIGNAL, A, resume_from=41)
        assert client.recv(timeout=WAIT).seq_id == 42
    request, ack = script.frames[:2]
    assert list(request) == ["msg_type", "request_id", "timestamp", "payload"]
    assert request["payload"] == {"action": "subscribe", "channel": "strategy.signal",
                                  "strategy_id": A, "resume_from": 41}
    assert list(ack) == ["msg_type", "timestamp"]
    assert all(DOCUMENTED_STAMP.fullmatch(f["timestamp"]) for f in script.frames[:2])


@pytest.mark.parametrize("form", ["number", "string"])
def test_resume_from_in_the_form_the_server_takes(make_server: MakeServer, form: str) -> None:
    """A server taking resume_from in one JSON type only: subscribe() succeeds either way
    (a number first, the string once if refused for it), and the form that worked is the
    one sent after a reconnect."""
    script = Script()
    wanted = int if form == "number" else str

    def handler(conn: Conn) -> None:
        number = script.number()
        conn.accept()
        conn.sock.sendall(text(CONNECTED))
        while True:
            request = script.read(conn)
            resume = request["payload"].get("resume_from")
            if resume is not None and type(resume) is not wanted:
                conn.sock.sendall(server_frame(
                    "error", request_id=request["request_id"],
                    payload={"code": "INVALID_PARAMETER", "field": "ResumeFrom",
                             "message": f"resume_from must be a {form}"},
                ))
                continue
            conn.sock.sendall(ack_for(request))
            if number == 1:
                conn.sock.sendall(signal(A, 42))
                return  # the link drops after the first signal
            conn.sock.sendall(signal(A, 43))
            drain(conn, script)
            return

    server = make_server(handler)
    with c2sync.connect(API_KEY, url=server.url, connect_timeout=WAIT) as client:
        client.subscribe(c2sync.SIGNAL, A, resume_from=41)
        assert [client.recv(timeout=WAIT).seq_id for _ in range(2)] == [42, 43]
        assert client.subscriptions == frozenset({(c2sync.SIGNAL, A)})
    sent = [f["payload"]["resume_from"] for f in script.frames
            if f["msg_type"] == "subscription.request"]
    if form == "number":
        assert sent == [41, 42]
    else:
        assert sent == [41, "41", "42"]
