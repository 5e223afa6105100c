"""The messages a Collective2 server sends, as frozen values (the protocol, sections 3-8).

Every message keeps the whole JSON object it came from in ``raw`` and its ``payload``
unchanged and read-only, so fields the server adds later are never lost.

A message's ``repr()`` (and so ``str()`` and ``print()``) shows its fields as attrs would,
with the API key of every client created in this process masked as ``***``: a server may
echo the key in any field, and the value keeps the server's data as it came
(docs/security.md "The API key"; the keys are remembered in c2sync/_redact.py, since a
value the user pickles and exports cannot carry the key itself). Masking costs only when a
repr is made, nothing when a message is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NoReturn

import attrs

from ._redact import mask
from ._spec import POSITIONS, SIGNAL

__all__ = [
    "POSITIONS",
    "SIGNAL",
    "ErrorDetail",
    "ErrorMessage",
    "Gap",
    "Message",
    "Positions",
    "ReadOnlyDict",
    "Signal",
    "SubscriptionAck",
]


class ReadOnlyDict(dict[str, Any]):
    """A ``dict`` that refuses changes: it still serialises with ``json.dumps``."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("message payloads are read-only; copy with dict(...) to change one")

    __setitem__ = __delitem__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse
    __ior__ = _refuse

    def __reduce__(self) -> tuple[Any, ...]:
        return (ReadOnlyDict, (dict(self),))

    def __copy__(self) -> ReadOnlyDict:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ReadOnlyDict:
        return self


_EMPTY: Mapping[str, Any] = ReadOnlyDict()


def _masked_repr(value: Any) -> str:
    """attrs' repr of ``value`` (the fields marked ``repr``, in order), remembered keys
    masked (c2sync/_redact.py)."""
    fields = ", ".join(
        f"{field.name}={getattr(value, field.name)!r}"
        for field in attrs.fields(type(value))
        if field.repr
    )
    return mask(f"{type(value).__qualname__}({fields})")


@attrs.frozen(kw_only=True)
class Message:
    """Any server message; the base of every other message class.

    Attributes:
        msg_type: the message type, e.g. ``"strategy.signal"``.
        id: the server's unique message id, or None.
        seq_id: the sequence number on ordered streams, or None.
        request_id: the client's request id echoed back, or None.
        timestamp: when the server sent it (aware, UTC), or None.
        v: the protocol version (4), or None.
        payload: the payload, read-only and unchanged (empty when absent).
        raw: the whole JSON object, read-only.
    """

    msg_type: str
    id: str | None = None
    seq_id: int | None = None
    request_id: str | None = None
    timestamp: datetime | None = None
    v: int | None = None
    # Not hashed (a dict is not hashable); equal messages still hash equal.
    payload: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False, hash=False)
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False, eq=False)

    def __repr__(self) -> str:
        return _masked_repr(self)


@attrs.frozen(kw_only=True, repr=False)  # the repr is Message's, masked
class Signal(Message):
    """A trading signal (``strategy.signal``).

    Attributes:
        strategy_id: from the payload's ``strategy_id``/``StrategyId``, else the connection's
            only signal subscription, else None.
        seq_id: its position in the strategy's signal stream.
    """

    seq_id: int
    strategy_id: int | None = None

    def describe(self) -> str:
        """The order as one human line: ``BUY 5 @ESZ5 limit 5210.25 (SignalId 150000041)``,
        as ``c2sync listen`` prints it.

        For people, not programs: Collective2 does not publish the signal payload's schema,
        so the line reads the fields a REST v4 order has (``Side`` "1" BUY / "2" SELL,
        ``Quantity``, ``C2Symbol.FullSymbol``, ``Limit`` or ``Stop``, ``SignalId``), an
        assumption. A payload shaped otherwise gives its top-level plain fields as
        ``key=value``. Programs should read ``payload``. The line is not cut, and the
        API keys of this process's clients show as ``***``, as in the repr.
        """
        from ._format import describe_order  # it imports this module

        return mask(describe_order(self.payload))


@attrs.frozen(kw_only=True, repr=False)  # the repr is Message's, masked
class Positions(Message):
    """A position update (``strategy.positions``).

    Attributes:
        strategy_id: from the payload, else the only positions subscription, else None.
    """

    strategy_id: int | None = None

    def describe(self) -> str:
        """The holdings as one human line: ``2 open: @ESZ5 +5 @ 5201.5, AAPL -10 @ 187.2``.

        As for :meth:`Signal.describe`, the payload's schema is not published: the line
        reads ``Positions`` (each with ``C2Symbol.FullSymbol``, ``Quantity``, ``AvgPx``),
        an assumption, and a payload shaped otherwise gives its top-level plain fields.
        Programs should read ``payload``.
        """
        from ._format import describe_holdings  # it imports this module

        return mask(describe_holdings(self.payload))


@attrs.frozen(kw_only=True, repr=False)  # the repr is Message's, masked
class Gap(Message):
    """The server could not replay every missed signal (the protocol, section 7).

    Fetch the signals after ``from_seq`` from the REST API.

    Attributes:
        strategy_id: the strategy (from ``channel`` when the payload's is null).
        channel: e.g. ``"strategy.signal:12345678"``.
        from_seq: the ``resume_from`` the replay started from.
        message: the server's explanation.
        missing_after: the highest ``seq_id`` the client held for the strategy when the
            gap arrived (every signal up to it is delivered before the gap): the missing
            ones start right after it. None when the client held none.
    """

    strategy_id: int
    channel: str
    from_seq: int
    message: str = ""
    missing_after: int | None = None


@attrs.frozen(kw_only=True, repr=False)  # the repr is Message's, masked
class SubscriptionAck(Message):
    """The answer to a subscribe or unsubscribe request.

    Attributes:
        action: ``"subscribe"`` or ``"unsubscribe"`` (None if the server left it out).
        channel: the channel (None if the server left it out).
        strategy_id: the strategy (None if the server left it out).
    """

    action: str | None = None
    channel: str | None = None
    strategy_id: int | None = None


@attrs.frozen
class ErrorDetail:
    """One error of an ``error`` message.

    Attributes:
        code: the error code, kept as a string.
        field: the field concerned, or None.
        message: the explanation.
    """

    code: str
    field: str | None
    message: str

    def __repr__(self) -> str:
        return _masked_repr(self)


@attrs.frozen(kw_only=True, repr=False)  # the repr is Message's, masked
class ErrorMessage(Message):
    """An ``error`` message that answered none of this client's requests.

    Attributes:
        code: the (first) error code, e.g. ``"FORBIDDEN"``.
        field: the (first) field concerned, or None.
        message: the (first) explanation.
        errors: every error, in order (one item when the server sent a single error).
    """

    code: str
    field: str | None = None
    message: str = ""
    errors: tuple[ErrorDetail, ...] = ()
