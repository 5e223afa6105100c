"""The read-ahead frame reader (c2sync/_framing.py), fed crafted server frames."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from c2sync._framing import CloseFrame, FrameReader

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
WAIT = 5.0  # seconds any blocking step may take before a test fails


def frame(
    opcode: int,
    payload: bytes | str,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = False,
    length_form: int | None = None,
) -> bytes:
    """One frame as a server sends it; ``length_form`` forces 7, 16 or 64-bit lengths."""
    data = payload.encode() if isinstance(payload, str) else payload
    n = len(data)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    form = length_form or (7 if n < 126 else 16 if n < 65536 else 64)
    mask_bit = 0x80 if mask else 0
    if form == 7:
        head = bytes([b0, mask_bit | n])
    elif form == 16:
        head = bytes([b0, mask_bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mask_bit | 127]) + struct.pack("!Q", n)
    if mask:
        key = b"\x01\x02\x03\x04"
        data = bytes(b ^ key[i % 4] for i, b in enumerate(data))
        head += key
    return head + data


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    client.settimeout(WAIT)  # a broken reader fails the test instead of hanging it
    yield client, server
    client.close()
    server.close()


class Pongs:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def __call__(self, payload: bytes) -> None:
        self.sent.append(payload)


def read_all(reader: FrameReader, count: int) -> list[Any]:
    """``count`` messages, the close frame counted as one (appended last)."""
    got: list[Any] = []
    while len(got) < count and reader.close_frame is None:
        got.extend(reader.read())
    if reader.close_frame is not None:
        got.append(reader.close_frame)
    return got


class ChunkedSocket:
    """A socket that hands out pre-cut chunks, one per recv_into: exact split points."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = [chunk for chunk in chunks if chunk]  # an empty read would mean EOF

    def recv_into(self, buffer: Any) -> int:
        if not self.chunks:
            return 0
        chunk = self.chunks.pop(0)
        size = min(len(chunk), len(buffer))
        buffer[:size] = chunk[:size]
        if size < len(chunk):
            self.chunks.insert(0, chunk[size:])
        return size


def test_one_text_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    """A whole text frame comes back as str."""
    client, server = pair
    server.sendall(frame(TEXT, '{"msg_type":"heartbeat"}'))
    assert FrameReader(client, Pongs()).read() == ['{"msg_type":"heartbeat"}']


def test_many_frames_in_one_read(pair: tuple[socket.socket, socket.socket]) -> None:
    """Frames already in the socket come back together from one read, in order."""
    client, server = pair
    texts = [f'{{"n":{i}}}' for i in range(500)]
    server.sendall(b"".join(frame(TEXT, t) for t in texts))
    reader = FrameReader(client, Pongs())
    first = reader.read()
    assert len(first) > 1
    assert first + read_all(reader, 500 - len(first)) == texts


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 300_000])
def test_lengths(pair: tuple[socket.socket, socket.socket], size: int) -> None:
    """7, 16 and 64-bit lengths, at their limits, and frames larger than the buffer."""
    client, server = pair
    text = "x" * size
    sender = threading.Thread(target=server.sendall, args=(frame(TEXT, text) * 2,))
    sender.start()
    reader = FrameReader(client, Pongs())
    assert read_all(reader, 2) == [text, text]
    sender.join(WAIT)


def test_non_minimal_64_bit_length(pair: tuple[socket.socket, socket.socket]) -> None:
    """A short frame announced with a 64-bit length is still read (be lenient in what comes)."""
    client, server = pair
    server.sendall(frame(TEXT, "short", length_form=64) + frame(TEXT, "again", length_form=16))
    assert read_all(FrameReader(client, Pongs()), 2) == ["short", "again"]


def test_every_split_point() -> None:
    """A stream cut at every byte offset parses the same: split headers, lengths, payloads."""
    stream = (
        frame(TEXT, "a" * 130)
        + frame(PING, b"p")
        + frame(TEXT, "b" * 70_000)
        + frame(TEXT, "fr", fin=False)
        + frame(CONT, "ag", fin=False)
        + frame(CONT, "ment")
        + frame(CLOSE, struct.pack("!H", 1000) + b"bye")
    )
    expected = ["a" * 130, "b" * 70_000, "fragment", CloseFrame(1000, "bye")]
    for cut in [*range(0, 140), *range(70_100, 70_160), len(stream) - 3]:
        pongs = Pongs()
        reader = FrameReader(ChunkedSocket([stream[:cut], stream[cut:]]), pongs)  # type: ignore[arg-type]
        assert read_all(reader, 4) == expected, cut
        assert pongs.sent == [b"p"]


def test_tiny_reads(pair: tuple[socket.socket, socket.socket]) -> None:
    """With a 16-byte read size every frame arrives in pieces and still parses."""
    client, server = pair
    texts = ["x" * n for n in (1, 15, 16, 17, 200, 5000)]
    server.sendall(b"".join(frame(TEXT, t) for t in texts))
    assert read_all(FrameReader(client, Pongs(), read_size=16), len(texts)) == texts


