"""How large the next upload to a collection may be (docs/collections.md, "Quotas").

With ``n = maxBackupsCount``, ``s = maxOneVersionSize`` and ``H = maxCollectionSize``, the
collection has ``extra = H - n*s`` bytes of "extra space" (none when that is 0 or less). A
version may use more than ``s`` by borrowing from the extra space; what the versions that
stay have borrowed is no longer available::

    allowed = s + (extra - sum(max(0, size - s) for the remaining versions))   if extra > 0
    allowed = s                                                                 otherwise
    allowed = min(allowed, H - sum(size of the remaining versions))
    allowed = max(allowed, 0)

"Remaining" means the versions that stay after the rotation this upload causes
(``rotation.versions_to_rotate``): a version about to be deleted does not count.

Examples (``n = 5``, ``s = 1 MiB``, ``H = 10 MiB``, so ``extra = 5 MiB``):

- empty collection: ``1 + 5 = 6 MiB``;
- remaining versions of 1, 1, 1 and 3 MiB: the 3 MiB one borrowed 2 MiB, so ``1 + 3 = 4 MiB``;
- remaining versions of 1 and 6 MiB: all extra space is borrowed, so ``1 MiB``.

With ``H = 4 MiB`` instead (``extra = -1 MiB``, none): ``1 MiB``, but never more than what
is left of the 4 MiB: with remaining versions of 1, 1 and 1.5 MiB only ``0.5 MiB``.
"""

from __future__ import annotations

from collections.abc import Sequence

from backup_repository.domain.identity import Collection
from backup_repository.domain.versions import StoredVersion


def extra_space(collection: Collection) -> int:
    """``maxCollectionSize - maxBackupsCount * maxOneVersionSize``; 0 or less means none."""
    return collection.max_collection_size - (
        collection.max_backups_count * collection.max_one_version_size
    )


def max_upload_size(collection: Collection, remaining: Sequence[StoredVersion]) -> int:
    """The largest number of bytes the next upload may have; 0 means none at all.

    ``remaining`` are the versions that stay after this upload's rotation."""
    per_version = collection.max_one_version_size
    extra = extra_space(collection)
    if extra > 0:
        borrowed = sum(max(0, version.size - per_version) for version in remaining)
        allowed = per_version + (extra - borrowed)
    else:
        allowed = per_version
    left_in_collection = collection.max_collection_size - sum(v.size for v in remaining)
    return max(0, min(allowed, left_in_collection))
