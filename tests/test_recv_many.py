"""client.recv_many(): batches in order, within their bounds and timeouts, across a
reconnect and after close; checkpoints count a batch at the next call; a client never
connected raises at once (docs/api-contract.md "Receiving")."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest

import c2sync
from c2sync.emulator import Emulator

from .conftest import API_KEY, STRATEGY, WAIT

FAST = c2sync.ReconnectPolicy(initial=0.05, maximum=0.2, policy_violation_delay=0.3)
MakeClient = Callable[..., c2sync.Client]


def wait_queued(emulator: Emulator, client: c2sync.Client, count: int) -> None:
    """Wait until ``count`` messages have reached the client's recv() queue.

    The reader counts a read's messages, then queues them, before it reads on; so once
    ``count`` are counted, the next heartbeat it answers proves they are queued."""
    emulator.wait_for(lambda: client.stats.messages >= count, WAIT)
    beats = client.stats.heartbeats
    emulator.wait_for(lambda: client.stats.heartbeats > beats, WAIT)


def seqs(messages: list[c2sync.Message]) -> list[int | None]:
    return [m.seq_id for m in messages]


class Saves:
    """A checkpoint that records each save."""

    def __init__(self) -> None:
        self.saved: list[tuple[int, int]] = []

    def load(self) -> dict[int, int]:
        return {}

    def save(self, strategy_id: int, seq_id: int) -> None:
        self.saved.append((strategy_id, seq_id))


def test_batches_keep_order_and_bound(emulator: Emulator, client: c2sync.Client) -> None:
    """What waits is handed out oldest first, at most max_messages at a time, never twice."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(25):
        emulator.publish_signal(STRATEGY)
    wait_queued(emulator, client, 25)
    assert seqs(client.recv_many(10)) == list(range(1, 11))
    assert seqs(client.recv_many(10)) == list(range(11, 21))
    assert seqs(client.recv_many(10)) == list(range(21, 26))
    assert client.recv_many(10) == []


def test_default_batch_is_one_hundred(emulator: Emulator, client: c2sync.Client) -> None:
    """recv_many() with no arguments takes up to 100 and does not wait."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(101):
        emulator.publish_signal(STRATEGY)
    wait_queued(emulator, client, 101)
    assert seqs(client.recv_many()) == list(range(1, 101))
    assert seqs(client.recv_many()) == [101]


def test_timeout_waits_for_the_first_only(emulator: Emulator, client: c2sync.Client) -> None:
    """Nothing waiting: timeout=0 returns [] at once; a longer timeout returns the first
    message that comes (not a full batch), and [] when none came."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    assert client.recv_many(timeout=0) == []
    assert client.recv_many(timeout=0.05) == []
    threading.Thread(target=emulator.publish_signal, args=(STRATEGY,), daemon=True).start()
    assert seqs(client.recv_many(100, timeout=WAIT)) == [1]


def test_recv_and_recv_many_share_one_queue(emulator: Emulator, client: c2sync.Client) -> None:
    """recv() and recv_many() take from the same queue, in order, without repeats."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(5):
        emulator.publish_signal(STRATEGY)
    wait_queued(emulator, client, 5)
    assert client.recv(timeout=WAIT).seq_id == 1
    assert seqs(client.recv_many(2)) == [2, 3]
    assert client.recv(timeout=WAIT).seq_id == 4
    assert seqs(client.recv_many()) == [5]


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "3", None])
def test_bad_max_messages_is_a_value_error(
    emulator: Emulator, client: c2sync.Client, bad: Any
) -> None:
    """A bad max_messages raises ValueError and takes nothing from the queue."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    wait_queued(emulator, client, 1)
    with pytest.raises(ValueError, match="max_messages"):
        client.recv_many(bad)
    assert seqs(client.recv_many()) == [1]


