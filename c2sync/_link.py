"""The link: one WebSocket, opened within one deadline, read, written and cut.

Knows nothing of subscriptions, queues or reconnects. Who calls what:

- the session's reader thread (or, for the first connect, the user's) calls
  :meth:`Link.open` and then :meth:`Link.read` until the link ends;
- any thread calls :meth:`Link.send` (one lock keeps frames whole);
- the watchdog and ``close()`` call :meth:`Link.cut` and :meth:`Link.send_close`.

The link owns its socket from the first moment (docs/websocket-client-facts.md "Versions"):
it connects TCP, talks to a proxy, wraps TLS and does the HTTP upgrade itself, so that

- everything before ``open()`` returns shares one deadline: each step's timeout is what
  is left of it (CPython's connect, ``sendall`` and TLS handshake count a timeout as a
  total), and every read goes through :class:`_Deadline`; a server that drips bytes,
  sends endless headers or floods pings cannot stretch it (docs/api-contract.md
  "Connecting");
- the upgrade response is read within a byte budget (64 KiB of status line and headers,
  4 KiB of body): memory stays flat whatever the server sends;
- redirects are never followed, and the key is sent only to the URL's host, in the
  upgrade request's ``Authorization`` header, over the scheme the user chose;
- whatever the server echoes back is redacted (``***``) before it reaches an exception;
- :meth:`cut` wakes a connect, a read or a send in progress at once, from any thread
  (a socket pair wakes the TCP connect; shutting the socket down wakes the rest), which
  is how ``close()`` interrupts a reconnect and the watchdog enforces the heartbeat
  deadline (docs/websocket-client-facts.md "Waking a blocked reader").

Frames are read by :class:`~c2sync._framing.FrameReader` and built by websocket-client's
``ABNF`` (masking, RFC 6455 section 5.3). No websocket-client exception type escapes: a
lost or failed link is a :class:`~c2sync.exceptions.ConnectionClosed`.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, Union
from urllib.parse import unquote, urlsplit

import websocket

from ._framing import CloseFrame, FrameError, FrameReader
from ._options import Options
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

__all__ = ["MAX_BODY", "MAX_HEADERS", "Link", "redact"]

logger = logging.getLogger("c2sync.link")

Text = Union[str, bytes]  # evaluated at run time: no "|" on Python 3.9

MAX_HEADERS = 64 * 1024  # bytes of status line and headers read from an upgrade response
MAX_BODY = 4 * 1024  # bytes of a refusal's body kept
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_REDACTED = "***"


def redact(text: str, *secrets: str) -> str:
    """``text`` with every secret replaced by ``***``, including a secret cut off at the
    end of ``text`` (a body truncated in the middle of an echoed key)."""
    for secret in secrets:
        if not secret:
            continue
        text = text.replace(secret, _REDACTED)
        for size in range(len(secret) - 1, 3, -1):
            if text.endswith(secret[:size]):
                text = text[:-size] + _REDACTED
                break
    return text


class _Deadline:
    """A socket whose every read waits at most until ``deadline`` (``socket.timeout``
    after it): how the connect phase stays within one total bound."""

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


class Link:
    """One WebSocket connection to ``options.url``.

    Args:
        options: the client's options (URL, key, timeouts, TLS, proxy, size limit).
    """

    def __init__(self, options: Options) -> None:
        self._options = options
        parts = urlsplit(options.url)
        self._secure = parts.scheme == "wss"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._secure else 80)
        self._resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._lock = threading.Lock()  # guards the socket reference and the flags
        self._send_lock = threading.Lock()  # one frame on the wire at a time
        self._sock: socket.socket | None = None
        self._waker: tuple[socket.socket, socket.socket] | None = None
        self._cut = False
        self._upgraded = False  # frames may be sent (a close frame before it would be noise)
        self._close_sent = False
        self._reader: FrameReader | None = None
        self._early: list[Text] = []  # messages read with the first one, for read()
        self._connect_deadline: float | None = None  # while opening: pongs obey it too
        self.close_frame: CloseFrame | None = None
        """The server's close frame, once :meth:`read` has met it."""

    # Opening ---------------------------------------------------------------------------

    def open(self, deadline: float) -> Text:
        """Connect, upgrade, and read the first message, all before ``deadline``.

        Args:
            deadline: ``time.monotonic()`` by which the first message must be in.

        Returns:
            The first message (``str``; ``bytes`` when binary or not valid UTF-8).

        Raises:
            HandshakeError: the upgrade was refused, redirected, or its response was too
                big (or a subclass by status: 401, 429, 503).
            TimeoutError: the deadline passed; the message names the phase and the host.
            ProtocolError: the server answered with something that is not a WebSocket
                upgrade, or broke RFC 6455 before its first message.
            ConnectionClosed: the server closed, the link was cut, or the socket failed.
            OSError: the host could not be reached (``socket.gaierror`` when its name does
                not resolve), or its certificate failed verification.
        """
        self.handshake(deadline)
        return self._first_message(deadline)

    def handshake(self, deadline: float) -> None:
        """Connect and do the upgrade before ``deadline`` (see :meth:`open`)."""
        options = self._options
        phase = f"could not connect to {self._host}:{self._port}"
        try:
            proxy = self._proxy()
            if proxy is not None:
                phase = f"no answer from the proxy {proxy[0]}:{proxy[1]}"
                sock = self._connect_tcp(proxy[0], proxy[1], deadline)
                self._tunnel(sock, proxy, deadline)
            else:
                sock = self._connect_tcp(self._host, self._port, deadline)
            if self._secure:
                phase = f"the TLS handshake with {self._host} did not finish"
                sock = self._tls(sock, deadline)
            phase = f"no upgrade response from {options.safe_url}"
            leftover = self._upgrade(sock, deadline)
            self._upgraded = True
        except socket.timeout as exc:  # not a TimeoutError on Python 3.9
            self.release()
            raise TimeoutError(f"{phase} within {options.connect_timeout:g} s") from exc
        except BaseException as exc:
            self.release()
            if self._cut and not isinstance(exc, (HandshakeError, ProtocolError)):
                raise ConnectionClosed(None, "", "the client was closed while connecting") from exc
            raise
        self._connect_deadline = deadline
        self._reader = FrameReader(
            _Deadline(sock, deadline),  # type: ignore[arg-type]
            self._pong,
            max_size=options.max_message_size,
            initial=leftover,
        )

    def _first_message(self, deadline: float) -> Text:
        reader = self._reader
        assert reader is not None and self._sock is not None
        options = self._options
        try:
            texts = reader.read()  # pings on the way are answered, within the deadline
            if not texts:
                close = reader.close_frame or CloseFrame(None, "")
                raise ConnectionClosed(close.code, close.reason)
        except socket.timeout as exc:
            self.release()
            raise TimeoutError(
                f"no connection.connected from {self._host} within {options.connect_timeout:g} s"
            ) from exc
        except FrameError as exc:
            self.send_close(exc.close_code, exc.reason)
            self.release()
            raise ProtocolError(f"before connection.connected: {exc.reason}") from exc
        except (websocket.WebSocketException, OSError) as exc:
            self.release()
            why = "the client was closed" if self._cut else f"connection lost: {exc}"
            raise ConnectionClosed(None, "", f"{why} while connecting") from exc
        except BaseException:
            self.release()
            raise
        # Deadlines are the watchdog's from now on: no timeout on the socket (safe on TLS
        # with a blocked sender, docs/websocket-client-facts.md "Sending").
        self._sock.settimeout(None)
        self._connect_deadline = None
        reader.rebind(self._sock)
        self._early = texts[1:]
        return texts[0]

    def _proxy(self) -> tuple[str, int, str] | None:
        """(host, port, Proxy-Authorization value or "") of the proxy to use, or None."""
        proxy = self._options.proxy
        if not proxy:
            return None
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("proxy must be an http://[user:pass@]host:port URL")
        auth = ""
        if parts.username:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        return parts.hostname, parts.port or 80, auth

    def _connect_tcp(self, host: str, port: int, deadline: float) -> socket.socket:
        """A TCP connection to the first address of ``host`` that answers; ``cut()`` wakes
        it (name resolution is bounded only as far as the system resolver allows)."""
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            where = self._options.safe_url if host == self._host else f"the proxy {host}"
            raise socket.gaierror(f"cannot resolve the host of {where} ({exc.strerror})") from exc
        waker = socket.socketpair()
        with self._lock:
            if self._cut:
                for end in waker:
                    end.close()
                raise ConnectionClosed(None, "", "the client was closed while connecting")
            self._waker = waker
        error: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            with self._lock:
                self._sock = sock
            try:
                self._connect_one(sock, address, deadline)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except OSError as exc:
                sock.close()
                if isinstance(exc, socket.timeout) or self._cut:
                    raise
                error = exc
        assert error is not None
        raise error

    def _connect_one(self, sock: socket.socket, address: Any, deadline: float) -> None:
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            assert self._waker is not None
            remaining = max(0.0, deadline - time.monotonic())
            readable, writable, _ = select.select([self._waker[0]], [sock], [], remaining)
            if readable:
                raise ConnectionClosed(None, "", "the client was closed while connecting")
            if not writable:
                raise socket.timeout("connect")
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, f"{os.strerror(code)} ({address[0]}:{address[1]})")
        sock.setblocking(True)

    def _tunnel(self, sock: socket.socket, proxy: tuple[str, int, str], deadline: float) -> None:
        """Ask an HTTP proxy for a tunnel to the URL's host (CONNECT, RFC 9110 9.3.6)."""
        target = f"{self._host}:{self._port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if proxy[2]:
            lines.append(f"Proxy-Authorization: {proxy[2]}")
        self._send_all(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("ascii"), deadline)
        status, headers, _ = _read_head(_Deadline(sock, deadline))
        if status != 200:
            # A proxy may echo its credentials back: they are redacted like the key.
            secrets = (proxy[2], self._options.proxy or "")
            headers = {name: redact(value, *secrets) for name, value in headers.items()}
            raise HandshakeError(
                status, headers, "", message=f"the proxy refused the tunnel to {target}"
            )

    def _tls(self, sock: socket.socket, deadline: float) -> socket.socket:
        # docs/websocket-client-facts.md "TLS": verification stays on unless the user's
        # own context says otherwise.
        context = self._options.ssl_context or ssl.create_default_context()
        wrapped = context.wrap_socket(
            sock, server_hostname=self._host, do_handshake_on_connect=False
        )
        with self._lock:
            self._sock = wrapped
            cut = self._cut
        if cut:
            raise ConnectionClosed(None, "", "the client was closed while connecting")
        wrapped.settimeout(max(0.001, deadline - time.monotonic()))
        wrapped.do_handshake()
        return wrapped

    def _upgrade(self, sock: socket.socket, deadline: float) -> bytes:
        """Send the upgrade request and read its answer. Returns the bytes read past the
        headers (the first frames)."""
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        default_port = 443 if self._secure else 80
        host = self._host if ":" not in self._host else f"[{self._host}]"
        if self._port != default_port:
            host += f":{self._port}"
        request = (
            f"GET {self._resource} HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"{AUTH_HEADER}: Bearer {self._options.api_key}\r\n"
            "\r\n"
        )
        self._send_all(sock, request.encode("utf-8"), deadline)
        reading = _Deadline(sock, deadline)
        status, headers, rest = _read_head(reading)
        secrets = (self._options.api_key,)
        if status != 101:
            body = _read_body(reading, headers, rest)
            raise refusal(status, headers, body, secrets)
        accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest())
        if (
            headers.get("upgrade", "").lower() != "websocket"
            or "upgrade" not in headers.get("connection", "").lower()
            or headers.get("sec-websocket-accept", "").encode("ascii", "replace") != accept
        ):
            raise ProtocolError("invalid upgrade response: not a WebSocket upgrade")
        return rest

    def _send_all(self, sock: socket.socket, data: bytes, deadline: float) -> None:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(data)

    # Reading and writing ---------------------------------------------------------------

    def read(self) -> list[Text]:
        """Block until messages come; return every whole one the socket held, in order.

        A close frame ends the link: it is answered with the same code (RFC 6455 5.5.1;
        unless a close was already sent), kept in :attr:`close_frame`, and the list holds
        what came before it.

        Raises:
            ConnectionClosed: the link was lost or cut; or the server broke RFC 6455 or
                sent a message over ``max_message_size``, and the link closed with 1002
                or 1009 (logged with the reason).
        """
        if self._early:
            early, self._early = self._early, []
            return early
        reader = self._reader
        if reader is None:
            raise ConnectionClosed(None, "", "the link is not open")
        try:
            texts = reader.read()
        except FrameError as exc:
            # RFC 6455 7.1.7: fail the connection, with the code the violation calls for.
            logger.warning("closing with %d: %s", exc.close_code, exc.reason)
            self.send_close(exc.close_code, exc.reason)
            raise ConnectionClosed(exc.close_code, exc.reason, f"closed: {exc.reason}") from exc
        except (websocket.WebSocketException, OSError) as exc:
            why = str(exc) or type(exc).__name__
            raise ConnectionClosed(None, "", f"connection lost: {why}") from exc
        close = reader.close_frame
        if close is not None:
            self.close_frame = close
            self.send_close(close.code)
        return texts

    def send(self, text: str) -> None:
        """Send one text frame, whole (from any thread).

        Raises:
            ConnectionClosed: the link is not open or the send failed (the reader will see
                the loss too).
        """
        self._send_frame(websocket.ABNF.OPCODE_TEXT, text)

    def send_binary(self, data: bytes) -> None:
        """Send one binary frame, whole (from any thread). Raises as :meth:`send`."""
        self._send_frame(websocket.ABNF.OPCODE_BINARY, data)

    def _pong(self, payload: bytes) -> None:
        deadline = self._connect_deadline
        if deadline is not None and time.monotonic() >= deadline:
            # A flood of pings buffered before connection.connected cannot outlast the
            # connect deadline by the time it takes to answer them all.
            raise socket.timeout("the connect deadline passed")
        self._send_frame(websocket.ABNF.OPCODE_PONG, payload)

    def _send_frame(self, opcode: int, payload: str | bytes) -> None:
        frame = websocket.ABNF.create_frame(payload, opcode).format()
        with self._send_lock:
            sock = self._sock
            if sock is None:
                raise ConnectionClosed(None, "", "the link is not open")
            try:
                sock.sendall(frame)
            except OSError as exc:
                raise ConnectionClosed(None, "", f"send failed: {exc}") from exc

    def send_close(self, code: int | None, reason: str = "") -> None:
        """Send a close frame once (an empty one for ``code=None``); errors are ignored
        (the link is ending anyway)."""
        with self._lock:
            if self._sock is None or not self._upgraded or self._close_sent:
                return
            self._close_sent = True
        payload = b"" if code is None else struct.pack("!H", code) + reason.encode()[:123]
        try:
            self._send_frame(websocket.ABNF.OPCODE_CLOSE, payload)
        except (ConnectionClosed, OSError, ValueError):
            pass

    # Ending ----------------------------------------------------------------------------

    def drain(self, grace: float) -> None:
        """After the closing handshake, wait up to ``grace`` seconds for the server to end
        the TCP connection first, as RFC 6455 7.1.1 asks of a client; then release."""
        sock = self._sock
        deadline = time.monotonic() + grace
        try:
            while sock is not None and time.monotonic() < deadline:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                if not sock.recv(65536):
                    break
        except OSError:
            pass
        self.release()

    def cut(self, why: str) -> None:
        """Shut the socket down, from any thread: wakes a connect, a read or a send in
        progress at once; an open in progress fails."""
        with self._lock:
            self._cut = True
            sock, waker = self._sock, self._waker
        logger.debug("cutting the link: %s", why)
        if waker is not None:
            try:
                waker[1].send(b"x")
            except OSError:
                pass
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def release(self) -> None:
        """Close the socket without a close frame (it was dealt with, or cannot be)."""
        with self._lock:
            sock, self._sock = self._sock, None
            waker, self._waker = self._waker, None
        for end in (sock, *(waker or ())):
            if end is not None:
                try:
                    end.close()
                except OSError:
                    pass


# The upgrade response ------------------------------------------------------------------


def _read_head(sock: _Deadline) -> tuple[int, dict[str, str], bytes]:
    """Read an HTTP response's status line and headers, at most :data:`MAX_HEADERS` bytes.

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
        raise ProtocolError(f"invalid upgrade response: {lines[0][:80]!r}")
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


def _read_body(sock: _Deadline, headers: dict[str, str], rest: bytes) -> bytes:
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

