"""The session: the protocol core wired to the rooms, for one client across reconnects.

::

    Client ──► Session ──► Reader thread ──► Link ──► the socket
                  │            └──► ClientProtocol, Dispatcher, Inbox, Pending
                  ├──► Lifecycle (the state table, the one lock)
                  ├──► Watchdog (cuts the link at a deadline)
                  └──► Pending (subscribe()/unsubscribe() callers)

Called by user threads (:meth:`Session.open`, :meth:`Session.request`,
:meth:`Session.recv`, :meth:`Session.close`), by the reader thread (the
:class:`~c2sync._reader.ReaderHost` methods: ``connect``, ``link_lost``, ``fail``), by the
dispatcher (``_hand_out``, ``_processed``) and by the watchdog (``_expire``, ``_cut``). One
lock (the lifecycle's) guards the protocol core, the current link and the lifecycle; user
code never runs under it. The threads hold the session, never the public
:class:`~c2sync.client.Client`, so a client nobody references is garbage-collected and
closed with a close frame.

Guarantees: ``close()`` is idempotent, bounded (about a second even against a server that
stopped answering) and joins every thread it started except the caller's; a message is
counted as processed for the checkpoint as docs/api-contract.md "Checkpoints" says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ._dispatcher import Dispatcher
from ._inbox import Inbox
from ._lifecycle import Lifecycle, State
from ._link import Link
from ._options import Options
from ._pending import Pending, RequestLost, Waiter
from ._protocol import ClientProtocol, Connected
from ._reader import Reader, Stats, replay_restarted
from ._redact import Redactor, log_failure, remember
from ._spec import CLOSE_NORMAL, SIGNAL
from ._substats import SubscriptionBook
from ._watchdog import Watchdog
from .exceptions import C2Error, ConnectionClosed, HeartbeatTimeout
from .messages import Message, Signal, SubscriptionAck

__all__ = ["Session"]

logger = logging.getLogger("c2sync")

CLOSE_GRACE = 0.5  # seconds a close waits for the server's close frame before cutting
JOIN_BOUND = 1.0  # seconds any join waits


class Session:
    """One client's connection across reconnects. See the module docstring."""

    def __init__(self, options: Options) -> None:
        self.options = options
        # Every message's repr masks the key from now on, whatever a server echoes in it
        # (docs/security.md "The API key"; why process-wide: c2sync/_redact.py).
        remember(options.api_key)
        checkpoint = options.checkpoint
        resume = checkpoint.load() if checkpoint is not None else {}
        self.protocol = ClientProtocol(
            options.heartbeat_timeout,
            resume_points=resume,
            wallclock=_utc_now,
            correct_clock=options.correct_clock,
            secrets=(options.api_key,),
        )
        self.stats = Stats()
        self.connected_message: Message | None = None
        # Masks the key in what the shell logs (server text, others' failures).
        self.redact = Redactor(options.api_key)
        self.dispatcher = Dispatcher(
            self._hand_out,
            self._processed if checkpoint is not None else None,
            options.max_queue,
            self._last_delivered,
            self.redact,
        )
        self.life = Lifecycle(self.dispatcher.post_state)
        self.lock = self.life.lock
        self.mutex = self.life.mutex  # the same lock, cheaper to take (no waiting through it)
        self._checkpoint = options.checkpoint
        self.inbox = Inbox(options.max_queue, self._last_delivered)
        self.pending = Pending()
        self.watchdog = Watchdog(
            lambda: self.protocol.deadline, self._expire, self._cut, self._send_deadline
        )
        self._link: Link | None = None
        self._stop = threading.Event()  # wakes the reader out of a backoff wait
        self._starting = threading.Lock()  # held by open() from OPEN to the threads started
        self.reader = Reader(self, self._stop)
        self._heartbeat_expired = False
        self._in_hand: list[Signal] = []  # handed out by recv(), not yet processed
        self.book = SubscriptionBook()  # client.subscription_stats
        self.connected_at: float | None = None  # monotonic time of the last connection.connected

    # Opening ---------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and start the threads; the caller blocks, errors raise here and nothing
        is retried."""
        if self.reader.thread is not None or self.life.closing:
            raise RuntimeError("this client is already connected; a closed one cannot reopen")
        self.inbox.reopen()
        self.dispatcher.restart()
        self.life.begin_open()
        try:
            link = self.connect()
            # OPEN and the threads started in one step as close() sees it: a close() that
            # comes in between waits for the threads, so it finds and joins them.
            with self._starting:
                if not self.life.move(State.OPEN):
                    link.release()
                    raise ConnectionClosed(None, "", "the client was closed while connecting")
                self.watchdog.start()
                self.reader.start(link)
        except BaseException:
            self.life.end()
            self.inbox.end(self.life.end_error, discard=False)
            self.dispatcher.stop()
            raise

    def connect(self) -> Link:
        """Open one link and read ``connection.connected`` within ``connect_timeout``."""
        options = self.options
        deadline = time.monotonic() + options.connect_timeout
        link: Link = (options.link_factory or Link)(options)
        link.on_stall = self.watchdog.wake  # a send found another in progress: check its bound
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
                self.stats.clock_skew = self.protocol.clock_skew
                self.connected_message = event.message
                self.connected_at = time.monotonic()
                self._count_resumes()
        except BaseException:
            with self.lock:
                if self._link is link:
                    self._link = None
                self.protocol.connection_lost()
            link.release()
            raise
        return link

    # The reader ------------------------------------------------------------------------

    def link_lost(self, link: Link, loss: BaseException) -> BaseException | None:
        """The reader's link ended with ``loss``: forget it, fail the requests it carried.
        Returns the loss to act on (a HeartbeatTimeout if the watchdog cut it), or None
        when ``close()`` did."""
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
        return None if closing else loss

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

    def _send_deadline(self) -> float | None:
        link = self._link  # one read: no lock needed for a hint the watchdog re-reads
        return None if link is None else link.send_deadline

    # Handing out -----------------------------------------------------------------------

    def _hand_out(self, message: Message) -> None:
        """Record that ``message`` is about to reach the user (the dispatcher's hook; only
        a signal changes anything, and nothing is refused: duplicates were dropped as they
        arrived)."""
        if isinstance(message, Signal):
            with self.mutex:
                self.protocol.hand_out(message)

    def _count_resumes(self) -> None:
        # Under the lock, as a connection opens: the signal subscriptions the reader is
        # about to restore with a resume point (ClientProtocol.restore_subscriptions).
        held = self.protocol.subscriptions
        points = self.protocol.last_delivered
        for pair in held:
            if pair[0] == SIGNAL and points.get(pair[1]):
                self.book.resumed(pair, held)

    def require_opened(self) -> None:
        """Raise at once on a client nobody connected (docs/api-contract.md "Receiving")."""
        if not self.life.opened and not self.life.closing:
            raise C2Error("not connected: call connect()")

    def _last_delivered(self) -> dict[int, int]:
        with self.lock:
            return self.protocol.last_delivered

    def recv(self, timeout: float | None) -> Message:
        if not self.life.opened:
            self.require_opened()
        if self._in_hand:
            self._commit_in_hand()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            message = self.inbox.get(deadline)
        except TimeoutError:
            raise TimeoutError(f"no message within {timeout:g} s") from None
        if isinstance(message, Signal):
            with self.mutex:
                self.protocol.hand_out(message)
            if self._checkpoint is not None:  # else nothing is done at the next call
                self._in_hand = [message]
        return message

    def recv_many(self, limit: int, timeout: float | None) -> list[Message]:
        """Up to ``limit`` waiting messages, in order, waiting until ``timeout`` for the
        first; [] when none came. The batch counts as processed at the next call."""
        self.require_opened()
        if self._in_hand:
            self._commit_in_hand()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            batch = self.inbox.get_many(limit, deadline)
        except TimeoutError:
            return []
        with self.mutex:
            hand_out = self.protocol.hand_out
            for message in batch:
                hand_out(message)
        if self._checkpoint is not None:
            # Signals arrive in order per strategy: the last one of each is what a
            # checkpoint needs.
            last = {m.strategy_id: m for m in batch if isinstance(m, Signal)}
            self._in_hand = list(last.values())
        return batch

    def _commit_in_hand(self) -> None:
        held, self._in_hand = self._in_hand, []
        for message in held:
            self._processed(message)

    def _processed(self, signal: Signal) -> None:
        checkpoint = self.options.checkpoint
        if checkpoint is not None and signal.strategy_id is not None:
            with self.lock:
                kind = self.protocol.checkpoint_kind(signal.strategy_id, signal.seq_id)
            try:
                if kind == "restart":  # the server restarted its numbering: it goes down
                    getattr(checkpoint, "restart", checkpoint.save)(
                        signal.strategy_id, signal.seq_id
                    )
                elif kind == "save":
                    checkpoint.save(signal.strategy_id, signal.seq_id)
            except Exception as exc:
                log_failure(logger, self.redact, exc, "saving the checkpoint failed")
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
        self.require_opened()
        what = f"{action} {channel} {strategy_id}"

        def register(deadline: float) -> tuple[Waiter, str, Callable[[str], None]]:
            with self.lock:
                self.life.wait_open(deadline, what, self._link_ready)
                assert self._link is not None
                request_id, frame = self.protocol.request(action, channel, strategy_id, resume_from)
                restart = self.protocol.take_restart()
                waiter, link_send = self.pending.add(request_id), self._link.send
            if restart is not None:
                # Before the request goes out, so only what came before it is superseded
                # (outside the lock: the queues' locks are never taken under it).
                replay_restarted(self, restart)
            return waiter, frame, lambda text: link_send(text, deadline)

        return self.pending.request(
            what, timeout, register, self._forget, resend=self.options.reconnect
        )

    def _link_ready(self) -> bool:
        return self.protocol.is_open and self._link is not None

    def _forget(self, request_id: str) -> None:
        with self.lock:
            self.protocol.forget(request_id)

    # Ending ----------------------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
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
            try:
                self._close_link(code, reason, clean, current)
            except Exception as exc:  # a bug: close() still ends the client, threads joined
                log_failure(logger, self.redact, exc, "closing the link failed")
            finally:
                self._finish(None)
        for thread in self.threads():
            if thread is not current and thread.is_alive():
                thread.join(JOIN_BOUND)
        # Whatever still waits (a callback that outlived the bound, or close() from a
        # callback): no callback starts after close() returns (docs/api-contract.md
        # "Receiving").
        self.dispatcher.silence()
        if first:
            # After the dispatcher: a callback that returned during close() counts.
            self._flush_checkpoint()

    def _close_link(self, code: int, reason: str, clean: bool, current: threading.Thread) -> None:
        if self.life.state is not State.CLOSED:  # else no connection to close
            logger.info("closing (code %d)", code)
        self._stop.set()
        if clean:
            self._commit_in_hand()
        if self.life.failure is None:
            self.inbox.end(_closed_by_user, discard=True)
        with self._starting:  # an open() between OPEN and its threads: wait for them
            pass
        with self.lock:
            link = self._link
        reader = self.reader.thread
        if link is not None:
            # docs/websocket-client-facts.md "closing": arm the cut, send the close frame,
            # wait for the reader up to the grace, cut, join. The link's socket is closed
            # by the thread that opened it (the reader, or a connect() still running).
            self.watchdog.arm_close(CLOSE_GRACE)
            try:
                link.send_close(code, reason, time.monotonic() + CLOSE_GRACE)
                if reader is not None and reader is not current:
                    reader.join(CLOSE_GRACE)
            finally:
                link.cut("close")
        if reader is not None and reader is not current:
            reader.join(JOIN_BOUND)

    def _flush_checkpoint(self) -> None:
        flush = getattr(self.options.checkpoint, "flush", None)
        if callable(flush):
            try:
                flush()
            except Exception as exc:
                log_failure(logger, self.redact, exc, "flushing the checkpoint failed")

    def threads(self) -> list[threading.Thread]:
        candidates: list[Any] = [self.reader.thread, self.watchdog.thread, self.dispatcher.thread]
        return [t for t in candidates if t is not None and t.ident is not None]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)  # the wall clock the core measures skew against


def _closed_by_user() -> BaseException:
    return ConnectionClosed(CLOSE_NORMAL, "", "the client is closed")
