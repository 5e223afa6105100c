"""The pure protocol core, driven synchronously: text frames and a fake monotonic clock in,
events and outgoing frames out. No sockets, threads or sleeps."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c2sync import (
    POSITIONS,
    SIGNAL,
    ErrorDetail,
    ErrorMessage,
    Gap,
    Message,
    Positions,
    ProtocolError,
    ServerError,
    Signal,
    SubscriptionAck,
    SubscriptionLimitError,
)
from c2sync._protocol import (
    ClientProtocol,
    Connected,
    Deliver,
    Duplicate,
    HeartbeatAnswered,
    Malformed,
    ReplayRestarted,
    RequestAnswered,
    SubscriptionRefused,
)

STRATEGY = 12345678
OTHER = 87654321
TIMEOUT = 40.0
WALL = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
WALL_TEXT = "2024-01-01T12:00:00Z"


# Frames the server sends ---------------------------------------------------------------


def server(msg_type: str, **fields: Any) -> str:
    obj: dict[str, Any] = {"msg_type": msg_type, "id": "msg_1", "timestamp": "2024-01-01T12:00:00Z"}
    obj["v"] = 4
    obj.update(fields)
    return json.dumps(obj)


CONNECTED = server("connection.connected")
HEARTBEAT = server("heartbeat", seq_id=None)


def signal(seq: int, strategy_id: int | None = STRATEGY, **payload: Any) -> str:
    body: dict[str, Any] = {"SignalId": seq * 10, **payload}
    if strategy_id is not None:
        body["strategy_id"] = strategy_id
    return server("strategy.signal", seq_id=seq, payload=body)


def positions(strategy_id: int | None = STRATEGY) -> str:
    body: dict[str, Any] = {"Positions": []}
    if strategy_id is not None:
        body["StrategyId"] = strategy_id
    return server("strategy.positions", payload=body)


def ack(
    request_id: str | None,
    channel: str = SIGNAL,
    strategy_id: int | None = STRATEGY,
    action: str | None = "subscribe",
) -> str:
    fields: dict[str, Any] = {"payload": {"action": action, "channel": channel}}
    if strategy_id is not None:
        fields["payload"]["strategy_id"] = strategy_id
    if request_id is not None:
        fields["request_id"] = request_id
    return server("subscription.ack", **fields)


def error(request_id: str | None = None, **payload: Any) -> str:
    body = payload or {
        "code": "FORBIDDEN",
        "field": "StrategyId",
        "message": "Not authorized to subscribe to Strategy",
    }
    fields: dict[str, Any] = {"payload": body}
    if request_id is not None:
        fields["request_id"] = request_id
    return server("error", **fields)


# Helpers -------------------------------------------------------------------------------


def new_protocol(**options: Any) -> ClientProtocol:
    """A protocol with predictable request ids r1, r2, ... and a fixed wall clock."""
    options.setdefault("request_ids", (f"r{n}" for n in itertools.count(1)))
    options.setdefault("wallclock", lambda: WALL)
    return ClientProtocol(TIMEOUT, **options)


def connected(**options: Any) -> ClientProtocol:
    proto = new_protocol(**options)
    proto.connection_made()
    proto.receive(CONNECTED, 0.0)
    return proto


def subscribe(
    proto: ClientProtocol, channel: str = SIGNAL, strategy_id: int = STRATEGY, **kw: Any
) -> list[Any]:
    """Send a subscribe and answer it with an ack echoing the request id."""
    request_id, _ = proto.request("subscribe", channel, strategy_id, **kw)
    return proto.receive(ack(request_id, channel, strategy_id), 1.0)


def sent(frame: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(frame)
    return obj


def delivered(events: list[Any]) -> list[Message]:
    return [e.message for e in events if isinstance(e, Deliver)]


def reconnect(proto: ClientProtocol, now: float = 100.0) -> list[dict[str, Any]]:
    """Lose the connection, open a new one and return the restore frames queued."""
    proto.connection_lost()
    proto.connection_made()
    proto.receive(CONNECTED, now)
    proto.restore_subscriptions()
    return [sent(f) for f in proto.data_to_send()]


# connection.connected first ------------------------------------------------------------


def test_connected_opens_and_arms_the_deadline() -> None:
    """connection.connected makes the connection ready and starts the heartbeat deadline."""
    proto = new_protocol()
    proto.connection_made()
    assert not proto.is_open
    events = proto.receive(CONNECTED, 5.0)
    assert len(events) == 1 and isinstance(events[0], Connected)
    assert events[0].message.msg_type == "connection.connected"
    assert proto.is_open
    assert proto.deadline == 5.0 + TIMEOUT


@pytest.mark.parametrize(
    "first",
    [HEARTBEAT, signal(1), error(), server("unknown.kind"), "not json", "[]", b"\x00binary"],
    ids=["heartbeat", "signal", "error", "unknown", "bad-json", "array", "binary"],
)
def test_first_frame_must_be_connected(first: str | bytes) -> None:
    """Anything but connection.connected first (a heartbeat included) is a ProtocolError."""
    proto = new_protocol()
    proto.connection_made()
    with pytest.raises(ProtocolError):
        proto.receive(first, 0.0)
    assert not proto.is_open
    assert proto.data_to_send() == []


def test_every_new_socket_waits_for_connected_again() -> None:
    """After a reconnect, the new socket's first frame must again be connection.connected."""
    proto = connected()
    proto.connection_lost()
    proto.connection_made()
    with pytest.raises(ProtocolError):
        proto.receive(HEARTBEAT, 1.0)


def test_second_connected_is_ignored() -> None:
    """A repeated connection.connected is not delivered to the user."""
    proto = connected()
    assert proto.receive(CONNECTED, 1.0) == []


# Heartbeats ----------------------------------------------------------------------------


def test_heartbeat_is_answered_with_an_exact_ack() -> None:
    """Each heartbeat queues exactly one heartbeat.ack frame, stamped by the wall clock."""
    proto = connected()
    events = proto.receive(HEARTBEAT, 30.0)
    assert len(events) == 1 and isinstance(events[0], HeartbeatAnswered)
    assert events[0].message.msg_type == "heartbeat"
    frames = proto.data_to_send()
    assert [sent(f) for f in frames] == [{"msg_type": "heartbeat.ack", "timestamp": WALL_TEXT}]
    assert proto.data_to_send() == []


def test_each_heartbeat_gets_its_own_ack() -> None:
    """Three heartbeats before a drain queue three acks, in order."""
    proto = connected()
    for now in (30.0, 60.0, 90.0):
        proto.receive(HEARTBEAT, now)
    assert [sent(f)["msg_type"] for f in proto.data_to_send()] == ["heartbeat.ack"] * 3


def test_heartbeat_restarts_the_deadline() -> None:
    """The deadline is heartbeat_timeout after the latest heartbeat."""
    proto = connected()
    proto.receive(HEARTBEAT, 30.0)
    assert proto.deadline == 30.0 + TIMEOUT
    proto.receive(HEARTBEAT, 61.5)
    assert proto.deadline == 61.5 + TIMEOUT


def test_is_dead_before_and_after_the_deadline() -> None:
    """The connection is alive until heartbeat_timeout passes without a heartbeat, then dead."""
    proto = new_protocol()
    assert not proto.is_dead(1e9)  # never connected: no deadline
    proto.connection_made()
    proto.receive(CONNECTED, 0.0)
    assert not proto.is_dead(39.999)
    assert proto.is_dead(40.0)
    assert proto.is_dead(41.0)
    proto.receive(HEARTBEAT, 30.0)
    assert not proto.is_dead(69.9)
    assert proto.is_dead(70.0)


