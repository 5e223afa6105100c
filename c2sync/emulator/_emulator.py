"""``Emulator``, the public face of the emulator, and the thread its event loop runs on.

Any thread may call ``Emulator``'s methods. Those that touch connections or the signal log
hand a call to the loop thread (``run_coroutine_threadsafe``) and wait for it with a bound;
those that only read the records take the server's condition lock. The loop side lives in
``_server.py`` (``websockets`` I/O) and the decisions in ``_gate.py`` and ``_rules.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from .._spec import (
    HEARTBEAT_GRACE,
    HEARTBEAT_INTERVAL,
    MAX_CONNECTIONS_PER_KEY,
    MAX_REPLAY,
    MAX_SUBSCRIPTIONS,
    TIMESTAMP_WINDOW,
)
from ..codec import validate_strategy_id
from ._dialect import Dialect, parse_dialect
from ._knobs import FaultKnobs
from ._records import ConnectionRecord
from ._server import EmulatorServer
from ._settings import Settings

__all__ = ["Emulator"]

_log = logging.getLogger("c2sync.emulator")

_T = TypeVar("_T")
if TYPE_CHECKING:
    # The loop's main coroutine, handed the future it sets once serving.
    _Main = Callable[[concurrent.futures.Future[None]], Coroutine[Any, Any, None]]
_CALL_TIMEOUT = 10.0  # bound on any public method waiting for the loop
_START_TIMEOUT = 10.0
_JOIN_TIMEOUT = 5.0


class _LoopThread:
    """One daemon thread running one asyncio loop until its main coroutine returns.

    ``start`` and ``stop`` may be called from any thread, each once taking effect; ``call``
    runs a function on the loop and waits for its result with a bound.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped = False

    def start(self, main: _Main) -> bool:
        """Start the thread running ``main(ready)``, and wait until it sets ``ready``.

        Returns:
            False when it was already started (nothing done).

        Raises:
            RuntimeError: it was stopped; it cannot be restarted.
            TimeoutError: ``ready`` was not set in time.
        """
        with self._lock:
            if self.stopped:
                raise RuntimeError("the emulator is closed; create a new one")
            if self.thread is not None:
                return False
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            # Not "c2sync-...": that prefix names the client's threads, which tests count.
            self.thread = threading.Thread(
                target=self._main, args=(main, ready), name="c2sync.emulator", daemon=True
            )
            self.thread.start()
        try:
            ready.result(_START_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise TimeoutError("the emulator did not start in time") from None
        return True

    def stop(self, request_stop: Callable[[], None]) -> None:
        """Mark stopped, run ``request_stop`` on the loop, and join the thread (bounded)."""
        with self._lock:
            thread, loop, self.stopped = self.thread, self.loop, True
        if thread is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(request_stop)
        except RuntimeError:
            pass  # the loop has already ended
        if thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT)

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the loop thread and return its result, waiting with a bound."""
        loop = self.loop
        if loop is None:
            raise RuntimeError("the emulator is not running; call start() first")
        if threading.current_thread() is self.thread:
            return fn()

        async def run() -> _T:
            return fn()

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return future.result(_CALL_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("the emulator's loop did not answer in time") from None

    def _main(
        self,
        main: _Main,
        ready: concurrent.futures.Future[None],
    ) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(main(ready))
        except BaseException as exc:  # reported to start() if it is still waiting
            if not ready.done():
                ready.set_exception(exc)
            else:
                _log.exception("emulator loop failed")
        finally:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


class Emulator(FaultKnobs):
    """A local Collective2 API v4 WebSocket server for demos and tests (the protocol page).

    It runs its own asyncio loop in a daemon thread; every method may be called from any
    thread. Use it as a context manager, or call :meth:`start` and :meth:`close`.

    Fault knobs that take ``connection`` act on that connection only (its
    :attr:`ConnectionRecord.index`), or on every open connection when it is None.
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = ("demo",),
        strategies: Iterable[int] = (12345678,),
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        heartbeat_grace: float = HEARTBEAT_GRACE,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        replay_size: int = 5000,
        max_replay: int = MAX_REPLAY,
        max_connections_per_key: int = MAX_CONNECTIONS_PER_KEY,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        echo_request_id_on_error: bool = True,
        timestamp_window: float = TIMESTAMP_WINDOW,
        clock_offset: float = 0.0,
        dialect: Mapping[str, str | int] | None = None,
    ) -> None:
        """Configure the emulator; nothing listens until :meth:`start`.

        Args:
            api_keys: the keys accepted as ``Authorization: Bearer <KEY>``.
            strategies: the strategy ids a key may subscribe to (others: ``FORBIDDEN``).
            heartbeat_interval: seconds between heartbeats (section 5).
            heartbeat_grace: a connection is closed (1000, ``heartbeat timeout``) when no
                ``heartbeat.ack`` came for ``heartbeat_interval + heartbeat_grace`` seconds
                since the previous one or since the upgrade.
            host: the interface to bind.
            port: the TCP port; 0 picks a free one (see :attr:`url`).
            ssl_context: a server-side ``ssl.SSLContext``; the URL is then ``wss://``.
            replay_size: signals kept per strategy for resuming.
            max_replay: the most signals one resume replays before the ``gap`` (section 7).
            max_connections_per_key: concurrent connections per key; the next is refused
                with 429 ``CONNECTION_LIMIT``.
            max_subscriptions: subscriptions (channel+strategy pairs) per connection.
            echo_request_id_on_error: put the request's ``request_id`` on ``error``
                answers; False reproduces the docs' example error, which carries none.
            timestamp_window: seconds a client ``timestamp`` may be off UTC (section 3).
            clock_offset: seconds the emulator's clock runs ahead of this machine's
                (negative: behind). Its timestamps and its timestamp window use that
                clock, so a test can play a client whose clock is off by as much.
            dialect: how to read the points the public docs leave open, NAME -> VALUE (for
                example ``{"frames": "binary", "resume_from": "string"}``); every name, its
                values and its default are in :data:`c2sync.emulator.DIALECTS`. None or
                ``{}``: the protocol page's reading throughout.

        Raises:
            ValueError: a limit or interval is out of range, a strategy id is not a
                positive int, or a dialect name or value is unknown (the message lists the
                allowed ones).
        """
        chosen = parse_dialect(dialect)
        if isinstance(api_keys, str):
            raise TypeError("api_keys is a collection of keys, not one string")
        if heartbeat_interval <= 0 or heartbeat_grace < 0:
            raise ValueError("heartbeat_interval must be > 0 and heartbeat_grace >= 0")
        if min(replay_size, max_replay, max_connections_per_key, max_subscriptions) < 1:
            raise ValueError("replay_size and the limits must be at least 1")
        settings = Settings(
            api_keys=frozenset(api_keys),
            strategies=frozenset(validate_strategy_id(s) for s in strategies),
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_interval + heartbeat_grace,
            host=host,
            port=port,
            ssl_context=ssl_context,
            replay_size=replay_size,
            max_replay=max_replay,
            max_connections_per_key=max_connections_per_key,
            max_subscriptions=max_subscriptions,
            timestamp_window=timestamp_window,
            clock_offset=float(clock_offset),
            dialect=chosen,
        )
        self._server = EmulatorServer(settings, echo_request_id=echo_request_id_on_error)
        self._runner = _LoopThread()

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._runner.stopped else self._server.url or "not started"
        return f"<Emulator {state} open={self.open_connections}>"

    def start(self) -> Emulator:
        """Start listening, on a daemon thread. Calling it again does nothing.

        Returns:
            The emulator itself.

        Raises:
            OSError: the address could not be bound.
            RuntimeError: the emulator was closed; it cannot be restarted.
            TimeoutError: the server did not come up in time.
        """
        try:
            self._runner.start(self._server.run)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close every connection (1001), stop listening, and join the thread (bounded).

        Idempotent; safe from any thread.
        """
        self._server.closing = True
        self._runner.stop(self._server.request_stop)

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the loop thread and return its result, waiting with a bound."""
        if self._server.url is None or self._runner.stopped:
            raise RuntimeError("the emulator is not running; call start() first")
        return self._runner.call(fn)

    # -- observability -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """``ws://host:port/ws`` (``wss://`` with an ``ssl_context``), once started."""
        url = self._server.url
        if url is None:
            raise RuntimeError("the emulator is not started")
        return url

    @property
    def echo_request_id_on_error(self) -> bool:
        """Whether ``error`` answers carry the request's ``request_id``; settable any time."""
        return self._server.echo_request_id

    @echo_request_id_on_error.setter
    def echo_request_id_on_error(self, value: bool) -> None:
        self._server.echo_request_id = bool(value)

    @property
    def dialect(self) -> dict[str, str | int]:
        """Every dialect point and the reading this emulator plays, NAME -> VALUE."""
        chosen: Dialect = self._server.settings.dialect
        return attrs.asdict(chosen)

    @property
    def open_connections(self) -> int:
        """How many accepted connections are open now."""
        with self._server.cond:
            return sum(1 for session in self._server.sessions if session.closed_at is None)

    @property
    def connections(self) -> list[ConnectionRecord]:
        """Snapshots of every connection accepted so far, open or closed, oldest first."""
        with self._server.cond:
            return [session.snapshot() for session in self._server.sessions]

    @property
    def handshakes_accepted(self) -> int:
        """Upgrades completed (101), accept-then-close ones included."""
        with self._server.cond:
            return self._server.accepted

    @property
    def handshakes_refused(self) -> int:
        """Upgrade requests answered with an HTTP error by the emulator's own rules."""
        with self._server.cond:
            return self._server.refused

    def last_seq(self, strategy_id: int) -> int:
        """The ``seq_id`` of the strategy's latest signal, 0 before the first."""
        return self._server.log.last_seq(strategy_id)  # one dict read: no need for the loop

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate()`` is true, re-checking on every change the emulator sees.

        Changes are: a connection accepted or ended, a handshake refused, a frame received,
        a heartbeat sent. The predicate runs under the emulator's lock: it may read
        :attr:`connections`, :attr:`open_connections`, the counters and :meth:`last_seq`,
        but must not call the publishing methods or the fault knobs (they would wait on a
        loop that waits on the lock). Never call this from the emulator's own thread.

        Args:
            predicate: a cheap check without side effects.
            timeout: the bound, in seconds.

        Raises:
            TimeoutError: it was still false after ``timeout``.
        """
        cond = self._server.cond
        with cond:
            if not cond.wait_for(predicate, timeout):
                raise TimeoutError(f"condition not met within {timeout} s")

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> None:
        """Block until exactly ``count`` connections are open.

        Raises:
            TimeoutError: the count differed for all of ``timeout`` seconds.
        """
        self.wait_for(lambda: self.open_connections == count, timeout)

    # -- publishing --------------------------------------------------------------------

    def publish_signal(self, strategy_id: int, payload: Mapping[str, Any] | None = None) -> int:
        """Publish a ``strategy.signal`` with the strategy's next ``seq_id`` (section 7).

        It goes to every connection subscribed to (``strategy.signal``, strategy_id) and is
        kept for replay, whether or not anyone is connected.

        Args:
            strategy_id: one of the emulator's strategies.
            payload: any JSON object; None generates a plausible one.

        Returns:
            The signal's ``seq_id`` (1 for a strategy's first signal).

        Raises:
            ValueError: the strategy is not one of the emulator's.
            TypeError: the payload is not JSON-serialisable.
        """
        self._check_strategy(strategy_id)
        return self._call(lambda: self._server.publish_signal(strategy_id, payload))

    def publish_positions(self, strategy_id: int, payload: Mapping[str, Any] | None = None) -> int:
        """Publish a ``strategy.positions`` update (no ``seq_id``; not kept for replay).

        Args:
            strategy_id: one of the emulator's strategies.
            payload: any JSON object; None generates a plausible one.

        Returns:
            How many connections it was sent to.

        Raises:
            ValueError: the strategy is not one of the emulator's.
            TypeError: the payload is not JSON-serialisable.
        """
        self._check_strategy(strategy_id)
        return self._call(lambda: self._server.publish_positions(strategy_id, payload))

    def _check_strategy(self, strategy_id: int) -> None:
        if strategy_id not in self._server.settings.strategies:
            raise ValueError(f"strategy {strategy_id!r} is not one of the emulator's")
