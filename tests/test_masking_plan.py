"""Lineage and the planner against a catalog given as rows: what is masked, what is refused."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steward_proxy import wire
from steward_proxy.masking.catalog import Catalog
from steward_proxy.masking.detect import NEEDED, find
from steward_proxy.masking.lineage import analyze
from steward_proxy.masking.plan import Masker, MaskingConfig, plan_from_recipe
from steward_proxy.masking.strategies import Strategies
from steward_proxy.policy.compile import compile_masking_rule

USERS, ORDERS, VIEW = 100, 200, 300
CATALOG = Catalog.from_rows(
    [(USERS, "public", "users", "r"), (ORDERS, "shop", "orders", "r"), (VIEW, "public", "v", "v")],
    [
        (USERS, 1, "id", 23),
        (USERS, 2, "name", 25),
        (USERS, 3, "email", 25),
        (USERS, 4, "ssn", 25),
        (ORDERS, 1, "id", 23),
        (ORDERS, 2, "user_id", 23),
        (ORDERS, 3, "email", 25),
        (VIEW, 1, "id", 23),
        (VIEW, 2, "r", 25),
        (VIEW, 3, "email", 25),
    ],
    [(VIEW, "SELECT users.id, reverse(users.ssn) AS r, users.email FROM users")],
)
RULES = compile_masking_rule(
    "pii",
    "default",
    {
        "rules": [
            {"columns": ["public.users.email"], "strategy": "email"},
            {"columns": ["public.users.ssn"], "strategy": "redact"},
            {"dataClasses": ["US_SSN"], "strategy": "partial", "keepLast": 4},
        ]
    },
)


def masker(**config: object) -> Masker:
    return Masker(MaskingConfig((RULES,), **config), Strategies(b"k"), CATALOG)  # type: ignore[arg-type]


def field(name: str, table: int = 0, column: int = 0, type_oid: int = 25) -> wire.FieldDescription:
    return wire.FieldDescription(name, table, column, type_oid)


def labels(sql: str, *fields: wire.FieldDescription) -> list[str]:
    plan = masker().plan(analyze(sql)[0], fields)
    return sorted(plan.labels) if plan else []


MASKED = [
    (
        "a bare column by its RowDescription origin",
        "SELECT email FROM users",
        [field("email", USERS, 3)],
        ["public.users.email:email"],
    ),
    (
        "an expression feeds redact",
        "SELECT upper(ssn) FROM users",
        [field("upper")],
        ["public.users.ssn:redact"],
    ),
    (
        "a whole-row reference",
        "SELECT row_to_json(u) FROM users u",
        [field("row_to_json", type_oid=114)],
        ["public.users.email:redact", "public.users.ssn:redact"],
    ),
    (
        "a CTE's derived column",
        "WITH c AS (SELECT ssn || '' s FROM users) SELECT s FROM c",
        [field("s")],
        ["public.users.ssn:redact"],
    ),
    (
        "a UNION branch",
        "SELECT name FROM users UNION SELECT email FROM users",
        [field("name")],
        ["public.users.email:redact"],
    ),
    (
        "a view column derived in the view",
        "SELECT r FROM v",
        [field("r", VIEW, 2)],
        ["public.users.ssn:redact"],
    ),
    (
        "a view column that is a masked column",
        "SELECT email FROM v",
        [field("email", VIEW, 3)],
        ["public.users.email:email"],
    ),
    (
        "a relation the catalog does not know",
        "SELECT x FROM newtable",
        [field("x", 999, 1)],
        ["unresolved:redact"],
    ),
    (
        "a star over an unqualified table",
        "SELECT * FROM users",
        [field("id"), field("name"), field("email"), field("ssn")],
        ["public.users.email:email", "public.users.ssn:redact"],
    ),
    (
        "a dynamic SQL function",
        "SELECT query_to_xml('select 1', true, false, '')",
        [field("q", type_oid=142)],
        ["unresolved:redact"],
    ),
]

UNMASKED = [
    ("a column no rule covers", "SELECT name FROM users", [field("name", USERS, 2)]),
    (
        "another table's column of the same name",
        "SELECT email FROM shop.orders",
        [field("email", ORDERS, 3)],
    ),
    ("a derived value of unmasked columns", "SELECT upper(name) FROM users", [field("upper")]),
    ("a constant", "SELECT 1", [field("?column?", type_oid=23)]),
]


@pytest.mark.parametrize(("case", "sql", "fields", "expected"), MASKED, ids=[c[0] for c in MASKED])
def test_masked(
    case: str, sql: str, fields: list[wire.FieldDescription], expected: list[str]
) -> None:
    assert labels(sql, *fields) == expected


@pytest.mark.parametrize(("case", "sql", "fields"), UNMASKED, ids=[c[0] for c in UNMASKED])
def test_not_masked(case: str, sql: str, fields: list[wire.FieldDescription]) -> None:
    assert masker().plan(analyze(sql)[0], fields) is None


REFUSED = [
    ("WHERE on a masked column", "SELECT id FROM users WHERE ssn LIKE '1%'"),
    ("ORDER BY a masked column", "SELECT id FROM users ORDER BY email"),
    ("ORDER BY the position of a masked column", "SELECT ssn, id FROM users ORDER BY 1"),
    ("GROUP BY", "SELECT count(*) FROM users GROUP BY ssn"),
    ("JOIN ON", "SELECT 1 FROM users a JOIN users b ON a.ssn = b.ssn"),
    ("JOIN USING", "SELECT 1 FROM users JOIN shop.orders o USING (email)"),
    (
        "a correlated subquery's WHERE",
        "SELECT id FROM users u WHERE EXISTS (SELECT 1 WHERE u.ssn > '5')",
    ),
    ("an aggregate FILTER", "SELECT count(*) FILTER (WHERE ssn > '5') FROM users"),
    ("a CASE condition", "SELECT CASE WHEN ssn > '5' THEN 1 END FROM users"),
    ("a simple CASE on a masked column", "SELECT CASE email WHEN 'a@b.c' THEN 1 END FROM users"),
    ("a view filter when it is created", "CREATE VIEW w AS SELECT id FROM users WHERE ssn > '5'"),
    ("INSERT ... SELECT", "INSERT INTO t SELECT ssn FROM users"),
    ("CREATE TABLE AS", "CREATE TABLE t AS SELECT * FROM users"),
    ("SELECT INTO", "SELECT email INTO t FROM users"),
    (
        "UPDATE SET from a subquery",
        "UPDATE shop.orders SET email = (SELECT email FROM users LIMIT 1)",
    ),
    ("COPY to a program", "COPY users TO PROGRAM 'cat'"),
    ("binary COPY out", "COPY (SELECT ssn FROM users) TO STDOUT WITH (FORMAT binary)"),
    ("EXPLAIN ANALYZE of a probe", "EXPLAIN ANALYZE SELECT 1 FROM users WHERE ssn = '1'"),
    ("a DO block", "DO $$ BEGIN PERFORM 1; END $$"),
    ("a setting that stores a masked value", "SELECT set_config('x.y', ssn, false) FROM users"),
    ("a function definition", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    ("renaming a masked column", "ALTER TABLE users RENAME COLUMN ssn TO x"),
    ("altering a table with masked columns", "ALTER TABLE users ADD COLUMN z int"),
]

ALLOWED = [
    ("a plain select", "SELECT email, ssn FROM users"),
    ("a filter on an unmasked column", "SELECT ssn FROM users WHERE id = 1 ORDER BY name"),
    ("ORDER BY the position of an unmasked column", "SELECT id, ssn FROM users ORDER BY 1"),
    ("an update of a masked column with a constant", "UPDATE users SET ssn = '000' WHERE id = 1"),
    ("an insert of values", "INSERT INTO users (id, email) VALUES (1, 'a@b.c')"),
    ("a copy of unmasked columns", "COPY shop.orders TO STDOUT"),
    ("altering a table without masked columns", "ALTER TABLE shop.orders ADD COLUMN z int"),
    ("a text COPY out of masked columns (masked as it goes)", "COPY users TO STDOUT"),
]


@pytest.mark.parametrize(("case", "sql"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused(case: str, sql: str) -> None:
    assert masker().refusal(analyze(sql)[0]) is not None


@pytest.mark.parametrize(("case", "sql"), ALLOWED, ids=[c[0] for c in ALLOWED])
def test_allowed(case: str, sql: str) -> None:
    assert masker().refusal(analyze(sql)[0]) is None


def test_predicates_allow_lets_filters_through_but_not_data_movement() -> None:
    m = masker(predicates="allow")
    assert m.refusal(analyze("SELECT id FROM users WHERE ssn LIKE '1%'")[0]) is None
    assert m.refusal(analyze("INSERT INTO t SELECT ssn FROM users")[0]) is not None


def test_an_exempt_subject_has_nothing_masked_or_refused() -> None:
    m = masker(exempt=True)
    assert m.refusal(analyze("SELECT id FROM users ORDER BY ssn")[0]) is None
    assert m.plan(analyze("SELECT ssn FROM users")[0], [field("ssn", USERS, 4)]) is None


def test_detection_masks_spans_of_columns_no_rule_covers() -> None:
    m = masker(detect=True)
    plan = m.plan(analyze("SELECT name FROM users")[0], [field("name", USERS, 2)])
    assert plan is not None and plan.maskers[0] is not None
    assert plan.maskers[0](b"id 536-22-8714 ok") == b"id ****8714 ok"
    assert plan.labels == {"US_SSN:partial"}
    # Its screen: the row filter calls the detector only on values it lets through.
    assert plan.screens == {0: NEEDED}


@settings(max_examples=300)
@given(value=st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_what_the_detection_screen_stops_the_detector_gives_back_unchanged(value: bytes) -> None:
    plan = masker(detect=True).plan(analyze("SELECT name FROM users")[0], [field("name", USERS, 2)])
    assert plan is not None and plan.maskers[0] is not None
    if 0 not in value.translate(plan.screens[0]):
        assert plan.maskers[0](value) is value


@pytest.mark.parametrize(
    ("type_oid", "longest"), [(16, b"f"), (21, b"-32768"), (23, b"-2147483648")]
)
def test_detection_skips_types_too_short_for_any_data_class(type_oid: int, longest: bytes) -> None:
    assert find(longest) == []
    fields = [field("id", USERS, 1, type_oid=type_oid)]
    assert masker(detect=True).plan(analyze("SELECT id FROM users")[0], fields) is None
    int8 = [field("id", USERS, 1, type_oid=20)]  # 19 digits: a card number fits
    plan = masker(detect=True).plan(analyze("SELECT id FROM users")[0], int8)
    assert plan is not None and plan.maskers[0] is not None
    assert plan.maskers[0](b"4222222222222") is None  # a card: the whole integer goes


def test_binary_values_of_types_that_are_not_text_get_no_screen() -> None:
    # An int8 in binary is eight raw bytes: the detector reads its printed form,
    # which the screen (a test of the bytes as they come) cannot see.
    int8 = [field("id", USERS, 1, type_oid=20)]
    card = (4222222222222).to_bytes(8, "big", signed=True)
    assert 0 not in card.translate(NEEDED)  # the screen would have let it through unread
    binary = masker(detect=True).plan(analyze("SELECT id FROM users")[0], int8, (1,))
    assert binary is not None and binary.maskers[0] is not None
    assert binary.screens == {}
    assert binary.maskers[0](card) is None
    text = masker(detect=True).plan(analyze("SELECT id FROM users")[0], int8, (0,))
    assert text is not None and text.screens == {0: NEEDED}


def test_unaligned_columns_are_masked_when_the_statement_reads_masked_ones() -> None:
    sql = "SELECT * FROM users JOIN shop.orders USING (id)"
    plan = masker().plan(analyze(sql)[0], [field("id"), field("name"), field("x")])
    assert plan is not None and all(m is not None for m in plan.maskers)


def test_rows_never_described_are_nulled_when_masked_columns_feed_them() -> None:
    plan = masker().plan(analyze("SELECT ssn FROM users")[0], None)
    assert plan is not None and plan.every is not None and plan.every(b"x") is None
    assert masker().plan(analyze("SELECT name FROM users")[0], None) is None


def test_a_statement_too_large_to_trace_is_judged_by_its_tables() -> None:
    m = masker()
    assert m.refusal(m.untraced(("public.users",), writes=False)) is not None
    assert m.refusal(m.untraced(("pg_catalog.pg_type", "public.pg_class"), writes=False)) is None


LINEAGE = [
    ("a cursor declares its rows", "DECLARE c CURSOR FOR SELECT ssn FROM users", "declares", "c"),
    ("FETCH names its cursor", "FETCH 5 FROM c", "fetches", "c"),
    ("EXECUTE names its statement", "EXECUTE p(1)", "executes", "p"),
]


@pytest.mark.parametrize(
    ("case", "sql", "attribute", "value"), LINEAGE, ids=[c[0] for c in LINEAGE]
)
def test_lineage_of_statement_forms(case: str, sql: str, attribute: str, value: str) -> None:
    assert getattr(analyze(sql)[0], attribute) == value


def test_prepare_traces_the_prepared_query() -> None:
    (lineage,) = analyze("PREPARE p AS SELECT upper(ssn) FROM users")
    assert lineage.outputs is not None
    assert lineage.outputs[0].sources == {("col", "", "users", "ssn")}  # type: ignore[union-attr]


def test_copy_rows_are_masked_field_by_field() -> None:
    from steward_proxy.masking.rows import copy_filter

    (lineage,) = analyze("COPY users TO STDOUT WITH (FORMAT csv)")
    plan = masker().plan_copy(lineage, 4)
    assert plan is not None and lineage.copy is not None
    rewrite = copy_filter(plan, lineage.copy)
    row = b'1,"Ann, Lee",ann@x.org,123-45-6789\n'
    out = rewrite(b"d" + (len(row) + 4).to_bytes(4, "big") + row)
    assert out[5:] == b'1,"Ann, Lee","a***@x.org","****"\n'
    (text,) = analyze("COPY users TO STDOUT")
    assert text.copy is not None
    rewrite = copy_filter(masker().plan_copy(text, 4), text.copy)  # type: ignore[arg-type]
    row = b"2\tB\\t\ta\\tb@x.org\t\\N\n"
    assert rewrite(b"d" + (len(row) + 4).to_bytes(4, "big") + row)[5:] == (
        b"2\tB\\t\ta***@x.org\t\\N\n"
    )


def test_names_statements_resolve_are_remembered_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Statements name whatever relations a client likes; what they resolve to is
    remembered until the catalog changes, but not without bound."""
    monkeypatch.setattr("steward_proxy.masking.plan._MAX_RESOLVED", 100, raising=False)
    subject = masker()
    for i in range(150):
        assert subject.refusal(analyze(f"SELECT 1 FROM made_up_{i} WHERE x = 1")[0])
    assert 0 < len(subject._resolved) <= 100


