"""The API key never shows, whatever a server echoes back inside its JSON frames.

Every place that turns server text into an exception, a log line, a repr or the command
line's output, end to end (docs/security.md "The API key"; the masking itself is
c2sync/_redact.py, tested in tests/test_redact.py). The servers are
small raw-socket ones on 127.0.0.1 (tests/hostile.py) that echo the key they received in
their ``Authorization`` header, so a test says byte for byte what the client meets. A key
"shows" when it or its first 8 characters appear: a text cut in the middle of the key
must not leave its start behind.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import c2sync
from c2sync import SIGNAL, cli
from c2sync.messages import ErrorDetail, ErrorMessage, Gap, Message

from .conftest import API_KEY, OTHER_STRATEGY, STRATEGY, WAIT, MakeServer
from .hostile import CONNECTED, Conn, RawServer, text
from .test_cli import Lines, clean_env, command

PREFIX = API_KEY[:8]
MASK = "***"
MARKER = {"msg_type": "test.done"}  # the last frame a server sends: everything before it was read


def echoed_key(conn: Conn) -> str:
    """The key the client sent, as a server that echoes it would: read from the request."""
    key = (conn.header("Authorization") or "").partition(" ")[2]
    assert key == API_KEY
    return key


def send(conn: Conn, *frames: dict[str, Any]) -> None:
    conn.sock.sendall(b"".join(text(json.dumps(f, separators=(",", ":"))) for f in frames))


def opened(conn: Conn) -> str:
    """Upgrade honestly and send connection.connected; returns the echoed key."""
    conn.accept()
    key = echoed_key(conn)
    conn.sock.sendall(text(CONNECTED))
    return key


def ack(conn: Conn, request: dict[str, Any]) -> None:
    send(
        conn,
        {
            "msg_type": "subscription.ack",
            "request_id": request["request_id"],
            "payload": request["payload"],
        },
    )


def refusal(request_id: str | None, key: str) -> dict[str, Any]:
    """An ``error`` whose every field echoes the key."""
    frame: dict[str, Any] = {
        "msg_type": "error",
        "id": "msg_e1",
        "payload": {
            "code": key,
            "field": key,
            "message": f"not allowed for {key}",
            "errors": [
                {"code": key, "field": key, "message": f"not allowed for {key}"},
                {"code": "FORBIDDEN", "field": key, "message": key},
            ],
        },
    }
    if request_id is not None:
        frame["request_id"] = request_id
    return frame


@contextmanager
def connected(server: RawServer, **options: Any) -> Iterator[c2sync.Client]:
    options.setdefault("reconnect", False)
    client = c2sync.connect(
        API_KEY, url=server.url, heartbeat_timeout=30, connect_timeout=WAIT, **options
    )
    try:
        yield client
    finally:
        client.close()


def exception_texts(error: BaseException) -> dict[str, str]:
    """Everything an exception shows: str, repr, args, attributes, the traceback with its
    chained causes, and every exception reachable through __cause__ and __context__ (a
    traceback hides a suppressed context, code walking the chain does not)."""
    chain, seen = [], error
    while seen is not None and len(chain) < 10:
        chain.append(f"{seen!r} {seen.args!r} {vars(seen)!r}")
        seen = seen.__cause__ or seen.__context__
    return {
        "str": str(error),
        "repr": repr(error),
        "args": repr(error.args),
        "attributes": repr(vars(error)),
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
        "chained": "\n".join(chain),
    }


def assert_hidden(texts: dict[str, str]) -> None:
    """Neither the key nor its first 8 characters show in any of ``texts``."""
    leaks = [where for where, shown in texts.items() if API_KEY in shown or PREFIX in shown]
    assert not leaks, f"the key shows in: {leaks}"


def output(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    out, err = capsys.readouterr()
    return {"stdout": out, "stderr": err}


# Answers to requests ------------------------------------------------------------------


def test_a_refused_subscribe_echoing_the_key_raises_without_it(
    make_server: MakeServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A subscribe answered by an error whose code, field, message and errors echo the key:
    the ServerError's text, args, attributes and traceback and the log show *** instead."""
    caplog.set_level(logging.DEBUG)

    def handler(conn: Conn) -> None:
        key = opened(conn)
        request = json.loads(conn.next_text())
        send(conn, refusal(request["request_id"], key))
        conn.read_frames()

    server = make_server(handler)
    with connected(server) as client, pytest.raises(c2sync.ServerError) as info:
        client.subscribe(SIGNAL, STRATEGY, timeout=WAIT)
    error = info.value
    print(error)
    assert_hidden({**exception_texts(error), "log": caplog.text, **output(capsys)})
    assert (error.code, error.field, error.message) == (MASK, MASK, f"not allowed for {MASK}")
    assert error.errors == (
        ErrorDetail(MASK, MASK, f"not allowed for {MASK}"),
        ErrorDetail("FORBIDDEN", MASK, MASK),
    )
    assert error.request_id is not None


