"""Choosing a proxy as ``requests`` does (HTTPS_PROXY, NO_PROXY), checking a proxy URL, and
never showing its credentials (docs/api-contract.md "Clocks and proxies"). Pure functions:
the environment is a plain dict, no sockets."""

from __future__ import annotations

import base64

import pytest

from c2sync._proxy import (
    HttpProxy,
    bypasses_proxy,
    parse_proxy,
    proxy_from_environment,
    redact_url,
    resolve_proxy,
    safe_url,
)

WSS = "wss://api4-general.collective2.com/ws"
PROXY = "http://proxy.corp:3128"


# Which variable -------------------------------------------------------------------------


def test_wss_reads_https_proxy() -> None:
    """A corporate user's HTTPS_PROXY is honoured for wss:// without passing proxy=."""
    assert resolve_proxy(WSS, None, {"HTTPS_PROXY": PROXY}) == PROXY


def test_ws_reads_http_proxy_not_https_proxy() -> None:
    """Plain ws:// follows HTTP_PROXY, as requests does for http://."""
    env = {"HTTPS_PROXY": "http://s:1", "HTTP_PROXY": "http://p:2"}
    assert resolve_proxy("ws://127.0.0.1:8080/ws", None, env) == "http://p:2"
    assert resolve_proxy("ws://127.0.0.1:8080/ws", None, {"HTTPS_PROXY": "http://s:1"}) is None


def test_no_variable_means_no_proxy() -> None:
    """Without the variables the connection is direct."""
    assert resolve_proxy(WSS, None, {}) is None
    assert resolve_proxy(WSS, None, {"HTTP_PROXY": PROXY}) is None


def test_lowercase_wins_over_uppercase() -> None:
    """https_proxy beats HTTPS_PROXY (urllib's getproxies_environment)."""
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"}
    assert resolve_proxy(WSS, None, env) == "http://lower:2"


def test_an_empty_lowercase_variable_disables_the_uppercase_one() -> None:
    """https_proxy="" switches the proxy off even when HTTPS_PROXY is set (urllib)."""
    assert resolve_proxy(WSS, None, {"HTTPS_PROXY": PROXY, "https_proxy": ""}) is None
    assert resolve_proxy(WSS, None, {"HTTPS_PROXY": ""}) is None


def test_http_proxy_is_ignored_in_a_cgi_process() -> None:
    """HTTP_PROXY may come from a client's Proxy: header under CGI (httpoxy)."""
    env = {"HTTP_PROXY": PROXY, "REQUEST_METHOD": "GET"}
    assert proxy_from_environment("http", env) is None
    assert proxy_from_environment("http", {**env, "http_proxy": PROXY}) == PROXY


def test_a_proxy_without_scheme_is_http() -> None:
    """HTTPS_PROXY=proxy.corp:3128 works, as requests reads it."""
    assert resolve_proxy(WSS, None, {"HTTPS_PROXY": "proxy.corp:3128"}) == PROXY
    assert resolve_proxy(WSS, "proxy.corp:3128", {}) == PROXY


# The user's proxy= ----------------------------------------------------------------------


def test_empty_proxy_disables_the_environment() -> None:
    """proxy="" means no proxy whatever the environment says."""
    assert resolve_proxy(WSS, "", {"HTTPS_PROXY": PROXY}) is None


def test_an_explicit_proxy_wins_over_the_environment_and_no_proxy() -> None:
    """proxy="http://..." is used as given, NO_PROXY notwithstanding."""
    env = {"HTTPS_PROXY": "http://other:1", "NO_PROXY": "*"}
    assert resolve_proxy(WSS, PROXY, env) == PROXY


def test_a_proxy_that_is_not_a_string_is_a_type_error() -> None:
    """proxy=3128 fails clearly."""
    with pytest.raises(TypeError, match="proxy must be a str"):
        resolve_proxy(WSS, 3128, {})  # type: ignore[arg-type]


# NO_PROXY --------------------------------------------------------------------------------

# requests' own test table (tests/test_utils.py, test_should_bypass_proxies), on ws:// URLs.
REQUESTS_NO_PROXY = "192.168.0.0/24,127.0.0.1,localhost.localdomain,172.16.1.1, google.com:6000"


