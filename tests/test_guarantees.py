"""The contract's guarantees that a planted bug once slipped past, each through the public API.

An audit (issue 30) planted one small bug per guarantee of docs/api-contract.md; these are
the guarantees whose bug survived the suite. Each test here fails on its planted bug
(tests/mutants.py lists them and ``nox -s mutants`` checks that they still do).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import c2sync
import c2sync._link
from c2sync._options import seams
from c2sync.emulator import Emulator

from .conftest import API_KEY, STRATEGY, WAIT, MakeServer
from .hostile import CONNECTED, Conn, RawServer, text
from .test_echoed_key import ack, send

FAST = c2sync.ReconnectPolicy(initial=0.05, maximum=0.2, policy_violation_delay=0.3)
MakeClient = Callable[..., c2sync.Client]


class Waiter:
    """A list filled on another thread, with a bounded wait for a condition on it."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[list[Any]], bool]) -> list[Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.items), WAIT), self.items
            return list(self.items)


# Heartbeats are answered before user code sees anything -------------------------------

ROUNDS = 20  # one heartbeat and NOTES messages per round, each round in one TCP write
NOTES = 3
ACK_GRACE = 0.05  # seconds the link gives user code, per ack, to show it ran too early


def _note(round_: int, index: int, pad: int) -> str:
    payload = {"round": round_, "index": index, "pad": "x" * pad}
    return json.dumps({"msg_type": "test.note", "id": f"n{round_}.{index}", "payload": payload})


def _heartbeat(round_: int, pad: int = 0) -> str:
    frame = {"msg_type": "heartbeat", "id": f"hb_{round_}", "timestamp": "2024-01-01T12:00:00Z"}
    if pad:
        frame["padding"] = "p" * pad  # too long for the reader's early heartbeat scan
    return json.dumps(frame)


LAYOUTS: dict[str, Callable[[int], list[str]]] = {
    "heartbeat-first": lambda k: [_heartbeat(k)] + [_note(k, i, 10) for i in range(NOTES)],
    "heartbeat-after-long-frames": lambda k: [_note(k, i, 600) for i in range(NOTES)]
    + [_heartbeat(k)],
    "long-heartbeat-first": lambda k: [_heartbeat(k, pad=400)]
    + [_note(k, i, 10) for i in range(NOTES)],
}


