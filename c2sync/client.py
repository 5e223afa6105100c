"""The threaded shell: one socket, one reader thread, a watchdog, a dispatcher, a queue.

::

    socket ──► reader thread ──► ClientProtocol (under the lock) ──► acks sent at once
                   │                                    └──► dispatcher thread ──► callbacks
                   │                                    └──► bounded queue ──► recv()
                   └── reconnects with backoff (the same thread, the same queues)
    watchdog thread: shuts the socket down at the heartbeat deadline or a close's grace

The socket's timeout stays ``None`` once connected: deadlines are enforced by the watchdog
shutting the socket down, which wakes the reader at once and is safe on TLS even while a
sender is blocked (WEBSOCKET-CLIENT-FACTS.md, "Timeouts" and "Waking a blocked reader").

The threads hold the private ``_Session``, never the public :class:`Client`, so a client
nobody references is garbage-collected and its connection closed with a close frame.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
import websocket

from ._framing import FrameReader, parse_close
from ._protocol import (
    ClientProtocol,
    Connected,
    Deliver,
    Duplicate,
    Event,
    HeartbeatAnswered,
    Malformed,
    ReplayRestarted,
    RequestAnswered,
)
from ._spec import (
    AUTH_HEADER,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    DEFAULT_URL,
    HEARTBEAT_TIMEOUT,
    SUBSCRIBE,
    UNSUBSCRIBE,
)
from .checkpoint import Checkpoint, FileCheckpoint
from .codec import parse_message
from .exceptions import (
    AuthenticationError,
    ConnectionClosed,
    HandshakeError,
    HeartbeatTimeout,
    ProtocolError,
    QueueOverflow,
    RateLimitError,
    ServiceUnavailableError,
)
from .messages import Gap, Message, Signal, SubscriptionAck
from .reconnect import ReconnectPolicy, parse_retry_after

__all__ = ["Client", "Handle", "State", "Stats", "connect"]

logger = logging.getLogger("c2sync")

_CLOSE_GRACE = 0.5  # seconds a close waits for the server's close frame before cutting
_JOIN_BOUND = 1.0  # seconds any join waits
_API_KEY_ENV = "C2_API_KEY"


class State(enum.Enum):
    """Where a client's connection stands."""

    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@attrs.define
class Stats:
    """Counters of a client's life (API.md "Observability").

    Attributes:
        messages: messages received for the user (signals, positions, gaps, ...).
        heartbeats: server heartbeats received.
        acks_sent: heartbeat acks sent.
        last_heartbeat: when the last heartbeat arrived (aware UTC), or None.
        reconnects: successful reconnections.
        dropped: messages dropped because the recv() queue was full.
        malformed: frames skipped because they were not valid messages.
        duplicates: replayed signals dropped because they were already delivered.
    """

    messages: int = 0
    heartbeats: int = 0
    acks_sent: int = 0
    last_heartbeat: datetime | None = None
    reconnects: int = 0
    dropped: int = 0
    malformed: int = 0
    duplicates: int = 0


@attrs.frozen
class Handle:
    """What :meth:`Client.on` returns; pass it to :meth:`Client.off`."""

    msg_type: str
    callback: Callable[[Any], Any] = attrs.field(eq=False, repr=False)
    number: int = attrs.field(repr=False)


class _RequestLost(ConnectionClosed):
    """The connection ended before a request was answered (it is sent again if reconnecting)."""


