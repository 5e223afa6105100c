"""Back-pressure: a full recv() queue drops the oldest, says so once, and loses nothing
silently (docs/api-contract.md "Back-pressure"); reading, and so heartbeats, never stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pytest

import c2sync
from c2sync.emulator import Emulator

from .conftest import STRATEGY, WAIT

MakeClient = Callable[..., c2sync.Client]
MAX_QUEUE = 10
BURST = 50
READ_FIRST = 5  # signals read before the burst, so there is a resume point above 0
# Seconds between a heartbeat and its ack: generous for a loaded CI machine, while a reader
# that waited for room in the full queue would not answer at all.
ACK_BOUND = 1.0


def _overflow(client: c2sync.Client, emulator: Emulator) -> None:
    """Read 1..READ_FIRST, then publish BURST signals nobody reads and wait until the client
    has dropped what does not fit."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(READ_FIRST):
        emulator.publish_signal(STRATEGY)
    assert [client.recv(timeout=WAIT).seq_id for _ in range(READ_FIRST)] == [1, 2, 3, 4, 5]
    for _ in range(BURST):
        emulator.publish_signal(STRATEGY)
    # Re-checked at every heartbeat the emulator sends: bounded, no sleep.
    emulator.wait_for(lambda: client.stats.dropped >= BURST - MAX_QUEUE, WAIT)


def test_overflow_raises_once_keeps_the_newest_and_heartbeats_stay_on_time(
    make_client: MakeClient, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Overflow: heartbeats stay on time, QueueOverflow once, then the newest and live flow."""
    caplog.set_level(logging.WARNING, logger="c2sync")
    client = make_client(max_queue=MAX_QUEUE)
    _overflow(client, emulator)
    # Nobody reads; the reader thread must still answer every heartbeat at once.
    record = emulator.connections[0]
    beats_before = len(record.heartbeats)
    emulator.wait_for(
        lambda: (
            sum(1 for h in emulator.connections[0].heartbeats[beats_before:] if h.acked_at) >= 5
        ),
        WAIT,
    )
    delays = [
        h.acked_at - h.sent_at for h in emulator.connections[0].heartbeats if h.acked_at is not None
    ]
    assert delays and max(delays) < ACK_BOUND, delays
    assert emulator.open_connections == 1

    with pytest.raises(c2sync.QueueOverflow) as info:
        client.recv(timeout=WAIT)
    first_kept = READ_FIRST + BURST - MAX_QUEUE + 1
    assert info.value.dropped == BURST - MAX_QUEUE
    assert info.value.last_seq == {STRATEGY: READ_FIRST}
    assert client.stats.dropped == BURST - MAX_QUEUE
    kept = [client.recv(timeout=WAIT).seq_id for _ in range(MAX_QUEUE)]
    assert kept == list(range(first_kept, READ_FIRST + BURST + 1))
    live = emulator.publish_signal(STRATEGY)
    assert client.recv(timeout=WAIT).seq_id == live  # raised once: no second QueueOverflow
    warnings = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert client.state is c2sync.State.OPEN


def test_resubscribing_from_last_seq_recovers_the_dropped_signals(
    make_client: MakeClient, emulator: Emulator
) -> None:
    """resume_from=QueueOverflow.last_seq replays the dropped signals once, in order, via recv()."""
    client = make_client(max_queue=MAX_QUEUE)
    _overflow(client, emulator)
    with pytest.raises(c2sync.QueueOverflow) as info:
        client.recv(timeout=WAIT)
    client.subscribe(c2sync.SIGNAL, STRATEGY, resume_from=info.value.last_seq[STRATEGY])
    live = [emulator.publish_signal(STRATEGY) for _ in range(3)]
    seen = [client.recv(timeout=WAIT).seq_id for _ in range(BURST + len(live))]
    assert seen == list(range(READ_FIRST + 1, live[-1] + 1))
    # Nothing more (a second replay, a duplicate) came before a marker published after.
    marker = emulator.publish_signal(STRATEGY)
    assert client.recv(timeout=WAIT).seq_id == marker


def test_resubscribing_from_last_seq_recovers_when_the_replay_is_read_as_it_comes(
    make_client: MakeClient, emulator: Emulator
) -> None:
    """resume_from=QueueOverflow.last_seq recovers every dropped signal for a callback reader."""
    client = make_client(max_queue=MAX_QUEUE)
    _overflow(client, emulator)
    with pytest.raises(c2sync.QueueOverflow) as info:
        client.recv(timeout=WAIT)
    seen: list[int] = []
    # A callback is not bounded by max_queue: it takes the replay as it comes.
    done = threading.Event()
    last = READ_FIRST + BURST + 3

    def on_signal(message: c2sync.Message) -> None:
        seen.append(message.seq_id or 0)
        if message.seq_id == last:
            done.set()

    client.on(c2sync.SIGNAL, on_signal)
    client.subscribe(c2sync.SIGNAL, STRATEGY, resume_from=info.value.last_seq[STRATEGY])
    for _ in range(3):
        emulator.publish_signal(STRATEGY)
    assert done.wait(WAIT)
    assert seen == list(range(READ_FIRST + 1, last + 1))
    assert client.stats.dropped == BURST - MAX_QUEUE  # nothing more was dropped


def test_overflow_last_seq_is_the_last_handed_out_not_the_last_received(
    make_client: MakeClient, emulator: Emulator
) -> None:
    """QueueOverflow.last_seq names the last seq_id handed out, not the last one received."""
    client = make_client(max_queue=3)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    assert client.recv(timeout=WAIT).seq_id == 1
    for _ in range(6):
        emulator.publish_signal(STRATEGY)
    emulator.wait_for(lambda: client.stats.dropped >= 3, WAIT)
    with pytest.raises(c2sync.QueueOverflow) as info:
        client.recv(timeout=WAIT)
    assert info.value.dropped == 3
    assert info.value.last_seq == {STRATEGY: 1}
    assert [client.recv(timeout=WAIT).seq_id for _ in range(3)] == [5, 6, 7]
