"""The row filter against a row-by-row model: any rows, any plan, any cut into runs.

The filter rewrites a run of DataRows in one pass, slicing around the values
it replaces. The model decodes each row, applies each column's masker to each
value and encodes the row again; the two must give the same bytes for every
plan (constants, hash, email, detection, maskers that keep a value or return
long ones), every row (NULLs, long values, rows of another width) and every
way of cutting the rows into runs, wherever a run sits in its chunk.
"""

from __future__ import annotations

import itertools
import pickle
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steward_proxy import wire
from steward_proxy.masking import rowcode
from steward_proxy.masking.catalog import Catalog
from steward_proxy.masking.detect import NEEDED
from steward_proxy.masking.plan import Masker, MaskingConfig, Plan, plan_from_recipe
from steward_proxy.masking.rows import (
    MaskJob,
    looped_filter,
    offloading_filter,
    row_filter,
    run_job,
    specialized_filter,
)
from steward_proxy.masking.strategies import Strategies, Strategy, ValueMasker
from steward_proxy.wire import RemoteProtocolError

S = Strategies(b"row-key")
TEXT, INT4 = 25, 23
DETECTOR = Masker(MaskingConfig(detect=True), S, Catalog.from_rows([], [])).detector(set())
MASKERS: dict[str, ValueMasker] = {
    "redact": S.masker(Strategy("redact"), TEXT, False, frozenset()),
    "null": S.masker(Strategy("null"), TEXT, False, frozenset()),
    "hash": S.masker(Strategy("hash"), TEXT, False, frozenset()),
    "email": S.masker(Strategy("email"), TEXT, False, frozenset()),
    "partial": S.masker(Strategy("partial", 2), TEXT, False, frozenset()),
    "hash an int4": S.masker(Strategy("hash"), INT4, True, frozenset()),
    "detect": DETECTOR,
    "keep": lambda value: value,
    "lengthen": lambda value: value * 300,
}
VALUES = st.one_of(
    st.none(),
    st.binary(max_size=12),
    st.sampled_from(
        [
            b"ann@example.org",
            b"call 212-555-0147",
            b"536-22-8714",
            b"\x00\x00\x00\x07",
            "Zoë".encode(),
            b"x" * 300,
        ]
    ),
)


def data_row(*values: bytes | None) -> bytes:
    return wire.encode(wire.DataRow(values))


def model(maskers: list[ValueMasker | None], row: bytes) -> bytes:
    """What the filter must send for ``row``, one value at a time."""
    values = wire.decode_backend(wire.Frame(b"D", row)).values  # type: ignore[attr-defined]
    if len(values) != len(maskers):
        return data_row(*([None] * len(values)))
    return data_row(
        *(v if m is None or v is None else m(v) for m, v in zip(maskers, values, strict=True))
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[Plan, list[bytes]]:
    # Kept columns as often as masked ones, so that runs of them (a loop in the
    # specialized filter from four on) come up.
    column = st.none() | st.sampled_from(sorted(MASKERS))
    names = draw(st.lists(column, min_size=1, max_size=10))
    if all(n is None for n in names):
        names[draw(st.integers(0, len(names) - 1))] = draw(st.sampled_from(sorted(MASKERS)))
    maskers = [MASKERS[n] if n is not None else None for n in names]
    width = st.just(len(maskers)) | st.integers(0, 7)  # now and then, a row of another width
    rows = draw(
        st.lists(
            width.flatmap(lambda n: st.lists(VALUES, min_size=n, max_size=n)),
            min_size=1,
            max_size=8,
        )
    )
    # Detection's screen, on some of its columns: the filter then calls it only on values
    # the screen lets through. An equal table of its own is not run together with the others.
    screen = st.sampled_from([NEEDED, bytes(bytearray(NEEDED))])
    screens = {
        i: draw(screen) for i, n in enumerate(names) if n == "detect" and draw(st.booleans())
    }
    return Plan(maskers, screens=screens), [data_row(*values) for values in rows]


LOWER = bytes(0 if 0x61 <= byte <= 0x7A else 0x78 for byte in range(256))
"""A screen for ``bytes.upper``: what it stops has no letter to change."""


@st.composite
def screened_cases(draw: st.DrawFn) -> tuple[Plan, list[bytes]]:
    """Plans of mostly screened columns, in runs (screened at once)."""
    choices = ["detect"] * 4 + ["upper", None, "hash"]
    names = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=8))
    if "detect" not in names:
        names[0] = "detect"
    maskers = [
        bytes.upper if n == "upper" else MASKERS[n] if n is not None else None for n in names
    ]
    # Detection's table, or an equal one of a column's own; upper-casing's own table.
    # A run is screened at once only by one table: a column with another is on its own.
    own = st.integers(0, 5).map(lambda n: NEEDED if n else bytes(bytearray(NEEDED)))
    screens = {i: draw(own) for i, n in enumerate(names) if n == "detect"}
    screens |= {i: LOWER for i, n in enumerate(names) if n == "upper"}
    width = st.just(len(maskers)) | st.integers(0, 7)
    rows = draw(
        st.lists(
            width.flatmap(lambda n: st.lists(VALUES, min_size=n, max_size=n)),
            min_size=1,
            max_size=8,
        )
    )
    return Plan(maskers, screens=screens), [data_row(*values) for values in rows]


