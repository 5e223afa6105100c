"""The link's sockets, threads and deadlines (issue 25, the security review): a close racing
the TLS handshake, descriptors over 1023, close codes and reasons, addresses that fail or
blackhole, a resolver that hangs, a peer that stops reading.

Mirrors c2sync/_link.py (with the parts of _session.py and _watchdog.py that bound it).
Servers are real sockets on 127.0.0.1 (tests/hostile.py, the emulator); the one seam is
``c2sync._link.resolve``, the resolver, which a test replaces to play one that hangs or
answers several addresses. Durations asserted are bounds only a hang can break.
"""

from __future__ import annotations

import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

import c2sync
import c2sync._link
from c2sync._options import seams
from c2sync.emulator import Emulator

from .conftest import API_KEY, STRATEGY, MakeServer, c2sync_threads, client_sockets
from .connect_proxy import pipe
from .hostile import CONNECTED, WAIT, Conn, frame, text

FAST = c2sync.ReconnectPolicy(initial=0.01, maximum=0.05)
NAME = "c2sync-test.invalid"  # resolved by the tests' resolver only


def opened(client: c2sync.Client, count: int) -> threading.Event:
    """An event set once ``client`` has been OPEN ``count`` times (on_state notices)."""
    seen = []
    done = threading.Event()

    def on_state(state: c2sync.State) -> None:
        if state is c2sync.State.OPEN:
            seen.append(state)
            if len(seen) >= count:
                done.set()

    client.on_state(on_state)
    return done


def by_name(url: str) -> str:
    """``url`` with its host replaced by :data:`NAME` (so the resolver is asked)."""
    return url.replace("127.0.0.1", NAME)


def loopback(port: int) -> list[Any]:
    """The real resolver's answer for 127.0.0.1:``port``."""
    return socket.getaddrinfo("127.0.0.1", port, socket.AF_INET, socket.SOCK_STREAM)


# Item 2: a close during the connect never puts the upgrade in clear text ----------------


def test_a_close_between_tls_and_the_upgrade_never_sends_the_key_in_clear(
    make_server: MakeServer,
) -> None:
    """close() lands while the opener is in the upgrade request's ``sendall``, past every
    check for a cut (the opener is held at the start of it until the cut has run): a relay
    in front of the TLS server sees TLS records only, never ``Authorization`` nor the key
    in clear text.

    ``ssl.SSLSocket.shutdown`` drops the TLS object, then shuts the descriptor down; the
    held socket holds that window open until the opener has sent, so a cut through it
    (the original bug) puts the whole upgrade request on the wire in clear text here every
    time. Every wait is on an event and checked: the order cannot come out by luck."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    tls_server = make_server(lambda conn: conn.read_request(), ssl_context=server_context)
    wire = bytearray()
    relayed = threading.Event()

    def relay(conn: Conn) -> None:
        upstream = socket.create_connection(("127.0.0.1", tls_server.port), timeout=WAIT)
        wake = socket.socketpair()
        try:
            pipe(conn.sock, upstream, wake[0], record=wire.extend)
        finally:
            for sock in (upstream, *wake):
                sock.close()
            relayed.set()

    relay_server = make_server(relay)
    sending, cut, sent = threading.Event(), threading.Event(), threading.Event()
    waits: list[bool] = []  # every wait in the held socket: True when its event came

    class Held(ssl.SSLSocket):
        def shutdown(self, how: int) -> None:
            # ssl.SSLSocket.shutdown, its window held open until the opener has sent.
            self._sslobj = None
            cut.set()
            waits.append(sent.wait(WAIT))
            super().shutdown(how)

        def sendall(self, data: Any, flags: int = 0) -> None:
            if b"Authorization" not in bytes(data):
                super().sendall(data, flags)
                return
            sending.set()  # past the link's last look at the cut
            waits.append(cut.wait(WAIT))  # the upgrade request goes out once the cut ran
            try:
                super().sendall(data, flags)
            finally:
                sent.set()

    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_context.sslsocket_class = Held
    url = relay_server.url.replace("ws://", "wss://")
    client = c2sync.Client(
        API_KEY, url=url, ssl_context=client_context, connect_timeout=WAIT, reconnect=False
    )
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            client.connect()
        except BaseException as exc:
            errors.append(exc)

    opener = threading.Thread(target=connect)
    opener.start()
    assert sending.wait(WAIT), "the opener never reached the upgrade request"
    client.close()  # cuts the link: the descriptor is shut down when it returns
    cut.set()
    assert sent.wait(WAIT), "the opener never went on to send"
    opener.join(WAIT)
    assert not opener.is_alive()
    assert relayed.wait(WAIT), "the relay never saw the connection end"
    assert all(waits), waits
    assert wire[:1] == b"\x16", "the relay saw no TLS handshake"
    assert b"Authorization" not in wire and API_KEY.encode() not in wire
    assert [type(e) for e in errors] == [c2sync.ConnectionClosed], errors
    assert "closed while connecting" in str(errors[0])  # the send failed: it was cut
    assert client.state is c2sync.State.CLOSED


# Item 9: descriptors over 1023 ----------------------------------------------------------


@pytest.fixture
def high_descriptors() -> Iterator[None]:
    """Every descriptor opened during the test numbered over 1023 (a process holding many
    files); skipped when the limit cannot be raised that far."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1400
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE's hard limit ({hard}) is below {want}")
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    base = os.open(os.devnull, os.O_RDONLY)
    held = [base]
    try:
        while held[-1] < 1100:
            held.append(os.dup(base))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("high_descriptors")
