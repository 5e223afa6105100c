"""The session: the protocol core wired to a link, the rooms and the reader thread.

::

    Link ──read──► reader thread ──► ClientProtocol (under the lock) ──► acks: Link.send
                       │                              ├──► Dispatcher ──► callbacks
                       │                              ├──► Inbox ──► recv()
                       │                              └──► Pending ──► subscribe() callers
                       └── reconnects with backoff (the same thread, the same rooms)
    Watchdog: cuts the link at the heartbeat deadline or a close's grace
    Lifecycle: the state table; every transition, on_state notice and final error

Threads: the reader (this module's :meth:`Session._run`) owns every read and answers
heartbeats before any user code sees anything (PROTOCOL.md section 5); user threads call
:meth:`Session.open`, :meth:`Session.request`, :meth:`Session.recv` and
:meth:`Session.close`; the dispatcher calls back into :meth:`Session._hand_out` and
:meth:`Session._processed`. One lock (the lifecycle's) guards the protocol core, the
current link and the lifecycle; user code never runs under it. The threads hold the
session, never the public :class:`~c2sync.client.Client`, so a client nobody references
is garbage-collected and closed with a close frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import attrs

from ._dispatcher import Dispatcher
from ._inbox import Inbox, superseded
from ._lifecycle import Lifecycle, State
from ._link import Link
from ._options import Options
from ._pending import Pending, RequestLost, Waiter
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
from ._spec import CLOSE_NORMAL
from ._watchdog import Watchdog
from .codec import parse_message
from .exceptions import ConnectionClosed, HeartbeatTimeout, ProtocolError
from .messages import Gap, Message, Signal, SubscriptionAck

__all__ = ["Session", "Stats"]

logger = logging.getLogger("c2sync")

CLOSE_GRACE = 0.5  # seconds a close waits for the server's close frame before cutting
JOIN_BOUND = 1.0  # seconds any join waits


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


class Session:
    """One client's connection across reconnects. See the module docstring."""

    def __init__(self, options: Options) -> None:
        self.options = options
        checkpoint = options.checkpoint
        resume = checkpoint.load() if checkpoint is not None else {}
        self.protocol = ClientProtocol(options.heartbeat_timeout, resume_points=resume)
        self.stats = Stats()
        self.connected_message: Message | None = None
        self.dispatcher = Dispatcher(self._hand_out, self._processed)
        self.life = Lifecycle(self.dispatcher.post_state)
        self.lock = self.life.lock
        self.inbox = Inbox(options.max_queue, self._last_delivered)
        self.pending = Pending()
        self.watchdog = Watchdog(lambda: self.protocol.deadline, self._expire, self._cut)
        self._link: Link | None = None
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()  # wakes the reader out of a backoff wait
        self._heartbeat_expired = False
        self._in_hand: Signal | None = None  # handed out by recv(), not yet processed

    # Opening ---------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and start the threads; the caller blocks, errors raise here and nothing
        is retried."""
        if self._reader is not None or self.life.closing:
            raise RuntimeError("this client is already connected; a closed one cannot reopen")
        self.inbox.reopen()
        self.dispatcher.restart()
        self.life.begin_open()
        try:
            link = self._connect()
            if not self.life.move(State.OPEN):
                link.release()
                raise ConnectionClosed(None, "", "the client was closed while connecting")
        except BaseException:
            self.life.end()
            self.inbox.end(self.life.end_error, discard=False)
            self.dispatcher.stop()
            raise
        self._reader = threading.Thread(
            target=self._run, args=(link,), name="c2sync-reader", daemon=True
        )
        self.watchdog.start()
        self._reader.start()

    def _connect(self) -> Link:
        """Open one link and read ``connection.connected`` within ``connect_timeout``."""
        options = self.options
        deadline = time.monotonic() + options.connect_timeout
        link: Link = (options.link_factory or Link)(options)
        with self.lock:
            if self.life.closing:
                raise ConnectionClosed(None, "", "the client was closed while connecting")
            self._link = link
            self.protocol.connection_made()
        try:
            first = link.open(deadline)
            with self.lock:
                if self.life.closing:
                    raise ConnectionClosed(None, "", "the client was closed while connecting")
                # Raises ProtocolError unless this is connection.connected (section 4).
                (event,) = self.protocol.receive(first, time.monotonic())
                assert isinstance(event, Connected)
                self.connected_message = event.message
        except BaseException:
            with self.lock:
                if self._link is link:
                    self._link = None
                self.protocol.connection_lost()
            link.release()
            raise
        return link

    # The reader ------------------------------------------------------------------------

    def _run(self, link: Link | None) -> None:
        """Read until closed; reconnect per the policy; surface a final failure."""
        policy = self.options.policy
        backoff = policy.delays()
        try:
            while link is not None:
                got_data, loss = self._read(link)
                link = None
                if loss is None:
                    return  # closed by close()
                if got_data:
                    backoff = policy.delays()  # reset only after a useful connection
                if not self.options.reconnect:
                    self._fail(loss)
                    return
                logger.warning("%s; reconnecting", loss)
                if not self.life.move(State.RECONNECTING):
                    return
                link, backoff = self._reconnect(loss, backoff)
        except BaseException as exc:  # a bug must still surface on the user's next call
            logger.exception("c2sync reader failed")
            self._fail(exc)
        finally:
            if link is not None:
                link.release()

    def _reconnect(
        self, loss: BaseException, backoff: Iterator[float]
    ) -> tuple[Link | None, Iterator[float]]:
        policy = self.options.policy
        error: BaseException = loss
        while True:
            delay = next(backoff, None)
            if delay is None:
                self._fail(error)
                return None, backoff
            delay = max(delay, policy.minimum_delay(error))
            logger.info("reconnecting in %.2f s", delay)
            if self._stop.wait(delay):
                return None, backoff
            try:
                link = self._connect()
            except BaseException as exc:
                if self.life.closing:
                    return None, backoff
                if not policy.is_retryable(exc) or not isinstance(exc, Exception):
                    self._fail(exc)
                    return None, backoff
                logger.warning("reconnect failed: %s", exc)
                error = exc
                continue
            with self.lock:
                self.protocol.restore_subscriptions()
                frames = self.protocol.data_to_send()
                self.stats.reconnects += 1
            self.watchdog.wake()
            try:
                for frame in frames:
                    link.send(frame)
            except ConnectionClosed as exc:
                logger.warning("resubscribing failed: %s", exc)  # the reader will see the loss
            # OPEN once the subscriptions are asked back, so a request waiting for the
            # reconnect goes out after them.
            self.life.move(State.OPEN)
            return link, backoff

    def _read(self, link: Link) -> tuple[bool, BaseException | None]:
        """Read one link until it ends. Returns (whether data came, the loss or None)."""
        self.watchdog.wake()
        got_data = False
        loss: BaseException
        try:
            while True:
                texts = link.read()  # every whole message the socket held
                if texts:
                    got_data = True
                    self._on_frames(link, texts)
                close = link.close_frame
                if close is not None:
                    loss = ConnectionClosed(close.code, close.reason)
                    break
        except ConnectionClosed as exc:
            loss = exc
        with self.lock:
            expired, self._heartbeat_expired = self._heartbeat_expired, False
            failed = self.protocol.connection_lost()
            if self._link is link:
                self._link = None
            closing = self.life.closing
        link.release()
        if expired:
            timeout = HeartbeatTimeout(self.protocol.heartbeat_timeout)
            timeout.__cause__ = loss
            loss = timeout
        for request_id in failed:
            self.pending.answer(request_id, error=RequestLost(None, "", f"request lost: {loss}"))
        return got_data, (None if closing else loss)

    def _on_frames(self, link: Link, texts: list[str | bytes]) -> None:
        """Take the messages one read brought: parsed outside the lock (most of the cost,
        and it needs no state), fed to the protocol under the lock in one go, acks sent,
        then handed on together (one lock and at most one wake-up per room)."""
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
        # Section 5: heartbeats are answered here, before any user code sees anything.
        for frame in frames:
            link.send(frame)
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
            self.pending.answer(event.request_id, event.ack, event.error)
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
            strategy_id, resume_from = event.strategy_id, event.resume_from
            self.inbox.purge(strategy_id, resume_from, event.replay_to)
            self.dispatcher.purge(lambda m: superseded(m, strategy_id, resume_from))

    def _deliver(self, messages: list[Message]) -> None:
        """Hand on the messages one read brought: those with callbacks to the dispatcher in
        one batch, the rest to the inbox in one batch."""
        self.stats.messages += len(messages)
        callbacks_for = self.dispatcher.callbacks_for
        posts = []
        queued: list[Message] = []
        for message in messages:
            if isinstance(message, Gap):
                logger.warning(
                    "gap in strategy %s signals after seq_id %s: %s (fetch them from the REST API)",
                    message.strategy_id,
                    message.from_seq,
                    message.message,
                )
            callbacks = callbacks_for(message)
            if callbacks:
                posts.append((callbacks, message))
            else:
                queued.append(message)
        if posts:
            self.dispatcher.post_many(posts)
        if queued:
            self.stats.dropped += self.inbox.put_many(queued)

    # The watchdog's hooks --------------------------------------------------------------

    def _expire(self, now: float) -> bool:
        with self.lock:
            if not self.protocol.is_dead(now):
                return False
            self._heartbeat_expired = True
            self.protocol.disarm()
        logger.warning(
            "no heartbeat for %.3g s: the connection is dead", self.protocol.heartbeat_timeout
        )
        return True

    def _cut(self, why: str) -> None:
        with self.lock:
            link = self._link
        if link is not None:
            link.cut(why)

    # Handing out -----------------------------------------------------------------------

    def _hand_out(self, message: Message) -> bool:
        """Whether ``message`` may be handed out (False: a duplicate, now counted)."""
        with self.lock:
            fresh = self.protocol.hand_out(message)
            if not fresh:
                self.stats.duplicates += 1
        return fresh

    def _last_delivered(self) -> dict[int, int]:
        with self.lock:
            return self.protocol.last_delivered

    def recv(self, timeout: float | None) -> Message:
        self._commit_in_hand()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                message = self.inbox.get(deadline)
            except TimeoutError:
                raise TimeoutError(f"no message within {timeout:g} s") from None
            if self._hand_out(message):
                if isinstance(message, Signal):
                    self._in_hand = message
                return message

    def _commit_in_hand(self) -> None:
        message, self._in_hand = self._in_hand, None
        if message is not None:
            self._processed(message)

    def _processed(self, signal: Signal) -> None:
        checkpoint = self.options.checkpoint
        if checkpoint is not None and signal.strategy_id is not None:
            try:
                checkpoint.save(signal.strategy_id, signal.seq_id)
            except Exception:
                logger.exception("saving the checkpoint failed")
            if self.life.ended.is_set():
                self._flush_checkpoint()  # a callback outlived close()'s flush

    def wait_closed(self) -> None:
        # Event.wait() without a timeout stays interruptible by Ctrl-C on the main thread.
        self.life.ended.wait()
        # Then the callbacks still running (the CLOSED state callback, or the one that
        # called close()) finish before run_forever() returns, so the caller's next line
        # never runs beside them; bounded like close()'s joins.
        dispatcher = self.dispatcher.thread
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join(JOIN_BOUND)
        self.life.raise_failure()

    # Requests --------------------------------------------------------------------------

    def request(
        self,
        action: str,
        channel: str,
        strategy_id: int,
        resume_from: int | None,
        timeout: float,
    ) -> SubscriptionAck:
        # Arguments are checked before anything else, so a bad one never waits or sends.
        self.protocol.check_request(action, channel, strategy_id, resume_from)
        deadline = time.monotonic() + timeout
        what = f"{action} {channel} {strategy_id}"
        while True:
            waiter = self._send_request(action, channel, strategy_id, resume_from, deadline, what)
            if waiter is not None:
                if not self.pending.wait(waiter, deadline, self._forget):
                    raise TimeoutError(f"no answer to {what} within {timeout:g} s")
                if not isinstance(waiter.error, RequestLost):
                    break
            if not self.options.reconnect:
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
    ) -> Waiter | None:
        """Register and send one request once OPEN. Returns its waiter, or None when the
        send failed (the link is being lost)."""
        order = self.pending.order
        if not order.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"could not send {what} in time")
        try:
            with self.lock:
                self.life.wait_open(deadline, what, self._link_ready)
                link = self._link
                assert link is not None
                request_id, frame = self.protocol.request(action, channel, strategy_id, resume_from)
                waiter = self.pending.add(request_id)
            try:
                link.send(frame)
            except ConnectionClosed as exc:
                logger.debug("sending %s failed: %s", what, exc)
                self._forget(request_id)
                self.pending.forget(request_id)
                return None
            return waiter
        finally:
            order.release()

    def _link_ready(self) -> bool:
        return self.protocol.is_open and self._link is not None

    def _forget(self, request_id: str) -> None:
        with self.lock:
            self.protocol.forget(request_id)

    # Ending ----------------------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        """The connection has failed for good: blocked and later calls raise ``error``."""
        logger.error("connection failed: %s", error)
        self._finish(error)

    def _finish(self, failure: BaseException | None) -> None:
        if not self.life.end(failure):
            return
        self.inbox.end(self.life.end_error, discard=False)
        self.pending.fail_all(self.life.end_error)
        self.watchdog.stop()
        self.dispatcher.stop()

    def close(self, code: int, reason: str, clean: bool) -> None:
        current = threading.current_thread()
        first = self.life.begin_close()
        if first:
            logger.info("closing (code %d)", code)
            self._stop.set()
            if clean:
                self._commit_in_hand()
            if self.life.failure is None:
                self.inbox.end(_closed_by_user, discard=True)
            with self.lock:
                link = self._link
            reader = self._reader
            if link is not None:
                # docs/websocket-client-facts.md "closing": arm the cut, send the close
                # frame, wait for the reader up to the grace, cut, join.
                self.watchdog.arm_close(CLOSE_GRACE)
                link.send_close(code, reason)
                if reader is not None and reader is not current:
                    reader.join(CLOSE_GRACE)
                link.cut("close")
            if reader is not None and reader is not current:
                reader.join(JOIN_BOUND)
            if reader is None and link is not None:
                link.release()
            self._finish(None)
        for thread in self.threads():
            if thread is not current and thread.is_alive():
                thread.join(JOIN_BOUND)
        if first:
            # After the dispatcher: a callback that returned during close() counts.
            self._flush_checkpoint()

    def _flush_checkpoint(self) -> None:
        flush = getattr(self.options.checkpoint, "flush", None)
        if callable(flush):
            try:
                flush()
            except Exception:
                logger.exception("flushing the checkpoint failed")

    def threads(self) -> list[threading.Thread]:
        candidates: list[Any] = [self._reader, self.watchdog.thread, self.dispatcher.thread]
        return [t for t in candidates if t is not None and t.ident is not None]


def _closed_by_user() -> BaseException:
    return ConnectionClosed(CLOSE_NORMAL, "", "the client is closed")


def _unreadable(exc: Exception) -> ProtocolError:
    """A frame our parser or protocol chokes on is the server's fault or our bug; either way
    it must not kill the reader (the heartbeats) or lose what comes next."""
    logger.error("could not read a frame; skipping it", exc_info=exc)
    error = ProtocolError(f"unreadable frame: {exc!r}")
    error.__cause__ = exc
    return error
