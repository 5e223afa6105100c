"""Run samples/notebook.ipynb headless against the built-in emulator: no key, no network.

From a checkout of c2sync:

    pip install ".[notebook]"
    python samples/run_notebook.py                # prints each cell's output
    python samples/run_notebook.py --output run.ipynb   # also saves the executed notebook

It starts the emulator (publishing a signal every half second), then a Jupyter kernel on
this Python with C2_API_KEY, C2_WS_URL and C2_STRATEGY_ID in its environment, and runs
every cell in order. A kernel reads its environment once, when it starts: that is why, to
open the notebook in Jupyter yourself, the variables must be exported before Jupyter
starts (see the notebook's first cell). Exits 1 if a cell raised.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

import nbclient
import nbformat

from c2sync.emulator import Emulator

NOTEBOOK = Path(__file__).resolve().parent / "notebook.ipynb"
KEY = "demo"
STRATEGY = 12345678
CELL_TIMEOUT = 60  # seconds any one cell may take


def publish_until(emulator: Emulator, stop: threading.Event, every: float) -> None:
    """Publish a generated signal every ``every`` seconds until ``stop`` is set."""
    while not stop.wait(every):
        emulator.publish_signal(STRATEGY)


def cell_text(cell: nbformat.NotebookNode) -> str:
    """What a code cell printed or showed, as plain text."""
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", "") + "\n")
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--output", type=Path, help="save the executed notebook here")
    args = parser.parse_args()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    stop = threading.Event()
    with Emulator(api_keys={KEY}, strategies={STRATEGY}) as emulator:
        publisher = threading.Thread(target=publish_until, args=(emulator, stop, 0.5))
        publisher.start()
        # The kernel is a new process: it sees these because they are set before it starts.
        env = dict(os.environ, C2_API_KEY=KEY, C2_WS_URL=emulator.url)
        env["C2_STRATEGY_ID"] = str(STRATEGY)
        client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3")
        try:
            with client.setup_kernel(env=env, cwd=str(NOTEBOOK.parent)):
                for index, cell in enumerate(notebook.cells):
                    if cell.cell_type == "code":
                        client.execute_cell(cell, index)
                        print(f"[{index}]", cell_text(cell), end="", flush=True)
        except nbclient.exceptions.CellExecutionError as exc:
            print(f"a cell failed:\n{exc}", file=sys.stderr)
            return 1
        finally:
            stop.set()
            publisher.join()
    if args.output is not None:
        nbformat.write(notebook, args.output)
        print(f"executed notebook saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
