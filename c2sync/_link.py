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
  total), and every read goes through :class:`~c2sync._handshake.Deadline`; a server
  that drips bytes, sends endless headers or floods pings cannot stretch it
  (docs/api-contract.md "Connecting");
- the upgrade response is read within a byte budget (64 KiB of status line and headers,
  4 KiB of body): memory stays flat whatever the server sends;
- redirects are never followed, and the key is sent only to the URL's host, in the
  upgrade request's ``Authorization`` header, over the scheme the user chose;
- whatever the server echoes back is redacted (``***``) before it reaches an exception;
- :meth:`cut` wakes a name resolution, a connect, a read or a send in progress at once,
  from any thread (an event abandons the resolution, a socket pair wakes the TCP connect;
  shutting the socket down wakes the rest), which is how ``close()`` interrupts a
  reconnect and the watchdog enforces its deadlines (docs/websocket-client-facts.md
  "Waking a blocked reader"). It shuts the descriptor down and never touches the TLS
  state: ``SSLSocket.shutdown()`` and ``close()`` drop the TLS object first, after which
  a ``sendall`` in the owner's thread would go out in clear text (docs/security.md). Only
  the thread that opens and reads the link closes its socket (:meth:`release`);
- names are resolved on a short-lived helper thread the opener waits on (the system
  resolver cannot be interrupted; a cut abandons it; an opener asking for a name whose
  abandoned lookup still runs waits for that one, so a hanging resolver leaves one helper
  behind, not one per reconnect attempt), and the addresses are raced as in
  Happy Eyeballs (RFC 8305): the next one is tried 250 ms after the last began, or at once
  when it failed, so a blackholed first address costs 250 ms, not the deadline, and an
  address family the host cannot create sockets for (IPv6 disabled) is skipped;
- every send after the open is bounded too (:meth:`send`): a send that cannot finish
  within ``connect_timeout`` (a peer that stopped reading) is cut by the watchdog
  (:attr:`send_deadline`) once the watchdog looks, which a second sender or a request
  makes it do; a lone heartbeat ack, which wakes nobody, is cut at the heartbeat deadline
  (its reader, stuck, reads no heartbeat); either way the link is lost. A caller with a
  deadline of its own waits for the send lock no longer than it.

Frames are read by :class:`~c2sync._framing.FrameReader` and built by :func:`client_frame`
(masking, RFC 6455 section 5.3); websocket-client is not imported, nor ``ssl`` until a
``wss://`` link opens. A lost or failed link is a
:class:`~c2sync.exceptions.ConnectionClosed`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from itertools import zip_longest
from typing import Any, Union

from ._framing import CloseFrame, FrameError, FrameReader
from ._handshake import Deadline, Target, tunnel, upgrade
from ._options import Options
from ._proxy import parse_proxy, resolve_proxy
from ._redact import redact
from .exceptions import ConnectionClosed, HandshakeError, ProtocolError

__all__ = ["Link", "resolve"]

_TEXT, _BINARY, _CLOSE, _PONG = 0x1, 0x2, 0x8, 0xA  # opcodes (RFC 6455 section 5.2)

logger = logging.getLogger("c2sync.link")

Text = Union[str, bytes]  # evaluated at run time: no "|" on Python 3.9

ATTEMPT_DELAY = 0.25  # RFC 8305 section 5, "Connection Attempt Delay" (its recommended value)
_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN)
MAX_REASON = 123  # bytes of a close reason (RFC 6455 5.5: a control frame's 125, less the code)


def resolve(host: str, port: int) -> list[Any]:
    """The TCP addresses of ``host`` (``socket.getaddrinfo``). A seam: tests replace this
    module attribute to play a resolver that hangs or answers what they need."""
    return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)


