"""The client against the emulator: connect, heartbeats, subscriptions, receiving, closing."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
import trustme

import c2sync
from c2sync._link import Link
from c2sync._options import seams
from c2sync.emulator import Emulator

from .conftest import (
    API_KEY,
    FORBIDDEN_STRATEGY,
    HEARTBEAT_INTERVAL,
    OTHER_STRATEGY,
    STRATEGY,
    WAIT,
    MakeEmulator,
    c2sync_threads,
    client_sockets,
)

MakeClient = Callable[..., c2sync.Client]


# Handshake ---------------------------------------------------------------------------------


def test_connect_returns_an_open_client_after_connection_connected(emulator: Emulator) -> None:
    """connect() blocks until connection.connected and sends the key as a Bearer header."""
    with c2sync.connect(API_KEY, url=emulator.url) as client:
        assert client.state is c2sync.State.OPEN
        (record,) = emulator.connections
        assert record.request_headers["authorization"] == f"Bearer {API_KEY}"


def test_api_key_from_environment(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no api_key argument the key comes from C2_API_KEY; with neither, ValueError."""
    monkeypatch.setenv("C2_API_KEY", API_KEY)
    with c2sync.connect(url=emulator.url) as client:
        assert client.state is c2sync.State.OPEN
    monkeypatch.delenv("C2_API_KEY")
    with pytest.raises(ValueError, match="C2_API_KEY"):
        c2sync.connect(url=emulator.url)


def test_client_built_directly_is_not_connected_until_connect(emulator: Emulator) -> None:
    """Client(...) is CLOSED until connect(); as a context manager it connects on entry."""
    client = c2sync.Client(API_KEY, url=emulator.url)
    assert client.state is c2sync.State.CLOSED
    assert emulator.open_connections == 0
    with client:
        assert client.state is c2sync.State.OPEN
    assert client.state is c2sync.State.CLOSED


def test_bad_key_raises_authentication_error_with_server_details(emulator: Emulator) -> None:
    """401 -> AuthenticationError carrying the status, X-WS-Error header and JSON body."""
    with pytest.raises(c2sync.AuthenticationError) as info:
        c2sync.connect("wrong-key", url=emulator.url)
    err = info.value
    assert err.status == 401
    assert err.headers["x-ws-error"] == "Invalid API key"
    assert err.code == "UNAUTHORIZED"
    assert err.message == "Invalid API key"
    assert json.loads(err.body)["code"] == "UNAUTHORIZED"


def test_429_raises_rate_limit_error_with_retry_after(emulator: Emulator) -> None:
    """429 -> RateLimitError whose retry_after comes from the Retry-After header."""
    emulator.refuse_next(1, 429, headers={"Retry-After": "7"})
    with pytest.raises(c2sync.RateLimitError) as info:
        c2sync.connect(API_KEY, url=emulator.url)
    assert info.value.status == 429
    assert info.value.retry_after == 7
    assert info.value.code == "RATE_LIMITED"


def test_503_and_other_statuses_map_to_their_exceptions(emulator: Emulator) -> None:
    """503 -> ServiceUnavailableError; any other refusal -> HandshakeError with its status."""
    emulator.refuse_next(1, 503)
    with pytest.raises(c2sync.ServiceUnavailableError) as info:
        c2sync.connect(API_KEY, url=emulator.url)
    assert info.value.status == 503
    emulator.refuse_next(1, 418, body="teapot")
    with pytest.raises(c2sync.HandshakeError) as other:
        c2sync.connect(API_KEY, url=emulator.url)
    assert type(other.value) is c2sync.HandshakeError
    assert other.value.status == 418
    assert other.value.body == "teapot"


def test_no_connection_connected_times_out_within_connect_timeout(emulator: Emulator) -> None:
    """A server that upgrades but never says connection.connected -> TimeoutError in time."""
    emulator.override_first_message(None)
    emulator.stop_heartbeats()  # a heartbeat first would be a ProtocolError instead
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        c2sync.connect(API_KEY, url=emulator.url, connect_timeout=0.5)
    assert time.monotonic() - started < 0.5 + 1.0
    emulator.wait_for_connections(0, WAIT)


@pytest.mark.parametrize(
    "first",
    [
        '{"msg_type":"heartbeat","id":"msg_1","timestamp":"2024-01-01T12:00:00Z","v":4}',
        "this is not json",
        "[1, 2, 3]",
        b"\x00binary",
    ],
)
def test_wrong_first_message_raises_protocol_error(emulator: Emulator, first: str | bytes) -> None:
    """A first frame other than connection.connected (a heartbeat included) -> ProtocolError."""
    emulator.override_first_message(first)
    with pytest.raises(c2sync.ProtocolError):
        c2sync.connect(API_KEY, url=emulator.url)
    emulator.wait_for_connections(0, WAIT)


