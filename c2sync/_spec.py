"""The protocol's names and numbers, in one place, shared by the client and the emulator.

Every value cites the section of docs/protocol.md it comes from.
"""

from __future__ import annotations

DEFAULT_URL = "wss://api4-general.collective2.com/ws"  # section 1

# Message types (section 4).
CONNECTED = "connection.connected"
DISCONNECTED = "connection.disconnected"
HEARTBEAT = "heartbeat"
HEARTBEAT_ACK = "heartbeat.ack"
SUBSCRIPTION_REQUEST = "subscription.request"
SUBSCRIPTION_ACK = "subscription.ack"
SIGNAL = "strategy.signal"
POSITIONS = "strategy.positions"
GAP = "gap"
ERROR = "error"

CHANNELS = frozenset({SIGNAL, POSITIONS})  # section 6
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"
ACTIONS = frozenset({SUBSCRIBE, UNSUBSCRIBE})

PROTOCOL_VERSION = 4  # section 3: ``v``

HEARTBEAT_INTERVAL = 30.0  # section 5
HEARTBEAT_GRACE = 10.0  # section 5: 40 s after the previous ack the server closes
HEARTBEAT_TIMEOUT = HEARTBEAT_INTERVAL + HEARTBEAT_GRACE

MAX_SUBSCRIPTIONS = 100  # section 6, per connection
MAX_CONNECTIONS_PER_KEY = 10  # section 6
MAX_REQUEST_ID_LENGTH = 50  # section 3
MAX_REPLAY = 1000  # section 7
TIMESTAMP_WINDOW = 60.0  # section 3: seconds a client timestamp may be off UTC

# Close codes (section 9).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

# Handshake refusals (section 2).
AUTH_HEADER = "Authorization"
ERROR_HEADER = "X-WS-Error"
CODE_UNAUTHORIZED = "UNAUTHORIZED"
CODE_FORBIDDEN = "FORBIDDEN"
CODE_INVALID_PARAMETER = "INVALID_PARAMETER"
CODE_RATE_LIMITED = "RATE_LIMITED"  # [assumed]
CODE_CONNECTION_LIMIT = "CONNECTION_LIMIT"  # [assumed]
CODE_SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"  # [assumed]
