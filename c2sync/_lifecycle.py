"""The lifecycle: a client's state as one table, every transition in one place, one lock.

::

    CLOSED ──open()──► CONNECTING ──connection.connected──► OPEN ◄──────────┐
       ▲                   │                                 │  link lost    │ reconnected
       │                   └──failed──┐                      ▼              │
       └───────── failed for good, or close() ◄──────── RECONNECTING ───────┘

Called by the reader thread (link up, link lost, given up), by ``close()`` on any user
thread, and read by every thread. Guarantees: a transition happens only if the table
allows it (a reconnect that finishes after ``close()`` began cannot reopen the client);
each ``on_state`` notice is posted once per transition, in order, from under the lock; the
final error is decided here, the first one wins, and a ``close()`` that came first means
there is none. That error is raised to each caller as a fresh exception chained to the
original, so tracebacks do not grow with every raise.

The lock is also the session's lock around the protocol core (docs/style.md rule 6): one lock,
never held while user code runs.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable

from .exceptions import ConnectionClosed

__all__ = ["Lifecycle", "State"]

logger = logging.getLogger("c2sync")


class State(enum.Enum):
    """Where a client's connection stands."""

    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


_ALLOWED: dict[State, frozenset[State]] = {
    State.CLOSED: frozenset({State.CONNECTING}),  # a failed first connect may be retried
    State.CONNECTING: frozenset({State.OPEN, State.CLOSED}),
    State.OPEN: frozenset({State.RECONNECTING, State.CLOSED}),
    State.RECONNECTING: frozenset({State.OPEN, State.CLOSED}),
}


def fresh(error: BaseException) -> BaseException:
    """A copy of ``error`` to raise again, chained to it (its traceback stays its own)."""
    copy = type(error).__new__(type(error), *error.args)
    copy.args = error.args
    copy.__dict__.update(error.__dict__)
    copy.__cause__ = error
    copy.__suppress_context__ = True
    return copy


class Lifecycle:
    """The state table of one client.

    Args:
        notify: called with each new state, under the lock (it must only queue the notice:
            the dispatcher's ``post_state``).
    """

    def __init__(self, notify: Callable[[State], None]) -> None:
        # The one lock, and the condition over it: ``with mutex`` takes the same lock as
        # ``with lock`` for a fraction of the cost (no Python-level __enter__), for the hot
        # paths; waiting and notifying go through ``lock``.
        self.mutex = threading.Lock()
        self.lock = threading.Condition(self.mutex)
        self._notify = notify
        self.state = State.CLOSED
        self.opened = False  # open() was called once (a failed first connect counts)
        self.closing = False  # close() has begun: no reconnect, no failure from now on
        self.failure: BaseException | None = None
        self.ended = threading.Event()  # CLOSED for good: threads stop, callers get the end

    def begin_open(self) -> None:
        """The user called ``connect()``: CLOSED -> CONNECTING.

        Raises:
            RuntimeError: already connected, or closed by ``close()`` (no reopening).
        """
        with self.lock:
            if self.state is not State.CLOSED or self.closing:
                raise RuntimeError("this client is already connected; a closed one cannot reopen")
            self.opened = True
            self.ended.clear()
            self.failure = None
            self._move(State.CONNECTING)

    def move(self, state: State) -> bool:
        """Make a transition the table allows (CLOSED only through :meth:`end`).

        Returns:
            Whether it happened (False once ``close()`` began, or if the table forbids it).
        """
        assert state is not State.CLOSED
        with self.lock:
            if self.closing or state not in _ALLOWED[self.state]:
                return False
            self._move(state)
            return True

    def begin_close(self) -> bool:
        """``close()`` began. Returns whether this call is the first."""
        with self.lock:
            first = not self.closing
            self.closing = True
            self.lock.notify_all()
            return first

    def end(self, failure: BaseException | None = None) -> bool:
        """Move to CLOSED for good, with ``failure`` as the final error unless ``close()``
        came first or another failure did. Returns whether this call ended the client."""
        with self.lock:
            if self.ended.is_set():
                return False
            if failure is not None and not self.closing and self.failure is None:
                self.failure = failure
            # CLOSED first, then the end: whoever sees the failure sees state CLOSED too.
            self._move(State.CLOSED)
            self.ended.set()
            return True

    def _move(self, state: State) -> None:
        if self.state is state:
            return
        never_opened = state is State.CLOSED and self.state is State.CONNECTING
        self.state = state
        # After a failed connect, say so: no WebSocket was open, none was closed.
        logger.info("state: %s%s", state.name, " (no connection was opened)" * never_opened)
        self._notify(state)
        self.lock.notify_all()

    def raise_failure(self) -> None:
        """Raise the final error (fresh) if there is one."""
        failure = self.failure
        if failure is not None:
            raise fresh(failure)

    def end_error(self) -> BaseException:
        """What a call made after the end raises: the failure (fresh), or a plain close."""
        failure = self.failure
        if failure is not None:
            return fresh(failure)
        return ConnectionClosed(None, "", "the client is closed")

    def wait_open(self, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        """Block (bounded) until OPEN and ``ready()``; the caller holds :attr:`lock`.

        Raises:
            C2Error: the final error, once the client failed.
            ConnectionClosed: the client is closed or closing.
            TimeoutError: not OPEN by ``deadline``.
        """
        while True:
            if self.failure is not None:
                raise fresh(self.failure)
            if self.closing or self.ended.is_set():
                raise ConnectionClosed(None, "", "the client is closed")
            if self.state is State.OPEN and ready():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"not connected in time to send {what}")
            self.lock.wait(remaining)
