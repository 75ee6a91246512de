"""The ``filesystem`` configuration provider: objects in YAML files under one folder, followed
for changes (docs/configuration.md, "Where the objects come from").

Two layouts are read:

- the reference project's: ``<root>/<namespace>/backups.riotkit.org/v1alpha1/backupusers/``,
  ``.../backupcollections/``, ``.../notificationchannels/`` and
  ``<root>/<namespace>/v1/secrets/``, one object per file named after it. When any folder of
  ``<root>`` looks like this, only ``<root>/<namespace>`` is read;
- otherwise every ``*.yaml`` / ``*.yml`` file anywhere under the root, each with any number of
  ``---``-separated documents (what ``kubectl apply -f <dir>`` takes).

Names starting with a dot are skipped in both: ``.git``, editor backups, and the ``..data``
and ``..<timestamp>`` folders of a Kubernetes ConfigMap volume (whose visible files are
symbolic links into them, and are read).

A reload re-reads every file off the event loop and replaces the whole snapshot at once;
when nothing changed on disk, nothing is rebuilt or logged again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from watchfiles import Change, awatch

from backup_repository.config.documents import Placement, SourceFile, UnreadFile
from backup_repository.config.loader import BuildResult, load_files
from backup_repository.config.models import (
    API_GROUP,
    KIND_CHANNEL,
    KIND_COLLECTION,
    KIND_SECRET,
    KIND_USER,
)
from backup_repository.services.ports import ConfigProblem, ConfigSnapshot

logger = logging.getLogger("backup_repository.config")

DEFAULT_NAMESPACE = "backup-repository"
YAML_SUFFIXES = (".yaml", ".yml")

# Folder of each kind inside <root>/<namespace>/ in the reference layout.
REFERENCE_FOLDERS: dict[str, tuple[str, ...]] = {
    KIND_USER: (API_GROUP, "v1alpha1", "backupusers"),
    KIND_COLLECTION: (API_GROUP, "v1alpha1", "backupcollections"),
    KIND_CHANNEL: (API_GROUP, "v1alpha1", "notificationchannels"),
    KIND_SECRET: ("v1", "secrets"),
}

# Version control internals churn during `git pull` without changing any object.
_IGNORED_FOLDERS = frozenset({".git", ".hg", ".svn"})


@dataclass(frozen=True)
class FolderScan:
    """Everything read from the folder in one pass; equal scans mean nothing changed."""

    layout: str  # "reference", "files", or "" when the folder could not be read
    files: tuple[SourceFile, ...] = ()
    problems: tuple[ConfigProblem, ...] = ()
    unusable_reason: str = ""
    # The files and folders behind ``problems``: what they hold is unknown.
    unread: tuple[UnreadFile, ...] = ()


def scan_folder(root: Path, namespace: str) -> FolderScan:
    """Read every configuration file under ``root`` (blocking; run it in a thread)."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return FolderScan("", unusable_reason=f"configuration folder {root} does not exist")
    except NotADirectoryError:
        return FolderScan("", unusable_reason=f"configuration path {root} is not a folder")
    except OSError as exc:
        return FolderScan(
            "", unusable_reason=f"configuration folder {root} cannot be read: {_why(exc)}"
        )

    namespaces = [
        entry.name
        for entry in entries
        if not entry.name.startswith(".") and _is_reference_namespace(Path(entry.path))
    ]
    if namespaces:
        if namespace not in namespaces:
            return FolderScan(
                "reference",
                unusable_reason=(
                    f"configuration folder {root} uses the reference layout with namespace "
                    f"folder(s) {', '.join(namespaces)}, but none for namespace {namespace!r}"
                ),
            )
        return _scan_reference(root, namespace)
    return _scan_files(root)


def _is_reference_namespace(folder: Path) -> bool:
    return any(folder.joinpath(*parts).is_dir() for parts in REFERENCE_FOLDERS.values())


@dataclass
class _Reading:
    """What a scan collects."""

    files: list[SourceFile] = field(default_factory=list)
    problems: list[ConfigProblem] = field(default_factory=list)
    unread: list[UnreadFile] = field(default_factory=list)

    def failed(self, problem: ConfigProblem, unread: UnreadFile) -> None:
        self.problems.append(problem)
        self.unread.append(unread)

    def result(self, layout: str) -> FolderScan:
        return FolderScan(
            layout, tuple(self.files), tuple(self.problems), unread=tuple(self.unread)
        )


