"""Plain-text tables and sizes for ``versions`` and ``collections``: stable output for
people and for ``grep``/``awk`` (``--json`` gives the server's data unchanged)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_FRACTION = re.compile(r"\.[0-9]+(?=Z|[+-][0-9]{2}:?[0-9]{2}$|$)")


def human_size(size: object) -> str:
    """``1536`` -> ``1.5 KiB``; anything that is not a number of bytes -> ``-``."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return "-"
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: int = 0) -> str:
    """Columns separated by two spaces; the first ``right`` columns are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i < right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _when(value: object) -> str:
    """``2026-11-27T01:00:00.123456Z`` -> ``2026-11-27 01:00:00Z`` (shorter, still UTC)."""
    if not isinstance(value, str) or not value:
        return "-"
    return _FRACTION.sub("", value).replace("T", " ", 1)


def _short_sha(value: object) -> str:
    return value[:16] if isinstance(value, str) and value else "-"


def duration_text(seconds: object) -> str:
    """``5400`` -> ``1h30m``; anything that is not a number of seconds -> ``-``."""
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
        return "-"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts) or "0s"


def window_text(window: Mapping[str, Any]) -> str:
    """``30 0 * * * for 1h (UTC)``: the start, the duration and the time zone."""
    zone = window.get("timezone") or "UTC"
    return f"{_text(window.get('from'))} for {duration_text(window.get('duration'))} ({zone})"


def usage_line(collection_id: str, usage: Mapping[str, Any]) -> str:
    count = usage.get("versions")
    return (
        f"collection {collection_id}: {_text(count)} version(s), "
        f"{human_size(usage.get('bytesUsed'))} used of {human_size(usage.get('maxCollectionSize'))}"
        f" (at most {_text(usage.get('maxBackupsCount'))} versions of "
        f"{human_size(usage.get('maxOneVersionSize'))} each)"
    )


def _uploader(version: Mapping[str, Any]) -> str:
    """Who uploaded a version: ``alice``, or ``alice$ci`` for an upload made with the access
    key ``ci`` (the login it was made with)."""
    user, key = _text(version.get("user")), version.get("accessKeyName")
    return f"{user}${key}" if key else user


def versions_table(data: Mapping[str, Any]) -> str:
    """The listing of one collection, newest first, as the server sends it."""
    versions: Sequence[Mapping[str, Any]] = data.get("versions") or []
    rows = [
        [
            _text(v.get("versionNumber")) + (" protected" if v.get("protected") else ""),
            human_size(v.get("filesize")),
            _when(v.get("CreatedAt")),
            _short_sha(v.get("sha256")),
            _uploader(v),
            _text(v.get("filename")),
        ]
        for v in versions
    ]
    table = format_table(
        ["VERSION", "SIZE", "CREATED (UTC)", "SHA-256", "USER", "FILENAME"], rows, right=2
    )
    usage = data.get("usage")
    header = (
        usage_line(str(data.get("collectionId", "?")), usage) if isinstance(usage, Mapping) else ""
    )
    return f"{header}\n{table}" if header else table


def collections_table(data: Mapping[str, Any]) -> str:
    collections: Sequence[Mapping[str, Any]] = data.get("collections") or []
    rows = []
    for c in collections:
        usage = c.get("usage") if isinstance(c.get("usage"), Mapping) else {}
        assert isinstance(usage, Mapping)
        windows = c.get("windows") or []
        rows.append(
            [
                _text(c.get("id")),
                f"{_text(usage.get('versions'))}/{_text(usage.get('maxBackupsCount'))}",
                human_size(usage.get("bytesUsed")),
                human_size(usage.get("maxCollectionSize")),
                human_size(usage.get("maxOneVersionSize")),
                _text(c.get("strategyName")),
                ", ".join(window_text(w) for w in windows if isinstance(w, Mapping)) or "any time",
                _text(c.get("description")),
            ]
        )
    return format_table(
        [
            "ID",
            "VERSIONS",
            "USED",
            "MAX TOTAL",
            "MAX VERSION",
            "STRATEGY",
            "WINDOWS",
            "DESCRIPTION",
        ],
        rows,
    )


_STRATEGY_KEYS = (
    "keepLast",
    "keepHourly",
    "keepDaily",
    "keepWeekly",
    "keepMonthly",
    "keepYearly",
)


def strategy_text(strategy: Mapping[str, Any]) -> str:
    """``gfs keepLast 2, keepDaily 7 (UTC), maxBackupsCount 16``: the strategy and the keys
    it uses (counts of 0 left out)."""
    name = _text(strategy.get("name"))
    parts = [
        f"{key} {strategy[key]}"
        for key in _STRATEGY_KEYS
        if isinstance(strategy.get(key), int) and strategy[key]
    ]
    if "maxOlderCopies" in strategy:
        parts.append(f"maxOlderCopies {_text(strategy.get('maxOlderCopies'))}")
        parts.append(
            f"keepLastOlderNotMoreThan {duration_text(strategy.get('keepLastOlderNotMoreThan'))}"
        )
    zone = f" ({strategy['timeZone']})" if strategy.get("timeZone") else ""
    keys = f" {', '.join(parts)}{zone}" if parts or zone else ""
    return f"{name}{keys}, maxBackupsCount {_text(strategy.get('maxBackupsCount'))}"


def _fate(version: Mapping[str, Any] | None) -> str:
    """``kept: daily 2026-12-03``, ``rotated``, ``rotated: maxBackupsCount``; ``-`` when the
    version is not in that view."""
    if version is None:
        return "-"
    if version.get("fate") == "kept":
        rules = " ".join(str(rule) for rule in version.get("keptBy") or [])
        period = f" {version['period']}" if version.get("period") else ""
        return f"kept: {rules}{period}" if rules else "kept"
    because = version.get("rotatedBecause")
    return "rotated: maxBackupsCount" if because == "maxBackupsCount" else "rotated"


def _totals(view: Mapping[str, Any]) -> str:
    return (
        f"{_text(view.get('versionsKept'))} kept ({human_size(view.get('bytesKept'))}), "
        f"{_text(view.get('versionsRotated'))} rotated ({human_size(view.get('bytesFreed'))} "
        "freed)"
    )


def retention_table(data: Mapping[str, Any]) -> str:
    """The retention dry run: every version, newest first, with what the strategy does with
    it now and after one more upload made now (the row marked ``next upload``)."""
    current: Mapping[str, Any] = data.get("current") or {}
    after: Mapping[str, Any] = data.get("afterUpload") or {}
    now_by_number = {
        v.get("version"): v for v in current.get("versions") or [] if isinstance(v, Mapping)
    }
    rows = []
    for v in after.get("versions") or []:
        if not isinstance(v, Mapping):
            continue
        upcoming = v.get("upcoming") is True
        rows.append(
            [
                _text(v.get("version")),
                "next upload" if upcoming else human_size(v.get("size")),
                _when(v.get("createdAt")),
                "-" if upcoming else _fate(now_by_number.get(v.get("version"))),
                _fate(v),
            ]
        )
    table = format_table(
        ["VERSION", "SIZE", "CREATED (UTC)", "NOW", "AFTER THE NEXT UPLOAD"], rows, right=2
    )
    strategy = data.get("strategy")
    header = (
        f"collection {_text(data.get('collectionId'))}: "
        f"{strategy_text(strategy) if isinstance(strategy, Mapping) else '-'}"
    )
    footer = (
        f"now: {_totals(current)}\n"
        f"after the next upload ({_when(data.get('now'))}): {_totals(after)}; "
        f"it may have at most {human_size(after.get('nextUploadMaxBytes'))}"
    )
    return f"{header}\n{table}\n{footer}"
