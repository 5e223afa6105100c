"""Checkpoints in a database and exactly-once effects (docs/api-contract.md "In a database,
exactly once"; docs/durable.md): SQLiteCheckpoint, SQLCheckpoint over SQLite and a real
PostgreSQL server, store.apply, and the c2sync record journal. The SIGKILL tests are in
tests/test_durable_crash.py.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import c2sync
from c2sync._record import Journal, Progress, open_journal, overflow_text, progress_for
from c2sync._redact import Redactor
from c2sync.emulator import Emulator

from .conftest import API_KEY, OTHER_STRATEGY, STRATEGY, WAIT


def signal_of(seq_id: int, strategy_id: int = STRATEGY) -> c2sync.Signal:
    raw = {"msg_type": "strategy.signal", "seq_id": seq_id, "payload": {"n": seq_id}}
    return c2sync.Signal(
        msg_type="strategy.signal", seq_id=seq_id, strategy_id=strategy_id, raw=raw
    )


def gap_after(missing_after: int, timestamp: datetime | None = None) -> c2sync.Gap:
    return c2sync.Gap(
        msg_type="gap",
        timestamp=timestamp,
        strategy_id=STRATEGY,
        channel=f"strategy.signal:{STRATEGY}",
        from_seq=0,
        missing_after=missing_after,
        raw={"msg_type": "gap"},
    )


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[c2sync.SQLCheckpoint]:
    """A fresh store with an ``effects (seq_id)`` table, in SQLite or in PostgreSQL."""
    if request.param == "sqlite":
        made: c2sync.SQLCheckpoint = c2sync.SQLiteCheckpoint(tmp_path / "app.db")
    else:
        import psycopg

        url = request.getfixturevalue("postgres_url")
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("DROP TABLE IF EXISTS effects, c2sync_checkpoint, c2sync_journal")
        made = c2sync.SQLCheckpoint(lambda: psycopg.connect(url))
    made.transaction(lambda db: made.execute(db, "CREATE TABLE effects (seq_id BIGINT)"))
    yield made
    made.close()


def effects(store: c2sync.SQLCheckpoint) -> list[int]:
    return store.transaction(
        lambda db: [r[0] for r in store.execute(db, "SELECT seq_id FROM effects").fetchall()]
    )


def insert(store: c2sync.SQLCheckpoint, seq_id: int) -> Callable[[Any], None]:
    return lambda db: store.execute(db, "INSERT INTO effects (seq_id) VALUES (?)", seq_id)


# The store ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table", ["c2sync_checkpoint; DROP TABLE effects", "a b", "", "1abc", "x" * 64, "t-1", 7]
)
def test_a_table_name_that_is_not_a_plain_identifier_is_refused(
    table: Any, tmp_path: Path
) -> None:
    """A table name goes into statements: only a plain identifier is accepted."""
    with pytest.raises(ValueError, match="plain identifier"):
        c2sync.SQLiteCheckpoint(tmp_path / "x.db", table=table)
    with pytest.raises(ValueError, match="plain identifier"):
        c2sync.SQLCheckpoint(lambda: sqlite3.connect(tmp_path / "x.db"), table=table)
    assert not (tmp_path / "x.db").exists()


def test_the_point_only_moves_up_except_for_a_restarted_numbering(
    store: c2sync.SQLCheckpoint,
) -> None:
    """save() never lowers the point; restart() lowers it only more than 1000 below."""
    assert store.load() == {}
    store.save(STRATEGY, 5000)
    store.save(STRATEGY, 4000)
    store.save(OTHER_STRATEGY, 3)
    assert store.load() == {STRATEGY: 5000, OTHER_STRATEGY: 3}
    store.restart(STRATEGY, 4500)  # within a replay's reach: not a restarted numbering
    assert store.load()[STRATEGY] == 5000
    store.restart(STRATEGY, 2)
    assert store.load()[STRATEGY] == 2
    store.save(STRATEGY, 3)
    assert store.load()[STRATEGY] == 3


def test_apply_runs_the_effect_once_and_skips_what_is_committed(
    store: c2sync.SQLCheckpoint,
) -> None:
    """apply commits the effect with the point; a signal not above it runs nothing."""
    assert store.apply(signal_of(1), insert(store, 1)) is True
    assert store.apply(signal_of(2), insert(store, 2)) is True
    assert store.apply(signal_of(2), insert(store, 2)) is False
    assert store.apply(signal_of(1), insert(store, 1)) is False
    assert effects(store) == [1, 2]
    assert store.load() == {STRATEGY: 2}
    store.save(STRATEGY, 1)  # the client's late save of an older one: ignored
    assert store.load() == {STRATEGY: 2}


def test_a_restarted_numbering_counts_as_above(store: c2sync.SQLCheckpoint) -> None:
    """A seq_id more than 1000 below the point is a restarted numbering: applied."""
    assert store.apply(signal_of(2000), insert(store, 2000))
    assert not store.apply(signal_of(1000), insert(store, 1000))  # 1000 below: a duplicate
    assert store.apply(signal_of(999), insert(store, 999))
    assert store.apply(signal_of(1000), insert(store, 1000))
    assert effects(store) == [2000, 999, 1000]
    assert store.load() == {STRATEGY: 1000}


def test_an_effect_that_raises_rolls_back_with_the_point(store: c2sync.SQLCheckpoint) -> None:
    """fn raising: its writes and the point roll back, the error comes through, and the
    signal is applied by a later call."""
    store.apply(signal_of(1), insert(store, 1))

    def fails(db: Any) -> None:
        insert(store, 2)(db)
        raise RuntimeError("the broker is down")

    with pytest.raises(RuntimeError, match="broker is down"):
        store.apply(signal_of(2), fails)
    assert effects(store) == [1]
    assert store.load() == {STRATEGY: 1}
    assert store.apply(signal_of(2), insert(store, 2)) is True
    assert effects(store) == [1, 2]


def test_apply_takes_a_signal_with_a_strategy(store: c2sync.SQLCheckpoint) -> None:
    """Anything else is refused before any transaction."""
    with pytest.raises(TypeError, match="Signal"):
        store.apply(c2sync.Message(msg_type="strategy.signal", seq_id=1), insert(store, 1))
    no_strategy = c2sync.Signal(msg_type="strategy.signal", seq_id=1)
    with pytest.raises(ValueError, match="strategy_id"):
        store.apply(no_strategy, insert(store, 1))
    assert effects(store) == []


def test_the_paramstyle_is_read_from_the_driver_or_given(tmp_path: Path) -> None:
    """SQLCheckpoint over plain sqlite3: qmark read from the module; named when given."""
    path = tmp_path / "x.db"
    for paramstyle in (None, "named"):
        store = c2sync.SQLCheckpoint(lambda: sqlite3.connect(path), paramstyle=paramstyle)
        first = 7 if paramstyle is None else 9
        store.save(STRATEGY, first)
        assert store.load() == {STRATEGY: first}
        assert store.apply(signal_of(first + 1), lambda db: None)
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT strategy_id, seq_id FROM c2sync_checkpoint").fetchall() == [
            (STRATEGY, 10)
        ]
    with pytest.raises(ValueError, match="paramstyle"):
        c2sync.SQLCheckpoint(lambda: sqlite3.connect(path), paramstyle="percent")


def test_postgres_paramstyle_is_read_from_psycopg(postgres_url: str) -> None:
    """psycopg 3 says pyformat: the store writes %(pN)s markers it accepts."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS c2sync_other")
    store = c2sync.SQLCheckpoint(lambda: psycopg.connect(postgres_url), table="c2sync_other")
    try:
        store.save(STRATEGY, 3)
        assert store.load() == {STRATEGY: 3}
        assert store._style == "pyformat"
    finally:
        store.close()


