"""The emulator against the written protocol (docs/protocol.md), driven by independent clients.

Clients here are websockets' own sync client, the docs' asyncio example, and curl: never
c2sync's client, so the emulator is checked against the protocol, not against itself.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import select
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import trustme
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from c2sync.emulator import Emulator

KEY = "emu-test-key-0c1d"
STRATEGY = 12345678
OTHER = 87654321
FORBIDDEN = 55555555
WAIT = 5.0  # bound on every wait; only reached when something is wrong
# Heartbeats scaled down from 30 s + 10 s. The grace is a second: these clients answer from
# the test thread, or not at all, and a test must get its next step in (stop the heartbeats,
# stall, read an error) before the emulator closes them; a CPU stall of a few hundred ms on
# a loaded CI machine must not make that a race.
HB, GRACE = 0.2, 1.0
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """Heartbeats slow enough that clients which never ack stay connected for a test."""
    with Emulator(api_keys={KEY, "other-key"}, strategies={STRATEGY, OTHER}) as emulator:
        yield emulator


@pytest.fixture
def fast() -> Iterator[Emulator]:
    """Heartbeats every HB (0.2 s) with GRACE (1 s) of grace."""
    with Emulator(
        api_keys={KEY}, strategies={STRATEGY}, heartbeat_interval=HB, heartbeat_grace=GRACE
    ) as emulator:
        yield emulator


def now_ts(offset: float = 0.0) -> str:
    when = datetime.now(timezone.utc) + timedelta(seconds=offset)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


# A plain, direct connection on every supported websockets: `legacy=True` (16+) keeps
# connect() from returning its reconnecting wrapper, `proxy=None` (15+, which reads the
# proxy variables) keeps it off any proxy; older versions have neither and need neither.
_CONNECT_PARAMS = inspect.signature(connect).parameters
PLAIN: dict[str, Any] = {
    name: value
    for name, value in (("legacy", True), ("proxy", None))
    if name in _CONNECT_PARAMS
}


def client(url: str, key: str = KEY, **kwargs: Any) -> ClientConnection:
    return connect(
        url,
        additional_headers={"Authorization": f"Bearer {key}"},
        open_timeout=WAIT,
        close_timeout=1,
        **PLAIN,  # tests close the connection themselves
        **kwargs,
    )


def connected(url: str, key: str = KEY, **kwargs: Any) -> ClientConnection:
    """A client past the upgrade and the ``connection.connected`` message."""
    ws = client(url, key, **kwargs)
    assert recv(ws)["msg_type"] == "connection.connected"
    return ws


def recv(ws: ClientConnection, timeout: float = WAIT) -> dict[str, Any]:
    message = json.loads(ws.recv(timeout=timeout))
    assert isinstance(message, dict)
    return message


def request(
    action: str = "subscribe",
    channel: str = "strategy.signal",
    strategy_id: Any = STRATEGY,
    *,
    request_id: str | None = "r1",
    resume_from: Any = None,
    timestamp: str | None = None,
) -> str:
    payload: dict[str, Any] = {"action": action, "channel": channel, "strategy_id": strategy_id}
    if resume_from is not None:
        payload["resume_from"] = resume_from
    message: dict[str, Any] = {
        "msg_type": "subscription.request",
        "timestamp": timestamp or now_ts(),
        "payload": payload,
    }
    if request_id is not None:
        message["request_id"] = request_id
    return json.dumps(message)


def subscribe(ws: ClientConnection, *args: Any, **kwargs: Any) -> dict[str, Any]:
    ws.send(request(*args, **kwargs))
    answer = recv(ws)
    assert answer["msg_type"] == "subscription.ack", answer
    return answer


def quiet(ws: ClientConnection, emu: Emulator, seconds: float) -> None:
    """Assert nothing arrives for ``seconds`` but heartbeats already sent before the call."""
    sent = {beat.id for record in emu.connections for beat in record.heartbeats}
    with pytest.raises(TimeoutError):
        while True:
            message = recv(ws, timeout=seconds)
            assert message["msg_type"] == "heartbeat" and message["id"] in sent, message


def closed_by_server(ws: ClientConnection) -> ConnectionClosed:
    """Read until the connection ends; the ConnectionClosed that ended it."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=WAIT)
    return info.value


