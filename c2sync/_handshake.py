"""The HTTP side of opening a link: the proxy tunnel, the upgrade, and reading their answers.

Called only by :class:`~c2sync._link.Link` on the thread that opens it, on a socket the link
owns (so ``close()`` can cut it at any moment). Guarantees (docs/api-contract.md
"Connecting", docs/security.md):

- every read waits at most until the connect deadline (:class:`Deadline`); a response is
  read within :data:`MAX_HEADERS` bytes of status line and headers and :data:`MAX_BODY`
  bytes of body (a chunked body decoded within it, its framing bounded too), so memory
  stays flat whatever the server sends, and a refusal is reported as soon as its announced
  end is read, not when a kept-alive connection ends;
- what goes out is checked first (:mod:`c2sync._request`): no control character, a host
  IDNA-encoded, nothing that would raise a ``UnicodeEncodeError`` quoting a secret;
- a 3xx is a refusal (redirects are never followed);
- a 101 is accepted only as RFC 6455 4.1 and RFC 9112 allow: ``HTTP/1.1 101``,
  ``Upgrade: websocket``, ``upgrade`` among the ``Connection`` tokens, the right
  ``Sec-WebSocket-Accept``, and no extension or subprotocol the client did not ask for;
  header lines are ``token ":" value`` (no space before the colon, no obs-fold). A line
  may end in a bare LF (RFC 9112 2.2 lets a recipient accept it); a bare CR is refused.
  Anything else is a :class:`~c2sync.exceptions.ProtocolError`;
- whatever the server echoes of a secret (the key, proxy credentials), in whatever
  spelling :class:`~c2sync._redact.Redactor` knows, is replaced by ``***`` before it
  reaches an exception: in header names and values, the body, and what is parsed from
  its JSON; and no frame of this module keeps the key or the server's raw answer in a
  local variable when it raises (error trackers record locals).
"""

from __future__ import annotations

import base64
import os
import re
import socket
import time
from typing import TYPE_CHECKING, Any

from ._proxy import HttpProxy
from ._redact import Redactor
from ._request import Target, upgrade_request
from .exceptions import (
    AuthenticationError,
    ConnectionClosed,
    HandshakeError,
    ProtocolError,
    RateLimitError,
    ServiceUnavailableError,
    _parse_error_body,
)
from .reconnect import parse_retry_after

if TYPE_CHECKING:
    from ._options import Options

__all__ = [
    "MAX_BODY",
    "MAX_CHUNK_LINE",
    "MAX_HEADERS",
    "Deadline",
    "Target",
    "refusal",
    "tunnel",
    "upgrade",
]

MAX_HEADERS = 64 * 1024  # bytes of status line and headers read from a response
MAX_BODY = 4 * 1024  # bytes of a refusal's body kept (decoded, when chunked)
MAX_CHUNK_LINE = 256  # bytes of one chunk-size line, extensions included
_MAX_CHUNKED = MAX_HEADERS  # bytes read for a chunked body, its framing included
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_END = re.compile(rb"\r?\n\r?\n")  # the end of a head: CRLF CRLF, or bare LFs
_STATUS = re.compile(r"HTTP/1\.([01]) ([0-9]{3})(?: [\t -~\x80-\xff]*)?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110 5.6.2)


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
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(data)
    finally:
        del data  # the request holds a secret: not in the locals a traceback keeps


def tunnel(sock: socket.socket, target: Target, proxy: HttpProxy, deadline: float) -> None:
    """Ask an HTTP proxy for a tunnel to the target (CONNECT, RFC 9110 9.3.6).

    Raises:
        HandshakeError: the proxy refused (its status; the proxy named with its
            credentials redacted, and whatever it echoes of them masked, in clear,
            base64 or escaped).
        ProtocolError: the answer is not HTTP.
    """
    send_all(sock, proxy.connect_request(target.name, target.port), deadline)
    hide = Redactor((proxy.authorization or "").partition(" ")[2], *proxy.credentials)
    status, _, headers, _ = read_head(Deadline(sock, deadline), hide)
    if status != 200:
        shown = {hide(name): hide(value) for name, value in headers.items()}
        del headers  # the proxy's raw answer may echo the credentials
        raise HandshakeError(
            status,
            shown,
            "",
            message=f"the proxy {proxy.safe_url} refused the tunnel to "
            f"{target.host}:{target.port}",
        )


def upgrade(sock: socket.socket, target: Target, options: Options, deadline: float) -> bytes:
    """Send the upgrade request (the key in its ``Authorization`` header, to the target's
    host only) and read the answer.

    The key is read from ``options`` where the request is built, never held in a local
    variable here (``repr(options)`` hides it).

    Returns:
        The bytes read past the headers (the first frames).

    Raises:
        ValueError: the key or the URL cannot go out (:mod:`c2sync._request`).
        HandshakeError: refused (a subclass by status), redirected, or too big.
        ProtocolError: the answer is not a WebSocket upgrade RFC 6455 4.1 accepts.
    """
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    send_all(sock, upgrade_request(target, key, options.api_key), deadline)
    hide = Redactor(options.api_key)
    reading = Deadline(sock, deadline)
    status, version, headers, rest = read_head(reading, hide)
    if status != 101:
        # RFC 9112 6.3: a 1xx, 204 or 304 has no body, whatever its headers say.
        bodiless = status < 200 or status in (204, 304)
        body = b"" if bodiless else read_body(reading, headers, rest)
        error = refusal(status, headers, body, hide)
        del body
        del headers, rest  # the raw answer may echo the key
        raise error
    import hashlib  # here, not at import: it loads OpenSSL's libcrypto (a few ms)

    accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest())
    connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    if (
        version != 1
        or headers.get("upgrade", "").lower() != "websocket"
        or "upgrade" not in connection
        or headers.get("sec-websocket-accept", "").encode("ascii", "replace") != accept
    ):
        raise ProtocolError("invalid upgrade response: not a WebSocket upgrade")
    for name in ("sec-websocket-extensions", "sec-websocket-protocol"):
        if headers.get(name, "").strip():  # RFC 6455 4.1: the client asked for none
            raise ProtocolError(f"invalid upgrade response: a {name} the client did not ask for")
    return rest


