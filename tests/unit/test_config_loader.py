"""The configuration loader (docs/configuration.md): YAML text to documents, documents to
a snapshot, with every broken object reported (file, object, field) and left out."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import pytest

from backup_repository.config.documents import Placement, SourceFile, parse_yaml
from backup_repository.config.loader import BuildResult, load_files, password_hash_problem
from backup_repository.domain.identity import (
    AccessControlEntry,
    BackupWindow,
    ObjectGrant,
    RotationStrategy,
)
from backup_repository.domain.roles import Role
from backup_repository.services.ports import ConfigProblem

FIXTURES = Path(__file__).parent.parent / "fixtures"

# From the reference project's examples: the passwords "admin" and "test".
HASH_ADMIN = (
    "JGFyZ29uMmlkJHY9MTkkbT02NTUzNix0PTEscD00JHpuVy9IT2Y4Q3RkdStvNSttYlR2REE9PSRaZlVpRGl2QWV2T2R"
    "ZNndKYWJBb0FQdmM1a1hsemxDNkg2OFY2dGVmNUY0PQ=="
)
HASH_TEST = (
    "JGFyZ29uMmlkJHY9MTkkbT02NTUzNix0PTEscD00JERzUzlPTzFOc0JVREhvR1RmQ01wemc9PSRrcXh4bFliS3A4Um8"
    "1MXZEb0FQaUdBeFhkNTgrY1ZzdERyZ3p3NG16bjFVPQ=="
)
# The same "admin" hash as a bare PHC string (with the reference's padding).
PHC_ADMIN = (
    "$argon2id$v=19$m=65536,t=1,p=4$znW/HOf8Ctdu+o5+mbTvDA==$"
    "ZfUiDivAevOdY6wJabAoAPvc5kXlzlC6H68V6tef5F4="
)
SHA256_ADMIN = hashlib.sha256(b"admin").hexdigest()

SECRETS = f"""
apiVersion: v1
kind: Secret
metadata: {{name: passwords}}
data:
  admin: "{HASH_ADMIN}"
  key: "{HASH_TEST}"
---
apiVersion: v1
kind: Secret
metadata: {{name: health}}
stringData:
  db: "{SHA256_ADMIN}"