@pytest.mark.parametrize("password", ["", ":my_options_connect_timeout"])
def test_a_postgresql_url_store_bounds_its_waits(postgres_url: str, password: str) -> None:
    """From a URL (record, checkpoint="postgresql://..."): a 10 s lock timeout, so another
    process's long transaction on the same row cannot hold the client without end. The
    bounds go in unless the URL sets those parameters, not unless their names appear in
    it: a password holding "options" keeps the lock timeout."""
    from c2sync._sql import checkpoint_from_url

    url = postgres_url.replace("postgres@", f"postgres{password}@", 1)
    assert password in url
    store = checkpoint_from_url(url, table="c2sync_bounds")
    try:
        shown = store.transaction(lambda db: db.execute("SHOW lock_timeout").fetchone())
        assert shown == ("10s",)
    finally:
        store.close()


def test_sqlite_store_is_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    """WAL and a busy timeout: several processes may share the file."""
    store = c2sync.SQLiteCheckpoint(tmp_path / "x.db")
    db = store.connection()
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    store.close()


def test_load_reads_while_another_process_writes(tmp_path: Path) -> None:
    """load() reads the committed points while another connection holds the write lock
    (WAL: a reader never waits; only writers take turns)."""
    path = tmp_path / "x.db"
    store = c2sync.SQLiteCheckpoint(path)
    store.save(STRATEGY, 4)
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE c2sync_checkpoint SET seq_id = 9")
        assert store.load() == {STRATEGY: 4}
        writer.execute("COMMIT")
        assert store.load() == {STRATEGY: 9}
    finally:
        writer.close()
        store.close()