FILTERS = [
    pytest.param(row_filter, id="the filter a plan gets"),
    pytest.param(specialized_filter, id="the filter written for the plan's shape"),
    pytest.param(looped_filter, id="the general loop"),
]
Build = Callable[[Plan], Callable[[bytes, int, int], bytes]]


@pytest.mark.parametrize("build", FILTERS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=cases() | screened_cases(),
    cuts=st.lists(st.integers(1, 7), max_size=4),
    around=st.binary(max_size=6),
)
def test_any_cut_into_runs_gives_the_rows_the_model_gives(
    build: Build,
    case: tuple[Plan, list[bytes]],
    cuts: list[int],
    around: bytes,
) -> None:
    plan, rows = case
    maskers = plan.maskers
    rewrite = build(plan)
    expected = b"".join(model(maskers, row) for row in rows)
    run = b"".join(rows)
    assert rewrite(run, 0, len(run)) == expected
    # The same rows cut into several runs, each inside a chunk with other bytes around it.
    edges = sorted({0, len(rows), *(c for c in cuts if c < len(rows))})
    out = b""
    for a, b in itertools.pairwise(edges):
        chunk = around + b"".join(rows[a:b]) + around
        out += rewrite(chunk, len(around), len(chunk) - len(around))
    assert out == expected


@pytest.mark.parametrize("build", FILTERS)
def test_a_row_longer_than_the_header_table_gets_its_length(build: Build) -> None:
    rewrite = build(Plan([MASKERS["redact"], None, MASKERS["lengthen"]]))
    row = data_row(b"secret", b"y" * 5000, b"abc")
    assert rewrite(row, 0, len(row)) == data_row(b"****", b"y" * 5000, b"abc" * 300)


@pytest.mark.parametrize("build", FILTERS)
def test_a_row_of_no_columns_ends_the_data(build: Build) -> None:
    # Too short to hold the first value's length the specialized filter reads with the header.
    maskers = [None, MASKERS["hash"]]
    rows = [data_row(b"1", b"Ann"), data_row(), data_row(b"2", b"Bob"), data_row()]
    run = b"".join(rows)
    expected = b"".join(model(maskers, row) for row in rows)
    assert build(Plan(maskers))(run, 0, len(run)) == expected


def test_a_plan_of_many_masked_columns_goes_through_the_general_loop() -> None:
    maskers = [MASKERS["hash"], None, MASKERS["redact"], MASKERS["detect"]] * 12
    values = [b"Ann", b"kept", None, b"call 212-555-0147"] * 12
    rows = [data_row(*values), data_row(*values[:5]), data_row(*reversed(values))]
    run = b"".join(rows)
    expected = b"".join(model(maskers, row) for row in rows)
    assert row_filter(Plan(maskers))(run, 0, len(run)) == expected


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(("keep", "keep"), id="nothing masked"),
        pytest.param(("keep", "hash"), id="a kind of column it does not know"),
    ],
)
def test_the_specialized_source_is_written_for_known_shapes_only(shape: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        rowcode.source(shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("build", FILTERS)
def test_a_value_past_its_row_in_a_run_of_screened_columns_is_a_protocol_error(
    build: Build,
) -> None:
    masked = build(Plan([None, DETECTOR, DETECTOR], screens={1: NEEDED, 2: NEEDED}))
    row = malformed(3, (1, b"a"), (2, b"bc"), (50, b"de"))
    for data in (row, row + data_row(b"1", b"ann@example.org", b"x")):
        with pytest.raises(RemoteProtocolError, match="overrun"):
            masked(data, 0, len(data))


def malformed(count: int, *fields: tuple[int, bytes]) -> bytes:
    """A DataRow whose fields say what they like about their sizes."""
    body = struct.pack("!H", count) + b"".join(struct.pack("!i", n) + v for n, v in fields)
    return b"D" + struct.pack("!i", len(body) + 4) + body


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(malformed(2, (2, b"ab"), (50, b"cd")), id="a value past its row"),
        pytest.param(malformed(2, (2, b"ab")), id="a column past its row"),
        pytest.param(malformed(3, (2, b"ab")), id="a row of another width past its end"),
        pytest.param(
            malformed(1, (50, b"ab")), id="the last value of a row of another width past its end"
        ),
    ],
)
@pytest.mark.parametrize("masker", ["redact", "hash", "detect", "screened detection"])
@pytest.mark.parametrize("build", FILTERS)
def test_values_that_overrun_their_row_are_a_protocol_error(
    row: bytes, masker: str, build: Build
) -> None:
    if masker == "screened detection":
        masked = build(Plan([None, DETECTOR], screens={1: NEEDED}))
    else:
        masked = build(Plan([None, MASKERS[masker]]))
    for data in (row, row + data_row(b"123-45-6789", b"536-22-8714")):
        with pytest.raises(RemoteProtocolError, match="overrun"):
            masked(data, 0, len(data))


