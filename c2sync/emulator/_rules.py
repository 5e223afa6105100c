"""The emulator's rules inside a connection, without I/O: what a frame or a request gets,
what a resume replays, when a silent connection is closed (``_gate.py`` decides who may
connect).

Called only from the emulator's event loop thread, one call at a time; nothing here reads a
clock, touches a socket or starts a thread. The time comes in as a number: ``now`` is a
monotonic reading (heartbeat deadlines, record times), ``now_utc`` is POSIX seconds (the
timestamp window). Each rule returns a decision (a refusal, an error's details, the frames
to replay) and the server in ``_server.py`` carries it out, so every rule here can be
checked without a server (``tests/test_emulator_rules.py``). Names and limits come from
``c2sync._spec``, shared with the client; section numbers are docs/protocol.md's.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping, Sequence, Set
from typing import Any

import attrs

from .._spec import (
    ACTIONS,
    CODE_FORBIDDEN,
    CODE_INVALID_PARAMETER,
    HEARTBEAT_ACK,
    MAX_REQUEST_ID_LENGTH,
    POSITIONS,
    SIGNAL,
    SUBSCRIBE,
    SUBSCRIPTION_REQUEST,
)
from ..codec import parse_timestamp, validate_channel, validate_strategy_id
from ._dialect import DEFAULT_DIALECT, Dialect, extra_fields, strict_timestamp_ok
from ._records import HeartbeatRecord, SubscriptionRequestRecord

__all__ = [
    "Detail",
    "Heartbeats",
    "Incoming",
    "Pair",
    "Replay",
    "SignalLog",
    "SubscriptionVerdict",
    "answer_order",
    "check_subscription",
    "detail",
    "encode_frame",
    "error_payload",
    "error_request_id",
    "gap_payload",
    "parse_resume_from",
    "read_frame",
    "resume_from_problem",
    "timestamp_problem",
]

# An error detail as section 8 shows it: {"code", "field" (optional), "message"}.
Detail = dict[str, Any]
# A subscription: (channel, strategy_id), one per pair (section 6).
Pair = tuple[str, int]


def detail(field: str | None, message: str, code: str = CODE_INVALID_PARAMETER) -> Detail:
    """One error detail; ``field`` left out when None (section 8)."""
    item: Detail = {"code": code}
    if field is not None:
        item["field"] = field
    item["message"] = message
    return item


def error_payload(problems: Sequence[Detail], dialect: Dialect = DEFAULT_DIALECT) -> Detail:
    """Section 8: one problem flat in the payload, several as ``payload.errors``; always
    ``payload.errors`` under ``errors=list``."""
    if len(problems) == 1 and dialect.errors == "flat":
        return dict(problems[0])
    return {"errors": [dict(problem) for problem in problems]}


def encode_frame(
    msg_type: str,
    *,
    ident: str,
    timestamp: str,
    seq_id: int | None = None,
    request_id: str | None = None,
    payload: Mapping[str, Any] | None = None,
    dialect: Dialect = DEFAULT_DIALECT,
) -> str:
    """The server envelope (section 3): no ``seq_id``, ``request_id`` or ``payload`` where
    there is none; the dialect's ``v``, and its extra fields in the envelope and payload.

    Raises:
        TypeError: the payload is not JSON-serialisable.
    """
    extra = dialect.extra_fields == "present"
    obj: dict[str, Any] = {"msg_type": msg_type, "id": ident}
    if seq_id is not None:
        obj["seq_id"] = seq_id
    if request_id is not None:
        obj["request_id"] = request_id
    obj["timestamp"] = timestamp
    obj["v"] = dialect.v
    if extra:
        obj.update(extra_fields("envelope"))
    if payload is not None:
        obj["payload"] = {**payload, **extra_fields("payload")} if extra else payload
    return json.dumps(obj, separators=(",", ":"))


# -- frames from the client (sections 3, 5, 6) -------------------------------------------


@attrs.frozen
class Incoming:
    """A frame from the client, read.

    Attributes:
        message: the parsed JSON of a text frame; None for a binary frame or bad JSON.
        msg_type: ``heartbeat.ack`` or ``subscription.request`` when the frame is one to
            act on; None otherwise.
        problem: why the frame is answered with an ``error``, or None.
        request_id: the ``request_id`` to echo on that error, or None.
    """

    message: Any
    msg_type: str | None = None
    problem: Detail | None = None
    request_id: Any = None


def read_frame(data: str | bytes, dialect: Dialect = DEFAULT_DIALECT) -> Incoming:
    """Parse a client frame and decide whether the server acts on it or answers an error.

    Binary frames are refused (section 3: JSON in text frames), but read as UTF-8 JSON
    under ``frames=binary``.
    """
    if isinstance(data, bytes) and dialect.frames != "binary":
        return Incoming(None, problem=detail(None, "Binary frames are not supported"))
    try:
        message: Any = json.loads(data)
    except (ValueError, RecursionError):  # bad JSON or UTF-8, or nested too deep
        message = None
    msg_type = message.get("msg_type") if isinstance(message, dict) else None
    if not isinstance(message, dict) or not isinstance(msg_type, str):
        text = "Malformed message: expected a JSON object with a msg_type"
        return Incoming(message, problem=detail(None, text))
    if msg_type in (HEARTBEAT_ACK, SUBSCRIPTION_REQUEST):
        return Incoming(message, msg_type)
    problem = detail("MsgType", f"Unsupported msg_type {msg_type[:60]!r}")
    return Incoming(message, problem=problem, request_id=message.get("request_id"))


def timestamp_problem(
    value: object, now_utc: float, window: float, dialect: Dialect = DEFAULT_DIALECT
) -> Detail | None:
    """Section 3: a client ``timestamp`` more than ``window`` seconds away from UTC is
    refused, as is a missing or unreadable one; under ``timestamps=strict``, so is any form
    but the two documented ones.

    Args:
        value: the message's ``timestamp`` field.
        now_utc: the current UTC time, POSIX seconds.
        window: the seconds allowed either way.
        dialect: the emulator's dialect (its ``timestamps``).
    """
    if not isinstance(value, str):
        return detail("Timestamp", "Timestamp is required")
    if dialect.timestamps == "strict" and not strict_timestamp_ok(value):
        text = "Timestamp format is invalid: expected 2024-01-01T12:00:00Z"
        return detail("Timestamp", text)
    try:
        when = parse_timestamp(value)
    except (ValueError, OverflowError):  # OverflowError: at the datetime range's edges
        return detail("Timestamp", "Timestamp is not an ISO-8601 UTC time")
    skew = abs(now_utc - when.timestamp())
    if skew > window:
        return detail(
            "Timestamp", f"Timestamp is {skew:.0f} s away from UTC (at most {window:g} s allowed)"
        )
    return None


def parse_resume_from(value: object) -> int | None:
    """``resume_from`` as a non-negative int: a number or a numeric string (section 6)."""
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)  # bounded: int() refuses very long digit strings
    return None


def resume_from_problem(value: object, dialect: Dialect = DEFAULT_DIALECT) -> Detail | None:
    """Why ``resume_from`` is refused, or None: not a non-negative integer (section 6), or
    of a JSON type the dialect's ``resume_from`` does not accept."""
    if parse_resume_from(value) is None:
        return detail("ResumeFrom", "resume_from must be a non-negative integer")
    if dialect.resume_from == "number" and isinstance(value, str):
        return detail("ResumeFrom", "resume_from must be a number, not a string")
    if dialect.resume_from == "string" and not isinstance(value, str):
        return detail("ResumeFrom", "resume_from must be a string, not a number")
    return None


