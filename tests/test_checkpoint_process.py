"""Checkpoints resume across restarts: a crash costs duplicates of unprocessed signals, never
a loss; a clean close resumes exactly after the last processed one (docs/api-contract.md
"Checkpoints").
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import c2sync
from c2sync.emulator import Emulator

from .conftest import API_KEY, STRATEGY, WAIT

# A consumer as a user would write it: print each seq_id as it is processed.
_CONSUMER = textwrap.dedent(
    """
    import sys
    import c2sync

    key, url, path, strategy = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    policy = c2sync.ReconnectPolicy(initial=0.05, maximum=0.2)
    client = c2sync.connect(
        key, url=url, checkpoint=path, heartbeat_timeout=2.0, reconnect_policy=policy
    )
    client.subscribe(c2sync.SIGNAL, strategy)
    print("ready", flush=True)
    for message in client:
        if isinstance(message, c2sync.Signal):
            print(message.seq_id, flush=True)
    """
)

AHEAD = 20  # signals published beyond what the consumer has printed: it is mid-stream
KILL_AFTER = 100
TOTAL = 300


class Consumer:
    """The consumer script in a subprocess; its stdout lines arrive on a queue, and its
    stderr is drained as it comes, so a chatty child never blocks on a full pipe."""

    def __init__(self, emulator: Emulator, checkpoint: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CONSUMER,
                API_KEY,
                emulator.url,
                str(checkpoint),
                str(STRATEGY),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[int] = []
        self._errors: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()
        self._error_pump = threading.Thread(target=self._read_stderr, daemon=True)
        self._error_pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._errors.append(line)

    def wait_ready(self) -> None:
        assert self.lines.get(timeout=WAIT) == "ready", self._stderr()

    def next_seq(self) -> int:
        line = self.lines.get(timeout=WAIT)
        assert line is not None, self._stderr()
        self.seen.append(int(line))
        return self.seen[-1]

    def kill_and_drain(self) -> None:
        """SIGKILL, then keep every line it printed before dying."""
        self.proc.kill()
        self.proc.wait(WAIT)
        while (line := self.lines.get(timeout=WAIT)) is not None:
            self.seen.append(int(line))
        self._pump.join(WAIT)

    def _stderr(self) -> str:
        if self.proc.poll() is not None:
            self._error_pump.join(WAIT)  # it ends at the pipe's EOF
        text = "".join(self._errors)
        return text if text else "(nothing on stderr so far)"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        # The pumps end at EOF once the child is gone; close the pipes only after them.
        self._pump.join(WAIT)
        self._error_pump.join(WAIT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _stored(path: Path) -> int:
    """The checkpoint's seq_id for STRATEGY; the file always parses (atomic replace)."""
    return int(json.loads(path.read_text(encoding="utf-8"))[str(STRATEGY)])


def test_sigkilled_consumer_restarted_from_its_checkpoint_misses_nothing(
    emulator: Emulator, tmp_path: Path
) -> None:
    """A consumer SIGKILLed mid-stream and restarted on its checkpoint misses nothing."""
    checkpoint = tmp_path / "state.json"
    published = 0

    def publish_up_to(target: int) -> None:
        nonlocal published
        while published < min(target, TOTAL):
            published = emulator.publish_signal(STRATEGY)

    first = Consumer(emulator, checkpoint)
    try:
        first.wait_ready()
        publish_up_to(AHEAD)
        while len(first.seen) < KILL_AFTER:
            publish_up_to(first.next_seq() + AHEAD)
        first.kill_and_drain()
    finally:
        first.close()
    stored = _stored(checkpoint)
    publish_up_to(published + 50)  # while nobody is connected

    second = Consumer(emulator, checkpoint)
    try:
        second.wait_ready()
        while not second.seen or second.seen[-1] < TOTAL:
            publish_up_to(second.next_seq() + AHEAD)
        second.close()
    finally:
        second.close()

    a, b = first.seen, second.seen
    assert a == list(range(1, len(a) + 1)), "the first run skipped or repeated a signal"
    assert published > a[-1], "the first run was not killed mid-stream"
    assert 1 <= stored <= a[-1], "the checkpoint is ahead of what was handed out"
    assert b == list(range(stored + 1, TOTAL + 1)), "the restart did not resume at the checkpoint"
    assert set(a) | set(b) == set(range(1, TOTAL + 1))
    assert set(a) & set(b) == set(range(stored + 1, a[-1] + 1))  # only the unprocessed ones
    restart = emulator.connections[1]
    assert restart.subscription_requests[0].resume_from == stored


