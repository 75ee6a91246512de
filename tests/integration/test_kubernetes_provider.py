"""The kubernetes configuration provider: the official client over real HTTP against the fake
API server of ``k8s_fake`` (lists, watches, 404 for a missing CRD, 403, 401, dropped
watches, 410 Gone, the API going down and coming back)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backup_repository.config.filesystem import FilesystemProvider
from backup_repository.config.kubernetes import RESOURCES, KubernetesProvider
from backup_repository.domain.roles import Role
from backup_repository.services.health import ConfigurationProviderValidator
from backup_repository.services.ports import ConfigSnapshot
from k8s_fake import FakeKubernetesApi
from support import collection_doc, eventually, password_hash, user_doc, write_config

FIXTURES = Path(__file__).parent.parent / "fixtures"
NAMESPACE = "backup-repository"
# Changes must show within this long (the watch delivers them at once).
CHANGE_DEADLINE_S = 3.0
OUTAGE_DEADLINE_S = 5.0
ADMIN_HASH_PREFIX = "JGFyZ29uMmlkJHY9MTkkbT02NTUzNix0PTEscD00JHpuVy9IT2Y4"


@pytest.fixture
def api() -> Iterator[FakeKubernetesApi]:
    fake = FakeKubernetesApi(NAMESPACE).start()
    yield fake
    fake.stop()


Factory = Callable[..., KubernetesProvider]


@pytest.fixture
async def make_provider(
    api: FakeKubernetesApi, tmp_path: Path
) -> AsyncIterator[Callable[..., KubernetesProvider]]:
    """Providers pointed at the fake API with short timeouts; all closed after the test."""
    made: list[KubernetesProvider] = []

    def make(kubeconfig: Path | None = None, **overrides: Any) -> KubernetesProvider:
        options: dict[str, Any] = {
            "watch_seconds": 30,
            "request_timeout": 3.0,
            "backoff_initial": 0.05,
            "backoff_max": 0.3,
            "start_timeout": 20.0,  # a cold first list on a loaded machine
        }
        options.update(overrides)
        provider = KubernetesProvider(
            NAMESPACE, kubeconfig or api.write_kubeconfig(tmp_path / "kubeconfig"), **options
        )
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()


async def started(make: Factory, **overrides: Any) -> KubernetesProvider:
    provider = make(**overrides)
    await provider.start()
    return provider


def comparable(snapshot: ConfigSnapshot) -> tuple[Any, ...]:
    """Everything but the problems' sources (a file name against a resource name)."""
    return (
        dict(snapshot.users),
        dict(snapshot.collections),
        sorted((p.kind, p.name, p.field, p.message) for p in snapshot.problems),
        snapshot.usable,
    )


async def filesystem_snapshot(root: Path) -> ConfigSnapshot:
    provider = FilesystemProvider(root, NAMESPACE)
    await provider.start()
    try:
        return provider.snapshot()
    finally:
        await provider.close()


async def all_watching(api: FakeKubernetesApi) -> None:
    await eventually(lambda: api.watch_count() == len(RESOURCES), within=OUTAGE_DEADLINE_S)


# --- the same objects give the same snapshot as the filesystem provider ---------------------


@pytest.mark.parametrize("folder", ["reference-layout", "kubectl-style"])
async def test_reference_objects_load_like_the_filesystem_provider(
    api: FakeKubernetesApi, make_provider: Factory, folder: str
) -> None:
    assert api.load_yaml_files(FIXTURES / folder) >= 4
    provider = await started(make_provider)
    snapshot = provider.snapshot()

    assert snapshot.usable, snapshot.unusable_reason
    assert snapshot.users
    assert snapshot.collections
    expected = await filesystem_snapshot(FIXTURES / folder)
    assert comparable(snapshot) == comparable(expected)
    assert snapshot.users["some-user"].access_keys[0].name == "uploader"


