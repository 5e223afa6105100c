"""The emulator's I/O: the ``websockets`` server, each connection's tasks, the fault knobs.

Everything here runs on the emulator's event loop thread (``_emulator.py`` starts it and
hands calls over); it carries out what the pure rules decide (``_gate.py``: who may connect,
``_rules.py``: what frames get, what to replay, when to close). Each connection has one
writer task draining an ordered queue, so a replay, a ``gap`` and live signals are queued in
one synchronous step on the loop and can neither interleave nor be lost (docs/protocol.md section
7). What test threads read (records, counters) changes only under ``cond``, notified then.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import email.utils
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Union

import attrs
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ProtocolError
from websockets.frames import Close
from websockets.http11 import Request, Response

from .._spec import (
    AUTH_HEADER,
    CONNECTED,
    ERROR,
    GAP,
    HEARTBEAT,
    HEARTBEAT_ACK,
    POSITIONS,
    SIGNAL,
    SUBSCRIPTION_ACK,
)
from ._dialect import DEFAULT_DIALECT, Dialect, ping_interval, wire_form
from ._gate import PATH, Gate, Refusal
from ._payloads import positions_payload, signal_payload
from ._records import ConnectionRecord, ReceivedFrame, SubscriptionRequestRecord
from ._rules import (
    Detail,
    Heartbeats,
    SignalLog,
    answer_order,
    check_subscription,
    encode_frame,
    error_payload,
    error_request_id,
    read_frame,
    timestamp_problem,
)
from ._settings import Settings

__all__ = ["EmulatorServer", "check_close", "new_frame"]

_log = logging.getLogger("c2sync.emulator")

_JOIN_TIMEOUT = 5.0
_CLOSE_HANDSHAKE_TIMEOUT = 1.0  # a client that never answers a close frame is cut off after this
# pings=on: pings go every half heartbeat interval, but not while this many are unanswered
# (websockets keeps a waiter per ping until a pong comes).
_MAX_UNANSWERED_PINGS = 64
HEARTBEAT_TIMEOUT_REASON = "heartbeat timeout"

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
class _Raw:
    """A frame a fault knob sends as given: text for ``str``, binary for ``bytes``, whatever
    the dialect's ``frames``."""

    data: str | bytes


_Item = Union[str, _Raw, Close]  # a connection's queue: server frames, raw frames, the end


@attrs.frozen
class _AfterUpgrade:
    """What the next connections do right after the upgrade instead of the usual."""

    close: Close | None = None  # accept-then-close (section 2's race)
    first: _Raw | None = None  # the first frame instead of connection.connected
    silent: bool = False  # no first frame at all


def _new_id() -> str:
    return "msg_" + secrets.token_hex(14)  # the docs' examples: msg_ + 28 hex digits


def new_frame(
    msg_type: str,
    *,
    ident: str | None = None,
    seq_id: int | None = None,
    request_id: str | None = None,
    payload: Mapping[str, Any] | None = None,
    clock_offset: float = 0.0,
    dialect: Dialect = DEFAULT_DIALECT,
) -> str:
    """A server frame stamped now (on a clock ``clock_offset`` seconds ahead of this
    machine's), with a fresh id unless given, in ``dialect`` (see ``encode_frame``)."""
    now = datetime.now(timezone.utc) + timedelta(seconds=clock_offset)
    return encode_frame(
        msg_type,
        ident=ident or _new_id(),
        # Milliseconds, as a server may stamp (the client's own stamps are whole seconds,
        # the documented form; it reads either).
        timestamp=now.isoformat(timespec="milliseconds")[:23] + "Z",
        seq_id=seq_id,
        request_id=request_id,
        payload=payload,
        dialect=dialect,
    )


def check_close(code: int, reason: str) -> None:
    """Refuse a close code or reason that a close frame cannot carry (ValueError)."""
    try:
        Close(code, reason).serialize()
    except ProtocolError as exc:
        raise ValueError(f"close code {code!r} cannot be sent in a close frame") from exc
    if len(reason.encode()) > 123:
        raise ValueError("a close reason is at most 123 bytes of UTF-8")


