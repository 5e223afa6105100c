"""Floods from a hostile server: memory stays bounded, heartbeats stay answered, and every
message is either delivered or counted as dropped (docs/api-contract.md "Back-pressure").

The server here is a few lines of raw sockets (no emulator): it pushes pre-encoded frames
as fast as the socket takes them, a heartbeat after every chunk, and counts the acks.
Sized for CI (a few seconds each on 2 cores); the figures are printed (``pytest -s``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

import c2sync

from .conftest import API_KEY, STRATEGY, WAIT

RSS_BOUND = 50 * 2**20
CHUNK = 256  # frames per sendall; a heartbeat follows each chunk
FLOOD_WAIT = 60.0  # the bound on a whole flood on a loaded 2-core machine
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _frame(text: str) -> bytes:
    data = text.encode()
    n = len(data)
    if n < 126:
        return bytes([0x81, n]) + data
    if n < 65536:
        return bytes([0x81, 126]) + n.to_bytes(2, "big") + data
    return bytes([0x81, 127]) + n.to_bytes(8, "big") + data


def _envelope(msg_type: str, **fields: object) -> str:
    obj = {"msg_type": msg_type, "id": "m", "timestamp": "2024-01-01T12:00:00Z", "v": 4}
    obj.update(fields)
    return json.dumps(obj, separators=(",", ":"))


def signal_frame(seq_id: int, strategy_id: int = STRATEGY) -> bytes:
    payload = {"strategy_id": strategy_id, "SignalId": seq_id, "Symbol": "ESZ4", "Note": "x" * 300}
    return _frame(_envelope("strategy.signal", seq_id=seq_id, payload=payload))


class FloodServer:
    """One connection: the upgrade, ``connection.connected``, an ack for each subscribe,
    then ``frames()`` in chunks with a heartbeat after each; counts heartbeat acks."""

    def __init__(self, frames: Callable[[], Iterator[bytes]]) -> None:
        self._frames = frames
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self._listener.getsockname()[1]}/ws"
        self.cond = threading.Condition()
        self.heartbeats = 0
        self.acks = 0
        self.done = False
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            conn.sendall(_frame(_envelope("connection.connected", payload={})))
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()
            assert self._subscribed.wait(WAIT)
            heartbeat = _frame(_envelope("heartbeat", payload={}))
            chunk: list[bytes] = []
            for frame in self._frames():
                chunk.append(frame)
                if len(chunk) == CHUNK:
                    self._send(conn, b"".join(chunk) + heartbeat)
                    chunk = []
            self._send(conn, b"".join(chunk) + heartbeat)
            with self.cond:
                self.done = True
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.acks >= self.heartbeats, WAIT)
            try:
                while conn.recv(65536):  # until the client closes
                    pass
            except OSError:
                pass

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        with self.cond:
            self.heartbeats += 1

    def _read(self, conn: socket.socket) -> None:
        """Client frames (masked, small): the subscribe to ack, the heartbeat acks."""
        buffer = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while len(buffer) >= 6:
                    n = buffer[1] & 0x7F
                    start = 2
                    if n == 126:
                        n, start = int.from_bytes(buffer[2:4], "big"), 4
                    elif n == 127:
                        n, start = int.from_bytes(buffer[2:10], "big"), 10
                    if len(buffer) < start + 4 + n:
                        break
                    mask = buffer[start : start + 4]
                    body = bytes(
                        b ^ mask[i % 4] for i, b in enumerate(buffer[start + 4 : start + 4 + n])
                    )
                    buffer = buffer[start + 4 + n :]
                    if b"heartbeat.ack" in body:
                        with self.cond:
                            self.acks += 1
                            self.cond.notify_all()
                    elif b"subscription.request" in body:
                        request = json.loads(body)
                        conn.sendall(
                            _frame(
                                _envelope(
                                    "subscription.ack",
                                    request_id=request["request_id"],
                                    payload={
                                        k: request["payload"][k]
                                        for k in ("action", "channel", "strategy_id")
                                    },
                                )
                            )
                        )
                        self._subscribed.set()
        except OSError:
            return

    def wait_done(self) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.done, FLOOD_WAIT), "the flood never ended"

    def wait_acked(self) -> None:
        with self.cond:
            assert self.cond.wait_for(
                lambda: self.done and self.acks >= self.heartbeats, WAIT
            ), f"{self.acks} of {self.heartbeats} heartbeats acked"

    def close(self) -> None:
        self._listener.close()
        self._thread.join(WAIT)


class PeakRss:
    """The process's peak RSS over a stretch, sampled every 20 ms on its own thread (a
    measurement, not a synchronisation)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.before = self._process.memory_info().rss
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def growth(self) -> int:
        self._stop.set()
        self._thread.join(WAIT)
        self.peak = max(self.peak, self._process.memory_info().rss)
        return self.peak - self.before


@pytest.fixture
def flood_server() -> Iterator[Callable[[Callable[[], Iterator[bytes]]], FloodServer]]:
    servers: list[FloodServer] = []

    def make(frames: Callable[[], Iterator[bytes]]) -> FloodServer:
        server = FloodServer(frames)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


SLOW_FLOOD = 200_000
SLOW_MAX_QUEUE = 1000