class Link:
    """One WebSocket connection to ``options.url``.

    Args:
        options: the client's options (URL, key, timeouts, TLS, proxy, size limit).
    """

    def __init__(self, options: Options) -> None:
        self._options = options
        self._target = Target.from_url(options.url)
        self._host = self._target.host
        self._lock = threading.Lock()  # guards the socket reference and the flags
        self._send_lock = threading.Lock()  # one frame on the wire at a time
        self._sock: socket.socket | None = None
        self._waker: tuple[socket.socket, socket.socket] | None = None
        self._cut = False
        self._why = ""  # why it was cut
        self._resolving: threading.Event | None = None  # set by cut(): abandon the resolver
        self._send_timeout = options.connect_timeout
        self.send_deadline: float | None = None
        """When the send in progress must have finished, or None (read by the watchdog)."""
        self.on_stall: Callable[[], None] | None = None
        """Called when a send finds another in progress (the session wakes the watchdog,
        which cuts a send that outlives :attr:`send_deadline`)."""
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
        target = self._target
        phase = f"could not connect to {target.host}:{target.port}"
        try:
            # proxy=None reads HTTPS_PROXY/NO_PROXY as requests does; "" means none.
            proxy_url = resolve_proxy(options.url, options.proxy, os.environ)
            proxy = parse_proxy(proxy_url) if proxy_url else None
            del proxy_url  # its credentials must not be in a traceback's recorded locals
            if proxy is not None:
                phase = f"no answer from the proxy {proxy.safe_url}"
                sock = self._connect_tcp(proxy.host, proxy.port, deadline)
                tunnel(sock, target, proxy, deadline)
            else:
                sock = self._connect_tcp(target.host, target.port, deadline)
            if target.secure:
                phase = f"the TLS handshake with {target.host} did not finish"
                sock = self._tls(sock, deadline)
            self._check_cut()  # the key goes out next
            phase = f"no upgrade response from {options.safe_url}"
            leftover = upgrade(sock, target, options, deadline)
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
            Deadline(sock, deadline),  # type: ignore[arg-type]
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
                close = self._redacted(reader.close_frame or CloseFrame(None, ""))
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
        except OSError as exc:  # _framing.StreamEnded included
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

    def _check_cut(self) -> None:
        with self._lock:
            if self._cut:
                raise ConnectionClosed(None, "", "the client was closed while connecting")

    def _connect_tcp(self, host: str, port: int, deadline: float) -> socket.socket:
        """A TCP connection to ``host``: its addresses raced (see the module docstring);
        ``cut()`` wakes the resolution and the connect."""
        try:
            infos = self._resolve(host, port, deadline)
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
        sock = self._race(_interleaved(infos), waker[0], deadline)
        with self._lock:
            self._sock = sock  # released with the link from now on
            cut = self._cut
        if cut:
            raise ConnectionClosed(None, "", "the client was closed while connecting")
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _resolve(self, host: str, port: int, deadline: float) -> list[Any]:
        """``resolve(host, port)`` on a helper thread (:class:`_Lookup`), waited for until
        ``deadline`` or a cut, whichever comes first: the system resolver cannot be
        interrupted, so a cut abandons it (the daemon helper ends when the resolver
        returns). An IP literal needs no resolver and is answered here."""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return resolve(host, port)
        woken = threading.Event()
        with self._lock:
            if self._cut:
                raise ConnectionClosed(None, "", "the client was closed while connecting")
            self._resolving = woken
        lookup = _Lookup.share(host, port, woken)
        woken.wait(max(0.0, deadline - time.monotonic()))
        lookup.leave(woken)  # a lookup that never returns keeps no waiter per attempt
        with self._lock:
            self._resolving = None
            cut = self._cut
        if cut:
            raise ConnectionClosed(None, "", "the client was closed while connecting")
        if not lookup.outcome:
            raise socket.timeout("resolve")
        result = lookup.outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[no-any-return]

    def _race(self, infos: list[Any], waker: socket.socket, deadline: float) -> socket.socket:
        """The first of ``infos`` to connect; a new attempt starts :data:`ATTEMPT_DELAY`
        after the last one began, or at once when one fails (RFC 8305 section 5)."""
        racing: dict[Any, Any] = {}  # socket -> address, the attempts in flight
        error: OSError | None = None
        start_next = 0.0
        with selectors.DefaultSelector() as selector:  # no select(): fds over 1023 work
            selector.register(waker, selectors.EVENT_READ)
            try:
                while True:
                    now = time.monotonic()
                    if now >= deadline:
                        raise socket.timeout("connect")
                    if infos and (not racing or now >= start_next):
                        family, kind, proto, _, address = infos.pop(0)
                        try:
                            sock = socket.socket(family, kind, proto)
                        except OSError as exc:  # e.g. EAFNOSUPPORT: IPv6 is off here
                            error = exc
                            continue
                        sock.setblocking(False)
                        code = sock.connect_ex(address)
                        if code == 0:
                            return sock
                        if code not in _IN_PROGRESS:
                            sock.close()
                            error = _refused(code, address)
                            continue
                        racing[sock] = address
                        selector.register(sock, selectors.EVENT_WRITE)
                        start_next = now + ATTEMPT_DELAY
                        continue
                    if not racing:
                        raise error or OSError("the host has no address")
                    wait = deadline - now if not infos else min(deadline, start_next) - now
                    for key, _ in selector.select(max(0.0, wait)):
                        if key.fileobj is waker:
                            raise ConnectionClosed(
                                None, "", "the client was closed while connecting"
                            )
                        done = key.fileobj
                        assert isinstance(done, socket.socket)
                        address = racing.pop(done)
                        selector.unregister(done)
                        code = done.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if not code:
                            return done
                        done.close()
                        error = _refused(code, address)
                        start_next = 0.0  # a failure starts the next attempt at once
            finally:
                for sock in racing:
                    sock.close()

    def _tls(self, sock: socket.socket, deadline: float) -> socket.socket:
        # docs/websocket-client-facts.md "TLS": verification stays on unless the user's
        # own context says otherwise. ssl is imported here: a ws:// client never needs it.
        import ssl

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
        if reader.close_frame is not None:
            texts: list[Text] = []  # met while reading the first message: report it now
        else:
            texts = self._read_frames(reader)
        close = reader.close_frame
        if close is not None:
            self.close_frame = self._redacted(close)
            self.send_close(close.code)
        return texts

    def _read_frames(self, reader: FrameReader) -> list[Text]:
        try:
            return reader.read()
        except FrameError as exc:
            # RFC 6455 7.1.7: fail the connection, with the code the violation calls for.
            logger.warning("closing with %d: %s", exc.close_code, exc.reason)
            self.send_close(exc.close_code, exc.reason)
            raise ConnectionClosed(exc.close_code, exc.reason, f"closed: {exc.reason}") from exc
        except OSError as exc:  # _framing.StreamEnded included
            why = str(exc) or type(exc).__name__
            raise ConnectionClosed(None, "", f"connection lost: {why}") from exc

    def _redacted(self, close: CloseFrame) -> CloseFrame:
        """The close frame with whatever it echoes of the key as ``***`` (its reason reaches
        exceptions and logs)."""
        return CloseFrame(close.code, redact(close.reason, self._options.api_key))

    def send(self, text: str, deadline: float | None = None) -> None:
        """Send one text frame, whole (from any thread).

        A send that has not finished ``connect_timeout`` seconds after it began (the peer
        stopped reading) is cut by the watchdog once it looks (see the module docstring;
        a lone heartbeat ack at the heartbeat deadline), and the link is lost.

        Args:
            text: the frame's text.
            deadline: ``time.monotonic()`` after which the caller gives up waiting for
                another thread's send to finish (None: the send bound).

        Raises:
            ConnectionClosed: the link is not open, was cut, or the send failed (the reader
                will see the loss too).
            TimeoutError: another send held the link past ``deadline``.
        """
        self._send_frame(_TEXT, text, deadline)

    def send_binary(self, data: bytes) -> None:
        """Send one binary frame, whole (from any thread). Raises as :meth:`send`."""
        self._send_frame(_BINARY, data)

    def _pong(self, payload: bytes) -> None:
        deadline = self._connect_deadline
        if deadline is not None and time.monotonic() >= deadline:
            # A flood of pings buffered before connection.connected cannot outlast the
            # connect deadline by the time it takes to answer them all.
            raise socket.timeout("the connect deadline passed")
        self._send_frame(_PONG, payload)

    def _send_frame(self, opcode: int, payload: str | bytes, deadline: float | None = None) -> None:
        frame = client_frame(opcode, payload)
        lock = self._send_lock
        if not lock.acquire(False):
            self._wait_to_send(deadline)
        try:
            sock = self._sock
            if sock is None or self._cut:
                raise ConnectionClosed(None, "", f"the link is not open{self._cut_by()}")
            self.send_deadline = time.monotonic() + self._send_timeout
            if deadline is not None and self.on_stall is not None:
                self.on_stall()  # a caller's request (rare): the watchdog learns its bound
            try:
                sock.sendall(frame)
            except OSError as exc:
                why = self._why if self._cut else str(exc)
                raise ConnectionClosed(None, "", f"send failed: {why}") from exc
            finally:
                self.send_deadline = None
        finally:
            lock.release()

    def _wait_to_send(self, deadline: float | None) -> None:
        """Another thread is sending: wake the watchdog (it cuts a send that outlives its
        bound) and wait for the send lock, until ``deadline`` or the send bound."""
        stall = self.on_stall
        if stall is not None:
            stall()
        bound = self._send_timeout
        limit = bound if deadline is None else deadline - time.monotonic()
        if self._send_lock.acquire(timeout=max(0.0, limit)):
            return
        if deadline is not None:
            raise TimeoutError("another send held the link past the deadline")
        why = f"a send did not finish within {bound:g} s"
        self.cut(why)  # the watchdog's job, done here when nothing else did it
        raise ConnectionClosed(None, "", f"send failed: {why}")

    def _cut_by(self) -> str:
        return f" (cut: {self._why})" if self._cut and self._why else ""

    def send_close(
        self, code: int | None, reason: str = "", deadline: float | None = None
    ) -> None:
        """Send a close frame once (an empty one for ``code=None``), its reason cut to 123
        bytes of valid UTF-8; errors are ignored (the link is ending anyway). ``deadline``
        as for :meth:`send`."""
        with self._lock:
            if self._sock is None or not self._upgraded or self._close_sent:
                return
            self._close_sent = True
        payload = b"" if code is None else struct.pack("!H", code) + close_reason(reason)
        try:
            self._send_frame(_CLOSE, payload, deadline)
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
        """Shut the socket down, from any thread: wakes a resolution, a connect, a read or
        a send in progress at once; an open in progress fails. The socket stays open for
        its owner to release (see the module docstring)."""
        logger.debug("cutting the link: %s", why)
        with self._lock:  # so release() cannot close what is shut down here
            if not self._cut:
                self._cut, self._why = True, why
            if self._resolving is not None:
                self._resolving.set()
            if self._waker is not None:
                try:
                    self._waker[1].send(b"x")
                except OSError:
                    pass
            if self._sock is not None:
                _shut_down(self._sock)

    def release(self) -> None:
        """Close the socket without a close frame (it was dealt with, or cannot be). Only
        the thread that opens and reads the link calls it; others :meth:`cut`."""
        with self._lock:
            sock, self._sock = self._sock, None
            waker, self._waker = self._waker, None
            if sock is not None:
                _shut_down(sock)  # first: whatever close() does to the TLS state after
            for end in (sock, *(waker or ())):
                if end is not None:
                    try:
                        end.close()
                    except OSError:
                        pass


