"""The read-ahead frame reader (c2sync/_framing.py), fed crafted server frames."""

from __future__ import annotations

import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from c2sync._framing import (
    DEFAULT_MAX_SIZE,
    FRAME_OVERHEAD,
    CloseFrame,
    FrameError,
    FrameReader,
    InvalidText,
    StreamEnded,
)

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
    """Records the pongs a reader sends; ``answered`` is set at the first."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.answered = threading.Event()

    def __call__(self, payload: bytes) -> None:
        self.sent.append(payload)
        self.answered.set()


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
    assert pongs.answered.wait(WAIT)
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
    with pytest.raises(StreamEnded):
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
    with pytest.raises(StreamEnded):
        reader.read()
    with pytest.raises(StreamEnded):
        reader.read()


def test_eof_between_frames(pair: tuple[socket.socket, socket.socket]) -> None:
    """EOF with nothing pending raises too (a ConnectionError the link already maps)."""
    client, server = pair
    server.close()
    with pytest.raises(StreamEnded):
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
    assert isinstance(errors[0], OSError)  # StreamEnded is one


def test_invalid_utf8_text_stays_bytes(pair: tuple[socket.socket, socket.socket]) -> None:
    """A text message that is not UTF-8 comes back as InvalidText bytes (the client skips
    it as malformed), told apart from a binary message; the connection goes on."""
    client, server = pair
    server.sendall(
        frame(TEXT, b"\xff\xfe bad")
        + frame(TEXT, b"\xc3", fin=False)
        + frame(CONT, b"\x28")
        + frame(BINARY, b"\xff")
        + frame(TEXT, "fine")
    )
    got = read_all(FrameReader(client, Pongs()), 4)
    assert got == [b"\xff\xfe bad", b"\xc3\x28", b"\xff", "fine"]
    assert [type(m) for m in got] == [InvalidText, InvalidText, bytes, str]


def test_utf8_split_across_fragments(pair: tuple[socket.socket, socket.socket]) -> None:
    """A character split between two fragments decodes once they are joined."""
    client, server = pair
    data = "é".encode()
    server.sendall(frame(TEXT, data[:1], fin=False) + frame(CONT, data[1:]))
    assert FrameReader(client, Pongs()).read() == ["é"]


def test_invalid_utf8_reported_at_the_first_bad_fragment(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A fragmented text message is reported as InvalidText as soon as a fragment is not
    UTF-8, before the rest has come (so a caller can fail fast); its other fragments are
    skipped, and the next message reads normally."""
    client, server = pair
    server.sendall(frame(TEXT, "κόσμε", fin=False) + frame(CONT, b"\xce\xba\xf4\x90", fin=False))
    reader = FrameReader(client, Pongs())
    got = reader.read()
    assert got == ["κόσμε".encode() + b"\xce\xba\xf4\x90"]
    assert type(got[0]) is InvalidText
    server.sendall(frame(CONT, b"more", fin=False) + frame(CONT, b"end") + frame(TEXT, "next"))
    assert reader.read() == ["next"]


def test_skipped_fragments_are_still_charged() -> None:
    """Fragments skipped after an invalid one still count toward max_size (no free flood)."""
    stream = frame(TEXT, b"\xff", fin=False) + frame(CONT, b"", fin=False) * 100
    reader = FrameReader(ChunkedSocket([stream]), Pongs(), max_size=1000)  # type: ignore[arg-type]
    assert reader.read() == [b"\xff"]
    with pytest.raises(FrameError) as info:
        reader.read()
    assert info.value.close_code == 1009


def raises_frame_error(stream: bytes, **options: Any) -> FrameError:
    """The FrameError a reader raises on ``stream`` (fed in one read, then EOF)."""
    reader = FrameReader(ChunkedSocket([stream]), Pongs(), **options)  # type: ignore[arg-type]
    with pytest.raises(FrameError) as info:
        read_all(reader, 10)
    return info.value


