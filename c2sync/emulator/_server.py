"""The emulator: a real WebSocket server speaking PROTOCOL.md, on a background asyncio loop.

Everything that touches connections runs on the emulator's own event loop thread; public
methods hand work to it (``run_coroutine_threadsafe``) and wait with a bound. Each connection
has one writer task draining an ordered queue, so a replay, a ``gap`` and live signals are
queued in one synchronous step on the loop and can neither interleave nor be lost
(PROTOCOL.md section 7).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import email.utils
import http
import json
import logging
import random
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ProtocolError
from websockets.frames import Close
from websockets.http11 import Request, Response

from .._spec import (
    ACTIONS,
    AUTH_HEADER,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CODE_CONNECTION_LIMIT,
    CODE_FORBIDDEN,
    CODE_INVALID_PARAMETER,
    CODE_RATE_LIMITED,
    CODE_SERVICE_UNAVAILABLE,
    CODE_UNAUTHORIZED,
    CONNECTED,
    ERROR,
    ERROR_HEADER,
    GAP,
    HEARTBEAT,
    HEARTBEAT_ACK,
    HEARTBEAT_GRACE,
    HEARTBEAT_INTERVAL,
    MAX_CONNECTIONS_PER_KEY,
    MAX_REPLAY,
    MAX_REQUEST_ID_LENGTH,
    MAX_SUBSCRIPTIONS,
    POSITIONS,
    PROTOCOL_VERSION,
    SIGNAL,
    SUBSCRIBE,
    SUBSCRIPTION_ACK,
    SUBSCRIPTION_REQUEST,
    TIMESTAMP_WINDOW,
)
from ..codec import format_timestamp, parse_timestamp, validate_channel, validate_strategy_id
from ._payloads import positions_payload, signal_payload
from ._records import (
    ConnectionRecord,
    HeartbeatRecord,
    ReceivedFrame,
    SubscriptionRequestRecord,
)

__all__ = ["Emulator"]

_log = logging.getLogger("c2sync.emulator")

_T = TypeVar("_T")
_CALL_TIMEOUT = 10.0  # bound on any public method waiting for the loop
_START_TIMEOUT = 10.0
_JOIN_TIMEOUT = 5.0
_CLOSE_HANDSHAKE_TIMEOUT = 1.0  # a client that never answers a close frame is cut off after this
_PATH = "/ws"  # section 1

# Default answers of refuse_next() (section 2): (X-WS-Error, JSON code).
_REFUSALS: dict[int, tuple[str, str]] = {
    401: ("Invalid API key", CODE_UNAUTHORIZED),
    429: ("Rate limit exceeded", CODE_RATE_LIMITED),
    503: ("Server connection limit reached", CODE_SERVICE_UNAVAILABLE),
}

if TYPE_CHECKING:
    _AdapterBase = logging.LoggerAdapter[logging.Logger]
else:
    _AdapterBase = logging.LoggerAdapter


class _NoDebugLogger(_AdapterBase):
    """The logger handed to websockets: never at DEBUG, where it logs every request header,
    ``Authorization`` (the API key) included."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


@attrs.frozen
class _Close:
    """A queued instruction: close the connection after the frames queued before it."""

    code: int
    reason: str


@attrs.frozen
class _Refusal:
    status: int
    headers: Mapping[str, str]
    body: bytes | None


@attrs.frozen
class _AfterUpgrade:
    """What the next connections do right after the upgrade instead of the usual."""

    close: Close | None = None  # accept-then-close (section 2's race)
    first: str | bytes | None = None  # the first frame instead of connection.connected
    silent: bool = False  # no first frame at all


