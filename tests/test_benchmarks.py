"""The benchmark harness (benchmarks/) runs end to end in its quick mode.

Only that it produces a number for every metric is checked, never a timing: timings belong
to benchmarks/README.md, measured on a quiet machine, not to a shared CI runner.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
C2SYNC = ("c2sync-recv", "c2sync-callback")
PURE = ("c2sync-recv-pure", "c2sync-callback-pure")
BASELINES = ("websocket-client", "websockets-sync", "websockets-asyncio")
EVERY = C2SYNC + BASELINES


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--quiet", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Throughput" in proc.stdout
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_throughput_numbers_and_ratios(quick_run: dict[str, Any]) -> None:
    """Every client's signals/s, and its ratios to the websocket-client loop and to the best
    hand-written loop (asyncio included), are measured, c2sync on both JSON paths."""
    section = quick_run["summary"]["throughput"]
    for impl in EVERY + PURE:
        assert number(section[impl]["signals_per_s"]["median"]), impl
        assert number(section[impl]["ratio"]["median"]), impl
        assert number(section[impl]["ratio_best_peer"]["median"]), impl
    assert section["websocket-client"]["ratio"]["median"] == 1.0
    assert max(section[peer]["ratio_best_peer"]["median"] for peer in BASELINES) == 1.0


def test_both_decoder_paths_are_measured(quick_run: dict[str, Any]) -> None:
    """The -pure runs use the standard library's JSON; the others msgspec when installed."""
    decoders = quick_run["summary"]["decoders"]
    for impl in PURE:
        assert decoders[impl] == ["json"], impl
    fast = "msgspec" if importlib.util.find_spec("msgspec") else "json"
    for impl in C2SYNC:
        assert decoders[impl] == [fast], impl
    for impl in PURE:
        assert number(quick_run["summary"]["latency"][impl]["p50_ms"]["median"]), impl


def test_memory_per_queued_message(quick_run: dict[str, Any]) -> None:
    """What each message waiting in the recv() queue costs is measured, on both paths."""
    for impl in ("c2sync-recv", "c2sync-recv-pure"):
        section = quick_run["summary"]["queued"][impl]
        assert number(section["traced_bytes_per_msg"]["median"]), impl
        assert section["traced_bytes_per_msg"]["median"] > 0, impl
        assert number(section["rss_bytes_per_msg"]["median"]), impl


def test_latency_numbers(quick_run: dict[str, Any]) -> None:
    """Paced one-way latency p50 and p99 come out for every client."""
    section = quick_run["summary"]["latency"]
    for impl in EVERY:
        assert number(section[impl]["p50_ms"]["median"]), impl
        assert number(section[impl]["p99_ms"]["median"]), impl


def test_heartbeat_ack_delay_numbers(quick_run: dict[str, Any]) -> None:
    """Ack delays are measured under a flood, with a CPU-bound handler, and into a slow
    consumer, for every client."""
    summary = quick_run["summary"]
    for impl in EVERY:
        for delays in (
            summary["throughput"][impl]["ack_delay"],
            summary["flood"][impl]["ack_delay"],
            summary["slow"][impl]["ack_delay"],
            summary["rss"][impl]["ack_delay"],
        ):
            assert delays["samples"] > 0, impl
            assert number(delays["p50_ms"]) and number(delays["max_ms"]), impl


def test_idle_cpu_close_and_memory_numbers(quick_run: dict[str, Any]) -> None:
    """Idle CPU, close() time and peak RSS are measured."""
    summary = quick_run["summary"]
    for impl in ("c2sync-recv", *BASELINES):
        assert number(summary["idle"][impl]["cpu_ms_per_20s"]["median"]), impl
    for impl in EVERY:
        assert number(summary["close"][impl]["close_ms"]["median"]), impl
        assert number(summary["rss"][impl]["peak_mb"]["median"]), impl