def close_body(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(frame(TEXT, "m", mask=True), id="masked"),
        pytest.param(frame(TEXT, "r", rsv=4), id="rsv1"),
        pytest.param(frame(TEXT, "r", rsv=2), id="rsv2"),
        pytest.param(frame(BINARY, "r", rsv=1), id="rsv3"),
        pytest.param(frame(PING, "r", rsv=7), id="rsv-on-control"),
        pytest.param(frame(CONT, "orphan"), id="continuation-without-start"),
        pytest.param(frame(TEXT, "a", fin=False) + frame(TEXT, "b"), id="new-message-inside"),
        pytest.param(
            frame(BINARY, "a", fin=False) + frame(BINARY, "b", fin=False), id="new-fragmented"
        ),
        pytest.param(frame(PING, b"x" * 126), id="long-control"),
        pytest.param(frame(PING, b"x", fin=False), id="fragmented-control"),
        pytest.param(frame(CLOSE, b"x" * 126), id="long-close"),
        pytest.param(frame(0x3, b"x"), id="reserved-data-opcode"),
        pytest.param(frame(0x7, b""), id="reserved-data-opcode-7"),
        pytest.param(frame(0xB, b"x"), id="reserved-control-opcode"),
        pytest.param(frame(0xF, b""), id="reserved-control-opcode-f"),
        pytest.param(b"\x81\xff" + b"\x80" + b"\x00" * 7, id="64-bit-length-msb"),
        pytest.param(frame(CLOSE, b"\x03"), id="close-1-byte-body"),
    ],
)
def test_protocol_errors(stream: bytes) -> None:
    """Frames RFC 6455 forbids from a server raise FrameError asking for a 1002 close."""
    error = raises_frame_error(stream)
    assert error.close_code == 1002
    assert error.reason


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_forbidden_close_codes(code: int) -> None:
    """A close code RFC 6455 forbids on the wire (reserved, unassigned, out of range) is a
    protocol error: 1002."""
    error = raises_frame_error(frame(CLOSE, close_body(code)))
    assert error.close_code == 1002
    assert str(code) in error.reason


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
)
def test_allowed_close_codes(code: int) -> None:
    """Every close code a peer may send ends the reader with that code and its reason."""
    reader = FrameReader(ChunkedSocket([frame(CLOSE, close_body(code, b"ok"))]), Pongs())  # type: ignore[arg-type]
    assert reader.read() == []
    assert reader.close_frame == CloseFrame(code, "ok")


def test_close_reason_not_utf8() -> None:
    """A close reason that is not UTF-8 asks for a 1007 close (RFC 6455 8.1)."""
    error = raises_frame_error(frame(CLOSE, close_body(1000, b"\xce\xba\xe1\xbd")))
    assert error.close_code == 1007


def test_frame_error_after_good_messages_and_then_closed() -> None:
    """Messages before a faulty frame are handed out; the next read raises the FrameError
    once; the reader is finished after it."""
    stream = frame(TEXT, "one") + frame(TEXT, "two") + frame(0x3, b"") + frame(TEXT, "never")
    reader = FrameReader(ChunkedSocket([stream]), Pongs())  # type: ignore[arg-type]
    assert reader.read() == ["one", "two"]
    with pytest.raises(FrameError) as info:
        reader.read()
    assert info.value.close_code == 1002
    with pytest.raises(StreamEnded):
        reader.read()


def test_default_max_size_is_16_mib() -> None:
    """The default limit is docs/api-contract.md's max_message_size default."""
    assert DEFAULT_MAX_SIZE == 16 * 2**20


def test_max_size_exact_and_one_over() -> None:
    """A message of exactly max_size is accepted, text or binary; one byte more asks for a
    1009 close."""
    exact = frame(TEXT, "x" * 100) + frame(BINARY, b"y" * 100)
    reader = FrameReader(ChunkedSocket([exact]), Pongs(), max_size=100)  # type: ignore[arg-type]
    assert reader.read() == ["x" * 100, b"y" * 100]
    for opcode in (TEXT, BINARY):
        error = raises_frame_error(frame(opcode, b"x" * 101), max_size=100)
        assert error.close_code == 1009
    fragmented = frame(TEXT, "x" * 60, fin=False) + frame(CONT, "x" * 60)
    assert raises_frame_error(fragmented, max_size=100).close_code == 1009