def test_other_messages_do_not_extend_the_deadline() -> None:
    """Only heartbeats prove the server alive; a stream of signals does not."""
    proto = connected()
    subscribe(proto)
    for seq, now in enumerate((10.0, 20.0, 39.0), start=1):
        proto.receive(signal(seq), now)
    assert proto.deadline == TIMEOUT
    assert proto.is_dead(TIMEOUT)


def test_disarm_and_connection_lost_clear_the_deadline() -> None:
    """A disarmed or lost connection is never reported dead again."""
    proto = connected()
    proto.disarm()
    assert proto.deadline is None and not proto.is_dead(1e9)
    proto = connected()
    proto.connection_lost()
    assert proto.deadline is None and not proto.is_dead(1e9)
    assert not proto.is_open


# Malformed frames ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "[1]",
        "42",
        '{"no_type": 1}',
        b'{"msg_type":"heartbeat"\xff}',
        b"[1]",
        '{"msg_type":"x","payload":[]}',
        "[" * 100_000,
    ],
    ids=["bad-json", "array", "number", "no-type", "binary-not-utf8", "binary-array", "payload",
         "deep"],
)
def test_malformed_frame_after_connect_is_an_event(frame: str | bytes) -> None:
    """After connecting, a bad frame yields Malformed (a ProtocolError inside) and no raise."""
    proto = connected()
    events = proto.receive(frame, 1.0)
    assert len(events) == 1 and isinstance(events[0], Malformed)
    assert isinstance(events[0].error, ProtocolError)
    assert proto.is_open
    assert isinstance(proto.receive(HEARTBEAT, 2.0)[0], HeartbeatAnswered)


# Requests and answers ------------------------------------------------------------------


def test_request_frame_carries_the_request_id() -> None:
    """request() returns its id and a subscription.request frame carrying that id."""
    proto = connected()
    request_id, frame = proto.request("subscribe", SIGNAL, STRATEGY)
    assert request_id == "r1"
    assert sent(frame) == {
        "msg_type": "subscription.request",
        "request_id": "r1",
        "timestamp": WALL_TEXT,
        "payload": {"action": "subscribe", "channel": SIGNAL, "strategy_id": STRATEGY},
    }
    assert proto.request("subscribe", POSITIONS, STRATEGY)[0] == "r2"


def test_default_request_ids_are_fresh_and_short() -> None:
    """Without injection, every request gets a distinct 1-50 character id."""
    proto = ClientProtocol(TIMEOUT)
    proto.connection_made()
    proto.receive(CONNECTED, 0.0)
    ids = [proto.request("subscribe", SIGNAL, n)[0] for n in range(1, 30)]
    assert len(set(ids)) == len(ids)
    assert all(1 <= len(i) <= 50 for i in ids)
    other = ClientProtocol(TIMEOUT)
    assert other.request("subscribe", SIGNAL, 1)[0] not in ids


def test_ack_by_request_id_resolves_that_request() -> None:
    """An ack echoing a request_id answers that request, even out of order."""
    proto = connected()
    first, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    second, _ = proto.request("subscribe", POSITIONS, OTHER)
    events = proto.receive(ack(second, POSITIONS, OTHER), 1.0)
    assert len(events) == 1 and isinstance(events[0], RequestAnswered)
    answered = events[0]
    assert answered.request_id == second
    assert answered.error is None
    assert isinstance(answered.ack, SubscriptionAck)
    assert answered.ack.request_id == second
    assert proto.subscriptions == {(POSITIONS, OTHER)}
    events = proto.receive(ack(first), 2.0)
    assert [e.request_id for e in events] == [first]
    assert proto.subscriptions == {(POSITIONS, OTHER), (SIGNAL, STRATEGY)}


def test_ack_without_request_id_resolves_oldest_matching() -> None:
    """An ack with no request_id answers the oldest outstanding request for its pair."""
    proto = connected()
    first, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    second, _ = proto.request("subscribe", POSITIONS, OTHER)
    third, _ = proto.request("subscribe", POSITIONS, OTHER)
    events = proto.receive(ack(None, POSITIONS, OTHER), 1.0)
    assert [e.request_id for e in events] == [second]
    assert proto.subscriptions == {(POSITIONS, OTHER)}
    events = proto.receive(ack(None, POSITIONS, OTHER), 1.0)
    assert [e.request_id for e in events] == [third]
    events = proto.receive(ack(None, channel=SIGNAL, strategy_id=None, action=None), 1.0)
    assert [e.request_id for e in events] == [first]


def test_ack_answering_nothing_is_ignored() -> None:
    """An ack matching no outstanding request changes nothing and reaches nobody."""
    proto = connected()
    assert proto.receive(ack("nobody"), 1.0) == []
    assert proto.receive(ack(None), 1.0) == []
    assert proto.subscriptions == frozenset()


def test_unsubscribe_ack_removes_the_pair() -> None:
    """An acked unsubscribe removes the pair from subscriptions."""
    proto = connected()
    subscribe(proto)
    subscribe(proto, POSITIONS)
    request_id, frame = proto.request("unsubscribe", SIGNAL, STRATEGY)
    assert sent(frame)["payload"]["action"] == "unsubscribe"
    events = proto.receive(ack(request_id, action="unsubscribe"), 2.0)
    assert [e.request_id for e in events] == [request_id]
    assert proto.subscriptions == {(POSITIONS, STRATEGY)}


def test_error_with_request_id_answers_with_server_error() -> None:
    """A refusal echoing a request_id becomes that request's ServerError, with every field."""
    proto = connected()
    first, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    second, _ = proto.request("subscribe", SIGNAL, OTHER)
    events = proto.receive(error(second), 1.0)
    assert len(events) == 1 and isinstance(events[0], RequestAnswered)
    answered = events[0]
    assert answered.request_id == second
    assert answered.ack is None
    exc = answered.error
    assert isinstance(exc, ServerError)
    assert exc.code == "FORBIDDEN"
    assert exc.field == "StrategyId"
    assert exc.message == "Not authorized to subscribe to Strategy"
    assert exc.errors == (
        ErrorDetail("FORBIDDEN", "StrategyId", "Not authorized to subscribe to Strategy"),
    )
    assert exc.request_id == second
    assert proto.subscriptions == frozenset()
    assert [e.request_id for e in proto.receive(ack(first), 2.0)] == [first]


def test_error_list_reaches_server_error() -> None:
    """An error with an errors list gives ServerError.errors and the first item's fields."""
    proto = connected()
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    items = [
        {"code": "INVALID_PARAMETER", "field": "timestamp", "message": "skewed"},
        {"code": "NOT_FOUND", "field": "StrategyId", "message": "no such strategy"},
    ]
    (answered,) = proto.receive(error(request_id, errors=items), 1.0)
    exc = answered.error
    assert (exc.code, exc.field, exc.message) == ("INVALID_PARAMETER", "timestamp", "skewed")
    assert exc.errors == (
        ErrorDetail("INVALID_PARAMETER", "timestamp", "skewed"),
        ErrorDetail("NOT_FOUND", "StrategyId", "no such strategy"),
    )


