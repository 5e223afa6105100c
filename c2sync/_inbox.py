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

__all__ = ["Inbox", "Replays"]

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
        # One lock; the condition over it is for waiting only (``with self._lock`` costs a
        # fraction of ``with self._cond``, which runs Python-level __enter__/__exit__).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[Message] = deque()
        self._waiting = 0  # callers blocked in get(): notify only when someone waits
        self._overflow = 0  # dropped since the last QueueOverflow was raised
        self._replays = Replays()  # asked for by the user: admitted beyond the bound
        self._end: Callable[[], BaseException] | None = None
        self._discard = False  # ended by close(): what is queued is not handed out

    def put_many(self, messages: list[Message]) -> int:
        """Queue messages in order, dropping the oldest beyond the bound.

        Returns:
            How many were dropped.
        """
        with self._lock:
            queue = self._queue
            queue.extend(messages)
            replays = self._replays
            if replays.active:
                for message in messages:
                    replays.admit(message)
            # The newest max_queue are kept, plus a replay asked for after an overflow.
            dropped = 0
            while len(queue) > self.max_queue + len(replays):
                replays.release(queue.popleft())
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
        limit, and Ctrl-C still interrupts). Raises what :meth:`get_many` raises."""
        with self._lock:
            # The hot path: a message waits and nothing is to be raised first.
            if self._queue and not self._overflow and not self._discard:
                message = self._queue.popleft()
                if self._replays.held:
                    self._replays.release(message)
                return message
        return self.get_many(1, deadline)[0]

    def get_many(self, limit: int, deadline: float | None) -> list[Message]:
        """Up to ``limit`` of the oldest messages, in order, in one lock round trip; waits
        until ``deadline`` for the first (as :meth:`get`; raises what :meth:`get` raises,
        TimeoutError included, in the same order).

        Raises:
            QueueOverflow: messages were dropped since the last call (once).
            TimeoutError: nothing by ``deadline``.
            C2Error: the inbox ended, once it is empty; at once when ended by ``close()``.
        """
        with self._lock:
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
                    for message in taken:
                        self._replays.release(message)
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
            self._replays.allow(strategy_id, resume_from, replay_to)


class Replays:
    """The signals of replays the user asked for (an explicit ``resume_from``), which a
    bounded queue admits beyond its bound (docs/api-contract.md "Back-pressure"); bounded
    themselves by the server's replay cap (docs/protocol.md section 7). Not thread-safe:
    its owner calls it under its own lock.
    """

    def __init__(self) -> None:
        # {strategy_id: last seq_id to let past the bound}, and the (strategy_id, seq_id)
        # of such signals still held.
        self._until: dict[int, int] = {}
        # Read by the owners before calling release() (a call per message otherwise).
        self.held: set[tuple[int, int]] = set()

    @property
    def active(self) -> bool:
        """Whether a replay is expected (only then must arrivals be looked at)."""
        return bool(self._until)

    def __len__(self) -> int:
        return len(self.held)

    def allow(self, strategy_id: int, resume_from: int, replay_to: int) -> None:
        """A replay from ``resume_from`` supersedes what was held above it; admit it up to
        ``replay_to``."""
        self.held = {e for e in self.held if e[0] != strategy_id or e[1] <= resume_from}
        if replay_to > resume_from:
            self._until[strategy_id] = replay_to

    def admit(self, message: object) -> None:
        """Note an arriving message that belongs to such a replay."""
        if not isinstance(message, Signal) or message.strategy_id is None:
            return
        strategy_id = message.strategy_id
        until = self._until.get(strategy_id)
        if until is None:
            return
        if message.seq_id >= until:
            del self._until[strategy_id]
        if message.seq_id <= until:
            self.held.add((strategy_id, message.seq_id))

    def release(self, message: object) -> None:
        """A message left the queue (handed out or dropped)."""
        if self.held and isinstance(message, Signal):
            self.held.discard((message.strategy_id or 0, message.seq_id))


def superseded(message: object, strategy_id: int, resume_from: int) -> bool:
    """Whether a held message is a signal that a replay from ``resume_from`` sends again."""
    return (
        isinstance(message, Signal)
        and message.strategy_id == strategy_id
        and message.seq_id > resume_from
    )
