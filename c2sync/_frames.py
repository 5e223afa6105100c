"""``c2sync.to_dataframe``: messages as a pandas table (extra ``[pandas]``).

Called from any user thread; pure (no I/O, no shared state). pandas is imported when the
function is called, never at ``import c2sync``: the library works fully without it.

Guarantees (docs/api-contract.md "Data frames"): one row per message, in order; the first
columns are always ``msg_type``, ``strategy_id``, ``seq_id``, ``timestamp`` with fixed
dtypes (``object``, ``Int64``, ``Int64``, ``datetime64[ns, UTC]``), whatever the messages
(an empty list included); then the payload's fields, flattened with ``"."`` for nested
keys, in the order they first appear. The same messages always give the same columns and
dtypes.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from .messages import Message

__all__ = ["PANDAS_HINT", "to_dataframe"]

PANDAS_HINT = (
    'c2sync.to_dataframe needs pandas: from a checkout of c2sync, pip install ".[pandas]"'
)

FIXED = ("msg_type", "strategy_id", "seq_id", "timestamp")
_INT64 = (-(2**63), 2**63 - 1)
# datetime64[ns] holds 1677-09-21 .. 2262-04-11; a timestamp outside the whole years in
# between is shown as NaT (the message keeps it in .timestamp and .raw).
_NS_YEARS = (1678, 2261)


def to_dataframe(messages: Iterable[Message]) -> Any:
    """The messages as a ``pandas.DataFrame``, one row per message, in order.

    ::

        frame = c2sync.to_dataframe(client.recv_many(1000))
        frame[frame.msg_type == "strategy.signal"]

    Columns: ``msg_type``, ``strategy_id`` (``Int64``, missing for messages without
    one), ``seq_id`` (``Int64``), ``timestamp`` (``datetime64[ns, UTC]``), then the
    payload's fields flattened: ``{"C2Symbol": {"FullSymbol": "ESZ4"}}`` becomes the column
    ``C2Symbol.FullSymbol``. A payload field named like one of the first four columns is
    named ``payload.<name>``. Payload columns take the dtype pandas infers from their values
    (``object`` for mixed ones); lists stay as Python lists.

    Args:
        messages: any iterable of :class:`~c2sync.Message` (``recv_many()``'s list, the
            list a callback appended to, ...).

    Returns:
        A ``pandas.DataFrame``.

    Raises:
        ImportError: pandas is not installed (the message names the ``[pandas]`` extra).
        TypeError: an item is not a :class:`~c2sync.Message`.
    """
    try:
        pd: Any = importlib.import_module("pandas")
    except ImportError as exc:
        raise ImportError(PANDAS_HINT) from exc
    rows: list[dict[str, Any]] = []
    fixed: dict[str, list[Any]] = {name: [] for name in FIXED}
    columns: dict[str, None] = {}  # payload columns, in first-seen order
    for message in messages:
        if not isinstance(message, Message):
            raise TypeError(f"to_dataframe takes c2sync messages, not {type(message).__name__}")
        fixed["msg_type"].append(message.msg_type)
        fixed["strategy_id"].append(getattr(message, "strategy_id", None))
        fixed["seq_id"].append(message.seq_id)
        fixed["timestamp"].append(_in_ns_range(message.timestamp))
        row = flatten(message.payload)
        for name in row:
            if name not in columns:
                columns[name] = None
        rows.append(row)
    data: dict[str, Any] = {
        "msg_type": pd.Series(fixed["msg_type"], dtype=object),
        "strategy_id": _ints(pd, fixed["strategy_id"]),
        "seq_id": _ints(pd, fixed["seq_id"]),
        "timestamp": pd.Series(
            pd.to_datetime(fixed["timestamp"], utc=True), dtype="datetime64[ns, UTC]"
        ),
    }
    for name in columns:
        values = [row.get(name) for row in rows]
        data[name] = pd.Series(values)  # pandas' own inference, as from_records does
    return pd.DataFrame(data, columns=list(data))


def flatten(payload: Mapping[str, Any]) -> dict[str, Any]:
    """One row's payload columns, in the payload's order: nested mappings joined with
    ``"."``; names that clash with the fixed columns get a ``payload.`` prefix. Iterative,
    so no nesting depth can hit the recursion limit."""
    row: dict[str, Any] = {}
    stack: list[tuple[str, Iterator[tuple[Any, Any]]]] = [("", iter(payload.items()))]
    while stack:
        prefix, items = stack[-1]
        for key, value in items:
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                stack.append((f"{name}.", iter(value.items())))
                break
            row["payload." + name if name in FIXED else name] = value
        else:
            stack.pop()
    return row


def _ints(pd: Any, values: list[int | None]) -> Any:
    low, high = _INT64
    if all(v is None or low <= v <= high for v in values):
        return pd.Series(pd.array(values, dtype="Int64"))
    return pd.Series(values, dtype=object)  # beyond 64 bits: kept exact, as Python ints


def _in_ns_range(when: datetime | None) -> datetime | None:
    if when is None or not _NS_YEARS[0] <= when.year <= _NS_YEARS[1]:
        return None
    return when