def test_error_without_request_id_answers_the_oldest() -> None:
    """A refusal without request_id answers the oldest outstanding request (server order)."""
    proto = connected()
    first, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    second, _ = proto.request("subscribe", SIGNAL, OTHER)
    (answered,) = proto.receive(error(), 1.0)
    assert answered.request_id == first
    assert answered.error.request_id == first
    (answered,) = proto.receive(ack(None, SIGNAL, OTHER), 2.0)
    assert answered.request_id == second
    assert proto.subscriptions == {(SIGNAL, OTHER)}


def test_error_claimed_by_nobody_is_delivered() -> None:
    """An error that answers no request reaches the user as an ErrorMessage."""
    proto = connected()
    events = proto.receive(error(code="UNAUTHORIZED", message="bye"), 1.0)
    (message,) = delivered(events)
    assert isinstance(message, ErrorMessage)
    assert (message.code, message.message) == ("UNAUTHORIZED", "bye")
    events = proto.receive(error("unknown-id"), 1.0)
    assert isinstance(delivered(events)[0], ErrorMessage)


# The key a server echoes ---------------------------------------------------------------

KEY = "sk-test-echoed-0123456789abcdef"  # what ClientProtocol(secrets=...) must never show


def test_a_server_error_echoing_a_secret_masks_every_field() -> None:
    """A refusal whose code, field, message and errors quote the key: the ServerError holds
    *** in their place, while the same error answering nobody is delivered unchanged."""
    proto = connected(secrets=(KEY,))
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    items = [{"code": KEY, "field": KEY, "message": f"no {KEY}"}, {"message": KEY}]
    (answered,) = proto.receive(error(request_id, errors=items), 1.0)
    exc = answered.error
    assert isinstance(exc, ServerError)
    assert (exc.code, exc.field, exc.message) == ("***", "***", "no ***")
    assert exc.errors == (ErrorDetail("***", "***", "no ***"), ErrorDetail("UNKNOWN", None, "***"))
    assert KEY not in str(exc)
    (message,) = delivered(proto.receive(error(errors=items), 2.0))
    assert isinstance(message, ErrorMessage)
    assert (message.code, message.message) == (KEY, f"no {KEY}")  # the user's data


@pytest.mark.parametrize(
    "frame",
    [
        json.dumps({"msg_type": "heartbeat", "seq_id": KEY}),
        json.dumps({"msg_type": "gap", "payload": {"channel": KEY}}),
        json.dumps({"msg_type": KEY, "payload": [1]}),
    ],
    ids=["seq_id", "gap-channel", "msg_type"],
)
def test_a_malformed_frame_quoting_a_secret_is_masked(frame: str) -> None:
    """The ProtocolError of a malformed frame quoting the key says *** instead, before and
    after connection.connected; without secrets the codec's own error passes as it is."""
    (event,) = connected(secrets=(KEY,)).receive(frame, 1.0)
    assert isinstance(event, Malformed)
    assert KEY not in str(event.error) and "***" in str(event.error)
    proto = new_protocol(secrets=(KEY,))
    proto.connection_made()
    with pytest.raises(ProtocolError) as info:
        proto.receive(frame, 0.0)
    assert KEY not in str(info.value) and KEY not in str(info.value.__cause__)
    assert info.value.__context__ is None or KEY not in str(info.value.__context__)
    (event,) = connected().receive(frame, 1.0)
    assert isinstance(event, Malformed) and KEY in str(event.error)


# Forgotten (timed-out) requests --------------------------------------------------------


def test_late_ack_after_forget_updates_subscriptions_silently() -> None:
    """A late ack for a timed-out request updates subscriptions but answers nobody."""
    proto = connected()
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    proto.forget(request_id)
    assert proto.receive(ack(request_id), 5.0) == []
    assert proto.subscriptions == {(SIGNAL, STRATEGY)}


def test_late_ack_does_not_satisfy_a_later_request() -> None:
    """A late ack (no request_id) for a forgotten request never answers the retry."""
    proto = connected()
    old, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    proto.forget(old)
    new, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    assert proto.receive(ack(None), 5.0) == []
    assert proto.subscriptions == {(SIGNAL, STRATEGY)}
    (answered,) = proto.receive(ack(None), 6.0)
    assert answered.request_id == new


def test_late_error_for_forgotten_request_spares_the_newer_one() -> None:
    """A late error (no request_id) for an older forgotten request does not fail a newer one."""
    proto = connected()
    old, _ = proto.request("subscribe", SIGNAL, OTHER)
    proto.forget(old)
    new, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    assert proto.receive(error(), 5.0) == []
    assert proto.subscriptions == frozenset()
    (answered,) = proto.receive(ack(None), 6.0)
    assert answered.request_id == new
    assert answered.error is None
    assert proto.subscriptions == {(SIGNAL, STRATEGY)}


def test_late_error_with_request_id_for_forgotten_request_is_swallowed() -> None:
    """A late error echoing a forgotten request's id reaches neither a request nor the user."""
    proto = connected()
    old, _ = proto.request("subscribe", SIGNAL, OTHER)
    proto.forget(old)
    new, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    assert proto.receive(error(old), 5.0) == []
    (answered,) = proto.receive(ack(new), 6.0)
    assert answered.request_id == new


def test_forget_unknown_request_is_harmless() -> None:
    """Forgetting an id that is not outstanding changes nothing."""
    proto = connected()
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    proto.forget("never-sent")
    (answered,) = proto.receive(ack(request_id), 1.0)
    assert answered.request_id == request_id


# Subscription limit --------------------------------------------------------------------


def test_101st_subscription_is_refused() -> None:
    """A 101st subscription raises SubscriptionLimitError (a ValueError) before sending."""
    proto = connected()
    for strategy_id in range(1, 101):
        subscribe(proto, SIGNAL, strategy_id)
    assert len(proto.subscriptions) == 100
    with pytest.raises(SubscriptionLimitError):
        proto.request("subscribe", POSITIONS, 1)
    with pytest.raises(ValueError):
        proto.request("subscribe", SIGNAL, 101)


def test_limit_counts_pending_subscriptions() -> None:
    """Subscriptions still waiting for their ack count toward the 100."""
    proto = connected()
    for strategy_id in range(1, 91):
        subscribe(proto, SIGNAL, strategy_id)
    for strategy_id in range(1, 11):
        proto.request("subscribe", POSITIONS, strategy_id)
    with pytest.raises(SubscriptionLimitError):
        proto.request("subscribe", POSITIONS, 11)


def test_limit_allows_resubscribing_a_held_pair_and_unsubscribing() -> None:
    """At the limit, a held pair may be subscribed again and any pair unsubscribed."""
    proto = connected()
    for strategy_id in range(1, 101):
        subscribe(proto, SIGNAL, strategy_id)
    proto.request("subscribe", SIGNAL, 50)
    request_id, _ = proto.request("unsubscribe", SIGNAL, 1)
    proto.receive(ack(request_id, SIGNAL, 1, "unsubscribe"), 2.0)
    assert len(proto.subscriptions) == 99
    proto.request("subscribe", SIGNAL, 1000)  # room again


def test_refused_subscription_frees_its_slot() -> None:
    """A pending subscription refused by the server no longer counts toward the limit."""
    proto = connected(max_subscriptions=2)
    subscribe(proto, SIGNAL, 1)
    request_id, _ = proto.request("subscribe", SIGNAL, 2)
    with pytest.raises(SubscriptionLimitError):
        proto.request("subscribe", SIGNAL, 3)
    proto.receive(error(request_id), 1.0)
    proto.request("subscribe", SIGNAL, 3)


