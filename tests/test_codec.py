"""The JSON codec: every server message read into the right class, client frames built
exactly as docs/protocol.md shows them, and bad input always a ``ProtocolError``."""

from __future__ import annotations

import copy
import json
import pickle
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import c2sync
from c2sync import (
    ErrorDetail,
    ErrorMessage,
    Gap,
    Message,
    Positions,
    ProtocolError,
    Signal,
    SubscriptionAck,
    encode_heartbeat_ack,
    encode_subscription_request,
    parse_message,
)
from c2sync.codec import (
    format_timestamp,
    parse_timestamp,
    validate_channel,
    validate_strategy_id,
)
from c2sync.exceptions import C2Error

UTC = timezone.utc
STRATEGY = 12345678
NOON = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
# The documented examples' exact form (docs/api-contract.md "Servers that read the docs
# differently"): whole seconds and Z, never a third form.
CLIENT_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def frame(msg_type: str, **fields: Any) -> str:
    """A server frame: the common envelope plus ``fields``."""
    obj: dict[str, Any] = {
        "msg_type": msg_type,
        "id": "msg_0a1b2c",
        "timestamp": "2024-01-01T12:00:00Z",
        "v": 4,
    }
    obj.update(fields)
    return json.dumps(obj)


def parse_obj(obj: Any) -> Message:
    return parse_message(json.dumps(obj))


# Server messages -----------------------------------------------------------------------


def test_connected_and_heartbeat_are_plain_messages() -> None:
    """connection.connected and heartbeat parse as plain Message with the envelope fields."""
    for msg_type in ("connection.connected", "heartbeat"):
        msg = parse_message(frame(msg_type, seq_id=None))
        assert type(msg) is Message
        assert msg.msg_type == msg_type
        assert msg.id == "msg_0a1b2c"
        assert msg.seq_id is None
        assert msg.v == 4
        assert msg.timestamp == NOON
        assert msg.request_id is None
        assert dict(msg.payload) == {}


def test_signal_fields_and_strategy_id_from_payload() -> None:
    """A strategy.signal becomes a Signal with seq_id and the payload's strategy_id."""
    payload = {"strategy_id": STRATEGY, "SignalId": 991, "C2Symbol": "@ESH4", "Side": "Buy"}
    msg = parse_message(frame("strategy.signal", seq_id=42, payload=payload))
    assert type(msg) is Signal
    assert msg.seq_id == 42
    assert msg.strategy_id == STRATEGY
    assert msg.id == "msg_0a1b2c"
    assert msg.timestamp == NOON
    assert msg.v == 4
    assert msg.payload == payload


def test_signal_strategy_id_from_rest_style_strategyid() -> None:
    """A signal whose payload says StrategyId (REST style) still names its strategy."""
    msg = parse_message(frame("strategy.signal", seq_id=1, payload={"StrategyId": 777}))
    assert isinstance(msg, Signal)
    assert msg.strategy_id == 777


def test_signal_strategy_id_prefers_strategy_id_and_skips_null() -> None:
    """strategy_id wins over StrategyId; a null strategy_id falls back to StrategyId."""
    both = parse_obj(
        {"msg_type": "strategy.signal", "seq_id": 1, "payload": {"strategy_id": 5, "StrategyId": 6}}
    )
    null = parse_obj(
        {
            "msg_type": "strategy.signal",
            "seq_id": 1,
            "payload": {"strategy_id": None, "StrategyId": 6},
        }
    )
    assert isinstance(both, Signal) and both.strategy_id == 5
    assert isinstance(null, Signal) and null.strategy_id == 6


def test_signal_strategy_id_as_digit_string() -> None:
    """A strategy id sent as a decimal string is read as the int."""
    msg = parse_obj({"msg_type": "strategy.signal", "seq_id": 1, "payload": {"StrategyId": "42"}})
    assert isinstance(msg, Signal) and msg.strategy_id == 42


@pytest.mark.parametrize("value", [None, 0, -3, "abc", "-5", 1.5, True, [1], {"a": 1}, ""])
def test_signal_unusable_strategy_id_is_none(value: Any) -> None:
    """A signal whose payload strategy id is unusable still parses, with strategy_id None."""
    msg = parse_obj({"msg_type": "strategy.signal", "seq_id": 3, "payload": {"strategy_id": value}})
    assert isinstance(msg, Signal)
    assert msg.strategy_id is None
    assert msg.seq_id == 3


def test_signal_without_payload_has_no_strategy() -> None:
    """A signal with no payload at all parses, strategy_id None and an empty payload."""
    msg = parse_obj({"msg_type": "strategy.signal", "seq_id": 9})
    assert isinstance(msg, Signal)
    assert msg.strategy_id is None
    assert dict(msg.payload) == {}