@pytest.mark.parametrize(
    ("url", "bypass"),
    [
        ("ws://192.168.0.1:5000/", True),
        ("ws://192.168.0.1/", True),
        ("ws://172.16.1.1/", True),
        ("ws://172.16.1.1:5000/", True),
        ("ws://localhost.localdomain:5000/v1.0/", True),
        ("ws://google.com:6000/", True),
        ("ws://172.16.1.12/", False),
        ("ws://172.16.1.12:5000/", False),
        ("ws://google.com:5000/v1.0/", False),
        ("ws://127.0.0.1:8080/ws", True),
        ("ws://192.168.1.1/", False),
    ],
)
def test_no_proxy_as_requests_tests_it(url: str, bypass: bool) -> None:
    """Hosts, CIDR blocks, addresses and host:port entries match as in requests."""
    assert bypasses_proxy(url, REQUESTS_NO_PROXY) is bypass
    env = {"HTTP_PROXY": PROXY, "NO_PROXY": REQUESTS_NO_PROXY}
    assert (resolve_proxy(url, None, env) is None) is bypass


@pytest.mark.parametrize(
    ("no_proxy", "host", "bypass"),
    [
        ("collective2.com", "api4-general.collective2.com", True),  # domain suffix
        ("collective2.com", "collective2.com", True),  # the host itself
        (".collective2.com", "api4-general.collective2.com", True),  # leading dot
        (".collective2.com", "collective2.com", True),  # leading dot, bare domain
        ("*.collective2.com", "api4-general.collective2.com", True),
        ("COLLECTIVE2.COM", "api4-general.Collective2.com", True),  # case-insensitive
        ("collective2.com.", "api4-general.collective2.com", True),  # trailing dot
        ("2.com", "api4-general.collective2.com", False),  # not a label boundary
        ("other.com", "api4-general.collective2.com", False),
        ("api4-general.collective2.com:443", "api4-general.collective2.com", True),
        ("api4-general.collective2.com:8443", "api4-general.collective2.com", False),
        (" other.com , collective2.com ", "api4-general.collective2.com", True),  # spaces
        (",,collective2.com,", "api4-general.collective2.com", True),  # empty entries
        ("*", "anything.example", True),
        (" * ", "anything.example", True),
        ("other.com,*", "anything.example", False),  # '*' only counts alone (urllib)
        ("", "anything.example", False),
    ],
)
def test_no_proxy_matching(no_proxy: str, host: str, bypass: bool) -> None:
    """NO_PROXY: host and domain-suffix matching, leading dots, '*', ports, case."""
    assert bypasses_proxy(f"wss://{host}/ws", no_proxy) is bypass


@pytest.mark.parametrize(
    ("no_proxy", "url", "bypass"),
    [
        ("::1", "ws://[::1]:8080/ws", True),
        ("[::1]", "ws://[::1]:8080/ws", True),
        ("[::1]:8080", "ws://[::1]:8080/ws", True),
        ("[::1]:9090", "ws://[::1]:8080/ws", False),
        ("fd00::/8", "ws://[fd12::5]/ws", True),
        ("10.0.0.0/8", "ws://10.1.2.3/ws", True),
        ("10.0.0.0/8", "ws://11.1.2.3/ws", False),
        ("0.0.1", "ws://10.0.0.1/ws", False),  # addresses are not suffixes
        ("127.0.0.1:8080", "ws://127.0.0.1:8080/ws", True),
        ("127.0.0.1:80", "ws://127.0.0.1/ws", True),  # ws:// defaults to 80
        ("10.0.0.0/33", "ws://10.1.2.3/ws", False),  # a bad block matches nothing
    ],
)
def test_no_proxy_addresses(no_proxy: str, url: str, bypass: bool) -> None:
    """IP addresses match themselves or their CIDR block, IPv6 in brackets or not."""
    assert bypasses_proxy(url, no_proxy) is bypass


def test_lowercase_no_proxy_wins_and_an_empty_one_falls_back() -> None:
    """no_proxy beats NO_PROXY; an empty no_proxy leaves NO_PROXY in force (requests)."""
    env = {"HTTPS_PROXY": PROXY, "NO_PROXY": "collective2.com", "no_proxy": "other.com"}
    assert resolve_proxy(WSS, None, env) == PROXY
    env["no_proxy"] = ""
    assert resolve_proxy(WSS, None, env) is None


# Parsing and redaction -----------------------------------------------------------------


def test_parse_proxy_splits_host_port_and_credentials() -> None:
    """user:pass becomes a Basic Proxy-Authorization header, percent-decoded."""
    proxy = parse_proxy("http://alice:p%40ss%3Aw0rd@proxy.corp:3128")
    assert (proxy.host, proxy.port) == ("proxy.corp", 3128)
    assert proxy.authorization == "Basic " + base64.b64encode(b"alice:p@ss:w0rd").decode()
    assert proxy.safe_url == "http://***@proxy.corp:3128"