CURL_UPGRADE = [  # the docs' own check (seed): the upgrade headers, with -i
    "-H",
    "Connection: Upgrade",
    "-H",
    "Upgrade: websocket",
    "-H",
    "Sec-WebSocket-Version: 13",
    "-H",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
]


def curl(url: str, key: str) -> str:
    http_url = url.replace("ws://", "http://", 1)  # curl 7.x has no ws:// scheme
    command = ["curl", "-s", "-i", "--max-time", "3", "-H", f"Authorization: Bearer {key}"]
    done = subprocess.run(
        [*command, *CURL_UPGRADE, http_url], capture_output=True, timeout=WAIT, check=False
    )
    return done.stdout.decode("utf-8", "replace")


# -- handshake (docs/protocol.md sections 1-2) -------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_docs_curl_check_valid_key_switches_protocols(fast: Emulator) -> None:
    """The docs' curl step with a valid key sees 101 Switching Protocols."""
    out = curl(fast.url, KEY)
    assert out.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    head = out.split("\r\n\r\n", 1)[0].lower()
    assert "upgrade: websocket" in head
    assert "connection: upgrade" in head
    assert "connection.connected" in out  # the first frame follows the upgrade


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_docs_curl_check_bad_key_gets_401_json(emu: Emulator) -> None:
    """The docs' curl step with a bad key sees 401, X-WS-Error and the UNAUTHORIZED body."""
    out = curl(emu.url, "wrong-key")
    head, body = out.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 401 ")
    headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
    headers = {name.lower(): value for name, value in headers.items()}
    assert headers["x-ws-error"] == "Invalid API key"
    assert headers["content-length"] == str(len(body.encode()))
    assert json.loads(body) == {"code": "UNAUTHORIZED", "message": "Invalid API key"}
    assert emu.handshakes_refused == 1
    assert emu.handshakes_accepted == 0


def test_missing_key_and_wrong_path_are_refused(emu: Emulator) -> None:
    """No Authorization header gets 401; a path other than /ws gets 404."""
    with pytest.raises(InvalidStatus) as info:
        connect(emu.url, open_timeout=WAIT, **PLAIN)
    assert info.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as info:
        client(emu.url.replace("/ws", "/other"))
    assert info.value.response.status_code == 404


def test_eleventh_connection_on_a_key_is_refused_with_429(emu: Emulator) -> None:
    """Ten connections per key are allowed; the 11th gets 429 CONNECTION_LIMIT."""
    clients = [client(emu.url) for _ in range(10)]
    try:
        with pytest.raises(InvalidStatus) as info:
            client(emu.url)
        response = info.value.response
        assert response.status_code == 429
        assert response.headers["X-WS-Error"]
        assert json.loads(response.body)["code"] == "CONNECTION_LIMIT"
        with client(emu.url, "other-key"):  # the limit is per key
            pass
        clients.pop().close()
        emu.wait_for_connections(9)
        clients.append(client(emu.url))  # a slot freed is usable again
    finally:
        for ws in clients:
            ws.close()


# -- first frame and heartbeats (sections 4-5) --------------------------------------------


def test_first_frame_is_connection_connected_envelope(emu: Emulator) -> None:
    """The first frame is connection.connected with id, timestamp, v=4 and no payload."""
    with client(emu.url) as ws:
        message = recv(ws)
    assert set(message) == {"msg_type", "id", "timestamp", "v"}
    assert message["msg_type"] == "connection.connected"
    assert message["id"].startswith("msg_")
    assert message["v"] == 4
    datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00"))


