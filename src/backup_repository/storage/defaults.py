"""Sizes and timeouts the stores share, in a module of their own so that opening a
``file://`` store needs no part of obstore."""

from __future__ import annotations

from typing import Final

MiB: Final = 1024 * 1024
DEFAULT_PART_SIZE: Final = 8 * MiB
"""Multipart part size. S3 allows 10,000 parts, so this caps one object at 80,000 MiB
(about 78 GiB); raise it for larger backups (memory grows with it)."""
MIN_PART_SIZE: Final = 5 * MiB  # S3's minimum for every part but the last
DEFAULT_UPLOAD_CONCURRENCY: Final = 2
READ_CHUNK_SIZE: Final = 1 * MiB
"""Reads yield chunks of at least this size (but the last) and at most twice it."""
DEFAULT_PROBE_TIMEOUT: Final = 10.0
PROBE_PREFIX: Final = ".health/"


def check_write_settings(part_size: int, upload_concurrency: int) -> None:
    """Refuse a part size below S3's minimum and a concurrency below 1 (ValueError)."""
    if part_size < MIN_PART_SIZE:
        raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
    if upload_concurrency < 1:
        raise ValueError("upload_concurrency must be at least 1")
