"""A minimal, fast Collective2-protocol sender, run in its own process by the harness.

Standard library only, raw sockets: it does the HTTP upgrade itself, sends
``connection.connected``, answers the client's ``subscription.request`` with a
``subscription.ack``, then sends pre-encoded ~500-byte ``strategy.signal`` envelopes (as fast
as the socket takes them, or paced) with ``heartbeat``\\ s at a chosen interval. It times each
heartbeat's ``heartbeat.ack`` itself: the k-th ack answers the k-th heartbeat (the client
answers in order over one TCP stream), so the delay is measured on this side's clock alone.

Each connection's scenario comes in its URL's query string::

    /ws?cid=ID&n=SIGNALS&rate=PER_SECOND&hb=SECONDS&tail=SECONDS&end=close|wait

- ``n`` signals (strategy 12345678, seq_id 1..n) after the subscription ack; ``rate`` 0
  sends them as fast as possible, else paced, each carrying ``SentNs``, the
  ``time.monotonic_ns()`` of its send (CLOCK_MONOTONIC is shared by processes on Linux).
- ``hb``: heartbeat interval (0: none), from ``connection.connected`` on.
- ``tail``: seconds of heartbeats after the last signal (or after the ack when ``n=0``).
- ``end=close``: after the tail, wait (at most ``ack_wait`` seconds) for every heartbeat's
  ack, then close with 1000. ``end=wait``: keep sending heartbeats until the client closes
  (at most ``life`` seconds).

When a connection ends, one JSON line goes to stdout with what was measured; the first line
is ``READY <port>``. The process exits when its stdin closes (the harness is gone).

Run alone: ``python benchmarks/sender.py --port 8765``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

STRATEGY_ID = 12345678
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CHUNK_FRAMES = 32  # frames per sendall in a flood: heartbeats slip in between chunks
_print_lock = threading.Lock()


def _frame(text: str | bytes, opcode: int = 0x1) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    n = len(data)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + data


def _now_text() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def _signal_template() -> tuple[str, str, str, str]:
    """An envelope in pieces: ``A + seq + B + seq + C + sent_ns + D`` (about 500 bytes)."""
    stamp = _now_text()
    a = '{"msg_type":"strategy.signal","id":"msg_5f2a9c0e4b7d4e1fa3c2","seq_id":'
    b = f',"timestamp":"{stamp}","v":4,"payload":{{"StrategyId":{STRATEGY_ID},"SignalId":1500'
    c = (
        ',"C2Symbol":{"FullSymbol":"@ESZ5","SymbolType":"future"},'
        '"ExchangeSymbol":{"Symbol":"ESZ5","Currency":"USD","SecurityExchange":"DEFAULT",'
        '"SecurityType":"FUT"},"Side":"1","OrderType":"2","Quantity":5,"Limit":5213.25,'
        '"Stop":null,"TIF":"1","OpenClose":"O","StopLoss":5150.5,"OrderStatus":"0",'
        f'"PostedDate":"{stamp}","TradeDate":"{stamp[:10]}","SentNs":'
    )
    return a, b, c, "}}"


_A, _B, _C, _D = _signal_template()


def signal_text(seq: int, sent_ns: int = 0) -> str:
    """One ``strategy.signal`` envelope; ``sent_ns`` is the send's ``time.monotonic_ns()``."""
    s = str(seq)
    return _A + s + _B + s + _C + str(sent_ns) + _D


def heartbeat_text(k: int) -> str:
    return (
        f'{{"msg_type":"heartbeat","id":"msg_hb_{k:08d}","timestamp":"{_now_text()}","v":4}}'
    )


_flood_cache: dict[int, list[bytes]] = {}
_flood_lock = threading.Lock()


def flood_chunks(n: int) -> list[bytes]:
    """Pre-encoded frames of signals 1..n, joined ``_CHUNK_FRAMES`` at a time."""
    with _flood_lock:
        chunks = _flood_cache.get(n)
        if chunks is None:
            frames = [_frame(signal_text(seq)) for seq in range(1, n + 1)]
            chunks = [
                b"".join(frames[i : i + _CHUNK_FRAMES]) for i in range(0, n, _CHUNK_FRAMES)
            ]
            _flood_cache.clear()
            _flood_cache[n] = chunks
        return chunks


