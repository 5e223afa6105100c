"""A local Collective2 API v4 WebSocket server, for demos and tests (extra ``[emulator]``).

It speaks the protocol (https://c2sync.readthedocs.io/en/latest/protocol.html) exactly,
enforces its limits, and has fault knobs to exercise a client's error handling::

    from c2sync.emulator import Emulator

    with Emulator(api_keys={"demo"}, strategies={12345678}) as emu:
        print(emu.url)                      # ws://127.0.0.1:<port>/ws
        seq = emu.publish_signal(12345678)  # a generated payload; returns its seq_id
        emu.drop()                          # cut every connection without a close frame

It can also read the points the public docs leave open the other plausible ways (binary
frames, ``resume_from`` only as a string, ``seq_id`` numbered across strategies...), so code
can be tested against each: ``Emulator(dialect={"frames": "binary"})``; :data:`DIALECTS`
lists every point, its readings and its default.

Run it from a shell with ``python -m c2sync.emulator --help``.
"""

from __future__ import annotations

from collections.abc import Mapping

try:
    import websockets  # noqa: F401 (checked here to give a useful message)
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "c2sync.emulator needs the 'websockets' package: from a checkout of c2sync, "
        'pip install ".[emulator]"'
    ) from exc

from ._cli import main
from ._dialect import DIALECTS as _DIALECTS
from ._dialect import DialectPoint
from ._emulator import Emulator
from ._records import (
    ConnectionRecord,
    HeartbeatRecord,
    ReceivedFrame,
    SubscriptionRequestRecord,
)

DIALECTS: Mapping[str, DialectPoint] = _DIALECTS
"""The points the public docs leave open, and the readings the emulator can play of each:
``Emulator(dialect={NAME: VALUE})``, or ``c2sync emulator --dialect NAME=VALUE``.

Maps each name (``seq_scope``, ``resume_from``, ``ack_request_id``, ``ack_payload``,
``errors``, ``positions_seq``, ``gap_from``, ``v``, ``extra_fields``, ``frames``, ``replay``,
``timestamps``, ``pings``, ``heartbeat_close_code``) to a :class:`DialectPoint`: its allowed
values, its default (docs/protocol.md's reading, what the emulator plays unless told) and
what each reading does. :doc:`../testing` has the table.
"""

__all__ = [
    "DIALECTS",
    "ConnectionRecord",
    "DialectPoint",
    "Emulator",
    "HeartbeatRecord",
    "ReceivedFrame",
    "SubscriptionRequestRecord",
    "main",
]
