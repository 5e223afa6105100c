"""The dispatcher: the callbacks' registry, their backlog, and the one thread that runs them.

User threads register and remove callbacks (:meth:`Dispatcher.on`, :meth:`Dispatcher.off`,
:meth:`Dispatcher.on_state`); the reader thread reads the registry without a lock (it is
copy-on-write) and posts messages (:meth:`Dispatcher.post_many`); the lifecycle posts state
notices (:meth:`Dispatcher.post_state`, possibly under the session's lock: this module never
takes that lock while holding its own). The dispatcher thread, started at the first post,
runs callbacks in arrival order, never on the reader thread.

Guarantees (docs/api-contract.md "Receiving"): an exception in a callback is logged with
its traceback and does not stop anything; once the dispatcher is stopped, messages still
waiting are not handed out (they are not lost: resume covers them) while state notices
still run.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from .messages import Message, Signal

__all__ = ["Dispatcher", "Handle"]

logger = logging.getLogger("c2sync")

Callback = Callable[[Any], Any]
Item = tuple[tuple[Callback, ...], Any]


@attrs.frozen
class Handle:
    """What :meth:`Client.on <c2sync.Client.on>` returns; pass it to ``Client.off``."""

    msg_type: str
    callback: Callback = attrs.field(eq=False, repr=False)
    number: int = attrs.field(repr=False)


class Dispatcher:
    """Callbacks and the thread that runs them.

    Args:
        hand_out: called on the dispatcher thread before a message's callbacks run; False
            means the message is a duplicate and is skipped.
        processed: called after every callback of a signal returned without raising.
    """

    def __init__(
        self,
        hand_out: Callable[[Message], bool],
        processed: Callable[[Signal], None],
    ) -> None:
        self._hand_out = hand_out
        self._processed = processed
        self._lock = threading.Lock()  # the registry's writers
        self._numbers = itertools.count(1)
        self.callbacks: dict[str, tuple[Handle, ...]] = {}  # copy-on-write
        self._state_callbacks: tuple[Callback, ...] = ()
        self._cond = threading.Condition(threading.Lock())
        self._backlog: deque[Item] = deque()
        self._idle = True
        self._stopped = False
        self.thread: threading.Thread | None = None

    # The registry ----------------------------------------------------------------------

    def on(self, msg_type: str, callback: Callback) -> Handle:
        with self._lock:
            handle = Handle(msg_type, callback, next(self._numbers))
            callbacks = dict(self.callbacks)
            callbacks[msg_type] = (*callbacks.get(msg_type, ()), handle)
            self.callbacks = callbacks
        return handle

    def off(self, handle: Handle) -> None:
        with self._lock:
            callbacks = dict(self.callbacks)
            kept = tuple(h for h in callbacks.get(handle.msg_type, ()) if h != handle)
            if len(kept) == len(callbacks.get(handle.msg_type, ())):
                raise ValueError(f"{handle!r} is not registered")
            if kept:
                callbacks[handle.msg_type] = kept
            else:
                callbacks.pop(handle.msg_type, None)
            self.callbacks = callbacks

    def on_state(self, callback: Callback) -> None:
        with self._lock:
            self._state_callbacks = (*self._state_callbacks, callback)

    def callbacks_for(self, message: Message) -> tuple[Callback, ...]:
        """The callbacks that take ``message`` (empty: it goes to the recv() queue)."""
        by_type = self.callbacks
        if not by_type:
            return ()
        handles = by_type.get(message.msg_type, ()) + by_type.get("*", ())
        return tuple(h.callback for h in handles)

    # Posting ---------------------------------------------------------------------------

    def post_state(self, state: Any) -> None:
        """Queue a state notice for every ``on_state`` callback (never dropped)."""
        if self._state_callbacks:
            self.post_many([(self._state_callbacks, state)])

    def post_many(self, items: list[Item]) -> None:
        """Queue callback calls: one lock, at most one wake-up; starts the thread."""
        with self._cond:
            if self.thread is None or not self.thread.is_alive():
                if self._stopped:
                    return
                self.thread = threading.Thread(
                    target=self._run, name="c2sync-dispatcher", daemon=True
                )
                self.thread.start()
            self._backlog.extend(items)
            if self._idle:
                self._cond.notify()

    def purge(self, superseded: Callable[[Any], bool]) -> None:
        """Drop the waiting messages for which ``superseded(message)`` is true."""
        with self._cond:
            items = [item for item in self._backlog if not superseded(item[1])]
            self._backlog.clear()
            self._backlog.extend(items)

    # The thread ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop handing out messages; the thread exits once the backlog is empty."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def restart(self) -> None:
        """Undo :meth:`stop` for a new ``connect()`` after a failed one."""
        with self._cond:
            self._stopped = False

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._backlog:
                    if self._stopped:
                        return
                    self._idle = True
                    cond.wait()
                self._idle = False
                callbacks, item = self._backlog.popleft()
                stopped = self._stopped
            # Stopped: messages left are not handed out (they are not lost: resume).
            if isinstance(item, Message) and (stopped or not self._hand_out(item)):
                continue
            ok = True
            for callback in callbacks:
                try:
                    callback(item)
                except Exception:
                    ok = False
                    logger.exception("callback %r raised on %r", callback, item)
            if ok and isinstance(item, Signal):
                self._processed(item)
