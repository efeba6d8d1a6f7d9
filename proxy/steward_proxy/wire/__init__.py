"""Sans-I/O codec for the PostgreSQL v3 frontend/backend protocol.

Pure: this package never touches a socket, a file or an event loop. Feed it
bytes, pull messages out, turn messages into bytes.
"""

from .codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_STARTUP_PACKET_SIZE,
    Frame,
    MessageReader,
    decode_backend,
    decode_frontend,
    decode_startup,
    encode,
)
from .connection import (
    CONNECTION_CLOSED,
    NEED_DATA,
    TRANSITIONS,
    ClientConnection,
    ServerConnection,
    State,
)
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .messages import *  # noqa: F403
from .messages import __all__ as _messages_all

__all__ = [
    "CONNECTION_CLOSED",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_STARTUP_PACKET_SIZE",
    "NEED_DATA",
    "TRANSITIONS",
    "ClientConnection",
    "Frame",
    "LocalProtocolError",
    "MessageReader",
    "ProtocolError",
    "RemoteProtocolError",
    "ServerConnection",
    "State",
    "decode_backend",
    "decode_frontend",
    "decode_startup",
    "encode",
    *_messages_all,
]
