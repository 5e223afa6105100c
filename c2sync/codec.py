"""The wire format: JSON text frames in and out (docs/protocol.md sections 3-8). No I/O.

These functions are public so users can unit-test their own handlers without a socket.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from . import _decode
from ._spec import (
    ACTIONS,
    CHANNELS,
    ERROR,
    GAP,
    HEARTBEAT_ACK,
    MAX_REQUEST_ID_LENGTH,
    POSITIONS,
    SIGNAL,
    SUBSCRIPTION_ACK,
    SUBSCRIPTION_REQUEST,
)
from .exceptions import ProtocolError
from .messages import (
    ErrorDetail,
    ErrorMessage,
    Gap,
    Message,
    Positions,
    ReadOnlyDict,
    Signal,
    SubscriptionAck,
)

__all__ = [
    "encode_heartbeat_ack",
    "encode_subscription_request",
    "format_timestamp",
    "parse_message",
    "parse_timestamp",
]

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?"
)


def format_timestamp(when: datetime | None = None) -> str:
    """Format a time the way the client sends it: ``YYYY-MM-DDTHH:MM:SSZ`` (UTC).

    Whole seconds and ``Z``: the exact form of the documented examples
    (``2024-01-01T12:00:00Z``), so a server strict about the documented forms accepts it
    (docs/api-contract.md "Servers that read the docs differently"). Fractions are
    truncated, as ``isoformat``'s ``timespec`` truncates.

    Args:
        when: an aware datetime (naive ones are taken as UTC); None means now.

    Returns:
        The timestamp text.
    """
    global _minute
    if when is None:
        when = datetime.now(timezone.utc)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    elif when.tzinfo is not timezone.utc:
        when = when.astimezone(timezone.utc)
    # Every heartbeat's ack is stamped: the minute's text is made once, by isoformat (its
    # fixed-width form), and only the seconds per call, in a third of isoformat's time.
    key = (when.minute, when.hour, when.day, when.month, when.year)
    minute = _minute  # one read: another thread may replace it meanwhile
    if minute[0] != key:
        minute = _minute = (key, when.isoformat()[:17])
    return f"{minute[1]}{when.second:02d}Z"


# format_timestamp's cache: (minute, hour, day, month, year) and "YYYY-MM-DDTHH:MM:".
_minute: tuple[tuple[int, ...] | None, str] = (None, "")


# The last timestamp parsed on the fast path, as (text, datetime); starts as a true pair.
_last_timestamp = ("1970-01-01T00:00:00.000Z", datetime(1970, 1, 1, tzinfo=timezone.utc))


def parse_timestamp(text: str) -> datetime:
    """Read an ISO-8601 timestamp in any form the server may use (section 3).

    Accepts ``Z``, ``+00:00`` or any other offset, with or without fractions of a second; a
    timestamp without an offset is taken as UTC.

    Args:
        text: the timestamp.

    Returns:
        An aware datetime in UTC.

    Raises:
        ValueError: the text is not such a timestamp.
    """
    global _last_timestamp
    if type(text) is str:
        last = _last_timestamp  # one read: another thread may replace it meanwhile
        if text == last[0]:
            return last[1]  # a burst of messages shares one timestamp: parse it once
        if len(text) == 24 and text[23] == "Z" and text[10] == "T" and text[19] == ".":
            # The server's usual form, 2024-01-01T12:00:00.000Z: the C parser is ~15x
            # faster than the regex (Python 3.10's wants the offset spelled out).
            try:
                when = datetime.fromisoformat(text[:23] + "+00:00")
            except ValueError:
                pass  # the general parser below decides
            else:
                _last_timestamp = (text, when)
                return when
    match = _TIMESTAMP.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not an ISO-8601 timestamp: {text!r}")
    year, month, day, hour, minute, second, fraction, _z, sign, off_h, off_m = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz = timezone.utc
    if sign:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-offset if sign == "-" else offset)
    try:
        when = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
        return when.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:  # out of range, e.g. year 1 at +23:00
        raise ValueError(f"not an ISO-8601 timestamp: {text!r}") from exc


def encode_heartbeat_ack(now: datetime | None = None) -> str:
    """Build the ``heartbeat.ack`` frame (section 5).

    Args:
        now: the time to stamp it with; None means now.

    Returns:
        The JSON text to send.
    """
    return f'{{"msg_type":"{HEARTBEAT_ACK}","timestamp":"{format_timestamp(now)}"}}'


def validate_strategy_id(strategy_id: object) -> int:
    """Check a strategy id: an ``int`` above zero, ``bool`` excluded (section 6).

    Raises:
        ValueError: it is anything else.
    """
    if type(strategy_id) is not int or strategy_id <= 0:
        raise ValueError(f"strategy_id must be a positive int, not {strategy_id!r}")
    return strategy_id


def validate_channel(channel: object) -> str:
    """Check a channel name (section 6).

    Raises:
        ValueError: it is not ``strategy.signal`` or ``strategy.positions``.
    """
    if not isinstance(channel, str) or channel not in CHANNELS:
        raise ValueError(f"channel must be {SIGNAL!r} or {POSITIONS!r}, not {channel!r}")
    return channel


def encode_subscription_request(
    action: str,
    channel: str,
    strategy_id: int,
    *,
    request_id: str,
    resume_from: int | None = None,
    now: datetime | None = None,
    resume_as_string: bool = False,
) -> str:
    """Build a ``subscription.request`` frame (section 6).

    Args:
        action: ``"subscribe"`` or ``"unsubscribe"``.
        channel: ``"strategy.signal"`` or ``"strategy.positions"``.
        strategy_id: a positive int.
        request_id: 1 to 50 characters, echoed on the answer.
        resume_from: the last ``seq_id`` processed (signal subscriptions only); None or 0
            sends none.
        now: the time to stamp it with; None means now.
        resume_as_string: send ``resume_from`` as a JSON string (``"98765"``, the docs'
            field table) instead of a number (the docs' example, the default).

    Returns:
        The JSON text to send.

    Raises:
        ValueError: an argument is out of the protocol's range.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be 'subscribe' or 'unsubscribe', not {action!r}")
    validate_channel(channel)
    validate_strategy_id(strategy_id)
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= MAX_REQUEST_ID_LENGTH:
        raise ValueError(f"request_id must be 1 to {MAX_REQUEST_ID_LENGTH} characters")
    payload: dict[str, Any] = {"action": action, "channel": channel, "strategy_id": strategy_id}
    if resume_from is not None:
        if type(resume_from) is not int or resume_from < 0:
            raise ValueError(f"resume_from must be a non-negative int, not {resume_from!r}")
        if channel != SIGNAL:
            raise ValueError("resume_from applies to strategy.signal subscriptions only")
        if action != "subscribe":
            raise ValueError("resume_from applies to subscribe requests only")
        if resume_from > 0:
            payload["resume_from"] = str(resume_from) if resume_as_string else resume_from
    return json.dumps(
        {
            "msg_type": SUBSCRIPTION_REQUEST,
            "request_id": request_id,
            "timestamp": format_timestamp(now),
            "payload": payload,
        },
        separators=(",", ":"),
    )


def parse_message(text: str | bytes) -> Message:
    """Turn one frame into a typed message (sections 3-8).

    A binary frame (``bytes``) holding UTF-8 JSON is read exactly like a text frame: the
    docs' own example client (``json.loads(await ws.recv())``) accepts both.

    Unknown ``msg_type``\\ s come back as :class:`Message`; unknown fields are kept in
    ``raw``. ``connection.connected`` and ``heartbeat`` come back as plain :class:`Message`.

    Args:
        text: the frame's text, or a binary frame's bytes.

    Returns:
        A :class:`Signal`, :class:`Positions`, :class:`Gap`, :class:`SubscriptionAck`,
        :class:`ErrorMessage` or :class:`Message`.

    Raises:
        ProtocolError: the frame is not a JSON object with a string ``msg_type`` (bytes
            that are not UTF-8 included), or a known field needed to read it has the wrong
            type.
    """
    return _parse(text, _DECODE)


def _parse(text: str | bytes, decode: Callable[[str], Any]) -> Message:
    # parse_message with a chosen JSON decoder (c2sync/_decode.py): the seam that lets the
    # tests feed both paths the same input in one process.
    if not isinstance(text, str):
        if not isinstance(text, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"a frame is text or bytes, not {type(text).__name__}")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("binary frame is not UTF-8 text") from None
    obj = decode(text)
    if type(obj) is not ReadOnlyDict:
        raise ProtocolError(f"frame is a JSON {type(obj).__name__}, not an object")
    get = obj.get
    msg_type = get("msg_type")
    if not isinstance(msg_type, str):
        raise ProtocolError("frame has no string msg_type")
    payload = get("payload")
    if payload is None:
        payload = _EMPTY_PAYLOAD
    elif type(payload) is not ReadOnlyDict:
        raise ProtocolError(f"{msg_type}: payload is a JSON {type(payload).__name__}")
    seq_id = get("seq_id")
    if seq_id is not None and type(seq_id) is not int:
        if msg_type != SIGNAL:
            raise ProtocolError(f"{msg_type}: seq_id is not an integer: {seq_id!r}")
        seq_id = None  # a signal that cannot be ordered: a plain Message (see _signal)
    timestamp = get("timestamp")
    if timestamp is not None:
        last = _last_timestamp  # parse_timestamp's cache, looked at here first: a burst
        if timestamp == last[0]:  # of messages shares one timestamp (a call less each)
            timestamp = last[1]
        else:
            try:
                timestamp = parse_timestamp(timestamp)
            except ValueError:
                timestamp = None  # tolerated: the time is informative, nothing is lost
    ident = get("id")
    if not isinstance(ident, str):
        ident = None
    request_id = get("request_id")
    if not isinstance(request_id, str):
        request_id = None
    version = get("v")
    if type(version) is not int:
        version = None
    if msg_type == SIGNAL and seq_id is not None and 0 < seq_id <= _MAX_SEQ_ID:
        cls: type[Message] | None = Signal  # the hot path
    else:
        # Plain Messages too (heartbeats, connection.connected, any type without a class
        # of its own): every heartbeat is parsed before its ack. A signal whose seq_id
        # cannot order anything takes its builder below: a plain Message
        # (docs/api-contract.md "Reconnecting").
        cls = None if msg_type in _BUILDERS else Message
    if cls is not None and _SLOTS is not None:
        # Filled field by field, without attrs' keyword __init__ (half the cost; the same
        # object, see _SLOTS).
        message = _new(cls)
        s_type, s_id, s_seq, s_request, s_time, s_v, s_payload, s_raw, s_strategy = _SLOTS
        s_type(message, msg_type)
        s_id(message, ident)
        s_seq(message, seq_id)
        s_request(message, request_id)
        s_time(message, timestamp)
        s_v(message, version)
        s_payload(message, payload)
        s_raw(message, obj)
        if cls is Message:
            return message
        # _payload_strategy_id(payload), without its calls for the usual integer forms.
        value = payload.get("strategy_id")
        if type(value) is int and value > 0:
            s_strategy(message, value)
            return message
        strategy_id = None if value is None else _strategy_id(value)
        if strategy_id is None:
            value = payload.get("StrategyId")
            strategy_id = value if type(value) is int and value > 0 else _strategy_id(value)
        s_strategy(message, strategy_id)
        return message
    common: dict[str, Any] = {
        "msg_type": msg_type,
        "id": ident,
        "seq_id": seq_id,
        "request_id": request_id,
        "timestamp": timestamp,
        "v": version,
        "payload": payload,
        "raw": obj,
    }
    build = _BUILDERS.get(msg_type)
    if build is None:
        return Message(**common)
    return build(common, payload)


_EMPTY_PAYLOAD: Mapping[str, Any] = ReadOnlyDict()


# The JSON path, picked at the first parse (msgspec is imported then, not with c2sync):
# msgspec (the [fast] extra) unless missing or C2SYNC_PURE_PYTHON=1; both give the same
# trees and errors (c2sync/_decode.py). Two threads racing to pick it pick the same path.
_DECODER_NAME: str  # "msgspec" or "json", set with _DECODE


def _pick_decoder() -> Callable[[str], Any]:
    global _DECODER_NAME, _DECODE
    _DECODER_NAME, _DECODE = _decode.select()
    return _DECODE


def _first_decode(text: str) -> Any:
    return _pick_decoder()(text)


_DECODE: Callable[[str], Any] = _first_decode


def __getattr__(name: str) -> str:
    if name == "_DECODER_NAME":  # asked before any parse: pick the path now
        _pick_decoder()
        return _DECODER_NAME
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_new = object.__new__
_SIGNAL_FIELDS = (
    "msg_type", "id", "seq_id", "request_id", "timestamp", "v", "payload", "raw", "strategy_id"
)


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Any, ...] | None:
    """The slot descriptors' setters of ``cls``'s fields, in ``names``' order; None (use the
    keyword path) unless ``cls`` is a slotted attrs class whose fields are exactly ``names``
    with no validator, converter or post-init hook."""
    fields = attrs.fields(cls)
    if {f.name for f in fields} != set(names) or hasattr(cls, "__attrs_post_init__"):
        return None
    if any(f.validator is not None or f.converter is not None for f in fields):
        return None
    setters = []
    for name in names:
        slot = next((k.__dict__[name] for k in cls.__mro__ if name in k.__dict__), None)
        if slot is None or type(slot).__name__ != "member_descriptor":
            return None
        setters.append(slot.__set__)
    return tuple(setters)


