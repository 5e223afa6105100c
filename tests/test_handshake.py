"""What the link puts on the wire when it opens, and how it reads and masks the answer.

Mirrors c2sync/_handshake.py and c2sync/_request.py (issue 25, the security review: each
test names the defect it is for). Servers are small raw-socket ones on 127.0.0.1
(tests/hostile.py) that say byte for byte what the client meets; a server that echoes a
secret reads it from the request the client sent, so the echo is what a real server would
send.
"""

from __future__ import annotations

import base64
import logging
import ssl
import threading
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

import c2sync
from c2sync import cli
from c2sync._proxy import resolve_proxy
from c2sync.emulator import Emulator

from .conftest import API_KEY, WAIT, MakeServer
from .connect_proxy import ConnectProxy
from .hostile import CONNECTED, Conn, text
from .test_link import connect_fails

# A key with the characters JSON and URL encoders escape: "/" (PHP's "\/"), "+" (.NET's
# "\u002B") and "=" (percent-encoded in a query).
ODD_KEY = "sk/test+5f3c9a1e7b2d4c6a8e0f=="
USER, PASSWORD = "alice", "s3cret-proxy-pw"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``c2sync ...`` in-process: (exit status, stdout, stderr)."""
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def shown(error: BaseException) -> list[str]:
    """Every text an error shows: str, repr, attributes (as they are, and repr'd), the
    traceback with its causes."""
    attributes = [f"{name}={value}" for name, value in vars(error).items()]
    headers = getattr(error, "headers", {})
    return [
        *attributes,
        *(f"{name}: {value}" for name, value in headers.items()),
        str(error),
        repr(error),
        repr(vars(error)),
        "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    ]


def assert_hidden(secret: str, *texts: str) -> None:
    for text_ in texts:
        assert secret not in text_ and secret[:8] not in text_, text_


def answer(status: str, headers: str = "", body: bytes = b"") -> Callable[[Conn], None]:
    """A handler answering the upgrade with ``status``, ``headers`` (``{key}`` replaced by
    the echoed key) and ``body``, then waiting for the client to leave."""

    def handler(conn: Conn) -> None:
        conn.read_request()
        key = (conn.header("Authorization") or "").partition(" ")[2]
        head = f"HTTP/1.1 {status}\r\n{headers.replace('{key}', key)}"
        conn.sock.sendall(head.encode("latin-1") + b"\r\n" + body.replace(b"{key}", key.encode()))
        conn.read_frames()

    return handler


# 1. Escaped echoes of the key -------------------------------------------------------------


def _escaped(key: str, how: str) -> str:
    if how == "php":  # json_encode: "/" as "\/"
        return key.replace("/", "\\/")
    if how == "dotnet":  # System.Text.Json: "+" as "\u002B"
        return key.replace("+", "\\u002B")
    return "".join(f"\\u{ord(c):04x}" for c in key)  # every character escaped


@pytest.mark.parametrize("how", ["php", "dotnet", "every character"])
def test_1_a_401_echoing_the_key_json_escaped_shows_it_nowhere(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A 401 whose JSON body echoes the key with JSON escapes: after parsing, the key is in
    no attribute (.code, .message, .body), str, repr or traceback."""
    caplog.set_level(logging.DEBUG)

    def handler(conn: Conn) -> None:
        conn.read_request()
        echo = _escaped((conn.header("Authorization") or "").partition(" ")[2], how)
        body = f'{{"code":"{echo}","message":"invalid key {echo}"}}'.encode()
        conn.sock.sendall(
            b"HTTP/1.1 401 Unauthorized\r\n"
            + f"X-Echo: {echo}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        conn.read_frames()

    server = make_server(handler)
    with pytest.raises(c2sync.AuthenticationError) as info:
        c2sync.connect(ODD_KEY, url=server.url, reconnect=False, connect_timeout=WAIT)
    error = info.value
    assert error.code == "***" and error.message == "invalid key ***"
    assert_hidden(ODD_KEY, *shown(error), caplog.text)
    assert_hidden(_escaped(ODD_KEY, how), *shown(error))


def test_1_a_redirect_with_the_key_percent_encoded_shows_it_nowhere(
    make_server: MakeServer,
) -> None:
    """A 302 whose Location carries the key percent-encoded: masked in .headers and str."""

    def handler(conn: Conn) -> None:
        conn.read_request()
        key = (conn.header("Authorization") or "").partition(" ")[2]
        location = f"https://elsewhere.example/login?key={quote(key, safe='')}&x=1"
        conn.sock.sendall(
            f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        conn.read_frames()

    server = make_server(handler)
    with pytest.raises(c2sync.HandshakeError) as info:
        c2sync.connect(ODD_KEY, url=server.url, reconnect=False, connect_timeout=WAIT)
    error = info.value
    assert "elsewhere.example" in error.headers["location"]
    assert_hidden(ODD_KEY, *shown(error))
    assert_hidden(quote(ODD_KEY, safe=""), *shown(error))


def test_1_the_cli_check_shows_no_escaped_key(
    make_server: MakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`c2sync check` against a 401 echoing the key as \\uXXXX: its one line shows ***."""
    server = make_server(answer_escaped_401)
    status, out, err = run_cli(capsys, "check", "--api-key", ODD_KEY, "--url", server.url)
    assert status != 0
    assert "***" in err
    assert_hidden(ODD_KEY, out, err)


def test_1_a_refused_reconnect_logs_and_reports_no_escaped_key(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The first connection works, the reconnect meets a 401 echoing the key as \\uXXXX:
    the reconnect WARNING, the ERROR and what on_error receives show *** only."""
    caplog.set_level(logging.DEBUG)
    closed = threading.Event()
    errors: list[str] = []

    def handler(conn: Conn) -> None:
        if len(server.conns) == 1:
            conn.accept()
            conn.sock.sendall(text(CONNECTED))
            return  # the server goes away: the client reconnects
        answer_escaped_401(conn)

    server = make_server(handler)
    client = c2sync.connect(
        ODD_KEY,
        url=server.url,
        connect_timeout=WAIT,
        heartbeat_timeout=30,
        reconnect_policy=c2sync.ReconnectPolicy(initial=0.01, maximum=0.01),
    )
    try:
        client.on_error(lambda exc: errors.append(f"{exc} {exc!r}"))
        client.on_state(lambda state: closed.set() if state is c2sync.State.CLOSED else None)
        assert closed.wait(WAIT), "the refused reconnect did not end the client"
    finally:
        client.close()
    assert "***" in caplog.text
    assert_hidden(ODD_KEY, caplog.text, *errors)
    assert_hidden(_escaped(ODD_KEY, "every character"), caplog.text, *errors)


def answer_escaped_401(conn: Conn) -> None:
    conn.read_request()
    echo = _escaped((conn.header("Authorization") or "").partition(" ")[2], "every character")
    body = f'{{"code":"UNAUTHORIZED","message":"invalid key {echo}"}}'.encode()
    conn.sock.sendall(
        f"HTTP/1.1 401 Unauthorized\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    conn.read_frames()


# 3. Chunked refusals ------------------------------------------------------------------------


def test_3_a_chunked_401_is_decoded_masked_and_does_not_wait(make_server: MakeServer) -> None:
    """A kept-alive 401 with Transfer-Encoding: chunked, the echoed key split across two
    chunks: the body is decoded (.code read), the key masked, and the error comes at once
    (not after connect_timeout)."""

    def handler(conn: Conn) -> None:
        conn.read_request()
        key = (conn.header("Authorization") or "").partition(" ")[2]
        body = f'{{"code":"UNAUTHORIZED","message":"bad key {key}"}}'.encode()
        cut = body.index(key.encode()) + 6
        parts = (body[:cut], body[cut:])
        chunks = b"".join(f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n" for p in parts)
        conn.sock.sendall(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: keep-alive\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
        conn.read_frames()  # keeps the connection open until the client leaves

    server = make_server(handler)
    error = connect_fails(server.url, c2sync.AuthenticationError, connect_timeout=WAIT)
    assert error.code == "UNAUTHORIZED"  # type: ignore[attr-defined]
    assert error.message == "bad key ***"  # type: ignore[attr-defined]
    assert_hidden(API_KEY, *shown(error))


def test_3_an_endless_chunked_body_is_cut_at_the_budget(make_server: MakeServer) -> None:
    """Chunks without end, and a chunk-size line without end: the body stops at 4 KiB and
    the error comes at once."""

    def handler(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sock.sendall(b"1\r\nx\r\n" * 5000 + b"f" * 100_000)
        conn.read_frames()

    server = make_server(handler)
    error = connect_fails(server.url, c2sync.ServiceUnavailableError, connect_timeout=WAIT)
    assert error.body == "x" * 4096  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified", "100 Continue"])
def test_3_a_bodiless_refusal_on_a_kept_alive_connection_does_not_wait(
    make_server: MakeServer, status: str
) -> None:
    """A 204, 304 or 1xx (no body, RFC 9112 6.3) and no Content-Length, the connection
    kept open: the HandshakeError comes at once, not at connect_timeout."""
    server = make_server(answer(status))
    error = connect_fails(server.url, c2sync.HandshakeError, connect_timeout=WAIT)
    assert error.status == int(status[:3]) and error.body == ""  # type: ignore[attr-defined]


# 4. Header names ------------------------------------------------------------------------------


def test_4_a_header_name_echoing_the_key_is_masked(make_server: MakeServer) -> None:
    """A 401 with the key inside a header's name: masked in .headers."""
    server = make_server(answer("401 Unauthorized", "X-Bad-{key}: 1\r\nContent-Length: 0\r\n"))
    error = connect_fails(server.url, c2sync.AuthenticationError)
    assert "x-bad-***" in error.headers  # type: ignore[attr-defined]
    assert_hidden(API_KEY, *shown(error))


# 5. A proxy echoing its password --------------------------------------------------------------


def test_5_a_proxy_echoing_its_credentials_in_clear_is_masked(make_server: MakeServer) -> None:
    """A 407 whose headers and body echo user:password (decoded from the header) and the
    password alone: masked everywhere."""

    def proxy(conn: Conn) -> None:
        conn.read_request()
        token = (conn.header("Proxy-Authorization") or "").partition(" ")[2]
        pair = base64.b64decode(token).decode()
        password = pair.partition(":")[2]
        body = f'{{"message":"bad {pair}"}}'.encode()
        conn.sock.sendall(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            + f"X-Echo: {pair}\r\nX-Pw-{password}: 1\r\nX-Token: {token}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        conn.read_frames()

    server = make_server(proxy)
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{server.port}"
    error = connect_fails("ws://c2.example/ws", c2sync.HandshakeError, proxy=url)
    assert error.status == 407  # type: ignore[attr-defined]
    assert "***" in error.headers["x-echo"]  # type: ignore[attr-defined]
    assert_hidden(PASSWORD, *shown(error))


# 6. Credentials in the URL's user part ----------------------------------------------------


def test_6_url_credentials_are_not_in_a_timeout(make_server: MakeServer) -> None:
    """ws://bob:pw@host/ws to a server that never answers: the TimeoutError hides pw."""
    server = make_server(lambda conn: (conn.read_request(), conn.read_frames()))
    url = server.url.replace("ws://", "ws://bob:S3cretUrlPw@")
    error = connect_fails(url, TimeoutError)
    assert_hidden("S3cretUrlPw", *shown(error))


def test_6_url_credentials_are_not_in_a_dns_error() -> None:
    """ws://bob:pw@unresolvable/ws: the resolver's error hides pw."""
    with pytest.raises(OSError) as info:
        c2sync.connect(
            API_KEY,
            url="ws://bob:S3cretUrlPw@no-such-host.invalid/ws",
            reconnect=False,
            connect_timeout=WAIT,
        )
    assert_hidden("S3cretUrlPw", *shown(info.value))


def test_6_url_credentials_are_not_in_the_cli_output(
    make_server: MakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`c2sync check` with credentials in --url: neither its timeout line nor anything else
    shows the password."""
    server = make_server(lambda conn: (conn.read_request(), conn.read_frames()))
    url = server.url.replace("ws://", "ws://bob:S3cretUrlPw@")
    status, out, err = run_cli(
        capsys, "check", "--api-key", API_KEY, "--url", url, "--connect-timeout", "0.5"
    )
    assert status != 0 and "timed out" in err
    assert_hidden("S3cretUrlPw", out, err)


# 7. IDNA, and secrets in UnicodeEncodeError -------------------------------------------------


def test_7_an_internationalised_host_goes_out_as_punycode(make_server: MakeServer) -> None:
    """ws://bücher.example through a proxy: the CONNECT names xn--bcher-kva.example."""
    requests: list[bytes] = []

    def proxy(conn: Conn) -> None:
        requests.append(conn.read_request())
        conn.sock.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        conn.read_frames()

    server = make_server(proxy)
    connect_fails(
        "ws://b\u00fccher.example/ws",
        c2sync.HandshakeError,
        proxy=f"http://127.0.0.1:{server.port}",
    )
    (request,) = requests
    assert request.startswith(b"CONNECT xn--bcher-kva.example:80 HTTP/1.1\r\n")
    assert b"\r\nHost: xn--bcher-kva.example:80\r\n" in request


@pytest.mark.parametrize(
    ("where", "options"),
    [
        ("api_key", {"api_key": API_KEY + "\udcff"}),
        ("url", {"url": "ws://127.0.0.1:9/ws\udcff"}),
        ("proxy", {"proxy": f"http://{USER}:{PASSWORD}\udcff@127.0.0.1:9"}),
    ],
)
def test_7_a_lone_surrogate_is_a_value_error_without_the_secret(
    where: str, options: dict[str, Any]
) -> None:
    """A lone surrogate (an undecodable environment variable) in the key, URL or proxy
    password: a ValueError at construction naming the field, no secret in its text or
    repr, no UnicodeEncodeError chained."""
    options.setdefault("api_key", API_KEY)
    with pytest.raises(ValueError) as info:
        c2sync.Client(**options)
    error = info.value
    assert not isinstance(error, UnicodeError)
    assert where.replace("_", " ") in str(error).replace("_", " ")
    assert error.__cause__ is None and error.__suppress_context__
    assert_hidden(API_KEY, *shown(error))
    assert_hidden(PASSWORD, *shown(error))


def test_7_a_lone_surrogate_in_an_environment_proxy_sends_nothing(
    make_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY with a lone surrogate in its password: ValueError at connect(), the
    password in no text, and the proxy never hears from the client."""
    server = make_server(lambda conn: conn.read_request())
    monkeypatch.setenv("HTTP_PROXY", f"http://{USER}:{PASSWORD}\udcff@127.0.0.1:{server.port}")
    with pytest.raises(ValueError) as info:
        c2sync.connect(API_KEY, url="ws://c2.example/ws", reconnect=False, connect_timeout=WAIT)
    assert_hidden(PASSWORD, *shown(info.value))
    assert not server.conns


# 8. Control characters never reach the wire -------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["\r\nX-Injected: yes", "\n", "\r", "\x00", "\x01", "\t", "\x7f", " trailing "]
)
def test_8_control_characters_in_the_key_are_refused_before_sending(bad: str) -> None:
    """A key holding CR, LF, NUL, another C0 character, DEL or edge spaces: ValueError at
    construction naming api_key, never quoting it."""
    key = API_KEY + bad if bad != " trailing " else f" {API_KEY} "
    with pytest.raises(ValueError) as info:
        c2sync.Client(key)
    assert "api_key" in str(info.value)
    assert_hidden(API_KEY, *shown(info.value))


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:9/ws\r\nX-Injected: yes",
        "ws://127.0.0.1:9/ws\x00",
        "ws://127.0.0.1:9/w s",
        "ws://127.0.0.1:9/ws\x7f",
    ],
)
def test_8_control_characters_in_the_request_target_are_refused(url: str) -> None:
    """A URL whose path would inject header lines: ValueError at construction."""
    with pytest.raises(ValueError, match="url"):
        c2sync.Client(API_KEY, url=url)


def test_8_a_key_that_injects_headers_never_reaches_a_server(make_server: MakeServer) -> None:
    """The key "k\\r\\nX-Injected: yes" through connect(): refused before a connection."""
    server = make_server(lambda conn: conn.read_request())
    with pytest.raises(ValueError):
        c2sync.connect("k\r\nX-Injected: yes", url=server.url, reconnect=False)
    assert not server.conns


# 10. Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["Mon, 01 Jan 2024 00:00:00 +99999999999999999999", "1e999", "inf", "-nan", "soon"],
)
def test_10_an_unreadable_retry_after_is_none(make_server: MakeServer, value: str) -> None:
    """A 429 whose Retry-After overflows or is garbage: RateLimitError, retry_after None."""
    server = make_server(answer("429 Too Many", f"Retry-After: {value}\r\nContent-Length: 0\r\n"))
    error = connect_fails(server.url, c2sync.RateLimitError)
    assert error.retry_after is None  # type: ignore[attr-defined]


# 15. Strictness of the 101 ------------------------------------------------------------------


def upgrade_with(change: Callable[[bytes], bytes]) -> Callable[[Conn], None]:
    """An honest 101 passed through ``change``, then connection.connected."""

    def handler(conn: Conn) -> None:
        conn.read_request()
        conn.sock.sendall(change(conn.upgrade_answer()) + text(CONNECTED))
        conn.read_frames()

    return handler


def _add(line: bytes) -> Callable[[bytes], bytes]:
    return lambda head: head[:-2] + line + b"\r\n\r\n"


@pytest.mark.parametrize(
    "change",
    [
        _add(b"Sec-WebSocket-Extensions: permessage-deflate"),
        _add(b"Sec-WebSocket-Protocol: chat"),
        lambda head: head.replace(b"HTTP/1.1 101", b"HTTP/1.0 101"),
        lambda head: head.replace(b"HTTP/1.1 101", b"HTTP/1.x 101"),
        lambda head: head.replace(b"HTTP/1.1 101", b"HTTP/1.1 0000101"),
        lambda head: head.replace(b"Connection: Upgrade", b"Connection: notupgraded"),
        lambda head: head.replace(b"Upgrade: websocket", b"Upgrade : websocket"),
        lambda head: head.replace(b"Connection: Upgrade", b"Connection: Upgrade\r\n\tX-Folded: x"),
        lambda head: head.replace(b"\r\nUpgrade: websocket", b"\rUpgrade: websocket"),
    ],
    ids=[
        "extension",
        "subprotocol",
        "http-1.0",
        "http-1.x",
        "status-0000101",
        "connection-notupgraded",
        "space-before-colon",
        "obs-fold",
        "bare-cr",
    ],
)
def test_15_a_101_breaking_rfc_6455_fails_the_connection(
    make_server: MakeServer, change: Callable[[bytes], bytes]
) -> None:
    """A 101 the client must not accept (RFC 6455 4.1, RFC 9112): ProtocolError at once."""
    server = make_server(upgrade_with(change))
    connect_fails(server.url, c2sync.ProtocolError)


@pytest.mark.parametrize(
    "change",
    [
        lambda head: head.replace(b"\r\n", b"\n"),
        lambda head: head.replace(b"Connection: Upgrade", b"Connection: keep-alive, UPGRADE"),
        lambda head: head.replace(b" Switching Protocols", b""),
        _add(b"Sec-WebSocket-Extensions: "),
    ],
    ids=["bare-lf", "connection-token-list", "no-reason-phrase", "empty-extensions"],
)
def test_15_a_lenient_but_valid_101_connects(
    make_server: MakeServer, change: Callable[[bytes], bytes]
) -> None:
    """Bare LF line ends (RFC 9112 2.2 lets a recipient accept them), Upgrade among other
    Connection tokens, no reason phrase: connected, not hung until the deadline."""
    server = make_server(upgrade_with(change))
    with c2sync.connect(API_KEY, url=server.url, connect_timeout=WAIT, reconnect=False) as client:
        assert client.connected_message is not None


# 16. One check of the URL -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        " wss://example.com/ws",
        "\twss://example.com/ws",
        "wss://example.com/ws ",
        "wss://exa mple.com/ws",
        "wss://example.com/ws\u00a0",
    ],
)
def test_16_whitespace_in_the_url_is_refused(url: str) -> None:
    """Leading, trailing or inner whitespace in the URL: ValueError at construction."""
    with pytest.raises(ValueError, match="url"):
        c2sync.Client(API_KEY, url=url)


def test_16_the_proxy_choice_reads_the_parsed_scheme() -> None:
    """A wss:// URL after a tab (which urlsplit strips) picks HTTPS_PROXY: the scheme as
    the link parses it, not the raw string's start."""
    environ = {"HTTPS_PROXY": "http://secure:1", "HTTP_PROXY": "http://plain:2"}
    assert resolve_proxy("\twss://example.com/ws", None, environ) == "http://secure:1"
    assert resolve_proxy("WSS://example.com/ws", None, environ) == "http://secure:1"


# Also reported ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ws://127.0.0.1:0/ws", "wss:///ws", "ws://:80/ws", "ws://h:99999/"]
)
def test_also_port_0_and_an_empty_host_are_refused(url: str) -> None:
    """Port 0 (once silently the default port), no host, a port out of range: ValueError."""
    with pytest.raises(ValueError, match="url"):
        c2sync.Client(API_KEY, url=url)


def test_also_an_ssl_context_without_checks_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ssl_context with CERT_NONE: a WARNING names what was turned off."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with caplog.at_level(logging.WARNING, logger="c2sync"):
        c2sync.Client(API_KEY, url="wss://example.com/ws", ssl_context=context)
    assert [r for r in caplog.records if r.levelno == logging.WARNING and "CERT_NONE" in r.message]


def test_also_a_verifying_ssl_context_is_not_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The default context: no WARNING."""
    with caplog.at_level(logging.WARNING, logger="c2sync"):
        c2sync.Client(API_KEY, url="wss://example.com/ws", ssl_context=ssl.create_default_context())
    assert not caplog.records


@pytest.mark.parametrize(
    ("route", "status", "headers", "error_type"),
    [
        ("direct", "401 Unauthorized", "X-Echo: {key}\r\n", c2sync.AuthenticationError),
        ("through a proxy", "401 Unauthorized", "X-Echo: {key}\r\n", c2sync.AuthenticationError),
        ("direct", "101 {key}", "X-Echo : {key}\r\n", c2sync.ProtocolError),
        ("direct", "{key}", "", c2sync.ProtocolError),
    ],
    ids=["401", "401-through-a-proxy", "malformed-101", "not-http"],
)
def test_also_the_key_is_in_no_frame_local_where_the_refusal_is_raised(
    make_server: MakeServer, route: str, status: str, headers: str, error_type: type[Exception]
) -> None:
    """A refusal or a malformed answer echoing the key (through a proxy with credentials,
    or not): no local variable of any c2sync frame in the traceback (what error trackers
    record) holds the key, its echo or the proxy's password, chained causes included."""
    server = make_server(answer(status, headers + "Content-Length: 30\r\n", b"{key}"))
    with ConnectProxy(auth=(USER, PASSWORD)) as proxy:
        via = proxy.url_with_auth(USER, PASSWORD) if route != "direct" else ""
        error = connect_fails(server.url, error_type, proxy=via)
        assert len(proxy.connects) == (route != "direct")
    leaks = []
    seen: BaseException | None = error
    while seen is not None:
        tb = seen.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if "c2sync" in frame.f_code.co_filename and "tests" not in frame.f_code.co_filename:
                for name, value in frame.f_locals.items():
                    if API_KEY in repr(value) or PASSWORD in repr(value):
                        leaks.append(f"{frame.f_code.co_name}:{name}")
            tb = tb.tb_next
        seen = seen.__cause__ or seen.__context__
    assert not leaks


def test_6_url_credentials_are_not_in_a_successful_check(
    emulator: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`c2sync check` that connects with credentials in --url: "connected to" shows ***@,
    and the client's repr hides them too."""
    url = emulator.url.replace("ws://", "ws://bob:S3cretUrlPw@")
    status, out, err = run_cli(capsys, "check", "--api-key", API_KEY, "--url", url)
    assert status == 0 and "connected to ws://***@" in out
    assert_hidden("S3cretUrlPw", out, err)
    assert_hidden("S3cretUrlPw", repr(c2sync.Client(API_KEY, url=url)))
