"""Nothing is lost across reconnects: every fault, every signal once and in order.

docs/api-contract.md "Reconnecting" and "Receiving"; docs/protocol.md sections 7 (seq_id,
resume, gap) and 9 (close codes). Each test publishes signals before, during and after a
fault and checks the user saw ``1..N`` exactly once, in order, and that the resubscription
asked for the right ``resume_from``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import c2sync
from c2sync._link import Link
from c2sync._options import seams
from c2sync.emulator import Emulator
from c2sync.emulator._records import ConnectionRecord, SubscriptionRequestRecord

from .conftest import (
    API_KEY,
    OTHER_STRATEGY,
    STRATEGY,
    WAIT,
    MakeEmulator,
)

State = c2sync.State

# The first attempt after a loss waits exactly BACKOFF (random() is pinned to 1.0).
BACKOFF = 1.0
POLICY_VIOLATION_DELAY = 1.6  # distinguishable from BACKOFF, even with SLACK
# A wait is measured on the reader thread itself, from its announcement of the wait
# (WaitMarks) to the start of the next attempt (ReconnectGate), so it is never under the real
# wait: the slack only keeps a clock's rounding from mattering.
SLACK = 0.1
OVERLOAD_DELAY = 0.2
RETRY_AFTER = 1  # seconds, sent on the 429
POLICY = c2sync.ReconnectPolicy(
    initial=BACKOFF,
    maximum=BACKOFF,
    random=lambda: 1.0,
    policy_violation_delay=POLICY_VIOLATION_DELAY,
    overload_delay=OVERLOAD_DELAY,
)
FAST = c2sync.ReconnectPolicy(
    initial=0.05, maximum=0.2, policy_violation_delay=0.3, overload_delay=0.2
)
# Ten emulator heartbeats, as conftest's make_client: these tests count reconnects exactly,
# and a CPU stall of a second on a loaded CI machine must not look like a dead server.
HEARTBEAT_TIMEOUT = 2.0


class Recorder:
    """What a client handed out and the states it reported, with bounded waits on both.

    In ``"recv"`` mode the test thread fills it by calling ``recv()``; in ``"callback"`` mode a
    ``"*"`` callback does, on the client's dispatcher thread.
    """

    def __init__(self, client: c2sync.Client, mode: str) -> None:
        self.client = client
        self.mode = mode
        # "slow" mode: the callback taking this seq_id blocks until `release` is set.
        self.block_at: int | None = None
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.cond = threading.Condition()
        self.messages: list[c2sync.Message] = []
        self.states: list[State] = []
        self.state_times: list[tuple[State, float]] = []

    def on_message(self, message: c2sync.Message) -> None:
        if self.mode == "slow" and message.seq_id == self.block_at:
            self.blocked.set()
            assert self.release.wait(WAIT), "the test never released the slow callback"
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def on_state(self, state: State) -> None:
        with self.cond:
            self.states.append(state)
            self.state_times.append((state, time.monotonic()))
            self.cond.notify_all()

    def signals(self, strategy_id: int = STRATEGY) -> list[int]:
        with self.cond:
            return [
                m.seq_id
                for m in self.messages
                if isinstance(m, c2sync.Signal) and m.strategy_id == strategy_id
            ]

    def last(self, strategy_id: int = STRATEGY) -> int:
        seqs = self.signals(strategy_id)
        return seqs[-1] if seqs else 0

    def take(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        """Receive (recv mode) or wait for the callbacks (callback mode) until ``predicate``."""
        if self.mode == "recv":  # "callback" and "slow" modes: the callbacks fill it
            deadline = time.monotonic() + timeout
            while not predicate():
                self.on_message(self.client.recv(timeout=max(0.0, deadline - time.monotonic())))
            return
        self.wait(predicate, timeout)

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), "condition not met in time"

    def wait_state(self, state: State, count: int = 1) -> float:
        """Wait until ``state`` was reported ``count`` times; return when it last was."""
        self.wait(lambda: self.states.count(state) >= count)
        with self.cond:
            return [t for s, t in self.state_times if s is state][count - 1]


class WaitMarks(logging.Handler):
    """When the client's reader thread announced each wait before a reconnect attempt.

    Just before it waits, the reader logs "<loss>; reconnecting" or "reconnect failed:
    <error>" (client.py). A handler runs inside that logging call, on the reader thread, so
    the monotonic time noted here comes before the wait starts: unlike a state callback
    (run later, on the dispatcher) or the emulator's closed_at (its own loop's latency), it
    cannot be late. The start of the next attempt (ReconnectGate) comes after the wait ends.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.marks: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != "c2sync":
            return
        text = record.getMessage()
        if text.endswith("; reconnecting") or text.startswith("reconnect failed"):
            self.marks.append((time.monotonic(), text))

    def last_before(self, when: float) -> tuple[float, str]:
        """The last wait announced before ``when`` (the start of an attempt)."""
        earlier = [mark for mark in self.marks if mark[0] < when]
        assert earlier, f"no wait announced before {when}: {self.marks}"
        return earlier[-1]


