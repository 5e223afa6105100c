"""Whatever the server sends, the reader survives: a frame is skipped as malformed or passed
through clean, and real signals keep coming (docs/api-contract.md "Receiving";
docs/protocol.md section 3).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import c2sync
from c2sync._options import seams
from c2sync.emulator import Emulator

from .conftest import API_KEY, OTHER_STRATEGY, STRATEGY, WAIT

Frame = tuple[str, Any]  # ("text", str) | ("text-bytes", bytes) | ("binary", bytes)

# Frames --------------------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=15,
)
# What a known numeric field may hold instead of a plain int.
odd_numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=2**63, max_value=2**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.from_regex(r"[0-9]{1,40}", fullmatch=True),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
msg_types = st.one_of(
    st.sampled_from(
        [
            "strategy.signal",
            "strategy.positions",
            "gap",
            "error",
            "subscription.ack",
            "connection.connected",
            "connection.disconnected",
            "heartbeat",
            "strategy.news",
        ]
    ),
    st.text(max_size=20),
    json_values,
)
payloads = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "strategy_id": odd_numbers,
            "StrategyId": odd_numbers,
            "channel": st.one_of(
                st.sampled_from(["strategy.signal", f"strategy.signal:{OTHER_STRATEGY}", ":"]),
                st.text(max_size=30),
                json_values,
            ),
            "from": odd_numbers,
            "message": json_values,
            "code": json_values,
            "field": json_values,
            "errors": json_values,
            "action": json_values,
            "resume_from": odd_numbers,
        },
    ),
    json_values,  # a list, a string, a number: the wrong type for a payload
)
timestamps = st.one_of(
    st.just("2024-01-01T12:00:00Z"),
    st.from_regex(
        r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
        r"(Z|[+-][0-9]{2}:[0-9]{2})?",
        fullmatch=True,
    ),
    st.text(max_size=30),
    json_values,
)
envelopes = st.fixed_dictionaries(
    {"msg_type": msg_types},
    optional={
        "id": json_values,
        "seq_id": odd_numbers,
        "request_id": json_values,
        "timestamp": timestamps,
        "v": odd_numbers,
        "payload": payloads,
        "unknown_field": json_values,
    },
)


def _nested(depth: int, signal: bool) -> str:
    body = "[" * depth + "]" * depth
    if signal:
        return f'{{"msg_type":"strategy.signal","seq_id":1,"payload":{{"deep":{body}}}}}'
    return body


frames: st.SearchStrategy[Frame] = st.one_of(
    envelopes.map(lambda obj: ("text", json.dumps(obj))),
    st.text(max_size=200).map(lambda text: ("text", text)),
    st.tuples(st.integers(1, 5000), st.booleans()).map(lambda a: ("text", _nested(*a))),
    # Invalid UTF-8 in a text frame: a lone continuation byte or a cut-off sequence.
    st.binary(max_size=40).map(lambda b: ("text-bytes", b"\xff" + b)),
    st.binary(max_size=40).map(lambda b: ("text-bytes", b'{"msg_type":"x","a":"' + b + b'\xc3"}')),
    st.binary(max_size=100).map(lambda b: ("binary", b)),
)


# Sending -------------------------------------------------------------------------------------


def _send_text_bytes(emulator: Emulator, data: bytes) -> None:
    """Send ``data`` as a *text* frame (send_raw sends bytes as binary): through the
    emulator's loop, on every open connection, finished before this returns."""

    async def send() -> None:
        for session in list(emulator._server._open.values()):
            await session.ws.send(data, text=True)

    loop = emulator._runner.loop
    assert loop is not None
    asyncio.run_coroutine_threadsafe(send(), loop).result(WAIT)


def _send(emulator: Emulator, frame: Frame) -> None:
    kind, data = frame
    if kind == "text-bytes":
        _send_text_bytes(emulator, data)
    else:
        emulator.send_raw(data)


def _classify(frame: Frame) -> str:
    """What the client must make of a frame, text or binary: "malformed" (the parser
    rejects it, whatever it raises), "parsed", or "poison" (a valid signal of STRATEGY,
    which legitimately moves its seq_id watermark and is left out)."""
    kind, data = frame
    if kind == "text-bytes":  # invalid UTF-8 in a text frame
        return "malformed"
    # Text, or binary read like text (docs/api-contract.md "Receiving").
    try:
        message = c2sync.parse_message(data)
    except Exception:
        return "malformed"
    if isinstance(message, c2sync.Signal) and message.strategy_id == STRATEGY:
        return "poison"
    return "parsed"


KEPT = {"heartbeat", "connection.connected", "subscription.ack"}  # never handed to the user


def _kept_or_deduped(message: c2sync.Message) -> bool:
    """Whether the client may rightly not hand ``message`` out."""
    if message.msg_type in KEPT:
        return True
    return isinstance(message, c2sync.Signal) and message.strategy_id == OTHER_STRATEGY


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=dict)


# The fuzz test -------------------------------------------------------------------------------


