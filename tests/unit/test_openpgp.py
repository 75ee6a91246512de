"""The streaming OpenPGP check on real gpg output and on hand-made packets."""

from __future__ import annotations

import base64
import os
import random
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup_repository.domain import openpgp
from backup_repository.domain.errors import InvalidInput
from backup_repository.domain.openpgp import (
    EmptyUpload,
    NotOpenPGP,
    OpenPGPStreamChecker,
)
from gpg_fixtures import (
    ACCEPTED,
    EMPTY,
    NO_FOOTER,
    NO_HEADER,
    SAMPLES,
    GpgHome,
    Sample,
    armor,
    gpg_home_fixture,
    make_encrypted,
    pad_to,
)

# The session keyring of gpg_fixtures, as the fixture ``gpg_home`` of this module.
gpg_home = gpg_home_fixture

# Refused by feed() already, before the end of the stream.
REFUSED_EARLY = {
    "signed.gpg",
    "signed.asc",
    "clearsigned.asc",
    "detached.sig",
    "detached.asc",
    "public-key-export.gpg",
    "public-key-export.asc",
    "plain.txt",
    "fake-armor.asc",
    "armored-plain-text.asc",
    "garbage-after-data.gpg",
}
PHRASES = {NO_HEADER: openpgp.NO_HEADER, NO_FOOTER: openpgp.NO_FOOTER, EMPTY: openpgp.EMPTY}


def chunks(data: bytes, sizes: Iterable[int] | None = None) -> Iterator[bytes]:
    """``data`` in pieces of the given sizes, repeated as needed (one piece without sizes)."""
    pattern = list(sizes or [])
    if not pattern:
        yield data
        return
    position, index = 0, 0
    while position < len(data):
        size = pattern[index % len(pattern)]
        yield data[position : position + size]
        position += size
        index += 1


def check(data: bytes, sizes: Iterable[int] | None = None) -> InvalidInput | None:
    """The error the checker raises for ``data`` fed in ``sizes`` pieces, or None."""
    checker = OpenPGPStreamChecker()
    try:
        for piece in chunks(data, sizes):
            checker.feed(piece)
        checker.finish()
    except InvalidInput as exc:
        return exc
    return None


def feed_until_refused(checker: OpenPGPStreamChecker, pieces: Iterable[bytes]) -> int:
    """Bytes fed up to and including the piece that feed() refused."""
    fed = 0
    for piece in pieces:
        fed += len(piece)
        try:
            checker.feed(piece)
        except NotOpenPGP:
            return fed
    pytest.fail("feed() never refused the data")


def assert_outcome(sample: Sample, error: InvalidInput | None) -> None:
    if sample.expect == ACCEPTED:
        assert error is None, f"{sample.name} ({sample.about}) refused: {error}"
        return
    assert error is not None, f"{sample.name} ({sample.about}) accepted"
    expected_type = EmptyUpload if sample.expect == EMPTY else NotOpenPGP
    assert type(error) is expected_type
    assert PHRASES[sample.expect] in error.message


# --- the committed gpg samples -------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: sample.name)
def test_sample_in_one_chunk(sample: Sample) -> None:
    assert_outcome(sample, check(sample.read()))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda sample: sample.name)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_sample_in_tiny_chunks(sample: Sample, size: int) -> None:
    assert_outcome(sample, check(sample.read(), [size]))


@settings(max_examples=300, deadline=None)
@given(
    sample=st.sampled_from(SAMPLES),
    sizes=st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=40),
)
def test_chunk_boundaries_do_not_change_the_outcome(sample: Sample, sizes: list[int]) -> None:
    data = sample.read()
    whole = check(data)
    pieces = check(data, sizes)
    assert_outcome(sample, pieces)
    assert (None if whole is None else whole.message) == (
        None if pieces is None else pieces.message
    )


@pytest.mark.parametrize(
    "sample", [s for s in SAMPLES if s.name in REFUSED_EARLY], ids=lambda sample: sample.name
)
def test_refused_while_feeding(sample: Sample) -> None:
    checker = OpenPGPStreamChecker()
    with pytest.raises(NotOpenPGP):
        checker.feed(sample.read())


