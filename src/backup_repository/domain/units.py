"""Sizes (``1M``, ``512KiB``) and Go-style durations (``30m``, ``1h30m``, ``5d``)."""

from __future__ import annotations

import re
from datetime import timedelta

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
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
    return int(match.group(1)) * 1024 ** _SIZE_POWERS[match.group(2).lower()]


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")
_DURATION_UNITS = {
    "ns": timedelta(microseconds=0.001),
    "us": timedelta(microseconds=1),
    "µs": timedelta(microseconds=1),
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


def parse_duration(text: str) -> timedelta:
    """A Go ``time.ParseDuration`` string (``300ms``, ``1h30m``), also accepting days and
    weeks (``5d``, ``2w``) as the reference's rotation settings use them."""
    raw = text.strip()
    if raw in {"0", "+0"}:
        return timedelta(0)
    pos = 0
    total = timedelta(0)
    for match in _DURATION_PART.finditer(raw):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(raw):
        raise ValueError(
            f"invalid duration {text!r}: expected e.g. 30s, 15m, 1h30m, 5d (units ns, us, ms, "
            "s, m, h, d, w)"
        )
    return total


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"
