"""Problem reports of the configuration: a :class:`ConfigProblem` names the file, the
object and the dotted path of the field, and says in an operator's words what is wrong
(pydantic's validation errors included) and, where it can, what to write instead."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic_core import ErrorDetails

from backup_repository.services.ports import ConfigProblem

if TYPE_CHECKING:
    from backup_repository.config.documents import Document


@dataclass(frozen=True)
class ProblemFactory:
    """Makes the problems of one document."""

    document: Document

    def __call__(self, message: str, field: str = "") -> ConfigProblem:
        doc = self.document
        name = doc.name
        if not name:
            message = f"document {doc.index}: {message}"
        return ConfigProblem(
            source=doc.source, message=message, kind=doc.kind, name=name, field=field
        )


# --- pydantic errors in operator words ---------------------------------------------------------


def dotted_path(loc: Iterable[int | str]) -> str:
    path = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def operator_message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "value_error":
        ctx = error.get("ctx") or {}
        cause = ctx.get("error")
        if cause is not None:
            return str(cause)
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (misspelt fields are refused, not ignored)"
    message = error["msg"]
    if kind.endswith("_type"):
        got = type(error.get("input")).__name__
        message = f"{message}, got {got}"
        if kind == "string_type" and got in ("int", "float", "bool"):
            message += " (put the value in quotes)"
    return message