def test_every_sample_has_a_committed_file() -> None:
    on_disk = {path.name for path in SAMPLES[0].path.parent.iterdir()}
    assert {sample.name for sample in SAMPLES} <= on_disk
    assert all(sample.path.stat().st_size < 100 * 1024 for sample in SAMPLES)


def test_the_samples_cover_accepted_and_every_refusal() -> None:
    assert {sample.expect for sample in SAMPLES} == {ACCEPTED, NO_HEADER, NO_FOOTER, EMPTY}


# --- early refusal and messages ------------------------------------------------------------


def test_plain_data_is_refused_at_the_first_chunk() -> None:
    checker = OpenPGPStreamChecker()
    pieces = (b"id,name\n" * 8192 for _ in range(160))  # 10 MiB if it were all read
    assert feed_until_refused(checker, pieces) == 64 * 1024
    with pytest.raises(NotOpenPGP, match=openpgp.NO_HEADER):
        checker.finish()


def test_binary_signed_data_is_refused_at_its_first_byte() -> None:
    checker = OpenPGPStreamChecker()
    with pytest.raises(NotOpenPGP, match="signature packet"):
        checker.feed(b"\x89")  # old format, tag 2


def test_clear_signed_armor_is_refused_at_the_end_of_its_begin_line() -> None:
    checker = OpenPGPStreamChecker()
    checker.feed(b"-----BEGIN PGP SIGNED MESSAGE-----")
    with pytest.raises(NotOpenPGP, match="clear-signed"):
        checker.feed(b"\nHash: SHA512\n")


def test_empty_upload() -> None:
    checker = OpenPGPStreamChecker()
    checker.feed(b"")
    with pytest.raises(EmptyUpload) as caught:
        checker.finish()
    assert caught.value.message == "sent empty data"
    assert isinstance(caught.value, InvalidInput)


def test_not_openpgp_is_invalid_input() -> None:
    assert issubclass(NotOpenPGP, InvalidInput)
    error = check(b"hello")
    assert isinstance(error, NotOpenPGP)
    assert error.message.startswith(
        "first chunk of uploaded data does not contain a valid GPG header"
    )


def test_truncated_armor_names_the_footer() -> None:
    data = SAMPLES_BY_NAME["truncated.asc"].read()
    error = check(data)
    assert isinstance(error, NotOpenPGP)
    assert "end of stream does not contain a valid GPG footer" in error.message


def test_an_error_sticks() -> None:
    checker = OpenPGPStreamChecker()
    with pytest.raises(NotOpenPGP) as first:
        checker.feed(b"plain")
    with pytest.raises(NotOpenPGP) as again:
        checker.feed(SAMPLES_BY_NAME["public-key.gpg"].read())
    assert again.value is first.value
    with pytest.raises(NotOpenPGP):
        checker.finish()


def test_feeding_after_finish_is_a_programming_error() -> None:
    checker = OpenPGPStreamChecker()
    checker.feed(SAMPLES_BY_NAME["public-key.gpg"].read())
    checker.finish()
    with pytest.raises(RuntimeError):
        checker.feed(b"more")


def test_bytes_like_chunks_are_accepted() -> None:
    data = SAMPLES_BY_NAME["public-key.asc"].read()
    checker = OpenPGPStreamChecker()
    checker.feed(bytearray(data[:100]))
    checker.feed(memoryview(data)[100:])
    checker.finish()
    assert checker.size == len(data)


def test_form_and_head_are_reported() -> None:
    checker = OpenPGPStreamChecker()
    assert checker.armored is None
    checker.feed(b"\n")
    assert checker.armored is None
    checker.feed(SAMPLES_BY_NAME["public-key.asc"].read())
    assert checker.armored is True
    assert checker.head_accepted
    binary = OpenPGPStreamChecker()
    data = SAMPLES_BY_NAME["public-key.gpg"].read()
    binary.feed(data[:1])
    assert binary.armored is False
    assert not binary.head_accepted
    binary.feed(data[1:])
    assert binary.head_accepted


SAMPLES_BY_NAME = {sample.name: sample for sample in SAMPLES}


# --- hand-made packets ---------------------------------------------------------------------

