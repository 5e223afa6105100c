"""The link: one WebSocket opened within one deadline, against servers that misbehave.

Mirrors c2sync/_link.py. Hostile servers are small raw-socket servers on 127.0.0.1
(tests/hostile.py), so a test can say byte for byte what the client meets. Durations are
bounds that only a hang can break: the connect timeout is 1 s and the bound 1 s more.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import traceback
from typing import Any

import pytest
import trustme

import c2sync

from .conftest import API_KEY, MakeServer, TracedPeak, c2sync_threads
from .hostile import CONNECTED, WAIT, Conn, frame, text

TIMEOUT = 1.0  # the clients' connect_timeout here
BOUND = TIMEOUT + 1.0  # docs/api-contract.md "Connecting": within connect_timeout + 1 s


# What a hostile server may make the client hold at its worst, in traced allocations: the
# reader's 256 KiB buffer, the upgrade's, a frame or two, and room for the test's own server
# (about 360 KiB are measured).
MEMORY_BOUND = 1 << 20


def connect_fails(url: str, error: type[BaseException], **options: Any) -> BaseException:
    """connect() raises ``error`` within the bound; returns it."""
    options.setdefault("connect_timeout", TIMEOUT)
    started = time.monotonic()
    with pytest.raises(error) as info:
        c2sync.connect(API_KEY, url=url, reconnect=False, **options)
    assert time.monotonic() - started < options["connect_timeout"] + BOUND - TIMEOUT
    return info.value


def drip(conn: Conn, data: bytes, every: float = 0.1) -> None:
    """Send ``data`` one byte at a time, ``every`` seconds apart, until the peer leaves."""
    pause = threading.Event()
    for byte in data:
        conn.sock.sendall(bytes([byte]))
        pause.wait(every)


# Redirects: the key never leaves for another host ---------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed_and_the_key_stays(
    make_server: MakeServer, status: int
) -> None:
    """A 3xx to another host: HandshakeError with the status and location; the other host
    never hears from the client."""
    elsewhere = make_server(lambda conn: conn.read_request())
    location = elsewhere.url.replace("ws://", "http://")

    def redirect(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(
            f"HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
        )

    server = make_server(redirect)
    error = connect_fails(server.url, c2sync.HandshakeError)
    assert error.status == status and error.headers["location"] == location  # type: ignore[attr-defined]
    assert "not followed" in str(error)
    assert not elsewhere.conns, "the client followed the redirect"


def test_a_wss_url_redirected_to_ws_never_sends_the_key_in_clear(
    make_server: MakeServer,
) -> None:
    """wss:// answered by a redirect to ws://: refused; the plain-text server hears nothing."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    clear = make_server(lambda conn: conn.read_request())

    def redirect(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(
            f"HTTP/1.1 302 Found\r\nLocation: {clear.url}\r\nContent-Length: 0\r\n\r\n".encode()
        )

    server = make_server(redirect, ssl_context=server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    error = connect_fails(server.url, c2sync.HandshakeError, ssl_context=client_context)
    assert error.status == 302  # type: ignore[attr-defined]
    assert not clear.conns
    assert server.conns[0].header("Authorization") == f"Bearer {API_KEY}"  # to its host only


# One total deadline ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    ["status line", "headers", "connection.connected"],
)
def test_a_server_dripping_bytes_cannot_stretch_the_connect_timeout(
    make_server: MakeServer, script: str
) -> None:
    """A byte every 0.1 s, forever: TimeoutError within connect_timeout + 1 s, naming the
    phase and the host."""

    def handler(conn: Conn) -> None:
        conn.read_request()
        answer = conn.upgrade_answer()
        if script == "status line":
            drip(conn, answer)
        elif script == "headers":
            conn.sock.sendall(answer.split(b"\r\n", 1)[0] + b"\r\n")
            drip(conn, b"X-Slow: " + b"a" * 200 + b"\r\n")
        else:
            conn.sock.sendall(answer)
            drip(conn, text(CONNECTED))

    server = make_server(handler)
    error = connect_fails(server.url, TimeoutError)
    message = str(error)
    assert "127.0.0.1" in message and f"{TIMEOUT:g} s" in message
    expected = "connection.connected" if script == "connection.connected" else "upgrade response"
    assert expected in message


def test_endless_header_lines_are_cut_off_by_the_byte_budget(make_server: MakeServer) -> None:
    """Header lines without end: HandshakeError once 64 KiB are read, at once."""

    def handler(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\n")
        line = b"X-More: " + b"m" * 100 + b"\r\n"
        while True:
            conn.sock.sendall(line * 100)

    server = make_server(handler)
    error = connect_fails(server.url, c2sync.HandshakeError)
    assert "64 KiB" in str(error)


def test_ten_megabytes_of_headers_keep_memory_flat(make_server: MakeServer) -> None:
    """One 10 MB header line: refused after 64 KiB; memory does not grow with it."""

    def handler(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(b"HTTP/1.1 200 OK\r\nX-Huge: ")
        chunk = b"h" * 65536  # the server's own memory stays small too
        for _ in range(10_000_000 // len(chunk)):
            conn.sock.sendall(chunk)

    server = make_server(handler)
    with TracedPeak() as peak:
        connect_fails(server.url, c2sync.HandshakeError)
    assert peak.growth < MEMORY_BOUND


def test_a_ping_flood_before_connection_connected_is_bounded(make_server: MakeServer) -> None:
    """Pings without end after the upgrade: each answered, connect() still times out, and
    the client holds nothing per ping (measured as traced allocations, so a busy machine
    cannot move it; a client keeping even one small object per ping grows by tens of
    bytes a ping, over the tens of thousands of pings a second brings)."""
    pong_bytes = [0]  # a count, not a list: the server's own memory stays flat

    def handler(conn: Conn) -> None:
        conn.accept()
        ping = frame(0x9, b"p")
        conn.sock.settimeout(WAIT)
        while True:
            conn.sock.sendall(ping * 50)
            pong_bytes[0] += len(conn.sock.recv(65536))

    server = make_server(handler)
    with TracedPeak() as peak:  # 3 s of pings: 40k or more, 1.6 MB if each cost 40 bytes
        error = connect_fails(server.url, TimeoutError, connect_timeout=3.0)
    assert "connection.connected" in str(error)
    pongs = pong_bytes[0] // 7  # a masked pong of one byte is 7 bytes
    assert pongs, "no ping was answered"
    assert peak.growth < MEMORY_BOUND, f"{peak.growth} B after {pongs} pings"


@pytest.mark.parametrize("length", [2**63 - 1, 2**40])
def test_a_huge_frame_announced_first_is_refused_from_its_header(
    make_server: MakeServer, length: int
) -> None:
    """A first frame announcing a huge payload: a ProtocolError at once, memory flat, and
    the server is told why (1009 too big)."""
    closes: list[list[tuple[int, bytes]]] = []

    def handler(conn: Conn) -> None:
        conn.accept()
        conn.sock.sendall(frame(0x1, b"", length=length))
        closes.append(conn.read_frames(limit=BOUND))

    server = make_server(handler)
    with TracedPeak() as peak:
        connect_fails(server.url, c2sync.ProtocolError)
    assert peak.growth < MEMORY_BOUND
    server.wait_accepted()
    server.close()
    (frames,) = closes
    assert frames and frames[-1][0] == 0x8
    assert int.from_bytes(frames[-1][1][:2], "big") == 1009


def test_a_tls_handshake_never_answered_times_out(make_server: MakeServer) -> None:
    """wss:// to a server that accepts TCP and never speaks TLS: TimeoutError naming TLS."""
    def silent(conn: Conn) -> None:
        conn.sock.settimeout(WAIT)
        while conn.sock.recv(65536):  # reads the ClientHello, answers nothing
            pass

    server = make_server(silent)
    url = server.url.replace("ws://", "wss://")
    error = connect_fails(url, TimeoutError)
    assert "TLS" in str(error)


# Fragments -------------------------------------------------------------------------------


def test_a_fragmented_connection_connected_is_accepted(make_server: MakeServer) -> None:
    """connection.connected split over three frames (legal, RFC 6455 5.4) connects."""
    done = threading.Event()
    data = CONNECTED.encode()

    def handler(conn: Conn) -> None:
        conn.accept()
        conn.sock.sendall(
            frame(0x1, data[:10], fin=False)
            + frame(0x9, b"ping in between")
            + frame(0x0, data[10:20], fin=False)
            + frame(0x0, data[20:])
        )
        conn.read_frames()
        done.set()

    server = make_server(handler)
    with c2sync.connect(API_KEY, url=server.url, connect_timeout=TIMEOUT) as client:
        assert client.connected_message is not None
        assert client.connected_message.msg_type == "connection.connected"
    assert done.wait(WAIT)


def test_a_message_over_the_limit_across_fragments_closes_with_1009(
    make_server: MakeServer,
) -> None:
    """After connecting, a message one byte over max_message_size in 1-byte fragments: the
    link closes with 1009, memory stays flat, and the client sees the loss."""
    limit = 4096
    frames_seen: list[list[tuple[int, bytes]]] = []

    def handler(conn: Conn) -> None:
        conn.accept()
        conn.sock.sendall(text(CONNECTED))
        burst = frame(0x1, b"x", fin=False) + frame(0x0, b"x", fin=False) * limit
        conn.sock.sendall(burst + frame(0x0, b"x"))
        frames_seen.append(conn.read_frames(limit=WAIT))

    server = make_server(handler)
    client = c2sync.connect(
        API_KEY, url=server.url, reconnect=False, max_message_size=limit, heartbeat_timeout=30
    )
    try:
        with pytest.raises(c2sync.ConnectionClosed) as info:
            client.recv(timeout=WAIT)
        assert info.value.code == 1009
    finally:
        client.close()
    server.close()
    (frames,) = frames_seen
    assert frames and frames[-1][0] == 0x8
    assert int.from_bytes(frames[-1][1][:2], "big") == 1009


# The key never echoes ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["json", "long body cut in the key"])
def test_a_401_echoing_the_key_shows_it_nowhere(
    make_server: MakeServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    shape: str,
) -> None:
    """A 401 whose body, headers and JSON echo the Authorization header: the key appears in
    no attribute, str, repr, traceback, log line, stdout or stderr."""
    caplog.set_level(logging.DEBUG)

    def handler(conn: Conn) -> None:
        conn.read_request()
        echoed = conn.header("Authorization") or ""
        body = f'{{"code":"UNAUTHORIZED","message":"bad key {echoed}","echo":"{echoed}"}}'
        if shape != "json":
            body = (body + " padding" * 600)[: 4096 - 20] + echoed  # 4 KiB ends in the key
        data = body.encode()
        conn.sock.sendall(
            b"HTTP/1.1 401 Unauthorized\r\n"
            + f"X-WS-Error: Invalid API key {echoed}\r\nX-Echo: {echoed}\r\n".encode()
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )

    server = make_server(handler)
    error = connect_fails(server.url, c2sync.AuthenticationError)
    seen = [
        str(error),
        repr(error),
        "".join(traceback.format_exception(type(error), error, error.__traceback__)),
        repr(vars(error)),
        caplog.text,
        *capsys.readouterr(),
    ]
    for text_ in seen:
        assert API_KEY not in text_ and API_KEY[:8] not in text_
    assert "***" in error.body and "***" in error.headers["x-echo"]  # type: ignore[attr-defined]
    assert len(error.body) <= 4096  # type: ignore[attr-defined]
    if shape == "json":
        assert error.code == "UNAUTHORIZED"  # type: ignore[attr-defined]
        assert "***" in (error.message or "")  # type: ignore[attr-defined]


@pytest.mark.parametrize("padding", [0, 60], ids=["whole", "cut in the key"])
def test_a_status_line_echoing_the_key_shows_it_nowhere(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture, padding: int
) -> None:
    """An upgrade answer whose status line is the echoed Authorization header (quoted, cut
    at 80 characters, in the ProtocolError): the key appears in no text of it or the log,
    the cut falling after it or inside it."""
    caplog.set_level(logging.DEBUG)

    def handler(conn: Conn) -> None:
        conn.read_request()
        echoed = conn.header("Authorization") or ""
        conn.sock.sendall(f"{'x' * padding}{echoed} 101\r\n\r\n".encode())
        conn.read_frames()

    server = make_server(handler)
    error = connect_fails(server.url, c2sync.ProtocolError)
    seen = [
        str(error),
        repr(error),
        "".join(traceback.format_exception(type(error), error, error.__traceback__)),
        caplog.text,
    ]
    for text_ in seen:
        assert API_KEY not in text_ and API_KEY[:8] not in text_
    assert "invalid upgrade response" in str(error)


# close() interrupts a connect ---------------------------------------------------------------


def test_close_during_a_reconnects_connect_stops_every_thread(make_server: MakeServer) -> None:
    """The first connection works, the reconnect meets a server that never answers the
    upgrade: close() returns and every thread the client started ends within 2 s."""
    attempts = threading.Semaphore(0)

    def handler(conn: Conn) -> None:
        if len(server.conns) == 1:
            conn.accept()
            conn.sock.sendall(text(CONNECTED))
            return  # the server goes away: the client reconnects
        conn.read_request()
        attempts.release()
        conn.sock.recv(1)  # never answers; returns when the client cuts

    server = make_server(handler)
    before = {t.ident for t in c2sync_threads()}
    client = c2sync.connect(
        API_KEY,
        url=server.url,
        connect_timeout=30,
        heartbeat_timeout=30,
        reconnect_policy=c2sync.ReconnectPolicy(initial=0.01, maximum=0.01),
    )
    assert attempts.acquire(timeout=WAIT), "the client never tried to reconnect"
    started = time.monotonic()
    client.close()
    mine = [t for t in c2sync_threads() if t.ident not in before]
    for thread in mine:
        thread.join(max(0.0, 2.0 - (time.monotonic() - started)))
    assert not [t.name for t in mine if t.is_alive()]
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("violation", "code"),
    [
        (bytes([0xC1, 0x01]) + b"x", 1002),  # RSV1 set without an extension
        (bytes([0x83, 0x00]), 1002),  # a reserved opcode
        (bytes([0x88, 0x02]) + (1005).to_bytes(2, "big"), 1002),  # a close code none may send
    ],
    ids=["rsv-bits", "reserved-opcode", "illegal-close-code"],
)
def test_a_protocol_violation_closes_with_1002(
    make_server: MakeServer, violation: bytes, code: int
) -> None:
    """After connecting, a frame RFC 6455 forbids: the server gets close 1002 and the user
    a ConnectionClosed with that code (not a normal close)."""
    frames_seen: list[list[tuple[int, bytes]]] = []

    def handler(conn: Conn) -> None:
        conn.accept()
        conn.sock.sendall(text(CONNECTED) + violation)
        frames_seen.append(conn.read_frames(limit=WAIT))

    server = make_server(handler)
    client = c2sync.connect(API_KEY, url=server.url, reconnect=False, heartbeat_timeout=30)
    try:
        with pytest.raises(c2sync.ConnectionClosed) as info:
            client.recv(timeout=WAIT)
        assert info.value.code == code
    finally:
        client.close()
    server.close()
    (frames,) = frames_seen
    assert frames and frames[-1][0] == 0x8
    assert int.from_bytes(frames[-1][1][:2], "big") == code


def test_a_close_reason_echoing_the_key_is_redacted(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A server closing with the key in its reason: the ConnectionClosed the user gets and
    every log line show *** instead."""
    caplog.set_level(logging.DEBUG)

    def handler(conn: Conn) -> None:
        conn.accept()
        echoed = (conn.header("Authorization") or "").encode()
        conn.sock.sendall(text(CONNECTED) + frame(0x8, (1011).to_bytes(2, "big") + echoed))
        conn.read_frames(limit=WAIT)

    server = make_server(handler)
    client = c2sync.connect(API_KEY, url=server.url, reconnect=False, heartbeat_timeout=30)
    try:
        with pytest.raises(c2sync.ConnectionClosed) as info:
            client.recv(timeout=WAIT)
    finally:
        client.close()
    error = info.value
    assert error.code == 1011 and "***" in error.reason
    shown = [str(error), repr(error), error.reason, caplog.text]
    shown.append("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    assert not [t for t in shown if API_KEY in t]
