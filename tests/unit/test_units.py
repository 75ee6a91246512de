"""Sizes and durations (docs/configuration.md: sizes in powers of 1024; windows and rotation
use Go-style durations, plus days and weeks)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_repository.domain.units import format_duration, parse_duration, parse_size

KIB = 1024
MIB = 1024 * 1024
GIB = 1024 * 1024 * 1024
TIB = 1024 * 1024 * 1024 * 1024


# ---------------------------------------------------------------------------- parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("123", 123),
        ("1B", 1),
        ("1b", 1),
        ("7B", 7),
        ("1K", KIB),
        ("1k", KIB),
        ("1KB", KIB),
        ("1kb", KIB),
        ("1Kb", KIB),
        ("1KiB", KIB),
        ("1kib", KIB),
        ("1KIB", KIB),
        ("512KiB", 512 * KIB),
        ("1M", MIB),
        ("1m", MIB),
        ("1MB", MIB),
        ("1mb", MIB),
        ("1MiB", MIB),
        ("1mib", MIB),
        ("10M", 10 * MIB),
        ("1G", GIB),
        ("1g", GIB),
        ("1GB", GIB),
        ("1GiB", GIB),
        ("3gib", 3 * GIB),
        ("1T", TIB),
        ("1t", TIB),
        ("1TB", TIB),
        ("1TiB", TIB),
        ("2tb", 2 * TIB),
        (" 1M ", MIB),
        ("1 M", MIB),
        ("1 MiB", MIB),
        ("007K", 7 * KIB),
    ],
)
def test_parse_size_units_are_powers_of_1024(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_one_megabyte_is_1048576_bytes() -> None:
    # The example of docs/configuration.md, spelled out: not 1_000_000.
    assert parse_size("1M") == 1048576
    assert parse_size("1MB") == 1048576


@pytest.mark.parametrize("value", [0, 1, 1000, 5 * MIB, 2**62])
def test_parse_size_passes_non_negative_ints_through(value: int) -> None:
    assert parse_size(value) == value


@pytest.mark.parametrize("value", [-1, -MIB])
def test_parse_size_rejects_negative_ints(value: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_size(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_rejects_bools(value: bool) -> None:
    # bool is an int subclass; a YAML "yes" must not become a 1-byte quota.
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "M",
        "MB",
        "-1",
        "-1M",
        "+1M",
        "1.5M",
        "1,5M",
        "1e3",
        "0x10",
        "1iB",
        "1X",
        "1P",
        "1PB",
        "1MBB",
        "1MiBB",
        "1 M B",
        "1M1",
        "M1",
        "one",
        "1_000",
        "\u0661M",  # ARABIC-INDIC DIGIT ONE: int() would accept it
        "\u0967\u0966K",  # Devanagari "10"
    ],
)
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


_UNIT_POWERS = [
    ("", 0),
    ("b", 0),
    ("k", 1),
    ("kb", 1),
    ("kib", 1),
    ("m", 2),
    ("mb", 2),
    ("mib", 2),
    ("g", 3),
    ("gb", 3),
    ("gib", 3),
    ("t", 4),
    ("tb", 4),
    ("tib", 4),
]


@given(
    number=st.integers(min_value=0, max_value=10**9),
    unit=st.sampled_from(_UNIT_POWERS),
    upper=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_parse_size_any_number_any_unit_any_case(
    number: int, unit: tuple[str, int], upper: list[bool]
) -> None:
    spelling, power = unit
    cased = "".join(c.upper() if up else c for c, up in zip(spelling, upper, strict=False))
    assert parse_size(f"{number}{cased}") == number * 1024**power


# ------------------------------------------------------------------------ parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300ms", timedelta(milliseconds=300)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("30m", timedelta(minutes=30)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        ("0.5s", timedelta(milliseconds=500)),
        ("5d", timedelta(days=5)),
        ("2w", timedelta(days=14)),
        ("1h", timedelta(hours=1)),
        ("90s", timedelta(seconds=90)),
        ("1m30s", timedelta(seconds=90)),
        ("2h45m30s", timedelta(hours=2, minutes=45, seconds=30)),
        ("1h0m0s", timedelta(hours=1)),
        ("8760h", timedelta(days=365)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("30m1h", timedelta(hours=1, minutes=30)),  # Go accepts any order
        ("1ms", timedelta(milliseconds=1)),
        ("1us", timedelta(microseconds=1)),
        ("1\u00b5s", timedelta(microseconds=1)),  # MICRO SIGN
        ("1\u03bcs", timedelta(microseconds=1)),  # GREEK SMALL LETTER MU, also Go's
        ("1000ns", timedelta(microseconds=1)),
        ("2000000ns", timedelta(milliseconds=2)),
        ("1s500000000ns", timedelta(milliseconds=1500)),
        ("0", timedelta(0)),
        ("+0", timedelta(0)),
        ("0s", timedelta(0)),
        ("0h0m", timedelta(0)),
    ],
)
def test_parse_duration_go_forms_and_days_weeks(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_parse_duration_minutes_are_not_milliseconds() -> None:
    # "m" must not be swallowed by "ms" or the other way round.
    assert parse_duration("1m") == timedelta(minutes=1)
    assert parse_duration("1ms") == timedelta(milliseconds=1)
    assert parse_duration("1m1ms") == timedelta(minutes=1, milliseconds=1)


def test_parse_duration_sums_parts_exactly() -> None:
    # Each part used to be rounded to whole microseconds on its own, so nanoseconds vanished.
    assert parse_duration("500ns500ns") == timedelta(microseconds=1)
    assert parse_duration("0.1s0.2s") == timedelta(milliseconds=300)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "h",
        "5x",
        "1h 30m",
        "1",
        "30",
        "00",
        "-1h",
        "1H",
        "1D",
        "1hh",
        "h1",
        "1h30",
        "1.5.5h",
        "1 h",
        "1e3s",
        "one hour",
        "1y",
        "1mo",
        "\u0661h",  # ARABIC-INDIC DIGIT ONE
    ],
)
def test_parse_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["1000000000d", "999999999999w", "9" * 40 + "h"])
def test_parse_duration_too_long_is_a_value_error(text: str) -> None:
    # Used to escape as OverflowError, past callers that report ValueError as config errors.
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


_GO_UNITS = [
    ("w", timedelta(weeks=1)),
    ("d", timedelta(days=1)),
    ("h", timedelta(hours=1)),
    ("m", timedelta(minutes=1)),
    ("s", timedelta(seconds=1)),
    ("ms", timedelta(milliseconds=1)),
    ("us", timedelta(microseconds=1)),
]


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(_GO_UNITS)), min_size=1))
def test_parse_duration_of_concatenated_parts_is_their_sum(
    parts: list[tuple[int, tuple[str, timedelta]]],
) -> None:
    text = "".join(f"{n}{unit}" for n, (unit, _) in parts)
    expected = sum((n * size for n, (_, size) in parts), timedelta(0))
    assert parse_duration(text) == expected


# ----------------------------------------------------------------------- format_duration


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=1), "1m"),
        (timedelta(minutes=30), "30m"),
        (timedelta(hours=1), "1h"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(hours=1, minutes=1, seconds=1), "1h1m1s"),
        (timedelta(hours=2, seconds=5), "2h5s"),
        (timedelta(days=5), "120h"),
        (timedelta(days=365), "8760h"),
    ],
)
def test_format_duration(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected


@given(st.integers(min_value=0, max_value=10**9))
def test_format_then_parse_round_trips_whole_seconds(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value