RNG = random.Random(1)
PKESK_V3 = b"\x03" + RNG.randbytes(8) + b"\x12" + RNG.randbytes(80)
PKESK_V6 = b"\x06" + RNG.randbytes(40)
SKESK_V4 = b"\x04\x09\x03\x02" + RNG.randbytes(9)
SKESK_V6 = b"\x06" + RNG.randbytes(30)
SEIPD_V1 = b"\x01" + RNG.randbytes(300)
SEIPD_V2 = b"\x02\x09\x03\x10" + RNG.randbytes(300)
SED = RNG.randbytes(100)
AEAD_V1 = b"\x01\x09\x02\x10" + RNG.randbytes(100)


def old(tag: int, body: bytes, length_type: int | None = None) -> bytes:
    """An old-format packet; length type 3 is the indeterminate length."""
    if length_type is None:
        length_type = 0 if len(body) < 256 else 1 if len(body) < 65536 else 2
    first = 0x80 | tag << 2 | length_type
    if length_type == 3:
        return bytes([first]) + body
    return bytes([first]) + len(body).to_bytes((1, 2, 4)[length_type], "big") + body


def new_length(size: int, form: str) -> bytes:
    if form == "one":
        assert size < 192
        return bytes([size])
    if form == "two":
        assert 192 <= size < 8384
        return bytes([((size - 192) >> 8) + 192, (size - 192) & 0xFF])
    return b"\xff" + size.to_bytes(4, "big")


def new(tag: int, body: bytes, form: str = "auto") -> bytes:
    """A new-format packet with a one-, two- or five-octet length."""
    if form == "auto":
        form = "one" if len(body) < 192 else "two" if len(body) < 8384 else "five"
    return bytes([0xC0 | tag]) + new_length(len(body), form) + body


def partial(tag: int, body: bytes, exponent: int = 9, last_form: str = "five") -> bytes:
    """A new-format packet in partial body chunks of ``2**exponent`` bytes."""
    step = 1 << exponent
    out = bytearray([0xC0 | tag])
    position = 0
    while len(body) - position > step:
        out += bytes([0xE0 | exponent]) + body[position : position + step]
        position += step
    out += new_length(len(body) - position, last_form) + body[position:]
    return bytes(out)


ACCEPTED_MESSAGES = {
    "old pkesk 1-octet + new seipd": old(1, PKESK_V3, 0) + new(18, SEIPD_V1),
    "old pkesk 2-octet + new seipd": old(1, PKESK_V3, 1) + new(18, SEIPD_V1),
    "old pkesk 4-octet + new seipd": old(1, PKESK_V3, 2) + new(18, SEIPD_V1),
    "old skesk + old sed indeterminate": old(3, SKESK_V4) + old(9, SED, 3),
    "old skesk + old sed 2-octet": old(3, SKESK_V4, 1) + old(9, SED, 1),
    "new pkesk 1-octet + seipd 2-octet": new(1, PKESK_V3, "one") + new(18, SEIPD_V1, "two"),
    "new pkesk 5-octet + seipd 5-octet": new(1, PKESK_V3, "five") + new(18, SEIPD_V1, "five"),
    "new pkesk v6 + seipd v2": new(1, PKESK_V6) + new(18, SEIPD_V2),
    "new skesk v6 + seipd v2": new(3, SKESK_V6) + new(18, SEIPD_V2),
    "skesk + aead": new(3, SKESK_V4) + new(20, AEAD_V1),
    "several session keys": old(1, PKESK_V3)
    + new(1, PKESK_V6)
    + old(3, SKESK_V4)
    + new(18, SEIPD_V1),
    "partial body lengths": old(1, PKESK_V3) + partial(18, SEIPD_V1 * 20, 9),
    "partial lengths, two-octet last": old(1, PKESK_V3) + partial(18, SEIPD_V1 * 3, 9, "two"),
    "large partial chunks": old(1, PKESK_V3) + partial(18, SEIPD_V1 * 40, 13, "two"),
    "padding after the data": old(1, PKESK_V3) + new(18, SEIPD_V1) + new(21, b"\x00" * 32),
}

