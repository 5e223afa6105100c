"""The clients under test, one scenario per process (the harness starts this file).

``python benchmarks/clients.py '<json spec>'`` runs one implementation through one scenario
against the sender's URL and prints one JSON line with what it measured. A fresh process per
measurement keeps them apart: no shared GIL with the sender, no memory high-water mark or
warm caches carried from one measurement to the next.

Implementations:

- ``c2sync-recv``: ``c2sync.connect`` + ``client.recv()`` in the main thread.
- ``c2sync-callback``: ``client.on("strategy.signal", fn)``; fn runs on c2sync's dispatcher.
- ``websocket-client``: the hand-written loop, ``websocket.create_connection(url,
  skip_utf8_validation=True)`` + ``ws.recv()`` + ``json.loads``, answering heartbeats itself.
- ``websockets-sync``: the same loop on ``websockets.sync.client.connect``.
- ``websockets-asyncio``: the loop the Collective2 docs show, the peer a user would write
  instead of using c2sync: ``async with websockets.connect(url, additional_headers=...) as
  ws: async for message in ws: json.loads(message)``.
- ``c2sync-recv-pure``, ``c2sync-callback-pure``: c2sync again, the harness having set
  ``C2SYNC_PURE_PYTHON=1`` (the standard library's JSON instead of msgspec).

Every loop does the same work per message: parse the JSON, answer heartbeats with a
``heartbeat.ack`` carrying a fresh UTC timestamp, and hand each signal to the scenario's
handler.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

STRATEGY_ID = 12345678
SUBSCRIBE = json.dumps(
    {
        "msg_type": "subscription.request",
        "request_id": "bench-1",
        "timestamp": "2024-01-01T00:00:00.000Z",
        "payload": {
            "action": "subscribe",
            "channel": "strategy.signal",
            "strategy_id": STRATEGY_ID,
        },
    },
    separators=(",", ":"),
)


def ack_text() -> str:
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return '{"msg_type":"heartbeat.ack","timestamp":"' + now + '"}'


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def burn(seconds: float) -> None:
    """Pure-Python CPU work: holds the GIL but for the interpreter's switch interval."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for i in range(100):
            x += i * i


# The clients ---------------------------------------------------------------------------
#
# Each client object offers run(handler, stop, subscribe=True): subscribe, then read until
# stop() is true after a message, or the connection ends; and close(). handler(seq, sent_ns)
# gets each signal's seq_id and SentNs.


class WebSocketClientLoop:
    def __init__(self, url: str, **_: Any) -> None:
        import websocket

        self.ws = websocket.create_connection(url, skip_utf8_validation=True, timeout=10)
        self.ws.settimeout(None)
        first = json.loads(self.ws.recv())
        assert first["msg_type"] == "connection.connected", first

    def run(
        self, handler: Callable[[int, int], None], stop: Callable[[], bool], subscribe: bool = True
    ) -> None:
        ws = self.ws
        if subscribe:
            ws.send(SUBSCRIBE)
        loads = json.loads
        while True:
            try:
                text = ws.recv()
            except Exception:
                return
            if not text:
                return  # the close frame
            msg = loads(text)
            msg_type = msg["msg_type"]
            if msg_type == "strategy.signal":
                handler(msg["seq_id"], msg["payload"]["SentNs"])
                if stop():
                    return
            elif msg_type == "heartbeat":
                ws.send(ack_text())
                if stop():
                    return
            elif stop():
                return

    def close(self) -> None:
        self.ws.close()


class WebsocketsSyncLoop:
    def __init__(self, url: str, **_: Any) -> None:
        from websockets.sync.client import connect

        # Entered as a context manager: the form every websockets version >= 13 accepts
        # without a deprecation warning; close() ends it.
        self.ws = connect(url, max_size=None, compression=None, open_timeout=10).__enter__()
        first = json.loads(self.ws.recv())
        assert first["msg_type"] == "connection.connected", first

    def run(
        self, handler: Callable[[int, int], None], stop: Callable[[], bool], subscribe: bool = True
    ) -> None:
        ws = self.ws
        if subscribe:
            ws.send(SUBSCRIBE)
        loads = json.loads
        while True:
            try:
                text = ws.recv()
            except Exception:
                return
            msg = loads(text)
            msg_type = msg["msg_type"]
            if msg_type == "strategy.signal":
                handler(msg["seq_id"], msg["payload"]["SentNs"])
                if stop():
                    return
            elif msg_type == "heartbeat":
                ws.send(ack_text())
                if stop():
                    return
            elif stop():
                return

    def close(self) -> None:
        self.ws.close()


