"""What a notebook user sees of a client: client.subscription_stats (one entry per current
subscription, kept as messages flow, bounded whatever the server sends) and the HTML table
Jupyter shows (_repr_html_): escaped server text, never the key (docs/api-contract.md
"Observability")."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone

import pytest

import c2sync
from c2sync.emulator import Emulator

from .conftest import API_KEY, OTHER_STRATEGY, STRATEGY, WAIT
from .test_recv_many import wait_queued

formatters = pytest.importorskip("IPython.core.formatters")

MakeClient = Callable[..., c2sync.Client]
HOSTILE = "<script>alert(\"x\")</script><img src=x onerror='y'>&amp;"


def html_of(client: c2sync.Client) -> str:
    """What Jupyter shows for the client: IPython's HTML formatter, as a notebook runs it."""
    page = formatters.HTMLFormatter()(client)
    assert isinstance(page, str)
    return page


def no_raw_markup(page: str) -> None:
    """Only the view's own tags: no script, no img, no attribute a payload smuggled in."""
    tags = set(re.findall(r"</?([a-zA-Z0-9]+)", page))
    assert tags <= {"div", "table", "tr", "th", "td", "span", "code"}, tags
    assert "onerror" not in page.replace("onerror=&#x27;", "")  # only as escaped text
    assert "<script" not in page and "<img" not in page


def test_stats_has_one_entry_per_current_subscription(
    emulator: Emulator, client: c2sync.Client
) -> None:
    """An entry per subscription, zero before any message; unsubscribing removes it."""
    assert client.subscription_stats == {}
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    client.subscribe(c2sync.POSITIONS, OTHER_STRATEGY)
    empty = c2sync.SubscriptionStats()
    assert client.subscription_stats == {
        (c2sync.POSITIONS, OTHER_STRATEGY): empty,
        (c2sync.SIGNAL, STRATEGY): empty,
    }
    assert (empty.last_seq, empty.last_message_at, empty.messages) == (None, None, 0)
    client.unsubscribe(c2sync.POSITIONS, OTHER_STRATEGY)
    assert list(client.subscription_stats) == [(c2sync.SIGNAL, STRATEGY)]


def test_stats_follow_the_messages(emulator: Emulator, client: c2sync.Client) -> None:
    """Messages, last seq_id and the arrival time (aware UTC) of each subscription, and the
    gaps the server announces, counted as they arrive, whether anyone reads them or not."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    client.subscribe(c2sync.POSITIONS, STRATEGY)
    before = datetime.now(timezone.utc)
    for _ in range(3):
        emulator.publish_signal(STRATEGY)
    emulator.publish_positions(STRATEGY)
    gap = {
        "msg_type": "gap",
        "payload": {"strategy_id": None, "channel": f"strategy.signal:{STRATEGY}", "from": "0"},
    }
    emulator.send_raw(json.dumps(gap))
    wait_queued(emulator, client, 5)
    signals = client.subscription_stats[(c2sync.SIGNAL, STRATEGY)]
    assert (signals.messages, signals.last_seq, signals.gaps) == (3, 3, 1)
    assert signals.last_message_at is not None and signals.last_message_at >= before
    assert signals.last_message_at.tzinfo is timezone.utc
    positions = client.subscription_stats[(c2sync.POSITIONS, STRATEGY)]
    assert positions.messages == 1 and positions.gaps == 0
    with pytest.raises(AttributeError):
        signals.messages = 0  # type: ignore[misc]  # frozen


def test_stats_stay_bounded_by_the_subscriptions(
    emulator: Emulator, client: c2sync.Client
) -> None:
    """Signals for strategies nobody subscribed to (a server inventing ids) add no entry."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    for strategy_id in range(1, 501):
        frame = {"msg_type": "strategy.signal", "seq_id": 1, "payload": {"StrategyId": strategy_id}}
        emulator.send_raw(json.dumps(frame))
    wait_queued(emulator, client, 500)
    assert list(client.subscription_stats) == [(c2sync.SIGNAL, STRATEGY)]
    assert client.subscription_stats[(c2sync.SIGNAL, STRATEGY)].messages == 0


def test_html_names_state_url_counters_and_subscriptions(
    emulator: Emulator, client: c2sync.Client
) -> None:
    """The table shows the state, the URL, heartbeats, reconnects, dropped, and one row per
    subscription with its last seq_id."""
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    client.subscribe(c2sync.POSITIONS, OTHER_STRATEGY)
    for _ in range(2):
        emulator.publish_signal(STRATEGY)
    wait_queued(emulator, client, 2)
    page = html_of(client)
    no_raw_markup(page)
    assert ">OPEN<" in page
    assert emulator.url in page
    for label in ("heartbeats answered", "reconnects", "dropped", "up for"):
        assert label in page
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    signal_row = next(r for r in rows if f">{STRATEGY}<" in r and "strategy.signal" in r)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", signal_row)[:3] == [
        "strategy.signal",
        str(STRATEGY),
        "2",
    ]
    assert any("strategy.positions" in r and f">{OTHER_STRATEGY}<" in r for r in rows)
    assert API_KEY not in page


