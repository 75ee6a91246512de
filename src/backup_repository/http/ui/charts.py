"""Inline SVG charts of the console, rendered on the server (no script): the sparkline of
version sizes over time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backup_repository.domain.integrity import format_bytes
from backup_repository.services.console import SizePoint

WIDTH = 160
HEIGHT = 40
PAD = 4


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    shrank: bool
    label: str


@dataclass(frozen=True)
class Sparkline:
    width: int
    height: int
    points: str  # the polyline's points attribute
    dots: tuple[Dot, ...]  # the newest version, and every version that shrank
    description: str  # the text alternative


def sparkline(sizes: Sequence[SizePoint]) -> Sparkline | None:
    """Sizes (oldest first) scaled to the box; None without versions."""
    if not sizes:
        return None
    top = max(p.size for p in sizes) or 1
    step = (WIDTH - 2 * PAD) / (len(sizes) - 1) if len(sizes) > 1 else 0.0
    coords = [
        (
            round(PAD + i * step if len(sizes) > 1 else WIDTH / 2, 1),
            round(HEIGHT - PAD - (p.size / top) * (HEIGHT - 2 * PAD), 1),
        )
        for i, p in enumerate(sizes)
    ]
    dots = tuple(
        Dot(x, y, p.shrank, f"v{p.number}: {format_bytes(p.size)}")
        for (x, y), p in zip(coords, sizes, strict=True)
        if p.shrank or p is sizes[-1]
    )
    shrunk = [f"v{p.number}" for p in sizes if p.shrank]
    description = (
        f"Sizes of the last {len(sizes)} versions, from {format_bytes(sizes[0].size)} "
        f"(v{sizes[0].number}) to {format_bytes(sizes[-1].size)} (v{sizes[-1].number})"
    )
    if shrunk:
        description += f"; much smaller than the version before: {', '.join(shrunk)}"
    return Sparkline(
        WIDTH, HEIGHT, " ".join(f"{x},{y}" for x, y in coords), dots, description + "."
    )
