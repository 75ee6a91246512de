"""The filesystem configuration provider on real folders: both layouts, hot reloads, broken
and missing files and folders, and a prompt close()."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from backup_repository.config import filesystem
from backup_repository.config.filesystem import FilesystemProvider
from backup_repository.domain.roles import Role
from backup_repository.services.health import ConfigurationProviderValidator
from backup_repository.services.ports import ConfigSnapshot

FIXTURES = Path(__file__).parent.parent / "fixtures"
NAMESPACE = "backup-repository"
USERS_DIR = Path(NAMESPACE, "backups.riotkit.org", "v1alpha1", "backupusers")
DEADLINE_S = 10.0


def provider_for(root: Path, namespace: str = NAMESPACE) -> FilesystemProvider:
    return FilesystemProvider(
        root,
        namespace,
        debounce_ms=200,
        step_ms=20,
        poll_interval=0.05,
        resync_interval=30,
    )


@pytest.fixture
def reference_root(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    shutil.copytree(FIXTURES / "reference-layout", root)
    return root


@pytest.fixture
def kubectl_root(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    shutil.copytree(FIXTURES / "kubectl-style", root)
    return root


@pytest.fixture
async def running() -> AsyncIterator[Callable[[FilesystemProvider], None]]:
    """Registers providers to be closed after the test, whatever happens in it."""
    providers: list[FilesystemProvider] = []
    yield providers.append
    for provider in providers:
        await provider.close()


async def started(
    root: Path, register: Callable[[FilesystemProvider], None], namespace: str = NAMESPACE
) -> FilesystemProvider:
    provider = provider_for(root, namespace)
    register(provider)
    await provider.start()
    return provider


async def wait_for(
    provider: FilesystemProvider, condition: Callable[[ConfigSnapshot], bool]
) -> ConfigSnapshot:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        snapshot = provider.snapshot()
        if condition(snapshot):
            return snapshot
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {DEADLINE_S}s; last: {snapshot}")
        await asyncio.sleep(0.02)


async def watching(provider: FilesystemProvider) -> None:
    """Until changes are followed, so that what the test changes next reaches the provider
    through a change notification (not through the read it does when it starts watching)."""
    deadline = time.monotonic() + DEADLINE_S
    while not provider.watching:
        if time.monotonic() > deadline:
            raise AssertionError(f"not watching after {DEADLINE_S}s")
        await asyncio.sleep(0.02)


def replace_file(path: Path, text: str) -> None:
    """Write like an editor or `git pull`: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- layouts


