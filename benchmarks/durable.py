"""Signals per second through ``store.apply`` (docs/durable.md), on SQLite and PostgreSQL.

``python benchmarks/durable.py [--signals N] [--rounds R] [--postgres URL]``

Two measurements per store, each the median of R rounds:

- ``apply``: N signals, built in memory, each through ``store.apply(signal, fn)`` with
  ``fn`` inserting one row: one transaction (and for SQLite one fsync) per signal;
- ``recv+apply``: N signals published by the emulator to a client subscribed with the
  store as its checkpoint, read with ``recv()`` and applied one by one, from the first
  ``recv()`` to the last; beside it ``recv`` alone (no checkpoint): the plain path.

Without ``--postgres`` a throwaway server is started as the tests do (tests/postgres.py:
initdb + pg_ctl; its fsync is off, so it measures the client side and the server's work,
not the disk); ``--no-postgres`` skips it. No target: the numbers are in
benchmarks/README.md "Durable processing".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import c2sync  # noqa: E402
from c2sync.emulator import Emulator  # noqa: E402

KEY = "bench-key"
STRATEGY = 12345678

Store = c2sync.SQLCheckpoint


def _signal(seq_id: int) -> c2sync.Signal:
    raw = {"msg_type": "strategy.signal", "seq_id": seq_id, "payload": {"n": seq_id}}
    return c2sync.Signal(msg_type="strategy.signal", seq_id=seq_id, strategy_id=STRATEGY, raw=raw)


def _prepare(store: Store) -> None:
    store.transaction(
        lambda db: store.execute(db, "CREATE TABLE IF NOT EXISTS bench_effects (seq_id BIGINT)")
    )


def _effect(store: Store, seq_id: int) -> Callable[[Any], None]:
    return lambda db: store.execute(db, "INSERT INTO bench_effects (seq_id) VALUES (?)", seq_id)


def apply_only(make: Callable[[], Store], n: int) -> float:
    store = make()
    _prepare(store)
    signals = [_signal(i) for i in range(1, n + 1)]
    started = time.perf_counter()
    for signal in signals:
        store.apply(signal, _effect(store, signal.seq_id))
    elapsed = time.perf_counter() - started
    store.close()
    return n / elapsed


def through_client(make: Callable[[], Store] | None, n: int) -> float:
    store = make() if make is not None else None
    if store is not None:
        _prepare(store)
    emulator = Emulator(api_keys={KEY}, strategies={STRATEGY}).start()
    try:
        with c2sync.connect(KEY, url=emulator.url, checkpoint=store, max_queue=n + 10) as client:
            client.subscribe(c2sync.SIGNAL, STRATEGY)
            for _ in range(n):
                emulator.publish_signal(STRATEGY)
            first = client.recv(timeout=30)
            started = time.perf_counter()
            message = first
            for _ in range(n - 1):
                if store is not None:
                    assert isinstance(message, c2sync.Signal)
                    store.apply(message, _effect(store, message.seq_id))
                message = client.recv(timeout=30)
            if store is not None:
                assert isinstance(message, c2sync.Signal)
                store.apply(message, _effect(store, message.seq_id))
            elapsed = time.perf_counter() - started
    finally:
        emulator.close()
        if store is not None:
            store.close()
    return (n - 1) / elapsed


@contextlib.contextmanager
def _postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.postgres import running_server

    with running_server() as started:
        yield started


def _fresh_sqlite(directory: str) -> Callable[[], Store]:
    counter = [0]

    def make() -> Store:
        counter[0] += 1
        return c2sync.SQLiteCheckpoint(os.path.join(directory, f"bench{counter[0]}.db"))

    return make


def _fresh_postgres(url: str) -> Callable[[], Store]:
    import psycopg

    def make() -> Store:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("DROP TABLE IF EXISTS bench_effects, c2sync_checkpoint")
        return c2sync.SQLCheckpoint(lambda: psycopg.connect(url))

    return make


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", metavar="URL", help="an existing server (a scratch db)")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    n, rounds = args.signals, args.rounds

    def median(measure: Callable[[], float]) -> str:
        return f"{statistics.median(measure() for _ in range(rounds)):,.0f}"

    rows: list[tuple[str, str, str]] = []
    rows.append(("none (plain recv)", "-", median(lambda: through_client(None, n))))
    with tempfile.TemporaryDirectory() as directory:
        make = _fresh_sqlite(directory)
        rows.append(("SQLite", median(lambda: apply_only(make, n)),
                     median(lambda: through_client(make, n))))
    if not args.no_postgres:
        with _postgres(args.postgres) as url:
            make = _fresh_postgres(url)
            rows.append(("PostgreSQL", median(lambda: apply_only(make, n)),
                         median(lambda: through_client(make, n))))
    print(f"{n} signals, median of {rounds} rounds; signals per second")
    print("| store | apply | recv+apply |")
    print("|---|---:|---:|")
    for store, apply, full in rows:
        print(f"| {store} | {apply} | {full} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
