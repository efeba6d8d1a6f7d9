"""What an operator meets first: --help with every default, one startup line,
JSON logs, audit metrics, ``steward audit tail`` and ``--config``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from steward_proxy.cli import build_parser
from steward_proxy.config import ConfigError, flags_from

from conftest import ALLOW_ALL_POLICY, ProxyFactory

pytestmark = pytest.mark.timeout(120)


def all_parsers(parser: argparse.ArgumentParser, name: str = "steward"):  # type: ignore[no-untyped-def]
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from all_parsers(child, f"{name} {sub}")


def test_every_help_shows_every_default() -> None:
    missing = []
    for name, parser in all_parsers(build_parser()):
        text = "".join(parser.format_help().split())  # argparse wraps lines, even at "-"
        for action in parser._actions:
            default = action.default
            if (
                not action.option_strings
                or action.required
                or isinstance(action, argparse._HelpAction | argparse._VersionAction)
            ):
                continue
            if default is None or default is False or default == [] or default is argparse.SUPPRESS:
                continue
            if "default:" + "".join(str(default).split()) not in text:
                missing.append(f"{name} {action.option_strings[0]}")
            if not action.help:
                missing.append(f"{name} {action.option_strings[0]} has no help")
    assert missing == []


def test_audit_rotation_is_on_by_default_and_zero_turns_it_off() -> None:
    parser = build_parser()
    args = parser.parse_args(["proxy", "--upstream", "postgresql://u@h/d", "--policy", "p"])
    assert args.audit_max_bytes == 100 << 20
    args = parser.parse_args(
        ["proxy", "--upstream", "postgresql://u@h/d", "--policy", "p", "--audit-max-bytes", "0"]
    )
    assert args.audit_max_bytes == 0


def test_startup_line_json_logs_and_audit_metrics(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy(ALLOW_ALL_POLICY, "--log-format", "json")
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
    metrics = proxy.http_get("/metrics")[1]
    assert proxy.terminate() == 0
    lines = [json.loads(line) for line in proxy.log().splitlines()]
    assert {tuple(line) for line in lines} == {("time", "level", "logger", "message")}
    (serving,) = [line["message"] for line in lines if " serving: " in line["message"]]
    assert f"listen 127.0.0.1:{proxy.port}" in serving
    assert f"admin 127.0.0.1:{proxy.admin_port}" in serving
    assert "authentication trust" in serving
    assert "1 policy" in serving and "/test-allow-all@" in serving
    assert 'steward_audit_records_total{type="session.start"} 1.0' in metrics
    assert 'steward_audit_records_total{type="statement"} 1.0' in metrics
    assert "steward_audit_write_duration_seconds_count" in metrics
    assert "steward_audit_write_failures_total 0.0" in metrics


def steward(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steward_proxy", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_audit_tail_prints_a_table_or_json(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy()
    with psycopg.connect(proxy.dsn("bob"), autocommit=True) as conn:
        conn.execute("SELECT 'secret-literal' AS x")
    assert proxy.terminate() == 0
    audit = str(proxy.audit_log)
    table = steward("audit", "tail", audit, "-n", "3")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["TIME", "TYPE", "IDENTITY", "COMMAND", "DECISION", "STATEMENT"]
    assert [row.split()[2] for row in rows] == ["session.start", "statement", "session.end"]
    assert "user:bob" in rows[0] and "auth:trust" in rows[0]
    assert "SELECT" in rows[1] and "secret-literal" not in table.stdout
    as_json = steward("audit", "tail", audit, "--json", "-n", "2")
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["type"] for r in records] == ["statement", "session.end"]
    missing = steward("audit", "tail", audit + ".nope")
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_audit_tail_follows_new_records(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy()
    follower = subprocess.Popen(
        [sys.executable, "-m", "steward_proxy", "audit", "tail", str(proxy.audit_log), "-f"],
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            seen.append(line)
            if "session.end" in line:
                found.set()
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        with psycopg.connect(proxy.dsn("alice"), autocommit=True) as conn:
            conn.execute("SELECT 1")
        assert found.wait(30), seen
    finally:
        follower.terminate()
        follower.wait(10)
    assert any("session.start" in line and "user:alice" in line for line in seen)


def test_config_file_with_flags_that_win(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(ALLOW_ALL_POLICY)
    config = tmp_path / "steward.yaml"
    config.write_text(
        f"policy: [{policy}]\n"
        "listen: 0.0.0.0:1\n"  # the command line's --listen wins (else: refused, not loopback)
        "max_connections: 1\n"
        "log-format: json\n"
    )
    proxy = start_proxy(None, "--config", str(config))
    with psycopg.connect(proxy.dsn("alice"), autocommit=True) as first:
        first.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            psycopg.connect(proxy.dsn("bob"))
    assert proxy.log().startswith("{")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"no-such-flag": 1}, "not a flag"),
        ({"insecure-trust": "yes"}, "true or false"),
        ({"listen": ["a:1", "b:2"]}, "takes one value"),
        ({"listen": {"host": "x"}}, "a string or a number"),
        (["listen"], "a mapping"),
    ],
)
def test_config_file_mistakes_are_named(document: object, message: str) -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    with pytest.raises(ConfigError, match=message):
        flags_from(document, commands.choices["proxy"], [])


def test_config_file_that_does_not_load_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "steward.yaml"
    config.write_text("listen: [unclosed\n")
    done = steward("proxy", "--config", str(config))
    assert done.returncode == 2 and "not YAML" in done.stderr


def test_refusals_are_counted_by_policy_and_rule(start_proxy: ProxyFactory) -> None:
    policy = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: careful}
spec:
  subjects: [{kind: User, name: alice}]
  defaultAction: allow
  guardrails:
    - {name: no-unbounded-writes, match: {statements: [DELETE], withoutWhere: true}, action: deny}
"""
    proxy = start_proxy(policy)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for _ in range(2):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM mixed")
    metrics = proxy.http_get("/metrics")[1]
    assert (
        'steward_refusals_total{decision="deny",policy="default/careful",'
        'rule="no-unbounded-writes"} 2.0'
    ) in metrics