def test_limit_allows_repeating_a_pending_subscription() -> None:
    """At the limit, repeating a subscribe whose ack is pending adds no subscription."""
    proto = connected(max_subscriptions=2)
    subscribe(proto, SIGNAL, 1)
    first, _ = proto.request("subscribe", SIGNAL, 2)
    second, _ = proto.request("subscribe", SIGNAL, 2)
    with pytest.raises(SubscriptionLimitError):
        proto.request("subscribe", POSITIONS, 2)  # a genuinely new pair is still refused
    assert [e.request_id for e in proto.receive(ack(first, SIGNAL, 2), 1.0)] == [first]
    assert [e.request_id for e in proto.receive(ack(second, SIGNAL, 2), 1.0)] == [second]
    assert proto.subscriptions == {(SIGNAL, 1), (SIGNAL, 2)}


# Argument checks -----------------------------------------------------------------------


@pytest.mark.parametrize("strategy_id", [True, False, "12", 0, -1, 12.0, None])
def test_bad_strategy_id_is_value_error(strategy_id: Any) -> None:
    """bool, "12", 0, -1 and other non-positive-int strategy ids are ValueError."""
    proto = connected()
    with pytest.raises(ValueError):
        proto.request("subscribe", SIGNAL, strategy_id)


@pytest.mark.parametrize(
    ("action", "channel", "resume_from"),
    [
        ("subscribe", "strategy.signals", None),
        ("subscribe", "gap", None),
        ("subscribe", "", None),
        ("subscribe", POSITIONS, 5),
        ("subscribe", POSITIONS, 0),
        ("unsubscribe", SIGNAL, 5),
        ("subscribe", SIGNAL, -1),
        ("subscribe", SIGNAL, True),
        ("subscribe", SIGNAL, "5"),
        ("subscribe", SIGNAL, 5.0),
        ("resubscribe", SIGNAL, None),
    ],
)
def test_bad_arguments_fail_before_anything_is_sent(
    action: str, channel: str, resume_from: Any
) -> None:
    """Unknown channel/action and resume_from on positions, unsubscribe or non-int: ValueError."""
    proto = connected()
    with pytest.raises(ValueError):
        proto.request(action, channel, STRATEGY, resume_from)
    with pytest.raises(ValueError):
        proto.check_request(action, channel, STRATEGY, resume_from)
    assert proto.data_to_send() == []
    assert proto.request("subscribe", SIGNAL, STRATEGY)[0] == "r1"  # no id was used up
    assert proto.connection_lost() == ["r1"]  # nothing else became outstanding


# Sequence numbers, duplicates and handing out -----------------------------------------


def test_signals_are_delivered_with_strategy_and_seq() -> None:
    """A new signal is delivered as a Signal with its strategy and seq_id."""
    proto = connected()
    subscribe(proto)
    (message,) = delivered(proto.receive(signal(1), 2.0))
    assert isinstance(message, Signal)
    assert (message.strategy_id, message.seq_id) == (STRATEGY, 1)


def test_signal_at_or_below_last_accepted_is_duplicate() -> None:
    """A signal whose seq_id is not above the last accepted one is a Duplicate."""
    proto = connected()
    subscribe(proto)
    for seq in (1, 2, 3):
        assert isinstance(proto.receive(signal(seq), 2.0)[0], Deliver)
    for seq in (3, 2, 1):
        (event,) = proto.receive(signal(seq), 2.0)
        assert isinstance(event, Duplicate)
        assert event.message.seq_id == seq
    assert isinstance(proto.receive(signal(4), 2.0)[0], Deliver)


def test_dedupe_is_per_strategy() -> None:
    """Sequence numbers of different strategies never collide."""
    proto = connected()
    subscribe(proto, SIGNAL, STRATEGY)
    subscribe(proto, SIGNAL, OTHER)
    assert isinstance(proto.receive(signal(5, STRATEGY), 2.0)[0], Deliver)
    assert isinstance(proto.receive(signal(5, OTHER), 2.0)[0], Deliver)
    assert isinstance(proto.receive(signal(3, OTHER), 2.0)[0], Duplicate)


def test_hand_out_records_the_last_handed_out_and_refuses_nothing() -> None:
    """Duplicates go at arrival; hand_out() never refuses (queue and callbacks may interleave)."""
    proto = connected()
    subscribe(proto)
    messages = [delivered(proto.receive(signal(seq), 2.0))[0] for seq in (1, 2, 3)]
    for message in messages:
        proto.hand_out(message)
    assert proto.last_delivered == {STRATEGY: 3}
    proto.hand_out(messages[0])  # one taken by recv() after a callback took 3
    assert proto.last_delivered == {STRATEGY: 1}


def test_hand_out_passes_other_messages() -> None:
    """Non-signal messages (and strategy-less signals) are always handed out."""
    proto = connected()
    gap = Gap(msg_type="gap", strategy_id=1, channel="strategy.signal:1", from_seq=1)
    proto.hand_out(gap)
    proto.hand_out(gap)
    loose = Signal(msg_type="strategy.signal", seq_id=1)
    proto.hand_out(loose)
    proto.hand_out(loose)
    assert proto.last_delivered == {}


@given(st.lists(st.integers(min_value=1, max_value=30), max_size=60))
@settings(max_examples=60, deadline=None)
def test_each_seq_id_reaches_the_user_once_in_order(seqs: list[int]) -> None:
    """Whatever order and repeats the server sends, handed-out seq_ids strictly increase."""
    proto = connected()
    subscribe(proto)
    handed: list[int] = []
    for seq in seqs:
        for message in delivered(proto.receive(signal(seq), 2.0)):
            proto.hand_out(message)
            handed.append(message.seq_id or 0)
    assert handed == sorted(set(handed))
    assert all(b > a for a, b in zip(handed, handed[1:]))
    if seqs:
        assert handed[0] == seqs[0]


# Connection loss and restore -----------------------------------------------------------


def test_connection_lost_returns_waited_requests_and_keeps_subscriptions() -> None:
    """Losing the socket fails the waited (not forgotten) requests; subscriptions stay."""
    proto = connected()
    subscribe(proto)
    waited, _ = proto.request("subscribe", SIGNAL, OTHER)
    forgotten, _ = proto.request("subscribe", POSITIONS, OTHER)
    proto.forget(forgotten)
    proto.receive(HEARTBEAT, 3.0)
    assert proto.connection_lost() == [waited]
    assert proto.subscriptions == {(SIGNAL, STRATEGY)}
    assert not proto.is_open
    assert proto.data_to_send() == []  # an unsent ack for the old socket is dropped
    assert proto.connection_lost() == []