@attrs.frozen
class SubscriptionVerdict:
    """The answer to one ``subscription.request`` (section 6).

    The request's fields are kept as sent. With no problems, the server applies the
    change (:meth:`apply`), acks with :meth:`ack_payload`, then replays from
    :attr:`replay_after` when it is not 0; otherwise it answers an ``error``.
    """

    request_id: Any
    action: Any
    channel: Any
    strategy_id: Any
    raw_resume_from: Any
    resume_from: int | None
    problems: tuple[Detail, ...]

    @property
    def error_code(self) -> str | None:
        """The code of the first problem, or None when the request is acked."""
        return str(self.problems[0]["code"]) if self.problems else None

    @property
    def replay_after(self) -> int:
        """The ``seq_id`` to replay after (section 7); 0: no replay."""
        if self.problems or self.action != SUBSCRIBE or not self.resume_from:
            return 0
        return self.resume_from

    def record(self, at: float) -> SubscriptionRequestRecord:
        """What tests see of the request, received at ``at``."""
        return SubscriptionRequestRecord(
            at=at,
            request_id=self.request_id,
            action=self.action,
            channel=self.channel,
            strategy_id=self.strategy_id,
            resume_from=self.raw_resume_from,
            error=self.error_code,
        )

    def apply(self, subscriptions: set[Pair]) -> None:
        """Subscribe or unsubscribe; both are idempotent. Nothing when refused."""
        if self.problems:
            return
        pair: Pair = (self.channel, self.strategy_id)
        if self.action == SUBSCRIBE:
            subscriptions.add(pair)
        else:
            subscriptions.discard(pair)

    def ack_payload(self, dialect: Dialect = DEFAULT_DIALECT) -> dict[str, Any] | None:
        """The ``subscription.ack`` payload: the request echoed [assumed]; ``{}`` or None
        (no payload) under ``ack_payload=empty`` or ``absent``."""
        if dialect.ack_payload != "echo":
            return {} if dialect.ack_payload == "empty" else None
        ack: dict[str, Any] = {
            "action": self.action,
            "channel": self.channel,
            "strategy_id": self.strategy_id,
        }
        if self.resume_from is not None:
            ack["resume_from"] = self.resume_from
        return ack


