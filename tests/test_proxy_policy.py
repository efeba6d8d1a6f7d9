"""Policy enforcement at the wire: denied statements, ungoverned subjects, wrong databases."""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest
from psycopg import errors as pgerr

from conftest import Proxy, ProxyFactory, error_fields, raw_connect, recv_messages, startup_packet

pytestmark = pytest.mark.timeout(60)

POLICIES = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata:
  name: carol-locked-down
spec:
  subjects:
    - {kind: User, name: carol}
  defaultAction: deny
---
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata:
  name: dave-careful-writes
spec:
  subjects:
    - {kind: User, name: dave}
  defaultAction: allow
  guardrails:
    - name: no-deletes
      match: {statements: [DELETE]}
      action: deny
      message: deletes are not allowed here
---
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata:
  name: bob-allowed
spec:
  subjects:
    - {kind: User, name: bob}
  defaultAction: allow
"""


@pytest.fixture(scope="module")
def policy_proxy(module_proxy_factory: ProxyFactory) -> Proxy:
    return module_proxy_factory(POLICIES)


def test_default_deny_gives_42501_naming_policy_and_session_survives(
    policy_proxy: Proxy,
) -> None:
    with psycopg.connect(policy_proxy.dsn("carol"), autocommit=True) as conn:
        for _ in range(2):  # the second denial proves the session survived the first
            with pytest.raises(pgerr.InsufficientPrivilege) as info:
                conn.execute("SELECT 1")
            assert info.value.sqlstate == "42501"
            assert "carol-locked-down" in str(info.value)
        assert not conn.closed
    with psycopg.connect(policy_proxy.dsn("bob"), autocommit=True) as conn:
        assert conn.execute("SELECT 'bob ok'").fetchone() == ("bob ok",)


def test_guardrail_denial_then_allowed_statement_in_same_session(policy_proxy: Proxy) -> None:
    with psycopg.connect(policy_proxy.dsn("dave"), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE g (id int)")
        conn.execute("INSERT INTO g VALUES (1), (2)")
        with pytest.raises(pgerr.InsufficientPrivilege) as info:
            conn.execute("DELETE FROM g WHERE id = 1")
        assert "dave-careful-writes" in str(info.value)
        assert conn.execute("SELECT count(*) FROM g").fetchone() == (2,)


def test_denial_with_parameters_in_extended_protocol_psycopg(policy_proxy: Proxy) -> None:
    with psycopg.connect(policy_proxy.dsn("dave")) as conn:
        conn.execute("CREATE TEMP TABLE gp (id int)")
        with pytest.raises(pgerr.InsufficientPrivilege):
            conn.execute("DELETE FROM gp WHERE id = %s", (1,))
        conn.rollback()
        assert conn.execute("SELECT %s::int + 1", (41,)).fetchone() == (42,)


def test_denial_of_prepared_statement_asyncpg(policy_proxy: Proxy) -> None:
    async def scenario() -> object:
        conn = await asyncpg.connect(**policy_proxy.asyncpg_args("dave"))
        try:
            await conn.execute("CREATE TEMP TABLE ga (id int)")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as info:
                await conn.execute("DELETE FROM ga WHERE id = $1", 1)
            assert "dave-careful-writes" in str(info.value)
            return await conn.fetchval("SELECT $1::int * 2", 21)
        finally:
            await conn.close()

    assert asyncio.run(scenario()) == 42


def test_multi_statement_with_one_denied_part_is_denied_whole(policy_proxy: Proxy) -> None:
    with psycopg.connect(policy_proxy.dsn("dave"), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE gm (id int)")
        conn.execute("INSERT INTO gm VALUES (1)")
        with pytest.raises(pgerr.InsufficientPrivilege):
            conn.execute("SELECT 1; DELETE FROM gm")
        assert conn.execute("SELECT count(*) FROM gm").fetchone() == (1,)


def _login_error(proxy: Proxy, user: str, database: str) -> dict[str, str]:
    with raw_connect(proxy) as sock:
        sock.sendall(startup_packet(user, database))
        messages = recv_messages(sock, until=b"E")
    errors = [error_fields(payload) for kind, payload in messages if kind == b"E"]
    assert errors, f"expected an ErrorResponse at sign-in, got {messages!r}"
    return errors[0]


def test_ungoverned_user_is_refused_at_sign_in_with_28000(policy_proxy: Proxy) -> None:
    fields = _login_error(policy_proxy, "mallory", policy_proxy.dbname)
    assert fields.get("S") == "FATAL"
    assert fields.get("C") == "28000"
    assert "user:mallory" in fields.get("M", "")


def test_ungoverned_user_refused_via_asyncpg(policy_proxy: Proxy) -> None:
    async def scenario() -> None:
        await asyncpg.connect(**policy_proxy.asyncpg_args("mallory"))

    with pytest.raises(asyncpg.exceptions.InvalidAuthorizationSpecificationError) as info:
        asyncio.run(scenario())
    assert "user:mallory" in str(info.value)


def test_wrong_database_is_refused_with_3d000(policy_proxy: Proxy) -> None:
    fields = _login_error(policy_proxy, "bob", "some_other_db")
    assert fields.get("C") == "3D000"
    with psycopg.connect(policy_proxy.dsn("bob"), autocommit=True) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (policy_proxy.dbname,)


def test_refusals_leave_no_traceback_in_log(policy_proxy: Proxy) -> None:
    _login_error(policy_proxy, "nobody", policy_proxy.dbname)
    assert "Traceback" not in policy_proxy.log()


def test_empty_user_name_is_refused_with_28000(policy_proxy: Proxy) -> None:
    fields = _login_error(policy_proxy, "", policy_proxy.dbname)
    assert fields.get("C") == "28000", fields
    assert "Traceback" not in policy_proxy.log()
