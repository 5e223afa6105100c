"""A fast reader of server WebSocket frames, under websocket-client's handshake.

websocket-client parses frames in pure Python with three ``recv()`` system calls per frame
(header, length, payload) because it never reads ahead: about half of a reader's time at
~30k frames/s (docs/websocket-client-facts.md "Reading"). Once websocket-client has done the
upgrade (and the connect phase has read ``connection.connected`` with its timeouts), the
reader thread owns every read of the socket, so it can read ahead: one ``recv_into`` fills a
buffer with as many frames as the kernel holds, and they are parsed here in one pass.

::

    socket ──recv_into──► read-ahead buffer ──parse (RFC 6455 §5.2)──► [text, text, ...]
                                   └── ping ──► pong (websocket-client's send lock)

Frames from a server are never masked (RFC 6455 §5.1); no extension is negotiated, so the
RSV bits must be clear. Text messages come back as ``str``; a text message that is not
valid UTF-8 comes back as ``bytes``, like a binary message, for the caller to report as
malformed. A close frame ends the reader: it is kept in :attr:`FrameReader.close_frame`.

No socket timeout is expected once connected (the client's watchdog shuts the socket down
instead), but a timeout would be harmless: the buffer only ever holds whole reads, and a
frame is consumed only once it is complete.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Final

import websocket

__all__ = ["DEFAULT_MAX_SIZE", "CloseFrame", "FrameReader", "parse_close"]

DEFAULT_MAX_SIZE: Final = 64 * 1024 * 1024  # bytes in one message, fragments included
_READ_SIZE: Final = 256 * 1024  # bytes asked of one recv_into

_OP_CONT: Final = 0x0
_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA


class CloseFrame:
    """The server's close frame (RFC 6455 §5.5.1).

    Attributes:
        code: the close code, or None when the frame had no body.
        reason: the close reason ("" when absent; undecodable bytes are replaced).
    """

    __slots__ = ("code", "reason")

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"CloseFrame(code={self.code!r}, reason={self.reason!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CloseFrame):
            return NotImplemented
        return (self.code, self.reason) == (other.code, other.reason)

    def __hash__(self) -> int:
        return hash((self.code, self.reason))


def _closed(why: str) -> Exception:
    exc: Exception = websocket.WebSocketConnectionClosedException(why)
    return exc


def _protocol_error(why: str) -> Exception:
    exc: Exception = websocket.WebSocketProtocolException(why)
    return exc


class FrameReader:
    """Read whole messages from a connected WebSocket's socket, reading ahead.

    Only one thread may call :meth:`read`. Another thread may shut the socket down
    (``sock.shutdown(socket.SHUT_RDWR)``) to wake it: :meth:`read` then raises.

    Args:
        sock: the connected socket (``ws.sock``; an ``ssl.SSLSocket`` for ``wss://``).
        pong: sends a pong with the given payload (``ws.pong``); called from :meth:`read`
            for each ping, in order.
        max_size: the largest message accepted, in bytes (fragments added up).
        initial: bytes already read from the socket that belong to the next frames.
        read_size: bytes asked of each ``recv_into``.
    """

    def __init__(
        self,
        sock: socket.socket,
        pong: Callable[[bytes], Any],
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        initial: bytes = b"",
        read_size: int = _READ_SIZE,
    ) -> None:
        if max_size < 1 or read_size < 16:
            raise ValueError("max_size and read_size must be positive (read_size >= 16)")
        self._sock = sock
        self._pong = pong
        self._max_size = max_size
        self._read_size = read_size
        capacity = max(read_size, len(initial))
        self._buf = bytearray(capacity)
        self._view = memoryview(self._buf)
        self._buf[: len(initial)] = initial
        self._start = 0  # first unparsed byte
        self._end = len(initial)  # one past the last byte read
        self._fragments: list[bytes] | None = None  # a fragmented message in progress
        self._fragment_opcode = 0
        self._fragment_size = 0
        self._done = False
        self._error: BaseException | None = None  # raised by the next read
        self.close_frame: CloseFrame | None = None
        """The server's close frame, once it has come (nothing is read after it)."""

    @classmethod
    def from_websocket(cls, ws: Any, *, max_size: int = DEFAULT_MAX_SIZE) -> FrameReader:
        """A reader over a connected ``websocket.WebSocket``, taking over its reads.

        The WebSocket must sit between frames: websocket-client reads exactly what each
        frame needs, so after a whole frame nothing is buffered; anything that is, is kept.

        Args:
            ws: the connected ``websocket.WebSocket``.
            max_size: the largest message accepted, in bytes.

        Returns:
            The reader; pings are answered with ``ws.pong``.

        Raises:
            RuntimeError: the WebSocket is in the middle of a frame or a fragmented message.
        """
        sock = ws.sock
        if sock is None:
            raise _closed("the socket is already closed")
        buffer = getattr(ws, "frame_buffer", None)
        initial = b""
        if buffer is not None:
            if getattr(buffer, "header", None) is not None:
                raise RuntimeError("the WebSocket is in the middle of a frame")
            initial = b"".join(getattr(buffer, "recv_buffer", ()) or ())
            buffer.recv_buffer = []
        cont = getattr(ws, "cont_frame", None)
        if cont is not None and getattr(cont, "recving_frames", None):
            raise RuntimeError("the WebSocket is in the middle of a fragmented message")
        reader = cls(sock, ws.pong, max_size=max_size, initial=initial)
        return reader

    @property
    def buffered(self) -> int:
        """Bytes read from the socket and not yet parsed."""
        return self._end - self._start

    def read(self) -> list[str | bytes]:
        """Block until at least one whole message is in, then return every whole message.

        Pings found on the way are answered at once; pongs are skipped. A close frame ends
        the list and the reader: it is kept in :attr:`close_frame`, and the list holds the
        messages that came before it (it may then be empty; otherwise it never is).

        Returns:
            The messages, in order: ``str`` for text, ``bytes`` for binary messages and
            for text that is not valid UTF-8.

        Raises:
            websocket.WebSocketConnectionClosedException: the socket reached EOF (the peer
                went away, or another thread shut the socket down), or the reader already
                saw a close frame.
            websocket.WebSocketProtocolException: the server broke RFC 6455.
            websocket.WebSocketPayloadException: a message is larger than ``max_size``.
            OSError: the socket failed (``ssl.SSLError`` included).
        """
        if self._error is not None:
            error, self._error = self._error, None
            self._done = True
            raise error
        if self._done:
            raise _closed("the connection is closed")
        out: list[str | bytes] = []
        while True:
            need = self._parse(out)
            if out or self.close_frame is not None:
                return out
            self._fill(need)

    def _fill(self, need: int) -> None:
        """Read once, with room for at least ``need`` more bytes beyond what is buffered."""
        start, end = self._start, self._end
        pending = end - start
        capacity = len(self._buf)
        size = max(pending + need, self._read_size)
        if size > capacity or (pending == 0 and capacity > 4 * self._read_size):
            # Grow for a large frame; shrink back once a huge one has gone.
            fresh = bytearray(size)
            fresh[:pending] = self._view[start:end]
            self._view.release()
            self._buf = fresh
            self._view = memoryview(fresh)
            start, end = self._start, self._end = 0, pending
        elif start and capacity - end < self._read_size:
            # Move the partial frame to the front; a copy first, as the ranges may overlap.
            self._buf[:pending] = bytes(self._view[start:end])
            start, end = self._start, self._end = 0, pending
        count = self._sock.recv_into(self._view[end:])
        if not count:
            self._done = True
            raise _closed("the connection was lost (EOF)")
        self._end = end + count

    def _parse(self, out: list[str | bytes]) -> int:
        """Append every whole message buffered to ``out``; return the bytes the next frame
        still needs (at least 1)."""
        buf = self._buf
        view = self._view
        pos = self._start
        end = self._end
        max_size = self._max_size
        need = 1
        try:
            while True:
                avail = end - pos
                if avail < 2:
                    need = 2 - avail
                    break
                b0 = buf[pos]
                b1 = buf[pos + 1]
                length = b1 & 0x7F
                if length < 126:
                    head = 2
                elif length == 126:
                    if avail < 4:
                        need = 4 - avail
                        break
                    head = 4
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                else:
                    if avail < 10:
                        need = 10 - avail
                        break
                    head = 10
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    if length >> 63:
                        raise _protocol_error("frame length has its most significant bit set")
                if b1 & 0x80:
                    raise _protocol_error("a server frame is masked (RFC 6455 5.1)")
                if b0 & 0x70:
                    raise _protocol_error("RSV bits set without a negotiated extension")
                if length > max_size:
                    raise websocket.WebSocketPayloadException(
                        f"frame of {length} bytes exceeds max_size {max_size}"
                    )
                if avail < head + length:
                    need = head + length - avail
                    break
                begin = pos + head
                pos = begin + length
                opcode = b0 & 0x0F
                fin = b0 & 0x80
                if opcode == _OP_TEXT and fin and self._fragments is None:
                    # The hot path: one whole text frame.
                    try:
                        out.append(str(view[begin:pos], "utf-8"))
                    except UnicodeDecodeError:
                        out.append(bytes(view[begin:pos]))
                    continue
                if opcode >= _OP_CLOSE:
                    if not fin or length > 125:
                        raise _protocol_error("a control frame is fragmented or too long")
                    payload = bytes(view[begin:pos])
                    if opcode == _OP_PING:
                        try:
                            self._pong(payload)
                        except Exception as exc:
                            if not out:
                                raise
                            # Hand out what was read first; the next read raises this.
                            self._error = exc
                            break
                    elif opcode == _OP_CLOSE:
                        self.close_frame = parse_close(payload)
                        self._done = True
                        break
                    elif opcode != _OP_PONG:
                        raise _protocol_error(f"unknown control opcode {opcode:#x}")
                    continue
                self._data_frame(opcode, fin, bytes(view[begin:pos]), out)
        finally:
            self._start = pos
        if self._start == self._end:
            self._start = self._end = 0
        return need

    def _data_frame(
        self, opcode: int, fin: int, payload: bytes, out: list[str | bytes]
    ) -> None:
        """A text, binary or continuation frame other than a whole text frame."""
        fragments = self._fragments
        if opcode == _OP_CONT:
            if fragments is None:
                raise _protocol_error("a continuation frame without a message to continue")
            self._fragment_size += len(payload)
            if self._fragment_size > self._max_size:
                raise websocket.WebSocketPayloadException(
                    f"message of over {self._max_size} bytes exceeds max_size"
                )
            fragments.append(payload)
            if not fin:
                return
            payload = b"".join(fragments)
            opcode = self._fragment_opcode
            self._fragments = None
        elif opcode in (_OP_TEXT, _OP_BINARY):
            if fragments is not None:
                raise _protocol_error("a new message began inside a fragmented one")
            if not fin:
                self._fragments = [payload]
                self._fragment_opcode = opcode
                self._fragment_size = len(payload)
                return
        else:
            raise _protocol_error(f"unknown data opcode {opcode:#x}")
        if opcode == _OP_TEXT:
            try:
                out.append(payload.decode("utf-8"))
                return
            except UnicodeDecodeError:
                pass
        out.append(payload)


def parse_close(payload: bytes) -> CloseFrame:
    """Read a close frame's body: a 2-byte code and a UTF-8 reason (RFC 6455 5.5.1)."""
    if len(payload) < 2:
        return CloseFrame(None, "")
    return CloseFrame(int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace"))
