"""The reader: the one thread that reads the link, feeds the protocol core and reconnects.

::

    Link.read ──► parse (no lock) ──► ClientProtocol (under the lock) ──► acks: Link.send
                                          ├──► Dispatcher ──► callbacks
                                          ├──► Inbox ──► recv()
                                          └──► Pending ──► subscribe() callers
    link lost ──► backoff (ReconnectPolicy) ──► host.connect() ──► resubscribe ──► OPEN

Only this thread reads a link, and it answers each heartbeat before any user code sees
anything (docs/protocol.md section 5): acks go out straight after the protocol core produced
them, before messages are handed on. It never runs user code. What it needs of the session
is written down in :class:`ReaderHost`, so this module never imports the session.

Guarantees: a lost link is re-opened with the policy's backoff, resetting it only after a
connection that delivered data; a fatal error (or a bug here) ends the client through
``host.fail`` rather than killing the thread silently; a frame that cannot be parsed is
counted and skipped, never fatal; what it logs of the server's text (a gap's message, a
frame the parser choked on) has the API key masked as ``***`` (docs/security.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from itertools import compress, count, repeat
from operator import gt
from typing import Protocol

import attrs

from ._dispatcher import Dispatcher
from ._inbox import Inbox
from ._lifecycle import Lifecycle, State
from ._link import Link
from ._options import Options
from ._pending import Pending
from ._protocol import (
    ClientProtocol,
    Deliver,
    Duplicate,
    Event,
    HeartbeatAnswered,
    Malformed,
    ReplayRestarted,
    RequestAnswered,
    SubscriptionRefused,
)
from ._redact import Redactor, log_failure
from ._spec import HEARTBEAT, SIGNAL
from ._substats import SubscriptionBook
from ._watchdog import Watchdog
from .codec import parse_message
from .exceptions import C2Error, ConnectionClosed, ProtocolError
from .messages import Gap, Message

__all__ = ["Reader", "ReaderHost", "Stats", "replay_restarted"]

logger = logging.getLogger("c2sync")

_HEARTBEAT_HINT = '"heartbeat"'  # in the text of every heartbeat (and of a few other frames)
# A heartbeat is about 70 characters; longer frames are not searched for one (a search of a
# 550-character signal costs ~1 % of its handling). One that long is answered in its turn.
_HEARTBEAT_MAX = 256


@attrs.define
class Stats:
    """Counters of a client's life (the API contract, "Observability").

    Attributes:
        messages: messages received for the user (signals, positions, gaps, ...).
        heartbeats: server heartbeats received.
        acks_sent: heartbeat acks sent.
        last_heartbeat: when the last heartbeat arrived (aware UTC), or None.
        reconnects: successful reconnections.
        dropped: messages dropped because the recv() queue or the callbacks' backlog
            was full.
        malformed: frames skipped because they were not valid messages.
        duplicates: replayed signals dropped because they were already delivered.
        clock_skew: the server's clock minus the local one in seconds, at the last
            ``connection.connected`` or ``heartbeat`` (None before the first); positive
            when the local clock is behind (the API contract, "Clocks and proxies").
    """

    messages: int = 0
    heartbeats: int = 0
    acks_sent: int = 0
    last_heartbeat: datetime | None = None
    reconnects: int = 0
    dropped: int = 0
    malformed: int = 0
    duplicates: int = 0
    clock_skew: float | None = None


class ReaderHost(Protocol):
    """What the reader needs of the session that starts it."""

    options: Options
    life: Lifecycle
    lock: threading.Condition
    mutex: threading.Lock  # the lock under ``lock``, cheaper to take
    protocol: ClientProtocol
    stats: Stats
    pending: Pending
    inbox: Inbox
    dispatcher: Dispatcher
    watchdog: Watchdog
    book: SubscriptionBook  # per-subscription counters (client.subscription_stats)
    redact: Redactor  # masks the key in what is logged

    def connect(self) -> Link:
        """Open a link and read ``connection.connected`` (raises what a connect raises)."""

    def link_lost(self, link: Link, loss: BaseException) -> BaseException | None:
        """Forget ``link``; return why it was lost (None when ``close()`` did it)."""

    def fail(self, error: BaseException) -> None:
        """End the client with ``error``."""


class Reader:
    """The reader thread of one client.

    Args:
        host: the session.
        stop: set by ``close()``; wakes a backoff wait.
    """

    def __init__(self, host: ReaderHost, stop: threading.Event) -> None:
        self._host = host
        self._stop = stop
        self._redact = host.redact  # for what it logs of server text
        self.thread: threading.Thread | None = None

    def start(self, link: Link) -> None:
        self.thread = threading.Thread(
            target=self._run, args=(link,), name="c2sync-reader", daemon=True
        )
        self.thread.start()

    def _run(self, link: Link | None) -> None:
        """Read until closed; reconnect per the policy; surface a final failure."""
        host = self._host
        policy = host.options.policy
        backoff = policy.delays()
        try:
            while link is not None:
                got_data, loss = self._read(link)
                link = None
                if loss is None:
                    return  # closed by close()
                if got_data:
                    backoff = policy.delays()  # reset only after a useful connection
                if not host.options.reconnect:
                    host.fail(loss)
                    return
                logger.warning("%s; reconnecting", loss)
                host.dispatcher.post_error(loss)  # survived: on_error is told
                if not host.life.move(State.RECONNECTING):
                    return
                link, backoff = self._reconnect(loss, backoff)
        except BaseException as exc:  # a bug must still surface on the user's next call
            log_failure(logger, self._redact, exc, "c2sync reader failed")
            host.fail(masked_failure(exc, self._redact))
        finally:
            if link is not None:
                link.release()

    def _reconnect(
        self, loss: BaseException, backoff: Iterator[float]
    ) -> tuple[Link | None, Iterator[float]]:
        host = self._host
        policy = host.options.policy
        error: BaseException = loss
        while True:
            delay = next(backoff, None)
            if delay is None:
                host.fail(error)
                return None, backoff
            delay = max(delay, policy.minimum_delay(error))
            logger.info("reconnecting in %.2f s", delay)
            if self._stop.wait(delay):
                return None, backoff
            try:
                link = host.connect()
            except BaseException as exc:
                if host.life.closing:
                    return None, backoff
                if not policy.is_retryable(exc) or not isinstance(exc, Exception):
                    host.fail(exc)
                    return None, backoff
                logger.warning("reconnect failed: %s", exc)
                host.dispatcher.post_error(exc)  # survived: on_error is told
                error = exc
                continue
            with host.lock:
                host.protocol.restore_subscriptions()
                frames = host.protocol.data_to_send()
                host.stats.reconnects += 1
            host.watchdog.wake()
            try:
                for frame in frames:
                    link.send(frame)
            except ConnectionClosed as exc:
                logger.warning("resubscribing failed: %s", exc)  # the next read sees the loss
            # OPEN once the subscriptions are asked back, so a request waiting for the
            # reconnect goes out after them.
            host.life.move(State.OPEN)
            return link, backoff

    def _read(self, link: Link) -> tuple[bool, BaseException | None]:
        """Read one link until it ends. Returns (whether data came, the loss or None)."""
        self._host.watchdog.wake()
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
        return got_data, self._host.link_lost(link, loss)

    def _on_frames(self, link: Link, texts: list[str | bytes]) -> None:
        """Take the messages one read brought: parsed outside the lock (most of the cost,
        and it needs no state), fed to the protocol under the lock in one go, acks sent,
        then handed on together (one lock and at most one wake-up per room)."""
        failed: list[ConnectionClosed] = []  # an ack that could not be sent
        early = self._heartbeats_first(link, texts, failed) if len(texts) > 1 else None
        if not early:
            self._take(link, [_parse(text) for text in texts], failed)
        else:
            parsed = []
            for index, text in enumerate(texts):
                if index not in early:
                    parsed.append(_parse(text))
                elif early[index] is not None:
                    parsed.append(early[index])  # type: ignore[arg-type]
            if parsed:
                self._take(link, parsed, failed)
        if failed:
            # What was read is handed on first: the link's loss must not lose it.
            raise failed[0]

    def _heartbeats_first(
        self, link: Link, texts: list[str | bytes], failed: list[ConnectionClosed]
    ) -> dict[int, Message | ProtocolError | None]:
        """Section 5 asks for an ack at once: a heartbeat that came in one read behind other
        frames is answered before they are parsed (its ack depends on nothing they carry;
        under a flood that is up to a few hundred parses sooner). A cheap text search finds
        the candidates; parsing decides. Returns what was parsed here, by index: None for a
        heartbeat already taken, the parsed frame for a candidate that was not one (it is
        taken in its place, in order)."""
        # At C speed: the frames short enough to be a heartbeat; then those holding the hint.
        short = compress(count(), map(gt, repeat(_HEARTBEAT_MAX), map(len, texts)))
        hits = [i for i in short if isinstance(texts[i], str) and _HEARTBEAT_HINT in texts[i]]
        early: dict[int, Message | ProtocolError | None] = {}
        for index in hits:
            item = _parse(texts[index])
            if isinstance(item, Message) and item.msg_type == HEARTBEAT:
                self._take(link, [item], failed)
                early[index] = None
            else:
                early[index] = item
        return early

    def _take(
        self, link: Link, parsed: list[Message | ProtocolError], failed: list[ConnectionClosed]
    ) -> None:
        """Feed parsed frames to the core under the lock in one go, send the acks, then
        hand the messages on together. An ack that cannot be sent (the link is going) is
        noted in ``failed``, and what the core took is still handed on: its resume points
        already count it."""
        host = self._host
        protocol = host.protocol
        in_order, receive = protocol.accept_in_order, protocol.receive_parsed
        # What happened, in order: a message to deliver stands for itself (the in-order
        # signals, nearly all of a flood, build no event object), anything else is an event.
        happened: list[Message | Event] = []
        only_messages = True
        with host.mutex:
            now = time.monotonic()
            for item in parsed:
                if in_order(item):
                    happened.append(item)  # type: ignore[arg-type]
                    continue
                try:
                    events = receive(item, now)
                except Exception as exc:
                    events = [Malformed(unreadable(exc))]
                for event in events:
                    if type(event) is Deliver:
                        happened.append(event.message)
                        if isinstance(event.message, Gap):
                            log_gap(event.message, self._redact)
                    else:
                        happened.append(event)
                        only_messages = False
            frames = protocol.data_to_send()
            host.stats.clock_skew = protocol.clock_skew
        # Section 5: heartbeats are answered here, before any user code sees anything.
        try:
            for frame in frames:
                link.send(frame)
        except ConnectionClosed as exc:
            failed.append(exc)
        if only_messages:
            if happened:
                self._deliver(happened)  # type: ignore[arg-type]
            return
        deliver: list[Message] = []
        for done in happened:
            if isinstance(done, Message):
                deliver.append(done)
                continue
            if deliver:
                self._deliver(deliver)
                deliver = []
            self._on_event(done)
        if deliver:
            self._deliver(deliver)

    def _on_event(self, event: Event) -> None:
        host = self._host
        stats = host.stats
        if isinstance(event, HeartbeatAnswered):
            stats.heartbeats += 1
            stats.acks_sent += 1
            stats.last_heartbeat = datetime.now(timezone.utc)
        elif isinstance(event, RequestAnswered):
            host.pending.answer(event.request_id, event.ack, event.error)
        elif isinstance(event, Malformed):
            stats.malformed += 1
            error = event.error
            if isinstance(error, Unreadable):
                log_unreadable(error.failure, self._redact)
            # The core masked what the codec quoted (ClientProtocol(secrets=...)).
            logger.warning("skipped a malformed frame: %s", error)
        elif isinstance(event, Duplicate):
            stats.duplicates += 1  # only here: duplicates are dropped as they arrive
            host.book.duplicate(event.message, host.protocol.subscriptions)
            logger.debug(
                "dropped duplicate signal %s of strategy %s",
                event.message.seq_id,
                event.message.strategy_id,
            )
        elif isinstance(event, ReplayRestarted):
            replay_restarted(host, event)
        elif isinstance(event, SubscriptionRefused):
            # Never silent (docs/api-contract.md "Servers that read the docs differently"):
            # the refusal goes into the user's stream in order, and on_error is told. The
            # pair already left the subscriptions, so subscription_stats drops it too.
            self._deliver([event.message])
            host.dispatcher.post_error(event.error)

    def _deliver(self, messages: list[Message]) -> None:
        """Hand on the messages one read brought: those with callbacks to the dispatcher in
        one batch, the rest to the inbox in one batch."""
        host = self._host
        host.stats.messages += len(messages)
        host.book.arrived(messages, host.protocol.subscriptions, datetime.now(timezone.utc))
        by_type, star = host.dispatcher.routes  # one snapshot for the batch
        if not by_type and not star:
            queued = messages  # no callbacks at all: everything goes to recv()
        else:
            posts = []
            queued = []
            for message in messages:
                handles = by_type.get(message.msg_type, star)
                if handles:
                    posts.append((handles, message))
                else:
                    queued.append(message)
            if posts:
                host.stats.dropped += host.dispatcher.post_many(posts)
        if queued:
            dropped = host.inbox.put_many(queued)
            if dropped:
                host.stats.dropped += dropped
                host.dispatcher.overflowed(dropped)  # on_error is told as well


def replay_restarted(host: ReaderHost, event: ReplayRestarted) -> None:
    """Apply a restarted replay: what is queued of the strategy above its ``resume_from``
    is superseded (unless ``event.purge`` is off), and the resume is counted. Called by the
    reader, and by the session for a restart that comes with a request."""
    strategy_id, resume_from = event.strategy_id, event.resume_from
    if event.purge:
        host.inbox.purge(strategy_id, resume_from, event.replay_to)
        host.dispatcher.purge(strategy_id, resume_from, event.replay_to)
    host.book.resumed((SIGNAL, strategy_id), host.protocol.subscriptions)


def _parse(text: str | bytes) -> Message | ProtocolError:
    """A frame parsed, or why it could not be (never raises: a bad frame is skipped)."""
    try:
        return parse_message(text)
    except ProtocolError as exc:
        return exc
    except Exception as exc:
        return unreadable(exc)


def log_gap(gap: Gap, redact: Callable[[str], str]) -> None:
    """The WARNING of a gap; the server's message with the secrets masked."""
    logger.warning(
        "gap in strategy %s signals: missing after seq_id %s (the replay from %s stopped): "
        "%s (fetch them from the REST API)",
        gap.strategy_id,
        gap.missing_after,
        gap.from_seq,
        redact(gap.message),
    )


