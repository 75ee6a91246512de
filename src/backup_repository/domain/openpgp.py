"""Is an upload an encrypted OpenPGP message? Checked while it streams (docs/collections.md,
"The OpenPGP check").

Accepted: a binary or ASCII-armored OpenPGP message whose (de-armored) data starts with one
or more encrypted session key packets (tag 1, public-key, or tag 3, symmetric-key), in old
or new packet format, followed by an encrypted data packet (tag 9, 18 or 20).

The check reads the head of the stream until it can decide, then only remembers the last
bytes of the stream:

- the head is parsed packet header by packet header; packet bodies are skipped by counting,
  never buffered, so many recipients cost nothing. Armor is de-armored only as far as the
  head needs. A head that proves the upload is not an encrypted message is refused at once,
  in :meth:`OpenPGPStreamChecker.feed`; a head still undecided after ``HEAD_LIMIT`` bytes
  or ``MAX_SESSION_KEYS`` session key packets is refused too.
- armored messages must end with the ``-----END PGP MESSAGE-----`` line, preceded by a line
  of armored data or the checksum, and followed by nothing but whitespace. A missing end line
  (a truncated upload) and anything after it are refused. The CRC-24 checksum is not
  verified (it would cost a pass over every byte).
- binary messages keep being followed packet by packet (one step per packet or partial
  body chunk, at most one per 512 bytes), so that a stream cut short in the middle of the
  encrypted data is refused. After the encrypted data packet only padding packets (tag 21,
  RFC 9580) may come, each followed to its end like the data; a packet of any other tag
  after the data (a literal data packet with plaintext, a second message, a signature, a
  marker) is refused.
- armored messages are followed only as far as the head: finding the packets after the
  encrypted data would mean de-armoring every byte, which costs more than the SHA-256 of
  the upload (``binascii.a2b_base64`` on armor lines runs at about a fifth of its speed).
  Their end is checked by the END line instead.

Memory stays bounded by a few kilobytes (see :attr:`OpenPGPStreamChecker.buffered_bytes`)
however long the stream is.

The module is longer than most (about 600 lines) because it is one state machine: packet
headers in both formats, partial bodies, armor lines and the stream's tail feed the same
states, and splitting it would spread one decision over several files.
"""

from __future__ import annotations

import binascii
import re
from enum import Enum, auto

from backup_repository.domain.errors import InvalidInput

NO_HEADER = "first chunk of uploaded data does not contain a valid GPG header"
NO_FOOTER = "end of stream does not contain a valid GPG footer"
EMPTY = "sent empty data"

#: Bytes of input by which the head must prove itself an encrypted message.
HEAD_LIMIT = 1024 * 1024
#: Longest armor line (BEGIN line, armor header) read while looking for the data.
MAX_ARMOR_LINE = 4096
#: Bytes of the end of the stream remembered for the armor's end line.
TAIL_SIZE = 1024
#: Largest plausible encrypted session key packet (real ones are well under 4 KiB).
MAX_SESSION_KEY_PACKET = 64 * 1024
#: Most session key packets (recipients and passphrases) of one message; bounds the work on
#: a head made of tiny packets.
MAX_SESSION_KEYS = 1024
#: Partial body chunks smaller than this (legal, never produced by common tools) stop the
#: packet-by-packet following of a binary message, which keeps its cost per byte bounded.
MIN_TRACKED_CHUNK = 512

ARMOR_BEGIN = b"-----BEGIN PGP MESSAGE-----"
ARMOR_END = b"-----END PGP MESSAGE-----"
UTF8_BOM = b"\xef\xbb\xbf"

PKESK = 1
SKESK = 3
SED = 9
SEIPD = 18
AEAD = 20
PADDING = 21
SESSION_KEY_TAGS = frozenset({PKESK, SKESK})
ENCRYPTED_DATA_TAGS = frozenset({SED, SEIPD, AEAD})
# Versions defined by RFC 4880, RFC 9580 and the AEAD draft GnuPG implements.
_VERSIONS = {PKESK: {3, 6}, SKESK: {4, 5, 6}, SEIPD: {1, 2}, AEAD: {1}}

