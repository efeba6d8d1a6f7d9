"""The authentication methods as pure code: token checks, SCRAM against a users file,
certificate names, and which method a listener's flags choose."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest
import scramp

from steward_proxy import wire
from steward_proxy.auth.base import AuthFailed, ClientFacts, Exchange, Step
from steward_proxy.auth.methods import AuthConfigError, AuthFlags, choose_method, is_loopback
from steward_proxy.auth.mtls import certificate_identity, spiffe_subject
from steward_proxy.auth.oidc import (
    KeyCache,
    KeySet,
    KeySetError,
    OidcAuthenticator,
    OidcSettings,
    UnknownKey,
    verify_token,
)
from steward_proxy.auth.scram import (
    ScramAuthenticator,
    UserEntry,
    UsersFileError,
    Verifier,
    format_line,
    make_verifier,
    parse_users,
    upsert_line,
)
from steward_proxy.policy import Identity
from steward_proxy.sqlstate import INVALID_AUTHORIZATION, INVALID_PASSWORD

from authkit import (
    AUDIENCE,
    ISSUER,
    SigningKey,
    claims,
    hmac_with_public_key,
    tampered,
    unsigned_token,
)

SETTINGS = OidcSettings(issuer=ISSUER, audience=AUDIENCE)


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.rsa("rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey.ec("ec-1")


@pytest.fixture(scope="module")
def keys(rsa_key: SigningKey, ec_key: SigningKey) -> KeySet:
    return KeySet.from_json({"keys": [rsa_key.jwk(), ec_key.jwk()]})


# -- OIDC ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["rsa", "ec"], ids=["RS256 signs in", "ES256 signs in"])
def test_valid_token_gives_user_and_groups(
    which: str, rsa_key: SigningKey, ec_key: SigningKey, keys: KeySet
) -> None:
    key = rsa_key if which == "rsa" else ec_key
    token = key.sign(claims("alice@example.com", ["dba", "analysts", "dba"]))
    identity = verify_token(token, keys, SETTINGS)
    assert identity == Identity("user:alice@example.com", ("dba", "analysts"))


def forged(rsa_key: SigningKey, ec_key: SigningKey) -> dict[str, tuple[str, str]]:
    """Token -> the reason it must be refused for."""
    now = time.time()
    other = SigningKey.rsa("rsa-1")  # same key id, another key
    return {
        "expired": (rsa_key.sign(claims(lifetime=-120)), "expired"),
        "not yet valid": (rsa_key.sign(claims(not_before=now + 600)), "not_yet_valid"),
        "wrong audience": (rsa_key.sign(claims(audience="someone-else")), "audience"),
        "wrong issuer": (rsa_key.sign(claims(issuer=ISSUER + "x")), "issuer"),
        "issuer prefix": (rsa_key.sign(claims(issuer=ISSUER[:-2])), "issuer"),
        "alg none": (unsigned_token(claims()), "algorithm"),
        "HS256 with the public key": (hmac_with_public_key(rsa_key, claims()), "algorithm"),
        "tampered payload": (
            tampered(rsa_key.sign(claims()), email="mallory@example.com"),
            "signature",
        ),
        "same kid, another key": (other.sign(claims()), "signature"),
        "ES256 header on an RSA key": (
            ec_key.sign(claims(), kid="rsa-1"),
            "algorithm",
        ),
        "no exp": (rsa_key.sign({k: v for k, v in claims().items() if k != "exp"}), "claims"),
        "no aud": (rsa_key.sign({k: v for k, v in claims().items() if k != "aud"}), "claims"),
        "no email": (rsa_key.sign(claims(email="")), "claims"),
        "groups not a list": (rsa_key.sign(claims(groups=[1, 2])), "claims"),  # type: ignore[list-item]
        "control character in email": (rsa_key.sign(claims("a\nb@x")), "user_name"),
        "very long email": (rsa_key.sign(claims("a" * 300 + "@x")), "user_name"),
        "very long group": (rsa_key.sign(claims(groups=["g" * 300])), "claims"),
        "not a token": ("hunter2", "token"),
    }


CASES = [
    "expired",
    "not yet valid",
    "wrong audience",
    "wrong issuer",
    "issuer prefix",
    "alg none",
    "HS256 with the public key",
    "tampered payload",
    "same kid, another key",
    "ES256 header on an RSA key",
    "no exp",
    "no aud",
    "no email",
    "groups not a list",
    "control character in email",
    "very long email",
    "very long group",
    "not a token",
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c} is refused" for c in CASES])
def test_bad_tokens_are_refused_with_28000(
    case: str, rsa_key: SigningKey, ec_key: SigningKey, keys: KeySet
) -> None:
    token, reason = forged(rsa_key, ec_key)[case]
    with pytest.raises(AuthFailed) as failure:
        verify_token(token, keys, SETTINGS)
    assert failure.value.sqlstate == INVALID_AUTHORIZATION
    assert failure.value.reason == reason
    assert token not in failure.value.message


def test_unknown_key_id_asks_for_keys(keys: KeySet) -> None:
    stranger = SigningKey.rsa("rotated-2")
    with pytest.raises(UnknownKey):
        verify_token(stranger.sign(claims()), keys, SETTINGS)


def test_leeway_allows_small_skew(rsa_key: SigningKey, keys: KeySet) -> None:
    token = rsa_key.sign(claims(lifetime=-10))
    assert verify_token(token, keys, SETTINGS).subject == "user:alice@example.com"
    strict = OidcSettings(issuer=ISSUER, audience=AUDIENCE, leeway=0)
    with pytest.raises(AuthFailed, match="expired"):
        verify_token(token, keys, strict)


def test_nested_claims_and_audience_lists(rsa_key: SigningKey, keys: KeySet) -> None:
    settings = OidcSettings(
        issuer=ISSUER,
        audience=AUDIENCE,
        user_claim="preferred_username",
        groups_claim="realm_access.roles",
    )
    token = rsa_key.sign(
        claims(
            audience=[AUDIENCE, "other"],  # type: ignore[arg-type]
            preferred_username="bob",
            realm_access={"roles": ["dba"]},
        )
    )
    assert verify_token(token, keys, settings) == Identity("user:bob", ("dba",))


def test_key_set_skips_what_cannot_sign(rsa_key: SigningKey) -> None:
    document = {
        "keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**rsa_key.jwk(), "kid": "enc", "use": "enc"},
            {"kty": "RSA", "kid": "broken"},
            rsa_key.jwk(),
        ]
    }
    assert [k.key_id for k in KeySet.from_json(document).keys] == ["rsa-1"]
    with pytest.raises(KeySetError):
        KeySet.from_json({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
    with pytest.raises(KeySetError):
        KeySet.from_json(b"not json")


def run_oidc(
    authenticator: OidcAuthenticator, token: str, *, now: float, tls: bool = True
) -> list[str]:
    """Drive one exchange as the shell does; the steps it took, by name."""
    exchange = authenticator.exchange(ClientFacts("alice", tls=tls, now=now))
    steps = []
    step = exchange.begin()
    assert step.send == (wire.AuthenticationCleartextPassword(),)
    step = exchange.receive(wire.PasswordMessage(token.encode()))
    while step.identity is None:
        assert step.fetch_keys
        steps.append("fetch")
        step = exchange.resume()
    steps.append(step.identity.subject)
    return steps


def test_exchange_fetches_a_rotated_key_once(rsa_key: SigningKey, keys: KeySet) -> None:
    authenticator = OidcAuthenticator(SETTINGS)
    authenticator.cache.store(keys, now=0)
    assert run_oidc(authenticator, rsa_key.sign(claims()), now=1) == ["user:alice@example.com"]
    rotated = SigningKey.rsa("rotated-2")
    token = rotated.sign(claims())
    # The shell fetches; here the provider still serves the old keys: refused.
    with pytest.raises(AuthFailed) as failure:
        run_oidc(authenticator, token, now=2)
    assert failure.value.reason == "unknown_key"
    authenticator.cache.store(KeySet.from_json({"keys": [rotated.jwk()]}), now=3)
    assert run_oidc(authenticator, token, now=4) == ["user:alice@example.com"]


def test_key_cache_fetches_at_most_once_per_interval() -> None:
    cache = KeyCache(OidcSettings(ISSUER, AUDIENCE, refresh_interval=60, max_age=3600))
    assert cache.stale(0) and cache.may_fetch(0)
    cache.attempting(100)
    assert not cache.may_fetch(104.9)  # no keys yet: try again after a few seconds
    assert cache.may_fetch(105)
    cache.store(KeySet.from_json({"keys": [SigningKey.ec("k").jwk()]}), now=100)
    assert not cache.may_fetch(159.9)
    assert cache.may_fetch(160)


def test_stale_keys_are_fetched_before_use(rsa_key: SigningKey, keys: KeySet) -> None:
    authenticator = OidcAuthenticator(OidcSettings(ISSUER, AUDIENCE, max_age=100))
    authenticator.cache.store(keys, now=0)
    assert run_oidc(authenticator, rsa_key.sign(claims()), now=101) == [
        "fetch",
        "user:alice@example.com",
    ]


def test_oidc_without_tls_is_refused_before_the_password_is_asked(rsa_key: SigningKey) -> None:
    exchange = OidcAuthenticator(SETTINGS).exchange(ClientFacts("alice", tls=False))
    with pytest.raises(AuthFailed) as failure:
        exchange.begin()
    assert failure.value.reason == "no_tls"


def test_no_keys_yet_is_a_clear_refusal(rsa_key: SigningKey) -> None:
    authenticator = OidcAuthenticator(SETTINGS)
    with pytest.raises(AuthFailed) as failure:
        run_oidc(authenticator, rsa_key.sign(claims()), now=0)
    assert failure.value.reason == "keys_unavailable"


# -- SCRAM ---------------------------------------------------------------------------


def test_verifier_round_trips_in_postgresql_format() -> None:
    verifier = make_verifier("s3cret")
    text = str(verifier)
    assert text.startswith("SCRAM-SHA-256$4096:")
    assert "s3cret" not in text
    assert Verifier.parse(text) == verifier


def test_verifier_is_what_scramp_computes() -> None:
    salt, stored, server, count = scramp.ScramMechanism().make_auth_info(
        "pässword", iteration_count=5000, salt=b"0123456789abcdef"
    )
    assert make_verifier("pässword", 5000, salt=salt) == Verifier(count, salt, stored, server)


@pytest.mark.parametrize(
    "line",
    [
        '"alice" "s3cret"',
        '"alice" "md5d7d8b1b9c4d1e3e6f2a5b4c3d2e1f0a9"',
        '"alice" "SCRAM-SHA-256$100:c2FsdA==$AAAA:BBBB"',
        '"alice"',
        'alice "x"',
        '"alice" "unterminated',
    ],
    ids=[
        "plain password",
        "md5 hash",
        "bad verifier",
        "one field",
        "unquoted name",
        "open quote",
    ],
)
def test_users_file_refuses_lines_it_cannot_use(line: str) -> None:
    with pytest.raises(UsersFileError, match="users file line 2"):
        parse_users("# comment\n" + line + "\n")


def test_users_file_lines_groups_and_quotes() -> None:
    alice = UserEntry("alice", make_verifier("a"), ("dba", "analysts"))
    odd = UserEntry('o"dd', make_verifier("b"))
    text = "; PgBouncer comment\n\n" + format_line(alice) + "\n" + format_line(odd) + "\n"
    users = parse_users(text)
    assert users == {"alice": alice, 'o"dd': odd}
    replaced = UserEntry("alice", make_verifier("new"), ())
    updated = parse_users(upsert_line(text, replaced))
    assert updated["alice"] == replaced and updated['o"dd'] == odd
    assert upsert_line(text, replaced).startswith("; PgBouncer comment\n\n")


def scram_sign_in(authenticator: ScramAuthenticator, user: str, password: str) -> Identity:
    """A full SCRAM exchange with scramp's client against the authenticator."""
    exchange = authenticator.exchange(ClientFacts(user))
    (request,) = exchange.begin().send
    assert request == wire.AuthenticationSASL(("SCRAM-SHA-256",))
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    step = exchange.receive(
        wire.SASLInitialResponse("SCRAM-SHA-256", client.get_client_first().encode())
    )
    (challenge,) = step.send
    assert isinstance(challenge, wire.AuthenticationSASLContinue)
    client.set_server_first(challenge.data.decode())
    step = exchange.receive(wire.SASLResponse(client.get_client_final().encode()))
    (final,) = step.send
    assert isinstance(final, wire.AuthenticationSASLFinal)
    client.set_server_final(final.data.decode())  # the server proved it knows the verifier
    assert step.identity is not None
    return step.identity