def test_each_thread_has_its_connection_and_an_ended_threads_is_closed(tmp_path: Path) -> None:
    """Connections are per thread; flush() (called by the client as it closes) closes
    those of threads that have ended, close() the rest."""
    store = c2sync.SQLiteCheckpoint(tmp_path / "x.db")
    theirs: list[sqlite3.Connection] = []

    def save() -> None:
        store.save(STRATEGY, 1)
        theirs.append(store.connection())

    worker = threading.Thread(target=save)
    worker.start()
    worker.join(WAIT)
    theirs[0].execute("SELECT 1")  # open until something notices its thread ended
    store.flush()
    with pytest.raises(sqlite3.ProgrammingError):
        theirs[0].execute("SELECT 1")
    mine = store.connection()
    assert mine is not theirs[0]
    assert store.load() == {STRATEGY: 1}
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        mine.execute("SELECT 1")


# With a client ---------------------------------------------------------------------------


def test_sqlite_url_checkpoint_resumes_a_client(emulator: Emulator, tmp_path: Path) -> None:
    """checkpoint="sqlite:///path": a client resumes after the last processed signal."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with c2sync.connect(API_KEY, url=emulator.url, checkpoint=url) as client:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        for _ in range(5):
            emulator.publish_signal(STRATEGY)
        assert [client.recv(timeout=WAIT).seq_id for _ in range(3)] == [1, 2, 3]
    assert c2sync.SQLiteCheckpoint(tmp_path / "state.db").load() == {STRATEGY: 3}
    with c2sync.connect(API_KEY, url=emulator.url, checkpoint=url) as again:
        again.subscribe(c2sync.SIGNAL, STRATEGY)
        assert again.recv(timeout=WAIT).seq_id == 4
    assert emulator.connections[1].subscription_requests[0].resume_from == 3


def test_postgresql_url_checkpoint_keeps_a_clients_point_in_the_server(
    emulator: Emulator, postgres_url: str
) -> None:
    """checkpoint="postgresql://...": the client's saves land in the server's table."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS c2sync_checkpoint")
    with c2sync.connect(API_KEY, url=emulator.url, checkpoint=postgres_url) as client:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        for _ in range(3):
            emulator.publish_signal(STRATEGY)
        assert [client.recv(timeout=WAIT).seq_id for _ in range(2)] == [1, 2]
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT strategy_id, seq_id FROM c2sync_checkpoint").fetchall() == [
            (STRATEGY, 2)
        ]


