"""The client's clock skew: measured from the server's timestamps, used to stamp what it sends.

Pure (no socket, thread or clock of its own: the wall time comes in as an argument), called
by :class:`~c2sync._protocol.ClientProtocol` under the session's one lock, so by the reader
thread (``connection.connected``, ``heartbeat``) and by user threads (stamping a request).

Collective2 rejects a client ``timestamp`` more than a minute away from UTC with
``INVALID_PARAMETER`` on ``Timestamp`` (docs/protocol.md section 3). The server's own
timestamps say how far off the local clock is (docs/api-contract.md "Clocks and proxies"):

- the offset is the server's timestamp minus the local UTC wall time at receipt (positive:
  the local clock is behind), measured on ``connection.connected`` and each ``heartbeat``;
- beyond :data:`WARN_SKEW` seconds a WARNING names it, once per crossing, and again when
  it crosses :data:`CORRECT_SKEW` (each is re-armed when the offset falls back within
  :data:`REARM_SKEW` / :data:`REARM_CORRECT_SKEW`, so a clock hovering at a threshold does
  not warn at every heartbeat);
- beyond :data:`CORRECT_SKEW` seconds what the client sends is stamped with the corrected
  time (local time plus the offset), unless the correction is disabled (a test seam).

Guarantees: no unbounded state (one float and two flags); a stamp never raises, whatever
timestamp a server sends (an out-of-range correction falls back to the local time).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from ._spec import CODE_INVALID_PARAMETER
from .messages import ErrorMessage

__all__ = [
    "CORRECT_SKEW",
    "REARM_SKEW",
    "WARN_SKEW",
    "ClockSkew",
    "is_timestamp_error",
    "utc_now",
]

logger = logging.getLogger("c2sync")

WARN_SKEW = 5.0  # seconds: a WARNING names the skew beyond this
REARM_SKEW = 4.0  # seconds: back within this, the next crossing warns again
REARM_CORRECT_SKEW = 25.0  # seconds: the same for the CORRECT_SKEW crossing
CORRECT_SKEW = 30.0  # seconds: outgoing timestamps are corrected beyond this
SERVER_WINDOW = 60.0  # seconds: what the server tolerates (docs/protocol.md section 3)


def utc_now() -> datetime:
    """The local UTC wall time (the default ``wallclock``; the shell passes its own)."""
    return datetime.now(timezone.utc)


def is_timestamp_error(error: ErrorMessage) -> bool:
    """Whether the server refused a message's ``timestamp``: code ``INVALID_PARAMETER`` on
    field ``Timestamp`` (compared case-insensitively), flat or in ``payload.errors``."""
    items = [(error.code, error.field)] + [(e.code, e.field) for e in error.errors]
    return any(
        isinstance(code, str)
        and isinstance(field, str)
        and code.upper() == CODE_INVALID_PARAMETER
        and field.lower() == "timestamp"
        for code, field in items
    )


def seconds(value: float) -> str:
    """``"300"``, ``"45"``, ``"7.5"``, ``"0.25"``: a skew's size as a message shows it."""
    size = abs(value)
    return f"{size:.0f}" if size >= 10 else f"{size:.2g}"


def describe(offset: float) -> str:
    """``"45 s behind the server's"`` (positive offsets) or ``"... ahead of ..."``."""
    where = "behind" if offset >= 0 else "ahead of"
    return f"{seconds(offset)} s {where} the server's"


class ClockSkew:
    """The last measured offset of the local clock, and what to stamp with.

    Args:
        correct: stamp outgoing messages with the corrected time beyond
            :data:`CORRECT_SKEW` (False is a seam for tests: send the local time as it is).
    """

    def __init__(self, *, correct: bool = True) -> None:
        self.correct = correct
        self._offset: float | None = None
        # 0: within WARN_SKEW; 1: warned; 2: warned beyond CORRECT_SKEW. A level drops only
        # below its re-arm mark, so a clock hovering at a threshold warns once.
        self._level = 0

    @property
    def offset(self) -> float | None:
        """Server time minus local time at the last measure, in seconds (None before)."""
        return self._offset

    def measure(self, server_time: datetime | None, local_time: datetime) -> None:
        """Take one server timestamp (None: the message had none readable) against the
        local UTC wall time at its receipt; log a crossing of the thresholds."""
        if server_time is None:
            return
        offset = (server_time - local_time).total_seconds()
        self._offset = offset
        size = abs(offset)
        level = self._level
        if size > CORRECT_SKEW:
            level = 2
        elif size > WARN_SKEW:
            level = 1 if level < 2 or size <= REARM_CORRECT_SKEW else 2
        elif size <= REARM_SKEW:
            level = 0
        else:
            level = min(level, 1)
        if level > self._level:
            if level < 2:
                action = f"the server refuses timestamps more than {SERVER_WINDOW:g} s off"
            elif self.correct:
                action = "outgoing timestamps are corrected by the measured offset"
            else:
                action = "timestamp correction is disabled"
            logger.warning(
                "the local clock is %s (measured from its timestamps): %s; "
                "fix the system clock (NTP)",
                describe(offset),
                action,
            )
        elif level == 0 < self._level:
            logger.info("the local clock is back within %s", describe(offset))
        self._level = level

    def stamp(self, local_time: datetime) -> datetime:
        """The time to put on an outgoing message sent at ``local_time``."""
        offset = self._offset
        if not self.correct or offset is None or abs(offset) <= CORRECT_SKEW:
            return local_time
        try:
            return local_time + timedelta(seconds=offset)
        except OverflowError:  # a server timestamp at the edge of the datetime range
            return local_time

    def explain(self, sent: str = "") -> str:
        """What a ``ServerError`` refusing a timestamp adds to its text: the clock's skew,
        or, when the clock is in sync with the server's (within :data:`WARN_SKEW`), that the
        server refused the timestamp's form, naming the form ``sent``."""
        offset = self._offset
        form = f" (sent {sent!r})" if sent else ""
        if offset is None:
            return (
                "the client's clock may be off (check the system clock, NTP), or the server "
                f"refused the timestamp's form{form}"
            )
        if abs(offset) < WARN_SKEW:
            return (
                f"the server refused the timestamp's form, not its time{form}: the local "
                f"clock is within {seconds(offset)} s of the server's"
            )
        if self.correct and abs(offset) > CORRECT_SKEW:
            hint = "outgoing timestamps were corrected; the clock may have jumped since"
        else:
            hint = "fix the system clock (NTP)"
        return f"your clock is {seconds(offset)} s off ({describe(offset)}); {hint}"
