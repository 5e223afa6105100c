"""The public surface docs/api-contract.md promises: names importable from c2sync, honest
``__all__``\\ s, the exception tree, a pure core free of I/O imports, and exceptions that
never show the key."""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
import json
import logging
from pathlib import Path

import attrs
import pytest

import c2sync
from c2sync import (
    AuthenticationError,
    C2Error,
    ConnectionClosed,
    ErrorDetail,
    HandshakeError,
    HeartbeatTimeout,
    ProtocolError,
    QueueOverflow,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    SubscriptionLimitError,
)

from .conftest import API_KEY as ECHOED_KEY
from .conftest import WAIT, MakeServer
from .hostile import Conn
from .test_echoed_key import assert_hidden, echoed_key, exception_texts

API_NAMES = [
    "connect",
    "Client",
    "State",
    "SIGNAL",
    "POSITIONS",
    "DEFAULT_URL",
    "Checkpoint",
    "Message",
    "Signal",
    "Positions",
    "Gap",
    "SubscriptionAck",
    "ErrorMessage",
    "ErrorDetail",
    "parse_message",
    "encode_heartbeat_ack",
    "encode_subscription_request",
    "C2Error",
    "HandshakeError",
    "AuthenticationError",
    "RateLimitError",
    "ServiceUnavailableError",
    "ConnectionClosed",
    "HeartbeatTimeout",
    "ProtocolError",
    "ServerError",
    "QueueOverflow",
    "SubscriptionLimitError",
    "SubscriptionStats",
    "to_dataframe",
]

PUBLIC_MODULES = [
    "c2sync",
    "c2sync.client",
    "c2sync.codec",
    "c2sync.messages",
    "c2sync.exceptions",
    "c2sync.checkpoint",
    "c2sync.reconnect",
]

PURE_MODULES = [
    "codec",
    "_decode",
    "messages",
    "exceptions",
    "_protocol",
    "_events",
    "_streams",
    "_spec",
    "_clock",
    "_proxy",
    "_format",
    "_redact",
    "_request",
    "_requests",
]
FORBIDDEN_IMPORTS = {"socket", "threading", "_thread", "time", "websocket", "websockets"}

PACKAGE_DIR = Path(c2sync.__file__).parent


# Names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", API_NAMES)
def test_api_names_are_importable_and_exported(name: str) -> None:
    """Every name docs/api-contract.md documents is importable from c2sync and in __all__."""
    assert hasattr(c2sync, name)
    assert name in c2sync.__all__


def test_constants_have_documented_values() -> None:
    """SIGNAL, POSITIONS and DEFAULT_URL are the documented strings."""
    assert c2sync.SIGNAL == "strategy.signal"
    assert c2sync.POSITIONS == "strategy.positions"
    assert c2sync.DEFAULT_URL == "wss://api4-general.collective2.com/ws"


def test_state_is_an_enum_with_the_documented_members() -> None:
    """State is an enum.Enum with CONNECTING, OPEN, RECONNECTING and CLOSED."""
    assert issubclass(c2sync.State, enum.Enum)
    for member in ("CONNECTING", "OPEN", "RECONNECTING", "CLOSED"):
        assert isinstance(getattr(c2sync.State, member), c2sync.State)


def test_connect_signature() -> None:
    """connect() takes api_key positionally and the documented options by keyword."""
    params = inspect.signature(c2sync.connect).parameters
    assert next(iter(params)) == "api_key"
    assert params["api_key"].default is None
    expected = {
        "url": c2sync.DEFAULT_URL,
        "connect_timeout": 10.0,
        "heartbeat_timeout": 40.0,
        "reconnect": True,
        "max_queue": 10_000,
        "checkpoint": None,
        "proxy": None,
        "ssl_context": None,
    }
    for name, default in expected.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default == default, name


def test_receiving_and_observability_signatures() -> None:
    """recv_many(max_messages=100, timeout=0.0), subscription_stats, and
    SubscriptionStats with the documented fields, frozen."""
    params = inspect.signature(c2sync.Client.recv_many).parameters
    assert [(n, p.default) for n, p in params.items()] == [
        ("self", inspect.Parameter.empty),
        ("max_messages", 100),
        ("timeout", 0.0),
    ]
    assert isinstance(inspect.getattr_static(c2sync.Client, "subscription_stats"), property)
    fields = [f.name for f in attrs.fields(c2sync.SubscriptionStats)]
    assert fields == ["last_seq", "last_message_at", "messages", "duplicates", "gaps", "resumes"]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c2sync.SubscriptionStats().messages = 1  # type: ignore[misc]


def test_codec_helpers_signatures() -> None:
    """parse_message/encode_* take the documented arguments."""
    enc = inspect.signature(c2sync.encode_subscription_request).parameters
    assert list(enc)[:3] == ["action", "channel", "strategy_id"]
    for name in ("request_id", "resume_from", "now"):
        assert enc[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert enc["resume_from"].default is None and enc["now"].default is None
    assert inspect.signature(c2sync.encode_heartbeat_ack).parameters["now"].default is None
    assert json.loads(c2sync.encode_heartbeat_ack())["msg_type"] == "heartbeat.ack"
    assert isinstance(c2sync.parse_message('{"msg_type":"heartbeat"}'), c2sync.Message)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_names_only_existing_things(module_name: str) -> None:
    """Each public module's __all__ exists, has no duplicates and names only real attributes."""
    module = importlib.import_module(module_name)
    names = module.__all__
    assert isinstance(names, (list, tuple))
    assert len(names) == len(set(names))
    for name in names:
        assert isinstance(name, str)
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name!r}"