def test_a_failed_apply_is_not_counted_by_a_clean_close(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Once apply owns a strategy, close() cannot advance its point past a failed effect;
    the next run gets that signal again."""
    store = c2sync.SQLiteCheckpoint(tmp_path / "app.db")
    store.transaction(lambda db: db.execute("CREATE TABLE effects (seq_id INTEGER)"))
    with c2sync.connect(API_KEY, url=emulator.url, checkpoint=store) as client:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        for _ in range(3):
            emulator.publish_signal(STRATEGY)
        first = client.recv(timeout=WAIT)
        assert store.apply(first, insert(store, first.seq_id))
        second = client.recv(timeout=WAIT)
        with pytest.raises(ZeroDivisionError):
            store.apply(second, lambda db: 1 / 0)
        client.recv(timeout=WAIT)  # the user moved on: the client counts 2 as processed
    assert store.load() == {STRATEGY: 1}
    with c2sync.connect(API_KEY, url=emulator.url, checkpoint=store) as again:
        again.subscribe(c2sync.SIGNAL, STRATEGY)
        retry = again.recv(timeout=WAIT)
        assert retry.seq_id == 2
        assert store.apply(retry, insert(store, 2))
    assert effects(store) == [1, 2]
    store.close()


def test_two_clients_share_one_sqlite_file(emulator: Emulator, tmp_path: Path) -> None:
    """Two clients, two stores, one file: one applies from its callbacks, the other from a
    recv() loop in another thread, while their clients save from their own threads. No
    "database is locked", no deadlock, every effect once, the file intact."""
    path = tmp_path / "shared.db"
    total = 150
    stores = [c2sync.SQLiteCheckpoint(path), c2sync.SQLiteCheckpoint(path)]
    stores[0].transaction(
        lambda db: db.execute("CREATE TABLE effects (strategy_id INTEGER, seq_id INTEGER)")
    )
    errors: list[BaseException] = []
    done = [threading.Event(), threading.Event()]

    def effect(store: c2sync.SQLCheckpoint, message: c2sync.Signal) -> None:
        store.apply(
            message,
            lambda db: db.execute(
                "INSERT INTO effects VALUES (?, ?)", (message.strategy_id, message.seq_id)
            ),
        )
        if message.seq_id == total:
            done[message.strategy_id == OTHER_STRATEGY].set()

    def on_signal(message: c2sync.Message) -> None:
        assert isinstance(message, c2sync.Signal)
        effect(stores[0], message)

    def loop(client: c2sync.Client) -> None:
        try:
            while not done[1].is_set():
                message = client.recv(timeout=WAIT)
                assert isinstance(message, c2sync.Signal)
                effect(stores[1], message)
        except BaseException as exc:
            errors.append(exc)
            done[1].set()

    with c2sync.connect(API_KEY, url=emulator.url, checkpoint=stores[0]) as a, c2sync.connect(
        API_KEY, url=emulator.url, checkpoint=stores[1]
    ) as b:
        a.on_error(errors.append)
        a.on(c2sync.SIGNAL, on_signal)
        a.subscribe(c2sync.SIGNAL, STRATEGY)
        b.subscribe(c2sync.SIGNAL, OTHER_STRATEGY)
        worker = threading.Thread(target=loop, args=(b,))
        worker.start()
        for _ in range(total):
            emulator.publish_signal(STRATEGY)
            emulator.publish_signal(OTHER_STRATEGY)
        assert done[0].wait(WAIT) and done[1].wait(WAIT)
        worker.join(WAIT)
    assert not errors
    for store in stores:
        store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = db.execute("SELECT strategy_id, seq_id FROM effects ORDER BY rowid").fetchall()
        points = dict(db.execute("SELECT strategy_id, seq_id FROM c2sync_checkpoint"))
    for strategy in (STRATEGY, OTHER_STRATEGY):
        assert [s for k, s in rows if k == strategy] == list(range(1, total + 1))
    assert points == {STRATEGY: total, OTHER_STRATEGY: total}


def test_record_and_a_client_in_another_process_share_one_sqlite_file(
    emulator: Emulator, tmp_path: Path
) -> None:
    """c2sync record (a process) and an application (this one, applying from callbacks)
    write one SQLite file at once: each keeps its own checkpoint table, neither waits
    forever or fails, and the file stays intact."""
    path = tmp_path / "shared.db"
    total = 100
    store = c2sync.SQLiteCheckpoint(path)
    store.transaction(lambda db: db.execute("CREATE TABLE effects (seq_id INTEGER)"))
    done = threading.Event()
    errors: list[BaseException] = []

    def on_signal(message: c2sync.Message) -> None:
        assert isinstance(message, c2sync.Signal)
        store.apply(message, insert(store, message.seq_id))
        if message.seq_id == total:
            done.set()

    terminal = Terminal(emulator, f"sqlite:///{path}")  # records STRATEGY
    try:
        terminal.wait_for("recording into")
        with c2sync.connect(API_KEY, url=emulator.url, checkpoint=store) as client:
            client.on_error(errors.append)
            client.on(c2sync.SIGNAL, on_signal)
            client.subscribe(c2sync.SIGNAL, OTHER_STRATEGY)
            for _ in range(total):
                emulator.publish_signal(STRATEGY)
                emulator.publish_signal(OTHER_STRATEGY)
            assert done.wait(WAIT)
            terminal.wait_for(f"last {STRATEGY}:{total}")
        assert terminal.interrupt() == 0
    finally:
        terminal.close()
        store.close()
    assert not errors
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        journal = [r[0] for r in db.execute("SELECT seq_id FROM c2sync_journal ORDER BY id")]
        applied = [r[0] for r in db.execute("SELECT seq_id FROM effects ORDER BY rowid")]
        points = dict(db.execute("SELECT strategy_id, seq_id FROM c2sync_checkpoint"))
        recorded = dict(db.execute("SELECT strategy_id, seq_id FROM c2sync_record_checkpoint"))
    assert journal == applied == list(range(1, total + 1))
    assert points == {OTHER_STRATEGY: total} and recorded == {STRATEGY: total}


def test_without_a_postgresql_server_ci_fails_and_elsewhere_skips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tests/postgres.py: a machine without a server skips the PostgreSQL tests with the
    reason; CI (CI=true) fails them instead."""
    from .postgres import unavailable

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no PostgreSQL server .*: initdb missing"):
        unavailable("initdb missing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="initdb missing"):
        unavailable("initdb missing")


# The journal -------------------------------------------------------------------------------


def test_journal_keys_signals_and_gaps_and_keeps_every_position_update(tmp_path: Path) -> None:
    """Signals once per seq_id, gaps once per (strategy, missing_after), positions as
    received; the key a server echoes is masked in the raw text."""
    journal = open_journal(f"sqlite:///{tmp_path / 'j.db'}", API_KEY)
    stamp = datetime(2026, 12, 7, tzinfo=timezone.utc)
    gap = gap_after(1000, timestamp=stamp)
    positions = c2sync.Positions(
        msg_type="strategy.positions",
        strategy_id=STRATEGY,
        raw={"msg_type": "strategy.positions", "echo": API_KEY},
    )
    assert journal.write(signal_of(1)) and journal.write(signal_of(2))
    assert not journal.write(signal_of(1))
    assert journal.write(gap) and not journal.write(gap)
    assert journal.write(positions) and journal.write(positions)
    assert not journal.write(c2sync.Message(msg_type="subscription.ack"))
    journal.store.close()
    with sqlite3.connect(tmp_path / "j.db") as db:
        rows = db.execute(
            "SELECT strategy_id, seq_id, msg_type, timestamp, raw FROM c2sync_journal ORDER BY id"
        ).fetchall()
    assert [r[:3] for r in rows] == [
        (STRATEGY, 1, "strategy.signal"),
        (STRATEGY, 2, "strategy.signal"),
        (STRATEGY, 1000, "gap"),
        (STRATEGY, None, "strategy.positions"),
        (STRATEGY, None, "strategy.positions"),
    ]
    assert rows[2][3] == stamp.isoformat()
    assert json.loads(rows[0][4])["payload"] == {"n": 1}
    assert API_KEY not in rows[3][4] and "***" in rows[3][4]
    assert journal.counts == {"signals": 2, "positions": 2, "gaps": 1}


def test_journal_keeps_every_signal_of_a_restarted_numbering_once(
    store: c2sync.SQLCheckpoint,
) -> None:
    """The server restarted its numbering: its signals reuse numbers already in the
    journal, and every one lands, in the next epoch; replayed after a kill (a new journal
    on the same database), none lands twice. Gaps go in the strategy's current epoch."""
    journal = Journal(store, Redactor(API_KEY))
    assert all(journal.write(signal_of(seq_id)) for seq_id in (1, 2, 3, 2000))
    gap = gap_after(3)
    assert journal.write(gap)
    assert all(journal.write(signal_of(seq_id)) for seq_id in (1, 2, 3))  # restarted
    assert journal.write(gap)  # the same number in the new numbering: another hole
    assert store.load() == {STRATEGY: 3}

    again = Journal(store, Redactor(API_KEY))  # the process killed and started again
    assert not any(again.write(signal_of(seq_id)) for seq_id in (1, 2, 3))
    assert not again.write(gap)
    assert again.write(signal_of(4))
    rows = store.transaction(
        lambda db: store.execute(
            db,
            "SELECT msg_type, epoch, seq_id FROM c2sync_journal ORDER BY msg_type, epoch, seq_id",
        ).fetchall()
    )
    assert [tuple(r) for r in rows] == [
        ("gap", 0, 3),
        ("gap", 1, 3),
        *[("strategy.signal", 0, seq_id) for seq_id in (1, 2, 3, 2000)],
        *[("strategy.signal", 1, seq_id) for seq_id in (1, 2, 3, 4)],
    ]
    assert journal.counts == {"signals": 7, "positions": 0, "gaps": 2}


def test_the_journal_is_one_line_away_from_a_data_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/durable.md's pandas.read_sql block reads a journal back, run as written."""
    pytest.importorskip("pandas")
    page = (Path(__file__).resolve().parent.parent / "docs" / "durable.md").read_text("utf-8")
    block = page.split("Reading the journal back", 1)[1].split("```py\n", 1)[1]
    code = block.split("```", 1)[0]
    assert "pandas.read_sql(" in code and "signals.db" in code
    journal = Journal(c2sync.SQLiteCheckpoint(tmp_path / "signals.db"), Redactor(API_KEY))
    for seq_id in (1, 2, 3):
        journal.write(signal_of(seq_id))
    journal.store.close()
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the documentation's own example
    frame = namespace["frame"]
    assert list(frame["seq_id"]) == [1, 2, 3]
    columns = ["id", "strategy_id", "seq_id", "msg_type", "timestamp", "raw", "epoch"]
    assert list(frame.columns) == columns


class _Terminal:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_an_overflow_line_names_what_record_cannot_replay() -> None:
    """The queue overflowed: the line says which strategies' signals are replayed from the
    checkpoint, which cannot be (nothing committed: no point to resume from), and that
    dropped position updates are lost (the server replays none)."""
    text = overflow_text(7, [1, 2], {1: 40}, positions=True)
    assert text == (
        "7 message(s) dropped: the database too slow; "
        "replaying the signals of 1 from the checkpoint; "
        "not replayable (nothing committed yet): any signals of 2; "
        "position updates are never replayed: any dropped are lost"
    )
    assert overflow_text(3, [1], {1: 40}, positions=False) == (
        "3 message(s) dropped: the database too slow; "
        "replaying the signals of 1 from the checkpoint"
    )


def test_progress_is_one_line_rewritten_in_place_on_a_terminal_only(tmp_path: Path) -> None:
    """On a terminal: one line, rewritten with a carriage return; elsewhere: nothing."""
    assert progress_for(open(os.devnull, "w")) is None  # noqa: SIM115 (closed by the GC)
    terminal = _Terminal()
    progress = progress_for(terminal)  # type: ignore[arg-type]
    assert isinstance(progress, Progress)
    journal = open_journal(f"sqlite:///{tmp_path / 'j.db'}", API_KEY)
    journal.write(signal_of(41))
    progress.show(journal)
    journal.write(signal_of(42))
    progress.show(journal, force=True)
    progress.end(journal)
    journal.store.close()
    lines = terminal.text.split("\r")
    assert lines[0] == "" and "\n" not in "".join(lines[:-1])
    assert lines[-1].rstrip() == f"recorded 2 signals, 0 positions, 0 gaps; last {STRATEGY}:42"
    assert terminal.text.endswith("\n")


def _record(emulator: Emulator, db: str, *extra: str, **popen: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, C2_API_KEY=API_KEY, C2_WS_URL=emulator.url)
    command = [sys.executable, "-m", "c2sync", "record", "--to", db, "--strategy", str(STRATEGY)]
    return subprocess.Popen([*command, *extra], env=env, text=True, **popen)


def _record_and_stop(emulator: Emulator, db: str, *extra: str) -> tuple[int, str, str]:
    """Run record piped until it is recording, then Ctrl-C: (status, stdout, stderr)."""
    proc = _record(emulator, db, *extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "recording into" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, "".join(seen) + err


class Terminal:
    """``c2sync record`` on a pseudo-terminal (stdout and stderr): what it shows."""

    def __init__(self, emulator: Emulator, db: str, *extra: str) -> None:
        self.fd, child = pty.openpty()
        try:
            self.proc = _record(emulator, db, *extra, stdout=child, stderr=child)
        finally:
            os.close(child)
        self.seen = b""

    def wait_for(self, text: str) -> None:
        while text.encode() not in self.seen:
            assert select.select([self.fd], [], [], WAIT)[0], self.seen
            try:
                self.seen += os.read(self.fd, 4096)
            except OSError:  # EIO: record ended, its terminal is gone
                raise AssertionError(f"no {text!r} before record ended: {self.seen!r}") from None

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        self.wait_for("stopped;")
        return self.proc.wait(WAIT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        os.close(self.fd)


def test_record_writes_signals_and_positions_with_progress_and_exits_0_on_ctrl_c(
    emulator: Emulator, tmp_path: Path
) -> None:
    """c2sync record --positions on a terminal: signals and position updates into the
    journal, one progress line rewritten in place, and Ctrl-C exits 0 with a summary."""
    path = tmp_path / "signals.db"
    terminal = Terminal(emulator, f"sqlite:///{path}", "--positions")
    try:
        terminal.wait_for("recording into sqlite:///")
        for _ in range(3):
            emulator.publish_signal(STRATEGY)
        emulator.publish_positions(STRATEGY)
        emulator.publish_signal(STRATEGY)
        terminal.wait_for(f"\rrecorded 4 signals, 1 positions, 0 gaps; last {STRATEGY}:4")
        assert terminal.interrupt() == 0
    finally:
        terminal.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT seq_id, msg_type FROM c2sync_journal ORDER BY id").fetchall()
    assert rows == [
        (1, "strategy.signal"),
        (2, "strategy.signal"),
        (3, "strategy.signal"),
        (None, "strategy.positions"),
        (4, "strategy.signal"),
    ]
    assert b"stopped; recorded 4 signals, 1 positions, 0 gaps" in terminal.seen
    assert API_KEY.encode() not in terminal.seen


def test_record_shows_no_progress_when_stdout_is_not_a_terminal(
    emulator: Emulator, tmp_path: Path
) -> None:
    """Piped, record prints nothing on stdout; its status lines go to stderr."""
    status, out, err = _record_and_stop(emulator, f"sqlite:///{tmp_path / 's.db'}")
    assert status == 0
    assert out == ""
    assert "stopped; recorded 0 signals" in err


def test_record_stops_with_one_line_and_status_1_when_the_database_fails(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A database error ends record with one line and exit status 1, the signal in hand
    not counted: a restart resumes from the checkpoint."""
    path = tmp_path / "s.db"
    terminal = Terminal(emulator, f"sqlite:///{path}")
    try:
        terminal.wait_for("recording into")
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE c2sync_journal")
        emulator.publish_signal(STRATEGY)
        assert terminal.proc.wait(WAIT) == 1
        terminal.wait_for("no such table: c2sync_journal")
    finally:
        terminal.close()
    assert b"Traceback" not in terminal.seen
    store = c2sync.SQLiteCheckpoint(path, table="c2sync_record_checkpoint")
    assert store.load() == {}
    store.close()


@pytest.mark.parametrize(
    "argv, text",
    [
        (["--to", "sqlite:///x.db"], "record needs at least one --strategy ID"),
        (["--to", "mysql://h/db", "--strategy", "1"], "must start with sqlite:/// or postgresql"),
        (["--to", "sqlite:///", "--strategy", "1"], "sqlite:/// needs a file path"),
    ],
)
def test_record_usage_errors_are_one_line_and_exit_2(
    argv: list[str], text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from c2sync.cli import main

    assert main(["record", "--api-key", API_KEY, *argv]) == 2
    err = capsys.readouterr().err
    assert text in err and err.count("\n") == 1


def test_record_prints_no_url_password_query_or_fragment(
    emulator: Emulator, tmp_path: Path
) -> None:
    """record names both URLs (the server's and --to's) without user:password@, query or
    fragment, on every line: connecting, recording into, stopped."""
    scheme, rest = emulator.url.split("://", 1)
    url = f"{scheme}://bob:S3cretUrlPw@{rest}?token=S3cretQuery#S3cretFragment"
    db = f"sqlite:///{tmp_path / 's.db'}?password=S3cretDbPw#S3cretDbFragment"
    status, out, err = _record_and_stop(emulator, db, "--url", url)
    printed = out + err
    assert status == 0, printed
    assert "connecting to ws://***@127.0.0.1:" in printed
    assert f"stopped; recorded 0 signals, 0 positions, 0 gaps into sqlite:///{tmp_path}" in printed
    secrets = ("S3cretUrlPw", "S3cretQuery", "S3cretFragment", "S3cretDbPw", "S3cretDbFragment")
    assert not [secret for secret in secrets if secret in printed], printed


def test_a_failed_postgresql_connection_keeps_no_password_in_c2syncs_frames(
    tmp_path: Path,
) -> None:
    """Error trackers record a traceback's locals: no c2sync frame of a failed connection
    (nor the store's repr) holds the URL's password."""
    pytest.importorskip("psycopg")
    from c2sync._sql import checkpoint_from_url

    url = f"postgresql://bob:S3cretDbPw@/db?host={tmp_path}&connect_timeout=1"
    store = checkpoint_from_url(url)
    del url
    with pytest.raises(Exception) as caught:  # no server at that socket: OperationalError
        store.load()
    store.close()
    shown = [repr(store)]
    traceback = caught.value.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if "c2sync" in Path(frame.f_code.co_filename).parts:
            shown += [f"{name}={value!r}" for name, value in frame.f_locals.items()]
        traceback = traceback.tb_next
    assert len(shown) > 1 and not [text for text in shown if "S3cretDbPw" in text], shown


def test_a_malformed_postgresql_url_is_refused_without_quoting_it() -> None:
    """libpq's complaint may quote the password (a bad %-escape): the error names none."""
    pytest.importorskip("psycopg")
    from c2sync._sql import checkpoint_from_url

    with pytest.raises(ValueError, match="not a valid postgresql:// URL") as caught:
        checkpoint_from_url("postgresql://bob:S3cret%zz@/db")
    assert "S3cret" not in str(caught.value)


def test_a_lock_not_granted_is_raised_at_once_not_retried(tmp_path: Path) -> None:
    """Only the driver's IntegrityError (a concurrent first insert) is retried: a busy
    database raises after one wait, not two (close()'s flush included)."""
    path = tmp_path / "x.db"
    statements: list[str] = []

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=0)  # busy: at once, no wait to time
        connection.set_trace_callback(statements.append)
        return connection

    store = c2sync.SQLCheckpoint(connect)
    store.save(STRATEGY, 1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction
    try:
        statements.clear()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.save(STRATEGY, 2)
        assert len([s for s in statements if s.startswith("UPDATE")]) == 1, statements
    finally:
        holder.rollback()
        holder.close()
        store.close()


def wait_for_a_lock_wait(postgres_url: str, statement: str) -> None:
    """Until one session waits for a lock in a statement starting with ``statement``."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as watch:
        for _ in range(int(WAIT * 100)):
            waiting = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND starts_with(query, %s)",
                (statement,),
            ).fetchone()
            if waiting == (1,):
                return
            watch.execute("SELECT pg_sleep(0.01)")
    raise AssertionError(f"no session waited for a lock in {statement!r}")


def test_a_first_point_inserted_by_two_processes_at_once_is_retried_once(
    postgres_url: str,
) -> None:
    """Two processes insert a strategy's first point at the same moment: the second one's
    IntegrityError is retried (then the row exists and is updated), not raised."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS c2sync_checkpoint")
    store = c2sync.SQLCheckpoint(lambda: psycopg.connect(postgres_url))
    assert store.load() == {}  # the table exists
    errors: list[BaseException] = []

    def save() -> None:
        try:
            store.save(STRATEGY, 9)
        except BaseException as exc:  # pragma: no cover - the failure this test is for
            errors.append(exc)

    saver = threading.Thread(target=save)
    with psycopg.connect(postgres_url) as other:  # the other process, its row uncommitted
        other.execute(
            "INSERT INTO c2sync_checkpoint (strategy_id, seq_id) VALUES (%s, 5)", (STRATEGY,)
        )
        saver.start()
        wait_for_a_lock_wait(postgres_url, "INSERT INTO c2sync_checkpoint")
        other.commit()
    saver.join(WAIT)
    assert errors == []
    assert store.load() == {STRATEGY: 9}
    store.close()


def test_two_records_writing_the_same_gap_at_once_both_go_on(postgres_url: str) -> None:
    """Two record processes on one PostgreSQL journal report the same hole at the same
    moment: one row, and the second writer is told "not written", not an IntegrityError."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("DROP TABLE IF EXISTS c2sync_journal, c2sync_record_checkpoint")
    journal = open_journal(postgres_url, API_KEY)
    gap = gap_after(7)
    results: list[object] = []
    writer = threading.Thread(target=lambda: results.append(journal.write(gap)))
    with psycopg.connect(postgres_url) as other:  # the other record, its row uncommitted
        other.execute(
            "INSERT INTO c2sync_journal (strategy_id, seq_id, msg_type, raw) "
            "VALUES (%s, 7, 'gap', '{}')",
            (STRATEGY,),
        )
        writer.start()
        wait_for_a_lock_wait(postgres_url, "INSERT INTO c2sync_journal")
        other.commit()
    writer.join(WAIT)
    journal.store.close()
    assert results == [False]
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT count(*) FROM c2sync_journal").fetchone() == (1,)