def test_a_relation_a_schema_change_names_resolves_as_unknown_until_the_reload() -> None:
    """Until the catalog shows a schema change, what the statements after it read
    of the relation it names is masked and filters on it are refused."""
    subject = masker()
    moving = analyze("CREATE TABLE public.loot AS SELECT id FROM shop.orders")[0]
    filtering = analyze("SELECT 1 FROM shop.orders WHERE user_id = 1")[0]
    assert subject.refusal(moving) is None and subject.refusal(filtering) is None
    generations = iter([7])
    subject.invalidated = lambda: next(generations)
    names = subject.changing(["shop.orders"])  # e.g. CREATE OR REPLACE VIEW shop.orders
    assert subject.refusal(moving) is not None and subject.refusal(filtering) is not None
    subject.changed(names, ran=True)  # it ran: the catalog of generation 7 shows it
    assert subject.refusal(moving) is not None
    subject.catalog = Catalog.from_rows([], [], generation=6)
    subject.catalog = CATALOG  # generation 1: a load from before the change
    assert subject.refusal(moving) is not None
    subject.catalog = Catalog.from_rows(
        [(ORDERS, "shop", "orders", "r")],
        [(ORDERS, 1, "id", 23), (ORDERS, 2, "user_id", 23)],
        generation=7,
    )
    assert subject.refusal(moving) is None and subject.refusal(filtering) is None
    # A change that does not run leaves its names as they were.
    subject.changed(subject.changing(["shop.orders"]), ran=False)
    assert subject.refusal(filtering) is None