class WebsocketsAsyncioLoop:
    """The docs' loop, split at the points the harness measures between: ``__init__`` enters
    ``async with websockets.connect(...) as ws``, ``run`` is the ``async for``, ``close``
    leaves the ``async with``. One event loop, in the main thread, for all three."""

    def __init__(self, url: str, **_: Any) -> None:
        # websockets.connect in websockets >= 14; spelled out for 13, where that name was
        # still the legacy client (which has no additional_headers).
        from websockets.asyncio.client import connect

        self.loop = asyncio.new_event_loop()
        self.connection = connect(
            url, additional_headers={"Authorization": "Bearer bench-key"}
        )
        self.ws = self.loop.run_until_complete(self.connection.__aenter__())
        first = json.loads(self.loop.run_until_complete(self.ws.recv()))
        assert first["msg_type"] == "connection.connected", first

    def run(
        self, handler: Callable[[int, int], None], stop: Callable[[], bool], subscribe: bool = True
    ) -> None:
        self.loop.run_until_complete(self._run(handler, stop, subscribe))

    async def _run(
        self, handler: Callable[[int, int], None], stop: Callable[[], bool], subscribe: bool
    ) -> None:
        ws = self.ws
        if subscribe:
            await ws.send(SUBSCRIBE)
        try:
            async for message in ws:
                msg = json.loads(message)
                msg_type = msg["msg_type"]
                if msg_type == "strategy.signal":
                    handler(msg["seq_id"], msg["payload"]["SentNs"])
                elif msg_type == "heartbeat":
                    await ws.send(ack_text())
                if stop():
                    return
        except Exception:
            return

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.connection.__aexit__(None, None, None))
        finally:
            self.loop.close()


class C2syncRecv:
    def __init__(self, url: str, max_queue: int = 10_000, **_: Any) -> None:
        import c2sync

        self.c2sync = c2sync
        self.client = c2sync.connect("bench-key", url=url, reconnect=False, max_queue=max_queue)
        self.dropped = 0

    def run(
        self, handler: Callable[[int, int], None], stop: Callable[[], bool], subscribe: bool = True
    ) -> None:
        if subscribe:
            self.client.subscribe(self.c2sync.SIGNAL, STRATEGY_ID)
        recv = self.client.recv
        while True:
            try:
                msg = recv()
            except self.c2sync.QueueOverflow as exc:
                self.dropped += exc.dropped
                continue
            except self.c2sync.C2Error:
                return
            if msg.msg_type == "strategy.signal":
                handler(msg.seq_id, msg.payload["SentNs"])
                if stop():
                    return

    def close(self) -> None:
        self.client.close()


class C2syncCallback(C2syncRecv):
    def run(
        self, handler: Callable[[int, int], None], stop: Callable[[], bool], subscribe: bool = True
    ) -> None:
        done = threading.Event()

        def on_signal(msg: Any) -> None:
            if done.is_set():
                return
            handler(msg.seq_id, msg.payload["SentNs"])
            if stop():
                done.set()

        def on_error(exc: BaseException) -> None:
            if isinstance(exc, self.c2sync.QueueOverflow):
                self.dropped += exc.dropped  # the callbacks' backlog is bounded too

        self.client.on_error(on_error)
        self.client.on(self.c2sync.SIGNAL, on_signal)  # before any signal can arrive
        if subscribe:
            self.client.subscribe(self.c2sync.SIGNAL, STRATEGY_ID)
        ended = threading.Event()

        def wait_end() -> None:
            try:
                self.client.run_forever()
            except Exception:
                pass
            ended.set()
            done.set()

        threading.Thread(target=wait_end, daemon=True).start()
        done.wait()



IMPLEMENTATIONS: dict[str, Any] = {
    "c2sync-recv": C2syncRecv,
    "c2sync-callback": C2syncCallback,
    "websocket-client": WebSocketClientLoop,
    "websockets-sync": WebsocketsSyncLoop,
    "websockets-asyncio": WebsocketsAsyncioLoop,
    "c2sync-recv-pure": C2syncRecv,
    "c2sync-callback-pure": C2syncCallback,
}


# The scenarios ---------------------------------------------------------------------------


