"""The emulator's rules without a server: the handshake, the limits, request validation,
the timestamp window, replay and gaps, and the heartbeat deadline (docs/protocol.md), all fed
the time as a number. Also: the rules modules import no I/O."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import c2sync.emulator
from c2sync.emulator._gate import Admitted, Gate, Refusal, forced_refusal
from c2sync.emulator._rules import (
    Heartbeats,
    SignalLog,
    check_subscription,
    encode_frame,
    error_payload,
    error_request_id,
    read_frame,
    timestamp_problem,
)
from tests.test_public_api import imported_roots, relative_imports

KEY = "rules-key"
STRATEGY = 12345678
NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
NOW_UTC = NOW.timestamp()
RULES_MODULES = ["_dialect", "_gate", "_rules"]
# The pure core's forbidden set, plus asyncio, ssl and the emulator's I/O siblings.
FORBIDDEN = {"socket", "ssl", "asyncio", "threading", "_thread", "time", "websocket", "websockets"}


def stamp(offset: float = 0.0) -> str:
    return (NOW + timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def request(
    action: Any = "subscribe",
    channel: Any = "strategy.signal",
    strategy_id: Any = STRATEGY,
    **extra: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "msg_type": "subscription.request",
        "request_id": extra.pop("request_id", "sub-1"),
        "timestamp": extra.pop("timestamp", stamp()),
        "payload": {"action": action, "channel": channel, "strategy_id": strategy_id, **extra},
    }
    return message


def check(
    message: dict[str, Any], subscribed: set[tuple[str, int]] | None = None, **kw: Any
) -> Any:
    options: dict[str, Any] = {
        "now_utc": NOW_UTC,
        "window": 60.0,
        "strategies": {STRATEGY},
        "subscribed": subscribed if subscribed is not None else set(),
        "max_subscriptions": 100,
    }
    options.update(kw)
    return check_subscription(message, **options)


# The rules import no I/O ----------------------------------------------------------------


@pytest.mark.parametrize("module", RULES_MODULES)
def test_rules_modules_import_no_io(module: str) -> None:
    """The emulator's rules stay testable without sockets: no socket, asyncio, threading,
    time or websockets import, even lazily, and no I/O sibling."""
    source = (Path(c2sync.emulator.__file__).parent / f"{module}.py").read_text("utf-8")
    roots = imported_roots(source)
    assert not roots & FORBIDDEN, f"c2sync.emulator.{module} imports {roots & FORBIDDEN}"
    assert "__import__" not in roots and "importlib.import_module" not in roots
    assert relative_imports(source) <= {"_records", *RULES_MODULES}, relative_imports(source)


# The handshake (sections 1, 2, 6) --------------------------------------------------------


def test_gate_admits_a_bearer_key_and_refuses_401_otherwise() -> None:
    """A known key as ``Bearer`` passes; missing, unknown, non-Bearer or doubled keys get 401."""
    gate = Gate(frozenset({KEY}), max_per_key=10)
    assert gate.admit("/ws", [f"Bearer {KEY}"]) == Admitted(KEY)
    assert gate.admit("/ws?x=1", [f"bearer  {KEY} "]) == Admitted(KEY)
    for headers in ([], ["Bearer nope"], [f"Basic {KEY}"], [f"Bearer {KEY}", f"Bearer {KEY}"]):
        refusal = gate.admit("/ws", headers)
        assert isinstance(refusal, Refusal), headers
        assert (refusal.status, refusal.code, refusal.message) == (
            401,
            "UNAUTHORIZED",
            "Invalid API key",
        )
    assert gate.connections(KEY) == 2


def test_gate_refuses_other_paths_with_404_before_anything_else() -> None:
    """Only /ws is served; a forced refusal is not spent on a wrong path."""
    gate = Gate(frozenset({KEY}), max_per_key=10)
    gate.refuse_next(forced_refusal(503))
    refusal = gate.admit("/other", [f"Bearer {KEY}"])
    assert isinstance(refusal, Refusal) and refusal.status == 404
    assert isinstance(gate.admit("/ws", [f"Bearer {KEY}"]), Refusal)  # the 503, still queued
    assert gate.admit("/ws", [f"Bearer {KEY}"]) == Admitted(KEY)


def test_eleventh_connection_of_a_key_gets_429_until_one_is_released() -> None:
    """Ten connections per key (section 6): the next is 429 CONNECTION_LIMIT."""
    gate = Gate(frozenset({KEY, "other"}), max_per_key=10)
    for _ in range(10):
        assert gate.admit("/ws", [f"Bearer {KEY}"]) == Admitted(KEY)
    refusal = gate.admit("/ws", [f"Bearer {KEY}"])
    assert isinstance(refusal, Refusal)
    assert (refusal.status, refusal.code) == (429, "CONNECTION_LIMIT")
    assert "10 per API key" in refusal.message
    assert gate.admit("/ws", ["Bearer other"]) == Admitted("other")  # per key
    gate.release(KEY)
    assert gate.admit("/ws", [f"Bearer {KEY}"]) == Admitted(KEY)


@pytest.mark.parametrize(
    ("status", "code", "header"),
    [
        (401, "UNAUTHORIZED", "Invalid API key"),
        (429, "RATE_LIMITED", "Rate limit exceeded"),
        (503, "SERVICE_UNAVAILABLE", "Server connection limit reached"),
        (418, "UNKNOWN", "Refused"),
    ],
)
def test_forced_refusals_answer_in_order_with_section_2_bodies(
    status: int, code: str, header: str
) -> None:
    """refuse_next() answers the next requests, then the usual rules apply again."""
    gate = Gate(frozenset({KEY}), max_per_key=10)
    gate.refuse_next(forced_refusal(status), count=2)
    for _ in range(2):
        refusal = gate.admit("/ws", [f"Bearer {KEY}"])
        assert isinstance(refusal, Refusal) and refusal.status == status
        headers = dict(refusal.response_headers("Mon, 01 Jan 2024 12:00:00 GMT"))
        assert headers["X-WS-Error"] == header
        assert json.loads(refusal.content()) == {"code": code, "message": header}
        assert headers["Content-Length"] == str(len(refusal.content()))
    assert gate.admit("/ws", [f"Bearer {KEY}"]) == Admitted(KEY)
    assert gate.connections(KEY) == 1  # refused requests never counted


def test_refusal_headers_replace_the_usual_ones_case_insensitively() -> None:
    """A test's headers and body replace the defaults: Retry-After added, X-WS-Error replaced."""
    refusal = forced_refusal(429, {"Retry-After": "2", "x-ws-error": "slow down"}, b"busy")
    pairs = refusal.response_headers("Mon, 01 Jan 2024 12:00:00 GMT")
    names = [name.lower() for name, _ in pairs]
    assert names.count("x-ws-error") == 1 and ("x-ws-error", "slow down") in pairs
    assert ("Retry-After", "2") in pairs and ("Content-Length", "4") in pairs
    assert pairs[0] == ("Date", "Mon, 01 Jan 2024 12:00:00 GMT")
    assert refusal.content() == b"busy" and refusal.phrase == "Too Many Requests"
    assert forced_refusal(599).phrase == "Error"