def test_positions_fields() -> None:
    """A strategy.positions becomes Positions with the payload's strategy id (seq optional)."""
    payload = {"StrategyId": STRATEGY, "Positions": [{"C2Symbol": "AAPL", "Quantity": 10}]}
    msg = parse_message(frame("strategy.positions", payload=payload))
    assert type(msg) is Positions
    assert msg.strategy_id == STRATEGY
    assert msg.seq_id is None
    assert msg.payload == payload


def test_gap_strategy_from_channel_when_null() -> None:
    """The documented gap (strategy_id null, from as string) names strategy and from_seq."""
    payload = {
        "strategy_id": None,
        "channel": "strategy.signal:12345678",
        "from": "98765",
        "message": "Replay limit of 1000 messages exceeded",
    }
    msg = parse_message(frame("gap", payload=payload))
    assert type(msg) is Gap
    assert msg.strategy_id == 12345678
    assert msg.channel == "strategy.signal:12345678"
    assert msg.from_seq == 98765
    assert msg.message == "Replay limit of 1000 messages exceeded"


def test_gap_explicit_strategy_id_and_int_from() -> None:
    """A gap with a non-null strategy_id and an integer from is read as given."""
    msg = parse_obj(
        {
            "msg_type": "gap",
            "payload": {"strategy_id": 55, "channel": "strategy.signal:55", "from": 7},
        }
    )
    assert isinstance(msg, Gap)
    assert (msg.strategy_id, msg.from_seq, msg.message) == (55, 7, "")


def test_gap_from_zero() -> None:
    """A gap from 0 (string or int) keeps from_seq 0."""
    for value in ("0", 0):
        msg = parse_obj(
            {"msg_type": "gap", "payload": {"channel": "strategy.signal:5", "from": value}}
        )
        assert isinstance(msg, Gap) and msg.from_seq == 0


@pytest.mark.parametrize(
    "payload",
    [
        {"strategy_id": None, "channel": "strategy.signal", "from": "5"},
        {"channel": "strategy.signal:abc", "from": "5"},
        {"from": "5"},
        {"channel": "strategy.signal:5", "from": "five"},
        {"channel": "strategy.signal:5"},
        {"channel": "strategy.signal:5", "from": True},
    ],
)
def test_gap_without_strategy_or_from_is_protocol_error(payload: dict[str, Any]) -> None:
    """A gap naming no strategy or no integer 'from' is a ProtocolError, not a bogus Gap."""
    with pytest.raises(ProtocolError):
        parse_obj({"msg_type": "gap", "payload": payload})


def test_subscription_ack_fields() -> None:
    """A subscription.ack exposes request_id, action, channel and strategy_id."""
    msg = parse_message(
        frame(
            "subscription.ack",
            request_id="sub-1",
            seq_id=None,
            payload={"action": "subscribe", "channel": "strategy.signal", "strategy_id": STRATEGY},
        )
    )
    assert type(msg) is SubscriptionAck
    assert msg.request_id == "sub-1"
    assert msg.action == "subscribe"
    assert msg.channel == "strategy.signal"
    assert msg.strategy_id == STRATEGY


def test_subscription_ack_without_payload() -> None:
    """An ack without a payload still parses; its pair fields are None."""
    msg = parse_obj({"msg_type": "subscription.ack"})
    assert isinstance(msg, SubscriptionAck)
    assert (msg.action, msg.channel, msg.strategy_id, msg.request_id) == (None, None, None, None)


def test_error_single() -> None:
    """The documented error gives code, field, message and a one-item errors tuple."""
    payload = {
        "code": "FORBIDDEN",
        "field": "StrategyId",
        "message": "Not authorized to subscribe to Strategy",
    }
    msg = parse_message(frame("error", payload=payload))
    assert type(msg) is ErrorMessage
    assert msg.code == "FORBIDDEN"
    assert msg.field == "StrategyId"
    assert msg.message == "Not authorized to subscribe to Strategy"
    assert msg.errors == (
        ErrorDetail("FORBIDDEN", "StrategyId", "Not authorized to subscribe to Strategy"),
    )


def test_error_without_field() -> None:
    """An error without a field has field None."""
    msg = parse_obj({"msg_type": "error", "payload": {"code": "UNKNOWN", "message": "oops"}})
    assert isinstance(msg, ErrorMessage)
    assert (msg.code, msg.field, msg.message) == ("UNKNOWN", None, "oops")