class _Lookup:
    """One ``resolve(host, port)`` on a daemon helper thread, shared by every opener that
    asks for the same name while it runs: an abandoned lookup (a resolver that hangs past
    the deadline, reconnect after reconnect) leaves one helper behind, not one per attempt,
    and the next opener waits for its answer instead of asking again."""

    _lock = threading.Lock()
    _running: dict[tuple[str, int], _Lookup] = {}

    def __init__(self, host: str, port: int) -> None:
        self.outcome: list[Any] = []  # the addresses or the exception, once done
        self._waiters: list[threading.Event] = []
        self._key = (host, port)

    @classmethod
    def share(cls, host: str, port: int, woken: threading.Event) -> _Lookup:
        """The lookup of ``host`` running, or a new one; ``woken`` is set when it ends."""
        with cls._lock:
            lookup = cls._running.get((host, port))
            start = lookup is None
            if lookup is None:
                lookup = cls._running[host, port] = _Lookup(host, port)
            lookup._waiters.append(woken)
        if start:
            threading.Thread(target=lookup._work, name="c2sync-resolve", daemon=True).start()
        return lookup

    def leave(self, woken: threading.Event) -> None:
        """An opener stopped waiting (its deadline or a cut): forget its event."""
        with _Lookup._lock:
            if woken in self._waiters:
                self._waiters.remove(woken)

    @classmethod
    def forget(cls) -> None:
        """Drop the lookups running (a fork's child has none of their threads)."""
        cls._lock = threading.Lock()  # the parent's may have been held by another thread
        cls._running = {}

    def _work(self) -> None:
        try:
            self.outcome.append(resolve(*self._key))
        except BaseException as exc:  # handed to the openers
            self.outcome.append(exc)
        finally:
            with _Lookup._lock:
                if _Lookup._running.get(self._key) is self:  # not after a fork
                    del _Lookup._running[self._key]
                waiters, self._waiters = self._waiters, []
            for woken in waiters:
                woken.set()


