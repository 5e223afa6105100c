"""Where the last processed ``seq_id`` per strategy is kept, to resume across restarts.

Any object with ``load() -> dict[int, int]`` and ``save(strategy_id, seq_id)`` will do
(:class:`Checkpoint`); :class:`FileCheckpoint` is the one a path turns into;
:class:`SQLiteCheckpoint` (``"sqlite:///path"``) and :class:`SQLCheckpoint` keep it in a
database, with exactly-once effects (``apply``, docs/durable.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Protocol, runtime_checkable

from ._sql import SQLCheckpoint, SQLiteCheckpoint

__all__ = ["Checkpoint", "FileCheckpoint", "SQLCheckpoint", "SQLiteCheckpoint"]

logger = logging.getLogger("c2sync.checkpoint")


@runtime_checkable
class Checkpoint(Protocol):
    """What the client needs of a checkpoint store.

    ``save`` is called from the client's threads once a signal counts as processed
    (the API contract, "Checkpoints"); it may batch, as long as ``flush`` (when present)
    writes everything. An optional ``restart(strategy_id, seq_id)`` is called instead of
    ``save`` for the signal with which the server restarted a strategy's numbering (a
    ``seq_id`` far below the last one, the API contract, "Reconnecting"): the point
    goes down to it. Without it, ``save`` is called.
    """

    def load(self) -> dict[int, int]:
        """Return ``{strategy_id: last processed seq_id}``."""
        ...

    def save(self, strategy_id: int, seq_id: int) -> None:
        """Record that ``seq_id`` of ``strategy_id`` was processed."""
        ...


class FileCheckpoint:
    """A JSON file ``{"<strategy_id>": seq_id}``, replaced atomically (write, fsync, rename).

    A crash never leaves it half-written. Saves are batched: the file is written at most
    every ``interval`` seconds, and on :meth:`flush` (which ``close()`` calls); a crash in
    between costs duplicates after the restart, never a loss.

    Args:
        path: the file.
        interval: the least time between two writes, seconds (0 writes on every save).
    """

    def __init__(self, path: str | os.PathLike[str], *, interval: float = 0.25) -> None:
        self.path = os.fspath(path)
        self.interval = interval
        self._lock = threading.Lock()
        self._points: dict[int, int] = {}
        self._dirty = False
        self._written_at = float("-inf")

    def __repr__(self) -> str:
        return f"FileCheckpoint({self.path!r})"

    def load(self) -> dict[int, int]:
        """Read the file; a missing file is an empty checkpoint.

        Raises:
            ValueError: the file exists but is not a checkpoint.
        """
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            data = {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"checkpoint {self.path!r} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"checkpoint {self.path!r} is not a JSON object")
        points: dict[int, int] = {}
        for key, value in data.items():
            if not key.isdigit() or type(value) is not int or value < 0:
                raise ValueError(
                    f"checkpoint {self.path!r} holds {key!r}: {value!r}, "
                    "not a strategy id and a seq_id"
                )
            points[int(key)] = value
        with self._lock:
            for strategy_id, seq_id in points.items():
                if seq_id > self._points.get(strategy_id, -1):
                    self._points[strategy_id] = seq_id
            return dict(self._points)

    def save(self, strategy_id: int, seq_id: int) -> None:
        """Record a processed signal; write the file if ``interval`` has passed."""
        with self._lock:
            if seq_id <= self._points.get(strategy_id, -1):
                return
            self._points[strategy_id] = seq_id
            self._dirty = True
            if time.monotonic() - self._written_at >= self.interval:
                self._write()

    def restart(self, strategy_id: int, seq_id: int) -> None:
        """The server restarted the strategy's numbering: record ``seq_id`` even though it
        is below the point held."""
        with self._lock:
            self._points[strategy_id] = seq_id
            self._dirty = True
            if time.monotonic() - self._written_at >= self.interval:
                self._write()

    def flush(self) -> None:
        """Write whatever is not written yet."""
        with self._lock:
            if self._dirty:
                self._write()

    def _write(self) -> None:
        import tempfile  # here, not at import: it brings shutil, random, bz2 and lzma

        directory = os.path.dirname(os.path.abspath(self.path))
        text = json.dumps({str(k): v for k, v in sorted(self._points.items())})
        fd, tmp = tempfile.mkstemp(prefix=".c2sync-", suffix=".tmp", dir=directory)
        try:
            # mkstemp makes the file 0600: keep the checkpoint's own mode (0644 when new).
            try:
                mode = os.stat(self.path).st_mode & 0o777
            except OSError:
                mode = 0o644
            os.chmod(tmp, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_directory(directory)  # so the rename itself survives a power cut
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._dirty = False
        self._written_at = time.monotonic()


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. a platform that cannot open directories
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
