"""The reconnect policy: backoff delays with injected randomness, which failures are retried,
and how long 1008/429/503 make the client wait (docs/api-contract.md "Reconnecting")."""

from __future__ import annotations

import itertools
import ssl
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import c2sync.reconnect as reconnect_module
from c2sync import (
    AuthenticationError,
    ConnectionClosed,
    HandshakeError,
    HeartbeatTimeout,
    ProtocolError,
    QueueOverflow,
    RateLimitError,
    ReconnectPolicy,
    ServerError,
    ServiceUnavailableError,
    SubscriptionLimitError,
)
from c2sync.reconnect import parse_retry_after

NOW = 1_700_000_000.0  # a fixed POSIX time for HTTP-date Retry-After


def first(policy: ReconnectPolicy, n: int) -> list[float]:
    return list(itertools.islice(policy.delays(), n))


# Backoff -------------------------------------------------------------------------------


def test_delays_double_from_half_a_second_to_the_cap() -> None:
    """With the top of the jitter range the waits are 0.5, 1, 2, 4 ... capped at 30 s."""
    policy = ReconnectPolicy(random=lambda: 1.0)
    assert first(policy, 9) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_delays_are_full_jitter() -> None:
    """The random draw scales the whole bound (full jitter): 0.5 halves every wait, 0 gives 0."""
    assert first(ReconnectPolicy(random=lambda: 0.5), 8) == [0.25, 0.5, 1, 2, 4, 8, 15, 15]
    assert first(ReconnectPolicy(random=lambda: 0.0), 4) == [0.0, 0.0, 0.0, 0.0]


def test_delays_draw_once_per_attempt() -> None:
    """Each attempt uses a fresh random draw, in order."""
    draws = iter([0.1, 0.9, 0.5])
    policy = ReconnectPolicy(random=lambda: next(draws))
    assert first(policy, 3) == pytest.approx([0.05, 0.9, 1.0])


def test_delays_use_the_policy_settings() -> None:
    """initial, factor and maximum shape the sequence."""
    policy = ReconnectPolicy(initial=1.0, factor=3.0, maximum=10.0, random=lambda: 1.0)
    assert first(policy, 5) == [1.0, 3.0, 9.0, 10.0, 10.0]


def test_max_attempts_ends_the_iterator() -> None:
    """max_attempts bounds how many delays (attempts) there are."""
    assert list(ReconnectPolicy(max_attempts=3, random=lambda: 1.0).delays()) == [0.5, 1.0, 2.0]
    assert list(ReconnectPolicy(max_attempts=0).delays()) == []


def test_without_max_attempts_it_goes_on() -> None:
    """The default policy never gives up by itself."""
    assert len(first(ReconnectPolicy(random=lambda: 1.0), 200)) == 200


def test_each_delays_call_starts_over() -> None:
    """A new outage starts the backoff again from the first delay."""
    policy = ReconnectPolicy(random=lambda: 1.0)
    first(policy, 6)
    assert first(policy, 2) == [0.5, 1.0]


@given(st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
@settings(max_examples=50, deadline=None)
def test_delays_stay_within_zero_and_the_cap(draw: float) -> None:
    """Whatever the draw, every delay lies in [0, maximum]."""
    for delay in first(ReconnectPolicy(random=lambda: draw), 40):
        assert 0.0 <= delay <= 30.0


def test_default_random_is_real_jitter() -> None:
    """The default policy jitters: delays are not all the same bound."""
    delays = first(ReconnectPolicy(), 40)
    assert all(0.0 <= d <= 30.0 for d in delays)
    assert len(set(delays)) > 1


def test_delays_survive_a_very_long_outage() -> None:
    """After thousands of failed attempts the delay is still the cap, not an OverflowError."""
    delays = first(ReconnectPolicy(random=lambda: 1.0), 1100)
    assert delays[-1] == 30.0


# What is retried -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        RateLimitError(429),
        ServiceUnavailableError(503),
        HandshakeError(500),
        HandshakeError(502),
        HandshakeError(504),
        HandshakeError(408),
        ConnectionClosed(1006),
        ConnectionClosed(1008),
        ConnectionClosed(None),
        HeartbeatTimeout(40.0),
        OSError("reset"),
        ConnectionRefusedError(),
        ConnectionResetError(),
        TimeoutError(),
        ProtocolError("first frame was a heartbeat"),
    ],
    ids=repr,
)
def test_transient_failures_are_retried(error: BaseException) -> None:
    """429, 503, other 5xx, lost connections, socket errors, timeouts and protocol errors retry."""
    assert ReconnectPolicy().is_retryable(error)


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError(401),
        HandshakeError(401),
        HandshakeError(400),
        HandshakeError(403),
        HandshakeError(404),
        ValueError("bad argument"),
        SubscriptionLimitError("too many"),
        ServerError("FORBIDDEN", "no"),
        QueueOverflow(1, {}),
        KeyboardInterrupt(),
    ],
    ids=repr,
)
def test_final_failures_are_not_retried(error: BaseException) -> None:
    """401 is never retried; nor are 400/403/404 or the caller's own mistakes."""
    assert not ReconnectPolicy().is_retryable(error)