@pytest.fixture
def wait_marks() -> Iterator[WaitMarks]:
    handler = WaitMarks()
    logger = logging.getLogger("c2sync")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


class ReconnectGate:
    """Holds a client's connection attempts while the test keeps it shut, so the test can
    publish while the client is certainly away however long publishing takes (a backoff or
    a Retry-After is only a window of time), and notes when each attempt started.

    It is the client's link factory (the session's seam for tests): the reader calls it for
    every connection attempt, once its backoff wait is over; the time is noted there, on the
    reader thread, before the gate holds it. It starts open.
    """

    def __init__(self) -> None:
        self._opened = threading.Event()
        self._opened.set()
        self.attempts: list[float] = []  # monotonic start of each attempt
        self._attempted = threading.Condition()

    def __call__(self, options: Any) -> Link:
        with self._attempted:
            self.attempts.append(time.monotonic())
            self._attempted.notify_all()
        if not self._opened.wait(WAIT):
            raise TimeoutError("the test never let the client reconnect")
        return Link(options)

    def hold(self) -> None:
        self._opened.clear()

    def wait_attempts(self, count: int) -> None:
        """Wait until the client tried to connect ``count`` times (the first connect
        included): it is away, whatever its dispatcher thread is doing."""
        with self._attempted:
            assert self._attempted.wait_for(lambda: len(self.attempts) >= count, WAIT)

    def open(self) -> None:
        self._opened.set()

    def last_attempt_before(self, when: float) -> float:
        """When the last attempt started before ``when`` (a connection's opened_at)."""
        earlier = [t for t in self.attempts if t < when]
        assert earlier, f"no reconnection attempt before {when}: {self.attempts}"
        return earlier[-1]


OpenClient = Callable[..., tuple[c2sync.Client, Recorder]]


@pytest.fixture
def open_client(emulator: Emulator) -> Iterator[OpenClient]:
    """Build, watch and connect clients (states recorded from CONNECTING on); close them all."""
    clients: list[c2sync.Client] = []

    def make(mode: str = "recv", **options: Any) -> tuple[c2sync.Client, Recorder]:
        options.setdefault("url", emulator.url)
        options.setdefault("heartbeat_timeout", HEARTBEAT_TIMEOUT)
        options.setdefault("connect_timeout", 5.0)
        options.setdefault("reconnect_policy", POLICY)
        client = c2sync.Client(API_KEY, **options)
        clients.append(client)
        recorder = Recorder(client, mode)
        client.on_state(recorder.on_state)
        if mode in ("callback", "slow"):
            client.on("*", recorder.on_message)
        client.connect()
        return client, recorder

    yield make
    for client in clients:
        client.close()