# Frames from the client (sections 3, 5, 8) -----------------------------------------------


def test_read_frame_sorts_frames_into_acts_and_errors() -> None:
    """Acks and requests are acted on; binary, bad JSON, no msg_type or an unknown one is an
    INVALID_PARAMETER error, echoing request_id only for a well-formed unknown type."""
    ack = read_frame('{"msg_type":"heartbeat.ack","timestamp":"x"}')
    assert ack.msg_type == "heartbeat.ack" and ack.problem is None
    sub = read_frame('{"msg_type":"subscription.request"}')
    assert sub.msg_type == "subscription.request" and sub.problem is None
    for data in (b"{}", "not json", "[1]", '{"msg_type":5}', '{"request_id":"r"}', "[" * 100_000):
        incoming = read_frame(data)
        assert incoming.msg_type is None and incoming.request_id is None, data[:10]
        assert incoming.problem is not None and incoming.problem["code"] == "INVALID_PARAMETER"
    unknown = read_frame('{"msg_type":"' + "x" * 100 + '","request_id":"r9"}')
    assert unknown.problem is not None and unknown.problem["field"] == "MsgType"
    assert unknown.request_id == "r9" and len(unknown.problem["message"]) < 100


def test_timestamp_window_is_one_minute_either_way() -> None:
    """Section 3: within 60 s of UTC passes, beyond is refused; missing or unreadable too."""
    assert timestamp_problem(stamp(-59.9), NOW_UTC, 60.0) is None
    assert timestamp_problem(stamp(59.9), NOW_UTC, 60.0) is None
    assert timestamp_problem("2024-01-01T12:00:30+00:00", NOW_UTC, 60.0) is None
    for offset in (-120.0, 61.0):
        problem = timestamp_problem(stamp(offset), NOW_UTC, 60.0)
        assert problem is not None and problem["field"] == "Timestamp"
        assert problem["code"] == "INVALID_PARAMETER"
    for value in (None, 17, "yesterday", "9999-12-31T23:59:59-23:59"):
        problem = timestamp_problem(value, NOW_UTC, 60.0)
        assert problem is not None and problem["field"] == "Timestamp", value


def test_errors_put_one_problem_flat_and_several_in_a_list() -> None:
    """Section 8's error payload shapes, and the request_id echo switch."""
    one = {"code": "FORBIDDEN", "message": "m"}
    assert error_payload([one]) == one
    assert error_payload([one, one]) == {"errors": [one, one]}
    assert error_request_id("r1", echo=True) == "r1"
    assert error_request_id("r1", echo=False) is None
    assert error_request_id(5, echo=True) is None


