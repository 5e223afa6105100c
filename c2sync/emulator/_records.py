"""What the emulator saw of each connection: immutable snapshots for tests to assert on.

Times are ``time.monotonic()`` readings, so they compare with a test's own monotonic clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .._spec import HEARTBEAT_ACK

__all__ = [
    "ConnectionRecord",
    "HeartbeatRecord",
    "ReceivedFrame",
    "SubscriptionRequestRecord",
]


@attrs.frozen
class ReceivedFrame:
    """One data frame the emulator received from a client.

    Attributes:
        at: monotonic time of arrival.
        data: the frame as received: ``str`` for a text frame, ``bytes`` for a binary one.
        message: the parsed JSON value of a text frame, or None when it was not JSON (or was
            binary).
    """

    at: float
    data: str | bytes
    message: Any

    @property
    def msg_type(self) -> str | None:
        """The frame's ``msg_type`` when it is a JSON object carrying a string one."""
        if isinstance(self.message, dict):
            value = self.message.get("msg_type")
            if isinstance(value, str):
                return value
        return None


@attrs.frozen
class HeartbeatRecord:
    """One ``heartbeat`` the emulator sent, and when it was acknowledged (the protocol, section 5).

    Attributes:
        id: the heartbeat message's ``id``.
        sent_at: monotonic time it was queued for sending.
        acked_at: monotonic time of the ``heartbeat.ack`` matched to it (acks are matched
            oldest-unacknowledged first), or None.
    """

    id: str
    sent_at: float
    acked_at: float | None = None


@attrs.frozen
class SubscriptionRequestRecord:
    """One ``subscription.request`` the emulator received (the protocol, section 6), as sent.

    Fields hold the client's values unchanged (so a wrongly typed value stays visible);
    a field the request did not carry is None.

    Attributes:
        at: monotonic time of arrival.
        request_id: the ``request_id``.
        action: ``payload.action``.
        channel: ``payload.channel``.
        strategy_id: ``payload.strategy_id``.
        resume_from: ``payload.resume_from`` (a number or a numeric string).
        error: None when the emulator answered with ``subscription.ack``, else the ``code``
            of the ``error`` it answered with.
    """

    at: float
    request_id: Any
    action: Any
    channel: Any
    strategy_id: Any
    resume_from: Any
    error: str | None


@attrs.frozen
class ConnectionRecord:
    """A snapshot of one accepted connection (one that completed the upgrade).

    Attributes:
        index: 1 for the first connection the emulator accepted, then 2, 3, ...; the
            ``connection`` argument of the fault knobs.
        path: the request path of the upgrade.
        request_headers: the upgrade request's headers, names in lower case (repeated
            headers joined with ``", "``). Holds the ``authorization`` header, so it is
            left out of ``repr()``.
        opened_at: monotonic time of the upgrade.
        closed_at: monotonic time the connection ended, or None while it is open.
        close_code: the close code the client sent (1006 when the connection ended without
            a close frame from it), or None while open.
        close_reason: the close reason the client sent, or None while open.
        sent_close_code: the code of the close frame the emulator sent (its own, or its
            echo of the client's), or None when it sent none.
        sent_close_reason: the reason in that close frame, or None.
        frames: every data frame received from the client, in order.
        heartbeats: every heartbeat sent, in order, with its ack time.
        subscription_requests: every ``subscription.request`` received, in order.
        subscriptions: the (channel, strategy_id) pairs subscribed at the time of the
            snapshot.
        pings_sent: WebSocket pings the emulator sent (dialect ``pings=on``; else 0).
        pongs_received: pings the client answered with a pong (websockets counts a pong
            as answering every earlier ping too).
    """

    index: int
    path: str
    request_headers: Mapping[str, str] = attrs.field(repr=False)
    opened_at: float
    closed_at: float | None
    close_code: int | None
    close_reason: str | None
    sent_close_code: int | None
    sent_close_reason: str | None
    frames: tuple[ReceivedFrame, ...]
    heartbeats: tuple[HeartbeatRecord, ...]
    subscription_requests: tuple[SubscriptionRequestRecord, ...]
    subscriptions: frozenset[tuple[str, int]]
    pings_sent: int = 0
    pongs_received: int = 0

    @property
    def is_open(self) -> bool:
        """True while the connection was open at the time of the snapshot."""
        return self.closed_at is None

    @property
    def acks(self) -> tuple[ReceivedFrame, ...]:
        """The ``heartbeat.ack`` frames received, in order."""
        return tuple(frame for frame in self.frames if frame.msg_type == HEARTBEAT_ACK)
