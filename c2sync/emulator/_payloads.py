"""Plausible generated payloads for ``strategy.signal`` and ``strategy.positions``.

The real schemas are not public (docs/protocol.md section 4); these are modelled on Collective2's
REST v4 order and position records [assumed], about 500 bytes of JSON per message.
"""

from __future__ import annotations

import random
from typing import Any

from ..codec import format_timestamp

# (C2 full symbol, C2 symbol type, REST security type, currency, typical price)
_INSTRUMENTS: tuple[tuple[str, str, str, str, float], ...] = (
    ("AAPL", "stock", "CS", "USD", 187.0),
    ("MSFT", "stock", "CS", "USD", 415.0),
    ("@ESZ5", "future", "FUT", "USD", 5200.0),
    ("@NQZ5", "future", "FUT", "USD", 18300.0),
    ("EURUSD", "forex", "CASH", "USD", 1.08),
)
_ORDER_TYPES = ("1", "2", "3")  # market, limit, stop
_SIDES = ("1", "2")  # buy, sell
_TIFS = ("0", "1")  # day, good till cancelled


def _instrument(rng: random.Random) -> tuple[dict[str, Any], str, float]:
    symbol, symbol_type, security_type, currency, price = rng.choice(_INSTRUMENTS)
    c2_symbol = {"FullSymbol": symbol, "SymbolType": symbol_type}
    return c2_symbol, f"{security_type}:{currency}", price * (1 + rng.uniform(-0.02, 0.02))


def _price(value: float) -> float:
    return round(value, 5 if value < 10 else 2)


def signal_payload(strategy_id: int, seq_id: int, rng: random.Random) -> dict[str, Any]:
    """A generated signal: one order as the REST v4 order records describe it.

    Args:
        strategy_id: the strategy publishing it.
        seq_id: its sequence number, folded into ``SignalId`` to keep ids unique.
        rng: the source of randomness.

    Returns:
        A JSON-ready dict.
    """
    c2_symbol, kind, price = _instrument(rng)
    security_type, currency = kind.split(":")
    order_type = rng.choice(_ORDER_TYPES)
    now = format_timestamp()
    return {
        "StrategyId": strategy_id,
        "SignalId": 150_000_000 + seq_id,
        "C2Symbol": c2_symbol,
        "ExchangeSymbol": {
            "Symbol": c2_symbol["FullSymbol"].lstrip("@"),
            "Currency": currency,
            "SecurityExchange": "DEFAULT",
            "SecurityType": security_type,
        },
        "Side": rng.choice(_SIDES),
        "OrderType": order_type,
        "Quantity": rng.choice((1, 2, 5, 10, 25, 100)),
        "Limit": _price(price) if order_type == "2" else None,
        "Stop": _price(price) if order_type == "3" else None,
        "TIF": rng.choice(_TIFS),
        "OpenClose": rng.choice(("O", "C")),
        "ParentSignalId": None,
        "ProfitTarget": None,
        "StopLoss": None,
        "OrderStatus": "0",
        "PostedDate": now,
        "TradeDate": now[:10],
    }


def positions_payload(strategy_id: int, rng: random.Random) -> dict[str, Any]:
    """A generated position update: the strategy's open positions, REST v4 style.

    Args:
        strategy_id: the strategy whose positions these are.
        rng: the source of randomness.

    Returns:
        A JSON-ready dict.
    """
    positions = []
    for _ in range(2):
        c2_symbol, kind, price = _instrument(rng)
        positions.append(
            {
                "C2Symbol": c2_symbol,
                "Quantity": rng.choice((-10, -2, 1, 5, 100)),
                "AvgPx": _price(price),
                "Currency": kind.split(":")[1],
                "OpenedDate": format_timestamp(),
            }
        )
    return {"StrategyId": strategy_id, "Positions": positions, "UpdatedDate": format_timestamp()}
