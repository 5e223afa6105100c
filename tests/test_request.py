"""The upgrade request as it goes on the wire, built from a checked URL: c2sync/_request.py
(pure; the end-to-end proofs against raw servers are in tests/test_handshake.py)."""

from __future__ import annotations

import pytest

from c2sync._request import Target, check_field, upgrade_request

from .conftest import API_KEY


def request_lines(url: str) -> list[str]:
    return (
        upgrade_request(Target.from_url(url), "d2ViLXNvY2tldC1rZXk=", API_KEY)
        .decode()
        .split("\r\n")
    )


@pytest.mark.parametrize(
    ("url", "start", "host"),
    [
        ("wss://b\u00fccher.example/ws", "GET /ws HTTP/1.1", "Host: xn--bcher-kva.example"),
        ("ws://[::1]:8080/ws?a=1", "GET /ws?a=1 HTTP/1.1", "Host: [::1]:8080"),
        ("ws://Example.COM:80", "GET / HTTP/1.1", "Host: example.com"),
        (
            "wss://h.example/caf\u00e9?q=\u00e9%41",
            "GET /caf%C3%A9?q=%C3%A9%41 HTTP/1.1",
            "Host: h.example",
        ),
    ],
)
def test_the_request_line_and_host_are_ascii(url: str, start: str, host: str) -> None:
    """Issue 25 item 7: a host outside ASCII goes out IDNA-encoded, a path or query outside
    ASCII percent-encoded (escapes already made kept), an IPv6 address in brackets, the
    port only when not the scheme's default."""
    lines = request_lines(url)
    assert lines[0] == start and lines[1] == host
    assert lines[-3] == f"Authorization: Bearer {API_KEY}" and lines[-2:] == ["", ""]


@pytest.mark.parametrize("value", ["a\r\nb", "a\x00", "a\x7f", "a\x85", " a", "a\t", "a\udcff"])
def test_a_field_that_cannot_go_out_names_itself_not_its_value(value: str) -> None:
    """Issue 25 item 8: control characters (C0, DEL, C1), edge whitespace or a lone surrogate:
    ValueError naming the field, without the value or a chained UnicodeEncodeError."""
    value = value.replace("a", "Secret-0123456789")
    with pytest.raises(ValueError) as info:
        check_field("api_key", value)
    assert "api_key" in str(info.value)
    assert "Secret" not in str(info.value) and "Secret" not in repr(info.value)
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_the_request_refuses_a_key_that_bypassed_the_options() -> None:
    """A key that never went through Options.create (a link built in a test) is checked
    where the request is built too."""
    with pytest.raises(ValueError, match="api_key"):
        upgrade_request(Target.from_url("ws://h/ws"), "k", "key\r\nX-Injected: yes")