def test_restore_resubscribes_every_held_pair() -> None:
    """After reconnecting, each held pair is subscribed again, resuming from the last seq."""
    proto = connected()
    subscribe(proto, SIGNAL, STRATEGY)
    subscribe(proto, SIGNAL, OTHER)
    subscribe(proto, POSITIONS, STRATEGY)
    for seq in (1, 2, 3):
        for message in delivered(proto.receive(signal(seq), 2.0)):
            proto.hand_out(message)
    frames = reconnect(proto)
    assert all(f["msg_type"] == "subscription.request" for f in frames)
    assert all(f["timestamp"] == WALL_TEXT for f in frames)
    payloads = {
        (f["payload"]["channel"], f["payload"]["strategy_id"]): f["payload"] for f in frames
    }
    assert set(payloads) == {(SIGNAL, STRATEGY), (SIGNAL, OTHER), (POSITIONS, STRATEGY)}
    assert payloads[(SIGNAL, STRATEGY)] == {
        "action": "subscribe",
        "channel": SIGNAL,
        "strategy_id": STRATEGY,
        "resume_from": 3,
    }
    assert "resume_from" not in payloads[(SIGNAL, OTHER)]  # nothing known
    assert "resume_from" not in payloads[(POSITIONS, STRATEGY)]  # never on positions
    ids = [f["request_id"] for f in frames]
    assert len(set(ids)) == 3 and not set(ids) & {"r1", "r2", "r3"}


def test_restore_acks_answer_nobody_and_keep_subscriptions() -> None:
    """Restore acks are not RequestAnswered events; the pairs stay held."""
    proto = connected()
    subscribe(proto)
    (frame,) = reconnect(proto)
    assert proto.receive(ack(frame["request_id"]), 101.0) == []
    assert proto.subscriptions == {(SIGNAL, STRATEGY)}


def test_restore_resumes_from_the_highest_held_not_the_last_handed_out() -> None:
    """Signals still queued at a drop survive it: the restore resumes after them."""
    proto = connected()
    subscribe(proto)
    messages = [delivered(proto.receive(signal(seq), 2.0))[0] for seq in (1, 2, 3, 4)]
    proto.hand_out(messages[0])
    proto.hand_out(messages[1])
    (frame,) = reconnect(proto)
    assert frame["payload"]["resume_from"] == 4
    proto.receive(ack(frame["request_id"]), 101.0)
    # A server that replays from earlier anyway: what is still queued is a duplicate.
    assert isinstance(proto.receive(signal(3), 102.0)[0], Duplicate)
    assert isinstance(proto.receive(signal(4), 102.0)[0], Duplicate)
    assert isinstance(proto.receive(signal(5), 102.0)[0], Deliver)


def test_first_signal_unread_at_a_drop_is_the_resume_point() -> None:
    """Signal 7 arrived, unread, then the drop: the restore resumes from 7 (8.. replayed)."""
    proto = connected()
    subscribe(proto)
    proto.receive(signal(7), 2.0)
    assert proto.last_delivered == {}
    (frame,) = reconnect(proto)
    assert frame["payload"]["resume_from"] == 7


def test_refused_restore_drops_the_pair_and_tells_the_user() -> None:
    """A resubscription refused after a reconnect removes the pair and delivers the error."""
    proto = connected()
    subscribe(proto)
    subscribe(proto, POSITIONS)
    frames = reconnect(proto)
    signal_frame = next(f for f in frames if f["payload"]["channel"] == SIGNAL)
    events = proto.receive(error(signal_frame["request_id"]), 101.0)
    (refused,) = events
    assert isinstance(refused, SubscriptionRefused)
    assert (refused.channel, refused.strategy_id) == (SIGNAL, STRATEGY)
    assert isinstance(refused.message, ErrorMessage) and refused.message.code == "FORBIDDEN"
    assert isinstance(refused.error, ServerError) and refused.error.code == "FORBIDDEN"
    assert (refused.error.channel, refused.error.strategy_id) == (SIGNAL, STRATEGY)
    assert proto.subscriptions == {(POSITIONS, STRATEGY)}


def test_restore_with_no_subscriptions_sends_nothing() -> None:
    """A client holding no subscriptions sends nothing after reconnecting."""
    assert reconnect(connected()) == []


# Resume points -------------------------------------------------------------------------


def test_explicit_resume_from_restarts_the_replay() -> None:
    """An acked explicit resume_from gives ReplayRestarted and lets the replay through."""
    proto = connected()
    subscribe(proto)
    for seq in range(1, 11):
        for message in delivered(proto.receive(signal(seq), 2.0)):
            proto.hand_out(message)
    request_id, frame = proto.request("subscribe", SIGNAL, STRATEGY, 5)
    assert sent(frame)["payload"]["resume_from"] == 5
    events = proto.receive(ack(request_id), 3.0)
    assert ReplayRestarted(STRATEGY, 5, replay_to=10) in events
    assert [e.request_id for e in events if isinstance(e, RequestAnswered)] == [request_id]
    assert proto.last_delivered == {STRATEGY: 5}
    (replayed,) = delivered(proto.receive(signal(6), 4.0))
    proto.hand_out(replayed)
    assert isinstance(proto.receive(signal(6), 4.0)[0], Duplicate)


def test_explicit_resume_from_zero_is_live_only() -> None:
    """resume_from=0 sends no resume_from, even when a resume point is known."""
    proto = connected(resume_points={STRATEGY: 50})
    request_id, frame = proto.request("subscribe", SIGNAL, STRATEGY, 0)
    assert "resume_from" not in sent(frame)["payload"]
    events = proto.receive(ack(request_id), 1.0)
    assert not any(isinstance(e, ReplayRestarted) for e in events)


def test_checkpoint_resume_point_is_used() -> None:
    """A checkpointed seq_id is sent as resume_from when subscribe gives none."""
    proto = connected(resume_points={STRATEGY: 50})
    request_id, frame = proto.request("subscribe", SIGNAL, STRATEGY)
    assert sent(frame)["payload"]["resume_from"] == 50
    events = proto.receive(ack(request_id), 1.0)
    assert not any(isinstance(e, ReplayRestarted) for e in events)
    assert proto.resume_point(STRATEGY) == 50
    assert isinstance(proto.receive(signal(50), 2.0)[0], Duplicate)
    (frame_after,) = reconnect(proto)
    assert frame_after["payload"]["resume_from"] == 50
    proto.receive(ack(frame_after["request_id"]), 101.0)
    assert isinstance(proto.receive(signal(51), 102.0)[0], Deliver)
    (frame_again,) = reconnect(proto, 103.0)
    assert frame_again["payload"]["resume_from"] == 51


def test_checkpoint_resume_point_never_on_positions_or_other_strategies() -> None:
    """A checkpoint for one strategy adds no resume_from to positions or other strategies."""
    proto = connected(resume_points={STRATEGY: 50})
    _, on_positions = proto.request("subscribe", POSITIONS, STRATEGY)
    _, on_other = proto.request("subscribe", SIGNAL, OTHER)
    assert "resume_from" not in sent(on_positions)["payload"]
    assert "resume_from" not in sent(on_other)["payload"]


def test_handed_out_seq_wins_over_checkpoint() -> None:
    """A resubscribe resumes from what was handed out in this run, not the older checkpoint."""
    proto = connected(resume_points={STRATEGY: 50})
    subscribe(proto)
    for seq in (51, 52):
        proto.hand_out(delivered(proto.receive(signal(seq), 2.0))[0])
    _, frame = proto.request("subscribe", SIGNAL, STRATEGY)
    assert sent(frame)["payload"]["resume_from"] == 52


# Strategy inference and passing through ------------------------------------------------


def test_signal_without_strategy_gets_the_only_subscription() -> None:
    """A signal naming no strategy is attributed to the only signal subscription."""
    proto = connected()
    subscribe(proto)
    subscribe(proto, POSITIONS, OTHER)
    (message,) = delivered(proto.receive(signal(3, strategy_id=None), 2.0))
    assert isinstance(message, Signal) and message.strategy_id == STRATEGY
    assert isinstance(proto.receive(signal(3, strategy_id=None), 2.0)[0], Duplicate)


