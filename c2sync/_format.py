"""One short human line per message, for ``c2sync listen`` and the demo.

Pure formatting of a message's known fields (no I/O), called on whichever thread prints.
Guarantees: a line stays within :data:`LINE_WIDTH` characters whatever the payload holds;
the secrets it is given (the API key) show as ``***``, masked before a line is cut so a
cut never leaves part of one; ``--json`` (not this module) prints everything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ._redact import Redactor
from .messages import ErrorMessage, Gap, Message, Positions, Signal

__all__ = ["LINE_WIDTH", "describe_holdings", "describe_order", "format_message"]

LINE_WIDTH = 120  # a human line stays readable in a terminal; --json has everything
_SIDES = {"1": "BUY", "2": "SELL"}  # the REST v4 order's Side codes [assumed]


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _scalars(payload: Any) -> str:
    """``key=value`` for the top-level fields that are not lists or objects."""
    return " ".join(
        f"{key}={value}"
        for key, value in payload.items()
        if value is not None and not isinstance(value, (list, tuple, Mapping))
    )


def _symbol(record: Any) -> str:
    c2_symbol = record.get("C2Symbol")
    if hasattr(c2_symbol, "get"):
        return str(c2_symbol.get("FullSymbol") or "?")
    return str(record.get("Symbol") or c2_symbol or "?")


def describe_order(payload: Any) -> str:
    """``BUY 5 @ESZ5 limit 5210.25``, from a REST-v4-like order payload; the payload's
    scalar fields when it is shaped otherwise (its schema is not public)."""
    if not all(key in payload for key in ("Side", "Quantity")):
        return _scalars(payload)
    side = _SIDES.get(str(payload["Side"]), str(payload["Side"]))
    text = f"{side} {payload['Quantity']} {_symbol(payload)}"
    if payload.get("Limit") is not None:
        text += f" limit {payload['Limit']}"
    elif payload.get("Stop") is not None:
        text += f" stop {payload['Stop']}"
    else:
        text += " market"
    if payload.get("SignalId") is not None:
        text += f" (SignalId {payload['SignalId']})"
    return text


def describe_holdings(payload: Any) -> str:
    """``2 open: @ESZ5 +5 @ 5201.5, AAPL -10 @ 187.2`` from a positions payload."""
    positions = payload.get("Positions")
    if not isinstance(positions, (list, tuple)):
        return _scalars(payload)
    shown = []
    for position in positions:
        if not hasattr(position, "get"):
            continue
        quantity = position.get("Quantity")
        amount = f"{quantity:+}" if isinstance(quantity, (int, float)) else str(quantity)
        price = position.get("AvgPx")
        shown.append(f"{_symbol(position)} {amount}" + (f" @ {price}" if price is not None else ""))
    return f"{len(positions)} open: " + ", ".join(shown)


def format_message(message: Message, *, secrets: Iterable[str] = ()) -> str:
    """One short human-readable line for a message (``--json`` prints ``message.raw``).

    The line starts with the message's time (UTC, from its ``timestamp``), then the type,
    the strategy and ``seq_id``, then the payload's key fields (side, quantity, symbol,
    price for an order; symbol, quantity and average price for positions), cut to about
    120 characters.

    Args:
        message: any message the client hands out.
        secrets: strings shown as ``***`` wherever the message quotes them (``c2sync
            listen`` passes the API key, which a server may echo back); masked before the
            line is cut, so no part of one is left at the cut.

    Returns:
        The line, without a newline.
    """
    hide = Redactor(*secrets)
    when = message.timestamp.strftime("%H:%M:%S") if message.timestamp else "--:--:--"
    if isinstance(message, Signal):
        head = f"{message.msg_type} strategy={message.strategy_id} seq_id={message.seq_id}"
        body = describe_order(message.payload)
    elif isinstance(message, Positions):
        head = f"{message.msg_type} strategy={message.strategy_id}"
        body = describe_holdings(message.payload)
    elif isinstance(message, Gap):
        return hide(
            f"{when} GAP strategy={message.strategy_id} after seq_id {message.from_seq}: "
            f"{message.message} (fetch the missing signals from the REST API)"
        )
    elif isinstance(message, ErrorMessage):
        field = f" field={message.field}" if message.field else ""
        return hide(f"{when} ERROR {message.code}{field}: {message.message}")
    else:
        head = message.msg_type
        body = json.dumps(dict(message.raw), separators=(",", ":"), default=str)
    return _short(hide(f"{when} {head} {body}"), LINE_WIDTH)
