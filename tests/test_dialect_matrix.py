"""The whole user flow under every reading of the docs the emulator can play.

docs/api-contract.md "Servers that read the docs differently": whichever reading the real
server has of the points the public docs leave open, the user's flow (connect, subscribe to
two strategies' signals and one positions channel, receive, lose the link while signals are
published, resume, unsubscribe) loses and repeats nothing. Each reading the emulator plays
(``c2sync.emulator.DIALECTS``: every value of every point but its default), a few pairs of
them, and the default reading run the same flow; every signal arrives once and in order, no
false ``Gap``, every ``subscribe()``/``unsubscribe()`` returns, and the client is OPEN at
the end. Then a server that starts refusing one strategy after a reconnect, under the
readings that change how refusals look.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

import c2sync
from c2sync.emulator import DIALECTS, Emulator

from .conftest import API_KEY, OTHER_STRATEGY, STRATEGY, WAIT, MakeEmulator

A, B = STRATEGY, OTHER_STRATEGY

# The integer points: a value other than the default for each.
_INTEGERS: dict[str, tuple[int, ...]] = {"v": (5,), "heartbeat_close_code": (4000, 1011)}

READINGS: list[dict[str, Any]] = [{}] + [
    {name: value}
    for name, point in DIALECTS.items()
    for value in (point.values or _INTEGERS[name])
    if value != point.default
]
# Readings that meet in one code path of the client: each pair at once.
PAIRS: list[dict[str, Any]] = [
    {"resume_from": "string", "ack_request_id": "absent"},
    {"resume_from": "string", "errors": "list"},
    {"resume_from": "number", "replay": "before_ack"},
    {"resume_from": "string", "replay": "before_ack", "ack_payload": "absent"},
    {"ack_request_id": "absent", "ack_payload": "absent"},
    {"seq_scope": "global", "replay": "before_ack"},
    {"frames": "binary", "pings": "on"},
    {"timestamps": "strict", "extra_fields": "present", "v": 5},
    {"positions_seq": "present", "seq_scope": "global"},
]


def _name(dialect: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in dialect.items()) or "default"


def test_every_reading_is_covered() -> None:
    """A point added to DIALECTS is in the matrix without anyone editing it."""
    covered = {name for reading in READINGS for name in reading}
    assert covered == set(DIALECTS)


class Flow:
    """What one client received, by kind, read with recv() (every wait bounded)."""

    def __init__(self, client: c2sync.Client) -> None:
        self.client = client
        self.signals: dict[int, list[int]] = {A: [], B: []}
        self.positions: list[c2sync.Positions] = []
        self.others: list[c2sync.Message] = []

    def read_until(self, done: Any) -> None:
        """Read until ``done()``; one total bound (a server repeating itself for ever
        cannot keep it reading)."""
        deadline = time.monotonic() + WAIT
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, f"not done within {WAIT} s: {self.signals} {self.others}"
            message = self.client.recv(timeout=left)
            if isinstance(message, c2sync.Signal):
                assert message.strategy_id is not None
                self.signals[message.strategy_id].append(message.seq_id)
            elif isinstance(message, c2sync.Positions):
                self.positions.append(message)
            else:
                self.others.append(message)


def user_flow(emulator: Emulator, dialect: Mapping[str, Any]) -> None:
    published: dict[int, list[int]] = {A: [], B: []}

    def publish(count: int, *strategies: int) -> None:
        for _ in range(count):
            for strategy in strategies:
                published[strategy].append(emulator.publish_signal(strategy))

    with c2sync.connect(
        API_KEY, url=emulator.url, heartbeat_timeout=2.0, connect_timeout=WAIT
    ) as client:
        flow = Flow(client)
        for channel, strategy in ((c2sync.SIGNAL, A), (c2sync.SIGNAL, B), (c2sync.POSITIONS, A)):
            ack = client.subscribe(channel, strategy, timeout=WAIT)
            assert isinstance(ack, c2sync.SubscriptionAck)
        publish(3, A, B)
        emulator.publish_positions(A)
        flow.read_until(lambda: flow.positions and flow.signals == published)
        assert all(p.strategy_id == A for p in flow.positions)

        # The link is lost (abruptly, or closed with the reading's close code) while
        # signals are published; the client resumes and the replay fills the hole.
        code = dialect.get("heartbeat_close_code")
        if code is None:
            assert emulator.drop() == 1
        else:
            assert emulator.close_connections(code, "heartbeat timeout") == 1
        publish(3, A, B)
        flow.read_until(lambda: flow.signals == published)
        publish(2, A, B)  # live again
        flow.read_until(lambda: flow.signals == published)
        assert client.stats.reconnects >= 1

        unsubscribed = client.unsubscribe(c2sync.SIGNAL, B, timeout=WAIT)
        assert isinstance(unsubscribed, c2sync.SubscriptionAck)
        unasked = emulator.publish_signal(B)  # nobody asked: must not arrive
        publish(1, A)  # the marker: once it is in, B's would have been too
        flow.read_until(lambda: flow.signals[A] == published[A])

        assert flow.signals == published, "every signal once, in order"
        assert [m for m in flow.others if isinstance(m, c2sync.Gap)] == [], "no false gap"
        assert flow.others == [], flow.others
        assert client.state is c2sync.State.OPEN
        assert client.subscriptions == {(c2sync.SIGNAL, A), (c2sync.POSITIONS, A)}

        # Replays the user asks for, whether the server sends them before or after the
        # ack: B again from two back (a pair not held), A healed from three back (held).
        b_from, a_from = published[B][-2], published[A][-3]
        received = {k: list(v) for k, v in flow.signals.items()}
        published[B].append(unasked)
        client.subscribe(c2sync.SIGNAL, B, resume_from=b_from, timeout=WAIT)
        client.subscribe(c2sync.SIGNAL, A, resume_from=a_from, timeout=WAIT)
        publish(1, A, B)
        expected = {
            A: received[A] + [s for s in published[A] if s > a_from],
            B: received[B] + [s for s in published[B] if s > b_from],
        }
        flow.read_until(lambda: flow.signals == expected)
        assert flow.others == [], flow.others
        assert client.state is c2sync.State.OPEN
        assert client.stats.malformed == 0 and client.stats.dropped == 0


@pytest.mark.parametrize("dialect", READINGS + PAIRS, ids=_name)
def test_the_user_flow_under_every_reading(
    make_emulator: MakeEmulator, dialect: dict[str, Any]
) -> None:
    """Connect, subscribe, receive, lose the link, resume, unsubscribe: nothing lost or
    repeated, whichever reading the server has."""
    user_flow(make_emulator(dialect=dialect), dialect)


@pytest.mark.parametrize(
    "dialect",
    [{}, {"errors": "list"}, {"ack_request_id": "absent"}, {"frames": "binary"},
     {"resume_from": "string", "ack_request_id": "absent", "errors": "list"}],
    ids=_name,
)
def test_a_strategy_refused_after_a_reconnect_is_told_and_the_rest_streams_on(
    make_emulator: MakeEmulator, dialect: dict[str, Any]
) -> None:
    """The server starts refusing A after a reconnect: the user's recv() gets the
    ErrorMessage, on_error is called once with a ServerError naming the pair, A leaves
    subscriptions and subscription_stats, and B keeps streaming."""
    emulator = make_emulator(dialect=dialect)
    refused: list[c2sync.ServerError] = []
    told = threading.Event()

    def on_error(exc: BaseException) -> None:
        if isinstance(exc, c2sync.ServerError):
            refused.append(exc)
            told.set()

    with c2sync.connect(
        API_KEY, url=emulator.url, heartbeat_timeout=2.0, connect_timeout=WAIT
    ) as client:
        client.on_error(on_error)
        client.subscribe(c2sync.SIGNAL, A, timeout=WAIT)
        client.subscribe(c2sync.SIGNAL, B, timeout=WAIT)
        first = [emulator.publish_signal(A), emulator.publish_signal(B)]
        flow = Flow(client)
        flow.read_until(lambda: flow.signals == {A: first[:1], B: first[1:]})
        emulator.forbid(A)
        assert emulator.drop() == 1
        later = emulator.publish_signal(B)
        flow.read_until(lambda: flow.signals[B] == [first[1], later])
        flow.read_until(lambda: flow.others)
        (error,) = flow.others
        assert isinstance(error, c2sync.ErrorMessage) and error.code == "FORBIDDEN"
        assert told.wait(WAIT)
        assert client.subscriptions == {(c2sync.SIGNAL, B)}
        assert set(client.subscription_stats) == {(c2sync.SIGNAL, B)}
        live = emulator.publish_signal(B)
        flow.read_until(lambda: flow.signals[B][-1:] == [live])
        assert flow.signals[A] == first[:1]
        assert client.state is c2sync.State.OPEN
    assert len(refused) == 1
    assert (refused[0].channel, refused[0].strategy_id, refused[0].code) == (
        c2sync.SIGNAL, A, "FORBIDDEN"
    )
