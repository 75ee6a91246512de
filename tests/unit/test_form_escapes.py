"""Percent-decoding of urlencoded upload bodies (http/bodies.py), chunk by chunk, against
the standard library's decoder."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_repository.domain.errors import InvalidInput
from backup_repository.http.bodies import _PercentDecoder, _unquote_plus


def _decode_in_chunks(data: bytes, cuts: list[int]) -> bytes:
    decoder = _PercentDecoder()
    out = b""
    last = 0
    for cut in sorted({min(cut, len(data)) for cut in cuts}):
        out += decoder.feed(data[last:cut])
        last = cut
    out += decoder.feed(data[last:])
    return out + decoder.finish()


@given(
    raw=st.binary(max_size=300),
    safe=st.sampled_from(["", "/", "\\", "\\%/:@!"]),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=6),
)
def test_decoding_in_any_chunks_gives_back_the_bytes(
    raw: bytes, safe: str, cuts: list[int]
) -> None:
    # quote_plus leaves the "safe" characters as they are: backslashes among them must come
    # through as backslashes, never be read as escapes of their own.
    encoded = urllib.parse.quote_plus(raw, safe=safe.replace("%", "")).encode()
    assert _decode_in_chunks(encoded, cuts) == raw


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        (b"a\\x41b", b"a\\x41b"),  # a literal backslash escape is data, not an escape
        (b"a\\x41b%41", b"a\\x41bA"),
        (b"\\n%0A", b"\\n\n"),
        (b"\\\\%41", b"\\\\A"),
        (b"%5C%78%34%31", b"\\x41"),
        (b"a+b%2B", b"a b+"),
        (b"%00%ff%FF", b"\x00\xff\xff"),
        (b"\\n\\t\\0", b"\\n\\t\\0"),
    ],
)
def test_backslashes_and_plus_signs(encoded: bytes, decoded: bytes) -> None:
    assert _unquote_plus(encoded) == decoded


@pytest.mark.parametrize("encoded", [b"%zz", b"%4g", b"a%4", b"%", b"%%41", b"%\\x41", b"%-1"])
def test_broken_escapes_are_refused(encoded: bytes) -> None:
    with pytest.raises(InvalidInput):
        _decode_in_chunks(encoded, [])
