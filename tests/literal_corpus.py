"""Statements of many types with a fake value in every literal position.

Shared by the unit tests of the audited statement text and the live test that runs
them through the proxy. Each entry is a template: ``{s}`` is the schema the
statements work in, ``{ssn}`` a fake social security number and ``{card}`` a
fake card number; ``render`` fills them in. Run in order, every statement is
valid on PostgreSQL 15 (the live test runs them all) for the upstream role the
tests use, which owns the schema but is no superuser.
"""

from __future__ import annotations

from pglast import parser as pg_parser

SSN = "987-65-4329"
CARD = "4111111111111111"
# A second set of values of other lengths: the same statements with these must be
# recorded with the same text and fingerprint.
OTHER_SSN = "123-45-67"
OTHER_CARD = "55000000000000049"

CORPUS: dict[str, str] = {
    "CREATE SCHEMA": "CREATE SCHEMA {s}",
    "CREATE TABLE with DEFAULT and CHECK": (
        "CREATE TABLE {s}.people ("
        " id bigint PRIMARY KEY,"
        " ssn text DEFAULT '{ssn}' CHECK (length(ssn) < 50 OR ssn = '{ssn}'),"
        " card bigint DEFAULT {card} CHECK (card >= 0 OR card = -{card}),"
        " note text GENERATED ALWAYS AS ('{ssn}' || ssn) STORED)"
    ),
    "INSERT": "INSERT INTO {s}.people (id, ssn, card) VALUES (1, '{ssn}', {card})",
    "INSERT ON CONFLICT": (
        "INSERT INTO {s}.people (id, ssn, card) VALUES (2, E'{ssn}', {card})"
        " ON CONFLICT (id) DO UPDATE SET ssn = U&'{ssn}', card = {card}"
    ),
    "SELECT with every constant kind": (
        "SELECT id FROM {s}.people WHERE ssn IN ('{ssn}', E'{ssn}', $q${ssn}$q$, $${ssn}$$,"
        " U&'{ssn}' UESCAPE '!', '{ssn}'::text, text '{ssn}', N'{ssn}')"
        " AND card IN ({card}, {card}.0, {card}e0, -{card})"
        " AND B'1010' <> X'{card}' AND interval '{card} microseconds' > interval '1 day'"
    ),
    "SELECT with adjacent string constants": "SELECT '987-'\n'{ssn}'\n'{card}' AS joined",
    "UPDATE": "UPDATE {s}.people SET ssn = '{ssn}', card = {card} WHERE card = {card}",
    "ALTER TABLE SET DEFAULT": "ALTER TABLE {s}.people ALTER COLUMN ssn SET DEFAULT '{ssn}'",
    "ALTER TABLE ADD CHECK": (
        "ALTER TABLE {s}.people ADD CONSTRAINT people_card CHECK (card <> {card} + 1)"
    ),
    "CREATE INDEX WHERE": (
        "CREATE INDEX people_ssn ON {s}.people (ssn) WHERE ssn <> '{ssn}' AND card <> {card}"
    ),
    "PREPARE": (
        "PREPARE lit_p (text) AS SELECT id FROM {s}.people"
        " WHERE ssn = $1 OR ssn = '{ssn}' OR card = {card}"
    ),
    "EXECUTE": "EXECUTE lit_p('{ssn}')",
    "DEALLOCATE": "DEALLOCATE lit_p",
    "CREATE TABLE AS": (
        "CREATE TABLE {s}.people_copy AS SELECT * FROM {s}.people"
        " WHERE ssn = '{ssn}' OR card = {card}"
    ),
    "CREATE VIEW": (
        "CREATE VIEW {s}.people_view AS SELECT id FROM {s}.people"
        " WHERE ssn = '{ssn}' OR card = {card}"
    ),
    "CREATE MATERIALIZED VIEW": (
        "CREATE MATERIALIZED VIEW {s}.people_mview AS"
        " SELECT id, '{ssn}' AS tag FROM {s}.people WHERE card = {card}"
    ),
    "CREATE POLICY": (
        "CREATE POLICY people_pol ON {s}.people USING (ssn <> '{ssn}' OR card = {card})"
        " WITH CHECK (ssn <> '{ssn}')"
    ),
    "CREATE RULE with WHERE": (
        "CREATE RULE people_rule AS ON INSERT TO {s}.people_copy"
        " WHERE NEW.ssn = '{ssn}' OR NEW.card = {card} DO INSTEAD NOTHING"
    ),
    "CREATE FUNCTION plpgsql body": (
        "CREATE FUNCTION {s}.fill() RETURNS trigger LANGUAGE plpgsql AS"
        " $body$ BEGIN NEW.ssn := '{ssn}'; NEW.card := {card}; RETURN NEW; END $body$"
    ),
    "CREATE TRIGGER WHEN": (
        "CREATE TRIGGER people_fill BEFORE INSERT ON {s}.people FOR EACH ROW"
        " WHEN (NEW.ssn = '{ssn}' OR NEW.card = {card}) EXECUTE FUNCTION {s}.fill()"
    ),
    "CREATE FUNCTION sql string body": (
        "CREATE FUNCTION {s}.is_card(bigint) RETURNS boolean LANGUAGE sql"
        " AS 'SELECT $1 = {card} OR ''{ssn}'' IS NOT NULL'"
    ),
    "CREATE FUNCTION BEGIN ATOMIC": (
        "CREATE FUNCTION {s}.tag() RETURNS text LANGUAGE sql"
        " BEGIN ATOMIC SELECT '{ssn}' || {card}; END"
    ),
    "ALTER FUNCTION SET": "ALTER FUNCTION {s}.tag() SET search_path = '{ssn}'",
    "CREATE PROCEDURE": (
        "CREATE PROCEDURE {s}.note(text) LANGUAGE sql AS $$ SELECT $1 || '{card}' $$"
    ),
    "CALL": "CALL {s}.note('{ssn}')",
    "COMMENT ON TABLE": "COMMENT ON TABLE {s}.people IS 'holds {ssn} and {card}'",
    "COMMENT ON COLUMN": "COMMENT ON COLUMN {s}.people.ssn IS E'{ssn}'",
    "DO": ("DO $do$ BEGIN PERFORM 1 WHERE '{ssn}' <> '{card}'; RAISE NOTICE '%', {card}; END $do$"),
    "COPY options": (
        "COPY (SELECT * FROM {s}.people WHERE ssn = '{ssn}') TO STDOUT"
        " WITH (FORMAT csv, NULL '{ssn}', QUOTE '|', HEADER)"
    ),
    "CREATE DOMAIN": (
        "CREATE DOMAIN {s}.ssn_text AS text DEFAULT '{ssn}' CHECK (VALUE <> '{card}')"
    ),
    "CREATE TYPE ENUM": "CREATE TYPE {s}.kind AS ENUM ('{ssn}', '{card}')",
    "ALTER TYPE ADD VALUE": "ALTER TYPE {s}.kind ADD VALUE 'x{ssn}'",
    "CREATE SEQUENCE": "CREATE SEQUENCE {s}.seq START {card} MAXVALUE {card}9",
    "ALTER SEQUENCE": "ALTER SEQUENCE {s}.seq RESTART WITH {card}",
    "partition FOR VALUES": (
        "CREATE TABLE {s}.by_ssn (ssn text) PARTITION BY LIST (ssn);"
        " CREATE TABLE {s}.by_ssn_one PARTITION OF {s}.by_ssn FOR VALUES IN ('{ssn}')"
    ),
    "SET a custom setting": "SET steward_test.marker = '{ssn}'",
    "set_config": "SELECT set_config('steward_test.marker', '{card}', false)",
    "NOTIFY": "NOTIFY steward_test, '{ssn}'",
    "EXPLAIN": "EXPLAIN SELECT * FROM {s}.people WHERE ssn = '{ssn}' AND card = {card}",
    "VALUES": "VALUES ('{ssn}', {card})",
    "two statements in one string": (
        "SELECT '{ssn}'; COMMENT ON TABLE {s}.people_copy IS '{card}'"
    ),
    "DELETE": "DELETE FROM {s}.people WHERE ssn = '{ssn}' OR card = {card}",
    "comment holding the value": "SELECT 1 /* {ssn} */ -- {card}\n",
}


def render(template: str, schema: str, ssn: str = SSN, card: str = CARD) -> str:
    """Fill a corpus template in."""
    return template.format(s=schema, ssn=ssn, card=card)


CONSTANT_TOKENS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST", "ICONST", "FCONST"})


def recorded_constants(text: str) -> list[str]:
    """The constant tokens in a recorded statement text.

    A PL/pgSQL DO is recorded with its body in dollar quotes (one string token):
    the body inside them is what must hold no constant.
    """
    if text.startswith("DO $"):
        tag = text.split(" ", 2)[1]
        text = text.removeprefix(f"DO {tag}").removesuffix(tag)
    return [text[t.start : t.end + 1] for t in pg_parser.scan(text) if t.name in CONSTANT_TOKENS]