def test_docs_example_client_stays_connected_while_it_acks(fast: Emulator) -> None:
    """The docs' own asyncio client, acking heartbeats, stays connected past interval+grace."""
    API_KEY, WS_URL = KEY, fast.url  # the docs' names

    async def run() -> None:  # the seed's example, verbatim but for the two constants
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with websockets.connect(WS_URL, additional_headers=headers) as ws:
            # Wait for connection.connected
            msg = json.loads(await ws.recv())
            print(f"Connected: {msg['msg_type']}")
            async for raw in ws:
                msg = json.loads(raw)
                if msg["msg_type"] == "heartbeat":
                    ack = {
                        "msg_type": "heartbeat.ack",
                        "timestamp": datetime.now(timezone.utc).isoformat(),
                    }
                    await ws.send(json.dumps(ack))
                else:
                    # Handle other messages
                    print(msg)

    beats = round(2 * (HB + GRACE) / HB)

    def acked(count: int) -> bool:
        records = fast.connections
        return bool(records) and sum(b.acked_at is not None for b in records[0].heartbeats) >= count

    async def main() -> None:
        task = asyncio.create_task(run())
        try:
            # Twice interval + grace of acked heartbeats: it would have been closed without them.
            await asyncio.to_thread(fast.wait_for, lambda: acked(beats), WAIT)
            assert not task.done()
            assert fast.connections[0].is_open
        finally:
            task.cancel()

    asyncio.run(main())
    record = fast.connections[0]
    assert record.sent_close_reason != "heartbeat timeout"
    for beat in record.heartbeats[:beats]:
        assert beat.acked_at is not None and beat.acked_at >= beat.sent_at
    assert len(record.acks) >= beats


def test_client_that_never_acks_is_closed_after_interval_plus_grace(fast: Emulator) -> None:
    """No heartbeat.ack: closed with 1000 "heartbeat timeout" soon after interval+grace."""
    start = time.monotonic()
    ws = connected(fast.url)
    error = closed_by_server(ws)
    elapsed = time.monotonic() - start
    assert error.rcvd is not None
    assert (error.rcvd.code, error.rcvd.reason) == (1000, "heartbeat timeout")
    assert HB + GRACE - 0.05 <= elapsed <= HB + GRACE + 1.0
    heartbeat_frames = fast.connections[0].heartbeats
    assert heartbeat_frames and all(b.acked_at is None for b in heartbeat_frames)


def test_heartbeat_envelope_and_ack_with_bad_timestamp_not_counted(fast: Emulator) -> None:
    """Heartbeats carry no seq_id or payload; an ack with a skewed timestamp gets an error."""
    ws = connected(fast.url)
    beat = recv(ws)
    assert set(beat) == {"msg_type", "id", "timestamp", "v"}
    assert beat["msg_type"] == "heartbeat"
    ws.send(json.dumps({"msg_type": "heartbeat.ack", "timestamp": now_ts(-120)}))
    error = recv(ws)
    while error["msg_type"] == "heartbeat":  # the next one may come first (every HB)
        error = recv(ws)
    assert error["msg_type"] == "error"
    assert (error["payload"]["code"], error["payload"]["field"]) == (
        "INVALID_PARAMETER",
        "Timestamp",
    )
    assert closed_by_server(ws).rcvd is not None  # the bad ack did not count
    assert all(b.acked_at is None for b in fast.connections[0].heartbeats)


# -- subscriptions (section 6) -------------------------------------------------------------


def test_subscription_ack_echoes_request_and_is_idempotent(emu: Emulator) -> None:
    """subscription.ack echoes request_id, action, channel, strategy_id; repeats are acked."""
    with connected(emu.url) as ws:
        ack = subscribe(ws, request_id="sub-1")
        assert ack["request_id"] == "sub-1"
        assert ack["payload"] == {
            "action": "subscribe",
            "channel": "strategy.signal",
            "strategy_id": STRATEGY,
        }
        assert "seq_id" not in ack
        subscribe(ws, request_id="sub-2")
        subscribe(ws, "unsubscribe", request_id="sub-3")
        subscribe(ws, "unsubscribe", request_id="sub-4")
        assert subscribe(ws, "subscribe", "strategy.positions", OTHER)["payload"]["channel"] == (
            "strategy.positions"
        )
    assert emu.connections[0].subscriptions == {("strategy.positions", OTHER)}


