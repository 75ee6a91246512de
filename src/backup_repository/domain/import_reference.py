"""Which objects of a reference deployment's bucket become versions (``backup-repository
import-reference``): pure decisions over what was listed, what the reference database says
and what is already registered. Reading, hashing and writing happen in
``services/import_reference.py``.

A version number comes from the object's name through the collection's
``filenameTemplate`` or, when the reference database is read, from its row. The decisions:

- an object whose name does not stand for a version, or whose number another object also
  claims, is reported and left alone;
- a number or an object already registered in our database is skipped silently when it is
  the same object (re-running registers nothing twice), and reported as a conflict when it
  is not: nothing registered is ever overwritten;
- the collection's version counter must end above every number an object in the bucket
  carries, registered or not, so that the server never hands out a number whose name is
  taken (it would overwrite that object, or delete it as the leftover of a crashed upload).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from backup_repository.domain.templates import (
    MAX_VERSION_NUMBER,
    FilenameTemplate,
    TemplateMismatch,
)


class Problem(StrEnum):
    """Why an object (or a reference row) was not registered."""

    NOT_MATCHING = "not-matching"  # the name does not stand for a version number
    AMBIGUOUS = "ambiguous"  # several objects (or rows) claim one number
    CONFLICT = "conflict"  # the number or the object is registered as something else
    MISSING = "missing"  # a reference row whose object is not in the bucket
    UNREFERENCED = "unreferenced"  # an object no live reference row names
    NOT_OPENPGP = "not-openpgp"  # the object is not an encrypted OpenPGP message
    UNREADABLE = "unreadable"  # the storage failed while reading the object


@dataclass(frozen=True)
class Finding:
    key: str  # the object key, or "vN" for a reference row without an object
    problem: Problem
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem.value}: {self.message}"


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    last_modified: datetime | None = None


@dataclass(frozen=True)
class KnownVersion:
    """A version already in our database, rotated ones included."""

    number: int
    storage_key: str
    size: int
    deleted: bool = False


@dataclass(frozen=True)
class ReferenceRow:
    """A live row of the reference's ``uploaded_versions`` table."""

    number: int
    filename: str
    size: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    uploader: str = ""
    session_id: str = ""


@dataclass(frozen=True)
class Candidate:
    """An object to read, check and register as version ``number``."""

    number: int
    key: str
    filename: str
    size: int
    last_modified: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    uploader: str = ""
    session_id: str = ""


@dataclass(frozen=True)
class ImportPlan:
    candidates: tuple[Candidate, ...]
    already_registered: tuple[int, ...]
    findings: tuple[Finding, ...]
    # The highest version number any object of the collection carries (0: none).
    highest_number: int


def plan_import(
    collection: str,
    template: str,
    objects: Iterable[ListedObject],
    known: Iterable[KnownVersion],
    reference: Sequence[ReferenceRow] | None = None,
) -> ImportPlan:
    """Decide what to register for ``collection`` from the objects listed under
    ``<collection>/``. ``reference`` (the reference database's live rows of the collection)
    replaces the names as the source of numbers when given."""
    names = FilenameTemplate(template)
    prefix = f"{collection}/"
    listed = {o.key: o for o in objects if o.key.startswith(prefix)}
    findings: list[Finding] = []

    numbered: dict[str, int] = {}  # key -> number its name stands for
    for key in sorted(listed):
        filename = key[len(prefix) :]
        try:
            if "/" in filename:
                raise TemplateMismatch("is in a sub-folder, not a version of the collection")
            numbered[key] = names.number_of(filename)
        except TemplateMismatch as exc:
            if reference is None:
                findings.append(Finding(key, Problem.NOT_MATCHING, f"name {exc}"))
    highest = max(numbered.values(), default=0)

    if reference is None:
        claims = [
            Candidate(
                number=number,
                key=key,
                filename=key[len(prefix) :],
                size=listed[key].size,
                last_modified=listed[key].last_modified,
            )
            for key, number in numbered.items()
        ]
    else:
        claims = _claims_from_reference(prefix, listed, reference, findings)
        highest = max([highest, *(c.number for c in claims)])

    by_number: dict[int, list[Candidate]] = defaultdict(list)
    for claim in claims:
        by_number[claim.number].append(claim)
    unique: list[Candidate] = []
    for number in sorted(by_number):
        group = by_number[number]
        if len(group) == 1:
            unique.append(group[0])
            continue
        others = ", ".join(c.key for c in group)
        for claim in group:
            findings.append(
                Finding(
                    claim.key,
                    Problem.AMBIGUOUS,
                    f"version {number} is claimed by several objects ({others}); none is "
                    f"registered",
                )
            )

    candidates, already = _against_known(unique, known, findings)
    findings.sort(key=lambda f: f.key)
    return ImportPlan(tuple(candidates), tuple(already), tuple(findings), highest)


