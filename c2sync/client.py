"""The public face: :class:`Client` and :func:`connect`.

A thin layer over the private rooms (docs/design.md): it checks the user's arguments once
into an :class:`~c2sync._options.Options` value, and hands every call to the session,
which lives as long as the client. Called from user threads; every method is safe from
any thread, callbacks included, unless its docstring says otherwise.

The session's threads hold the session, never the ``Client``, so a client nobody
references is garbage-collected and its connection closed with a close frame (docs/api-contract.md
"Closing").
"""

from __future__ import annotations

import inspect
import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from . import _display
from ._dispatcher import Handle
from ._framing import DEFAULT_MAX_SIZE
from ._lifecycle import State
from ._options import Options
from ._reader import Stats
from ._session import Session
from ._spec import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    DEFAULT_URL,
    HEARTBEAT_TIMEOUT,
    SUBSCRIBE,
    UNSUBSCRIBE,
)
from ._substats import SubscriptionStats
from .checkpoint import Checkpoint
from .exceptions import ConnectionClosed
from .messages import Message, SubscriptionAck
from .reconnect import ReconnectPolicy

__all__ = ["Client", "Handle", "State", "Stats", "SubscriptionStats", "connect"]


def _finalize(session: Session) -> None:
    # When the Client is garbage-collected or at interpreter exit (docs/api-contract.md
    # "Closing").
    if not session.life.ended.is_set():
        session.close(CLOSE_NORMAL, "", clean=True)