def test_hundred_and_first_subscription_is_refused() -> None:
    """100 channel+strategy pairs per connection; the 101st gets an error, repeats still ack."""
    strategies = range(1, 52)
    with Emulator(api_keys={KEY}, strategies=strategies) as emu, connected(emu.url) as ws:
        pairs = [(c, s) for s in range(1, 51) for c in ("strategy.signal", "strategy.positions")]
        for n, (channel, strategy) in enumerate(pairs):
            ws.send(request("subscribe", channel, strategy, request_id=f"r{n}"))
        answers = [recv(ws) for _ in pairs]
        assert [a["msg_type"] for a in answers] == ["subscription.ack"] * 100
        ws.send(request("subscribe", "strategy.signal", 51, request_id="r101"))
        error = recv(ws)
        assert error["msg_type"] == "error" and error["request_id"] == "r101"
        assert error["payload"]["code"]
        subscribe(ws, "subscribe", "strategy.signal", 1)  # an existing pair: acked
        subscribe(ws, "unsubscribe", "strategy.signal", 1)
        subscribe(ws, "subscribe", "strategy.signal", 51)  # room again
        assert len(emu.connections[0].subscriptions) == 100


def test_timestamp_two_minutes_off_is_invalid_parameter(emu: Emulator) -> None:
    """A timestamp 2 min off UTC gets INVALID_PARAMETER/Timestamp; Z and +00:00 both pass."""
    with connected(emu.url) as ws:
        for offset in (-120, 120):
            ws.send(request(request_id="late", timestamp=now_ts(offset)))
            error = recv(ws)
            assert error["msg_type"] == "error"
            assert error["request_id"] == "late"
            assert error["payload"]["code"] == "INVALID_PARAMETER"
            assert error["payload"]["field"] == "Timestamp"
        utc = datetime.now(timezone.utc)
        for stamp in (
            utc.isoformat(),  # +00:00 with microseconds, as the docs' example client sends
            utc.replace(microsecond=0).isoformat(),
            utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            now_ts(),
        ):
            subscribe(ws, timestamp=stamp)


def test_bad_request_fields_are_invalid_parameter(emu: Emulator) -> None:
    """request_id over 50 chars, bad action/channel/strategy_id each get INVALID_PARAMETER."""
    cases = [
        (request(request_id="x" * 51), "RequestId"),
        (request("watch"), "Action"),
        (request(channel="strategy.trades"), "Channel"),
        (request(strategy_id="12345678"), "StrategyId"),
        (request(strategy_id=0), "StrategyId"),
        (request(resume_from=-1), "ResumeFrom"),
        (request(resume_from="9" * 5000), "ResumeFrom"),
        (request(timestamp="9999-12-31T23:59:59-01:00"), "Timestamp"),
        (request(timestamp="yesterday"), "Timestamp"),
        (request(channel="strategy.positions", resume_from=5), "ResumeFrom"),
    ]
    with connected(emu.url) as ws:
        for frame, field in cases:
            ws.send(frame)
            error = recv(ws)
            assert error["msg_type"] == "error", frame
            assert (error["payload"]["code"], error["payload"]["field"]) == (
                "INVALID_PARAMETER",
                field,
            )
        ws.send(request("watch", "strategy.trades", -1))
        errors = recv(ws)["payload"]["errors"]  # several problems at once: a list (section 8)
        assert [e["field"] for e in errors] == ["Action", "Channel", "StrategyId"]
        assert emu.connections[0].subscriptions == frozenset()


def test_forbidden_strategy_error_with_request_id(emu: Emulator) -> None:
    """A strategy the key may not see gets the docs' FORBIDDEN error, echoing request_id."""
    with connected(emu.url) as ws:
        ws.send(request(strategy_id=FORBIDDEN, request_id="sub-9"))
        error = recv(ws)
        subscribe(ws)  # the connection stays usable
    assert error["msg_type"] == "error"
    assert error["request_id"] == "sub-9"
    assert error["payload"] == {
        "code": "FORBIDDEN",
        "field": "StrategyId",
        "message": "Not authorized to subscribe to Strategy",
    }
    assert [r.error for r in emu.connections[0].subscription_requests] == ["FORBIDDEN", None]