def test_signal_without_strategy_and_several_subscriptions_passes_through() -> None:
    """With several signal subscriptions an anonymous signal is delivered as it came."""
    proto = connected()
    subscribe(proto, SIGNAL, STRATEGY)
    subscribe(proto, SIGNAL, OTHER)
    (message,) = delivered(proto.receive(signal(3, strategy_id=None), 2.0))
    assert isinstance(message, Signal) and message.strategy_id is None


def test_positions_without_strategy_gets_the_only_positions_subscription() -> None:
    """A positions update naming no strategy is attributed to the only positions pair."""
    proto = connected()
    subscribe(proto, POSITIONS, OTHER)
    subscribe(proto, SIGNAL, STRATEGY)
    (message,) = delivered(proto.receive(positions(None), 2.0))
    assert isinstance(message, Positions) and message.strategy_id == OTHER
    (named,) = delivered(proto.receive(positions(STRATEGY), 2.0))
    assert isinstance(named, Positions) and named.strategy_id == STRATEGY


def test_gap_is_delivered() -> None:
    """A gap reaches the user, loud and intact."""
    proto = connected()
    subscribe(proto)
    gap = server(
        "gap",
        payload={
            "strategy_id": None,
            "channel": "strategy.signal:12345678",
            "from": "98765",
            "message": "Replay limit of 1000 messages exceeded",
        },
    )
    (message,) = delivered(proto.receive(gap, 2.0))
    assert isinstance(message, Gap)
    assert (message.strategy_id, message.from_seq) == (STRATEGY, 98765)


def test_unknown_and_disconnected_messages_are_delivered() -> None:
    """Unknown msg_types and connection.disconnected are passed to the user, not dropped."""
    proto = connected()
    (unknown,) = delivered(proto.receive(server("strategy.news", payload={"x": 1}), 2.0))
    assert type(unknown) is Message and unknown.payload == {"x": 1}
    (gone,) = delivered(proto.receive(server("connection.disconnected"), 2.0))
    assert gone.msg_type == "connection.disconnected"


# Hostile seq_ids, strategies nobody asked for, numbering restarts, gaps -----------------


def raw_signal(seq_id: Any, strategy_id: int = STRATEGY, missing: bool = False) -> str:
    obj: dict[str, Any] = {"msg_type": "strategy.signal", "payload": {"strategy_id": strategy_id}}
    if not missing:
        obj["seq_id"] = seq_id
    return json.dumps(obj)


INVALID_SEQ_IDS = {
    "missing": raw_signal(None, missing=True),
    "null": raw_signal(None),
    "zero": raw_signal(0),
    "negative": raw_signal(-1),
    "too-big": raw_signal(2**63),
    "2**70": raw_signal(2**70),
    "bool": raw_signal(True),
    "float": raw_signal(3.0),
    "string": raw_signal("3"),
}


