"""A newcomer's first hour: what a new user trips over first, each checked as they would
meet it (issue 15)."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from c2sync.emulator import Emulator

from .conftest import API_KEY, STRATEGY, WAIT

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


def test_cli_connect_timeout_says_what_timed_out_and_where() -> None:
    """`c2sync check` against a host that never answers the TCP handshake says what timed
    out and where, not "timed out: timed out"."""
    # A listening socket whose accept queue is full: the kernel drops further SYNs, so a
    # TCP connect times out exactly as against a black-holed host, all on loopback.
    server = socket.socket()
    fillers: list[socket.socket] = []
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        url = f"ws://127.0.0.1:{port}/ws"
        argv = ["check", "--url", url, "--api-key", "k", "--connect-timeout", "0.5"]
        result = subprocess.run(
            [sys.executable, "-m", "c2sync", *argv],
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            capture_output=True,
            text=True,
            timeout=RUN_BOUND,
        )
    finally:
        for filler in fillers:
            filler.close()
        server.close()
    assert result.returncode == 4, result.stderr  # EXIT_NETWORK
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert f"timed out after 0.5 s connecting to {url}" in line, line
    assert "timed out: timed out" not in line


@pytest.mark.parametrize("argv", [["demo"], ["emulator"]])
def test_demo_without_the_emulator_extra_names_the_checkout_install(argv: list[str]) -> None:
    """`c2sync demo` (or `emulator`) after a plain `pip install .` says in one line to
    install the `[emulator]` extra from the checkout: `pip install ".[emulator]"`."""
    # websockets made unimportable, as in an environment without the extra.
    result = run_python(
        f"""
        import sys
        sys.modules["websockets"] = None
        from c2sync import cli
        sys.exit(cli.main({argv!r}))
        """
    )
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("c2sync: "), line
    assert 'pip install ".[emulator]"' in line
    assert "Traceback" not in result.stderr


def test_errors_and_gaps_says_why_a_resume_ahead_of_the_server_is_silent(
    emulator: Emulator,
) -> None:
    """samples/errors_and_gaps.py --resume-from beyond the server's last seq_id explains at
    once why nothing arrives, instead of waiting its timeout in silence."""
    emulator.publish_signal(STRATEGY)  # the server's latest seq_id is 1
    sample = str(ROOT / "samples" / "errors_and_gaps.py")
    argv = [str(STRATEGY), "--resume-from", "100", "--timeout", str(RUN_BOUND)]
    process = subprocess.Popen(
        [sys.executable, sample, *argv],
        env=dict(os.environ, C2_API_KEY=API_KEY, C2_WS_URL=emulator.url, PYTHONUNBUFFERED="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(
            target=lambda: [lines.put(line) for line in process.stderr or ()], daemon=True
        )
        reader.start()
        # Well before the sample's own timeout (RUN_BOUND), stderr says why it is quiet.
        note = lines.get(timeout=WAIT)
        assert "after seq_id 100" in note and "nothing arrives" in note, note
    finally:
        process.kill()
        process.wait(WAIT)


def test_emulator_port_in_use_is_one_line() -> None:
    """`c2sync emulator --port N` with N taken: one line naming the port and what to do,
    exit 1, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "c2sync", "emulator", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=RUN_BOUND,
        )
    assert result.returncode == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert line.startswith("c2sync emulator: error: "), line
    assert f"port {port} on 127.0.0.1 is already in use" in line and "--port 0" in line