def test_forbidden_strategy_error_without_request_id_like_the_docs() -> None:
    """echo_request_id_on_error=False reproduces the docs' example error: no request_id."""
    with Emulator(
        api_keys={KEY}, strategies={STRATEGY}, echo_request_id_on_error=False
    ) as emu, connected(emu.url) as ws:
        ws.send(request(strategy_id=FORBIDDEN, request_id="sub-9"))
        error = recv(ws)
        emu.echo_request_id_on_error = True  # switchable while running
        ws.send(request(strategy_id=FORBIDDEN, request_id="sub-10"))
        assert recv(ws)["request_id"] == "sub-10"
    assert set(error) == {"msg_type", "id", "timestamp", "v", "payload"}
    assert error["payload"]["code"] == "FORBIDDEN"


def test_malformed_frames_get_an_error_and_the_connection_stays_up(emu: Emulator) -> None:
    """Bad JSON, a JSON array, binary and unknown msg_types get `error`; the link stays up."""
    with connected(emu.url) as ws:
        hostile = ("not json {", "[1, 2]", b"\x00\x01", '{"msg_type": "dance"}', "[" * 100_000)
        for frame in hostile:
            ws.send(frame)
            error = recv(ws)
            assert error["msg_type"] == "error"
            assert error["payload"]["code"] == "INVALID_PARAMETER"
        subscribe(ws)
    frames = emu.connections[0].frames
    assert [f.data for f in frames[:3]] == ["not json {", "[1, 2]", b"\x00\x01"]
    assert frames[0].message is None and frames[1].message == [1, 2]
    assert frames[3].msg_type == "dance"


# -- signals, positions, resume and gap (section 7) -----------------------------------------


def test_signals_carry_increasing_seq_ids_per_strategy_to_every_subscriber(
    emu: Emulator,
) -> None:
    """Each strategy's signals count up from 1 and reach every subscribed connection."""
    with connected(emu.url) as a, connected(emu.url) as b, connected(emu.url) as c:
        subscribe(a)
        subscribe(b)
        subscribe(c, strategy_id=OTHER)
        assert [emu.publish_signal(STRATEGY) for _ in range(3)] == [1, 2, 3]
        assert emu.publish_signal(OTHER, {"note": "custom"}) == 1
        for ws in (a, b):
            got = [recv(ws) for _ in range(3)]
            assert [m["seq_id"] for m in got] == [1, 2, 3]
        other = recv(c)
    assert other["seq_id"] == 1 and other["payload"] == {"note": "custom"}
    signal_message = got[0]
    assert signal_message["msg_type"] == "strategy.signal"
    payload = signal_message["payload"]
    assert payload["StrategyId"] == STRATEGY
    assert {"SignalId", "C2Symbol", "Side", "OrderType", "Quantity", "Limit", "Stop"} <= set(
        payload
    )
    assert payload["Side"] in ("1", "2")
    assert 300 <= len(json.dumps(signal_message)) <= 800
    assert emu.last_seq(STRATEGY) == 3
    with pytest.raises(ValueError):
        emu.publish_signal(FORBIDDEN)


def test_positions_reach_positions_subscribers_without_seq_id(emu: Emulator) -> None:
    """strategy.positions goes to its subscribers only, with no seq_id, and stops on unsubscribe."""
    with connected(emu.url) as ws, connected(emu.url) as bystander:
        subscribe(ws, channel="strategy.positions")
        subscribe(ws)
        subscribe(bystander)
        assert emu.publish_positions(STRATEGY) == 1
        message = recv(ws)
        assert message["msg_type"] == "strategy.positions"
        assert "seq_id" not in message
        assert message["payload"]["StrategyId"] == STRATEGY
        position = message["payload"]["Positions"][0]
        assert {"C2Symbol", "Quantity", "AvgPx"} <= set(position)
        emu.publish_positions(STRATEGY, {"Positions": []})
        assert recv(ws)["payload"] == {"Positions": []}
        subscribe(ws, "unsubscribe", "strategy.positions")
        assert emu.publish_positions(STRATEGY) == 0
        emu.publish_signal(STRATEGY)
        assert recv(ws)["msg_type"] == "strategy.signal"  # no positions in between
        assert recv(bystander)["msg_type"] == "strategy.signal"