def test_star_import_gives_exactly_all() -> None:
    """`from c2sync import *` works and brings in every name of __all__."""
    namespace: dict[str, object] = {}
    exec("from c2sync import *", namespace)
    assert set(c2sync.__all__) <= set(namespace)


def test_message_classes_share_the_base() -> None:
    """Every message class is a Message, so one isinstance check covers them all."""
    for cls in (
        c2sync.Signal,
        c2sync.Positions,
        c2sync.Gap,
        c2sync.SubscriptionAck,
        c2sync.ErrorMessage,
    ):
        assert issubclass(cls, c2sync.Message)


# Exception tree ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (C2Error, (Exception,)),
        (HandshakeError, (C2Error,)),
        (AuthenticationError, (HandshakeError, C2Error)),
        (RateLimitError, (HandshakeError, C2Error)),
        (ServiceUnavailableError, (HandshakeError, C2Error)),
        (ConnectionClosed, (C2Error,)),
        (HeartbeatTimeout, (ConnectionClosed, C2Error)),
        (ProtocolError, (C2Error,)),
        (ServerError, (C2Error,)),
        (QueueOverflow, (C2Error,)),
        (SubscriptionLimitError, (ValueError, C2Error)),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_exception_tree(cls: type[BaseException], bases: tuple[type, ...]) -> None:
    """Each exception sits where docs/api-contract.md draws it in the tree."""
    for base in bases:
        assert issubclass(cls, base)


def test_exceptions_not_wrongly_related() -> None:
    """Branches stay apart: a protocol error is not a closed connection, and so on."""
    assert not issubclass(ProtocolError, ConnectionClosed)
    assert not issubclass(ConnectionClosed, HandshakeError)
    assert not issubclass(ServerError, ValueError)
    assert not issubclass(HeartbeatTimeout, TimeoutError)  # connection death, not a call timeout
    assert not issubclass(C2Error, ValueError)


def test_handshake_error_parses_json_body() -> None:
    """HandshakeError carries status, lower-case headers, the raw body and its code/message."""
    body = '{"code":"UNAUTHORIZED","message":"Invalid API key"}'
    exc = AuthenticationError(401, {"X-WS-Error": "Invalid API key", "Content-Type": "x"}, body)
    assert exc.status == 401
    assert exc.headers == {"x-ws-error": "Invalid API key", "content-type": "x"}
    assert exc.body == body
    assert exc.code == "UNAUTHORIZED"
    assert exc.message == "Invalid API key"
    assert "401" in str(exc) and "UNAUTHORIZED" in str(exc)


def test_handshake_error_falls_back_to_header() -> None:
    """Without a JSON body the message comes from the X-WS-Error header, any case."""
    for headers in ({"X-WS-Error": "Too many connections"}, {"x-ws-error": "Too many connections"}):
        exc = HandshakeError(429, headers, "<html>busy</html>")
        assert exc.code is None
        assert exc.message == "Too many connections"
        assert exc.body == "<html>busy</html>"
        assert "Too many connections" in str(exc)


def test_handshake_error_json_without_message_uses_header() -> None:
    """A JSON body with only a code keeps the code and takes the message from the header."""
    exc = ServiceUnavailableError(503, {"X-WS-Error": "full"}, '{"code":"SERVICE_UNAVAILABLE"}')
    assert (exc.code, exc.message) == ("SERVICE_UNAVAILABLE", "full")


def test_handshake_error_with_nothing() -> None:
    """A bare status still makes a usable error."""
    exc = HandshakeError(418)
    assert (exc.status, exc.headers, exc.body, exc.code, exc.message) == (418, {}, "", None, None)
    assert "418" in str(exc)


def test_handshake_error_survives_a_hostile_body() -> None:
    """A deeply nested body from a broken proxy still yields a HandshakeError."""
    exc = HandshakeError(503, {"X-WS-Error": "busy"}, "[" * 100_000)
    assert exc.message == "busy"


def test_rate_limit_error_has_retry_after() -> None:
    """RateLimitError exposes .retry_after (seconds or None) and mentions it."""
    exc = RateLimitError(429, {"X-WS-Error": "slow down"}, retry_after=7.0)
    assert exc.retry_after == 7.0
    assert "7" in str(exc)
    assert RateLimitError(429).retry_after is None


def test_server_error_fields() -> None:
    """ServerError carries code, field, message, errors and request_id."""
    details = (ErrorDetail("FORBIDDEN", "StrategyId", "no"), ErrorDetail("X", None, "y"))
    exc = ServerError("FORBIDDEN", "no", field="StrategyId", errors=details, request_id="r1")
    assert (exc.code, exc.field, exc.message, exc.errors, exc.request_id) == (
        "FORBIDDEN",
        "StrategyId",
        "no",
        details,
        "r1",
    )
    assert "FORBIDDEN" in str(exc)