def check_subscription(
    message: Mapping[str, Any],
    *,
    now_utc: float,
    window: float,
    strategies: Set[int],
    subscribed: Set[Pair],
    max_subscriptions: int,
    dialect: Dialect = DEFAULT_DIALECT,
) -> SubscriptionVerdict:
    """Validate and authorise a ``subscription.request`` (sections 3 and 6).

    Args:
        message: the request, parsed.
        now_utc: the current UTC time, POSIX seconds (for the timestamp window).
        window: seconds the request's timestamp may be off UTC.
        strategies: the strategies a key may subscribe to; others are ``FORBIDDEN``.
        subscribed: the connection's subscriptions now.
        max_subscriptions: the most pairs one connection may hold.
        dialect: the emulator's dialect (its ``timestamps`` and ``resume_from``).
    """
    request_id = message.get("request_id")
    payload = message.get("payload")
    body: Mapping[str, Any] = payload if isinstance(payload, dict) else {}
    action, channel = body.get("action"), body.get("channel")
    strategy_id, raw_resume = body.get("strategy_id"), body.get("resume_from")

    problems: list[Detail] = []
    stamp_problem = timestamp_problem(message.get("timestamp"), now_utc, window, dialect)
    if stamp_problem is not None:
        problems.append(stamp_problem)
    if request_id is not None and not (
        isinstance(request_id, str) and 1 <= len(request_id) <= MAX_REQUEST_ID_LENGTH
    ):
        text = f"request_id must be 1 to {MAX_REQUEST_ID_LENGTH} characters"
        problems.append(detail("RequestId", text))
    if not isinstance(payload, dict):
        problems.append(detail("Payload", "payload must be an object"))
    else:
        if action not in ACTIONS:
            problems.append(detail("Action", "action must be subscribe or unsubscribe"))
        try:
            validate_channel(channel)
        except ValueError:
            problems.append(detail("Channel", f"channel must be {SIGNAL} or {POSITIONS}"))
        try:
            validate_strategy_id(strategy_id)
        except ValueError:
            problems.append(detail("StrategyId", "strategy_id must be a positive integer"))
    resume_from = None if raw_resume is None else parse_resume_from(raw_resume)
    resume_problem = None if raw_resume is None else resume_from_problem(raw_resume, dialect)
    if resume_problem is not None:
        problems.append(resume_problem)
    elif raw_resume is not None and channel == POSITIONS:
        problems.append(detail("ResumeFrom", "resume_from applies to strategy.signal only"))

    if not problems and action == SUBSCRIBE:
        if strategy_id not in strategies:
            text = "Not authorized to subscribe to Strategy"  # section 6, verbatim
            problems.append(detail("StrategyId", text, CODE_FORBIDDEN))
        elif (channel, strategy_id) not in subscribed and len(subscribed) >= max_subscriptions:
            text = f"Subscription limit of {max_subscriptions} per connection reached"
            problems.append(detail("StrategyId", text, CODE_FORBIDDEN))
    return SubscriptionVerdict(
        request_id, action, channel, strategy_id, raw_resume, resume_from, tuple(problems)
    )


