"""Shared fixtures: an emulator with scaled-down heartbeats and clients that always close."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import c2sync
from c2sync.emulator import Emulator

API_KEY = "sk-test-5f3c9a1e7b2d4c6a8e0f"  # distinctive, so a leak is found by search
STRATEGY = 12345678
OTHER_STRATEGY = 87654321
FORBIDDEN_STRATEGY = 55555555
# Heartbeats scaled down from 30 s + 10 s so liveness tests take a second, not a minute.
HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_GRACE = 0.4
WAIT = 10.0  # the bound on any wait in a test; never reached when the code is right


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(
        api_keys={API_KEY},
        strategies={STRATEGY, OTHER_STRATEGY},
        heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_grace=HEARTBEAT_GRACE,
    ) as emu:
        yield emu


@pytest.fixture
def make_client(emulator: Emulator) -> Iterator[Callable[..., c2sync.Client]]:
    """Connect clients to the emulator; every one is closed when the test ends."""
    clients: list[c2sync.Client] = []

    def make(**options: Any) -> c2sync.Client:
        options.setdefault("url", emulator.url)
        options.setdefault("heartbeat_timeout", 2.0)
        options.setdefault("connect_timeout", 5.0)
        client = c2sync.connect(options.pop("api_key", API_KEY), **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., c2sync.Client]) -> c2sync.Client:
    return make_client()


def c2sync_threads() -> list[threading.Thread]:
    """The threads c2sync clients start that are still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("c2sync-")]