REFUSED_MESSAGES = {
    "literal data": (new(11, b"b\x00\x00\x00\x00\x00hello"), NotOpenPGP, "tag 11"),
    "reserved tag": (old(0, b"xx"), NotOpenPGP, "tag 0"),
    "data without session key": (new(18, SEIPD_V1), NotOpenPGP, "tag 18"),
    "session key only": (old(1, PKESK_V3), NotOpenPGP, "ends before"),
    "session key, cut header": (old(1, PKESK_V3) + b"\xd2", NotOpenPGP, "ends before"),
    "session key, then signature": (
        old(1, PKESK_V3) + old(2, b"\x04" * 40),
        NotOpenPGP,
        "followed by a signature packet",
    ),
    "session key, then literal": (
        old(1, PKESK_V3) + new(11, b"b\x00hello"),
        NotOpenPGP,
        "followed by a literal data packet",
    ),
    "session key, then text": (old(1, PKESK_V3) + b"hello", NotOpenPGP, "not an OpenPGP"),
    "pkesk version 2": (
        old(1, b"\x02" + PKESK_V3[1:]) + new(18, SEIPD_V1),
        NotOpenPGP,
        "unknown version 2",
    ),
    "skesk version 3": (old(3, b"\x03" + SKESK_V4[1:]) + new(18, SEIPD_V1), NotOpenPGP, "version"),
    "seipd version 3": (old(1, PKESK_V3) + new(18, b"\x03" + SEIPD_V1[1:]), NotOpenPGP, "version"),
    "aead version 2": (old(1, PKESK_V3) + new(20, b"\x02" + AEAD_V1[1:]), NotOpenPGP, "version"),
    "empty session key": (old(1, b"") + new(18, SEIPD_V1), NotOpenPGP, "implausible length"),
    "empty encrypted data": (old(1, PKESK_V3) + new(18, b""), NotOpenPGP, "is empty"),
    "session key of indeterminate length": (old(1, PKESK_V3, 3), NotOpenPGP, "definite length"),
    "session key in partial lengths": (
        partial(1, PKESK_V3 * 8, 9) + new(18, SEIPD_V1),
        NotOpenPGP,
        "definite length",
    ),
    "huge session key": (
        b"\xc1\xff" + (1 << 20).to_bytes(4, "big") + b"\x03",
        NotOpenPGP,
        "implausible length",
    ),
    "encrypted data cut short": (
        old(1, PKESK_V3) + new(18, SEIPD_V1)[:-1],
        NotOpenPGP,
        openpgp.NO_FOOTER,
    ),
    "cut inside a partial chunk": (
        old(1, PKESK_V3) + partial(18, SEIPD_V1 * 20, 9)[:3000],
        NotOpenPGP,
        "truncated",
    ),
    "cut after a partial chunk": (
        old(1, PKESK_V3) + partial(18, SEIPD_V1 * 20, 9)[: 2 + 512],
        NotOpenPGP,
        "truncated",
    ),
    "cut inside a header after the data": (
        old(1, PKESK_V3) + new(18, SEIPD_V1) + b"\xd5",
        NotOpenPGP,
        "truncated",
    ),
    "second message after the data": (
        old(1, PKESK_V3) + new(18, SEIPD_V1) + old(1, PKESK_V3) + new(18, SEIPD_V1),
        NotOpenPGP,
        "follows the encrypted data packet",
    ),
}


@pytest.mark.parametrize("data", ACCEPTED_MESSAGES.values(), ids=ACCEPTED_MESSAGES.keys())
@pytest.mark.parametrize("form", ["binary", "armored"])
@pytest.mark.parametrize("size", [None, 1, 3])
def test_handmade_message_accepted(data: bytes, form: str, size: int | None) -> None:
    payload = armor(data) if form == "armored" else data
    assert check(payload, None if size is None else [size]) is None


@pytest.mark.parametrize(
    ("data", "error", "phrase"), REFUSED_MESSAGES.values(), ids=REFUSED_MESSAGES.keys()
)
@pytest.mark.parametrize("size", [None, 1, 4])
def test_handmade_message_refused(
    data: bytes, error: type[InvalidInput], phrase: str, size: int | None
) -> None:
    found = check(data, None if size is None else [size])
    assert type(found) is error
    assert phrase in found.message


@pytest.mark.parametrize(
    ("data", "error", "phrase"),
    [value for key, value in REFUSED_MESSAGES.items() if "cut" not in key and "after" not in key],
    ids=[key for key in REFUSED_MESSAGES if "cut" not in key and "after" not in key],
)
def test_handmade_head_refused_inside_armor(
    data: bytes, error: type[InvalidInput], phrase: str
) -> None:
    found = check(armor(data))
    assert type(found) is error
    assert openpgp.NO_HEADER in found.message