def test_fragmented_message_with_interleaved_ping(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Fragments are joined; a ping between them is answered at once with its payload."""
    client, server = pair
    pongs = Pongs()
    server.sendall(
        frame(TEXT, '{"a":', fin=False)
        + frame(PING, b"are you there")
        + frame(CONT, "1", fin=False)
        + frame(PONG, b"ignored")
        + frame(CONT, "}")
        + frame(BINARY, b"\x00\x01", fin=False)
        + frame(CONT, b"\x02")
    )
    assert read_all(FrameReader(client, pongs), 2) == ['{"a":1}', b"\x00\x01\x02"]
    assert pongs.sent == [b"are you there"]


def test_ping_answered_before_later_messages_are_read(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A ping alone is answered even though no message follows it (read keeps waiting)."""
    client, server = pair
    pongs = Pongs()
    reader = FrameReader(client, pongs)
    server.sendall(frame(PING, b"1"))
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.extend(reader.read()))
    thread.start()
    deadline = time.monotonic() + WAIT
    while not pongs.sent and time.monotonic() < deadline:
        time.sleep(0.001)
    assert pongs.sent == [b"1"]
    server.sendall(frame(TEXT, "after"))
    thread.join(WAIT)
    assert got == ["after"]


def test_close_with_code_and_reason(pair: tuple[socket.socket, socket.socket]) -> None:
    """A close frame ends the reader, with its code and reason; nothing after it is read."""
    client, server = pair
    server.sendall(
        frame(TEXT, "last")
        + frame(CLOSE, struct.pack("!H", 4001) + "bientôt".encode())
        + frame(TEXT, "never")
    )
    reader = FrameReader(client, Pongs())
    assert read_all(reader, 2) == ["last", CloseFrame(4001, "bientôt")]
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        reader.read()


def test_close_without_body(pair: tuple[socket.socket, socket.socket]) -> None:
    """An empty close frame has no code."""
    client, server = pair
    server.sendall(frame(CLOSE, b""))
    reader = FrameReader(client, Pongs())
    assert reader.read() == []
    assert reader.close_frame == CloseFrame(None, "")


def test_eof_mid_frame(pair: tuple[socket.socket, socket.socket]) -> None:
    """EOF in the middle of a frame raises the connection-closed exception."""
    client, server = pair
    server.sendall(frame(TEXT, "whole") + frame(TEXT, "cut short")[:5])
    server.shutdown(socket.SHUT_WR)
    reader = FrameReader(client, Pongs())
    assert reader.read() == ["whole"]
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        reader.read()
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        reader.read()


def test_eof_between_frames(pair: tuple[socket.socket, socket.socket]) -> None:
    """EOF with nothing pending raises too (a WebSocketException the client already maps)."""
    client, server = pair
    server.close()
    with pytest.raises(websocket.WebSocketException):
        FrameReader(client, Pongs()).read()


def test_shutdown_from_another_thread_wakes_the_reader(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Shutting the socket down (the watchdog's cut) wakes a blocked read with an error."""
    client, _server = pair
    client.settimeout(None)
    reader = FrameReader(client, Pongs())
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reader.read()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.05)  # let it block in recv_into; the assertion below does not depend on it
    started = time.monotonic()
    client.shutdown(socket.SHUT_RDWR)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0
    assert len(errors) == 1
    assert isinstance(errors[0], (websocket.WebSocketConnectionClosedException, OSError))


def test_invalid_utf8_text_stays_bytes(pair: tuple[socket.socket, socket.socket]) -> None:
    """A text frame that is not UTF-8 comes back as bytes (the client reports it malformed)."""
    client, server = pair
    server.sendall(
        frame(TEXT, b"\xff\xfe bad")
        + frame(TEXT, b"\xc3", fin=False)
        + frame(CONT, b"\x28")
        + frame(TEXT, "fine")
    )
    assert read_all(FrameReader(client, Pongs()), 3) == [b"\xff\xfe bad", b"\xc3\x28", "fine"]


def test_utf8_split_across_fragments(pair: tuple[socket.socket, socket.socket]) -> None:
    """A character split between two fragments decodes once they are joined."""
    client, server = pair
    data = "é".encode()
    server.sendall(frame(TEXT, data[:1], fin=False) + frame(CONT, data[1:]))
    assert FrameReader(client, Pongs()).read() == ["é"]


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(frame(TEXT, "m", mask=True), id="masked"),
        pytest.param(frame(TEXT, "r", rsv=4), id="rsv1"),
        pytest.param(frame(CONT, "orphan"), id="continuation-without-start"),
        pytest.param(frame(TEXT, "a", fin=False) + frame(TEXT, "b"), id="new-message-inside"),
        pytest.param(frame(PING, b"x" * 126), id="long-control"),
        pytest.param(frame(PING, b"x", fin=False), id="fragmented-control"),
        pytest.param(frame(0x3, b"x"), id="reserved-data-opcode"),
        pytest.param(frame(0xB, b"x"), id="reserved-control-opcode"),
        pytest.param(b"\x81\xff" + b"\x80" + b"\x00" * 7, id="64-bit-length-msb"),
    ],
)
def test_protocol_errors(pair: tuple[socket.socket, socket.socket], stream: bytes) -> None:
    """Frames RFC 6455 forbids from a server raise WebSocketProtocolException."""
    client, server = pair
    server.sendall(stream)
    with pytest.raises(websocket.WebSocketProtocolException):
        read_all(FrameReader(client, Pongs()), 2)