_TAG_NAMES = {
    0: "a reserved",
    1: "a public-key encrypted session key",
    2: "a signature",
    3: "a symmetric-key encrypted session key",
    4: "a one-pass signature",
    5: "a secret key",
    6: "a public key",
    7: "a secret subkey",
    8: "a compressed data",
    9: "a symmetrically encrypted data",
    10: "a marker",
    11: "a literal data",
    12: "a trust",
    13: "a user ID",
    14: "a public subkey",
    17: "a user attribute",
    18: "a symmetrically encrypted integrity protected data",
    19: "a modification detection code",
    20: "an AEAD encrypted data",
    21: "a padding",
}
# What a message starting with such a packet is, for the error text.
_TAG_MEANINGS = {
    2: "a detached signature",
    4: "a signed message",
    5: "a secret key",
    6: "a public key",
    7: "a secret key",
    8: "a signed or unencrypted message",
    11: "an unencrypted message",
    14: "a public key",
}

_WHITESPACE = b" \t\r\n"
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]*")
_BASE64_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_CHECKSUM_LINE = re.compile(rb"=[A-Za-z0-9+/]{4}")
_ARMOR_BEGIN_LINE = re.compile(rb"-----BEGIN PGP ([^-]*)-----")
_ARMOR_KINDS = {
    b"SIGNED MESSAGE": "a clear-signed message, not an encrypted one",
    b"SIGNATURE": "a detached signature, not an encrypted message",
    b"PUBLIC KEY BLOCK": "a public key, not an encrypted message",
    b"PRIVATE KEY BLOCK": "a secret key, not an encrypted message",
}


class NotOpenPGP(InvalidInput):
    """The upload is not an encrypted OpenPGP message; the message starts with
    :data:`NO_HEADER` or :data:`NO_FOOTER`."""


class EmptyUpload(InvalidInput):
    """Nothing was uploaded."""

    def __init__(self, message: str = EMPTY) -> None:
        super().__init__(message)


def _no_header(detail: str) -> NotOpenPGP:
    return NotOpenPGP(f"{NO_HEADER}: {detail}")


def _no_footer(detail: str) -> NotOpenPGP:
    return NotOpenPGP(f"{NO_FOOTER}: {detail}")


def _packet_name(tag: int) -> str:
    return f"{_TAG_NAMES.get(tag, 'an unknown')} packet (tag {tag})"


class _Stage(Enum):
    FIRST_SESSION_KEY = auto()
    SESSION_KEY_OR_DATA = auto()
    ENCRYPTED_DATA = auto()
    AFTER_DATA = auto()


class _State(Enum):
    HEADER = auto()  # reading a packet header
    BODY = auto()  # skipping (a chunk of) a packet body
    CHUNK_LENGTH = auto()  # reading the length of the next partial body chunk
    UNTRACKED = auto()  # decided; the rest is not followed


