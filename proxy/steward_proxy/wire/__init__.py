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
from .tracker import (
    ANSWERS,
    STAND_IN_SQL,
    Answer,
    CopyFilter,
    CopyPlanner,
    Deferred,
    Desync,
    Finished,
    MessageScreen,
    ParameterChanged,
    Request,
    RowFilter,
    RowLayout,
    RowPlanner,
    Statement,
    Tracker,
    TrackerEvent,
)

__all__ = [
    "ANSWERS",
    "CONNECTION_CLOSED",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_STARTUP_PACKET_SIZE",
    "NEED_DATA",
    "STAND_IN_SQL",
    "TRANSITIONS",
    "Answer",
    "ClientConnection",
    "Desync",
    "Finished",
    "Frame",
    "LocalProtocolError",
    "MessageReader",
    "ParameterChanged",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "CopyFilter",
    "CopyPlanner",
    "Deferred",
    "MessageScreen",
    "RowFilter",
    "RowLayout",
    "RowPlanner",
    "ServerConnection",
    "State",
    "Statement",
    "Tracker",
    "TrackerEvent",
    "decode_backend",
    "decode_frontend",
    "decode_startup",
    "encode",
    *_messages_all,
]
