"""What the authentication tests share: an OIDC provider of their own (keys made in
the test, a JWKS served on loopback, tokens minted and forged), and client
certificates from a throwaway CA."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from steward_testing.certs import CertificateAuthority, pem_cert, pem_key

ISSUER = "https://idp.example.test/realms/steward"
AUDIENCE = "steward-gateway"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class SigningKey:
    """A provider key: private part to sign, public JWK to publish."""

    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        algorithm = (
            jwt.algorithms.RSAAlgorithm
            if self.alg.startswith("RS")
            else (jwt.algorithms.ECAlgorithm)
        )
        data = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**data, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": self.kid, **header}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=headers)


def claims(
    email: str = "alice@example.com",
    groups: list[str] | None = None,
    *,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
    lifetime: float = 600,
    not_before: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": "0b7c2f",
        "email": email,
        "iat": now,
        "exp": now + int(lifetime),
        **extra,
    }
    if groups is not None:
        out["groups"] = groups
    if not_before is not None:
        out["nbf"] = int(not_before)
    return out


def unsigned_token(payload: dict[str, Any]) -> str:
    """``alg: none``: a token with no signature at all."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(payload).encode())}."


def hmac_with_public_key(key: SigningKey, payload: dict[str, Any]) -> str:
    """HS256 keyed with the provider's public key: the classic algorithm confusion."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = b64url(json.dumps(payload).encode())
    mac = hmac.new(key.public_pem(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(mac)}"


def tampered(token: str, **changes: Any) -> str:
    """``token`` with its payload changed and its signature kept."""
    header, body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    return f"{header}.{b64url(json.dumps(payload).encode())}.{signature}"


@dataclass
class JwksServer:
    """A JWKS on http://127.0.0.1:PORT/jwks.json; ``keys`` can be swapped at any time."""

    keys: list[SigningKey]
    fetches: int = 0
    _httpd: ThreadingHTTPServer | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks.json"

    def document(self) -> bytes:
        return json.dumps({"keys": [k.jwk() for k in self.keys]}).encode()

    @contextmanager
    def serving(self) -> Iterator[JwksServer]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                owner.fetches += 1
                body = owner.document()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
            thread.join()


def issue_client_cert(
    ca: CertificateAuthority,
    *,
    common_name: str = "client",
    emails: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
    expired: bool = False,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for a TLS client, signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start, end = (
        (now - dt.timedelta(days=3), now - dt.timedelta(days=1))
        if expired
        else (
            now - dt.timedelta(hours=1),
            now + dt.timedelta(days=1),
        )
    )
    sans: list[x509.GeneralName] = [x509.RFC822Name(e) for e in emails]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return pem_cert(builder.sign(ca.key, hashes.SHA256())), pem_key(key)