def throughput(client: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Signals per second, from the subscribe to the n-th signal in the user's hands."""
    n = p["n"]
    count = [0, 0]  # signals, seq_id of the last one

    def handler(seq: int, sent_ns: int) -> None:
        count[0] += 1
        count[1] = seq

    t0 = time.perf_counter()
    cpu0 = cpu_seconds()
    client.run(handler, lambda: count[0] >= n)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    if count[0] < n:
        raise RuntimeError(f"only {count[0]} of {n} signals arrived")
    # CPU time per signal (the whole process): steadier than the rate on a busy machine.
    return {"rate": n / elapsed, "seconds": elapsed, "cpu_us": cpu / n * 1e6, "last_seq": count[1]}


def latency(client: Any, p: dict[str, Any]) -> dict[str, Any]:
    """One-way latency of paced signals: the sender's monotonic_ns to the user's hands."""
    n = p["n"]
    lat: list[int] = []
    clock = time.monotonic_ns

    def handler(seq: int, sent_ns: int) -> None:
        lat.append(clock() - sent_ns)

    client.run(handler, lambda: len(lat) >= n)
    if len(lat) < n:
        raise RuntimeError(f"only {len(lat)} of {n} signals arrived")
    kept = sorted(lat[len(lat) // 20 :])  # the first 5 % warm up
    return {
        "p50_ms": kept[len(kept) // 2] / 1e6,
        "p99_ms": kept[min(len(kept) - 1, int(len(kept) * 0.99))] / 1e6,
        "max_ms": kept[-1] / 1e6,
    }


def slow_handler(client: Any, p: dict[str, Any]) -> dict[str, Any]:
    """A handler burning ``burn`` seconds of CPU per signal; runs until the server closes."""
    handled = [0]

    def handler(seq: int, sent_ns: int) -> None:
        burn(p["burn"])
        handled[0] += 1

    client.run(handler, lambda: False)
    return {"handled": handled[0]}


def idle(client: Any, p: dict[str, Any]) -> dict[str, Any]:
    """CPU used while connected and idle (heartbeats only) for ``seconds``."""
    time.sleep(0.3)  # settle after the connect
    seconds = p["seconds"]
    cpu0 = cpu_seconds()
    t0 = time.monotonic()
    end = t0 + seconds
    if isinstance(client, C2syncRecv):
        try:
            client.client.recv(timeout=seconds)  # what a user's blocked recv() does
        except TimeoutError:
            pass
    else:
        client.run(lambda seq, sent: None, lambda: time.monotonic() >= end, subscribe=False)
    wall = time.monotonic() - t0
    cpu = cpu_seconds() - cpu0
    return {"cpu_ms_per_20s": cpu * 1000 * 20 / wall, "wall": wall}


def close_latency(client: Any, p: dict[str, Any]) -> dict[str, Any]:
    """How long close() takes, connected with heartbeats flowing, server responsive."""
    time.sleep(0.2)
    t0 = time.perf_counter()
    client.close()
    return {"close_ms": (time.perf_counter() - t0) * 1000}


def rss(client: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS while a flood meets a consumer sleeping ``pause`` s per signal."""
    before = peak_rss_mb()
    handled = [0]
    end = time.monotonic() + p["seconds"]

    def handler(seq: int, sent_ns: int) -> None:
        time.sleep(p["pause"])
        handled[0] += 1

    client.run(handler, lambda: time.monotonic() >= end)
    peak = peak_rss_mb()
    return {
        "peak_mb": peak,
        "growth_mb": peak - before,
        "handled": handled[0],
        "dropped": getattr(client, "dropped", 0),
    }


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:  # not Linux: the peak is the best there is
        return peak_rss_mb()


def queued(client: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Memory each message takes while it waits in c2sync's recv() queue: ``n`` signals
    arrive while nobody calls recv(); traced Python allocations and RSS, before and after."""
    import tracemalloc

    n = p["n"]
    c = client.client
    gc.collect()
    rss0 = current_rss_mb()
    tracemalloc.start()
    traced0 = tracemalloc.get_traced_memory()[0]
    client.client.subscribe(client.c2sync.SIGNAL, STRATEGY_ID)
    deadline = time.monotonic() + p["wait"]
    while c.stats.messages < n and time.monotonic() < deadline:
        time.sleep(0.01)  # a benchmark waiting on a counter; the bound is the deadline
    if c.stats.messages < n:
        raise RuntimeError(f"only {c.stats.messages} of {n} signals were queued")
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - traced0
    tracemalloc.stop()
    rss = current_rss_mb() - rss0
    for _ in range(n):  # they were all there
        c.recv(timeout=5)
    return {
        "traced_bytes_per_msg": traced / n,
        "rss_bytes_per_msg": rss * 2**20 / n,
        "n": n,
    }


SCENARIOS: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    "throughput": throughput,
    "latency": latency,
    "flood": latency,
    "slow": slow_handler,
    "idle": idle,
    "close": close_latency,
    "rss": rss,
    "queued": queued,
}


def main() -> int:
    spec = json.loads(sys.argv[1])
    impl = IMPLEMENTATIONS[spec["impl"]]
    params = spec.get("params", {})
    client = impl(spec["url"], **spec.get("options", {}))
    result: dict[str, Any] = {}
    try:
        result = SCENARIOS[spec["scenario"]](client, params)
    finally:
        if spec["scenario"] != "close":
            client.close()
    if spec["impl"].startswith("c2sync"):
        import c2sync

        result["c2sync_file"] = c2sync.__file__
        result["decoder"] = getattr(c2sync.codec, "_DECODER_NAME", "json")
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
