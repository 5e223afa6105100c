"""Clock skew in the pure core: measured from the server's timestamps, warned about, and
corrected in what the client sends (docs/api-contract.md "Clocks and proxies"). Driven
synchronously with a fake wall clock: no sockets, threads or sleeps."""

from __future__ import annotations

import itertools
import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from c2sync import SIGNAL, ServerError
from c2sync._clock import ClockSkew, is_timestamp_error
from c2sync._protocol import ClientProtocol, RequestAnswered
from c2sync.codec import parse_message, parse_timestamp
from c2sync.messages import ErrorMessage

STRATEGY = 12345678
LOCAL = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


class FakeWall:
    """The local wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = LOCAL

    def __call__(self) -> datetime:
        return self.now


def frame(msg_type: str, at: datetime, **fields: Any) -> str:
    # The server's timestamps may carry fractions (the client's own never do).
    return json.dumps({"msg_type": msg_type, "id": "msg_1", "timestamp": iso(at), "v": 4,
                       **fields})


def iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def protocol(wall: FakeWall, **options: Any) -> ClientProtocol:
    ids = (f"r{n}" for n in itertools.count(1))
    return ClientProtocol(40.0, request_ids=ids, wallclock=wall, **options)


def open_with_server_ahead(skew: float, **options: Any) -> tuple[ClientProtocol, FakeWall]:
    wall = FakeWall()
    proto = protocol(wall, **options)
    proto.connection_made()
    proto.receive(frame("connection.connected", LOCAL + timedelta(seconds=skew)), 0.0)
    return proto, wall


def stamp_of(text: str) -> datetime:
    return parse_timestamp(json.loads(text)["timestamp"])


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_no_skew_is_known_before_the_first_server_timestamp() -> None:
    """stats.clock_skew is None until the server's first timestamp."""
    proto = protocol(FakeWall())
    assert proto.clock_skew is None
    proto.connection_made()
    assert proto.clock_skew is None


@pytest.mark.parametrize("skew", [45.0, 300.0, -300.0, 2.5])
def test_connected_measures_the_skew(skew: float) -> None:
    """The offset is the server's timestamp minus the local time at receipt."""
    proto, _ = open_with_server_ahead(skew)
    assert proto.clock_skew == pytest.approx(skew, abs=0.001)


def test_each_heartbeat_measures_again() -> None:
    """A clock that drifts (or is fixed by NTP) is followed at each heartbeat."""
    proto, wall = open_with_server_ahead(0.0)
    wall.now = LOCAL + timedelta(seconds=30)
    proto.receive(frame("heartbeat", LOCAL + timedelta(seconds=130)), 30.0)
    assert proto.clock_skew == pytest.approx(100.0, abs=0.001)


def test_other_messages_do_not_measure() -> None:
    """A replayed signal carries an old timestamp: it must not count as the server's clock."""
    proto, _ = open_with_server_ahead(1.0)
    old = LOCAL - timedelta(hours=5)
    proto.receive(frame("strategy.signal", old, seq_id=1, payload={"strategy_id": STRATEGY}), 1.0)
    assert proto.clock_skew == pytest.approx(1.0, abs=0.001)


@pytest.mark.parametrize("skew", [45.0, 300.0, -45.0, -300.0])
def test_beyond_30_s_the_heartbeat_ack_is_stamped_with_the_server_time(skew: float) -> None:
    """A drifting clock keeps its acks inside the server's one-minute window."""
    proto, wall = open_with_server_ahead(skew)
    wall.now = LOCAL + timedelta(seconds=30)
    proto.receive(frame("heartbeat", wall.now + timedelta(seconds=skew)), 30.0)
    (ack,) = proto.data_to_send()
    assert stamp_of(ack) == wall.now + timedelta(seconds=skew)


@pytest.mark.parametrize("skew", [45.0, 300.0])
def test_beyond_30_s_the_subscription_request_is_stamped_with_the_server_time(
    skew: float,
) -> None:
    """Subscribing works from a machine whose clock is minutes off."""
    proto, _ = open_with_server_ahead(skew)
    _, request = proto.request("subscribe", SIGNAL, STRATEGY)
    assert stamp_of(request) == LOCAL + timedelta(seconds=skew)


@pytest.mark.parametrize("skew", [0.0, 5.0, 29.0, -29.0])
def test_within_30_s_the_local_time_is_sent(skew: float) -> None:
    """A clock that is only a little off sends its own time (the server tolerates it)."""
    proto, _ = open_with_server_ahead(skew)
    _, request = proto.request("subscribe", SIGNAL, STRATEGY)
    assert stamp_of(request) == LOCAL


def test_the_correction_can_be_disabled_for_tests() -> None:
    """correct_clock=False sends the local time whatever the skew (the test seam)."""
    proto, _ = open_with_server_ahead(300.0, correct_clock=False)
    _, request = proto.request("subscribe", SIGNAL, STRATEGY)
    assert stamp_of(request) == LOCAL
    assert proto.clock_skew == pytest.approx(300.0, abs=0.001)


def test_a_skew_beyond_5_s_warns_once_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    """The WARNING names the skew, once per crossing, not at every heartbeat."""
    caplog.set_level(logging.INFO, logger="c2sync")
    proto, wall = open_with_server_ahead(12.0)
    for n in range(1, 5):
        wall.now = LOCAL + timedelta(seconds=30 * n)
        proto.receive(frame("heartbeat", wall.now + timedelta(seconds=12)), 30.0 * n)
    (warning,) = warnings(caplog)
    assert "12 s behind the server's" in warning
    # Back in sync (NTP), then off again: a new crossing, a new warning.
    proto.receive(frame("heartbeat", wall.now), 200.0)
    proto.receive(frame("heartbeat", wall.now - timedelta(seconds=8)), 230.0)
    assert len(warnings(caplog)) == 2
    assert "8 s ahead of the server's" in warnings(caplog)[1]