def test_max_size(pair: tuple[socket.socket, socket.socket]) -> None:
    """A frame, or a fragmented message, beyond max_size raises before it is buffered."""
    client, server = pair
    server.sendall(frame(TEXT, "x" * 101))
    with pytest.raises(websocket.WebSocketPayloadException):
        FrameReader(client, Pongs(), max_size=100).read()
    stream = frame(TEXT, "x" * 60, fin=False) + frame(CONT, "x" * 60)
    reader = FrameReader(ChunkedSocket([stream]), Pongs(), max_size=100)  # type: ignore[arg-type]
    with pytest.raises(websocket.WebSocketPayloadException):
        reader.read()
    # A 64-bit length far beyond the limit fails at once, without waiting for the payload.
    huge = FrameReader(ChunkedSocket([b"\x81\x7f" + struct.pack("!Q", 1 << 40)]), Pongs())  # type: ignore[arg-type]
    with pytest.raises(websocket.WebSocketPayloadException):
        huge.read()


def test_buffer_shrinks_after_a_huge_message() -> None:
    """The buffer grown for a huge message is given back once it has been read."""
    stream = frame(TEXT, "h" * 2_000_000) + frame(TEXT, "small")
    reader = FrameReader(ChunkedSocket([stream[:1_000_000], stream[1_000_000:]]), Pongs())  # type: ignore[arg-type]
    assert reader.read() == ["h" * 2_000_000]
    assert reader.read() == ["small"]
    reader._sock = ChunkedSocket([frame(TEXT, "next")])  # type: ignore[assignment]
    assert reader.read() == ["next"]
    assert len(reader._buf) < 1_000_000


def test_pong_failure_keeps_the_messages_read_before() -> None:
    """If answering a ping fails, messages already read are handed out; the next read raises."""

    def broken_pong(payload: bytes) -> None:
        raise BrokenPipeError("gone")

    stream = frame(TEXT, "kept") + frame(PING, b"") + frame(TEXT, "after")
    reader = FrameReader(ChunkedSocket([stream]), broken_pong)  # type: ignore[arg-type]
    assert reader.read() == ["kept"]
    with pytest.raises(BrokenPipeError):
        reader.read()


def test_from_websocket_takes_over_leftover_bytes() -> None:
    """Built from a websocket-client WebSocket: keeps its buffered bytes and answers pings
    through its pong (which takes its send lock)."""

    class FakeBuffer:
        header = None
        recv_buffer = [frame(TEXT, "left")[:3]]

    class FakeCont:
        recving_frames = None

    class FakeWs:
        def __init__(self) -> None:
            self.sock = ChunkedSocket([frame(TEXT, "left")[3:] + frame(PING, b"hi")])
            self.frame_buffer = FakeBuffer()
            self.cont_frame = FakeCont()
            self.pongs: list[bytes] = []

        def pong(self, payload: bytes) -> None:
            self.pongs.append(payload)

    ws = FakeWs()
    reader = FrameReader.from_websocket(ws)
    assert reader.read() == ["left"]
    assert ws.frame_buffer.recv_buffer == []
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        reader.read()
    assert ws.pongs == [b"hi"]

    ws = FakeWs()
    ws.frame_buffer.header = (1, 0, 0, 0, 1, 0, 5)  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        FrameReader.from_websocket(ws)


def test_with_a_real_websocket_client_connection() -> None:
    """After websocket-client's own handshake, the reader reads the same connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        import base64
        import hashlib

        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(
                hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            )
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                + frame(TEXT, "first")
                + b"".join(frame(TEXT, f"m{i}") for i in range(100))
                + frame(PING, b"pp")
            )
            pong = b""
            conn.settimeout(WAIT)
            while len(pong) < 8:  # 2-byte header + 4-byte mask + 2-byte payload
                pong += conn.recv(64)
            conn.sendall(frame(CLOSE, struct.pack("!H", 1000)))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{port}/", timeout=WAIT, skip_utf8_validation=True
    )
    try:
        assert ws.recv_frame().data == b"first"  # the connect phase, as the client does it
        ws.settimeout(None)
        reader = FrameReader.from_websocket(ws)
        got = read_all(reader, 101)
        assert got == [f"m{i}" for i in range(100)] + [CloseFrame(1000, "")]
    finally:
        ws.shutdown()
        listener.close()
    server.join(WAIT)
