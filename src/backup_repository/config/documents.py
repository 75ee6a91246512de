"""The YAML side of the configuration: one file's text to :class:`Document` objects.

Bad YAML anywhere in a file is one problem for the file and none of its documents is
used; a duplicated key in a mapping is bad YAML (as kubectl has it). In the reference
layout (``backupusers/admin.yaml`` holds BackupUser ``admin``) a document that contradicts
its file's place is a problem too. Building the snapshot from the documents is
:mod:`backup_repository.config.loader`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from backup_repository.config.models import KIND_CHANNEL, KIND_COLLECTION, KIND_SECRET, KIND_USER
from backup_repository.config.problems import ProblemFactory
from backup_repository.services.ports import ConfigProblem

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]


class _StrictLoader(_SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (as kubectl does): silently
    keeping the last ``deactivated:`` or ``roles:`` would hide a mistake."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return result


@dataclass(frozen=True)
class Document:
    """One YAML document (one object) and where it came from."""

    source: str
    index: int  # position in its file, from 1
    body: Mapping[str, Any]

    @property
    def kind(self) -> str:
        kind = self.body.get("kind")
        return kind if isinstance(kind, str) else ""

    @property
    def api_version(self) -> str:
        value = self.body.get("apiVersion")
        return value if isinstance(value, str) else ""

    @property
    def name(self) -> str:
        metadata = self.body.get("metadata")
        if isinstance(metadata, Mapping):
            name = metadata.get("name")
            if isinstance(name, str):
                return name
        return ""

    @property
    def namespace(self) -> str:
        metadata = self.body.get("metadata")
        if isinstance(metadata, Mapping):
            namespace = metadata.get("namespace")
            if isinstance(namespace, str):
                return namespace
        return ""


@dataclass(frozen=True)
class Placement:
    """What a file of the reference layout must hold: one object of ``kind`` named like the
    file (``backupusers/admin.yaml`` holds BackupUser ``admin``) in ``namespace``."""

    kind: str
    name: str
    namespace: str


@dataclass(frozen=True)
class SourceFile:
    source: str
    text: str
    placement: Placement | None = None


@dataclass(frozen=True)
class UnreadFile:
    """A file (or folder) whose objects are unknown: it could not be read or parsed. A
    reference that finds nothing may be pointing into it. ``kind`` and ``name`` narrow what
    it can hold (the reference layout's folders and file names); empty: anything."""

    source: str
    kind: str = ""
    name: str = ""

    def may_hold(self, kind: str, name: str) -> bool:
        return self.kind in ("", kind) and self.name in ("", name)

    @classmethod
    def at(cls, source: str, placement: Placement | None) -> UnreadFile:
        if placement is None:
            return cls(source)
        return cls(source, placement.kind, placement.name)


@dataclass(frozen=True)
class ParsedFile:
    documents: tuple[Document, ...]
    problems: tuple[ConfigProblem, ...]
    # Set when the file could not be parsed: none of its objects is known.
    unread: UnreadFile | None = None


def parse_yaml(source: str, text: str, placement: Placement | None = None) -> ParsedFile:
    """The documents of one file. Bad YAML anywhere in the file is one problem for the file
    (with the line, the column and the offending line) and none of its documents is used.
    Empty documents are skipped; a ``kind: List`` is unpacked into its ``items``."""
    try:
        raw = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as exc:
        hide = _holds_secret(text, placement)
        problem = ConfigProblem(source=source, message=yaml_error_message(exc, text, hide))
        return ParsedFile((), (problem,), UnreadFile.at(source, placement))

    bodies: list[Mapping[str, Any]] = []
    for item in raw:
        if isinstance(item, Mapping) and item.get("kind") == "List":
            items = item.get("items")
            if isinstance(items, list):
                bodies.extend(entry for entry in items if isinstance(entry, Mapping))
        elif isinstance(item, Mapping):
            bodies.append(item)
        # Scalars, lists and empty documents are not objects: nothing to load.

    documents: list[Document] = []
    problems: list[ConfigProblem] = []
    for position, body in enumerate(bodies, start=1):
        document = Document(source=source, index=position, body=body)
        misplaced = _check_placement(document, placement) if placement else None
        if misplaced is not None:
            problems.append(misplaced)
        else:
            documents.append(document)
    return ParsedFile(tuple(documents), tuple(problems))


def _check_placement(document: Document, placement: Placement) -> ConfigProblem | None:
    if our_kind(document) is None:
        return None  # other kinds are ignored wherever they are
    problem = ProblemFactory(document)
    if document.kind != placement.kind:
        return problem(
            f"this folder holds {placement.kind} objects, but the document is a {document.kind}",
            "kind",
        )
    if document.name and document.name != placement.name:
        return problem(
            f"metadata.name {document.name!r} does not match the file name: in this layout "
            f"the file must be named {document.name}.yaml",
            "metadata.name",
        )
    if document.namespace and document.namespace != placement.namespace:
        return problem(
            f"metadata.namespace {document.namespace!r} contradicts the folder of namespace "
            f"{placement.namespace!r}",
            "metadata.namespace",
        )
    return None


def our_kind(document: Document) -> str | None:
    """Our kind for the document, or None for anything we do not load."""
    kind = document.kind
    # A wrong apiVersion on one of our kinds is reported by the model, not skipped.
    return kind if kind in (KIND_USER, KIND_COLLECTION, KIND_SECRET, KIND_CHANNEL) else None


# --- YAML errors in operator words -------------------------------------------------------------

_EXCERPT_CHARS = 80
_SECRET_KIND = re.compile(r"^\s*kind\s*:\s*[\"']?Secret[\"']?\s*(#.*)?$", re.MULTILINE)
_KEY_PART = re.compile(r"^(\s*(?:-\s+)?[^\s:#][^:#]*:)(\s.*)?$")
# Keys whose values are not shown even outside a Secret's file (an inline password hash).
_SENSITIVE_KEY = re.compile(r"password|secret|token|hash", re.IGNORECASE)


def yaml_error_message(exc: yaml.YAMLError, text: str, hide_values: bool = False) -> str:
    """``invalid YAML at line L, column C: <what>; line N reads: <excerpt>``. Lines and
    columns count from 1, as editors do. With ``hide_values`` (a Secret's file) the excerpt
    keeps a mapping key but not its value; so it does for keys such as ``password``
    anywhere."""
    if not isinstance(exc, yaml.MarkedYAMLError) or exc.problem_mark is None:
        return "invalid YAML: " + " ".join(str(exc).split())
    mark = exc.problem_mark
    what = " ".join((exc.problem or "cannot be parsed").split())
    message = f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {what}"
    context = exc.context_mark
    if (
        exc.context
        and context is not None
        and (context.line, context.column)
        != (
            mark.line,
            mark.column,
        )
    ):
        message += (
            f" ({' '.join(exc.context.split())} that starts at line {context.line + 1}, "
            f"column {context.column + 1})"
        )
    lines = text.splitlines()
    if 0 <= mark.line < len(lines) and lines[mark.line][mark.column : mark.column + 1] == "\t":
        message += " (a tab character: YAML is indented with spaces only)"
    shown = mark.line
    if not (0 <= shown < len(lines) and lines[shown].strip()) and context is not None:
        shown = context.line  # the end of the file, or a blank line: show where it started
    if 0 <= shown < len(lines) and lines[shown].strip():
        message += f"; line {shown + 1} reads: {_excerpt(lines[shown], hide_values)}"
    return message


def _excerpt(line: str, hide_values: bool) -> str:
    text = line.rstrip()
    match = _KEY_PART.match(text)
    if hide_values and match is None:
        return "(not shown: the file holds a Secret)"
    if match is not None and match.group(2) and match.group(2).strip():
        if hide_values:
            text = match.group(1) + " (value not shown: the file holds a Secret)"
        elif _SENSITIVE_KEY.search(match.group(1)):
            text = match.group(1) + " (value not shown)"
    text = text.strip()
    if len(text) > _EXCERPT_CHARS:
        text = text[: _EXCERPT_CHARS - 1] + "…"
    return text


def _holds_secret(text: str, placement: Placement | None) -> bool:
    if placement is not None:
        return placement.kind == KIND_SECRET
    return _SECRET_KIND.search(text) is not None
