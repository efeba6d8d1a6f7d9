"""OIDC: a person signs in with an ID token sent as the password.

The client sends its ID token (from Okta, Azure AD, Keycloak, ...) in a
cleartext PasswordMessage, so the listener requires TLS: a client without it is
refused before the proxy asks for the password. :func:`verify_token` checks
the token with PyJWT against the provider's JSON Web Key Set:

- the header's ``alg`` must be an asymmetric algorithm (RS*, PS*, ES*, EdDSA)
  and fit the key's type and curve: ``none`` and every HMAC algorithm are
  refused before any key is touched, so an HS256 token "signed" with the
  public key never verifies;
- the signature, ``exp`` (required), ``nbf`` and ``iat`` with a small leeway,
  ``aud`` (required, must contain the configured audience) and ``iss``
  (required, compared exactly);
- the user claim (``email`` by default; a dotted name reaches into nested
  objects, ``realm_access.roles``) must be a non-empty string, the groups
  claim (``groups``) absent, a string or a list of strings.

The identity is ``user:<user claim>`` with one group per entry of the groups
claim. :class:`KeyCache` holds the key set and decides when it may be fetched
again: when it is older than ``max_age``, and on a key id it does not know,
at most once per ``refresh_interval`` (the fetching itself is the shell's,
:mod:`steward_proxy.auth.jwks`). Tokens never reach a message or a log line.

Pure: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from steward_proxy import wire
from steward_proxy.auth.base import AuthFailed, ClientFacts, Step, user_identity
from steward_proxy.policy import Identity

__all__ = [
    "ALGORITHMS",
    "KeyCache",
    "KeySet",
    "KeySetError",
    "OidcAuthenticator",
    "OidcSettings",
    "UnknownKey",
    "verify_token",
]

ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
"""Asymmetric signature algorithms a token may use; never ``none``, never HMAC."""

_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "EdDSA": "Ed25519"}

MAX_TOKEN_BYTES = 64 * 1024
RETRY_WITHOUT_KEYS = 5.0
MAX_GROUPS = 1000
MAX_KEYS = 100


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str
    audience: str
    user_claim: str = "email"
    groups_claim: str = "groups"
    leeway: float = 30.0
    """Seconds of clock skew allowed on exp, nbf and iat."""
    refresh_interval: float = 60.0
    """At most one fetch of the key set per this many seconds on an unknown key id."""
    max_age: float = 3600.0
    """A key set older than this is fetched again before it is used."""


class KeySetError(ValueError):
    """A JWKS document that holds no usable signature key."""


class UnknownKey(Exception):
    """The token names a key the key set does not hold."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """The provider's signature keys by key id (keys without an id under ``None``)."""

    keys: tuple[jwt.PyJWK, ...]

    @classmethod
    def from_json(cls, document: bytes | str | Mapping[str, Any]) -> KeySet:
        """Parse a JWKS document; keys for encryption or of unknown types are skipped."""
        try:
            data = json.loads(document) if isinstance(document, bytes | str) else document
        except ValueError as exc:
            raise KeySetError(f"the key set is not JSON: {exc}") from None
        entries = data.get("keys") if isinstance(data, Mapping) else None
        if not isinstance(entries, list):
            raise KeySetError('the key set has no "keys" list')
        keys = []
        for entry in entries[:MAX_KEYS]:
            if not isinstance(entry, Mapping) or entry.get("use", "sig") != "sig":
                continue
            if entry.get("kty") == "oct" or entry.get("alg", "RS256") not in ALGORITHMS:
                continue
            try:
                keys.append(jwt.PyJWK(dict(entry)))
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
        if not keys:
            raise KeySetError("the key set holds no usable signature key")
        return cls(tuple(keys))

    def candidates(self, kid: str | None, alg: str) -> list[jwt.PyJWK]:
        """The keys that may have signed a token with this header; UnknownKey if none."""
        if kid is not None:
            found = [k for k in self.keys if k.key_id == kid]
        else:
            found = [k for k in self.keys if _fits(k, alg)]
        if not found:
            raise UnknownKey(kid)
        return found


def _fits(key: jwt.PyJWK, alg: str) -> bool:
    """Whether ``key`` can verify a signature made with ``alg``."""
    if key.key_type != _KEY_TYPES.get(alg[:2]):
        return False
    declared = key._jwk_data.get("alg")
    if declared is not None and declared != alg:
        return False
    curve = _CURVES.get(alg)
    return curve is None or key._jwk_data.get("crv") == curve


