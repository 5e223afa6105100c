"""c2sync benchmarks: throughput, latency, heartbeat-ack delay, idle CPU, close(), memory.

Usage::

    python benchmarks/run.py [--quick] [--rounds N] [--json out.json]
    python -m benchmarks [same options]

A Collective2-protocol sender (``benchmarks/sender.py``) runs in its own process; each
measurement runs one client in a fresh process (``benchmarks/clients.py``). Rounds are
interleaved (every implementation once per round, in a rotating order) and the summary
gives medians with their ranges, ratios taken within each round. See benchmarks/README.md
for what each number means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BASELINE = "websocket-client"
C2SYNC_IMPLS = ("c2sync-recv", "c2sync-callback", "c2sync-recv-pure", "c2sync-callback-pure")
BASELINES = ("websocket-client", "websockets-sync", "websockets-asyncio")
PURE_SUFFIX = "-pure"  # run with C2SYNC_PURE_PYTHON=1: the standard library's JSON
# The -pure runs measure the decoder: only where decoding shows.
PURE_SCENARIOS = ("throughput", "latency", "flood", "queued")

# Scenario parameters: (full, quick).
CONFIG: dict[str, dict[str, dict[str, Any]]] = {
    "throughput": {
        # ~1-2 s per client: long enough that scheduling noise and start-up (the heap's
        # first growth) no longer decide a 0.4 s run, as they did at 30,000.
        "full": {"n": 100_000, "hb": 0.02},
        "quick": {"n": 2_000, "hb": 0.02},
    },
    "latency": {
        "full": {"n": 4_000, "rate": 2_000, "hb": 0.5},
        "quick": {"n": 200, "rate": 2_000, "hb": 0.5},
    },
    "flood": {
        "full": {"n": 20_000, "rate": 10_000, "hb": 0.02},
        "quick": {"n": 1_000, "rate": 10_000, "hb": 0.02},
    },
    "slow": {
        "full": {"n": 60, "rate": 40, "hb": 0.05, "tail": 0.5, "burn": 0.05},
        "quick": {"n": 6, "rate": 40, "hb": 0.05, "tail": 0.2, "burn": 0.05},
    },
    "idle": {
        "full": {"seconds": 20.0, "hb": 1.0},
        "quick": {"seconds": 0.5, "hb": 0.1},
    },
    "close": {
        "full": {"repeat": 3, "hb": 0.1},
        "quick": {"repeat": 1, "hb": 0.1},
    },
    "rss": {
        "full": {"n": 30_000, "seconds": 3.0, "pause": 0.002, "hb": 0.05},
        "quick": {"n": 2_000, "seconds": 0.5, "pause": 0.002, "hb": 0.05},
    },
    "queued": {
        "full": {"n": 10_000, "wait": 60.0, "hb": 1.0},
        "quick": {"n": 500, "wait": 30.0, "hb": 1.0},
    },
}
SCENARIO_ORDER = ("throughput", "latency", "flood", "slow", "idle", "close", "rss", "queued")
# Rounds of the slower scenarios, at most (the others run --rounds times).
MAX_ROUNDS = {"slow": 3, "idle": 2, "rss": 2, "queued": 2}
IDLE_IMPLS = ("c2sync-recv", "websocket-client", "websockets-sync", "websockets-asyncio")
QUEUED_IMPLS = ("c2sync-recv", "c2sync-recv-pure")  # only recv() has a queue to fill


def takes_part(impl: str, scenario: str) -> bool:
    base = impl.partition("@")[0]
    if base.endswith(PURE_SUFFIX) and scenario not in PURE_SCENARIOS:
        return False
    if scenario == "idle":
        return base in IDLE_IMPLS
    if scenario == "queued":
        return base in QUEUED_IMPLS
    return True


# The sender process -----------------------------------------------------------------------


class Sender:
    """The sender subprocess: started, its reports collected, always stopped."""

    def __init__(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "sender.py"), "--port", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reports: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            line = self._lines.get(timeout=20)
        except queue.Empty:
            line = None
        if not line or not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the sender did not start: {line!r} {self.stderr()}")
        self.port = int(line.split()[1])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line.startswith("{"):
                report = json.loads(line)
                with self._cond:
                    self._reports[report["cid"]] = report
                    self._cond.notify_all()
            else:
                self._lines.put(line)
        self._lines.put(None)
        with self._cond:
            self._cond.notify_all()

    def url(self, cid: str, **params: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"cid": cid, **params}.items())
        return f"ws://127.0.0.1:{self.port}/ws?{query}"

    def report(self, cid: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while cid not in self._reports:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    return self._reports.pop(cid, None)
                self._cond.wait(remaining)
            return self._reports.pop(cid)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # the sender exits when its stdin closes
            except OSError:
                pass
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        self._stderr.close()


@contextmanager
def running_sender() -> Iterator[Sender]:
    sender = Sender()
    try:
        yield sender
    finally:
        sender.stop()


# Workers ------------------------------------------------------------------------------------


class Runner:
    def __init__(self, sender: Sender, variants: dict[str, str], verbose: bool) -> None:
        self.sender = sender
        self.variants = variants
        self.verbose = verbose
        self.counter = 0
        self.failures: list[str] = []

    def _env(self, impl: str) -> dict[str, str]:
        env = dict(os.environ)
        base, _, variant = impl.partition("@")
        env.pop("C2SYNC_PURE_PYTHON", None)
        if base.endswith(PURE_SUFFIX):
            env["C2SYNC_PURE_PYTHON"] = "1"
        first = self.variants[variant] if variant else str(ROOT)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (first, env.get("PYTHONPATH", "")) if p
        )
        return env

    def _spec(self, impl: str, scenario: str, params: dict[str, Any]) -> tuple[str, list[str]]:
        self.counter += 1
        cid = f"{scenario}-{self.counter}"
        server: dict[str, Any] = {"hb": params.get("hb", 0)}
        options: dict[str, Any] = {}
        if scenario == "throughput":
            server.update(n=params["n"])
            options["max_queue"] = params["n"] + 1000  # measure speed, not drops
        elif scenario in ("latency", "flood"):
            server.update(n=params["n"], rate=params["rate"])
            options["max_queue"] = params["n"] + 1000
        elif scenario == "slow":
            server.update(
                n=params["n"], rate=params["rate"], tail=params["tail"], end="close",
                ack_wait=max(10.0, 3 * params["n"] * params["burn"]),
            )
        elif scenario in ("idle", "close"):
            server.update(n=0)
        elif scenario == "rss":
            server.update(n=params["n"])
        elif scenario == "queued":
            server.update(n=params["n"])
            options["max_queue"] = params["n"] + 1000
        spec = {
            "impl": impl.partition("@")[0],
            "scenario": scenario,
            "url": self.sender.url(cid, **server),
            "params": params,
            "options": options,
        }
        return cid, [sys.executable, str(HERE / "clients.py"), json.dumps(spec)]

    def _timeout(self, scenario: str, params: dict[str, Any]) -> float:
        if scenario == "slow":
            return 30 + 3 * params["n"] * params["burn"]
        if scenario == "queued":
            return 30 + params["wait"]
        return 30 + params.get("seconds", 0) * 2

    def run(self, impl: str, scenario: str, params: dict[str, Any]) -> dict[str, Any] | None:
        cid, argv = self._spec(impl, scenario, params)
        try:
            proc = subprocess.run(
                argv,
                env=self._env(impl),
                capture_output=True,
                timeout=self._timeout(scenario, params),
            )
        except subprocess.TimeoutExpired:  # subprocess.run has killed it
            return self._fail(impl, scenario, "timed out")
        return self._finish(impl, scenario, cid, proc.returncode, proc.stdout, proc.stderr)

    def run_together(
        self, impls: list[str], scenario: str, params: dict[str, Any]
    ) -> dict[str, dict[str, Any] | None]:
        """Start several workers at once (idle clients do not disturb each other)."""
        started = []
        for impl in impls:
            cid, argv = self._spec(impl, scenario, params)
            proc = subprocess.Popen(
                argv, env=self._env(impl), stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            started.append((impl, cid, proc))
        deadline = time.monotonic() + self._timeout(scenario, params)
        results: dict[str, dict[str, Any] | None] = {}
        try:
            for impl, cid, proc in started:
                try:
                    out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    results[impl] = self._fail(impl, scenario, "timed out")
                    continue
                results[impl] = self._finish(impl, scenario, cid, proc.returncode, out, err)
        finally:
            for _, _, proc in started:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return results

    def _finish(
        self, impl: str, scenario: str, cid: str, code: int, out: bytes, err: bytes
    ) -> dict[str, Any] | None:
        if code != 0:
            report = self.sender.report(cid, timeout=2)
            why = f"exit {code}: {err.decode(errors='replace')[-800:]}"
            if report and report.get("error"):
                why += f"\n    the sender says: {report['error']}"
            return self._fail(impl, scenario, why)
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        report = self.sender.report(cid, timeout=20)
        if report is None:
            return self._fail(impl, scenario, "no report from the sender")
        result["server"] = report
        if self.verbose:
            shown = {k: v for k, v in result.items() if k not in ("server", "c2sync_file")}
            print(f"  {scenario:10s} {impl:24s} {_fmt_dict(shown)}", flush=True)
        return result

    def _fail(self, impl: str, scenario: str, why: str) -> None:
        message = f"{scenario} {impl}: {why}"
        self.failures.append(message)
        print(f"  FAILED {message}", file=sys.stderr, flush=True)
        return None


def _fmt_dict(d: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


# Statistics ---------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _stat(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _p50_difference(
    results: list[dict[str, Any]], baseline: list[dict[str, Any]], resamples: int = 2000
) -> dict[str, float]:
    """The pooled heartbeat-ack p50 of ``results`` minus the baseline's (ms), with a 95 %
    interval from a paired bootstrap over rounds: rounds are drawn with replacement, the
    same draw for both clients (a round's moment of the VM weighs on both alike), and the
    p50 of each side's pooled delays compared. Rounds without a baseline are left out."""
    mine = {r["round"]: [d * 1000 for d in r["server"].get("ack_delays", [])] for r in results}
    theirs = {
        r["round"]: [d * 1000 for d in r["server"].get("ack_delays", [])] for r in baseline
    }
    rounds = sorted(k for k in mine if k in theirs and mine[k] and theirs[k])
    if len(rounds) < 2:
        return {"diff_ms": math.nan, "low_ms": math.nan, "high_ms": math.nan, "rounds": 0}

    def p50_of(side: dict[int, list[float]], drawn: list[int]) -> float:
        return _pct([d for k in drawn for d in side[k]], 0.5)

    draw = random.Random(13).choice  # seeded: the same run gives the same interval
    diffs = sorted(
        p50_of(mine, chosen) - p50_of(theirs, chosen)
        for chosen in ([draw(rounds) for _ in rounds] for _ in range(resamples))
    )
    return {
        "diff_ms": p50_of(mine, rounds) - p50_of(theirs, rounds),
        "low_ms": diffs[int(0.025 * resamples)],
        "high_ms": diffs[int(0.975 * resamples) - 1],
        "rounds": len(rounds),
    }


def _ack_stats(results: list[dict[str, Any]], censored: bool = True) -> dict[str, float]:
    """Heartbeat-ack delays pooled over rounds, in ms. With ``censored``, a heartbeat never
    answered counts with the time it had waited when the connection ended (a lower bound);
    without, unanswered heartbeats (the client had stopped reading) are only counted."""
    delays: list[float] = []
    unanswered = 0
    for result in results:
        server = result["server"]
        delays.extend(d * 1000 for d in server.get("ack_delays", []))
        ages = server.get("unanswered_ages", [])
        if censored:
            delays.extend(a * 1000 for a in ages)
        unanswered += len(ages)
    return {
        "p50_ms": _pct(delays, 0.5),
        "p99_ms": _pct(delays, 0.99),
        "max_ms": max(delays) if delays else math.nan,
        "samples": len(delays),
        "unanswered": unanswered,
    }


def summarize(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    tp = raw.get("throughput", {})
    if tp:
        base_by_round = {r["round"]: r["rate"] for r in tp.get(BASELINE, [])}
        # The best hand-written loop of each round, whichever it was.
        best_by_round: dict[int, float] = {}
        for peer in BASELINES:
            for r in tp.get(peer, []):
                best_by_round[r["round"]] = max(best_by_round.get(r["round"], 0.0), r["rate"])
        section = {}
        for impl, results in tp.items():
            ratios = [
                r["rate"] / base_by_round[r["round"]]
                for r in results
                if r["round"] in base_by_round
            ]
            best = [
                r["rate"] / best_by_round[r["round"]]
                for r in results
                if r["round"] in best_by_round
            ]
            section[impl] = {
                "signals_per_s": _stat([r["rate"] for r in results]),
                "ratio": _stat(ratios),
                "ratio_best_peer": _stat(best),
                "cpu_us": _stat([r["cpu_us"] for r in results if "cpu_us" in r]),
                "ack_delay": _ack_stats(results),
            }
        summary["throughput"] = section
    if raw.get("latency"):
        summary["latency"] = {
            impl: {
                "p50_ms": _stat([r["p50_ms"] for r in results]),
                "p99_ms": _stat([r["p99_ms"] for r in results]),
            }
            for impl, results in raw["latency"].items()
        }
    if raw.get("flood"):
        loop = raw["flood"].get(BASELINE, [])
        summary["flood"] = {
            impl: {
                "ack_delay": _ack_stats(results),
                "ack_p50_vs_loop": _p50_difference(results, loop),
                "p50_ms": _stat([r["p50_ms"] for r in results]),
                "p99_ms": _stat([r["p99_ms"] for r in results]),
            }
            for impl, results in raw["flood"].items()
        }
    if raw.get("slow"):
        summary["slow"] = {
            impl: {"ack_delay": _ack_stats(results)}
            for impl, results in raw["slow"].items()
        }
    if raw.get("idle"):
        summary["idle"] = {
            impl: {
                "cpu_ms_per_20s": _stat([r["cpu_ms_per_20s"] for r in results]),
                "ack_delay": _ack_stats(results, censored=False),
            }
            for impl, results in raw["idle"].items()
        }
    if raw.get("close"):
        summary["close"] = {
            impl: {"close_ms": _stat([r["close_ms"] for r in results])}
            for impl, results in raw["close"].items()
        }
    if raw.get("rss"):
        summary["rss"] = {
            impl: {
                "peak_mb": _stat([r["peak_mb"] for r in results]),
                "growth_mb": _stat([r["growth_mb"] for r in results]),
                "dropped": _stat([float(r["dropped"]) for r in results]),
                "ack_delay": _ack_stats(results),
            }
            for impl, results in raw["rss"].items()
        }
    if raw.get("queued"):
        summary["queued"] = {
            impl: {
                "traced_bytes_per_msg": _stat([r["traced_bytes_per_msg"] for r in results]),
                "rss_bytes_per_msg": _stat([r["rss_bytes_per_msg"] for r in results]),
            }
            for impl, results in raw["queued"].items()
        }
    summary["decoders"] = {
        impl: sorted({r["decoder"] for r in results if r.get("decoder")})
        for per in raw.values()
        for impl, results in per.items()
        if impl.startswith("c2sync")
    }
    return summary


# Report -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        model = platform.processor()
    versions = {}
    for name, module in (("websocket-client", "websocket"), ("websockets", "websockets")):
        try:
            versions[name] = __import__(module).__version__
        except Exception:
            versions[name] = "missing"
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
        "load": os.getloadavg() if hasattr(os, "getloadavg") else None,
        **versions,
    }


def _ms(x: float) -> str:
    return "-" if x is None or math.isnan(x) else (f"{x:.3f}" if x < 1 else f"{x:.1f}")


def _rng(stat: dict[str, float], fmt: str = "{:.0f}") -> str:
    if not stat["n"]:
        return "-"
    return f"{fmt.format(stat['median'])} ({fmt.format(stat['min'])}-{fmt.format(stat['max'])})"


def render(summary: dict[str, Any], info: dict[str, Any]) -> str:
    out = []
    out.append(
        f"machine: {info['nproc']} CPUs, {info['cpu']}, Python {info['python']}, "
        f"load at start {info.get('load_start')}, at end {info.get('load')}"
    )
    if "throughput" in summary:
        out.append("")
        out.append("Throughput (flood of ~550-byte signals; median (min-max) over rounds)")
        out.append(
            f"{'client':26s} {'signals/s':>24s} {'x websocket-client':>22s} "
            f"{'x best peer':>18s} {'CPU us/signal':>18s} {'hb-ack p50/p99/max ms':>24s}"
        )
        for impl, s in summary["throughput"].items():
            ack = s["ack_delay"]
            out.append(
                f"{impl:26s} {_rng(s['signals_per_s']):>24s} "
                f"{_rng(s['ratio'], '{:.2f}'):>22s} "
                f"{_rng(s['ratio_best_peer'], '{:.2f}'):>18s} "
                f"{_rng(s['cpu_us'], '{:.1f}'):>18s} "
                f"{_ms(ack['p50_ms']) + '/' + _ms(ack['p99_ms']) + '/' + _ms(ack['max_ms']):>24s}"
            )
        out.append(
            "  (best peer: the fastest hand-written loop of the same round, "
            + ", ".join(BASELINES) + ")"
        )
    if "latency" in summary:
        out.append("")
        out.append("One-way latency at a paced 2,000 signals/s (ms; median over rounds)")
        out.append(f"{'client':26s} {'p50':>22s} {'p99':>22s}")
        for impl, s in summary["latency"].items():
            out.append(
                f"{impl:26s} {_rng(s['p50_ms'], '{:.3f}'):>22s} {_rng(s['p99_ms'], '{:.3f}'):>22s}"
            )
    if "flood" in summary:
        out.append("")
        out.append(
            "Sustained flood, paced 10,000 signals/s: heartbeat-ack delay (ms, all rounds) "
            "and signal latency (ms, median of rounds)"
        )
        out.append(
            f"{'client':26s} {'hb p50':>8s} {'hb p99':>8s} {'hb max':>8s} "
            f"{'signal p50':>11s} {'signal p99':>11s} {'hb p50 - loop (95% CI)':>26s}"
        )
        for impl, s in summary["flood"].items():
            a = s["ack_delay"]
            d = s["ack_p50_vs_loop"]
            versus = "" if impl == BASELINE or not d["rounds"] else (
                f"{d['diff_ms']:+.3f} [{d['low_ms']:+.3f}, {d['high_ms']:+.3f}]"
            )
            out.append(
                f"{impl:26s} {_ms(a['p50_ms']):>8s} {_ms(a['p99_ms']):>8s} "
                f"{_ms(a['max_ms']):>8s} {_ms(s['p50_ms']['median']):>11s} "
                f"{_ms(s['p99_ms']['median']):>11s} {versus:>26s}"
            )
    if "slow" in summary:
        out.append("")
        out.append("Heartbeat-ack delay, 50 ms CPU-bound handler, 40 signals/s (ms, all rounds)")
        out.append(f"{'client':26s} {'p50':>10s} {'p99':>10s} {'max':>10s} {'unanswered':>11s}")
        for impl, s in summary["slow"].items():
            a = s["ack_delay"]
            out.append(
                f"{impl:26s} {_ms(a['p50_ms']):>10s} {_ms(a['p99_ms']):>10s} "
                f"{_ms(a['max_ms']):>10s} {a['unanswered']:>11d}"
            )
    if "idle" in summary:
        out.append("")
        out.append("Idle: CPU ms used per 20 s connected, a heartbeat every second")
        out.append(f"{'client':26s} {'cpu ms / 20 s':>22s} {'hb-ack p50/max ms':>20s}")
        for impl, s in summary["idle"].items():
            a = s["ack_delay"]
            out.append(
                f"{impl:26s} {_rng(s['cpu_ms_per_20s'], '{:.1f}'):>22s} "
                f"{_ms(a['p50_ms']) + '/' + _ms(a['max_ms']):>20s}"
            )
    if "close" in summary:
        out.append("")
        out.append("close() with a responsive server (ms)")
        for impl, s in summary["close"].items():
            out.append(f"{impl:26s} {_rng(s['close_ms'], '{:.2f}'):>22s}")
    if "rss" in summary:
        out.append("")
        out.append("Flood into a slow consumer (2 ms per signal): memory and heartbeats")
        out.append(
            f"{'client':26s} {'peak RSS MB':>12s} {'growth MB':>10s} {'dropped':>8s} "
            f"{'hb-ack p50/p99/max ms':>24s}"
        )
        for impl, s in summary["rss"].items():
            a = s["ack_delay"]
            out.append(
                f"{impl:26s} {s['peak_mb']['median']:>12.1f} {s['growth_mb']['median']:>10.1f} "
                f"{s['dropped']['median']:>8.0f} "
                f"{_ms(a['p50_ms']) + '/' + _ms(a['p99_ms']) + '/' + _ms(a['max_ms']):>24s}"
            )
    if "queued" in summary:
        out.append("")
        out.append("Memory per message waiting in the recv() queue (bytes; median (min-max))")
        out.append(f"{'client':26s} {'traced (tracemalloc)':>24s} {'RSS growth':>22s}")
        for impl, s in summary["queued"].items():
            out.append(
                f"{impl:26s} {_rng(s['traced_bytes_per_msg']):>24s} "
                f"{_rng(s['rss_bytes_per_msg']):>22s}"
            )
    decoders = summary.get("decoders", {})
    if decoders:
        out.append("")
        out.append(
            "JSON decoder used: "
            + ", ".join(f"{impl} {'/'.join(names) or '?'}" for impl, names in decoders.items())
        )
    return "\n".join(out)


# Main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round (a smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5; quick 1)")
    parser.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    parser.add_argument(
        "--only", metavar="SCENARIOS", help=f"comma-separated subset of {','.join(SCENARIO_ORDER)}"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also measure the c2sync found in PATH (e.g. a patched copy), as c2sync-*@NAME",
    )
    parser.add_argument(
        "--clients",
        metavar="NAMES",
        help="comma-separated subset of the clients (e.g. c2sync-recv,websocket-client; "
        "variants as c2sync-recv@NAME): more rounds of the same comparison in the same time",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    scenarios = args.only.split(",") if args.only else list(SCENARIO_ORDER)
    unknown = set(scenarios) - set(SCENARIO_ORDER)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    variants = {}
    for item in args.variant:
        name, _, path = item.partition("=")
        variants[name] = str(Path(path).resolve())
    c2_impls = list(C2SYNC_IMPLS) + [f"{i}@{v}" for v in variants for i in C2SYNC_IMPLS]
    impls = c2_impls + list(BASELINES)
    if args.clients:
        chosen = args.clients.split(",")
        unknown = set(chosen) - set(impls)
        if unknown:
            raise SystemExit(f"unknown clients: {', '.join(sorted(unknown))}")
        impls = [i for i in impls if i in chosen]

    info = machine()
    info["load_start"] = info.pop("load")
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in scenarios}
    started = time.monotonic()
    with running_sender() as sender:
        runner = Runner(sender, variants, verbose=not args.quiet)
        for rnd in range(rounds):
            if not args.quiet:
                print(f"round {rnd + 1}/{rounds}", flush=True)
            for scenario in scenarios:
                if rnd >= MAX_ROUNDS.get(scenario, rounds) and not args.quick:
                    continue
                params = CONFIG[scenario][mode]
                order = impls[rnd % len(impls) :] + impls[: rnd % len(impls)]
                if scenario == "idle" or args.quick:
                    # Idle clients do not disturb each other; a quick run is a smoke test
                    # whose numbers mean nothing, so it runs each scenario's clients at once.
                    chosen = [i for i in order if takes_part(i, scenario)]
                    together = runner.run_together(chosen, scenario, params)
                    for impl, result in together.items():
                        if result is not None:
                            result["round"] = rnd
                            raw[scenario].setdefault(impl, []).append(result)
                    continue
                for impl in order:
                    if not takes_part(impl, scenario):
                        continue
                    for _ in range(params.get("repeat", 1)):
                        result = runner.run(impl, scenario, params)
                        if result is not None:
                            result["round"] = rnd
                            raw[scenario].setdefault(impl, []).append(result)
        failures = runner.failures
    info.update(machine())
    summary = summarize(raw)
    c2sync_files = sorted(
        {
            r.get("c2sync_file", "")
            for per in raw.values()
            for results in per.values()
            for r in results
            if r.get("c2sync_file")
        }
    )
    info["c2sync"] = c2sync_files
    print()
    print(render(summary, info))
    elapsed = time.monotonic() - started
    print(f"\n{mode} run, {rounds} rounds, {elapsed:.0f} s; c2sync from {c2sync_files}")
    if failures:
        print(f"{len(failures)} measurements failed:", *failures, sep="\n  ", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "mode": mode,
                    "rounds": rounds,
                    "machine": info,
                    "config": {s: CONFIG[s][mode] for s in scenarios},
                    "summary": summary,
                    "raw": raw,
                    "failures": failures,
                },
                f,
                indent=1,
                default=str,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