def test_a_flood_to_a_1ms_callback_stays_bounded_and_reaches_on_error(
    flood_server: Callable[[Callable[[], Iterator[bytes]]], FloodServer],
) -> None:
    """200k signals to a 1 ms callback, max_queue=1000: RSS bounded, heartbeats answered,
    every signal delivered in order or counted dropped, on_error told of each overflow."""
    frames = [signal_frame(seq) for seq in range(1, SLOW_FLOOD + 1)]
    server = flood_server(lambda: iter(frames))
    cond = threading.Condition()
    seen: list[int] = []
    overflows: list[c2sync.QueueOverflow] = []
    threads: set[str] = set()

    def on_signal(message: c2sync.Signal) -> None:
        time.sleep(0.001)  # the slow consumer under test, not a synchronisation
        with cond:
            seen.append(message.seq_id)
            cond.notify_all()

    def on_error(error: BaseException) -> None:
        threads.add(threading.current_thread().name)
        if isinstance(error, c2sync.QueueOverflow):
            with cond:
                overflows.append(error)
                cond.notify_all()

    with c2sync.connect(
        API_KEY, url=server.url, max_queue=SLOW_MAX_QUEUE, heartbeat_timeout=WAIT
    ) as client:
        client.on(c2sync.SIGNAL, on_signal)
        client.on_error(on_error)
        rss = PeakRss()
        started = time.monotonic()
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        server.wait_done()
        server.wait_acked()
        with cond:  # every signal either ran its callback or was counted as dropped
            assert cond.wait_for(
                lambda: len(seen) + client.stats.dropped >= SLOW_FLOOD, FLOOD_WAIT
            ), (len(seen), client.stats.dropped)
            assert cond.wait_for(
                lambda: sum(o.dropped for o in overflows) >= client.stats.dropped, WAIT
            )
        elapsed = time.monotonic() - started
        growth = rss.growth()
        dropped = client.stats.dropped
    print(
        f"\n200k flood to a 1 ms callback: {elapsed:.1f} s, delivered {len(seen)}, "
        f"dropped {dropped}, peak RSS growth {growth / 2**20:.1f} MB, "
        f"{server.acks}/{server.heartbeats} heartbeats acked"
    )
    assert len(seen) + dropped == SLOW_FLOOD
    assert seen == sorted(set(seen)) and seen[-1] == SLOW_FLOOD  # in order, the newest kept
    assert dropped > 0 and sum(o.dropped for o in overflows) == dropped
    assert overflows[0].last_seq and threads == {"c2sync-dispatcher"}
    assert growth < RSS_BOUND, f"RSS grew by {growth >> 20} MB"


INVENTED = 300_000
NOBODY_MAX_QUEUE = 100


def test_300k_invented_strategy_ids_with_nobody_reading_keep_memory_flat(
    flood_server: Callable[[Callable[[], Iterator[bytes]]], FloodServer],
) -> None:
    """300k strategy ids nobody subscribed to, nobody reading: the client keeps no state for
    them, RSS stays bounded, heartbeats answered, the overflow counted and reported."""

    def frames() -> Iterator[bytes]:
        for strategy_id in range(1, INVENTED + 1):
            yield signal_frame(1, STRATEGY + strategy_id)

    server = flood_server(frames)
    overflows: list[c2sync.QueueOverflow] = []
    told = threading.Condition()

    def on_error(error: c2sync.QueueOverflow) -> None:
        with told:
            overflows.append(error)
            told.notify_all()

    with c2sync.connect(
        API_KEY, url=server.url, max_queue=NOBODY_MAX_QUEUE, heartbeat_timeout=WAIT
    ) as client:
        client.on_error(on_error)
        rss = PeakRss()
        started = time.monotonic()
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        server.wait_done()
        server.wait_acked()
        elapsed = time.monotonic() - started
        growth = rss.growth()
        # The last heartbeat is acked before the messages read with it are handed on (acks
        # go first): wait, bounded, until on_error was told of every drop.
        with told:
            told.wait_for(
                lambda: sum(o.dropped for o in overflows) >= INVENTED - NOBODY_MAX_QUEUE, WAIT
            )
        with pytest.raises(c2sync.QueueOverflow) as info:
            client.recv(timeout=WAIT)
        kept = [client.recv(timeout=WAIT) for _ in range(NOBODY_MAX_QUEUE)]
        dropped = client.stats.dropped
        with told:  # on_error told as well
            assert told.wait_for(lambda: sum(o.dropped for o in overflows) >= dropped, WAIT)
    print(
        f"\n300k invented strategy ids: {elapsed:.1f} s, dropped {dropped}, "
        f"peak RSS growth {growth / 2**20:.1f} MB, {server.acks}/{server.heartbeats} acked"
    )
    assert info.value.dropped == dropped == INVENTED - NOBODY_MAX_QUEUE
    assert [m.strategy_id for m in kept] == [  # type: ignore[attr-defined]
        STRATEGY + i for i in range(INVENTED - NOBODY_MAX_QUEUE + 1, INVENTED + 1)
    ]
    assert growth < RSS_BOUND, f"RSS grew by {growth >> 20} MB"
    assert sum(o.dropped for o in overflows) == dropped
