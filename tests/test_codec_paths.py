"""The codec's two JSON paths, msgspec (``c2sync[fast]``) and the standard library, agree.

Both decoders are importable side by side; ``codec._parse(text, decode)`` is
``parse_message`` with a chosen decoder. Every input here goes through both, and the
outcomes must be the same: equal messages of the same class with equal hashes and reprs,
``raw`` and ``payload`` identical down to key order, float spelling and types, read-only
at every depth; or the same ``ProtocolError`` with the same words.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c2sync import _decode, codec
from c2sync.exceptions import ProtocolError
from c2sync.messages import Message, ReadOnlyDict, Signal

from .test_codec import envelopes, json_values

pytest.importorskip("msgspec", reason="the [fast] extra is not installed")

PATHS = _decode.available()
PURE = PATHS["json"]
FAST = PATHS["msgspec"]
SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def shape(value: Any, out: list[Any] | None = None) -> list[Any]:
    """A value's exact shape, flat: types, key order, float spelling; every dict read-only."""
    out = [] if out is None else out
    kind = type(value)
    assert kind is not dict, "a mutable JSON object escaped"
    if kind is ReadOnlyDict:
        out.append(("object", len(value)))
        for key, item in value.items():
            out.append(("key", key))
            shape(item, out)
    elif kind is list:
        out.append(("array", len(value)))
        for item in value:
            shape(item, out)
    elif kind is float:
        out.append(("float", repr(value)))  # nan equals nan here; -0.0 differs from 0.0
    else:
        out.append((kind.__name__, value))
    return out


def outcome(text: Any, decode: Any) -> tuple[Any, ...]:
    try:
        message = codec._parse(text, decode)
    except ProtocolError as exc:
        return ("error", str(exc))
    assert isinstance(message, Message)
    fields = attrs.asdict(message, recurse=False)
    fields.pop("payload")
    fields.pop("raw")
    return (
        "message",
        type(message),
        message,
        hash(message),
        repr(message),
        repr(fields),
        shape(message.raw),
        shape(message.payload),
    )


def assert_same(text: Any) -> None:
    pure, fast = outcome(text, PURE), outcome(text, FAST)
    assert fast == pure


# Generated inputs --------------------------------------------------------------------------


@given(envelopes)
@SETTINGS
def test_envelopes_parse_alike(obj: dict[str, Any]) -> None:
    """Any envelope, well or wrongly typed, gives the same message or error on both paths."""
    assert_same(json.dumps(obj))
    assert_same(json.dumps(obj, ensure_ascii=False, indent=1))


@given(json_values)
@SETTINGS
def test_any_json_value_alike(value: Any) -> None:
    """Any JSON value (NaN, Infinity, 300-digit integers included) decodes alike."""
    assert_same(json.dumps(value))
    assert_same(json.dumps({"msg_type": "strategy.signal", "seq_id": 1, "payload": value}))


NUMBER = st.from_regex(
    r"\A-?[0-9]{0,25}(\.[0-9]{0,25})?([eE][+-]?[0-9]{0,4})?\Z", fullmatch=True
) | st.sampled_from(
    [
        "18446744073709551615", "18446744073709551616", "-9223372036854775808",
        "-9223372036854775809", "1" * 4300, "-" + "1" * 4300, "1" * 4301, "1e400",
        "-1e400", "1e-400", "2.2250738585072011e-308", "1.7976931348623157e308",
        "1.7976931348623159e308", "0.1000000000000000055511151231257827", "-0", "-0.0",
        "NaN", "Infinity", "-Infinity", "nan", "inf", "01", "1.", ".5", "+1", "0x10",
    ]
)


@given(NUMBER)
@SETTINGS
def test_numbers_alike(number: str) -> None:
    """Number spellings, wide integers and out-of-range floats read as Python's json reads
    them (never a float where json gives an int), or fail alike."""
    assert_same(number)
    assert_same('{"msg_type":"x","seq_id":' + number + "}")
    assert_same('{"msg_type":"strategy.signal","seq_id":7,"payload":{"n":[' + number + "]}}")


HOSTILE = [
    *'{}[]",:\\/0123456789eE+-.ntrufalsNIiy \t\n\r',
    "\x00", "\x1f", "\x7f", "\ud800", "\udfff", "\ufeff", "\u2028", "\xa0", "\\u", "\\ud800",
    '"msg_type"', '"payload"', '"strategy.signal"', '"seq_id"', "é", "\U0001f600",
]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = json.dumps(draw(envelopes))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        piece = draw(st.sampled_from(HOSTILE))
        if action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + 1 :]
        elif action == "replace":
            text = text[:at] + piece + text[at + 1 :]
        else:
            text = text[:at]
    return text


@given(mutated())
@SETTINGS
def test_mutated_frames_alike(text: str) -> None:
    """Hostile edits of valid frames (control characters, lone surrogates, BOMs, stray
    tokens, truncation) give the same message or the same error on both paths."""
    assert_same(text)