def test_descriptors_over_1023_connect_and_reconnect(emulator: Emulator) -> None:
    """With every new descriptor over 1023, connect() works and so does a reconnect
    (select() refuses such descriptors: a reconnect would be fatal)."""
    client = c2sync.Client(
        API_KEY, url=emulator.url, heartbeat_timeout=30, reconnect_policy=FAST
    )
    reconnected = opened(client, 2)
    with client:
        fds = [c.fd for c in client_sockets(emulator)]  # type: ignore[attr-defined]
        assert fds and min(fds) > 1023, fds
        emulator.drop()
        assert reconnected.wait(WAIT), "no reconnect"
        assert client.subscribe(c2sync.SIGNAL, STRATEGY, timeout=WAIT).strategy_id == STRATEGY


# Item 11: close codes and reasons -------------------------------------------------------


@pytest.mark.parametrize("code", [70000, -1, 999, 1001, 1005, 1015, 2999, 5000, True, 1000.0])
def test_close_with_a_code_a_client_may_not_send_raises_and_changes_nothing(
    client: c2sync.Client, code: Any
) -> None:
    """close(code=70000) and friends: ValueError before anything happens, the client still
    OPEN; a close() with a valid code then closes it."""
    with pytest.raises(ValueError, match="close code"):
        client.close(code=code)
    assert client.state is c2sync.State.OPEN
    assert client.subscribe(c2sync.SIGNAL, STRATEGY, timeout=WAIT)
    client.close(code=4000)
    assert client.state is c2sync.State.CLOSED


