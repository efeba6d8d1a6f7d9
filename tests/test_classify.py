"""``steward classify`` against a real database with PII columns and decoys."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from steward_proxy.masking.classify import classify_column
from tests.conftest import LocalPostgres, ProxyFactory

ROWS = 200


def luhn_digit(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        n = int(ch)
        if i % 2 == 0:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return str((10 - total % 10) % 10)


def seed_rows() -> list[tuple[object, ...]]:
    rng = random.Random(8)
    rows = []
    for i in range(ROWS):
        card = "4" + "".join(rng.choice("0123456789") for _ in range(14))
        card += luhn_digit(card)
        bad = card[:-1] + str((int(card[-1]) + 1) % 10)  # fails Luhn
        rows.append(
            (
                i,
                f"person{i}@example.org",
                f"{rng.randint(100, 665)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
                f"({rng.randint(201, 989)}) 555-{rng.randint(1000, 9999)}",
                " ".join(card[j : j + 4] for j in range(0, 16, 4)),
                "".join(rng.choice("0123456789") for _ in range(16)),
                bad,
                rng.choice(["shipped late", "customer happy", "call back tuesday", "n/a"]),
                f"SKU-{rng.randint(10000, 99999)}",
            )
        )
    return rows


@pytest.fixture(scope="module")
def classified_db(pg: LocalPostgres) -> Iterator[LocalPostgres]:
    pg.execute(
        "CREATE SCHEMA cls; CREATE TABLE cls.people (id int PRIMARY KEY, contact text, "
        "tax_id text, reach text, payment varchar(30), ref_code text, tracking text, "
        "comments text, sku text)"
    )
    dsn = pg.dsn(pg.SUPERUSER, password=pg.passwords[pg.SUPERUSER])
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO cls.people VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", seed_rows()
        )
    pg.execute("ANALYZE cls.people")
    yield pg
    pg.execute("DROP SCHEMA cls CASCADE")


def classify(pg: LocalPostgres, *args: str) -> subprocess.CompletedProcess[str]:
    dsn = pg.dsn(pg.SUPERUSER, password=pg.passwords[pg.SUPERUSER])
    return subprocess.run(
        [sys.executable, "-m", "steward_proxy", "classify", "--dsn", dsn, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_finds_the_pii_columns_and_not_the_decoys(classified_db: LocalPostgres) -> None:
    result = classify(classified_db, "--schema", "cls", "--format", "json")
    assert result.returncode == 0, result.stderr
    found = {f["column"]: f for f in json.loads(result.stdout)}
    assert set(found) == {
        "cls.people.contact",
        "cls.people.tax_id",
        "cls.people.reach",
        "cls.people.payment",
    }
    assert found["cls.people.tax_id"]["class"] == "US_SSN"
    assert found["cls.people.payment"]["class"] == "CREDIT_CARD"
    assert all(f["confidence"] > 0.9 and f["sampleSize"] == ROWS for f in found.values())
    for row in seed_rows()[:20]:
        assert str(row[1]) not in result.stdout + result.stderr  # no sampled value printed


def test_yaml_passes_policy_check_and_the_proxy_masks_those_columns(
    classified_db: LocalPostgres, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    result = classify(classified_db, "--schema", "cls", "--sample", "50", "--name", "found")
    assert result.returncode == 0, result.stderr
    policy = (
        "apiVersion: steward.dev/v1alpha1\nkind: DatabaseAccessPolicy\n"
        "metadata: {name: classified}\nspec:\n  subjects: [{kind: User, name: alice}]\n"
        "  defaultAction: allow\n  masking: {rules: [found]}\n---\n" + result.stdout
    )
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    check = subprocess.run(
        [sys.executable, "-m", "steward_proxy", "policy", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert yaml.safe_load_all(result.stdout)
    proxy = start_proxy(policy)
    with psycopg.connect(proxy.dsn("alice")) as conn:
        row = conn.execute(
            "SELECT contact, tax_id, payment, sku FROM cls.people WHERE id = 1"
        ).fetchone()
    assert row is not None
    contact, tax_id, payment, sku = row
    assert contact == "p***@example.org" and tax_id == "****"
    assert payment.startswith("****") and len(payment) == 8
    assert sku.startswith("SKU-")


def test_a_dsn_that_does_not_connect_is_a_clear_error() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "steward_proxy",
            "classify",
            "--dsn",
            "postgresql://x@127.0.0.1:1/db",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot connect to postgresql://x@127.0.0.1:1/db" in result.stderr


HINTS = [
    (
        "a name hint lowers the bar",
        "public.t.email",
        [b"a@b.example"] * 3 + [b"x"] * 7,
        "EMAIL_ADDRESS",
    ),
    (
        "without a hint a few matches are not enough",
        "public.t.notes",
        [b"a@b.example"] * 3 + [b"x"] * 7,
        None,
    ),
    ("a person's name is found by its column name", "public.t.full_name", [b"Ann Lee"], "name"),
    ("a user name is not a person's name", "public.t.username", [b"ann"], None),
]


@pytest.mark.parametrize(("case", "column", "values", "expected"), HINTS, ids=[h[0] for h in HINTS])
def test_name_hints(case: str, column: str, values: list[bytes], expected: str | None) -> None:
    finding = classify_column(column, values)
    if expected is None:
        assert finding is None
    else:
        assert finding is not None and (finding.data_class or finding.hint) == expected
