"""Masking against an adversarial client: protocol tricks that try to get a result
planned for one statement while the server runs another, or in a form the
masking does not read.

Each test speaks the protocol over a raw socket (built with ``steward_proxy.wire``
encoders) or through psycopg, against the seeded table of the leak corpus, and
checks every byte the client receives with the corpus's ``leaks``.
"""

from __future__ import annotations

import struct

import pytest

from steward_proxy import wire
from steward_proxy.masking.rows import WITHHELD
from tests.conftest import Proxy, ProxyFactory, error_fields, raw_login, recv_messages
from tests.test_masking_live import POLICY, leaks, seeded  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def masking_proxy(seeded, module_proxy_factory: ProxyFactory) -> Proxy:  # noqa: F811
    return module_proxy_factory(POLICY)


def exchange(sock, *messages: wire.Message) -> list[tuple[bytes, bytes]]:
    """Send ``messages`` (ending with Sync) and read every answer up to ReadyForQuery."""
    sock.sendall(b"".join(wire.encode(message) for message in messages))
    return recv_messages(sock)


def raw(answers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(k + struct.pack("!I", len(p) + 4) + p for k, p in answers)


def codes(answers: list[tuple[bytes, bytes]]) -> list[str]:
    return [error_fields(p)["C"] for k, p in answers if k == b"E"]


def test_failed_parse_under_a_prepared_name_keeps_its_masking(masking_proxy: Proxy) -> None:
    """PostgreSQL keeps a named statement when a second Parse under its name fails
    (42P05): its rows are still masked as the first statement's."""
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        first = exchange(
            sock, wire.Parse("s1", "SELECT upper(full_name) FROM crm.customers"), wire.Sync()
        )
        assert codes(first) == []
        again = exchange(sock, wire.Parse("s1", "SELECT 'harmless'::text"), wire.Sync())
        assert codes(again) == ["42P05"]
        rows = exchange(
            sock,
            wire.Bind("", "s1"),
            wire.Describe("P", ""),
            wire.Execute(""),
            wire.Sync(),
        )
    finally:
        sock.close()
    assert codes(rows) == []
    assert sum(1 for k, _ in rows if k == b"D") == 3
    assert leaks(raw(rows)) == []


def test_failed_bind_under_an_open_portal_name_keeps_its_masking(masking_proxy: Proxy) -> None:
    """A named portal survives a second Bind under its name (42P03), and the
    failure too when it comes inside a savepoint: its remaining rows are still
    masked as its own."""
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        setup = exchange(
            sock,
            wire.Parse("leak", "SELECT upper(full_name) FROM crm.customers ORDER BY id"),
            wire.Parse("plain", "SELECT 'harmless'::text"),
            wire.Sync(),
        )
        assert codes(setup) == []
        opened = exchange(
            sock,
            wire.Parse("", "BEGIN"),
            wire.Bind("", ""),
            wire.Execute(""),
            wire.Bind("p1", "leak"),
            wire.Describe("P", "p1"),
            wire.Execute("p1", 1),
            wire.Sync(),
        )
        assert codes(opened) == []
        assert codes(exchange(sock, wire.Query("SAVEPOINT a"))) == []
        collided = exchange(sock, wire.Bind("p1", "plain"), wire.Sync())
        assert codes(collided) == ["42P03"]
        assert codes(exchange(sock, wire.Query("ROLLBACK TO SAVEPOINT a"))) == []
        rows = exchange(sock, wire.Execute("p1"), wire.Sync())
    finally:
        sock.close()
    assert codes(rows) == []
    assert sum(1 for k, _ in rows if k == b"D") == 2
    assert leaks(raw(opened) + raw(rows)) == []


# Detected data in columns that are not text: an address, a card number as a
# number, a text array. In text form each is found and the value becomes NULL;
# asked for in binary, the same must hold.
NOT_TEXT = (
    "SELECT substring(notes from '\\d+\\.\\d+\\.\\d+\\.\\d+')::inet AS ip, "
    "replace(substring(notes from '\\d{4} \\d{4} \\d{4} \\d{4}'), ' ', '')::bigint AS num, "
    "replace(substring(notes from '\\d{4} \\d{4} \\d{4} \\d{4}'), ' ', '')::numeric AS dec, "
    "ARRAY[notes] AS arr, "
    "ARRAY[replace(substring(notes from '\\d{4} \\d{4} \\d{4} \\d{4}'), ' ', '')::bigint] AS nums "
    "FROM crm.customers WHERE id <= 2 ORDER BY id"
)


def test_detection_reads_binary_results_of_columns_that_are_not_text(
    masking_proxy: Proxy,
) -> None:
    import psycopg

    with psycopg.connect(masking_proxy.dsn("alice")) as conn:
        text = conn.execute(NOT_TEXT).fetchall()
        binary = conn.cursor(binary=True).execute(NOT_TEXT).fetchall()
    # In text form an array of text keeps its words; in binary it cannot be cut.
    assert text == [
        (None, None, None, ["prefers mail to ****, card ****5186"], None),
        (None, None, None, ["met at ****; SSN on file ****"], [None]),  # no card in row 2
    ]
    assert binary == [(None, None, None, None, None), (None, None, None, None, [None])]


def test_a_binary_cursor_fetched_by_a_simple_query_is_masked_as_binary(
    masking_proxy: Proxy,
) -> None:
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        answers = exchange(
            sock,
            wire.Query(f"BEGIN; DECLARE c BINARY CURSOR FOR {NOT_TEXT}; FETCH ALL FROM c; COMMIT"),
        )
    finally:
        sock.close()
    assert codes(answers) == []
    rows = [p for k, p in answers if k == b"D"]
    assert len(rows) == 2
    assert rows[0] == struct.pack("!H", 5) + b"\xff\xff\xff\xff" * 5
    assert rows[1][:18] == struct.pack("!H", 5) + b"\xff\xff\xff\xff" * 4  # the card: NULL


DETECT_ONLY = """\
apiVersion: steward.dev/v1alpha1
kind: DatabaseAccessPolicy
metadata: {name: detect-only}
spec:
  subjects: [{kind: User, name: dave}]
  defaultAction: allow
  masking: {detect: true}
"""


def test_a_function_call_message_is_refused_when_detection_is_on(
    seeded,  # noqa: F811
    start_proxy: ProxyFactory,
) -> None:
    """Its one result value is not a row: detection would never read it."""
    proxy = start_proxy(DETECT_ONLY)
    oid = int(seeded.execute("SELECT 'query_to_xml(text,bool,bool,text)'::regprocedure::oid"))
    sock, _ = raw_login(proxy, "dave")
    try:
        answers = exchange(
            sock,
            wire.FunctionCall(
                oid,
                (0,),
                (b"SELECT notes FROM crm.customers", b"t", b"f", b""),
                0,
            ),
        )
    finally:
        sock.close()
    assert leaks(raw(answers)) == []
    assert codes(answers) == ["42501"]


def test_a_notification_payload_is_read_by_detection(
    seeded,  # noqa: F811
    start_proxy: ProxyFactory,
) -> None:
    """pg_notify moves a value no column rule covers into a NotificationResponse,
    which the subject's own LISTEN then receives."""
    proxy = start_proxy(DETECT_ONLY)
    sock, _ = raw_login(proxy, "dave")
    try:
        answers = exchange(
            sock,
            wire.Query("LISTEN c; SELECT pg_notify('c', notes) FROM crm.customers; SELECT 1"),
        )
    finally:
        sock.close()
    assert codes(answers) == []
    notifications = [p for k, p in answers if k == b"A"]
    assert len(notifications) == 3
    assert leaks(raw(answers)) == []
    assert all(p[4:].startswith(b"c\0message withheld by Steward") for p in notifications)


def test_every_notification_payload_is_withheld_from_a_subject_with_column_rules(
    masking_proxy: Proxy,
    seeded,  # noqa: F811
) -> None:
    """Another session (or a trigger) can notify a masked column's value: a name,
    which detection does not recognise. The notification still arrives, without it."""
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        assert codes(exchange(sock, wire.Query("LISTEN names"))) == []
        seeded.execute("SELECT pg_notify('names', full_name) FROM crm.customers")
        answers = exchange(sock, wire.Query("SELECT 1"))
    finally:
        sock.close()
    notifications = [p for k, p in answers if k == b"A"]
    assert len(notifications) == 3
    assert leaks(raw(answers)) == []
    assert all(p[4:] == b"names\0" + WITHHELD.encode() + b"\0" for p in notifications)


@pytest.mark.parametrize(
    ("table", "sql"),
    [
        ("(full_name text)", "SELECT full_name FROM customers"),
        ("(LIKE crm.customers)", "SELECT * FROM customers"),
    ],
    ids=["a column", "a star"],
)
def test_a_statement_planned_again_on_another_table_keeps_its_masking(
    masking_proxy: Proxy,
    seeded,  # noqa: F811
    table: str,
    sql: str,
) -> None:
    """PostgreSQL plans a prepared statement again when search_path changes: the
    same text may then read another table with the same column types, while the
    layout its Describe gave still names the first table."""
    seeded.execute(f"CREATE TABLE public.customers {table}")
    try:
        sock, _ = raw_login(masking_proxy, "alice")
        try:
            assert codes(exchange(sock, wire.Query("SET search_path = public, crm"))) == []
            described = exchange(
                sock,
                wire.Parse("s", sql),
                wire.Describe("S", "s"),
                wire.Sync(),
            )
            assert codes(described) == []
            assert codes(exchange(sock, wire.Query("SET search_path = crm"))) == []
            rows = exchange(sock, wire.Bind("", "s"), wire.Execute(""), wire.Sync())
        finally:
            sock.close()
    finally:
        seeded.execute("DROP TABLE public.customers")
    assert codes(rows) == []
    assert sum(1 for k, _ in rows if k == b"D") == 3
    assert leaks(raw(rows)) == []


def test_names_longer_than_postgresql_keeps_are_the_same_name(masking_proxy: Proxy) -> None:
    """PostgreSQL keys prepared statements and portals by their first 63 bytes:
    two longer names that share them are one statement."""
    long_a, long_b = "x" * 63 + "a", "x" * 63 + "b"
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        harmless = wire.Parse(long_b, "SELECT 'harmless'::text")
        assert codes(exchange(sock, harmless, wire.Sync())) == []
        assert codes(exchange(sock, wire.Close("S", long_a), wire.Sync())) == []
        leak = wire.Parse(long_a, "SELECT upper(full_name) FROM crm.customers")
        assert codes(exchange(sock, leak, wire.Sync())) == []
        rows = exchange(
            sock, wire.Bind("", long_b), wire.Describe("P", ""), wire.Execute(""), wire.Sync()
        )
    finally:
        sock.close()
    assert codes(rows) == []
    assert sum(1 for k, _ in rows if k == b"D") == 3
    assert leaks(raw(rows)) == []


def test_a_failed_declare_under_an_open_cursors_name_keeps_its_masking(
    masking_proxy: Proxy,
) -> None:
    """DECLARE under the name of an open cursor fails (42P03) and leaves it open:
    its rows are still masked as its own."""
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        for sql in (
            "BEGIN",
            "DECLARE c CURSOR FOR SELECT upper(full_name) FROM crm.customers",
            "SAVEPOINT s",
        ):
            assert codes(exchange(sock, wire.Query(sql))) == [], sql
        again = exchange(sock, wire.Query("DECLARE c CURSOR FOR SELECT 'harmless'::text"))
        assert codes(again) == ["42P03"]
        assert codes(exchange(sock, wire.Query("ROLLBACK TO SAVEPOINT s"))) == []
        rows = exchange(sock, wire.Query("FETCH ALL FROM c"))
    finally:
        sock.close()
    assert codes(rows) == []
    assert sum(1 for k, _ in rows if k == b"D") == 3
    assert leaks(raw(rows)) == []


def test_sql_cursors_and_protocol_portals_share_names(masking_proxy: Proxy) -> None:
    """A cursor DECLAREd in SQL is a portal a protocol Execute can run, and a
    portal a Bind made is a cursor SQL can FETCH from: a name used before for a
    harmless one must not lend its masking to the other."""
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        setup = exchange(
            sock,
            wire.Parse("harmless", "SELECT 'harmless'::text"),
            wire.Parse("leak", "SELECT upper(full_name) FROM crm.customers"),
            wire.Sync(),
        )
        assert codes(setup) == []
        # A protocol portal "c", described, then gone with its transaction.
        old = exchange(
            sock,
            wire.Bind("c", "harmless"),
            wire.Describe("P", "c"),
            wire.Execute("c"),
            wire.Sync(),
        )
        assert codes(old) == []
        assert codes(exchange(sock, wire.Query("BEGIN"))) == []
        declared = "DECLARE c CURSOR FOR SELECT upper(full_name) FROM crm.customers"
        assert codes(exchange(sock, wire.Query(declared))) == []
        executed = exchange(sock, wire.Execute("c"), wire.Sync())
        # A cursor "p" closed, then a protocol portal "p" FETCHed from in SQL.
        for sql in ("DECLARE p CURSOR FOR SELECT 'harmless'::text", "CLOSE p"):
            assert codes(exchange(sock, wire.Query(sql))) == []
        assert codes(exchange(sock, wire.Bind("p", "leak"), wire.Sync())) == []
        fetched = exchange(sock, wire.Query("FETCH ALL FROM p"))
        assert codes(exchange(sock, wire.Query("COMMIT"))) == []
    finally:
        sock.close()
    assert codes(executed) == [] and codes(fetched) == []
    assert [sum(1 for k, _ in a if k == b"D") for a in (executed, fetched)] == [3, 3]
    assert leaks(raw(executed)) == []
    assert leaks(raw(fetched)) == []


@pytest.mark.parametrize(
    ("store", "read_back"),
    [
        (
            "SELECT setval('public.loot_seq', account_no) FROM crm.customers WHERE id = 1",
            "SELECT last_value FROM public.loot_seq",
        ),
        (
            "SELECT pg_advisory_lock(account_no) FROM crm.customers WHERE id = 1",
            "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
            "WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        ),
        (
            "SELECT lowrite(lo_open(lo_create(0), 131072), convert_to(full_name, 'UTF8')) "
            "FROM crm.customers WHERE id = 1",
            "SELECT convert_from(lo_get(oid), 'UTF8') FROM pg_largeobject_metadata",
        ),
    ],
    ids=["a sequence", "an advisory lock", "a large object"],
)
def test_functions_that_keep_a_masked_value_are_refused(
    masking_proxy: Proxy,
    seeded,  # noqa: F811
    store: str,
    read_back: str,
) -> None:
    """A function that keeps its argument where a later statement reads it back
    moves a masked value out of its rule's reach."""
    seeded.execute("CREATE SEQUENCE IF NOT EXISTS public.loot_seq")
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        assert codes(exchange(sock, wire.Query("BEGIN"))) == []
        stored = exchange(sock, wire.Query(store))
        read = exchange(sock, wire.Query(read_back))
        exchange(sock, wire.Query("ROLLBACK"))
    finally:
        sock.close()
        seeded.execute("DROP SEQUENCE public.loot_seq")
    assert leaks(raw(stored) + raw(read)) == []
    assert codes(stored) == ["42501"]


def test_statements_after_a_schema_change_are_judged_as_after_it(
    seeded,  # noqa: F811
    start_proxy: ProxyFactory,
) -> None:
    """Steward resolves names with a catalog it reloads after DDL: a statement
    judged before that reload (the next one in the string) must not read a
    replaced view as the view it was."""
    seeded.execute("CREATE VIEW public.v AS SELECT 'x'::text AS a")
    try:
        proxy = start_proxy(POLICY)
        upstream_role = proxy.argv[proxy.argv.index("--upstream") + 1].split("//")[1]
        seeded.execute(f"ALTER VIEW public.v OWNER TO {upstream_role.split(':')[0].split('@')[0]}")
        sock, _ = raw_login(proxy, "alice")
        try:
            moved = exchange(
                sock,
                wire.Query(
                    "CREATE OR REPLACE VIEW public.v AS SELECT full_name AS a FROM crm.customers; "
                    "CREATE TABLE public.loot AS SELECT a FROM public.v"
                ),
            )
            read = exchange(sock, wire.Query("SELECT a FROM public.v"))
        finally:
            sock.close()
    finally:
        seeded.execute("DROP TABLE IF EXISTS public.loot; DROP VIEW public.v")
    assert codes(moved) == ["42501"]  # the CREATE TABLE AS: what v now holds is masked
    assert leaks(raw(read)) == []


def test_a_binary_copy_out_is_refused_when_detection_is_on(
    seeded,  # noqa: F811
    start_proxy: ProxyFactory,
) -> None:
    """Detection reads COPY rows as text or CSV: binary ones it cannot read."""
    proxy = start_proxy(DETECT_ONLY)
    card = (4716287144365186).to_bytes(8, "big")
    sock, _ = raw_login(proxy, "dave")
    try:
        sock.sendall(
            wire.encode(
                wire.Query(
                    "COPY (SELECT replace(substring(notes from '\\d{4} \\d{4} \\d{4} \\d{4}'), "
                    "' ', '')::bigint FROM crm.customers WHERE id = 1) TO STDOUT (FORMAT binary)"
                )
            )
        )
        answers = recv_messages(sock)
    finally:
        sock.close()
    assert card not in raw(answers)
    assert codes(answers) == ["42501"]


def test_a_reported_setting_is_read_by_detection(
    seeded,  # noqa: F811
    start_proxy: ProxyFactory,
) -> None:
    """The server reports some settings (application_name) to the client in a
    ParameterStatus: set_config moves any value there."""
    proxy = start_proxy(DETECT_ONLY)
    sock, _ = raw_login(proxy, "dave")
    try:
        answers = exchange(
            sock,
            wire.Query(
                "SELECT set_config('application_name', substring(notes from '\\S+@\\S+'), false) "
                "FROM crm.customers WHERE id = 1"
            ),
        )
    finally:
        sock.close()
    assert codes(answers) == []
    assert any(k == b"S" and p.startswith(b"application_name\0") for k, p in answers)
    assert leaks(raw(answers)) == []


CARD_NUMBER = (
    "SELECT replace(substring(notes from '\\d{4} \\d{4} \\d{4} \\d{4}'), ' ', '')::bigint "
    "FROM crm.customers WHERE id = 1"
)


def test_binary_rows_never_described_are_not_read_as_text(
    seeded,  # noqa: F811
    start_proxy: ProxyFactory,
) -> None:
    """Rows whose columns were never described have no types: detection reads each
    value as it comes. Asked for in binary (by the Bind, or by a BINARY cursor run
    by an Execute under its name), an int8 card number is eight bytes no test
    recognises: such rows must not pass as read."""
    proxy = start_proxy(DETECT_ONLY)
    card = (4716287144365186).to_bytes(8, "big")
    sock, _ = raw_login(proxy, "dave")
    try:
        bound = exchange(
            sock,
            wire.Parse("", CARD_NUMBER),
            wire.Bind("", "", result_formats=(1,)),
            wire.Execute(""),
            wire.Sync(),
        )
        cursor = exchange(
            sock,
            wire.Query(f"BEGIN; DECLARE c BINARY CURSOR FOR {CARD_NUMBER}"),
        )
        executed = exchange(sock, wire.Execute("c"), wire.Sync())
    finally:
        sock.close()
    assert codes(bound) == codes(cursor) == codes(executed) == []
    for answers in (bound, executed):
        rows = [p for k, p in answers if k == b"D"]
        assert len(rows) == 1
        assert card not in rows[0]


def test_a_cursor_declared_and_fetched_in_one_string_is_masked_as_declared(
    masking_proxy: Proxy,
) -> None:
    """The server's answers to a DECLARE and a FETCH after it arrive together: the
    FETCH's rows are planned by this DECLARE, not by an older cursor of its name."""
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        for sql in ("BEGIN", "DECLARE c CURSOR FOR SELECT 'harmless'::text", "CLOSE c"):
            assert codes(exchange(sock, wire.Query(sql))) == [], sql
        rows = exchange(
            sock,
            wire.Query(
                "DECLARE c CURSOR FOR SELECT upper(full_name) FROM crm.customers; FETCH ALL FROM c"
            ),
        )
    finally:
        sock.close()
    assert codes(rows) == []
    assert sum(1 for k, _ in rows if k == b"D") == 3
    assert leaks(raw(rows)) == []


def test_a_statement_prepared_and_executed_in_one_string_is_masked_as_prepared(
    masking_proxy: Proxy,
) -> None:
    """The same for SQL PREPARE and EXECUTE: not by an older statement of that name."""
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        assert codes(exchange(sock, wire.Query("PREPARE p AS SELECT 'harmless'::text"))) == []
        rows = exchange(
            sock,
            wire.Query(
                "DEALLOCATE p; PREPARE p AS SELECT upper(full_name) FROM crm.customers; EXECUTE p"
            ),
        )
    finally:
        sock.close()
    assert codes(rows) == []
    assert sum(1 for k, _ in rows if k == b"D") == 3
    assert leaks(raw(rows)) == []


def test_a_bind_sent_behind_a_prepare_binds_the_statement_it_prepares(
    masking_proxy: Proxy,
) -> None:
    """SQL PREPARE and DEALLOCATE share the protocol's statement names: a Bind sent
    right behind them, before their answer, binds what they leave, not an older
    statement of that name."""
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        assert codes(exchange(sock, wire.Query("PREPARE s AS SELECT 'harmless'::text"))) == []
        sock.sendall(
            b"".join(
                wire.encode(message)
                for message in (
                    wire.Query(
                        "DEALLOCATE s; PREPARE s AS SELECT upper(full_name) FROM crm.customers"
                    ),
                    wire.Bind("", "s"),
                    wire.Describe("P", ""),
                    wire.Execute(""),
                    wire.Sync(),
                )
            )
        )
        rows = recv_messages(sock, count=2)
    finally:
        sock.close()
    assert codes(rows) == []
    assert sum(1 for k, _ in rows if k == b"D") == 3
    assert leaks(raw(rows)) == []


@pytest.mark.parametrize("declare", ["simple", "extended"])
def test_an_execute_sent_behind_a_declare_runs_the_cursor(
    masking_proxy: Proxy, declare: str
) -> None:
    """A protocol Execute sent right behind a DECLARE (in SQL, or a prepared one
    run by its own Execute), before the server answered it, runs the cursor: not a
    portal a Bind once made under that name."""
    sock, _ = raw_login(masking_proxy, "alice")
    declared = "DECLARE c CURSOR FOR SELECT upper(full_name) FROM crm.customers"
    try:
        setup = exchange(
            sock,
            wire.Parse("harmless", "SELECT 'harmless'::text"),
            wire.Parse("declare", declared),
            wire.Sync(),
        )
        assert codes(setup) == []
        old = exchange(
            sock,
            wire.Bind("c", "harmless"),
            wire.Describe("P", "c"),
            wire.Execute("c"),
            wire.Sync(),
        )
        assert codes(old) == []
        assert codes(exchange(sock, wire.Query("BEGIN"))) == []
        if declare == "simple":
            first: tuple[wire.Message, ...] = (wire.Query(declared),)
        else:
            first = (wire.Bind("", "declare"), wire.Execute(""), wire.Sync())
        sock.sendall(b"".join(wire.encode(message) for message in (*first, wire.Execute("c"))))
        sock.sendall(wire.encode(wire.Sync()))
        rows = recv_messages(sock, count=2)
    finally:
        sock.close()
    assert codes(rows) == []
    assert sum(1 for k, _ in rows if k == b"D") == 3
    assert leaks(raw(rows)) == []


PADDING = "/* " + "x" * 4096 + " */"  # past what is analysed inline: traced by no lineage


def test_a_fetch_too_long_to_trace_is_masked_as_unknown(masking_proxy: Proxy) -> None:
    """A FETCH names no table: analysed off the event loop, with no lineage, its
    rows must not be taken for rows that read nothing masked."""
    sock, _ = raw_login(masking_proxy, "alice")
    try:
        for sql in ("BEGIN", "DECLARE c CURSOR FOR SELECT upper(full_name) FROM crm.customers"):
            assert codes(exchange(sock, wire.Query(sql))) == [], sql
        rows = exchange(sock, wire.Query(f"FETCH ALL FROM c {PADDING}"))
    finally:
        sock.close()
    assert codes(rows) == []
    assert sum(1 for k, _ in rows if k == b"D") == 3
    assert leaks(raw(rows)) == []


PREDICATES_ALLOWED = POLICY.replace(
    "    detect: true\n", "    detect: true\n    predicates: allow\n"
)


def test_a_declare_too_long_to_trace_is_refused_over_masked_columns(
    seeded,  # noqa: F811
    start_proxy: ProxyFactory,
) -> None:
    """Analysed off the event loop, a DECLARE has no lineage: the name of its cursor
    is not known, so a FETCH from it would be masked by an older cursor of that name."""
    proxy = start_proxy(PREDICATES_ALLOWED)
    sock, _ = raw_login(proxy, "alice")
    try:
        for sql in ("BEGIN", "DECLARE c CURSOR FOR SELECT 'harmless'::text", "CLOSE c"):
            assert codes(exchange(sock, wire.Query(sql))) == [], sql
        declared = exchange(
            sock,
            wire.Query(
                f"DECLARE c CURSOR FOR SELECT upper(full_name) FROM crm.customers {PADDING}"
            ),
        )
        rows = exchange(sock, wire.Query("FETCH ALL FROM c"))
    finally:
        sock.close()
    assert codes(declared) == ["42501"]
    assert leaks(raw(rows)) == []


def test_the_names_a_notice_gives_are_read_by_detection(
    seeded,  # noqa: F811
    start_proxy: ProxyFactory,
) -> None:
    """RAISE ... USING COLUMN, CONSTRAINT, DATATYPE, TABLE and SCHEMA put any text
    in the fields that otherwise name things."""
    proxy = start_proxy(DETECT_ONLY)
    card = (
        "(SELECT substring(notes from '\\d{4} \\d{4} \\d{4} \\d{4}') "
        "FROM crm.customers WHERE id = 1)"
    )
    options = ", ".join(
        f"{option} = {card}" for option in ("COLUMN", "CONSTRAINT", "DATATYPE", "TABLE", "SCHEMA")
    )
    sock, _ = raw_login(proxy, "dave")
    try:
        answers = exchange(
            sock, wire.Query(f"DO $$ BEGIN RAISE NOTICE 'hi' USING {options}; END $$")
        )
    finally:
        sock.close()
    assert codes(answers) == []
    assert any(k == b"N" for k, _ in answers)
    assert leaks(raw(answers)) == []


def test_a_query_sent_into_a_copy_from_stdin_does_not_shift_the_answers(
    masking_proxy: Proxy,
) -> None:
    """During COPY FROM STDIN the server takes any message but CopyData, CopyDone,
    CopyFail, Flush and Sync for a protocol violation: it reads that message's type
    byte alone, and ends the connection (synchronization lost) rather than answer
    the Query sent there with the next one's answers."""
    sock, _ = raw_login(masking_proxy, "alice")
    received: list[tuple[bytes, bytes]] = []
    try:
        assert codes(exchange(sock, wire.Query("CREATE TEMP TABLE scratch (x text)"))) == []
        sock.sendall(
            wire.encode(wire.Query("COPY scratch FROM STDIN"))
            + wire.encode(wire.Query("SELECT 'harmless'::text"))
        )
        received += recv_messages(sock)
        if received[-1][0] == b"Z":  # else the session ended
            received += exchange(sock, wire.Query("SELECT upper(full_name) FROM crm.customers"))
    finally:
        sock.close()
    assert leaks(raw(received)) == []


def test_only_the_citext_extensions_type_is_read_as_text(seeded) -> None:  # noqa: F811
    """A binary value of a type read as text is scanned as it comes: a domain over
    int8 that anyone may name ``citext`` in a schema of theirs is not text."""
    from steward_proxy.masking.catalog import QUERIES

    seeded.execute("CREATE SCHEMA lookalike; CREATE DOMAIN lookalike.citext AS int8")
    try:
        oid = seeded.execute("SELECT 'lookalike.citext'::regtype::oid").strip()
        assert oid not in seeded.execute(QUERIES["text_types"]).split()
    finally:
        seeded.execute("DROP SCHEMA lookalike CASCADE")