def test_html_escapes_hostile_server_text(emulator: Emulator, make_client: MakeClient) -> None:
    """Markup and quotes in what the server sends (payload fields, a gap's message, a close
    reason) show as text, never as markup; the key never appears."""
    client = make_client(reconnect=False)
    client.subscribe(c2sync.SIGNAL, STRATEGY)
    emulator.publish_signal(STRATEGY, payload={"StrategyId": STRATEGY, "Name": HOSTILE})
    gap = {
        "msg_type": "gap",
        "payload": {
            "strategy_id": STRATEGY,
            "channel": f"strategy.signal:{STRATEGY}",
            "from": "0",
            "message": HOSTILE + API_KEY,
        },
    }
    emulator.send_raw(json.dumps(gap))
    wait_queued(emulator, client, 2)
    page = html_of(client)
    no_raw_markup(page)
    assert "&lt;script&gt;" in page  # the gap's words are shown, escaped
    assert API_KEY not in page

    emulator.close_connections(1011, HOSTILE[:60])
    emulator.wait_for(lambda: client.state is c2sync.State.CLOSED, WAIT)
    page = html_of(client)
    no_raw_markup(page)
    assert ">CLOSED<" in page and "ConnectionClosed" in page and "&lt;script&gt;" in page


def test_html_url_hides_key_user_info_and_query() -> None:
    """The URL shown drops user info, query and fragment, whatever they hold; a client
    never connected renders too."""
    url = f"wss://me:{API_KEY}@example.com:8443/ws?key={API_KEY}&x=<b>#{API_KEY}"
    page = html_of(c2sync.Client(API_KEY, url=url))
    no_raw_markup(page)
    assert "<code>wss://example.com:8443/ws</code>" in page
    assert API_KEY not in page and ">CLOSED<" in page and "no subscriptions" in page


def test_html_never_shows_the_key_even_when_text_quotes_it(emulator: Emulator) -> None:
    """A key the server echoes into a close reason is masked in the table."""
    key = "k&<y>" + API_KEY[:10]  # characters escaping would change, too
    with Emulator(api_keys={key}, strategies={STRATEGY}, heartbeat_interval=0.2) as server:
        client = c2sync.connect(key, url=server.url, reconnect=False, heartbeat_timeout=2.0)
        try:
            server.close_connections(1011, f"bad key {key}")
            server.wait_for(lambda: client.state is c2sync.State.CLOSED, WAIT)
            page = html_of(client)
        finally:
            client.close()
    assert "1011" in page
    assert key not in page and "k&amp;&lt;y&gt;" not in page
    no_raw_markup(page)


def test_html_reads_without_jupyters_css() -> None:
    """Every header and cell carries its own spacing and border (inline styles): shown
    without Jupyter's style sheet, headers do not run together ("last seqlast message")."""
    page = html_of(c2sync.Client(API_KEY, url="ws://127.0.0.1:1/ws"))
    cells = re.findall(r"<t[hd]( [^>]*)?>", page)
    assert cells
    for attributes in cells:
        assert "padding:" in attributes and "border:" in attributes, attributes


def render_heartbeats(state: c2sync.State, stats: c2sync.Stats) -> str:
    """The "heartbeats answered" cell of the table for these numbers."""
    from c2sync._display import render

    now = datetime.now(timezone.utc)
    page = render(
        state=state,
        failure=None,
        url="ws://127.0.0.1:1/ws",
        up_for=1.0,
        stats=stats,
        subscriptions={},
        gap_notes={},
        now=now,
        secret=API_KEY,
    )
    (cell,) = re.findall(r"heartbeats answered</th><td[^>]*>([^<]*)</td>", page)
    return cell


def test_html_says_when_the_first_heartbeat_is_due() -> None:
    """An open connection with no heartbeat yet says when the first is due (the service
    sends one every 30 s), so "0" does not read as a fault; once one came, its age."""

    assert render_heartbeats(c2sync.State.OPEN, c2sync.Stats()) == (
        "0 (the first is due within 30 s of connecting)"
    )
    assert render_heartbeats(c2sync.State.CLOSED, c2sync.Stats()) == "0"
    last = datetime.now(timezone.utc)
    seen = render_heartbeats(c2sync.State.OPEN, c2sync.Stats(heartbeats=1, last_heartbeat=last))
    assert seen.startswith("1 (last ") and "due" not in seen
