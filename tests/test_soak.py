"""Soak, scaled for CI: a long stream through random faults loses and repeats nothing, and
leaves no thread, socket or memory growth behind (docs/api-contract.md "Reconnecting", "Closing").
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import psutil

import c2sync
from c2sync.emulator import Emulator

from .conftest import (
    API_KEY,
    OTHER_STRATEGY,
    STRATEGY,
    WAIT,
    MakeEmulator,
    c2sync_threads,
    client_sockets,
)

# CI-sized by default (about 30 s on 2 cores); C2SYNC_SOAK_SIGNALS=50000 runs the full soak.
SIGNALS = int(os.environ.get("C2SYNC_SOAK_SIGNALS", "15000"))
FAULTS = 20
THIRD_STRATEGY = 13579135
STRATEGIES = (STRATEGY, OTHER_STRATEGY, THIRD_STRATEGY)
SEED = 20_240_601
# The most signals published beyond what the user has seen: well inside the replay cap
# (1000), so a reconnect never needs more than the replay holds.
LAG = 400
RSS_SLACK = 50 * 2**20
POLICY = c2sync.ReconnectPolicy(
    initial=0.05, maximum=0.2, policy_violation_delay=0.3, overload_delay=0.2
)

FAULT_KINDS: dict[str, Callable[[Emulator], object]] = {
    "drop": lambda emulator: emulator.drop(),
    "close-1000": lambda emulator: emulator.close_connections(1000),
    "close-1001": lambda emulator: emulator.close_connections(1001),
    "close-1011": lambda emulator: emulator.close_connections(1011),
    "close-1008": lambda emulator: emulator.close_connections(1008),
    "stall": lambda emulator: emulator.stall(),
}


class _Progress:
    """How far the consumer got, and how many times the client came back OPEN."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen = 0
        self.opens = 0
        self.stop = False

    def on_state(self, state: c2sync.State) -> None:
        if state is c2sync.State.OPEN:
            with self.cond:
                self.opens += 1
                self.cond.notify_all()

    def saw(self, seq: int) -> None:
        with self.cond:
            self.seen = seq
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool]) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.stop or predicate(), WAIT):
                raise TimeoutError("the soak stopped making progress")


