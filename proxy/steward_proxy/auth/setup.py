"""From ``steward proxy``'s flags to the listener's authenticator (reads the files it names).

:func:`build_authenticator` checks the flags with
:func:`~steward_proxy.auth.methods.choose_method`, reads the users file, and
sets up the OIDC key cache and its :class:`~steward_proxy.auth.jwks.JwksSource`.
Any problem raises :class:`~steward_proxy.auth.methods.AuthConfigError` with a
message for the operator; the proxy then refuses to start.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from steward_proxy.auth.base import Authenticator
from steward_proxy.auth.jwks import JwksSource
from steward_proxy.auth.methods import (
    AuthConfigError,
    AuthFlags,
    FixedIdentity,
    Trust,
    choose_method,
    is_loopback,
)
from steward_proxy.auth.mtls import IDENTITY_SOURCES, CertificateAuthenticator
from steward_proxy.auth.oidc import OidcAuthenticator, OidcSettings
from steward_proxy.auth.scram import ScramAuthenticator, UsersFileError, parse_users
from steward_proxy.policy import Identity


@dataclass
class AuthSetup:
    authenticator: Authenticator
    keys: JwksSource | None = None
    """Where OIDC keys come from (oidc only)."""
    warning: str | None = None
    """Logged at start: trust, or a fixed identity on an open address."""


def read_users_file(path: str) -> ScramAuthenticator:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthConfigError(f"--users-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise AuthConfigError(f"--users-file {path}: not UTF-8") from None
    try:
        users = parse_users(text, origin=path)
    except UsersFileError as exc:
        raise AuthConfigError(f"--users-file {exc}") from None
    return ScramAuthenticator(users, origin=path)


def build_authenticator(args: argparse.Namespace) -> AuthSetup:
    """The authenticator the flags describe; AuthConfigError when they do not make one."""
    flags = AuthFlags(
        listen_host=args.listen[0],
        oidc_issuer=args.oidc_issuer,
        tls_client_ca=args.tls_client_ca,
        users_file=args.users_file,
        identity=args.identity,
        tls_cert=args.tls_cert,
        insecure_trust=args.insecure_trust,
    )
    method = choose_method(flags)
    if method != "oidc" and args.oidc_audience:
        raise AuthConfigError("--oidc-audience needs --oidc-issuer")
    if method == "oidc":
        if not args.oidc_audience:
            raise AuthConfigError("--oidc-issuer needs --oidc-audience (the client id tokens name)")
        settings = OidcSettings(
            issuer=args.oidc_issuer,
            audience=args.oidc_audience,
            user_claim=args.oidc_user_claim,
            groups_claim=args.oidc_groups_claim,
            leeway=args.oidc_leeway,
            refresh_interval=args.oidc_jwks_refresh,
            max_age=args.oidc_jwks_max_age,
        )
        authenticator = OidcAuthenticator(settings)
        try:
            keys = JwksSource(authenticator.cache, args.oidc_jwks, args.oidc_issuer)
        except ValueError as exc:
            raise AuthConfigError(f"--oidc-jwks {exc}") from None
        return AuthSetup(authenticator, keys)
    if method == "cert":
        if not Path(args.tls_client_ca).is_file():
            raise AuthConfigError(f"--tls-client-ca {args.tls_client_ca}: no such file")
        return AuthSetup(CertificateAuthenticator(args.tls_identity, args.tls_client_ca))
    if method == "scram-sha-256":
        return AuthSetup(read_users_file(args.users_file))
    if method == "identity":
        try:
            identity = Identity(args.identity, tuple(args.identity_group))
        except ValueError as exc:
            raise AuthConfigError(f"--identity: {exc}") from None
        warning = None
        if not is_loopback(args.listen[0]):
            warning = (
                f"every client that reaches --listen {args.listen[0]} signs in as "
                f"{identity.subject} (--identity)"
            )
        return AuthSetup(FixedIdentity(identity), warning=warning)
    return AuthSetup(
        Trust(),
        warning="no client authentication: the user name each client sends is believed "
        "(fine for development on loopback; use --oidc-issuer, --tls-client-ca or "
        "--users-file elsewhere)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The client authentication flags of ``steward proxy``."""
    group = parser.add_argument_group(
        "client authentication",
        "One method per listener. Without any, the user name clients send is believed: "
        "allowed only on a loopback --listen address, or with --insecure-trust.",
    )
    group.add_argument(
        "--oidc-issuer",
        metavar="URL",
        help="authenticate people by OIDC ID token, sent as the password over TLS; "
        "tokens must come from this issuer (exact match)",
    )
    group.add_argument(
        "--oidc-audience", metavar="CLIENT_ID", help="the audience (aud) tokens must name"
    )
    group.add_argument(
        "--oidc-jwks",
        metavar="URL|FILE",
        help="the issuer's JSON Web Key Set (https://, or http:// on loopback, or a file); "
        "default: jwks_uri from the issuer's /.well-known/openid-configuration",
    )
    group.add_argument(
        "--oidc-user-claim", default="email", metavar="CLAIM", help="claim naming the user"
    )
    group.add_argument(
        "--oidc-groups-claim", default="groups", metavar="CLAIM", help="claim listing groups"
    )
    group.add_argument(
        "--oidc-leeway",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="clock skew allowed on exp, nbf and iat",
    )
    group.add_argument(
        "--oidc-jwks-refresh",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a token with an unknown key id fetches the key set again at most this often",
    )
    group.add_argument(
        "--oidc-jwks-max-age",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="a key set older than this is fetched again before use",
    )
    group.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="authenticate clients by certificate issued by this CA (needs --tls-cert)",
    )
    group.add_argument(
        "--tls-identity",
        choices=IDENTITY_SOURCES,
        default="san-email",
        help="where the subject comes from in a client certificate; a SPIFFE ID "
        "(spiffe://DOMAIN/ns/NS/sa/NAME) in a URI SAN is system:serviceaccount:NS:NAME",
    )
    group.add_argument(
        "--users-file",
        metavar="FILE",
        help='authenticate by SCRAM-SHA-256 against this file ("NAME" "VERIFIER" ["GROUPS"] '
        "per line, PgBouncer's auth_file format; write entries with `steward users add`)",
    )
    group.add_argument(
        "--insecure-trust",
        action="store_true",
        help="believe the user name clients send even on a non-loopback address",
    )