def test_scram_right_password_signs_in_with_groups() -> None:
    authenticator = ScramAuthenticator(
        {"svc": UserEntry("svc", make_verifier("right"), ("reporting",))}
    )
    assert scram_sign_in(authenticator, "svc", "right") == Identity("user:svc", ("reporting",))


@pytest.mark.parametrize("user", ["svc", "nobody"], ids=["wrong password", "unknown user"])
def test_scram_wrong_password_and_unknown_user_look_the_same(user: str) -> None:
    authenticator = ScramAuthenticator({"svc": UserEntry("svc", make_verifier("right"))})
    with pytest.raises(AuthFailed) as failure:
        scram_sign_in(authenticator, user, "wrong")
    assert failure.value.sqlstate == INVALID_PASSWORD
    assert failure.value.message == f'password authentication failed for user "{user}"'


@pytest.mark.parametrize(
    "messages",
    [
        [wire.SASLInitialResponse("SCRAM-SHA-1", b"n,,n=,r=abc")],
        [wire.SASLInitialResponse("SCRAM-SHA-256", b"\xff garbage")],
        [wire.SASLInitialResponse("SCRAM-SHA-256", None)],
        [wire.SASLInitialResponse("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc")],
        [wire.SASLInitialResponse("SCRAM-SHA-256", b"n,,r=abc")],
        [wire.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=")],
        [wire.SASLResponse(b"c=biws,r=abc,p=AAAA")],
        [
            wire.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
            wire.SASLResponse(b"c=biws,r=abc-not-the-nonce,p=AAAA"),
        ],
        [
            wire.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
            wire.SASLResponse(b"c=biws,r=abc"),
        ],
    ],
    ids=[
        "another mechanism",
        "not UTF-8",
        "no initial data",
        "channel binding asked for",
        "no user attribute",
        "empty nonce",
        "final before first",
        "nonce not the server's",
        "no proof",
    ],
)
def test_scram_refuses_malformed_exchanges(messages: list[wire.Message]) -> None:
    authenticator = ScramAuthenticator({"svc": UserEntry("svc", make_verifier("right"))})
    exchange = authenticator.exchange(ClientFacts("svc"))
    exchange.begin()
    with pytest.raises(AuthFailed) as failure:
        for message in messages:
            exchange.receive(message)
    assert failure.value.reason == "protocol"


def libpq_like_sign_in(exchange: Exchange, password: str, gs2: str) -> Step:
    """A SCRAM client written from RFC 5802 as libpq speaks it: ``n=`` and a gs2 flag."""
    exchange.begin()
    bare = "n=,r=clientnonce123"
    step = exchange.receive(wire.SASLInitialResponse("SCRAM-SHA-256", f"{gs2}{bare}".encode()))
    server_first = step.send[0].data.decode()  # type: ignore[attr-defined]
    fields = dict(part.split("=", 1) for part in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c={base64.b64encode(gs2.encode()).decode()},r={fields['r']}"
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{without_proof},p={base64.b64encode(proof).decode()}"
    return exchange.receive(wire.SASLResponse(final.encode()))


@pytest.mark.parametrize("gs2", ["n,,", "y,,"], ids=["no channel binding", "client could bind"])
def test_scram_with_libpq_s_empty_user_name(gs2: str) -> None:
    """libpq sends ``n=`` (the name is the startup packet's), and ``y`` over TLS."""
    authenticator = ScramAuthenticator({"svc": UserEntry("svc", make_verifier("right"))})
    step = libpq_like_sign_in(authenticator.exchange(ClientFacts("svc")), "right", gs2)
    assert step.identity == Identity("user:svc")
    with pytest.raises(AuthFailed) as failure:
        libpq_like_sign_in(authenticator.exchange(ClientFacts("svc")), "wrong", gs2)
    assert failure.value.sqlstate == INVALID_PASSWORD


# -- mTLS ----------------------------------------------------------------------------


def cert(**names: tuple[tuple[str, str], ...]) -> dict[str, object]:
    return {"subject": ((("commonName", "client-cn"),),), **names}


@pytest.mark.parametrize(
    ("certificate", "source", "subject"),
    [
        (cert(subjectAltName=(("email", "ana@example.com"),)), "san-email", "user:ana@example.com"),
        (
            cert(subjectAltName=(("URI", "spiffe://cluster.local/ns/shop/sa/orders"),)),
            "san-uri",
            "system:serviceaccount:shop:orders",
        ),
        (
            cert(subjectAltName=(("URI", "spiffe://cluster.local/workload/x"),)),
            "san-uri",
            "user:spiffe://cluster.local/workload/x",
        ),
        (cert(), "cn", "user:client-cn"),
    ],
    ids=["email SAN", "SPIFFE ID", "other URI", "common name"],
)
def test_certificate_names_the_subject(
    certificate: dict[str, object], source: str, subject: str
) -> None:
    assert certificate_identity(certificate, source).subject == subject


@pytest.mark.parametrize(
    ("certificate", "reason"),
    [
        (None, "no_certificate"),
        (cert(), "certificate"),
        (
            cert(subjectAltName=(("email", "a@example.com"), ("email", "b@example.com"))),
            "certificate",
        ),
    ],
    ids=["no certificate", "no email SAN", "two email SANs"],
)
def test_certificate_without_one_clear_name_is_refused(
    certificate: dict[str, object] | None, reason: str
) -> None:
    with pytest.raises(AuthFailed) as failure:
        certificate_identity(certificate, "san-email")
    assert failure.value.reason == reason


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://td/ns/shop/sa/orders/extra",
        "spiffe://td/ns/Shop/sa/orders",
        "spiffe://td/ns//sa/orders",
        "https://td/ns/shop/sa/orders",
    ],
)
def test_only_spiffe_ids_of_the_kubernetes_shape_are_service_accounts(uri: str) -> None:
    assert spiffe_subject(uri) is None