# Signal's setters; its first eight are Message's own slots (inherited), so they fill a
# plain Message as well. None: both take attrs' keyword path.
_SLOTS = _slot_setters(Signal, _SIGNAL_FIELDS)


_MAX_ID_DIGITS = 20  # ids and seq_ids are 64-bit at most; longer digit strings are junk


def _strategy_id(value: object) -> int | None:
    if type(value) is int and value > 0:
        return value
    if (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_ID_DIGITS
        and value.isdigit()
        and value.isascii()
    ):
        return int(value) or None
    return None


def _payload_strategy_id(payload: Mapping[str, Any]) -> int | None:
    found = _strategy_id(payload.get("strategy_id"))
    return found if found is not None else _strategy_id(payload.get("StrategyId"))


_MAX_SEQ_ID = 2**63 - 1


def _signal(common: dict[str, Any], payload: Mapping[str, Any]) -> Message:
    seq_id = common["seq_id"]
    if seq_id is None or not 0 < seq_id <= _MAX_SEQ_ID:
        # Missing, not an integer, or out of range: it cannot be ordered, so it is passed
        # through whole as a plain Message, raw intact (docs/api-contract.md "Reconnecting").
        common["seq_id"] = None
        return Message(**common)
    return Signal(strategy_id=_payload_strategy_id(payload), **common)