def _shut_down(sock: socket.socket) -> None:
    """Shut both directions of ``sock``'s descriptor down. On TLS, at the descriptor:
    ``SSLSocket.shutdown`` drops the TLS object first, and a ``sendall`` racing it in
    another thread would then write in clear text; with the object kept, it fails."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # not connected yet, or already gone


def _interleaved(infos: list[Any]) -> list[Any]:
    """Addresses in the resolver's order, alternating address families (RFC 8305
    section 4), so a broken family costs one attempt, not all of its addresses."""
    if not infos:
        return []
    first = [info for info in infos if info[0] == infos[0][0]]
    other = [info for info in infos if info[0] != infos[0][0]]
    return [info for pair in zip_longest(first, other) for info in pair if info is not None]


def _refused(code: int, address: Any) -> OSError:
    return OSError(code, f"{os.strerror(code)} ({address[0]}:{address[1]})")


def close_reason(reason: str) -> bytes:
    """A close reason as sent: UTF-8 (a lone surrogate becomes ``?``), cut to
    :data:`MAX_REASON` bytes on a character boundary (RFC 6455 5.5.1: valid UTF-8 only)."""
    data = reason.encode("utf-8", "replace")[:MAX_REASON]
    return data.decode("utf-8", "ignore").encode("utf-8")


class MaskKeys:
    """Masking keys for client frames (RFC 6455 5.3: fresh and unpredictable for each
    frame), from the system's random source ``batch`` at a time: ``os.urandom`` is a system
    call, and one that lets any thread waiting for the GIL take it, so a heartbeat's ack
    drawing its own key could wait behind the user's code. Thread-safe; a child process
    draws its own keys after a fork (the parent's unused ones would repeat in both).
    """

    def __init__(self, batch: int = 1024) -> None:
        self._size = 4 * batch
        self._lock = threading.Lock()
        self._block = b""
        self._at = 0

    def __call__(self) -> bytes:
        """The next key: 4 bytes, never handed out twice."""
        with self._lock:
            at = self._at
            if at >= len(self._block):
                self._block, at = os.urandom(self._size), 0
            self._at = at + 4
            return self._block[at : at + 4]

    def forget(self) -> None:
        """Drop the keys drawn so far (a fork's child must not reuse its parent's)."""
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._block, self._at = b"", 0


mask_key = MaskKeys()
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=mask_key.forget)
    os.register_at_fork(after_in_child=_Lookup.forget)


def client_frame(opcode: int, payload: str | bytes) -> bytes:
    """One whole client frame (RFC 6455 5.2): FIN set, masked with a fresh random key.

    What websocket-client's ``ABNF.create_frame(...).format()`` gives, in about 40 % of
    its time for a heartbeat ack (the ack is on the hot path of every heartbeat).
    """
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    size = len(data)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    key = mask_key()
    if not size:
        return head + key
    mask = (key * (size // 4 + 1))[:size]
    masked = (int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")).to_bytes(size, "big")
    return head + key + masked