# -- which method ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("db.example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_trust_only_on_loopback_unless_insecure() -> None:
    assert choose_method(AuthFlags("127.0.0.1")) == "trust"
    with pytest.raises(AuthConfigError) as refused:
        choose_method(AuthFlags("0.0.0.0"))
    for flag in ("--oidc-issuer", "--tls-client-ca", "--users-file", "--insecure-trust"):
        assert flag in str(refused.value)
    assert choose_method(AuthFlags("0.0.0.0", insecure_trust=True)) == "trust"


def test_one_method_per_listener_and_tls_where_needed() -> None:
    assert choose_method(AuthFlags("0.0.0.0", users_file="u")) == "scram-sha-256"
    assert choose_method(AuthFlags("0.0.0.0", identity="user:x")) == "identity"
    assert choose_method(AuthFlags("0.0.0.0", oidc_issuer="i", tls_cert="c")) == "oidc"
    with pytest.raises(AuthConfigError, match="--oidc-issuer and --users-file"):
        choose_method(AuthFlags("0.0.0.0", oidc_issuer="i", users_file="u", tls_cert="c"))
    for flags in (AuthFlags("::1", oidc_issuer="i"), AuthFlags("::1", tls_client_ca="ca")):
        with pytest.raises(AuthConfigError, match="--tls-cert"):
            choose_method(flags)