def read_head(
    sock: Deadline, hide: Redactor | None = None
) -> tuple[int, int, dict[str, str], bytes]:
    """Read an HTTP response's status line and headers, at most :data:`MAX_HEADERS` bytes.

    Args:
        sock: the socket, within the connect deadline.
        hide: masks the secrets in the status line an error quotes (before it is cut, so
            a cut inside one leaves nothing of it).

    Returns:
        (status, the HTTP/1.x minor version, headers with lower-case names, the bytes read
        past the headers). Headers met twice are joined with ", ".

    Raises:
        ProtocolError: not an ``HTTP/1.0`` or ``HTTP/1.1`` status line with a three-digit
            status, a bare CR, or a header line that is not ``name: value`` (a space before
            the colon, an obs-fold continuation).
        HandshakeError: more than :data:`MAX_HEADERS` bytes without the end of the head.
    """
    data = bytearray()
    searched = 0  # where the end of the head may start, at the earliest
    while True:
        found = _END.search(data, searched)
        if found is not None:
            break
        searched = max(0, len(data) - 3)
        if len(data) > MAX_HEADERS:
            status = _status(bytes(data))
            data.clear()  # it may echo a secret: not in the locals a traceback keeps
            raise HandshakeError(status, {}, "", message="response headers over 64 KiB")
        chunk = sock.recv(min(16384, MAX_HEADERS + 4 - len(data)))
        if not chunk:
            raise ConnectionClosed(None, "", "the server closed during the upgrade")
        data += chunk
        del chunk  # kept in data only, which is cleared before anything is raised
    rest = bytes(data[found.end() :])
    parsed = _parse_head(data[: found.start()].decode("iso-8859-1"), hide or Redactor())
    data.clear()
    if isinstance(parsed, str):  # raised here, where no local holds the raw answer
        del rest
        raise ProtocolError(f"invalid upgrade response: {parsed}")
    return (*parsed, rest)


def _parse_head(text: str, hide: Redactor) -> tuple[int, int, dict[str, str]] | str:
    """(status, HTTP/1.x minor version, headers) from a response head, or what is wrong
    with it (returned, not raised: see :func:`read_head`)."""
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    status_line = _STATUS.fullmatch(lines[0])
    if status_line is None:
        return repr(hide(lines[0])[:80])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if "\r" in line:
            return "a bare CR in a header line"
        if line[:1] in (" ", "\t"):
            return "a folded header line (obs-fold)"
        if not sep:
            return "a header line without a colon"
        if not _TOKEN.fullmatch(name):
            return "a header name that is not a token"
        name = name.lower()
        value = value.strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(status_line[2]), int(status_line[1]), headers


