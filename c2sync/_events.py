"""What the protocol core reports to the shell: one frozen value per thing that happened.

Pure (no I/O; a test checks the imports): built by :mod:`c2sync._protocol` and
:mod:`c2sync._streams`, read by the reader thread (:mod:`c2sync._reader`).
"""

from __future__ import annotations

from typing import Union

import attrs

from .exceptions import ProtocolError, ServerError
from .messages import ErrorMessage, Message, Signal, SubscriptionAck

__all__ = [
    "Connected",
    "Deliver",
    "Duplicate",
    "Event",
    "HeartbeatAnswered",
    "Malformed",
    "ReplayRestarted",
    "RequestAnswered",
    "SubscriptionRefused",
]


@attrs.frozen
class Connected:
    """``connection.connected`` arrived: the connection is ready (docs/protocol.md section 4)."""

    message: Message


@attrs.frozen
class HeartbeatAnswered:
    """A ``heartbeat`` arrived; its ``heartbeat.ack`` waits in :meth:`data_to_send`."""

    message: Message


@attrs.frozen
class RequestAnswered:
    """A request a caller waits for was answered, by an ack or an error."""

    request_id: str
    ack: SubscriptionAck | None = None
    error: ServerError | None = None


@attrs.frozen
class Deliver:
    """A message for the user (callbacks or the recv() queue)."""

    message: Message


@attrs.frozen
class Duplicate:
    """A signal already accepted earlier (replay overlap): dropped (docs/protocol.md section 7)."""

    message: Signal


@attrs.frozen
class Malformed:
    """A frame that is not a valid message: skipped, the connection stays up."""

    error: ProtocolError


@attrs.frozen
class ReplayRestarted:
    """A subscribe with an explicit ``resume_from`` was acked: the replay supersedes every
    queued signal of the strategy above ``resume_from``, which the shell must discard so the
    stream stays in order."""

    strategy_id: int
    resume_from: int
    # The last seq_id accepted before: the replay up to it re-sends what was queued or
    # dropped, so the shell lets it past the queue bound (docs/api-contract.md "Back-pressure").
    replay_to: int
    # False: nothing queued is superseded (a subscription that was not held, whose replay
    # may already have arrived before its ack); only the resume is counted.
    purge: bool = True


@attrs.frozen
class SubscriptionRefused:
    """The server refused a resubscription nobody waits for (a restore after reconnecting):
    the pair is no longer held. The shell tells the user: ``message`` goes into their stream
    in order, ``error`` to every ``on_error`` function (docs/api-contract.md "Servers that
    read the docs differently")."""

    channel: str
    strategy_id: int
    error: ServerError
    message: ErrorMessage


Event = Union[  # evaluated at run time: no "|" on Python 3.9
    Connected,
    HeartbeatAnswered,
    RequestAnswered,
    Deliver,
    Duplicate,
    Malformed,
    ReplayRestarted,
    SubscriptionRefused,
]