def publish(emulator: Emulator, count: int, strategy_id: int = STRATEGY) -> list[int]:
    return [emulator.publish_signal(strategy_id) for _ in range(count)]


def eventually(emulator: Emulator, predicate: Callable[[], bool]) -> None:
    """Wait for a client-side condition; the emulator re-checks it at least at every
    heartbeat it sends (every HEARTBEAT_INTERVAL), so this is bounded, not a sleep loop."""
    emulator.wait_for(predicate, WAIT)


def wait_resubscribed(emulator: Emulator, requests: int) -> ConnectionRecord:
    """Wait until the latest connection (not the first) has received ``requests``
    subscription requests; return it."""
    emulator.wait_for(
        lambda: (
            len(emulator.connections) >= 2
            and len(emulator.connections[-1].subscription_requests) >= requests
        ),
        WAIT,
    )
    return emulator.connections[-1]


def requests_of(record: ConnectionRecord, channel: str) -> list[SubscriptionRequestRecord]:
    return [r for r in record.subscription_requests if r.channel == channel]


# The fault matrix ---------------------------------------------------------------------------


def _close_with(code: int) -> Callable[[Emulator], object]:
    return lambda emulator: emulator.close_connections(code, "going away for the test")


def _race_then_drop(emulator: Emulator) -> None:
    """The connection-limit race on the reconnect: upgraded, then closed at once with 1008."""
    emulator.accept_then_close(1)
    emulator.drop()


def _refuse_then_drop(emulator: Emulator) -> None:
    emulator.refuse_next(1, 429, headers={"Retry-After": str(RETRY_AFTER)})
    emulator.refuse_next(2, 503)
    emulator.drop()


FAULTS: dict[str, Callable[[Emulator], object]] = {
    "drop": lambda emulator: emulator.drop(),
    "close-1000": _close_with(1000),
    "close-1001": _close_with(1001),
    "close-1011": _close_with(1011),
    "close-1008": _close_with(1008),
    "heartbeats-stopped": lambda emulator: emulator.stop_heartbeats(),
    "stalled": lambda emulator: emulator.stall(),
    "refused-429-then-503": _refuse_then_drop,
    "accept-then-close-1008": _race_then_drop,
}


