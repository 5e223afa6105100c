"""The link: one WebSocket, opened, read, written and cut.

Knows nothing of subscriptions, queues or reconnects. Who calls what:

- the session's reader thread calls :meth:`Link.open` (the handshake and the first message,
  within the connect deadline) and then :meth:`Link.read` until the link ends;
- any thread calls :meth:`Link.send` (websocket-client's send lock keeps frames whole);
- the watchdog and ``close()`` call :meth:`Link.cut` and :meth:`Link.send_close`.

Guarantees: handshake refusals become the exceptions docs/api-contract.md names
(docs/protocol.md section 2); no websocket-client exception type escapes (a lost or failed link is a
:class:`~c2sync.exceptions.ConnectionClosed`); the key travels only in the upgrade
request's ``Authorization`` header and is never logged; :meth:`cut` wakes a blocked reader
and sender at once (docs/websocket-client-facts.md "Waking a blocked reader"), because
the socket's timeout stays ``None`` once open and deadlines belong to the watchdog.

This module relies on websocket-client internals (the frame buffer that
:class:`~c2sync._framing.FrameReader` takes over); :func:`check_websocket_client` fails
loudly, naming the version, when a release changes them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Union
from urllib.parse import unquote, urlsplit

import websocket

from ._framing import CloseFrame, FrameError, FrameReader, parse_close
from ._options import Options
from ._spec import AUTH_HEADER, CLOSE_NORMAL
from .exceptions import (
    AuthenticationError,
    ConnectionClosed,
    HandshakeError,
    ProtocolError,
    RateLimitError,
    ServiceUnavailableError,
)
from .reconnect import parse_retry_after

__all__ = ["Link", "check_websocket_client"]

logger = logging.getLogger("c2sync.link")

Text = Union[str, bytes]  # noqa: UP007 (evaluated at run time on Python 3.9)


def check_websocket_client(ws: Any) -> None:
    """Fail loudly if websocket-client no longer has the internals the frame reader takes
    over (``sock``, ``frame_buffer.recv_buffer``, ``cont_frame``, ``pong``)."""
    buffer = getattr(ws, "frame_buffer", None)
    missing = [
        name
        for name, present in (
            ("WebSocket.sock", hasattr(ws, "sock")),
            ("WebSocket.pong", callable(getattr(ws, "pong", None))),
            ("WebSocket.frame_buffer", buffer is not None),
            ("frame_buffer.recv_buffer", hasattr(buffer, "recv_buffer")),
            ("frame_buffer.header", hasattr(buffer, "header")),
            ("WebSocket.cont_frame", hasattr(ws, "cont_frame")),
        )
        if not present
    ]
    if missing:
        version = getattr(websocket, "__version__", "unknown")
        raise RuntimeError(
            f"websocket-client {version} lacks {', '.join(missing)}, which c2sync's frame "
            "reader relies on; install a supported version (see setup.cfg)"
        )


class Link:
    """One WebSocket connection to ``options.url``.

    Args:
        options: the client's options (URL, key, timeouts, TLS, proxy).
    """

    def __init__(self, options: Options) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._ws: Any = None
        self._sock: socket.socket | None = None
        self._reader: FrameReader | None = None
        self._cut = False
        self._close_sent = False
        self.close_frame: CloseFrame | None = None
        """The server's close frame, once :meth:`read` has met it."""

    # Opening ---------------------------------------------------------------------------

    def open(self, deadline: float) -> Text:
        """Do the upgrade and read the first message, both before ``deadline``.

        Pings met before the first message are answered; a close frame ends the attempt.

        Args:
            deadline: ``time.monotonic()`` by which the first message must be in.

        Returns:
            The first message (``str``, or ``bytes`` when it was not valid UTF-8 text).

        Raises:
            HandshakeError: the upgrade was refused (or a subclass by status).
            TimeoutError: the deadline passed; the message names the phase and the host.
            ProtocolError: the upgrade response was not a valid one.
            ConnectionClosed: the server closed, the link was cut, or the socket failed.
            OSError: the host could not be reached (``socket.gaierror`` when it does not
                resolve).
        """
        options = self._options
        ws = websocket.WebSocket(
            sslopt=self._sslopt(), skip_utf8_validation=True, enable_multithread=True
        )
        with self._lock:
            if self._cut:
                raise ConnectionClosed(None, "", "the client was closed while connecting")
            self._ws = ws
        try:
            try:
                ws.connect(
                    options.url,
                    header=[f"{AUTH_HEADER}: Bearer {options.api_key}"],
                    timeout=max(0.001, deadline - time.monotonic()),
                    suppress_origin=True,
                    **self._proxy_options(),
                )
            except websocket.WebSocketBadStatusException as exc:
                raise handshake_error(exc) from exc
            except websocket.WebSocketTimeoutException as exc:
                raise TimeoutError(
                    f"could not connect to {options.safe_url} within {options.connect_timeout:g} s"
                ) from exc
            except websocket.WebSocketAddressException as exc:
                # A name that does not resolve is a network error like any other.
                raise socket.gaierror(f"cannot resolve the host of {options.safe_url}") from exc
            except websocket.WebSocketConnectionClosedException as exc:
                raise ConnectionClosed(None, "", "connection lost during the upgrade") from exc
            except websocket.WebSocketException as exc:
                # Anything else websocket-client refuses in the upgrade response.
                raise ProtocolError(f"invalid upgrade response: {exc}") from exc
            with self._lock:
                self._sock = ws.sock
                cut = self._cut
            if cut:
                raise ConnectionClosed(None, "", "the client was closed while connecting")
            try:
                first = self._read_first(ws, deadline)
            except websocket.WebSocketTimeoutException as exc:
                raise TimeoutError(
                    f"no connection.connected from {options.safe_url} within "
                    f"{options.connect_timeout:g} s"
                ) from exc
            except (websocket.WebSocketException, OSError) as exc:
                why = "the client was closed" if self._cut else f"connection lost: {exc}"
                raise ConnectionClosed(None, "", f"{why} while connecting") from exc
            ws.settimeout(None)  # deadlines are the watchdog's from now on
            check_websocket_client(ws)
            # From here this thread owns every read, so it reads ahead and parses frames
            # itself, one recv_into for many frames (docs/websocket-client-facts.md).
            self._reader = FrameReader.from_websocket(ws, max_size=options.max_message_size)
        except BaseException:
            self.release()
            raise
        return first

    def _read_first(self, ws: Any, deadline: float) -> Text:
        while True:
            ws.settimeout(max(0.001, deadline - time.monotonic()))
            frame = ws.recv_frame()
            opcode = frame.opcode
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                close = parse_close(frame.data)
                raise ConnectionClosed(close.code, close.reason)
            if opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
                if opcode == websocket.ABNF.OPCODE_PING:
                    ws.pong(frame.data)
                continue
            data: bytes = frame.data
            if opcode == websocket.ABNF.OPCODE_TEXT:
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return data

    def _sslopt(self) -> dict[str, Any]:
        # docs/websocket-client-facts.md "TLS": a custom context goes in sslopt["context"].
        context = self._options.ssl_context
        return {"context": context} if context is not None else {}

    def _proxy_options(self) -> dict[str, Any]:
        proxy = self._options.proxy
        if not proxy:
            return {}
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        options: dict[str, Any] = {
            "http_proxy_host": parts.hostname,
            "http_proxy_port": parts.port or 80,
            "proxy_type": parts.scheme or "http",
        }
        if parts.username:
            options["http_proxy_auth"] = (unquote(parts.username), unquote(parts.password or ""))
        return options

    # Reading and writing ---------------------------------------------------------------

    def read(self) -> list[Text]:
        """Block until messages come; return every whole one the socket held, in order.

        A close frame ends the link: it is answered with 1000 (unless a close was already
        sent), kept in :attr:`close_frame`, and the list holds what came before it.

        Raises:
            ConnectionClosed: the link was lost, cut, or broke RFC 6455.
        """
        reader = self._reader
        if reader is None:
            raise ConnectionClosed(None, "", "the link is not open")
        try:
            texts = reader.read()
        except FrameError as exc:
            # RFC 6455 7.1.7: fail the connection, with the code the violation calls for
            # (1002, or 1009 for a message over max_message_size).
            logger.warning("closing with %d: %s", exc.close_code, exc.reason)
            self.send_close(exc.close_code, exc.reason)
            raise ConnectionClosed(exc.close_code, exc.reason, f"closed: {exc.reason}") from exc
        except (websocket.WebSocketException, OSError) as exc:
            why = str(exc) or type(exc).__name__
            raise ConnectionClosed(None, "", f"connection lost: {why}") from exc
        close = reader.close_frame
        if close is not None:
            self.close_frame = close
            self.send_close(CLOSE_NORMAL)
        return texts

    def send(self, text: str) -> None:
        """Send one text frame, whole (from any thread).

        Raises:
            ConnectionClosed: the link is not open or the send failed (the reader will see
                the loss too).
        """
        ws = self._ws
        if ws is None:
            raise ConnectionClosed(None, "", "the link is not open")
        try:
            ws.send(text)
        except (websocket.WebSocketException, OSError) as exc:
            raise ConnectionClosed(None, "", f"send failed: {exc}") from exc

    def send_close(self, code: int, reason: str = "") -> None:
        """Send a close frame once; errors are ignored (the link is ending anyway)."""
        with self._lock:
            ws = self._ws
            if ws is None or self._close_sent:
                return
            self._close_sent = True
        try:
            ws.send_close(code, reason.encode("utf-8"))
        except (websocket.WebSocketException, OSError):
            pass

    # Ending ----------------------------------------------------------------------------

    def cut(self, why: str) -> None:
        """Shut the socket down, from any thread: wakes a blocked reader and any blocked
        sender at once; an open in progress fails at its next step."""
        with self._lock:
            self._cut = True
            sock = self._sock
        if sock is not None:
            logger.debug("shutting the socket down: %s", why)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def release(self) -> None:
        """Close the socket without a close frame (the frame was dealt with, or cannot be)."""
        with self._lock:
            ws, self._ws, self._sock = self._ws, None, None
        if ws is not None:
            try:
                ws.shutdown()
            except Exception:
                pass


def handshake_error(exc: Any) -> HandshakeError:
    """Map a refused upgrade to the exception docs/api-contract.md names (docs/protocol.md
    section 2)."""
    status = int(exc.status_code)
    headers = {str(k).lower(): str(v) for k, v in (exc.resp_headers or {}).items()}
    body_bytes = exc.resp_body or b""
    body = (
        body_bytes.decode("utf-8", "replace")
        if isinstance(body_bytes, (bytes, bytearray))
        else str(body_bytes)
    )
    if status == 401:
        return AuthenticationError(status, headers, body)
    if status == 429:
        return RateLimitError(
            status, headers, body, retry_after=parse_retry_after(headers.get("retry-after"))
        )
    if status == 503:
        return ServiceUnavailableError(status, headers, body)
    return HandshakeError(status, headers, body)