def _positions(common: dict[str, Any], payload: Mapping[str, Any]) -> Message:
    return Positions(strategy_id=_payload_strategy_id(payload), **common)


def _gap(common: dict[str, Any], payload: Mapping[str, Any]) -> Message:
    channel = payload.get("channel")
    channel = channel if isinstance(channel, str) else ""
    strategy_id = _strategy_id(payload.get("strategy_id"))
    if strategy_id is None:
        _, _, suffix = channel.rpartition(":")
        strategy_id = _strategy_id(suffix)
    if strategy_id is None:
        raise ProtocolError(f"gap names no strategy: channel {channel!r}")
    from_seq = payload.get("from")
    if type(from_seq) is not int:
        from_seq = _strategy_id(from_seq) if from_seq not in ("0", 0) else 0
    if from_seq is None:
        raise ProtocolError(f"gap has no integer 'from': {payload.get('from')!r}")
    message = payload.get("message")
    return Gap(
        strategy_id=strategy_id,
        channel=channel,
        from_seq=from_seq,
        message=message if isinstance(message, str) else "",
        **common,
    )


def _ack(common: dict[str, Any], payload: Mapping[str, Any]) -> Message:
    action = payload.get("action")
    channel = payload.get("channel")
    return SubscriptionAck(
        action=action if isinstance(action, str) else None,
        channel=channel if isinstance(channel, str) else None,
        strategy_id=_strategy_id(payload.get("strategy_id")),
        **common,
    )


def _detail(item: object) -> ErrorDetail:
    if not isinstance(item, Mapping):
        return ErrorDetail(code="UNKNOWN", field=None, message=str(item))
    code, field, message = item.get("code"), item.get("field"), item.get("message")
    return ErrorDetail(
        code=str(code) if code is not None else "UNKNOWN",
        field=str(field) if field is not None else None,
        message=str(message) if message is not None else "",
    )


def error_details(payload: Mapping[str, Any]) -> tuple[ErrorDetail, ...]:
    """Every error an ``error`` payload carries: its ``errors`` list, else itself (section 8)."""
    errors = payload.get("errors")
    if isinstance(errors, list) and errors:
        return tuple(_detail(item) for item in errors)
    return (_detail(payload),)


def _error(common: dict[str, Any], payload: Mapping[str, Any]) -> Message:
    details = error_details(payload)
    first = details[0]
    return ErrorMessage(
        code=first.code, field=first.field, message=first.message, errors=details, **common
    )


_BUILDERS: dict[str, Callable[[dict[str, Any], Mapping[str, Any]], Message]] = {
    SIGNAL: _signal,
    POSITIONS: _positions,
    GAP: _gap,
    SUBSCRIPTION_ACK: _ack,
    ERROR: _error,
}