class Unreadable(ProtocolError):
    """A frame our parser or protocol choked on: the server's fault or our bug; either way
    it must not kill the reader (the heartbeats) or lose what comes next.

    Its text names only the failure's type; the failure itself (whose text may quote the
    frame) is kept in ``failure`` and logged by the reader, masked, when it skips the frame.
    Built where no key is at hand (the per-frame parse is shared by every client and kept
    free of it), so it is never chained to the failure, whose text a traceback would show.
    """

    def __init__(self, failure: Exception) -> None:
        super().__init__(f"unreadable frame: {type(failure).__name__}")
        self.failure = failure


def unreadable(exc: Exception) -> ProtocolError:
    """The error of a frame that could not be read (see :class:`Unreadable`)."""
    return Unreadable(exc)


def masked_failure(failure: BaseException, redact: Callable[[str], str]) -> BaseException:
    """What the user's calls raise after the reader died of ``failure`` (a bug): the
    failure itself, unless its text holds a secret; then a ``C2Error`` naming its type
    with the text masked (not chained to it: a traceback would show its text)."""
    text = str(failure)
    shown = redact(text)
    if shown == text:
        return failure
    return C2Error(f"c2sync's reader failed: {type(failure).__name__}: {shown}")


def log_unreadable(failure: Exception, redact: Callable[[str], str]) -> None:
    """The ERROR for a frame that could not be read: what failed and where, with the
    secrets masked."""
    log_failure(logger, redact, failure, "could not read a frame; skipping it")