class _PacketStream:
    """Follows the framing of a (de-armored) packet stream without keeping packet bodies."""

    def __init__(self, *, follow_to_end: bool) -> None:
        self.decided = False
        self._follow_to_end = follow_to_end
        self._stage = _Stage.FIRST_SESSION_KEY
        self._state = _State.HEADER
        self._header = bytearray()  # at most 6 bytes
        self._tag = 0
        self._remaining = 0  # bytes left in the current body chunk
        self._partial = False  # another chunk follows the current one
        self._indeterminate = False  # the body runs to the end of the stream
        self._needs_version = False
        self._session_keys = 0

    @property
    def buffered_bytes(self) -> int:
        return len(self._header)

    def feed(self, data: memoryview) -> None:
        position, size = 0, len(data)
        while position < size:
            state = self._state
            if state is _State.UNTRACKED:
                return
            if state is _State.HEADER:
                self._header.append(data[position])
                position += 1
                self._read_header()
            elif state is _State.CHUNK_LENGTH:
                if not self._header:
                    position = self._skip_partial_chunks(data, position, size)
                    if position >= size or self._state is not _State.CHUNK_LENGTH:
                        continue
                self._header.append(data[position])
                position += 1
                self._read_chunk_length()
            elif self._needs_version:
                self._needs_version = False
                self._check_version(data[position])
                position += 1
                self._consumed(1)
            elif self._indeterminate:
                return
            else:
                step = min(self._remaining, size - position)
                position += step
                self._consumed(step)

    def _skip_partial_chunks(self, data: memoryview, position: int, size: int) -> int:
        """Walk a run of partial body chunks (one length octet each, as gpg writes the
        encrypted data: 8 KiB chunks) in one tight loop, the same steps as the general one
        takes a few statements at a time; returns where the general loop goes on: at a
        length octet it must read itself (the last chunk's, or a chunk too small to
        follow), or at the end of ``data`` (inside a chunk: its rest is counted)."""
        while position < size:
            octet = data[position]
            if octet < 224 or octet == 255:
                break
            length = 1 << (octet & 0x1F)
            if length < MIN_TRACKED_CHUNK:
                break
            position += 1
            if length > size - position:
                self._start_chunk(length, partial=True)
                self._remaining -= size - position
                return size
            position += length
        return position

    def end(self) -> None:
        """The stream ended: refuse it unless the encrypted data is complete."""
        if not self.decided:
            if self._stage is _Stage.FIRST_SESSION_KEY and not self._header:
                raise _no_header("there is no OpenPGP packet")
            raise _no_header("the data ends before the encrypted data packet starts")
        if self._state is _State.UNTRACKED or self._indeterminate:
            return
        if self._state is _State.HEADER and not self._header:
            return  # a packet boundary after the encrypted data
        raise _no_footer("the encrypted data is truncated")

    def _consumed(self, count: int) -> None:
        if self._indeterminate or self._state is _State.UNTRACKED:
            return
        self._remaining -= count
        if self._remaining > 0:
            return
        self._header.clear()
        if self._partial:
            self._state = _State.CHUNK_LENGTH
            return
        if self._stage is _Stage.ENCRYPTED_DATA:
            self._stage = _Stage.AFTER_DATA
        self._state = _State.HEADER

    def _read_header(self) -> None:
        header = self._header
        first = header[0]
        if not first & 0x80:
            raise self._wrong_start()
        if first & 0x40:  # new format: tag in the low six bits, then the length
            tag = first & 0x3F
            if len(header) == 1:
                self._check_tag(tag)
                return
            length = self._new_format_length(header, 1)
            if length is None:
                return
            self._start_packet(tag, *length)
            return
        tag = (first >> 2) & 0x0F
        length_type = first & 0x03
        if len(header) == 1:
            self._check_tag(tag)
            if length_type == 3:  # indeterminate: the body runs to the end of the stream
                self._start_packet(tag, 0, partial=False, indeterminate=True)
            return
        octets = (1, 2, 4)[length_type]
        if len(header) < 1 + octets:
            return
        self._start_packet(tag, int.from_bytes(header[1:], "big"), partial=False)

    def _read_chunk_length(self) -> None:
        length = self._new_format_length(self._header, 0)
        if length is None:
            return
        value, partial = length
        if partial and value < MIN_TRACKED_CHUNK:
            self._state = _State.UNTRACKED
            return
        self._start_chunk(value, partial)

    @staticmethod
    def _new_format_length(header: bytearray, at: int) -> tuple[int, bool] | None:
        """``(length, partial)`` of the new-format length starting at ``header[at]``, or
        None while octets are missing."""
        if len(header) <= at:
            return None
        first = header[at]
        if first < 192:
            return first, False
        if first < 224:
            if len(header) < at + 2:
                return None
            return ((first - 192) << 8) + header[at + 1] + 192, False
        if first == 255:
            if len(header) < at + 5:
                return None
            return int.from_bytes(header[at + 1 : at + 5], "big"), False
        return 1 << (first & 0x1F), True

    def _wrong_start(self) -> NotOpenPGP:
        """The error for a byte that cannot start a packet header."""
        stage = self._stage
        if stage is _Stage.AFTER_DATA:
            return _no_footer("data that is not an OpenPGP packet follows the encrypted data")
        if stage is _Stage.FIRST_SESSION_KEY:
            return _no_header("the data does not start with an OpenPGP packet")
        return _no_header("the session keys are followed by data that is not an OpenPGP packet")

    def _check_tag(self, tag: int) -> None:
        stage = self._stage
        if stage is _Stage.FIRST_SESSION_KEY and tag not in SESSION_KEY_TAGS:
            if self._header[0] == UTF8_BOM[0]:
                raise _no_header(
                    "it starts with byte 0xEF, as a UTF-8 byte order mark does; save the "
                    "armor without a byte order mark, starting with " + ARMOR_BEGIN.decode()
                )
            meaning = _TAG_MEANINGS.get(tag)
            like = f", as {meaning} does" if meaning else ""
            raise _no_header(
                f"it starts with {_packet_name(tag)}{like}; an encrypted message starts "
                "with an encrypted session key packet (tag 1 or 3)"
            )
        if (
            stage is _Stage.SESSION_KEY_OR_DATA
            and tag not in SESSION_KEY_TAGS | ENCRYPTED_DATA_TAGS
        ):
            raise _no_header(
                f"the session keys are followed by {_packet_name(tag)}, not by an encrypted "
                "data packet (tag 9, 18 or 20)"
            )
        if stage is _Stage.AFTER_DATA and tag != PADDING:
            raise _no_footer(f"{_packet_name(tag)} follows the encrypted data packet")

    def _start_packet(
        self, tag: int, length: int, partial: bool, *, indeterminate: bool = False
    ) -> None:
        self._tag = tag
        self._indeterminate = indeterminate
        if tag in SESSION_KEY_TAGS:
            if partial or indeterminate:
                raise _no_header(f"{_packet_name(tag)} without a definite length")
            if not 0 < length <= MAX_SESSION_KEY_PACKET:
                raise _no_header(f"{_packet_name(tag)} of an implausible length ({length})")
            self._session_keys += 1
            if self._session_keys > MAX_SESSION_KEYS:
                raise _no_header(f"more than {MAX_SESSION_KEYS} encrypted session key packets")
            self._stage = _Stage.SESSION_KEY_OR_DATA
            self._needs_version = True
        elif tag in ENCRYPTED_DATA_TAGS and self._stage is _Stage.SESSION_KEY_OR_DATA:
            if length == 0 and not (partial or indeterminate):
                raise _no_header(f"{_packet_name(tag)} is empty")
            self._stage = _Stage.ENCRYPTED_DATA
            self._needs_version = tag in _VERSIONS
            if not self._needs_version:
                self._decide()
        else:  # a padding packet after the encrypted data: skipped, then the next header
            self._needs_version = False
        if indeterminate:
            self._state = _State.BODY
            return
        self._start_chunk(length, partial)

    def _start_chunk(self, length: int, partial: bool) -> None:
        self._header.clear()
        self._partial = partial
        self._remaining = length
        if self._state is _State.UNTRACKED:
            return
        self._state = _State.BODY
        if length == 0:
            self._consumed(0)

    def _check_version(self, version: int) -> None:
        tag = self._tag
        if version not in _VERSIONS[tag]:
            raise _no_header(f"{_packet_name(tag)} of unknown version {version}")
        if tag in ENCRYPTED_DATA_TAGS:
            self._decide()

    def _decide(self) -> None:
        self.decided = True
        if not self._follow_to_end:
            self._state = _State.UNTRACKED


