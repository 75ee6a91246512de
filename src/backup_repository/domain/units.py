"""Sizes (``1M``, ``512KiB``) and Go-style durations (``30m``, ``1h30m``, ``5d``)."""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction

# re.ASCII: without it \d also matches other scripts' digits (Arabic-Indic, Devanagari, ...),
# which int() then accepts.
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE | re.ASCII)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str | int) -> int:
    """Bytes in a size: a number with an optional unit B, K/KB/KiB, M/MB/MiB, G/GB/GiB,
    T/TB/TiB, all powers of 1024, case-insensitive (``1M`` is 1048576)."""
    if isinstance(text, bool):
        raise ValueError(f"invalid size {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"invalid size {text!r}: must not be negative")
        return text
    match = _SIZE_RE.match(text)
    if match is None or (match.group(3) and match.group(3).lower() == "ib" and not match.group(2)):
        raise ValueError(
            f"invalid size {text!r}: expected a number with an optional unit "
            "B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB or TiB"
        )
    return int(match.group(1)) << (10 * _SIZE_POWERS[match.group(2).lower()])


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|μs|ms|s|m|h|d|w)", re.ASCII)
# Nanoseconds per unit (Go accepts both the micro sign and the Greek mu). Parts are summed
# exactly: multiplying a timedelta by a float rounds each part to whole microseconds, which
# made "1000ns" zero.
_DURATION_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
    "w": 7 * 86400 * 1_000_000_000,
}


def parse_duration(text: str) -> timedelta:
    """A Go ``time.ParseDuration`` string (``300ms``, ``1h30m``), also accepting days and
    weeks (``5d``, ``2w``) as the reference's rotation settings use them."""
    raw = text.strip()
    if raw in {"0", "+0"}:
        return timedelta(0)
    pos = 0
    total_ns = Fraction(0)
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            break
        total_ns += Fraction(match.group(1)) * _DURATION_NS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(raw):
        raise ValueError(
            f"invalid duration {text!r}: expected e.g. 30s, 15m, 1h30m, 5d (units ns, us, ms, "
            "s, m, h, d, w)"
        )
    try:
        return timedelta(microseconds=round(total_ns / 1000))
    except OverflowError:
        # A configuration error like any other, not a crash of the caller's ValueError handling.
        raise ValueError(f"invalid duration {text!r}: too long") from None


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


_MAX_SECONDS = 100 * 365 * 24 * 3600


def parse_ttl(value: str | int) -> timedelta:
    """A token lifetime as a login asks for it: seconds (``3600``, ``"3600"``) or a duration
    (``"1h"``)."""
    if isinstance(value, bool):
        raise ValueError("ttl must be a duration such as 1h, or a number of seconds")
    if isinstance(value, str) and value.isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int):
        if value > _MAX_SECONDS:
            raise ValueError(f"ttl {value} is too long")
        return timedelta(seconds=value)
    return parse_duration(value)