@pytest.mark.parametrize("bad", [-1, -0.5, True, "1", math.nan])
def test_bad_timeout_is_a_value_error(client: c2sync.Client, bad: Any) -> None:
    """A negative, boolean, textual or NaN timeout raises ValueError, for recv() too."""
    with pytest.raises(ValueError, match="timeout"):
        client.recv_many(10, timeout=bad)
    with pytest.raises(ValueError, match="timeout"):
        client.recv(timeout=bad)


def test_overflow_is_raised_once_then_the_newest_come(
    emulator: Emulator, make_client: MakeClient
) -> None:
    """After the queue overflowed, recv_many raises QueueOverflow once, as recv() does, then
    hands out the newest max_queue messages."""
    client = make_client(max_queue=5)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(8):
        emulator.publish_signal(STRATEGY)
    wait_queued(emulator, client, 8)
    with pytest.raises(c2sync.QueueOverflow) as caught:
        client.recv_many()
    assert caught.value.dropped == 3
    assert seqs(client.recv_many()) == [4, 5, 6, 7, 8]


def test_order_holds_across_a_reconnect(emulator: Emulator, make_client: MakeClient) -> None:
    """Signals queued before a lost connection and those published after it come out once
    each, in order; the resume point is the highest held (3), so nothing comes twice."""
    client = make_client(reconnect_policy=FAST)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(3):
        emulator.publish_signal(STRATEGY)
    wait_queued(emulator, client, 3)
    assert seqs(client.recv_many(1)) == [1]  # 2 and 3 still wait in the queue
    emulator.drop()
    emulator.wait_for(lambda: client.stats.reconnects == 1, WAIT)
    emulator.wait_for(lambda: len(emulator.connections[-1].subscription_requests) == 1, WAIT)
    for _ in range(2):
        emulator.publish_signal(STRATEGY)
    got: list[c2sync.Message] = []
    emulator.wait_for(lambda: bool(got.extend(client.recv_many(timeout=0))) or len(got) >= 4, WAIT)
    assert seqs(got) == [2, 3, 4, 5]
    stats = client.subscription_stats[(c2sync.SIGNAL, STRATEGY)]
    assert stats.resumes == 1  # restored with resume_from=3, the highest seq_id held
    assert stats.duplicates == 0  # 2 and 3 were still queued: not asked for again
    assert emulator.connections[-1].subscription_requests[0].resume_from == 3
    assert (stats.messages, stats.last_seq) == (5, 5)


