"""The hot-path trims of issue 13 give what the plain paths give.

Each trim is a second way to the same result: the protocol's in-order fast path beside
``receive_parsed``, the dispatcher's routes beside the registry, the subscription book's run
of one strategy beside its general path, the inbox's quick pop beside ``get_many``. Each test
here drives both ways with the same (generated or hostile) input and compares.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import threading
import warnings
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from c2sync import POSITIONS, SIGNAL, Gap, Message, Positions, QueueOverflow, Signal, _decode, codec
from c2sync._dispatcher import Dispatcher
from c2sync._inbox import Inbox
from c2sync._link import MaskKeys, mask_key
from c2sync._protocol import ClientProtocol, Deliver, Event
from c2sync._substats import SubscriptionBook, pair_of
from c2sync.codec import parse_message
from c2sync.exceptions import ConnectionClosed, ProtocolError

WANTED = (1001, 1002)
UNKNOWN = 2001
WALL = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
NOW = datetime(2024, 1, 1, 12, 0, 1, tzinfo=timezone.utc)


def frame(msg_type: str, **fields: Any) -> str:
    return json.dumps({"msg_type": msg_type, "timestamp": "2024-01-01T12:00:00Z", **fields})


def connected_protocol() -> ClientProtocol:
    """Open, with both WANTED strategies subscribed (acked)."""
    proto = ClientProtocol(
        40.0, request_ids=(f"r{n}" for n in itertools.count(1)), wallclock=lambda: WALL
    )
    proto.connection_made()
    proto.receive(frame("connection.connected"), 0.0)
    for strategy_id in WANTED:
        request_id, _ = proto.request("subscribe", SIGNAL, strategy_id)
        ack = frame(
            "subscription.ack",
            request_id=request_id,
            payload={"action": "subscribe", "channel": SIGNAL, "strategy_id": strategy_id},
        )
        proto.receive(ack, 0.0)
    return proto


# What a server may send: signals of wanted and unknown strategies, with seq_ids in order,
# repeated, going backwards (a little: duplicates; a lot: a restart), invalid; no strategy;
# heartbeats, gaps, positions, junk.
seq_ids = st.one_of(
    st.integers(1, 40),
    st.integers(1, 40).map(lambda n: n + 5000),
    st.sampled_from([0, -1, 2**63, "7", None, 1.5, True]),
)
frames = st.one_of(
    st.builds(
        lambda sid, seq: frame(SIGNAL, seq_id=seq, payload={"strategy_id": sid}),
        st.sampled_from([*WANTED, UNKNOWN]),
        seq_ids,
    ),
    st.builds(lambda seq: frame(SIGNAL, seq_id=seq, payload={}), seq_ids),
    st.just(frame("heartbeat")),
    st.just(frame("gap", payload={"channel": SIGNAL, "strategy_id": WANTED[0], "from_seq": 3})),
    st.just(frame(POSITIONS, payload={"StrategyId": WANTED[1], "Positions": []})),
    st.just("not json"),
)


def parsed(text: str) -> Message | ProtocolError:
    try:
        return parse_message(text)
    except ProtocolError as exc:
        return exc


def outcome(events: list[Event]) -> list[Any]:
    """Comparable: a message delivered as itself, an event as its type and message."""
    out: list[Any] = []
    for event in events:
        if isinstance(event, Deliver):
            out.append(("deliver", event.message))
        else:
            out.append((type(event).__name__, getattr(event, "message", None)))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=60))
def test_the_in_order_fast_path_changes_nothing(texts: list[str]) -> None:
    """The reader's way (accept_in_order first, receive_parsed for the rest) delivers the
    same messages, drops the same duplicates and ends with the same resume points as
    receive_parsed alone."""
    plain, fast = connected_protocol(), connected_protocol()
    plain_out: list[Any] = []
    fast_out: list[Any] = []
    taken = 0
    for text in texts:
        item = parsed(text)
        plain_out += outcome(plain.receive_parsed(item, 1.0))
        if fast.accept_in_order(item):
            fast_out.append(("deliver", item))
            taken += 1
        else:
            fast_out += outcome(fast.receive_parsed(item, 1.0))
        assert plain.data_to_send() == fast.data_to_send()
    assert fast_out == plain_out
    for strategy_id in (*WANTED, UNKNOWN):
        assert fast.resume_point(strategy_id) == plain.resume_point(strategy_id)
    assert fast.invalid_seq_ids == plain.invalid_seq_ids


def test_the_fast_path_takes_in_order_signals_and_only_them() -> None:
    """It takes a wanted strategy's signals above what is held; everything else goes to
    receive_parsed, untouched (so the test above compares something)."""
    proto = connected_protocol()
    first = parse_message(frame(SIGNAL, seq_id=5, payload={"strategy_id": WANTED[0]}))
    assert proto.accept_in_order(first)
    assert proto.resume_point(WANTED[0]) == 5
    for text in (
        frame(SIGNAL, seq_id=5, payload={"strategy_id": WANTED[0]}),  # a duplicate
        frame(SIGNAL, seq_id=4, payload={"strategy_id": WANTED[0]}),  # backwards
        frame(SIGNAL, seq_id=9, payload={"strategy_id": UNKNOWN}),  # not asked for
        frame(SIGNAL, seq_id=9, payload={}),  # no strategy
        frame(SIGNAL, seq_id="9", payload={"strategy_id": WANTED[0]}),  # invalid seq_id
        frame("heartbeat"),
    ):
        assert not proto.accept_in_order(parsed(text)), text
    assert proto.resume_point(WANTED[0]) == 5
    assert not proto.accept_in_order(ProtocolError("bad"))
    proto.connection_lost()
    proto.connection_made()  # awaiting connection.connected: nothing but it may pass
    late = parse_message(frame(SIGNAL, seq_id=6, payload={"strategy_id": WANTED[0]}))
    assert not proto.accept_in_order(late)


# The dispatcher's routes -------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from([SIGNAL, POSITIONS, "*", "gap"])), max_size=20
    )
)
def test_routes_follow_the_registry(steps: list[tuple[bool, str]]) -> None:
    """After any on()/off() sequence, a message of each type is routed to its type's
    handles then the "*" ones, in registration order, as the registry says."""
    dispatcher = Dispatcher(lambda m: None, lambda s: None)
    live: list[tuple[str, Any]] = []  # the model: (msg_type, handle) still on, in order
    for add, msg_type in steps:
        if add or not live:
            live.append((msg_type, dispatcher.on(msg_type, print)))
        else:
            dispatcher.off(live.pop(0)[1])
        for kind in (SIGNAL, POSITIONS, "gap", "other"):
            expected = tuple(h for t, h in live if t == kind) + tuple(
                h for t, h in live if t == "*"
            )
            assert dispatcher.callbacks_for(Message(msg_type=kind)) == expected


# The subscription book's run of one strategy -------------------------------------------


def reference_arrived(messages: list[Message], held: set[Any]) -> dict[Any, tuple[Any, ...]]:
    """What SubscriptionBook.arrived counts, the plain way."""
    counts: dict[Any, list[Any]] = {}
    for message in messages:
        pair = pair_of(message)
        if pair is None or pair not in held:
            continue
        entry = counts.setdefault(pair, [None, None, 0, 0])
        if isinstance(message, Gap):
            entry[3] += 1
            continue
        entry[2] += 1
        entry[1] = NOW
        if message.seq_id is not None:
            entry[0] = message.seq_id
    return {pair: tuple(e) for pair, e in counts.items()}


book_messages = st.one_of(
    st.builds(
        lambda sid, seq: Signal(msg_type=SIGNAL, seq_id=seq, strategy_id=sid),
        st.sampled_from([1, 2, 3, None]),
        st.integers(1, 100),
    ),
    st.builds(
        lambda sid: Positions(msg_type=POSITIONS, strategy_id=sid), st.sampled_from([1, 2, None])
    ),
    st.builds(
        lambda sid: Gap(msg_type="gap", channel=SIGNAL, strategy_id=sid, from_seq=1),
        st.sampled_from([1, 2]),
    ),
    st.just(Message(msg_type="other")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(book_messages, max_size=30), max_size=4))
def test_the_book_counts_runs_as_the_plain_way_does(batches: list[list[Message]]) -> None:
    """Runs of one strategy's signals are counted like any other arrivals, whatever comes
    between them (another strategy, a gap, positions, a signal naming no strategy)."""
    held = {(SIGNAL, 1), (SIGNAL, 2), (POSITIONS, 1)}
    book = SubscriptionBook()
    for batch in batches:
        book.arrived(batch, held, NOW)
    expected = reference_arrived([m for batch in batches for m in batch], held)
    got = book.snapshot(held)
    for pair in held:
        stats = got[pair]
        want = expected.get(pair, (None, None, 0, 0))
        assert (stats.last_seq, stats.last_message_at, stats.messages, stats.gaps) == want


# The inbox's quick pop ----------------------------------------------------------------


def signal(seq: int) -> Signal:
    return Signal(msg_type=SIGNAL, seq_id=seq, strategy_id=WANTED[0])


def test_an_overflow_is_raised_before_the_messages_that_wait() -> None:
    """get() with messages waiting still raises QueueOverflow first, once."""
    inbox = Inbox(3, dict)
    assert inbox.put_many([signal(n) for n in range(1, 6)]) == 2
    try:
        inbox.get(None)
    except QueueOverflow as exc:
        assert exc.dropped == 2
    else:
        raise AssertionError("QueueOverflow not raised")
    assert [inbox.get(None).seq_id for _ in range(3)] == [3, 4, 5]


def test_a_discarding_end_wins_over_the_messages_that_wait() -> None:
    """Ended by close() (discard): get() raises at once though messages wait; a plain end
    hands them out first."""
    inbox = Inbox(10, dict)
    inbox.put_many([signal(1), signal(2)])
    inbox.end(lambda: ConnectionClosed(None, "", "closed"), discard=True)
    try:
        inbox.get(None)
    except ConnectionClosed:
        pass
    else:
        raise AssertionError("a discarding end handed a message out")
    inbox = Inbox(10, dict)
    inbox.put_many([signal(1)])
    inbox.end(lambda: ConnectionClosed(None, "", "failed"), discard=False)
    assert inbox.get(None).seq_id == 1
    try:
        inbox.get(None)
    except ConnectionClosed:
        pass
    else:
        raise AssertionError("the end was not raised once the queue was empty")


def test_a_replay_admitted_past_the_bound_is_released_by_the_quick_pop() -> None:
    """Signals of a replay the user asked for are let past the bound; popping them one by
    one (the quick path) gives the room back, so the bound holds again afterwards."""
    inbox = Inbox(2, dict)
    inbox.purge(WANTED[0], 0, 4)  # a replay of 1..4 is expected
    assert inbox.put_many([signal(n) for n in range(1, 5)]) == 0  # all four kept
    assert [inbox.get(None).seq_id for _ in range(4)] == [1, 2, 3, 4]
    assert inbox.put_many([signal(n) for n in range(5, 9)]) == 2  # the bound is back


# Heartbeats answered before the frames that came with them ------------------------------


def test_a_heartbeat_behind_other_frames_is_answered_and_nothing_moves() -> None:
    """One write brings 300 signals, a short signal whose text holds '"heartbeat"' (a false
    hint), a heartbeat, 99 more signals, a heartbeat and one too long to be looked for
    early (answered in its turn). Every signal still arrives once, in order, and each
    heartbeat is answered and counted once. (That the ack is at the server before user
    code sees the frames around it is tests/test_guarantees.py's; when it left the client
    relative to the parsing is a latency, measured by the benchmarks.)"""
    import c2sync

    from .conftest import API_KEY
    from .hostile import CONNECTED, WAIT, Conn, RawServer, text

    acks: list[str] = []
    done = threading.Event()

    def handler(conn: Conn) -> None:
        conn.accept()
        conn.sock.sendall(text(CONNECTED))
        (_, request), *_ = conn.read_frames(limit=0.5)
        request_id = json.loads(request)["request_id"]
        ack = frame(
            "subscription.ack",
            request_id=request_id,
            payload={"action": "subscribe", "channel": SIGNAL, "strategy_id": WANTED[0]},
        )
        conn.sock.sendall(text(ack))

        def sig(seq: int, note: str = "x" * 200, **extra: Any) -> bytes:
            payload = {"strategy_id": WANTED[0], "Note": note, **extra}
            return text(frame(SIGNAL, seq_id=seq, payload=payload))

        burst = b"".join(sig(n) for n in range(1, 301))
        burst += sig(301, note="", heartbeat="market")  # short; its text holds the hint
        burst += text(frame("heartbeat"))
        burst += b"".join(sig(n) for n in range(302, 401))
        burst += text(frame("heartbeat"))
        burst += text(frame("heartbeat", padding="p" * 300))  # too long to be looked for
        conn.sock.sendall(burst)
        for _, payload in conn.read_frames(limit=1.0):
            acks.append(json.loads(payload)["msg_type"])
        done.set()

    server = RawServer(handler)
    try:
        client = c2sync.connect(API_KEY, url=server.url, reconnect=False)
        try:
            client.subscribe(SIGNAL, WANTED[0], timeout=WAIT)
            seq_ids = [client.recv(timeout=WAIT).seq_id for _ in range(400)]
            assert seq_ids == list(range(1, 401))
            assert done.wait(WAIT)
            assert acks == ["heartbeat.ack"] * 3
            assert client.stats.heartbeats == client.stats.acks_sent == 3
            assert client.stats.malformed == 0 and client.stats.duplicates == 0
        finally:
            client.close()
    finally:
        server.close()


def test_an_ack_that_cannot_be_sent_loses_none_of_the_frames_read_with_it() -> None:
    """The link fails while the reader answers a heartbeat that came with 100 signals in
    one write: the signals the core took are handed out before the loss ends the client
    (their resume points already count them; before, they were dropped)."""
    import c2sync
    from c2sync._link import Link
    from c2sync._options import seams

    from .conftest import API_KEY
    from .hostile import CONNECTED, WAIT, Conn, RawServer, text

    class FailingAcks(Link):
        """The real link, except that sending a heartbeat.ack fails as a dead socket's
        send does."""

        def send(self, message: str, deadline: float | None = None) -> None:
            if '"heartbeat.ack"' in message:
                raise c2sync.ConnectionClosed(None, "", "send failed: broken pipe")
            super().send(message, deadline)

    def handler(conn: Conn) -> None:
        conn.accept()
        conn.sock.sendall(text(CONNECTED))
        (_, request), *_ = conn.read_frames(limit=0.5)
        ack = frame(
            "subscription.ack",
            request_id=json.loads(request)["request_id"],
            payload={"action": "subscribe", "channel": SIGNAL, "strategy_id": WANTED[0]},
        )
        burst = text(ack)
        burst += b"".join(
            text(frame(SIGNAL, seq_id=n, payload={"strategy_id": WANTED[0]})) for n in range(1, 51)
        )
        burst += text(frame("heartbeat"))
        burst += b"".join(
            text(frame(SIGNAL, seq_id=n, payload={"strategy_id": WANTED[0]}))
            for n in range(51, 101)
        )
        conn.sock.sendall(burst)
        conn.read_frames(limit=2.0)  # until the client goes

    server = RawServer(handler)
    try:
        with seams(link_factory=FailingAcks):
            client = c2sync.connect(API_KEY, url=server.url, reconnect=False)
        try:
            client.subscribe(SIGNAL, WANTED[0], timeout=WAIT)
            seq_ids = []
            try:
                while True:
                    seq_ids.append(client.recv(timeout=WAIT).seq_id)
            except c2sync.ConnectionClosed:
                pass
            assert seq_ids == list(range(1, 101))
        finally:
            client.close()
    finally:
        server.close()


# The client's own frames ---------------------------------------------------------------


def unmask(frame_bytes: bytes) -> tuple[int, int, bytes]:
    """(first byte, mask bit, payload) of one client frame, read by the RFC's rules."""
    first, second = frame_bytes[0], frame_bytes[1]
    size, pos = second & 0x7F, 2
    if size == 126:
        size, pos = int.from_bytes(frame_bytes[2:4], "big"), 4
    elif size == 127:
        size, pos = int.from_bytes(frame_bytes[2:10], "big"), 10
    key = frame_bytes[pos : pos + 4]
    body = frame_bytes[pos + 4 :]
    assert len(body) == size
    return first, second & 0x80, bytes(b ^ key[i % 4] for i, b in enumerate(body))


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([0x1, 0x2, 0x8, 0x9, 0xA]),
    st.one_of(
        st.binary(max_size=300),
        st.sampled_from([125, 126, 127, 65535, 65536, 70001]).map(
            lambda n: (bytes(range(256)) * (n // 256 + 1))[:n]
        ),
    ),
)
def test_client_frames_are_whole_masked_and_carry_the_payload(opcode: int, payload: bytes) -> None:
    """Every length form (7-bit, 16-bit, 64-bit), FIN set, the mask bit set, a fresh key,
    and the payload back after unmasking; text is sent as UTF-8."""
    from c2sync._link import client_frame

    first, masked, body = unmask(client_frame(opcode, payload))
    assert first == 0x80 | opcode and masked and body == payload
    first, masked, body = unmask(client_frame(0x1, "heartbeat.ack é"))
    assert body == "heartbeat.ack é".encode()
    keys = {client_frame(0x1, "x")[2:6] for _ in range(8)}
    assert len(keys) > 1  # a fresh key per frame


ID_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=2**70),
    st.sampled_from(["0", "7", "0042", "12345678", "1" * 21, "-3", " 7", "7a", "\u0661", ""]),
    st.floats(allow_nan=False),
    st.text(max_size=4),
    st.just({"nested": 1}),
)


