"""A newcomer's first hour: what a new user trips over first, each checked as they would
meet it (issue 15)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from .conftest import WAIT

ROOT = Path(__file__).resolve().parent.parent
RUN_BOUND = 30.0  # seconds a command may run; never reached when it works


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter, as a user's script would run."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
        capture_output=True,
        text=True,
        timeout=RUN_BOUND,
    )


def test_library_prints_nothing_unless_logging_is_configured() -> None:
    """README "Logging": a warning the library logs (a malformed frame) prints nothing on
    stderr in a script that did not configure logging."""
    result = run_python(
        f"""
        import c2sync
        from c2sync.emulator import Emulator

        with Emulator(api_keys={{"k"}}, strategies={{1}}) as emu:
            with c2sync.connect("k", url=emu.url) as client:
                emu.send_raw("this is not JSON")
                emu.publish_signal(1)
                client.subscribe(c2sync.SIGNAL, 1)
                emu.publish_signal(1)
                client.recv(timeout={WAIT})
                assert client.stats.malformed == 1, client.stats
        print("done")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert result.stderr == ""