@pytest.mark.parametrize("consumer", ["callback", "recv"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_ack_reaches_the_server_before_user_code_sees_the_read(
    make_server: MakeServer, layout: str, consumer: str
) -> None:
    """Each round, the server writes a heartbeat and NOTES messages in one TCP write. When
    user code (a callback, or the thread in recv()) first sees a message of that write, the
    server must already hold that heartbeat's ack: the moment user code runs it reads,
    without waiting, what the client sent (on loopback, what send() returned from is
    already in the peer's buffer). Deterministic when the code is right; a reader that
    hands the messages on before sending the ack is caught in some round."""
    go = threading.Semaphore(0)
    finished = threading.Event()

    def handler(conn: Conn) -> None:
        conn.accept()
        conn.sock.sendall(text(CONNECTED))
        for round_ in range(1, ROUNDS + 1):
            assert go.acquire(timeout=WAIT), "user code never finished a round"
            conn.sock.sendall(b"".join(text(f) for f in LAYOUTS[layout](round_)))
        finished.wait(WAIT)

    # The reader's side of the same order: as it sends round k's ack, the link gives user
    # code a moment (ACK_GRACE) to show it saw round k already. When the code is right it
    # cannot have (messages are handed on only after the ack is sent), so the moment always
    # passes unused; a reader that hands on first is caught at once, however the threads
    # are scheduled (the server-side check alone needs user code to win a race).
    rounds_seen = threading.Condition()
    seen_rounds: list[int] = []
    seen_before_its_ack: list[int] = []

    class Watching(c2sync._link.Link):
        acks_sent = 0

        def send(self, text: str, deadline: float | None = None) -> None:
            if '"heartbeat.ack"' in text:
                self.acks_sent += 1
                k = self.acks_sent
                with rounds_seen:
                    if rounds_seen.wait_for(lambda: k in seen_rounds, ACK_GRACE):
                        seen_before_its_ack.append(k)
            super().send(text, deadline)

    server = make_server(handler)
    with seams(link_factory=Watching):
        client = c2sync.connect(
            API_KEY, url=server.url, heartbeat_timeout=3 * WAIT, reconnect=False
        )
    acks: list[str] = []
    held_when_seen: dict[int, int] = {}  # round -> acks the server held when user code saw it
    done = threading.Event()

    def seen(message: c2sync.Message) -> None:
        round_, index = message.payload["round"], message.payload["index"]
        if index == 0:
            with rounds_seen:
                seen_rounds.append(round_)
                rounds_seen.notify_all()
            acks.extend(t for t in server.conns[0].texts_waiting() if "heartbeat.ack" in t)
            held_when_seen[round_] = len(acks)
        if index == NOTES - 1:
            if round_ == ROUNDS:
                done.set()
            go.release()

    try:
        if consumer == "callback":
            client.on("test.note", seen)
            go.release()
            assert done.wait(WAIT)
        else:
            go.release()
            for _ in range(ROUNDS * NOTES):
                seen(client.recv(timeout=WAIT))
        assert seen_before_its_ack == [], "user code saw these rounds before their acks"
        assert held_when_seen == {k: k for k in range(1, ROUNDS + 1)}
        assert client.stats.heartbeats == client.stats.acks_sent == ROUNDS
    finally:
        finished.set()
        client.close()


# on_error hears of the failures the client survived -----------------------------------


def test_on_error_is_told_of_a_lost_connection_and_of_a_refused_reconnect(
    make_client: MakeClient, emulator: Emulator
) -> None:
    """A drop, then a reconnect attempt refused with 503: both reach on_error, in order,
    and the client carries on."""
    client = make_client(reconnect_policy=FAST)
    errors = Waiter()
    states = Waiter()
    client.on_error(errors.add)
    client.on_state(states.add)
    emulator.refuse_next(1, 503, headers={"Retry-After": "0"})
    emulator.drop()
    lost, refused = errors.wait(lambda items: len(items) >= 2)
    assert isinstance(lost, c2sync.ConnectionClosed)
    assert isinstance(refused, c2sync.ServiceUnavailableError) and refused.status == 503
    states.wait(lambda items: c2sync.State.OPEN in items)
    assert client.state is c2sync.State.OPEN and client.stats.reconnects == 1
    assert len(errors.items) == 2


# off() from inside a callback -----------------------------------------------------------


def test_a_callback_that_removes_itself_never_runs_again_even_with_a_backlog(
    client: c2sync.Client, emulator: Emulator
) -> None:
    """The first signal's callback waits until four more signals sit in its backlog (a
    position update published after them has reached recv()), then calls off() on its
    own handle: none of the four may reach it."""
    calls: list[int] = []
    first_done = threading.Event()
    holder: dict[str, c2sync.Handle] = {}

    def once(message: c2sync.Message) -> None:
        calls.append(message.seq_id or 0)
        if len(calls) == 1:
            after = client.recv(timeout=WAIT)  # behind signals 2..5 in the stream
            assert isinstance(after, c2sync.Positions)
            client.off(holder["handle"])
            first_done.set()

    holder["handle"] = client.on(c2sync.SIGNAL, once)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    client.subscribe(c2sync.POSITIONS, STRATEGY)
    for _ in range(5):
        emulator.publish_signal(STRATEGY)
    emulator.publish_positions(STRATEGY)
    assert first_done.wait(WAIT)
    marker = threading.Event()
    client.on(c2sync.POSITIONS, lambda m: marker.set())  # after the backlog, in order
    emulator.publish_positions(STRATEGY)
    assert marker.wait(WAIT)
    assert calls == [1]


# Checkpoints ------------------------------------------------------------------------------


class Saves:
    """A Checkpoint that records every save."""

    def __init__(self) -> None:
        self.saved = Waiter()

    def load(self) -> dict[int, int]:
        return {}

    def save(self, strategy_id: int, seq_id: int) -> None:
        self.saved.add((strategy_id, seq_id))


def test_a_callback_that_raised_does_not_count_its_signal_as_processed(
    make_client: MakeClient, emulator: Emulator
) -> None:
    checkpoint = Saves()
    client = make_client(checkpoint=checkpoint)

    def handler(message: c2sync.Message) -> None:
        if message.seq_id == 2:
            raise RuntimeError("the user's handler failed")

    client.on(c2sync.SIGNAL, handler)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for _ in range(3):
        emulator.publish_signal(STRATEGY)
    saved = checkpoint.saved.wait(lambda items: (STRATEGY, 3) in items)
    assert saved == [(STRATEGY, 1), (STRATEGY, 3)]


def test_a_received_signal_is_saved_at_the_next_receive_not_when_handed_out(
    make_client: MakeClient, emulator: Emulator
) -> None:
    checkpoint = Saves()
    client = make_client(checkpoint=checkpoint)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY)
    emulator.publish_signal(STRATEGY)
    assert client.recv(timeout=WAIT).seq_id == 1
    assert checkpoint.saved.items == []  # in the user's hands: not processed yet
    assert client.recv(timeout=WAIT).seq_id == 2
    assert checkpoint.saved.items == [(STRATEGY, 1)]
    client.close()
    assert checkpoint.saved.items == [(STRATEGY, 1), (STRATEGY, 2)]


def test_a_restarted_numbering_moves_the_file_checkpoint_down(
    make_client: MakeClient, emulator: Emulator, tmp_path: Any
) -> None:
    """5000, then the server's own 1 and 2 (a restart): the file ends at 2, so the next
    run resumes after 2, not after 5000 (which would skip every signal up to 5000)."""
    path = tmp_path / "state.json"
    client = make_client(checkpoint=str(path))
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    frame = {"msg_type": "strategy.signal", "seq_id": 5000, "payload": {"StrategyId": STRATEGY}}
    emulator.send_raw(json.dumps(frame))
    emulator.publish_signal(STRATEGY)
    emulator.publish_signal(STRATEGY)
    assert [client.recv(timeout=WAIT).seq_id for _ in range(3)] == [5000, 1, 2]
    client.close()
    assert json.loads(path.read_text()) == {str(STRATEGY): 2}


# Duplicates on resume, end to end --------------------------------------------------------


def _signal(seq_id: int) -> dict[str, Any]:
    return {"msg_type": "strategy.signal", "seq_id": seq_id, "payload": {"StrategyId": STRATEGY}}


MARKER = {"msg_type": "strategy.positions", "payload": {"StrategyId": STRATEGY}}


@pytest.fixture
def replaying_server(make_server: MakeServer) -> Iterator[tuple[RawServer, threading.Event]]:
    """A server that replays from its own view: the first connection sends signals 1-3
    and is cut when the test says; the second replays all it has (1-3, whatever the
    ``resume_from``), then 4 and a position update as an end marker."""
    cut = threading.Event()
    requests: list[dict[str, Any]] = []

    def handler(conn: Conn) -> None:
        conn.accept()
        conn.sock.sendall(text(CONNECTED))
        request = json.loads(conn.next_text())
        requests.append(request)
        ack(conn, request)
        if len(requests) == 1:
            send(conn, *(_signal(n) for n in (1, 2, 3)))
            cut.wait(WAIT)
            return  # the server closes the socket: the link is lost, no close frame
        send(conn, *(_signal(n) for n in (1, 2, 3, 4)), MARKER)
        conn.read_frames(limit=WAIT)  # until the client goes

    server = make_server(handler)
    server.requests = requests  # type: ignore[attr-defined]
    yield server, cut
    cut.set()


def test_a_replay_overlapping_what_the_client_holds_is_delivered_once(
    replaying_server: tuple[RawServer, threading.Event],
) -> None:
    """1 handed out and 2, 3 still queued when the link drops; the new connection replays
    1-3 again before 4: the user reads 1, 2, 3, 4 once each, and the resubscribe asked to
    resume after 3 (the highest held, queued ones included)."""
    server, cut = replaying_server
    with c2sync.connect(
        API_KEY, url=server.url, heartbeat_timeout=3 * WAIT, reconnect_policy=FAST
    ) as client:
        client.subscribe(c2sync.SIGNAL, STRATEGY, timeout=WAIT)
        first = client.recv(timeout=WAIT)
        assert first.seq_id == 1
        # 2 and 3 came in the same write as 1: they wait in the queue.
        cut.set()
        after: list[c2sync.Message] = []
        while not isinstance(after[-1:] and after[-1], c2sync.Positions):
            assert len(after) < 10, after  # one bound: a server repeating itself is caught
            after.append(client.recv(timeout=WAIT))
        assert [m.seq_id for m in after[:-1]] == [2, 3, 4]
        assert client.stats.duplicates == 3 and client.stats.reconnects == 1
        resubscribe = server.requests[1]  # type: ignore[attr-defined]
        assert resubscribe["payload"].get("resume_from") == 3
