"""Checkpoints in a database, and exactly-once effects (docs/durable.md).

:class:`SQLCheckpoint` keeps ``{strategy_id: seq_id}`` in a table of any DB-API 2 database
(one row per strategy, created if missing); :class:`SQLiteCheckpoint` is the same in a
SQLite file through the standard library. Both are :class:`~c2sync.Checkpoint` s, and add
:meth:`SQLCheckpoint.apply`: the user's writes and the checkpoint's advance in one commit.

Threads: the client saves from its own threads and the user applies from theirs, so each
thread gets its own connection (DB-API connections are not shareable in general); a
connection whose thread has ended is closed when the next one opens, every one at
:meth:`SQLCheckpoint.close`. Waits are bounded by the database: SQLite's busy timeout,
a server's lock timeout (PostgreSQL's ``lock_timeout`` is unbounded unless the user's
``connect`` sets it: docs/durable.md says how).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._streams import MAX_SEQ_ID, RESTART_DISTANCE, valid_seq_id
from .messages import Signal

if TYPE_CHECKING:
    import sqlite3

__all__ = [
    "BUSY_TIMEOUT",
    "URL_PREFIXES",
    "SQLCheckpoint",
    "SQLiteCheckpoint",
    "checkpoint_from_url",
]

logger = logging.getLogger("c2sync.checkpoint")

T = TypeVar("T")

BUSY_TIMEOUT = 10.0  # seconds a SQLite statement waits for another writer's lock
SQLITE_PREFIX = "sqlite:///"
URL_PREFIXES = (SQLITE_PREFIX, "postgresql://", "postgres://")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_PARAMSTYLES = ("qmark", "numeric", "named", "format", "pyformat")


def identifier(name: object, what: str = "table") -> str:
    """``name`` if it is a plain SQL identifier (letters, digits, ``_``; at most 63), else
    ValueError: a table name is written into statements, so nothing else may get there."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(
            f"{what} must be a plain identifier (letters, digits, _; at most 63), "
            f"not {name!r}"
        )
    return name


def _render(sql: str, style: str) -> str:
    """A statement written with ``?`` markers in the driver's ``paramstyle``."""
    if style == "qmark":
        return sql
    parts = sql.split("?")
    out = [parts[0]]
    for n, part in enumerate(parts[1:], 1):
        marker = {
            "numeric": f":{n}",
            "named": f":p{n}",
            "format": "%s",
            "pyformat": f"%(p{n})s",
        }[style]
        out.append(marker + part)
    return "".join(out)


def _params(values: tuple[Any, ...], style: str) -> Any:
    if style in ("named", "pyformat"):
        return {f"p{n}": value for n, value in enumerate(values, 1)}
    return values