def test_error_list_first_item_wins() -> None:
    """With an errors list, code/field/message come from the first and errors keeps all."""
    payload = {
        "errors": [
            {"code": "INVALID_PARAMETER", "field": "timestamp", "message": "too old"},
            {"code": "MANDATORY_PARAM_EMPTY_OR_MALFORMED", "field": "channel", "message": "x"},
        ]
    }
    msg = parse_message(frame("error", payload=payload))
    assert isinstance(msg, ErrorMessage)
    assert (msg.code, msg.field, msg.message) == ("INVALID_PARAMETER", "timestamp", "too old")
    assert msg.errors == (
        ErrorDetail("INVALID_PARAMETER", "timestamp", "too old"),
        ErrorDetail("MANDATORY_PARAM_EMPTY_OR_MALFORMED", "channel", "x"),
    )


def test_error_new_code_kept_as_string() -> None:
    """An error code c2sync has never seen is kept verbatim, not rejected."""
    msg = parse_obj({"msg_type": "error", "payload": {"code": "BRAND_NEW_CODE", "message": "m"}})
    assert isinstance(msg, ErrorMessage) and msg.code == "BRAND_NEW_CODE"


def test_unknown_msg_type_passes_through_with_raw() -> None:
    """An unknown msg_type comes back as a plain Message with its raw object and payload."""
    obj = {
        "msg_type": "strategy.commentary",
        "id": "msg_1",
        "seq_id": 5,
        "timestamp": "2024-01-01T12:00:00Z",
        "v": 4,
        "payload": {"text": "hello", "nested": {"a": [1, 2]}},
        "extra": True,
    }
    msg = parse_obj(obj)
    assert type(msg) is Message
    assert msg.msg_type == "strategy.commentary"
    assert msg.seq_id == 5
    assert msg.raw == obj
    assert msg.payload == obj["payload"]


def test_unknown_fields_are_kept_in_raw_and_payload() -> None:
    """Fields the server adds later are never dropped: they stay in raw and in payload."""
    obj = {
        "msg_type": "strategy.signal",
        "seq_id": 1,
        "v": 4,
        "new_top_level": {"x": 1},
        "payload": {"strategy_id": 5, "NewField": [1, "two"]},
    }
    msg = parse_obj(obj)
    assert msg.raw["new_top_level"] == {"x": 1}
    assert msg.payload["NewField"] == [1, "two"]
    assert msg.raw == obj


def test_wrong_typed_optional_envelope_fields_become_none() -> None:
    """Non-string id/request_id and non-int v are tolerated as None; raw keeps the originals."""
    msg = parse_obj({"msg_type": "heartbeat", "id": 5, "request_id": [1], "v": "4"})
    assert (msg.id, msg.request_id, msg.v) == (None, None, None)
    assert msg.raw["v"] == "4"


def test_unreadable_timestamp_keeps_the_message() -> None:
    """A message with an unreadable timestamp is kept, with timestamp None."""
    for value in ("yesterday", 12, "2024-13-01T00:00:00Z", "2024-01-01T00:00:00+99:00"):
        msg = parse_obj({"msg_type": "heartbeat", "timestamp": value})
        assert msg.timestamp is None
        assert msg.raw["timestamp"] == value


# Read-only payloads --------------------------------------------------------------------


def signal_message() -> Message:
    return parse_message(
        frame("strategy.signal", seq_id=7, payload={"strategy_id": 5, "Side": "Buy", "L": [1]})
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.__setitem__("Side", "Sell"),
        lambda m: m.__delitem__("Side"),
        lambda m: m.update({"Side": "Sell"}),
        lambda m: m.pop("Side"),
        lambda m: m.popitem(),
        lambda m: m.clear(),
        lambda m: m.setdefault("New", 1),
    ],
    ids=["setitem", "delitem", "update", "pop", "popitem", "clear", "setdefault"],
)
def test_payload_and_raw_are_read_only(mutate: Any) -> None:
    """Changing a message's payload or raw raises TypeError and leaves it unchanged."""
    msg = signal_message()
    for mapping in (msg.payload, msg.raw):
        before = dict(mapping)
        with pytest.raises(TypeError):
            mutate(mapping)
        assert dict(mapping) == before


def test_payload_in_place_or_is_refused() -> None:
    """payload |= {...} raises TypeError rather than changing the message."""
    msg = signal_message()
    payload = msg.payload
    with pytest.raises(TypeError):
        payload |= {"Side": "Sell"}  # type: ignore[operator]
    assert msg.payload["Side"] == "Buy"


def test_message_is_frozen() -> None:
    """Message attributes cannot be reassigned."""
    msg = signal_message()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        msg.seq_id = 8  # type: ignore[misc]


def test_payload_and_raw_serialise_with_json() -> None:
    """json.dumps works on raw and payload and gives back exactly what the server sent."""
    obj = {
        "msg_type": "strategy.signal",
        "seq_id": 7,
        "payload": {"strategy_id": 5, "Limit": 4100.25, "Tags": ["a"], "Meta": {"k": None}},
    }
    msg = parse_obj(obj)
    assert json.loads(json.dumps(msg.raw)) == obj
    assert json.loads(json.dumps(msg.payload)) == obj["payload"]
    assert msg.raw["payload"] == msg.payload