def test_resume_replays_1000_then_gap_then_live(emu: Emulator) -> None:
    """1500 published, resume_from=100: 101..1100 in order, the docs' gap, then live ones."""
    for _ in range(1500):
        emu.publish_signal(STRATEGY)
    with connected(emu.url) as ws:
        ack = subscribe(ws, resume_from=100)
        assert ack["payload"]["resume_from"] == 100
        replayed = [recv(ws) for _ in range(1000)]
        assert [m["seq_id"] for m in replayed] == list(range(101, 1101))
        assert {m["msg_type"] for m in replayed} == {"strategy.signal"}
        gap = recv(ws)
        assert gap["msg_type"] == "gap"
        assert set(gap) == {"msg_type", "id", "timestamp", "v", "payload"}
        assert gap["payload"] == {
            "strategy_id": None,
            "channel": f"strategy.signal:{STRATEGY}",
            "from": "100",
            "message": "Replay limit of 1000 messages exceeded",
        }
        assert emu.publish_signal(STRATEGY) == 1501
        assert recv(ws)["seq_id"] == 1501


def test_resume_from_as_string_replays_without_gap(emu: Emulator) -> None:
    """resume_from as a numeric string replays the rest identically; no gap when all kept."""
    with connected(emu.url) as live:
        subscribe(live)
        for _ in range(5):
            emu.publish_signal(STRATEGY)
        originals = [live.recv(timeout=WAIT) for _ in range(5)]
        with connected(emu.url) as ws:
            subscribe(ws, resume_from="2")
            assert [ws.recv(timeout=WAIT) for _ in range(3)] == originals[2:]  # identical
            emu.publish_signal(STRATEGY)
            assert recv(ws)["seq_id"] == 6  # live next, no gap
    assert [r.resume_from for r in emu.connections[1].subscription_requests] == ["2"]


def test_resume_beyond_the_replay_buffer_replays_what_is_kept_then_gap() -> None:
    """When the buffer no longer holds resume_from+1, the kept signals come, then a gap."""
    with Emulator(api_keys={KEY}, strategies={STRATEGY}, replay_size=10) as emu:
        for _ in range(20):
            emu.publish_signal(STRATEGY)
        with connected(emu.url) as ws:
            subscribe(ws, resume_from=5)
            assert [recv(ws)["seq_id"] for _ in range(10)] == list(range(11, 21))
            gap = recv(ws)
    assert gap["msg_type"] == "gap" and gap["payload"]["from"] == "5"


def test_no_signal_lost_or_reordered_across_the_replay_boundary(emu: Emulator) -> None:
    """Signals published while a resume replays arrive exactly once, in order, after it."""
    for _ in range(50):
        emu.publish_signal(STRATEGY)
    publisher = threading.Thread(
        target=lambda: [emu.publish_signal(STRATEGY) for _ in range(350)], daemon=True
    )
    with connected(emu.url) as ws:
        publisher.start()
        subscribe(ws, resume_from=10)
        seqs = [recv(ws)["seq_id"] for _ in range(390)]
        publisher.join(WAIT)
    assert seqs == list(range(11, 401))


def test_resume_from_zero_or_none_sends_only_live_signals(emu: Emulator) -> None:
    """Without resume_from (or 0) only signals published after the ack arrive."""
    emu.publish_signal(STRATEGY)
    with connected(emu.url) as ws:
        subscribe(ws, resume_from=0)
        emu.publish_signal(STRATEGY)
        assert recv(ws)["seq_id"] == 2


# -- fault knobs ------------------------------------------------------------------------


def test_drop_cuts_connections_without_a_close_frame(emu: Emulator) -> None:
    """drop() aborts the TCP connection: the client gets no close frame."""
    ws = connected(emu.url)
    assert emu.drop() == 1
    error = closed_by_server(ws)
    assert error.rcvd is None
    emu.wait_for_connections(0)
    assert emu.connections[0].close_code == 1006