class _Waiter:
    """One caller blocked on a request's answer."""

    __slots__ = ("answer", "error", "event", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.event = threading.Event()
        self.answer: SubscriptionAck | None = None
        self.error: BaseException | None = None


class _Session:
    """Everything the threads touch. See the module docstring for the shape."""

    def __init__(
        self,
        api_key: str,
        url: str,
        connect_timeout: float,
        heartbeat_timeout: float,
        reconnect: bool,
        policy: ReconnectPolicy,
        max_queue: int,
        checkpoint: Checkpoint | None,
        proxy: str | None,
        ssl_context: Any,
    ) -> None:
        self._api_key = api_key
        self.url = url
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.policy = policy
        self.max_queue = max_queue
        self.checkpoint = checkpoint
        self._proxy = proxy
        self._ssl_context = ssl_context
        resume = checkpoint.load() if checkpoint is not None else {}
        self.protocol = ClientProtocol(heartbeat_timeout, resume_points=resume)
        self.stats = Stats()
        self.state = State.CLOSED
        self.connected_message: Message | None = None

        # One lock around protocol state, the socket reference and the lifecycle flags
        # (STYLE.md rule 6). User code is never called while it is held.
        self.lock = threading.Lock()
        self._ws: Any = None
        self._raw_sock: socket.socket | None = None
        self._waiters: dict[str, _Waiter] = {}
        self._request_lock = threading.Lock()
        self._closing = False
        self._closed = threading.Event()
        self._stop = threading.Event()  # wakes the reader out of a backoff wait
        self._failure: BaseException | None = None
        self._heartbeat_expired = False

        # The recv() queue: a deque and a condition, notified only when someone waits.
        self._queue: deque[Message] = deque()
        self._queue_cond = threading.Condition(threading.Lock())
        self._queue_waiting = 0
        self._overflow = 0
        # Replays asked for after an overflow: {strategy_id: last seq_id to let past the
        # bound}, and the (strategy_id, seq_id) of such signals still queued.
        self._replay_until: dict[int, int] = {}
        self._exempt: set[tuple[int, int]] = set()
        self._in_hand: Signal | None = None  # handed out by recv(), not yet processed

        # Callbacks, copy-on-write so the reader reads them without a lock.
        self._callbacks: dict[str, tuple[Handle, ...]] = {}
        self._state_callbacks: tuple[Callable[[State], Any], ...] = ()
        self._handle_numbers = iter(range(1, 1 << 62))
        self._dispatch: deque[tuple[tuple[Callable[[Any], Any], ...], Any]] = deque()
        self._dispatch_cond = threading.Condition(threading.Lock())
        self._dispatch_idle = True
        self._dispatcher: threading.Thread | None = None

        self._watch_cond = threading.Condition(threading.Lock())
        self._close_deadline: float | None = None
        self._reader: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None

    # Opening ---------------------------------------------------------------------------

    def open(self) -> None:
        """Connect, wait for ``connection.connected``, start the threads (the caller's thread
        blocks; errors raise here, nothing is retried)."""
        with self.lock:
            if self._reader is not None or self._closing:
                raise RuntimeError("this client is already connected; a closed one cannot reopen")
            self._closed.clear()  # a failed connect() may be tried again
            self._failure = None
        # Never under self.lock: state changes take the queue's lock, which recv() holds
        # while it takes self.lock.
        self._set_state(State.CONNECTING)
        try:
            ws = self._connect_socket()
        except BaseException:
            self._set_state(State.CLOSED)
            self._closed.set()
            raise
        self._set_state(State.OPEN)
        self._reader = threading.Thread(
            target=self._read_loop, args=(ws,), name="c2sync-reader", daemon=True
        )
        self._watchdog = threading.Thread(target=self._watch, name="c2sync-watchdog", daemon=True)
        self._watchdog.start()
        self._reader.start()

    def _connect_socket(self) -> Any:
        """Open one socket and read ``connection.connected`` within ``connect_timeout``."""
        deadline = time.monotonic() + self.connect_timeout
        ws = websocket.WebSocket(
            sslopt=self._sslopt(), skip_utf8_validation=True, enable_multithread=True
        )
        with self.lock:
            if self._closing:
                raise ConnectionClosed(None, "", "the client was closed while connecting")
            self._ws = ws
            self.protocol.connection_made()
        try:
            try:
                ws.connect(
                    self.url,
                    header=[f"{AUTH_HEADER}: Bearer {self._api_key}"],
                    timeout=self.connect_timeout,
                    suppress_origin=True,
                    **self._proxy_options(),
                )
            except websocket.WebSocketBadStatusException as exc:
                raise _handshake_error(exc) from exc
            except (websocket.WebSocketTimeoutException, socket.timeout) as exc:
                # socket.timeout: a TCP or TLS timeout websocket-client lets out as is; on
                # Python 3.9 it is not yet the built-in TimeoutError.
                raise TimeoutError(
                    f"could not connect to {self._safe_url()} within {self.connect_timeout:g} s"
                ) from exc
            except websocket.WebSocketAddressException as exc:
                # A name that does not resolve is a network error like any other.
                raise socket.gaierror(f"cannot resolve the host of {self._safe_url()}") from exc
            except websocket.WebSocketConnectionClosedException as exc:
                raise ConnectionClosed(None, "", "connection lost during the upgrade") from exc
            except OSError:
                # The socket's own errors go out as they are (ssl's certificate errors are
                # ValueErrors as well).
                raise
            except (IndexError, ValueError) as exc:
                # websocket-client 1.9.0 (the Python 3.9 release) lets these out of a malformed
                # status line, header or Content-Length; 1.9.2 wraps them as below.
                raise ProtocolError(f"invalid upgrade response: {exc}") from exc
            except websocket.WebSocketException as exc:
                # Anything else websocket-client refuses in the upgrade response.
                raise ProtocolError(f"invalid upgrade response: {exc}") from exc
            with self.lock:
                self._raw_sock = ws.sock
            try:
                self._read_connected(ws, deadline)
            except websocket.WebSocketTimeoutException as exc:
                raise TimeoutError(
                    f"no connection.connected from {self._safe_url()} within "
                    f"{self.connect_timeout:g} s"
                ) from exc
            except (websocket.WebSocketException, OSError) as exc:
                why = "the client was closed" if self._closing else f"connection lost: {exc}"
                raise ConnectionClosed(None, "", f"{why} while connecting") from exc
            ws.settimeout(None)  # deadlines are the watchdog's from now on
            with self.lock:
                if self._closing:
                    raise ConnectionClosed(None, "", "the client was closed while connecting")
        except BaseException:
            with self.lock:
                self._ws = None
                self._raw_sock = None
                self.protocol.connection_lost()
            _release(ws)
            raise
        return ws

    def _read_connected(self, ws: Any, deadline: float) -> None:
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
            data = frame.data
            text: str | bytes = data
            if opcode == websocket.ABNF.OPCODE_TEXT:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            with self.lock:
                # Raises ProtocolError unless this is connection.connected (section 4).
                (event,) = self.protocol.receive(text, time.monotonic())
                assert isinstance(event, Connected)
                self.connected_message = event.message
            return

    def _sslopt(self) -> dict[str, Any]:
        # WEBSOCKET-CLIENT-FACTS.md "TLS": a custom context goes in sslopt["context"].
        return {"context": self._ssl_context} if self._ssl_context is not None else {}

    def _proxy_options(self) -> dict[str, Any]:
        if not self._proxy:
            return {}
        parts = urlsplit(self._proxy if "://" in self._proxy else f"http://{self._proxy}")
        options: dict[str, Any] = {
            "http_proxy_host": parts.hostname,
            "http_proxy_port": parts.port or 80,
            "proxy_type": parts.scheme or "http",
        }
        if parts.username:
            options["http_proxy_auth"] = (unquote(parts.username), unquote(parts.password or ""))
        return options

    def _safe_url(self) -> str:
        return self.url.split("?", 1)[0]

    # The reader ------------------------------------------------------------------------

    def _read_loop(self, ws: Any) -> None:
        """Read until closed; reconnect per the policy; surface a final failure."""
        backoff = self.policy.delays()
        try:
            while True:
                got_data, loss = self._read_connection(ws)
                ws = None
                if loss is None:
                    return  # closed by close()
                if got_data:
                    backoff = self.policy.delays()  # reset only after a useful connection
                if not self.reconnect:
                    self._fail(loss)
                    return
                logger.warning("%s; reconnecting", loss)
                self._set_state(State.RECONNECTING)
                ws, backoff = self._reconnect(loss, backoff)
                if ws is None:
                    return
        except BaseException as exc:  # a bug must still surface on the user's next call
            logger.exception("c2sync reader failed")
            self._fail(exc)
        finally:
            if ws is not None:
                _release(ws)

    def _reconnect(
        self, loss: BaseException, backoff: Iterator[float]
    ) -> tuple[Any, Iterator[float]]:
        error: BaseException = loss
        while True:
            delay = next(backoff, None)
            if delay is None:
                self._fail(error)
                return None, backoff
            delay = max(delay, self.policy.minimum_delay(error))
            logger.info("reconnecting in %.2f s", delay)
            if self._stop.wait(delay):
                return None, backoff
            try:
                ws = self._connect_socket()
            except BaseException as exc:
                if self._closing:
                    return None, backoff
                if not self.policy.is_retryable(exc) or not isinstance(exc, Exception):
                    self._fail(exc)
                    return None, backoff
                logger.warning("reconnect failed: %s", exc)
                error = exc
                continue
            with self.lock:
                self.protocol.restore_subscriptions()
                frames = self.protocol.data_to_send()
                self.stats.reconnects += 1
            self._wake_watchdog()
            try:
                for frame in frames:
                    ws.send(frame)
            except (websocket.WebSocketException, OSError) as exc:
                logger.warning("resubscribing failed: %s", exc)  # the reader will see the loss
            # OPEN once the subscriptions are asked back, so a request waiting for the
            # reconnect goes out after them.
            self._set_state(State.OPEN)
            return ws, backoff

    def _read_connection(self, ws: Any) -> tuple[bool, BaseException | None]:
        """Read one socket until it ends. Returns (whether data came, the loss or None)."""
        self._wake_watchdog()
        got_data = False
        loss: BaseException | None
        try:
            # connection.connected was read by websocket-client, with its timeouts; from
            # here this thread owns every read, so it reads ahead and parses frames itself,
            # one recv_into for many frames (WEBSOCKET-CLIENT-FACTS.md "Reading").
            reader = FrameReader.from_websocket(ws)
            while True:
                texts = reader.read()  # every whole message the socket held
                if texts:
                    got_data = True
                    self._on_frames(ws, texts)
                close = reader.close_frame
                if close is not None:
                    if not self._closing:
                        try:
                            ws.send_close(CLOSE_NORMAL)
                        except (websocket.WebSocketException, OSError):
                            pass
                    loss = ConnectionClosed(close.code, close.reason)
                    break
        except BaseException as exc:
            if isinstance(exc, (websocket.WebSocketException, OSError, ProtocolError)):
                why = str(exc) or type(exc).__name__
                loss = ConnectionClosed(None, "", f"connection lost: {why}")
                loss.__cause__ = exc
            else:
                raise
        with self.lock:
            expired, self._heartbeat_expired = self._heartbeat_expired, False
            failed = self.protocol.connection_lost()
            self._ws = None
            self._raw_sock = None
            closing = self._closing
        _release(ws)
        if expired:
            timeout = HeartbeatTimeout(self.protocol.heartbeat_timeout)
            timeout.__cause__ = loss
            loss = timeout
        for request_id in failed:
            self._answer(request_id, error=_RequestLost(None, "", f"request lost: {loss}"))
        return got_data, (None if closing else loss)

    def _on_frames(self, ws: Any, texts: list[str | bytes]) -> None:
        """Take the messages one read brought: parsed outside the lock (most of the cost,
        and it needs no state), fed to the protocol under the lock in one go, acks sent,
        then handed on together (one lock and at most one wake-up per queue)."""
        parsed: list[Message | ProtocolError] = []
        for text in texts:
            try:
                parsed.append(parse_message(text))
            except ProtocolError as exc:
                parsed.append(exc)
            except Exception as exc:
                parsed.append(_unreadable(exc))
        receive = self.protocol.receive_parsed
        events: list[Event] = []
        with self.lock:
            now = time.monotonic()
            for item in parsed:
                try:
                    events += receive(item, now)
                except Exception as exc:
                    events.append(Malformed(_unreadable(exc)))
            frames = self.protocol.data_to_send()
        if frames:
            # Section 5: heartbeats are answered here, before any user code sees anything.
            for frame in frames:
                ws.send(frame)
        deliver: list[Message] = []
        for event in events:
            if type(event) is Deliver:
                deliver.append(event.message)
                continue
            if deliver:
                self._deliver(deliver)
                deliver = []
            self._on_event(event)
        if deliver:
            self._deliver(deliver)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, HeartbeatAnswered):
            self.stats.heartbeats += 1
            self.stats.acks_sent += 1
            self.stats.last_heartbeat = datetime.now(timezone.utc)
        elif isinstance(event, RequestAnswered):
            self._answer(event.request_id, event.ack, event.error)
        elif isinstance(event, Malformed):
            self.stats.malformed += 1
            logger.warning("skipped a malformed frame: %s", event.error)
        elif isinstance(event, Duplicate):
            with self.lock:  # also counted by the dispatcher and recv() callers
                self.stats.duplicates += 1
            logger.debug(
                "dropped duplicate signal %s of strategy %s",
                event.message.seq_id,
                event.message.strategy_id,
            )
        elif isinstance(event, ReplayRestarted):
            self._purge(event.strategy_id, event.resume_from, event.replay_to)
        elif isinstance(event, Connected):
            pass

    def _deliver(self, messages: list[Message]) -> None:
        """Hand on the messages one read brought: those with callbacks to the dispatcher in
        one batch, the rest to the recv() queue under one lock with at most one wake-up."""
        self.stats.messages += len(messages)
        by_type = self._callbacks
        anything = by_type.get("*", ()) if by_type else ()
        posts = []
        queued: list[Message] = []
        for message in messages:
            if isinstance(message, Gap):
                logger.warning(
                    "gap in strategy %s signals after seq_id %s: %s (fetch them from the "
                    "REST API)",
                    message.strategy_id,
                    message.from_seq,
                    message.message,
                )
            handles = by_type.get(message.msg_type, ()) + anything if by_type else ()
            if handles:
                posts.append((tuple(h.callback for h in handles), message))
            else:
                queued.append(message)
        if posts:
            self._post_many(posts)
        if not queued:
            return
        exempt = [self._replay_key(m) for m in queued] if self._replay_until else None
        with self._queue_cond:
            queue = self._queue
            queue.extend(queued)
            if exempt is not None:
                self._exempt.update(key for key in exempt if key is not None)
            # Drop the oldest beyond the bound; the newest max_queue are kept (API.md
            # "Back-pressure"), plus a replay asked for after an overflow.
            dropped = 0
            while len(queue) > self.max_queue + len(self._exempt):
                self._forget_exempt(queue.popleft())
                dropped += 1
            if dropped:
                if not self._overflow:
                    logger.warning(
                        "recv() queue full (%d): dropping the oldest messages", self.max_queue
                    )
                self._overflow += dropped
                self.stats.dropped += dropped
            if self._queue_waiting:
                self._queue_cond.notify()

    def _replay_key(self, message: Message) -> tuple[int, int] | None:
        """The key of a signal that is part of a replay the user asked for after an
        overflow (it does not count against ``max_queue``), else None."""
        if isinstance(message, Signal) and self._replayed(message):
            assert message.strategy_id is not None
            return (message.strategy_id, message.seq_id)
        return None

    def _replayed(self, signal: Signal) -> bool:
        """Whether a signal is part of a replay the user asked for after an overflow; such
        signals do not count against ``max_queue`` (bounded by the server's replay cap)."""
        strategy_id = signal.strategy_id
        until = self._replay_until.get(strategy_id) if strategy_id is not None else None
        if strategy_id is None or until is None:
            return False
        if signal.seq_id >= until:
            del self._replay_until[strategy_id]
        return signal.seq_id <= until

    def _forget_exempt(self, message: Message) -> None:
        if self._exempt and isinstance(message, Signal) and message.strategy_id is not None:
            self._exempt.discard((message.strategy_id, message.seq_id))

    def _purge(self, strategy_id: int, resume_from: int, replay_to: int) -> None:
        """Drop queued signals the requested replay will send again, in order."""

        def superseded(message: Any) -> bool:
            return (
                isinstance(message, Signal)
                and message.strategy_id == strategy_id
                and message.seq_id > resume_from
            )

        with self._queue_cond:
            kept = [m for m in self._queue if not superseded(m)]
            self._queue.clear()
            self._queue.extend(kept)
            self._exempt = {e for e in self._exempt if e[0] != strategy_id or e[1] <= resume_from}
            if replay_to > resume_from:
                self._replay_until[strategy_id] = replay_to
        with self._dispatch_cond:
            items = [item for item in self._dispatch if not superseded(item[1])]
            self._dispatch.clear()
            self._dispatch.extend(items)

    def _answer(
        self,
        request_id: str,
        ack: SubscriptionAck | None = None,
        error: BaseException | None = None,
    ) -> None:
        waiter = self._waiters.pop(request_id, None)
        if waiter is not None:
            waiter.answer, waiter.error = ack, error
            waiter.event.set()

    # The watchdog ----------------------------------------------------------------------

    def _watch(self) -> None:
        """Sleep until the heartbeat deadline or a close's grace ends; then cut the socket.

        The heartbeat deadline moves on with every heartbeat without waking this thread: it
        wakes at the old deadline, finds the new one, and sleeps again (one wake-up per
        heartbeat at most, no polling).
        """
        cond = self._watch_cond
        with cond:
            while not self._closed.is_set():
                now = time.monotonic()
                deadlines = [
                    d for d in (self.protocol.deadline, self._close_deadline) if d is not None
                ]
                if not deadlines:
                    cond.wait()
                    continue
                remaining = min(deadlines) - now
                if remaining > 0:
                    cond.wait(remaining)
                    continue
                if self._close_deadline is not None and now >= self._close_deadline:
                    self._close_deadline = None
                    self._cut("close grace over")
                elif self.protocol.is_dead(now):
                    with self.lock:
                        if not self.protocol.is_dead(now):
                            continue
                        self._heartbeat_expired = True
                        self.protocol.disarm()
                    logger.warning(
                        "no heartbeat for %.3g s: the connection is dead",
                        self.protocol.heartbeat_timeout,
                    )
                    self._cut("heartbeat timeout")

    def _wake_watchdog(self) -> None:
        with self._watch_cond:
            self._watch_cond.notify()

    def _cut(self, why: str) -> None:
        """Shut the socket down: wakes a blocked reader and any blocked sender at once."""
        with self.lock:
            sock = self._raw_sock
        if sock is not None:
            logger.debug("shutting the socket down: %s", why)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # The dispatcher --------------------------------------------------------------------

    def _post(self, callbacks: tuple[Callable[[Any], Any], ...], item: Any) -> None:
        self._post_many([(callbacks, item)])

    def _post_many(self, items: list[tuple[tuple[Callable[[Any], Any], ...], Any]]) -> None:
        """Queue callback calls for the dispatcher: one lock, at most one wake-up."""
        with self._dispatch_cond:
            if self._dispatcher is None:
                if self._closed.is_set():
                    return
                self._dispatcher = threading.Thread(
                    target=self._dispatch_loop, name="c2sync-dispatcher", daemon=True
                )
                self._dispatcher.start()
            self._dispatch.extend(items)
            if self._dispatch_idle:
                self._dispatch_cond.notify()

    def _dispatch_loop(self) -> None:
        cond = self._dispatch_cond
        while True:
            with cond:
                while not self._dispatch:
                    if self._closed.is_set():
                        return
                    self._dispatch_idle = True
                    cond.wait()
                self._dispatch_idle = False
                callbacks, item = self._dispatch.popleft()
            if isinstance(item, Message) and self._closed.is_set():
                continue  # closed: what is left is not handed out (it is not lost: resume)
            if isinstance(item, Message):
                with self.lock:
                    fresh = self.protocol.hand_out(item)
                    if not fresh:
                        self.stats.duplicates += 1
                if not fresh:
                    continue
            ok = True
            for callback in callbacks:
                try:
                    callback(item)
                except Exception:
                    ok = False
                    logger.exception("callback %r raised on %r", callback, item)
            if ok and isinstance(item, Signal):
                self._processed(item)

    # Receiving -------------------------------------------------------------------------

    def recv(self, timeout: float | None) -> Message:
        self._commit_in_hand()
        deadline = None if timeout is None else time.monotonic() + timeout
        cond = self._queue_cond
        while True:
            with cond:
                while True:
                    if self._closing and self._failure is None:
                        raise ConnectionClosed(CLOSE_NORMAL, "", "the client is closed")
                    if self._overflow:
                        dropped, self._overflow = self._overflow, 0
                        with self.lock:
                            last = self.protocol.last_delivered
                        raise QueueOverflow(dropped, last)
                    if self._queue:
                        message = self._queue.popleft()
                        self._forget_exempt(message)
                        break
                    if self._failure is not None:
                        raise self._failure
                    if self._closed.is_set():
                        raise ConnectionClosed(None, "", "the client is closed")
                    if deadline is None:
                        self._queue_waiting += 1
                        try:
                            cond.wait()
                        finally:
                            self._queue_waiting -= 1
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise TimeoutError(f"no message within {timeout:g} s")
                        self._queue_waiting += 1
                        try:
                            cond.wait(remaining)
                        finally:
                            self._queue_waiting -= 1
            with self.lock:
                fresh = self.protocol.hand_out(message)
                if not fresh:
                    self.stats.duplicates += 1
            if fresh:
                if isinstance(message, Signal):
                    self._in_hand = message
                return message

    def _commit_in_hand(self) -> None:
        message, self._in_hand = self._in_hand, None
        if message is not None:
            self._processed(message)

    def _processed(self, signal: Signal) -> None:
        if self.checkpoint is not None and signal.strategy_id is not None:
            try:
                self.checkpoint.save(signal.strategy_id, signal.seq_id)
            except Exception:
                logger.exception("saving the checkpoint failed")
            if self._closed.is_set():
                self._flush_checkpoint()  # a callback outlived close()'s flush

    def wait_closed(self) -> None:
        # Event.wait() without a timeout stays interruptible by Ctrl-C on the main thread.
        self._closed.wait()
        # Then the callbacks still running (the CLOSED state callback, or the one that
        # called close()) finish before run_forever() returns, so the caller's next line
        # never runs beside them; bounded like close()'s joins.
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join(_JOIN_BOUND)
        if self._failure is not None:
            raise self._failure

    # Requests --------------------------------------------------------------------------

    def request(
        self, action: str, channel: str, strategy_id: int, resume_from: int | None, timeout: float
    ) -> SubscriptionAck:
        # Arguments are checked before anything else, so a bad one never waits or sends.
        self.protocol.check_request(action, channel, strategy_id, resume_from)
        deadline = time.monotonic() + timeout
        what = f"{action} {channel} {strategy_id}"
        while True:
            waiter = self._send_request(action, channel, strategy_id, resume_from, deadline, what)
            if waiter is not None:
                if not waiter.event.wait(max(0.0, deadline - time.monotonic())):
                    self._abandon(waiter.request_id)
                    if not waiter.event.is_set():  # else answered just now
                        raise TimeoutError(f"no answer to {what} within {timeout:g} s")
                if not isinstance(waiter.error, _RequestLost):
                    break
            if not self.reconnect:
                raise ConnectionClosed(None, "", f"the connection was lost before {what}'s answer")
            # The connection dropped under the request: send it again once reconnected
            # (subscribing is idempotent, PROTOCOL.md section 6).
            logger.info("connection lost before %s was answered; sending it again", what)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.answer is not None
        return waiter.answer

    def _send_request(
        self,
        action: str,
        channel: str,
        strategy_id: int,
        resume_from: int | None,
        deadline: float,
        what: str,
    ) -> _Waiter | None:
        """Register and send one request once connected. Returns its waiter, or None when
        the send failed (the connection is being lost)."""
        # Requests are registered and sent in one order, so answers without a request_id
        # (matched oldest-first, PROTOCOL.md section 6) find the right request.
        if not self._request_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"could not send {what} in time")
        try:
            while True:
                with self.lock:
                    ws = self._ws if self.protocol.is_open else None
                    if ws is not None:
                        request_id, frame = self.protocol.request(
                            action, channel, strategy_id, resume_from
                        )
                        waiter = _Waiter(request_id)
                        self._waiters[request_id] = waiter
                        break
                self._wait_open(deadline, what)
            try:
                ws.send(frame)
            except (websocket.WebSocketException, OSError) as exc:
                logger.debug("sending %s failed: %s", what, exc)
                self._abandon(request_id)
                return None
            return waiter
        finally:
            self._request_lock.release()

    def _abandon(self, request_id: str) -> None:
        with self.lock:
            self._waiters.pop(request_id, None)
            self.protocol.forget(request_id)

    def _wait_open(self, deadline: float, what: str) -> None:
        """Wait (bounded) for a reconnect to finish, or raise why it cannot."""
        with self._queue_cond:
            while True:
                if self._failure is not None:
                    raise self._failure
                if self._closing or self._closed.is_set():
                    raise ConnectionClosed(None, "", "the client is closed")
                if self.state is State.OPEN and self.protocol.is_open:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"not connected in time to send {what}")
                self._queue_waiting += 1
                try:
                    self._queue_cond.wait(remaining)
                finally:
                    self._queue_waiting -= 1

    # State -----------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if self.state is state:
            return
        self.state = state
        logger.info("state: %s", state.name)
        with self._queue_cond:
            self._queue_cond.notify_all()  # wakes recv() and waits for a reconnect
        if self._state_callbacks:
            self._post(self._state_callbacks, state)

    def _fail(self, error: BaseException) -> None:
        """The connection has failed for good: blocked and later calls raise ``error``."""
        logger.error("connection failed: %s", error)
        # CLOSED first: whoever sees the failure (recv() raising it) then sees state CLOSED.
        # recv() keeps waiting meanwhile: nothing it checks has changed yet.
        self._set_state(State.CLOSED)
        with self.lock:
            if self._failure is None:
                self._failure = error
        self._finish()

    def _finish(self) -> None:
        self._set_state(State.CLOSED)
        self._closed.set()
        error = self._failure or ConnectionClosed(None, "", "the client is closed")
        for request_id in list(self._waiters):
            self._answer(request_id, error=error)
        self._wake_watchdog()
        with self._dispatch_cond:
            self._dispatch_cond.notify_all()
        with self._queue_cond:
            self._queue_cond.notify_all()

    # Closing ---------------------------------------------------------------------------

    def close(self, code: int, reason: str, clean: bool) -> None:
        current = threading.current_thread()
        with self.lock:
            first = not self._closing
            self._closing = True
            ws = self._ws
            sock = self._raw_sock or (getattr(ws, "sock", None) if ws is not None else None)
        if first:
            logger.info("closing (code %d)", code)
            self._stop.set()
            if clean:
                self._commit_in_hand()
            with self._queue_cond:
                self._queue_cond.notify_all()
            reader = self._reader
            if ws is not None and sock is not None:
                # WEBSOCKET-CLIENT-FACTS.md "closing": arm the cut, send the close frame,
                # wait for the reader up to the grace, cut, join.
                with self._watch_cond:
                    self._close_deadline = time.monotonic() + _CLOSE_GRACE
                    self._watch_cond.notify()
                try:
                    ws.send_close(code, reason.encode("utf-8"))
                except (websocket.WebSocketException, OSError):
                    pass
                if reader is not None and reader is not current:
                    reader.join(_CLOSE_GRACE)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if reader is not None and reader is not current:
                reader.join(_JOIN_BOUND)
            if reader is None and ws is not None:
                _release(ws)
            self._finish()
        for thread in (self._watchdog, self._dispatcher, self._reader):
            if thread is not None and thread is not current and thread.is_alive():
                thread.join(_JOIN_BOUND)
        if first:
            # After the dispatcher: a callback that returned during close() counts.
            self._flush_checkpoint()

    def _flush_checkpoint(self) -> None:
        flush = getattr(self.checkpoint, "flush", None)
        if callable(flush):
            try:
                flush()
            except Exception:
                logger.exception("flushing the checkpoint failed")

    def threads(self) -> list[threading.Thread]:
        return [t for t in (self._reader, self._watchdog, self._dispatcher) if t is not None]

    # Callbacks ---------------------------------------------------------------------------

    def on(self, msg_type: str, callback: Callable[[Any], Any]) -> Handle:
        handle = Handle(msg_type, callback, next(self._handle_numbers))
        with self.lock:
            callbacks = dict(self._callbacks)
            callbacks[msg_type] = (*callbacks.get(msg_type, ()), handle)
            self._callbacks = callbacks
        return handle

    def off(self, handle: Handle) -> None:
        with self.lock:
            callbacks = dict(self._callbacks)
            kept = tuple(h for h in callbacks.get(handle.msg_type, ()) if h != handle)
            if len(kept) == len(callbacks.get(handle.msg_type, ())):
                raise ValueError(f"{handle!r} is not registered")
            if kept:
                callbacks[handle.msg_type] = kept
            else:
                callbacks.pop(handle.msg_type, None)
            self._callbacks = callbacks

    def on_state(self, callback: Callable[[State], Any]) -> None:
        with self.lock:
            self._state_callbacks = (*self._state_callbacks, callback)