"""


def load(*files: tuple[str, str], namespace: str | None = None) -> BuildResult:
    return load_files(
        [SourceFile(source, textwrap.dedent(text)) for source, text in files], namespace
    )


def user_yaml(name: str = "alice", spec: str = "") -> str:
    body = spec or "passwordFromRef: {name: passwords, entry: admin}\nroles: [backupUploader]"
    return (
        "apiVersion: backups.riotkit.org/v1alpha1\nkind: BackupUser\n"
        f"metadata: {{name: {name}}}\nspec:\n" + textwrap.indent(textwrap.dedent(body), "  ")
    )


COLLECTION_SPEC = """\
description: Database
filenameTemplate: db-${version}.sql.gz.asc
maxBackupsCount: 5
maxOneVersionSize: 1M
maxCollectionSize: 10M
"""


def collection_yaml(name: str = "db", spec: str = COLLECTION_SPEC, extra: str = "") -> str:
    body = textwrap.dedent(spec) + textwrap.dedent(extra)
    return (
        "apiVersion: backups.riotkit.org/v1alpha1\nkind: BackupCollection\n"
        f"metadata: {{name: {name}}}\nspec:\n" + textwrap.indent(body, "  ")
    )


def only_problem(result: BuildResult) -> ConfigProblem:
    problems = result.snapshot.problems
    assert len(problems) == 1, problems
    return problems[0]


def fields(result: BuildResult) -> list[str]:
    return [p.field for p in result.snapshot.problems]


def read_fixture_folder(folder: Path) -> list[SourceFile]:
    return [
        SourceFile(path.relative_to(folder).as_posix(), path.read_text())
        for path in sorted(folder.rglob("*.yaml"))
    ]


# ------------------------------------------------------------------- the reference objects


def test_reference_kubectl_objects_load_without_problems() -> None:
    result = load_files(read_fixture_folder(FIXTURES / "kubectl-style"))
    snapshot = result.snapshot

    assert snapshot.problems == ()
    assert snapshot.usable
    assert set(snapshot.users) == {"admin", "some-user", "unprivileged"}
    assert result.secrets == 2

    admin = snapshot.users["admin"]
    assert admin.password_hash == HASH_ADMIN  # passwordFromRef wins over `password: "hashed"`
    assert admin.roles == {Role.COLLECTION_MANAGER, Role.USER_MANAGER, Role.SYSTEM_ADMIN}
    assert admin.restrict_by_ip == ("1.2.3.4",)
    assert admin.email == "riotkit@riseup.net"
    assert admin.organization == "Riotkit"
    assert admin.about == "System administrator"
    assert not admin.deactivated

    key = snapshot.users["some-user"].access_key("uploader")
    assert key is not None
    assert key.password_hash == HASH_TEST
    assert key.objects == (
        ObjectGrant(type="collection", name="iwa-ait", roles=frozenset({Role.BACKUP_UPLOADER})),
    )
    assert snapshot.users["unprivileged"].roles == frozenset()

    collection = snapshot.collections["iwa-ait"]
    assert collection.filename_template == "iwa-ait-${version}.tar.gz"
    assert collection.max_backups_count == 5
    assert collection.max_one_version_size == 1024 * 1024
    assert collection.max_collection_size == 10 * 1024 * 1024
    assert collection.windows == (
        BackupWindow(cron="*/30 * * * *", duration=timedelta(minutes=30)),
    )
    assert collection.strategy == RotationStrategy(
        name="fifo", keep_last_older_not_more_than=timedelta(days=5), max_older_copies=2
    )
    assert collection.health_secret == SHA256_ADMIN
    # The older `userName` spelling.
    assert collection.access_control == (
        AccessControlEntry(user="admin", roles=frozenset({Role.COLLECTION_MANAGER})),
    )


def test_reference_layout_objects_load_with_their_placement() -> None:
    root = FIXTURES / "reference-layout"
    files = []
    kinds = {
        "backupusers": "BackupUser",
        "backupcollections": "BackupCollection",
        "secrets": "Secret",
    }
    for path in sorted(root.rglob("*.yaml")):
        placement = Placement(kinds[path.parent.name], path.stem, "backup-repository")
        files.append(SourceFile(path.relative_to(root).as_posix(), path.read_text(), placement))

    result = load_files(files, "backup-repository")

    assert result.snapshot.problems == ()
    assert set(result.snapshot.users) == {"admin", "some-user", "unprivileged"}
    collection = result.snapshot.collections["iwa-ait"]
    # The `name` + `type: user` spelling.
    assert collection.roles_of("admin") == {Role.COLLECTION_MANAGER}
    assert collection.health_secret == SHA256_ADMIN


# ---------------------------------------------------------------------------------- YAML


def test_bad_yaml_is_a_problem_of_its_file_and_other_files_still_load() -> None:
    result = load(
        ("secrets.yaml", SECRETS),
        ("broken.yaml", user_yaml("bob") + "\n  roles: [unclosed\n"),
        ("alice.yaml", user_yaml("alice")),
    )

    problem = only_problem(result)
    assert problem.source == "broken.yaml"
    assert problem.field == ""
    assert "invalid YAML" in problem.message
    assert set(result.snapshot.users) == {"alice"}


def test_bad_yaml_in_a_later_document_drops_the_whole_file() -> None:
    text = user_yaml("alice") + "\n---\n" + user_yaml("bob") + "\n  : : :\n  - x\n"
    result = load(("secrets.yaml", SECRETS), ("users.yaml", text))

    assert only_problem(result).source == "users.yaml"
    assert result.snapshot.users == {}


def test_a_key_given_twice_is_refused() -> None:
    text = user_yaml("alice") + "\n  deactivated: true\n  deactivated: false\n"
    result = load(("secrets.yaml", SECRETS), ("alice.yaml", text))

    problem = only_problem(result)
    assert "duplicate key 'deactivated'" in problem.message
    assert result.snapshot.users == {}


def test_leading_separators_comments_and_empty_documents_are_fine() -> None:
    text = "# users\n---\n---\n# nothing here\n---\n" + user_yaml("alice") + "\n---\n...\n"
    result = load(("secrets.yaml", "---\n" + SECRETS), ("users.yaml", text))

    assert result.snapshot.problems == ()
    assert set(result.snapshot.users) == {"alice"}


def test_documents_of_other_kinds_are_ignored_silently() -> None:
    others = """
    apiVersion: v1
    kind: ConfigMap
    metadata: {name: settings}
    data: {a: "1"}
    ---
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: backupusers.backups.riotkit.org}
    spec: {group: backups.riotkit.org}
    ---
    just: a mapping without kind
    ---
    - a
    - list
    ---
    plain scalar
    """
    result = load(("others.yaml", others), ("secrets.yaml", SECRETS), ("u.yaml", user_yaml()))

    assert result.snapshot.problems == ()
    assert set(result.snapshot.users) == {"alice"}
    assert result.ignored == 3


def test_a_kubectl_list_is_unpacked() -> None:
    listing = (
        "apiVersion: v1\nkind: List\nitems:\n"
        + textwrap.indent("- " + user_yaml("alice").replace("\n", "\n  "), "")
        + "\n"
    )
    result = load(("secrets.yaml", SECRETS), ("list.yaml", listing))

    assert result.snapshot.problems == ()
    assert set(result.snapshot.users) == {"alice"}


def test_unknown_top_level_and_metadata_fields_are_tolerated() -> None:
    text = user_yaml("alice").replace(
        "metadata: {name: alice}",
        "metadata: {name: alice, labels: {team: ops}, annotations: {a: b}, uid: x}\nstatus: {}",
    )
    result = load(("secrets.yaml", SECRETS), ("alice.yaml", text))

    assert result.snapshot.problems == ()
    assert "alice" in result.snapshot.users


def test_unknown_spec_fields_are_refused_so_typos_cannot_drop_a_restriction() -> None:
    spec = """\
    passwordFromRef: {name: passwords, entry: admin}
    restrictByIp: [10.0.0.1]
    """
    result = load(("secrets.yaml", SECRETS), ("alice.yaml", user_yaml("alice", spec)))

    problem = only_problem(result)
    assert problem.field == "spec.restrictByIp"
    assert "unknown field" in problem.message
    assert result.snapshot.users == {}


def test_a_document_without_a_name_is_reported_by_its_position() -> None:
    text = user_yaml("alice") + "\n---\n" + user_yaml("x").replace("metadata: {name: x}", "")
    result = load(("secrets.yaml", SECRETS), ("users.yaml", text))

    problem = only_problem(result)
    assert problem.source == "users.yaml"
    assert problem.kind == "BackupUser"
    assert problem.name == ""
    assert problem.field == "metadata"
    assert problem.message.startswith("document 2:")
    assert set(result.snapshot.users) == {"alice"}


def test_a_wrong_api_version_is_a_problem() -> None:
    text = user_yaml("alice").replace("backups.riotkit.org/v1alpha1", "backups.riotkit.org/v2")
    result = load(("secrets.yaml", SECRETS), ("alice.yaml", text))

    assert only_problem(result).field == "apiVersion"
    assert result.snapshot.users == {}


def test_problems_print_file_object_and_field() -> None:
    result = load(("secrets.yaml", SECRETS), ("a.yaml", user_yaml("alice", "roles: [nope]")))

    texts = [str(p) for p in result.snapshot.problems]
    assert "a.yaml: BackupUser/alice field spec.roles[0]: unknown role 'nope'" in texts[0]


# ---------------------------------------------------------------------------------- users


def test_password_from_ref_wins_over_an_inline_hash() -> None:
    spec = f"""\
    password: "{HASH_TEST}"
    passwordFromRef: {{name: passwords, entry: admin}}
    """
    result = load(("secrets.yaml", SECRETS), ("alice.yaml", user_yaml("alice", spec)))

    assert result.snapshot.problems == ()
    assert result.snapshot.users["alice"].password_hash == HASH_ADMIN


def test_an_inline_password_hash_is_used_without_a_reference() -> None:
    result = load(("alice.yaml", user_yaml("alice", f'password: "{HASH_TEST}"')))

    assert result.snapshot.problems == ()
    assert result.snapshot.users["alice"].password_hash == HASH_TEST


def test_a_bare_phc_string_is_accepted() -> None:
    result = load(("alice.yaml", user_yaml("alice", f"password: '{PHC_ADMIN}'")))

    assert result.snapshot.users["alice"].password_hash == PHC_ADMIN


@pytest.mark.parametrize(
    ("spec", "field", "phrase"),
    [
        ("roles: []", "spec.password", "no password"),
        ('password: ""', "spec.password", "no password"),
        ('password: "hashed"', "spec.password", "not an encoded Argon2 password hash"),
        (
            "passwordFromRef: {name: missing, entry: admin}",
            "spec.passwordFromRef",
            "Secret 'missing' does not exist",
        ),
        (
            "passwordFromRef: {name: passwords, entry: nobody}",
            "spec.passwordFromRef",
            "has no entry 'nobody'",
        ),
        (
            # A broken reference is not replaced by the inline placeholder.
            'password: "hashed"\npasswordFromRef: {name: passwords, entry: nobody}',
            "spec.passwordFromRef",
            "has no entry 'nobody'",
        ),
        (
            "passwordFromRef: {name: health, entry: db}",
            "spec.passwordFromRef",
            "not an encoded Argon2 password hash",
        ),
        ("passwordFromRef: {name: passwords}", "spec.passwordFromRef.entry", "required"),
    ],
)
def test_a_user_without_a_usable_password_is_left_out(spec: str, field: str, phrase: str) -> None:
    result = load(
        ("secrets.yaml", SECRETS),
        ("alice.yaml", user_yaml("alice", spec)),
        ("bob.yaml", user_yaml("bob")),
    )

    problem = only_problem(result)
    assert (problem.source, problem.kind, problem.name) == ("alice.yaml", "BackupUser", "alice")
    assert problem.field == field
    assert phrase in problem.message
    assert set(result.snapshot.users) == {"bob"}


def test_both_spellings_of_the_user_manager_role() -> None:
    result = load(
        ("secrets.yaml", SECRETS),
        ("a.yaml", user_yaml("a", "password: " + HASH_ADMIN + "\nroles: [usersManager]")),
        ("b.yaml", user_yaml("b", "password: " + HASH_ADMIN + "\nroles: [userManager]")),
    )

    assert result.snapshot.problems == ()
    assert result.snapshot.users["a"].roles == {Role.USER_MANAGER}
    assert result.snapshot.users["b"].roles == {Role.USER_MANAGER}


def test_an_unknown_role_names_its_position() -> None:
    spec = "passwordFromRef: {name: passwords, entry: admin}\nroles: [backupUploader, godMode]"
    result = load(("secrets.yaml", SECRETS), ("alice.yaml", user_yaml("alice", spec)))

    problem = only_problem(result)
    assert problem.field == "spec.roles[1]"
    assert "unknown role 'godMode'" in problem.message
    assert result.snapshot.users == {}


def test_all_user_fields_are_read() -> None:
    spec = """\
    email: alice@example.org
    deactivated: true
    organization: Org
    about: Someone
    passwordFromRef: {name: passwords, entry: admin}
    restrictByIP: ["10.0.0.0/8", "192.168.1.7", "backup.example.org", "::1", "fd00::/8"]
    roles: [collectionManager, uploadsAnytime]
    """
    user = load(("s.yaml", SECRETS), ("a.yaml", user_yaml("alice", spec))).snapshot.users["alice"]

    assert user.email == "alice@example.org"
    assert user.deactivated is True
    assert user.organization == "Org"
    assert user.about == "Someone"
    assert user.restrict_by_ip == (
        "10.0.0.0/8",
        "192.168.1.7",
        "backup.example.org",
        "::1",
        "fd00::/8",
    )
    assert user.roles == {Role.COLLECTION_MANAGER, Role.UPLOADS_ANYTIME}


def test_explicit_nulls_mean_not_set() -> None:
    spec = "email:\nroles:\naccessKeys:\nrestrictByIP:\npassword:\n" + (
        "passwordFromRef: {name: passwords, entry: admin}"
    )
    user = load(("s.yaml", SECRETS), ("a.yaml", user_yaml("alice", spec))).snapshot.users["alice"]

    assert user.roles == frozenset()
    assert user.access_keys == ()
    assert user.restrict_by_ip == ()


@pytest.mark.parametrize(
    ("entries", "field", "phrase"),
    [
        ('["10.0.0.0/33"]', "spec.restrictByIP[0]", "not a valid IP address or CIDR network"),
        ('["1.2.3.4", ""]', "spec.restrictByIP[1]", "must not be empty"),
        ('["300.1.1.1"]', "spec.restrictByIP[0]", "not a valid IP address"),
        ('["fe80::1/129"]', "spec.restrictByIP[0]", "not a valid IP address"),
        ('["bad host!"]', "spec.restrictByIP[0]", "not an IP address, a CIDR network or a host"),
        ("[1234]", "spec.restrictByIP[0]", "valid string"),
    ],
)
def test_bad_address_entries_are_refused(entries: str, field: str, phrase: str) -> None:
    spec = f"passwordFromRef: {{name: passwords, entry: admin}}\nrestrictByIP: {entries}"
    result = load(("secrets.yaml", SECRETS), ("alice.yaml", user_yaml("alice", spec)))

    problem = only_problem(result)
    assert problem.field == field
    assert phrase in problem.message
    assert result.snapshot.users == {}


def test_deactivated_must_be_a_boolean() -> None:
    spec = 'passwordFromRef: {name: passwords, entry: admin}\ndeactivated: "false"'
    result = load(("secrets.yaml", SECRETS), ("alice.yaml", user_yaml("alice", spec)))

    assert fields(result) == ["spec.deactivated"]
    assert result.snapshot.users == {}


def test_a_user_name_with_a_dollar_is_refused() -> None:
    result = load(("secrets.yaml", SECRETS), ("a.yaml", user_yaml("'alice$x'")))

    problem = only_problem(result)
    assert problem.field == "metadata.name"
    assert "'$'" in problem.message
    assert result.snapshot.users == {}


# ----------------------------------------------------------------------------- access keys

KEYS_SPEC = f"""\
passwordFromRef: {{name: passwords, entry: admin}}
accessKeys:
  - name: uploader
    passwordFromRef: {{name: passwords, entry: key}}
    objects:
      - {{name: db, type: collection, roles: [backupUploader]}}
  - name: reader
    password: "{HASH_ADMIN}"
    objects:
      - {{name: db, type: collection, roles: [backupDownloader]}}
      - {{name: web, type: collection}}