@pytest.mark.parametrize("mode", ["recv", "callback", "slow"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_signal_arrives_once_in_order_across_a_fault(
    open_client: OpenClient,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    wait_marks: WaitMarks,
    fault: str,
    mode: str,
) -> None:
    """Any lost connection: every signal once, in order; resumed from the highest held.

    recv: 6..8 queued, not read, at the fault; callback: all read; slow: the callback is
    stuck in 6 (7 and 8 wait in its backlog) through the whole fault."""
    caplog.set_level(logging.WARNING, logger="c2sync")
    gate = ReconnectGate()
    with seams(link_factory=gate):
        client, rec = open_client(mode)
    outcome: list[object] = []
    runner = threading.Thread(target=_run_forever, args=(client, outcome))
    if mode != "recv":  # a callback user blocks in run_forever(): a reconnect must not end it
        runner.start()
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    client.subscribe(c2sync.POSITIONS, STRATEGY)
    publish(emulator, 5)
    rec.take(lambda: rec.last() == 5)
    rec.block_at = 6
    publish(emulator, 3)  # 6..8
    if mode == "callback":
        rec.take(lambda: rec.last() == 8)
    else:
        # Arrived and held, not yet handed out (recv) or not yet run (slow): they survive the
        # reconnect, so it resumes after them, and nothing comes twice.
        eventually(emulator, lambda: client.stats.messages >= 8)
    if mode == "slow":
        assert rec.blocked.wait(WAIT)
    held = 8
    refused_before = emulator.handshakes_refused

    # The client reconnects only once 9..12 are published, so they can only come by the
    # replay, however long publishing takes.
    gate.hold()
    try:
        FAULTS[fault](emulator)
        if mode == "slow":  # the state notice waits behind the stuck callback
            gate.wait_attempts(2)
        else:
            rec.wait_state(State.RECONNECTING)
        if fault == "heartbeats-stopped":
            emulator.resume_heartbeats()  # so the new connection lives
        publish(emulator, 4)  # 9..12, while disconnected
        published_at = time.monotonic()
    finally:
        rec.release.set()
        gate.open()
    rec.wait_state(State.OPEN, count=2)
    again = wait_resubscribed(emulator, 2)
    emulator.publish_positions(STRATEGY)
    publish(emulator, 8)  # 13..20, live
    rec.take(lambda: rec.last() == 20)
    rec.take(lambda: any(isinstance(m, c2sync.Positions) for m in rec.messages))

    assert rec.signals() == list(range(1, 21))
    assert client.stats.reconnects == 1
    assert client.state is State.OPEN
    rec.wait(lambda: len(rec.states) >= 4)
    assert rec.states == [State.CONNECTING, State.OPEN, State.RECONNECTING, State.OPEN]

    first = emulator.connections[0]
    expected_connections = 3 if fault == "accept-then-close-1008" else 2
    assert len(emulator.connections) == expected_connections
    assert [r.resume_from for r in first.subscription_requests] == [None, None]
    (signal_request,) = requests_of(again, c2sync.SIGNAL)
    (positions_request,) = requests_of(again, c2sync.POSITIONS)
    assert signal_request.resume_from == held
    assert positions_request.resume_from is None
    assert (signal_request.error, positions_request.error) == (None, None)
    assert signal_request.at > published_at, "9..12 were not published while disconnected"
    assert again.subscriptions == {(c2sync.SIGNAL, STRATEGY), (c2sync.POSITIONS, STRATEGY)}
    # The new connection is healthy: its heartbeats are answered.
    emulator.wait_for(lambda: any(h.acked_at for h in emulator.connections[-1].heartbeats), WAIT)

    if fault in ("heartbeats-stopped", "stalled"):
        assert any("no heartbeat" in r.getMessage() for r in caplog.records)
    # The wait before the attempt that opened `again` (after the loss, or after the last
    # failed attempt: the 1008 race, the third refusal), both ends on the reader thread.
    attempt = gate.last_attempt_before(again.opened_at)
    waited_from, why = wait_marks.last_before(attempt)
    if fault == "close-1008":
        assert attempt - waited_from >= POLICY_VIOLATION_DELAY - SLACK
    elif fault == "accept-then-close-1008":
        race = emulator.connections[1]
        assert race.sent_close_code == 1008 and race.subscription_requests == ()
        emulator.wait_for(lambda: emulator.connections[1].closed_at is not None, WAIT)
        assert why.startswith("reconnect failed") and "1008" in why, why
        assert attempt - waited_from >= POLICY_VIOLATION_DELAY - SLACK
    else:
        assert attempt - waited_from >= BACKOFF - SLACK
    if fault.startswith("refused"):
        assert emulator.handshakes_refused - refused_before == 3
        # The reader thread logs each refusal as it happens: the 429 and the next attempt's
        # 503 are at least Retry-After apart.
        refusals = [mark for mark in wait_marks.marks if mark[1].startswith("reconnect failed")]
        assert ["429" in text for _, text in refusals] == [True, False, False]
        assert refusals[1][0] - refusals[0][0] >= RETRY_AFTER, "Retry-After ignored"
    if mode != "recv":
        assert runner.is_alive() and outcome == [], outcome
        client.close()
        runner.join(WAIT)
        assert outcome == ["returned"]


def _run_forever(client: c2sync.Client, outcome: list[object]) -> None:
    try:
        client.run_forever()
        outcome.append("returned")
    except BaseException as exc:
        outcome.append(exc)


# Final failures -----------------------------------------------------------------------------


def _consume_until_error(client: c2sync.Client, how: str, seen: list[Any]) -> None:
    try:
        if how == "recv":
            while True:
                seen.append(client.recv(timeout=WAIT))
        elif how == "iteration":
            for message in client:
                seen.append(message)
            seen.append("ended quietly")
        else:
            client.run_forever()
            seen.append("returned")
    except BaseException as exc:
        seen.append(exc)


@pytest.mark.parametrize("how", ["recv", "iteration", "run_forever"])
def test_401_on_reconnect_ends_the_client_without_retrying(
    open_client: OpenClient, emulator: Emulator, how: str
) -> None:
    """A 401 while reconnecting ends the client with AuthenticationError and no retry loop."""
    client, rec = open_client(reconnect_policy=FAST)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    publish(emulator, 3)
    eventually(emulator, lambda: client.stats.messages >= 3)
    seen: list[Any] = []
    worker = threading.Thread(target=_consume_until_error, args=(client, how, seen))
    worker.start()
    emulator.refuse_next(5, 401)
    emulator.drop()
    worker.join(WAIT)
    assert not worker.is_alive(), "the blocked call was not woken"
    error = seen[-1]
    assert isinstance(error, c2sync.AuthenticationError), seen
    assert error.status == 401
    if how != "run_forever":
        assert [m.seq_id for m in seen[:-1]] == [1, 2, 3]
    assert emulator.handshakes_refused == 1
    with pytest.raises(TimeoutError):  # nobody knocks again
        emulator.wait_for(lambda: emulator.handshakes_refused > 1, 1.0)
    assert emulator.handshakes_accepted == 1
    if how == "run_forever":  # nobody took the queued messages yet: they still come first
        assert [client.recv(timeout=0).seq_id for _ in range(3)] == [1, 2, 3]
    with pytest.raises(c2sync.AuthenticationError):
        client.recv(timeout=0)
    assert client.state is State.CLOSED  # set before the error is visible
    rec.wait(lambda: rec.states[-1:] == [State.CLOSED])
    assert State.OPEN not in rec.states[rec.states.index(State.RECONNECTING) :]


@pytest.mark.parametrize(
    ("fault", "expected", "code"),
    [
        ("drop", c2sync.ConnectionClosed, None),
        ("close-1001", c2sync.ConnectionClosed, 1001),
        ("heartbeats-stopped", c2sync.HeartbeatTimeout, None),
    ],
)
def test_without_reconnect_the_first_loss_ends_the_client(
    open_client: OpenClient,
    emulator: Emulator,
    fault: str,
    expected: type[Exception],
    code: int | None,
) -> None:
    """reconnect=False: queued messages are handed out, then the loss is raised, for good."""
    client, _ = open_client(reconnect=False)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    publish(emulator, 3)
    eventually(emulator, lambda: client.stats.messages >= 3)
    FAULTS[fault](emulator)
    assert [client.recv(timeout=WAIT).seq_id for _ in range(3)] == [1, 2, 3]
    with pytest.raises(expected) as info:
        client.recv(timeout=WAIT)
    assert client.state is State.CLOSED  # set before the error is visible
    assert type(info.value) is expected
    if code is not None:
        assert info.value.code == code
    with pytest.raises(expected):
        list(client)
    with pytest.raises(expected):
        client.run_forever()
    assert emulator.handshakes_accepted == 1
    emulator.wait_for_connections(0, WAIT)


# Replay limits and duplicates ---------------------------------------------------------------


@pytest.mark.parametrize("max_replay", [5, 1000])
def test_more_missed_than_the_replay_holds_gives_a_gap_then_live_signals(
    make_emulator: MakeEmulator, caplog: pytest.LogCaptureFixture, max_replay: int
) -> None:
    """More missed than the replay holds: the replay, a logged Gap, then live signals."""
    caplog.set_level(logging.WARNING, logger="c2sync")
    missed = max_replay + 15
    with make_emulator(max_replay=max_replay) as emulator:
        gate = ReconnectGate()
        with seams(link_factory=gate):
            client = c2sync.Client(
                API_KEY,
                url=emulator.url,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
                reconnect_policy=POLICY,
            )
        rec = Recorder(client, "recv")
        client.on_state(rec.on_state)
        with client:
            client.subscribe(c2sync.SIGNAL, STRATEGY)
            publish(emulator, 3)
            rec.take(lambda: rec.last() == 3)
            # Keep the client away until everything is published (1015 publishes can take
            # seconds on a loaded machine: longer than any backoff window).
            gate.hold()
            try:
                emulator.drop()
                rec.wait_state(State.RECONNECTING)
                publish(emulator, missed)  # 4 .. 3 + missed
                published_at = time.monotonic()
            finally:
                gate.open()
            rec.wait_state(State.OPEN, count=2)
            wait_resubscribed(emulator, 1)
            live = publish(emulator, 5)
            rec.take(lambda: rec.last() == live[-1])
            (request,) = emulator.connections[1].subscription_requests
            assert request.resume_from == 3 and request.at > published_at

    after = rec.messages[3:]
    replayed = list(range(4, 4 + max_replay))
    assert [m.seq_id for m in after[:max_replay]] == replayed
    gap = after[max_replay]
    assert isinstance(gap, c2sync.Gap)
    assert (gap.strategy_id, gap.from_seq) == (STRATEGY, 3)
    assert [m.seq_id for m in after[max_replay + 1 :]] == live
    assert any(
        r.levelno == logging.WARNING and "gap" in r.getMessage().lower() for r in caplog.records
    )


def test_queued_unread_signals_are_not_delivered_twice_after_the_replay(
    open_client: OpenClient, emulator: Emulator
) -> None:
    """Signals queued but unread at a drop survive it: the client resumes after them, so
    nothing is replayed twice."""
    client, rec = open_client(reconnect_policy=FAST)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    publish(emulator, 10)
    eventually(emulator, lambda: client.stats.messages >= 10)
    rec.take(lambda: rec.last() == 4)
    emulator.drop()
    rec.wait_state(State.OPEN, count=2)
    wait_resubscribed(emulator, 1)
    publish(emulator, 5)  # 11..15
    rec.take(lambda: rec.last() == 15)
    assert rec.signals() == list(range(1, 16))
    (request,) = emulator.connections[1].subscription_requests
    assert request.resume_from == 10  # the highest held, not the last read (4)
    assert client.stats.duplicates == 0


def test_a_signal_sent_twice_by_the_server_is_delivered_once(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """A frame repeating an earlier seq_id (the replay/live overlap) is dropped."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    publish(emulator, 3)
    assert [client.recv(timeout=WAIT).seq_id for _ in range(3)] == [1, 2, 3]
    for seq in (2, 3):
        frame = {
            "msg_type": "strategy.signal",
            "id": f"msg_again{seq}",
            "seq_id": seq,
            "timestamp": "2024-01-01T12:00:00Z",
            "v": 4,
            "payload": {"StrategyId": STRATEGY},
        }
        emulator.send_raw(json.dumps(frame))
    publish(emulator, 1)
    assert client.recv(timeout=WAIT).seq_id == 4
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.1)
    assert client.stats.duplicates == 2


def test_each_strategy_resumes_from_its_own_last_signal(
    open_client: OpenClient, emulator: Emulator
) -> None:
    """With two strategies, each resubscription resumes from that strategy's last seq_id."""
    client, rec = open_client(reconnect_policy=FAST)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    client.subscribe(c2sync.SIGNAL, OTHER_STRATEGY)
    publish(emulator, 4, STRATEGY)
    publish(emulator, 2, OTHER_STRATEGY)
    rec.take(lambda: rec.last(STRATEGY) == 4 and rec.last(OTHER_STRATEGY) == 2)
    emulator.close_connections(1001)
    rec.wait_state(State.OPEN, count=2)
    again = wait_resubscribed(emulator, 2)
    resumes = {r.strategy_id: r.resume_from for r in again.subscription_requests}
    assert resumes == {STRATEGY: 4, OTHER_STRATEGY: 2}
    publish(emulator, 2, STRATEGY)
    publish(emulator, 2, OTHER_STRATEGY)
    rec.take(lambda: rec.last(STRATEGY) == 6 and rec.last(OTHER_STRATEGY) == 4)
    assert rec.signals(STRATEGY) == [1, 2, 3, 4, 5, 6]
    assert rec.signals(OTHER_STRATEGY) == [1, 2, 3, 4]


def test_subscribe_while_reconnecting_completes_on_the_new_connection(
    open_client: OpenClient, emulator: Emulator
) -> None:
    """subscribe() called while the client is away waits for the reconnect, then succeeds."""
    client, rec = open_client()
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.refuse_next(1, 429, headers={"Retry-After": str(RETRY_AFTER)})
    emulator.drop()
    rec.wait_state(State.RECONNECTING)
    ack = client.subscribe(c2sync.SIGNAL, OTHER_STRATEGY, timeout=WAIT)
    assert ack.strategy_id == OTHER_STRATEGY
    assert client.state is State.OPEN
    assert client.subscriptions == {(c2sync.SIGNAL, STRATEGY), (c2sync.SIGNAL, OTHER_STRATEGY)}
    emulator.wait_for(
        lambda: (
            emulator.connections[-1].subscriptions
            == {(c2sync.SIGNAL, STRATEGY), (c2sync.SIGNAL, OTHER_STRATEGY)}
        ),
        WAIT,
    )
    publish(emulator, 1, OTHER_STRATEGY)
    message = client.recv(timeout=WAIT)
    assert (message.strategy_id, message.seq_id) == (OTHER_STRATEGY, 1)


def test_reconnecting_gives_up_after_max_attempts_with_the_last_error(
    open_client: OpenClient, emulator: Emulator
) -> None:
    """max_attempts failed reconnects end the client with the last error; attempts stop."""
    policy = c2sync.ReconnectPolicy(initial=0.05, maximum=0.05, overload_delay=0.05, max_attempts=3)
    client, _ = open_client(reconnect_policy=policy)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    publish(emulator, 2)
    eventually(emulator, lambda: client.stats.messages >= 2)
    emulator.refuse_next(10, 503)
    emulator.drop()
    assert [client.recv(timeout=WAIT).seq_id for _ in range(2)] == [1, 2]
    with pytest.raises(c2sync.ServiceUnavailableError):
        client.recv(timeout=WAIT)
    assert emulator.handshakes_refused == 3
    with pytest.raises(TimeoutError):
        emulator.wait_for(lambda: emulator.handshakes_refused > 3, 0.5)
    assert client.state is State.CLOSED


def test_subscribe_in_flight_when_the_connection_dies_completes_after_the_reconnect(
    open_client: OpenClient, emulator: Emulator
) -> None:
    """A subscribe() in flight when the connection dies is answered after the reconnect."""
    client, _ = open_client()
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.stall()  # the request is never read; the client declares the connection dead
    ack = client.subscribe(c2sync.SIGNAL, OTHER_STRATEGY, timeout=WAIT)
    assert ack.strategy_id == OTHER_STRATEGY
    assert (c2sync.SIGNAL, OTHER_STRATEGY) in client.subscriptions
    assert client.state is State.OPEN


# What the client holds at a drop, and seq_ids that order nothing ---------------------------


@pytest.mark.parametrize("mode", ["recv", "slow"])
@pytest.mark.parametrize("fault", ["drop", "close-1001", "heartbeats-stopped"])
def test_first_signal_unread_at_the_drop_loses_nothing(
    open_client: OpenClient, emulator: Emulator, fault: str, mode: str
) -> None:
    """Signal 1 arrives unread, the link drops, 2 and 3 are published meanwhile: 1, 2, 3."""
    gate = ReconnectGate()
    with seams(link_factory=gate):
        client, rec = open_client(mode, reconnect_policy=FAST)
    rec.block_at = 1
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    publish(emulator, 1)
    eventually(emulator, lambda: client.stats.messages >= 1)  # held, not handed out
    gate.hold()
    try:
        FAULTS[fault](emulator)
        gate.wait_attempts(2)
        if fault == "heartbeats-stopped":
            emulator.resume_heartbeats()
        publish(emulator, 2)  # 2 and 3, while away
    finally:
        rec.release.set()
        gate.open()
    again = wait_resubscribed(emulator, 1)
    rec.take(lambda: rec.last() == 3)
    assert rec.signals() == [1, 2, 3]
    (request,) = again.subscription_requests
    assert request.resume_from == 1
    publish(emulator, 1)
    rec.take(lambda: rec.last() == 4)
    assert rec.signals() == [1, 2, 3, 4]


INVALID_FRAMES = [
    {"seq_id": 0},
    {"seq_id": -5},
    {"seq_id": "7"},
    {"seq_id": 2.5},
    {"seq_id": True},
    {"seq_id": 2**70},
    {},  # missing
]


@pytest.mark.parametrize("valid_first", [False, True], ids=["invalid-only", "after-a-valid-one"])
def test_invalid_seq_ids_then_a_drop_restore_the_subscription(
    open_client: OpenClient,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    valid_first: bool,
) -> None:
    """Unusable seq_ids, then a drop: reconnected, resubscribed, reader alive, nothing lost."""
    caplog.set_level(logging.WARNING, logger="c2sync")
    client, rec = open_client(reconnect_policy=FAST)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    if valid_first:
        publish(emulator, 1)
    for extra in INVALID_FRAMES:
        frame = {"msg_type": "strategy.signal", "payload": {"StrategyId": STRATEGY}, **extra}
        emulator.send_raw(json.dumps(frame))
    rec.take(lambda: len(rec.messages) == len(INVALID_FRAMES) + valid_first)
    plain = rec.messages[valid_first:]
    assert all(type(m) is c2sync.Message and m.seq_id is None for m in plain)
    assert [m.raw.get("seq_id", "missing") for m in plain] == [
        f.get("seq_id", "missing") for f in INVALID_FRAMES
    ]
    emulator.drop()
    rec.wait_state(State.OPEN, count=2)
    again = wait_resubscribed(emulator, 1)
    (request,) = again.subscription_requests
    assert request.resume_from == (1 if valid_first else None)
    assert request.error is None
    live = publish(emulator, 2)
    rec.take(lambda: rec.last() == live[-1])
    assert rec.signals() == ([1, 2, 3] if valid_first else [1, 2])
    assert client.state is State.OPEN and client.stats.reconnects == 1
    assert any("invalid seq_id" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


def test_a_restarted_numbering_is_delivered_and_becomes_the_resume_point(
    open_client: OpenClient, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """5000 then the server's own 1, 2: all delivered, one WARNING, resumed from 2."""
    caplog.set_level(logging.WARNING, logger="c2sync")
    client, rec = open_client(reconnect_policy=FAST)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    frame = {"msg_type": "strategy.signal", "seq_id": 5000, "payload": {"StrategyId": STRATEGY}}
    emulator.send_raw(json.dumps(frame))
    publish(emulator, 2)
    rec.take(lambda: len(rec.signals()) == 3)
    assert rec.signals() == [5000, 1, 2]
    emulator.drop()
    again = wait_resubscribed(emulator, 1)
    assert again.subscription_requests[0].resume_from == 2
    restarts = [r for r in caplog.records if "restarted its numbering" in r.getMessage()]
    assert len(restarts) == 1 and restarts[0].levelno == logging.WARNING