class SQLCheckpoint:
    """The checkpoint in a table of any DB-API 2 database, and exactly-once effects.

    Args:
        connect: called with no arguments, returns a new DB-API 2 connection in its
            default (transactional, not autocommit) mode, e.g.
            ``lambda: psycopg.connect("postgresql://...")`` (extra ``[postgres]``).
        table: the table holding one row per strategy (``strategy_id``, ``seq_id``),
            created if missing; a plain identifier.
        paramstyle: the driver's DB-API ``paramstyle``; None reads it from the driver's
            module.

    The stored point of a strategy only moves up, whoever writes it (:meth:`apply` or
    the client's saves), except for a restarted numbering (a ``seq_id`` more than 1000
    below it, the API contract, "Reconnecting"). Once :meth:`apply` has run for a
    strategy on this object, the client's own saves for it are ignored: what ``apply``
    committed is the point, so a signal whose ``fn`` failed is never counted as done.

    Every thread gets its own connection (opened on first use; see the module's notes).
    """

    dialect = "sql"  # "sqlite", "postgresql" or "sql" (any other): for the journal's DDL

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        table: str = "c2sync_checkpoint",
        paramstyle: str | None = None,
    ) -> None:
        if not callable(connect):
            raise TypeError("connect must be a function returning a new DB-API connection")
        if paramstyle is not None and paramstyle not in _PARAMSTYLES:
            raise ValueError(f"paramstyle must be one of {', '.join(_PARAMSTYLES)}")
        self.table = identifier(table)
        self._connect = connect
        self._style = paramstyle
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the registry below, never held over I/O
        self._connections: dict[threading.Thread, Any] = {}
        self._points: dict[int, int] = {}  # committed points this object knows of
        self._applied: set[int] = set()  # strategies apply() owns: saves ignored
        self._ready = False  # the table exists

    def __repr__(self) -> str:
        return f"{type(self).__name__}(table={self.table!r})"

    # Connections ------------------------------------------------------------------------

    def _open(self) -> Any:
        return self._connect()

    def _begin(self, connection: Any, write: bool = True) -> None:
        """Start a transaction (DB-API drivers begin one implicitly)."""

    def connection(self) -> Any:
        """This thread's connection (opened on first use)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        self.flush()
        connection = self._open()
        try:
            if self._style is None:
                self._style = _driver_paramstyle(connection)
            if not self._ready:
                self._create(connection)
                self._ready = True
        except BaseException:
            _close_quietly(connection)
            raise
        self._local.connection = connection
        with self._lock:
            self._connections[threading.current_thread()] = connection
        return connection

    def flush(self) -> None:
        """Nothing waits to be written (every save commits); closes the connections of
        threads that have ended (the client calls this as it closes, after its threads)."""
        with self._lock:
            stale = [self._connections.pop(t) for t in list(self._connections) if not t.is_alive()]
        for connection in stale:
            _close_quietly(connection)

    def _forget(self, connection: Any) -> None:
        """Drop a connection that failed (the next call opens a new one)."""
        self._local.connection = None
        with self._lock:
            for thread, held in list(self._connections.items()):
                if held is connection:
                    del self._connections[thread]
        _close_quietly(connection)

    def close(self) -> None:
        """Close every connection this object opened (a later call opens new ones)."""
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        self._local = threading.local()
        for connection in connections:
            _close_quietly(connection)

    def execute(self, connection: Any, sql: str, *values: Any) -> Any:
        """Run ``sql`` written with ``?`` markers on ``connection``, in its paramstyle;
        returns the cursor."""
        assert self._style is not None
        cursor = connection.cursor()
        cursor.execute(_render(sql, self._style), _params(values, self._style))
        return cursor

    def _create(self, connection: Any) -> None:
        self._transaction(
            connection,
            lambda: self.execute(
                connection,
                f"CREATE TABLE IF NOT EXISTS {self.table} "
                "(strategy_id BIGINT PRIMARY KEY, seq_id BIGINT NOT NULL)",
            ),
        )

    def _transaction(self, connection: Any, body: Callable[[], T], write: bool = True) -> T:
        """``body()`` in one transaction: committed, or rolled back and re-raised."""
        self._begin(connection, write)
        try:
            result = body()
            connection.commit()
        except BaseException:
            self._rollback(connection)
            raise
        return result

    def _rollback(self, connection: Any) -> None:
        try:
            connection.rollback()
        except Exception:  # the connection is gone: a new one next time
            logger.debug("rollback failed; reconnecting next time", exc_info=True)
            self._forget(connection)

    def transaction(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(connection)`` in one transaction of this thread's connection: committed
        when it returns, rolled back (and re-raised) when it raises."""
        connection = self.connection()
        return self._transaction(connection, lambda: fn(connection))

    # The point ----------------------------------------------------------------------------

    def _advance(self, connection: Any, strategy_id: int, seq_id: int, restart: bool) -> bool:
        """Move the strategy's point to ``seq_id`` in the open transaction if it is above
        (or, with ``restart``, more than 1000 below); False if it is not. The UPDATE comes
        first, so the row is locked before anything reads it."""
        t = self.table
        if restart:
            above = min(seq_id + RESTART_DISTANCE, MAX_SEQ_ID)
            cursor = self.execute(
                connection,
                f"UPDATE {t} SET seq_id = ? WHERE strategy_id = ? AND (seq_id < ? OR seq_id > ?)",
                seq_id,
                strategy_id,
                seq_id,
                above,
            )
        else:
            cursor = self.execute(
                connection,
                f"UPDATE {t} SET seq_id = ? WHERE strategy_id = ? AND seq_id < ?",
                seq_id,
                strategy_id,
                seq_id,
            )
        if cursor.rowcount == 1:
            return True
        held = f"SELECT seq_id FROM {t} WHERE strategy_id = ?"
        if self.execute(connection, held, strategy_id).fetchone() is not None:
            return False
        self.execute(
            connection, f"INSERT INTO {t} (strategy_id, seq_id) VALUES (?, ?)", strategy_id, seq_id
        )
        return True

    def _claim(self, strategy_id: int, seq_id: int, restart: bool) -> tuple[bool, Any]:
        """Begin a transaction on this thread's connection and advance the point in it:
        (moved, the connection), the transaction left open. A concurrent first insert of
        the same strategy (another process) fails ours once, with the driver's
        IntegrityError: then the row exists. Anything else (a lock not granted within the
        database's timeout) is raised at once: retrying would only wait as long again."""
        for attempt in (1, 2):
            connection = self.connection()
            self._begin(connection)
            try:
                return self._advance(connection, strategy_id, seq_id, restart), connection
            except BaseException as exc:
                self._rollback(connection)
                if attempt == 2 or not isinstance(exc, _integrity_error(connection)):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _known(self, strategy_id: int, seq_id: int) -> None:
        with self._lock:
            self._points[strategy_id] = seq_id

    def load(self) -> dict[int, int]:
        """``{strategy_id: seq_id}`` as committed.

        Raises:
            ValueError: the table holds something that is not a strategy id and a seq_id.
        """
        connection = self.connection()
        rows = self._transaction(
            connection,
            lambda: self.execute(connection, f"SELECT strategy_id, seq_id FROM {self.table}")
            .fetchall(),
            write=False,
        )
        points: dict[int, int] = {}
        for strategy_id, seq_id in rows:
            if type(strategy_id) is not int or type(seq_id) is not int or seq_id < 0:
                raise ValueError(
                    f"checkpoint table {self.table!r} holds {strategy_id!r}: {seq_id!r}, "
                    "not a strategy id and a seq_id"
                )
            points[strategy_id] = seq_id
        with self._lock:
            self._points.update(points)
        return points

    def save(self, strategy_id: int, seq_id: int) -> None:
        """Move the strategy's point up to ``seq_id`` (never down); ignored for a strategy
        :meth:`apply` owns."""
        with self._lock:
            if strategy_id in self._applied or seq_id <= self._points.get(strategy_id, -1):
                return
        self._store(strategy_id, seq_id, restart=False)

    def restart(self, strategy_id: int, seq_id: int) -> None:
        """The server restarted the strategy's numbering: the point goes down to
        ``seq_id`` (only if it is more than 1000 below, or above)."""
        with self._lock:
            if strategy_id in self._applied:
                return
        self._store(strategy_id, seq_id, restart=True)

    def _store(self, strategy_id: int, seq_id: int, restart: bool) -> None:
        moved, connection = self._claim(strategy_id, seq_id, restart)
        try:
            connection.commit()
        except BaseException:
            self._rollback(connection)
            raise
        if moved:
            self._known(strategy_id, seq_id)

    def apply(self, signal: Signal, fn: Callable[[Any], object]) -> bool:
        """Run ``fn(connection)`` and advance the checkpoint to ``signal.seq_id`` in one
        transaction; exactly once per signal, whatever moment the process dies.

        Args:
            signal: a :class:`~c2sync.Signal` with its ``strategy_id``.
            fn: the effect: writes through the connection it is given (this thread's;
                no commit or rollback of its own).

        Returns:
            True once committed; False (``fn`` not run) for a signal already applied:
            its ``seq_id`` not above the committed point (a restarted numbering, more than
            1000 below, counts as above).

        Raises:
            Exception: whatever ``fn`` raises, after everything (the point included) was
                rolled back; the database's errors likewise.
        """
        if not isinstance(signal, Signal):
            raise TypeError(f"apply() takes a c2sync.Signal, not {type(signal).__name__}")
        strategy_id, seq_id = signal.strategy_id, signal.seq_id
        if type(strategy_id) is not int or not valid_seq_id(seq_id):
            raise ValueError(f"the signal has no strategy_id or a bad seq_id: {signal!r}")
        with self._lock:
            self._applied.add(strategy_id)  # before fn runs: a failed one is never saved
        moved, connection = self._claim(strategy_id, seq_id, restart=True)
        try:
            if not moved:
                connection.rollback()
                return False
            fn(connection)
            connection.commit()
        except BaseException:
            self._rollback(connection)
            raise
        self._known(strategy_id, seq_id)
        return True


