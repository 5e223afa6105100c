"""Every script in samples/ runs against a real emulator, configured only through
C2_API_KEY and C2_WS_URL, and prints what it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from c2sync.emulator import Emulator

from .conftest import API_KEY, FORBIDDEN_STRATEGY, STRATEGY, WAIT

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
RUN_BOUND = 30.0  # seconds any sample may run; never reached when it works


def sample_env(emulator: Emulator, key: str = API_KEY) -> dict[str, str]:
    env = dict(os.environ)
    env.update(C2_API_KEY=key, C2_WS_URL=emulator.url, PYTHONUNBUFFERED="1")
    return env


def run_sample(
    name: str, *args: str, env: dict[str, str], cwd: Path, bound: float = RUN_BOUND
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SAMPLES / name), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=bound,
    )


def subscribed(emulator: Emulator, channel: str = "strategy.signal") -> bool:
    return any(
        (channel, STRATEGY) in record.subscriptions
        for record in emulator.connections
        if record.is_open
    )


@pytest.fixture
def publish_when_subscribed(emulator: Emulator) -> Iterator[Callable[[int], None]]:
    """Publish ``count`` signals once a client has subscribed (in a background thread)."""
    threads: list[threading.Thread] = []

    def start(count: int) -> None:
        def publish() -> None:
            try:
                emulator.wait_for(lambda: subscribed(emulator), WAIT)
            except (TimeoutError, RuntimeError):
                return  # the sample failed before subscribing: its own assertions say why
            for _ in range(count):
                emulator.publish_signal(STRATEGY)

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    for thread in threads:
        thread.join(WAIT)


def test_every_sample_is_tested() -> None:
    """Each script shipped in samples/ has a test here (a new sample cannot go untested)."""
    tested = {
        "connect_and_wait.py",
        "subscribe_recv.py",
        "callbacks.py",
        "checkpoint_resume.py",
        "errors_and_gaps.py",
        "handler_with_emulator.py",
        "run_notebook.py",
    }
    assert {p.name for p in SAMPLES.glob("*.py")} == tested


def test_connect_and_wait(emulator: Emulator, tmp_path: Path) -> None:
    """connect_and_wait.py connects, stays up while heartbeats are answered, and closes."""
    result = run_sample(
        "connect_and_wait.py", "--seconds", "1", env=sample_env(emulator), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("connected: <c2sync.Client OPEN ")
    heartbeats = next(line for line in lines if line.startswith("heartbeats received"))
    received, answered = (int(part.split(":")[1]) for part in heartbeats.split(","))
    assert received >= 2 and answered == received  # 0.2 s heartbeats for 1 s
    assert lines[-1].startswith("closed: <c2sync.Client CLOSED ")
    emulator.wait_for_connections(0, WAIT)
    assert emulator.connections[0].close_code == 1000
    assert API_KEY not in result.stdout + result.stderr


def test_subscribe_recv(
    emulator: Emulator, tmp_path: Path, publish_when_subscribed: Callable[[int], None]
) -> None:
    """subscribe_recv.py prints each signal that recv() returns, in order, then exits."""
    publish_when_subscribed(3)
    result = run_sample(
        "subscribe_recv.py", str(STRATEGY), "--count", "3", env=sample_env(emulator), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"subscribed: strategy.signal {STRATEGY}"
    assert [line.split()[1] for line in lines[1:]] == ["seq_id=1", "seq_id=2", "seq_id=3"]
    assert all(f"strategy={STRATEGY}" in line for line in lines[1:])


def test_callbacks_stops_after_count(
    emulator: Emulator, tmp_path: Path, publish_when_subscribed: Callable[[int], None]
) -> None:
    """callbacks.py handles signals in callbacks and stops by itself after --count."""
    publish_when_subscribed(4)
    result = run_sample(
        "callbacks.py", str(STRATEGY), "--count", "3", env=sample_env(emulator), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "state: CONNECTING" in out and "state: OPEN" in out
    signals = [line for line in out.splitlines() if line.startswith("signal ")]
    assert [line.split()[1] for line in signals] == ["seq_id=1", "seq_id=2", "seq_id=3"]
    assert "done: 3 signal(s)" in out
    assert "Traceback" not in result.stderr


def test_callbacks_stops_after_seconds(emulator: Emulator, tmp_path: Path) -> None:
    """callbacks.py with --seconds returns from run_forever() on time and closes cleanly."""
    result = run_sample(
        "callbacks.py", str(STRATEGY), "--seconds", "0.5", env=sample_env(emulator), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "done: 0 signal(s)" in result.stdout
    assert "state: CLOSED" in result.stdout
    emulator.wait_for_connections(0, WAIT)
    assert emulator.connections[0].close_code == 1000


def test_checkpoint_resume_across_runs(
    emulator: Emulator, tmp_path: Path, publish_when_subscribed: Callable[[int], None]
) -> None:
    """checkpoint_resume.py's second run gets exactly the signals published between runs."""
    checkpoint = tmp_path / "state.json"
    env = sample_env(emulator)
    args = (str(STRATEGY), "--checkpoint", str(checkpoint), "--count", "2", "--timeout", "10")

    publish_when_subscribed(2)
    first = run_sample("checkpoint_resume.py", *args, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "checkpoint: none yet" in first.stdout
    assert "processing signal seq_id=1" in first.stdout
    assert "processing signal seq_id=2" in first.stdout
    assert json.loads(checkpoint.read_text()) == {str(STRATEGY): 2}

    emulator.wait_for_connections(0, WAIT)
    for _ in range(2):
        emulator.publish_signal(STRATEGY)  # seq_ids 3 and 4, nobody connected

    second = run_sample("checkpoint_resume.py", *args, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "checkpoint: last processed seq_id 2" in second.stdout
    processed = [line for line in second.stdout.splitlines() if line.startswith("processing")]
    assert processed == ["processing signal seq_id=3", "processing signal seq_id=4"]
    assert json.loads(checkpoint.read_text()) == {str(STRATEGY): 4}
    resumes = [r.resume_from for r in emulator.connections[-1].subscription_requests]
    assert resumes == [2]


def test_errors_and_gaps_reports_the_gap(tmp_path: Path) -> None:
    """errors_and_gaps.py prints the replayed signals and then the Gap, loudly."""
    with Emulator(api_keys={API_KEY}, strategies={STRATEGY}, max_replay=3) as emu:
        for _ in range(10):
            emu.publish_signal(STRATEGY)
        result = run_sample(
            "errors_and_gaps.py",
            str(STRATEGY),
            "--resume-from",
            "2",
            "--count",
            "4",
            "--timeout",
            "10",
            env=sample_env(emu),
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        f"subscribed to {STRATEGY}",
        "signal seq_id=3",
        "signal seq_id=4",
        "signal seq_id=5",
    ]
    assert lines[4].startswith(f"GAP: strategy {STRATEGY} after seq_id 2: ")


def test_errors_and_gaps_bad_key(emulator: Emulator, tmp_path: Path) -> None:
    """errors_and_gaps.py turns a refused key into one line and exit status 2."""
    result = run_sample(
        "errors_and_gaps.py",
        str(STRATEGY),
        env=sample_env(emulator, key="not-the-key"),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "the API key was refused: Invalid API key"
    assert "not-the-key" not in result.stdout + result.stderr


def test_errors_and_gaps_refused_subscription(emulator: Emulator, tmp_path: Path) -> None:
    """errors_and_gaps.py reports a FORBIDDEN subscription with exit status 5."""
    result = run_sample(
        "errors_and_gaps.py", str(FORBIDDEN_STRATEGY), env=sample_env(emulator), cwd=tmp_path
    )
    assert result.returncode == 5
    assert result.stderr.strip().startswith("subscription refused: FORBIDDEN")


def test_errors_and_gaps_rate_limited(emulator: Emulator, tmp_path: Path) -> None:
    """errors_and_gaps.py shows Retry-After from a 429 and exits with status 3."""
    emulator.refuse_next(1, 429, headers={"Retry-After": "7"})
    result = run_sample("errors_and_gaps.py", str(STRATEGY), env=sample_env(emulator), cwd=tmp_path)
    assert result.returncode == 3
    assert result.stderr.strip() == "rate limited (RATE_LIMITED); retry in 7 s"


def test_handler_with_emulator(tmp_path: Path) -> None:
    """handler_with_emulator.py's own unit and end-to-end tests pass when run as a script."""
    env = {k: v for k, v in os.environ.items() if k not in ("C2_API_KEY", "C2_WS_URL")}
    result = run_sample("handler_with_emulator.py", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "unit test: OK",
        "end-to-end test against the emulator: OK",
    ]


def test_run_notebook_runs_every_cell_against_the_emulator(tmp_path: Path) -> None:
    """run_notebook.py (the documented headless command) starts the emulator, hands its URL
    and key to a fresh kernel, and runs the whole notebook: every code cell's output is
    printed, the last closes the client, and --output saves the executed notebook."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    env = {k: v for k, v in os.environ.items() if k not in ("C2_API_KEY", "C2_WS_URL")}
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    saved = tmp_path / "run.ipynb"
    result = run_sample(
        "run_notebook.py", "--output", str(saved), env=env, cwd=tmp_path, bound=4 * RUN_BOUND
    )
    assert result.returncode == 0, result.stderr
    assert "connected, subscribed to strategy 12345678" in result.stdout
    assert "<c2sync.Client CLOSED " in result.stdout.splitlines()[-2]
    assert "Handle(" not in result.stdout  # no cell shows a callback's handle
    cells = json.loads(saved.read_text(encoding="utf-8"))["cells"]
    code = [cell for cell in cells if cell["cell_type"] == "code"]
    assert all(cell["execution_count"] for cell in code)


def test_the_notebook_extra_installs_what_the_notebook_needs() -> None:
    """``pip install ".[notebook]"`` brings the emulator, pandas, a kernel and what
    run_notebook.py imports."""
    import configparser

    config = configparser.ConfigParser()
    config.read(SAMPLES.parent / "setup.cfg", encoding="utf-8")
    lines = config["options.extras_require"]["notebook"].split("\n")
    names = {line.split(">")[0].strip() for line in lines if line.strip()}
    assert names >= {"websockets", "pandas", "ipykernel", "nbclient", "nbformat"}
