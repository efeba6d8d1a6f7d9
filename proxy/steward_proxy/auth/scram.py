"""SCRAM-SHA-256 against a users file, for service accounts outside Kubernetes.

The users file has PgBouncer's ``auth_file`` format: one user per line, two
double-quoted fields (a ``"`` inside a field is written ``""``), the user name
and its SCRAM verifier as PostgreSQL stores it in ``pg_authid``::

    "reporting" "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>" "analysts,finance"

An optional third field lists the user's groups, separated by commas.
PgBouncer reads the first two fields of each line, so one file can serve both.
Blank lines and lines starting with ``;`` or ``#`` are comments. Plain
passwords and MD5 hashes are refused: the file never holds a password.

:class:`ScramExchange` runs the server side of SCRAM-SHA-256 (RFC 5802, 7677)
without channel binding (clients that support it say ``y``, which is
accepted). The subject is ``user:NAME`` for the startup packet's user
name, as PostgreSQL does (the name inside the SCRAM message is ignored). A
user not in the file goes through the same exchange with a made-up verifier
and fails at the same point with the same message, so names cannot be probed.

Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from steward_proxy import wire
from steward_proxy.auth.base import (
    AuthFailed,
    ClientFacts,
    Step,
    user_identity,
    wrong_password,
)
from steward_proxy.escape import escape, has_controls

__all__ = [
    "DEFAULT_ITERATIONS",
    "ScramAuthenticator",
    "ScramExchange",
    "UserEntry",
    "UsersFileError",
    "Verifier",
    "format_line",
    "make_verifier",
    "parse_users",
    "upsert_line",
]

MECHANISM = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096


class UsersFileError(ValueError):
    """A users file line that cannot be used."""


@dataclass(frozen=True, slots=True)
class Verifier:
    """A SCRAM-SHA-256 verifier: what the server keeps instead of the password."""

    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64 parts)."""
        try:
            mechanism, params, keys = text.split("$")
            iterations, salt = params.split(":")
            stored, server = keys.split(":")
            if mechanism != MECHANISM or not iterations.isdigit():
                raise ValueError
            verifier = cls(
                int(iterations),
                base64.b64decode(salt, validate=True),
                base64.b64decode(stored, validate=True),
                base64.b64decode(server, validate=True),
            )
        except ValueError:
            raise UsersFileError(
                "not a SCRAM-SHA-256 verifier (plain passwords and md5 hashes are not "
                "accepted; write one with `steward users add`)"
            ) from None
        if len(verifier.stored_key) != 32 or len(verifier.server_key) != 32:
            raise UsersFileError("a SCRAM-SHA-256 verifier's keys are 32 bytes")
        if not 4096 <= verifier.iterations <= 10_000_000 or not verifier.salt:
            raise UsersFileError("iteration count out of range (4096 to 10000000) or no salt")
        return verifier

    def __str__(self) -> str:
        b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
        return (
            f"{MECHANISM}${self.iterations}:{b64(self.salt)}"
            f"${b64(self.stored_key)}:{b64(self.server_key)}"
        )

    def auth_info(self) -> tuple[bytes, bytes, bytes, int]:
        """What ``scramp``'s server asks its ``auth_fn`` for."""
        return self.salt, self.stored_key, self.server_key, self.iterations