async def test_the_bearer_token_of_the_kubeconfig_reaches_the_api(
    api: FakeKubernetesApi, make_provider: Factory
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    provider = await started(make_provider)
    assert provider.snapshot().usable
    await all_watching(api)

    assert {r.authorization for r in api.requests} == {f"Bearer {api.token}"}
    listed = {r.path for r in api.requests if "watch" not in r.query}
    assert listed == {
        f"/apis/backups.riotkit.org/v1alpha1/namespaces/{NAMESPACE}/backupusers",
        f"/apis/backups.riotkit.org/v1alpha1/namespaces/{NAMESPACE}/backupcollections",
        f"/apis/backups.riotkit.org/v1alpha1/namespaces/{NAMESPACE}/notificationchannels",
        f"/api/v1/namespaces/{NAMESPACE}/secrets",
    }
    # Each watch starts from the version its list returned.
    for plural in ("backupusers", "backupcollections", "notificationchannels", "secrets"):
        watch = api.requests_to(plural, watch=True)[0]
        assert int(watch.query["resourceVersion"]) >= 100
        assert watch.query["allowWatchBookmarks"] == "true"


async def test_a_wrong_token_is_reported(
    api: FakeKubernetesApi, make_provider: Factory, tmp_path: Path
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    kubeconfig = api.write_kubeconfig(tmp_path / "wrong", token="not-the-token")
    provider = await started(make_provider, kubeconfig=kubeconfig)
    snapshot = provider.snapshot()
    assert not snapshot.usable
    assert "refused the credentials (401 Unauthorized)" in snapshot.unusable_reason
    assert not snapshot.users


async def test_a_missing_kubeconfig_makes_the_provider_unusable(
    make_provider: Factory, tmp_path: Path
) -> None:
    provider = await started(make_provider, kubeconfig=tmp_path / "nowhere" / "config")
    result = await ConfigurationProviderValidator(provider).run()
    assert result.status is False
    assert result.message.startswith("configuration provider is not usable: ")
    assert "no Kubernetes credentials" in result.message
    assert "does not exist" in result.message


async def test_objects_of_other_namespaces_are_not_read(
    api: FakeKubernetesApi, make_provider: Factory
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    elsewhere = user_doc("stranger", "pass", ["systemAdmin"])
    elsewhere["metadata"]["namespace"] = "other"
    api.put(elsewhere)
    provider = await started(make_provider)
    await all_watching(api)
    api.put({**elsewhere, "spec": {**elsewhere["spec"], "deactivated": True}})
    api.put(user_doc("local", "pass", []))
    await eventually(lambda: "local" in provider.snapshot().users, within=CHANGE_DEADLINE_S)
    assert "stranger" not in provider.snapshot().users
    assert all(f"/namespaces/{NAMESPACE}/" in r.path for r in api.requests)


# --- broken objects -------------------------------------------------------------------------


def broken_documents() -> list[dict[str, Any]]:
    bad_window = collection_doc("nightly")
    bad_window["spec"]["windows"] = [{"from": "00 30 * * *", "duration": "1h"}]
    bad_role = user_doc("hero", "hero-pass", ["superhero"])
    missing_secret = user_doc("orphan", "x")
    del missing_secret["spec"]["password"]
    missing_secret["spec"]["passwordFromRef"] = {"name": "nowhere", "entry": "orphan"}
    return [bad_window, bad_role, missing_secret, user_doc("fine", "fine-pass", [])]


async def test_broken_objects_are_reported_with_resource_and_field(
    api: FakeKubernetesApi, make_provider: Factory, tmp_path: Path
) -> None:
    api.load(broken_documents())
    provider = await started(make_provider)
    snapshot = provider.snapshot()

    assert snapshot.usable
    assert set(snapshot.users) == {"fine"}
    assert not snapshot.collections
    where = {(p.source, p.field) for p in snapshot.problems}
    assert ("kubernetes:backupcollections/nightly", "spec.windows[0].from") in where
    assert ("kubernetes:backupusers/hero", "spec.roles[0]") in where
    assert ("kubernetes:backupusers/orphan", "spec.passwordFromRef") in where
    described = [str(p) for p in snapshot.problems]
    assert any(
        d.startswith("kubernetes:backupusers/orphan: BackupUser/orphan field spec.passwordFromRef")
        and "Secret 'nowhere' does not exist" in d
        for d in described
    )
    # The same objects in a folder: the same problems, word for word.
    write_config(tmp_path / "folder", broken_documents())
    assert comparable(snapshot) == comparable(await filesystem_snapshot(tmp_path / "folder"))

    result = await ConfigurationProviderValidator(provider).run()
    assert result.status is True
    assert any("kubernetes:backupusers/hero" in d for d in result.details)


# --- following changes ----------------------------------------------------------------------


async def test_additions_changes_and_deletions_are_followed(
    api: FakeKubernetesApi, make_provider: Factory
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    provider = await started(make_provider)
    await all_watching(api)

    began = time.monotonic()
    api.put(user_doc("newcomer", "newcomer-pass", ["systemAdmin"]))
    await eventually(lambda: "newcomer" in provider.snapshot().users, within=CHANGE_DEADLINE_S)
    added_after = time.monotonic() - began
    assert Role.SYSTEM_ADMIN in provider.snapshot().users["newcomer"].roles

    api.put(user_doc("newcomer", "newcomer-pass", [], deactivated=True))
    await eventually(
        lambda: provider.snapshot().users["newcomer"].deactivated, within=CHANGE_DEADLINE_S
    )

    api.put(collection_doc("fresh"))
    await eventually(lambda: "fresh" in provider.snapshot().collections, within=CHANGE_DEADLINE_S)

    # A new password in the Secret the user refers to.
    secret = api.objects("secrets")["backup-repository-passwords"]
    old_hash = provider.snapshot().users["admin"].password_hash
    secret["data"]["admin"] = password_hash("another")
    api.put(secret)
    await eventually(
        lambda: provider.snapshot().users["admin"].password_hash == password_hash("another"),
        within=CHANGE_DEADLINE_S,
    )
    assert old_hash != password_hash("another")

    # The Secret disappears: the users referring to it are refused, with a reason.
    api.delete("secrets", "backup-repository-passwords")
    await eventually(lambda: "admin" not in provider.snapshot().users, within=CHANGE_DEADLINE_S)
    assert any(
        p.source == "kubernetes:backupusers/admin"
        and "Secret 'backup-repository-passwords' does not exist" in p.message
        for p in provider.snapshot().problems
    )

    api.delete("backupusers", "newcomer")
    api.delete("backupcollections", "fresh")
    await eventually(
        lambda: (
            "newcomer" not in provider.snapshot().users
            and "fresh" not in provider.snapshot().collections
        ),
        within=CHANGE_DEADLINE_S,
    )
    assert provider.snapshot().usable
    assert added_after < CHANGE_DEADLINE_S
    # Everything came through the watches: one list per resource.
    for plural in ("backupusers", "backupcollections", "secrets"):
        assert len(api.requests_to(plural, watch=False)) == 1


async def test_a_dropped_watch_resumes_from_the_last_version(
    api: FakeKubernetesApi, make_provider: Factory
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    provider = await started(make_provider)
    await all_watching(api)
    last_version = api.put(user_doc("before-drop", "pass", []))
    await eventually(lambda: "before-drop" in provider.snapshot().users, within=CHANGE_DEADLINE_S)

    assert api.drop_watches() == len(RESOURCES)
    # Changed while no watch is open: the new watch replays it.
    api.put(user_doc("during-drop", "pass", []))
    await eventually(lambda: "during-drop" in provider.snapshot().users, within=CHANGE_DEADLINE_S)
    await all_watching(api)

    assert provider.snapshot().usable
    assert len(api.requests_to("backupusers", watch=False)) == 1  # no new list
    rewatch = api.requests_to("backupusers", watch=True)[-1]
    assert rewatch.query["resourceVersion"] == str(last_version)


async def test_410_gone_lists_again(api: FakeKubernetesApi, make_provider: Factory) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    provider = await started(make_provider)
    await all_watching(api)

    # Open watches receive the 410 ERROR event.
    api.expire()
    api.put(user_doc("after-expiry", "pass", []))
    await eventually(lambda: "after-expiry" in provider.snapshot().users, within=CHANGE_DEADLINE_S)
    await eventually(lambda: len(api.requests_to("backupusers", watch=False)) == 2)
    await all_watching(api)

    # A watch answered 410 as its HTTP status.
    api.answer_gone(len(RESOURCES))
    api.drop_watches()
    api.delete("backupusers", "after-expiry")
    await eventually(
        lambda: "after-expiry" not in provider.snapshot().users, within=CHANGE_DEADLINE_S
    )
    await eventually(lambda: len(api.requests_to("backupusers", watch=False)) == 3)
    await all_watching(api)
    assert provider.snapshot().usable


# --- outages --------------------------------------------------------------------------------


async def test_missing_crds_make_the_provider_unusable_until_installed(
    api: FakeKubernetesApi, make_provider: Factory
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    api.uninstall("backupcollections")
    provider = await started(make_provider)

    snapshot = provider.snapshot()
    assert not snapshot.usable
    assert (
        "the CustomResourceDefinition backupcollections.backups.riotkit.org (version v1alpha1) "
        "is not installed" in snapshot.unusable_reason
    )
    assert "404" in snapshot.unusable_reason
    assert set(snapshot.users) == {"admin", "some-user", "unprivileged"}
    assert not snapshot.collections
    result = await ConfigurationProviderValidator(provider).run()
    assert result.status is False
    assert result.message.startswith("configuration provider is not usable: the API answers 404")

    api.install("backupcollections")
    await eventually(lambda: provider.snapshot().usable, within=OUTAGE_DEADLINE_S)
    assert set(provider.snapshot().collections) == {"iwa-ait"}

    # Removed while running: the objects last read stay, the provider says it is unusable.
    await all_watching(api)
    api.uninstall("backupusers")
    await eventually(lambda: not provider.snapshot().usable, within=OUTAGE_DEADLINE_S)
    snapshot = provider.snapshot()
    assert "backupusers.backups.riotkit.org" in snapshot.unusable_reason
    assert set(snapshot.users) == {"admin", "some-user", "unprivileged"}
    api.install("backupusers")
    await eventually(lambda: provider.snapshot().usable, within=OUTAGE_DEADLINE_S)


async def test_forbidden_secrets_name_the_missing_rights(
    api: FakeKubernetesApi, make_provider: Factory
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    api.forbid("secrets")
    provider = await started(make_provider)
    snapshot = provider.snapshot()
    assert not snapshot.usable
    assert "access to secrets in namespace backup-repository is forbidden (403" in (
        snapshot.unusable_reason
    )
    assert "needs get, list and watch" in snapshot.unusable_reason

    api.forbid("secrets", False)
    await eventually(lambda: provider.snapshot().usable, within=OUTAGE_DEADLINE_S)
    assert set(provider.snapshot().users) == {"admin", "some-user", "unprivileged"}


async def test_api_down_keeps_the_last_objects_and_recovers(
    api: FakeKubernetesApi, make_provider: Factory
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    provider = await started(make_provider)
    await all_watching(api)
    before = provider.snapshot()

    api.stop()
    await eventually(lambda: not provider.snapshot().usable, within=OUTAGE_DEADLINE_S)
    snapshot = provider.snapshot()
    assert f"the Kubernetes API at {api.url} is not reachable" in snapshot.unusable_reason
    assert "Connection refused" in snapshot.unusable_reason
    assert snapshot.users == before.users
    assert snapshot.collections == before.collections

    # Changed while the provider could not see it: the next list brings it.
    api.put(user_doc("while-down", "pass", []))
    api.delete("backupusers", "unprivileged")
    api.start()
    await eventually(lambda: provider.snapshot().usable, within=OUTAGE_DEADLINE_S)
    assert set(provider.snapshot().users) == {"admin", "some-user", "while-down"}
    await all_watching(api)
    api.put(user_doc("after-recovery", "pass", []))
    await eventually(
        lambda: "after-recovery" in provider.snapshot().users, within=CHANGE_DEADLINE_S
    )


async def test_api_down_at_start_does_not_block_and_loads_later(
    api: FakeKubernetesApi, make_provider: Factory
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    provider = make_provider()  # writes the kubeconfig while the port is known
    api.stop()

    began = time.monotonic()
    await provider.start()
    # Not a tight bound: a start that waited for the API would take its 20 s start_timeout.
    assert time.monotonic() - began < 8.0
    snapshot = provider.snapshot()
    assert not snapshot.usable
    assert "is not reachable" in snapshot.unusable_reason
    assert not snapshot.users

    api.start()
    await eventually(lambda: provider.snapshot().usable, within=OUTAGE_DEADLINE_S)
    assert set(provider.snapshot().users) == {"admin", "some-user", "unprivileged"}


# --- housekeeping ---------------------------------------------------------------------------


async def test_close_is_prompt_and_ends_the_watches(
    api: FakeKubernetesApi, make_provider: Factory
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    provider = await started(make_provider, watch_seconds=300)
    await all_watching(api)

    began = time.monotonic()
    await provider.close()
    # Not a tight bound: a close that waited for the watches would take their 300 s.
    assert time.monotonic() - began < 30.0
    await eventually(lambda: api.watch_count() == 0, within=OUTAGE_DEADLINE_S)
    requests = len(api.requests)
    await asyncio.sleep(0.3)
    assert len(api.requests) == requests  # nothing retries after close


async def test_watches_ended_by_the_server_are_opened_again(
    api: FakeKubernetesApi, make_provider: Factory
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    provider = await started(make_provider, watch_seconds=1)
    await eventually(
        lambda: len(api.requests_to("backupusers", watch=True)) >= 3, within=OUTAGE_DEADLINE_S
    )
    assert api.requests_to("backupusers", watch=True)[0].query["timeoutSeconds"] == "1"
    api.put(user_doc("late", "pass", []))
    await eventually(lambda: "late" in provider.snapshot().users, within=CHANGE_DEADLINE_S)
    assert len(api.requests_to("backupusers", watch=False)) == 1
    assert provider.snapshot().usable


async def test_secret_values_are_never_logged(
    api: FakeKubernetesApi, make_provider: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api.load_yaml_files(FIXTURES / "reference-layout")
    provider = await started(make_provider)
    await all_watching(api)
    secret = api.objects("secrets")["backup-repository-passwords"]
    secret["data"]["admin"] = "not a hash at all"
    api.put(secret)
    await eventually(lambda: "admin" not in provider.snapshot().users, within=CHANGE_DEADLINE_S)
    api.stop()
    await eventually(lambda: not provider.snapshot().usable, within=OUTAGE_DEADLINE_S)

    assert "configuration problem: kubernetes:backupusers/admin" in caplog.text
    assert ADMIN_HASH_PREFIX not in caplog.text
    assert "not a hash at all" not in caplog.text
    assert "8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918" not in caplog.text


# --- notification channels ------------------------------------------------------------------

CHANNEL = {
    "apiVersion": "backups.riotkit.org/v1alpha1",
    "kind": "NotificationChannel",
    "metadata": {"name": "ops-webhook", "namespace": NAMESPACE},
    "spec": {
        "type": "webhook",
        "webhook": {
            "url": "https://hooks.example.org/backups",
            "signingSecretRef": {"name": "notification-secrets", "entry": "webhook-key"},
        },
    },
}
CHANNEL_SECRET = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "notification-secrets", "namespace": NAMESPACE},
    "data": {"webhook-key": "hmac-key-from-the-api"},
}


async def test_notification_channels_are_read_and_followed(
    api: FakeKubernetesApi, make_provider: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    api.load_yaml_files(FIXTURES / "reference-layout")
    api.load([CHANNEL_SECRET, CHANNEL])
    provider = await started(make_provider)
    await all_watching(api)

    channel = provider.snapshot().channels["ops-webhook"]
    assert channel.webhook is not None
    assert channel.webhook.signing_secret == "hmac-key-from-the-api"

    changed = {**CHANNEL, "spec": {**CHANNEL["spec"], "allCollections": {"events": ["missing"]}}}
    api.put(changed)
    await eventually(
        lambda: provider.snapshot().channels["ops-webhook"].all_collections is not None,
        within=CHANGE_DEADLINE_S,
    )
    broken = {**CHANNEL, "spec": {**CHANNEL["spec"], "type": "email"}}
    api.put(broken)
    await eventually(lambda: not provider.snapshot().channels, within=CHANGE_DEADLINE_S)
    problem = provider.snapshot().problems[-1]
    assert (problem.source, problem.kind, problem.field, problem.message) == (
        "kubernetes:notificationchannels/ops-webhook",
        "NotificationChannel",
        "spec",
        "type email needs an email block",
    )
    api.delete("notificationchannels", "ops-webhook")
    await eventually(lambda: not provider.snapshot().problems, within=CHANGE_DEADLINE_S)
    assert "hmac-key-from-the-api" not in caplog.text


async def test_a_missing_channel_crd_or_right_degrades_instead_of_failing(
    api: FakeKubernetesApi, make_provider: Factory
) -> None:
    """An upgrade that did not apply the new CRD (or Role) keeps serving backups."""
    api.load_yaml_files(FIXTURES / "reference-layout")
    api.uninstall("notificationchannels")
    provider = await started(make_provider)

    snapshot = provider.snapshot()
    assert snapshot.usable
    assert set(snapshot.collections) == {"iwa-ait"}
    (problem,) = snapshot.problems
    assert problem.source == "kubernetes:notificationchannels"
    assert "notificationchannels.backups.riotkit.org (version v1alpha1) is not installed" in (
        problem.message
    )
    assert problem.message.endswith(
        "NotificationChannel objects are not read until then (the other objects are)"
    )
    check = await ConfigurationProviderValidator(provider).run()
    assert (check.status, check.state) == (True, "degraded")
    assert "1 problem (1 resource could not be read)" in check.message

    api.install("notificationchannels")
    await eventually(lambda: not provider.snapshot().problems, within=OUTAGE_DEADLINE_S)

    await all_watching(api)
    api.forbid("notificationchannels")
    await eventually(lambda: bool(provider.snapshot().problems), within=OUTAGE_DEADLINE_S)
    assert provider.snapshot().usable
    assert "access to notificationchannels.backups.riotkit.org in namespace" in (
        provider.snapshot().problems[0].message
    )
