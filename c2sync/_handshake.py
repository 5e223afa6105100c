"""The HTTP side of opening a link: the proxy tunnel, the upgrade, and reading their answers.

Called only by :class:`~c2sync._link.Link` on the thread that opens it, on a socket the link
owns (so ``close()`` can cut it at any moment). Guarantees (docs/api-contract.md
"Connecting"): every read waits at most until the connect deadline (:class:`Deadline`); a
response is read within :data:`MAX_HEADERS` bytes of status line and headers and
:data:`MAX_BODY` bytes of body, so memory stays flat whatever the server sends; a 3xx is a
refusal (redirects are never followed); whatever the server echoes of a secret (the key,
proxy credentials) is replaced by ``***`` before it reaches an exception
(:func:`c2sync._redact.redact`).
"""

from __future__ import annotations

import base64
import os
import socket
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from ._proxy import HttpProxy
from ._redact import redact
from ._spec import AUTH_HEADER
from .exceptions import (
    AuthenticationError,
    ConnectionClosed,
    HandshakeError,
    ProtocolError,
    RateLimitError,
    ServiceUnavailableError,
)
from .reconnect import parse_retry_after

__all__ = [
    "MAX_BODY",
    "MAX_HEADERS",
    "Deadline",
    "Target",
    "refusal",
    "tunnel",
    "upgrade",
]

MAX_HEADERS = 64 * 1024  # bytes of status line and headers read from a response
MAX_BODY = 4 * 1024  # bytes of a refusal's body kept
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


class Target(NamedTuple):
    """Where a link goes, from its URL."""

    host: str
    port: int
    secure: bool
    resource: str  # path and query of the upgrade request

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        return cls(
            parts.hostname or "",
            parts.port or (443 if secure else 80),
            secure,
            (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        )


class Deadline:
    """A socket whose every read waits at most until ``deadline`` (then ``socket.timeout``):
    how the connect phase stays within one total bound."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def _arm(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("the connect deadline passed")
        self._sock.settimeout(remaining)

    def recv_into(self, view: Any) -> int:
        self._arm()
        return self._sock.recv_into(view)

    def recv(self, size: int) -> bytes:
        self._arm()
        return self._sock.recv(size)


def send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Send ``data`` whole before ``deadline`` (a timeout counts as a total since 3.5)."""
    sock.settimeout(max(0.001, deadline - time.monotonic()))
    sock.sendall(data)


def tunnel(sock: socket.socket, target: Target, proxy: HttpProxy, deadline: float) -> None:
    """Ask an HTTP proxy for a tunnel to the target (CONNECT, RFC 9110 9.3.6).

    Raises:
        HandshakeError: the proxy refused (its status; the proxy named with its
            credentials redacted, and whatever it echoes of them too).
    """
    send_all(sock, proxy.connect_request(target.host, target.port), deadline)
    secret = (proxy.authorization or "").partition(" ")[2]
    status, headers, _ = read_head(Deadline(sock, deadline), (secret,))
    if status != 200:
        headers = {name: redact(value, secret) for name, value in headers.items()}
        raise HandshakeError(
            status,
            headers,
            "",
            message=f"the proxy {proxy.safe_url} refused the tunnel to "
            f"{target.host}:{target.port}",
        )


def upgrade(sock: socket.socket, target: Target, api_key: str, deadline: float) -> bytes:
    """Send the upgrade request (the key in its ``Authorization`` header, to the target's
    host only) and read the answer.

    Returns:
        The bytes read past the headers (the first frames).

    Raises:
        HandshakeError: refused (a subclass by status), redirected, or too big.
        ProtocolError: the answer is not a WebSocket upgrade.
    """
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    host = target.host if ":" not in target.host else f"[{target.host}]"
    if target.port != (443 if target.secure else 80):
        host += f":{target.port}"
    request = (
        f"GET {target.resource} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"{AUTH_HEADER}: Bearer {api_key}\r\n"
        "\r\n"
    )
    send_all(sock, request.encode("utf-8"), deadline)
    reading = Deadline(sock, deadline)
    status, headers, rest = read_head(reading, (api_key,))
    if status != 101:
        raise refusal(status, headers, read_body(reading, headers, rest), (api_key,))
    import hashlib  # here, not at import: it loads OpenSSL's libcrypto (a few ms)

    accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest())
    if (
        headers.get("upgrade", "").lower() != "websocket"
        or "upgrade" not in headers.get("connection", "").lower()
        or headers.get("sec-websocket-accept", "").encode("ascii", "replace") != accept
    ):
        raise ProtocolError("invalid upgrade response: not a WebSocket upgrade")
    return rest


def read_head(
    sock: Deadline, secrets: tuple[str, ...] = ()
) -> tuple[int, dict[str, str], bytes]:
    """Read an HTTP response's status line and headers, at most :data:`MAX_HEADERS` bytes.

    Args:
        sock: the socket, within the connect deadline.
        secrets: masked in the status line an error quotes (before it is cut, so a cut
            inside one leaves nothing of it).

    Returns:
        (status, headers with lower-case names, the bytes read past the headers).
    """
    data = bytearray()
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(data) > MAX_HEADERS:
            raise HandshakeError(
                _status(bytes(data)), {}, "", message="response headers over 64 KiB"
            )
        chunk = sock.recv(min(16384, MAX_HEADERS + 4 - len(data)))
        if not chunk:
            raise ConnectionClosed(None, "", "the server closed during the upgrade")
        data += chunk
    head, rest = bytes(data[:end]), bytes(data[end + 4 :])
    lines = head.decode("iso-8859-1").split("\r\n")
    status = _status(head)
    if not status:
        shown = redact(lines[0], *secrets)[:80]
        raise ProtocolError(f"invalid upgrade response: {shown!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError("invalid upgrade response: a header line without a colon")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return status, headers, rest


def _status(head: bytes) -> int:
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit():
        return int(parts[1])
    return 0


def read_body(sock: Deadline, headers: dict[str, str], rest: bytes) -> bytes:
    """A refusal's body, at most :data:`MAX_BODY` bytes (what is beyond is not read)."""
    try:
        length: int | None = int(headers.get("content-length", ""))
    except ValueError:
        length = None
    want = MAX_BODY if length is None else min(length, MAX_BODY)
    body = bytearray(rest[:want])
    try:
        while len(body) < want:
            chunk = sock.recv(want - len(body))
            if not chunk:
                break
            body += chunk
    except OSError:  # socket.timeout included
        pass  # the status says what matters; a body that never comes is left out
    return bytes(body)


def refusal(
    status: int, headers: dict[str, str], body: bytes, secrets: tuple[str, ...]
) -> HandshakeError:
    """The exception for a refused upgrade (docs/protocol.md section 2), with whatever the
    server echoed of ``secrets`` replaced by ``***``."""
    headers = {name: redact(value, *secrets) for name, value in headers.items()}
    text = redact(body.decode("utf-8", "replace"), *secrets)
    if 300 <= status < 400:
        location = headers.get("location", "")
        return HandshakeError(
            status, headers, text, message=f"redirect to {location!r} not followed"
        )
    if status == 401:
        return AuthenticationError(status, headers, text)
    if status == 429:
        return RateLimitError(
            status, headers, text, retry_after=parse_retry_after(headers.get("retry-after"))
        )
    if status == 503:
        return ServiceUnavailableError(status, headers, text)
    return HandshakeError(status, headers, text)
