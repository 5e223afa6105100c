"""c2sync: Collective2's real-time signals in plain, thread-based Python.

::

    import c2sync

    with c2sync.connect() as client:          # the key from C2_API_KEY
        client.subscribe(c2sync.SIGNAL, 12345678)
        for message in client:
            print(message)
"""

import logging

from ._frames import to_dataframe
from ._spec import DEFAULT_URL
from .checkpoint import Checkpoint, FileCheckpoint, SQLCheckpoint, SQLiteCheckpoint
from .client import Client, Handle, State, Stats, SubscriptionStats, connect
from .codec import encode_heartbeat_ack, encode_subscription_request, parse_message
from .exceptions import (
    AuthenticationError,
    C2Error,
    ConnectionClosed,
    HandshakeError,
    HeartbeatTimeout,
    ProtocolError,
    QueueOverflow,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    SubscriptionLimitError,
)
from .messages import (
    POSITIONS,
    SIGNAL,
    ErrorDetail,
    ErrorMessage,
    Gap,
    Message,
    Positions,
    Signal,
    SubscriptionAck,
)
from .reconnect import ReconnectPolicy

__version__ = "0.1.0"

# A library never prints on its own: without this handler, logging's last-resort handler
# would write the library's warnings to stderr in an application that configured nothing.
logging.getLogger("c2sync").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_URL",
    "POSITIONS",
    "SIGNAL",
    "AuthenticationError",
    "C2Error",
    "Checkpoint",
    "Client",
    "ConnectionClosed",
    "ErrorDetail",
    "ErrorMessage",
    "FileCheckpoint",
    "Gap",
    "Handle",
    "HandshakeError",
    "HeartbeatTimeout",
    "Message",
    "Positions",
    "ProtocolError",
    "QueueOverflow",
    "RateLimitError",
    "ReconnectPolicy",
    "SQLCheckpoint",
    "SQLiteCheckpoint",
    "ServerError",
    "ServiceUnavailableError",
    "Signal",
    "State",
    "Stats",
    "SubscriptionAck",
    "SubscriptionLimitError",
    "SubscriptionStats",
    "__version__",
    "connect",
    "encode_heartbeat_ack",
    "encode_subscription_request",
    "parse_message",
    "to_dataframe",
]
