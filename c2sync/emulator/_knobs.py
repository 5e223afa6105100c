"""The fault knobs of ``Emulator``: ways to make the server misbehave on purpose, so a
client's error handling can be tested (docs/protocol.md sections 2, 5 and 9).

A base class of ``Emulator`` only, kept apart so each class reads in one sitting. Any thread
may call the knobs; each checks its arguments on the caller's thread, then hands the work to
the loop thread through ``_call`` (bounded) and the loop-side server in ``_server.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from .._spec import CLOSE_NORMAL, CLOSE_POLICY_VIOLATION
from ..codec import validate_strategy_id
from ._gate import forced_refusal
from ._server import EmulatorServer, check_close

__all__ = ["FaultKnobs"]

_T = TypeVar("_T")


class FaultKnobs:
    """Fault knobs that take ``connection`` act on that connection only (its
    :attr:`ConnectionRecord.index`), or on every open connection when it is None."""

    _server: EmulatorServer

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the loop thread and return its result (``Emulator`` provides it)."""
        raise NotImplementedError

    def drop(self, connection: int | None = None) -> int:
        """Cut connections abruptly: abort the TCP transport, no close frame.

        Returns:
            How many connections were cut.
        """
        return self._call(lambda: self._server.drop(connection))

    def close_connections(
        self, code: int = CLOSE_NORMAL, reason: str = "", connection: int | None = None
    ) -> int:
        """Close connections with a close frame carrying ``code`` and ``reason``.

        The close frame goes after any frames already queued for the connection (a
        published signal, say), so those are delivered first; a stalled connection closes
        once unstalled.

        Returns:
            How many connections were told to close.

        Raises:
            ValueError: the code is not one a close frame may carry, or the reason is too
                long.
        """
        check_close(code, reason)
        return self._call(lambda: self._server.close_connections(code, reason, connection))

    def send_raw(self, frame: str | bytes, connection: int | None = None) -> int:
        """Send an arbitrary frame: a ``str`` as a text frame, ``bytes`` as a binary one.

        Returns:
            How many connections it was queued to.
        """
        if not isinstance(frame, (str, bytes)):
            raise TypeError("frame must be str or bytes")
        return self._call(lambda: self._server.send_to(frame, connection))

    def stop_heartbeats(self) -> None:
        """Stop sending heartbeats, to every connection, new ones included.

        While heartbeats are off the emulator does not enforce the ack deadline either
        (there is nothing to acknowledge).
        """
        self._call(lambda: self._server.set_heartbeats(False))

    def resume_heartbeats(self) -> None:
        """Send heartbeats again; each connection's ack deadline restarts from now."""
        self._call(lambda: self._server.set_heartbeats(True))

    def stall(self, connection: int | None = None) -> int:
        """Stop answering on open connections: stop reading, writing and heartbeats.

        Nothing is answered, not even a close frame or a TCP EOF; frames queued meanwhile
        wait. Connections accepted later are not stalled.

        Returns:
            How many connections were stalled.
        """
        return self._call(lambda: self._server.stall(connection))

    def unstall(self, connection: int | None = None) -> int:
        """Undo :meth:`stall`: read, write and send heartbeats again; the ack deadline
        restarts from now.

        Returns:
            How many connections were resumed.
        """
        return self._call(lambda: self._server.unstall(connection))

    def refuse_next(
        self,
        count: int = 1,
        status: int = 429,
        *,
        headers: Mapping[str, str] | None = None,
        body: str | bytes | None = None,
    ) -> None:
        """Refuse the next ``count`` upgrade requests with an HTTP error (section 2).

        Args:
            count: how many requests to refuse.
            status: the HTTP status.
            headers: extra or replacing response headers (``{"Retry-After": "2"}``).
            body: the response body; None gives section 2's JSON body for the status
                (429 ``RATE_LIMITED``, 503 ``SERVICE_UNAVAILABLE``, 401 ``UNAUTHORIZED``).
        """
        data = body.encode() if isinstance(body, str) else body
        refusal = forced_refusal(status, headers, data)
        self._call(lambda: self._server.refuse_next(refusal, count))

    def accept_then_close(
        self, count: int = 1, code: int = CLOSE_POLICY_VIOLATION, reason: str = ""
    ) -> None:
        """Upgrade the next ``count`` connections, then close each at once with ``code``,
        sending nothing before (section 2's race: 1008 and no ``error`` message)."""
        check_close(code, reason)
        self._call(lambda: self._server.accept_then_close(code, reason, count))

    def forbid(self, strategy_id: int) -> None:
        """From now on, refuse subscriptions to the strategy, on both channels, as the docs
        show: an ``error`` with code ``FORBIDDEN``, field ``StrategyId``, message ``Not
        authorized to subscribe to Strategy`` (section 6).

        Subscriptions held already stay; a reconnecting client's resubscription is refused.
        Unsubscribing is still acked.

        Raises:
            ValueError: the strategy id is not a positive int.
        """
        validate_strategy_id(strategy_id)
        self._call(lambda: self._server.forbid(strategy_id, True))

    def allow(self, strategy_id: int) -> None:
        """Undo :meth:`forbid`: subscriptions to the strategy are accepted again (when it is
        one of the emulator's ``strategies``).

        Raises:
            ValueError: the strategy id is not a positive int.
        """
        validate_strategy_id(strategy_id)
        self._call(lambda: self._server.forbid(strategy_id, False))

    def override_first_message(self, frame: str | bytes | None, count: int = 1) -> None:
        """Open the next ``count`` connections with ``frame`` instead of
        ``connection.connected`` (None: send no first message at all).

        Heartbeats and everything else then go on as usual.
        """
        self._call(lambda: self._server.override_first_message(frame, count))
