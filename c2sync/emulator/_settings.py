"""The emulator's configuration, one frozen value: built and checked by ``Emulator`` on the
caller's thread, then only read (on the loop thread) by the server in ``_server.py``."""

from __future__ import annotations

import ssl

import attrs

from ._dialect import DEFAULT_DIALECT, Dialect

__all__ = ["Settings"]


@attrs.frozen
class Settings:
    """The emulator's configuration, as the server needs it (checked by ``Emulator``)."""

    api_keys: frozenset[str]
    strategies: frozenset[int]
    heartbeat_interval: float
    heartbeat_timeout: float  # interval + grace
    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    replay_size: int
    max_replay: int
    max_connections_per_key: int
    max_subscriptions: int
    timestamp_window: float
    # Seconds the emulator's clock runs ahead of the machine's (negative: behind): what it
    # stamps and what its timestamp window compares with (tests of client clock skew).
    clock_offset: float = 0.0
    # The reading of each point the docs leave open (_dialect.py; default: docs/protocol.md).
    dialect: Dialect = DEFAULT_DIALECT
