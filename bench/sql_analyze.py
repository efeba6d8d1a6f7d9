"""Micro-benchmark: ``analyze()`` on a cold shape cache against a warm one.

The baseline is the cold path (normalize + parse + tree walk) measured in the
same run; the hot path is what the proxy pays for a repeated statement shape
with new literals: one ``normalize()`` and a cache lookup. ``scrub`` is the part
of the cold path that makes the audited text (every constant replaced) and its
fingerprint. Prints microseconds per call and ratios; asserts nothing.

    .venv/bin/python bench/sql_analyze.py [--number N]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable

from pglast import parser

from steward_proxy.sql import (
    ShapeCache,
    StatementInfo,
    analyze,
    normalize,
    scrub,
    shape_fingerprint,
)

STATEMENTS = {
    "point select": (
        "SELECT id, email, full_name FROM public.users WHERE id = {n} AND ssn = '{n}-45-6789'"
    ),
    "join + cte": (
        "WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '{n} days') "
        "SELECT u.email, count(*) FROM users u JOIN recent r ON r.user_id = u.id "
        "WHERE u.country = 'NL' GROUP BY u.email HAVING count(*) > {n}"
    ),
    "update": "UPDATE accounts SET balance = balance - {n}.50 WHERE id = {n}",
    "multi-statement": "BEGIN; INSERT INTO audit_log(msg) VALUES ('x{n}'); COMMIT",
    "DDL with literals": (
        "CREATE TABLE t{n} (id int PRIMARY KEY, ssn text DEFAULT '{n}-45-6789'"
        " CHECK (ssn <> 'x{n}'), card bigint DEFAULT 4111111111111111)"
    ),
    "function body": (
        "CREATE FUNCTION f{n}() RETURNS text LANGUAGE plpgsql AS"
        " $$ BEGIN RETURN '{n}-45-6789' || 4111111111111111; END $$"
    ),
}


def per_call(function: Callable[[], object], number: int) -> float:
    """Best of three runs, in microseconds per call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(number):
            function()
        best = min(best, time.perf_counter() - start)
    return best / number * 1e6


def measure(template: str, number: int) -> tuple[float, float, float, float, float]:
    """parse_sql, cold analyze, scrub, normalize, cached analyze: microseconds per call."""
    texts = [template.format(n=i % 1000 + 1) for i in range(number)]
    first = texts[0]
    slow = max(1, number // 10)
    parse_us = per_call(lambda: parser.parse_sql(first), slow)
    no_cache: ShapeCache[tuple[StatementInfo, ...]] = ShapeCache(maxsize=0)
    cold_us = per_call(lambda: analyze(first, cache=no_cache), slow)
    key = normalize(first)
    scrub_us = per_call(lambda: shape_fingerprint(scrub(key)), slow)
    cache: ShapeCache[tuple[StatementInfo, ...]] = ShapeCache()
    analyze(first, cache=cache)
    cycle = itertools.cycle(texts)
    normalize_us = per_call(lambda: normalize(next(cycle)), number)
    cached_us = per_call(lambda: analyze(next(cycle), cache=cache), number)
    return parse_us, cold_us, scrub_us, normalize_us, cached_us


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--number", type=int, default=20000, help="calls per measurement")
    number = args.parse_args().number

    header = ("statement", "parse_sql", "cold", "scrub", "normalize", "cached", "cold/cached")
    print("{:18} {:>9} {:>8} {:>8} {:>10} {:>8} {:>12}".format(*header))
    for name, template in STATEMENTS.items():
        parse_us, cold_us, scrub_us, normalize_us, cached_us = measure(template, number)
        print(
            f"{name:18} {parse_us:9.1f} {cold_us:8.1f} {scrub_us:8.1f} {normalize_us:10.1f}"
            f" {cached_us:8.1f} {cold_us / cached_us:11.1f}x"
        )
    print("(microseconds per call; cached = normalize + shape-cache lookup;")
    print(" scrub = audited text and fingerprint, part of cold)")


if __name__ == "__main__":
    main()
