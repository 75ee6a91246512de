"""One broken file must not hide what is wrong: a YAML syntax error is reported once with
its line, column and the offending line; a reference that finds nothing says which files
could not be read; the load summary counts objects and problems apart."""

from __future__ import annotations

import textwrap

from tests.unit.test_config_loader import HASH_ADMIN, SECRETS, collection_yaml, user_yaml

from backup_repository.config.documents import Placement, SourceFile, parse_yaml
from backup_repository.config.loader import BuildResult, load_files
from backup_repository.services.health import describe_problems


def load(*files: tuple[str, str]) -> BuildResult:
    return load_files([SourceFile(source, textwrap.dedent(text)) for source, text in files])


BROKEN_SECRETS = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: passwords}}
data:
  admin: "{HASH_ADMIN}"
   other: [unclosed
"""


def test_a_syntax_error_names_line_column_and_shows_the_line() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x: y\n"
    parsed = parse_yaml("cm.yaml", text)

    assert parsed.documents == ()
    assert len(parsed.problems) == 1
    message = parsed.problems[0].message
    assert message.startswith("invalid YAML at line 4, column 10: mapping values are not")
    assert message.endswith("; line 4 reads: name: x: y")
    assert parsed.unread is not None
    assert parsed.unread.source == "cm.yaml"


def test_an_unclosed_quote_shows_the_line_where_it_opened() -> None:
    text = 'a: 1\nb: "never closed\nc: 2\n'
    message = parse_yaml("f.yaml", text).problems[0].message

    assert "while scanning a quoted scalar that starts at line 2, column 4" in message
    assert message.endswith('line 2 reads: b: "never closed')


def test_a_tab_in_the_indentation_is_named() -> None:
    message = parse_yaml("f.yaml", "spec:\n\troles: []\n").problems[0].message

    assert "line 2, column 1" in message
    assert "a tab character: YAML is indented with spaces only" in message


def test_a_duplicate_key_has_its_line_too() -> None:
    message = parse_yaml("f.yaml", "a: 1\nb: 2\na: 3\n").problems[0].message

    assert message.startswith("invalid YAML at line 3, column 1: found duplicate key 'a'")


def test_the_excerpt_of_a_secret_file_hides_values() -> None:
    broken = 'apiVersion: v1\nkind: Secret\ndata:\n  admin: "s3cr3t" tail\n'
    for placement in (None, Placement("Secret", "passwords", "ns")):
        message = parse_yaml("s.yaml", broken, placement).problems[0].message
        assert "line 4 reads: admin: (value not shown: the file holds a Secret)" in message
        assert "s3cr3t" not in message


def test_an_inline_password_is_not_shown_in_any_file() -> None:
    text = 'kind: BackupUser\nspec:\n  password: "JGFyZ29uMmlk" x\n'
    message = parse_yaml("u.yaml", text).problems[0].message

    assert message.endswith("line 3 reads: password: (value not shown)")
    assert "JGFy" not in message


def test_a_long_line_is_cut() -> None:
    text = "key: " + "x" * 200 + "\n  bad: indentation\n"
    message = parse_yaml("f.yaml", text).problems[0].message

    excerpt = message.rpartition("reads: ")[2]
    assert len(excerpt) <= 80


def test_a_reference_into_an_unparsable_file_names_the_file() -> None:
    result = load(
        ("secrets.yaml", BROKEN_SECRETS),
        ("users.yaml", user_yaml("alice")),
        ("collections.yaml", collection_yaml(extra="healthSecretRef: {name: passwords, entry: x}")),
    )

    problems = result.snapshot.problems
    assert [(p.source, p.name) for p in problems] == [
        ("secrets.yaml", ""),
        ("users.yaml", "alice"),
        ("collections.yaml", "db"),
    ]
    assert problems[0].message.startswith("invalid YAML at line 6")
    expected = (
        "Secret 'passwords' was not found; secrets.yaml could not be read (see the problem "
        "reported for it), it may be there"
    )
    assert problems[1].message == expected
    assert problems[1].field == "spec.passwordFromRef"
    assert problems[2].message == expected
    assert problems[2].field == "spec.healthSecretRef"


def test_several_unreadable_files_are_all_named() -> None:
    result = load(
        ("a.yaml", "x: [\n"),
        ("b.yaml", "y: {\n"),
        ("users.yaml", user_yaml("alice")),
    )

    message = result.snapshot.problems[-1].message
    assert "a.yaml, b.yaml could not be read (see the problems reported for them)" in message


def test_without_unreadable_files_a_missing_secret_simply_does_not_exist() -> None:
    result = load(("users.yaml", user_yaml("alice")))

    assert result.snapshot.problems[0].message == "Secret 'passwords' does not exist"


def test_in_the_reference_layout_only_the_file_that_could_hold_the_secret_is_named() -> None:
    users = Placement("BackupUser", "bob", "ns")
    other_secret = Placement("Secret", "other", "ns")
    passwords = Placement("Secret", "passwords", "ns")
    alice = Placement("BackupUser", "alice", "ns")
    files = [
        SourceFile("backupusers/bob.yaml", "spec: [\n", users),
        SourceFile("secrets/other.yaml", "data: {\n", other_secret),
        SourceFile("backupusers/alice.yaml", user_yaml("alice"), alice),
    ]
    message = load_files(files).snapshot.problems[-1].message
    assert message == "Secret 'passwords' does not exist"

    files.append(SourceFile("secrets/passwords.yaml", "data: {\n", passwords))
    message = load_files(files).snapshot.problems[-1].message
    assert message.startswith("Secret 'passwords' was not found; secrets/passwords.yaml could")


def test_the_summary_counts_objects_and_problems_apart() -> None:
    result = load(
        ("secrets.yaml", SECRETS),
        ("broken.yaml", "a: [\n"),
        ("users.yaml", user_yaml("alice") + "\n---\n" + user_yaml("bob", "roles: [wizard]")),
        ("collections.yaml", collection_yaml("db")),
    )

    assert result.summary() == (
        "1 user, 1 collection, 0 notification channels, 2 secrets loaded; 2 problems "
        "(1 file could not be read, 1 object refused)"
    )
    assert describe_problems(result.snapshot) == (
        "2 problems (1 file could not be read, 1 object refused)"
    )


def test_a_clean_load_has_no_parenthesis() -> None:
    result = load(("secrets.yaml", SECRETS), ("users.yaml", user_yaml("alice")))

    assert result.summary().endswith("2 secrets loaded; 0 problems")
