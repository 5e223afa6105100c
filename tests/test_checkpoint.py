"""Checkpoints: the last processed seq_id per strategy survives a restart, the file is
replaced atomically, and saves may be batched but are never lost on flush."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import c2sync.checkpoint as checkpoint_module
from c2sync import Checkpoint, FileCheckpoint


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(checkpoint_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def on_disk(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_round_trip_across_instances(tmp_path: Path) -> None:
    """What one run saves and flushes, the next run loads."""
    path = tmp_path / "state.json"
    writer = FileCheckpoint(path, interval=3600)
    writer.save(12345678, 41)
    writer.save(12345678, 42)
    writer.save(87654321, 7)
    writer.flush()
    assert FileCheckpoint(path).load() == {12345678: 42, 87654321: 7}
    assert on_disk(path) == {"12345678": 42, "87654321": 7}


def test_accepts_str_and_pathlike(tmp_path: Path) -> None:
    """A str or os.PathLike path both work."""
    for path in (str(tmp_path / "a.json"), tmp_path / "b.json"):
        cp = FileCheckpoint(path, interval=0)
        cp.save(1, 2)
        assert FileCheckpoint(path).load() == {1: 2}


def test_missing_file_is_empty(tmp_path: Path) -> None:
    """A checkpoint that was never written loads as empty, creating nothing."""
    path = tmp_path / "none.json"
    assert FileCheckpoint(path).load() == {}
    assert not path.exists()


def test_interval_zero_writes_every_save(tmp_path: Path) -> None:
    """With interval=0 each save is on disk at once."""
    path = tmp_path / "state.json"
    cp = FileCheckpoint(path, interval=0)
    for seq in (1, 2, 3):
        cp.save(5, seq)
        assert on_disk(path) == {"5": seq}


def test_interval_batches_until_flush(tmp_path: Path) -> None:
    """With interval=3600 a second save is not written until flush()."""
    path = tmp_path / "state.json"
    cp = FileCheckpoint(path, interval=3600)
    cp.save(5, 1)
    assert on_disk(path) == {"5": 1}  # the first save goes out at once
    cp.save(5, 2)
    cp.save(6, 9)
    assert on_disk(path) == {"5": 1}
    cp.flush()
    assert on_disk(path) == {"5": 2, "6": 9}


def test_interval_writes_again_once_it_has_passed(tmp_path: Path, clock: FakeClock) -> None:
    """A save after the interval has passed writes everything pending."""
    path = tmp_path / "state.json"
    cp = FileCheckpoint(path, interval=1.0)
    cp.save(5, 1)
    clock.now += 0.5
    cp.save(5, 2)
    assert on_disk(path) == {"5": 1}
    clock.now += 0.5
    cp.save(5, 3)
    assert on_disk(path) == {"5": 3}


def test_flush_with_nothing_pending_does_not_write(tmp_path: Path) -> None:
    """flush() without new saves leaves the file alone (and creates none)."""
    path = tmp_path / "state.json"
    cp = FileCheckpoint(path, interval=3600)
    cp.flush()
    assert not path.exists()
    cp.save(1, 1)
    path.write_text('{"1": 99}', encoding="utf-8")  # someone else's later write
    cp.flush()
    assert on_disk(path) == {"1": 99}


def test_save_never_goes_backwards(tmp_path: Path) -> None:
    """Saving a lower seq_id than already recorded keeps the higher one."""
    path = tmp_path / "state.json"
    cp = FileCheckpoint(path, interval=0)
    cp.save(5, 10)
    cp.save(5, 3)
    cp.flush()
    assert FileCheckpoint(path).load() == {5: 10}


def test_load_keeps_the_higher_of_file_and_memory(tmp_path: Path) -> None:
    """load() merges the file with unsaved progress, keeping the higher seq per strategy."""
    path = tmp_path / "state.json"
    path.write_text('{"5": 10, "6": 3}', encoding="utf-8")
    cp = FileCheckpoint(path, interval=3600)
    assert cp.load() == {5: 10, 6: 3}
    cp.save(6, 8)
    cp.save(5, 4)
    assert cp.load() == {5: 10, 6: 8}


def test_load_returns_a_copy(tmp_path: Path) -> None:
    """Changing the dict load() returned does not change the checkpoint."""
    cp = FileCheckpoint(tmp_path / "state.json", interval=0)
    cp.save(1, 5)
    points = cp.load()
    points[1] = 0
    assert cp.load() == {1: 5}


def test_no_temporary_files_are_left(tmp_path: Path) -> None:
    """After many writes the directory holds only the checkpoint file."""
    path = tmp_path / "state.json"
    cp = FileCheckpoint(path, interval=0)
    for seq in range(20):
        cp.save(1, seq)
    cp.flush()
    assert os.listdir(tmp_path) == ["state.json"]


def test_crash_during_replace_leaves_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure at the rename keeps the previous file whole and leaves no temp file."""
    path = tmp_path / "state.json"
    cp = FileCheckpoint(path, interval=0)
    cp.save(1, 5)
    before = path.read_bytes()

    def crash(src: Any, dst: Any) -> None:
        raise OSError("disk pulled out")

    monkeypatch.setattr(checkpoint_module.os, "replace", crash)
    with pytest.raises(OSError):
        cp.save(1, 6)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["state.json"]
    monkeypatch.undo()
    cp.flush()  # the failed write is still pending and goes out now
    assert FileCheckpoint(path).load() == {1: 6}