def test_small_partial_chunks_stop_the_tracking_but_are_accepted() -> None:
    # A 512-byte partial chunk, then a 1-byte one (legal, but no tool writes it): from there
    # on nothing is followed, so even a cut end passes. This bounds the work per byte.
    head = old(1, PKESK_V3) + b"\xd2\xe9" + (SEIPD_V1 * 2)[:512]
    assert check(head + b"\xe0\x00" + b"\x01\x00") is None
    assert check(head + b"\xe0\x00" + b"\xe9") is None
    # The same cut with a 512-byte chunk is noticed.
    error = check(head + b"\xe9" + bytes(100))
    assert isinstance(error, NotOpenPGP)
    assert "truncated" in error.message


# --- armor variants ------------------------------------------------------------------------

GOOD = old(1, PKESK_V3) + new(18, SEIPD_V1)


def armored_lines(data: bytes = GOOD) -> list[bytes]:
    return armor(data).split(b"\n")


def test_armor_without_blank_line_after_begin() -> None:
    lines = armored_lines()
    assert lines[1] == b""
    assert check(b"\n".join(lines[:1] + lines[2:])) is None


def test_armor_without_checksum_line() -> None:
    lines = [line for line in armored_lines() if not line.startswith(b"=")]
    assert check(b"\n".join(lines)) is None


def test_armor_with_spaces_around_lines() -> None:
    lines = armored_lines()
    spaced = [b"  " + line + b" \t" if line else line for line in lines]
    assert check(b"\r\n".join(spaced)) is None


def test_armor_headers_before_the_data() -> None:
    lines = armored_lines()
    with_headers = [
        lines[0],
        b"Version: OpenPGP.js v5",
        b"Comment: https://example.org",
        *lines[1:],
    ]
    assert check(b"\n".join(with_headers)) is None


def test_end_line_must_start_a_line() -> None:
    text = armor(GOOD).replace(b"\n-----END", b"-----END")
    error = check(text)
    assert isinstance(error, NotOpenPGP)
    assert openpgp.NO_FOOTER in error.message


def test_end_line_twice_is_refused() -> None:
    error = check(armor(GOOD) + b"-----END PGP MESSAGE-----\n")
    assert isinstance(error, NotOpenPGP)
    assert openpgp.NO_FOOTER in error.message


def test_a_whole_second_armored_message_after_the_end_is_refused() -> None:
    error = check(armor(GOOD) + b"\n" + armor(GOOD).replace(b"MESSAGE", b"SIGNATURE"))
    assert isinstance(error, NotOpenPGP)
    assert "data follows" in error.message


def test_begin_line_variants_are_refused() -> None:
    for begin, phrase in [
        (b"-----BEGIN PGP MESSAGE, PART 1/2-----", "several parts"),
        (b"-----BEGIN PGP PRIVATE KEY BLOCK-----", "secret key"),
        (b"-----BEGIN PGP ARMORED FILE-----", "ARMORED FILE"),
        (b"-----BEGIN CERTIFICATE-----", "does not start with"),
        (b"--- a/file.txt", "does not start with"),
    ]:
        error = check(begin + b"\n\n" + armor(GOOD).split(b"\n\n", 1)[1])
        assert isinstance(error, NotOpenPGP), begin
        assert phrase in error.message, (begin, error.message)


def test_begin_line_without_newline_is_refused_at_the_end() -> None:
    error = check(b"-----BEGIN PGP SIGNATURE-----")
    assert isinstance(error, NotOpenPGP)
    assert "detached signature" in error.message
    error = check(b"-----BEGIN PGP MESSAGE-----\n")
    assert isinstance(error, NotOpenPGP)
    assert "ends before" in error.message


def test_armor_with_no_data() -> None:
    error = check(b"-----BEGIN PGP MESSAGE-----\n\n-----END PGP MESSAGE-----\n")
    assert isinstance(error, NotOpenPGP)
    assert openpgp.NO_HEADER in error.message
    error = check(b"-----BEGIN PGP MESSAGE-----\n-----END PGP MESSAGE-----\n")
    assert isinstance(error, NotOpenPGP)
    assert "holds no data" in error.message