@given(ID_VALUES, ID_VALUES, st.booleans(), st.booleans())
@settings(max_examples=300, deadline=None)
def test_signal_strategy_id_fast_path_matches_the_general_rule(
    lower: Any, upper: Any, has_lower: bool, has_upper: bool
) -> None:
    """A signal's strategy_id, read without calls for the usual integer forms, is what the
    general rule (``_payload_strategy_id``, which positions use) reads from any payload."""
    payload: dict[str, Any] = {}
    if has_lower:
        payload["strategy_id"] = lower
    if has_upper:
        payload["StrategyId"] = upper
    message = parse_message(frame(SIGNAL, seq_id=1, payload=payload))
    assert isinstance(message, Signal)
    assert message.strategy_id == codec._payload_strategy_id(message.payload)
    positions = parse_message(frame(POSITIONS, payload=payload))
    assert isinstance(positions, Positions)
    assert positions.strategy_id == message.strategy_id


@given(st.lists(st.sampled_from(
    ["2024-01-01T12:00:00.000Z", "2024-01-01T12:00:00.500Z", "2024-01-01T13:00:00+01:00",
     "not a time", "2024-13-01T00:00:00.000Z", 5, None]
), min_size=1, max_size=8))
@settings(max_examples=100, deadline=None)
def test_repeated_timestamps_read_as_parse_timestamp_reads_them(stamps: list[Any]) -> None:
    """The cached timestamp a burst shares is the one ``parse_timestamp`` gives, whatever
    came before it (a bad one reads as None, a good one after a bad one is still read)."""
    for stamp in stamps:
        message = parse_message(json.dumps({"msg_type": SIGNAL, "seq_id": 1, "timestamp": stamp}))
        try:
            expected = codec.parse_timestamp(stamp) if stamp is not None else None
        except ValueError:
            expected = None
        assert message.timestamp == expected


