"""The YAML side of the configuration: one file's text to :class:`Document` objects.

Bad YAML anywhere in a file is one problem for the file and none of its documents is
used; a duplicated key in a mapping is bad YAML (as kubectl has it). In the reference
layout (``backupusers/admin.yaml`` holds BackupUser ``admin``) a document that contradicts
its file's place is a problem too. Building the snapshot from the documents is
:mod:`backup_repository.config.loader`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from backup_repository.config.models import KIND_COLLECTION, KIND_SECRET, KIND_USER
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
class ParsedFile:
    documents: tuple[Document, ...]
    problems: tuple[ConfigProblem, ...]


def parse_yaml(source: str, text: str, placement: Placement | None = None) -> ParsedFile:
    """The documents of one file. Bad YAML anywhere in the file is one problem for the file
    and none of its documents is used. Empty documents are skipped; a ``kind: List`` is
    unpacked into its ``items``."""
    try:
        raw = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        return ParsedFile((), (ConfigProblem(source=source, message=f"invalid YAML: {message}"),))

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
    return kind if kind in (KIND_USER, KIND_COLLECTION, KIND_SECRET) else None