class _Clients:
    """One client for the whole fuzz run, replaced only if an example killed it (so one
    failure does not fail every later example and hide the smallest one)."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.client: c2sync.Client | None = None

    def get(self) -> c2sync.Client:
        if self.client is None or self.client.state is not c2sync.State.OPEN:
            if self.client is not None:
                self.client.close()
            # The local clock, unchanged, on the wire: a fuzzed heartbeat stamped years off
            # would otherwise set the skew its ack is corrected by, and the emulator answer
            # that ack with an error frame nobody sent (tests/test_clock_skew.py covers the
            # correction itself).
            with seams(correct_clock=False):
                self.client = c2sync.connect(
                    API_KEY, url=self.emulator.url, heartbeat_timeout=2.0
                )
            # Two signal subscriptions: a signal naming no strategy is passed through rather
            # than attributed to STRATEGY.
            self.client.subscribe(c2sync.SIGNAL, STRATEGY)
            self.client.subscribe(c2sync.SIGNAL, OTHER_STRATEGY)
            self.client.subscribe(c2sync.POSITIONS, STRATEGY)
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


@pytest.fixture
def clients(emulator: Emulator) -> Iterator[_Clients]:
    holder = _Clients(emulator)
    yield holder
    holder.close()


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(batch=st.lists(frames, min_size=1, max_size=6))
@example(batch=[("text", '{"msg_type":"strategy.news","payload":{"blob":"' + "x" * 2**21 + '"}}')])
@example(batch=[("text", _nested(100_000, False)), ("text", _nested(100_000, True))])
# A heartbeat stamped years ago: answered, and nothing else comes of it (see _Clients.get).
@example(batch=[("text", '{"msg_type":"heartbeat","timestamp":"2024-01-01T12:00:00Z","v":4}')])
@example(
    batch=[
        ("text", '{"msg_type":"strategy.signal","seq_id":"7","payload":{}}'),
        ("text", '{"msg_type":"strategy.signal","seq_id":7.0,"payload":{}}'),
        ("text", '{"msg_type":"strategy.signal","seq_id":true,"payload":{}}'),
        ("text", '{"msg_type":"strategy.signal","seq_id":7,"payload":[1,2]}'),
        ("text", '{"msg_type":"strategy.positions","payload":"flat"}'),
        ("text-bytes", b'{"msg_type":"strategy.signal","seq_id":9,"payload":{"a":"\xff"}}'),
        ("binary", b'{"msg_type":"strategy.signal","seq_id":9,"payload":{}}'),
    ]
)
def test_fuzzed_frames_are_skipped_or_passed_through_and_the_reader_lives(
    clients: _Clients, emulator: Emulator, batch: list[Frame]
) -> None:
    """Random frames are skipped as malformed or passed through; real signals keep coming."""
    kinds = [_classify(frame) for frame in batch]
    assume("poison" not in kinds)
    client = clients.get()
    malformed_before = client.stats.malformed
    reconnects_before = client.stats.reconnects
    for frame in batch:
        _send(emulator, frame)
    seq = emulator.publish_signal(STRATEGY)

    passed: list[c2sync.Message] = []
    while True:
        message = client.recv(timeout=WAIT)
        if isinstance(message, c2sync.Signal) and message.strategy_id == STRATEGY:
            assert message.seq_id == seq
            break
        passed.append(message)

    assert client.state is c2sync.State.OPEN
    assert client.stats.reconnects == reconnects_before, "the connection did not stay up"
    assert client.stats.malformed - malformed_before == kinds.count("malformed")
    assert len(batch) == len(kinds)  # zip(strict=True) is Python 3.10+
    parsed = [data for (_, data), k in zip(batch, kinds) if k == "parsed"]
    sent = [_canonical(json.loads(data)) for data in parsed]
    # Every parsed frame reaches the user, in order, but those the client keeps (heartbeats,
    # a second connection.connected, acks) and OTHER_STRATEGY's signals (a replayed seq_id
    # among them is a duplicate, rightly dropped).
    required = [
        _canonical(json.loads(data))
        for data in parsed
        if not _kept_or_deduped(c2sync.parse_message(data))
    ]
    got = [_canonical(message.raw) for message in passed]
    assert all(isinstance(message, c2sync.Message) for message in passed)
    assert all(raw in sent for raw in got), "a frame was not passed through unchanged"
    assert [raw for raw in got if raw in required] == required, "a parsed frame went missing"


# Frames the codec once choked on ----------------------------------------------------------

_HUGE = "9" * 5000  # more digits than int() converts (sys.get_int_max_str_digits)


def _frame(msg_type: str, **fields: Any) -> str:
    return json.dumps({"msg_type": msg_type, **fields})


@pytest.mark.parametrize(
    "frame",
    [
        _frame("strategy.signal", seq_id=0, payload={"strategy_id": _HUGE}),
        _frame("strategy.positions", payload={"StrategyId": _HUGE}),
        _frame("subscription.ack", payload={"strategy_id": _HUGE}),
        _frame("gap", payload={"channel": f"strategy.signal:{_HUGE}", "from": "1"}),
        _frame("gap", payload={"channel": "strategy.signal:1", "from": _HUGE}),
        _frame("strategy.news", timestamp="0001-01-01T00:00:00+23:00"),
        _frame("strategy.news", timestamp="9999-12-31T23:59:59-23:00"),
    ],
    ids=[
        "signal-strategy-id-digits",
        "positions-strategy-id-digits",
        "ack-strategy-id-digits",
        "gap-channel-digits",
        "gap-from-digits",
        "timestamp-before-year-1",
        "timestamp-after-year-9999",
    ],
)
def test_codec_crashing_frames_do_not_kill_the_reader(
    client: c2sync.Client, emulator: Emulator, frame: str
) -> None:
    """A frame whose fields make the codec raise is skipped (or passed on), not fatal."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    client.subscribe(c2sync.SIGNAL, OTHER_STRATEGY)  # a strategy-less signal passes through
    emulator.send_raw(frame)
    seq = emulator.publish_signal(STRATEGY)
    while True:
        message = client.recv(timeout=WAIT)
        if isinstance(message, c2sync.Signal) and message.strategy_id == STRATEGY:
            break
    assert message.seq_id == seq
    assert client.state is c2sync.State.OPEN
    assert client.stats.reconnects == 0