@pytest.mark.parametrize("frame", list(INVALID_SEQ_IDS.values()), ids=list(INVALID_SEQ_IDS))
def test_an_invalid_seq_id_is_delivered_plain_and_never_a_resume_point(
    frame: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An unusable seq_id: a plain Message (raw intact), a WARNING, no resume point."""
    proto = connected()
    subscribe(proto)
    (message,) = delivered(proto.receive(frame, 2.0))
    assert type(message) is Message and message.seq_id is None
    assert message.raw == json.loads(frame)
    warned = [r for r in caplog.records if "invalid seq_id" in r.getMessage()]
    assert [r.levelname for r in warned] == ["WARNING"]
    assert proto.resume_point(STRATEGY) is None
    (restore,) = reconnect(proto)
    assert "resume_from" not in restore["payload"]  # never -1 (the reader used to die)
    proto.receive(ack(restore["request_id"]), 101.0)
    assert isinstance(proto.receive(signal(1), 102.0)[0], Deliver)
    assert isinstance(proto.receive(frame, 102.0)[0], Deliver)  # never a duplicate either
    (again,) = reconnect(proto, 103.0)
    assert again["payload"]["resume_from"] == 1


def test_a_huge_seq_id_does_not_swallow_the_later_signals() -> None:
    """2**70 then 1, 2, 3: all four delivered, the normal ones as Signals."""
    proto = connected()
    subscribe(proto)
    first = delivered(proto.receive(raw_signal(2**70), 2.0))
    later = [delivered(proto.receive(signal(seq), 2.0)) for seq in (1, 2, 3)]
    assert len(first) == 1 and [m[0].seq_id for m in later] == [1, 2, 3]


def test_a_seq_id_far_below_restarts_the_numbering_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More than 1000 below the highest held: delivered, the new resume point, WARNING once."""
    caplog.set_level("DEBUG", logger="c2sync.protocol")
    proto = connected()
    subscribe(proto)
    proto.receive(signal(5000), 2.0)
    assert isinstance(proto.receive(signal(4000), 2.0)[0], Duplicate)  # exactly 1000 below
    assert isinstance(proto.receive(signal(3999), 2.0)[0], Deliver)  # 1001 below: restart
    assert proto.resume_point(STRATEGY) == 3999
    assert isinstance(proto.receive(signal(3999), 2.0)[0], Duplicate)
    assert isinstance(proto.receive(signal(4000), 2.0)[0], Deliver)
    proto.receive(signal(9000), 2.0)
    assert isinstance(proto.receive(signal(1), 2.0)[0], Deliver)  # a second restart
    (frame,) = reconnect(proto)
    assert frame["payload"]["resume_from"] == 1
    restarts = [r for r in caplog.records if "restarted its numbering" in r.getMessage()]
    assert [r.levelname for r in restarts] == ["WARNING", "DEBUG"]
    assert "3999" in restarts[0].getMessage() and "5000" in restarts[0].getMessage()
    assert "restart 2" in restarts[1].getMessage()


def test_the_checkpoint_goes_down_once_with_a_restarted_numbering() -> None:
    """The signal that restarted the numbering is checkpointed as a restart, once."""
    proto = connected()
    subscribe(proto)
    proto.receive(signal(5000), 2.0)
    proto.receive(signal(3), 2.0)
    assert proto.checkpoint_kind(STRATEGY, 5000) == "save"
    assert proto.checkpoint_kind(STRATEGY, 3) == "restart"
    assert proto.checkpoint_kind(STRATEGY, 3) == "save"
    assert proto.checkpoint_kind(OTHER, 3) is None  # nobody asked for it: no checkpoint


def test_signals_of_strategies_nobody_asked_for_are_delivered_and_keep_no_state() -> None:
    """A strategy the user never subscribed to: delivered, no dedupe, no resume point."""
    proto = connected()
    subscribe(proto)
    for strategy_id in range(1, 2001):
        assert delivered(proto.receive(signal(5, strategy_id), 2.0))
    assert isinstance(proto.receive(signal(5, 1), 2.0)[0], Deliver)  # no state: no dedupe
    assert all(proto.resume_point(sid) is None for sid in range(1, 2001))
    assert proto.checkpoint_kind(1, 5) is None
    assert proto.last_delivered == {}


def test_a_strategy_asked_for_is_tracked_before_its_ack() -> None:
    """Signals arriving between a subscribe and its ack are ordered and deduplicated."""
    proto = connected()
    proto.request("subscribe", SIGNAL, OTHER)
    proto.receive(signal(3, OTHER), 2.0)
    assert isinstance(proto.receive(signal(3, OTHER), 2.0)[0], Duplicate)


def test_gap_says_where_the_missing_range_starts() -> None:
    """Gap.missing_after is the highest seq_id held when the gap arrived."""
    proto = connected()
    subscribe(proto)
    for seq in (1, 2, 3):
        proto.receive(signal(seq), 2.0)
    gap_frame = server(
        "gap",
        payload={"channel": f"strategy.signal:{STRATEGY}", "from": 1, "message": "too many"},
    )
    (gap,) = delivered(proto.receive(gap_frame, 2.0))
    assert isinstance(gap, Gap) and (gap.from_seq, gap.missing_after) == (1, 3)
    other = server("gap", payload={"channel": f"strategy.signal:{OTHER}", "from": 1})
    (unknown,) = delivered(proto.receive(other, 2.0))
    assert isinstance(unknown, Gap) and unknown.missing_after is None


def test_memory_does_not_grow_with_invented_strategy_ids() -> None:
    """50k strategy ids nobody asked for leave no per-strategy state behind (traced bytes)."""
    import tracemalloc

    proto = connected()
    subscribe(proto)
    frames = [signal(1, STRATEGY + i) for i in range(1, 50_001)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for frame in frames:
            proto.receive(frame, 2.0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 256 * 1024, f"{grown} bytes kept for 50k invented strategy ids"


# Servers that read the docs differently (docs/api-contract.md) ---------------------------


def refuse_resume_from(request_id: str | None, **payload: Any) -> str:
    return error(
        request_id,
        **(payload or {"code": "INVALID_PARAMETER", "field": "ResumeFrom",
                       "message": "resume_from must be a string"}),
    )


@pytest.mark.parametrize(
    "refusal",
    [
        {"code": "INVALID_PARAMETER", "field": "ResumeFrom", "message": "bad"},
        {"code": "INVALID_PARAMETER", "field": "resume_from", "message": "bad"},
        {"code": "MANDATORY_PARAM_EMPTY_OR_MALFORMED", "field": "RESUMEFROM", "message": "x"},
        {"code": "UNKNOWN", "message": "Invalid resume_from value"},
        {"code": "UNKNOWN", "message": "ResumeFrom is malformed"},
        {"code": "INVALID_PARAMETER", "message": "bad request"},
        {"errors": [{"code": "INVALID_PARAMETER", "field": "ResumeFrom", "message": "bad"}]},
    ],
    ids=["field", "field-snake", "field-upper", "message-snake", "message-camel",
         "invalid-no-field", "errors-list"],
)
def test_resume_from_refused_as_a_number_goes_again_as_a_string(refusal: dict[str, Any]) -> None:
    """A refusal naming resume_from sends the same request once more, resume_from as a JSON
    string under a fresh request id; the caller's id gets the final answer, and the string
    form is kept from then on."""
    proto = connected(resume_points={STRATEGY: 50})
    request_id, frame = proto.request("subscribe", SIGNAL, STRATEGY)
    assert sent(frame)["payload"]["resume_from"] == 50
    assert proto.receive(refuse_resume_from(request_id, **refusal), 1.0) == []
    (retry,) = [sent(f) for f in proto.data_to_send()]
    assert retry["payload"] == {"action": "subscribe", "channel": SIGNAL,
                                "strategy_id": STRATEGY, "resume_from": "50"}
    assert retry["request_id"] != request_id
    events = proto.receive(ack(retry["request_id"]), 2.0)
    assert [e.request_id for e in events if isinstance(e, RequestAnswered)] == [request_id]
    assert proto.subscriptions == {(SIGNAL, STRATEGY)}
    # The form that worked is kept: the next resume goes out as a string at once.
    (restore,) = reconnect(proto)
    assert restore["payload"]["resume_from"] == "50"


def test_resume_from_retried_without_request_ids() -> None:
    """The retry is matched when neither the refusal nor the ack echo a request_id."""
    proto = connected(resume_points={STRATEGY: 50})
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    proto.receive(refuse_resume_from(None), 1.0)
    (retry,) = [sent(f) for f in proto.data_to_send()]
    assert retry["payload"]["resume_from"] == "50"
    events = proto.receive(ack(None), 2.0)
    assert [e.request_id for e in events if isinstance(e, RequestAnswered)] == [request_id]


def test_resume_from_refused_in_both_forms_is_the_callers_error() -> None:
    """Once only: refused as a string too, the caller gets that ServerError, and the next
    request keeps the number (no form worked)."""
    proto = connected(resume_points={STRATEGY: 50})
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    proto.receive(refuse_resume_from(request_id), 1.0)
    (retry,) = [sent(f) for f in proto.data_to_send()]
    events = proto.receive(refuse_resume_from(retry["request_id"], code="INVALID_PARAMETER",
                                              field="ResumeFrom", message="still no"), 2.0)
    (answer,) = events
    assert isinstance(answer, RequestAnswered) and answer.request_id == request_id
    assert isinstance(answer.error, ServerError) and answer.error.message == "still no"
    assert answer.error.request_id == request_id
    assert (answer.error.channel, answer.error.strategy_id) == (SIGNAL, STRATEGY)
    assert proto.data_to_send() == []
    _, again = proto.request("subscribe", SIGNAL, STRATEGY)
    assert sent(again)["payload"]["resume_from"] == 50


def test_other_refusals_are_not_retried() -> None:
    """A refusal that does not name resume_from is the answer: nothing is sent again."""
    proto = connected(resume_points={STRATEGY: 50})
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    (answer,) = proto.receive(error(request_id), 1.0)
    assert isinstance(answer, RequestAnswered) and isinstance(answer.error, ServerError)
    assert answer.error.code == "FORBIDDEN"
    assert proto.data_to_send() == []


def test_a_request_without_resume_from_is_never_retried() -> None:
    """INVALID_PARAMETER with no field on a request that carried no resume_from is final."""
    proto = connected()
    request_id, frame = proto.request("subscribe", SIGNAL, STRATEGY)
    assert "resume_from" not in sent(frame)["payload"]
    (answer,) = proto.receive(refuse_resume_from(request_id, code="INVALID_PARAMETER",
                                                 message="bad"), 1.0)
    assert isinstance(answer.error, ServerError)
    assert proto.data_to_send() == []


def test_a_refused_restore_of_resume_from_is_retried_too() -> None:
    """After a reconnect, a restore refused for resume_from's type goes again as a string,
    and nothing is lost: the pair stays held."""
    proto = connected()
    subscribe(proto)
    proto.receive(signal(7), 2.0)
    (restore,) = reconnect(proto)
    assert restore["payload"]["resume_from"] == 7
    assert proto.receive(refuse_resume_from(restore["request_id"]), 101.0) == []
    (retry,) = [sent(f) for f in proto.data_to_send()]
    assert retry["payload"]["resume_from"] == "7"
    assert proto.receive(ack(retry["request_id"]), 102.0) == []
    assert proto.subscriptions == {(SIGNAL, STRATEGY)}
    assert isinstance(proto.receive(signal(8), 103.0)[0], Deliver)


def test_a_refused_timestamp_with_the_clock_in_sync_blames_the_form() -> None:
    """A Timestamp refusal while the clock agrees with the server's (within 5 s) says the
    form was refused and names the form sent; it does not ask to fix the clock."""
    proto = connected()  # connection.connected stamped at WALL: offset 0
    request_id, frame = proto.request("subscribe", SIGNAL, STRATEGY)
    (answer,) = proto.receive(error(request_id, code="INVALID_PARAMETER", field="Timestamp",
                                    message="Invalid timestamp"), 1.0)
    text = str(answer.error)
    assert "form" in text and repr(sent(frame)["timestamp"]) in text
    assert "NTP" not in text and "off (" not in text


def test_explicit_resume_on_a_new_pair_keeps_a_replay_sent_before_the_ack() -> None:
    """A server that replays before acking: on a pair not held, what arrives before the ack
    is the replay asked for, delivered and kept (the ack supersedes nothing)."""
    proto = connected()
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY, 5)
    restart = proto.take_restart()
    assert restart == ReplayRestarted(STRATEGY, 5, 5)  # applied before the request goes
    assert proto.take_restart() is None
    replayed = [m.seq_id for seq in (6, 7, 8) for m in delivered(proto.receive(signal(seq), 1.0))]
    assert replayed == [6, 7, 8]
    events = proto.receive(ack(request_id), 2.0)
    (count_only,) = [e for e in events if isinstance(e, ReplayRestarted)]
    assert not count_only.purge
    assert isinstance(proto.receive(signal(8), 3.0)[0], Duplicate)
    assert [m.seq_id for m in delivered(proto.receive(signal(9), 3.0))] == [9]


def test_explicit_resume_on_a_new_pair_with_the_replay_after_the_ack() -> None:
    """The documented order on a pair not held: ack, then the replay, delivered once."""
    proto = connected()
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY, 5)
    proto.take_restart()
    events = proto.receive(ack(request_id), 1.0)
    assert all(e.purge is False for e in events if isinstance(e, ReplayRestarted))
    got = [m.seq_id for seq in (6, 7, 6) for m in delivered(proto.receive(signal(seq), 2.0))]
    assert got == [6, 7]


def test_explicit_resume_on_a_held_pair_with_the_replay_before_the_ack() -> None:
    """Healing a held stream from 5 when the replay comes before the ack: its first signal
    restarts the stream then (what is queued above 5 is superseded), and the ack after it
    supersedes nothing more."""
    proto = connected()
    subscribe(proto)
    for seq in range(1, 11):
        proto.receive(signal(seq), 2.0)
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY, 5)
    assert proto.take_restart() is None  # held: the restart waits
    first = proto.receive(signal(6), 3.0)
    assert first[0] == ReplayRestarted(STRATEGY, 5, 10)
    assert [m.seq_id for m in delivered(first)] == [6]
    rest = [m.seq_id for seq in (7, 8, 9, 10) for m in delivered(proto.receive(signal(seq), 3.0))]
    assert rest == [7, 8, 9, 10]
    events = proto.receive(ack(request_id), 4.0)
    assert not any(isinstance(e, ReplayRestarted) for e in events)
    assert isinstance(proto.receive(signal(10), 5.0)[0], Duplicate)
    assert [m.seq_id for m in delivered(proto.receive(signal(11), 5.0))] == [11]


