"""A small HTTP CONNECT proxy for tests, on 127.0.0.1 port 0 (docs/api-contract.md "Clocks
and proxies": traffic through ``HTTPS_PROXY``, credentials never shown).

One acceptor thread, one thread per tunnel; every thread is a daemon woken by a socketpair
or a shut socket, never by polling, and joined with a bound by :meth:`ConnectProxy.close`.
It reads one request head (at most :data:`MAX_HEAD` bytes), checks ``CONNECT host:port``
and, when asked, ``Proxy-Authorization: Basic user:pass``; records each request (target,
headers, the status it answered) for the test to read, then pipes bytes both ways with
half-closes until both sides are done. Bounded: at most ``max_tunnels`` at once (the next
gets 503), a head of at most 8 KiB, at most :data:`MAX_RECORDS` records kept.
"""

from __future__ import annotations

import base64
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Any

import attrs

MAX_HEAD = 8192
MAX_RECORDS = 1000
JOIN_BOUND = 5.0
_CHUNK = 65536


@attrs.frozen
class ConnectRecord:
    """One request the proxy read.

    Attributes:
        method: the request's method (``CONNECT`` when well-formed).
        target: ``host:port`` as the request line named it.
        headers: the request headers, names in lower case.
        status: what the proxy answered (200: a tunnel was opened).
    """

    method: str
    target: str
    headers: dict[str, str]
    status: int


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 (see the module docstring).

    Args:
        auth: ``(user, password)`` to require as ``Proxy-Authorization: Basic``; None
            lets everyone through.
        refuse_with: answer every CONNECT with this status instead (e.g. 403).
        max_tunnels: tunnels open at once; one more is answered 503.
        timeout: seconds to wait for a request head, or for the upstream connection.
    """

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        refuse_with: int | None = None,
        max_tunnels: int = 16,
        timeout: float = 10.0,
    ) -> None:
        self.auth = auth
        self.refuse_with = refuse_with
        self.max_tunnels = max_tunnels
        self.timeout = timeout
        self.cond = threading.Condition()
        self.records: list[ConnectRecord] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()  # readable once close() runs
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()  # every open client and upstream socket
        self._tunnels = 0

    # Lifecycle -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (no credentials)."""
        return f"http://127.0.0.1:{self.port}"

    def url_with_auth(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def start(self) -> ConnectProxy:
        self._spawn(self._accept, "connect-proxy-accept")
        return self

    def __enter__(self) -> ConnectProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, cut every tunnel, join every thread (bounded). Idempotent."""
        with self.cond:
            if self._closing:
                return
            self._closing = True
            sockets = list(self._sockets)
        self._wake_w.send(b"x")
        for sock in sockets:
            _shut(sock)
        with self.cond:
            threads = list(self._threads)
        for thread in threads:
            thread.join(JOIN_BOUND)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def threads_alive(self) -> int:
        return sum(1 for t in self._threads if t.is_alive())

    # What the tests read ----------------------------------------------------------------

    @property
    def connects(self) -> list[ConnectRecord]:
        """Every request read so far, oldest first."""
        with self.cond:
            return list(self.records)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Block until ``predicate()`` holds (re-checked at every record), or raise
        TimeoutError."""
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise TimeoutError(f"the proxy did not see it within {timeout:g} s")

    # The threads -------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self._wake_r in ready:
                    return
                client, _ = self._listener.accept()
                with self.cond:  # so close() either sees the thread or refuses it
                    if self._closing:
                        client.close()
                        return
                    self._sockets.add(client)
                    self._threads = [t for t in self._threads if t.is_alive()]
                    self._spawn(self._serve, "connect-proxy-tunnel", client)

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        counted = False
        try:
            client.settimeout(self.timeout)
            head, extra = _read_head(client)
            if head is None:
                self._answer(client, "", "", {}, 400, "Bad Request")
                return
            method, target, headers = head
            if method != "CONNECT":
                self._answer(client, method, target, headers, 405, "Method Not Allowed")
                return
            if self.auth is not None and headers.get("proxy-authorization") != _basic(*self.auth):
                self._answer(
                    client, method, target, headers, 407, "Proxy Authentication Required",
                    b'Proxy-Authenticate: Basic realm="test"\r\n',
                )
                return
            if self.refuse_with is not None:
                self._answer(client, method, target, headers, self.refuse_with, "Refused")
                return
            with self.cond:
                counted = self._tunnels < self.max_tunnels
                self._tunnels += counted
            if not counted:
                self._answer(client, method, target, headers, 503, "Too Many Tunnels")
                return
            host, _, port = target.rpartition(":")
            try:
                upstream = socket.create_connection(
                    (host.strip("[]"), int(port)), timeout=self.timeout
                )
            except (OSError, ValueError):
                self._answer(client, method, target, headers, 502, "Bad Gateway")
                return
            with self.cond:
                if self._closing:
                    return
                self._sockets.add(upstream)
            self._answer(client, method, target, headers, 200, "Connection Established")
            if extra:
                upstream.sendall(extra)
            pipe(client, upstream, self._wake_r)
        except OSError:
            pass  # the peer went away, or close() cut the socket
        finally:
            with self.cond:
                self._tunnels -= counted
                for sock in (client, upstream):
                    if sock is not None:
                        self._sockets.discard(sock)
                        sock.close()

    def _answer(
        self,
        client: socket.socket,
        method: str,
        target: str,
        headers: dict[str, str],
        status: int,
        reason: str,
        extra_headers: bytes = b"",
    ) -> None:
        with self.cond:
            self.records.append(ConnectRecord(method, target, headers, status))
            del self.records[:-MAX_RECORDS]
            self.cond.notify_all()
        body = b"" if status == 200 else f"{status} {reason}\n".encode()
        length = b"" if status == 200 else b"Content-Length: %d\r\n" % len(body)
        client.sendall(
            f"HTTP/1.1 {status} {reason}\r\n".encode() + extra_headers + length + b"\r\n" + body
        )
        if status != 200:
            _linger(client)


def _linger(client: socket.socket) -> None:
    """End a refused connection gracefully: half-close, then read and drop what the client
    still sends (at most 1 MiB, or until it goes quiet), so closing with unread input does
    not reset the connection before the client has read the answer."""
    try:
        client.shutdown(socket.SHUT_WR)
        client.settimeout(0.5)
        drained = 0
        while drained < 1 << 20:
            chunk = client.recv(65536)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("latin-1")).decode()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _read_head(
    client: socket.socket,
) -> tuple[tuple[str, str, dict[str, str]] | None, bytes]:
    """The request line and headers (None when malformed or over MAX_HEAD), and whatever
    bytes came after them."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return None, b""
        chunk = client.recv(4096)
        if not chunk:
            return None, b""
        data += chunk
    head, _, extra = data.partition(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        return None, b""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None, b""
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            return None, b""
        headers[name.strip().lower()] = value.strip()
    return (parts[0], parts[1], headers), extra


def pipe(
    a: socket.socket,
    b: socket.socket,
    wake: socket.socket,
    record: Callable[[bytes], None] | None = None,
) -> None:
    """Copy bytes both ways until both sides have ended (half-closes passed on), or until
    ``wake`` is readable (the proxy closes). ``record`` sees every chunk ``a`` sent, as it
    was on the wire."""
    a.setblocking(True)
    b.setblocking(True)
    a.settimeout(None)
    b.settimeout(None)
    peer = {a: b, b: a}
    with selectors.DefaultSelector() as selector:
        selector.register(a, selectors.EVENT_READ)
        selector.register(b, selectors.EVENT_READ)
        selector.register(wake, selectors.EVENT_READ)
        open_ends = 2
        while open_ends:
            for key, _ in selector.select():
                sock = key.fileobj
                if sock is wake:
                    return
                assert isinstance(sock, socket.socket)
                data = sock.recv(_CHUNK)
                if data:
                    if record is not None and sock is a:
                        record(data)
                    peer[sock].sendall(data)
                    continue
                selector.unregister(sock)
                open_ends -= 1
                try:
                    peer[sock].shutdown(socket.SHUT_WR)
                except OSError:
                    pass