def test_message_copies_and_pickles() -> None:
    """Messages survive copy, deepcopy and pickle with payloads still read-only."""
    msg = signal_message()
    for other in (copy.copy(msg), copy.deepcopy(msg), pickle.loads(pickle.dumps(msg))):
        assert other == msg
        assert other.raw == msg.raw
        with pytest.raises(TypeError):
            other.payload["Side"] = "Sell"  # type: ignore[index]


# Timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01T12:00:00Z", NOON),
        ("2024-01-01T12:00:00z", NOON),
        ("2024-01-01T12:00:00+00:00", NOON),
        ("2024-01-01T12:00:00-00:00", NOON),
        ("2024-01-01T14:00:00+02:00", NOON),
        ("2024-01-01T06:30:00-05:30", NOON),
        ("2024-01-01T14:00:00+0200", NOON),
        ("2024-01-01T12:00:00", NOON),
        ("2024-01-01T12:00:00.5Z", NOON.replace(microsecond=500000)),
        ("2024-01-01T12:00:00.123Z", NOON.replace(microsecond=123000)),
        ("2024-01-01T12:00:00.123456+00:00", NOON.replace(microsecond=123456)),
        ("2024-01-01T12:00:00.123456789Z", NOON.replace(microsecond=123456)),
        ("2024-01-01T12:00:00.999999999+01:00", NOON.replace(hour=11, microsecond=999999)),
        ("2024-01-01 12:00:00Z", NOON),
        ("2023-12-31T23:00:00-13:00", NOON),
    ],
)
def test_parse_timestamp_forms(text: str, expected: datetime) -> None:
    """Every ISO-8601 form the server may use reads as the right aware UTC datetime."""
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_parse_timestamp_naive_is_utc_aware() -> None:
    """A timestamp with no offset is taken as UTC, and the result is aware."""
    parsed = parse_timestamp("2024-06-01T08:09:10")
    assert parsed.tzinfo is not None
    assert parsed == datetime(2024, 6, 1, 8, 9, 10, tzinfo=UTC)


def test_message_timestamp_with_offset_is_converted_to_utc() -> None:
    """A message stamped with another offset exposes the same instant, in UTC."""
    msg = parse_obj({"msg_type": "heartbeat", "timestamp": "2024-01-01T13:00:00+01:00"})
    assert msg.timestamp == NOON
    assert msg.timestamp is not None and msg.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2024-01-01",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-01-01T25:00:00Z",
        "2024-01-01T12:00:00+25:00",
        "2024-01-01T12:00:00Zjunk",
        None,
        12,
    ],
)
def test_parse_timestamp_rejects_garbage_with_value_error(text: Any) -> None:
    """parse_timestamp raises ValueError (only) for text that is not such a timestamp."""
    with pytest.raises(ValueError):
        parse_timestamp(text)


def test_format_timestamp_shape() -> None:
    """format_timestamp gives YYYY-MM-DDTHH:MM:SSZ (the docs' form), fractions truncated."""
    when = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert format_timestamp(when) == "2024-01-02T03:04:05Z"
    assert format_timestamp(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05Z"


def test_format_timestamp_converts_offsets_and_naive() -> None:
    """Aware times in other zones are converted to UTC; naive ones are taken as UTC."""
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2024, 1, 1, 14, 0, tzinfo=plus_two)) == (
        "2024-01-01T12:00:00Z"
    )
    assert format_timestamp(datetime(2024, 1, 1, 12, 0)) == "2024-01-01T12:00:00Z"


def test_format_timestamp_default_is_now_utc() -> None:
    """Without an argument the timestamp is the current UTC time (inside the 1-minute window)."""
    before = datetime.now(UTC)
    text = format_timestamp()
    after = datetime.now(UTC)
    assert CLIENT_TIMESTAMP.fullmatch(text)
    stamped = parse_timestamp(text)
    assert before.replace(microsecond=0) <= stamped <= after


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)))
@FUZZ
def test_format_then_parse_round_trips_to_the_second(when: datetime) -> None:
    """What the client sends reads back as the same instant (to the second)."""
    aware = when.replace(tzinfo=UTC)
    text = format_timestamp(aware)
    assert CLIENT_TIMESTAMP.fullmatch(text)
    assert parse_timestamp(text) == aware.replace(microsecond=0)


# Client frames -------------------------------------------------------------------------