def test_close_connections_sends_code_and_reason_after_queued_frames(emu: Emulator) -> None:
    """close_connections(code, reason) closes after the frames already queued."""
    with connected(emu.url) as ws:
        subscribe(ws)
        emu.publish_signal(STRATEGY)
        assert emu.close_connections(4001, "maintenance") == 1
        assert recv(ws)["msg_type"] == "strategy.signal"
        error = closed_by_server(ws)
    assert error.rcvd is not None and (error.rcvd.code, error.rcvd.reason) == (4001, "maintenance")
    with pytest.raises(ValueError):
        emu.close_connections(1006)


def test_stop_and_resume_heartbeats(fast: Emulator) -> None:
    """stop_heartbeats() silences heartbeats without closing; resume_heartbeats() restarts."""
    with connected(fast.url) as ws:
        assert recv(ws)["msg_type"] == "heartbeat"
        fast.stop_heartbeats()
        sent = len(fast.connections[0].heartbeats)
        quiet(ws, fast, 2 * (HB + GRACE))  # past the deadline: no heartbeat, no close
        assert len(fast.connections[0].heartbeats) == sent
        assert fast.open_connections == 1
        fast.resume_heartbeats()
        assert recv(ws)["msg_type"] == "heartbeat"


def test_stall_stops_answering_until_unstall(fast: Emulator) -> None:
    """stall(): no ack, no heartbeat, no deadline close; unstall() answers what waited."""
    with connected(fast.url) as ws:
        assert fast.stall() == 1
        ws.send(request(request_id="during-stall"))
        quiet(ws, fast, 2 * (HB + GRACE))  # past the deadline: no answer, no close
        assert fast.open_connections == 1
        assert fast.connections[0].frames == ()  # not even read
        assert fast.unstall() == 1
        answer = recv(ws)
        while answer["msg_type"] == "heartbeat":
            answer = recv(ws)
        assert answer["msg_type"] == "subscription.ack"
        assert answer["request_id"] == "during-stall"


def test_refuse_next_with_status_headers_and_body(emu: Emulator) -> None:
    """refuse_next() refuses N upgrades with the status, headers and section 2's JSON body."""
    emu.refuse_next(2, 429, headers={"Retry-After": "3"})
    for _ in range(2):
        with pytest.raises(InvalidStatus) as info:
            client(emu.url)
        response = info.value.response
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
        assert response.headers["X-WS-Error"]
        assert json.loads(response.body)["code"] == "RATE_LIMITED"
    with client(emu.url):
        pass
    emu.refuse_next(1, 503)
    with pytest.raises(InvalidStatus) as info:
        client(emu.url)
    assert info.value.response.status_code == 503
    assert json.loads(info.value.response.body)["code"] == "SERVICE_UNAVAILABLE"
    emu.refuse_next(1, 429, body="")
    with pytest.raises(InvalidStatus) as info:
        client(emu.url)
    assert info.value.response.body == b""
    assert info.value.response.headers["Content-Length"] == "0"
    assert (emu.handshakes_refused, emu.handshakes_accepted) == (4, 1)


def test_accept_then_close_with_1008_and_no_message(emu: Emulator) -> None:
    """accept_then_close(): the upgrade succeeds, then 1008 arrives before any message."""
    emu.accept_then_close(1)
    ws = client(emu.url)
    error = closed_by_server(ws)
    assert error.rcvd is not None and error.rcvd.code == 1008
    with connected(emu.url):  # only the next connection was affected
        pass
    assert emu.handshakes_accepted == 2


def test_send_raw_text_and_binary_to_all_or_one(emu: Emulator) -> None:
    """send_raw() sends str as text and bytes as binary, to every connection or one."""
    with connected(emu.url) as a, connected(emu.url) as b:
        assert emu.send_raw('{"msg_type":"surprise"}') == 2
        assert a.recv(timeout=WAIT) == b.recv(timeout=WAIT) == '{"msg_type":"surprise"}'
        assert emu.send_raw(b"\x00\xff", connection=2) == 1
        assert b.recv(timeout=WAIT) == b"\x00\xff"
        emu.send_raw("x" * 200_000, connection=1)  # huge
        assert a.recv(timeout=WAIT) == "x" * 200_000