def test_accept_then_close_1008_raises_connection_closed(emulator: Emulator) -> None:
    """The connection-limit race (1008 right after the upgrade) is not retried by connect()."""
    emulator.accept_then_close(1)
    with pytest.raises(c2sync.ConnectionClosed) as info:
        c2sync.connect(API_KEY, url=emulator.url)
    assert info.value.code == 1008
    assert emulator.handshakes_accepted == 1


def test_unreachable_host_raises_the_socket_error() -> None:
    """Nothing listening -> the socket's own ConnectionRefusedError (an OSError)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        c2sync.connect(API_KEY, url=f"ws://127.0.0.1:{port}/ws", connect_timeout=2)


@pytest.mark.parametrize(
    "options",
    [
        {"url": "http://example.com/ws"},
        {"connect_timeout": 0},
        {"heartbeat_timeout": -1},
        {"max_queue": 0},
    ],
)
def test_bad_options_raise_value_error(options: dict[str, object]) -> None:
    """Wrong constructor arguments fail at once with ValueError, before any I/O."""
    with pytest.raises(ValueError):
        c2sync.Client(API_KEY, **options)  # type: ignore[arg-type]


# Heartbeats ---------------------------------------------------------------------------------


# Seconds between a heartbeat and its ack: generous for a loaded CI machine (0.25 s flaked,
# as in test_backpressure.py), while a reader that waited for recv(), a callback or the main
# thread would answer seconds late or not at all.
ACK_BOUND = 1.0


def _acks_on_time(emulator: Emulator, at_least: int, bound: float = ACK_BOUND) -> None:
    """Wait for ``at_least`` heartbeats on the first connection; each acked within ``bound``."""
    emulator.wait_for(
        lambda: sum(1 for h in emulator.connections[0].heartbeats if h.acked_at) >= at_least,
        WAIT,
    )
    beats = [h for h in emulator.connections[0].heartbeats if h.acked_at is not None]
    delays = [h.acked_at - h.sent_at for h in beats if h.acked_at is not None]
    assert len(delays) >= at_least
    assert max(delays) < bound, delays


def test_heartbeats_acked_when_nobody_calls_recv(client: c2sync.Client, emulator: Emulator) -> None:
    """Heartbeats are answered by the client's own thread while the user does nothing."""
    _acks_on_time(emulator, at_least=int(2.0 / HEARTBEAT_INTERVAL))
    assert emulator.open_connections == 1
    # The client counts a heartbeat after sending its ack, so the emulator can see the 10th
    # ack a moment before the client's count reaches 10: wait for it (the emulator re-checks
    # at every heartbeat it sends; bounded).
    emulator.wait_for(lambda: client.stats.heartbeats >= 10, WAIT)
    # The reader counts a heartbeat, then its ack, so at any instant acks <= beats <= acks + 1;
    # but it goes on counting between two reads (two heartbeats handled in one batch, say).
    # Reading beats, acks, beats again bounds the acks exactly whatever happened in between.
    beats_before = client.stats.heartbeats
    acks = client.stats.acks_sent
    beats_after = client.stats.heartbeats
    assert beats_before - 1 <= acks <= beats_after
    assert client.stats.last_heartbeat is not None