def test_encode_heartbeat_ack_exact_shape() -> None:
    """The heartbeat ack is exactly {"msg_type":"heartbeat.ack","timestamp":...}, nothing else."""
    text = encode_heartbeat_ack(NOON)
    assert json.loads(text) == {
        "msg_type": "heartbeat.ack",
        "timestamp": "2024-01-01T12:00:00Z",
    }
    assert list(json.loads(text)) == ["msg_type", "timestamp"]


def test_encode_heartbeat_ack_default_now() -> None:
    """Without a time the ack is stamped now, in the client timestamp format."""
    obj = json.loads(encode_heartbeat_ack())
    assert set(obj) == {"msg_type", "timestamp"}
    assert CLIENT_TIMESTAMP.fullmatch(obj["timestamp"])
    assert abs(parse_timestamp(obj["timestamp"]) - datetime.now(UTC)) < timedelta(seconds=5)


def test_encode_subscription_request_shape() -> None:
    """A subscribe frame carries msg_type, request_id, timestamp, payload and no id/seq_id/v."""
    text = encode_subscription_request(
        "subscribe", "strategy.signal", STRATEGY, request_id="sub-1", now=NOON
    )
    assert json.loads(text) == {
        "msg_type": "subscription.request",
        "request_id": "sub-1",
        "timestamp": "2024-01-01T12:00:00Z",
        "payload": {"action": "subscribe", "channel": "strategy.signal", "strategy_id": STRATEGY},
    }


def test_encode_subscription_request_resume_from_number() -> None:
    """resume_from > 0 is sent as a JSON number in the payload."""
    obj = json.loads(
        encode_subscription_request(
            "subscribe", "strategy.signal", STRATEGY, request_id="r", resume_from=98765, now=NOON
        )
    )
    assert obj["payload"]["resume_from"] == 98765
    assert type(obj["payload"]["resume_from"]) is int


@pytest.mark.parametrize("resume_from", [None, 0])
def test_encode_subscription_request_no_resume_point(resume_from: int | None) -> None:
    """resume_from None or 0 sends no resume_from at all."""
    obj = json.loads(
        encode_subscription_request(
            "subscribe", "strategy.signal", 1, request_id="r", resume_from=resume_from, now=NOON
        )
    )
    assert "resume_from" not in obj["payload"]


def test_encode_unsubscribe_and_positions() -> None:
    """Unsubscribe and positions frames are built with the same shape."""
    for action in ("subscribe", "unsubscribe"):
        obj = json.loads(
            encode_subscription_request(action, "strategy.positions", 9, request_id="x", now=NOON)
        )
        assert obj["payload"] == {
            "action": action,
            "channel": "strategy.positions",
            "strategy_id": 9,
        }
        assert set(obj) == {"msg_type", "request_id", "timestamp", "payload"}


@pytest.mark.parametrize("resume_from", [0, 1, 500])
def test_encode_resume_from_never_on_positions(resume_from: int) -> None:
    """resume_from on a positions subscription is a ValueError."""
    with pytest.raises(ValueError):
        encode_subscription_request(
            "subscribe", "strategy.positions", 1, request_id="r", resume_from=resume_from
        )


def test_encode_resume_from_never_on_unsubscribe() -> None:
    """resume_from on an unsubscribe is a ValueError."""
    with pytest.raises(ValueError):
        encode_subscription_request(
            "unsubscribe", "strategy.signal", 1, request_id="r", resume_from=3
        )


@pytest.mark.parametrize("resume_from", [-1, True, "5", 5.0])
def test_encode_bad_resume_from(resume_from: Any) -> None:
    """A negative or non-int resume_from is a ValueError."""
    with pytest.raises(ValueError):
        encode_subscription_request(
            "subscribe", "strategy.signal", 1, request_id="r", resume_from=resume_from
        )


@pytest.mark.parametrize("length", [1, 50])
def test_encode_request_id_length_bounds_accepted(length: int) -> None:
    """request_ids of 1 and 50 characters are accepted and sent verbatim."""
    request_id = "r" * length
    obj = json.loads(
        encode_subscription_request("subscribe", "strategy.signal", 1, request_id=request_id)
    )
    assert obj["request_id"] == request_id


@pytest.mark.parametrize("request_id", ["", "r" * 51, None, 5])
def test_encode_bad_request_id(request_id: Any) -> None:
    """An empty, over-50-character or non-string request_id is a ValueError."""
    with pytest.raises(ValueError):
        encode_subscription_request("subscribe", "strategy.signal", 1, request_id=request_id)


@pytest.mark.parametrize("strategy_id", [0, -1, True, False, "12", 12.0, None])
def test_encode_bad_strategy_id(strategy_id: Any) -> None:
    """Anything but a positive int strategy id (bool and "12" included) is a ValueError."""
    with pytest.raises(ValueError):
        encode_subscription_request("subscribe", "strategy.signal", strategy_id, request_id="r")


