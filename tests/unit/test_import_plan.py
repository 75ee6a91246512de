"""File names read back through the filenameTemplate, and the import decisions
(domain/templates.py, domain/import_reference.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_repository.domain.import_reference import (
    KnownVersion,
    ListedObject,
    Problem,
    ReferenceRow,
    plan_import,
)
from backup_repository.domain.templates import (
    MAX_VERSION_NUMBER,
    FilenameTemplate,
    TemplateMismatch,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


# -- templates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "filename", "number"),
    [
        ("db-${version}.sql.gz.asc", "db-1.sql.gz.asc", 1),
        ("db-${version}.sql.gz.asc", "db-42.sql.gz.asc", 42),
        ("${version}", "7", 7),
        ("${version}.gpg", "2147483647.gpg", MAX_VERSION_NUMBER),
        ("a.${version}.${version}.gpg", "a.12.12.gpg", 12),  # ours: every placeholder
        ("a.${version}.${version}.gpg", "a.12.${version}.gpg", 12),  # the reference's: first
        ("x${version}1", "x111", 11),
        ("we(ird)+[${version}]*", "we(ird)+[3]*", 3),  # regex characters are literal
    ],
)
def test_number_of_recovers_the_version(template: str, filename: str, number: int) -> None:
    assert FilenameTemplate(template).number_of(filename) == number


@pytest.mark.parametrize(
    ("template", "filename", "reason"),
    [
        ("db-${version}.gpg", "db-.gpg", "does not match"),
        ("db-${version}.gpg", "db-1.gpg.bak", "does not match"),
        ("db-${version}.gpg", "other-1.gpg", "does not match"),
        ("db-${version}.gpg", "db-v1.gpg", "does not match"),
        ("db-${version}.gpg", "db-01.gpg", "leading zeros"),
        ("db-${version}.gpg", "db-0.gpg", "version number 0"),
        ("db-${version}.gpg", "db-2147483648.gpg", "too large"),
        ("db-${version}.gpg", "db-१.gpg", "does not match"),  # non-ASCII digit
        ("a.${version}.${version}", "a.1.2", "does not match"),
    ],
)
def test_number_of_refuses_other_names(template: str, filename: str, reason: str) -> None:
    with pytest.raises(TemplateMismatch, match=reason):
        FilenameTemplate(template).number_of(filename)


def test_a_template_needs_the_placeholder() -> None:
    with pytest.raises(ValueError, match="must contain"):
        FilenameTemplate("static.gpg")


@given(
    st.integers(min_value=1, max_value=MAX_VERSION_NUMBER),
    st.text(alphabet="ab-_.x0123456789", max_size=8),
    st.text(alphabet="ab-_.x0123456789", max_size=8),
)
def test_rendered_names_read_back(number: int, before: str, after: str) -> None:
    template = FilenameTemplate(f"{before}${{version}}{after}")
    assert template.number_of(template.render(number)) == number


# -- plans from names ------------------------------------------------------------------------


def listed(*names: str, size: int = 10) -> list[ListedObject]:
    return [ListedObject(f"db/{name}", size, T0) for name in names]


def test_names_become_candidates_and_the_rest_is_reported() -> None:
    plan = plan_import(
        "db",
        "db-${version}.gpg",
        [*listed("db-1.gpg", "db-3.gpg", "notes.txt", "db-01.gpg", "sub/db-4.gpg")],
        known=[],
    )
    assert [(c.number, c.key) for c in plan.candidates] == [(1, "db/db-1.gpg"), (3, "db/db-3.gpg")]
    assert {(f.key, f.problem) for f in plan.findings} == {
        ("db/notes.txt", Problem.NOT_MATCHING),
        ("db/db-01.gpg", Problem.NOT_MATCHING),
        ("db/sub/db-4.gpg", Problem.NOT_MATCHING),
    }
    assert plan.highest_number == 3


def test_objects_of_other_collections_are_ignored() -> None:
    objects = [ListedObject("dbx/db-1.gpg", 1), ListedObject("db/db-2.gpg", 1)]
    plan = plan_import("db", "db-${version}.gpg", objects, known=[])
    assert [c.number for c in plan.candidates] == [2]
    assert plan.findings == ()


def test_two_names_for_one_number_are_both_refused_but_counted() -> None:
    plan = plan_import("db", "a.${version}.${version}", listed("a.5.5", "a.5.${version}"), [])
    assert plan.candidates == ()
    assert {f.problem for f in plan.findings} == {Problem.AMBIGUOUS}
    assert len(plan.findings) == 2
    assert plan.highest_number == 5


def test_registered_versions_are_skipped_and_differences_reported() -> None:
    known = [
        KnownVersion(1, "db/db-1.gpg", 10),  # the same object: nothing to do
        KnownVersion(2, "db/db-2.gpg", 99),  # same key, other size: conflict
        KnownVersion(3, "db/elsewhere", 10),  # number taken by another object
        KnownVersion(4, "db/db-4.gpg", 1, deleted=True),  # rotated out, not yet purged
        KnownVersion(9, "db/db-5.gpg", 10),  # object registered under another number
    ]
    plan = plan_import(
        "db", "db-${version}.gpg", listed(*(f"db-{n}.gpg" for n in range(1, 7))), known
    )
    assert plan.already_registered == (1, 4)
    assert [c.number for c in plan.candidates] == [6]
    conflicts = {f.key: f.message for f in plan.findings if f.problem is Problem.CONFLICT}
    assert set(conflicts) == {"db/db-2.gpg", "db/db-3.gpg", "db/db-5.gpg"}
    assert "99 bytes" in conflicts["db/db-2.gpg"]
    assert "db/elsewhere" in conflicts["db/db-3.gpg"]
    assert "version 9" in conflicts["db/db-5.gpg"]
    assert plan.highest_number == 6


# -- plans from the reference database -------------------------------------------------------


def test_reference_rows_give_numbers_times_and_uploaders() -> None:
    created = datetime(2023, 1, 2, 3, 4, 5, tzinfo=UTC)
    rows = [
        ReferenceRow(7, "db-7.gpg", 10, created, created, "alice", "s" * 64),
        ReferenceRow(8, "renamed.gpg", 10, created, created, "bob", ""),
        ReferenceRow(9, "gone.gpg", 10, created, created, "bob", ""),
        ReferenceRow(10, "short.gpg", 11, created, created, "bob", ""),
    ]
    objects = listed("db-7.gpg", "renamed.gpg", "short.gpg", "db-12.gpg", "junk")
    plan = plan_import("db", "db-${version}.gpg", objects, [], rows)
    by_number = {c.number: c for c in plan.candidates}
    assert sorted(by_number) == [7, 8]
    assert by_number[7].created_at == created
    assert by_number[7].uploader == "alice"
    assert by_number[8].key == "db/renamed.gpg"
    problems = {(f.key, f.problem) for f in plan.findings}
    assert problems == {
        ("v9", Problem.MISSING),
        ("db/short.gpg", Problem.CONFLICT),  # 11 bytes recorded, 10 stored
        ("db/db-12.gpg", Problem.UNREFERENCED),
        ("db/junk", Problem.UNREFERENCED),
    }
    # db-12.gpg is not registered, but its name is kept free: the counter goes past it.
    assert plan.highest_number == 12


def test_reference_rows_claiming_one_number_or_one_object_are_refused() -> None:
    rows = [
        ReferenceRow(1, "a.gpg"),
        ReferenceRow(1, "b.gpg"),
        ReferenceRow(2, "c.gpg"),
        ReferenceRow(3, "c.gpg"),
    ]
    plan = plan_import("db", "db-${version}.gpg", listed("a.gpg", "b.gpg", "c.gpg"), [], rows)
    assert plan.candidates == ()
    assert {(f.key, f.problem) for f in plan.findings} == {
        ("db/a.gpg", Problem.AMBIGUOUS),
        ("db/b.gpg", Problem.AMBIGUOUS),
        ("db/c.gpg", Problem.AMBIGUOUS),
    }
