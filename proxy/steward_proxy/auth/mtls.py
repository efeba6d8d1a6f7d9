"""mTLS: the identity comes from the client certificate the TLS handshake verified.

The listener asks every client for a certificate and verifies it against
``--tls-client-ca`` during the handshake (an expired certificate, or one from
another CA, ends the handshake). :func:`certificate_identity` then reads the
verified certificate, as ``ssl`` reports it, by ``--tls-identity``:

- ``san-email``: the rfc822Name SAN, ``user:<email>``;
- ``san-uri``: the URI SAN; a SPIFFE ID ``spiffe://DOMAIN/ns/NS/sa/NAME``
  becomes ``system:serviceaccount:NS:NAME``, any other URI ``user:<uri>``;
- ``cn``: the subject's common name, ``user:<cn>``.

A certificate with none, or with more than one, of the chosen kind is refused
(28000): two names would make the subject ambiguous. The startup packet's
user name plays no part. A client that connects without TLS, or with TLS but
no certificate, is refused before anything else.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from steward_proxy.auth.base import AuthFailed, ClientFacts, Immediate, user_identity
from steward_proxy.policy import Identity

__all__ = ["IDENTITY_SOURCES", "CertificateAuthenticator", "certificate_identity", "spiffe_subject"]

IDENTITY_SOURCES = ("san-email", "san-uri", "cn")

# A Kubernetes namespace and service account name (DNS-1123 labels and subdomains).
_SPIFFE = re.compile(
    r"spiffe://[^/]+/ns/([a-z0-9]([-a-z0-9]*[a-z0-9])?)/sa/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)"
)


def spiffe_subject(uri: str) -> str | None:
    """``system:serviceaccount:NS:NAME`` for a SPIFFE ID of that shape, else None."""
    match = _SPIFFE.fullmatch(uri)
    if match is None:
        return None
    return f"system:serviceaccount:{match.group(1)}:{match.group(3)}"


def _names(certificate: Mapping[str, object], source: str) -> list[str]:
    if source == "cn":
        subject = certificate.get("subject") or ()
        return [
            value
            for rdn in subject  # type: ignore[union-attr]
            for key, value in rdn
            if key == "commonName"
        ]
    kind = "email" if source == "san-email" else "URI"
    sans = certificate.get("subjectAltName") or ()
    return [value for key, value in sans if key == kind]  # type: ignore[union-attr]


def certificate_identity(certificate: Mapping[str, object] | None, source: str) -> Identity:
    """The subject a verified client certificate names; AuthFailed (28000) otherwise."""
    if not certificate:
        raise AuthFailed(
            "a client certificate is required: connect with sslcert and sslkey",
            "no_certificate",
        )
    names = _names(certificate, source)
    if len(names) != 1:
        what = {"san-email": "e-mail SAN", "san-uri": "URI SAN", "cn": "common name"}[source]
        count = "no" if not names else "more than one"
        raise AuthFailed(f"the client certificate has {count} {what}", "certificate")
    name = names[0]
    if source == "san-uri":
        service_account = spiffe_subject(name)
        if service_account is not None:
            return Identity(service_account)
    return user_identity(name)


class CertificateAuthenticator:
    """The mTLS method of a listener."""

    method = "cert"
    requires_tls = True

    def __init__(self, source: str, ca_file: str) -> None:
        if source not in IDENTITY_SOURCES:
            raise ValueError(f"--tls-identity must be one of {', '.join(IDENTITY_SOURCES)}")
        self.source = source
        self.ca_file = ca_file

    def exchange(self, client: ClientFacts) -> Immediate:
        if not client.tls:
            raise AuthFailed(
                "this proxy accepts only TLS connections with a client certificate",
                "no_tls",
                hint="connect with sslmode=require, sslcert and sslkey",
            )
        return Immediate(certificate_identity(client.peer_certificate, self.source))

    def describe(self) -> str:
        return f"cert (client certificates from {self.ca_file}, identity from {self.source})"