# What every heartbeat's ack costs ------------------------------------------------------


def iso_seconds(when: datetime) -> str:
    """The ack's timestamp as isoformat makes it, without the minute cache."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="seconds")[:19] + "Z"


day = timedelta(hours=23, minutes=59)
offsets = st.timedeltas(min_value=-day, max_value=day)
zones = st.one_of(st.none(), st.just(timezone.utc), offsets.map(timezone))


@given(st.lists(st.datetimes(timezones=zones), min_size=1, max_size=6))
@settings(max_examples=300, deadline=None)
def test_timestamps_are_formatted_as_isoformat_formats_them(times: list[datetime]) -> None:
    """The cached minute never leaks into another one: the same minute of another hour, day,
    month or year, naive times, other offsets, and the ends of the datetime range (where
    converting to UTC overflows, both ways fail alike)."""
    for when in times:
        try:
            expected = iso_seconds(when)
        except OverflowError:
            with pytest.raises(OverflowError):
                codec.format_timestamp(when)
            continue
        assert codec.format_timestamp(when) == expected


def test_the_same_minute_of_another_day_gets_its_own_text() -> None:
    base = datetime(2024, 1, 1, 12, 30, 5, 123456, tzinfo=timezone.utc)
    for days in (0, 1, 31, 366):
        later = base + timedelta(days=days)
        assert codec.format_timestamp(later) == iso_seconds(later)
    assert codec.format_timestamp(base.replace(microsecond=999999)).endswith(":05Z")


@pytest.mark.parametrize(
    "text",
    [
        '{"msg_type":"heartbeat","id":"msg_hb_1","timestamp":"2024-01-01T00:00:00.000Z","v":4}',
        '{"msg_type":"connection.connected","timestamp":"2024-01-01T00:00:00.000Z"}',
        '{"msg_type":"x.future","id":"m","seq_id":3,"request_id":"r","v":5,"payload":{"a":[1]}}',
        '{"msg_type":"heartbeat","id":7,"timestamp":"junk","v":"4"}',
        '{"msg_type":"strategy.signal","id":"s","seq_id":4,"payload":{"StrategyId":"9"}}',
        '{"msg_type":"strategy.signal","seq_id":5,"request_id":"r","payload":{"strategy_id":3}}',
        '{"msg_type":"strategy.signal","seq_id":0,"payload":{"strategy_id":3}}',
    ],
)
def test_messages_filled_by_slot_are_the_objects_the_keyword_path_builds(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Signal or a plain Message filled field by field (heartbeats take this path before
    their ack) equals, hashes, prints and pickles like the one attrs' __init__ builds from
    the same frame, on both decoders, and stays frozen (a signal that cannot be ordered
    stays a plain Message)."""
    for decode in (_decode.decode_pure, _decode.fast_decoder()):
        if decode is None:
            continue
        fast = codec._parse(text, decode)
        with monkeypatch.context() as patch:
            patch.setattr(codec, "_SLOTS", None)  # the keyword path
            rebuilt = codec._parse(text, decode)
        assert type(fast) is type(rebuilt)
        assert type(fast) is (Signal if '"seq_id":0' not in text and "signal" in text else Message)
        for field in attrs.fields(type(fast)):
            assert getattr(fast, field.name) == getattr(rebuilt, field.name), field.name
        assert fast == rebuilt and hash(fast) == hash(rebuilt) and repr(fast) == repr(rebuilt)
        assert attrs.asdict(fast, recurse=False) == attrs.asdict(rebuilt, recurse=False)
        assert pickle.loads(pickle.dumps(fast)) == fast
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            fast.msg_type = "other"  # type: ignore[misc]