def test_short_version_flag() -> None:
    """`c2sync -V` prints the version, like `c2sync --version`."""
    import c2sync

    for flag in ("-V", "--version"):
        result = subprocess.run(
            [sys.executable, "-m", "c2sync", flag],
            capture_output=True,
            text=True,
            timeout=RUN_BOUND,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"c2sync {c2sync.__version__}"


def test_help_on_connect_documents_every_parameter() -> None:
    """`help(c2sync.connect)` documents each of its parameters in an Args section, so a
    user at the REPL need not open the Client class to learn what connect() takes."""
    import inspect
    import pydoc

    import c2sync

    text = pydoc.render_doc(c2sync.connect, renderer=pydoc.plaintext)
    doc = inspect.getdoc(c2sync.connect) or ""
    assert "Args:" in doc
    args = doc.split("Args:", 1)[1]
    for name in inspect.signature(c2sync.connect).parameters:
        assert f"    {name}:" in args, f"{name} is not documented in connect()'s Args"
        assert name in text


def test_package_metadata_is_complete() -> None:
    """The package index page shows who wrote it, where its docs are, what it is for and
    the README: setup.cfg carries author, URLs, classifiers, keywords, long description,
    and a `docs` extra with lower bounds."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    metadata = config["metadata"]
    for field in ("author", "keywords", "project_urls", "classifiers", "long_description"):
        assert metadata.get(field, "").strip(), f"setup.cfg [metadata] has no {field}"
    assert metadata["long_description"].strip() == "file: README.rst"
    assert "Documentation" in metadata["project_urls"]
    classifiers = metadata["classifiers"].split("\n")
    assert any(c.startswith("License :: ") for c in classifiers)
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    docs = [line.strip() for line in config["options.extras_require"]["docs"].split("\n")]
    names = {line.split(">=")[0] for line in docs if line}
    assert names == {"sphinx", "furo", "myst-parser", "websockets"}  # the emulator's pages
    assert all(">=" in line for line in docs if line)


# Issue 28: a newcomer's first hour, again.


def user_facing_files() -> list[Path]:
    """What a user reads: the README, the docs pages, the samples (the notebook included)
    and the package's sources (their docstrings and messages)."""
    found = [ROOT / "README.rst", *sorted((ROOT / "docs").rglob("*.md"))]
    found += sorted((ROOT / "docs").rglob("*.rst")) + sorted((ROOT / "samples").iterdir())
    found += sorted((ROOT / "c2sync").rglob("*.py"))
    return [p for p in found if p.is_file() and "_build" not in p.parts]


def test_every_page_states_the_python_setup_cfg_requires() -> None:
    """setup.cfg's python_requires, the README and the quickstart name the same oldest
    Python, and no user-facing page asks for a newer one ("Python 3.10 or later")."""
    import configparser
    import re

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    oldest = config["options"]["python_requires"].strip().removeprefix(">=")
    for page in (ROOT / "README.rst", ROOT / "docs" / "quickstart.md"):
        assert f"Python {oldest} or later" in page.read_text(encoding="utf-8"), page.name
    for page in user_facing_files():
        for stated in re.findall(r"Python (3\.\d+)\+? or (?:later|newer)", page.read_text("utf-8")):
            assert stated == oldest, f"{page.relative_to(ROOT)} asks for Python {stated}+"


def test_no_install_command_assumes_the_package_index() -> None:
    """c2sync is installed from a checkout (``pip install ".[extra]"``): no page, sample,
    docstring or error message tells a user to ``pip install "c2sync[...]"`` from PyPI,
    where the package is not."""
    import re

    pypi = re.compile(r"""pip install\s+(?:\\?["'])?c2sync(?:\[|\b)""")
    offenders = [
        f"{page.relative_to(ROOT)}: {match.group(0)}"
        for page in user_facing_files()
        for match in pypi.finditer(page.read_text(encoding="utf-8"))
    ]
    assert not offenders


# pytest plugins the suite uses without importing them: -n (xdist), the timeout setting.
_PLUGINS = {"pytest", "pytest-xdist", "pytest-timeout"}


def test_the_test_extra_holds_only_what_the_tests_use() -> None:
    """``pip install ".[test]"`` (the README's second command) installs what the tests
    import or run (``-m build``), nothing for lint or types: those are the ``[dev]`` extra,
    which the noxfile's lint and types sessions install."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    extras = config["options.extras_require"]

    def names(extra: str) -> set[str]:
        return {
            line.split(">")[0].split("=")[0].split("[")[0].strip()
            for line in extras[extra].split("\n")
        }

    test = names("test") - {""}
    assert not test & {"mypy", "ruff", "nox"}
    assert names("dev") - {""} >= {"mypy", "ruff"}
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("*.py"))
    for name in sorted(test - _PLUGINS):
        module = name.replace("-", "_")
        uses = (f"import {module}", f"from {module}", f'"{module}"', f'"-m", "{module}"')
        assert any(use in tests for use in uses), f"no test uses {name}"


def _parse(msg_type: str, payload: dict[str, object], **fields: object) -> object:
    import json

    import c2sync

    return c2sync.parse_message(json.dumps({"msg_type": msg_type, "payload": payload, **fields}))


def test_describe_gives_the_human_line_not_the_payload_codes() -> None:
    """``Signal.describe()`` and ``Positions.describe()`` give the line ``c2sync listen``
    prints (side and order type in words), plain fields for a payload shaped otherwise (the
    schema is not published: the docstring says so), and never the API key."""
    import c2sync
    from c2sync._format import format_message

    order = {
        "StrategyId": STRATEGY,
        "Side": "1",
        "Quantity": 5,
        "C2Symbol": {"FullSymbol": "@ESZ5"},
        "OrderType": "2",
        "Limit": 5210.25,
        "SignalId": 150000041,
    }
    signal = _parse("strategy.signal", order, seq_id=41)
    assert isinstance(signal, c2sync.Signal)
    assert signal.describe() == "BUY 5 @ESZ5 limit 5210.25 (SignalId 150000041)"
    assert signal.describe() in format_message(signal)
    sell = _parse("strategy.signal", {**order, "Side": "2", "Limit": None}, seq_id=42)
    assert sell.describe() == "SELL 5 @ESZ5 market (SignalId 150000041)"  # type: ignore[attr-defined]
    odd = _parse("strategy.signal", {"Action": "flat", "Size": 3, "Legs": [1]}, seq_id=43)
    assert odd.describe() == "Action=flat Size=3"  # type: ignore[attr-defined]
    assert "schema" in (c2sync.Signal.describe.__doc__ or "")

    holdings = {
        "StrategyId": STRATEGY,
        "Positions": [
            {"C2Symbol": {"FullSymbol": "@ESZ5"}, "Quantity": 5, "AvgPx": 5201.5},
            {"C2Symbol": {"FullSymbol": "AAPL"}, "Quantity": -10, "AvgPx": 187.2},
        ],
    }
    positions = _parse("strategy.positions", holdings)
    assert isinstance(positions, c2sync.Positions)
    assert positions.describe() == "2 open: @ESZ5 +5 @ 5201.5, AAPL -10 @ 187.2"

    key = "sk-describe-" + "9" * 16
    c2sync.Client(key, url="ws://127.0.0.1:1/ws")  # remembers the key, as a real one does
    echoed = _parse("strategy.signal", {**order, "C2Symbol": {"FullSymbol": key}}, seq_id=44)
    assert key not in echoed.describe() and "***" in echoed.describe()  # type: ignore[attr-defined]


def test_the_readme_lists_every_client_option_and_no_test_seam() -> None:
    """Every parameter of ``Client(...)`` (and so of ``connect(...)``) is in the README's
    option list, and the test seams (``link_factory``, ``correct_clock``) are in neither
    signature nor docstring: a user sees only what is meant for them."""
    import inspect

    import c2sync

    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    options = readme.split("\nOptions: ", 1)[1].split("\n\n", 1)[0]
    parameters = inspect.signature(c2sync.Client).parameters
    for name in set(parameters) - {"api_key", "url"}:
        assert f"``{name}``" in options, f"the README's option list lacks {name}"
    for seam in ("link_factory", "correct_clock"):
        assert seam not in parameters
        assert seam not in (c2sync.Client.__doc__ or "") + (c2sync.connect.__doc__ or "")
        with pytest.raises(TypeError):
            c2sync.Client("k", **{seam: None})  # type: ignore[arg-type]