def _scan_reference(root: Path, namespace: str) -> FolderScan:
    reading = _Reading()
    for kind, parts in REFERENCE_FOLDERS.items():
        folder = root.joinpath(namespace, *parts)
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            continue
        except OSError as exc:
            problem = _folder_problem(root, folder, exc)
            reading.failed(problem, UnreadFile(problem.source, kind))
            continue
        for name in names:
            path = folder / name
            if name.startswith(".") or not name.lower().endswith(YAML_SUFFIXES):
                continue
            placement = Placement(kind=kind, name=path.stem, namespace=namespace)
            _read_into(root, path, placement, reading)
    return reading.result("reference")


def _scan_files(root: Path) -> FolderScan:
    reading = _Reading()

    def on_error(exc: OSError) -> None:
        if not isinstance(exc, FileNotFoundError):
            problem = _folder_problem(root, Path(exc.filename or root), exc)
            reading.failed(problem, UnreadFile(problem.source))

    for current, folders, names in os.walk(root, onerror=on_error):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or not name.lower().endswith(YAML_SUFFIXES):
                continue
            _read_into(root, Path(current, name), None, reading)
    return reading.result("files")


def _read_into(root: Path, path: Path, placement: Placement | None, reading: _Reading) -> None:
    source = _relative(root, path)
    unread = UnreadFile.at(source, placement)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        # Gone between listing and reading (an editor replacing it, a `git pull`): the event
        # that removed it triggers another reload.
        return
    except OSError as exc:
        reading.failed(
            ConfigProblem(source=source, message=f"cannot read file: {_why(exc)}"), unread
        )
        return
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        reading.failed(
            ConfigProblem(source=source, message=f"not UTF-8 text (byte {exc.start})"), unread
        )
        return
    reading.files.append(SourceFile(source=source, text=text, placement=placement))