def test_soak_signals_of_3_strategies_through_20_random_faults(
    make_emulator: MakeEmulator,
) -> None:
    """Signals of 3 strategies through 20 random faults, a consumer pausing at random: each
    once, in order; threads and RSS flat."""
    emulator = make_emulator(strategies=set(STRATEGIES))
    rng = random.Random(SEED)
    pauses = random.Random(SEED + 1)
    points = sorted(rng.sample(range(500, SIGNALS - 500), FAULTS))
    # Every kind at least once, the rest drawn at random, in a random order.
    kinds = sorted(FAULT_KINDS) + [
        rng.choice(sorted(FAULT_KINDS)) for _ in range(FAULTS - len(FAULT_KINDS))
    ]
    rng.shuffle(kinds)
    progress = _Progress()
    # 2 s without a heartbeat, as conftest's make_client: a CPU stall of a second on a loaded
    # CI machine must not look like a dead server (the count of reconnects is exact).
    client = c2sync.Client(
        API_KEY, url=emulator.url, heartbeat_timeout=2.0, reconnect_policy=POLICY
    )
    client.on_state(progress.on_state)
    process = psutil.Process()
    thread_counts: list[int] = []
    errors: list[BaseException] = []

    def publish_with_faults() -> None:
        try:
            published, injected = 0, 0
            while published < SIGNALS and not progress.stop:
                progress.wait(lambda p=published: p - progress.seen < LAG)
                due = injected < FAULTS and published >= points[injected]
                # One fault at a time: the next waits until the client is back.
                if due and progress.opens == 1 + injected:
                    if injected and kinds[injected - 1] == "stall":
                        emulator.unstall()  # let the abandoned connection close
                    thread_counts.append(len(c2sync_threads()))
                    FAULT_KINDS[kinds[injected]](emulator)
                    injected += 1
                emulator.publish_signal(STRATEGIES[published % len(STRATEGIES)])
                published += 1
            progress.wait(lambda: progress.opens == 1 + FAULTS)
            thread_counts.append(len(c2sync_threads()))
        except BaseException as exc:
            errors.append(exc)

    with client:
        progress.wait(lambda: progress.opens == 1)  # the first connection
        for strategy_id in STRATEGIES:
            client.subscribe(c2sync.SIGNAL, strategy_id)
        publisher = threading.Thread(target=publish_with_faults, name="soak-publisher")
        try:
            expected = dict.fromkeys(STRATEGIES, 1)
            seen = 0
            rss_before = None
            publisher.start()
            while seen < SIGNALS:
                message = client.recv(timeout=WAIT)
                assert isinstance(message, c2sync.Signal), message
                want = expected[message.strategy_id or 0]
                assert message.seq_id == want, (
                    f"strategy {message.strategy_id}: got {message.seq_id}, expected {want}"
                )
                expected[message.strategy_id or 0] = want + 1
                seen += 1
                progress.saw(seen)
                if pauses.random() < 0.002:  # the consumer looks away now and then
                    time.sleep(pauses.uniform(0.02, 0.2))
                if seen == 1000:
                    rss_before = process.memory_info().rss  # past the warm-up
        finally:
            with progress.cond:
                progress.stop = True
                progress.cond.notify_all()
            publisher.join(WAIT)
        assert not errors, errors
        # Nothing after the last one: the next message is a marker published now.
        marker = emulator.publish_signal(STRATEGIES[0])
        after = client.recv(timeout=WAIT)
        assert (after.strategy_id, after.seq_id) == (STRATEGIES[0], marker)
        rss_after = process.memory_info().rss
        assert client.stats.reconnects == FAULTS
        connections = emulator.connections

    assert len(connections) == FAULTS + 1, "a fault caused more than one reconnect"
    for strategy_id in STRATEGIES:
        resumes = [
            r.resume_from
            for c in connections[1:]
            for r in c.subscription_requests
            if r.strategy_id == strategy_id
        ]
        assert len(resumes) == FAULTS and all(isinstance(r, int) and r > 0 for r in resumes)
        assert resumes == sorted(resumes), resumes
    print(
        f"\nsoak: {SIGNALS} signals, {FAULTS} faults: lost 0, duplicated 0 "
        f"(dropped as duplicates {client.stats.duplicates}), "
        f"RSS growth {(rss_after - rss_before) / 2**20:.1f} MB, threads {thread_counts[0]}"
    )
    assert len(set(thread_counts)) == 1, f"thread count changed across reconnects: {thread_counts}"
    assert rss_before is not None
    assert rss_after - rss_before < RSS_SLACK, f"RSS grew by {(rss_after - rss_before) >> 20} MB"
    assert c2sync_threads() == []


def test_100_connect_close_cycles_leave_no_thread_or_socket(emulator: Emulator) -> None:
    """100 connect/close cycles leave no thread, socket or memory behind; all closed 1000."""
    process = psutil.Process()
    rss_before = process.memory_info().rss
    for cycle in range(100):
        client = c2sync.connect(API_KEY, url=emulator.url, heartbeat_timeout=2.0)
        if cycle % 10 == 0:  # some cycles start every thread, the dispatcher included
            got = threading.Event()
            client.on(c2sync.SIGNAL, lambda message, got=got: got.set())
            client.subscribe(c2sync.SIGNAL, STRATEGY)
            emulator.publish_signal(STRATEGY)
            assert got.wait(WAIT)
        client.close()
        assert c2sync_threads() == [], f"cycle {cycle} left threads behind"
    emulator.wait_for_connections(0, WAIT)
    assert client_sockets(emulator) == []
    assert len(emulator.connections) == 100
    assert {c.close_code for c in emulator.connections} == {1000}
    assert process.memory_info().rss - rss_before < RSS_SLACK