@pytest.mark.parametrize(
    ("action", "channel"),
    [("subscribe", "strategy.signals"), ("subscribe", "gap"), ("resubscribe", "strategy.signal")],
)
def test_encode_bad_action_or_channel(action: str, channel: str) -> None:
    """An unknown action or channel is a ValueError."""
    with pytest.raises(ValueError):
        encode_subscription_request(action, channel, 1, request_id="r")


def test_validators() -> None:
    """validate_strategy_id/validate_channel accept good values and reject others."""
    assert validate_strategy_id(1) == 1
    assert validate_channel("strategy.positions") == "strategy.positions"
    for bad in (True, "1", 0, 2.0):
        with pytest.raises(ValueError):
            validate_strategy_id(bad)
    for bad_channel in ("", None, ["strategy.signal"], "STRATEGY.SIGNAL"):
        with pytest.raises(ValueError):
            validate_channel(bad_channel)


# Bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "{",
        "[1, 2]",
        "42",
        '"heartbeat"',
        "null",
        "true",
        "{}",
        '{"msg_type": 5}',
        '{"msg_type": null}',
        '{"msg_type": ["heartbeat"]}',
        '{"type": "heartbeat"}',
        '{"msg_type":"heartbeat","payload":[1]}',
        '{"msg_type":"heartbeat","payload":"x"}',
        '{"msg_type":"heartbeat","payload":5}',
        '{"msg_type":"strategy.positions","seq_id":"5","payload":{"strategy_id":1}}',
        '{"msg_type":"heartbeat","seq_id":false}',
        '{"msg_type":"gap","payload":{}}',
        '{"msg_type":"x"} trailing',
    ],
)
def test_bad_frames_are_protocol_errors(text: str) -> None:
    """A frame that is not a JSON object with a string msg_type, or mistyped, is ProtocolError."""
    with pytest.raises(ProtocolError):
        parse_message(text)


@pytest.mark.parametrize(
    "seq_id",
    ["missing", "null", '"5"', "5.0", "true", "false", "0", "-3", str(2**63), str(2**70)],
)
def test_signal_with_an_unusable_seq_id_is_a_plain_message_raw_intact(seq_id: str) -> None:
    """A strategy.signal whose seq_id cannot order it is a plain Message, nothing lost."""
    field = "" if seq_id == "missing" else f'"seq_id":{seq_id},'
    text = f'{{"msg_type":"strategy.signal",{field}"payload":{{"strategy_id":1,"x":[1]}}}}'
    message = parse_message(text)
    assert type(message) is Message
    assert message.msg_type == "strategy.signal" and message.seq_id is None
    assert message.raw == json.loads(text) and message.payload == {"strategy_id": 1, "x": [1]}


def test_signal_seq_id_bounds_are_one_and_2_63_minus_1() -> None:
    """seq_ids 1 and 2**63-1 still make Signals."""
    for seq_id in (1, 2**63 - 1):
        text = f'{{"msg_type":"strategy.signal","seq_id":{seq_id},"payload":{{"strategy_id":1}}}}'
        message = parse_message(text)
        assert isinstance(message, Signal) and message.seq_id == seq_id


@pytest.mark.parametrize(
    "data",
    [b'{"msg_type":"heartbeat"\xff}', b"\xff\xfe\x00", bytearray(b"{}"), memoryview(b"[]"),
     None, 5],
)
def test_non_json_binary_and_non_text_frames_are_protocol_errors(data: Any) -> None:
    """Binary frames that are not UTF-8 JSON objects, and anything that is neither text nor
    bytes, are ProtocolError."""
    with pytest.raises(ProtocolError):
        parse_message(data)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_binary_utf8_json_is_read_like_text(kind: Any) -> None:
    """A binary frame holding UTF-8 JSON gives the message its text would (the docs' example
    client, json.loads(await ws.recv()), accepts both)."""
    text = (
        '{"msg_type":"strategy.signal","id":"msg_1","seq_id":7,"timestamp":'
        '"2024-01-01T12:00:00Z","v":4,"payload":{"strategy_id":1,"Note":"caf\u00e9 \u00e9t\u00e9"}}'
    )
    as_text = parse_message(text)
    as_binary = parse_message(kind(text.encode("utf-8")))
    assert as_binary == as_text and isinstance(as_binary, Signal) and as_binary.seq_id == 7
    raw_utf8 = '{"msg_type":"x","payload":{"s":"été"}}'
    assert parse_message(raw_utf8.encode("utf-8")).payload == {"s": "été"}