def make_verifier(
    password: str | bytes, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> Verifier:
    """A verifier for ``password`` (already SASLprep'd, as clients do) with a fresh salt."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    raw = password.encode("utf-8") if isinstance(password, str) else password
    salted = hashlib.pbkdf2_hmac("sha256", raw, salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return Verifier(iterations, salt, hashlib.sha256(client_key).digest(), server_key)


@dataclass(frozen=True, slots=True)
class UserEntry:
    name: str
    verifier: Verifier
    groups: tuple[str, ...] = ()


def _fields(line: str) -> list[str]:
    """The double-quoted fields of one line (``""`` is a quote inside a field)."""
    fields: list[str] = []
    pos = 0
    while True:
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos == len(line):
            return fields
        if line[pos] != '"':
            raise UsersFileError("expected a double-quoted field")
        pos += 1
        field = []
        while True:
            end = line.find('"', pos)
            if end < 0:
                raise UsersFileError("unterminated double quote")
            field.append(line[pos:end])
            if line.startswith('""', end):
                field.append('"')
                pos = end + 2
                continue
            pos = end + 1
            break
        fields.append("".join(field))


def parse_users(text: str, origin: str = "users file") -> dict[str, UserEntry]:
    """The users of a users file by name; UsersFileError naming the line otherwise."""
    users: dict[str, UserEntry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in ";#":
            continue
        try:
            fields = _fields(stripped)
            if len(fields) not in (2, 3):
                raise UsersFileError('expected "NAME" "VERIFIER" and optionally "GROUPS"')
            name, verifier_text = fields[0], fields[1]
            if not name or has_controls(name):
                raise UsersFileError(f'invalid user name "{escape(name)}"')
            if name in users:
                raise UsersFileError(f'user "{escape(name)}" appears twice')
            groups = (
                tuple(g.strip() for g in fields[2].split(",") if g.strip())
                if len(fields) == 3
                else ()
            )
            if any(has_controls(g) for g in groups):
                raise UsersFileError("invalid group name")
            users[name] = UserEntry(name, Verifier.parse(verifier_text), groups)
        except UsersFileError as exc:
            raise UsersFileError(f"{origin} line {number}: {exc}") from None
    return users


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def format_line(entry: UserEntry) -> str:
    """One users file line for ``entry`` (no newline)."""
    fields = [entry.name, str(entry.verifier)]
    if entry.groups:
        fields.append(",".join(entry.groups))
    return " ".join(_quote(f) for f in fields)


def upsert_line(text: str, entry: UserEntry) -> str:
    """``text`` (a users file) with ``entry``'s line replaced or added; other lines kept."""
    lines = text.splitlines()
    line = format_line(entry)
    for index, existing in enumerate(lines):
        stripped = existing.strip()
        if not stripped or stripped[0] in ";#":
            continue
        try:
            fields = _fields(stripped)
        except UsersFileError:
            continue
        if fields and fields[0] == entry.name:
            lines[index] = line
            break
    else:
        lines.append(line)
    return "\n".join(lines) + "\n"


def _attributes(text: str) -> list[tuple[str, str]]:
    """``a=value,b=value`` as pairs; AuthFailed when malformed."""
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise _malformed()
        pairs.append((part[0], part[2:]))
    return pairs


def _malformed() -> AuthFailed:
    return AuthFailed("SCRAM authentication failed: malformed message", "protocol")


class ScramExchange:
    """The server side of one SCRAM-SHA-256 exchange (RFC 5802 and 7677).

    Written out rather than taken from ``scramp``, whose server refuses the
    empty user name (``n=``) that libpq, asyncpg and pg8000 send because
    PostgreSQL takes the name from the startup packet. The primitives are
    ``hmac`` and ``hashlib``; the client side of the tests is ``scramp``'s.
    """

    def __init__(self, client: ClientFacts, entry: UserEntry | None, mock_key: bytes) -> None:
        self._user = client.user
        self._entry = entry
        if entry is not None:
            self._verifier = entry.verifier
        else:
            # A stable made-up salt and keys no password matches, so a user
            # missing from the file looks exactly like a wrong password.
            seed = hmac.new(mock_key, client.user.encode("utf-8", "surrogateescape"), "sha256")
            self._verifier = Verifier(
                DEFAULT_ITERATIONS, seed.digest()[:16], secrets.token_bytes(32), b"\0" * 32
            )
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._done = False

    def begin(self) -> Step:
        return Step(send=(wire.AuthenticationSASL((MECHANISM,)),))

    def receive(self, message: wire.Message) -> Step:
        try:
            if isinstance(message, wire.SASLInitialResponse) and not self._nonce:
                return self._client_first(message)
            if isinstance(message, wire.SASLResponse) and self._nonce and not self._done:
                return self._client_final(message.data.decode("utf-8"))
        except UnicodeDecodeError:
            raise _malformed() from None
        raise AuthFailed("unexpected message in the SCRAM exchange", "protocol")

    def _client_first(self, message: wire.SASLInitialResponse) -> Step:
        if message.mechanism != MECHANISM:
            raise AuthFailed(
                f"SCRAM authentication failed: expected SASL mechanism {MECHANISM}", "protocol"
            )
        if message.data is None:
            raise _malformed()
        text = message.data.decode("utf-8")
        # gs2-header: "n,," (no channel binding) or "y,," (client could, thinks we cannot).
        if not text.startswith(("n,,", "y,,")):
            if text.startswith("p="):
                raise AuthFailed(
                    "SCRAM authentication failed: channel binding is not offered", "protocol"
                )
            raise _malformed()
        self._gs2_header, self._client_first_bare = text[:3], text[3:]
        attributes = _attributes(self._client_first_bare)
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            raise _malformed()
        client_nonce = attributes[1][1]
        if not client_nonce or not all(0x21 <= ord(c) <= 0x7E for c in client_nonce):
            raise _malformed()
        self._nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        v = self._verifier
        self._server_first = (
            f"r={self._nonce},s={base64.b64encode(v.salt).decode()},i={v.iterations}"
        )
        return Step(send=(wire.AuthenticationSASLContinue(self._server_first.encode()),))

    def _client_final(self, text: str) -> Step:
        self._done = True
        without_proof, sep, proof_text = text.rpartition(",p=")
        if not sep:
            raise _malformed()
        attributes = dict(_attributes(without_proof))
        binding = base64.b64encode(self._gs2_header.encode()).decode()
        if attributes.get("c") != binding or attributes.get("r") != self._nonce:
            raise _malformed()
        try:
            proof = base64.b64decode(proof_text, validate=True)
        except ValueError:
            raise _malformed() from None
        v = self._verifier
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = hmac.digest(v.stored_key, auth_message, "sha256")
        if len(proof) != len(signature):
            raise wrong_password(self._user)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if self._entry is None or not hmac.compare_digest(
            hashlib.sha256(client_key).digest(), v.stored_key
        ):
            raise wrong_password(self._user)
        server_signature = hmac.digest(v.server_key, auth_message, "sha256")
        final = b"v=" + base64.b64encode(server_signature)
        identity = user_identity(self._user, self._entry.groups)
        return Step(send=(wire.AuthenticationSASLFinal(final),), identity=identity)

    def resume(self) -> Step:
        raise AuthFailed("unexpected state of the SCRAM exchange", "protocol")


class ScramAuthenticator:
    """The SCRAM method of a listener: the users it knows."""

    method = "scram-sha-256"
    requires_tls = False

    def __init__(self, users: dict[str, UserEntry], origin: str = "users file") -> None:
        self.users = users
        self.origin = origin
        self._mock_key = secrets.token_bytes(32)

    def exchange(self, client: ClientFacts) -> ScramExchange:
        return ScramExchange(client, self.users.get(client.user), self._mock_key)

    def describe(self) -> str:
        return f"scram-sha-256 ({len(self.users)} user(s) in {self.origin})"
