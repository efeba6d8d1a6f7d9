"""mTLS through the live proxy: the subject comes from a client certificate the
handshake verified against ``--tls-client-ca``."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import asyncpg
import psycopg
import pytest

from steward_testing.certs import CertificateAuthority

from authkit import issue_client_cert
from conftest import Proxy, ProxyFactory, server_certificate, wait_for

pytestmark = pytest.mark.timeout(120)

HANDSHAKE_ENDED = r"SSL error|server closed the connection"

POLICY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: people-and-workloads}
spec:
  subjects:
    - {kind: User, name: ana@example.com}
    - {kind: ServiceAccount, namespace: shop, name: orders}
  defaultAction: allow
"""


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("clients")


def write_pair(directory: Path, name: str, pair: tuple[bytes, bytes]) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(pair[0])
    key.write_bytes(pair[1])
    key.chmod(0o600)  # libpq refuses a key others can read
    return cert, key


def mtls_proxy(
    start_proxy: ProxyFactory, ca: CertificateAuthority, tmp_path: Path, source: str
) -> Proxy:
    ca_file = tmp_path / "clients-ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    cert, key = server_certificate(tmp_path)
    return start_proxy(
        POLICY,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--tls-client-ca",
        str(ca_file),
        "--tls-identity",
        source,
    )


def connect(proxy: Proxy, cert: Path | None = None, key: Path | None = None) -> psycopg.Connection:
    extra = f"&sslcert={cert}&sslkey={key}" if cert else "&sslcert=/nonexistent"
    return psycopg.connect(proxy.dsn("whoever") + "?sslmode=require" + extra, autocommit=True)


def test_certificate_signs_in_as_its_email_san(
    start_proxy: ProxyFactory, ca: CertificateAuthority, tmp_path: Path
) -> None:
    proxy = mtls_proxy(start_proxy, ca, tmp_path, "san-email")
    cert, key = write_pair(tmp_path, "ana", issue_client_cert(ca, emails=("ana@example.com",)))
    with connect(proxy, cert, key) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    (start,) = [r for r in proxy.audit_records() if r["type"] == "session.start"]
    assert (start["identity"], start["command"]) == ("user:ana@example.com", "cert")


def test_spiffe_id_signs_in_as_its_service_account(
    start_proxy: ProxyFactory, ca: CertificateAuthority, tmp_path: Path
) -> None:
    proxy = mtls_proxy(start_proxy, ca, tmp_path, "san-uri")
    spiffe = "spiffe://cluster.local/ns/shop/sa/orders"
    cert, key = write_pair(tmp_path, "orders", issue_client_cert(ca, uris=(spiffe,)))
    with connect(proxy, cert, key) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    (start,) = [r for r in proxy.audit_records() if r["type"] == "session.start"]
    assert start["identity"] == "system:serviceaccount:shop:orders"


def test_missing_expired_and_foreign_certificates_are_refused(
    start_proxy: ProxyFactory, ca: CertificateAuthority, tmp_path: Path
) -> None:
    proxy = mtls_proxy(start_proxy, ca, tmp_path, "san-email")
    with pytest.raises(psycopg.OperationalError, match="a client certificate is required"):
        connect(proxy)
    expired = write_pair(
        tmp_path, "expired", issue_client_cert(ca, emails=("ana@example.com",), expired=True)
    )
    # The handshake ends (asyncio does not flush OpenSSL's alert): the client
    # sees the connection end, the proxy's log says why.
    with pytest.raises(psycopg.OperationalError, match=HANDSHAKE_ENDED):
        connect(proxy, *expired)
    expired_logged = "certificate verify failed: certificate has expired"
    wait_for(lambda: expired_logged in proxy.log(), "the reason in the log")  # after the close
    stranger_ca = CertificateAuthority.create("someone-else")
    foreign = write_pair(
        tmp_path, "foreign", issue_client_cert(stranger_ca, emails=("ana@example.com",))
    )
    with pytest.raises(psycopg.OperationalError, match=HANDSHAKE_ENDED):
        connect(proxy, *foreign)
    foreign_logged = "certificate verify failed: unable to get local issuer certificate"
    wait_for(lambda: foreign_logged in proxy.log(), "the reason in the log")
    with pytest.raises(psycopg.OperationalError, match="only TLS connections"):
        psycopg.connect(proxy.dsn("ana") + "?sslmode=disable")
    unnamed = write_pair(tmp_path, "unnamed", issue_client_cert(ca, common_name="ana"))
    with pytest.raises(psycopg.OperationalError, match="has no e-mail SAN"):
        connect(proxy, *unnamed)
    # The SQLSTATE is 28000 (asyncpg reports it; psycopg's connection errors do not).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    async def no_certificate() -> None:
        await asyncpg.connect(**proxy.asyncpg_args("ana"), ssl=context)

    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        asyncio.run(no_certificate())
    # The proxy keeps serving.
    good = write_pair(tmp_path, "good", issue_client_cert(ca, emails=("ana@example.com",)))
    with connect(proxy, *good) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert "Traceback" not in proxy.log()


def test_client_ca_needs_tls_to_start(
    start_proxy: ProxyFactory, ca: CertificateAuthority, tmp_path: Path
) -> None:
    ca_file = tmp_path / "clients-ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    proxy = start_proxy(POLICY, "--tls-client-ca", str(ca_file), wait_ready=False)
    assert proxy.process.wait(timeout=60) == 2
    assert "--tls-client-ca needs TLS toward clients" in proxy.log()
    start_proxy.proxies.remove(proxy)