def test_mask_keys_are_never_handed_out_twice_across_refills_and_threads() -> None:
    """Keys come 4 bytes at a time from blocks of the system's random source; none repeats
    (the odds of a repeat among 3,000 random 32-bit keys are 1 in 1,000: the test fails
    only if keys are reused), across refills of the block and with threads drawing at once."""
    keys = MaskKeys(batch=16)
    drawn: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [keys() for _ in range(500)]
        with lock:
            drawn.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(drawn) == 3000 and all(len(key) == 4 for key in drawn)
    assert len(set(drawn)) > 2990  # a few true collisions are possible; reuse is not


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_forked_child_does_not_reuse_its_parents_mask_keys() -> None:
    """After a fork the child draws fresh keys: the parent's next keys (already drawn into
    its block) never show up in the child."""
    mask_key()  # the block is drawn: a child would inherit it
    reader, writer = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: forking with threads
        pid = os.fork()
    if pid == 0:  # the child: report its next keys and leave at once
        try:
            os.write(writer, b"".join(mask_key() for _ in range(16)))
        finally:
            os._exit(0)
    os.close(writer)
    try:
        child = b""
        while len(child) < 64:
            chunk = os.read(reader, 64 - len(child))
            if not chunk:
                break
            child += chunk
    finally:
        os.close(reader)
        os.waitpid(pid, 0)
    parent = [mask_key() for _ in range(16)]
    assert len(child) == 64
    assert {child[i : i + 4] for i in range(0, 64, 4)}.isdisjoint(parent)