"""


def test_access_keys_are_read_with_their_grants() -> None:
    result = load(("s.yaml", SECRETS), ("a.yaml", user_yaml("alice", KEYS_SPEC)))

    assert result.snapshot.problems == ()
    user = result.snapshot.users["alice"]
    uploader, reader = user.access_keys
    assert uploader.name == "uploader"
    assert uploader.password_hash == HASH_TEST
    assert uploader.objects == (ObjectGrant("collection", "db", frozenset({Role.BACKUP_UPLOADER})),)
    assert reader.password_hash == HASH_ADMIN
    assert reader.objects == (
        ObjectGrant("collection", "db", frozenset({Role.BACKUP_DOWNLOADER})),
        ObjectGrant("collection", "web", frozenset()),
    )


@pytest.mark.parametrize(
    ("change", "field", "phrase"),
    [
        (("name: reader", "name: uploader"), "spec.accessKeys[1].name", "used twice"),
        (("name: reader", "name: 'read$er'"), "spec.accessKeys[1].name", "'$'"),
        (("name: reader", "name: ''"), "spec.accessKeys[1].name", "needs a name"),
        (("{name: web, type: collection}", "{name: web, type: user}"),
         "spec.accessKeys[1].objects[1].type", "must be 'collection'"),
        (("{name: web, type: collection}", "{name: web}"),
         "spec.accessKeys[1].objects[1].type", "required"),
        (("roles: [backupUploader]", "roles: [superUser]"),
         "spec.accessKeys[0].objects[0].roles[0]", "unknown role 'superUser'"),
        (("entry: key}", "entry: gone}"), "spec.accessKeys[0].passwordFromRef", "no entry 'gone'"),
        ((f'password: "{HASH_ADMIN}"', 'password: ""'), "spec.accessKeys[1].password",
         "no password"),
    ],
)  # fmt: skip
def test_a_broken_access_key_leaves_its_user_out(
    change: tuple[str, str], field: str, phrase: str
) -> None:
    spec = KEYS_SPEC.replace(*change)
    assert spec != KEYS_SPEC
    result = load(
        ("s.yaml", SECRETS), ("a.yaml", user_yaml("alice", spec)), ("b.yaml", user_yaml("bob"))
    )

    problem = only_problem(result)
    assert problem.field == field
    assert phrase in problem.message
    assert set(result.snapshot.users) == {"bob"}


# --------------------------------------------------------------------------------- secrets


def test_secret_data_is_read_exactly_as_written() -> None:
    # A value that happens to be valid base64 must not be decoded.
    secrets = f"""
    apiVersion: v1
    kind: Secret
    metadata: {{name: health}}
    data:
      db: "{SHA256_ADMIN}"
    """
    result = load(("s.yaml", secrets), ("c.yaml", collection_yaml(extra=HEALTH_REF)))

    assert result.snapshot.collections["db"].health_secret == SHA256_ADMIN


def test_string_data_wins_over_data_for_the_same_entry() -> None:
    other = hashlib.sha256(b"other").hexdigest()
    secrets = f"""
    apiVersion: v1
    kind: Secret
    metadata: {{name: health}}
    data:
      db: "{other}"
    stringData:
      db: "{SHA256_ADMIN}"
    """
    result = load(("s.yaml", secrets), ("c.yaml", collection_yaml(extra=HEALTH_REF)))

    assert result.snapshot.collections["db"].health_secret == SHA256_ADMIN


def test_a_broken_secret_is_reported_and_its_users_say_why() -> None:
    secrets = """
    apiVersion: v1
    kind: Secret
    metadata: {name: passwords}
    data:
      admin: 12345
    """
    result = load(("s.yaml", secrets), ("a.yaml", user_yaml("alice")))

    first, second = result.snapshot.problems
    assert (first.source, first.kind, first.name, first.field) == (
        "s.yaml",
        "Secret",
        "passwords",
        "data.admin",
    )
    assert "put the value in quotes" in first.message
    assert (second.name, second.field) == ("alice", "spec.passwordFromRef")
    assert "Secret 'passwords' is broken" in second.message
    assert result.secrets == 0
    assert result.snapshot.users == {}


# ----------------------------------------------------------------------------- duplicates


def test_duplicates_across_files_keep_neither_copy() -> None:
    result = load(
        ("secrets.yaml", SECRETS),
        ("one.yaml", user_yaml("alice")),
        ("two.yaml", user_yaml("alice")),
        ("bob.yaml", user_yaml("bob")),
    )

    problems = result.snapshot.problems
    assert [(p.source, p.name, p.field) for p in problems] == [
        ("one.yaml", "alice", "metadata.name"),
        ("two.yaml", "alice", "metadata.name"),
    ]
    assert "also defined in two.yaml" in problems[0].message
    assert "none of the copies is used" in problems[0].message
    assert set(result.snapshot.users) == {"bob"}


def test_duplicates_within_one_file_name_the_document() -> None:
    text = collection_yaml() + "---\n" + collection_yaml()
    result = load(("c.yaml", text))

    assert len(result.snapshot.problems) == 2
    assert "c.yaml (document 2)" in result.snapshot.problems[0].message
    assert result.snapshot.collections == {}


def test_a_duplicated_secret_breaks_what_refers_to_it() -> None:
    result = load(("s1.yaml", SECRETS), ("s2.yaml", SECRETS), ("a.yaml", user_yaml("alice")))

    assert result.snapshot.users == {}
    messages = [p.message for p in result.snapshot.problems if p.name == "alice"]
    assert messages == ["Secret 'passwords' is defined more than once"]


def test_same_name_in_different_kinds_is_not_a_duplicate() -> None:
    result = load(
        ("s.yaml", SECRETS), ("a.yaml", user_yaml("db")), ("c.yaml", collection_yaml("db"))
    )

    assert result.snapshot.problems == ()
    assert "db" in result.snapshot.users
    assert "db" in result.snapshot.collections


# ----------------------------------------------------------------------------- namespaces


def test_objects_of_another_namespace_are_skipped() -> None:
    other = user_yaml("bob").replace("{name: bob}", "{name: bob, namespace: elsewhere}")
    same = user_yaml("carol").replace("{name: carol}", "{name: carol, namespace: backups}")
    result = load(
        ("s.yaml", SECRETS),
        ("a.yaml", user_yaml("alice")),
        ("b.yaml", other),
        ("c.yaml", same),
        namespace="backups",
    )

    assert result.snapshot.problems == ()
    assert set(result.snapshot.users) == {"alice", "carol"}
    assert result.other_namespace == 1
    assert "1 object of other namespaces skipped" in result.summary()


def test_reference_layout_placement_is_checked() -> None:
    placement = Placement("BackupUser", "alice", "backup-repository")
    wrong_name = parse_yaml("u/bob.yaml", user_yaml("alice"), Placement("BackupUser", "bob", "ns"))
    wrong_kind = parse_yaml("u/db.yaml", collection_yaml("db"), Placement("BackupUser", "db", "ns"))
    wrong_ns = parse_yaml(
        "u/alice.yaml",
        user_yaml("alice").replace("{name: alice}", "{name: alice, namespace: other}"),
        placement,
    )
    right = parse_yaml("u/alice.yaml", user_yaml("alice"), placement)

    assert wrong_name.documents == ()
    assert wrong_name.problems[0].field == "metadata.name"
    assert "alice.yaml" in wrong_name.problems[0].message
    assert wrong_kind.documents == ()
    assert wrong_kind.problems[0].field == "kind"
    assert wrong_ns.problems[0].field == "metadata.namespace"
    assert right.problems == ()
    assert len(right.documents) == 1


# ----------------------------------------------------------------------------- collections

HEALTH_REF = "healthSecretRef: {name: health, entry: db}\n"

FULL_COLLECTION = """\
description: Production database
filenameTemplate: db-prod-${version}.sql.gz.asc
maxBackupsCount: 5
maxOneVersionSize: 1M
maxCollectionSize: 10MiB
windows:
  - {from: "30 0 * * *", duration: 1h}
  - {from: "*/30 * * * *", duration: 1h30m}
