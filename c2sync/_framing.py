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
RSV bits must be clear. Text messages come back as ``str``, binary ones as ``bytes``. A text
message that is not valid UTF-8 comes back as :class:`InvalidText` (a ``bytes`` subclass),
for the caller to report as malformed and skip: the library's documented deviation from
RFC 6455 §8.1 (docs/api-contract.md "Receiving"); a caller that wants the RFC's behaviour
closes with 1007 when it sees one. In a fragmented text message the fault is reported as soon as a
fragment shows it (the bytes received so far, as ``InvalidText``), and the message's other
fragments are skipped. A close frame ends the reader: it is kept in
:attr:`FrameReader.close_frame`.

Errors: a frame RFC 6455 forbids, or a message beyond ``max_size``, raises
:class:`FrameError`. Its ``close_code``
attribute (a stable part of this module's contract) is the close code the connection must
now be closed with: 1002 (protocol error), 1007 (a close reason that is not UTF-8) or 1009
(message too big); its ``reason`` says why, in words fit for the log and for the close
frame (at most 123 bytes). The reader is finished after it: later reads raise
:class:`StreamEnded` (a ``ConnectionError``), as EOF does. Neither is websocket-client's:
``import c2sync`` does not import websocket-client (nor, through it, ``ssl`` and ``http``).

Size accounting: a message in one frame may be up to ``max_size`` bytes, exactly. Each
frame of a fragmented message after the first is charged its payload plus
:data:`FRAME_OVERHEAD` bytes, so that a flood of empty continuation frames is refused like
a huge message. Fragments are gathered in one ``bytearray``, and a frame is refused from
its header, before its payload is buffered: memory stays within about twice ``max_size``
(the message and the read-ahead buffer holding its last frame), whatever the fragmentation.

No socket timeout is expected once connected (the client's watchdog shuts the socket down
instead), but a timeout would be harmless: the buffer only ever holds whole reads, and a
frame is consumed only once it is complete.
"""

from __future__ import annotations

import codecs
import socket
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_SIZE",
    "FRAME_OVERHEAD",
    "CloseFrame",
    "FrameError",
    "FrameReader",
    "InvalidText",
    "StreamEnded",
    "parse_close",
]

# bytes in one message (docs/api-contract.md "Connecting", max_message_size)
DEFAULT_MAX_SIZE: Final = 16 * 1024 * 1024
FRAME_OVERHEAD: Final = 64  # bytes charged per frame of a fragmented message after the first
_READ_SIZE: Final = 256 * 1024  # bytes asked of one recv_into

_UTF8_DECODER: Final = codecs.getincrementaldecoder("utf-8")

_OP_CONT: Final = 0x0
_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA

CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_INVALID_DATA: Final = 1007
CLOSE_TOO_BIG: Final = 1009

# Close codes a peer may send (RFC 6455 §7.4.1 and the IANA registry, as websockets reads
# them): 1004-1006 and 1015 are reserved for local use, 1016-2999 are unassigned.
_SENDABLE_CLOSE_CODES: Final = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


class FrameError(Exception):
    """The server broke RFC 6455, or sent a message beyond ``max_size``.

    Attributes:
        close_code: the code to close the connection with: 1002 (protocol error), 1007
            (invalid UTF-8 in a close reason) or 1009 (message too big).
        reason: why, short enough for a close frame's reason (at most 123 bytes).
    """

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.close_code, self.reason))

    def __repr__(self) -> str:
        return f"FrameError(close_code={self.close_code!r}, reason={self.reason!r})"


class InvalidText(bytes):
    """A text message whose payload is not valid UTF-8: its raw bytes.

    The library skips it as malformed (docs/api-contract.md "Receiving", a documented deviation from
    RFC 6455 §8.1); a caller that follows the RFC closes with 1007 instead. ``type(x) is
    bytes`` is false for it, ``isinstance(x, bytes)`` true.
    """

    __slots__ = ()


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


class StreamEnded(ConnectionError):
    """The reader is finished: EOF, or a close frame or a :class:`FrameError` ended it."""


def _closed(why: str) -> Exception:
    return StreamEnded(why)


def _protocol_error(why: str) -> FrameError:
    return FrameError(CLOSE_PROTOCOL_ERROR, why)


class FrameReader:
    """Read whole messages from a connected WebSocket's socket, reading ahead.

    Only one thread may call :meth:`read`. Another thread may shut the socket down
    (``sock.shutdown(socket.SHUT_RDWR)``) to wake it: :meth:`read` then raises.

    Args:
        sock: the connected socket (``ws.sock``; an ``ssl.SSLSocket`` for ``wss://``).
        pong: sends a pong with the given payload (``ws.pong``); called from :meth:`read`
            for each ping, in order.
        max_size: the largest message accepted, in bytes (docs/api-contract.md
            ``max_message_size``; see
            the module's "Size accounting" for fragmented messages).
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
        self._message: bytearray | None = None  # a fragmented message in progress
        self._message_opcode = 0
        self._charged = 0  # its payload plus FRAME_OVERHEAD per frame after the first
        # Checks a fragmented text message's UTF-8 fragment by fragment; None for binary,
        # and once the message has been found invalid (its other fragments are skipped).
        self._utf8: codecs.IncrementalDecoder | None = None
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

    def rebind(self, sock: Any) -> None:
        """Read from ``sock`` from now on (anything with ``recv_into``): the link reads the
        connect phase through a deadline-bound wrapper, then the socket itself. What is
        buffered stays."""
        self._sock = sock

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
            The messages, in order: ``str`` for text, ``bytes`` for binary messages, and
            :class:`InvalidText` (a ``bytes``) for text that is not valid UTF-8.

        Raises:
            StreamEnded: the socket reached EOF (the peer went away, or another thread
                shut the socket down), or the reader already saw a close frame or raised
                a :class:`FrameError`.
            FrameError: the server broke RFC 6455, or a message is larger than
                ``max_size``; close the connection with its ``close_code``. Messages read
                before the faulty frame are handed out first; the next read raises it.
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
            try:
                need = self._parse(out)
            except FrameError as exc:
                self._done = True
                self._message = None
                if not out:
                    raise
                self._error = exc  # hand out what came before the fault first
                return out
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
        limit = self._frame_limit()  # the largest data frame acceptable next
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
                if length > limit:
                    # Refused from the header, before its payload is buffered (unless it is
                    # a control frame, which is not charged to the message).
                    self._check_long_frame(b0, length)
                if avail < head + length:
                    need = head + length - avail
                    break
                begin = pos + head
                pos = begin + length
                opcode = b0 & 0x0F
                fin = b0 & 0x80
                if opcode == _OP_TEXT and fin and self._message is None:
                    # The hot path: one whole text frame.
                    try:
                        out.append(str(view[begin:pos], "utf-8"))
                    except UnicodeDecodeError:
                        out.append(InvalidText(view[begin:pos]))
                    continue
                if opcode >= _OP_CLOSE:
                    if not fin or length > 125:
                        raise _protocol_error("a control frame is fragmented or too long")
                    if opcode == _OP_PING:
                        try:
                            self._pong(bytes(view[begin:pos]))
                        except Exception as exc:
                            if not out:
                                raise
                            # Hand out what was read first; the next read raises this.
                            self._error = exc
                            break
                    elif opcode == _OP_CLOSE:
                        self.close_frame = _read_close(bytes(view[begin:pos]))
                        self._done = True
                        break
                    elif opcode != _OP_PONG:
                        raise _protocol_error(f"unknown control opcode {opcode:#x}")
                    continue
                self._data_frame(opcode, fin, view[begin:pos], out)
                limit = self._frame_limit()
        finally:
            self._start = pos
        if self._start == self._end:
            self._start = self._end = 0
        return need

    def _frame_limit(self) -> int:
        """The largest data frame payload acceptable next (message size accounting)."""
        if self._message is None:
            return self._max_size
        return self._max_size - self._charged - FRAME_OVERHEAD

    def _check_long_frame(self, b0: int, length: int) -> None:
        """A frame longer than the message allows: raise the right error, or return for a
        control frame short enough to be read (it is not charged to the message)."""
        opcode = b0 & 0x0F
        if opcode >= _OP_CLOSE:
            if length <= 125:
                return
            raise _protocol_error("a control frame is too long")
        if opcode not in (_OP_CONT, _OP_TEXT, _OP_BINARY):
            raise _protocol_error(f"unknown data opcode {opcode:#x}")
        if opcode == _OP_CONT and self._message is None:
            raise _protocol_error("a continuation frame without a message to continue")
        if opcode != _OP_CONT and self._message is not None:
            raise _protocol_error("a new message began inside a fragmented one")
        raise FrameError(
            CLOSE_TOO_BIG, f"message over max_size ({self._max_size} bytes)"
        )

    def _data_frame(
        self, opcode: int, fin: int, payload: memoryview, out: list[str | bytes]
    ) -> None:
        """A text, binary or continuation frame other than a whole text frame (its size
        was checked against the message's limit from its header)."""
        message = self._message
        if opcode == _OP_CONT:
            if message is None:
                raise _protocol_error("a continuation frame without a message to continue")
            self._charged += len(payload) + FRAME_OVERHEAD
            if self._message_opcode == _OP_TEXT and self._utf8 is None:
                pass  # already reported as invalid text: skipped, charged all the same
            else:
                message += payload
                if not fin:
                    self._check_utf8(payload, out)
            if not fin:
                return
            opcode = self._message_opcode
            self._message = None
            if opcode == _OP_TEXT and self._utf8 is None:
                return
            self._utf8 = None
        elif opcode in (_OP_TEXT, _OP_BINARY):
            if message is not None:
                raise _protocol_error("a new message began inside a fragmented one")
            if not fin:
                self._message = bytearray(payload)
                self._message_opcode = opcode
                self._charged = len(payload)
                if opcode == _OP_TEXT:
                    self._utf8 = _UTF8_DECODER()
                    self._check_utf8(payload, out)
                return
            out.append(bytes(payload))  # a whole binary frame
            return
        else:
            raise _protocol_error(f"unknown data opcode {opcode:#x}")
        if opcode == _OP_TEXT:
            try:
                out.append(message.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(InvalidText(message))
            return
        out.append(bytes(message))

    def _check_utf8(self, payload: memoryview, out: list[str | bytes]) -> None:
        """Report a fragmented text message as :class:`InvalidText` as soon as a fragment
        shows it is not UTF-8 (RFC 6455 8.1 fails the connection at once; a caller can), and
        skip the rest of it. The whole message is decoded once more at its end: this check
        costs fragmented text a second decode, never whole frames."""
        utf8 = self._utf8
        if utf8 is None:
            return
        try:
            utf8.decode(payload, False)
        except UnicodeDecodeError:
            assert self._message is not None
            out.append(InvalidText(self._message))
            self._message.clear()  # nothing more is kept of it
            self._utf8 = None


def _read_close(payload: bytes) -> CloseFrame:
    """A close frame's body checked as RFC 6455 §5.5.1 and §7.4 require of a peer."""
    if not payload:
        return CloseFrame(None, "")
    if len(payload) == 1:
        raise _protocol_error("a close frame with a 1-byte body")
    code = int.from_bytes(payload[:2], "big")
    if code not in _SENDABLE_CLOSE_CODES and not 3000 <= code <= 4999:
        raise _protocol_error(f"close code {code} is not one a peer may send")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "a close reason that is not UTF-8") from None
    return CloseFrame(code, reason)


def parse_close(payload: bytes) -> CloseFrame:
    """Read a close frame's body leniently: a 2-byte code and a UTF-8 reason (RFC 6455
    5.5.1), for the connect phase (the reader checks them strictly)."""
    if len(payload) < 2:
        return CloseFrame(None, "")
    return CloseFrame(int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace"))
