"""``c2sync demo``: the whole flow in about ten seconds, no key, no network.

Starts the emulator in this process (short heartbeats), connects a :class:`~c2sync.Client`
to it and narrates: signals arriving, heartbeats answered, a dropped connection with signals
published while disconnected, and the resume without loss. Runs on the calling thread; the
client's callbacks print from its dispatcher thread, every line through one lock. Every wait
is bounded (``_DEMO_WAIT``): a demo that cannot show what it promises fails with
:class:`DemoFailed` rather than hang.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from ._format import describe_order
from .client import Client, State
from .messages import POSITIONS, SIGNAL, Message, Signal
from .reconnect import ReconnectPolicy

__all__ = ["EMULATOR_MISSING", "DemoFailed", "run"]

#: What to do when the emulator's dependency is not installed.
EMULATOR_MISSING = (
    "the emulator needs the 'websockets' package: from a checkout of c2sync, "
    'pip install ".[emulator]"'
)


class DemoFailed(Exception):
    """The demo could not show what it promises (one line, for the command's stderr)."""


_DEMO_HEARTBEAT = 0.5  # seconds between the demo emulator's heartbeats (30 s on the service)
_DEMO_BACKOFF = 1.5  # seconds the demo client waits before reconnecting
_DEMO_WAIT = 10.0  # the bound on every wait: reached only if something is broken
_DEMO_PACE = 0.6  # seconds between steps, so a human can follow


class _Demo:
    """The demo's shared state: what arrived, and events to wait on (bounded)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.seq_ids: list[int] = []
        self.positions = 0
        self.states: list[State] = []
        self.offline: set[int] = set()

    def say(self, text: str) -> None:
        with self.lock:
            elapsed = time.monotonic() - self.started
            print(f"[{elapsed:5.1f}s] {text}", file=self.out, flush=True)

    def wait(self, what: str, predicate: Callable[[], bool]) -> None:
        with self.changed:
            if not self.changed.wait_for(predicate, _DEMO_WAIT):
                raise DemoFailed(f"demo failed: {what} did not happen in time")

    def wait_signal(self, seq_id: int) -> None:
        self.wait(f"signal {seq_id}", lambda: seq_id in self.seq_ids)

    def on_signal(self, message: Message) -> None:
        assert isinstance(message, Signal)
        note = (
            "  (published while disconnected; replayed)" if message.seq_id in self.offline else ""
        )
        self.say(f"  signal   seq_id={message.seq_id:<3} {describe_order(message.payload)}{note}")
        with self.changed:
            self.seq_ids.append(message.seq_id)
            self.changed.notify_all()

    def on_positions(self, message: Message) -> None:
        count = len(message.payload.get("Positions") or ())
        self.say(f"  positions update: {count} open positions")
        with self.changed:
            self.positions += 1
            self.changed.notify_all()

    def on_gap(self, message: Message) -> None:
        self.say(f"  GAP: {message}")

    def on_state(self, state: State) -> None:
        self.say(f"state: {state.name}")
        with self.changed:
            self.states.append(state)
            self.changed.notify_all()


@contextmanager
def _demo_emulator(strategy: int, key: str) -> Iterator[Any]:
    try:
        from .emulator import Emulator
    except ImportError as exc:
        raise DemoFailed(EMULATOR_MISSING) from exc
    emulator = Emulator(
        api_keys={key},
        strategies={strategy},
        heartbeat_interval=_DEMO_HEARTBEAT,
        heartbeat_grace=_DEMO_HEARTBEAT,
        host="127.0.0.1",
        port=0,
    )
    try:
        emulator.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        raise DemoFailed(f"cannot start the emulator: {exc}") from exc
    try:
        yield emulator
    finally:
        emulator.close()


def run(strategy: int, out: TextIO) -> None:
    """Run the demo, narrating on ``out``.

    Args:
        strategy: the strategy id the demo's emulator publishes.
        out: where the narration goes (the command passes ``sys.stdout``).

    Raises:
        DemoFailed: the emulator is missing or could not start, or a step did not happen
            within its bound.
    """
    demo = _Demo(out)
    key = secrets.token_urlsafe(16)  # a throwaway key, known only to this process
    demo.say("c2sync demo: a local emulator in this process; no API key, no network")
    with _demo_emulator(strategy, key) as emu:
        demo.say(
            f"emulator listening on {emu.url} (heartbeat every {_DEMO_HEARTBEAT:g} s; "
            "the real service sends one every 30 s)"
        )
        # A fixed backoff so the disconnected window is long enough to publish into.
        policy = ReconnectPolicy(initial=_DEMO_BACKOFF, random=lambda: 1.0)
        client = Client(
            key,
            url=emu.url,
            heartbeat_timeout=4 * _DEMO_HEARTBEAT,
            connect_timeout=5.0,
            reconnect_policy=policy,
        )
        try:
            _demo_flow(demo, emu, client, strategy)
        finally:
            client.close()
            demo.say(f"closed: {client!r}")


def _demo_flow(demo: _Demo, emu: Any, client: Client, strategy: int) -> None:
    client.on_state(demo.on_state)
    client.on(SIGNAL, demo.on_signal)
    client.on(POSITIONS, demo.on_positions)
    client.on("gap", demo.on_gap)

    demo.say("1. connect and subscribe")
    client.connect()
    client.subscribe(SIGNAL, strategy)
    client.subscribe(POSITIONS, strategy)
    demo.say(f"subscribed to {SIGNAL} and {POSITIONS} of strategy {strategy}")

    demo.say("2. live signals: the emulator publishes, callbacks print them as they arrive")
    for _ in range(3):
        seq = emu.publish_signal(strategy)
        demo.wait_signal(seq)
        time.sleep(_DEMO_PACE)
    emu.publish_positions(strategy)
    demo.wait("the positions update", lambda: demo.positions >= 1)

    time.sleep(_DEMO_PACE)
    demo.say("3. heartbeats: answered by the client's reader thread, whatever your code does")

    def delays() -> list[float]:
        record = emu.connections[-1]
        return [b.acked_at - b.sent_at for b in record.heartbeats if b.acked_at is not None]

    # The emulator's own record: it wakes this wait on every frame it receives.
    wanted = len(delays()) + 2
    try:
        emu.wait_for(lambda: len(delays()) >= wanted, _DEMO_WAIT)
    except TimeoutError:
        raise DemoFailed("demo failed: heartbeats were not answered") from None
    # The client's count first, then the emulator's for those same acks: an ack reaches the
    # emulator before the client counts it sent, and the next heartbeat may come meanwhile,
    # so two counts read one after the other could disagree.
    stats = client.stats
    try:
        emu.wait_for(lambda: len(delays()) >= stats.acks_sent, _DEMO_WAIT)
    except TimeoutError:
        raise DemoFailed("demo failed: the emulator did not receive every ack sent") from None
    acked = delays()[: stats.acks_sent]
    demo.say(
        f"  client.stats: heartbeats={stats.heartbeats} acks_sent={stats.acks_sent}; the emulator "
        f"received {len(acked)} acks, the slowest {max(acked) * 1000:.1f} ms after its heartbeat"
    )

    time.sleep(_DEMO_PACE)
    demo.say("4. the connection drops (emulator.drop(): no close frame, like a network cut)")
    before = list(demo.seq_ids)
    emu.drop()
    demo.wait("the client noticing", lambda: State.RECONNECTING in demo.states)
    for _ in range(3):
        seq = emu.publish_signal(strategy)
        demo.offline.add(seq)
        demo.say(f"  emulator published seq_id={seq} while the client is disconnected")

    demo.say("5. the client reconnects, resubscribes with resume_from, and the replay fills in")
    demo.wait("the reconnect", lambda: demo.states.count(State.OPEN) >= 2)
    demo.wait_signal(max(demo.offline))
    resumes = [
        r.resume_from
        for r in emu.connections[-1].subscription_requests
        if r.channel == SIGNAL and r.resume_from is not None
    ]
    if resumes:
        demo.say(f"  the client resubscribed with resume_from={resumes[0]} (the last seq_id seen)")
    for _ in range(2):
        time.sleep(_DEMO_PACE)
        demo.wait_signal(emu.publish_signal(strategy))
    time.sleep(_DEMO_PACE)

    published = list(range(1, emu.last_seq(strategy) + 1))
    with demo.lock:
        received = list(demo.seq_ids)
    demo.say("6. the result")
    demo.say(f"  published: {published}")
    demo.say(f"  received:  {received}")
    demo.say(f"  before the drop {before}, after it {received[len(before) :]}")
    stats = client.stats
    demo.say(
        f"  client.stats: messages={stats.messages} heartbeats={stats.heartbeats} "
        f"acks_sent={stats.acks_sent} reconnects={stats.reconnects} "
        f"duplicates dropped={stats.duplicates}"
    )
    if received != published:
        missing = sorted(set(published) - set(received))
        raise DemoFailed(f"demo failed: received {received}, missing {missing}")
    demo.say(
        f"no signal lost, none duplicated: {len(received)} signals in order across "
        f"{stats.reconnects} reconnect(s)"
    )