def test_oversized_frame_refused_from_its_header() -> None:
    """A length far beyond the limit fails at once, without waiting for (or buffering) the
    payload: first frame, or a continuation."""
    huge = b"\x81\x7f" + struct.pack("!Q", 1 << 40)
    assert raises_frame_error(huge).close_code == 1009
    cont = frame(BINARY, b"ab", fin=False) + b"\x80\x7f" + struct.pack("!Q", 1 << 40)
    assert raises_frame_error(cont).close_code == 1009
    # A protocol error stays one whatever the announced length.
    orphan = b"\x80\x7f" + struct.pack("!Q", 1 << 40)
    assert raises_frame_error(orphan).close_code == 1002
    inside = frame(TEXT, b"a", fin=False) + b"\x82\x7f" + struct.pack("!Q", 1 << 40)
    assert raises_frame_error(inside).close_code == 1002


def test_message_just_over_the_limit_in_many_fragments() -> None:
    """A message over the limit by one byte, counting every fragment's overhead, is refused
    with 1009; one byte less is accepted."""
    max_size = 10_000
    pieces = 50  # the first fragment is charged its payload only
    room = max_size - (pieces - 1) * FRAME_OVERHEAD
    for extra, ok in ((0, True), (1, False)):
        sizes = [room // pieces] * (pieces - 1)
        sizes.append(room - sum(sizes) + extra)
        stream = frame(BINARY, b"a" * sizes[0], fin=False)
        for i, size in enumerate(sizes[1:], 2):
            stream += frame(CONT, b"a" * size, fin=i == pieces)
        if ok:
            reader = FrameReader(ChunkedSocket([stream]), Pongs(), max_size=max_size)  # type: ignore[arg-type]
            assert reader.read() == [b"a" * room]
        else:
            assert raises_frame_error(stream, max_size=max_size).close_code == 1009


def test_empty_continuation_frames_are_charged() -> None:
    """A stream of empty continuation frames is refused once their overhead passes the
    limit, although it carries no payload at all."""
    max_size = 1000
    allowed = max_size // FRAME_OVERHEAD  # empty continuations that fit
    stream = frame(TEXT, b"", fin=False) + frame(CONT, b"", fin=False) * (allowed - 1)
    ok = stream + frame(CONT, b"")
    reader = FrameReader(ChunkedSocket([ok]), Pongs(), max_size=max_size)  # type: ignore[arg-type]
    assert reader.read() == [""]
    endless = stream + frame(CONT, b"", fin=False) * 10_000
    assert raises_frame_error(endless, max_size=max_size).close_code == 1009


def test_control_frames_inside_a_full_message_are_not_charged() -> None:
    """A ping between fragments of a message close to the limit is still answered, and the
    message still accepted."""
    max_size = 300
    pongs = Pongs()
    stream = (
        frame(BINARY, b"a" * 200, fin=False)
        + frame(PING, b"p" * 125)
        + frame(CONT, b"b" * (max_size - 200 - FRAME_OVERHEAD))
    )
    reader = FrameReader(ChunkedSocket([stream]), pongs, max_size=max_size)  # type: ignore[arg-type]
    assert reader.read() == [b"a" * 200 + b"b" * (max_size - 200 - FRAME_OVERHEAD)]
    assert pongs.sent == [b"p" * 125]


def test_one_byte_fragments_use_bounded_memory() -> None:
    """A message in 1-byte fragments within the limit is accepted, and reading it costs a
    small multiple of its size (not ~100 bytes per fragment)."""
    count = 20_000
    max_size = count * (1 + FRAME_OVERHEAD)
    stream = frame(TEXT, b"z", fin=False) + frame(CONT, b"z", fin=False) * (count - 2)
    stream += frame(CONT, b"z")
    source = ChunkedSocket([stream])
    reader = FrameReader(source, Pongs(), max_size=max_size, read_size=len(stream))  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        got = reader.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == ["z" * count]
    assert peak < 8 * count, peak  # a list of 1-byte bytes objects would take ~40x count


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
    with pytest.raises(StreamEnded):
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