@attrs.define(eq=False)
class _Session:
    """One accepted connection's live state. Touched only on the loop thread, and under the
    emulator's condition lock where tests can read it."""

    index: int
    ws: ServerConnection
    path: str
    headers: dict[str, str] = attrs.field(repr=False)  # holds the Authorization header
    opened_at: float
    heartbeats: Heartbeats
    clock_offset: float  # seconds the emulator's clock runs ahead (Settings.clock_offset)
    dialect: Dialect = DEFAULT_DIALECT
    queue: asyncio.Queue[_Item] = attrs.field(factory=asyncio.Queue)  # Close: last
    running: asyncio.Event = attrs.field(factory=asyncio.Event)  # clear while stalled
    subscriptions: set[tuple[str, int]] = attrs.field(factory=set)
    frames: list[ReceivedFrame] = attrs.field(factory=list)
    requests: list[SubscriptionRequestRecord] = attrs.field(factory=list)
    deadline: asyncio.TimerHandle | None = None
    tasks: list[asyncio.Task[None]] = attrs.field(factory=list)
    closer: asyncio.Task[None] | None = None  # the heartbeat-timeout close
    closed_at: float | None = None
    pings_sent: int = 0
    pongs_received: int = 0

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
            heartbeats=self.heartbeats.records,
            subscription_requests=tuple(self.requests),
            subscriptions=frozenset(self.subscriptions),
            pings_sent=self.pings_sent,
            pongs_received=self.pongs_received,
        )

    async def write(self) -> None:
        """Send the connection's queue in order; the only writer of data frames."""
        try:
            while True:
                item = await self.queue.get()
                await self.running.wait()
                if isinstance(item, Close):
                    await self.ws.close(item.code, item.reason)
                    return
                data = item.data if isinstance(item, _Raw) else wire_form(item, self.dialect)
                await self.ws.send(data)
        except ConnectionClosed:
            pass

    async def beat(
        self, interval: float, cond: threading.Condition, beating: Callable[[], bool]
    ) -> None:
        """Queue a heartbeat every interval (section 5), unless off or stalled."""
        while True:
            await asyncio.sleep(interval)
            if beating() and not self.stalled:
                ident = _new_id()
                with cond:
                    self.heartbeats.sent(ident, time.monotonic())
                    cond.notify_all()
                frame = new_frame(
                    HEARTBEAT, ident=ident, clock_offset=self.clock_offset, dialect=self.dialect
                )
                self.queue.put_nowait(frame)

    async def ping(self, interval: float, cond: threading.Condition) -> None:
        """Send a WebSocket ping every interval (dialect ``pings=on``), unless stalled or
        too many are unanswered, and count the pongs; a missing pong closes nothing."""

        def ponged(waiter: asyncio.Future[Any]) -> None:
            if not waiter.cancelled() and waiter.exception() is None:
                with cond:
                    self.pongs_received += 1
                    cond.notify_all()

        try:
            while True:
                await asyncio.sleep(interval)
                if self.stalled or self.pings_sent - self.pongs_received >= _MAX_UNANSWERED_PINGS:
                    continue
                with cond:  # counted first: a client may see the ping before ping() returns
                    self.pings_sent += 1
                    cond.notify_all()
                waiter = asyncio.ensure_future(await self.ws.ping())  # already a future
                waiter.add_done_callback(ponged)
        except ConnectionClosed:
            pass

    def arm_deadline(self, enforced: bool) -> None:
        """(Re)start the ack deadline from now (section 5), unless the rules suspend it:
        not ``enforced`` (heartbeats off, connection gone), or stalled."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        loop = asyncio.get_running_loop()
        due = self.heartbeats.arm(loop.time(), enforced=enforced and not self.stalled)
        if due is not None:
            self.deadline = loop.call_at(due, self._deadline_reached)

    def _deadline_reached(self) -> None:
        loop = asyncio.get_running_loop()
        due, self.deadline = self.heartbeats.due, None
        if due is not None and not self.heartbeats.missed(loop.time()):
            self.deadline = loop.call_at(due, self._deadline_reached)  # woken a hair early
            return
        _log.info(
            "connection %d: no heartbeat.ack for %.1f s, closing",
            self.index,
            self.heartbeats.timeout,
        )
        # Directly, not through the queue: a real server does not wait for pending frames.
        code = self.dialect.heartbeat_close_code
        self.closer = asyncio.create_task(self.ws.close(code, HEARTBEAT_TIMEOUT_REASON))


class EmulatorServer:
    """The loop-side emulator: serves upgrades, runs connections, publishes, and applies
    the fault knobs. Every method runs on the loop thread, except reading the shared
    records (``sessions``, ``accepted``, ``refused``) under ``cond``."""

    def __init__(self, settings: Settings, *, echo_request_id: bool) -> None:
        self.settings = settings
        self.echo_request_id = echo_request_id  # a plain bool, settable from any thread
        self.url: str | None = None
        self.closing = False  # set from any thread before the stop request
        self.dialect = settings.dialect
        self.log = SignalLog(settings.replay_size, settings.max_replay, settings.dialect)
        self._rng = random.Random()

        # Shared with test threads: guarded by cond (notified on every change).
        self.cond = threading.Condition(threading.RLock())
        self.sessions: list[_Session] = []  # every accepted connection, in order
        self.accepted = 0
        self.refused = 0

        # Loop-thread state.
        self._open: dict[int, _Session] = {}
        self._gate = Gate(settings.api_keys, settings.max_connections_per_key)
        self._after_upgrade: collections.deque[_AfterUpgrade] = collections.deque()
        self._heartbeats_on = True
        self.forbidden: frozenset[int] = frozenset()  # forbid()/allow()
        self._stop: asyncio.Future[None] | None = None

    # -- serving ----------------------------------------------------------------------

    async def run(self, ready: concurrent.futures.Future[None]) -> None:
        """Serve until :meth:`request_stop`, then close every connection (1001)."""
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        if self.closing:  # close() came before the loop ran
            ready.set_result(None)
            return
        settings = self.settings
        server: Server = await serve(
            self._handle,
            settings.host,
            settings.port,
            ssl=settings.ssl_context,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,  # liveness is the protocol's own heartbeat (section 5)
            close_timeout=_CLOSE_HANDSHAKE_TIMEOUT,
            server_header=None,
            logger=_NoDebugLogger(logging.getLogger("c2sync.emulator.websockets"), {}),
        )
        # Typed Iterable by some websockets releases: not indexable on every version.
        port = next(iter(server.sockets)).getsockname()[1]
        host = settings.host if settings.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        scheme = "wss" if settings.ssl_context is not None else "ws"
        self.url = f"{scheme}://{host}:{port}{PATH}"
        _log.info("emulator listening on %s", self.url)
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

    def request_stop(self) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    # -- the handshake (sections 1 and 2) ------------------------------------------------

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        verdict = self._gate.admit(request.path, request.headers.get_all(AUTH_HEADER))
        if isinstance(verdict, Refusal):  # section 2: X-WS-Error and a JSON body
            headers = Headers(verdict.response_headers(email.utils.formatdate(usegmt=True)))
            response = Response(verdict.status, verdict.phrase, headers, verdict.content())
            _log.info("refusing an upgrade: %d %s", response.status_code, response.reason_phrase)
            with self.cond:
                self.refused += 1
                self.cond.notify_all()
            return response
        # The connection counts against its key until its TCP connection ends, whether or
        # not the upgrade completes.
        key = verdict.key
        ws.connection_lost_waiter.add_done_callback(lambda _: self._gate.release(key))
        return None

    # -- a connection -------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        """One upgraded connection: its first frame, writer, heartbeats and reads."""
        assert ws.request is not None
        headers: dict[str, str] = {}
        for name, value in ws.request.headers.raw_items():
            lower = name.lower()
            headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
        with self.cond:
            self.accepted += 1
            session = _Session(
                len(self.sessions) + 1,
                ws,
                ws.request.path,
                headers,
                time.monotonic(),
                Heartbeats(self.settings.heartbeat_timeout),
                self.settings.clock_offset,
                self.dialect,
            )
            self.sessions.append(session)
            self.cond.notify_all()
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
                session.queue.put_nowait(self._new_frame(CONNECTED))  # section 4: first frame
            session.tasks.append(asyncio.create_task(session.write()))
            beating = lambda: self._heartbeats_on  # noqa: E731 (read at each beat)
            beat = session.beat(self.settings.heartbeat_interval, self.cond, beating)
            session.tasks.append(asyncio.create_task(beat))
            pings = ping_interval(self.settings.heartbeat_interval, self.dialect)
            if pings is not None:
                session.tasks.append(asyncio.create_task(session.ping(pings, self.cond)))
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
            with self.cond:
                session.closed_at = time.monotonic()
                self.cond.notify_all()
            # ws.protocol.close_code: ServerConnection.close_code only exists from 15.
            _log.info(
                "connection %d closed (client sent %s)", session.index, ws.protocol.close_code
            )

    def _arm_deadline(self, session: _Session) -> None:
        session.arm_deadline(self._heartbeats_on and session.index in self._open)

    # -- frames from the client ---------------------------------------------------------

    def _on_frame(self, session: _Session, data: str | bytes) -> None:
        incoming = read_frame(data, self.dialect)
        with self.cond:
            session.frames.append(ReceivedFrame(time.monotonic(), data, incoming.message))
            self.cond.notify_all()
        if incoming.problem is not None:
            self._error(session, incoming.request_id, [incoming.problem])
        elif incoming.msg_type == HEARTBEAT_ACK:
            self._on_ack(session, incoming.message)
        else:
            self._on_subscription(session, incoming.message)

    def _on_ack(self, session: _Session, message: Mapping[str, Any]) -> None:
        window = self.settings.timestamp_window
        problem = timestamp_problem(
            message.get("timestamp"), self._now_utc(), window, self.dialect
        )
        if problem is not None:  # not counted: the deadline keeps running
            self._error(session, message.get("request_id"), [problem])
            return
        with self.cond:
            session.heartbeats.acked(time.monotonic())
            self.cond.notify_all()
        self._arm_deadline(session)

    def _on_subscription(self, session: _Session, message: Mapping[str, Any]) -> None:
        """Section 6: the rules decide; record, apply, ack; then replay on resume (7), or
        replay then ack under ``replay=before_ack``."""
        verdict = check_subscription(
            message,
            now_utc=self._now_utc(),
            window=self.settings.timestamp_window,
            strategies=self.settings.strategies - self.forbidden,
            subscribed=session.subscriptions,
            max_subscriptions=self.settings.max_subscriptions,
            dialect=self.dialect,
        )
        with self.cond:
            session.requests.append(verdict.record(time.monotonic()))
            verdict.apply(session.subscriptions)
            self.cond.notify_all()
        if verdict.problems:
            self._error(session, verdict.request_id, verdict.problems)
            return
        ack = self._new_frame(
            SUBSCRIPTION_ACK,
            request_id=error_request_id(verdict.request_id, True, self.dialect),
            payload=verdict.ack_payload(self.dialect),
        )
        replayed: list[str] = []
        if verdict.replay_after:
            replay = self.log.replay(verdict.strategy_id, verdict.replay_after)
            replayed.extend(replay.frames)
            if replay.gap is not None:
                replayed.append(self._new_frame(GAP, payload=replay.gap))
        for frame in answer_order(ack, replayed, self.dialect):
            session.queue.put_nowait(frame)
        # From here on, live signals are queued behind the replay: same loop step.

    def _error(self, session: _Session, request_id: object, problems: Sequence[Detail]) -> None:
        echo = error_request_id(request_id, self.echo_request_id, self.dialect)
        payload = error_payload(problems, self.dialect)
        session.queue.put_nowait(self._new_frame(ERROR, request_id=echo, payload=payload))

    # -- the emulator's clock (Settings.clock_offset) ----------------------------------

    def _now_utc(self) -> float:
        """The emulator's UTC time, POSIX seconds, for the timestamp window (section 3)."""
        return time.time() + self.settings.clock_offset

    def _new_frame(self, msg_type: str, **fields: Any) -> str:
        return new_frame(
            msg_type, clock_offset=self.settings.clock_offset, dialect=self.dialect, **fields
        )

    # -- publishing --------------------------------------------------------------------

    def publish_signal(self, strategy_id: int, payload: Mapping[str, Any] | None) -> int:
        seq = self.log.next_seq(strategy_id)
        body = signal_payload(strategy_id, seq, self._rng) if payload is None else payload
        frame = self._new_frame(SIGNAL, seq_id=seq, payload=body)  # may raise: seq not taken
        self.log.append(strategy_id, seq, frame)
        self._fan_out((SIGNAL, strategy_id), frame)
        return seq

    def publish_positions(self, strategy_id: int, payload: Mapping[str, Any] | None) -> int:
        body = positions_payload(strategy_id, self._rng) if payload is None else payload
        seq = self.log.positions_seq(strategy_id)
        frame = self._new_frame(POSITIONS, seq_id=seq, payload=body)
        return self._fan_out((POSITIONS, strategy_id), frame)

    def _fan_out(self, pair: tuple[str, int], frame: str) -> int:
        sent = 0
        for session in self._open.values():
            if pair in session.subscriptions:
                session.queue.put_nowait(frame)
                sent += 1
        return sent

    # -- fault knobs -------------------------------------------------------------------

    def _targets(self, connection: int | None) -> list[_Session]:
        if connection is None:
            return list(self._open.values())
        session = self._open.get(connection)
        return [session] if session is not None else []

    def drop(self, connection: int | None) -> int:
        targets = self._targets(connection)
        for session in targets:
            session.ws.transport.abort()
        return len(targets)

    def send_to(self, frame: str | bytes, connection: int | None) -> int:
        return self._queue(_Raw(frame), connection)

    def _queue(self, item: _Item, connection: int | None) -> int:
        targets = self._targets(connection)
        for session in targets:
            session.queue.put_nowait(item)
        return len(targets)

    def close_connections(self, code: int, reason: str, connection: int | None) -> int:
        return self._queue(Close(code, reason), connection)

    def set_heartbeats(self, on: bool) -> None:
        self._heartbeats_on = on
        for session in self._open.values():
            self._arm_deadline(session)

    def stall(self, connection: int | None) -> int:
        targets = self._targets(connection)
        for session in targets:
            session.running.clear()
            session.ws.transport.pause_reading()
            self._arm_deadline(session)
        return len(targets)

    def unstall(self, connection: int | None) -> int:
        targets = [s for s in self._targets(connection) if s.stalled]
        for session in targets:
            session.running.set()
            session.ws.transport.resume_reading()
            self._arm_deadline(session)
        return len(targets)

    def refuse_next(self, refusal: Refusal, count: int) -> None:
        self._gate.refuse_next(refusal, count)

    def accept_then_close(self, code: int, reason: str, count: int) -> None:
        self._after_upgrade.extend([_AfterUpgrade(close=Close(code, reason))] * count)

    def override_first_message(self, frame: str | bytes | None, count: int) -> None:
        first = None if frame is None else _Raw(frame)
        self._after_upgrade.extend([_AfterUpgrade(first=first, silent=frame is None)] * count)

    def forbid(self, strategy_id: int, forbidden: bool) -> None:
        """Refuse (or again accept) new subscriptions to the strategy: ``FORBIDDEN``."""
        if forbidden:
            self.forbidden = self.forbidden | {strategy_id}
        else:
            self.forbidden = self.forbidden - {strategy_id}
