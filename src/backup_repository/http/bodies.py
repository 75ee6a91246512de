"""Upload bodies as byte streams: raw, ``multipart/form-data`` or
``application/x-www-form-urlencoded`` with the file in the field ``file``. Forms are parsed
incrementally; nothing is buffered beyond one network chunk.

A body labelled urlencoded that plainly is no form is the raw file: ``curl --data-binary
@backup.gpg`` labels every body so. It is recognised by its first bytes, an OpenPGP packet
header (a byte with the high bit set) or the armor line ``-----BEGIN PGP MESSAGE-----``;
neither can start the name of a form field (names are ASCII, and a field named like the
armor line is no field anyone sends).

What a form carries besides the file is capped (the file itself only by the collection's
quota, which counts every byte of the body): a refusal comes as soon as a cap is passed,
before the rest of the body is read."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import (
    MAX_BOUNDARY_LENGTH,
    MultipartParser,
    parse_options_header,
)

from backup_repository.domain.errors import InvalidInput

FILE_FIELD = b"file"
NO_FILE_FIELD = "the form has no field named 'file'"
MALFORMED_FORM = "malformed form body"
_FORM_HINT = (
    "send the backup in the field 'file' of a multipart/form-data or urlencoded form, or as "
    "a raw body"
)
UNFINISHED_FORM = f"{MALFORMED_FORM}: the body ends inside the field 'file': {_FORM_HINT}"
BROKEN_ESCAPE = f"{MALFORMED_FORM}: a broken %-escape in the field 'file': {_FORM_HINT}"

# The longest field name (urlencoded) accepted; the field that matters is "file".
MAX_FIELD_NAME = 1024
# The longest header line of a multipart part (name and value), and how many a part may
# have (python-multipart enforces both).
MAX_PART_HEADER_LINE = 4096
MAX_PART_HEADERS = 16
MAX_PARTS = 64
# Everything in a form that is not the file's content: other fields' names and values,
# separators, part headers and the data of other parts, summed over the whole body.
MAX_OTHER_FIELDS = 64 * 1024

_SEND_FILE_ONLY = "send the backup in the field 'file' only, or as a raw body"
FIELD_NAME_TOO_LONG = f"a form field name is longer than {MAX_FIELD_NAME} bytes: {_SEND_FILE_ONLY}"
TOO_MANY_PARTS = f"the form has more than {MAX_PARTS} parts: {_SEND_FILE_ONLY}"
OTHER_FIELDS_TOO_LARGE = (
    f"the form's fields other than 'file' take more than {MAX_OTHER_FIELDS // 1024} KiB: "
    f"{_SEND_FILE_ONLY}"
)

BodyDecoder = Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]

SIGNATURE_FIELD = b"signature"
LATE_SIGNATURE = (
    "the form's part 'signature' comes after the part 'file': send the signature first, "
    "so that it is checked while the file streams"
)


@dataclass
class FormFields:
    """What a multipart form carries besides the file and the service needs: the detached
    signature of a trusted uploader (the part ``signature``, which must come before the
    part ``file``; its bytes count against MAX_OTHER_FIELDS)."""

    signature: bytes | None = None


def form_decoder(content_type: str, fields: FormFields | None = None) -> BodyDecoder | None:
    """What turns a form body into the file's bytes, or None for a raw body (the body is
    the file). Refuses a malformed form header at once. A multipart form's part
    ``signature`` is kept in ``fields``."""
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
        kept = fields if fields is not None else FormFields()
        return lambda chunks: _multipart_file(boundary, chunks, kept)
    if media == b"application/x-www-form-urlencoded":
        return _urlencoded_or_raw
    return None


ARMOR_HEADER = b"-----BEGIN PGP MESSAGE-----"


def _form_or_raw(head: bytes) -> bool | None:
    """Whether a body that starts with ``head`` is a form (True), the raw file (False), or
    cannot be told yet (None: ``head`` is a beginning of the armor line)."""
    if not head:
        return None
    if head[0] & 0x80:  # an OpenPGP packet tag, old or new format
        return False
    if head.startswith(ARMOR_HEADER):
        return False
    if ARMOR_HEADER.startswith(head):
        return None
    return True


async def _urlencoded_or_raw(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The file of a urlencoded form, or the body itself when its first bytes show it is
    an OpenPGP message (see the module's description)."""
    head = b""
    is_form: bool | None = None
    async for chunk in chunks:
        head += chunk
        is_form = _form_or_raw(head)
        if is_form is not None:
            break
    if is_form is False:
        yield head
        async for chunk in chunks:
            yield chunk
        return
    async for piece in _urlencoded_file(_replayed(head, chunks)):
        yield piece