@pytest.mark.parametrize("how", ["close", "with-block"])
def test_clean_close_flushes_so_a_restart_resumes_right_after_the_last_processed(
    emulator: Emulator, tmp_path: Path, how: str
) -> None:
    """A clean close counts the message in hand and flushes: a restart resumes right after."""
    checkpoint = tmp_path / "state.json"
    client = c2sync.connect(API_KEY, url=emulator.url, checkpoint=str(checkpoint))
    with client:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        for _ in range(10):
            emulator.publish_signal(STRATEGY)
        assert [client.recv(timeout=WAIT).seq_id for _ in range(6)] == [1, 2, 3, 4, 5, 6]
        if how == "close":
            client.close()
    assert _stored(checkpoint) == 6

    with c2sync.connect(API_KEY, url=emulator.url, checkpoint=checkpoint) as again:
        again.subscribe(c2sync.SIGNAL, STRATEGY)
        emulator.publish_signal(STRATEGY)
        assert [again.recv(timeout=WAIT).seq_id for _ in range(5)] == [7, 8, 9, 10, 11]
    assert emulator.connections[1].subscription_requests[0].resume_from == 6
    assert _stored(checkpoint) == 11


def test_with_block_left_by_an_exception_does_not_count_the_message_in_hand(
    emulator: Emulator, tmp_path: Path
) -> None:
    """An exception leaving the with block: the signal being handled comes again."""
    checkpoint = tmp_path / "state.json"
    with pytest.raises(RuntimeError, match="handler failed"), c2sync.connect(
        API_KEY, url=emulator.url, checkpoint=checkpoint
    ) as client:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        for _ in range(10):
            emulator.publish_signal(STRATEGY)
        for _ in range(6):
            message = client.recv(timeout=WAIT)
        assert message.seq_id == 6
        raise RuntimeError("handler failed on 6")
    assert _stored(checkpoint) == 5

    with c2sync.connect(API_KEY, url=emulator.url, checkpoint=checkpoint) as again:
        again.subscribe(c2sync.SIGNAL, STRATEGY)
        assert again.recv(timeout=WAIT).seq_id == 6


def test_callbacks_count_a_signal_once_they_return(emulator: Emulator, tmp_path: Path) -> None:
    """With callbacks, a signal is processed once its callback returned; close() flushes."""
    checkpoint = tmp_path / "state.json"
    marker = threading.Event()
    with c2sync.connect(API_KEY, url=emulator.url, checkpoint=checkpoint) as client:
        client.on(c2sync.SIGNAL, lambda message: None)
        # Callbacks run in arrival order on one thread: when the marker's runs, signal 8's
        # callback has returned.
        client.on("test.marker", lambda message: marker.set())
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        for _ in range(8):
            emulator.publish_signal(STRATEGY)
        emulator.send_raw('{"msg_type":"test.marker"}')
        assert marker.wait(WAIT)
    assert _stored(checkpoint) == 8


def test_a_callback_finishing_during_close_is_counted(emulator: Emulator, tmp_path: Path) -> None:
    """A callback that returns while close() waits for the dispatcher counts as processed."""
    checkpoint = tmp_path / "state.json"
    started = threading.Event()
    release = threading.Event()

    def on_signal(message: c2sync.Message) -> None:
        if message.seq_id == 8:
            started.set()
            release.wait(WAIT)  # the user's slow handler, still running when close() begins

    closing_logged = threading.Event()

    class ClosingSeen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("closing"):
                closing_logged.set()

    handler = ClosingSeen(logging.INFO)
    logger = logging.getLogger("c2sync")
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    client = c2sync.connect(API_KEY, url=emulator.url, checkpoint=checkpoint)
    try:
        client.on(c2sync.SIGNAL, on_signal)
        client.subscribe(c2sync.SIGNAL, STRATEGY)
        for _ in range(8):
            emulator.publish_signal(STRATEGY)
        assert started.wait(WAIT)
        closer = threading.Thread(target=client.close)
        closer.start()
        # Let the callback return only once close() has begun. on_state(CLOSED) cannot tell:
        # it runs on the dispatcher, busy in this very callback; close() logs "closing" as
        # it begins, so a log handler tells, bounded and event-based.
        closing = closing_logged.wait(WAIT)
        release.set()
        closer.join(WAIT)
        assert closing, "close() never began"
        assert not closer.is_alive(), "close() did not return"
    finally:
        release.set()
        client.close()
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    assert _stored(checkpoint) == 8