def test_ack_frame_matches_the_protocol(client: c2sync.Client, emulator: Emulator) -> None:
    """Each ack is exactly {"msg_type":"heartbeat.ack","timestamp":<now, UTC, ms>}."""
    emulator.wait_for(lambda: len(emulator.connections[0].acks) >= 1, WAIT)
    ack = emulator.connections[0].acks[0].message
    assert set(ack) == {"msg_type", "timestamp"}
    assert ack["msg_type"] == "heartbeat.ack"
    when = datetime.strptime(ack["timestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc
    )
    assert abs(datetime.now(timezone.utc) - when) < timedelta(seconds=5)


def test_heartbeats_acked_while_a_callback_sleeps(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """A callback blocked for 3 s does not delay heartbeat acks (callbacks run elsewhere)."""
    entered = threading.Event()

    def slow(message: c2sync.Message) -> None:
        entered.set()
        time.sleep(3.0)  # the user's slow handler, not synchronisation

    client.on(c2sync.SIGNAL, slow)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    assert entered.wait(WAIT)
    before = len(emulator.connections[0].heartbeats)
    _acks_on_time(emulator, at_least=before + int(2.5 / HEARTBEAT_INTERVAL))


def test_heartbeats_acked_while_main_thread_burns_cpu(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """A pure-Python CPU loop in the main thread for 3 s does not delay heartbeat acks."""
    before = len(emulator.connections[0].heartbeats)
    end = time.monotonic() + 3.0
    n = 0
    while time.monotonic() < end:
        n += sum(i * i for i in range(1000))
    _acks_on_time(emulator, at_least=before + int(2.5 / HEARTBEAT_INTERVAL))
    assert emulator.open_connections == 1


def test_silent_server_is_declared_dead(make_client: MakeClient, emulator: Emulator) -> None:
    """No heartbeat for heartbeat_timeout -> HeartbeatTimeout on the blocked recv()."""
    client = make_client(reconnect=False, heartbeat_timeout=0.5)
    emulator.stop_heartbeats()
    started = time.monotonic()
    with pytest.raises(c2sync.HeartbeatTimeout):
        client.recv(timeout=WAIT)
    assert time.monotonic() - started < WAIT
    assert client.state is c2sync.State.CLOSED  # set before the error is made visible
    with pytest.raises(c2sync.HeartbeatTimeout):
        client.run_forever()
    emulator.wait_for_connections(0, WAIT)


def test_state_is_closed_when_recv_raises_the_failure(
    make_client: MakeClient, emulator: Emulator
) -> None:
    """Whoever sees the final error from recv() sees state CLOSED too (no window where the
    error is raised while the state still says OPEN or RECONNECTING). The caller polls,
    so it is not only woken by the state change; threads switch as often as they can."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(15):
            client = make_client(reconnect=False)
            emulator.drop()
            deadline = time.monotonic() + WAIT
            with pytest.raises(c2sync.ConnectionClosed):
                while time.monotonic() < deadline:
                    try:
                        client.recv(timeout=0)
                    except TimeoutError:
                        pass
            assert client.state is c2sync.State.CLOSED
            client.close()
            emulator.wait_for_connections(0, WAIT)
    finally:
        sys.setswitchinterval(interval)


def test_signals_without_heartbeats_still_end_in_heartbeat_timeout(
    make_client: MakeClient, emulator: Emulator
) -> None:
    """A server that sends data but no heartbeats is still dead at the heartbeat deadline."""
    client = make_client(reconnect=False, heartbeat_timeout=0.6)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.stop_heartbeats()
    stop = threading.Event()

    def publish() -> None:
        while not stop.wait(0.05):
            try:
                emulator.publish_signal(STRATEGY)
            except Exception:
                return

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        with pytest.raises(c2sync.HeartbeatTimeout):
            while True:
                client.recv(timeout=WAIT)
    finally:
        stop.set()
        publisher.join(WAIT)


# Subscriptions ------------------------------------------------------------------------------


def test_subscribe_sends_a_well_formed_request_and_returns_the_ack(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """subscribe() sends msg_type/request_id/timestamp/payload only and returns the ack."""
    ack = client.subscribe(c2sync.SIGNAL, STRATEGY)
    assert isinstance(ack, c2sync.SubscriptionAck)
    assert (ack.action, ack.channel, ack.strategy_id) == ("subscribe", c2sync.SIGNAL, STRATEGY)
    assert client.subscriptions == frozenset({(c2sync.SIGNAL, STRATEGY)})
    frame = next(
        f.message for f in emulator.connections[0].frames if f.msg_type == "subscription.request"
    )
    assert set(frame) == {"msg_type", "request_id", "timestamp", "payload"}
    assert 1 <= len(frame["request_id"]) <= 50
    assert ack.request_id == frame["request_id"]
    assert frame["payload"] == {
        "action": "subscribe",
        "channel": c2sync.SIGNAL,
        "strategy_id": STRATEGY,
    }
    sent = datetime.strptime(frame["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(sent.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)).total_seconds() < 5


def test_every_request_has_a_fresh_request_id(client: c2sync.Client, emulator: Emulator) -> None:
    """Request ids are unique per request, so answers cannot be confused."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    client.subscribe(c2sync.POSITIONS, STRATEGY)
    client.unsubscribe(c2sync.POSITIONS, STRATEGY)
    ids = [r.request_id for r in emulator.connections[0].subscription_requests]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert client.subscriptions == frozenset({(c2sync.SIGNAL, STRATEGY)})


@pytest.mark.parametrize("echo", [True, False])
def test_refused_subscription_raises_server_error(
    make_client: MakeClient, emulator: Emulator, echo: bool
) -> None:
    """FORBIDDEN, with or without request_id on the error, raises ServerError; not held."""
    emulator.echo_request_id_on_error = echo  # the docs' example error carries no request_id
    client = make_client()
    with pytest.raises(c2sync.ServerError) as info:
        client.subscribe(c2sync.SIGNAL, FORBIDDEN_STRATEGY)
    err = info.value
    assert err.code == "FORBIDDEN"
    assert err.field == "StrategyId"
    assert "Not authorized" in err.message
    assert err.request_id is not None
    assert len(err.errors) == 1
    assert client.subscriptions == frozenset()
    # The client carries on: the next request gets its own answer.
    assert client.subscribe(c2sync.SIGNAL, STRATEGY).strategy_id == STRATEGY


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("strategy.nope", STRATEGY), {}),
        ((c2sync.SIGNAL, 0), {}),
        ((c2sync.SIGNAL, -5), {}),
        ((c2sync.SIGNAL, True), {}),
        ((c2sync.SIGNAL, "12"), {}),
        ((c2sync.SIGNAL, 1.5), {}),
        ((c2sync.POSITIONS, STRATEGY), {"resume_from": 10}),
        ((c2sync.SIGNAL, STRATEGY), {"resume_from": -1}),
    ],
)
def test_bad_subscribe_arguments_fail_before_sending(
    client: c2sync.Client, emulator: Emulator, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    """Every argument error is a ValueError raised before anything goes on the wire."""
    with pytest.raises(ValueError):
        client.subscribe(*args, **kwargs)  # type: ignore[arg-type]
    assert emulator.connections[0].subscription_requests == ()


def test_101st_subscription_raises_subscription_limit_error(
    make_emulator: MakeEmulator,
) -> None:
    """The client refuses a 101st subscription itself (also a ValueError), sending nothing."""
    strategies = set(range(1, 52))
    emulator = make_emulator(strategies=strategies)
    with c2sync.connect(API_KEY, url=emulator.url) as client:
        for strategy in range(1, 51):
            client.subscribe(c2sync.SIGNAL, strategy)
            client.subscribe(c2sync.POSITIONS, strategy)
        assert len(client.subscriptions) == 100
        with pytest.raises(c2sync.SubscriptionLimitError):
            client.subscribe(c2sync.SIGNAL, 51)
        with pytest.raises(ValueError):
            client.subscribe(c2sync.POSITIONS, 51)
        client.subscribe(c2sync.SIGNAL, 1)  # one already held is fine
        assert len(emulator.connections[0].subscription_requests) == 101


def test_subscribe_times_out_and_a_late_ack_satisfies_nobody_else(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """No answer in time -> TimeoutError; the late ack still updates subscriptions only."""
    emulator.stall()
    with pytest.raises(TimeoutError):
        client.subscribe(c2sync.SIGNAL, STRATEGY, timeout=0.3)
    assert client.subscriptions == frozenset()
    emulator.unstall()
    ack = client.subscribe(c2sync.POSITIONS, STRATEGY, timeout=WAIT)
    assert ack.channel == c2sync.POSITIONS
    assert client.subscriptions == {(c2sync.SIGNAL, STRATEGY), (c2sync.POSITIONS, STRATEGY)}


def test_subscribe_from_inside_a_callback(client: c2sync.Client, emulator: Emulator) -> None:
    """A callback may call subscribe() (the dispatcher is not the reader)."""
    done = threading.Event()
    result: list[object] = []

    def on_signal(message: c2sync.Message) -> None:
        result.append(client.subscribe(c2sync.POSITIONS, STRATEGY, timeout=WAIT))
        done.set()

    client.on(c2sync.SIGNAL, on_signal)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    assert done.wait(WAIT)
    assert isinstance(result[0], c2sync.SubscriptionAck)
    assert (c2sync.POSITIONS, STRATEGY) in client.subscriptions


def test_subscribe_from_many_threads(client: c2sync.Client) -> None:
    """Concurrent subscribe() calls from several threads each get their own ack."""
    # list.append is atomic; results[len(results)] = ... was not (two threads could read the
    # same len() and store under one key).
    results: list[c2sync.SubscriptionAck] = []

    def sub(strategy_id: int, channel: str) -> None:
        results.append(client.subscribe(channel, strategy_id, timeout=WAIT))

    threads = [
        threading.Thread(target=sub, args=(sid, ch))
        for sid in (STRATEGY, OTHER_STRATEGY)
        for ch in (c2sync.SIGNAL, c2sync.POSITIONS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(results) == 4
    pairs = {(c2sync.SIGNAL, STRATEGY), (c2sync.POSITIONS, STRATEGY)}
    pairs |= {(c2sync.SIGNAL, OTHER_STRATEGY), (c2sync.POSITIONS, OTHER_STRATEGY)}
    assert {(ack.channel, ack.strategy_id) for ack in results} == pairs
    assert len(client.subscriptions) == 4


# Receiving ----------------------------------------------------------------------------------


def test_signals_positions_gaps_unknown_and_errors_come_out_intact(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """Every user-visible type arrives typed, with payload and raw unchanged."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    client.subscribe(c2sync.POSITIONS, STRATEGY)
    payload = {"StrategyId": STRATEGY, "C2Symbol": {"FullSymbol": "@ESZ6"}, "Quantity": 2}
    seq = emulator.publish_signal(STRATEGY, payload)
    signal_msg = client.recv(timeout=WAIT)
    assert isinstance(signal_msg, c2sync.Signal)
    assert signal_msg.seq_id == seq and signal_msg.strategy_id == STRATEGY
    assert dict(signal_msg.payload) == payload
    assert signal_msg.raw["payload"] == payload and signal_msg.v == 4

    emulator.publish_positions(STRATEGY)
    positions = client.recv(timeout=WAIT)
    assert isinstance(positions, c2sync.Positions) and positions.strategy_id == STRATEGY

    gap = {
        "msg_type": "gap",
        "id": "msg_gap",
        "timestamp": "2024-01-01T12:00:00Z",
        "v": 4,
        "payload": {
            "strategy_id": None,
            "channel": f"strategy.signal:{STRATEGY}",
            "from": "98765",
            "message": "Replay limit of 1000 messages exceeded",
        },
    }
    unknown = {"msg_type": "strategy.news", "id": "msg_x", "payload": {"a": [1, 2]}, "extra": 7}
    error = {"msg_type": "error", "payload": {"code": "NEW_CODE", "message": "something"}}
    for frame in (gap, unknown, error):
        emulator.send_raw(json.dumps(frame))
    got_gap = client.recv(timeout=WAIT)
    assert isinstance(got_gap, c2sync.Gap)
    assert (got_gap.strategy_id, got_gap.from_seq) == (STRATEGY, 98765)
    got_unknown = client.recv(timeout=WAIT)
    assert type(got_unknown) is c2sync.Message
    assert got_unknown.msg_type == "strategy.news" and got_unknown.raw["extra"] == 7
    got_error = client.recv(timeout=WAIT)
    assert isinstance(got_error, c2sync.ErrorMessage) and got_error.code == "NEW_CODE"


def test_callbacks_run_in_order_on_one_thread_that_is_not_the_reader(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """Callbacks see messages in arrival order, all on one dispatcher thread."""
    seen: list[int] = []
    threads: set[str] = set()
    done = threading.Event()

    def on_signal(message: c2sync.Message) -> None:
        assert isinstance(message, c2sync.Signal)
        seen.append(message.seq_id)
        threads.add(threading.current_thread().name)
        if len(seen) == 50:
            done.set()

    client.on(c2sync.SIGNAL, on_signal)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(50):
        emulator.publish_signal(STRATEGY)
    assert done.wait(WAIT)
    assert seen == list(range(1, 51))
    assert threads == {"c2sync-dispatcher"}


def test_messages_without_a_callback_go_to_recv(client: c2sync.Client, emulator: Emulator) -> None:
    """A type with a callback goes there; the others queue for recv(); off() stops a callback."""
    got: list[c2sync.Message] = []
    arrived = threading.Event()

    def on_positions(message: c2sync.Message) -> None:
        got.append(message)
        arrived.set()

    handle = client.on(c2sync.POSITIONS, on_positions)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    client.subscribe(c2sync.POSITIONS, STRATEGY)
    emulator.publish_positions(STRATEGY)
    emulator.publish_signal(STRATEGY)
    assert isinstance(client.recv(timeout=WAIT), c2sync.Signal)
    assert arrived.wait(WAIT)
    client.off(handle)
    emulator.publish_positions(STRATEGY)
    assert isinstance(client.recv(timeout=WAIT), c2sync.Positions)
    assert len(got) == 1
    with pytest.raises(ValueError):
        client.off(handle)
    with pytest.raises(TypeError):
        client.on(c2sync.SIGNAL, "not callable")  # type: ignore[arg-type]


def test_wildcard_callback_sees_every_type(client: c2sync.Client, emulator: Emulator) -> None:
    """on("*", fn) receives every user-visible message."""
    types: list[str] = []
    done = threading.Event()

    def on_any(message: c2sync.Message) -> None:
        types.append(message.msg_type)
        if len(types) == 2:
            done.set()

    client.on("*", on_any)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    emulator.send_raw('{"msg_type":"something.new"}')
    assert done.wait(WAIT)
    assert types == [c2sync.SIGNAL, "something.new"]


def test_raising_callback_is_logged_and_the_client_carries_on(
    client: c2sync.Client, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in a callback is logged with its traceback; later messages still flow."""
    seen: list[int] = []
    done = threading.Event()

    def flaky(message: c2sync.Message) -> None:
        assert isinstance(message, c2sync.Signal)
        seen.append(message.seq_id)
        if message.seq_id == 1:
            raise RuntimeError("handler bug")
        done.set()

    client.on(c2sync.SIGNAL, flaky)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    with caplog.at_level(logging.ERROR, logger="c2sync"):
        emulator.publish_signal(STRATEGY)
        emulator.publish_signal(STRATEGY)
        assert done.wait(WAIT)
    assert seen == [1, 2]
    records = [r for r in caplog.records if r.exc_info and "handler bug" in str(r.exc_info[1])]
    assert records


def test_malformed_frames_are_skipped_and_counted(
    client: c2sync.Client, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad JSON, binary, arrays and msg_type-less objects are logged, counted and skipped."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    with caplog.at_level(logging.WARNING, logger="c2sync"):
        for frame in ("{not json", b"\x01\x02binary", "[1,2]", '{"no_type":1}', b"\xff\xfe"):
            emulator.send_raw(frame)
        seq = emulator.publish_signal(STRATEGY)
        message = client.recv(timeout=WAIT)
    assert isinstance(message, c2sync.Signal) and message.seq_id == seq
    assert client.stats.malformed == 5
    assert sum("malformed" in r.getMessage() for r in caplog.records) == 5
    assert client.state is c2sync.State.OPEN


def test_recv_timeout_raises_timeout_error(client: c2sync.Client) -> None:
    """recv(timeout) raises the built-in TimeoutError when nothing arrives."""
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.05)


# Closing ------------------------------------------------------------------------------------


def test_close_is_idempotent_and_leaves_nothing_behind(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """close() twice is fine; then no client thread is alive and no socket is open."""
    called = threading.Event()
    client.on(c2sync.SIGNAL, lambda m: called.set())  # start the dispatcher too
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    assert called.wait(WAIT)
    threads = c2sync_threads()
    assert {t.name for t in threads} == {
        "c2sync-reader",
        "c2sync-watchdog",
        "c2sync-dispatcher",
    }
    client.close()
    client.close()
    assert client.state is c2sync.State.CLOSED
    assert not any(t.is_alive() for t in threads)
    assert client_sockets(emulator) == []
    emulator.wait_for_connections(0, WAIT)
    assert emulator.connections[0].close_code == 1000
    with pytest.raises(c2sync.ConnectionClosed):
        client.recv(timeout=0)


def test_close_from_another_thread_wakes_a_blocked_recv(client: c2sync.Client) -> None:
    """A recv() blocked in one thread raises ConnectionClosed when another thread closes."""
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            client.recv()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    closer = threading.Thread(target=client.close)
    closer.start()
    closer.join(WAIT)
    t.join(WAIT)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], c2sync.ConnectionClosed)


def test_close_from_inside_a_callback(client: c2sync.Client, emulator: Emulator) -> None:
    """A callback may close the client; run_forever() then returns."""
    client.on(c2sync.SIGNAL, lambda m: client.close())
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    runner = threading.Thread(target=client.run_forever)
    runner.start()
    runner.join(WAIT)
    assert not runner.is_alive()
    assert client.state is c2sync.State.CLOSED
    emulator.wait_for_connections(0, WAIT)


def test_run_forever_returns_after_the_last_callbacks_finished(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """run_forever() returns once the callbacks still running at the close (here the CLOSED
    state callback, queued behind the callback that closed) are done, so the caller's next
    line never runs beside a callback."""
    finished = threading.Event()

    def on_state(state: c2sync.State) -> None:
        if state is c2sync.State.CLOSED:
            time.sleep(0.2)  # still busy when the client is already closed
            finished.set()

    client.on_state(on_state)
    client.on(c2sync.SIGNAL, lambda m: client.close())
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    returned_after_callbacks: list[bool] = []

    def run() -> None:
        client.run_forever()
        returned_after_callbacks.append(finished.is_set())

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(WAIT)
    assert not runner.is_alive()
    assert returned_after_callbacks == [True]


def test_close_is_bounded_when_the_server_stopped_answering(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """With a stalled server close() still returns in bounded time (seconds), threads gone."""
    threads = c2sync_threads()
    assert threads
    emulator.stall()
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 3.0  # an unbounded close would hang for good
    assert not any(t.is_alive() for t in threads)
    assert client_sockets(emulator) == []


def test_iteration_ends_quietly_after_close(client: c2sync.Client, emulator: Emulator) -> None:
    """for msg in client: stops without an exception once the client is closed."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    emulator.publish_signal(STRATEGY)
    seen = []
    for message in client:
        seen.append(message)
        if len(seen) == 2:
            client.close()
    assert len(seen) == 2


def test_with_block_exception_closes_with_1011(emulator: Emulator) -> None:
    """Leaving a with block by an exception closes the connection with code 1011."""
    with pytest.raises(RuntimeError), c2sync.connect(API_KEY, url=emulator.url):
        raise RuntimeError("user code failed")
    emulator.wait_for_connections(0, WAIT)
    assert emulator.connections[0].close_code == 1011


def test_garbage_collected_client_closes_its_connection(emulator: Emulator) -> None:
    """A client nobody references is closed with a close frame (no leaked connection)."""
    client = c2sync.connect(API_KEY, url=emulator.url)
    client.on(c2sync.SIGNAL, lambda m: None)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    emulator.wait_for_connections(1, WAIT)
    del client
    gc.collect()
    emulator.wait_for_connections(0, WAIT)
    assert emulator.connections[0].close_code == 1000
    for thread in c2sync_threads():
        thread.join(WAIT)
    assert c2sync_threads() == []


def test_state_callbacks_report_open_and_closed(emulator: Emulator) -> None:
    """on_state(fn), registered before connect(), is called with each new state in order:
    CONNECTING, OPEN, then CLOSED when the client closes; repr shows the state."""
    states: list[c2sync.State] = []
    closed = threading.Event()

    def on_state(state: c2sync.State) -> None:
        states.append(state)
        if state is c2sync.State.CLOSED:
            closed.set()

    client = c2sync.Client(API_KEY, url=emulator.url)
    try:
        client.on_state(on_state)
        assert "CLOSED" in repr(client)  # never connected
        client.connect()
        assert "OPEN" in repr(client)
    finally:
        client.close()
    assert closed.wait(WAIT)
    assert states == [c2sync.State.CONNECTING, c2sync.State.OPEN, c2sync.State.CLOSED]
    assert "CLOSED" in repr(client)


_SIGINT_SCRIPT = textwrap.dedent(
    """
    import sys, threading, c2sync
    client = c2sync.connect(sys.argv[1], url=sys.argv[2])
    main = threading.main_thread()

    def blocked_in_recv():
        # The main thread's stack: a lock wait in threading.py, called from c2sync.
        frame = sys._current_frames().get(main.ident)
        files = []
        while frame is not None:
            files.append((frame.f_code.co_filename, frame.f_code.co_name))
            frame = frame.f_back
        waiting = any(f.endswith("threading.py") and n == "wait" for f, n in files)
        return waiting and any("c2sync" in f and n == "recv" for f, n in files)

    def announce():
        # Say "ready" only once the main thread waits inside recv(), so the signal
        # interrupts the blocked call and not the code before it (re-checked, bounded).
        tick = threading.Event()
        for _ in range(500):
            if blocked_in_recv():
                print("ready", flush=True)
                return
            tick.wait(0.01)
        print("never blocked", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        client.recv()
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        client.close()
        sys.exit(42)
    """
)


def test_sigint_interrupts_a_blocked_recv(emulator: Emulator) -> None:
    """Ctrl-C in a process blocked in recv() raises KeyboardInterrupt at once."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_SCRIPT, API_KEY, emulator.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        emulator.wait_for_connections(1, WAIT)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 42, err
    assert "interrupted" in out
    emulator.wait_for_connections(0, WAIT)


def test_connect_inside_a_running_event_loop(emulator: Emulator) -> None:
    """connect() works in a thread whose asyncio loop is running, as in Jupyter."""

    async def notebook_cell() -> c2sync.Message:
        with c2sync.connect(API_KEY, url=emulator.url) as client:
            client.subscribe(c2sync.SIGNAL, STRATEGY)
            emulator.publish_signal(STRATEGY)
            return client.recv(timeout=WAIT)

    message = asyncio.run(notebook_cell())
    assert isinstance(message, c2sync.Signal)


# TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def tls_emulator(make_emulator: MakeEmulator) -> tuple[Emulator, trustme.CA]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    return make_emulator(ssl_context=server_ctx), ca


def test_wss_with_a_custom_ca(tls_emulator: tuple[Emulator, trustme.CA]) -> None:
    """ssl_context with the test CA connects over wss:// and receives signals."""
    emulator, ca = tls_emulator
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    assert emulator.url.startswith("wss://")
    with c2sync.connect(API_KEY, url=emulator.url, ssl_context=ctx) as client:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        emulator.publish_signal(STRATEGY)
        assert isinstance(client.recv(timeout=WAIT), c2sync.Signal)
        _acks_on_time(emulator, at_least=3)


def test_wss_without_the_ca_fails_certificate_verification(
    tls_emulator: tuple[Emulator, trustme.CA],
) -> None:
    """Certificate checks are on by default: an unknown CA fails with a certificate error."""
    emulator, _ = tls_emulator
    with pytest.raises(ssl.SSLCertVerificationError):
        c2sync.connect(API_KEY, url=emulator.url, connect_timeout=5)


# Secrets ------------------------------------------------------------------------------------


def test_api_key_never_appears_in_logs_reprs_or_errors(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, the key is in no log record, repr, or exception text, even on failures."""
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        client = c2sync.connect(API_KEY, url=emulator.url, heartbeat_timeout=2)
        texts += [repr(client), str(client.stats)]
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        try:
            client.subscribe(c2sync.SIGNAL, FORBIDDEN_STRATEGY)
        except c2sync.ServerError as exc:
            texts.append(str(exc))
        emulator.drop()  # the reconnect path logs too: closed only once it reconnected
        emulator.wait_for(lambda: client.stats.reconnects == 1, WAIT)
        client.close()
        for key in (API_KEY, "x" + API_KEY):  # a refused handshake, then a refused key
            if key == API_KEY:
                emulator.refuse_next(1, 429)
            with pytest.raises(c2sync.HandshakeError) as info:
                c2sync.connect(key, url=emulator.url)
            texts += [str(info.value), repr(info.value), repr(info.value.__cause__)]
    assert any("reconnecting" in r.getMessage() for r in caplog.records)
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    # Formatted as a handler would: tracebacks and chained causes included.
    texts += [logging.Formatter().format(r) for r in caplog.records]
    assert texts
    assert not [t for t in texts if API_KEY in t]


_EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, c2sync
    client = c2sync.connect(sys.argv[1], url=sys.argv[2])
    client.subscribe(c2sync.SIGNAL, int(sys.argv[3]))
    print("ready", flush=True)
    # exits without close(): the client must still say goodbye with a close frame
    """
)


def test_client_open_at_interpreter_exit_sends_a_close_frame(emulator: Emulator) -> None:
    """A script that ends without close() still closes its connection with code 1000."""
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, API_KEY, emulator.url, str(STRATEGY)],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ready" in proc.stdout
    emulator.wait_for_connections(0, WAIT)
    assert emulator.connections[0].close_code == 1000


def test_request_in_flight_during_a_drop_is_sent_again_after_reconnecting(
    make_client: MakeClient, emulator: Emulator
) -> None:
    """A subscribe() whose connection drops before the answer succeeds on the new one."""
    sent = threading.Event()

    class RecordingLink(Link):
        """The real link, noting when a subscription request has gone out."""

        def send(self, text: str, deadline: float | None = None) -> None:
            super().send(text, deadline)
            if '"subscription.request"' in text:
                sent.set()

    with seams(link_factory=RecordingLink):
        client = make_client(
            reconnect_policy=c2sync.ReconnectPolicy(initial=0.05, maximum=0.1),
            heartbeat_timeout=5,
        )
    emulator.stall()  # the request goes out but is never answered on this connection
    result: list[object] = []
    worker = threading.Thread(
        target=lambda: result.append(client.subscribe(c2sync.SIGNAL, STRATEGY, timeout=WAIT))
    )
    worker.start()
    # The stalled emulator records nothing, so the client side shows the send.
    assert sent.wait(WAIT), "the request was never sent"
    assert worker.is_alive() and not result, "the request is no longer in flight"
    emulator.drop()
    worker.join(WAIT)
    assert len(result) == 1 and isinstance(result[0], c2sync.SubscriptionAck)
    assert client.subscriptions == {(c2sync.SIGNAL, STRATEGY)}
    assert len(emulator.connections) == 2
    assert [r.channel for r in emulator.connections[1].subscription_requests] == [c2sync.SIGNAL]


def test_unresolvable_host_raises_an_oserror(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host name that does not resolve raises socket.gaierror (an OSError), not a
    websocket-client type, so one except OSError catches every network failure."""

    def no_dns(*args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(socket.gaierror):
        c2sync.connect(API_KEY, url="ws://c2sync-test.invalid/ws", connect_timeout=2)


def test_garbage_upgrade_response_raises_protocol_error() -> None:
    """A server answering the upgrade with something that is not HTTP -> ProtocolError."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

        responder = threading.Thread(target=answer, daemon=True)
        responder.start()
        with pytest.raises(c2sync.ProtocolError):
            c2sync.connect(API_KEY, url=f"ws://127.0.0.1:{port}/ws", connect_timeout=2)
        responder.join(WAIT)


def test_connect_may_be_retried_after_a_refusal(emulator: Emulator) -> None:
    """A Client whose connect() was refused (503) can call connect() again and work."""
    client = c2sync.Client(API_KEY, url=emulator.url)
    emulator.refuse_next(1, 503)
    with pytest.raises(c2sync.ServiceUnavailableError):
        client.connect()
    assert client.state is c2sync.State.CLOSED
    with client.connect():
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        emulator.publish_signal(STRATEGY)
        assert isinstance(client.recv(timeout=WAIT), c2sync.Signal)
    with pytest.raises(RuntimeError):
        client.connect()  # a closed client does not reopen


def test_a_callback_never_starts_after_off_or_close_returned(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """off() and close() are quiescent: after each returns, its callbacks never start again,
    even while one of them is still running on the dispatcher thread."""
    inside = threading.Event()
    release = threading.Event()
    after_off = threading.Event()
    after_close = threading.Event()
    removed = threading.Event()
    closed = threading.Event()

    def slow(message: c2sync.Message) -> None:
        if removed.is_set():
            after_off.set()  # a start after off() returned
        if not inside.is_set():
            inside.set()
            release.wait(WAIT)  # still running while off() is called

    def other(message: c2sync.Message) -> None:
        if closed.is_set():
            after_close.set()  # a start after close() returned
        release.wait(WAIT)

    handle = client.on(c2sync.SIGNAL, slow)
    client.on(c2sync.SIGNAL, other)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(5):
        emulator.publish_signal(STRATEGY)
    assert inside.wait(WAIT)
    releaser = threading.Timer(0.2, release.set)  # lets the running call end during off()
    releaser.start()
    client.off(handle)
    removed.set()
    client.close()
    closed.set()
    releaser.join(WAIT)
    client.close()  # idempotent; and nothing can start now: the dispatcher is gone
    assert not any(t.name == "c2sync-dispatcher" and t.is_alive() for t in threading.enumerate())
    assert not after_off.is_set() and not after_close.is_set()