def test_the_run_describes_the_machine(quick_run: dict[str, Any]) -> None:
    """The JSON says where the numbers come from: CPUs, CPU model, Python, load."""
    machine = quick_run["machine"]
    assert machine["nproc"] >= 1
    assert machine["python"]
    assert machine["c2sync"], "which c2sync was measured"
    assert quick_run["failures"] == []


def test_script_entry_point_help() -> None:
    """``python benchmarks/run.py --help`` works from anywhere (the README's command)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "--quick" in proc.stdout


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_instructions_per_signal_are_counted(tmp_path: Path) -> None:
    """``benchmarks/instructions.py`` counts the instructions one signal costs a client,
    from the difference between a short and a long flood under callgrind."""
    out = tmp_path / "instructions.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "instructions.py"),
            "--only",
            "c2sync-recv",
            "--short",
            "200",
            "--long",
            "1200",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    per_signal = json.loads(out.read_text())["per_signal"]
    # About 100,000 on CPython 3.11: a count of the whole run (start-up included, ~1e9) or a
    # sign error would be off by orders of magnitude.
    assert 5_000 < per_signal["c2sync-recv"] < 400_000
    assert "instructions/signal" in proc.stdout


def test_instructions_refuses_bad_sizes() -> None:
    """A short flood at least as long as the long one is refused with a clear message."""
    script = str(ROOT / "benchmarks" / "instructions.py")
    proc = subprocess.run(
        [sys.executable, script, "--short", "5", "--long", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--short" in proc.stderr


def load_run() -> Any:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rounds_of(delays_ms: list[list[float]]) -> list[dict[str, Any]]:
    return [
        {"round": k, "server": {"ack_delays": [d / 1000 for d in delays]}}
        for k, delays in enumerate(delays_ms)
    ]


def test_the_flood_ack_p50_is_compared_with_an_interval() -> None:
    """The p50 difference to the websocket-client loop comes with a paired bootstrap
    interval over rounds: it holds the difference, lies below zero for a client faster in
    every round, spans zero for one that is not, and is left out with fewer than 2 rounds."""
    run = load_run()
    loop = [[0.30, 0.31, 0.32], [0.40, 0.41, 0.42], [0.25, 0.26, 0.27], [0.35, 0.36, 0.37]]
    faster = [[d - 0.02 for d in delays] for delays in loop]
    mixed = [[d + s for d in delays] for delays, s in zip(loop, (0.05, -0.05, 0.04, -0.04))]
    ahead = run._p50_difference(rounds_of(faster), rounds_of(loop))
    assert ahead["rounds"] == 4
    assert ahead["diff_ms"] == pytest.approx(-0.02)
    assert ahead["low_ms"] <= ahead["diff_ms"] <= ahead["high_ms"] < 0
    level = run._p50_difference(rounds_of(mixed), rounds_of(loop))
    assert level["low_ms"] < 0 < level["high_ms"]
    assert run._p50_difference(rounds_of(loop[:1]), rounds_of(loop[:1]))["rounds"] == 0
    # Rounds the loop is missing from are left out, not compared with other rounds.
    assert run._p50_difference(rounds_of(faster), rounds_of(loop)[:2])["rounds"] == 2


def test_a_run_can_be_limited_to_some_clients(tmp_path: Path) -> None:
    """``--clients`` measures only the named clients; an unknown name is refused."""
    out = tmp_path / "two.json"
    script = str(ROOT / "benchmarks" / "run.py")
    proc = subprocess.run(
        [sys.executable, script, "--quick", "--quiet", "--only", "flood",
         "--clients", "c2sync-recv,websocket-client", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    measured = json.loads(out.read_text())["raw"]["flood"]
    assert sorted(measured) == ["c2sync-recv", "websocket-client"]
    assert "hb p50 - loop" in proc.stdout
    proc = subprocess.run(
        [sys.executable, script, "--quick", "--clients", "c2sync-nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "unknown clients: c2sync-nope" in proc.stderr
