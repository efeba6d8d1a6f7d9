"""The guardrail corpus: ``steward policy explain`` and the live proxy decide alike.

Every case of ``guardrail_corpus`` is judged by the CLI (``steward policy
explain``, through its entry point) and run through one proxy by four clients:
psql (one script, simple protocol, several statements in one string joined
with ``\\;``), psycopg with the simple and with the extended protocol, and
asyncpg (extended protocol). Each statement runs in a transaction that is
rolled back, so the corpus leaves the database as it found it; the last test
checks that it did.

A case the policy refuses must be refused by the proxy for every client, with
SQLSTATE 42501 and a message naming the rule; a case it allows must run (an
allowed string of several statements is refused by PostgreSQL itself in the
extended protocol, which is not Steward's doing).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from guardrail_corpus import CASES, FINGERPRINT_QUERY, POLICY, SETUP, SUBJECT, TEARDOWN, Case

from steward_proxy import cli
from steward_proxy.sql import split_statements
from steward_testing.postgres import LocalPostgres

from conftest import DEFAULT_UPSTREAM_USER, Proxy, ProxyFactory

pytestmark = pytest.mark.timeout(300)

Outcome = tuple[str, ...]  # ("ok",) | ("refused", message) | ("error", sqlstate, message)
CLIENTS = ("psql", "psycopg simple", "psycopg extended", "asyncpg")
EXTENDED = ("psycopg extended", "asyncpg")


def classify(sqlstate: str | None, message: str) -> Outcome:
    if sqlstate == "42501" and " by policy " in message:
        return ("refused", message)
    return ("error", str(sqlstate), message)


def is_multi(case: Case) -> bool:
    return len(split_statements(case.sql)) > 1


# ------------------------------------------------------------------- the clients


def run_psql(proxy: Proxy) -> dict[int, Outcome]:
    """All cases in one psql script: each in BEGIN ... ROLLBACK, outcome echoed after it."""
    lines = []
    for i, case in enumerate(CASES):
        parts = split_statements(case.sql) if is_multi(case) else [case.sql]
        lines += [
            "BEGIN;",
            "\n\\;\n".join(parts),
            ";",
            f"\\echo @@ {i} :ERROR :SQLSTATE",
            "\\if :ERROR",
            f"\\echo @@message {i} :LAST_ERROR_MESSAGE",
            "\\endif",
            "ROLLBACK;",
        ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=0", "-d", proxy.dsn(), "-f", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    states: dict[int, tuple[bool, str]] = {}
    messages: dict[int, str] = {}
    for line in result.stdout.splitlines():
        if line.startswith("@@ "):
            _, index, error, sqlstate = line.split(" ", 3)
            states[int(index)] = (error == "true", sqlstate)
        elif line.startswith("@@message "):
            _, index, message = line.split(" ", 2)
            messages[int(index)] = message
    out = {}
    for i in range(len(CASES)):
        failed, sqlstate = states[i]
        out[i] = classify(sqlstate, messages[i]) if failed else ("ok",)
    return out


def run_psycopg(proxy: Proxy, *, extended: bool) -> dict[int, Outcome]:
    out: dict[int, Outcome] = {}
    with psycopg.connect(proxy.dsn()) as conn:
        for i, case in enumerate(CASES):
            try:
                with conn.cursor(binary=extended) as cursor:
                    if case.copy_stdio:
                        with cursor.copy(case.sql) as copy:
                            for _ in copy:
                                pass
                    else:
                        # No parameters: a text cursor sends a Query message, a binary
                        # one Parse/Bind/Execute.
                        cursor.execute(case.sql)
                out[i] = ("ok",)
            except psycopg.Error as exc:
                out[i] = classify(exc.sqlstate, exc.diag.message_primary or str(exc))
            finally:
                conn.rollback()
    return out


def run_asyncpg(proxy: Proxy) -> dict[int, Outcome]:
    async def scenario() -> dict[int, Outcome]:
        out: dict[int, Outcome] = {}
        conn = await asyncpg.connect(**proxy.asyncpg_args(), statement_cache_size=0)
        try:
            for i, case in enumerate(CASES):
                if case.copy_stdio and not case.refused:
                    continue  # asyncpg runs no COPY statement of its own
                await conn.execute("BEGIN")
                try:
                    await conn.fetch(case.sql)  # always the extended protocol
                    out[i] = ("ok",)
                except asyncpg.PostgresError as exc:
                    out[i] = classify(exc.sqlstate, exc.args[0] if exc.args else str(exc))
                finally:
                    await conn.execute("ROLLBACK")
        finally:
            await conn.close()
        return out

    return asyncio.run(scenario())


def explain(policy: Path, sql: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["policy", "explain", "--policy", str(policy), "--as", SUBJECT, sql])
    assert code == 0
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


# ------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus_db(pg: LocalPostgres) -> Iterator[str]:
    """The corpus's objects, owned by the proxy's upstream role; yields the fingerprint."""
    pg.execute(TEARDOWN)
    pg.execute(f'SET ROLE "{DEFAULT_UPSTREAM_USER}";\n{SETUP}')
    try:
        yield pg.execute(FINGERPRINT_QUERY)
    finally:
        pg.execute(TEARDOWN)


@pytest.fixture(scope="module")
def guard_proxy(module_proxy_factory: ProxyFactory, corpus_db: str) -> Proxy:
    return module_proxy_factory(POLICY)


@pytest.fixture(scope="module")
def outcomes(guard_proxy: Proxy) -> dict[str, dict[int, Outcome]]:
    return {
        "psql": run_psql(guard_proxy),
        "psycopg simple": run_psycopg(guard_proxy, extended=False),
        "psycopg extended": run_psycopg(guard_proxy, extended=True),
        "asyncpg": run_asyncpg(guard_proxy),
    }


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("guardrails") / "policy.yaml"
    path.write_text(POLICY)
    return path


# ---------------------------------------------------------------------- tests


def test_the_corpus_is_large_and_covers_every_decision() -> None:
    assert len(CASES) >= 150
    assert {c.decision for c in CASES} == {"allow", "deny", "review", "log"}
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c.decision}: {c.name}" for c in CASES])
def test_explain_and_every_client_agree(
    index: int, policy_file: Path, outcomes: dict[str, dict[int, Outcome]]
) -> None:
    case = CASES[index]
    result = explain(policy_file, case.sql)
    assert (result["decision"], result["rule"]) == (case.decision, case.rule), result["message"]
    for client in CLIENTS:
        outcome = outcomes[client].get(index)
        if outcome is None:  # asyncpg and an allowed COPY to the client
            continue
        if case.refused:
            assert outcome[0] == "refused", (client, outcome)
            assert "shop/guardrails" in outcome[1], (client, outcome)
            assert (case.rule or "defaultAction") in outcome[1], (client, outcome)
        elif client in EXTENDED and is_multi(case):
            # PostgreSQL refuses several statements in one Parse; Steward let it pass.
            assert outcome[:2] == ("error", "42601"), (client, outcome)
        else:
            assert outcome == ("ok",), (client, outcome)


def test_logged_statements_are_recorded_as_logged(
    guard_proxy: Proxy, policy_file: Path, outcomes: dict[str, dict[int, Outcome]]
) -> None:
    records = [r for r in guard_proxy.audit_records() if r["type"] == "statement"]
    for case in CASES:
        if case.decision != "log" or is_multi(case):
            continue
        (statement,) = explain(policy_file, case.sql)["statements"]
        decisions = {r["decision"] for r in records if r["statement"] == statement["statement"]}
        assert decisions == {"log"}, case.name
        rules = {r["rule"] for r in records if r["statement"] == statement["statement"]}
        assert rules == {"audit-secrets"}


def test_a_do_block_is_recorded_with_its_body(
    guard_proxy: Proxy, outcomes: dict[str, dict[int, Outcome]]
) -> None:
    statements = {r["statement"] for r in guard_proxy.audit_records() if r["type"] == "statement"}
    assert "DO $$ BEGIN RAISE NOTICE $1; END $$" in statements
    assert "DO $$ BEGIN PERFORM pg_read_file($1); END $$" in statements
    assert not any("/etc/passwd" in s for s in statements)


def test_the_corpus_left_the_database_as_it_found_it(
    pg: LocalPostgres, corpus_db: str, outcomes: dict[str, dict[int, Outcome]]
) -> None:
    assert len(outcomes["psql"]) == len(CASES)
    assert pg.execute(FINGERPRINT_QUERY) == corpus_db