def test_close_ends_the_client_whatever_sending_the_close_frame_raises(
    emulator: Emulator,
) -> None:
    """A failure half-way through close() (sending the close frame raises): close() still
    ends CLOSED with every thread joined, and a second close() is a no-op."""
    before = {t.ident for t in c2sync_threads()}

    class Broken(c2sync._link.Link):
        def send_close(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("the close frame could not be built")

    with seams(link_factory=Broken):
        client = c2sync.connect(API_KEY, url=emulator.url, heartbeat_timeout=30)
    client.close()
    assert client.state is c2sync.State.CLOSED
    assert not [t.name for t in c2sync_threads() if t.ident not in before]
    client.close()
    with pytest.raises(c2sync.ConnectionClosed):
        client.recv(timeout=0)


def test_a_long_close_reason_is_cut_on_a_character_boundary(make_server: MakeServer) -> None:
    """A reason of 100 two-byte characters: the close frame carries 123 bytes at most, all
    of them valid UTF-8 (61 whole characters), with the code asked for."""
    closes: list[list[tuple[int, bytes]]] = []

    def handler(conn: Conn) -> None:
        conn.accept()
        conn.sock.sendall(text(CONNECTED))
        closes.append(conn.read_frames(limit=WAIT))

    server = make_server(handler)
    client = c2sync.connect(API_KEY, url=server.url, heartbeat_timeout=30)
    client.close(code=4001, reason="é" * 100)
    server.close()
    (frames,) = closes
    opcode, payload = frames[-1]
    assert opcode == 0x8
    assert int.from_bytes(payload[:2], "big") == 4001
    assert payload[2:].decode("utf-8") == "é" * 61


# Items 12 and 13: the resolver and the addresses ----------------------------------------


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[str, int], list[Any]]], None]:
    """Install a resolver for the test (``c2sync._link.resolve``)."""

    def install(fake: Callable[[str, int], list[Any]]) -> None:
        monkeypatch.setattr(c2sync._link, "resolve", fake)

    return install