def _unreadable(exc: Exception) -> ProtocolError:
    """A frame our parser or protocol chokes on is the server's fault or our bug; either way
    it must not kill the reader (the heartbeats) or lose what comes next."""
    logger.error("could not read a frame; skipping it", exc_info=exc)
    error = ProtocolError(f"unreadable frame: {exc!r}")
    error.__cause__ = exc
    return error


def _release(ws: Any) -> None:
    """Close a WebSocket's socket without a close frame (the frame was dealt with)."""
    try:
        ws.shutdown()
    except Exception:
        pass


def _handshake_error(exc: Any) -> HandshakeError:
    """Map a refused upgrade to the exception API.md names (PROTOCOL.md section 2)."""
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


def _finalize(session: _Session) -> None:
    # Runs when the Client is garbage-collected or at interpreter exit (API.md "Closing").
    if not session._closed.is_set():
        session.close(CLOSE_NORMAL, "", clean=True)


class Client:
    """A connection to the Collective2 WebSocket API, usable from plain threaded code.

    Build one with :func:`connect` (connected on return), or construct it and call
    :meth:`connect`. See API.md for the whole contract.

    Args:
        api_key: the API key; None reads ``C2_API_KEY``.
        url: the WebSocket URL (``ws://`` or ``wss://``).
        connect_timeout: seconds for TCP, TLS, the upgrade and ``connection.connected``.
        heartbeat_timeout: seconds without a server heartbeat after which the connection is
            dead.
        reconnect: re-open lost connections (see API.md "Reconnecting").
        max_queue: messages the recv() queue holds before dropping the oldest.
        checkpoint: None, a path, or a :class:`~c2sync.checkpoint.Checkpoint`.
        proxy: ``"http://[user:pass@]host:port"``.
        ssl_context: an :class:`ssl.SSLContext` (custom CA bundles); verification stays on
            by default.
        reconnect_policy: the backoff and retry rules (None: the defaults).

    Raises:
        ValueError: no API key, or an argument out of range.
        TypeError: an argument of the wrong type.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        url: str = DEFAULT_URL,
        connect_timeout: float = 10.0,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        reconnect: bool = True,
        max_queue: int = 10_000,
        checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
        proxy: str | None = None,
        ssl_context: Any = None,
        reconnect_policy: ReconnectPolicy | None = None,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get(_API_KEY_ENV)
        if not api_key:
            raise ValueError(f"no API key: pass api_key= or set {_API_KEY_ENV}")
        if not isinstance(api_key, str):
            raise TypeError("api_key must be a str")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss"):
            raise ValueError("url must be a ws:// or wss:// URL")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("heartbeat_timeout", heartbeat_timeout),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if type(max_queue) is not int or max_queue < 1:
            raise ValueError("max_queue must be a positive int")
        store: Checkpoint | None
        if checkpoint is None or isinstance(checkpoint, Checkpoint):
            store = checkpoint
        elif isinstance(checkpoint, (str, os.PathLike)):
            store = FileCheckpoint(checkpoint)
        else:
            raise TypeError("checkpoint must be a path or an object with load() and save()")
        self._session = _Session(
            api_key,
            url,
            float(connect_timeout),
            float(heartbeat_timeout),
            bool(reconnect),
            reconnect_policy or ReconnectPolicy(),
            max_queue,
            store,
            proxy,
            ssl_context,
        )
        self._finalizer = weakref.finalize(self, _finalize, self._session)

    def __repr__(self) -> str:
        s = self._session
        subs = ", ".join(f"{c}:{i}" for c, i in sorted(s.protocol.subscriptions))
        return (
            f"<c2sync.Client {s.state.name} {s._safe_url()} subscriptions=[{subs}] "
            f"messages={s.stats.messages} heartbeats={s.stats.heartbeats} "
            f"reconnects={s.stats.reconnects}>"
        )

    # Lifecycle -------------------------------------------------------------------------

    def connect(self) -> Client:
        """Open the connection and block until the server says ``connection.connected``.

        Returns:
            This client.

        Raises:
            AuthenticationError: 401, the key was refused.
            RateLimitError: 429 (``.retry_after``).
            ServiceUnavailableError: 503.
            HandshakeError: any other refused upgrade.
            TimeoutError: nothing within ``connect_timeout``.
            ProtocolError: the first message was not ``connection.connected``.
            ConnectionClosed: the server closed at once (1008: the connection-limit race).
            OSError: the host could not be reached (e.g. ``ConnectionRefusedError``), or
                its certificate failed verification.
        """
        self._session.open()
        return self

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close the connection; idempotent, safe from any thread or callback, bounded.

        Args:
            code: the close code sent (1000).
            reason: the close reason sent.
        """
        self._session.close(code, reason, clean=code == CLOSE_NORMAL)

    def __enter__(self) -> Client:
        if self._session.state is State.CLOSED and not self._session._closed.is_set():
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._session.close(CLOSE_INTERNAL_ERROR, "client error", clean=False)

    # Subscribing -------------------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        strategy_id: int,
        resume_from: int | None = None,
        timeout: float = 10.0,
    ) -> SubscriptionAck:
        """Subscribe to a channel of a strategy and wait for the server's ack.

        Args:
            channel: ``c2sync.SIGNAL`` or ``c2sync.POSITIONS``.
            strategy_id: the strategy, a positive int.
            resume_from: the last ``seq_id`` processed (signals only): the server replays
                what came after. None resumes from what this client (or its checkpoint)
                last handed out, if anything.
            timeout: seconds to wait for the answer.

        Returns:
            The server's :class:`~c2sync.messages.SubscriptionAck`.

        Raises:
            ValueError: a bad argument (nothing is sent).
            SubscriptionLimitError: a 101st subscription.
            ServerError: the server refused (e.g. ``FORBIDDEN``).
            TimeoutError: no answer within ``timeout``.
            ConnectionClosed: the client is closed.
        """
        return self._session.request(SUBSCRIBE, channel, strategy_id, resume_from, timeout)

    def unsubscribe(self, channel: str, strategy_id: int, timeout: float = 10.0) -> SubscriptionAck:
        """Unsubscribe and wait for the server's ack.

        Args:
            channel: the channel.
            strategy_id: the strategy.
            timeout: seconds to wait for the answer.

        Returns:
            The server's :class:`~c2sync.messages.SubscriptionAck`.

        Raises:
            ValueError: a bad argument (nothing is sent).
            ServerError: the server refused.
            TimeoutError: no answer within ``timeout``.
            ConnectionClosed: the client is closed.
        """
        return self._session.request(UNSUBSCRIBE, channel, strategy_id, None, timeout)

    @property
    def subscriptions(self) -> frozenset[tuple[str, int]]:
        """The (channel, strategy_id) pairs the server holds for this client."""
        return self._session.protocol.subscriptions

    # Receiving ---------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Message:
        """The next message that no callback took.

        Args:
            timeout: seconds to wait; None waits until a message or the end (Ctrl-C still
                interrupts).

        Returns:
            A :class:`~c2sync.messages.Signal`, :class:`~c2sync.messages.Positions`,
            :class:`~c2sync.messages.Gap`, :class:`~c2sync.messages.ErrorMessage` or
            :class:`~c2sync.messages.Message`.

        Raises:
            TimeoutError: nothing within ``timeout``.
            QueueOverflow: messages were dropped since the last call (raised once).
            ConnectionClosed: the client was closed.
            C2Error: the connection failed for good (after the queued messages).
        """
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise ValueError("timeout must be None or a non-negative number of seconds")
        return self._session.recv(timeout)

    def __iter__(self) -> Iterator[Message]:
        """Iterate over messages until the client is closed (then end quietly)."""
        while True:
            try:
                yield self._session.recv(None)
            except ConnectionClosed:
                if self._session._failure is not None:
                    raise
                return

    def on(self, msg_type: str, callback: Callable[[Any], Any]) -> Handle:
        """Call ``callback(message)`` on the dispatcher thread for each ``msg_type`` message.

        Args:
            msg_type: e.g. ``c2sync.SIGNAL``; ``"*"`` matches every type.
            callback: a callable taking the message.

        Returns:
            A :class:`Handle` for :meth:`off`.

        Raises:
            TypeError: ``callback`` is not callable or ``msg_type`` not a string.
        """
        if not isinstance(msg_type, str):
            raise TypeError("msg_type must be a str")
        if not callable(callback):
            raise TypeError("callback must be callable")
        return self._session.on(msg_type, callback)

    def off(self, handle: Handle) -> None:
        """Remove a callback registered with :meth:`on`.

        Raises:
            ValueError: the handle is not registered.
        """
        self._session.off(handle)

    def on_state(self, callback: Callable[[State], Any]) -> None:
        """Call ``callback(state)`` on the dispatcher thread at each change of :attr:`state`.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._session.on_state(callback)

    def run_forever(self) -> None:
        """Block until the client is closed while callbacks run (Ctrl-C propagates).

        Returns once the callbacks still running at the close (the ``CLOSED`` state
        callback included) have finished, waiting at most about a second for them.

        Raises:
            C2Error: the connection failed for good.
        """
        self._session.wait_closed()

    # Observability -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The connection's :class:`State`."""
        return self._session.state

    @property
    def stats(self) -> Stats:
        """Live counters (:class:`Stats`)."""
        return self._session.stats

    @property
    def url(self) -> str:
        """The URL this client connects to."""
        return self._session.url

    @property
    def connected_message(self) -> Message | None:
        """The latest ``connection.connected`` message (None before the first)."""
        return self._session.connected_message


def connect(
    api_key: str | None = None,
    *,
    url: str = DEFAULT_URL,
    connect_timeout: float = 10.0,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
    reconnect: bool = True,
    max_queue: int = 10_000,
    checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
    proxy: str | None = None,
    ssl_context: Any = None,
    reconnect_policy: ReconnectPolicy | None = None,
) -> Client:
    """Connect and return a :class:`Client` once ``connection.connected`` has arrived.

    Takes the same arguments as :class:`Client` and raises what :meth:`Client.connect`
    raises.
    """
    return Client(
        api_key,
        url=url,
        connect_timeout=connect_timeout,
        heartbeat_timeout=heartbeat_timeout,
        reconnect=reconnect,
        max_queue=max_queue,
        checkpoint=checkpoint,
        proxy=proxy,
        ssl_context=ssl_context,
        reconnect_policy=reconnect_policy,
    ).connect()

