"""The SQLSTATE codes Steward sends, named as PostgreSQL names them.

From PostgreSQL's own list (``src/backend/utils/errcodes.txt``, Appendix A of
the manual); only the codes the proxy uses. Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

CONNECTION_FAILURE: Final = "08006"
SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: Final = "08001"
SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION: Final = "08004"
PROTOCOL_VIOLATION: Final = "08P01"
FEATURE_NOT_SUPPORTED: Final = "0A000"
INVALID_AUTHORIZATION_SPECIFICATION: Final = "28000"
INVALID_PASSWORD: Final = "28P01"
INVALID_CATALOG_NAME: Final = "3D000"
SYNTAX_ERROR: Final = "42601"
INSUFFICIENT_PRIVILEGE: Final = "42501"
TOO_MANY_CONNECTIONS: Final = "53300"
PROGRAM_LIMIT_EXCEEDED: Final = "54000"
ADMIN_SHUTDOWN: Final = "57P01"
IDLE_SESSION_TIMEOUT: Final = "57P05"
IO_ERROR: Final = "58030"
INTERNAL_ERROR: Final = "XX000"
