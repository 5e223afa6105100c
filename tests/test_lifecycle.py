"""The lifecycle: every transition once, in order, and the final error raised fresh.

Mirrors c2sync/_lifecycle.py. The state table is checked directly (it does no I/O); every
transition a user can see is then driven through a real client against the emulator and
checked through ``on_state``.
"""

from __future__ import annotations

import threading
import traceback
from typing import Any

import pytest

import c2sync
from c2sync import State
from c2sync._lifecycle import Lifecycle, fresh
from c2sync._link import Link
from c2sync._options import seams
from c2sync.emulator import Emulator

from .conftest import API_KEY, STRATEGY, WAIT, MakeEmulator

FAST = c2sync.ReconnectPolicy(initial=0.05, maximum=0.1)


class States:
    """Records on_state notices; waits (bounded) for a given sequence."""

    def __init__(self) -> None:
        self.seen: list[State] = []
        self._cond = threading.Condition()

    def __call__(self, state: State) -> None:
        with self._cond:
            self.seen.append(state)
            self._cond.notify_all()

    def wait_for(self, count: int) -> list[State]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.seen) >= count, WAIT), self.seen
            return list(self.seen)


class Gate:
    """A link factory that holds connection attempts after the first until opened."""

    def __init__(self) -> None:
        self.calls = 0
        self.opened = threading.Event()
        self.waiting = threading.Event()

    def __call__(self, options: Any) -> Link:
        self.calls += 1
        if self.calls > 1:
            self.waiting.set()
            self.opened.wait(WAIT)
        return Link(options)


# The table ---------------------------------------------------------------------------


def test_table_allows_only_its_transitions_and_notifies_each_once() -> None:
    """Transitions the table forbids (or any after close() began) do not happen."""
    notices: list[State] = []
    life = Lifecycle(notices.append)
    assert life.state is State.CLOSED
    assert not life.move(State.OPEN)  # CLOSED -> OPEN is not a transition
    life.begin_open()
    assert life.move(State.OPEN)
    assert not life.move(State.OPEN)  # no notice for a non-change
    assert life.move(State.RECONNECTING)
    assert life.begin_close()
    assert not life.begin_close()  # the first close() only
    assert not life.move(State.OPEN)  # a reconnect finishing after close() began
    assert life.end(ValueError("ignored: close() came first"))
    assert not life.end()
    assert life.failure is None
    assert notices == [State.CONNECTING, State.OPEN, State.RECONNECTING, State.CLOSED]
    with pytest.raises(RuntimeError):
        life.begin_open()  # a closed client cannot reopen


def test_first_failure_wins_and_is_raised_fresh_each_time() -> None:
    """Every caller gets its own copy of the final error, chained to the original."""
    life = Lifecycle(lambda state: None)
    life.begin_open()
    original = c2sync.ConnectionClosed(1011, "boom")
    life.end(original)
    life.end(ValueError("later"))
    raised = []
    for _ in range(3):
        with pytest.raises(c2sync.ConnectionClosed) as info:
            life.raise_failure()
        raised.append(info.value)
    assert all(r is not original and r.__cause__ is original for r in raised)
    assert len({id(r) for r in raised}) == 3
    assert all(r.code == 1011 and str(r) == str(original) for r in raised)
    # The traceback of each raise is its own: it does not grow with every raise.
    lengths = {len(traceback.format_exception(type(r), r, r.__traceback__)) for r in raised}
    assert len(lengths) == 1


def test_fresh_copies_errors_with_keyword_only_constructors() -> None:
    """Errors whose __init__ takes other arguments than args are copied whole."""
    error = c2sync.RateLimitError(
        429, {"retry-after": "7"}, '{"code":"RATE_LIMITED"}', retry_after=7.0
    )
    copy = fresh(error)
    assert type(copy) is c2sync.RateLimitError
    assert (copy.status, copy.retry_after, copy.code) == (429, 7.0, "RATE_LIMITED")
    assert str(copy) == str(error) and copy.__cause__ is error


# Through a real client -----------------------------------------------------------------


def make(emulator: Emulator, states: States, **options: Any) -> c2sync.Client:
    options.setdefault("reconnect_policy", FAST)
    client = c2sync.Client(API_KEY, url=emulator.url, heartbeat_timeout=5, **options)
    client.on_state(states)
    return client