class SQLiteCheckpoint(SQLCheckpoint):
    """The checkpoint in a SQLite file, through the standard library's ``sqlite3``.

    WAL mode and a busy timeout (10 seconds): several processes and
    threads may share the file; writers take turns, readers never wait. Each transaction
    begins ``IMMEDIATE`` (the write lock first), so two writers never deadlock. SQLite's
    default ``synchronous`` (FULL) is kept: a commit survives a power cut.

    Args:
        path: the database file (created if missing).
        table: the checkpoint table, a plain identifier.

    Also ``checkpoint="sqlite:///path"`` (``sqlite:////abs/path`` for an absolute one).
    """

    dialect = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, table: str = "c2sync_checkpoint") -> None:
        self.path = os.fspath(path)
        super().__init__(self._sqlite_connect, table=table, paramstyle="qmark")

    def __repr__(self) -> str:
        return f"SQLiteCheckpoint({self.path!r}, table={self.table!r})"

    def _sqlite_connect(self) -> sqlite3.Connection:
        import sqlite3  # here, not at import: only a SQLite store needs it

        # isolation_level=None: no implicit transactions; _begin says where one starts.
        # check_same_thread=False only so that close() may close another thread's.
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            connection.execute("PRAGMA journal_mode = WAL")
        except BaseException:
            connection.close()
            raise
        return connection

    def _begin(self, connection: Any, write: bool = True) -> None:
        # A writer takes the write lock first: two writers never deadlock upgrading a read.
        # A reader's snapshot never waits (WAL).
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")