RECIPE_CASES = [
    (
        "SELECT id, name, email, ssn FROM users",
        [
            field("id", USERS, 1, 23),
            field("name", USERS, 2),
            field("email", USERS, 3),
            field("ssn", USERS, 4),
        ],
        (0, 1),
    ),
    ("SELECT upper(ssn), email FROM users", [field("upper"), field("email", USERS, 3)], (1,)),
    ("SELECT email, ssn FROM users", [field("email", USERS, 3), field("ssn", USERS, 4)], (0, 1)),
]


@pytest.mark.parametrize(("sql", "fields", "formats"), RECIPE_CASES)
def test_a_plan_rebuilt_from_its_recipe_masks_every_row_alike(
    sql: str, fields: list[wire.FieldDescription], formats: tuple[int, ...]
) -> None:
    plan = masker().plan(analyze(sql)[0], fields, formats)
    assert plan is not None and plan.recipe is not None
    rebuilt = plan_from_recipe(plan.recipe)
    values = [b"ann@example.org", b"536-22-8714", b"\x00\x00\x00\x07", "Zoë".encode(), b"x" * 300]
    for value in values:
        for mine, theirs in zip(plan.maskers, rebuilt.maskers, strict=True):
            assert (mine is None) == (theirs is None)
            if mine is not None and theirs is not None:
                assert theirs(value) == mine(value)
    assert rebuilt.recipe == plan.recipe