def test_connect_drop_reconnect_then_close_from_a_callback(emulator: Emulator) -> None:
    """connect, drop, reconnect, close() from a callback: each state once, in order."""
    states = States()
    client = make(emulator, states)
    closed_by_callback = threading.Event()

    def on_signal(message: c2sync.Message) -> None:
        client.close()  # returns without waiting for the dispatcher, which is this thread
        closed_by_callback.set()

    try:
        client.connect()
        client.on(c2sync.SIGNAL, on_signal)
        assert states.wait_for(2) == [State.CONNECTING, State.OPEN]
        client.subscribe(c2sync.POSITIONS, STRATEGY)
        emulator.drop()
        states.wait_for(4)
        client.subscribe(c2sync.SIGNAL, STRATEGY)  # after the reconnect
        emulator.publish_signal(STRATEGY)
        assert closed_by_callback.wait(WAIT)
        assert states.wait_for(5) == [
            State.CONNECTING,
            State.OPEN,
            State.RECONNECTING,
            State.OPEN,
            State.CLOSED,
        ]
        client.run_forever()  # returns: closed cleanly, no error
    finally:
        client.close()
    assert states.seen.count(State.CLOSED) == 1


def test_giving_up_ends_closed_with_the_error(make_emulator: MakeEmulator) -> None:
    """Reconnects that are all refused end the client once, CLOSED, with the last error."""
    emulator = make_emulator()
    states = States()
    policy = c2sync.ReconnectPolicy(initial=0.01, maximum=0.01, max_attempts=2)
    client = make(emulator, states, reconnect_policy=policy)
    with client:
        emulator.refuse_next(10, 503, headers={"Retry-After": "0"})
        emulator.drop()
        assert states.wait_for(4) == [
            State.CONNECTING,
            State.OPEN,
            State.RECONNECTING,
            State.CLOSED,
        ]
        with pytest.raises(c2sync.ServiceUnavailableError) as first:
            client.run_forever()
        with pytest.raises(c2sync.ServiceUnavailableError) as second:
            client.recv(timeout=0)
        assert first.value is not second.value
        assert first.value.__cause__ is second.value.__cause__
    assert states.seen.count(State.CLOSED) == 1


def test_close_during_a_reconnect_never_reopens(emulator: Emulator) -> None:
    """close() while a reconnect attempt is under way: CLOSED once, no OPEN after it."""
    states = States()
    gate = Gate()
    with seams(link_factory=gate):
        client = make(emulator, states)
    client.connect()
    emulator.drop()
    assert gate.waiting.wait(WAIT)  # the reader is inside a connection attempt
    closer = threading.Thread(target=client.close)
    closer.start()
    gate.opened.set()  # the attempt goes on while close() runs
    closer.join(WAIT)
    assert not closer.is_alive()
    assert states.wait_for(4) == [
        State.CONNECTING,
        State.OPEN,
        State.RECONNECTING,
        State.CLOSED,
    ]
    assert client.state is State.CLOSED
    emulator.wait_for_connections(0, WAIT)


def test_a_failed_first_connect_is_closed_once_and_may_be_retried(
    make_emulator: MakeEmulator,
) -> None:
    """A refused connect(): CONNECTING then CLOSED; connect() again works."""
    emulator = make_emulator()
    states = States()
    client = make(emulator, states)
    emulator.refuse_next(1, 503)
    with pytest.raises(c2sync.ServiceUnavailableError):
        client.connect()
    assert states.wait_for(2) == [State.CONNECTING, State.CLOSED]
    with client:
        client.connect()
        assert states.wait_for(4)[2:] == [State.CONNECTING, State.OPEN]
    assert states.wait_for(5)[4] is State.CLOSED


def test_a_close_between_open_and_the_threads_starting_joins_them(emulator: Emulator) -> None:
    """close() landing after connect() moved to OPEN but before it started the reader finds
    the reader and joins it: no thread the client started outlives close()."""
    client = c2sync.Client(API_KEY, url=emulator.url, connect_timeout=WAIT)
    session = client._session
    start = session.watchdog.start
    closer: list[threading.Thread] = []
    closed = threading.Event()
    reader_at_close: list[object] = []

    def close() -> None:
        client.close()
        reader_at_close.append(session.reader.thread)
        closed.set()

    def close_in_the_window() -> None:
        # OPEN already; the reader not started yet: a close from another thread lands here.
        thread = threading.Thread(target=close)
        closer.append(thread)
        thread.start()
        # Without a fix close() returns now, before the reader exists; with one it waits
        # for the threads (so this bounded wait runs out, and open() goes on).
        closed.wait(1.0)
        start()

    session.watchdog.start = close_in_the_window  # type: ignore[method-assign]
    client.connect()
    closer[0].join(WAIT)
    assert closed.is_set() and not closer[0].is_alive()
    assert reader_at_close[0] is not None, "close() returned before the reader started"
    assert [t.name for t in session.threads() if t.is_alive()] == []
    assert client.state is State.CLOSED