def _status(head: bytes) -> int:
    found = _STATUS.match(head.split(b"\n", 1)[0].decode("iso-8859-1").rstrip("\r"))
    return int(found[2]) if found else 0


class _Body:
    """A refusal's body as it comes: the bytes read with the head, then the socket, at most
    ``budget`` bytes in all."""

    def __init__(self, sock: Deadline, initial: bytes, budget: int) -> None:
        self._sock = sock
        self._buffer = bytearray(initial[:budget])
        self._budget = budget - len(self._buffer)

    def _fill(self) -> bool:
        if self._budget <= 0:
            return False
        chunk = self._sock.recv(min(4096, self._budget))
        self._budget -= len(chunk)
        self._buffer += chunk
        return bool(chunk)

    def read(self, size: int, into: bytearray) -> None:
        """Append up to ``size`` bytes to ``into`` (fewer when the body or budget ends)."""
        while size > 0:
            if not self._buffer and not self._fill():
                return
            part = self._buffer[:size]
            del self._buffer[:size]
            into += part
            size -= len(part)

    def line(self, limit: int) -> bytes | None:
        """The next line (its LF and CR stripped), or None: over ``limit`` bytes, or ended."""
        while True:
            end = self._buffer.find(b"\n", 0, limit + 1)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buffer) > limit or not self._fill():
                return None


def read_body(sock: Deadline, headers: dict[str, str], rest: bytes) -> bytes:
    """A refusal's body, at most :data:`MAX_BODY` bytes (what is beyond is not read).

    ``Transfer-Encoding: chunked`` is decoded (RFC 9112 7.1) within :data:`MAX_BODY`
    decoded bytes, chunk-size lines of at most :data:`MAX_CHUNK_LINE` bytes, and
    ``_MAX_CHUNKED`` bytes read in all; it ends at the last chunk (trailers are not
    read). Otherwise ``Content-Length`` says where it ends, else the connection's end.
    Reading stops early on a timeout, an error or malformed framing: the status says what
    matters, and what was read is kept.
    """
    body = bytearray()
    codings = [c.strip().lower() for c in headers.get("transfer-encoding", "").split(",")]
    try:
        if codings[-1] == "chunked":
            _read_chunked(_Body(sock, rest, _MAX_CHUNKED), body)
        else:
            length = headers.get("content-length", "").strip()
            want = min(int(length), MAX_BODY) if length.isdigit() and length.isascii() else MAX_BODY
            _Body(sock, rest, want).read(want, body)
    except OSError:  # socket.timeout included
        pass  # a body that never comes is left out
    return bytes(body)


def _read_chunked(source: _Body, body: bytearray) -> None:
    while len(body) < MAX_BODY:
        line = source.line(MAX_CHUNK_LINE)
        if line is None:
            return
        size_text = line.split(b";", 1)[0].strip(b" \t")
        if not size_text or len(size_text) > 16 or not re.fullmatch(rb"[0-9A-Fa-f]+", size_text):
            return
        size = int(size_text, 16)
        if size == 0:
            return  # the last chunk: what follows (trailers) is not waited for
        want = min(size, MAX_BODY - len(body))
        before = len(body)
        source.read(want, body)
        if len(body) - before < size or source.line(MAX_CHUNK_LINE) is None:
            return  # the budget is spent, or the body ended early


def refusal(
    status: int, headers: dict[str, str], body: bytes, hide: Redactor
) -> HandshakeError:
    """The exception for a refused upgrade (docs/protocol.md section 2), with whatever the
    server echoed of the secrets ``hide`` knows replaced by ``***``: in header names and
    values, the body, and what is parsed from its JSON (masked after parsing too, since
    the JSON may spell a secret with escapes)."""
    shown = {hide(name): hide(value) for name, value in headers.items()}
    raw = body.decode("utf-8", "replace")
    code, message = _parse_error_body(raw)
    text = hide(raw)
    code = None if code is None else hide(code)
    message = None if message is None else hide(message)
    if 300 <= status < 400:
        location = shown.get("location", "")
        return HandshakeError(
            status, shown, text, code=code, message=f"redirect to {location!r} not followed"
        )
    if status == 401:
        return AuthenticationError(status, shown, text, code=code, message=message)
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after"))
        return RateLimitError(
            status, shown, text, code=code, message=message, retry_after=retry_after
        )
    if status == 503:
        return ServiceUnavailableError(status, shown, text, code=code, message=message)
    return HandshakeError(status, shown, text, code=code, message=message)