def test_override_first_message_or_none(emu: Emulator) -> None:
    """override_first_message() replaces connection.connected, or sends nothing first."""
    emu.override_first_message('{"msg_type":"heartbeat","id":"msg_1","v":4}')
    with client(emu.url) as ws:
        assert recv(ws)["msg_type"] == "heartbeat"
    emu.override_first_message(None)
    with client(emu.url) as ws:
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)
        subscribe(ws)  # everything else works as usual
    with client(emu.url) as ws:
        assert recv(ws)["msg_type"] == "connection.connected"


# -- observability, TLS, lifecycle, command line -----------------------------------------


def test_records_show_headers_requests_and_counters(emu: Emulator) -> None:
    """Tests can see the Authorization header sent, each resume_from, and the counts."""
    with connected(emu.url) as ws:
        subscribe(ws, resume_from=7)
        subscribe(ws, channel="strategy.positions")
    emu.wait_for_connections(0)
    (record,) = emu.connections
    assert record.request_headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(record)
    assert [r.resume_from for r in record.subscription_requests] == [7, None]
    assert not record.is_open and record.close_code == 1000
    assert emu.handshakes_accepted == 1 and emu.open_connections == 0


def test_wss_with_a_private_ca() -> None:
    """With an ssl_context the emulator serves wss:// that a client trusting the CA accepts."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with Emulator(api_keys={KEY}, strategies={STRATEGY}, ssl_context=server_context) as emu:
        assert emu.url.startswith("wss://127.0.0.1:")
        ws = connected(emu.url, ssl=client_context)
        subscribe(ws)
        emu.publish_signal(STRATEGY)
        assert recv(ws)["seq_id"] == 1
        emu.stall()  # closing must not wait on a stalled TLS connection
    closed_by_server(ws)


def test_close_is_idempotent_bounded_and_final() -> None:
    """close() returns promptly even with a stalled connection, twice; then methods refuse."""
    emu = Emulator(api_keys={KEY}, strategies={STRATEGY}).start()
    assert emu.start() is emu
    ws = connected(emu.url)
    emu.stall()
    start = time.monotonic()
    emu.close()
    emu.close()
    assert time.monotonic() - start < 3
    closed_by_server(ws)
    with pytest.raises(RuntimeError):
        emu.publish_signal(STRATEGY)
    with pytest.raises(RuntimeError):
        emu.start()


def test_command_line_serves_publishes_and_stops_on_ctrl_c() -> None:
    """`python -m c2sync.emulator` prints its URL, publishes signals, exits 130 on Ctrl-C
    (the shell's convention for SIGINT, as docs/cli.md says)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "c2sync.emulator", "--port", "0", "--api-key", KEY]
    command += ["--strategy", str(OTHER), "--signal-every", "0.05"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True) as process:
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], WAIT)
            assert ready, "no URL printed"
            url = process.stdout.readline().strip()
            assert url.startswith("ws://127.0.0.1:") and url.endswith("/ws")
            with connected(url) as ws:
                subscribe(ws, strategy_id=OTHER)
                message = recv(ws)
            assert message["msg_type"] == "strategy.signal"
            assert message["payload"]["StrategyId"] == OTHER
            process.send_signal(signal.SIGINT)
            assert process.wait(WAIT) == 130
        finally:
            process.kill()


def test_api_key_never_logged_even_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """With every logger at DEBUG, neither a valid nor a refused API key reaches the logs."""
    caplog.set_level(logging.DEBUG)
    with Emulator(api_keys={KEY}, strategies={STRATEGY}) as emu:
        with connected(emu.url) as ws:
            subscribe(ws)
        with pytest.raises(InvalidStatus):
            client(emu.url, "refused-key-7a1b")
        emu.wait_for_connections(0)
    ours = [r for r in caplog.records if r.name.startswith("c2sync.emulator")]
    assert any(r.levelno == logging.DEBUG or r.name.endswith("websockets") for r in ours)
    text = "\n".join(r.getMessage() for r in ours)  # the test's own client logs the key
    assert KEY not in text and "refused-key-7a1b" not in text