@given(st.lists(st.sampled_from(HOSTILE), max_size=40).map("".join))
@SETTINGS
def test_hostile_text_alike(text: str) -> None:
    """Random text from JSON's own alphabet parses, or fails, alike."""
    assert_same(text)


@given(st.binary(max_size=120))
@SETTINGS
def test_random_bytes_alike(data: bytes) -> None:
    """Bytes are refused alike, and their lenient decodings parse or fail alike."""
    assert_same(data)
    assert_same(data.decode("utf-8", "surrogateescape"))
    assert_same(data.decode("latin-1"))


# Chosen inputs -----------------------------------------------------------------------------


def nest(kind: str, depth: int) -> str:
    inner = "[" * depth + "]" * depth if kind == "arrays" else '{"a":' * depth + "1" + "}" * depth
    return '{"msg_type":"x","payload":{"p":' + inner + "}}"


@pytest.mark.parametrize("kind", ["arrays", "objects"])
@pytest.mark.parametrize(
    "depth", [1, 97, 98, 99, 100, 101, 150, 400, 2_000, 100_000], ids=lambda d: f"depth{d}"
)
def test_nesting_alike(kind: str, depth: int) -> None:
    """Deep frames, around the fast path's depth limit and far beyond it, parse or fail alike."""
    assert_same(nest(kind, depth))


@pytest.mark.parametrize(
    "text",
    [
        '{"msg_type":"x","a":1,"b":2,"a":3}',
        '{"msg_type":"x","payload":{"k":1,"k":{"z":[{"y":1}]}}}',
        '{"msg_type":"x\\ud800","payload":{"k":"\\udfff"}}',
        '{"msg_type":"x","payload":{"k":"\ud800"}}',
        '\ufeff{"msg_type":"x"}',
        '{"msg_type":"x"}\x00',
        '{"msg_type":"x","payload":{"k":"a\tb"}}',
        '{"msg_type":"x","payload":{"k":NaN,"i":-Infinity}}',
        '{"msg_type":"strategy.signal","seq_id":18446744073709551616,"payload":{}}',
        '{"msg_type":"strategy.signal","seq_id":' + "9" * 4000 + "}",
        '{"msg_type":"strategy.signal","seq_id":' + "9" * 5000 + "}",
        '{"msg_type":"strategy.signal","seq_id":1,"payload":{"StrategyId":"' + "1" * 30 + '"}}',
        '[{"msg_type":"x"}]',
        '"{}"',
        " \n\t\r{\"msg_type\" : \"x\" } \n",
    ],
)
def test_chosen_hostile_frames_alike(text: str) -> None:
    """Duplicate keys, surrogates, BOMs, NaN, huge integers and non-objects come out alike."""
    assert_same(text)


def test_wide_integers_are_exact_on_the_fast_path() -> None:
    """Integers wider than 64 bits in a payload keep every digit (no float rounding)."""
    wide = 2**64 + 1
    message = codec._parse(
        '{"msg_type":"strategy.signal","seq_id":1,"payload":{"n":' + f'{wide},"m":[{-wide}]' + "}}",
        FAST,
    )
    assert message.payload["n"] == wide and type(message.payload["n"]) is int
    assert message.payload["m"] == [-wide]


def test_fast_signal_is_the_same_object_the_keyword_path_builds() -> None:
    """The Signal filled field by field equals, hashes, prints and pickles like attrs' own."""
    text = (
        '{"msg_type":"strategy.signal","id":"m1","seq_id":4,"request_id":"r",'
        '"timestamp":"2024-01-01T00:00:00.000Z","v":4,"payload":{"StrategyId":9}}'
    )
    for decode in (PURE, FAST):
        fast = codec._parse(text, decode)
        rebuilt = attrs.evolve(fast)  # through attrs' generated __init__
        assert type(fast) is Signal
        assert fast == rebuilt and hash(fast) == hash(rebuilt) and repr(fast) == repr(rebuilt)
        assert attrs.asdict(fast, recurse=False) == attrs.asdict(rebuilt, recurse=False)
        assert fast.strategy_id == 9 and fast.seq_id == 4
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            fast.seq_id = 5  # type: ignore[misc]


def test_the_environment_variable_picks_the_path() -> None:
    """C2SYNC_PURE_PYTHON=1 forces the standard library; unset (or 0), msgspec is used."""
    assert _decode.select({})[0] == "msgspec"
    assert _decode.select({"C2SYNC_PURE_PYTHON": "0"})[0] == "msgspec"
    assert _decode.select({"C2SYNC_PURE_PYTHON": "1"}) == ("json", _decode.decode_pure)
    env = {k: v for k, v in os.environ.items() if k != "C2SYNC_PURE_PYTHON"}
    code = "import c2sync.codec as c; print(c._DECODER_NAME)"
    for value, expected in ((None, "msgspec"), ("1", "json")):
        if value is not None:
            env["C2SYNC_PURE_PYTHON"] = value
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.stdout.strip() == expected, out.stderr