def checkpoint_from_url(url: str, *, table: str = "c2sync_checkpoint") -> SQLCheckpoint:
    """The store a URL names: ``sqlite:///path`` or ``postgresql://...`` (psycopg 3)."""
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX) :]
        if not path:
            raise ValueError("sqlite:/// needs a file path, e.g. sqlite:///signals.db")
        return SQLiteCheckpoint(path, table=table)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresCheckpoint(url, table=table)
    raise ValueError("the database URL must start with sqlite:/// or postgresql://")


class PostgresCheckpoint(SQLCheckpoint):
    """:class:`SQLCheckpoint` over psycopg 3 for a ``postgresql://`` URL, with a connect
    timeout and a lock timeout of 10 s unless the URL sets its own."""

    dialect = "postgresql"

    def __init__(self, url: str, *, table: str = "c2sync_checkpoint") -> None:
        # The URL may hold a password: from here on only inside a holder whose repr hides
        # it, so neither this frame nor the connect function's (which error trackers
        # record with a traceback) keeps it in a local variable.
        conninfo = _Hidden(url)
        del url
        try:
            psycopg = importlib.import_module("psycopg")  # an extra: never imported early
        except ImportError as exc:
            raise ImportError(
                "a postgresql:// database needs psycopg 3: from a checkout of c2sync, "
                "pip install '.[postgres]'"
            ) from exc
        try:
            conninfo.value = psycopg.conninfo.conninfo_to_dict(conninfo.value)
        except psycopg.Error:
            # libpq's text may quote a piece of the URL (the password's bad %-escape).
            raise ValueError("not a valid postgresql:// URL (see libpq's URI format)") from None
        # Every wait bounded: libpq waits for a connection, and PostgreSQL for a row lock,
        # without end by default. What the URL sets itself is kept.
        conninfo.value.setdefault("connect_timeout", int(BUSY_TIMEOUT))
        conninfo.value.setdefault("options", f"-c lock_timeout={int(BUSY_TIMEOUT * 1000)}")
        connect = functools.partial(_postgres_connect, psycopg, conninfo)
        super().__init__(connect, table=table, paramstyle="format")

    def __repr__(self) -> str:
        return f"PostgresCheckpoint(table={self.table!r})"  # never the URL: it may hold a password


class _Hidden:
    """A secret (a connection URL, its parameters) behind a repr that shows none of it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<hidden>"


def _postgres_connect(psycopg: Any, conninfo: _Hidden) -> Any:
    return psycopg.connect(**conninfo.value)


def _integrity_error(connection: Any) -> tuple[type[BaseException], ...]:
    """The driver's IntegrityError (DB-API 2: on the connection or its module), or none."""
    module = sys.modules.get(type(connection).__module__.partition(".")[0])
    found = getattr(connection, "IntegrityError", None) or getattr(module, "IntegrityError", None)
    return (found,) if isinstance(found, type) and issubclass(found, BaseException) else ()


def _driver_paramstyle(connection: Any) -> str:
    module = sys.modules.get(type(connection).__module__.partition(".")[0])
    style = getattr(module, "paramstyle", None)
    if style not in _PARAMSTYLES:
        raise ValueError(
            f"cannot tell the paramstyle of {type(connection).__module__}: pass paramstyle="
        )
    return str(style)


def _close_quietly(connection: Any) -> None:
    try:
        connection.close()
    except Exception:
        logger.debug("closing a connection failed", exc_info=True)
