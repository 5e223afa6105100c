"""Exactly once across SIGKILLs: a consumer applying each signal with ``store.apply`` (and
``c2sync record``) is killed at seeded random moments before, inside and after the
transaction, and restarted each time; at the end every published seq_id is in its table
exactly once, in order (docs/durable.md "The crash matrix").

The consumers are forked by tests/crash_zygote.py (one interpreter start for all the runs);
the emulator publishing the stream runs in this process.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from c2sync.emulator import Emulator

from .conftest import API_KEY, STRATEGY, WAIT

ZYGOTE = Path(__file__).with_name("crash_zygote.py")
SEED = 20261207
WHERE = ("before", "inside", "after", "external")


class Zygote:
    """tests/crash_zygote.py in a subprocess: send it commands, read its children's lines."""

    def __init__(self) -> None:
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), *sys.path]))
        self.proc = subprocess.Popen(
            [sys.executable, str(ZYGOTE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # close() ends the zygote and any child with one killpg
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        self._pumps = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)

    def start(self, **command: Any) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        words = self.next().split()
        assert words[1] == "started", words
        return int(words[0])

    def next(self) -> str:
        try:
            line = self.lines.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"nothing for {WAIT} s; stderr: {''.join(self.errors)}") from None
        assert line is not None, "".join(self.errors) or "the zygote ended"
        return line

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the zygote and a child left running
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(WAIT)
        finally:
            for pump in self._pumps:
                pump.join(WAIT)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


class Run:
    """One child's life: the seq_ids it reported and how it ended."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid = zygote, pid
        self.reported: list[tuple[str, int]] = []
        self.status: int | None = None
        self.record_status: int | None = None  # what c2sync.cli.main returned

    def wait_subscribed(self) -> None:
        while True:
            words = self.zygote.next().split()
            assert int(words[0]) == self.pid and words[1] != "exit", words
            if words[1] == "subscribed":
                return

    def next_report(self) -> tuple[str, int] | None:
        """The child's next ``applied``/``skipped`` line; None once it has exited."""
        while self.status is None:
            words = self.zygote.next().split()
            assert int(words[0]) == self.pid, words
            if words[1] == "exit":
                self.status = int(words[2])
            elif words[1] == "record-exit":
                self.record_status = int(words[2])
            elif words[1] in ("applied", "skipped"):
                self.reported.append((words[1], int(words[2])))
                return self.reported[-1]
        return None

    def until_exit(self) -> int:
        while self.next_report() is not None:
            pass
        assert self.status is not None
        return self.status


def crash_and_restart(
    zygote: Zygote, emulator: Emulator, mode: str, db: str, total: int, kills: int
) -> Counter[str]:
    """Run consumers until ``kills`` of them were SIGKILLed, then one to the end."""
    rng = random.Random(f"{SEED}-{mode}-{db.partition(':')[0]}")
    published = 0

    def publish(n: int) -> None:
        nonlocal published
        for _ in range(min(n, total - published)):
            published = emulator.publish_signal(STRATEGY)

    seen: Counter[str] = Counter()
    skipped = 0
    base = {"mode": mode, "db": db, "key": API_KEY, "url": emulator.url, "strategy": STRATEGY}
    base.update(total=total, rewind=3)
    for i in range(kills):
        where = WHERE[i % len(WHERE)]
        kill_at = rng.randint(1, 3)
        if i == 0:
            # The first run commits signal 1 before it dies: from then on every run has
            # a checkpoint to resume from (a first subscription gets only what comes after
            # its ack, docs/protocol.md section 7).
            where, kill_at = "after", 1
        run = Run(zygote, zygote.start(**base, kill_at=kill_at, kill_where=where))
        if i == 0:
            run.wait_subscribed()
            publish(total // 2)  # the rest goes out while the consumers run
        publish(2)
        if where == "external":
            # SIGKILL from outside after a random number of its signals (0: while it
            # starts, connects or replays): inside or between transactions, wherever it is.
            for _ in range(rng.randint(0, 3)):
                assert run.next_report() is not None, "".join(zygote.errors)
            os.kill(run.pid, signal.SIGKILL)
        status = run.until_exit()
        assert status == -signal.SIGKILL, (status, "".join(zygote.errors))
        skipped += sum(kind == "skipped" for kind, _ in run.reported)
        seen[where] += 1
    publish(total)
    last = Run(zygote, zygote.start(**base, kill_at=0, kill_where="none"))
    while (report := last.next_report()) is not None and report[1] < total:
        pass
    if mode == "record":
        os.kill(last.pid, signal.SIGINT)  # Ctrl-C: commits, closes, exit 0
    status = last.until_exit()
    assert status == 0, "".join(zygote.errors)
    skipped += sum(kind == "skipped" for kind, _ in last.reported)
    if mode == "apply":  # the rewound replays brought signals already applied: skipped
        assert skipped >= KILLS, skipped
    if mode == "record":
        assert last.record_status == 0, "".join(zygote.errors)
    return seen


@pytest.fixture
def zygote() -> Any:
    z = Zygote()
    yield z
    z.close()


def _sqlite_column(path: Path, sql: str) -> list[int]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute(sql)]


KILLS = 52
TOTAL = 200


def test_apply_is_exactly_once_across_sigkills_sqlite(
    emulator: Emulator, zygote: Zygote, tmp_path: Path
) -> None:
    """52 SIGKILLs before/inside/after apply's transaction: each effect exactly once (SQLite)."""
    path = tmp_path / "app.db"
    seen = crash_and_restart(zygote, emulator, "apply", f"sqlite:///{path}", TOTAL, KILLS)
    assert sum(seen.values()) == KILLS and min(seen.values()) >= 10, seen
    effects = _sqlite_column(path, "SELECT seq_id FROM effects ORDER BY id")
    assert effects == list(range(1, TOTAL + 1))
    assert _sqlite_column(path, "SELECT seq_id FROM c2sync_checkpoint") == [TOTAL]


def test_apply_is_exactly_once_across_sigkills_postgres(
    emulator: Emulator, zygote: Zygote, postgres_url: str
) -> None:
    """The same against a real PostgreSQL server."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS effects, c2sync_checkpoint")
    seen = crash_and_restart(zygote, emulator, "apply", postgres_url, TOTAL, KILLS)
    assert sum(seen.values()) == KILLS and min(seen.values()) >= 10, seen
    with psycopg.connect(postgres_url) as db:
        effects = [r[0] for r in db.execute("SELECT seq_id FROM effects ORDER BY id")]
        point = db.execute("SELECT seq_id FROM c2sync_checkpoint").fetchall()
    assert effects == list(range(1, TOTAL + 1))
    assert point == [(TOTAL,)]


RECORD_KILLS = 24
RECORD_TOTAL = 100


def test_record_journal_holds_each_signal_once_across_sigkills(
    emulator: Emulator, zygote: Zygote, tmp_path: Path
) -> None:
    """c2sync record SIGKILLed 24 times and restarted: each signal once in the journal, and
    Ctrl-C at the end exits 0."""
    path = tmp_path / "journal.db"
    seen = crash_and_restart(
        zygote, emulator, "record", f"sqlite:///{path}", RECORD_TOTAL, RECORD_KILLS
    )
    assert sum(seen.values()) == RECORD_KILLS and min(seen.values()) >= 5, seen
    journal = _sqlite_column(path, "SELECT seq_id FROM c2sync_journal ORDER BY id")
    assert journal == list(range(1, RECORD_TOTAL + 1))
    point = _sqlite_column(path, "SELECT seq_id FROM c2sync_record_checkpoint")
    assert point == [RECORD_TOTAL]


def test_record_journal_holds_each_signal_once_across_sigkills_postgres(
    emulator: Emulator, zygote: Zygote, postgres_url: str
) -> None:
    """The same with the journal in PostgreSQL."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS c2sync_journal, c2sync_record_checkpoint")
    crash_and_restart(zygote, emulator, "record", postgres_url, RECORD_TOTAL, RECORD_KILLS // 2)
    with psycopg.connect(postgres_url) as db:
        rows = db.execute("SELECT seq_id FROM c2sync_journal ORDER BY id").fetchall()
    assert [r[0] for r in rows] == list(range(1, RECORD_TOTAL + 1))
