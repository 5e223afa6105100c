"""A client behind a corporate proxy (docs/api-contract.md "Clocks and proxies"): traffic
goes through the CONNECT proxy named by HTTP(S)_PROXY, bypasses it for a NO_PROXY host, and
the proxy's user:pass never appears in logs, reprs or errors.

The emulator listens on ws://, so the variable is HTTP_PROXY (HTTPS_PROXY is for wss://;
the choice itself is unit-tested in tests/test_proxy.py).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator

import pytest

import c2sync
from c2sync.emulator import Emulator

from .conftest import API_KEY, STRATEGY
from .connect_proxy import ConnectProxy

USER, PASSWORD = "alice", "s3cret-proxy-pw"
PROXY_VARIABLES = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY",
                   "no_proxy", "ALL_PROXY", "all_proxy", "REQUEST_METHOD")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy(auth=(USER, PASSWORD)) as server:
        yield server


def target(emulator: Emulator) -> str:
    return emulator.url.split("//", 1)[1].split("/", 1)[0]


def connect(emulator: Emulator, **options: object) -> c2sync.Client:
    return c2sync.connect(API_KEY, url=emulator.url, connect_timeout=5.0, **options)


def test_http_proxy_from_the_environment_carries_the_connection(
    emulator: Emulator, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY set once for every tool: the client tunnels through it, credentials too."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url_with_auth(USER, PASSWORD))
    with connect(emulator) as client:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
    (record,) = proxy.connects
    assert (record.target, record.status) == (target(emulator), 200)


def test_an_explicit_proxy_carries_the_connection(
    emulator: Emulator, proxy: ConnectProxy
) -> None:
    """proxy="http://user:pass@host:port" is used for a host NO_PROXY would not exempt."""
    with connect(emulator, proxy=proxy.url_with_auth(USER, PASSWORD)) as client:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
    assert [r.status for r in proxy.connects] == [200]


def test_a_no_proxy_host_bypasses_the_proxy(
    emulator: Emulator, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NO_PROXY=127.0.0.1: the connection is direct, the proxy sees nothing."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url_with_auth(USER, PASSWORD))
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    with connect(emulator) as client:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
    assert proxy.connects == []


def test_an_empty_proxy_disables_the_environment(
    emulator: Emulator, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """proxy="": direct, whatever HTTP_PROXY says."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url_with_auth(USER, PASSWORD))
    with connect(emulator, proxy="") as client:
        client.subscribe(c2sync.SIGNAL, STRATEGY)
    assert proxy.connects == []


def refused_by_proxy(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> tuple[str, BaseException]:
    """Connect through a proxy that answers 403; return everything shown, and the error."""
    caplog.set_level(logging.DEBUG)
    with ConnectProxy(refuse_with=403) as refusing:
        client = c2sync.Client(
            API_KEY,
            url=emulator.url,
            proxy=refusing.url_with_auth(USER, PASSWORD),
            connect_timeout=5.0,
        )
        with pytest.raises(c2sync.C2Error) as caught:
            client.connect()
        assert [r.status for r in refusing.connects] == [403]
    error = caught.value
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return "\n".join([repr(client), caplog.text, trace, repr(error)]), error


def test_proxy_credentials_never_show(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that refuses: the error, its causes, the logs and the repr hide user:pass."""
    shown, _ = refused_by_proxy(emulator, caplog)
    assert PASSWORD not in shown


def test_a_refusing_proxy_is_named_redacted(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The error says which proxy refused, with its credentials as ***."""
    _, error = refused_by_proxy(emulator, caplog)
    assert "***@127.0.0.1" in str(error) and "403" in str(error)