class Client:
    """A connection to the Collective2 WebSocket API, usable from plain threaded code.

    Build one with :func:`connect` (connected on return), or construct it and call
    :meth:`connect`. The whole contract: https://c2sync.readthedocs.io/en/latest/api-contract.html

    Args:
        api_key: the API key; None reads ``C2_API_KEY``.
        url: the WebSocket URL (``ws://`` or ``wss://``).
        connect_timeout: seconds for TCP, TLS, the upgrade and ``connection.connected``.
        heartbeat_timeout: seconds without a server heartbeat after which the connection is
            dead.
        reconnect: re-open lost connections (the API contract, "Reconnecting").
        max_queue: messages the recv() queue holds before dropping the oldest.
        checkpoint: None, a path, or a :class:`~c2sync.checkpoint.Checkpoint`.
        proxy: ``"http://[user:pass@]host:port"``.
        ssl_context: an :class:`ssl.SSLContext` (custom CA bundles); verification stays on
            by default.
        reconnect_policy: the backoff and retry rules (None: the defaults).
        max_message_size: the largest message accepted, in bytes, all its fragments
            counted (16 MiB); a bigger one ends that connection with close 1009.

    Raises:
        ValueError: no API key, or an argument out of range.
        TypeError: an argument of the wrong type.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        url: str = DEFAULT_URL,
        connect_timeout: float = 10.0,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        reconnect: bool = True,
        max_queue: int = 10_000,
        checkpoint: str | os.PathLike[str] | Checkpoint | None = None,
        proxy: str | None = None,
        ssl_context: Any = None,
        reconnect_policy: ReconnectPolicy | None = None,
        max_message_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        options = Options.create(
            api_key,
            url=url,
            connect_timeout=connect_timeout,
            heartbeat_timeout=heartbeat_timeout,
            reconnect=reconnect,
            max_queue=max_queue,
            checkpoint=checkpoint,
            proxy=proxy,
            ssl_context=ssl_context,
            reconnect_policy=reconnect_policy,
            max_message_size=max_message_size,
        )
        self._session = Session(options)
        self._finalizer = weakref.finalize(self, _finalize, self._session)

    def __repr__(self) -> str:
        s = self._session
        subs = ", ".join(f"{c}:{i}" for c, i in sorted(s.protocol.subscriptions))
        return (
            f"<c2sync.Client {s.life.state.name} {s.options.safe_url} subscriptions=[{subs}] "
            f"messages={s.stats.messages} heartbeats={s.stats.heartbeats} "
            f"reconnects={s.stats.reconnects}>"
        )

    def _repr_html_(self) -> str:
        """Jupyter's view: state, URL, uptime, heartbeats, reconnects, dropped, and one row
        per subscription; every text escaped, never the key."""
        return _display.of_session(self._session)

    # Lifecycle -------------------------------------------------------------------------

    def connect(self) -> Client:
        """Open the connection and block until the server says ``connection.connected``.

        Returns:
            This client.

        Raises:
            AuthenticationError: 401, the key was refused.
            RateLimitError: 429 (``.retry_after``).
            ServiceUnavailableError: 503.
            HandshakeError: any other refused upgrade.
            TimeoutError: nothing within ``connect_timeout``.
            ProtocolError: the first message was not ``connection.connected``.
            ConnectionClosed: the server closed at once (1008: the connection-limit race).
            OSError: the host could not be reached (e.g. ``ConnectionRefusedError``), or
                its certificate failed verification.
        """
        self._session.open()
        return self

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close the connection; idempotent, safe from any thread or callback, bounded.

        Args:
            code: the close code sent: 1000 (normal), 1011 (an error on this side, as a
                ``with`` block left by an exception sends), or 3000-4999 (registered and
                private codes; RFC 6455 7.4).
            reason: the close reason sent, cut to 123 bytes of UTF-8 (on a character
                boundary).

        Raises:
            ValueError: ``code`` is not one a client may send (nothing is closed).
            TypeError: ``reason`` is not a str.
        """
        if isinstance(code, bool) or not isinstance(code, int):
            raise ValueError(f"close code must be an int, not {type(code).__name__}")
        if code not in (CLOSE_NORMAL, CLOSE_INTERNAL_ERROR) and not 3000 <= code <= 4999:
            raise ValueError(f"close code must be 1000, 1011 or 3000-4999, not {code}")
        if not isinstance(reason, str):
            raise TypeError(f"close reason must be a str, not {type(reason).__name__}")
        self._session.close(code, reason, clean=code == CLOSE_NORMAL)

    def __enter__(self) -> Client:
        if not self._session.life.opened:
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._session.close(CLOSE_INTERNAL_ERROR, "client error", clean=False)

    # Subscribing -------------------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        strategy_id: int,
        resume_from: int | None = None,
        timeout: float = 10.0,
    ) -> SubscriptionAck:
        """Subscribe to a channel of a strategy and wait for the server's ack.

        Args:
            channel: ``c2sync.SIGNAL`` or ``c2sync.POSITIONS``.
            strategy_id: the strategy, a positive int.
            resume_from: the last ``seq_id`` processed (signals only): the server replays
                what came after. None resumes from what this client (or its checkpoint)
                last handed out, if anything.
            timeout: seconds to wait for the answer.

        Returns:
            The server's :class:`~c2sync.messages.SubscriptionAck`.

        Raises:
            ValueError: a bad argument (nothing is sent).
            SubscriptionLimitError: a 101st subscription.
            ServerError: the server refused (e.g. ``FORBIDDEN``).
            TimeoutError: no answer within ``timeout``.
            ConnectionClosed: the client is closed.
        """
        return self._session.request(SUBSCRIBE, channel, strategy_id, resume_from, timeout)

    def unsubscribe(self, channel: str, strategy_id: int, timeout: float = 10.0) -> SubscriptionAck:
        """Unsubscribe and wait for the server's ack.

        Args:
            channel: the channel.
            strategy_id: the strategy.
            timeout: seconds to wait for the answer.

        Returns:
            The server's :class:`~c2sync.messages.SubscriptionAck`.

        Raises:
            ValueError: a bad argument (nothing is sent).
            ServerError: the server refused.
            TimeoutError: no answer within ``timeout``.
            ConnectionClosed: the client is closed.
        """
        return self._session.request(UNSUBSCRIBE, channel, strategy_id, None, timeout)

    @property
    def subscriptions(self) -> frozenset[tuple[str, int]]:
        """The (channel, strategy_id) pairs the server holds for this client."""
        return self._session.protocol.subscriptions

    # Receiving ---------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Message:
        """The next message that no callback took.

        Args:
            timeout: seconds to wait; None waits until a message or the end (Ctrl-C still
                interrupts).

        Returns:
            A :class:`~c2sync.messages.Signal`, :class:`~c2sync.messages.Positions`,
            :class:`~c2sync.messages.Gap`, :class:`~c2sync.messages.ErrorMessage` or
            :class:`~c2sync.messages.Message`.

        Raises:
            TimeoutError: nothing within ``timeout``.
            QueueOverflow: messages were dropped since the last call (raised once).
            ConnectionClosed: the client was closed.
            C2Error: the connection failed for good (after the queued messages).
        """
        if timeout is not None:  # the check's call is spared where most recv()s wait
            _check_timeout(timeout)
        return self._session.recv(timeout)

    def recv_many(self, max_messages: int = 100, timeout: float | None = 0.0) -> list[Message]:
        """Whatever is waiting, up to ``max_messages``, in order (one lock round trip).

        "What arrived since the last cell?" in a notebook; a batch for a batch consumer.
        The rules of :meth:`recv` hold otherwise; for a checkpoint the batch counts as
        processed at the next receive call or a clean close.

        Args:
            max_messages: the most messages returned, a positive int.
            timeout: seconds to wait for the first message (0: do not wait; None: until one
                comes or the end).

        Returns:
            The messages, oldest first; an empty list when none came within ``timeout``.

        Raises:
            ValueError: a bad argument.
            QueueOverflow: messages were dropped since the last call (raised once).
            ConnectionClosed: the client was closed.
            C2Error: never connected, or the connection failed for good (after the queued
                messages).
        """
        if type(max_messages) is not int or max_messages < 1:
            raise ValueError(f"max_messages must be a positive int, not {max_messages!r}")
        _check_timeout(timeout)
        return self._session.recv_many(max_messages, timeout)

    def __iter__(self) -> Iterator[Message]:
        """Iterate over messages until the client is closed (then end quietly)."""
        while True:
            try:
                yield self._session.recv(None)
            except ConnectionClosed:
                if self._session.life.failure is not None:
                    raise
                return

    def on(self, msg_type: str, callback: Callable[[Any], Any]) -> Handle:
        """Call ``callback(message)`` on the dispatcher thread for each ``msg_type`` message.

        Args:
            msg_type: e.g. ``c2sync.SIGNAL``; ``"*"`` matches every type.
            callback: a callable taking the message.

        Returns:
            A :class:`Handle` for :meth:`off`.

        Raises:
            TypeError: ``callback`` is not callable or ``msg_type`` not a string.
        """
        if not isinstance(msg_type, str):
            raise TypeError("msg_type must be a str")
        if not callable(callback):
            raise TypeError("callback must be callable")
        return self._session.dispatcher.on(msg_type, callback)

    def off(self, handle: Handle) -> None:
        """Remove a callback registered with :meth:`on` or :meth:`on_error`.

        Once this returns, that callback never starts again (a call of it already running
        on the dispatcher thread is waited for, up to about a second; from inside a
        callback, nothing is waited for).

        Raises:
            ValueError: the handle is not registered.
        """
        self._session.dispatcher.off(handle)

    def on_error(self, callback: Callable[[BaseException], Any]) -> Handle:
        """Call ``callback(exc)`` on the dispatcher thread for each failure the client
        survived: a :class:`~c2sync.QueueOverflow` when callbacks or the recv() queue fell
        ``max_queue`` messages behind (``.dropped``, ``.last_seq``), a lost connection it is
        re-opening, a refused reconnect attempt. Never dropped.

        Returns:
            A :class:`Handle` for :meth:`off`.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise TypeError("callback must be callable")
        return self._session.dispatcher.on_error(callback)

    def on_state(self, callback: Callable[[State], Any]) -> None:
        """Call ``callback(state)`` on the dispatcher thread at each change of :attr:`state`.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._session.dispatcher.on_state(callback)

    def run_forever(self) -> None:
        """Block until the client is closed while callbacks run (Ctrl-C propagates).

        Returns once the callbacks still running at the close (the ``CLOSED`` state
        callback included) have finished, waiting at most about a second for them.

        Raises:
            C2Error: the connection failed for good.
        """
        self._session.wait_closed()

    # Observability -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The connection's :class:`State`."""
        return self._session.life.state

    @property
    def stats(self) -> Stats:
        """Live counters (:class:`Stats`)."""
        return self._session.stats

    @property
    def subscription_stats(self) -> Mapping[tuple[str, int], SubscriptionStats]:
        """``{(channel, strategy_id): SubscriptionStats}``, one per current subscription:
        last seq_id, when the last message came, counts of messages, duplicates, gaps and
        resumes. A snapshot, taken when read."""
        s = self._session
        return s.book.snapshot(s.protocol.subscriptions)

    @property
    def url(self) -> str:
        """The URL this client connects to."""
        return self._session.options.url

    @property
    def connected_message(self) -> Message | None:
        """The latest ``connection.connected`` message (None before the first)."""
        return self._session.connected_message