class KeyCache:
    """The current key set, when it was fetched, and when it may be fetched again."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self.keys: KeySet | None = None
        self.fetched_at = -math.inf
        self.attempted_at = -math.inf

    def stale(self, now: float) -> bool:
        return self.keys is None or now - self.fetched_at > self.settings.max_age

    def may_fetch(self, now: float) -> bool:
        """Whether a fetch may start now: at most one per refresh interval, or per
        :data:`RETRY_WITHOUT_KEYS` seconds while no key set was ever fetched."""
        interval = self.settings.refresh_interval
        if self.keys is None:
            interval = min(interval, RETRY_WITHOUT_KEYS)
        return now - self.attempted_at >= interval

    def attempting(self, now: float) -> None:
        self.attempted_at = now

    def store(self, keys: KeySet, now: float) -> None:
        self.keys = keys
        self.fetched_at = now


_FAILURES: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the token is not valid yet"),
    (jwt.InvalidAudienceError, "audience", "the token is not meant for this audience"),
    (jwt.InvalidIssuerError, "issuer", "the token's issuer is not trusted"),
    (jwt.InvalidSignatureError, "signature", "the token's signature does not verify"),
    (jwt.MissingRequiredClaimError, "claims", "the token lacks a required claim"),
    (jwt.InvalidAlgorithmError, "algorithm", "the token's algorithm is not allowed"),
)


def _failed(message: str, reason: str) -> AuthFailed:
    return AuthFailed(f"OIDC authentication failed: {message}", reason)


def verify_token(token: str, keys: KeySet, settings: OidcSettings) -> Identity:
    """The identity a valid token proves; AuthFailed or UnknownKey otherwise."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _failed("the password is not a JSON Web Token", "token") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise _failed("the token's algorithm is not allowed", "algorithm")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _failed("the token's key id is not a string", "token")
    candidates = [k for k in keys.candidates(kid, alg) if _fits(k, alg)]
    if not candidates:
        raise _failed("the token's algorithm does not fit its key", "algorithm")
    claims: dict[str, Any] | None = None
    failure: AuthFailed | None = None
    for key in candidates:
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=settings.audience,
                leeway=settings.leeway,
                options={"require": ["exp", "iss", "aud"], "verify_iss": False},
            )
            break
        except Exception as exc:  # PyJWT, or a key its algorithm rejects
            failure = _translate(exc)
            if failure.reason != "signature":
                raise failure from None
    if claims is None:
        raise failure or _failed("the token's signature does not verify", "signature")
    if claims.get("iss") != settings.issuer:  # exact: no prefix or substring match
        raise _failed("the token's issuer is not trusted", "issuer")
    return _identity(claims, settings)


def _translate(exc: Exception) -> AuthFailed:
    for kind, reason, message in _FAILURES:
        if isinstance(exc, kind):
            return _failed(message, reason)
    if isinstance(exc, jwt.DecodeError):
        return _failed("the token's signature does not verify", "signature")
    return _failed("the token is not valid", "token")


def claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name; a dotted name reaches into objects when no claim has that name."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _identity(claims: Mapping[str, Any], settings: OidcSettings) -> Identity:
    user = claim(claims, settings.user_claim)
    if not isinstance(user, str) or not user:
        raise _failed(f'the token has no "{settings.user_claim}" claim', "claims")
    groups = claim(claims, settings.groups_claim)
    if groups is None:
        groups = []
    elif isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise _failed(f'the "{settings.groups_claim}" claim is not a list of names', "claims")
    if len(groups) > MAX_GROUPS:
        raise _failed(f"the token names more than {MAX_GROUPS} groups", "claims")
    return user_identity(user, tuple(dict.fromkeys(groups)))


class OidcExchange:
    """Ask for the token, verify it; ask the shell for fresh keys at most once."""

    def __init__(self, cache: KeyCache, client: ClientFacts) -> None:
        self._cache = cache
        self._client = client
        self._token: str | None = None
        self._fetched = False

    def begin(self) -> Step:
        if not self._client.tls:
            raise AuthFailed("OIDC sign-in needs TLS: connect with sslmode=require", "no_tls")
        return Step(send=(wire.AuthenticationCleartextPassword(),))

    def receive(self, message: wire.Message) -> Step:
        if not isinstance(message, wire.PasswordMessage):
            raise AuthFailed("expected a password message holding an ID token", "protocol")
        raw = message.password
        if len(raw) > MAX_TOKEN_BYTES:
            raise _failed("the token is too long", "token")
        try:
            self._token = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise _failed("the password is not a JSON Web Token", "token") from None
        if not self._token:
            raise _failed("no token was sent as the password", "token")
        if self._cache.stale(self._client.now):
            self._fetched = True
            return Step(fetch_keys=True)
        return self._verify()

    def resume(self) -> Step:
        return self._verify()

    def _verify(self) -> Step:
        assert self._token is not None
        keys = self._cache.keys
        if keys is None:
            raise AuthFailed(
                "OIDC authentication failed: the identity provider's keys are not available",
                "keys_unavailable",
                hint="try again later",
            )
        try:
            return Step(identity=verify_token(self._token, keys, self._cache.settings))
        except UnknownKey:
            if self._fetched:
                raise _failed("the token is signed by an unknown key", "unknown_key") from None
            self._fetched = True
            return Step(fetch_keys=True)


class OidcAuthenticator:
    """The OIDC method of a listener: settings and the shared key cache."""

    method = "oidc"
    requires_tls = True

    def __init__(self, settings: OidcSettings, cache: KeyCache | None = None) -> None:
        self.settings = settings
        self.cache = cache or KeyCache(settings)

    def exchange(self, client: ClientFacts) -> OidcExchange:
        return OidcExchange(self.cache, client)

    def describe(self) -> str:
        s = self.settings
        return (
            f"oidc (issuer {s.issuer}, audience {s.audience}, user claim {s.user_claim}, "
            f"groups claim {s.groups_claim})"
        )