@attrs.define(eq=False)
class _Session:
    """One accepted connection's live state. Touched only on the loop thread, and under the
    emulator's condition lock where tests can read it."""

    index: int
    ws: ServerConnection
    path: str
    headers: dict[str, str] = attrs.field(repr=False)  # holds the Authorization header
    opened_at: float
    queue: asyncio.Queue[str | bytes | _Close] = attrs.field(factory=asyncio.Queue)
    running: asyncio.Event = attrs.field(factory=asyncio.Event)  # clear while stalled
    subscriptions: set[tuple[str, int]] = attrs.field(factory=set)
    frames: list[ReceivedFrame] = attrs.field(factory=list)
    heartbeats: list[HeartbeatRecord] = attrs.field(factory=list)
    unacked: collections.deque[int] = attrs.field(factory=collections.deque)
    requests: list[SubscriptionRequestRecord] = attrs.field(factory=list)
    deadline: asyncio.TimerHandle | None = None
    tasks: list[asyncio.Task[None]] = attrs.field(factory=list)
    closed_at: float | None = None

    @property
    def stalled(self) -> bool:
        return not self.running.is_set()

    def snapshot(self) -> ConnectionRecord:
        ws, closed = self.ws, self.closed_at is not None
        # The Sans-I/O protocol's close_code: ServerConnection.close_code is websockets 15+.
        code, sent = ws.protocol.close_code, ws.protocol.close_sent
        return ConnectionRecord(
            index=self.index,
            path=self.path,
            request_headers=dict(self.headers),
            opened_at=self.opened_at,
            closed_at=self.closed_at,
            close_code=int(code) if closed and code is not None else None,
            close_reason=ws.protocol.close_reason if closed else None,
            sent_close_code=int(sent.code) if sent is not None else None,
            sent_close_reason=sent.reason if sent is not None else None,
            frames=tuple(self.frames),
            heartbeats=tuple(self.heartbeats),
            subscription_requests=tuple(self.requests),
            subscriptions=frozenset(self.subscriptions),
        )


def _new_id() -> str:
    return "msg_" + secrets.token_hex(14)  # the docs' examples: msg_ + 28 hex digits


def _detail(field: str | None, message: str, code: str = CODE_INVALID_PARAMETER) -> dict[str, Any]:
    detail: dict[str, Any] = {"code": code}
    if field is not None:
        detail["field"] = field
    detail["message"] = message
    return detail


def _parse_resume_from(value: object) -> int | None:
    """``resume_from`` as a non-negative int: a number or a numeric string (section 6)."""
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)  # bounded: int() refuses very long digit strings
    return None


def _http_response(
    status: int, message: str, code: str, headers: Mapping[str, str], body: bytes | None
) -> Response:
    """A handshake refusal as section 2 shows it: X-WS-Error and a JSON body."""
    if body is None:
        body = json.dumps({"code": code, "message": message}, separators=(",", ":")).encode()
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    response_headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            (ERROR_HEADER, message),
        ]
    )
    for name, value in headers.items():
        if name in response_headers:
            del response_headers[name]
        response_headers[name] = value
    return Response(status, phrase, response_headers, body)


