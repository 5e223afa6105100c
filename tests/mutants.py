"""Mutation testing as a habit: one planted bug per guarantee of docs/api-contract.md.

Each mutant is a small source edit (file, the exact old text, the new text) with the
guarantee it breaks and the tests that must catch it. ``python -m tests.mutants`` (the
``mutants`` nox session) copies the tree to a temporary directory, runs the named tests
there unmutated once (they must pass), then for each mutant applies its edits in the copy,
runs only its tests, and requires them to fail; the copy's file is restored after each.

An ``old`` text that does not occur exactly once is an error, never a silent pass: when
the code moves, move the mutant with it. A mutant that survives is an error too: either
the suite lost the test of that guarantee, or the mutant no longer breaks it.

    python -m tests.mutants               # all of them
    python -m tests.mutants -k checkpoint # those whose name contains "checkpoint"
    python -m tests.mutants --list        # the table: guarantee, mutant, tests
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("c2sync", "tests", "docs", "samples", "README.rst", "pyproject.toml", "setup.cfg")
PER_MUTANT_TIMEOUT = 120  # seconds: a hung mutant is an error, not a kill


class Edit(NamedTuple):
    file: str
    old: str
    new: str


class Mutant(NamedTuple):
    name: str
    section: str  # the docs/api-contract.md section the guarantee is in
    guarantee: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


G = "tests/test_guarantees.py::"
ACK_TEST = G + "test_the_ack_reaches_the_server_before_user_code_sees_the_read"

# The reader hands a read's messages on first and sends the acks after them.
ACKS_AFTER_DELIVERY = (
    Edit(
        "c2sync/_reader.py",
        "        try:\n            for frame in frames:\n                link.send(frame)\n"
        "        except ConnectionClosed as exc:\n            failed.append(exc)\n"
        "        if only_messages:\n            if happened:\n"
        "                self._deliver(happened)  # type: ignore[arg-type]\n"
        "            return\n",
        "        if only_messages:\n            if happened:\n"
        "                self._deliver(happened)  # type: ignore[arg-type]\n"
        "            happened = []\n",
    ),
    Edit(
        "c2sync/_reader.py",
        "        if deliver:\n            self._deliver(deliver)\n\n    def _on_event",
        "        if deliver:\n            self._deliver(deliver)\n"
        "        for frame in frames:\n            link.send(frame)\n\n    def _on_event",
    ),
)

MUTANTS: tuple[Mutant, ...] = (
    # Connecting --------------------------------------------------------------------------
    Mutant(
        "401-is-a-plain-handshake-error",
        "Connecting",
        "401 raises AuthenticationError with the server's status, header and body",
        (Edit("c2sync/_handshake.py", "    if status == 401:\n", "    if status == 4010:\n"),),
        ("tests/test_client.py::test_bad_key_raises_authentication_error_with_server_details",),
    ),
    Mutant(
        "heartbeat-first-is-accepted",
        "Connecting",
        "a first message other than connection.connected raises ProtocolError",
        (
            Edit(
                "c2sync/_protocol.py",
                "            if msg_type != CONNECTED:\n                got =",
                "            if msg_type not in (CONNECTED, HEARTBEAT):\n                got =",
            ),
        ),
        ("tests/test_client.py::test_wrong_first_message_raises_protocol_error",),
    ),
    # Subscribing -------------------------------------------------------------------------
    Mutant(
        "bool-is-a-strategy-id",
        "Subscribing",
        "a strategy id that is not an int > 0 (bool included) is a ValueError, nothing sent",
        (
            Edit(
                "c2sync/codec.py",
                "    if type(strategy_id) is not int or strategy_id <= 0:\n",
                "    if not isinstance(strategy_id, int) or strategy_id <= 0:\n",
            ),
        ),
        ("tests/test_client.py::test_bad_subscribe_arguments_fail_before_sending",),
    ),
    # Receiving ---------------------------------------------------------------------------
    Mutant(
        "off-from-a-callback-runs-on",
        "Receiving",
        "once off() returned (from inside a callback too) that callback never starts again",
        (
            Edit(
                "c2sync/_dispatcher.py",
                "                    if target.number not in self._live:\n",
                "                    if target.number not in self._live and False:\n",
            ),
        ),
        (G + "test_a_callback_that_removes_itself_never_runs_again_even_with_a_backlog",),
    ),
    Mutant(
        "a-raising-callback-kills-the-dispatcher",
        "Receiving",
        "an exception in a callback is logged and does not stop the client",
        (
            Edit(
                "c2sync/_dispatcher.py",
                "                except Exception as exc:\n                    ok = False\n",
                "                except ValueError as exc:\n                    ok = False\n",
            ),
        ),
        ("tests/test_client.py::test_raising_callback_is_logged_and_the_client_carries_on",),
    ),
    Mutant(
        "malformed-not-counted",
        "Receiving",
        "a frame that is not a JSON object with a msg_type is skipped and counted",
        (Edit("c2sync/_reader.py", "stats.malformed += 1", "stats.malformed += 0"),),
        ("tests/test_client.py::test_malformed_frames_are_skipped_and_counted",),
    ),
    # Heartbeats and liveness -------------------------------------------------------------
    Mutant(
        "acks-after-delivery",
        "Heartbeats and liveness",
        "each heartbeat is answered before any user code sees anything (a heartbeat too long"
        " for the early scan)",
        ACKS_AFTER_DELIVERY,
        (ACK_TEST + "[long-heartbeat-first-callback]", ACK_TEST + "[long-heartbeat-first-recv]"),
    ),
    Mutant(
        "acks-after-delivery-and-no-early-scan",
        "Heartbeats and liveness",
        "each heartbeat is answered before any user code sees anything (short heartbeats,"
        " before or after long frames in one read)",
        (
            *ACKS_AFTER_DELIVERY,
            Edit(
                "c2sync/_reader.py",
                "early = self._heartbeats_first(link, texts, failed) if len(texts) > 1 else None",
                "early = None",
            ),
        ),
        (
            ACK_TEST + "[heartbeat-first-callback]",
            ACK_TEST + "[heartbeat-after-long-frames-recv]",
        ),
    ),
    Mutant(
        "silence-is-not-a-heartbeat-timeout",
        "Heartbeats and liveness",
        "no heartbeat for heartbeat_timeout: HeartbeatTimeout",
        (Edit("c2sync/_session.py", "        if expired:\n", "        if False:\n"),),
        ("tests/test_client.py::test_silent_server_is_declared_dead",),
    ),
    # Reconnecting ------------------------------------------------------------------------
    Mutant(
        "duplicates-delivered",
        "Reconnecting",
        "a signal not above the highest seq_id held is dropped, never delivered twice",
        (
            Edit(
                "c2sync/_streams.py",
                "                return Duplicate(signal)\n",
                "                return Deliver(signal)\n",
            ),
        ),
        (G + "test_a_replay_overlapping_what_the_client_holds_is_delivered_once",),
    ),
    Mutant(
        "resume-from-the-checkpoint-not-what-is-held",
        "Reconnecting",
        "resume_from is the highest seq_id held (queued ones included)",
        (
            Edit(
                "c2sync/_streams.py",
                "        if stream is not None and stream.held is not None:\n",
                "        if False:\n",
            ),
        ),
        (G + "test_a_replay_overlapping_what_the_client_holds_is_delivered_once",),
    ),
    Mutant(
        "restart-taken-for-a-duplicate",
        "Reconnecting",
        "a seq_id more than 1000 below the highest held is a restart: delivered",
        (
            Edit(
                "c2sync/_streams.py",
                "            if held - seq_id <= RESTART_DISTANCE:\n",
                "            if True:\n",
            ),
        ),
        (
            "tests/test_reconnect.py::"
            "test_a_restarted_numbering_is_delivered_and_becomes_the_resume_point",
        ),
    ),
    Mutant(
        "lost-connection-not-told",
        "Back-pressure",
        "on_error receives a lost connection the client is re-opening",
        (
            Edit(
                "c2sync/_reader.py",
                "                host.dispatcher.post_error(loss)  # survived: on_error is told\n",
                "",
            ),
        ),
        (G + "test_on_error_is_told_of_a_lost_connection_and_of_a_refused_reconnect",),
    ),
    Mutant(
        "refused-resubscription-not-told",
        "Servers that read the docs differently",
        "a resubscription the server refuses reaches on_error and the user's stream",
        (
            Edit(
                "c2sync/_reader.py",
                "            self._deliver([event.message])\n"
                "            host.dispatcher.post_error(event.error)\n",
                "            pass\n",
            ),
        ),
        ("tests/test_server_readings.py::"
         "test_a_refused_resubscription_reaches_the_user_and_the_rest_streams_on",),
    ),
    Mutant(
        "resume-from-never-retried-as-a-string",
        "Servers that read the docs differently",
        "resume_from refused for its JSON type goes once more in the other type",
        (
            Edit(
                "c2sync/_protocol.py",
                "        if request.resume_from and not request.retried and refuses_resume_from",
                "        if False and refuses_resume_from",
            ),
        ),
        ("tests/test_server_readings.py::test_resume_from_in_the_form_the_server_takes",),
    ),
    Mutant(
        "binary-frames-refused",
        "Receiving",
        "a binary frame holding UTF-8 JSON is read like a text frame",
        (
            Edit(
                "c2sync/codec.py",
                "            text = bytes(text).decode(\"utf-8\")\n",
                "            raise ProtocolError(\"binary\")\n",
            ),
        ),
        ("tests/test_server_readings.py::test_binary_json_frames_are_read_like_text",),
    ),
    Mutant(
        "timestamps-with-milliseconds",
        "Servers that read the docs differently",
        "what the client sends is stamped in the documented form, whole seconds and Z",
        (
            Edit(
                "c2sync/codec.py",
                "    return f\"{minute[1]}{when.second:02d}Z\"\n",
                "    return f\"{minute[1]}{when.second:02d}.000Z\"\n",
            ),
        ),
        ("tests/test_server_readings.py::test_what_the_client_sends_has_the_documented_form",),
    ),
    Mutant(
        "refused-reconnect-not-told",
        "Back-pressure",
        "on_error receives a refused reconnect attempt",
        (
            Edit(
                "c2sync/_reader.py",
                "                host.dispatcher.post_error(exc)  # survived: on_error is told\n",
                "",
            ),
        ),
        (G + "test_on_error_is_told_of_a_lost_connection_and_of_a_refused_reconnect",),
    ),
    Mutant(
        "401-retried",
        "Reconnecting",
        "401 is never retried",
        (
            Edit(
                "c2sync/reconnect.py",
                "(AuthenticationError, ssl.SSLCertVerificationError)):",
                "(ssl.SSLCertVerificationError,)):",
            ),
            Edit(
                "c2sync/reconnect.py",
                "            return error.status >= 500 or error.status in (408, 429)",
                "            return error.status >= 500 or error.status in (401, 408, 429)",
            ),
        ),
        ("tests/test_reconnect.py::test_401_on_reconnect_ends_the_client_without_retrying",),
    ),
    # Checkpoints -------------------------------------------------------------------------
    Mutant(
        "a-raising-callback-counts-as-processed",
        "Checkpoints",
        "a message counts as processed once its callback returned without raising",
        (
            Edit(
                "c2sync/_dispatcher.py",
                "                    ok = False\n",
                "                    ok = True\n",
            ),
        ),
        (G + "test_a_callback_that_raised_does_not_count_its_signal_as_processed",),
    ),
    Mutant(
        "restart-cannot-move-the-file-down",
        "Checkpoints",
        "a restarted numbering becomes the new checkpoint (it goes down)",
        (
            Edit(
                "c2sync/_session.py",
                'getattr(checkpoint, "restart", checkpoint.save)(',
                "(checkpoint.save)(",
            ),
        ),
        (G + "test_a_restarted_numbering_moves_the_file_checkpoint_down",),
    ),
    Mutant(
        "recv-saves-when-handed-out",
        "Checkpoints",
        "a recv()'d signal counts as processed at the next receive call, not when handed out",
        (
            Edit(
                "c2sync/_session.py",
                "                self._in_hand = [message]\n",
                "                self._processed(message)\n",
            ),
        ),
        (G + "test_a_received_signal_is_saved_at_the_next_receive_not_when_handed_out",),
    ),
    Mutant(
        "clean-close-forgets-the-message-in-hand",
        "Checkpoints",
        "a clean close() counts the message in hand as processed",
        (
            Edit(
                "c2sync/_session.py",
                "        if clean:\n            self._commit_in_hand()\n",
                "        if False:\n            self._commit_in_hand()\n",
            ),
        ),
        (G + "test_a_received_signal_is_saved_at_the_next_receive_not_when_handed_out",),
    ),
    # Back-pressure -----------------------------------------------------------------------
    Mutant(
        "overflow-raised-forever",
        "Back-pressure",
        "the next recv() raises QueueOverflow once",
        (
            Edit(
                "c2sync/_inbox.py",
                "                    dropped, self._overflow = self._overflow, 0\n",
                "                    dropped = self._overflow\n",
            ),
        ),
        (
            "tests/test_backpressure.py::"
            "test_overflow_raises_once_keeps_the_newest_and_heartbeats_stay_on_time",
        ),
    ),
    Mutant(
        "overflow-drops-one-too-many",
        "Back-pressure",
        "the newest max_queue messages are kept",
        (
            Edit(
                "c2sync/_inbox.py",
                "            while len(queue) > self.max_queue + len(replays):\n",
                "            while len(queue) >= self.max_queue + len(replays):\n",
            ),
        ),
        (
            "tests/test_backpressure.py::"
            "test_overflow_raises_once_keeps_the_newest_and_heartbeats_stay_on_time",
        ),
    ),
    # Closing -----------------------------------------------------------------------------
    Mutant(
        "close-sends-1001",
        "Closing",
        "close() sends a close frame with 1000",
        (
            Edit(
                "c2sync/_session.py",
                "                link.send_close(code, reason, time.monotonic() + CLOSE_GRACE)\n",
                "                link.send_close(1001, reason, time.monotonic() + CLOSE_GRACE)\n",
            ),
        ),
        ("tests/test_client.py::test_close_is_idempotent_and_leaves_nothing_behind",),
    ),
    Mutant(
        "close-joins-nothing",
        "Closing",
        "close() stops and joins every thread the client started",
        (
            Edit(
                "c2sync/_session.py",
                "        for thread in self.threads():\n",
                "        for thread in ():\n",
            ),
        ),
        ("tests/test_client.py::test_close_is_idempotent_and_leaves_nothing_behind",),
    ),
    # Observability -----------------------------------------------------------------------
    Mutant(
        "key-masked-only-on-401",
        "Observability",
        "a refused handshake echoing the key shows *** everywhere, whatever the status",
        (
            Edit(
                "c2sync/_handshake.py",
                "    the JSON may spell a secret with escapes).\"\"\"\n"
                "    shown = {hide(name): hide(value) for name, value in headers.items()}\n",
                "    the JSON may spell a secret with escapes).\"\"\"\n"
                "    hide = hide if status == 401 else Redactor()\n"
                "    shown = {hide(name): hide(value) for name, value in headers.items()}\n",
            ),
        ),
        ("tests/test_public_api.py::test_a_refusal_echoing_the_key_shows_it_nowhere",),
    ),
    Mutant(
        "message-repr-unmasked",
        "Observability",
        "every message's repr() masks the key",
        (
            Edit(
                "c2sync/messages.py",
                '    return mask(f"{type(value).__qualname__}({fields})")',
                '    return f"{type(value).__qualname__}({fields})"',
            ),
        ),
        (
            "tests/test_echoed_key.py::"
            "test_an_error_nobody_asked_for_keeps_the_key_in_its_data_only",
        ),
    ),
    Mutant(
        "reconnects-not-counted",
        "Observability",
        "stats.reconnects counts successful reconnections",
        (
            Edit(
                "c2sync/_reader.py",
                "                host.stats.reconnects += 1\n",
                "                host.stats.reconnects += 0\n",
            ),
        ),
        (G + "test_on_error_is_told_of_a_lost_connection_and_of_a_refused_reconnect",),
    ),
    # Clocks and proxies ------------------------------------------------------------------
    Mutant(
        "skew-never-corrected",
        "Clocks and proxies",
        "beyond 30 s of skew what the client sends is stamped with the corrected time",
        (Edit("c2sync/_clock.py", "CORRECT_SKEW = 30.0", "CORRECT_SKEW = 3000.0"),),
        ("tests/test_clock_skew.py::test_a_client_whose_clock_is_behind_keeps_working",),
    ),
    Mutant(
        "no-proxy-ignored",
        "Clocks and proxies",
        "NO_PROXY is honoured as requests reads it",
        (
            Edit(
                "c2sync/_proxy.py",
                "    return None if bypasses_proxy(url, no_proxy) else _with_scheme(found)",
                "    return _with_scheme(found)",
            ),
        ),
        ("tests/test_proxy.py",),
    ),
)


def check_applies(mutant: Mutant, root: Path) -> list[str]:
    """Why ``mutant`` cannot be applied to the tree at ``root`` (empty: it can)."""
    problems = []
    texts: dict[str, str] = {}
    for edit in mutant.edits:
        path = root / edit.file
        if not path.is_file():
            problems.append(f"{edit.file}: no such file")
            continue
        text = texts.setdefault(edit.file, path.read_text(encoding="utf-8"))
        found = text.count(edit.old)
        if found != 1:
            problems.append(f"{edit.file}: the old text occurs {found} times, not once")
        else:
            texts[edit.file] = text.replace(edit.old, edit.new)
    return problems


def _copy(destination: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(
                source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "_build")
            )
        elif source.exists():
            shutil.copy2(source, destination / name)


def _pytest(copy: Path, tests: Sequence[str], timeout: float) -> tuple[int, str]:
    """Run ``tests`` in the copy, importing c2sync from it; (exit status, output tail)."""
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += ["--timeout", "60", *tests]
    try:
        done = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return -1, f"no result within {timeout} s"
    return done.returncode, (done.stdout + done.stderr)[-2000:]


def _try(mutant: Mutant, copy: Path) -> tuple[int, str, float]:
    """Apply ``mutant`` in ``copy``, run its tests, restore the files."""
    originals = {e.file: (copy / e.file).read_text(encoding="utf-8") for e in mutant.edits}
    texts = dict(originals)
    for edit in mutant.edits:
        texts[edit.file] = texts[edit.file].replace(edit.old, edit.new)
    started = time.monotonic()
    try:
        for name, text in texts.items():
            (copy / name).write_text(text, encoding="utf-8")
        status, output = _pytest(copy, mutant.tests, PER_MUTANT_TIMEOUT)
    finally:
        for name, text in originals.items():
            (copy / name).write_text(text, encoding="utf-8")
    return status, output, time.monotonic() - started


def run(mutants: Sequence[Mutant], jobs: int = 2) -> int:
    """Check, apply and test each mutant in a copy of the tree (``jobs`` copies, one per
    mutant at a time); 0 when every one was killed."""
    broken = {m.name: check_applies(m, ROOT) for m in mutants}
    failures = [f"{name}: {p}" for name, problems in broken.items() for p in problems]
    if failures:
        print("mutants that no longer apply (move them with the code):", *failures, sep="\n  ")
        return 1
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="c2sync-mutants-") as tmp:
        copies: queue.Queue[Path] = queue.Queue()
        for index in range(jobs):
            copy = Path(tmp) / f"copy{index}"
            _copy(copy)
            copies.put(copy)
        first = copies.get()
        probe = subprocess.run(
            [sys.executable, "-c", "import c2sync; print(c2sync.__file__)"],
            cwd=first,
            env=dict(os.environ, PYTHONPATH=str(first)),
            capture_output=True,
            text=True,
            check=True,
        )
        if not probe.stdout.strip().startswith(str(first)):
            print(f"the copy is not what gets imported: {probe.stdout.strip()}")
            return 1
        selected = sorted({t for m in mutants for t in m.tests})
        parallel = ["-n", str(jobs)] if jobs > 1 else []
        status, output = _pytest(first, [*parallel, *selected], PER_MUTANT_TIMEOUT * 3)
        copies.put(first)
        print(f"baseline: {len(selected)} selections, {time.monotonic() - began:.1f} s")
        if status != 0:
            print(f"the selected tests fail without any mutant (status {status}):\n{output}")
            return 1

        def one(mutant: Mutant) -> tuple[int, str, float]:
            copy = copies.get()
            try:
                return _try(mutant, copy)
            finally:
                copies.put(copy)

        survivors = []
        with ThreadPoolExecutor(jobs) as pool:
            for mutant, (status, output, took) in zip(mutants, pool.map(one, mutants)):
                if status == 1:  # pytest: tests failed
                    print(f"killed     {mutant.name} ({took:.1f} s)", flush=True)
                    continue
                why = {0: "survived", -1: "hung"}.get(status, f"pytest exit status {status}")
                print(f"NOT KILLED {mutant.name}: {why} ({took:.1f} s)\n{output}", flush=True)
                survivors.append(mutant.name)
    print(f"{len(mutants)} mutants in {time.monotonic() - began:.0f} s with {jobs} jobs")
    if survivors:
        print("mutants not killed:", *survivors, sep="\n  ")
        return 1
    print(f"all {len(mutants)} mutants killed")
    return 0


def table(mutants: Sequence[Mutant]) -> str:
    lines = ["| section | guarantee | mutant | killed by |", "|---|---|---|---|"]
    for m in mutants:
        tests = ", ".join(t.split("::")[-1] for t in m.tests)
        lines.append(f"| {m.section} | {m.guarantee} | `{m.name}` | {tests} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__)
    parser.add_argument("-k", dest="match", help="only mutants whose name contains this")
    parser.add_argument("--list", action="store_true", help="print the table and exit")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="mutants run at once (2)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.match or args.match in m.name]
    if not chosen:
        print(f"no mutant matches {args.match!r}")
        return 1
    if args.list:
        print(table(chosen))
        return 0
    return run(chosen, max(1, args.jobs))


if __name__ == "__main__":
    sys.exit(main())
