"""Per-subscription health: what arrived on each (channel, strategy_id) and when.

The reader thread records arrivals, duplicates dropped on arrival and explicit replays
(:meth:`SubscriptionBook.arrived`, :meth:`~SubscriptionBook.duplicate`,
:meth:`~SubscriptionBook.resumed`); the session records restores after a reconnect; user
threads read a snapshot (:meth:`SubscriptionBook.snapshot`). Its own small lock guards it; no user
code runs under it and no other lock is taken inside it.

Guarantees (docs/api-contract.md "Observability", "Back-pressure"): one entry per current
subscription, never more: messages for pairs the client does not hold are not counted, and
entries of pairs no longer held are dropped, so memory is bounded by the subscriptions
whatever a server sends.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable
from datetime import datetime

import attrs

from ._spec import POSITIONS, SIGNAL
from .messages import Gap, Message, Positions, Signal

__all__ = ["SubscriptionBook", "SubscriptionStats"]

Pair = tuple[str, int]
_NO_RUN = object()  # equal to no strategy_id


@attrs.frozen
class SubscriptionStats:
    """The health of one subscription (``client.subscription_stats[(channel, id)]``).

    Counted since the subscription was made (or since the client started holding it);
    a pair unsubscribed and subscribed again starts from zero.

    Attributes:
        last_seq: the ``seq_id`` of the last message that arrived (signals; positions when
            the server numbers them), or None.
        last_message_at: when the last signal or positions update arrived (aware UTC, the
            client's clock), or None. A stream that went quiet while heartbeats flow shows
            here.
        messages: signals (or positions updates) that arrived, duplicates not counted.
        duplicates: replayed signals dropped because they were already held or delivered.
        gaps: ``gap`` notices: the server could not replay everything (fetch the rest from
            the REST API).
        resumes: times the stream was resumed from a resume point: each restore after a
            reconnect that carried ``resume_from``, and each acknowledged subscribe with an
            explicit ``resume_from``.
    """

    last_seq: int | None = None
    last_message_at: datetime | None = None
    messages: int = 0
    duplicates: int = 0
    gaps: int = 0
    resumes: int = 0


@attrs.define
class _Entry:
    last_seq: int | None = None
    last_message_at: datetime | None = None
    messages: int = 0
    duplicates: int = 0
    gaps: int = 0
    resumes: int = 0
    last_gap: str = ""  # the server's words on the last gap (shown escaped in the HTML view)

    def frozen(self) -> SubscriptionStats:
        return SubscriptionStats(
            self.last_seq,
            self.last_message_at,
            self.messages,
            self.duplicates,
            self.gaps,
            self.resumes,
        )


def pair_of(message: Message) -> Pair | None:
    """The subscription a message belongs to, or None when it names no strategy."""
    if isinstance(message, Signal) and message.strategy_id is not None:
        return (SIGNAL, message.strategy_id)
    if isinstance(message, Positions) and message.strategy_id is not None:
        return (POSITIONS, message.strategy_id)
    if isinstance(message, Gap):
        return (SIGNAL, message.strategy_id)
    return None


class SubscriptionBook:
    """The counters behind ``client.subscription_stats``. See the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Pair, _Entry] = {}

    def arrived(self, messages: Iterable[Message], held: Collection[Pair], now: datetime) -> None:
        """Messages that arrived for the user (duplicates already dropped), at ``now``."""
        with self._lock:
            entries = self._entries
            # A flood is one strategy's signals in a row: while the strategy stays the
            # same, its entry is bumped without looking it up again (a delivered Signal
            # always has its seq_id; the entry already has this batch's time).
            run: object = _NO_RUN
            entry = _Entry()
            for message in messages:
                if type(message) is Signal and message.strategy_id == run:
                    entry.messages += 1
                    entry.last_seq = message.seq_id
                    continue
                run = _NO_RUN
                pair = pair_of(message)
                if pair is None or pair not in held:
                    continue
                found = entries.get(pair)
                if found is None:
                    found = entries[pair] = _Entry()
                entry = found
                if isinstance(message, Gap):
                    entry.gaps += 1
                    entry.last_gap = message.message
                    continue
                entry.messages += 1
                entry.last_message_at = now
                if message.seq_id is not None:
                    entry.last_seq = message.seq_id
                if type(message) is Signal:
                    run = message.strategy_id  # not None: pair_of found its pair
            self._prune(held)

    def duplicate(self, message: Message, held: Collection[Pair]) -> None:
        """A duplicate signal was dropped."""
        self._bump(pair_of(message), held, "duplicates")

    def resumed(self, pair: Pair, held: Collection[Pair]) -> None:
        """The stream of ``pair`` was resumed from a resume point."""
        self._bump(pair, held, "resumes")

    def _bump(self, pair: Pair | None, held: Collection[Pair], name: str) -> None:
        if pair is None or pair not in held:
            return
        with self._lock:
            entry = self._entries.get(pair)
            if entry is None:
                entry = self._entries[pair] = _Entry()
            setattr(entry, name, getattr(entry, name) + 1)

    def snapshot(self, held: Iterable[Pair]) -> dict[Pair, SubscriptionStats]:
        """One entry per held pair, in a stable order (channel, then strategy id)."""
        pairs = sorted(held)
        with self._lock:
            self._prune(set(pairs))
            entries = self._entries
            return {p: entries[p].frozen() if p in entries else SubscriptionStats() for p in pairs}

    def last_gap(self, pair: Pair) -> str:
        """The server's words on the pair's last gap ("" when none)."""
        with self._lock:
            entry = self._entries.get(pair)
            return entry.last_gap if entry is not None else ""

    def _prune(self, held: Collection[Pair]) -> None:
        # Bounded by the subscriptions: forget the pairs the client no longer holds.
        if len(self._entries) > len(held) or any(p not in held for p in self._entries):
            for pair in [p for p in self._entries if p not in held]:
                del self._entries[pair]