class Emulator:
    """A local Collective2 API v4 WebSocket server for demos and tests (PROTOCOL.md).

    It runs its own asyncio loop in a daemon thread; every method may be called from any
    thread. Use it as a context manager, or call :meth:`start` and :meth:`close`.

    Fault knobs that take ``connection`` act on that connection only (its
    :attr:`ConnectionRecord.index`), or on every open connection when it is None.
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = ("demo",),
        strategies: Iterable[int] = (12345678,),
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        heartbeat_grace: float = HEARTBEAT_GRACE,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        replay_size: int = 5000,
        max_replay: int = MAX_REPLAY,
        max_connections_per_key: int = MAX_CONNECTIONS_PER_KEY,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        echo_request_id_on_error: bool = True,
        timestamp_window: float = TIMESTAMP_WINDOW,
    ) -> None:
        """Configure the emulator; nothing listens until :meth:`start`.

        Args:
            api_keys: the keys accepted as ``Authorization: Bearer <KEY>``.
            strategies: the strategy ids a key may subscribe to (others: ``FORBIDDEN``).
            heartbeat_interval: seconds between heartbeats (section 5).
            heartbeat_grace: a connection is closed (1000, ``heartbeat timeout``) when no
                ``heartbeat.ack`` came for ``heartbeat_interval + heartbeat_grace`` seconds
                since the previous one or since the upgrade.
            host: the interface to bind.
            port: the TCP port; 0 picks a free one (see :attr:`url`).
            ssl_context: a server-side ``ssl.SSLContext``; the URL is then ``wss://``.
            replay_size: signals kept per strategy for resuming.
            max_replay: the most signals one resume replays before the ``gap`` (section 7).
            max_connections_per_key: concurrent connections per key; the next is refused
                with 429 ``CONNECTION_LIMIT``.
            max_subscriptions: subscriptions (channel+strategy pairs) per connection.
            echo_request_id_on_error: put the request's ``request_id`` on ``error``
                answers; False reproduces the docs' example error, which carries none.
            timestamp_window: seconds a client ``timestamp`` may be off UTC (section 3).

        Raises:
            ValueError: a limit or interval is out of range, or a strategy id is not a
                positive int.
        """
        if isinstance(api_keys, str):
            raise TypeError("api_keys is a collection of keys, not one string")
        self._api_keys = frozenset(api_keys)
        self._strategies = frozenset(validate_strategy_id(s) for s in strategies)
        if heartbeat_interval <= 0 or heartbeat_grace < 0:
            raise ValueError("heartbeat_interval must be > 0 and heartbeat_grace >= 0")
        if min(replay_size, max_replay, max_connections_per_key, max_subscriptions) < 1:
            raise ValueError("replay_size and the limits must be at least 1")
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_interval + heartbeat_grace
        self._host, self._port = host, port
        self._ssl_context = ssl_context
        self._replay_size, self._max_replay = replay_size, max_replay
        self._max_connections_per_key = max_connections_per_key
        self._max_subscriptions = max_subscriptions
        self._echo_request_id = echo_request_id_on_error
        self._timestamp_window = timestamp_window
        self._rng = random.Random()

        # Shared with test threads: guarded by _cond (notified on every change).
        self._cond = threading.Condition(threading.RLock())
        self._sessions: list[_Session] = []  # every accepted connection, in order
        self._accepted = 0
        self._refused = 0

        # Loop-thread state.
        self._open: dict[int, _Session] = {}
        self._per_key: collections.Counter[str] = collections.Counter()
        self._seq: dict[int, int] = {}
        self._replay: dict[int, collections.deque[tuple[int, str]]] = {}
        self._refusals: collections.deque[_Refusal] = collections.deque()
        self._after_upgrade: collections.deque[_AfterUpgrade] = collections.deque()
        self._heartbeats_on = True
        self._background: set[asyncio.Task[None]] = set()

        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._server: Server | None = None
        self._url: str | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._url or "not started"
        return f"<Emulator {state} open={self.open_connections}>"

    def start(self) -> Emulator:
        """Start listening, on a daemon thread. Calling it again does nothing.

        Returns:
            The emulator itself.

        Raises:
            OSError: the address could not be bound.
            RuntimeError: the emulator was closed; it cannot be restarted.
            TimeoutError: the server did not come up in time.
        """
        with self._lifecycle:
            if self._closed:
                raise RuntimeError("the emulator is closed; create a new one")
            if self._thread is not None:
                return self
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            # Not "c2sync-...": that prefix names the client's threads, which tests count.
            self._thread = threading.Thread(
                target=self._thread_main, args=(ready,), name="c2sync.emulator", daemon=True
            )
            self._thread.start()
        try:
            ready.result(_START_TIMEOUT)
        except concurrent.futures.TimeoutError:
            self.close()
            raise TimeoutError("the emulator did not start in time") from None
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close every connection (1001), stop listening, and join the thread (bounded).

        Idempotent; safe from any thread.
        """
        with self._lifecycle:
            thread, loop, self._closed = self._thread, self._loop, True
        if thread is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._request_stop)
        except RuntimeError:
            pass  # the loop has already ended
        if thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)

    def _thread_main(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main(ready))
        except BaseException as exc:  # reported to start() if it is still waiting
            if not ready.done():
                ready.set_exception(exc)
            else:
                _log.exception("emulator loop failed")
        finally:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        if self._closed:  # close() came before the loop ran
            ready.set_result(None)
            return
        server = await serve(
            self._handle,
            self._host,
            self._port,
            ssl=self._ssl_context,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,  # liveness is the protocol's own heartbeat (section 5)
            close_timeout=_CLOSE_HANDSHAKE_TIMEOUT,
            server_header=None,
            logger=_NoDebugLogger(logging.getLogger("c2sync.emulator.websockets"), {}),
        )
        self._server = server
        # Typed Iterable by some websockets releases: not indexable on every version.
        port = next(iter(server.sockets)).getsockname()[1]
        host = self._host if self._host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        scheme = "wss" if self._ssl_context is not None else "ws"
        self._url = f"{scheme}://{host}:{port}{_PATH}"
        _log.info("emulator listening on %s", self._url)
        ready.set_result(None)
        try:
            await self._stop
        finally:
            for session in list(self._open.values()):
                if session.stalled:  # it would never answer a close frame
                    session.ws.transport.abort()
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), _JOIN_TIMEOUT / 2)
            except asyncio.TimeoutError:
                for session in list(self._open.values()):
                    session.ws.transport.abort()
            _log.info("emulator stopped")

    def _request_stop(self) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the loop thread and return its result, waiting with a bound."""
        loop = self._loop
        if loop is None or self._url is None or self._closed:
            raise RuntimeError("the emulator is not running; call start() first")
        if threading.current_thread() is self._thread:
            return fn()

        async def run() -> _T:
            return fn()

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return future.result(_CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("the emulator's loop did not answer in time") from None

    # -- observability -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """``ws://host:port/ws`` (``wss://`` with an ``ssl_context``), once started."""
        if self._url is None:
            raise RuntimeError("the emulator is not started")
        return self._url

    @property
    def echo_request_id_on_error(self) -> bool:
        """Whether ``error`` answers carry the request's ``request_id``; settable any time."""
        return self._echo_request_id

    @echo_request_id_on_error.setter
    def echo_request_id_on_error(self, value: bool) -> None:
        self._echo_request_id = bool(value)

    @property
    def open_connections(self) -> int:
        """How many accepted connections are open now."""
        with self._cond:
            return sum(1 for session in self._sessions if session.closed_at is None)

    @property
    def connections(self) -> list[ConnectionRecord]:
        """Snapshots of every connection accepted so far, open or closed, oldest first."""
        with self._cond:
            return [session.snapshot() for session in self._sessions]

    @property
    def handshakes_accepted(self) -> int:
        """Upgrades completed (101), accept-then-close ones included."""
        with self._cond:
            return self._accepted

    @property
    def handshakes_refused(self) -> int:
        """Upgrade requests answered with an HTTP error by the emulator's own rules."""
        with self._cond:
            return self._refused

    def last_seq(self, strategy_id: int) -> int:
        """The ``seq_id`` of the strategy's latest signal, 0 before the first."""
        return self._seq.get(strategy_id, 0)  # one dict read: atomic, no need for the loop

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate()`` is true, re-checking on every change the emulator sees.

        Changes are: a connection accepted or ended, a handshake refused, a frame received,
        a heartbeat sent. The predicate runs under the emulator's lock: it may read
        :attr:`connections`, :attr:`open_connections`, the counters and :meth:`last_seq`,
        but must not call the publishing methods or the fault knobs (they would wait on a
        loop that waits on the lock). Never call this from the emulator's own thread.

        Args:
            predicate: a cheap check without side effects.
            timeout: the bound, in seconds.

        Raises:
            TimeoutError: it was still false after ``timeout``.
        """
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(f"condition not met within {timeout} s")

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> None:
        """Block until exactly ``count`` connections are open.

        Raises:
            TimeoutError: the count differed for all of ``timeout`` seconds.
        """
        self.wait_for(lambda: self.open_connections == count, timeout)

    # -- publishing --------------------------------------------------------------------

    def publish_signal(self, strategy_id: int, payload: Mapping[str, Any] | None = None) -> int:
        """Publish a ``strategy.signal`` with the strategy's next ``seq_id`` (section 7).

        It goes to every connection subscribed to (``strategy.signal``, strategy_id) and is
        kept for replay, whether or not anyone is connected.

        Args:
            strategy_id: one of the emulator's strategies.
            payload: any JSON object; None generates a plausible one.

        Returns:
            The signal's ``seq_id`` (1 for a strategy's first signal).

        Raises:
            ValueError: the strategy is not one of the emulator's.
            TypeError: the payload is not JSON-serialisable.
        """
        self._check_strategy(strategy_id)
        return self._call(lambda: self._publish_signal(strategy_id, payload))

    def publish_positions(self, strategy_id: int, payload: Mapping[str, Any] | None = None) -> int:
        """Publish a ``strategy.positions`` update (no ``seq_id``; not kept for replay).

        Args:
            strategy_id: one of the emulator's strategies.
            payload: any JSON object; None generates a plausible one.

        Returns:
            How many connections it was sent to.

        Raises:
            ValueError: the strategy is not one of the emulator's.
            TypeError: the payload is not JSON-serialisable.
        """
        self._check_strategy(strategy_id)

        def publish() -> int:
            body = positions_payload(strategy_id, self._rng) if payload is None else payload
            return self._fan_out((POSITIONS, strategy_id), self._frame(POSITIONS, payload=body))

        return self._call(publish)

    def _check_strategy(self, strategy_id: int) -> None:
        if strategy_id not in self._strategies:
            raise ValueError(f"strategy {strategy_id!r} is not one of the emulator's")

    def _publish_signal(self, strategy_id: int, payload: Mapping[str, Any] | None) -> int:
        seq = self._seq.get(strategy_id, 0) + 1
        body = signal_payload(strategy_id, seq, self._rng) if payload is None else payload
        frame = self._frame(SIGNAL, seq_id=seq, payload=body)  # may raise: seq not taken
        self._seq[strategy_id] = seq
        buffer = self._replay.setdefault(strategy_id, collections.deque(maxlen=self._replay_size))
        buffer.append((seq, frame))
        self._fan_out((SIGNAL, strategy_id), frame)
        return seq

    def _fan_out(self, pair: tuple[str, int], frame: str) -> int:
        sent = 0
        for session in self._open.values():
            if pair in session.subscriptions:
                session.queue.put_nowait(frame)
                sent += 1
        return sent

    # -- fault knobs -------------------------------------------------------------------

    def drop(self, connection: int | None = None) -> int:
        """Cut connections abruptly: abort the TCP transport, no close frame.

        Returns:
            How many connections were cut.
        """

        def drop() -> int:
            targets = self._targets(connection)
            for session in targets:
                session.ws.transport.abort()
            return len(targets)

        return self._call(drop)

    def close_connections(
        self, code: int = CLOSE_NORMAL, reason: str = "", connection: int | None = None
    ) -> int:
        """Close connections with a close frame carrying ``code`` and ``reason``.

        The close frame goes after any frames already queued for the connection (a
        published signal, say), so those are delivered first; a stalled connection closes
        once unstalled.

        Returns:
            How many connections were told to close.

        Raises:
            ValueError: the code is not one a close frame may carry, or the reason is too
                long.
        """
        self._check_close(code, reason)
        return self._send_to(_Close(code, reason), connection)

    def send_raw(self, frame: str | bytes, connection: int | None = None) -> int:
        """Send an arbitrary frame: a ``str`` as a text frame, ``bytes`` as a binary one.

        Returns:
            How many connections it was queued to.
        """
        if not isinstance(frame, (str, bytes)):
            raise TypeError("frame must be str or bytes")
        return self._send_to(frame, connection)

    def stop_heartbeats(self) -> None:
        """Stop sending heartbeats, to every connection, new ones included.

        While heartbeats are off the emulator does not enforce the ack deadline either
        (there is nothing to acknowledge).
        """
        self._call(lambda: self._set_heartbeats(False))

    def resume_heartbeats(self) -> None:
        """Send heartbeats again; each connection's ack deadline restarts from now."""
        self._call(lambda: self._set_heartbeats(True))

    def stall(self, connection: int | None = None) -> int:
        """Stop answering on open connections: stop reading, writing and heartbeats.

        Nothing is answered, not even a close frame or a TCP EOF; frames queued meanwhile
        wait. Connections accepted later are not stalled.

        Returns:
            How many connections were stalled.
        """

        def stall() -> int:
            targets = self._targets(connection)
            for session in targets:
                session.running.clear()
                session.ws.transport.pause_reading()
                self._arm_deadline(session)
            return len(targets)

        return self._call(stall)

    def unstall(self, connection: int | None = None) -> int:
        """Undo :meth:`stall`: read, write and send heartbeats again; the ack deadline
        restarts from now.

        Returns:
            How many connections were resumed.
        """

        def unstall() -> int:
            targets = [s for s in self._targets(connection) if s.stalled]
            for session in targets:
                session.running.set()
                session.ws.transport.resume_reading()
                self._arm_deadline(session)
            return len(targets)

        return self._call(unstall)

    def refuse_next(
        self,
        count: int = 1,
        status: int = 429,
        *,
        headers: Mapping[str, str] | None = None,
        body: str | bytes | None = None,
    ) -> None:
        """Refuse the next ``count`` upgrade requests with an HTTP error (section 2).

        Args:
            count: how many requests to refuse.
            status: the HTTP status.
            headers: extra or replacing response headers (``{"Retry-After": "2"}``).
            body: the response body; None gives section 2's JSON body for the status
                (429 ``RATE_LIMITED``, 503 ``SERVICE_UNAVAILABLE``, 401 ``UNAUTHORIZED``).
        """
        data = body.encode() if isinstance(body, str) else body
        refusal = _Refusal(status, dict(headers or {}), data)
        self._call(lambda: self._refusals.extend([refusal] * count))

    def accept_then_close(
        self, count: int = 1, code: int = CLOSE_POLICY_VIOLATION, reason: str = ""
    ) -> None:
        """Upgrade the next ``count`` connections, then close each at once with ``code``,
        sending nothing before (section 2's race: 1008 and no ``error`` message)."""
        self._check_close(code, reason)
        plan = _AfterUpgrade(close=Close(code, reason))
        self._call(lambda: self._after_upgrade.extend([plan] * count))

    def override_first_message(self, frame: str | bytes | None, count: int = 1) -> None:
        """Open the next ``count`` connections with ``frame`` instead of
        ``connection.connected`` (None: send no first message at all).

        Heartbeats and everything else then go on as usual.
        """
        plan = _AfterUpgrade(first=frame, silent=frame is None)
        self._call(lambda: self._after_upgrade.extend([plan] * count))

    @staticmethod
    def _check_close(code: int, reason: str) -> None:
        try:
            Close(code, reason).serialize()
        except ProtocolError as exc:
            raise ValueError(f"close code {code!r} cannot be sent in a close frame") from exc
        if len(reason.encode()) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")

    def _targets(self, connection: int | None) -> list[_Session]:
        if connection is None:
            return list(self._open.values())
        session = self._open.get(connection)
        return [session] if session is not None else []

    def _send_to(self, item: str | bytes | _Close, connection: int | None) -> int:
        def send() -> int:
            targets = self._targets(connection)
            for session in targets:
                session.queue.put_nowait(item)
            return len(targets)

        return self._call(send)

    def _set_heartbeats(self, on: bool) -> None:
        self._heartbeats_on = on
        for session in self._open.values():
            self._arm_deadline(session)

    # -- the handshake (sections 1 and 2) ------------------------------------------------

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] != _PATH:
            return self._refuse(_http_response(404, "Not found", "NOT_FOUND", {}, None))
        if self._refusals:
            refusal = self._refusals.popleft()
            message, code = _REFUSALS.get(refusal.status, ("Refused", "UNKNOWN"))
            return self._refuse(
                _http_response(refusal.status, message, code, refusal.headers, refusal.body)
            )
        values = request.headers.get_all(AUTH_HEADER)
        scheme, _, key = values[0].partition(" ") if len(values) == 1 else ("", "", "")
        key = key.strip()
        if scheme.lower() != "bearer" or key not in self._api_keys:
            return self._refuse(_http_response(401, "Invalid API key", CODE_UNAUTHORIZED, {}, None))
        if self._per_key[key] >= self._max_connections_per_key:  # section 6
            message = f"Connection limit of {self._max_connections_per_key} per API key reached"
            return self._refuse(_http_response(429, message, CODE_CONNECTION_LIMIT, {}, None))
        # The connection counts against its key from now until its TCP connection ends,
        # whether or not the upgrade completes.
        self._per_key[key] += 1
        ws.connection_lost_waiter.add_done_callback(lambda _: self._per_key.subtract([key]))
        return None

    def _refuse(self, response: Response) -> Response:
        _log.info("refusing an upgrade: %d %s", response.status_code, response.reason_phrase)
        with self._cond:
            self._refused += 1
            self._cond.notify_all()
        return response

    # -- a connection -------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        """One upgraded connection: its first frame, writer, heartbeats and reads."""
        assert ws.request is not None
        headers: dict[str, str] = {}
        for name, value in ws.request.headers.raw_items():
            lower = name.lower()
            headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
        with self._cond:
            self._accepted += 1
            session = _Session(
                len(self._sessions) + 1, ws, ws.request.path, headers, time.monotonic()
            )
            self._sessions.append(session)
            self._cond.notify_all()
        self._open[session.index] = session
        session.running.set()
        plan = self._after_upgrade.popleft() if self._after_upgrade else _AfterUpgrade()
        _log.info("connection %d open from %s", session.index, ws.remote_address)
        try:
            if plan.close is not None:
                await ws.close(plan.close.code, plan.close.reason)
                return
            if plan.first is not None:
                session.queue.put_nowait(plan.first)
            elif not plan.silent:
                session.queue.put_nowait(self._frame(CONNECTED))  # section 4: first frame
            session.tasks.append(asyncio.create_task(self._write(session)))
            session.tasks.append(asyncio.create_task(self._beat(session)))
            self._arm_deadline(session)
            while True:
                data = await ws.recv()
                await session.running.wait()  # a stalled connection answers nothing
                self._on_frame(session, data)
        except ConnectionClosed:
            pass
        finally:
            del self._open[session.index]
            if session.deadline is not None:
                session.deadline.cancel()
            for task in session.tasks:
                task.cancel()
            await ws.wait_closed()
            with self._cond:
                session.closed_at = time.monotonic()
                self._cond.notify_all()
            _log.info(
                "connection %d closed (client sent %s)", session.index, ws.protocol.close_code
            )

    async def _write(self, session: _Session) -> None:
        """Send the connection's queue in order; the only writer of data frames."""
        try:
            while True:
                item = await session.queue.get()
                await session.running.wait()
                if isinstance(item, _Close):
                    await session.ws.close(item.code, item.reason)
                    return
                await session.ws.send(item)
        except ConnectionClosed:
            pass

    async def _beat(self, session: _Session) -> None:
        """Queue a heartbeat every interval (section 5), unless off or stalled."""
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            if self._heartbeats_on and not session.stalled:
                ident = _new_id()
                with self._cond:
                    session.unacked.append(len(session.heartbeats))
                    session.heartbeats.append(HeartbeatRecord(ident, time.monotonic()))
                    self._cond.notify_all()
                session.queue.put_nowait(self._frame(HEARTBEAT, ident=ident))

    def _arm_deadline(self, session: _Session) -> None:
        """(Re)start the ack deadline: interval + grace from now (section 5). Suspended
        while heartbeats are off or the connection is stalled."""
        if session.deadline is not None:
            session.deadline.cancel()
            session.deadline = None
        if self._heartbeats_on and not session.stalled and session.index in self._open:
            loop = asyncio.get_running_loop()
            session.deadline = loop.call_later(
                self._heartbeat_timeout, self._heartbeat_expired, session
            )

    def _heartbeat_expired(self, session: _Session) -> None:
        _log.info(
            "connection %d: no heartbeat.ack for %.1f s, closing",
            session.index,
            self._heartbeat_timeout,
        )
        session.deadline = None
        # Directly, not through the queue: a real server does not wait for pending frames.
        task = asyncio.create_task(session.ws.close(CLOSE_NORMAL, "heartbeat timeout"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- frames from the client ---------------------------------------------------------

    def _on_frame(self, session: _Session, data: str | bytes) -> None:
        message: Any = None
        if isinstance(data, str):
            try:
                message = json.loads(data)
            except (ValueError, RecursionError):  # bad JSON, or nested too deep
                message = None
        with self._cond:
            session.frames.append(ReceivedFrame(time.monotonic(), data, message))
            self._cond.notify_all()
        if isinstance(data, bytes):  # section 3: JSON in text frames only
            self._error(session, None, [_detail(None, "Binary frames are not supported")])
            return
        msg_type = message.get("msg_type") if isinstance(message, dict) else None
        if not isinstance(message, dict) or not isinstance(msg_type, str):
            detail = _detail(None, "Malformed message: expected a JSON object with a msg_type")
            self._error(session, None, [detail])
            return
        if msg_type == HEARTBEAT_ACK:
            self._on_ack(session, message)
        elif msg_type == SUBSCRIPTION_REQUEST:
            self._on_subscription(session, message)
        else:
            detail = _detail("MsgType", f"Unsupported msg_type {msg_type[:60]!r}")
            self._error(session, message.get("request_id"), [detail])

    def _timestamp_error(self, value: object) -> dict[str, Any] | None:
        """Section 3: a client timestamp more than the window away from UTC is refused."""
        if not isinstance(value, str):
            return _detail("Timestamp", "Timestamp is required")
        try:
            when = parse_timestamp(value)
        except (ValueError, OverflowError):  # OverflowError: at the datetime range's edges
            return _detail("Timestamp", "Timestamp is not an ISO-8601 UTC time")
        skew = abs((datetime.now(timezone.utc) - when).total_seconds())
        if skew > self._timestamp_window:
            return _detail(
                "Timestamp",
                f"Timestamp is {skew:.0f} s away from UTC (at most "
                f"{self._timestamp_window:g} s allowed)",
            )
        return None

    def _on_ack(self, session: _Session, message: dict[str, Any]) -> None:
        problem = self._timestamp_error(message.get("timestamp"))
        if problem is not None:  # not counted: the deadline keeps running
            self._error(session, message.get("request_id"), [problem])
            return
        if session.unacked:
            with self._cond:
                index = session.unacked.popleft()
                beat = session.heartbeats[index]
                session.heartbeats[index] = attrs.evolve(beat, acked_at=time.monotonic())
                self._cond.notify_all()
        self._arm_deadline(session)

    def _on_subscription(self, session: _Session, message: dict[str, Any]) -> None:
        """Section 6: validate, authorise, apply, ack; then replay on resume (section 7)."""
        request_id = message.get("request_id")
        payload = message.get("payload")
        body: dict[str, Any] = payload if isinstance(payload, dict) else {}
        action: Any = body.get("action")
        channel: Any = body.get("channel")
        strategy_id: Any = body.get("strategy_id")
        raw_resume: Any = body.get("resume_from")

        problems: list[dict[str, Any]] = []
        stamp_problem = self._timestamp_error(message.get("timestamp"))
        if stamp_problem is not None:
            problems.append(stamp_problem)
        if request_id is not None and not (
            isinstance(request_id, str) and 1 <= len(request_id) <= MAX_REQUEST_ID_LENGTH
        ):
            text = f"request_id must be 1 to {MAX_REQUEST_ID_LENGTH} characters"
            problems.append(_detail("RequestId", text))
        if not isinstance(payload, dict):
            problems.append(_detail("Payload", "payload must be an object"))
        else:
            if action not in ACTIONS:
                problems.append(_detail("Action", "action must be subscribe or unsubscribe"))
            try:
                validate_channel(channel)
            except ValueError:
                text = f"channel must be {SIGNAL} or {POSITIONS}"
                problems.append(_detail("Channel", text))
            try:
                validate_strategy_id(strategy_id)
            except ValueError:
                problems.append(_detail("StrategyId", "strategy_id must be a positive integer"))
        resume_from = None if raw_resume is None else _parse_resume_from(raw_resume)
        if raw_resume is not None and resume_from is None:
            problems.append(_detail("ResumeFrom", "resume_from must be a non-negative integer"))
        elif raw_resume is not None and channel == POSITIONS:
            problems.append(_detail("ResumeFrom", "resume_from applies to strategy.signal only"))

        pair: tuple[str, int] = (channel, strategy_id)  # valid when there are no problems
        if not problems and action == SUBSCRIBE:
            if strategy_id not in self._strategies:
                text = "Not authorized to subscribe to Strategy"  # section 6, verbatim
                problems.append(_detail("StrategyId", text, CODE_FORBIDDEN))
            elif (
                pair not in session.subscriptions
                and len(session.subscriptions) >= self._max_subscriptions
            ):
                text = f"Subscription limit of {self._max_subscriptions} per connection reached"
                problems.append(_detail("StrategyId", text, CODE_FORBIDDEN))

        with self._cond:
            session.requests.append(
                SubscriptionRequestRecord(
                    at=time.monotonic(),
                    request_id=request_id,
                    action=action,
                    channel=channel,
                    strategy_id=strategy_id,
                    resume_from=raw_resume,
                    error=problems[0]["code"] if problems else None,
                )
            )
            if not problems:
                if action == SUBSCRIBE:
                    session.subscriptions.add(pair)  # idempotent
                else:
                    session.subscriptions.discard(pair)  # idempotent
            self._cond.notify_all()
        if problems:
            self._error(session, request_id, problems)
            return
        ack: dict[str, Any] = {"action": action, "channel": channel, "strategy_id": strategy_id}
        if resume_from is not None:
            ack["resume_from"] = resume_from
        session.queue.put_nowait(self._frame(SUBSCRIPTION_ACK, request_id=request_id, payload=ack))
        if action == SUBSCRIBE and resume_from:
            self._replay_to(session, strategy_id, resume_from)
        # From here on, live signals are queued behind the replay: same loop step.

    def _replay_to(self, session: _Session, strategy_id: int, after: int) -> None:
        """Section 7: every kept signal above ``after``, at most max_replay, then a ``gap``
        when more were missed than that or the buffer no longer holds ``after + 1``."""
        missed = self._seq.get(strategy_id, 0) - after
        if missed <= 0:
            return
        kept = [(seq, frame) for seq, frame in self._replay.get(strategy_id, ()) if seq > after]
        for _, frame in kept[: self._max_replay]:
            session.queue.put_nowait(frame)
        if missed > self._max_replay:
            text = f"Replay limit of {self._max_replay} messages exceeded"
        elif not kept or kept[0][0] != after + 1:
            text = "Replay buffer no longer holds the missed messages"
        else:
            return
        gap = {
            "strategy_id": None,
            "channel": f"{SIGNAL}:{strategy_id}",
            "from": str(after),
            "message": text,
        }
        session.queue.put_nowait(self._frame(GAP, payload=gap))

    def _error(self, session: _Session, request_id: object, problems: list[dict[str, Any]]) -> None:
        """Section 8: one problem flat in the payload, several as ``payload.errors``."""
        payload = problems[0] if len(problems) == 1 else {"errors": problems}
        echo = request_id if self._echo_request_id and isinstance(request_id, str) else None
        session.queue.put_nowait(self._frame(ERROR, request_id=echo, payload=payload))

    @staticmethod
    def _frame(
        msg_type: str,
        *,
        ident: str | None = None,
        seq_id: int | None = None,
        request_id: str | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> str:
        """The server envelope (section 3): no seq_id or payload where there is none."""
        obj: dict[str, Any] = {"msg_type": msg_type, "id": ident or _new_id()}
        if seq_id is not None:
            obj["seq_id"] = seq_id
        if request_id is not None:
            obj["request_id"] = request_id
        obj["timestamp"] = format_timestamp()
        obj["v"] = PROTOCOL_VERSION
        if payload is not None:
            obj["payload"] = payload
        return json.dumps(obj, separators=(",", ":"))