def _folder_problem(root: Path, folder: Path, exc: OSError) -> ConfigProblem:
    return ConfigProblem(
        source=_relative(root, folder) + "/", message=f"cannot read folder: {_why(exc)}"
    )


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _root_identity(root: Path) -> tuple[int, int] | None:
    """Device and inode of the folder, to notice it being replaced (deleted and created
    again, or a symbolic link pointed elsewhere): the running watch would go blind."""
    try:
        stat = root.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class FilesystemProvider:
    """Implements :class:`~backup_repository.services.ports.ConfigurationProvider`.

    ``debounce_ms`` and ``step_ms`` group a burst of changes (a ``git pull``, an editor's
    save) into one reload: changes are collected until nothing moved for ``step_ms``, for at
    most ``debounce_ms``. Every ``resync_interval`` seconds the folder is re-read anyway, in
    case a change notification was lost (network filesystems, overflowing inotify queues).
    While the folder does not exist it is looked for every ``poll_interval`` seconds.
    """

    def __init__(
        self,
        root: Path | str,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        debounce_ms: int = 1600,
        step_ms: int = 200,
        poll_interval: float = 2.0,
        resync_interval: float = 60.0,
        force_polling: bool | None = None,
    ) -> None:
        self._root = Path(root)
        # Change notifications name absolute paths.
        self._root_abs = Path(os.path.abspath(self._root))
        self._namespace = namespace
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms
        self._poll_interval = poll_interval
        self._resync_ms = max(1, int(resync_interval * 1000))
        self._force_polling = force_polling
        self._snapshot = ConfigSnapshot(usable=False, unusable_reason="configuration not loaded")
        self._last_scan: FolderScan | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watching = False

    @property
    def root(self) -> Path:
        return self._root

    @property
    def watching(self) -> bool:
        """True while changes are followed: the watcher is set up and the folder was read
        after that (False while the folder is missing, or after close())."""
        return self._watching

    def snapshot(self) -> ConfigSnapshot:
        return self._snapshot

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stop.clear()
        await self.reload()
        self._task = asyncio.create_task(self._follow(), name="config-filesystem-watch")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # The watcher thread checks the event every step_ms; cancelling alone would wait for
        # its timeout instead.
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=max(2.0, self._step_ms / 250))
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reload(self) -> ConfigSnapshot:
        """Re-read the folder now and return the snapshot in force afterwards. Never raises
        for a problem with the folder or its files."""
        async with self._lock:
            try:
                scan = await asyncio.to_thread(scan_folder, self._root, self._namespace)
                if scan == self._last_scan:
                    return self._snapshot
                result = None
                if not scan.unusable_reason:
                    result = await asyncio.to_thread(
                        load_files, scan.files, self._namespace, scan.problems, scan.unread
                    )
            except Exception as exc:
                # A bug, not a configuration error: refuse everything rather than keep objects
                # that may have been removed or deactivated since.
                logger.exception("configuration reload failed")
                self._last_scan = None
                self._snapshot = ConfigSnapshot(
                    usable=False, unusable_reason=f"configuration could not be loaded: {exc!r}"
                )
                return self._snapshot
            self._last_scan = scan
            self._snapshot = self._install(scan, result)
            return self._snapshot

    def _install(self, scan: FolderScan, result: BuildResult | None) -> ConfigSnapshot:
        if result is None:
            logger.warning(
                "configuration unusable, every request is refused: %s", scan.unusable_reason
            )
            return ConfigSnapshot(usable=False, unusable_reason=scan.unusable_reason)
        snapshot = result.snapshot
        for problem in snapshot.problems:
            logger.warning("configuration problem: %s", problem)
        for warning in result.warnings:
            logger.warning("configuration warning: %s", warning)
        where = f"{self._root}" + (
            f", namespace {self._namespace}" if scan.layout == "reference" else ""
        )
        logger.info(
            "configuration loaded from %s (%s layout): %s", where, scan.layout, result.summary()
        )
        return snapshot

    # The watch loop --------------------------------------------------------------------------

    async def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                identity = await asyncio.to_thread(_root_identity, self._root)
                if identity is None:
                    await self._pause(self._poll_interval)
                else:
                    await self._watch(identity)
                if not self._stop.is_set():
                    await self.reload()
            except Exception:
                logger.exception("configuration watcher failed; retrying")
                await self._pause(self._poll_interval)

    async def _watch(self, identity: tuple[int, int]) -> None:
        """Reload on every batch of changes until stopped or until the root is replaced."""
        # Whatever changed before the watcher existed produces no event: read the folder once
        # more. As a task it first runs when awatch() awaits, after it set the watcher up.
        catch_up = asyncio.create_task(self._catch_up())
        try:
            batches = awatch(
                self._root_abs,
                watch_filter=self._relevant,
                debounce=self._debounce_ms,
                step=self._step_ms,
                stop_event=self._stop,
                rust_timeout=self._resync_ms,
                yield_on_timeout=True,
                force_polling=self._force_polling,
                ignore_permission_denied=True,
            )
            # aclosing: leaving the loop early must release the watcher now, not at shutdown.
            async with contextlib.aclosing(batches):
                async for changes in batches:
                    await self.reload()
                    if self._root_deleted(changes):
                        return
                    if await asyncio.to_thread(_root_identity, self._root) != identity:
                        return
        except (FileNotFoundError, NotADirectoryError):
            return  # removed while the watch started: the loop looks for it again
        except OSError as exc:
            if self._force_polling:
                raise
            # Typically the inotify watch limit; polling is slower but works everywhere.
            logger.warning("cannot watch %s for changes (%s); polling instead", self._root, exc)
            self._force_polling = True
        finally:
            await catch_up
            self._watching = False

    async def _catch_up(self) -> None:
        await self.reload()
        self._watching = True

    def _root_deleted(self, changes: set[tuple[Change, str]]) -> bool:
        # Checked besides the root's inode, which a folder created again may reuse.
        return any(
            change == Change.deleted and Path(path) == self._root_abs for change, path in changes
        )

    def _relevant(self, change: Change, path: str) -> bool:
        try:
            parts = Path(path).relative_to(self._root_abs).parts
        except ValueError:
            return True
        return not any(part in _IGNORED_FOLDERS for part in parts)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