def test_explicit_resume_on_a_held_pair_live_before_the_ack_is_replayed_after_it() -> None:
    """The documented order on a held pair: a live signal before the ack is superseded at
    the ack, and the replay after it delivers 6.. once, in order."""
    proto = connected()
    subscribe(proto)
    for seq in range(1, 11):
        proto.receive(signal(seq), 2.0)
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY, 5)
    assert [m.seq_id for m in delivered(proto.receive(signal(11), 3.0))] == [11]
    events = proto.receive(ack(request_id), 4.0)
    assert ReplayRestarted(STRATEGY, 5, 11) in events
    got = [m.seq_id for seq in range(6, 13) for m in delivered(proto.receive(signal(seq), 5.0))]
    assert got == [6, 7, 8, 9, 10, 11, 12]


def test_a_lost_connection_forgets_a_pending_replay() -> None:
    """A replay asked for on a connection that was lost is not looked for on the next one."""
    proto = connected()
    subscribe(proto)
    for seq in range(1, 11):
        proto.receive(signal(seq), 2.0)
    proto.request("subscribe", SIGNAL, STRATEGY, 5)
    reconnect(proto)
    assert isinstance(proto.receive(signal(6), 101.0)[0], Duplicate)


def test_explicit_resume_after_unsubscribing_replays_what_was_had_before() -> None:
    """Subscribed, 1..10 received, unsubscribed; subscribing again from 5 with the replay
    before the ack delivers 6..10 again (a replay the user asked for), then goes on."""
    proto = connected()
    subscribe(proto)
    for seq in range(1, 11):
        proto.receive(signal(seq), 2.0)
    request_id, _ = proto.request("unsubscribe", SIGNAL, STRATEGY)
    proto.receive(ack(request_id, action="unsubscribe"), 3.0)
    assert proto.subscriptions == frozenset()
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY, 5)
    assert proto.take_restart() == ReplayRestarted(STRATEGY, 5, 5)
    got = [m.seq_id for seq in range(6, 12) for m in delivered(proto.receive(signal(seq), 4.0))]
    assert got == [6, 7, 8, 9, 10, 11]
    proto.receive(ack(request_id), 5.0)
    assert [m.seq_id for m in delivered(proto.receive(signal(12), 6.0))] == [12]


# Survivors of mutmut over the pure core (issue 30) --------------------------------------


def test_an_ack_without_request_id_naming_another_strategy_answers_nothing() -> None:
    """Without a request_id an ack answers the oldest request for its pair: one naming the
    right channel but another strategy is not that request's answer."""
    proto = connected()
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    assert proto.receive(ack(None, SIGNAL, OTHER), 1.0) == []
    (answered,) = proto.receive(ack(None, SIGNAL, STRATEGY), 2.0)
    assert answered.request_id == request_id


def test_a_masked_protocol_error_keeps_a_clean_cause_and_drops_one_quoting_the_key() -> None:
    """A malformed frame's error quoting the key is replaced by a masked copy: chained to
    the original's cause when that shows no key (the traceback keeps its story), to none
    when it does, and never to the original (its text would show in a traceback)."""
    proto = connected(secrets=(KEY,))
    for cause, kept in ((ValueError("line 1 column 5"), True), (ValueError(f"at {KEY}"), False)):
        error = ProtocolError(f"bad frame near {KEY}")
        error.__cause__ = cause
        (event,) = proto.receive_parsed(error, 1.0)
        assert isinstance(event, Malformed)
        shown = event.error
        assert KEY not in str(shown) and "***" in str(shown)
        assert (shown.__cause__ is cause) is kept, (cause, shown.__cause__)
        assert shown.__suppress_context__


def test_the_highest_seq_id_there_is_orders_like_any_other() -> None:
    """2**63 - 1 is a valid seq_id (docs/api-contract.md "Reconnecting"): delivered as a
    Signal and the new resume point; a repeat of it is a duplicate."""
    proto = connected()
    subscribe(proto)
    top = 2**63 - 1
    (message,) = delivered(proto.receive(signal(top), 2.0))
    assert isinstance(message, Signal) and message.seq_id == top
    assert proto.resume_point(STRATEGY) == top
    assert delivered(proto.receive(signal(top), 3.0)) == []
