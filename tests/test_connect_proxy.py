"""The tests' CONNECT proxy (tests/connect_proxy.py) does what the proxy tests rely on: it
tunnels a real WebSocket, demands credentials when asked, records what it was sent, answers
errors like a proxy, and closes without leaving threads or sockets behind."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator

import pytest
import websocket

from c2sync.emulator import Emulator

from .conftest import API_KEY, WAIT
from .connect_proxy import MAX_HEAD, ConnectProxy


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A one-connection echo server that half-closes after echoing, on 127.0.0.1."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(WAIT)
    accepted = threading.Event()

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        accepted.set()
        with conn:
            conn.settimeout(WAIT)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    address = server.getsockname()[:2]
    yield address
    if not accepted.is_set():  # nobody came through: wake accept() with a connection
        socket.create_connection(address, timeout=WAIT).close()
    thread.join(WAIT)
    server.close()


def raw_connect(proxy: ConnectProxy, target: str, *headers: str) -> tuple[socket.socket, bytes]:
    """Send a CONNECT; return the socket and the response head."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    request += "".join(f"{h}\r\n" for h in headers) + "\r\n"
    sock.sendall(request.encode())
    return sock, read_head(sock)


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def basic(user: str, password: str) -> str:
    return "Proxy-Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_tunnels_bytes_both_ways_and_passes_half_closes(echo: tuple[str, int]) -> None:
    """Bytes reach the target and come back; a half-close travels through."""
    host, port = echo
    with ConnectProxy() as proxy:
        sock, head = raw_connect(proxy, f"{host}:{port}")
        with sock:
            assert head.startswith(b"HTTP/1.1 200 ")
            payload = bytes(range(256)) * 1000
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == payload
        (record,) = proxy.connects
        assert (record.method, record.target, record.status) == ("CONNECT", f"{host}:{port}", 200)
        assert record.headers["host"] == f"{host}:{port}"


def test_a_real_websocket_goes_through(emulator: Emulator) -> None:
    """websocket-client reaches the emulator through the proxy, with credentials."""
    port = int(emulator.url.split(":")[2].split("/")[0])
    with ConnectProxy(auth=("alice", "s3cret")) as proxy:
        ws = websocket.create_connection(
            emulator.url,
            header=[f"Authorization: Bearer {API_KEY}"],
            timeout=WAIT,
            http_proxy_host="127.0.0.1",
            http_proxy_port=proxy.port,
            http_proxy_auth=("alice", "s3cret"),
            http_no_proxy=["nothing.invalid"],  # its default exempts 127.0.0.1
            proxy_type="http",
        )
        try:
            assert json.loads(ws.recv())["msg_type"] == "connection.connected"
        finally:
            ws.close()
        (record,) = proxy.connects
        assert record.target == f"127.0.0.1:{port}" and record.status == 200
        assert record.headers["proxy-authorization"] == basic("alice", "s3cret").split(": ")[1]


@pytest.mark.parametrize(
    "headers",
    [(), (basic("alice", "wrong"),), ("Proxy-Authorization: Bearer x",)],
)
def test_credentials_are_demanded_when_asked(echo: tuple[str, int], headers: tuple[str]) -> None:
    """No or wrong credentials: 407 with Proxy-Authenticate, and no tunnel."""
    host, port = echo
    with ConnectProxy(auth=("alice", "s3cret")) as proxy:
        sock, head = raw_connect(proxy, f"{host}:{port}", *headers)
        with sock:
            assert head.startswith(b"HTTP/1.1 407 ")
            assert b'Proxy-Authenticate: Basic realm="test"' in head
        assert [r.status for r in proxy.connects] == [407]


def test_right_credentials_open_the_tunnel(echo: tuple[str, int]) -> None:
    host, port = echo
    with ConnectProxy(auth=("alice", "s3cret")) as proxy:
        sock, head = raw_connect(proxy, f"{host}:{port}", basic("alice", "s3cret"))
        with sock:
            assert head.startswith(b"HTTP/1.1 200 ")


def test_proxy_errors() -> None:
    """Not a CONNECT: 405; an unreachable target: 502; refuse_with: that status."""
    closed = socket.create_server(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    with ConnectProxy() as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)
        with sock:
            sock.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
            assert read_head(sock).startswith(b"HTTP/1.1 405 ")
        sock, head = raw_connect(proxy, f"127.0.0.1:{dead_port}")
        sock.close()
        assert head.startswith(b"HTTP/1.1 502 ")
    with ConnectProxy(refuse_with=403) as proxy:
        sock, head = raw_connect(proxy, "127.0.0.1:1")
        sock.close()
        assert head.startswith(b"HTTP/1.1 403 ")


def test_an_endless_head_is_refused_not_buffered() -> None:
    """A request head beyond 8 KiB gets 400 and the connection ends: memory stays flat."""
    with ConnectProxy() as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)
        with sock:
            sock.sendall(b"CONNECT a:1 HTTP/1.1\r\n")
            try:
                for _ in range(MAX_HEAD // 1000 + 4):
                    sock.sendall(b"X-Filler: " + b"x" * 1000 + b"\r\n")
            except OSError:
                pass  # the proxy may already have closed
            assert read_head(sock).startswith(b"HTTP/1.1 400 ")
            assert recv_all(sock).endswith(b"\n")


def test_tunnels_beyond_the_bound_get_503(echo: tuple[str, int]) -> None:
    host, port = echo
    with ConnectProxy(max_tunnels=1) as proxy:
        first, head = raw_connect(proxy, f"{host}:{port}")
        with first:
            assert head.startswith(b"HTTP/1.1 200 ")
            second, head = raw_connect(proxy, f"{host}:{port}")
            second.close()
            assert head.startswith(b"HTTP/1.1 503 ")


def test_close_cuts_open_tunnels_and_joins_its_threads(echo: tuple[str, int]) -> None:
    """close() with a tunnel open returns, ends the tunnel and leaves no thread running."""
    host, port = echo
    proxy = ConnectProxy().start()
    sock, head = raw_connect(proxy, f"{host}:{port}")
    with sock:
        assert head.startswith(b"HTTP/1.1 200 ")
        proxy.close()
        assert recv_all(sock) == b""  # the tunnel's end reached the client
    assert proxy.threads_alive == 0
    proxy.close()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=WAIT)