def test_connection_closed_and_heartbeat_timeout_fields() -> None:
    """ConnectionClosed carries code and reason; HeartbeatTimeout is one without a code."""
    exc = ConnectionClosed(1008, "policy violation")
    assert (exc.code, exc.reason) == (1008, "policy violation")
    assert "1008" in str(exc)
    hb = HeartbeatTimeout(40.0)
    assert hb.code is None and hb.timeout == 40.0
    assert "40" in str(hb)


def test_queue_overflow_fields() -> None:
    """QueueOverflow tells how many were dropped and where to resume from."""
    last = {12345678: 42}
    exc = QueueOverflow(3, last)
    last[12345678] = 0
    assert exc.dropped == 3 and exc.last_seq == {12345678: 42}


REFUSALS = [302, 400, 401, 403, 429, 503]


@pytest.mark.parametrize("status", REFUSALS)
def test_a_refusal_echoing_the_key_shows_it_nowhere(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """A server (or a proxy) that refuses the upgrade and echoes the key back in its
    ``X-WS-Error``, an ``Authorization`` header, the ``Location`` of a redirect and the JSON
    body: whatever the status, the exception ``connect()`` raises shows ``***`` in its text,
    repr, attributes and traceback, and so do the logs."""
    caplog.set_level(logging.DEBUG, logger="c2sync")

    def handler(conn: Conn) -> None:
        conn.read_request()
        key = echoed_key(conn)
        body = json.dumps({"code": key, "message": f"bad key {key}"}).encode()
        head = (
            f"HTTP/1.1 {status} Refused\r\nX-WS-Error: invalid key {key}\r\n"
            f"Authorization: Bearer {key}\r\nRetry-After: 1\r\n"
            f"Location: wss://elsewhere.example/ws?key={key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        conn.sock.sendall(head.encode() + body)

    server = make_server(handler)
    with pytest.raises(HandshakeError) as info:
        c2sync.connect(ECHOED_KEY, url=server.url, connect_timeout=WAIT, reconnect=False)
    error = info.value
    assert error.status == status and "***" in error.headers["x-ws-error"]
    assert_hidden(exception_texts(error))
    assert_hidden({"logs": caplog.text})


# The pure core -------------------------------------------------------------------------


def imported_roots(source: str) -> set[str]:
    """Top-level names of every module imported anywhere in the source (nested included)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            roots.add("__import__")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "import_module"
            and isinstance(node.value, ast.Name)
        ):
            roots.add("importlib.import_module")
    return roots


def relative_imports(source: str) -> set[str]:
    """The sibling modules a source imports with `from .x import ...` or `from . import x`."""
    siblings: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                siblings.add(node.module.split(".")[0])
            else:
                siblings.update(alias.name for alias in node.names)
    return siblings


def test_import_checker_sees_nested_imports() -> None:
    """The checker itself finds imports hidden inside functions and conditionals."""
    source = (
        "import json\n"
        "def f():\n"
        "    import time\n"
        "    if True:\n"
        "        from socket import create_connection\n"
        "from .client import Client\n"
    )
    assert {"time", "socket", "json"} <= imported_roots(source)
    assert relative_imports(source) == {"client"}


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_core_imports_no_io(module: str) -> None:
    """The protocol core imports no socket, threading, time or websocket, even lazily."""
    source = (PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8")
    roots = imported_roots(source)
    assert not roots & FORBIDDEN_IMPORTS, f"c2sync.{module} imports {roots & FORBIDDEN_IMPORTS}"
    assert "__import__" not in roots and "importlib.import_module" not in roots
    assert relative_imports(source) <= set(PURE_MODULES), (
        f"c2sync.{module} imports a non-core sibling: {relative_imports(source)}"
    )


ROOMS = [
    "_dispatcher",
    "_sql",
    "_frames",
    "_framing",
    "_handshake",
    "_inbox",
    "_lifecycle",
    "_link",
    "_options",
    "_pending",
    "_reader",
    "_substats",
    "_watchdog",
]


@pytest.mark.parametrize("module", [*ROOMS, "_session"])
def test_rooms_never_import_the_rooms_above_them(module: str) -> None:
    """Arrows point down only (docs/design.md): no room imports the session or Client, and
    the session does not import Client, so no room can reach back up through them."""
    source = (PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8")
    above = {"client", "cli", "_demo"} | ({"_session"} if module != "_session" else set())
    assert not relative_imports(source) & above, (
        f"c2sync.{module} imports {relative_imports(source) & above}"
    )


def test_every_room_is_checked() -> None:
    """A new private shell module is added to ROOMS (or to the pure core), so its imports are
    checked too."""
    private = {p.stem for p in PACKAGE_DIR.glob("_*.py")} - {"__init__", "__main__"}
    # The session and the face's helpers (the demo, the notebook view) sit above the rooms.
    face = {"_session", "_demo", "_display", "_cli_parser", "_record"}
    assert private - set(PURE_MODULES) - face == set(ROOMS)