async def _replayed(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The bytes already read, then the rest of the stream."""
    if head:
        yield head
    async for chunk in rest:
        yield chunk


async def _drive(
    parser: MultipartParser,
    chunks: AsyncIterator[bytes],
    pending: list[bytes],
) -> AsyncIterator[bytes]:
    """Feed the parser chunk by chunk and pass on what its callbacks collected in
    ``pending`` (the file's bytes) after each chunk."""
    async for chunk in chunks:
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise _malformed(exc) from None
        for piece in pending:
            if piece:
                yield piece
        pending.clear()
    try:
        parser.finalize()
    except FormParserError as exc:
        raise _malformed(exc) from None
    for piece in pending:
        if piece:
            yield piece
    pending.clear()


def _malformed(exc: FormParserError) -> InvalidInput:
    """The parser's reason (e.g. "Maximum header size exceeded") and what to send instead."""
    return InvalidInput(f"{MALFORMED_FORM} ({exc}): {_FORM_HINT}")


@dataclass
class _OtherBytes:
    """The running total of what a form carries besides the file's content."""

    total: int = 0

    def add(self, count: int) -> None:
        self.total += count
        if self.total > MAX_OTHER_FIELDS:
            raise InvalidInput(OTHER_FIELDS_TOO_LARGE)


@dataclass
class _MultipartState:
    header: bytes = b""
    value: bytes = b""
    is_file: bool = False  # the current part is named "file"
    is_signature: bool = False  # the current part is named "signature"
    fields: FormFields = field(default_factory=FormFields)
    in_file: bool = False  # the current part is the upload
    found: bool = False
    done: bool = False
    parts: int = 0
    other: _OtherBytes = field(default_factory=_OtherBytes)
    pending: list[bytes] = field(default_factory=list)

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.other.add(end - start)
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.other.add(end - start)
        self.value += data[start:end]

    def on_header_end(self) -> None:
        if self.header.lower() == b"content-disposition":
            _, params = parse_options_header(self.value)
            self.is_file = params.get(b"name") == FILE_FIELD
            self.is_signature = params.get(b"name") == SIGNATURE_FIELD
        self.header = self.value = b""

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InvalidInput(TOO_MANY_PARTS)
        self.is_file = False
        self.is_signature = False

    def on_headers_finished(self) -> None:
        # Only the first part named "file" is the upload; others are read and dropped.
        self.in_file = self.is_file and not self.found
        self.found = self.found or self.in_file
        if self.is_signature:
            if self.found:
                raise InvalidInput(LATE_SIGNATURE)
            self.fields.signature = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.pending.append(data[start:end])
        else:
            self.other.add(end - start)
            if self.is_signature and self.fields.signature is not None:
                self.fields.signature += data[start:end]

    def on_part_end(self) -> None:
        if self.in_file:
            self.in_file = False
            self.done = True


async def _multipart_file(
    boundary: bytes, chunks: AsyncIterator[bytes], fields: FormFields
) -> AsyncIterator[bytes]:
    state = _MultipartState(fields=fields)
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
        max_header_count=MAX_PART_HEADERS,
        max_header_size=MAX_PART_HEADER_LINE,
    )
    async for piece in _drive(parser, chunks, state.pending):
        yield piece
    if not state.found:
        raise InvalidInput(NO_FILE_FIELD)
    if not state.done:
        raise InvalidInput(UNFINISHED_FORM)


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
            raise InvalidInput(BROKEN_ESCAPE)
        return b""


def _unquote_plus(data: bytes) -> bytes:
    """Decode ``+`` and ``%XX`` escapes at C speed: every ``%`` becomes ``\\x`` (after the
    backslashes of the data are doubled), and ``codecs.escape_decode`` turns ``\\xXX`` into
    its byte and ``\\\\`` back into one backslash. A loop over the escapes in Python cost
    about 0.35 s of event-loop time per MiB of binary file (nearly every byte escaped); this
    costs about 0.02 s. An escape without two hex digits is refused."""
    data = data.replace(b"+", b" ")
    if b"%" not in data:
        return data
    escaped = data.replace(b"\\", b"\\\\").replace(b"%", b"\\x")
    try:
        decoded: bytes = codecs.escape_decode(escaped)[0]
    except ValueError:
        raise InvalidInput(BROKEN_ESCAPE) from None
    return decoded


class _UrlencodedFile:
    """``name=value&name=value`` split with ``bytes.find`` (never byte by byte): the first
    non-empty value of a field named ``file`` is decoded and passed on; every other byte
    counts against MAX_OTHER_FIELDS."""

    def __init__(self) -> None:
        self._name = bytearray()
        self._in_value = False  # after "=": a value (the file's or another field's)
        self._in_file = False
        self._file_started = False
        self.found = False
        self._decoder = _PercentDecoder()
        self._other = _OtherBytes()

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        position, length = 0, len(data)
        while position < length:
            amp = data.find(b"&", position)
            end = length if amp == -1 else amp
            if not self._in_value:
                equals = data.find(b"=", position, end)
                stop = end if equals == -1 else equals
                if len(self._name) + stop - position > MAX_FIELD_NAME:
                    raise InvalidInput(FIELD_NAME_TOO_LONG)
                self._name += data[position:stop]
                self._other.add(stop - position)
                if equals == -1:
                    if amp != -1:  # a field without "=": no value at all
                        self._end_field(separator=True)
                    position = end + 1
                    continue
                self._other.add(1)
                self._in_value = True
                self._in_file = not self.found and self._name == FILE_FIELD
                position = equals + 1
                continue
            if self._in_file:
                if end > position:
                    self._file_started = True
                    out.append(self._decoder.feed(data[position:end]))
            else:
                self._other.add(end - position)
            if amp != -1:
                out.extend(self._end_field(separator=True))
            position = end + 1
        return out

    def _end_field(self, *, separator: bool) -> list[bytes]:
        if separator:
            self._other.add(1)  # the "&"
        out: list[bytes] = []
        if self._in_file and self._file_started:
            out.append(self._decoder.finish())
            self.found = True
        # An empty "file=" is no file: a later field named "file" may still be it.
        self._in_file = self._file_started = self._in_value = False
        self._name.clear()
        return out

    def finish(self) -> list[bytes]:
        out = self._end_field(separator=False) if self._in_value else []
        if not self.found:
            raise InvalidInput(NO_FILE_FIELD)
        return out


async def _urlencoded_file(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    state = _UrlencodedFile()
    async for chunk in chunks:
        for piece in state.feed(chunk):
            if piece:
                yield piece
    for piece in state.finish():
        if piece:
            yield piece
