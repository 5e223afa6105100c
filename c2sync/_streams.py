"""Per-strategy signal streams: resume points, duplicates, restarts, invalid ``seq_id``s.

Pure (no I/O; a test checks the imports): part of the protocol core, called only by
:class:`~c2sync._protocol.ClientProtocol` under the shell's one lock.

Guarantees (docs/api-contract.md "Reconnecting" and "Back-pressure"):

- a strategy's resume point is the highest ``seq_id`` the client holds (handed out, or
  still waiting in the queue or the callbacks' backlog), else the checkpoint's;
- a signal not above it is a duplicate, unless it is more than :data:`RESTART_DISTANCE`
  below (the server restarted its numbering: delivered, the new resume point, a WARNING
  once per strategy);
- a ``seq_id`` that cannot order anything (missing, not an ``int``, out of 1..2**63-1) is
  delivered as a plain :class:`~c2sync.messages.Message` and never used for ordering;
- state is kept only for strategies the user asked to subscribe to, so a server inventing
  strategy ids cannot grow memory; their signals are delivered, unordered;
- a server value quoted in a log line (an invalid ``seq_id``) has the secrets masked
  (``redact``, the protocol core's).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import attrs

from ._events import Deliver, Duplicate, Event, ReplayRestarted
from ._spec import SIGNAL
from .messages import Gap, Message, Signal

__all__ = ["MAX_SEQ_ID", "RESTART_DISTANCE", "Streams", "valid_seq_id"]

logger = logging.getLogger("c2sync.protocol")

# A seq_id this far below the highest held is beyond any replay boundary (docs/protocol.md
# section 7 caps a replay at 1000): the server restarted its numbering.
RESTART_DISTANCE = 1000
MAX_SEQ_ID = 2**63 - 1  # the largest valid seq_id (a signed 64-bit integer)


def valid_seq_id(seq_id: object) -> bool:
    """Whether ``seq_id`` can order a signal stream: an ``int`` (not ``bool``) in 1..2**63-1."""
    return type(seq_id) is int and 0 < seq_id <= MAX_SEQ_ID


@attrs.define(slots=True)
class _Stream:
    """What the client holds of one strategy's signal stream."""

    held: int | None = None  # the highest seq_id let into the queues: the resume point
    delivered: int | None = None  # the last seq_id handed out
    restarts: int = 0  # far-backwards seq_ids seen (the server restarted its numbering)
    restart_seq: int | None = None  # the seq_id that last restarted the numbering