def _emit(report: dict[str, object]) -> None:
    line = json.dumps(report, separators=(",", ":"))
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Connection:
    """One client connection: a sending thread (this object's run) and an ack reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.hb_sent: list[int] = []  # monotonic_ns of each heartbeat's send
        self.ack_ns: list[int] = []  # monotonic_ns of each ack's arrival
        self.acks = threading.Condition()
        self.subscribed = threading.Event()
        self.subscribe_request_id: str | None = None
        self.client_closed = threading.Event()
        self.end_ns = 0  # when the client closed or went away
        self.close_sent = False
        self.error: str | None = None

    # Wire --------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(data)

    def send_heartbeat(self) -> None:
        k = len(self.hb_sent)
        data = _frame(heartbeat_text(k))
        with self.send_lock:
            with self.acks:
                self.hb_sent.append(time.monotonic_ns())
            self.sock.sendall(data)

    def send_close(self) -> None:
        with self.send_lock:
            if self.close_sent:
                return
            self.close_sent = True
            try:
                self.sock.sendall(_frame((1000).to_bytes(2, "big"), 0x8))
            except OSError:
                pass

    def handshake(self) -> dict[str, str]:
        self.sock.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("EOF during the handshake")
            request += chunk
            if len(request) > 65536:
                raise ConnectionError("handshake too long")
        head, _, rest = request.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(
            hashlib.sha1(headers["sec-websocket-key"].encode() + _GUID).digest()
        ).decode()
        self.sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        self.sock.settimeout(None)
        self.leftover = rest
        query = parse_qs(urlsplit(target).query)
        return {k: v[-1] for k, v in query.items()}

    # The ack reader ------------------------------------------------------------------------

    def read_client(self) -> None:
        buf = bytearray(self.leftover)
        try:
            while True:
                while True:
                    if len(buf) < 2:
                        break
                    b1 = buf[1]
                    n = b1 & 0x7F
                    pos = 2
                    if n == 126:
                        if len(buf) < 4:
                            break
                        n = int.from_bytes(buf[2:4], "big")
                        pos = 4
                    elif n == 127:
                        if len(buf) < 10:
                            break
                        n = int.from_bytes(buf[2:10], "big")
                        pos = 10
                    masked = b1 & 0x80
                    if len(buf) < pos + (4 if masked else 0) + n:
                        break
                    if masked:
                        key = bytes(buf[pos : pos + 4])
                        pos += 4
                        raw = bytes(buf[pos : pos + n])
                        mask = (key * (n // 4 + 1))[:n]
                        data = (
                            int.from_bytes(raw, "big") ^ int.from_bytes(mask, "big")
                        ).to_bytes(n, "big")
                    else:
                        data = bytes(buf[pos : pos + n])
                    opcode = buf[0] & 0x0F
                    del buf[: pos + n]
                    self.on_client_frame(opcode, data)
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError:
            pass
        finally:
            self.end_ns = self.end_ns or time.monotonic_ns()
            self.client_closed.set()
            self.subscribed.set()  # never leave the sender waiting
            with self.acks:
                self.acks.notify_all()

    def on_client_frame(self, opcode: int, data: bytes) -> None:
        if opcode == 0x8:
            self.end_ns = time.monotonic_ns()
            self.send_close()
            self.client_closed.set()
            raise OSError("client closed")
        if opcode == 0x9:
            self.send(_frame(data, 0xA))
            return
        if opcode != 0x1:
            return
        if b'"heartbeat.ack"' in data:
            now = time.monotonic_ns()
            with self.acks:
                self.ack_ns.append(now)
                self.acks.notify_all()
        elif b'"subscription.request"' in data:
            try:
                self.subscribe_request_id = json.loads(data).get("request_id")
            except ValueError:
                pass
            self.subscribed.set()

    # The scenario --------------------------------------------------------------------------

    def run(self) -> None:
        report: dict[str, object] = {}
        params: dict[str, str] = {}
        try:
            params = self.handshake()
            report["cid"] = params.get("cid", "")
            self.serve(params, report)
        except Exception as exc:  # reported, never fatal to the sender
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        if "cid" in report:
            report["error"] = self.error
            with self.acks:
                delays = [
                    (self.ack_ns[k] - self.hb_sent[k]) / 1e9
                    for k in range(min(len(self.ack_ns), len(self.hb_sent)))
                ]
                report["heartbeats"] = len(self.hb_sent)
                report["acks"] = len(self.ack_ns)
                report["ack_delays"] = delays
                # Unanswered heartbeats waited at least until the connection ended.
                end = self.end_ns or time.monotonic_ns()
                report["unanswered_ages"] = [
                    (end - t) / 1e9 for t in self.hb_sent[len(delays) :] if t < end
                ]
            _emit(report)

    def serve(self, params: dict[str, str], report: dict[str, object]) -> None:
        n = int(params.get("n", "0"))
        rate = float(params.get("rate", "0"))
        hb = float(params.get("hb", "0"))
        tail = float(params.get("tail", "0"))
        end = params.get("end", "wait")
        ack_wait = float(params.get("ack_wait", "15"))
        life = float(params.get("life", "120"))
        chunks = flood_chunks(n) if n and not rate else []

        connected = {"msg_type": "connection.connected", "timestamp": _now_text(), "v": 4}
        self.send(_frame(json.dumps(connected, separators=(",", ":"))))
        reader = threading.Thread(target=self.read_client, daemon=True)
        reader.start()

        started = time.monotonic()
        next_hb = [started + hb if hb else float("inf")]

        def heartbeat_due() -> None:
            now = time.monotonic()
            if now >= next_hb[0]:
                self.send_heartbeat()
                next_hb[0] = max(next_hb[0] + hb, now + hb / 4)

        def sleep_until(deadline: float) -> bool:
            """Heartbeats until ``deadline``; False when the client went away."""
            while True:
                heartbeat_due()
                now = time.monotonic()
                if now >= deadline:
                    return True
                if self.client_closed.wait(min(deadline, next_hb[0]) - now):
                    return False

        # The client subscribes first (the time origin of a throughput measurement).
        if n:
            while not self.subscribed.is_set():
                if not sleep_until(min(time.monotonic() + 0.05, started + life)):
                    return
                if time.monotonic() >= started + life:
                    return
            if self.client_closed.is_set():
                return
            ack = {
                "msg_type": "subscription.ack",
                "id": "msg_ack",
                "timestamp": _now_text(),
                "v": 4,
                "payload": {
                    "action": "subscribe",
                    "channel": "strategy.signal",
                    "strategy_id": STRATEGY_ID,
                },
            }
            if self.subscribe_request_id:
                ack["request_id"] = self.subscribe_request_id
            self.send(_frame(json.dumps(ack, separators=(",", ":"))))

        t0 = time.monotonic()
        if chunks:
            for chunk in chunks:
                heartbeat_due()
                self.send(chunk)
        elif n:
            interval = 1.0 / rate
            due = time.monotonic()
            for seq in range(1, n + 1):
                while True:
                    heartbeat_due()
                    now = time.monotonic()
                    if now >= due:
                        break
                    time.sleep(max(0.0, min(due, next_hb[0]) - now))
                self.send(_frame(signal_text(seq, time.monotonic_ns())))
                due += interval
        report["send_seconds"] = time.monotonic() - t0
        report["signals"] = n

        if not sleep_until(time.monotonic() + tail):
            return
        if end == "close":
            deadline = time.monotonic() + ack_wait
            with self.acks:
                while len(self.ack_ns) < len(self.hb_sent) and not self.client_closed.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.acks.wait(remaining)
            self.send_close()
            self.client_closed.wait(5)
        else:
            sleep_until(started + life)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    listener = socket.create_server((args.host, args.port), backlog=64)
    _emit_ready(listener.getsockname()[1])

    def watch_stdin() -> None:
        # The harness holds our stdin: when it goes (exit, crash, kill), so do we.
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os._exit(0)

    if not sys.stdin.isatty():
        threading.Thread(target=watch_stdin, daemon=True).start()
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=Connection(conn).run, daemon=True).start()


def _emit_ready(port: int) -> None:
    with _print_lock:
        sys.stdout.write(f"READY {port}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