def test_crossing_30_s_warns_that_timestamps_are_corrected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past 30 s the warning says what the client does about it, once."""
    caplog.set_level(logging.WARNING, logger="c2sync")
    proto, wall = open_with_server_ahead(10.0)
    for n, skew in enumerate([45.0, 29.0, 31.0, 300.0], start=1):
        proto.receive(frame("heartbeat", wall.now + timedelta(seconds=skew)), 30.0 * n)
    first, second = warnings(caplog)
    assert "10 s behind" in first
    assert "45 s behind" in second and "corrected" in second


def test_a_skew_within_5_s_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    """A machine with a sane clock hears nothing."""
    caplog.set_level(logging.DEBUG, logger="c2sync")
    proto, wall = open_with_server_ahead(4.9)
    proto.receive(frame("heartbeat", wall.now - timedelta(seconds=4.9)), 30.0)
    assert warnings(caplog) == []


def test_a_heartbeat_without_a_readable_timestamp_keeps_the_last_measure() -> None:
    """A missing timestamp measures nothing (and breaks nothing)."""
    proto, _ = open_with_server_ahead(45.0)
    events = proto.receive(json.dumps({"msg_type": "heartbeat", "id": "x", "v": 4}), 30.0)
    assert len(events) == 1
    assert proto.clock_skew == pytest.approx(45.0, abs=0.001)
    assert len(proto.data_to_send()) == 1


def test_an_absurd_server_timestamp_never_breaks_stamping() -> None:
    """A server stamping year 9999 cannot make the ack's stamp overflow."""
    proto, _ = open_with_server_ahead(0.0)
    proto.receive(frame("heartbeat", datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)), 1.0)
    (ack,) = proto.data_to_send()
    assert json.loads(ack)["msg_type"] == "heartbeat.ack"


def timestamp_refusal(request_id: str, at: datetime, **payload: Any) -> str:
    body = payload or {
        "code": "INVALID_PARAMETER",
        "field": "Timestamp",
        "message": "Timestamp is 300 s away from UTC (at most 60 s allowed)",
    }
    return frame("error", at, request_id=request_id, payload=body)


def refused(proto: ClientProtocol, at: datetime, **payload: Any) -> ServerError:
    request_id, _ = proto.request("subscribe", SIGNAL, STRATEGY)
    (answered,) = proto.receive(timestamp_refusal(request_id, at, **payload), 1.0)
    assert isinstance(answered, RequestAnswered) and answered.error is not None
    return answered.error


def test_a_refused_timestamp_names_the_measured_skew() -> None:
    """The ServerError says "your clock is N s off", keeping the server's own message."""
    proto, _ = open_with_server_ahead(300.0, correct_clock=False)
    error = refused(proto, LOCAL)
    assert "your clock is 300 s off" in str(error)
    assert "behind the server's" in str(error)
    assert error.message == "Timestamp is 300 s away from UTC (at most 60 s allowed)"
    assert error.code == "INVALID_PARAMETER" and error.field == "Timestamp"


def test_a_refused_timestamp_before_any_measure_says_the_clock_may_be_off() -> None:
    """Without a measure the error still points at the clock."""
    proto = protocol(FakeWall())
    proto.connection_made()
    proto.receive(json.dumps({"msg_type": "connection.connected", "id": "c", "v": 4}), 0.0)
    assert proto.clock_skew is None
    assert "the client's clock may be off" in str(refused(proto, LOCAL))


@pytest.mark.parametrize(
    "payload",
    [
        {"code": "invalid_parameter", "field": "timestamp", "message": "bad"},
        {"errors": [{"code": "NOT_FOUND", "field": "StrategyId", "message": "x"},
                    {"code": "INVALID_PARAMETER", "field": "TIMESTAMP", "message": "bad"}]},
    ],
)
def test_timestamp_refusals_are_recognised_case_insensitively(payload: dict[str, Any]) -> None:
    """Code and field are compared case-insensitively, flat or in payload.errors."""
    proto, _ = open_with_server_ahead(45.0, correct_clock=False)
    assert "your clock is 45 s off" in str(refused(proto, LOCAL, **payload))


@pytest.mark.parametrize(
    "payload",
    [
        {"code": "FORBIDDEN", "field": "Timestamp", "message": "x"},
        {"code": "INVALID_PARAMETER", "field": "StrategyId", "message": "x"},
        {"code": "INVALID_PARAMETER", "message": "x"},
    ],
)
def test_other_errors_say_nothing_of_the_clock(payload: dict[str, Any]) -> None:
    """Only a refused Timestamp mentions the clock."""
    proto, _ = open_with_server_ahead(300.0)
    error = refused(proto, LOCAL, **payload)
    assert "clock" not in str(error) and error.hint is None


def test_is_timestamp_error_reads_the_parsed_message() -> None:
    """The check works on what parse_message returns."""
    message = parse_message(timestamp_refusal("r1", LOCAL))
    assert isinstance(message, ErrorMessage) and is_timestamp_error(message)


def test_clock_skew_alone_measures_and_stamps() -> None:
    """ClockSkew: the last measure wins; stamps correct only beyond 30 s."""
    skew = ClockSkew()
    assert skew.stamp(LOCAL) == LOCAL and skew.offset is None
    skew.measure(None, LOCAL)
    assert skew.offset is None
    skew.measure(LOCAL + timedelta(seconds=31), LOCAL)
    assert skew.stamp(LOCAL) == LOCAL + timedelta(seconds=31)
    skew.measure(LOCAL + timedelta(seconds=30), LOCAL)
    assert skew.stamp(LOCAL) == LOCAL
