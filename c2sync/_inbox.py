"""The inbox: the bounded queue behind ``recv()`` and iteration.

The reader thread puts every message no callback takes (:meth:`Inbox.put_many`, one lock
and at most one wake-up per read); user threads take them (:meth:`Inbox.get`, or a batch
with :meth:`Inbox.get_many`, one lock round trip per batch); the session
ends it (:meth:`Inbox.end`) and purges it when a replay supersedes what it holds
(:meth:`Inbox.purge`).

Guarantees (docs/api-contract.md "Back-pressure"): at most ``max_queue`` messages are held, plus the
signals of a replay the user asked for after an overflow (bounded by the server's replay
cap, docs/protocol.md section 7); on overflow the oldest are dropped, counted, and the next
:meth:`get` raises :class:`~c2sync.exceptions.QueueOverflow` once. Nothing here calls user
code; the only lock taken inside this one is the session's (through ``last_seq``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from .exceptions import QueueOverflow
from .messages import Message, Signal

__all__ = ["Inbox"]

logger = logging.getLogger("c2sync")


class Inbox:
    """The ``recv()`` queue.

    Args:
        max_queue: the bound.
        last_seq: ``{strategy_id: last seq_id delivered}``, for :class:`QueueOverflow`.
    """

    def __init__(self, max_queue: int, last_seq: Callable[[], dict[int, int]]) -> None:
        self.max_queue = max_queue
        self._last_seq = last_seq
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Message] = deque()
        self._waiting = 0  # callers blocked in get(): notify only when someone waits
        self._overflow = 0  # dropped since the last QueueOverflow was raised
        # Replays asked for after an overflow: {strategy_id: last seq_id to let past the
        # bound}, and the (strategy_id, seq_id) of such signals still queued.
        self._replay_until: dict[int, int] = {}
        self._exempt: set[tuple[int, int]] = set()
        self._end: Callable[[], BaseException] | None = None
        self._discard = False  # ended by close(): what is queued is not handed out

    def put_many(self, messages: list[Message]) -> int:
        """Queue messages in order, dropping the oldest beyond the bound.

        Returns:
            How many were dropped.
        """
        exempt = [self._replay_key(m) for m in messages] if self._replay_until else None
        with self._cond:
            queue = self._queue
            queue.extend(messages)
            if exempt is not None:
                self._exempt.update(key for key in exempt if key is not None)
            # The newest max_queue are kept, plus a replay asked for after an overflow.
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
            if self._waiting:
                self._cond.notify()
        return dropped

    def get(self, deadline: float | None) -> Message:
        """The oldest message, waiting until ``deadline`` (``time.monotonic()``; None: no
        limit, and Ctrl-C still interrupts).

        Raises:
            QueueOverflow: messages were dropped since the last call (once).
            TimeoutError: nothing by ``deadline``.
            C2Error: the inbox ended (the error it was ended with), once it is empty; at
                once when it was ended by ``close()``.
        """
        with self._cond:
            while True:
                end = self._end
                if end is not None and self._discard:
                    raise end()
                if self._overflow:
                    dropped, self._overflow = self._overflow, 0
                    raise QueueOverflow(dropped, self._last_seq())
                if self._queue:
                    message = self._queue.popleft()
                    self._forget_exempt(message)
                    return message
                if end is not None:
                    raise end()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("no message in time")
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1

    def get_many(self, limit: int, deadline: float | None) -> list[Message]:
        """Up to ``limit`` of the oldest messages, in order, in one lock round trip; waits
        until ``deadline`` for the first (as :meth:`get`; raises what :meth:`get` raises,
        TimeoutError included, in the same order).

        Raises:
            QueueOverflow: messages were dropped since the last call (once).
            TimeoutError: nothing by ``deadline``.
            C2Error: the inbox ended, once it is empty; at once when ended by ``close()``.
        """
        with self._cond:
            while True:
                end = self._end
                if end is not None and self._discard:
                    raise end()
                if self._overflow:
                    dropped, self._overflow = self._overflow, 0
                    raise QueueOverflow(dropped, self._last_seq())
                queue = self._queue
                if queue:
                    taken = [queue.popleft() for _ in range(min(limit, len(queue)))]
                    if self._exempt:
                        for message in taken:
                            self._forget_exempt(message)
                    return taken
                if end is not None:
                    raise end()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("no message in time")
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1

    def end(self, error: Callable[[], BaseException], *, discard: bool) -> None:
        """No more messages will come: once empty (at once if ``discard``), :meth:`get`
        raises ``error()``. The first end stands. Wakes every waiting caller."""
        with self._cond:
            if self._end is not None:
                return
            self._end = error
            self._discard = discard
            self._cond.notify_all()

    def reopen(self) -> None:
        """Undo :meth:`end` for a new ``connect()`` after a failed one."""
        with self._cond:
            self._end = None
            self._discard = False

    def purge(self, strategy_id: int, resume_from: int, replay_to: int) -> None:
        """Drop the strategy's queued signals above ``resume_from`` (a replay the user asked
        for sends them again, in order), and let that replay up to ``replay_to`` past the
        bound."""
        with self._cond:
            kept = [m for m in self._queue if not superseded(m, strategy_id, resume_from)]
            self._queue.clear()
            self._queue.extend(kept)
            self._exempt = {e for e in self._exempt if e[0] != strategy_id or e[1] <= resume_from}
            if replay_to > resume_from:
                self._replay_until[strategy_id] = replay_to

    def _replay_key(self, message: Message) -> tuple[int, int] | None:
        """The key of a signal that is part of a replay asked for after an overflow (it
        does not count against ``max_queue``), else None."""
        if not isinstance(message, Signal) or message.strategy_id is None:
            return None
        strategy_id = message.strategy_id
        until = self._replay_until.get(strategy_id)
        if until is None:
            return None
        if message.seq_id >= until:
            del self._replay_until[strategy_id]
        return (strategy_id, message.seq_id) if message.seq_id <= until else None

    def _forget_exempt(self, message: Message) -> None:
        if self._exempt and isinstance(message, Signal):
            self._exempt.discard((message.strategy_id or 0, message.seq_id))


def superseded(message: object, strategy_id: int, resume_from: int) -> bool:
    """Whether a held message is a signal that a replay from ``resume_from`` sends again."""
    return (
        isinstance(message, Signal)
        and message.strategy_id == strategy_id
        and message.seq_id > resume_from
    )