class _Mode(Enum):
    START = auto()  # before the first byte that is not whitespace
    BINARY = auto()
    ARMOR_BEGIN = auto()  # reading the BEGIN line
    ARMOR_HEADERS = auto()  # reading armor headers up to the blank line
    ARMOR_DATA = auto()  # de-armoring the head
    ARMOR_TAIL = auto()  # head accepted; only the end line is left to check


class OpenPGPStreamChecker:
    """Feed an upload chunk by chunk, then call :meth:`finish`. Both raise
    :class:`NotOpenPGP` (or :class:`EmptyUpload`) as soon as the upload is proven not to be
    an encrypted OpenPGP message; after an error every further call raises it again."""

    def __init__(self) -> None:
        self._size = 0
        self._mode = _Mode.START
        self._line = bytearray()
        self._base64 = bytearray()  # fewer than four characters between feeds
        self._tail = b""
        self._error: InvalidInput | None = None
        self._finished = False
        self._packets: _PacketStream | None = None

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    @property
    def armored(self) -> bool | None:
        """Whether the upload is ASCII-armored; None until the first meaningful byte."""
        if self._mode is _Mode.START:
            return None
        return self._mode is not _Mode.BINARY

    @property
    def head_accepted(self) -> bool:
        """Whether the head was found to be an encrypted message (the end is checked by
        :meth:`finish`)."""
        return self._packets is not None and self._packets.decided

    @property
    def buffered_bytes(self) -> int:
        """Bytes the checker holds on to; bounded by a few kilobytes."""
        held = len(self._line) + len(self._base64) + len(self._tail)
        if self._packets is not None:
            held += self._packets.buffered_bytes
        return held

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._finished:
            raise RuntimeError("the stream was already finished")
        try:
            self._feed(memoryview(chunk).cast("B"))
        except InvalidInput as exc:
            self._error = exc
            raise

    def finish(self) -> None:
        """The stream ended: raise unless it was a complete encrypted message."""
        if self._error is not None:
            raise self._error
        self._finished = True
        try:
            self._finish()
        except InvalidInput as exc:
            self._error = exc
            raise

    def _feed(self, chunk: memoryview) -> None:
        if not chunk:
            return
        seen_before = self._size
        self._size += len(chunk)
        self._remember_tail(chunk)
        mode = self._mode
        if mode is _Mode.BINARY:
            assert self._packets is not None
            self._packets.feed(chunk)
        elif mode is not _Mode.ARMOR_TAIL:
            self._read_head(chunk, seen_before)
        if not self.head_accepted and self._size > HEAD_LIMIT:
            raise _no_header(
                f"no encrypted data packet within the first {HEAD_LIMIT} bytes of the upload"
            )

    def _remember_tail(self, chunk: memoryview) -> None:
        if len(chunk) >= TAIL_SIZE:
            self._tail = bytes(chunk[-TAIL_SIZE:])
        else:
            self._tail = (self._tail + bytes(chunk))[-TAIL_SIZE:]

    def _read_head(self, chunk: memoryview, seen_before: int) -> None:
        position = 0
        if self._mode is _Mode.START:
            position = self._detect(chunk, seen_before)
            mode: _Mode = self._mode
            if mode is _Mode.BINARY:
                assert self._packets is not None
                self._packets.feed(chunk[position:])
                return
            if mode is _Mode.START:
                return
        # Only the part of the chunk the head may still need is copied.
        budget = max(0, HEAD_LIMIT + 1 - seen_before)
        head = bytes(chunk[position : position + budget])
        self._read_armor(head)

    def _detect(self, chunk: memoryview, seen_before: int) -> int:
        """Skip leading whitespace and pick the form; returns where the form starts. Binary
        data starts with a packet header (high bit set) at its very first byte."""
        if seen_before == 0 and chunk[0] & 0x80:
            self._mode = _Mode.BINARY
            self._packets = _PacketStream(follow_to_end=True)
            return 0
        window = bytes(chunk[: max(0, HEAD_LIMIT + 1 - seen_before)])
        position = len(window) - len(window.lstrip(_WHITESPACE))
        if position == len(window):
            return len(chunk)  # whitespace so far
        if window[position] == ord("-"):
            self._mode = _Mode.ARMOR_BEGIN
            self._packets = _PacketStream(follow_to_end=False)
            return position
        raise _no_header(
            "the data is neither an OpenPGP message nor ASCII armor (-----BEGIN PGP MESSAGE-----)"
        )

    def _read_armor(self, head: bytes) -> None:
        position = 0
        while position < len(head) and self._mode in (_Mode.ARMOR_BEGIN, _Mode.ARMOR_HEADERS):
            newline = head.find(b"\n", position)
            end = len(head) if newline < 0 else newline
            self._line += head[position:end]
            if len(self._line) > MAX_ARMOR_LINE:
                raise _no_header(f"an armor line is longer than {MAX_ARMOR_LINE} bytes")
            if newline < 0:
                return
            position = newline + 1
            line = bytes(self._line).strip(_WHITESPACE)
            self._line.clear()
            self._armor_line(line)
        if self._mode is _Mode.ARMOR_DATA and position < len(head):
            self._armor_data(head[position:])

    def _armor_line(self, line: bytes) -> None:
        if self._mode is _Mode.ARMOR_BEGIN:
            self._begin_line(line)
            return
        if not line:
            self._mode = _Mode.ARMOR_DATA
        elif line.startswith(b"-----"):
            raise _no_header("the armor holds no data")
        elif b":" not in line:  # no blank line after the headers: the data starts here
            self._mode = _Mode.ARMOR_DATA
            self._armor_data(line)

    def _begin_line(self, line: bytes) -> None:
        if line == ARMOR_BEGIN:
            self._mode = _Mode.ARMOR_HEADERS
            return
        match = _ARMOR_BEGIN_LINE.fullmatch(line)
        if match is None:
            raise _no_header("the armor does not start with -----BEGIN PGP MESSAGE-----")
        kind = match.group(1)
        if kind in _ARMOR_KINDS:
            raise _no_header(f"the armor holds {_ARMOR_KINDS[kind]}")
        if kind.startswith(b"MESSAGE, PART"):
            raise _no_header("messages armored in several parts are not supported")
        raise _no_header(f"the armor holds a PGP {kind.decode('ascii', 'replace')} block")

    def _armor_data(self, data: bytes) -> None:
        packets = self._packets
        assert packets is not None
        text = data.translate(None, _WHITESPACE)
        run = _BASE64_RUN.match(text)
        assert run is not None  # the pattern matches the empty string
        self._base64 += text[: run.end()]
        usable = len(self._base64) // 4 * 4
        if usable:
            decoded = binascii.a2b_base64(bytes(self._base64[:usable]))
            del self._base64[:usable]
            packets.feed(memoryview(decoded))
        if packets.decided:
            self._armor_head_accepted()
            return
        if run.end() == len(text):
            return
        stop = text[run.end() : run.end() + 1]
        if stop not in (b"=", b"-"):
            raise _no_header(f"the armored data holds an invalid character {stop!r}")
        # Padding, the checksum line or the end line: the armored data ends here.
        pending = len(self._base64)
        if pending == 1:
            raise _no_header("the armored data is not valid base64")
        if pending:
            decoded = binascii.a2b_base64(bytes(self._base64) + b"=" * (4 - pending))
            self._base64.clear()
            packets.feed(memoryview(decoded))
        if not packets.decided:
            raise _no_header("the armored data ends before the encrypted data packet starts")
        self._armor_head_accepted()

    def _armor_head_accepted(self) -> None:
        self._mode = _Mode.ARMOR_TAIL
        self._base64.clear()
        self._line.clear()

    def _finish(self) -> None:
        if self._size == 0:
            raise EmptyUpload()
        mode = self._mode
        if mode is _Mode.START:
            raise _no_header("the data holds nothing but whitespace")
        if mode is _Mode.BINARY:
            assert self._packets is not None
            self._packets.end()
            return
        if mode is _Mode.ARMOR_BEGIN and self._line:
            self._begin_line(bytes(self._line).strip(_WHITESPACE))
        if mode is not _Mode.ARMOR_TAIL:
            if mode is _Mode.ARMOR_DATA and self._base64:
                # The stream stopped inside the armored data, without an end line.
                self._armor_data(b"=")
                if self._mode is _Mode.ARMOR_TAIL:
                    raise _no_footer("the armor has no -----END PGP MESSAGE----- line")
            raise _no_header("the armored data ends before the encrypted data packet starts")
        self._check_armor_end()

    def _check_armor_end(self) -> None:
        tail = self._tail.rstrip(_WHITESPACE)
        if not tail.endswith(ARMOR_END):
            if ARMOR_END in tail:
                raise _no_footer(f"data follows the {ARMOR_END.decode()} line")
            raise _no_footer(
                f"the armor does not end with {ARMOR_END.decode()} (the upload is truncated)"
            )
        before = tail[: -len(ARMOR_END)].rstrip(b" \t")
        if not before:
            return  # trailing whitespace pushed the data before the end line out of the tail
        if not before.endswith(b"\n"):
            raise _no_footer(f"{ARMOR_END.decode()} does not start a line")
        previous = before.rstrip(_WHITESPACE).rsplit(b"\n", 1)[-1].strip(_WHITESPACE)
        if not (_CHECKSUM_LINE.fullmatch(previous) or _BASE64_LINE.fullmatch(previous)):
            raise _no_footer(f"the line before {ARMOR_END.decode()} is not armored data")