def test_invalid_characters_in_the_armored_data() -> None:
    body = armor(GOOD).split(b"\n\n", 1)[1]
    error = check(b"-----BEGIN PGP MESSAGE-----\n\n*" + body)
    assert isinstance(error, NotOpenPGP)
    assert "invalid character" in error.message


def test_cut_inside_the_armored_head() -> None:
    text = armor(GOOD)
    start = text.index(b"\n\n") + 2
    for cut in range(start, start + 12):
        error = check(text[:cut])
        assert isinstance(error, NotOpenPGP), cut
        assert openpgp.NO_HEADER in error.message or openpgp.NO_FOOTER in error.message


def test_cut_inside_the_armored_data_after_the_head() -> None:
    text = armor(GOOD)
    error = check(text[: text.index(b"-----END")])
    assert isinstance(error, NotOpenPGP)
    assert openpgp.NO_FOOTER in error.message


def test_end_line_with_little_armored_data_before_it() -> None:
    text = armor(GOOD)
    # Only the end of the last data line and the END line fit in the tail: still accepted.
    padded = text.replace(b"\n-----END", b"\n" + b"\n" * (openpgp.TAIL_SIZE - 30) + b"-----END")
    assert check(padded) is None


def test_too_much_trailing_whitespace_hides_the_end_line() -> None:
    error = check(armor(GOOD) + b"\n" * openpgp.TAIL_SIZE)
    assert isinstance(error, NotOpenPGP)
    assert openpgp.NO_FOOTER in error.message


def test_leading_whitespace_before_binary_is_refused() -> None:
    error = check(b"\n" + GOOD)
    assert isinstance(error, NotOpenPGP)
    assert openpgp.NO_HEADER in error.message


def test_whitespace_is_refused_after_the_head_limit() -> None:
    checker = OpenPGPStreamChecker()
    with pytest.raises(NotOpenPGP, match="within the first"):
        checker.feed(b" \r\n" * openpgp.HEAD_LIMIT)


def test_long_armor_line_is_refused_while_feeding() -> None:
    checker = OpenPGPStreamChecker()
    checker.feed(b"-----BEGIN PGP MESSAGE-----\nComment: ")
    with pytest.raises(NotOpenPGP, match="longer than"):
        checker.feed(b"x" * openpgp.MAX_ARMOR_LINE)


def test_too_many_session_keys_are_refused() -> None:
    keys = old(3, SKESK_V4) * openpgp.MAX_SESSION_KEYS
    assert check(keys + new(18, SEIPD_V1)) is None
    error = check(keys + old(3, SKESK_V4) + new(18, SEIPD_V1))
    assert isinstance(error, NotOpenPGP)
    assert "more than 1024 encrypted session key packets" in error.message


def test_undecided_head_is_refused_after_the_head_limit() -> None:
    checker = OpenPGPStreamChecker()
    # Session keys of 2 KiB each: over the byte limit long before the count limit.
    big_key = old(1, b"\x03" + bytes(2047))
    piece = big_key * 100
    fed = feed_until_refused(checker, (piece for _ in range(100_000)))
    assert openpgp.HEAD_LIMIT < fed <= openpgp.HEAD_LIMIT + len(piece)
    with pytest.raises(NotOpenPGP, match="within the first"):
        checker.finish()


# --- cost and memory -----------------------------------------------------------------------


