"""Every error c2sync raises.

The tree::

    C2Error
    ├── HandshakeError(status, headers, body, code, message)   the upgrade was refused
    │   ├── AuthenticationError        401 (final: never retried)
    │   ├── RateLimitError             429 (.retry_after)
    │   └── ServiceUnavailableError    503
    ├── ConnectionClosed(code, reason) the connection ended
    │   └── HeartbeatTimeout           the server went silent (docs/protocol.md section 5)
    ├── ProtocolError                  the server broke the protocol
    ├── ServerError(code, field, message, errors, request_id)  an ``error`` answering a request
    ├── QueueOverflow(dropped, last_seq)  the recv() queue overflowed; messages were dropped
    └── SubscriptionLimitError         a 101st subscription (also a ``ValueError``)

Timeouts raise the built-in :class:`TimeoutError`; wrong arguments raise :class:`ValueError`
or :class:`TypeError`. Nothing here ever holds the API key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .messages import ErrorDetail

__all__ = [
    "AuthenticationError",
    "C2Error",
    "ConnectionClosed",
    "HandshakeError",
    "HeartbeatTimeout",
    "ProtocolError",
    "QueueOverflow",
    "RateLimitError",
    "ServerError",
    "ServiceUnavailableError",
    "SubscriptionLimitError",
]


class C2Error(Exception):
    """Base class of every error raised by c2sync."""


class HandshakeError(C2Error):
    """The server refused the WebSocket upgrade with an HTTP status (the protocol, section 2).

    Attributes:
        status: the HTTP status code.
        headers: the response headers, names in lower case.
        body: the response body as text ("" when there was none).
        code: ``code`` from a JSON body, or None.
        message: ``message`` from a JSON body, else the ``X-WS-Error`` header, or None.
    """

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: str = "",
        *,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        self.status = status
        self.headers: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}
        self.body = body
        parsed_code, parsed_message = _parse_error_body(body)
        self.code = code if code is not None else parsed_code
        self.message = (
            message
            if message is not None
            else parsed_message
            if parsed_message is not None
            else self.headers.get("x-ws-error")
        )
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = f"handshake refused: HTTP {self.status}"
        if self.code:
            text += f" {self.code}"
        if self.message:
            text += f": {self.message}"
        return text


class AuthenticationError(HandshakeError):
    """HTTP 401: the API key is missing or invalid. Never retried."""


class RateLimitError(HandshakeError):
    """HTTP 429: rate limit or the 10-connections-per-key limit.

    Attributes:
        retry_after: seconds from the ``Retry-After`` header, or None.
    """

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: str = "",
        *,
        code: str | None = None,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(status, headers, body, code=code, message=message)

    def _describe(self) -> str:
        text = super()._describe()
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g} s)"
        return text


class ServiceUnavailableError(HandshakeError):
    """HTTP 503: the server-wide connection limit is reached."""


class ConnectionClosed(C2Error):
    """The connection ended.

    Attributes:
        code: the WebSocket close code, or None when the connection was lost without one.
        reason: the close reason ("" when none).
    """

    def __init__(self, code: int | None = None, reason: str = "", detail: str | None = None):
        self.code = code
        self.reason = reason
        if detail is None:
            detail = "connection closed"
            if code is not None:
                detail += f" with code {code}"
            if reason:
                detail += f" ({reason})"
        super().__init__(detail)


class HeartbeatTimeout(ConnectionClosed):
    """No server heartbeat arrived in time: the connection is dead (the protocol, section 5)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(None, "", f"no heartbeat from the server for {timeout:g} s")


class ProtocolError(C2Error):
    """The server sent something the protocol does not allow."""


class ServerError(C2Error):
    """The server answered a request with an ``error`` message (the protocol, section 8).

    Attributes:
        code: the error code, kept as a string (new codes may appear).
        field: the field it concerns, or None.
        message: the human-readable message.
        errors: every error when the server sent a list, else a one-item tuple.
        request_id: the request it answers, or None.
        hint: what the client adds to the text (a refused ``Timestamp`` names the clock's
            measured skew: the API contract, "Clocks and proxies"), or None.
        channel: the channel of the refused request, or None.
        strategy_id: the strategy of the refused request, or None.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        field: str | None = None,
        errors: tuple[ErrorDetail, ...] = (),
        request_id: str | None = None,
        hint: str | None = None,
        channel: str | None = None,
        strategy_id: int | None = None,
    ) -> None:
        self.code = code
        self.field = field
        self.message = message
        self.errors = errors
        self.request_id = request_id
        self.hint = hint
        self.channel = channel
        self.strategy_id = strategy_id
        text = f"{code}: {message}"
        if field:
            text += f" (field {field})"
        if len(errors) > 1:
            text += f" and {len(errors) - 1} more error(s)"
        if hint:
            text += f": {hint}"
        super().__init__(text)


class QueueOverflow(C2Error):
    """The recv() queue overflowed and its oldest messages were dropped.

    Attributes:
        dropped: how many messages were dropped since the last QueueOverflow.
        last_seq: ``{strategy_id: last seq_id handed out}``, to resubscribe with resume_from.
    """

    def __init__(self, dropped: int, last_seq: Mapping[int, int]) -> None:
        self.dropped = dropped
        self.last_seq = dict(last_seq)
        super().__init__(
            f"{dropped} message(s) dropped because nobody read them in time; "
            f"resubscribe with resume_from from .last_seq {self.last_seq}"
        )


class SubscriptionLimitError(C2Error, ValueError):
    """A subscription beyond the 100 a connection may hold (the protocol, section 6)."""


def _parse_error_body(body: str) -> tuple[str | None, str | None]:
    """Pull ``code`` and ``message`` out of a JSON error body, if it is one."""
    try:
        data: Any = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    code = data.get("code")
    message = data.get("message")
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
    )