def test_protocol_error_is_a_c2error() -> None:
    """Users can catch codec failures with `except c2sync.C2Error`."""
    with pytest.raises(C2Error):
        parse_message("[]")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"msg_type":"x","payload":{"a":' + "[" * 100_000 + "]" * 100_000 + "}}",
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        "[" * 100_000,
    ],
    ids=["arrays", "in-payload", "objects", "unclosed"],
)
def test_deep_nesting_is_protocol_error_not_recursion_error(text: str) -> None:
    """A hostile 100k-deep frame is a ProtocolError; RecursionError never escapes."""
    with pytest.raises(ProtocolError):
        parse_message(text)


def test_huge_integers() -> None:
    """Huge ints within JSON's reach parse; beyond Python's digit limit they are ProtocolError."""
    msg = parse_message('{"msg_type":"x","seq_id":' + "9" * 4000 + "}")
    assert msg.seq_id == int("9" * 4000)
    with pytest.raises(ProtocolError):
        parse_message('{"msg_type":"x","seq_id":' + "9" * 5000 + "}")


def test_lone_surrogates_survive() -> None:
    r"""A frame with a lone \ud800 escape parses and its raw still serialises."""
    msg = parse_message('{"msg_type":"x\\ud800","payload":{"k":"\\udfff"}}')
    assert msg.msg_type == "x\ud800"
    assert json.loads(json.dumps(msg.raw)) == {"msg_type": "x\ud800", "payload": {"k": "\udfff"}}


# Regression: int() of a >4300-digit string raised ValueError out of parse_message.
LONG = "1" * 5000


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"msg_type": "strategy.signal", "seq_id": 1, "payload": {"strategy_id": LONG}}, Signal),
        ({"msg_type": "strategy.positions", "payload": {"StrategyId": LONG}}, Positions),
        ({"msg_type": "subscription.ack", "payload": {"strategy_id": LONG}}, SubscriptionAck),
        ({"msg_type": "gap", "payload": {"channel": "strategy.signal:5", "from": LONG}}, "'from'"),
        (
            {"msg_type": "gap", "payload": {"channel": "strategy.signal:" + LONG, "from": 1}},
            "no strategy",
        ),
    ],
    ids=["signal", "positions", "ack", "gap-from", "gap-channel"],
)
def test_long_digit_strings_never_escape_as_value_error(
    obj: dict[str, Any], expected: type[Message] | str
) -> None:
    """A 5000-digit id string is no id: the message keeps it in its payload with no
    strategy_id; a gap, which cannot be read without it, is a ProtocolError naming what is
    wrong. Never a bare ValueError."""
    if isinstance(expected, str):
        with pytest.raises(ProtocolError, match=expected):
            parse_obj(obj)
        return
    message = parse_obj(obj)
    assert type(message) is expected
    assert message.strategy_id is None  # type: ignore[attr-defined]
    assert message.payload == obj["payload"]


# Regression: astimezone() raised OverflowError at the edges of datetime's range.
@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_out_of_range_timestamp_keeps_the_message(stamp: str) -> None:
    """A timestamp that converts outside datetime's range is tolerated (timestamp None)."""
    msg = parse_obj({"msg_type": "heartbeat", "timestamp": stamp})
    assert msg.timestamp is None


# Fuzz ----------------------------------------------------------------------------------

# Includes the inputs of the two regressions above: very long digit strings and
# timestamps at the edges of datetime's range.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.text(alphabet="0123456789", min_size=1, max_size=30)
    | st.integers(min_value=15, max_value=6000).map(lambda n: "7" * n)
    | st.sampled_from(
        [
            "strategy.signal:12345678",
            "strategy.signal:",
            "2024-01-01T12:00:00Z",
            "2024-01-01T12:00:00.123456789+05:30",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00+23:59",
            "strategy.signal:" + "9" * 5000,
            "subscribe",
            "strategy.signal",
            "strategy.positions",
            "0",
        ]
    )
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KNOWN_TYPES = [
    "connection.connected",
    "connection.disconnected",
    "heartbeat",
    "subscription.ack",
    "strategy.signal",
    "strategy.positions",
    "gap",
    "error",
]
PAYLOAD_KEYS = [
    "strategy_id",
    "StrategyId",
    "channel",
    "from",
    "message",
    "code",
    "field",
    "errors",
    "action",
    "resume_from",
]
payloads = (
    st.dictionaries(st.sampled_from(PAYLOAD_KEYS) | st.text(max_size=5), json_values, max_size=6)
    | json_values
)
envelopes = st.fixed_dictionaries(
    {"msg_type": st.sampled_from(KNOWN_TYPES) | json_values},
    optional={
        "id": json_values,
        "seq_id": st.integers() | json_values,
        "request_id": json_values,
        "timestamp": json_values,
        "v": json_values,
        "payload": payloads,
    },
)


