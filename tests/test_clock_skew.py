"""A client on a machine whose clock is off: against an emulator whose clock runs ahead (its
timestamps and its one-minute window both use its own clock), subscribing and heartbeat
acks keep working, the skew is measured and named (docs/api-contract.md "Clocks and
proxies"); with the correction disabled the refusal names the clock."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
import websocket

import c2sync
from c2sync._options import seams
from c2sync.codec import parse_timestamp
from c2sync.emulator import Emulator

from .conftest import API_KEY, STRATEGY, WAIT, MakeEmulator

ACKED = 3  # heartbeat acks the emulator must accept


def connect(emulator: Emulator, **options: object) -> c2sync.Client:
    return c2sync.connect(
        API_KEY, url=emulator.url, heartbeat_timeout=2.0, connect_timeout=5.0, **options
    )


def acked(emulator: Emulator) -> int:
    return sum(1 for h in emulator.connections[0].heartbeats if h.acked_at is not None)


def stamps_off(emulator: Emulator, offset: float) -> list[float]:
    """How far each client stamp was from the emulator's clock when it arrived, seconds."""
    server_now = datetime.now(timezone.utc) + timedelta(seconds=offset)
    mono_now = time.monotonic()
    return [
        abs(
            (
                server_now
                - timedelta(seconds=mono_now - f.at)
                - parse_timestamp(f.message["timestamp"])
            ).total_seconds()
        )
        for f in emulator.connections[0].frames
    ]


@pytest.mark.parametrize("offset", [45.0, 300.0])
def test_a_client_whose_clock_is_behind_keeps_working(
    make_emulator: MakeEmulator, caplog: pytest.LogCaptureFixture, offset: float
) -> None:
    """Subscribe works, acks are accepted and the warning names the skew."""
    caplog.set_level(logging.WARNING, logger="c2sync")
    emulator = make_emulator(clock_offset=offset)
    with connect(emulator) as client:
        ack = client.subscribe(c2sync.SIGNAL, STRATEGY)
        assert ack.strategy_id == STRATEGY
        emulator.wait_for(lambda: acked(emulator) >= ACKED, WAIT)
        assert client.stats.clock_skew == pytest.approx(offset, abs=2.0)
        with pytest.raises(TimeoutError):  # no error refused an ack
            client.recv(timeout=0.0)
        # Every stamp (the request and the acks) was on the server's time, not the local one.
        assert max(stamps_off(emulator, offset)) < 5.0  # uncorrected: 45 s or more
        assert [r.error for r in emulator.connections[0].subscription_requests] == [None]
    skew_warnings = [
        r.getMessage() for r in caplog.records
        if r.levelno == logging.WARNING and "behind the server's" in r.getMessage()
    ]
    assert len(skew_warnings) == 1, skew_warnings  # once, not at every heartbeat
    assert f"{offset:.0f} s behind the server's" in skew_warnings[0]


def test_a_clock_ahead_of_the_server_is_corrected_too(make_emulator: MakeEmulator) -> None:
    """A local clock 5 minutes fast is corrected the other way."""
    emulator = make_emulator(clock_offset=-300.0)
    with connect(emulator) as client:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        emulator.wait_for(lambda: acked(emulator) >= ACKED, WAIT)
        assert client.stats.clock_skew == pytest.approx(-300.0, abs=2.0)


def test_without_the_correction_the_subscribe_fails_naming_the_clock(
    make_emulator: MakeEmulator,
) -> None:
    """The test seam proves what the correction does: the server refuses the timestamp,
    and the ServerError says how far off the clock is."""
    emulator = make_emulator(clock_offset=300.0)
    with seams(correct_clock=False):
        client = connect(emulator)
    with client, pytest.raises(c2sync.ServerError) as caught:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
    error = caught.value
    assert error.code == "INVALID_PARAMETER" and error.field == "Timestamp"
    assert "your clock is 300 s off" in str(error)


def test_stats_clock_skew_is_none_before_connecting_and_near_zero_in_sync(
    make_emulator: MakeEmulator,
) -> None:
    """stats.clock_skew: None before the first measure, about 0 on a synchronised machine."""
    emulator = make_emulator()
    client = c2sync.Client(API_KEY, url=emulator.url)
    assert client.stats.clock_skew is None
    with client.connect():
        value = client.stats.clock_skew
        assert value is not None and abs(value) < 2.0


def test_the_emulator_clock_offset_moves_its_stamps_and_its_window(
    make_emulator: MakeEmulator,
) -> None:
    """Emulator(clock_offset=) stamps with its own clock and judges client stamps by it."""
    emulator = make_emulator(clock_offset=300.0)
    ws = websocket.create_connection(
        emulator.url, header=[f"Authorization: Bearer {API_KEY}"], timeout=WAIT
    )
    try:
        connected = json.loads(ws.recv())
        local = datetime.now(timezone.utc)
        ahead = (parse_timestamp(connected["timestamp"]) - local).total_seconds()
        assert ahead == pytest.approx(300.0, abs=5.0)
        ws.send(json.dumps({"msg_type": "heartbeat.ack", "timestamp": local.isoformat()}))
        while True:
            answer = json.loads(ws.recv())
            if answer["msg_type"] == "error":
                break
        assert answer["payload"]["field"] == "Timestamp"
    finally:
        ws.close()
