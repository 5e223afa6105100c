"""The HTML view of a client, for Jupyter (``Client._repr_html_``).

Called from whichever thread asks IPython to display a client (the kernel's main thread,
or a callback refreshing a display in place); it only reads a snapshot the caller took.

Guarantees (docs/api-contract.md "Observability"): every piece of text goes through
:func:`html.escape` (quotes included), whoever wrote it, the server or the user; the URL is
shown without user info, query or fragment; the API key never appears, even if some text
quoted it: a server's note is masked before it is cut to :data:`_NOTE_LIMIT` characters (a
cut in the middle of the key would leave its start), and the page after rendering, raw and
escaped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ._lifecycle import State
from ._reader import Stats
from ._redact import Redactor
from ._spec import HEARTBEAT_INTERVAL
from ._substats import Pair, SubscriptionStats

if TYPE_CHECKING:
    from ._session import Session

__all__ = ["display_url", "of_session", "render"]

_COLOURS = {
    State.OPEN: "#2e7d32",
    State.CONNECTING: "#b26a00",
    State.RECONNECTING: "#b26a00",
    State.CLOSED: "#616161",
}
_FAILED = "#c62828"
_NOTE_LIMIT = 120  # characters of a server's note shown (the whole is in the logs)

# Inline styles only: the table must read the same without Jupyter's CSS (nbviewer, an
# exported page, a plain HTML viewer): spacing and borders between the cells.
_TABLE = 'style="border-collapse:collapse;margin:0 0 .5em 0;font-size:90%"'
_CELL = 'style="text-align:left;padding:.15em .6em;border:1px solid #ccc"'


def display_url(url: str) -> str:
    """``scheme://host[:port]/path``: no user info, query or fragment (they may hold
    secrets)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unreadable URL)"
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"


def age(seconds: float | None) -> str:
    """A short human duration: ``"4 s"``, ``"3 min 12 s"``, ``"2 h 5 min"``, ``"3 d 4 h"``."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _since(when: datetime | None, now: datetime) -> float | None:
    return None if when is None else (now - when).total_seconds()


def _e(value: object) -> str:
    import html  # here, not at import of c2sync: only a notebook draws a client

    return html.escape(str(value), quote=True)


def _note(text: str, hide: Redactor) -> str:
    """``text`` masked, then cut to :data:`_NOTE_LIMIT` characters."""
    text = hide(text)
    return text if len(text) <= _NOTE_LIMIT else text[: _NOTE_LIMIT - 1] + "…"


def render(
    *,
    state: State,
    failure: BaseException | None,
    url: str,
    up_for: float | None,
    stats: Stats,
    subscriptions: Mapping[Pair, SubscriptionStats],
    gap_notes: Mapping[Pair, str],
    now: datetime,
    secret: str,
) -> str:
    """The HTML table of one client (see the module docstring)."""
    hide = Redactor(secret)
    colour = _FAILED if failure is not None else _COLOURS[state]
    badge = (
        f'<span style="color:#fff;background:{colour};padding:0 .4em;border-radius:3px">'
        f"{_e(state.name)}</span>"
    )
    heartbeats = f"{stats.heartbeats}"
    if stats.last_heartbeat is not None:
        heartbeats += f" (last {age(_since(stats.last_heartbeat, now))} ago)"
    elif state is State.OPEN:  # not a fault: the server sends its first after an interval
        heartbeats += f" (the first is due within {HEARTBEAT_INTERVAL:g} s of connecting)"
    rows = [
        ("state", badge),
        ("URL", f"<code>{_e(display_url(url))}</code>"),
        ("up for", _e(age(up_for) if state is State.OPEN else "-")),
        ("heartbeats answered", _e(heartbeats)),
        ("reconnects", _e(stats.reconnects)),
        ("dropped", _e(stats.dropped)),
    ]
    if failure is not None:
        rows.append(("failed", _e(_note(f"{type(failure).__name__}: {failure}", hide))))
    out = [f'<div class="c2sync-client"><table {_TABLE}>']
    out.append(f'<tr><th colspan="2" {_CELL}>c2sync.Client</th></tr>')
    out += [f"<tr><th {_CELL}>{name}</th><td {_CELL}>{value}</td></tr>" for name, value in rows]
    out.append("</table>")
    out.append(f"<table {_TABLE}><tr>")
    heads = ("channel", "strategy", "last seq", "last message", "messages", "duplicates")
    out += [f"<th {_CELL}>{h}</th>" for h in (*heads, "gaps", "resumes")]
    out.append("</tr>")
    for (channel, strategy_id), sub in subscriptions.items():
        last_seq = "-" if sub.last_seq is None else sub.last_seq
        last = sub.last_message_at
        last_text = "none yet" if last is None else f"{age(_since(last, now))} ago"
        gaps = _e(sub.gaps)
        note = gap_notes.get((channel, strategy_id))
        if sub.gaps and note:
            gaps += f" ({_e(_note(note, hide))})"
        cells = (channel, strategy_id, last_seq, last_text, sub.messages, sub.duplicates)
        out.append("<tr>" + "".join(f"<td {_CELL}>{_e(c)}</td>" for c in cells))
        out.append(f"<td {_CELL}>{gaps}</td><td {_CELL}>{_e(sub.resumes)}</td></tr>")
    if not subscriptions:
        out.append(f'<tr><td colspan="8" {_CELL}>no subscriptions</td></tr>')
    out.append("</table></div>")
    page = "".join(out)
    if secret:
        page = page.replace(secret, "***").replace(_e(secret), "***")
    return page


def of_session(session: Session) -> str:
    """:func:`render` for a session's state now."""
    held = session.protocol.subscriptions
    at = session.connected_at
    return render(
        state=session.life.state,
        failure=session.life.failure,
        url=session.options.safe_url,
        up_for=None if at is None else time.monotonic() - at,
        stats=session.stats,
        subscriptions=session.book.snapshot(held),
        gap_notes={pair: session.book.last_gap(pair) for pair in held},
        now=datetime.now(timezone.utc),
        secret=session.options.api_key,
    )
