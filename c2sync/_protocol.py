"""The client's protocol state machine: fed text and the time, drained of events and frames.

No sockets, threads or clocks here (a test checks the imports): the threaded shell (the
session and the reader) owns those and calls in under its one lock. What it reports are
the events of :mod:`c2sync._events`; each strategy's sequence rules live in
:mod:`c2sync._streams`, the clock's in :mod:`c2sync._clock`. One :class:`ClientProtocol` lives
as long as the client, across reconnects; ``connection_made``/``connection_lost`` mark each
socket's life.

Whatever the server sends may quote the API key; where the core turns server text into an
exception (:class:`~c2sync.exceptions.ServerError`, :class:`~c2sync.exceptions.ProtocolError`)
or a log line, it masks the secrets it was given (``secrets=``, the shell passes
``Options.api_key``) as ``***`` (docs/security.md "The API key"). The messages it delivers
keep the server's data unchanged; their reprs mask on their own (c2sync/messages.py).
Masking happens only on those error and log paths, never on the in-order signal path
(:meth:`ClientProtocol.accept_in_order`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime

import attrs

from ._clock import ClockSkew, is_timestamp_error, utc_now
from ._events import (
    Connected,
    Deliver,
    Duplicate,
    Event,
    HeartbeatAnswered,
    Malformed,
    ReplayRestarted,
    RequestAnswered,
    SubscriptionRefused,
)
from ._redact import Redactor
from ._requests import Request, Requests, refuses_resume_from
from ._spec import (
    CONNECTED,
    DISCONNECTED,
    HEARTBEAT,
    MAX_SUBSCRIPTIONS,
    POSITIONS,
    SIGNAL,
    SUBSCRIBE,
    UNSUBSCRIBE,
)
from ._streams import Streams
from .codec import (
    encode_heartbeat_ack,
    encode_subscription_request,
    format_timestamp,
    parse_message,
    validate_channel,
    validate_strategy_id,
)
from .exceptions import ProtocolError, ServerError, SubscriptionLimitError
from .messages import (
    ErrorDetail,
    ErrorMessage,
    Gap,
    Message,
    Positions,
    Signal,
    SubscriptionAck,
)

__all__ = [  # the events are re-exported: the shell reads them from here
    "ClientProtocol",
    "Connected",
    "Deliver",
    "Duplicate",
    "Event",
    "HeartbeatAnswered",
    "Malformed",
    "Pair",
    "ReplayRestarted",
    "RequestAnswered",
    "SubscriptionRefused",
]

logger = logging.getLogger("c2sync.protocol")

Pair = tuple[str, int]


class ClientProtocol:
    """Protocol state of one client: heartbeats, requests, subscriptions, sequence numbers.

    Args:
        heartbeat_timeout: seconds without a server heartbeat after which the connection is
            dead (docs/protocol.md section 5).
        resume_points: ``{strategy_id: seq_id}`` already processed (from a checkpoint).
        max_subscriptions: subscriptions one connection may hold (section 6).
        request_ids: where request ids come from (tests inject a predictable one).
        wallclock: the local UTC wall time, read when a server timestamp arrives and when
            a message is stamped (None: the real one; the shell passes its own).
        correct_clock: stamp outgoing messages with the clock skew corrected (see
            ``_clock.py``); False is a seam for tests.
        secrets: strings that never show in the exceptions and log lines built here (the
            shell passes the API key): the core is where server text becomes those texts,
            so the masking is done where they are written, with no I/O, and only there.
    """

    def __init__(
        self,
        heartbeat_timeout: float,
        *,
        resume_points: Mapping[int, int] | None = None,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        request_ids: Iterator[str] | None = None,
        wallclock: Callable[[], datetime] | None = None,
        correct_clock: bool = True,
        secrets: Iterable[str] = (),
    ) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.max_subscriptions = max_subscriptions
        self._requests = Requests(request_ids)
        self._wallclock = wallclock or utc_now
        self._clock = ClockSkew(correct=correct_clock)
        self._redact = Redactor(*secrets)
        self._streams = Streams(resume_points, redact=self._redact)
        # hand_out(message): record that ``message`` is about to reach the user. Nothing is
        # refused there: duplicates were dropped as they arrived (receive()); a signal is
        # handed out whatever the last one was (the queue and the callbacks' backlog may
        # interleave a strategy's signals when callbacks come and go, and a server that
        # restarted its numbering goes down). The streams' own method: one call per
        # message handed out, not two.
        self.hand_out: Callable[[Message], None] = self._streams.hand_out
        self._subscriptions: dict[Pair, None] = {}  # held by the server; ordered for restore
        self._outgoing: list[str] = []
        self._restart: ReplayRestarted | None = None  # see take_restart()
        self._awaiting_connected = False
        self._open = False
        self._deadline: float | None = None

    # State ---------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True between ``connection.connected`` and the connection's loss."""
        return self._open

    @property
    def deadline(self) -> float | None:
        """When (on the caller's monotonic clock) the connection is dead without a heartbeat."""
        return self._deadline

    @property
    def subscriptions(self) -> frozenset[Pair]:
        """The (channel, strategy_id) pairs the server holds for this client."""
        return frozenset(self._subscriptions)

    @property
    def clock_skew(self) -> float | None:
        """Server time minus local time in seconds, at the last measure (None before)."""
        return self._clock.offset

    @property
    def last_delivered(self) -> dict[int, int]:
        """``{strategy_id: last seq_id handed to the user}``."""
        return self._streams.last_delivered

    @property
    def invalid_seq_ids(self) -> int:
        """``strategy.signal`` frames whose ``seq_id`` could order nothing, so far."""
        return self._streams.invalid_seq_ids

    def resume_point(self, strategy_id: int) -> int | None:
        """Where a subscription resumes (see :meth:`Streams.resume_point
        <c2sync._streams.Streams.resume_point>`)."""
        return self._streams.resume_point(strategy_id)

    def checkpoint_kind(self, strategy_id: int, seq_id: int) -> str | None:
        """How a processed signal goes into a checkpoint (see :mod:`c2sync._streams`)."""
        return self._streams.checkpoint_kind(strategy_id, seq_id)

    def is_dead(self, now: float) -> bool:
        """Whether the heartbeat deadline has passed (section 5)."""
        return self._deadline is not None and now >= self._deadline

    def disarm(self) -> None:
        """Stop the heartbeat deadline (the connection was declared dead)."""
        self._deadline = None

    def data_to_send(self) -> list[str]:
        """Frames to send now, in order; the list is emptied."""
        frames, self._outgoing = self._outgoing, []
        return frames

    # Connection lifecycle ------------------------------------------------------------

    def connection_made(self) -> None:
        """A new socket is up: the next frame must be ``connection.connected``."""
        self._awaiting_connected = True
        self._open = False
        self._deadline = None
        self._outgoing.clear()

    def connection_lost(self) -> list[str]:
        """The socket is gone. Returns the ids of the waited requests that can no longer be
        answered; subscriptions are kept, to be restored on the next connection."""
        self._open = False
        self._awaiting_connected = False
        self._deadline = None
        self._outgoing.clear()
        self._streams.forget_replays()
        return self._requests.lost()

    def restore_subscriptions(self) -> None:
        """Queue a request for every held subscription (after reconnecting, section 9).

        Signal subscriptions resume from the highest ``seq_id`` held: handed out, or still
        waiting in the queue or the callbacks' backlog (they survive the reconnect).
        """
        for channel, strategy_id in self._subscriptions:
            resume = self.resume_point(strategy_id) if channel == SIGNAL else None
            request = self._requests.new(SUBSCRIBE, channel, strategy_id, resume, False, False)
            self._outgoing.append(self._encode(request))

    # Requests --------------------------------------------------------------------------

    def request(
        self,
        action: str,
        channel: str,
        strategy_id: int,
        resume_from: int | None = None,
    ) -> tuple[str, str]:
        """Prepare a subscribe/unsubscribe request a caller will wait for.

        Args:
            action: ``"subscribe"`` or ``"unsubscribe"``.
            channel: the channel.
            strategy_id: the strategy.
            resume_from: the last ``seq_id`` processed (signals only); None resumes from
                what this client handed out or the checkpoint holds.

        Returns:
            ``(request_id, frame)``: send the frame, then wait for ``request_id``'s answer.

        Raises:
            ValueError: a bad argument.
            SubscriptionLimitError: a subscription beyond the limit.
        """
        self.check_request(action, channel, strategy_id, resume_from)
        pair = (channel, strategy_id)
        explicit = resume_from is not None and resume_from > 0
        if action == SUBSCRIBE and pair not in self._subscriptions:
            pending = self._requests.subscribing(self._subscriptions)
            if pair not in pending and len(self._subscriptions) + len(pending) >= (
                self.max_subscriptions
            ):
                raise SubscriptionLimitError(
                    f"a connection holds at most {self.max_subscriptions} subscriptions"
                )
        mode = None
        if action == SUBSCRIBE and channel == SIGNAL:
            self._streams.want(strategy_id)  # from now on its signals are ordered, deduped
            if resume_from is None:
                resume_from = self.resume_point(strategy_id)
            elif explicit:
                # The replay may come before the ack (a server's reading): a stream nothing
                # streams restarts now, so that a replay arriving first is taken.
                assert resume_from is not None
                fresh = pair not in self._subscriptions
                mode = self._streams.expect_replay(strategy_id, resume_from, fresh)
                if fresh:
                    self._restart = ReplayRestarted(strategy_id, resume_from, resume_from)
        request = self._requests.new(action, channel, strategy_id, resume_from, explicit, True)
        request.replay_mode = mode
        return request.request_id, self._encode(request)

    def take_restart(self) -> ReplayRestarted | None:
        """After :meth:`request`: the restart the shell must apply before sending (what is
        still queued of the strategy above an explicit ``resume_from`` on a pair not held
        is superseded by the replay asked for), or None."""
        restart, self._restart = self._restart, None
        return restart

    def check_request(
        self, action: str, channel: str, strategy_id: int, resume_from: int | None
    ) -> None:
        """Check a request's arguments without preparing it (see :meth:`request`).

        Raises:
            ValueError: a bad argument.
        """
        if action not in (SUBSCRIBE, UNSUBSCRIBE):
            raise ValueError(f"action must be 'subscribe' or 'unsubscribe', not {action!r}")
        validate_channel(channel)
        validate_strategy_id(strategy_id)
        if resume_from is not None:
            if channel != SIGNAL:
                raise ValueError("resume_from applies to strategy.signal subscriptions only")
            if action != SUBSCRIBE:
                raise ValueError("resume_from applies to subscribe requests only")
            if type(resume_from) is not int or resume_from < 0:
                raise ValueError(f"resume_from must be a non-negative int, not {resume_from!r}")

    def forget(self, request_id: str) -> None:
        """The caller stopped waiting (timeout): a late answer will satisfy nobody, though a
        late ack still updates the subscriptions."""
        self._requests.forget(request_id)

    def _encode(self, request: Request) -> str:
        now = self._clock.stamp(self._wallclock())
        request.stamp = format_timestamp(now)
        return encode_subscription_request(
            request.action,
            request.channel,
            request.strategy_id,
            request_id=request.request_id,
            resume_from=request.resume_from or None,
            now=now,
            resume_as_string=request.resume_as_string,
        )

    # Receiving -------------------------------------------------------------------------

    def receive(self, text: str | bytes, now: float) -> list[Event]:
        """Take one frame from the server.

        Args:
            text: the frame (``bytes`` for a binary frame, which the protocol never sends).
            now: the current monotonic time, for the heartbeat deadline.

        Returns:
            What happened, in order. Answers to heartbeats wait in :meth:`data_to_send`.

        Raises:
            ProtocolError: the first frame of a connection is not ``connection.connected``;
                the connection cannot be used.
        """
        parsed: Message | ProtocolError
        try:
            parsed = parse_message(text)
        except ProtocolError as exc:
            # Handed on outside this handler: an error raised from it must not carry the
            # unmasked original as its __context__.
            parsed = exc
        return self.receive_parsed(parsed, now)

    def accept_in_order(self, message: Message | ProtocolError) -> bool:
        """The hot path of :meth:`receive_parsed`, which builds no event: True when
        ``message`` is a signal of a strategy the user asked for, in order (above every
        ``seq_id`` held) on an open connection; it is recorded as :meth:`receive_parsed`
        would and is to be delivered. False: nothing was changed; call
        :meth:`receive_parsed`."""
        return (
            type(message) is Signal
            and not self._awaiting_connected
            and self._streams.in_order(message)
        )

    def receive_parsed(self, message: Message | ProtocolError, now: float) -> list[Event]:
        """:meth:`receive` for a frame the caller already ran through :func:`parse_message`.

        The shell parses outside its lock (parsing is most of a frame's cost and needs no
        state), then hands the result in here under the lock.

        Args:
            message: what ``parse_message`` returned, or the ``ProtocolError`` it raised.
            now: the current monotonic time, for the heartbeat deadline.

        Returns:
            What happened, in order (see :meth:`receive`).

        Raises:
            ProtocolError: the first frame of a connection is not ``connection.connected``.
        """
        if isinstance(message, ProtocolError):
            error = self._redacted_error(message)
            if self._awaiting_connected:
                raise ProtocolError(f"expected {CONNECTED} first: {error}") from error
            return [Malformed(error)]
        msg_type = message.msg_type
        if self._awaiting_connected:
            if msg_type != CONNECTED:
                got = self._redact(repr(msg_type))
                raise ProtocolError(f"expected {CONNECTED} first, got {got}")
            self._awaiting_connected = False
            self._open = True
            self._deadline = now + self.heartbeat_timeout
            self._clock.measure(message.timestamp, self._wallclock())
            return [Connected(message)]
        if msg_type == HEARTBEAT:
            # Section 5: answer every heartbeat; the deadline restarts from this one.
            local = self._wallclock()
            self._clock.measure(message.timestamp, local)
            self._outgoing.append(encode_heartbeat_ack(self._clock.stamp(local)))
            self._deadline = now + self.heartbeat_timeout
            return [HeartbeatAnswered(message)]
        if isinstance(message, Signal):
            streams = self._streams
            if streams.replays:
                restart = streams.replay_arrived(message)
                if restart is not None:
                    return [restart, streams.accept(message, self._only_signal_subscription)]
            return [streams.accept(message, self._only_signal_subscription)]
        if msg_type == SIGNAL:
            return [self._streams.invalid(message)]
        if isinstance(message, Gap):
            return [self._streams.gap(message)]
        if isinstance(message, SubscriptionAck):
            return self._on_ack(message)
        if isinstance(message, ErrorMessage):
            return self._on_error(message)
        if isinstance(message, Positions) and message.strategy_id is None:
            message = attrs.evolve(message, strategy_id=self._only_subscription(POSITIONS))
        elif msg_type == CONNECTED:
            logger.debug("ignoring a second %s", CONNECTED)
            return []
        elif msg_type == DISCONNECTED:
            logger.warning("the server says the connection is ending (%s)", DISCONNECTED)
        return [Deliver(message)]

    def _redacted_error(self, error: ProtocolError) -> ProtocolError:
        """``error`` fit to show: itself, or when its text quotes a secret (the codec quotes
        a bad ``seq_id``, a gap's channel, a ``msg_type``) a copy with ``***``, chained to
        what caused the original (never to the original, whose text would show in a
        traceback)."""
        text = str(error)
        safe = self._redact(text)
        if safe == text:
            return error
        copy = ProtocolError(safe).with_traceback(error.__traceback__)
        cause = error.__cause__
        if cause is not None and self._redact(str(cause)) == str(cause):
            copy.__cause__ = cause
        copy.__suppress_context__ = True
        return copy

    def _only_signal_subscription(self) -> int | None:
        return self._only_subscription(SIGNAL)

    def _only_subscription(self, channel: str) -> int | None:
        ids = [sid for ch, sid in self._subscriptions if ch == channel]
        return ids[0] if len(ids) == 1 else None

    def _on_ack(self, ack: SubscriptionAck) -> list[Event]:
        request = self._requests.answered(ack, ack)
        if request is None:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "ignoring a subscription.ack that answers no request: %s",
                    self._redact(repr(ack)),
                )
            return []
        pair = (request.channel, request.strategy_id)
        events: list[Event] = []
        if request.action == UNSUBSCRIBE:
            self._subscriptions.pop(pair, None)
        else:
            self._subscriptions[pair] = None
            if request.channel == SIGNAL:
                replay = self._streams.subscribed(
                    request.strategy_id,
                    request.resume_from,
                    request.explicit_resume,
                    request.replay_mode,
                )
                if replay is not None:
                    events.append(replay)
        if request.waited and not request.forgotten:
            events.append(RequestAnswered(request.answer_id, ack=ack))
        return events

    def _on_error(self, error: ErrorMessage) -> list[Event]:
        request = self._requests.answered(error, None)
        if request is None:
            return [Deliver(error)]  # nobody's answer: the user sees it (API "Receiving")
        redact = self._redact
        if request.forgotten:
            logger.info(
                "late error for a request that timed out: %s %s",
                redact(error.code),
                redact(error.message),
            )
            return []
        if request.resume_from and not request.retried and refuses_resume_from(error):
            # docs/protocol.md section 6: the docs type resume_from as a string and send a
            # number; a server may take only one. Once more in the other type.
            logger.info(
                "the server refused resume_from as a JSON %s; sending it as a %s",
                "string" if request.resume_as_string else "number",
                "number" if request.resume_as_string else "string",
            )
            self._outgoing.append(self._encode(self._requests.retry(request)))
            return []
        exc = self._server_error(error, request)
        if not request.waited:
            # A restore after reconnecting was refused: the subscription is gone, and the
            # user is told, never left with less than they asked for and nobody saying so.
            pair = (request.channel, request.strategy_id)
            self._subscriptions.pop(pair, None)
            logger.warning(
                "resubscribing to %s %s was refused: %s; that subscription is gone",
                request.channel,
                request.strategy_id,
                exc,
            )
            return [SubscriptionRefused(request.channel, request.strategy_id, exc, error)]
        return [RequestAnswered(request.answer_id, error=exc)]

    def _server_error(self, error: ErrorMessage, request: Request) -> ServerError:
        """The exception of a refused request; every text it holds is masked (an exception
        is not the user's data)."""
        redact = self._redact
        return ServerError(
            redact(error.code),
            redact(error.message),
            field=None if error.field is None else redact(error.field),
            errors=tuple(
                ErrorDetail(
                    redact(detail.code),
                    None if detail.field is None else redact(detail.field),
                    redact(detail.message),
                )
                for detail in error.errors
            ),
            request_id=request.answer_id,
            hint=self._clock.explain(request.stamp) if is_timestamp_error(error) else None,
            channel=request.channel,
            strategy_id=request.strategy_id,
        )