def test_a_late_error_echoing_the_key_is_logged_without_it(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An error answering a subscribe that already timed out is logged with *** for the key."""
    caplog.set_level(logging.DEBUG)
    timed_out = threading.Event()

    def handler(conn: Conn) -> None:
        key = opened(conn)
        request = json.loads(conn.next_text())
        if timed_out.wait(WAIT):
            send(conn, refusal(request["request_id"], key), MARKER)
        conn.read_frames()

    server = make_server(handler)
    with connected(server) as client:
        with pytest.raises(TimeoutError):
            client.subscribe(SIGNAL, STRATEGY, timeout=0.3)
        timed_out.set()
        assert client.recv(timeout=WAIT).msg_type == MARKER["msg_type"]
    assert "late error" in caplog.text
    assert_hidden({"log": caplog.text})


def test_a_refused_resubscribe_echoing_the_key_is_delivered_and_logged_without_it(
    make_server: MakeServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a reconnect the server refuses the restored subscription, echoing the key: the
    ErrorMessage the user gets keeps the server's words in its data, while its repr and
    the WARNING saying so show *** instead."""
    caplog.set_level(logging.DEBUG)

    def handler(conn: Conn) -> None:
        key = opened(conn)
        request = json.loads(conn.next_text())
        if len(server.conns) == 1:
            ack(conn, request)
            return  # the connection ends: the client reconnects and subscribes again
        send(conn, refusal(request["request_id"], key))
        conn.read_frames()

    server = make_server(handler)
    policy = c2sync.ReconnectPolicy(initial=0.01, maximum=0.01)
    with connected(server, reconnect=True, reconnect_policy=policy) as client:
        client.subscribe(SIGNAL, STRATEGY, timeout=WAIT)
        message = client.recv(timeout=WAIT)
    assert isinstance(message, ErrorMessage)
    assert message.message == f"not allowed for {API_KEY}"
    assert message.raw["payload"]["code"] == API_KEY
    assert "was refused" in caplog.text
    print(message)
    assert_hidden({"repr": repr(message), "log": caplog.text, **output(capsys)})


# Messages delivered to the user -------------------------------------------------------


def test_an_error_nobody_asked_for_keeps_the_key_in_its_data_only(
    make_server: MakeServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An error answering no request, echoing the key: its payload, raw and fields are the
    server's, unchanged; its repr (and so print()) shows *** instead."""
    caplog.set_level(logging.DEBUG)

    def handler(conn: Conn) -> None:
        key = opened(conn)
        send(conn, refusal(None, key))
        conn.read_frames()

    server = make_server(handler)
    with connected(server) as client:
        message = client.recv(timeout=WAIT)
    assert isinstance(message, ErrorMessage)
    assert message.payload["code"] == API_KEY and message.raw["payload"]["field"] == API_KEY
    assert (message.code, message.field) == (API_KEY, API_KEY)
    assert message.errors[1] == ErrorDetail("FORBIDDEN", API_KEY, API_KEY)
    print(message)
    assert_hidden(
        {
            "repr": repr(message),
            "str": str(message),
            "errors repr": repr(message.errors),
            "log": caplog.text,
            **output(capsys),
        }
    )
    assert MASK in repr(message)


def test_a_callback_failing_on_a_message_echoing_the_key_is_logged_without_it(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback raising on an error message that echoes the key, its own exception
    quoting the message: the log line naming the message, and the exception's text and
    traceback, show *** instead."""
    caplog.set_level(logging.DEBUG)
    done = threading.Event()
    registered = threading.Event()

    def handler(conn: Conn) -> None:
        key = opened(conn)
        if registered.wait(WAIT):  # not before the callbacks are there to receive them
            send(conn, refusal(None, key), MARKER)
        conn.read_frames()

    def fails(message: Any) -> None:
        raise RuntimeError(f"cannot handle: {message.message}")

    server = make_server(handler)
    with connected(server) as client:
        client.on("error", fails)
        client.on(MARKER["msg_type"], lambda message: done.set())
        registered.set()
        assert done.wait(WAIT)
    assert "raised on" in caplog.text and "cannot handle: not allowed for ***" in caplog.text
    assert "RuntimeError" in caplog.text and "Traceback" in caplog.text
    assert_hidden({"log": caplog.text})


class FailingCheckpoint:
    """A checkpoint store whose writes fail with an error quoting the key (a store that
    uses the same key for its own service, say)."""

    def load(self) -> dict[int, int]:
        return {}

    def save(self, strategy_id: int, seq_id: int) -> None:
        raise OSError(f"cannot save to https://store.example/?key={API_KEY}")

    def flush(self) -> None:
        raise OSError(f"cannot flush to https://store.example/?key={API_KEY}")


def test_a_checkpoint_failing_with_the_key_is_logged_without_it(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The ERRORs of a checkpoint store's failed save and flush show *** for the key."""
    caplog.set_level(logging.DEBUG)
    handled = threading.Event()

    def handler(conn: Conn) -> None:
        opened(conn)
        ack(conn, json.loads(conn.next_text()))
        signal_frame = {
            "msg_type": SIGNAL,
            "id": "msg_s1",
            "seq_id": 1,
            "payload": {"strategy_id": STRATEGY},
        }
        send(conn, signal_frame)
        conn.read_frames()

    server = make_server(handler)
    with connected(server, checkpoint=FailingCheckpoint()) as client:
        client.on(SIGNAL, lambda message: handled.set())
        client.subscribe(SIGNAL, STRATEGY, timeout=WAIT)
        assert handled.wait(WAIT)
    # close() has flushed; the save ran after the callback returned, before close() did.
    assert "saving the checkpoint failed" in caplog.text
    assert "flushing the checkpoint failed" in caplog.text
    assert "cannot save to https://store.example/?key=***" in caplog.text
    assert_hidden({"log": caplog.text})


def test_a_reader_dying_of_a_bug_that_quotes_the_key_shows_it_nowhere(
    make_server: MakeServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in the reader whose exception quotes server text (here: logging a gap that
    echoes the key fails): the last-resort ERROR and its traceback show ***, and so does
    the error the user's next call raises."""
    caplog.set_level(logging.DEBUG)

    def buggy(gap: Gap, redact: Any) -> None:
        raise RuntimeError(f"bug while logging {gap.message}")

    monkeypatch.setattr(c2sync._reader, "log_gap", buggy)

    def handler(conn: Conn) -> None:
        key = opened(conn)
        ack(conn, json.loads(conn.next_text()))
        gap = {"channel": f"{SIGNAL}:{STRATEGY}", "strategy_id": STRATEGY, "from": 0}
        send(conn, {"msg_type": "gap", "payload": {**gap, "message": key}})
        conn.read_frames()

    server = make_server(handler)
    with connected(server) as client:
        client.subscribe(SIGNAL, STRATEGY, timeout=WAIT)
        with pytest.raises(c2sync.C2Error) as info:
            client.recv(timeout=WAIT)
    assert "c2sync reader failed" in caplog.text and "bug while logging ***" in caplog.text
    assert "RuntimeError: bug while logging ***" in str(info.value)
    assert_hidden({**exception_texts(info.value), "log": caplog.text})


def test_a_gap_echoing_the_key_keeps_it_in_its_data_only(
    make_server: MakeServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Gaps whose message is, or ends in, the key: their message and raw are the server's;
    their repr, the gap WARNING and the notebook view (which cuts long notes) show none of
    it."""
    caplog.set_level(logging.DEBUG)
    channel = f"{SIGNAL}:{STRATEGY}"

    def handler(conn: Conn) -> None:
        key = opened(conn)
        ack(conn, json.loads(conn.next_text()))
        gap = {"channel": channel, "strategy_id": STRATEGY, "from": 0}
        send(
            conn,
            {"msg_type": "gap", "payload": {**gap, "message": key}},
            # The notebook view cuts a note at 120 characters: inside the key.
            {"msg_type": "gap", "payload": {**gap, "message": "x" * 100 + key}},
        )
        conn.read_frames()

    server = make_server(handler)
    with connected(server) as client:
        client.subscribe(SIGNAL, STRATEGY, timeout=WAIT)
        gaps = [client.recv(timeout=WAIT), client.recv(timeout=WAIT)]
        html = client._repr_html_()
    assert all(isinstance(gap, Gap) for gap in gaps)
    assert [gap.message for gap in gaps] == [API_KEY, "x" * 100 + API_KEY]
    assert gaps[0].raw["payload"]["message"] == API_KEY
    print(*gaps)
    assert "gap in strategy" in caplog.text
    assert_hidden(
        {
            "repr": repr(gaps),
            "log": caplog.text,
            "notebook view": html,
            **output(capsys),
        }
    )


# Frames that are not valid messages ---------------------------------------------------


def test_malformed_frames_quoting_the_key_are_logged_without_it(
    make_server: MakeServer,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Frames the client skips or passes on whole, quoting the key in a seq_id, a gap's
    channel or 'from', a msg_type, an id: the log's "skipped a malformed frame" and
    invalid-seq_id warnings and the delivered messages' reprs show *** instead, while
    their raw data stays the server's."""
    caplog.set_level(logging.DEBUG)

    def handler(conn: Conn) -> None:
        key = opened(conn)
        send(
            conn,
            {"msg_type": "heartbeat", "seq_id": key},
            {"msg_type": "gap", "payload": {"channel": key}},
            {"msg_type": "gap", "payload": {"strategy_id": STRATEGY, "from": key}},
            {"msg_type": key, "payload": [key]},
            {"msg_type": SIGNAL, "seq_id": key, "payload": {"strategy_id": STRATEGY}},
            {
                "msg_type": SIGNAL,
                "id": key,
                "request_id": key,
                "seq_id": 1,
                "payload": {"strategy_id": OTHER_STRATEGY},
            },
            {"msg_type": "x.unknown", "id": key, "request_id": key, "payload": {"echo": key}},
            MARKER,
        )
        conn.read_frames()

    server = make_server(handler)
    with connected(server) as client:
        delivered = [client.recv(timeout=WAIT) for _ in range(4)]
        malformed = client.stats.malformed
    assert delivered[-1].msg_type == MARKER["msg_type"]
    assert malformed == 4
    unordered, signal_, unknown = delivered[:3]
    assert unordered.raw["seq_id"] == API_KEY
    assert (signal_.id, signal_.request_id) == (API_KEY, API_KEY)
    assert unknown.payload["echo"] == API_KEY and unknown.id == API_KEY
    assert caplog.text.count("skipped a malformed frame") == 4
    assert "invalid seq_id" in caplog.text
    print(*delivered)
    assert_hidden(
        {
            **{f"repr of message {n}": repr(m) for n, m in enumerate(delivered)},
            "log": caplog.text,
            **output(capsys),
        }
    )


@pytest.mark.parametrize(
    "first",
    [
        {"msg_type": "<key>"},
        {"msg_type": "heartbeat", "seq_id": "<key>"},
        {"msg_type": "<key>", "payload": "<key>"},
    ],
    ids=["msg_type", "seq_id", "payload"],
)
def test_a_first_frame_quoting_the_key_raises_without_it(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture, first: dict[str, Any]
) -> None:
    """A first frame that is not connection.connected and quotes the key: the ProtocolError
    connect() raises, its chained causes and the log show *** instead."""
    caplog.set_level(logging.DEBUG)

    def handler(conn: Conn) -> None:
        conn.accept()
        key = echoed_key(conn)
        send(conn, {k: key if v == "<key>" else v for k, v in first.items()})
        conn.read_frames()

    server = make_server(handler)
    with pytest.raises(c2sync.ProtocolError) as info:
        c2sync.connect(API_KEY, url=server.url, reconnect=False, connect_timeout=WAIT)
    assert_hidden({**exception_texts(info.value), "log": caplog.text})
    assert MASK in str(info.value)


def test_a_frame_the_parser_chokes_on_is_logged_without_the_key(
    make_server: MakeServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frame that makes the parser itself fail (a bug) with an error quoting the frame:
    the ERROR and its traceback, and the skipped-frame warning, show *** for the key."""
    caplog.set_level(logging.DEBUG)
    real = c2sync._reader.parse_message

    def choking(frame: str | bytes) -> Message:
        if isinstance(frame, str) and "x.choke" in frame:
            raise RuntimeError(f"choked on {frame}")
        return real(frame)

    monkeypatch.setattr(c2sync._reader, "parse_message", choking)

    def handler(conn: Conn) -> None:
        key = opened(conn)
        send(conn, {"msg_type": "x.choke", "echo": key}, MARKER)
        conn.read_frames()

    server = make_server(handler)
    with connected(server) as client:
        assert client.recv(timeout=WAIT).msg_type == MARKER["msg_type"]
        assert client.stats.malformed == 1
    assert "could not read a frame" in caplog.text and "choked on" in caplog.text
    assert_hidden({"log": caplog.text})


# The command line ---------------------------------------------------------------------


def padded_to_cut(key: str) -> dict[str, Any]:
    """An unknown message whose one-line form (c2sync listen) is cut at 120 characters
    ten characters into the key."""
    frame: dict[str, Any] = {"msg_type": "x.padded", "pad": "", "echo": key}
    line = f"--:--:-- x.padded {json.dumps(frame, separators=(',', ':'))}"
    frame["pad"] = "p" * (117 - 10 - line.index(key))
    return frame


@pytest.mark.parametrize("json_lines", [False, True], ids=["lines", "json"])
def test_listen_prints_messages_echoing_the_key_without_it(
    make_server: MakeServer, json_lines: bool
) -> None:
    """`c2sync listen` (one line per message, or --json) against a server whose error, gap
    and unknown messages echo the key (one cut by the 120-character line limit): stdout
    and stderr show *** instead."""

    def handler(conn: Conn) -> None:
        key = opened(conn)
        ack(conn, json.loads(conn.next_text()))
        gap = {"channel": f"{SIGNAL}:{STRATEGY}", "strategy_id": STRATEGY, "from": 0}
        send(
            conn,
            refusal(None, key),
            {"msg_type": "gap", "payload": {**gap, "message": key}},
            {"msg_type": "x.unknown", "id": key, "payload": {"echo": key}},
            padded_to_cut(key),
            MARKER,
        )
        conn.read_frames()

    server = make_server(handler)
    process = subprocess.Popen(
        [*command(), "listen", "--signal", str(STRATEGY), *(["--json"] if json_lines else [])],
        env=clean_env(C2_API_KEY=API_KEY, C2_WS_URL=server.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        out, err = Lines(process.stdout), Lines(process.stderr)
        out.until(lambda line: MARKER["msg_type"] in line)
        process.send_signal(signal.SIGINT)
        assert process.wait(WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)
    lines = out.rest()
    assert len(lines) == 5, lines
    if json_lines:
        assert json.loads(lines[0])["payload"]["code"] == MASK
    assert_hidden({"stdout": "\n".join(lines), "stderr": "\n".join(err.rest())})


def test_check_prints_a_first_message_echoing_the_key_without_it(
    make_server: MakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`c2sync check` prints the first message: a connection.connected echoing the key
    prints *** instead."""

    def handler(conn: Conn) -> None:
        conn.accept()
        key = echoed_key(conn)
        send(conn, {**json.loads(CONNECTED), "echo": key})
        conn.read_frames()

    server = make_server(handler)
    status = cli.main(["check", "--url", server.url, "--api-key", API_KEY])
    shown = output(capsys)
    assert status == 0, shown
    assert f'"echo": "{MASK}"' in shown["stdout"]
    assert_hidden(shown)
