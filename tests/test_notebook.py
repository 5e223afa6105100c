"""samples/notebook.ipynb runs in a real Jupyter kernel (the venv's Python) against the
emulator: callbacks fire while later cells run, the client's table is displayed and redrawn
in place by a callback, the signals become a DataFrame, re-running cells leaks no
connection, and the last cell closes cleanly."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from c2sync.emulator import Emulator

from .conftest import API_KEY, STRATEGY, WAIT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parent.parent / "samples" / "notebook.ipynb"
KERNEL_NAME = "c2sync-test-python"
CELL_TIMEOUT = 30  # seconds any cell may take; never reached when it works


class Kernel:
    """One kernel running the sample notebook's cells, one at a time, by tag."""

    def __init__(self, client: Any, notebook: Any) -> None:
        self.client = client
        self.notebook = notebook

    def cell(self, tag: str) -> tuple[int, Any]:
        for index, cell in enumerate(self.notebook.cells):
            if tag in cell.get("metadata", {}).get("tags", []):
                return index, cell
        raise LookupError(f"no cell tagged {tag!r} in {NOTEBOOK.name}")

    def run(self, tag: str) -> str:
        """Run the cell tagged ``tag``; return its printed output."""
        index, cell = self.cell(tag)
        self.client.execute_cell(cell, index)
        return output_text(cell)

    def run_code(self, source: str) -> str:
        """Run code that is not part of the notebook (probes for the test)."""
        cell = nbformat.v4.new_code_cell(source)
        self.notebook.cells.append(cell)  # in memory only: the file is never written
        self.client.execute_cell(cell, len(self.notebook.cells) - 1)
        return output_text(cell)


def display_html(cell: Any) -> str:
    """The HTML a cell displayed (its last display), as nbclient left it after updates."""
    pages = [
        output["data"]["text/html"]
        for output in cell.get("outputs", [])
        if output.get("output_type") in ("display_data", "execute_result")
        and "text/html" in output.get("data", {})
    ]
    assert pages, f"no HTML output in {cell.get('metadata')}"
    return "".join(pages[-1]) if isinstance(pages[-1], list) else str(pages[-1])


def result_text(cell: Any) -> str:
    """The text/plain of a cell's result (its last expression)."""
    for output in cell.get("outputs", []):
        if output.get("output_type") == "execute_result":
            text = output["data"].get("text/plain", "")
            return "".join(text) if isinstance(text, list) else str(text)
    raise AssertionError(f"no result in {cell.get('metadata')}")


def output_text(cell: Any) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif output.get("output_type") == "error":
            parts.append("\n".join(output.get("traceback", [])))
    return "".join(parts)


@pytest.fixture
def kernel(emulator: Emulator, tmp_path: Path) -> Iterator[Kernel]:
    """A kernel on this interpreter, told the emulator's URL and key through its environment."""
    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "c2sync test (this venv)",
                "language": "python",
            }
        )
    )
    manager = AsyncKernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]),
    )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, km=manager, timeout=CELL_TIMEOUT, allow_errors=False, kernel_name=KERNEL_NAME
    )
    env = dict(os.environ)
    env.update(
        C2_API_KEY=API_KEY,
        C2_WS_URL=emulator.url,
        C2_STRATEGY_ID=str(STRATEGY),
        JUPYTER_PLATFORM_DIRS="1",
    )
    with client.setup_kernel(env=env, cwd=str(tmp_path)):
        yield Kernel(client, notebook)


# Run in the kernel after the watch cell: tells the test (over a TCP connection) to publish,
# then waits until a callback registered after the notebook's refresh() has seen the last
# signal, so refresh() has redrawn the table for it while this cell still runs (the kernel
# routes the redraw to the running cell, whose output nbclient records).
_LIVE_GATE = """
import socket as _socket
import threading as _threading

_seen_last = _threading.Event()
client.on(c2sync.SIGNAL, lambda m: _seen_last.set() if m.seq_id == {last} else None)
with _socket.create_connection(("127.0.0.1", {port}), timeout={wait}):
    pass
print(_seen_last.wait({wait}))
"""

# Run in the kernel before the busy cell. That cell is "before = len(received)", then
# "time.sleep(3)  # your own work here", then a print of how many signals came meanwhile.
# Instead of the time module it finds this stand-in, whose sleep() tells the test (over a
# TCP connection) that the cell has started, then lasts until the signals the test then
# publishes have reached the callback: no guess of how long the cell or the delivery take,
# and still nothing but the client's own thread can deliver them while the cell runs.
_BUSY_GATE = """
import socket as _socket
import threading as _threading
import time as _time


class _Received(list):
    # The notebook's list, also telling a waiter about each signal the callback appends.
    def __init__(self, items):
        super().__init__(items)
        self.changed = _threading.Condition()

    def append(self, item):
        with self.changed:
            super().append(item)
            self.changed.notify_all()


class _BusyUntilSignals:
    def __getattr__(self, name):
        return getattr(_time, name)

    def sleep(self, seconds):
        start = len(received)
        with _socket.create_connection(("127.0.0.1", {port}), timeout={wait}):
            pass  # the test publishes once this connection is accepted
        with received.changed:
            received.changed.wait_for(lambda: len(received) >= start + {count}, {wait})


received = _Received(received)
time = _BusyUntilSignals()
"""


def publish_when_started(
    emulator: Emulator, gate: socket.socket, count: int, errors: list[BaseException]
) -> threading.Thread:
    """Publish ``count`` signals once the busy cell connects to ``gate`` (bounded)."""

    def publish() -> None:
        try:
            gate.settimeout(WAIT)
            connection, _ = gate.accept()
            connection.close()
            for _ in range(count):
                emulator.publish_signal(STRATEGY)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    return thread