def test_a_plan_with_detection_has_no_recipe_to_be_masked_elsewhere() -> None:
    """A detector adds to the audit labels as it finds: it must run in the session."""
    sql = "SELECT email, name FROM users"
    plan = masker(detect=True).plan(
        analyze(sql)[0], [field("email", USERS, 3), field("name", USERS, 2)]
    )
    assert plan is not None and plan.recipe is None
    plain = masker().plan(analyze(sql)[0], [field("email", USERS, 3), field("name", USERS, 2)])
    assert plain is not None and plain.recipe is not None


KINDS = 400  # a table with a column of each kind
CITEXT, DOMAIN = 16_500, 16_600  # text-like types the catalog lists
KIND_COLUMNS = [
    ("c_citext", CITEXT, "hash", None),
    ("c_domain", DOMAIN, "partial", 2),
    ("c_partial0", 25, "partial", 0),
    ("c_int2", 21, "hash", None),
    ("c_int4", 23, "hash", None),
    ("c_int8", 20, "hash", None),
    ("c_date", 1082, "hash", None),
    ("c_null", 25, "null", None),
    ("c_redact", 1043, "redact", None),
    ("c_email", DOMAIN, "email", None),
    ("c_kept", 25, None, None),
]
KINDS_CATALOG = Catalog.from_rows(
    [(KINDS, "public", "kinds", "r")],
    [(KINDS, i + 1, name, oid) for i, (name, oid, _, _) in enumerate(KIND_COLUMNS)],
    (),
    [(CITEXT,), (DOMAIN,)],
)
KINDS_RULES = compile_masking_rule(
    "kinds",
    "default",
    {
        "rules": [
            {"columns": [f"public.kinds.{name}"], "strategy": strategy}
            | ({"keepLast": keep} if keep is not None else {})
            for name, _, strategy, keep in KIND_COLUMNS
            if strategy is not None
        ]
    },
)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_a_recipe_rebuilds_every_column_kind_as_the_session_masks_it(binary: bool) -> None:
    fields = [
        field(name, KINDS, i + 1, oid) for i, (name, oid, _, _) in enumerate(KIND_COLUMNS)
    ] + [field("gone", 999, 1, 25), field("gone_int", 999, 2, 20)]  # unresolved
    subject = Masker(MaskingConfig((KINDS_RULES,)), Strategies(b"kinds-key"), KINDS_CATALOG)
    formats = (1,) if binary else (0,)
    plan = subject.plan(analyze("SELECT * FROM kinds")[0], fields, formats)
    assert plan is not None and plan.recipe is not None
    rebuilt = plan_from_recipe(pickle.loads(pickle.dumps(plan.recipe)))
    values = [b"", b"a", b"Zo\xc3\xab", b"ann@example.org", b"536-22-8714", b"x" * 300]
    values += [n.to_bytes(w, "big", signed=True) for w in (2, 4, 8) for n in (-7, 0, 42)]
    values += [b"-7", b"0", b"9223372036854775807"]
    masked = 0
    for mine, theirs in zip(plan.maskers, rebuilt.maskers, strict=True):
        assert (mine is None) == (theirs is None)
        if mine is None or theirs is None:
            continue
        masked += 1
        for value in values:
            try:
                expected = mine(value)
            except ValueError:
                with pytest.raises(ValueError):
                    theirs(value)
                continue
            assert theirs(value) == expected
    assert masked == len(fields) - 1
    assert "unresolved:redact" in plan.labels