strategyName: fifo-plus-older
strategySpec: {keepLastOlderNotMoreThan: 5d, maxOlderCopies: 2}
healthSecretRef: {name: health, entry: db}
accessControl:
  - {name: alice, type: user, roles: [backupUploader]}
  - {userName: bob, roles: [backupDownloader]}
  - {name: carol, roles: [collectionManager, uploadsAnytime]}
"""


def test_a_collection_with_every_field() -> None:
    result = load(("s.yaml", SECRETS), ("c.yaml", collection_yaml("db-prod", FULL_COLLECTION)))

    assert result.snapshot.problems == ()
    collection = result.snapshot.collections["db-prod"]
    assert collection.description == "Production database"
    assert collection.filename_for(3) == "db-prod-3.sql.gz.asc"
    assert collection.max_backups_count == 5
    assert collection.max_one_version_size == 1048576
    assert collection.max_collection_size == 10 * 1048576
    assert collection.windows == (
        BackupWindow("30 0 * * *", timedelta(hours=1)),
        BackupWindow("*/30 * * * *", timedelta(hours=1, minutes=30)),
    )
    assert collection.strategy == RotationStrategy("fifo-plus-older", timedelta(days=5), 2)
    assert collection.health_secret == SHA256_ADMIN
    assert collection.roles_of("alice") == {Role.BACKUP_UPLOADER}
    assert collection.roles_of("bob") == {Role.BACKUP_DOWNLOADER}
    assert collection.roles_of("carol") == {Role.COLLECTION_MANAGER, Role.UPLOADS_ANYTIME}


def test_a_minimal_collection_gets_defaults() -> None:
    collection = load(("c.yaml", collection_yaml())).snapshot.collections["db"]

    assert collection.strategy == RotationStrategy("fifo")
    assert collection.windows == ()
    assert collection.health_secret is None
    assert collection.access_control == ()


@pytest.mark.parametrize(
    ("change", "field", "phrase"),
    [
        (("30 0 * * *", "00 30 * * *"), "spec.windows[0].from", "out of range"),
        (("30 0 * * *", "0 0 * * * *"), "spec.windows[0].from", "not a 5-field cron"),
        (("30 0 * * *", "@daily"), "spec.windows[0].from", "not a 5-field cron"),
        (("30 0 * * *", "0 0 31 2 *"), "spec.windows[0].from", "invalid cron"),
        (("30 0 * * *", "a b c d e"), "spec.windows[0].from", "invalid cron"),
        (("duration: 1h}", "duration: 0s}"), "spec.windows[0].duration", "greater than zero"),
        (("duration: 1h}", "duration: 1 hour}"), "spec.windows[0].duration", "invalid duration"),
        (("duration: 1h}", "duration: 60}"), "spec.windows[0].duration", "must be text"),
        (('{from: "30 0 * * *", duration: 1h}', "{duration: 1h}"), "spec.windows[0].from",
         "required"),
        (("keepLastOlderNotMoreThan: 5d", "keepLastOlderNotMoreThan: 5x"),
         "spec.strategySpec.keepLastOlderNotMoreThan", "invalid duration"),
        (("keepLastOlderNotMoreThan: 5d, ", ""),
         "spec.strategySpec.keepLastOlderNotMoreThan", "needs keepLastOlderNotMoreThan"),
        (("maxOlderCopies: 2", "maxOlderCopies: -1"), "spec.strategySpec.maxOlderCopies",
         "greater than or equal to 0"),
        (("strategyName: fifo-plus-older", "strategyName: lifo"), "spec.strategyName", "fifo"),
        (("db-prod-${version}", "db-prod-$version"), "spec.filenameTemplate", "${version}"),
        (("db-prod-${version}", "db/prod-${version}"), "spec.filenameTemplate", "separator"),
        (("db-prod-${version}", "db\\\\prod-${version}"), "spec.filenameTemplate", "separator"),
        (("db-prod-${version}", "db..prod-${version}"), "spec.filenameTemplate", "'..'"),
        (("db-prod-${version}", 'db"prod-${version}'), "spec.filenameTemplate", "quotes"),
        (("maxBackupsCount: 5", "maxBackupsCount: 0"), "spec.maxBackupsCount",
         "greater than or equal to 1"),
        (("maxBackupsCount: 5", "maxBackupsCount: '5'"), "spec.maxBackupsCount",
         "valid integer"),
        (("maxBackupsCount: 5\n", ""), "spec.maxBackupsCount", "required"),
        (("maxOneVersionSize: 1M", "maxOneVersionSize: 0"), "spec.maxOneVersionSize",
         "greater than zero"),
        (("maxOneVersionSize: 1M", "maxOneVersionSize: 1Q"), "spec.maxOneVersionSize",
         "invalid size"),
        (("maxCollectionSize: 10MiB", "maxCollectionSize: 512K"), "spec.maxOneVersionSize",
         "larger than maxCollectionSize"),
        (("{name: alice, type: user,", "{name: alice, type: group,"),
         "spec.accessControl[0].type", "must be 'user'"),
        (("{name: alice, type: user,", "{name: alice, userName: alice,"),
         "spec.accessControl[0]", "not both"),
        (("{name: alice, type: user,", "{type: user,"), "spec.accessControl[0]",
         "user is missing"),
        (("roles: [backupDownloader]", "roles: [systemAdmin]"),
         "spec.accessControl[1].roles[0]", "cannot be given on a collection"),
        (("roles: [backupDownloader]", "roles: [reader]"),
         "spec.accessControl[1].roles[0]", "unknown role 'reader'"),
        (("entry: db}", "entry: nope}"), "spec.healthSecretRef", "no entry 'nope'"),
        (("name: health,", "name: gone,"), "spec.healthSecretRef", "does not exist"),
        (("healthSecretRef: {name: health, entry: db}", "healthSecretRef: {name: passwords, "
          "entry: admin}"), "spec.healthSecretRef", "SHA-256"),
        (("description: Production database", "descripton: typo"), "spec.descripton",
         "unknown field"),
    ],
)  # fmt: skip
def test_a_broken_collection_is_left_out(change: tuple[str, str], field: str, phrase: str) -> None:
    spec = FULL_COLLECTION.replace(*change)
    assert spec != FULL_COLLECTION
    result = load(
        ("s.yaml", SECRETS),
        ("c.yaml", collection_yaml("db-prod", spec)),
        ("ok.yaml", collection_yaml("other")),
    )

    problem = only_problem(result)
    assert (problem.source, problem.kind, problem.name) == ("c.yaml", "BackupCollection", "db-prod")
    assert problem.field == field
    assert phrase in problem.message
    assert set(result.snapshot.collections) == {"other"}


def test_sizes_may_be_plain_numbers_and_equal() -> None:
    spec = COLLECTION_SPEC.replace("1M", "1024").replace("10M", "1KiB")
    collection = load(("c.yaml", collection_yaml("db", spec))).snapshot.collections["db"]

    assert collection.max_one_version_size == collection.max_collection_size == 1024


@pytest.mark.parametrize("name", ["../etc", "db prod", ".hidden", "-db", "db/x"])
def test_collection_names_must_be_safe_in_urls_and_storage_keys(name: str) -> None:
    result = load(("c.yaml", collection_yaml(f"'{name}'")))

    assert fields(result) == ["metadata.name"]
    assert result.snapshot.collections == {}


def test_one_object_can_have_several_problems() -> None:
    spec = COLLECTION_SPEC.replace("1M", "1Q").replace("5\n", "0\n")
    result = load(("c.yaml", collection_yaml("db", spec)))

    assert sorted(fields(result)) == ["spec.maxBackupsCount", "spec.maxOneVersionSize"]


# --------------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (HASH_ADMIN, True),
        (HASH_TEST, True),
        (PHC_ADMIN, True),
        (PHC_ADMIN.replace("==$", "$").rstrip("="), True),
        ("hashed", False),
        ("", False),
        ("$argon2id$garbage", False),
        ("c2VjcmV0", False),  # base64 of "secret"
    ],
)  # fmt: skip
def test_password_hash_problem(value: str, ok: bool) -> None:
    assert (password_hash_problem(value) == "") is ok


def test_the_project_examples_load_without_problems() -> None:
    examples = Path(__file__).parent.parent.parent / "examples" / "config"
    files: Iterable[SourceFile] = read_fixture_folder(examples)
    result = load_files(files)

    assert result.snapshot.problems == ()
    assert set(result.snapshot.users) == {"admin", "ci-bot"}
    assert set(result.snapshot.collections) == {"example-db"}
    collection = result.snapshot.collections["example-db"]
    assert collection.health_secret == hashlib.sha256(b"health-code").hexdigest()
    assert collection.roles_of("ci-bot") == {Role.BACKUP_UPLOADER, Role.BACKUP_DOWNLOADER}