class Streams:
    """The signal streams of the strategies the user asked for.

    Args:
        resume_points: ``{strategy_id: seq_id}`` already processed (from a checkpoint).
        redact: masks the secrets in a server value before it is logged (None: nothing
            to mask).
    """

    def __init__(
        self,
        resume_points: Mapping[int, int] | None = None,
        *,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self._redact: Callable[[str], str] = redact or str
        self._resume_points = dict(resume_points or {})
        self._streams: dict[int, _Stream] = {}
        self.invalid_seq_ids = 0  # strategy.signal frames whose seq_id could order nothing
        # {strategy_id: an explicit resume_from below what is held, asked for and not yet
        # begun}: its replay starts at the ack, or sooner if its first signal comes before
        # the ack. Looked at only while not empty; bounded by the strategies wanted.
        self.replays: dict[int, int] = {}

    @property
    def last_delivered(self) -> dict[int, int]:
        """``{strategy_id: last seq_id handed to the user}``."""
        return {sid: s.delivered for sid, s in self._streams.items() if s.delivered is not None}

    def resume_point(self, strategy_id: int) -> int | None:
        """The highest ``seq_id`` held for the strategy, else the checkpoint's, else None."""
        stream = self._streams.get(strategy_id)
        if stream is not None and stream.held is not None:
            return stream.held
        return self._resume_points.get(strategy_id)

    def checkpoint_kind(self, strategy_id: int, seq_id: int) -> str | None:
        """How the processed signal ``seq_id`` goes into a checkpoint: ``"save"``;
        ``"restart"`` once for the one that restarted its strategy's numbering (the
        checkpoint goes down to it); None for a strategy nobody asked for (no state is kept
        for those, the checkpoint included)."""
        stream = self._streams.get(strategy_id)
        if stream is None:
            return None
        if stream.restart_seq == seq_id:
            stream.restart_seq = None
            return "restart"
        return "save"

    def want(self, strategy_id: int) -> None:
        """The user asked to subscribe: from now on its signals are ordered and deduped."""
        if strategy_id not in self._streams:
            self._streams[strategy_id] = _Stream()

    def expect_replay(self, strategy_id: int, resume_from: int, fresh: bool) -> str:
        """An explicit ``resume_from`` is being sent for the strategy (wanted already).

        The server may replay before or after its ack (docs/api-contract.md "Servers that
        read the docs differently"), so the restart cannot always wait for the ack:

        - ``fresh`` (the pair is not held: nothing of it is streaming): the stream restarts
          now; whatever comes before the ack is the replay. Returns ``"fresh"``.
        - held, ``resume_from`` below the highest held (or nothing held yet): the restart
          waits for the ack, or for the first signal at or below the highest held, the
          replay's, if it comes first (:meth:`replay_arrived`). Returns ``"pending"``.
        - held, ``resume_from`` at or above it: nothing to supersede (the signals the
          connection streams meanwhile come in order after the highest held). Returns
          ``"none"``.
        """
        stream = self._streams[strategy_id]
        if fresh:
            stream.held = stream.delivered = resume_from
            return "fresh"
        if stream.held is None or resume_from < stream.held:
            self.replays[strategy_id] = resume_from
            return "pending"
        return "none"

    def forget_replays(self) -> None:
        """The connection was lost: the requests that asked for replays are gone."""
        self.replays.clear()

    def replay_arrived(self, signal: Signal) -> ReplayRestarted | None:
        """Before :meth:`accept`, while :attr:`replays` is not empty: a signal of a strategy with
        a pending replay, at or below the highest held and above the ``resume_from`` asked
        for, is the replay, come before the ack: the stream restarts now (what is queued
        above ``resume_from`` is superseded) and the signal is then taken in order."""
        strategy_id = signal.strategy_id
        resume_from = self.replays.get(strategy_id)  # type: ignore[arg-type]
        stream = self._streams.get(strategy_id)  # type: ignore[arg-type]
        if resume_from is None or stream is None or stream.held is None:
            return None
        held = stream.held
        if not (valid_seq_id(signal.seq_id) and resume_from < signal.seq_id <= held):
            return None
        del self.replays[strategy_id]  # type: ignore[arg-type]
        stream.held = stream.delivered = resume_from
        return ReplayRestarted(signal.strategy_id, resume_from, held)  # type: ignore[arg-type]

    def subscribed(
        self,
        strategy_id: int,
        resume_from: int | None,
        explicit: bool,
        mode: str | None = None,
    ) -> ReplayRestarted | None:
        """A signal subscription was acked (a late ack too: the server holds it). With an
        explicit ``resume_from`` the replay supersedes what is queued above it, unless it
        began already (``mode``: what :meth:`expect_replay` returned; None: it was not
        called, the replay starts now)."""
        self.want(strategy_id)
        stream = self._streams[strategy_id]
        if explicit and resume_from:
            if mode == "pending" and self.replays.get(strategy_id) != resume_from:
                return None  # its replay came before the ack and restarted the stream then
            if mode is None or mode == "pending":
                self.replays.pop(strategy_id, None)
                replay_to = max(resume_from, stream.held or resume_from)
                stream.held = stream.delivered = resume_from
                return ReplayRestarted(strategy_id, resume_from, replay_to)
            if mode == "none" and (stream.held or 0) <= resume_from:
                stream.held = stream.delivered = resume_from  # the user skips ahead
            # Nothing queued to supersede: the resume is only counted.
            return ReplayRestarted(strategy_id, resume_from, resume_from, purge=False)
        if resume_from and stream.held is None:
            stream.held = resume_from
        return None

    def in_order(self, signal: Signal) -> bool:
        """The hot path of :meth:`accept`: True when ``signal`` (a valid ``seq_id``, a
        wanted strategy) comes above everything held, which it now is; False when
        :meth:`accept` must decide (a duplicate, a restart, an unknown strategy, no
        strategy, an invalid ``seq_id``: nothing was changed)."""
        stream = self._streams.get(signal.strategy_id)  # type: ignore[arg-type]
        if stream is None:
            return False
        seq_id = signal.seq_id
        held = stream.held
        if type(seq_id) is not int or not (held or 0) < seq_id <= MAX_SEQ_ID:
            return False
        stream.held = seq_id
        return True

    def accept(self, signal: Signal, only_strategy: Callable[[], int | None]) -> Event:
        """Order one arriving signal: deliver it, or drop it as a duplicate.

        Args:
            signal: the signal.
            only_strategy: returns the only signal subscription, asked only for a signal
                naming no strategy.
        """
        if not valid_seq_id(signal.seq_id):
            return self.invalid(signal)
        strategy_id = signal.strategy_id
        if strategy_id is None:
            strategy_id = only_strategy()
            if strategy_id is None:
                return Deliver(signal)  # no strategy to order it by: pass it through
            signal = attrs.evolve(signal, strategy_id=strategy_id)
        stream = self._streams.get(strategy_id)
        if stream is None:
            # Nobody asked for this strategy: delivered (nothing lost), no state kept.
            return Deliver(signal)
        seq_id, held = signal.seq_id, stream.held
        if held is not None and seq_id <= held:
            if held - seq_id <= RESTART_DISTANCE:
                return Duplicate(signal)
            self._restarted(strategy_id, stream, seq_id)
        stream.held = seq_id
        return Deliver(signal)

    def _restarted(self, strategy_id: int, stream: _Stream, seq_id: int) -> None:
        """A seq_id far below the highest held: the server restarted its numbering."""
        stream.restarts += 1
        stream.restart_seq = seq_id
        level = logging.WARNING if stream.restarts == 1 else logging.DEBUG
        logger.log(
            level,
            "strategy %s: seq_id %d arrived after %d (more than %d below): the server "
            "restarted its numbering; delivering it and resuming from it (restart %d of "
            "this strategy; later ones are logged at DEBUG)",
            strategy_id,
            seq_id,
            stream.held,
            RESTART_DISTANCE,
            stream.restarts,
        )

    def invalid(self, message: Message) -> Event:
        """A ``strategy.signal`` whose ``seq_id`` is missing, not an int, or out of range:
        delivered as a plain :class:`Message` (``raw`` intact), never used for ordering."""
        self.invalid_seq_ids += 1
        count = self.invalid_seq_ids
        if count & (count - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a flood cannot flood logs
            logger.warning(
                "a %s with an invalid seq_id %s: delivered as a plain Message, not used for "
                "duplicates or resume points (%d so far)",
                SIGNAL,
                self._redact(repr(message.raw.get("seq_id"))),
                count,
            )
        if type(message) is not Message:
            message = Message(
                msg_type=message.msg_type,
                id=message.id,
                seq_id=None,
                request_id=message.request_id,
                timestamp=message.timestamp,
                v=message.v,
                payload=message.payload,
                raw=message.raw,
            )
        return Deliver(message)

    def gap(self, gap: Gap) -> Event:
        """Say where the missing range starts: after the highest seq_id held."""
        stream = self._streams.get(gap.strategy_id)
        held = stream.held if stream is not None else None
        return Deliver(attrs.evolve(gap, missing_after=held))

    def hand_out(self, message: Message) -> None:
        """Record that ``message`` is about to reach the user."""
        if isinstance(message, Signal) and message.strategy_id is not None:
            stream = self._streams.get(message.strategy_id)
            if stream is not None:
                stream.delivered = message.seq_id