async def test_reference_layout(
    reference_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    provider = await started(reference_root, running)
    snapshot = provider.snapshot()

    assert snapshot.usable
    assert snapshot.problems == ()
    assert set(snapshot.users) == {"admin", "some-user", "unprivileged"}
    assert set(snapshot.collections) == {"iwa-ait"}
    assert snapshot.users["admin"].roles == {
        Role.SYSTEM_ADMIN,
        Role.USER_MANAGER,
        Role.COLLECTION_MANAGER,
    }
    assert snapshot.collections["iwa-ait"].roles_of("admin") == {Role.COLLECTION_MANAGER}


async def test_reference_layout_reads_only_its_namespace(
    reference_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    other = reference_root / "other" / "backups.riotkit.org" / "v1alpha1" / "backupusers"
    other.mkdir(parents=True)
    text = (reference_root / USERS_DIR / "unprivileged.yaml").read_text()
    (other / "stranger.yaml").write_text(text.replace("unprivileged", "stranger"))
    # In this layout, loose files beside the namespace folders are not objects.
    (reference_root / "loose.yaml").write_text(text.replace("unprivileged", "loose"))

    provider = await started(reference_root, running)

    assert set(provider.snapshot().users) == {"admin", "some-user", "unprivileged"}

    elsewhere = await started(reference_root, running, namespace="other")
    snapshot = elsewhere.snapshot()
    # Its passwords Secret lives in the other namespace, so the user is reported, not used.
    assert snapshot.users == {}
    assert [p.name for p in snapshot.problems] == ["stranger"]
    assert (
        snapshot.problems[0].source
        == "other/backups.riotkit.org/v1alpha1/backupusers/stranger.yaml"
    )


async def test_reference_layout_without_the_namespace_is_unusable(
    reference_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    provider = await started(reference_root, running, namespace="production")
    snapshot = provider.snapshot()

    assert not snapshot.usable
    assert "namespace 'production'" in snapshot.unusable_reason
    assert NAMESPACE in snapshot.unusable_reason
    assert snapshot.users == {}


async def test_reference_layout_file_must_be_named_after_its_object(
    reference_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    users = reference_root / USERS_DIR
    os.rename(users / "unprivileged.yaml", users / "someone-else.yaml")

    provider = await started(reference_root, running)
    snapshot = provider.snapshot()

    assert set(snapshot.users) == {"admin", "some-user"}
    (problem,) = snapshot.problems
    assert problem.source == (USERS_DIR / "someone-else.yaml").as_posix()
    assert problem.field == "metadata.name"


async def test_kubectl_style_folder(
    kubectl_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    provider = await started(kubectl_root, running)
    snapshot = provider.snapshot()

    assert snapshot.usable
    assert snapshot.problems == ()
    assert set(snapshot.users) == {"admin", "some-user", "unprivileged"}
    assert snapshot.collections["iwa-ait"].roles_of("admin") == {Role.COLLECTION_MANAGER}


async def test_files_anywhere_under_the_root_but_not_in_hidden_folders(
    kubectl_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    nested = kubectl_root / "team" / "users"
    nested.mkdir(parents=True)
    user = (kubectl_root / "user.without-any-roles.yaml").read_text()
    (nested / "carol.yml").write_text(user.replace("unprivileged", "carol"))
    for hidden in (kubectl_root / ".git", kubectl_root / "..2024_01_01"):
        hidden.mkdir()
        (hidden / "dave.yaml").write_text(user.replace("unprivileged", "dave"))
    (kubectl_root / ".eve.yaml").write_text(user.replace("unprivileged", "eve"))
    (kubectl_root / "frank.yaml.bak").write_text(user.replace("unprivileged", "frank"))
    (kubectl_root / "README.md").write_text("not configuration")

    provider = await started(kubectl_root, running)

    assert set(provider.snapshot().users) == {"admin", "some-user", "unprivileged", "carol"}
    assert provider.snapshot().problems == ()


async def test_unreadable_text_is_a_problem_of_its_file(
    kubectl_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    (kubectl_root / "latin1.yaml").write_bytes(b"kind: Secret\nname: caf\xe9\n")

    provider = await started(kubectl_root, running)
    snapshot = provider.snapshot()

    (problem,) = snapshot.problems
    assert problem.source == "latin1.yaml"
    assert "not UTF-8" in problem.message
    assert len(snapshot.users) == 3


# ------------------------------------------------------------------------------ reloads


async def test_an_edit_is_picked_up_without_a_restart(
    reference_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    provider = await started(reference_root, running)
    await watching(provider)
    path = reference_root / USERS_DIR / "unprivileged.yaml"
    before = provider.snapshot()
    assert not before.users["unprivileged"].deactivated

    path.write_text(path.read_text().replace("deactivated: false", "deactivated: true"))

    after = await wait_for(provider, lambda s: s.users["unprivileged"].deactivated)
    assert after is not before
    assert after.users["admin"] == before.users["admin"]


async def test_a_replaced_file_and_a_new_file_are_picked_up(
    kubectl_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    provider = await started(kubectl_root, running)
    await watching(provider)
    path = kubectl_root / "user.without-any-roles.yaml"

    replace_file(path, path.read_text().replace("roles: []", "roles: [backupDownloader]"))
    await wait_for(provider, lambda s: s.users["unprivileged"].roles == {Role.BACKUP_DOWNLOADER})

    (kubectl_root / "new").mkdir()
    replace_file(
        kubectl_root / "new" / "gina.yaml", path.read_text().replace("unprivileged", "gina")
    )
    await wait_for(provider, lambda s: "gina" in s.users)

    path.unlink()
    await wait_for(provider, lambda s: "unprivileged" not in s.users)
    assert provider.snapshot().problems == ()


async def test_a_file_broken_then_fixed(
    kubectl_root: Path,
    running: Callable[[FilesystemProvider], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="backup_repository.config")
    provider = await started(kubectl_root, running)
    await watching(provider)
    path = kubectl_root / "user.yaml"
    good = path.read_text()

    path.write_text(good.replace("- systemAdmin", "- systemAdmn"))
    broken = await wait_for(provider, lambda s: "admin" not in s.users)

    (problem,) = broken.problems
    assert (problem.source, problem.name, problem.field) == ("user.yaml", "admin", "spec.roles[2]")
    assert broken.usable
    assert set(broken.users) == {"some-user", "unprivileged"}  # the others keep working
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [f"configuration problem: {problem}"]

    # Re-reading an unchanged folder logs nothing again.
    caplog.clear()
    assert await provider.reload() is broken
    assert caplog.records == []

    path.write_text(good)
    fixed = await wait_for(provider, lambda s: "admin" in s.users)
    assert fixed.problems == ()
    summaries = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(
        "3 users, 1 collection, 0 notification channels, 2 secrets loaded; 0 problems" in m
        for m in summaries
    )


async def test_bad_yaml_written_on_disk_then_fixed(
    kubectl_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    provider = await started(kubectl_root, running)
    await watching(provider)
    path = kubectl_root / "collection.yaml"
    good = path.read_text()

    path.write_text(good + "\n  accessControl: [unclosed\n")
    broken = await wait_for(provider, lambda s: not s.collections)
    assert [p.source for p in broken.problems] == ["collection.yaml"]
    assert "invalid YAML" in broken.problems[0].message

    path.write_text(good)
    await wait_for(provider, lambda s: "iwa-ait" in s.collections and not s.problems)


async def test_missing_root_then_created(
    tmp_path: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    root = tmp_path / "not-yet"
    provider = await started(root, running)

    snapshot = provider.snapshot()
    assert not snapshot.usable
    assert "does not exist" in snapshot.unusable_reason
    assert snapshot.users == {}

    # Created elsewhere and moved in, as a checkout would be.
    staging = tmp_path / "staging"
    shutil.copytree(FIXTURES / "kubectl-style", staging)
    os.rename(staging, root)

    recovered = await wait_for(provider, lambda s: s.usable and len(s.users) == 3)
    assert recovered.unusable_reason == ""

    # Still followed after the folder appeared.
    await watching(provider)
    (root / "user.yaml").unlink()
    await wait_for(provider, lambda s: "admin" not in s.users)


async def test_root_removed_and_recreated(
    kubectl_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    provider = await started(kubectl_root, running)
    await watching(provider)

    shutil.rmtree(kubectl_root)
    gone = await wait_for(provider, lambda s: not s.usable)
    assert gone.users == {}
    assert "does not exist" in gone.unusable_reason

    shutil.copytree(FIXTURES / "kubectl-style", kubectl_root)
    await wait_for(provider, lambda s: s.usable and len(s.users) == 3)

    # The new folder is watched, not only found.
    await watching(provider)
    (kubectl_root / "collection.yaml").unlink()
    await wait_for(provider, lambda s: not s.collections)


async def test_polling_mode_follows_changes_too(
    kubectl_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    # For folders where change notifications do not arrive (network and container mounts).
    provider = FilesystemProvider(
        kubectl_root, NAMESPACE, debounce_ms=200, step_ms=20, force_polling=True
    )
    running(provider)
    await provider.start()
    await watching(provider)

    (kubectl_root / "user.yaml").unlink()

    await wait_for(provider, lambda s: "admin" not in s.users)


async def test_a_failing_reload_refuses_everything_and_the_watch_goes_on(
    kubectl_root: Path,
    running: Callable[[FilesystemProvider], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = await started(kubectl_root, running)
    await watching(provider)

    def broken_scan(root: Path, namespace: str) -> filesystem.FolderScan:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(filesystem, "scan_folder", broken_scan)
    (kubectl_root / "touch.yaml").write_text("")
    failed = await wait_for(provider, lambda s: not s.usable)
    assert "simulated bug" in failed.unusable_reason
    assert failed.users == {}

    monkeypatch.undo()
    (kubectl_root / "touch.yaml").unlink()
    await wait_for(provider, lambda s: s.usable and len(s.users) == 3)


async def test_a_root_that_is_a_file_is_unusable(tmp_path: Path) -> None:
    root = tmp_path / "file.yaml"
    root.write_text("")
    provider = provider_for(root)

    snapshot = await provider.reload()

    assert not snapshot.usable
    assert "not a folder" in snapshot.unusable_reason


# ------------------------------------------------------------------------------ lifecycle


async def test_snapshot_before_start_refuses_everything(kubectl_root: Path) -> None:
    snapshot = provider_for(kubectl_root).snapshot()

    assert not snapshot.usable
    assert snapshot.users == {}


async def test_close_returns_promptly_and_stops_following(kubectl_root: Path) -> None:
    provider = FilesystemProvider(kubectl_root, NAMESPACE)  # production timings
    await provider.start()
    await provider.start()  # a second start is harmless

    await watching(provider)

    began = time.monotonic()
    await provider.close()
    # Not a tight bound: a close that waited for the watcher would take its 60 s resync.
    assert time.monotonic() - began < 30.0
    assert not provider.watching

    (kubectl_root / "user.yaml").unlink()
    await asyncio.sleep(0.3)
    assert "admin" in provider.snapshot().users

    await provider.close()  # closing twice is harmless


async def test_close_without_start(kubectl_root: Path) -> None:
    await provider_for(kubectl_root).close()


async def test_a_broken_secrets_file_is_named_by_the_objects_that_refer_to_it(
    kubectl_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    """The case that hid everything: a syntax error in the Secrets' file. It is reported
    once with its line, the users and the collection that refer to a Secret in it say the
    Secret may be there, and readiness passes as degraded with every problem listed."""
    path = kubectl_root / "secret.yaml"
    good = path.read_text()
    # One space too many before the first entry: the next one no longer lines up.
    path.write_text(good.replace("\n    admin:", "\n     admin:", 1))
    provider = await started(kubectl_root, running)

    snapshot = provider.snapshot()
    assert snapshot.usable
    assert snapshot.users == {}
    assert snapshot.collections == {}
    first = snapshot.problems[0]
    assert first.source == "secret.yaml"
    assert first.message.startswith("invalid YAML at line ")
    assert "(value not shown: the file holds a Secret)" in first.message
    assert "JGFy" not in first.message
    assert len([p for p in snapshot.problems if p.source == "secret.yaml"]) == 1
    others = snapshot.problems[1:]
    assert {p.source for p in others} == {
        "collection.yaml",
        "user.yaml",
        "user.second-actor.yaml",
        "user.without-any-roles.yaml",
    }
    for problem in others:
        assert "was not found; secret.yaml could not be read" in problem.message, problem

    check = await ConfigurationProviderValidator(provider).run()
    assert check.status is True
    assert check.state == "degraded"
    assert check.message.startswith("0 users, 0 collections and 0 notification channels loaded; ")
    assert "1 file could not be read, 4 objects refused" in check.message
    problems = check.as_dict()["problems"]
    assert problems[0] == {
        "source": "secret.yaml",
        "kind": "",
        "name": "",
        "field": "",
        "message": first.message,
    }

    path.write_text(good)
    await provider.reload()
    check = await ConfigurationProviderValidator(provider).run()
    assert check.state == "ok"
    assert "problems" not in check.as_dict()


CHANNEL_FILE = """\
apiVersion: v1
kind: Secret
metadata: {name: notification-secrets}
stringData: {webhook-key: hmac-key-on-disk}
---
apiVersion: backups.riotkit.org/v1alpha1
kind: NotificationChannel
metadata: {name: ops-webhook}
spec:
  type: webhook
  webhook:
    url: https://hooks.example.org/backups
    signingSecretRef: {name: notification-secrets, entry: webhook-key}
"""


async def test_notification_channels_are_loaded_and_reloaded(
    kubectl_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    provider = await started(kubectl_root, running)
    await watching(provider)
    assert provider.snapshot().channels == {}

    path = kubectl_root / "channels.yaml"
    path.write_text(CHANNEL_FILE)
    snapshot = await wait_for(provider, lambda s: "ops-webhook" in s.channels)
    webhook = snapshot.channels["ops-webhook"].webhook
    assert webhook is not None
    assert webhook.signing_secret == "hmac-key-on-disk"

    path.write_text(CHANNEL_FILE.replace("https://", "ftp://"))
    broken = await wait_for(provider, lambda s: "ops-webhook" not in s.channels)
    (problem,) = broken.problems
    assert (problem.source, problem.field) == ("channels.yaml", "spec.webhook.url")


async def test_the_reference_layout_has_a_folder_for_notification_channels(
    reference_root: Path, running: Callable[[FilesystemProvider], None]
) -> None:
    folder = reference_root / NAMESPACE / "backups.riotkit.org" / "v1alpha1"
    (folder / "notificationchannels").mkdir()
    secret, channel = CHANNEL_FILE.split("---\n")
    (reference_root / NAMESPACE / "v1" / "secrets" / "notification-secrets.yaml").write_text(secret)
    (folder / "notificationchannels" / "ops-webhook.yaml").write_text(channel)
    (folder / "notificationchannels" / "misnamed.yaml").write_text(channel)
    provider = await started(reference_root, running)

    snapshot = provider.snapshot()
    assert set(snapshot.channels) == {"ops-webhook"}
    (problem,) = snapshot.problems
    assert problem.field == "metadata.name"
    assert problem.source.endswith("notificationchannels/misnamed.yaml")