def _claims_from_reference(
    prefix: str,
    listed: dict[str, ListedObject],
    rows: Sequence[ReferenceRow],
    findings: list[Finding],
) -> list[Candidate]:
    claims: list[Candidate] = []
    named: dict[str, list[ReferenceRow]] = defaultdict(list)
    for row in rows:
        named[prefix + row.filename].append(row)
    for key, group in sorted(named.items()):
        if len(group) > 1:
            numbers = ", ".join(f"v{r.number}" for r in sorted(group, key=lambda r: r.number))
            findings.append(
                Finding(
                    key,
                    Problem.AMBIGUOUS,
                    f"the reference database names this object for several versions "
                    f"({numbers}); none is registered",
                )
            )
            continue
        row = group[0]
        if not 1 <= row.number <= MAX_VERSION_NUMBER:
            findings.append(
                Finding(key, Problem.NOT_MATCHING, f"reference row has version {row.number}")
            )
            continue
        found = listed.get(key)
        if found is None:
            findings.append(
                Finding(
                    f"v{row.number}",
                    Problem.MISSING,
                    f"the reference database records {key}, which is not in the storage",
                )
            )
            continue
        if row.size is not None and row.size != found.size:
            findings.append(
                Finding(
                    key,
                    Problem.CONFLICT,
                    f"the reference database records v{row.number} with {row.size} bytes, "
                    f"the object has {found.size}",
                )
            )
            continue
        claims.append(
            Candidate(
                number=row.number,
                key=key,
                filename=key[len(prefix) :],
                size=found.size,
                last_modified=found.last_modified,
                created_at=row.created_at,
                updated_at=row.updated_at,
                uploader=row.uploader,
                session_id=row.session_id,
            )
        )
    for key in sorted(set(listed) - set(named)):
        findings.append(
            Finding(
                key,
                Problem.UNREFERENCED,
                "no live row of the reference database names this object (a version it "
                "deleted, or not one of its uploads)",
            )
        )
    return claims


def _against_known(
    claims: Sequence[Candidate], known: Iterable[KnownVersion], findings: list[Finding]
) -> tuple[list[Candidate], list[int]]:
    known_list = list(known)
    by_number = {k.number: k for k in known_list}
    by_key = {k.storage_key: k for k in known_list}
    candidates: list[Candidate] = []
    already: list[int] = []
    for claim in claims:
        registered = by_number.get(claim.number)
        if registered is not None:
            if registered.storage_key != claim.key:
                findings.append(
                    Finding(
                        claim.key,
                        Problem.CONFLICT,
                        f"version {claim.number} is already registered for "
                        f"{registered.storage_key}",
                    )
                )
            elif registered.deleted or registered.size == claim.size:
                already.append(claim.number)
            else:
                findings.append(
                    Finding(
                        claim.key,
                        Problem.CONFLICT,
                        f"version {claim.number} is registered with {registered.size} bytes, "
                        f"the object now has {claim.size}",
                    )
                )
            continue
        other = by_key.get(claim.key)
        if other is not None:
            findings.append(
                Finding(
                    claim.key,
                    Problem.CONFLICT,
                    f"the object is already registered as version {other.number}",
                )
            )
            continue
        candidates.append(claim)
    return candidates, already