def test_encode_frame_is_the_server_envelope() -> None:
    """Section 3: id, timestamp and v always; seq_id, request_id, payload only when given."""
    bare = json.loads(encode_frame("heartbeat", ident="msg_1", timestamp="t"))
    assert bare == {"msg_type": "heartbeat", "id": "msg_1", "timestamp": "t", "v": 4}
    full = json.loads(
        encode_frame("strategy.signal", ident="i", timestamp="t", seq_id=3, payload={"a": 1})
    )
    assert full["seq_id"] == 3 and full["payload"] == {"a": 1} and "request_id" not in full


# Subscriptions (section 6) ---------------------------------------------------------------


def test_valid_subscription_is_acked_applied_and_idempotent() -> None:
    """A good request is acked with its fields echoed; subscribing twice and unsubscribing
    from a pair not held are both acked."""
    subscribed: set[tuple[str, int]] = set()
    verdict = check(request(), subscribed)
    assert verdict.problems == () and verdict.error_code is None
    assert verdict.ack_payload() == {
        "action": "subscribe",
        "channel": "strategy.signal",
        "strategy_id": STRATEGY,
    }
    verdict.apply(subscribed)
    verdict.apply(subscribed)
    assert subscribed == {("strategy.signal", STRATEGY)}
    check(request("unsubscribe"), subscribed).apply(subscribed)
    assert subscribed == set()
    again = check(request("unsubscribe"), subscribed)
    assert again.problems == ()
    record = again.record(7.5)
    assert (record.at, record.request_id, record.action, record.error) == (
        7.5,
        "sub-1",
        "unsubscribe",
        None,
    )


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (request(timestamp=stamp(120)), "Timestamp"),
        (request(request_id="r" * 51), "RequestId"),
        (request(request_id=""), "RequestId"),
        (request(request_id=7), "RequestId"),
        (request("subscribe-all"), "Action"),
        (request(channel="strategy.orders"), "Channel"),
        (request(strategy_id=0), "StrategyId"),
        (request(strategy_id="12345678"), "StrategyId"),
        (request(resume_from=-1), "ResumeFrom"),
        (request(resume_from="1e3"), "ResumeFrom"),
        (request(channel="strategy.positions", resume_from=5), "ResumeFrom"),
        ({"msg_type": "subscription.request", "timestamp": stamp(), "payload": []}, "Payload"),
    ],
)
def test_bad_requests_are_invalid_parameter_and_change_nothing(
    message: dict[str, Any], field: str
) -> None:
    """Each malformed field is INVALID_PARAMETER naming it; nothing is subscribed."""
    subscribed: set[tuple[str, int]] = set()
    verdict = check(message, subscribed)
    assert verdict.error_code == "INVALID_PARAMETER"
    assert [p["field"] for p in verdict.problems] == [field]
    verdict.apply(subscribed)
    assert subscribed == set() and verdict.replay_after == 0


def test_request_id_of_exactly_50_characters_is_accepted() -> None:
    """Section 3: request_id is at most 50 characters, 50 included; absent is fine too."""
    assert check(request(request_id="r" * 50)).problems == ()
    assert check(request(request_id=None)).problems == ()


def test_several_problems_are_all_reported() -> None:
    """Several bad fields give one problem each, in a fixed order."""
    verdict = check(request("nope", "nope", -5, timestamp="bad"))
    fields = [p["field"] for p in verdict.problems]
    assert fields == ["Timestamp", "Action", "Channel", "StrategyId"]


def test_unknown_strategy_is_forbidden_with_the_docs_message() -> None:
    """Section 6: FORBIDDEN, field StrategyId, 'Not authorized to subscribe to Strategy';
    unsubscribing from it is still acked."""
    verdict = check(request(strategy_id=55555555))
    assert verdict.problems == (
        {
            "code": "FORBIDDEN",
            "field": "StrategyId",
            "message": "Not authorized to subscribe to Strategy",
        },
    )
    assert check(request("unsubscribe", strategy_id=55555555)).problems == ()


def test_hundred_and_first_subscription_is_forbidden_but_a_held_pair_is_not() -> None:
    """100 pairs per connection (section 6): a new 101st is refused, re-subscribing one held
    is acked."""
    strategies = set(range(1, 101))
    subscribed = {("strategy.signal", s) for s in strategies}
    refused = check(request(strategy_id=STRATEGY), subscribed, strategies=strategies | {STRATEGY})
    assert refused.error_code == "FORBIDDEN"
    assert "100 per connection" in refused.problems[0]["message"]
    held = check(request(strategy_id=1), subscribed, strategies=strategies)
    assert held.problems == ()
    assert check(request(strategy_id=STRATEGY), set(list(subscribed)[:99])).problems == ()