def test_crash_during_write_leaves_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure before the rename (fsync) never touches the existing file."""
    path = tmp_path / "state.json"
    cp = FileCheckpoint(path, interval=0)
    cp.save(1, 5)

    def crash(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(checkpoint_module.os, "fsync", crash)
    with pytest.raises(OSError):
        cp.save(1, 6)
    assert on_disk(path) == {"1": 5}
    assert os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b'{"1": 5',
        b"[1, 2]",
        b"5",
        b'"text"',
        b'{"1": "five"}',
        b'{"one": 5}',
        b'{"1": null}',
        b'{"1": [5]}',
        b"\xff\xfe\x00garbage",
    ],
)
def test_corrupt_file_is_value_error(tmp_path: Path, content: bytes) -> None:
    """A file that is not a checkpoint makes load() raise ValueError."""
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        FileCheckpoint(path).load()


def test_user_object_satisfies_checkpoint_protocol() -> None:
    """Any object with load() and save() is a Checkpoint; one without save is not."""

    class Memory:
        def __init__(self) -> None:
            self.points: dict[int, int] = {}

        def load(self) -> dict[int, int]:
            return dict(self.points)

        def save(self, strategy_id: int, seq_id: int) -> None:
            self.points[strategy_id] = seq_id

    class LoadOnly:
        def load(self) -> dict[int, int]:
            return {}

    assert isinstance(Memory(), Checkpoint)
    assert not isinstance(LoadOnly(), Checkpoint)
    assert isinstance(FileCheckpoint("x.json"), Checkpoint)


def test_repr_shows_the_path() -> None:
    """repr() names the file, for debugging."""
    assert "state.json" in repr(FileCheckpoint("state.json"))


@pytest.mark.parametrize("value", ["5.7", "true", "-3", '"12"'])
def test_load_rejects_values_that_are_not_seq_ids(tmp_path: Path, value: str) -> None:
    """A checkpoint holding a float, a bool, a negative or a string is refused, not coerced."""
    path = tmp_path / "state.json"
    path.write_text(f'{{"12345678": {value}}}')
    with pytest.raises(ValueError, match="12345678"):
        FileCheckpoint(path).load()


def test_replacing_the_file_keeps_its_mode(tmp_path: Path) -> None:
    """The atomic replace keeps the checkpoint's permissions (mkstemp's 0600 is not kept)."""
    path = tmp_path / "state.json"
    store = FileCheckpoint(path, interval=0)
    store.save(1, 1)
    assert os.stat(path).st_mode & 0o777 == 0o644
    os.chmod(path, 0o640)
    store.save(1, 2)
    assert os.stat(path).st_mode & 0o777 == 0o640
