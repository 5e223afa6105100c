"""A local Collective2 API v4 WebSocket server, for demos and tests (extra ``[emulator]``).

It speaks the protocol (https://c2sync.readthedocs.io/en/latest/protocol.html) exactly,
enforces its limits, and has fault knobs to exercise a client's error handling::

    from c2sync.emulator import Emulator

    with Emulator(api_keys={"demo"}, strategies={12345678}) as emu:
        print(emu.url)                      # ws://127.0.0.1:<port>/ws
        seq = emu.publish_signal(12345678)  # a generated payload; returns its seq_id
        emu.drop()                          # cut every connection without a close frame

Run it from a shell with ``python -m c2sync.emulator --help``.
"""

from __future__ import annotations

try:
    import websockets  # noqa: F401 (checked here to give a useful message)
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "c2sync.emulator needs the 'websockets' package: from a checkout of c2sync, "
        'pip install ".[emulator]"'
    ) from exc

from ._cli import main
from ._emulator import Emulator
from ._records import (
    ConnectionRecord,
    HeartbeatRecord,
    ReceivedFrame,
    SubscriptionRequestRecord,
)

__all__ = [
    "ConnectionRecord",
    "Emulator",
    "HeartbeatRecord",
    "ReceivedFrame",
    "SubscriptionRequestRecord",
    "main",
]
