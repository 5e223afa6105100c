"""The emulator's dialects: the other plausible readings of the points the public docs leave
open (each marked [assumed] in docs/protocol.md), in one place, without I/O.

``Emulator(dialect={...})`` and ``c2sync emulator --dialect NAME=VALUE`` pick one reading per
point; :data:`DIALECTS` lists every point, its readings and its default (today's reading,
docs/protocol.md's own). :func:`parse_dialect` checks a choice on the caller's thread and
returns a frozen :class:`Dialect`; the rules in ``_rules.py`` and the server in ``_server.py``
only read it (it is consulted on the loop thread). Nothing here reads a clock or touches a
socket; ``tests/test_emulator_rules.py`` checks that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Union

import attrs

from .._spec import CLOSE_NORMAL, PROTOCOL_VERSION

__all__ = [
    "DEFAULT_DIALECT",
    "DIALECTS",
    "Dialect",
    "DialectPoint",
    "close_code_problem",
    "extra_fields",
    "parse_dialect",
    "parse_dialect_option",
    "ping_interval",
    "strict_timestamp_ok",
    "wire_form",
]

Value = Union[str, int]


@attrs.frozen
class DialectPoint:
    """One open point of the docs the emulator can read several ways.

    Attributes:
        default: the reading the emulator plays unless told otherwise (the protocol page's).
        values: every reading allowed, for a point with a fixed list; empty for an integer
            point (``v``, ``heartbeat_close_code``), whose allowed values ``allowed``
            describes.
        allowed: the allowed values, in words (for error messages and ``--help``).
        doc: what the point is, and what each reading does.
    """

    default: Value
    values: tuple[str, ...]
    allowed: str
    doc: str


def _choice(default: str, *others: str, doc: str) -> DialectPoint:
    values = (default, *others)
    return DialectPoint(default, values, " | ".join(values), doc)


# The close codes a close frame may carry (RFC 6455 section 7.4, as websockets checks them).
_CLOSE_CODES = "1000-1003, 1007-1014 or 3000-4999"


def close_code_problem(code: int) -> str | None:
    """Why ``code`` cannot go in a close frame, or None when it can."""
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return None
    return f"{code} is not a close code a close frame may carry ({_CLOSE_CODES})"


DIALECTS: Mapping[str, DialectPoint] = {
    "seq_scope": _choice(
        "strategy",
        "global",
        doc="seq_id numbering: one counter per strategy (1, 2, 3...), or one counter across "
        "every strategy (a strategy's seq_ids then jump: 1, 4, 7...); replay, resume_from "
        "and gap work on those numbers either way",
    ),
    "resume_from": _choice(
        "both",
        "number",
        "string",
        doc="the JSON types accepted for resume_from: a number or a digit string, only a "
        "number, or only a string; the other type gets an INVALID_PARAMETER error, field "
        "ResumeFrom",
    ),
    "ack_request_id": _choice(
        "echo",
        "absent",
        doc="whether subscription.ack and error carry the request's request_id",
    ),
    "ack_payload": _choice(
        "echo",
        "empty",
        "absent",
        doc="the subscription.ack payload: the request echoed, {} or no payload key",
    ),
    "errors": _choice(
        "flat",
        "list",
        doc="the error payload: code, field and message in the payload (a list only for "
        "several problems), or always only payload.errors, a list of {code, field, message}",
    ),
    "positions_seq": _choice(
        "absent",
        "present",
        doc="whether strategy.positions carry a seq_id (their own counter per strategy)",
    ),
    "gap_from": _choice(
        "string",
        "number",
        doc="the type of gap.payload.from: a string (the docs' example) or a number",
    ),
    "v": DialectPoint(
        PROTOCOL_VERSION,
        (),
        f"an integer >= {PROTOCOL_VERSION}",
        doc="the envelope's v, on every message the server sends",
    ),
    "extra_fields": _choice(
        "none",
        "present",
        doc="whether the server adds fields the docs do not show, in the envelope and in "
        "every payload (x_trace, and a nested object x_meta)",
    ),
    "frames": _choice(
        "text",
        "binary",
        doc="text frames, or binary frames holding UTF-8 JSON for every server message "
        "(connection.connected included); binary client frames are then read too",
    ),
    "replay": _choice(
        "after_ack",
        "before_ack",
        doc="whether a resume's replayed signals (and gap) follow or precede its "
        "subscription.ack",
    ),
    "timestamps": _choice(
        "lenient",
        "strict",
        doc="client timestamps accepted: any ISO-8601 UTC form (Z or +00:00, with or without "
        "fractions), or only the documented forms, 2024-01-01T12:00:00Z and Python's "
        "isoformat() 2024-01-01T12:00:00[.123456]+00:00; the one-minute window applies to both",
    ),
    "pings": _choice(
        "off",
        "on",
        doc="whether the server also sends WebSocket pings (every half heartbeat interval) "
        "and counts the pongs; it never closes for a missing pong",
    ),
    "heartbeat_close_code": DialectPoint(
        CLOSE_NORMAL,
        (),
        _CLOSE_CODES,
        doc="the close code sent with reason 'heartbeat timeout' when a client misses the "
        "heartbeat deadline",
    ),
}


@attrs.frozen
class Dialect:
    """One reading per open point (see :data:`DIALECTS`); the defaults are today's."""

    seq_scope: str = "strategy"
    resume_from: str = "both"
    ack_request_id: str = "echo"
    ack_payload: str = "echo"
    errors: str = "flat"
    positions_seq: str = "absent"
    gap_from: str = "string"
    v: int = PROTOCOL_VERSION
    extra_fields: str = "none"
    frames: str = "text"
    replay: str = "after_ack"
    timestamps: str = "lenient"
    pings: str = "off"
    heartbeat_close_code: int = CLOSE_NORMAL


DEFAULT_DIALECT = Dialect()


def _integer(name: str, value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}", value.strip()):
        return int(value)
    if type(value) is int:
        return value
    raise ValueError(f"dialect {name} must be {DIALECTS[name].allowed}, not {value!r}")


def _value(name: str, value: object) -> Value:
    point = DIALECTS.get(name) if isinstance(name, str) else None
    if point is None:
        names = ", ".join(DIALECTS)
        raise ValueError(f"unknown dialect {name!r}; the dialects are: {names}")
    if point.values:
        if value not in point.values:
            raise ValueError(f"dialect {name} must be {point.allowed}, not {value!r}")
        return str(value)
    number = _integer(name, value)
    if name == "v" and number < PROTOCOL_VERSION:
        raise ValueError(f"dialect v must be {point.allowed}, not {value!r}")
    if name == "heartbeat_close_code":
        problem = close_code_problem(number)
        if problem is not None:
            raise ValueError(f"dialect heartbeat_close_code: {problem}")
    return number


def parse_dialect(choice: Mapping[str, Any] | None) -> Dialect:
    """Check a dialect choice and make it a :class:`Dialect`.

    Args:
        choice: NAME -> VALUE for the points to read otherwise than by default (see
            :data:`DIALECTS`); values are strings, or ints for the integer points (a digit
            string is accepted too). None or empty: the defaults.

    Raises:
        ValueError: an unknown name, or a value the point does not allow; the message lists
            the allowed ones.
        TypeError: ``choice`` is not a mapping.
    """
    if choice is None:
        return DEFAULT_DIALECT
    if not isinstance(choice, Mapping):
        raise TypeError("dialect must be a mapping of NAME -> VALUE, e.g. {'frames': 'binary'}")
    readings: dict[str, Any] = {name: _value(name, value) for name, value in choice.items()}
    return Dialect(**readings)


def parse_dialect_option(text: str) -> tuple[str, Value]:
    """Read one ``NAME=VALUE`` (the CLI's ``--dialect``) and check it.

    Raises:
        ValueError: not ``NAME=VALUE``, an unknown name, or a value the point does not allow.
    """
    name, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"expected NAME=VALUE, not {text!r}")
    name = name.strip()
    return name, _value(name, value.strip())


