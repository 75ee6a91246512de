"""Upload bodies as byte streams: raw, ``multipart/form-data`` or
``application/x-www-form-urlencoded`` with the file in the field ``file``. Forms are parsed
incrementally; nothing is buffered beyond one network chunk."""

from __future__ import annotations

import binascii
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import (
    MAX_BOUNDARY_LENGTH,
    MultipartParser,
    QuerystringParser,
    parse_options_header,
)

from backup_repository.domain.errors import InvalidInput

FILE_FIELD = b"file"
NO_FILE_FIELD = "the form has no field named 'file'"
MALFORMED_FORM = "malformed form body"


def upload_stream(content_type: str, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    media, params = parse_options_header(content_type)
    if media == b"multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise InvalidInput("multipart/form-data without a boundary")
        if len(boundary) > MAX_BOUNDARY_LENGTH:
            # The parser would refuse it with its own exception, inside the upload (a 500).
            raise InvalidInput(
                f"multipart/form-data boundary longer than {MAX_BOUNDARY_LENGTH} characters"
            )
        return _multipart_file(boundary, chunks)
    if media == b"application/x-www-form-urlencoded":
        return _urlencoded_file(chunks)
    return _non_empty(chunks)


async def _non_empty(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if chunk:
            yield chunk


async def _drive(
    parser: MultipartParser | QuerystringParser,
    chunks: AsyncIterator[bytes],
    pending: list[bytes],
) -> AsyncIterator[bytes]:
    """Feed the parser chunk by chunk and pass on what its callbacks collected in
    ``pending`` (the file's bytes) after each chunk."""
    async for chunk in chunks:
        try:
            parser.write(chunk)
        except FormParserError:
            raise InvalidInput(MALFORMED_FORM) from None
        for piece in pending:
            if piece:
                yield piece
        pending.clear()
    try:
        parser.finalize()
    except FormParserError:
        raise InvalidInput(MALFORMED_FORM) from None
    for piece in pending:
        if piece:
            yield piece
    pending.clear()


@dataclass
class _MultipartState:
    header: bytes = b""
    value: bytes = b""
    is_file: bool = False  # the current part is named "file"
    in_file: bool = False  # the current part is the upload
    found: bool = False
    done: bool = False
    pending: list[bytes] = field(default_factory=list)

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        if self.header.lower() == b"content-disposition":
            _, params = parse_options_header(self.value)
            self.is_file = params.get(b"name") == FILE_FIELD
        self.header = self.value = b""

    def on_part_begin(self) -> None:
        self.is_file = False

    def on_headers_finished(self) -> None:
        # Only the first part named "file" is the upload; others are read and dropped.
        self.in_file = self.is_file and not self.found
        self.found = self.found or self.in_file

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.pending.append(data[start:end])

    def on_part_end(self) -> None:
        if self.in_file:
            self.in_file = False
            self.done = True


async def _multipart_file(boundary: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    state = _MultipartState()
    parser = MultipartParser(
        boundary,
        {
            "on_header_field": state.on_header_field,
            "on_header_value": state.on_header_value,
            "on_header_end": state.on_header_end,
            "on_part_begin": state.on_part_begin,
            "on_headers_finished": state.on_headers_finished,
            "on_part_data": state.on_part_data,
            "on_part_end": state.on_part_end,
        },
        max_header_count=16,
    )
    async for piece in _drive(parser, chunks, state.pending):
        yield piece
    if not state.found:
        raise InvalidInput(NO_FILE_FIELD)
    if not state.done:
        raise InvalidInput(MALFORMED_FORM)


class _PercentDecoder:
    """Incremental ``application/x-www-form-urlencoded`` value decoding: an escape split
    across two network chunks is held back until its second half arrives."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        data = self._carry + data
        cut = len(data)
        # Keep an incomplete trailing escape ("%", "%4") for the next chunk.
        for back in (1, 2):
            if len(data) >= back and data[-back : -back + 1 or None] == b"%":
                cut = len(data) - back
                break
        self._carry = data[cut:]
        return _unquote_plus(data[:cut])

    def finish(self) -> bytes:
        if self._carry:
            raise InvalidInput(MALFORMED_FORM)
        return b""


def _unquote_plus(data: bytes) -> bytes:
    data = data.replace(b"+", b" ")
    if b"%" not in data:
        return data
    parts = data.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        try:
            out += binascii.unhexlify(part[:2])
        except (binascii.Error, ValueError):
            raise InvalidInput(MALFORMED_FORM) from None
        if len(part) < 2:
            raise InvalidInput(MALFORMED_FORM)
        out += part[2:]
    return bytes(out)


@dataclass
class _UrlencodedState:
    name: bytes = b""
    in_file: bool = False
    found: bool = False
    decoder: _PercentDecoder = field(default_factory=lambda: _PercentDecoder())
    pending: list[bytes] = field(default_factory=list)

    def on_field_start(self) -> None:
        self.name = b""

    def on_field_name(self, data: bytes, start: int, end: int) -> None:
        self.name += data[start:end]

    def on_field_data(self, data: bytes, start: int, end: int) -> None:
        if not self.found and self.name == FILE_FIELD:
            self.in_file = True
        if self.in_file:
            self.pending.append(self.decoder.feed(data[start:end]))

    def on_field_end(self) -> None:
        if self.in_file:
            self.in_file = False
            self.found = True
            self.pending.append(self.decoder.finish())


async def _urlencoded_file(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    state = _UrlencodedState()
    parser = QuerystringParser(
        {
            "on_field_start": state.on_field_start,
            "on_field_name": state.on_field_name,
            "on_field_data": state.on_field_data,
            "on_field_end": state.on_field_end,
        }
    )
    async for piece in _drive(parser, chunks, state.pending):
        yield piece
    if not state.found:
        raise InvalidInput(NO_FILE_FIELD)
