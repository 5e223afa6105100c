"""The link: one WebSocket opened within one deadline, against servers that misbehave.

Mirrors c2sync/_link.py. Hostile servers are small raw-socket servers on 127.0.0.1, so a
test can say byte for byte what the client meets.
"""

from __future__ import annotations

import types

import pytest
import websocket

from c2sync._link import check_websocket_client


def test_a_websocket_client_without_the_internals_fails_loudly() -> None:
    """If a websocket-client release drops what the frame reader takes over, the error names
    the version and what is missing instead of misreading frames."""
    ws = types.SimpleNamespace(sock=None, pong=lambda data: None)  # no frame_buffer
    with pytest.raises(RuntimeError) as info:
        check_websocket_client(ws)
    message = str(info.value)
    assert websocket.__version__ in message and "frame_buffer" in message


def test_the_installed_websocket_client_has_the_internals() -> None:
    """The supported websocket-client passes the check (setup.cfg caps its major version)."""
    check_websocket_client(websocket.WebSocket())