def test_after_close_it_raises_connection_closed(
    emulator: Emulator, client: c2sync.Client
) -> None:
    """After close(), recv_many raises ConnectionClosed, also when it was blocked then;
    what was queued is not handed out."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    blocked: list[BaseException] = []

    def wait_forever() -> None:
        try:
            client.recv_many(timeout=None)
        except BaseException as exc:
            blocked.append(exc)

    waiter = threading.Thread(target=wait_forever, daemon=True)
    waiter.start()
    client.close()
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert len(blocked) == 1 and isinstance(blocked[0], c2sync.ConnectionClosed)
    with pytest.raises(c2sync.ConnectionClosed):
        client.recv_many()


def test_a_failed_connection_hands_out_the_queue_then_raises(
    emulator: Emulator, make_client: MakeClient
) -> None:
    """With reconnect off, a lost connection lets recv_many hand out what was queued, then
    raise the loss."""
    client = make_client(reconnect=False)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(2):
        emulator.publish_signal(STRATEGY)
    wait_queued(emulator, client, 2)
    emulator.close_connections(1011, "bye")
    emulator.wait_for(lambda: client.state is c2sync.State.CLOSED, WAIT)
    assert seqs(client.recv_many()) == [1, 2]
    with pytest.raises(c2sync.ConnectionClosed) as caught:
        client.recv_many()
    assert caught.value.code == 1011


def test_a_batch_is_checkpointed_at_the_next_call(
    emulator: Emulator, make_client: MakeClient
) -> None:
    """A batch counts as processed at the next receive call (its last signal per strategy
    is saved), not when it is handed out."""
    saves = Saves()
    client = make_client(checkpoint=saves)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(4):
        emulator.publish_signal(STRATEGY)
    wait_queued(emulator, client, 4)
    assert seqs(client.recv_many(3)) == [1, 2, 3]
    assert saves.saved == []
    assert seqs(client.recv_many(3)) == [4]
    assert saves.saved == [(STRATEGY, 3)]
    assert client.recv_many() == []
    assert saves.saved == [(STRATEGY, 3), (STRATEGY, 4)]


def test_a_clean_close_checkpoints_the_batch_in_hand(
    emulator: Emulator, make_client: MakeClient
) -> None:
    """close() counts the batch in hand as processed; leaving a with block on an exception
    does not (it comes again after a restart)."""
    saves = Saves()
    client = make_client(checkpoint=saves)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(2):
        emulator.publish_signal(STRATEGY)
    wait_queued(emulator, client, 2)
    assert seqs(client.recv_many()) == [1, 2]
    client.close()
    assert saves.saved == [(STRATEGY, 2)]

    crashed = Saves()
    other = make_client(checkpoint=crashed)
    other.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    wait_queued(emulator, other, 1)
    with pytest.raises(RuntimeError), other:
        assert seqs(other.recv_many()) == [3]
        raise RuntimeError("the user's code failed")
    assert crashed.saved == []


def test_duplicates_never_reach_a_batch(emulator: Emulator, client: c2sync.Client) -> None:
    """A signal repeating a seq_id already held is dropped, counted per subscription."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(2):
        emulator.publish_signal(STRATEGY)
    again = {"msg_type": "strategy.signal", "seq_id": 2, "payload": {"StrategyId": STRATEGY}}
    emulator.send_raw(json.dumps(again))
    emulator.publish_signal(STRATEGY)
    wait_queued(emulator, client, 3)
    assert seqs(client.recv_many()) == [1, 2, 3]
    assert client.subscription_stats[(c2sync.SIGNAL, STRATEGY)].duplicates == 1


# A client never connected ------------------------------------------------------------


def never_connected_calls(client: c2sync.Client) -> dict[str, Callable[[], object]]:
    return {
        "recv": lambda: client.recv(),
        "recv_many": lambda: client.recv_many(timeout=None),
        "iteration": lambda: next(iter(client)),
        "subscribe": lambda: client.subscribe(c2sync.SIGNAL, STRATEGY),
        "unsubscribe": lambda: client.unsubscribe(c2sync.SIGNAL, STRATEGY),
    }


@pytest.mark.parametrize("call", ["recv", "recv_many", "iteration", "subscribe", "unsubscribe"])
def test_never_connected_raises_at_once(emulator: Emulator, call: str) -> None:
    """On a Client never connected, receiving or subscribing raises C2Error("not
    connected: call connect()") at once instead of blocking."""
    client = c2sync.Client(API_KEY, url=emulator.url)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            never_connected_calls(client)[call]()
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(WAIT / 2)  # below subscribe()'s own 10 s wait, so blocking is caught
    try:
        assert not worker.is_alive(), f"{call} blocked on a client never connected"
        assert len(outcome) == 1
        assert type(outcome[0]) is c2sync.C2Error
        assert "not connected: call connect()" in str(outcome[0])
    finally:
        client.close()  # also wakes a call that blocked
        worker.join(WAIT)


def test_never_connected_still_checks_arguments_first() -> None:
    """A bad argument is a ValueError even on a client never connected."""
    client = c2sync.Client(API_KEY, url="ws://127.0.0.1:9/ws")
    with pytest.raises(ValueError):
        client.subscribe("no.such.channel", STRATEGY)
    with pytest.raises(ValueError):
        client.recv_many(0)


def test_closed_before_connecting_is_closed_not_unconnected() -> None:
    """A client closed before it ever connected says it is closed."""
    client = c2sync.Client(API_KEY, url="ws://127.0.0.1:9/ws")
    client.close()
    with pytest.raises(c2sync.ConnectionClosed):
        client.recv_many()
    assert list(client) == []