def _check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be None or a non-negative number of seconds: {timeout!r}")


def connect(api_key: str | None = None, **options: Any) -> Client:
    """Connect and return a :class:`Client` once ``connection.connected`` has arrived.

    ::

        with c2sync.connect(url=url) as client:   # the key from C2_API_KEY
            client.subscribe(c2sync.SIGNAL, 12345678)
            for signal in client:
                print(signal.seq_id, dict(signal.payload))

    Args:
        api_key: the API key, sent only in the upgrade's ``Authorization`` header; None
            reads the ``C2_API_KEY`` environment variable.
        url: the WebSocket URL, ``ws://`` or ``wss://`` (default :data:`DEFAULT_URL`).
        connect_timeout: seconds for the whole connect: DNS, TCP, proxy, TLS, the upgrade
            and ``connection.connected``; also bounds each reconnect attempt.
        heartbeat_timeout: seconds without a server heartbeat after which the connection
            is dead and re-opened (the server sends one every 30 s).
        reconnect: re-open a lost connection, restore the subscriptions and resume the
            signals (the API contract, "Reconnecting"); False: the first loss ends
            the client.
        max_queue: messages the ``recv()`` queue (and the callbacks' backlog) holds;
            beyond it the oldest are dropped and :class:`QueueOverflow` says so.
        checkpoint: None, a file path, ``"sqlite:///path"`` (``"postgresql://..."``), or a
            :class:`~c2sync.Checkpoint`: keeps the last processed ``seq_id`` per strategy
            so a later run resumes after it.
        proxy: ``"http://[user:pass@]host:port"``; None honours ``HTTPS_PROXY`` and
            ``NO_PROXY``.
        ssl_context: an :class:`ssl.SSLContext` for custom CA bundles; certificate checks
            stay on.
        reconnect_policy: the backoff and retry rules (None: :class:`ReconnectPolicy`'s
            defaults).
        max_message_size: the largest message accepted, in bytes, all its fragments
            counted (16 MiB); a bigger one ends that connection with close 1009.

    Returns:
        The connected client; close it (or use it in a ``with`` block).

    Raises:
        AuthenticationError: HTTP 401, the key is missing or invalid.
        RateLimitError: HTTP 429, too many attempts or connections for this key.
        ServiceUnavailableError: HTTP 503, the server is full.
        HandshakeError: any other refused upgrade.
        TimeoutError: nothing within ``connect_timeout``.
        OSError: the host is unreachable or its certificate failed.
        ConnectionClosed: the server closed at once (1008: its connection limit).
        ProtocolError: the first message was not ``connection.connected``.
        ValueError: no API key, or an argument out of range.
        TypeError: an argument of the wrong type.
    """
    client = Client(api_key, **options)
    del api_key, options  # error trackers record a traceback's locals: no key, no proxy password
    return client.connect()


_init = inspect.signature(Client.__init__)
connect.__signature__ = _init.replace(  # type: ignore[attr-defined]
    parameters=list(_init.parameters.values())[1:], return_annotation="Client"
)