def error_request_id(
    request_id: object, echo: bool, dialect: Dialect = DEFAULT_DIALECT
) -> str | None:
    """The ``request_id`` an ``error`` or ``subscription.ack`` carries: the request's when
    echoing and a string; none under ``ack_request_id=absent``."""
    echo = echo and dialect.ack_request_id == "echo"
    return request_id if echo and isinstance(request_id, str) else None


def answer_order(
    ack: str, replayed: Sequence[str], dialect: Dialect = DEFAULT_DIALECT
) -> list[str]:
    """The frames answering a subscription, in order: the ack, then what a resume replays
    (section 7), or the replay first under ``replay=before_ack``."""
    if dialect.replay == "before_ack":
        return [*replayed, ack]
    return [ack, *replayed]


# -- heartbeats (section 5) ----------------------------------------------------------------


@attrs.define
class Heartbeats:
    """One connection's heartbeats, their acks, and its ack deadline (section 5).

    The deadline is ``timeout`` (interval + grace) after the last ack or the upgrade. It is
    only enforced while heartbeats are on and the connection answers; each (re)arm starts
    it afresh. Acks are matched to heartbeats oldest-unacknowledged first.
    """

    timeout: float
    due: float | None = attrs.field(init=False, default=None)
    _records: list[HeartbeatRecord] = attrs.field(init=False, factory=list)
    _unacked: collections.deque[int] = attrs.field(init=False, factory=collections.deque)

    @property
    def records(self) -> tuple[HeartbeatRecord, ...]:
        """Every heartbeat sent, in order, with its ack time."""
        return tuple(self._records)

    def sent(self, ident: str, now: float) -> None:
        """A heartbeat with id ``ident`` was queued at ``now``."""
        self._unacked.append(len(self._records))
        self._records.append(HeartbeatRecord(ident, now))

    def acked(self, now: float) -> None:
        """A valid ``heartbeat.ack`` came at ``now``: it answers the oldest unacked beat (an
        ack with none outstanding matches nothing). Re-arm the deadline separately."""
        if self._unacked:
            index = self._unacked.popleft()
            self._records[index] = attrs.evolve(self._records[index], acked_at=now)

    def arm(self, now: float, *, enforced: bool) -> float | None:
        """Restart the deadline from ``now``, or suspend it when not ``enforced``.

        Returns:
            When the deadline falls (on ``now``'s clock), or None while suspended.
        """
        self.due = now + self.timeout if enforced else None
        return self.due

    def missed(self, now: float) -> bool:
        """True when the deadline is armed and ``now`` has reached it: close (1000)."""
        return self.due is not None and now >= self.due


# -- signals, replay and gaps (section 7) ---------------------------------------------------


@attrs.frozen
class Replay:
    """What a resume sends after its ack: ``frames`` in order, then a ``gap`` when
    :attr:`gap` is not None (its payload)."""

    frames: tuple[str, ...] = ()
    gap: dict[str, Any] | None = None