def test_a_shape_is_compiled_only_once_its_rows_pay_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client chooses the shapes (the columns it selects, a Bind's result formats
    per column): one asked for once, with few rows, costs no compile; one whose
    rows add up is compiled once, and a request switches to it between runs."""
    written: list[tuple[str, ...]] = []
    source = rowcode.source

    def counted(shape: tuple[rowcode.Kind, ...]) -> str:
        written.append(shape)
        return source(shape)

    monkeypatch.setattr(rowcode, "source", counted)
    hashed = MASKERS["hash"]
    for width in range(40, 140):  # each width its own shape
        maskers = [hashed, *[None] * (width - 1)]
        row = data_row(b"Ann", *[None] * (width - 1))
        assert row_filter(Plan(maskers))(row, 0, len(row)) == model(maskers, row)
    assert written == []
    maskers = [None, hashed] * 20 + [None] * 7  # a shape no other test plans
    row = data_row(*[b"x" * 100, b"Ann"] * 20, *[None] * 7)
    rewrite = row_filter(Plan(maskers))
    run = row * 20
    out = [rewrite(run, 0, len(run)) for _ in range(40)]  # well past what pays for it
    assert out == [model(maskers, row) * 20] * 40
    assert len(written) == 1
    again = row_filter(Plan(maskers))
    assert again(run, 0, len(run)) == out[0]
    assert len(written) == 1


RECIPE_COLUMNS = st.none() | st.tuples(
    st.sampled_from(["redact", "null", "hash", "email", "partial"]),
    st.integers(0, 5),
    st.sampled_from([TEXT, INT4, 20, 21, 1082]),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(
    columns=st.lists(RECIPE_COLUMNS, min_size=1, max_size=8).filter(
        lambda cs: any(c is not None for c in cs)
    ),
    rows=st.lists(st.lists(VALUES, min_size=0, max_size=8), min_size=1, max_size=8),
    least=st.integers(1, 200),
)
def test_a_run_masked_elsewhere_is_what_the_plan_gives_in_the_session(
    columns: list[tuple[str, int, int, bool, bool] | None],
    rows: list[list[bytes | None]],
    least: int,
) -> None:
    recipe = (b"row-key", tuple(columns))
    plan = plan_from_recipe(recipe)
    # Rows mostly of the plan's width; others have every value NULL.
    run = b"".join(data_row(*(values + [None] * len(columns))[: len(columns)]) for values in rows)
    run += data_row(*rows[0])
    expected = row_filter(plan)(run, 0, len(run))
    assert expected == b"".join(
        model(plan.maskers, row) for row in [*split_rows(run)]
    )  # the model agrees, so the comparison below is with what is right
    rewrite = offloading_filter(plan, least)
    chunk = b"xx" + run + b"yy"
    out = rewrite(chunk, 2, len(chunk) - 2)
    if len(run) < least:
        assert out == expected  # short runs are masked in place
    else:
        assert isinstance(out, MaskJob) and out.recipe == recipe and out.rows == run
        assert run_job(*pickle.loads(pickle.dumps((out.recipe, out.rows)))) == expected


def split_rows(run: bytes) -> list[bytes]:
    rows, pos = [], 0
    while pos < len(run):
        end = pos + 1 + struct.unpack_from("!i", run, pos + 1)[0]
        rows.append(run[pos:end])
        pos = end
    return rows


def test_a_plan_without_a_recipe_cannot_be_masked_elsewhere() -> None:
    with pytest.raises(ValueError, match="recipe"):
        offloading_filter(Plan([MASKERS["detect"]]), 1)


def test_a_job_of_rows_that_overrun_is_the_protocol_error_it_is_in_place() -> None:
    recipe = (b"row-key", (("redact", 4, TEXT, False, True),))
    bad = malformed(1, (50, b"short"))
    with pytest.raises(RemoteProtocolError):
        row_filter(plan_from_recipe(recipe))(bad, 0, len(bad))
    with pytest.raises(RemoteProtocolError):
        run_job(recipe, bad)


def test_a_job_and_a_plan_never_show_the_key_or_the_rows_in_their_repr() -> None:
    recipe = (b"the-hash-key", (("hash", 4, TEXT, False, True),))
    job = MaskJob(recipe, data_row(b"536-22-8714"))
    plan = plan_from_recipe(recipe)
    for shown in (repr(job), repr(plan)):
        assert "the-hash-key" not in shown and "536-22-8714" not in shown