def partial_stream(total: int, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
    """A valid binary message of about ``total`` bytes in 8 KiB partial body chunks."""
    piece = b"\xed" + bytes(8192)  # partial length 2**13
    yield old(1, PKESK_V3) + b"\xd2\xed\x01" + bytes(8191)
    block = piece * (chunk_size // len(piece))
    for _ in range(total // len(block)):
        yield block
    yield b"\x01"  # the last chunk: one byte, definite length
    yield b"\x00"


def test_memory_stays_bounded_on_a_long_binary_stream() -> None:
    checker = OpenPGPStreamChecker()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for piece in partial_stream(64 * 1024 * 1024):
            checker.feed(piece)
            assert checker.buffered_bytes <= openpgp.TAIL_SIZE + 16
        checker.finish()
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert checker.size > 64 * 1024 * 1024
    assert peak < 512 * 1024  # one chunk in flight plus small change


def test_memory_stays_bounded_on_a_long_armored_stream() -> None:
    checker = OpenPGPStreamChecker()
    head = armor(old(1, PKESK_V3) + new(18, SEIPD_V1))
    checker.feed(head[: head.index(b"=")])
    assert checker.head_accepted
    line = b"QUJDRA" * 10 + b"\n"
    block = line * 1000
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for _ in range(500):  # about 30 MiB
            checker.feed(block)
            assert checker.buffered_bytes <= openpgp.TAIL_SIZE
        checker.feed(b"=abcd\n-----END PGP MESSAGE-----\n")
        checker.finish()
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


# --- large real files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_plaintext() -> bytes:
    return os.urandom(5 * 1024 * 1024)


@pytest.mark.parametrize("armored", [False, True])
def test_large_real_message(gpg_home: GpgHome, large_plaintext: bytes, armored: bool) -> None:
    data = gpg_home.encrypt(large_plaintext, armor=armored, extra=["--compress-level", "0"])
    assert len(data) > len(large_plaintext)
    assert check(data, [64 * 1024]) is None
    assert check(data, [65_537, 1, 4093, 7]) is None
    checker = OpenPGPStreamChecker()
    for piece in chunks(data, [64 * 1024]):
        checker.feed(piece)
        assert checker.buffered_bytes <= openpgp.TAIL_SIZE + 16
    checker.finish()
    # Cut anywhere after the head: refused at the end.
    for cut in (len(data) // 3, len(data) - 40, len(data) - 27):
        error = check(data[:cut], [64 * 1024])
        assert isinstance(error, NotOpenPGP), cut
        assert openpgp.NO_FOOTER in error.message


def test_real_symmetric_and_round_trip(gpg_home: GpgHome) -> None:
    for armored in (False, True):
        data = gpg_home.encrypt(b"secret rows\n", armor=armored, symmetric=True)
        assert check(data, [3]) is None
        assert gpg_home.decrypt(data) == b"secret rows\n"


def test_make_encrypted_keeps_a_keyring_in_the_folder(tmp_path: Path) -> None:
    first = make_encrypted(tmp_path, b"one", armor=False, symmetric=False)
    second = make_encrypted(tmp_path, b"two", armor=True, symmetric=True)
    assert check(first) is None
    assert check(second) is None
    home = GpgHome.open_or_create(tmp_path / "gnupg")
    try:
        assert home.decrypt(first) == b"one"
        assert home.decrypt(second) == b"two"
    finally:
        home.close()


def test_pad_to_makes_exact_sizes_the_check_accepts(gpg_home: GpgHome) -> None:
    message = gpg_home.encrypt(b"rows", compress=False)
    for extra in (0, 2, 3, 193, 194, 195, 8386, 8387, 8390, 100_000):
        padded = pad_to(message, len(message) + extra)
        assert len(padded) == len(message) + extra
        assert check(padded, [5]) is None, extra
    with pytest.raises(ValueError, match="at least 2 bytes"):
        pad_to(message, len(message) + 1)
    # Zeros after the message are not a packet: refused.
    error = check(message + bytes(100))
    assert isinstance(error, NotOpenPGP)
    assert openpgp.NO_FOOTER in error.message


def test_uncompressed_encryption_keeps_the_size(gpg_home: GpgHome) -> None:
    zeros = bytes(256 * 1024)
    assert len(gpg_home.encrypt(zeros, compress=False)) > len(zeros)
    assert len(gpg_home.encrypt(zeros)) < len(zeros) // 10


# --- what may follow the encrypted data ----------------------------------------------------

LITERAL = b"b\x00\x00\x00\x00\x00plaintext"
PADDING = new(21, b"\x00" * 32)


@pytest.mark.parametrize("tag", range(64))
def test_every_packet_tag_after_the_data(tag: int) -> None:
    # Only padding may follow the encrypted data; any other packet (plaintext in a literal
    # data packet, a second message, a marker...) is refused, in either packet format.
    after = [new(tag, LITERAL)] + ([old(tag, LITERAL)] if tag < 16 else [])
    for packet in after:
        for data in (GOOD + packet, GOOD + PADDING + packet):
            found = check(data)
            if tag == openpgp.PADDING:
                assert found is None
                continue
            assert type(found) is NotOpenPGP, (tag, packet[:1])
            assert openpgp.NO_FOOTER in found.message
            assert f"(tag {tag}) follows the encrypted data packet" in found.message


def test_a_literal_packet_after_padding_is_refused_byte_by_byte() -> None:
    data = GOOD + PADDING + PADDING + new(11, LITERAL)
    found = check(data, [1])
    assert type(found) is NotOpenPGP
    assert "a literal data packet (tag 11) follows the encrypted data packet" in found.message
    assert check(GOOD + PADDING + PADDING, [1]) is None


def test_padding_cut_short_is_truncated() -> None:
    found = check(GOOD + PADDING[:-1])
    assert type(found) is NotOpenPGP
    assert "truncated" in found.message


def test_armor_with_no_end_line_cut_where_the_last_quad_decides_the_head() -> None:
    # The head is decided only when the finish pads the last base64 characters: the error
    # names the missing END line, not a missing header.
    head = old(1, PKESK_V3, 1) + new(18, SEIPD_V1)[:4]  # ends with the version octet
    assert len(head) % 3 == 1  # its base64 ends with two characters of a quad
    body = base64.b64encode(head).rstrip(b"=")
    found = check(b"-----BEGIN PGP MESSAGE-----\n\n" + body + b"\n")
    assert type(found) is NotOpenPGP
    assert found.message == (
        f"{openpgp.NO_FOOTER}: the armor has no -----END PGP MESSAGE----- line"
    )


@pytest.mark.parametrize("sizes", [None, [1], [2]])
def test_byte_order_mark_before_the_armor_is_refused_with_advice(
    sizes: list[int] | None,
) -> None:
    checker = OpenPGPStreamChecker()
    pieces = list(chunks(openpgp.UTF8_BOM + armor(GOOD), sizes))
    with pytest.raises(NotOpenPGP) as raised:
        checker.feed(pieces[0])
    assert raised.value.message.startswith(openpgp.NO_HEADER)
    assert "byte order mark" in raised.value.message
    assert "-----BEGIN PGP MESSAGE-----" in raised.value.message
    assert checker.size == len(pieces[0])  # refused by the first piece fed


# --- runs of partial chunks, as gpg writes the encrypted data ----------------------------------


@settings(max_examples=150, deadline=None)
@given(
    exponents=st.lists(st.integers(min_value=9, max_value=13), min_size=1, max_size=12),
    last=st.sampled_from(["one", "two", "five"]),
    sizes=st.lists(st.integers(min_value=1, max_value=20_000), min_size=1, max_size=8),
    cut=st.integers(min_value=1, max_value=40_000),
)
def test_runs_of_partial_chunks_in_any_pieces(
    exponents: list[int], last: str, sizes: list[int], cut: int
) -> None:
    # The chunks are walked in a loop of their own; wherever the pieces split them (on a
    # length octet, inside a chunk, several chunks in one piece), the complete message is
    # accepted and one cut short anywhere inside the data is refused as truncated.
    data = bytearray(b"\xd2")
    for exponent in exponents:
        data += bytes([0xE0 | exponent]) + (SEIPD_V1 * 30)[: 1 << exponent]
    tail = 150 if last == "one" else 300
    data += new_length(tail, last) + bytes(tail)
    message = old(1, PKESK_V3) + bytes(data)
    assert check(message, sizes) is None
    # Cut anywhere after the data packet's version octet (before it the head is undecided).
    shorter = message[: max(len(message) - cut, len(message) - len(data) + 3)]
    error = check(shorter, sizes)
    assert isinstance(error, NotOpenPGP)
    assert "truncated" in error.message


def test_a_small_partial_chunk_after_a_run_stops_the_tracking() -> None:
    run = b"".join(b"\xe9" + bytes(512) for _ in range(8))
    head = old(1, PKESK_V3) + b"\xd2\xe9" + (SEIPD_V1 * 2)[:512] + run
    for size in (1, 513, 4096, 100_000):
        assert check(head + b"\xe0\x00" + b"\xe9", [size]) is None  # cut, but not followed
        error = check(head + b"\xe9" + bytes(100), [size])
        assert isinstance(error, NotOpenPGP)
        assert "truncated" in error.message
