"""A small raw-socket server for tests that need a server to misbehave byte by byte.

Each accepted connection runs a handler on its own daemon thread; the server records what
each connection sent before its handler took over, and everything is closed (bounded) when
the test ends. Helpers build an honest upgrade answer and server frames, so a handler only
writes the part that misbehaves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable

WAIT = 10.0
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONNECTED = json.dumps(
    {"msg_type": "connection.connected", "id": "msg_1", "timestamp": "2024-01-01T12:00:00Z", "v": 4}
)

Handler = Callable[["Conn"], None]


class Conn:
    """One accepted connection: the socket, and the upgrade request it sent."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.request = b""
        self._unread = b""  # client bytes read past the last frame next_text() returned

    def read_request(self) -> bytes:
        """Read the HTTP request head (bounded: 64 KiB, the test's WAIT)."""
        self.sock.settimeout(WAIT)
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            data += chunk
        self.request = data
        return data

    def header(self, name: str) -> str | None:
        for line in self.request.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def upgrade_answer(self) -> bytes:
        key = (self.header("Sec-WebSocket-Key") or "").encode()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        return (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()

    def accept(self) -> None:
        """Read the request and upgrade honestly."""
        self.read_request()
        self.sock.sendall(self.upgrade_answer())

    def next_text(self, limit: float = WAIT) -> str:
        """The client's next text frame (unmasked), skipping pongs; waits at most ``limit``
        seconds for it. Raises ``EOFError`` when the client closes or goes away first."""
        self.sock.settimeout(limit)
        while True:
            parsed = _client_frame(self._unread)
            if parsed is None:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError("the client went away")
                self._unread += chunk
                continue
            (opcode, payload), self._unread = parsed
            if opcode == 0x1:
                return payload.decode()
            if opcode == 0x8:
                raise EOFError("the client closed")

    def texts_waiting(self) -> list[str]:
        """The client's text frames already in this socket's receive buffer, without
        waiting (safe beside another thread sending on the socket: the timeout is not
        touched). Frames cut in the middle stay for the next call."""
        texts = []
        while True:
            readable, _, _ = select.select([self.sock], [], [], 0)
            chunk = self.sock.recv(65536) if readable else b""
            self._unread += chunk
            while True:
                parsed = _client_frame(self._unread)
                if parsed is None:
                    break
                (opcode, payload), self._unread = parsed
                if opcode == 0x1:
                    texts.append(payload.decode())
            if not chunk:
                return texts

    def read_frames(self, limit: float = WAIT) -> list[tuple[int, bytes]]:
        """Read client frames (unmasked here) until EOF or ``limit`` seconds of silence."""
        self.sock.settimeout(limit)
        frames = []
        data = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                while len(data) >= 6:
                    length = data[1] & 0x7F
                    start = 2
                    if length == 126:
                        length = struct.unpack("!H", data[2:4])[0]
                        start = 4
                    elif length == 127:
                        length = struct.unpack("!Q", data[2:10])[0]
                        start = 10
                    if len(data) < start + 4 + length:
                        break
                    mask = data[start : start + 4]
                    payload = bytes(
                        b ^ mask[i % 4] for i, b in enumerate(data[start + 4 : start + 4 + length])
                    )
                    frames.append((data[0] & 0x0F, payload))
                    data = data[start + 4 + length :]
                    if frames[-1][0] == 0x8:
                        return frames
        except OSError:
            pass
        return frames


def _client_frame(data: bytes) -> tuple[tuple[int, bytes], bytes] | None:
    """The first whole (masked) client frame in ``data`` and the bytes after it, or None."""
    if len(data) < 2:
        return None
    length = data[1] & 0x7F
    start = 2
    if length == 126:
        if len(data) < 4:
            return None
        length, start = struct.unpack("!H", data[2:4])[0], 4
    elif length == 127:
        if len(data) < 10:
            return None
        length, start = struct.unpack("!Q", data[2:10])[0], 10
    if len(data) < start + 4 + length:
        return None
    mask = data[start : start + 4]
    body = data[start + 4 : start + 4 + length]
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    return (data[0] & 0x0F, payload), data[start + 4 + length :]


def frame(opcode: int, payload: bytes, fin: bool = True, length: int | None = None) -> bytes:
    """A server frame (unmasked); ``length`` lies about the payload's size if given."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if size < 126:
        head += bytes([size])
    elif size < 1 << 16:
        head += bytes([126]) + struct.pack("!H", size)
    else:
        head += bytes([127]) + struct.pack("!Q", size)
    return head + payload


def text(message: str) -> bytes:
    return frame(0x1, message.encode())


class RawServer:
    """A TCP (optionally TLS) server on 127.0.0.1 port 0 running ``handler`` per connection.

    Args:
        handler: what each connection does; an exception in it closes that connection.
        ssl_context: a server context for ``wss://``.
        rcvbuf: the connections' receive buffer in bytes (set before any connection comes,
            so the window they announce is small from the start): a server that stops
            reading then blocks the client's sends soon.
    """

    def __init__(
        self,
        handler: Handler,
        ssl_context: ssl.SSLContext | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._listener = socket.create_server(("127.0.0.1", 0))
        if rcvbuf is not None:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.port = self._listener.getsockname()[1]
        self.conns: list[Conn] = []
        self.accepted = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"{'wss' if self._ssl else 'ws'}://127.0.0.1:{self.port}/ws"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            conn = Conn(sock)
            self.conns.append(conn)
            self.accepted.release()
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: Conn) -> None:
        try:
            if self._ssl is not None:
                conn.sock = self._ssl.wrap_socket(conn.sock, server_side=True)
            self._handler(conn)
        except (OSError, ValueError):
            pass
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass

    def wait_accepted(self, count: int = 1) -> None:
        for _ in range(count):
            assert self.accepted.acquire(timeout=WAIT), "no connection came"

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in self.conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in [self._acceptor, *self._threads]:
            thread.join(WAIT)