# Minimum delays ------------------------------------------------------------------------


def test_policy_violation_waits_at_least_two_seconds() -> None:
    """After a 1008 close (connection-limit race) the next attempt waits at least 2 s."""
    policy = ReconnectPolicy(random=lambda: 0.0)
    assert policy.minimum_delay(ConnectionClosed(1008, "limit")) >= 2.0
    assert ReconnectPolicy(policy_violation_delay=3.5).minimum_delay(ConnectionClosed(1008)) == 3.5


@pytest.mark.parametrize(
    "error",
    [
        ConnectionClosed(1000),
        ConnectionClosed(1006),
        ConnectionClosed(None),
        HeartbeatTimeout(40.0),
        OSError(),
        HandshakeError(500),
    ],
    ids=repr,
)
def test_ordinary_losses_impose_no_minimum(error: BaseException) -> None:
    """Other losses only follow the backoff."""
    assert ReconnectPolicy().minimum_delay(error) == 0.0


def test_rate_limit_retry_after_attribute() -> None:
    """A 429 with retry_after 7 waits 7 s."""
    assert ReconnectPolicy().minimum_delay(RateLimitError(429, retry_after=7)) == 7


def test_rate_limit_retry_after_header_seconds() -> None:
    """A 429 carrying only a Retry-After header in seconds honours the header."""
    error = RateLimitError(429, {"Retry-After": "12"})
    assert ReconnectPolicy().minimum_delay(error) == 12.0


def test_retry_after_http_date(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Retry-After given as an HTTP date waits until that date."""

    def at_now(value: str | None, now: float | None = None) -> float | None:
        return parse_retry_after(value, NOW)

    monkeypatch.setattr(reconnect_module, "parse_retry_after", at_now)
    error = ServiceUnavailableError(503, {"Retry-After": formatdate(NOW + 90, usegmt=True)})
    assert ReconnectPolicy().minimum_delay(error) == pytest.approx(90.0)


def test_retry_after_is_capped() -> None:
    """Retry-After never imposes more than 300 s (or max_retry_after)."""
    policy = ReconnectPolicy()
    assert policy.minimum_delay(RateLimitError(429, retry_after=10_000)) == 300.0
    far = formatdate(4_000_000_000, usegmt=True)  # year 2096
    assert policy.minimum_delay(ServiceUnavailableError(503, {"Retry-After": far})) == 300.0
    assert (
        ReconnectPolicy(max_retry_after=60).minimum_delay(RateLimitError(429, retry_after=61)) == 60
    )


def test_overload_without_retry_after_uses_overload_delay() -> None:
    """429/503 without Retry-After wait overload_delay, longer than the first backoff."""
    policy = ReconnectPolicy()
    assert policy.minimum_delay(ServiceUnavailableError(503)) == policy.overload_delay
    assert policy.minimum_delay(RateLimitError(429)) == policy.overload_delay
    assert policy.overload_delay > policy.initial
    assert ReconnectPolicy(overload_delay=9).minimum_delay(ServiceUnavailableError(503)) == 9


def test_unreadable_retry_after_falls_back_to_overload_delay() -> None:
    """A garbage Retry-After header is ignored in favour of overload_delay."""
    error = ServiceUnavailableError(503, {"Retry-After": "soon-ish"})
    assert ReconnectPolicy().minimum_delay(error) == ReconnectPolicy().overload_delay


# parse_retry_after ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), (" 7 ", 7.0), ("0", 0.0), ("1.5", 1.5), ("120", 120.0), ("-3", 0.0)],
)
def test_parse_retry_after_seconds(value: str, expected: float) -> None:
    """Seconds read as a float, never negative."""
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    """An HTTP date gives the seconds from now until then; a past one gives 0."""
    assert parse_retry_after(formatdate(NOW + 30, usegmt=True), now=NOW) == pytest.approx(30.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now=NOW) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(NOW - 500, usegmt=True), now=NOW) == 0.0


@pytest.mark.parametrize(
    "value", [None, "", "soon", "nan", "NaN", "Mon, 99 Foo 2024", "7s", "0x10"]
)
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    """An absent or unreadable Retry-After is None."""
    assert parse_retry_after(value, now=NOW) is None


@given(st.text(max_size=40))
@settings(max_examples=100, deadline=None)
def test_parse_retry_after_never_raises(value: str) -> None:
    """Any header text gives None or a non-negative number, never an exception."""
    result = parse_retry_after(value, now=NOW)
    assert result is None or result >= 0.0


def test_certificate_failures_are_not_retried() -> None:
    """A certificate that fails verification ends the client instead of a retry loop."""
    assert not ReconnectPolicy().is_retryable(ssl.SSLCertVerificationError("bad cert"))
    assert ReconnectPolicy().is_retryable(ConnectionResetError())


def test_parse_retry_after_minus_zero_date_is_utc() -> None:
    """A Retry-After date in the '-0000' form counts as UTC, whatever the local zone."""
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 -0000", now=40.0) == 60.0