def gap_payload(
    strategy_id: int, after: int, message: str, dialect: Dialect = DEFAULT_DIALECT
) -> dict[str, Any]:
    """Section 7's ``gap`` payload: null ``strategy_id``, ``from`` as a string (a number
    under ``gap_from=number``)."""
    return {
        "strategy_id": None,
        "channel": f"{SIGNAL}:{strategy_id}",
        "from": after if dialect.gap_from == "number" else str(after),
        "message": message,
    }


@attrs.define
class SignalLog:
    """The ``seq_id`` counters and each strategy's last ``replay_size`` signal frames.

    ``seq_id`` starts at 1 and grows by one per signal, per strategy [assumed]; under
    ``seq_scope=global`` one counter numbers every strategy's signals, so a strategy's own
    ``seq_id`` values jump. Positions get their own counter per strategy (``positions_seq``).
    """

    replay_size: int
    max_replay: int
    dialect: Dialect = DEFAULT_DIALECT
    _seq: dict[int, int] = attrs.field(init=False, factory=dict)
    _counter: int = attrs.field(init=False, default=0)  # seq_scope=global: the last seq_id
    _positions: dict[int, int] = attrs.field(init=False, factory=dict)
    _kept: dict[int, collections.deque[tuple[int, str]]] = attrs.field(init=False, factory=dict)
    _evicted: dict[int, int] = attrs.field(init=False, factory=dict)  # last seq_id let go

    def last_seq(self, strategy_id: int) -> int:
        """The latest ``seq_id`` of the strategy, 0 before its first signal. One dict read,
        so safe to call from any thread."""
        return self._seq.get(strategy_id, 0)

    def next_seq(self, strategy_id: int) -> int:
        """The ``seq_id`` the strategy's next signal gets; taken only by :meth:`append`."""
        if self.dialect.seq_scope == "global":
            return self._counter + 1
        return self._seq.get(strategy_id, 0) + 1

    def positions_seq(self, strategy_id: int) -> int | None:
        """The ``seq_id`` of the strategy's next positions message: None (section 4: none),
        or 1, 2, ... taken from its own counter under ``positions_seq=present``."""
        if self.dialect.positions_seq != "present":
            return None
        seq = self._positions[strategy_id] = self._positions.get(strategy_id, 0) + 1
        return seq

    def append(self, strategy_id: int, seq_id: int, frame: str) -> None:
        """Keep a published signal (``seq_id`` from :meth:`next_seq`) for replay."""
        if seq_id != self.next_seq(strategy_id):
            raise ValueError(f"seq_id {seq_id} out of order for strategy {strategy_id}")
        self._seq[strategy_id] = self._counter = seq_id
        kept = self._kept.setdefault(strategy_id, collections.deque(maxlen=self.replay_size))
        if len(kept) == kept.maxlen:
            self._evicted[strategy_id] = kept[0][0]
        kept.append((seq_id, frame))

    def replay(self, strategy_id: int, after: int) -> Replay:
        """Section 7: every kept signal above ``after``, at most ``max_replay``, then a
        ``gap`` when more were missed than that or the log no longer holds them all.

        Under ``seq_scope=global`` the log cannot count the missed signals it let go: one
        or more, it says the buffer no longer holds them unless those it kept exceed the
        limit.
        """
        if self.last_seq(strategy_id) <= after:
            return Replay()
        kept = [(seq, frame) for seq, frame in self._kept.get(strategy_id, ()) if seq > after]
        frames = tuple(frame for _, frame in kept[: self.max_replay])
        lost = max(0, self._evicted.get(strategy_id, 0) - after)  # let go: per-strategy count
        if lost and self.dialect.seq_scope == "global":
            lost = 1  # at least one; the log cannot tell how many
        if len(kept) + lost > self.max_replay:
            text = f"Replay limit of {self.max_replay} messages exceeded"
        elif lost:
            text = "Replay buffer no longer holds the missed messages"
        else:
            return Replay(frames)
        return Replay(frames, gap_payload(strategy_id, after, text, self.dialect))