# -- the readings, as pure rules the server applies ----------------------------------------

# The documented client timestamp forms (timestamps=strict): the JSON examples' whole
# seconds with Z, and Python's datetime.now(timezone.utc).isoformat().
_STRICT_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(?:Z|(?:\.[0-9]{6})?\+00:00)"
)


def strict_timestamp_ok(text: str) -> bool:
    """True when ``text`` has one of the two documented forms (``timestamps=strict``)."""
    return _STRICT_TIMESTAMP.fullmatch(text) is not None


# The fields a server with extra_fields=present adds: a flat one and a nested object.
def extra_fields(where: str) -> dict[str, Any]:
    """The unknown fields added to the envelope or a payload (``extra_fields=present``)."""
    return {
        "x_trace": f"emulator-{where}",
        "x_meta": {"region": "emu-1", "x_nested": {"build": 7, "tags": ["a", "b"]}},
    }


def wire_form(frame: str, dialect: Dialect) -> str | bytes:
    """A server message as it goes on the wire: text, or UTF-8 bytes (a binary frame)
    under ``frames=binary``."""
    return frame.encode() if dialect.frames == "binary" else frame


def ping_interval(heartbeat_interval: float, dialect: Dialect) -> float | None:
    """Seconds between WebSocket pings: half the heartbeat interval under ``pings=on``,
    else None (no pings; liveness is the protocol's heartbeat, section 5)."""
    return heartbeat_interval / 2 if dialect.pings == "on" else None