def test_an_address_family_without_sockets_is_skipped(
    emulator: Emulator, resolver: Callable[..., None]
) -> None:
    """The resolver answers an address of a family the host cannot make sockets for
    (EAFNOSUPPORT, as IPv6 disabled in the kernel) first: connect() goes on to the next."""
    bogus = (255, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", 1, 0, 0))
    resolver(lambda host, port: [bogus, *loopback(port)])
    with c2sync.connect(API_KEY, url=by_name(emulator.url), connect_timeout=5) as client:
        assert client.state is c2sync.State.OPEN


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port on 127.0.0.1 whose listener's queue is full: a new connection attempt gets
    no answer (the SYN is dropped), as a firewalled address."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=WAIT)  # fills it
    try:
        yield listener.getsockname()[1]
    finally:
        filler.close()
        listener.close()


def test_a_blackholed_first_address_does_not_eat_the_deadline(
    emulator: Emulator, resolver: Callable[..., None], blackhole: int
) -> None:
    """The first address never answers (a blackhole), the second works: connect()
    succeeds well within connect_timeout (the second attempt starts 250 ms after the
    first, RFC 8305), instead of spending the whole deadline on the first."""
    resolver(lambda host, port: [*loopback(blackhole), *loopback(port)])
    with c2sync.connect(API_KEY, url=by_name(emulator.url), connect_timeout=4) as client:
        assert client.state is c2sync.State.OPEN


def test_every_address_failing_raises_the_last_error(
    resolver: Callable[..., None], blackhole: int
) -> None:
    """Two addresses refuse: the connect raises the socket error at once; two blackholes:
    TimeoutError at the deadline (one deadline for all of them)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
    refused = closed.getsockname()[1]
    try:
        resolver(lambda host, port: loopback(refused) * 2)
        with pytest.raises(ConnectionRefusedError):
            c2sync.connect(API_KEY, url=f"ws://{NAME}:{refused}/ws", connect_timeout=WAIT)
        resolver(lambda host, port: loopback(blackhole) * 2)
        with pytest.raises(TimeoutError, match=NAME):
            c2sync.connect(API_KEY, url=f"ws://{NAME}:{blackhole}/ws", connect_timeout=0.6)
    finally:
        closed.close()


def test_close_during_a_reconnect_stuck_in_dns_joins_the_reader(
    emulator: Emulator, resolver: Callable[..., None]
) -> None:
    """The reconnect's name resolution hangs: close() returns with the reader thread
    joined (the resolution is abandoned; its helper ends when the resolver returns)."""
    hanging, release = threading.Event(), threading.Event()
    calls = []

    def resolve(host: str, port: int) -> list[Any]:
        calls.append(host)
        if len(calls) > 1:
            hanging.set()
            release.wait(WAIT)
        return loopback(port)

    resolver(resolve)
    before = {t.ident for t in c2sync_threads()}
    client = c2sync.connect(
        API_KEY, url=by_name(emulator.url), heartbeat_timeout=30, reconnect_policy=FAST
    )
    try:
        emulator.drop()
        assert hanging.wait(WAIT), "the client never resolved again"
        client.close()
        alive = [t.name for t in c2sync_threads() if t.ident not in before and t.is_alive()]
        assert alive in ([], ["c2sync-resolve"]), alive
        assert client.state is c2sync.State.CLOSED
    finally:
        release.set()


# Item 14: a peer that stops reading -----------------------------------------------------


def test_a_peer_that_stops_reading_cannot_hold_subscribe_past_its_timeout(
    make_server: MakeServer,
) -> None:
    """The server floods pings and never reads: the reader blocks sending pongs with the
    send lock held. subscribe(timeout=1) raises TimeoutError on time, and the stuck send
    is cut (within connect_timeout of its start): the link is lost and the client
    reconnects."""
    stuck, finished = threading.Event(), threading.Event()

    def handler(conn: Conn) -> None:
        if len(server.conns) > 1:
            conn.accept()
            conn.sock.sendall(text(CONNECTED))
            conn.read_frames(limit=WAIT)
            return
        conn.accept()
        conn.sock.sendall(text(CONNECTED))
        pings = frame(0x9, b"p" * 125) * 64
        conn.sock.settimeout(0.5)
        try:
            while True:
                conn.sock.sendall(pings)
        except socket.timeout:
            stuck.set()  # the client stopped reading: its reader is stuck sending pongs
        finished.wait(3 * WAIT)  # never reads; holds on until the test has ended

    server = make_server(handler, rcvbuf=4096)
    client = c2sync.Client(
        API_KEY,
        url=server.url,
        connect_timeout=1,
        heartbeat_timeout=30,  # the heartbeat deadline cannot be what ends it
        reconnect_policy=FAST,
    )
    reconnected = opened(client, 2)
    losses: list[BaseException] = []
    client.on_error(losses.append)
    try:
        with client:
            assert stuck.wait(WAIT), "the client never stopped reading"
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                client.subscribe(c2sync.SIGNAL, STRATEGY, timeout=1)
            assert time.monotonic() - started < 1 + 2
            # Only the client's own cut can end that link: the server holds it open.
            assert reconnected.wait(WAIT), "the stuck link was not cut and re-opened"
            assert "did not finish in time" in str(losses[0]), losses
    finally:
        finished.set()


def test_attempts_timing_out_on_a_hanging_resolver_share_its_one_lookup(
    emulator: Emulator, resolver: Callable[..., None]
) -> None:
    """The reconnect's name resolution hangs past connect_timeout, attempt after attempt:
    the attempts wait on the one lookup running (one helper thread, the resolver asked
    once) instead of leaving a helper behind each; once it answers, the client reconnects."""
    hanging, release = threading.Event(), threading.Event()
    calls = []

    def resolve(host: str, port: int) -> list[Any]:
        calls.append(host)
        if len(calls) > 1:  # every one after the first connect's, until released
            hanging.set()
            release.wait(3 * WAIT)
        return loopback(port)

    resolver(resolve)
    before = {t.ident for t in threading.enumerate()}
    client = c2sync.Client(
        API_KEY,
        url=by_name(emulator.url),
        connect_timeout=0.2,
        heartbeat_timeout=30,
        reconnect_policy=FAST,
    )
    reconnected = opened(client, 2)
    timeouts, failed = [], threading.Event()

    def on_error(exc: BaseException) -> None:
        if isinstance(exc, TimeoutError):
            timeouts.append(exc)
            if len(timeouts) == 3:
                failed.set()

    client.on_error(on_error)
    try:
        with client:
            emulator.drop()
            assert hanging.wait(WAIT), "the client never resolved again"
            assert failed.wait(WAIT), "the reconnect attempts did not time out"
            assert len(calls) == 2, calls
            helpers = [
                t
                for t in threading.enumerate()
                if t.name == "c2sync-resolve" and t.ident not in before
            ]
            assert len(helpers) == 1, helpers
            release.set()
            assert reconnected.wait(WAIT), "no reconnect once the resolver answered"
    finally:
        release.set()
