"""Shared fixtures: an emulator with scaled-down heartbeats and clients that always close."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import c2sync
from c2sync.emulator import Emulator

from .hostile import Conn, RawServer

API_KEY = "sk-test-5f3c9a1e7b2d4c6a8e0f"  # distinctive, so a leak is found by search
STRATEGY = 12345678
OTHER_STRATEGY = 87654321
FORBIDDEN_STRATEGY = 55555555
# Heartbeats scaled down from 30 s + 10 s so liveness tests take a second, not a minute.
# The grace stays generous: the emulator closes a client whose ack is more than
# INTERVAL + GRACE late, and on a loaded CI machine a short CPU stall of the client's
# reader or of the emulator's loop must not turn into a reconnect nobody asked for (tests
# count reconnects exactly). A test that wants the emulator to close a silent client
# soon builds its own with make_emulator(heartbeat_grace=...).
HEARTBEAT_INTERVAL = 0.2
HEARTBEAT_GRACE = 2.0
WAIT = 10.0  # the bound on any wait in a test; never reached when the code is right

MakeEmulator = Callable[..., Emulator]


@pytest.fixture
def make_emulator() -> Iterator[MakeEmulator]:
    """Start emulators with the test key, both strategies and the scaled heartbeats;
    keyword arguments override any of them. Every one is closed when the test ends."""
    emulators: list[Emulator] = []

    def make(**overrides: Any) -> Emulator:
        options: dict[str, Any] = {
            "api_keys": {API_KEY},
            "strategies": {STRATEGY, OTHER_STRATEGY},
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "heartbeat_grace": HEARTBEAT_GRACE,
        }
        options.update(overrides)
        emulator = Emulator(**options)
        emulators.append(emulator)
        return emulator.start()

    yield make
    for emulator in emulators:
        emulator.close()


@pytest.fixture
def emulator(make_emulator: MakeEmulator) -> Emulator:
    return make_emulator()


MakeServer = Callable[..., RawServer]


@pytest.fixture
def make_server() -> Iterator[MakeServer]:
    """Raw-socket servers (tests/hostile.py) for one test, each closed after it."""
    servers: list[RawServer] = []

    def make(handler: Callable[[Conn], None], **options: Any) -> RawServer:
        server = RawServer(handler, **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


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


@pytest.fixture
def publishing(emulator: Emulator) -> Iterator[Emulator]:
    """Signals and position updates every 0.1 s for STRATEGY while the test runs."""
    stop = threading.Event()

    def publish() -> None:
        while not stop.wait(0.1):
            try:
                emulator.publish_signal(STRATEGY)
                emulator.publish_positions(STRATEGY)
            except (RuntimeError, TimeoutError):
                return  # the emulator is closing

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    yield emulator
    stop.set()
    thread.join(5)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of this test session (tests/postgres.py); skipped where none can
    start, except in CI."""
    from .postgres import running_server

    with running_server() as url:
        yield url


RUN_BOUND = 30.0  # seconds any documented example may run; never reached when it works


def run_example(code: str, url: str, cwd: Path, where: str) -> subprocess.CompletedProcess[str]:
    """Run a documented Python example as a user would, given only C2_API_KEY and
    C2_WS_URL; it must succeed without a traceback and never print the key."""
    env = dict(os.environ, C2_API_KEY=API_KEY, C2_WS_URL=url, PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_BOUND,
    )
    assert result.returncode == 0, f"{where}:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert API_KEY not in result.stdout + result.stderr
    return result


def c2sync_threads() -> list[threading.Thread]:
    """The threads c2sync clients start that are still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("c2sync-")]


def client_sockets(emulator: Emulator) -> list[object]:
    """This process's TCP sockets connected to the emulator's port (the client side);
    TIME_WAIT is the kernel's, not ours."""
    port = int(emulator.url.rsplit(":", 1)[1].split("/")[0])
    return [
        c
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status != psutil.CONN_TIME_WAIT
    ]


class TracedPeak:
    """The peak of Python's traced allocations over a ``with`` block, above what was
    allocated when it began (``tracemalloc``): what the code under test held at its worst,
    undisturbed by the allocator's arenas, other processes or a busy machine, as a
    process's RSS is not. Threads still running from an earlier test are traced too;
    bounds leave room for that (kilobytes, not the megabytes a leak makes)."""

    def __init__(self) -> None:
        self.growth = 0

    def __enter__(self) -> TracedPeak:
        import tracemalloc

        self._started = not tracemalloc.is_tracing()
        if self._started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        self._before = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc_info: object) -> None:
        import tracemalloc

        self.growth = tracemalloc.get_traced_memory()[1] - self._before
        if self._started:
            tracemalloc.stop()