def assert_message_or_protocol_error(text: str | bytes) -> None:
    try:
        msg = parse_message(text)
    except ProtocolError:
        return
    assert isinstance(msg, Message)
    assert isinstance(msg.msg_type, str)
    json.dumps(msg.raw)
    json.dumps(msg.payload)


@given(json_values)
@FUZZ
def test_fuzz_any_json_value(value: Any) -> None:
    """Any JSON value gives a Message or ProtocolError, never another exception."""
    assert_message_or_protocol_error(json.dumps(value))


@given(envelopes)
@FUZZ
def test_fuzz_known_fields_with_wrong_types(obj: dict[str, Any]) -> None:
    """Known msg_types with wrongly typed fields give a Message or ProtocolError, nothing else."""
    assert_message_or_protocol_error(json.dumps(obj))


@given(st.binary(max_size=200))
@FUZZ
def test_fuzz_random_bytes(data: bytes) -> None:
    """Random bytes, as bytes or decoded leniently, never raise anything but ProtocolError."""
    with pytest.raises(ProtocolError):
        parse_message(data)
    assert_message_or_protocol_error(data.decode("utf-8", "surrogateescape"))
    assert_message_or_protocol_error(data.decode("latin-1"))


@given(st.text(max_size=200))
@FUZZ
def test_fuzz_random_text(text: str) -> None:
    """Random text gives a Message or ProtocolError, never another exception."""
    assert_message_or_protocol_error(text)


def nested(kind: str, depth: int) -> str:
    if kind == "arrays":
        return "[" * depth + "]" * depth
    if kind == "objects":
        return '{"a":' * depth + "1" + "}" * depth
    return '{"msg_type":"x","payload":{"p":' + "[" * depth + "]" * depth + "}}"


@given(
    st.integers(min_value=1, max_value=100_000), st.sampled_from(["arrays", "objects", "payload"])
)
@settings(max_examples=25, deadline=None)
def test_fuzz_nesting_depth(depth: int, kind: str) -> None:
    """Nesting at any depth gives a Message or ProtocolError, never RecursionError."""
    assert_message_or_protocol_error(nested(kind, depth))


def test_messages_are_hashable_and_equal_ones_hash_equal() -> None:
    """Messages can go in sets and dict keys; equal messages hash equal."""
    text = '{"msg_type":"strategy.signal","seq_id":3,"payload":{"StrategyId":7,"x":[1]}}'
    first, second = parse_message(text), parse_message(text)
    assert first == second and hash(first) == hash(second)
    assert len({first, second}) == 1


def test_nested_payload_objects_are_read_only_too() -> None:
    """No callback can change a nested object another callback or recv() will see."""
    message = parse_message(
        '{"msg_type":"strategy.signal","seq_id":1,'
        '"payload":{"C2Symbol":{"FullSymbol":"@ESZ6"},"Legs":[{"Qty":1}]}}'
    )
    with pytest.raises(TypeError):
        message.payload["C2Symbol"]["FullSymbol"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        message.payload["Legs"][0]["Qty"] = 2  # type: ignore[index]
    assert message.raw["payload"] is message.payload
    assert json.loads(json.dumps(message.raw))["payload"]["Legs"] == [{"Qty": 1}]


@pytest.mark.parametrize("limit", [1000, 20_000])
def test_nesting_beyond_the_fixed_depth_is_malformed_whatever_the_recursion_limit(
    limit: int,
) -> None:
    """How deep a frame may nest is a fixed rule (MAX_DEPTH), the same on every thread and
    under any recursion limit (a test runner may raise it), for both decoders."""
    from c2sync._decode import MAX_DEPTH

    def nested(depth: int) -> str:
        return '{"msg_type":"x","payload":{"deep":' + "[" * depth + "]" * depth + "}}"

    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        assert c2sync.parse_message(nested(MAX_DEPTH - 2)).msg_type == "x"
        with pytest.raises(c2sync.ProtocolError, match="deeper than"):
            c2sync.parse_message(nested(MAX_DEPTH))
        # Brackets inside strings are text, not nesting.
        text = '{"msg_type":"x","payload":{"s":"' + "[" * (MAX_DEPTH * 2) + '"}}'
        assert c2sync.parse_message(text).payload["s"] == "[" * (MAX_DEPTH * 2)
    finally:
        sys.setrecursionlimit(previous)


def test_a_gap_naming_its_strategy_in_the_payload_takes_it_over_the_channel() -> None:
    """A gap's strategy_id is the payload's; the channel's suffix only when that is null
    (docs/api-contract.md "Messages")."""
    for named, expected in ((5, 5), (None, 7)):
        payload = {"strategy_id": named, "channel": "strategy.signal:7", "from": 3}
        gap = parse_obj({"msg_type": "gap", "payload": payload})
        assert isinstance(gap, Gap) and (gap.strategy_id, gap.from_seq) == (expected, 3)