def test_parse_proxy_defaults() -> None:
    """No credentials, no header; no port, port 80; no scheme, http."""
    assert parse_proxy("http://proxy.corp") == HttpProxy("proxy.corp", 80, None, "http://proxy.corp")
    assert parse_proxy("proxy.corp:3128").port == 3128
    assert parse_proxy("http://[::1]:3128").host == "::1"
    assert parse_proxy("http://token@proxy.corp:1").authorization == "Basic " + (
        base64.b64encode(b"token:").decode()
    )


@pytest.mark.parametrize(
    "url",
    [
        "socks5://alice:s3cret@proxy.corp:1080",
        "https://alice:s3cret@proxy.corp:443",
        "http://alice:s3cret@proxy.corp:notaport",
        "http://alice:s3cret@proxy.corp:99999",
        "http://alice:s3cret@:3128",
        "http://alice:s3/cret@proxy.corp:3128",
    ],
)
def test_a_bad_proxy_url_is_a_value_error_without_the_password(url: str) -> None:
    """A proxy c2sync cannot use fails clearly, and the message hides the credentials."""
    with pytest.raises(ValueError) as caught:
        parse_proxy(url)
    assert "s3cret" not in str(caught.value) and "s3" not in str(caught.value)
    assert caught.value.__cause__ is None and "***" in str(caught.value)


def test_the_credentials_never_show_in_a_repr() -> None:
    """repr(HttpProxy) shows neither the password nor the header that encodes it."""
    proxy = parse_proxy("http://alice:s3cret@proxy.corp:3128")
    assert "s3cret" not in repr(proxy)
    assert proxy.authorization is not None and proxy.authorization not in repr(proxy)


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("http://alice:s3cret@proxy:3128", "http://***@proxy:3128"),
        ("http://token@proxy:3128", "http://***@proxy:3128"),
        ("http://alice:p@ss@proxy:3128", "http://***@proxy:3128"),
        ("http://alice:p/ss@proxy:3128", "http://***@proxy:3128"),
        ("alice:s3cret@proxy:3128", "***@proxy:3128"),
        ("http://proxy:3128", "http://proxy:3128"),
        ("wss://api4-general.collective2.com/ws", "wss://api4-general.collective2.com/ws"),
        ("", ""),
    ],
)
def test_redact_url(url: str, safe: str) -> None:
    """user:pass (or a lone token) becomes ***; a URL without them is unchanged."""
    assert redact_url(url) == safe


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("ws://bob:pw@host/ws?key=k#f", "ws://***@host/ws"),
        ("ws://bob:p?w#d@host/ws", "ws://***@host/ws"),  # ? and # in the password
        ("postgresql:///db?password=x", "postgresql:///db"),
        ("sqlite:///s.db#x", "sqlite:///s.db"),
        ("wss://host/ws", "wss://host/ws"),
    ],
)
def test_safe_url_hides_the_user_part_the_query_and_the_fragment(url: str, safe: str) -> None:
    """One function for every URL a message names (Options.safe_url and the CLI)."""
    assert safe_url(url) == safe


def test_connect_request() -> None:
    """The CONNECT request names the target (IPv6 in brackets) and carries the header."""
    plain = HttpProxy("proxy", 3128).connect_request("api4-general.collective2.com", 443)
    assert plain == (
        b"CONNECT api4-general.collective2.com:443 HTTP/1.1\r\n"
        b"Host: api4-general.collective2.com:443\r\n\r\n"
    )
    authed = parse_proxy("http://a:b@proxy:3128").connect_request("::1", 8080)
    assert authed.startswith(b"CONNECT [::1]:8080 HTTP/1.1\r\n")
    assert b"\r\nProxy-Authorization: Basic YTpi\r\n\r\n" in authed
    with pytest.raises(ValueError):
        plain_proxy = HttpProxy("proxy", 3128)
        plain_proxy.connect_request("evil\r\nX-Injected: 1", 443)


def test_all_proxy_is_the_fallback_for_either_scheme() -> None:
    """ALL_PROXY (all_proxy winning) serves a scheme without its own variable, as requests
    reads it; the scheme's own variable and NO_PROXY still win."""
    environ = {"ALL_PROXY": "http://every:1", "all_proxy": "http://lower:2"}
    assert resolve_proxy("wss://example.com/ws", None, environ) == "http://lower:2"
    assert resolve_proxy("ws://example.com/ws", None, {"ALL_PROXY": "every:1"}) == "http://every:1"
    environ = {"ALL_PROXY": "http://every:1", "HTTPS_PROXY": "http://secure:3"}
    assert resolve_proxy("wss://example.com/ws", None, environ) == "http://secure:3"
    environ = {"ALL_PROXY": "http://every:1", "NO_PROXY": "example.com"}
    assert resolve_proxy("wss://example.com/ws", None, environ) is None