def test_resume_from_as_number_or_string_asks_for_a_replay() -> None:
    """resume_from N > 0 on a subscribe replays after N; 0 or absent does not; the ack
    echoes it as a number."""
    numeric = check(request(resume_from=41))
    assert numeric.replay_after == 41 and numeric.ack_payload()["resume_from"] == 41
    text = check(request(resume_from="41"))
    assert text.replay_after == 41 and text.ack_payload()["resume_from"] == 41
    assert text.record(0.0).resume_from == "41"  # the record keeps what was sent
    assert check(request(resume_from=0)).replay_after == 0
    assert check(request()).replay_after == 0
    assert check(request("unsubscribe", resume_from=41)).replay_after == 0


# Replay and gaps (section 7) -------------------------------------------------------------


def filled(count: int, replay_size: int = 5000, max_replay: int = 1000) -> SignalLog:
    log = SignalLog(replay_size, max_replay)
    for seq in range(1, count + 1):
        assert log.next_seq(STRATEGY) == seq
        log.append(STRATEGY, seq, f"frame-{seq}")
    return log


def test_seq_ids_start_at_one_per_strategy_and_must_come_in_order() -> None:
    """Each strategy counts from 1; a seq_id out of order is refused."""
    log = filled(3)
    assert log.last_seq(STRATEGY) == 3 and log.last_seq(1) == 0 and log.next_seq(1) == 1
    with pytest.raises(ValueError):
        log.append(STRATEGY, 5, "frame-5")


def test_replay_sends_every_signal_after_resume_from_without_gap() -> None:
    """Missed signals come back in order, and nothing when none were missed."""
    log = filled(10)
    replay = log.replay(STRATEGY, 7)
    assert replay.frames == ("frame-8", "frame-9", "frame-10") and replay.gap is None
    assert log.replay(STRATEGY, 10).frames == () and log.replay(STRATEGY, 99).gap is None


def test_replay_stops_at_1000_then_gap() -> None:
    """More than 1000 missed: the first 1000, then section 7's gap payload."""
    log = filled(1500)
    replay = log.replay(STRATEGY, 400)
    assert len(replay.frames) == 1000
    assert replay.frames[0] == "frame-401" and replay.frames[-1] == "frame-1400"
    assert replay.gap == {
        "strategy_id": None,
        "channel": f"strategy.signal:{STRATEGY}",
        "from": "400",
        "message": "Replay limit of 1000 messages exceeded",
    }
    assert filled(1400).replay(STRATEGY, 400).gap is None  # exactly 1000 missed: no gap


def test_replay_beyond_the_kept_signals_sends_what_is_kept_then_gap() -> None:
    """Only the last replay_size signals are kept: older missed ones are reported as a gap."""
    log = filled(30, replay_size=10)
    replay = log.replay(STRATEGY, 5)
    assert replay.frames == tuple(f"frame-{seq}" for seq in range(21, 31))
    assert replay.gap is not None and replay.gap["from"] == "5"
    assert replay.gap["message"] == "Replay buffer no longer holds the missed messages"
    assert log.replay(STRATEGY, 20).gap is None


# Heartbeats (section 5) ------------------------------------------------------------------


def test_ack_deadline_is_interval_plus_grace_after_the_last_ack() -> None:
    """Armed at the upgrade, re-armed by each ack: missed only once timeout has passed."""
    beats = Heartbeats(timeout=40.0)
    assert beats.arm(100.0, enforced=True) == 140.0
    assert not beats.missed(139.999) and beats.missed(140.0)
    beats.sent("msg_a", 130.0)
    beats.acked(131.0)
    assert beats.arm(131.0, enforced=True) == 171.0
    assert not beats.missed(170.0) and beats.missed(171.5)


def test_ack_deadline_is_suspended_while_not_enforced() -> None:
    """Heartbeats off or a stalled connection: no deadline, never missed; re-arming starts
    afresh from the time given."""
    beats = Heartbeats(timeout=40.0)
    beats.arm(0.0, enforced=True)
    assert beats.arm(10.0, enforced=False) is None and beats.due is None
    assert not beats.missed(1e9)
    assert beats.arm(500.0, enforced=True) == 540.0


def test_acks_match_the_oldest_unacknowledged_heartbeat() -> None:
    """Two beats, one ack: the first is acknowledged; a spare ack matches nothing."""
    beats = Heartbeats(timeout=40.0)
    beats.sent("msg_a", 1.0)
    beats.sent("msg_b", 2.0)
    beats.acked(2.5)
    assert [(r.id, r.acked_at) for r in beats.records] == [("msg_a", 2.5), ("msg_b", None)]
    beats.acked(3.0)
    beats.acked(4.0)
    assert [r.acked_at for r in beats.records] == [2.5, 3.0]