def test_notebook_runs_in_a_real_kernel(emulator: Emulator, kernel: Kernel) -> None:
    """Callbacks fire during later cells; re-running connect leaks nothing; close is clean."""
    assert kernel.run_code("import sys; print(sys.executable)").strip() == sys.executable

    kernel.run("setup")
    out = kernel.run("connect")
    assert out.strip() == f"connected, subscribed to strategy {STRATEGY}"
    emulator.wait_for_connections(1, WAIT)

    status = kernel.run("status")
    assert status.startswith("<c2sync.Client OPEN ")
    assert f"strategy.signal:{STRATEGY}" in status
    assert API_KEY not in status

    # The signals are published once the busy cell has started (see _BUSY_GATE).
    with socket.create_server(("127.0.0.1", 0)) as gate:
        port = gate.getsockname()[1]
        assert kernel.run_code(_BUSY_GATE.format(port=port, wait=WAIT, count=3)) == ""
        errors: list[BaseException] = []
        publisher = publish_when_started(emulator, gate, 3, errors)
        busy = kernel.run("busy")
        publisher.join(WAIT)
    assert not errors, errors
    assert busy.strip() == "3 signal(s) arrived while this cell ran; 3 in all"
    kernel.run_code("time = _time")  # the real module again, for any later cell
    shown = kernel.run("show").split()
    assert [word for word in shown if word.startswith("seq_id=")] == [
        "seq_id=1",
        "seq_id=2",
        "seq_id=3",
    ]

    # Watch it live: the table names the subscription, and the callback redraws it in place.
    kernel.run("watch")
    _, watch = kernel.cell("watch")
    page = display_html(watch)
    assert "strategy.signal" in page and f">{STRATEGY}<" in page and ">OPEN<" in page
    assert API_KEY not in page and "<script" not in page
    with socket.create_server(("127.0.0.1", 0)) as gate:
        port = gate.getsockname()[1]
        errors = []
        publisher = publish_when_started(emulator, gate, 2, errors)
        seen = kernel.run_code(_LIVE_GATE.format(port=port, wait=WAIT, last=5))
        publisher.join(WAIT)
    assert not errors, errors
    assert seen.strip() == "True"
    redrawn = display_html(watch)
    assert re.search(rf">{STRATEGY}</td><td[^>]*>5</td>", redrawn), redrawn  # last seq 5
    kernel.run("refresh")
    assert re.search(rf">{STRATEGY}</td><td[^>]*>5</td>", display_html(watch))
    substats = kernel.run("substats")
    assert f"strategy.signal {STRATEGY} last seq_id 5 messages 5" in substats
    assert "0 message(s) waiting for recv()" in substats

    # The signals as a DataFrame (extra [pandas]; the [test] extra installs it).
    if importlib.util.find_spec("pandas") is not None:
        kernel.run("frame")
        _, frame_cell = kernel.cell("frame")
        table = result_text(frame_cell)
        assert [line.split()[:2] for line in table.splitlines()[1:]] == [
            [str(row), str(row + 1)] for row in range(5)
        ], table
        probe = "print(len(frame), frame.seq_id.tolist(), set(frame.msg_type))"
        assert kernel.run_code(probe).strip() == "5 [1, 2, 3, 4, 5] {'strategy.signal'}"

    # Re-running the connect cell replaces the connection; it does not add one.
    kernel.run("connect")
    emulator.wait_for(lambda: emulator.handshakes_accepted == 2, WAIT)
    emulator.wait_for_connections(1, WAIT)
    first = emulator.connections[0]
    assert not first.is_open and first.close_code == 1000
    assert kernel.run("status").startswith("<c2sync.Client OPEN ")

    closed = kernel.run("close")
    assert closed.strip().startswith("<c2sync.Client CLOSED ")
    emulator.wait_for_connections(0, WAIT)
    assert emulator.connections[1].close_code == 1000
    assert kernel.run("close").strip().startswith("<c2sync.Client CLOSED ")  # idempotent


def test_notebook_client_dropped_without_close_is_closed(
    emulator: Emulator, kernel: Kernel
) -> None:
    """A client a re-run cell drops without close() is collected and closes its connection."""
    kernel.run("setup")
    connect = "client = c2sync.Client(url=URL)\nclient.connect()\nprint(client.state.name)"
    assert kernel.run_code(connect).strip() == "OPEN"
    emulator.wait_for_connections(1, WAIT)
    assert kernel.run_code(connect).strip() == "OPEN"  # the first client loses its name
    emulator.wait_for(lambda: emulator.handshakes_accepted == 2, WAIT)
    emulator.wait_for_connections(1, WAIT)
    assert emulator.connections[0].close_code == 1000
    kernel.run("close")
    emulator.wait_for_connections(0, WAIT)


# Methods whose result a cell would show (and keep in Out) if a cell ended with the call.
_RETURNS_A_VALUE = {"on", "on_state", "on_error", "connect", "subscribe", "unsubscribe"}


def test_no_cell_ends_by_showing_a_handle_or_the_client() -> None:
    """No code cell ends with ``client.on(...)`` (its ``Handle(...)`` would show as the
    cell's result), ``client.connect()`` (the client, kept in ``Out``) or a subscribe's ack."""
    import ast

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    shown = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        last = ast.parse(cell.source).body[-1]
        if (
            isinstance(last, ast.Expr)
            and isinstance(last.value, ast.Call)
            and isinstance(last.value.func, ast.Attribute)
            and last.value.func.attr in _RETURNS_A_VALUE
        ):
            shown.append(f"cell {index}: {ast.unparse(last)}")
    assert not shown
