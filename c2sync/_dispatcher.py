"""The dispatcher: the callbacks' registry, their bounded backlog, and the one thread that
runs them.

User threads register and remove callbacks (:meth:`Dispatcher.on`, :meth:`Dispatcher.off`,
:meth:`Dispatcher.on_state`, :meth:`Dispatcher.on_error`); the reader thread reads the
registry without a lock (it is copy-on-write) and posts messages
(:meth:`Dispatcher.post_many`) and the failures the client survived
(:meth:`Dispatcher.post_error`, :meth:`Dispatcher.overflowed`); the lifecycle posts state
notices (:meth:`Dispatcher.post_state`, possibly under the session's lock: this module never
takes that lock while holding its own). The dispatcher thread, started at the first post,
runs callbacks in arrival order, never on the reader thread.

Guarantees (docs/api-contract.md "Receiving", "Back-pressure"): an exception in a callback
is logged with its traceback and does not stop anything. The backlog holds at most
``max_queue`` messages, the one taken and not yet run included (plus a replay the user asked
for): beyond it the oldest waiting are dropped, counted, logged, and every ``on_error``
function is told with a :class:`~c2sync.exceptions.QueueOverflow`; state notices and
``on_error`` calls are never dropped and do not count. Once :meth:`off` has returned, that
callback never starts again; once :meth:`silence` has returned, no callback starts again.
Once the dispatcher is stopped, messages still waiting are not handed out (they are not
lost: resume covers them) while notices still run.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ._inbox import Replays, superseded
from ._redact import log_failure
from .exceptions import QueueOverflow
from .messages import Message, Signal

__all__ = ["Dispatcher", "Handle"]

logger = logging.getLogger("c2sync")

Callback = Callable[[Any], Any]
# (what to call: Handles, whose registration is checked as each starts, or the state
# callbacks; the message or notice)
Item = tuple[tuple[Any, ...], Any]

ON_ERROR = "on_error"  # the msg_type of the handles on_error() returns (not a message type)
OFF_BOUND = 1.0  # seconds off() waits for a running call of the callback it removes
_OVERFLOW = object()  # the backlog's marker: tell on_error of the messages dropped


@attrs.frozen
class Handle:
    """What :meth:`Client.on <c2sync.Client.on>` returns; pass it to ``Client.off``."""

    msg_type: str
    callback: Callback = attrs.field(eq=False, repr=False)
    number: int = attrs.field(repr=False)


class Dispatcher:
    """Callbacks and the thread that runs them.

    Args:
        hand_out: called on the dispatcher thread before a message's callbacks run (the
            session records what reached the user).
        processed: called after every callback of a signal returned without raising (None:
            nobody needs to know, as without a checkpoint).
        max_queue: the backlog's bound, in messages.
        last_seq: ``{strategy_id: last seq_id delivered}``, for :class:`QueueOverflow`.
        redact: masks the secrets in what is logged of a callback's failure (its text may
            quote a message's server text, or the key).
    """

    def __init__(
        self,
        hand_out: Callable[[Message], None],
        processed: Callable[[Signal], None] | None,
        max_queue: int = 10_000,
        last_seq: Callable[[], Mapping[int, int]] = dict,
        redact: Callable[[str], str] = str,
    ) -> None:
        self._hand_out = hand_out
        self._redact = redact
        self._processed = processed
        self.max_queue = max_queue
        self._last_seq = last_seq
        self._lock = threading.Lock()  # the registry's writers
        self._numbers = itertools.count(1)
        self.callbacks: dict[str, tuple[Handle, ...]] = {}  # copy-on-write
        # What the reader reads, replaced whole with the registry: ({msg_type: its handles
        # then the "*" ones}, the "*" ones, for any other type).
        self.routes: tuple[dict[str, tuple[Handle, ...]], tuple[Handle, ...]] = ({}, ())
        self._error_handles: tuple[Handle, ...] = ()  # copy-on-write
        self._live: frozenset[int] = frozenset()  # numbers of the registered handles
        self._state_callbacks: tuple[Callback, ...] = ()
        # The backlog's lock, and the condition over it for waiting: ``with self._mutex``
        # takes the same lock for a fraction of ``with self._cond``'s cost.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._backlog: deque[Item] = deque()
        self._messages = 0  # messages waiting in the backlog
        self._in_hand = 0  # 1 while a message is taken and its callbacks not yet run
        self._replays = Replays()
        self._overflow = 0  # dropped, not yet told to on_error
        self._overflow_posted = False
        self._overflow_warned = False
        self._running: tuple[Any, ...] | None = None  # what the thread took, until done
        self._waiting_off = 0  # off() callers waiting for a running call
        self._idle = True
        self._stopped = False
        self._silenced = False
        self.thread: threading.Thread | None = None

    # The registry ----------------------------------------------------------------------

    def on(self, msg_type: str, callback: Callback) -> Handle:
        with self._lock:
            handle = Handle(msg_type, callback, next(self._numbers))
            callbacks = dict(self.callbacks)
            callbacks[msg_type] = (*callbacks.get(msg_type, ()), handle)
            self._publish(callbacks)
            self._live = self._live | {handle.number}
        return handle

    def on_error(self, callback: Callback) -> Handle:
        """Register ``callback(exc)`` for overflows and survived background failures."""
        with self._lock:
            handle = Handle(ON_ERROR, callback, next(self._numbers))
            self._error_handles = (*self._error_handles, handle)
            self._live = self._live | {handle.number}
        return handle

    def off(self, handle: Handle) -> None:
        """Remove a handle; once this returns its callback never starts again (a call
        already running, on another thread, is waited for up to ``OFF_BOUND``)."""
        with self._lock:
            if not isinstance(handle, Handle) or handle.number not in self._live:
                raise ValueError(f"{handle!r} is not registered")
            if handle in self._error_handles:
                self._error_handles = tuple(h for h in self._error_handles if h != handle)
            else:
                callbacks = dict(self.callbacks)
                kept = tuple(h for h in callbacks.get(handle.msg_type, ()) if h != handle)
                if len(kept) == len(callbacks.get(handle.msg_type, ())):
                    raise ValueError(f"{handle!r} is not registered")
                if kept:
                    callbacks[handle.msg_type] = kept
                else:
                    callbacks.pop(handle.msg_type, None)
                self._publish(callbacks)
            self._live = self._live - {handle.number}
        if threading.current_thread() is self.thread:
            return  # from a callback: never wait for ourselves
        # The thread may have taken an item naming this handle and not yet looked at the
        # registry: wait until that item is done, so the callback cannot start after this.
        deadline = time.monotonic() + OFF_BOUND
        with self._mutex:
            self._waiting_off += 1
            try:
                while self._running is not None and handle in self._running:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break  # it has long started: it only runs on
                    self._cond.wait(remaining)
            finally:
                self._waiting_off -= 1

    def on_state(self, callback: Callback) -> None:
        with self._lock:
            self._state_callbacks = (*self._state_callbacks, callback)

    def _publish(self, callbacks: dict[str, tuple[Handle, ...]]) -> None:
        # Under self._lock: the registry, and the routes worked out once per change rather
        # than once per message.
        star = callbacks.get("*", ())
        self.callbacks = callbacks
        self.routes = ({t: h + star for t, h in callbacks.items() if t != "*"}, star)

    def callbacks_for(self, message: Message) -> tuple[Handle, ...]:
        """The handles that take ``message`` (empty: it goes to the recv() queue)."""
        by_type, star = self.routes
        return by_type.get(message.msg_type, star)

    # Posting ---------------------------------------------------------------------------

    def post_state(self, state: Any) -> None:
        """Queue a state notice for every ``on_state`` callback (never dropped)."""
        if self._state_callbacks:
            self._post_notice((self._state_callbacks, state))

    def post_error(self, error: BaseException) -> None:
        """Tell every ``on_error`` callback of a failure the client survived (never dropped)."""
        if self._error_handles:
            self._post_notice((self._error_handles, error))

    def overflowed(self, dropped: int) -> None:
        """``dropped`` messages were lost to an overflow (here or in the recv() queue):
        tell the ``on_error`` callbacks, in one notice per wake-up however many come."""
        if not self._error_handles:
            return
        with self._mutex:
            self._overflow += dropped
            self._post_overflow()

    def _post_overflow(self) -> None:
        # Under self._mutex. One marker at a time, at the front: told promptly, and a flood
        # cannot pile notices up.
        if self._overflow_posted or not self._error_handles or not self._start():
            return
        self._overflow_posted = True
        self._backlog.appendleft(((), _OVERFLOW))
        self._wake()

    def _post_notice(self, item: Item) -> None:
        with self._mutex:
            if self._start():
                self._backlog.append(item)
                self._wake()

    def post_many(self, items: list[Item]) -> int:
        """Queue messages for their callbacks: one lock, at most one wake-up; starts the
        thread. Beyond the bound the oldest waiting messages are dropped.

        Returns:
            How many messages were dropped.
        """
        with self._mutex:
            if not self._start():
                return 0
            backlog, replays = self._backlog, self._replays
            backlog.extend(items)
            self._messages += len(items)
            if replays.active:
                for item in items:
                    replays.admit(item[1])
            dropped = 0
            if self._messages + self._in_hand > self.max_queue + len(replays):
                dropped = self._drop_oldest()
                if not self._overflow_warned:  # once until the callbacks catch up
                    self._overflow_warned = True
                    logger.warning(
                        "callbacks fell %d messages behind: dropping the oldest waiting",
                        self.max_queue,
                    )
                if self._error_handles:
                    self._overflow += dropped
                    self._post_overflow()
            self._wake()
        return dropped

    def _drop_oldest(self) -> int:
        # Under self._mutex: the oldest messages go; notices are kept, in order.
        backlog, replays = self._backlog, self._replays
        kept: list[Item] = []
        dropped = 0
        while backlog and self._messages + self._in_hand > self.max_queue + len(replays):
            item = backlog.popleft()
            if isinstance(item[1], Message):
                replays.release(item[1])
                self._messages -= 1
                dropped += 1
            else:
                kept.append(item)
        backlog.extendleft(reversed(kept))
        return dropped

    def _start(self) -> bool:
        # Under self._mutex: start the thread if needed; False once stopped for good.
        if self._silenced:
            return False
        if self.thread is None or not self.thread.is_alive():
            if self._stopped:
                return False
            self.thread = threading.Thread(
                target=self._run, name="c2sync-dispatcher", daemon=True
            )
            self.thread.start()
        return True

    def _wake(self) -> None:
        if self._idle:
            self._cond.notify()

    def purge(self, strategy_id: int, resume_from: int, replay_to: int) -> None:
        """Drop the strategy's waiting signals above ``resume_from`` (a replay the user
        asked for sends them again) and admit that replay up to ``replay_to``."""
        with self._mutex:
            items = [i for i in self._backlog if not superseded(i[1], strategy_id, resume_from)]
            self._messages -= len(self._backlog) - len(items)
            self._backlog.clear()
            self._backlog.extend(items)
            self._replays.allow(strategy_id, resume_from, replay_to)

    # The thread ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop handing out messages; the thread exits once the backlog is empty."""
        with self._mutex:
            self._stopped = True
            self._cond.notify_all()

    def silence(self) -> None:
        """Start no callback ever again (the end of ``close()``): what still waits, notices
        included, is dropped; a call already running finishes.

        Called from a callback (``close()`` inside one), only the messages are dropped: the
        notices already posted (the ``CLOSED`` state) run once that callback returns, as
        they would have before ``close()`` returned on any other thread.
        """
        with self._mutex:
            if threading.current_thread() is self.thread:
                self._stopped = True
                kept = [item for item in self._backlog if not isinstance(item[1], Message)]
                self._backlog.clear()
                self._backlog.extend(kept)
            else:
                self._silenced = True
                self._backlog.clear()
            self._messages = 0
            self._cond.notify_all()

    @property
    def silenced(self) -> bool:
        """Whether :meth:`silence` was called."""
        return self._silenced

    def restart(self) -> None:
        """Undo :meth:`stop` for a new ``connect()`` after a failed one."""
        with self._mutex:
            self._stopped = False

    def _run(self) -> None:
        cond, mutex, processed = self._cond, self._mutex, self._processed
        while True:
            with mutex:
                self._running = None
                self._in_hand = 0
                if self._waiting_off:
                    cond.notify_all()
                while not self._backlog:
                    if self._stopped or self._silenced:
                        return
                    self._overflow_warned = False  # caught up
                    self._idle = True
                    cond.wait()
                if self._silenced:
                    return
                self._idle = False
                targets, item = self._backlog.popleft()
                if item is _OVERFLOW:
                    targets, dropped = self._error_handles, self._overflow
                    self._overflow, self._overflow_posted = 0, False
                elif isinstance(item, Message):
                    self._messages -= 1
                    self._in_hand = 1
                    if self._replays.held:
                        self._replays.release(item)
                stopped = self._stopped
                self._running = targets
            if item is _OVERFLOW:
                if not dropped:
                    continue
                item = QueueOverflow(dropped, self._last_seq())
            elif isinstance(item, Message):
                if stopped:
                    continue  # messages left are not handed out (they are not lost: resume)
                self._hand_out(item)
            ok = True
            for target in targets:
                if isinstance(target, Handle):
                    if target.number not in self._live:
                        continue  # off() was called: it never starts again
                    target = target.callback
                # close() has returned: nothing starts after it. (mypy keeps the narrowing
                # of the check above; silence() runs on another thread meanwhile.)
                if self._silenced:
                    return  # type: ignore[unreachable]
                try:
                    target(item)
                except Exception as exc:
                    ok = False
                    log_failure(
                        logger, self._redact, exc, "callback %r raised on %r", target, item
                    )
            if ok and processed is not None and isinstance(item, Signal):
                processed(item)
