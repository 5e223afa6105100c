"""How a lost connection is re-opened: the delays between attempts and what is retried.

The policy is a value passed to the client (``reconnect_policy=``), never module state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import timezone

import attrs

from ._spec import CLOSE_POLICY_VIOLATION
from .exceptions import (
    AuthenticationError,
    ConnectionClosed,
    HandshakeError,
    ProtocolError,
    RateLimitError,
    ServiceUnavailableError,
)

__all__ = ["ReconnectPolicy", "parse_retry_after"]


def _random() -> float:
    """``random.random()``, the module imported at the first backoff, not with c2sync."""
    import random

    return random.random()


@attrs.frozen
class ReconnectPolicy:
    """Capped exponential backoff with full jitter (the API contract, "Reconnecting").

    Attempt ``n`` (from 0) waits a uniformly random time in ``[0, min(maximum,
    initial * factor ** n)]``; an error may demand a longer wait (:meth:`minimum_delay`).

    Attributes:
        initial: the first attempt's upper bound, seconds.
        maximum: the cap on any backoff, seconds.
        factor: growth per attempt.
        policy_violation_delay: the least wait after a close with 1008 (the protocol,
            section 2: the connection-limit race).
        overload_delay: the least wait after 429/503 without ``Retry-After``.
        max_retry_after: the most a ``Retry-After`` may impose, seconds.
        max_attempts: give up after this many failed attempts in a row (None: never).
        random: a source of floats in [0, 1) (tests inject a fixed one).
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    policy_violation_delay: float = 2.0
    overload_delay: float = 5.0
    max_retry_after: float = 300.0
    max_attempts: int | None = None
    random: Callable[[], float] = attrs.field(default=_random, repr=False)

    def delays(self) -> Iterator[float]:
        """The backoff before each attempt, forever (or ``max_attempts`` of them)."""
        attempt = 0
        bound = min(self.maximum, self.initial)
        while self.max_attempts is None or attempt < self.max_attempts:
            yield self.random() * bound
            # Grown step by step and capped, never factor ** attempt: that overflows a
            # float after ~1000 attempts of a client that retries forever.
            bound = min(self.maximum, bound * self.factor)
            attempt += 1

    def is_retryable(self, error: BaseException) -> bool:
        """Whether a connection that failed with ``error`` should be tried again.

        A 401 is final (the protocol, section 2); so is any other 4xx refusal but 408/429,
        since asking again will not change the answer.
        """
        import ssl  # here, not at import: only a wss:// connection needs it

        if isinstance(error, (AuthenticationError, ssl.SSLCertVerificationError)):
            return False  # asking again will not change the key's or the certificate's fate
        if isinstance(error, HandshakeError):
            return error.status >= 500 or error.status in (408, 429)
        return isinstance(error, (ConnectionClosed, OSError, TimeoutError, ProtocolError))

    def minimum_delay(self, error: BaseException) -> float:
        """The least wait before the next attempt that ``error`` demands.

        1008 waits at least ``policy_violation_delay``; 429/503 honour ``Retry-After``
        (capped at ``max_retry_after``), else ``overload_delay``.
        """
        if isinstance(error, ConnectionClosed) and error.code == CLOSE_POLICY_VIOLATION:
            return self.policy_violation_delay
        if isinstance(error, (RateLimitError, ServiceUnavailableError)):
            retry_after = getattr(error, "retry_after", None)
            if retry_after is None:
                retry_after = parse_retry_after(error.headers.get("retry-after"))
            if retry_after is not None:
                return min(retry_after, self.max_retry_after)
            return self.overload_delay
        return 0.0


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Read a ``Retry-After`` header: seconds, or an HTTP date.

    Args:
        value: the header's value (None when absent).
        now: the current POSIX time for the date form (None: the real one).

    Returns:
        Seconds to wait (never negative), or None when absent or unreadable: garbage, a
        date or number out of range, infinity or NaN are None, never an exception (a
        server's header must not turn a retryable 429 into a crash).
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime  # the date form is rare: not at import

        try:
            when = parsedate_to_datetime(value)
            if when.tzinfo is None:  # "-0000": UTC with no source zone (RFC 5322 3.3)
                when = when.replace(tzinfo=timezone.utc)
            if now is None:
                import time

                now = time.time()
            seconds = when.timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError, OSError):
            return None
    if not math.isfinite(seconds):  # "inf", "1e999", "nan"
        return None
    return max(0.0, seconds)
