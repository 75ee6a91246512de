"""Unit tests of the client's pieces: checksum headers and verification, settings and their
precedence, error texts, gpg's status lines, tables."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import httpx
import pytest

from backup_repository.client import arguments as given
from backup_repository.client import cli, parser
from backup_repository.client.api import check_url, check_version, error_text
from backup_repository.client.checksums import (
    Hasher,
    expected_sha256,
    verify_download,
    verify_upload,
)
from backup_repository.client.errors import ExitCode, GpgFailed, IntegrityError, UsageError
from backup_repository.client.gpg import GpgOutput, decryption_error, passphrase_pipe
from backup_repository.client.tables import (
    collections_table,
    format_table,
    human_size,
    versions_table,
)

DATA = b"encrypted bytes"
SHA = hashlib.sha256(DATA).hexdigest()
B64 = base64.b64encode(hashlib.sha256(DATA).digest()).decode()


def hashed(data: bytes = DATA) -> Hasher:
    hasher = Hasher()
    hasher.update(data[:5])
    hasher.update(data[5:])
    return hasher


# -- expected_sha256 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Content-SHA256": SHA},
        {"x-content-sha256": SHA.upper()},
        {"Repr-Digest": f"sha-256=:{B64}:"},
        {"Digest": f"SHA-512=abc, sha-256={B64}"},
        {"ETag": f'"{SHA}"'},
        {"X-Content-SHA256": SHA, "ETag": f'"{SHA}"', "Digest": f"sha-256={B64}"},
    ],
)
def test_the_announced_sha256_is_found_in_any_header(headers: dict[str, str]) -> None:
    assert expected_sha256(httpx.Headers(headers)) == SHA


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"ETag": '"not-a-hash"'},
        {"ETag": f'W/"{SHA}"'},  # weak: says nothing about the bytes
        {"Digest": "md5=abc"},
    ],
)
def test_no_announced_sha256(headers: dict[str, str]) -> None:
    assert expected_sha256(httpx.Headers(headers)) is None


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-Content-SHA256": SHA, "ETag": f'"{"0" * 64}"'}, "conflicting checksums"),
        ({"X-Content-SHA256": "xyz"}, "malformed X-Content-SHA256"),
        ({"Repr-Digest": "sha-256=:!!!:"}, "malformed digest"),
        ({"Digest": "sha-256=YWJj"}, "malformed digest"),  # 3 bytes, not 32
    ],
)
def test_bad_checksum_headers_are_errors(headers: dict[str, str], message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        expected_sha256(httpx.Headers(headers))


# -- verification -----------------------------------------------------------------------------


def test_verify_download() -> None:
    verify_download(SHA, hashed(), len(DATA))
    verify_download(None, hashed(), None)
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        verify_download("0" * 64, hashed(), len(DATA))
    with pytest.raises(IntegrityError, match="incomplete"):
        verify_download(SHA, hashed(DATA[:-1]), len(DATA))


def test_verify_upload() -> None:
    assert verify_upload({"sha256": SHA, "filesize": len(DATA)}, hashed()) is True
    assert verify_upload({"sha256": SHA.upper()}, hashed()) is True
    assert verify_upload({"versionNumber": 3}, hashed()) is False
    with pytest.raises(IntegrityError, match="version 3 with SHA-256"):
        verify_upload({"versionNumber": 3, "sha256": "0" * 64}, hashed())
    with pytest.raises(IntegrityError, match="with 1 bytes"):
        verify_upload({"sha256": SHA, "filesize": 1}, hashed())


# -- settings ---------------------------------------------------------------------------------


def arguments(argv: list[str], env: dict[str, str] | None = None) -> given.Arguments:
    return given.Arguments(parser.build_parser().parse_args(argv), env or {})


def test_flag_then_variable_then_default() -> None:
    env = {"BM_URL": "http://env", "BM_TIMEOUT": "30", "BM_VERSION": ""}
    args = arguments(["restore", "-u", "http://flag"], env)
    assert args.get(given.URL) == "http://flag"
    assert args.get(given.TIMEOUT) == "30"
    assert args.get(given.VERSION) == "latest"  # an empty variable counts as unset
    assert arguments(["restore"], {}).get(given.TIMEOUT) == given.DEFAULT_TIMEOUT_S


def test_global_flags_before_or_after_the_subcommand() -> None:
    before = arguments(["-u", "http://a", "-i", "c1", "versions"])
    after = arguments(["versions", "-u", "http://a", "-i", "c1"])
    for args in (before, after):
        assert args.get(given.URL) == "http://a"
        assert args.get(given.COLLECTION_ID) == "c1"
    both = arguments(["-u", "http://a", "versions", "-u", "http://b"])
    assert both.get(given.URL) == "http://b"


def test_missing_values_name_flag_and_variable() -> None:
    with pytest.raises(UsageError, match=r"missing --collection-id \(or BM_COLLECTION_ID\)"):
        arguments(["versions"]).require(given.COLLECTION_ID)


def test_recipients_from_flags_or_a_comma_separated_variable() -> None:
    assert given.recipients(
        arguments(["make", "-r", "a@x", "-r", "b@x"], {"BM_RECIPIENT": "c"})
    ) == [
        "a@x",
        "b@x",
    ]
    assert given.recipients(arguments(["make"], {"BM_RECIPIENT": "a@x, b@x"})) == ["a@x", "b@x"]
    assert given.recipients(arguments(["make"])) == []


def test_token_and_passphrase_sources(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    secret_file = tmp_path / "secret"
    secret_file.write_text("pass phrase \nsecond line\n")
    assert (
        given.auth_token(arguments(["versions", "-t", "flag"], {"BM_AUTH_TOKEN": "env"})) == "flag"
    )
    assert given.auth_token(arguments(["versions"], {"BM_AUTH_TOKEN": "env"})) == "env"
    file_args = arguments(
        ["versions", "--auth-token-file", str(token_file)], {"BM_AUTH_TOKEN": "e"}
    )
    assert given.auth_token(file_args) == "from-file"
    assert given.auth_token(arguments(["versions"], {"BM_AUTH_TOKEN_FILE": str(token_file)})) == (
        "from-file"
    )
    with pytest.raises(UsageError, match="missing --auth-token"):
        given.auth_token(arguments(["versions"]))
    assert given.passphrase(arguments(["restore", "--passphrase-file", str(secret_file)])) == (
        "pass phrase "
    )
    assert given.passphrase(arguments(["restore"], {"BM_PASSPHRASE": "env"})) == "env"
    assert (
        given.passphrase(arguments(["restore", "--passphrase", ""], {"BM_PASSPHRASE": "e"})) == ""
    )
    assert given.passphrase(arguments(["restore"])) is None


@pytest.mark.parametrize(
    ("value", "level"),
    [("info", 20), ("DEBUG", 10), ("trace", 10), ("warn", 30), ("panic", 50), ("5", 10), ("4", 20)],
)
def test_log_levels_of_the_reference(value: str, level: int) -> None:
    assert given.log_level(value) == level


def test_an_unknown_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--log-level", "loud", "versions"], environ={}) == ExitCode.USAGE
    assert "unknown --log-level" in capsys.readouterr().err


def test_scope_parsing() -> None:
    assert given.parse_scope(["db=backupUploader,backupDownloader"]) == [
        {"type": "collection", "name": "db", "roles": ["backupUploader", "backupDownloader"]}
    ]
    for bad in ("db", "db=", "=backupUploader", "db=wizard"):
        with pytest.raises(UsageError):
            given.parse_scope([bad])


def test_url_version_and_timeout_checks() -> None:
    assert check_url("https://backups.example.org/prefix/") == "https://backups.example.org/prefix"
    for bad in ("backups.example.org", "ftp://x", "https://x/?a=1"):
        with pytest.raises(UsageError):
            check_url(bad)
    for good in ("latest", "7", "v12"):
        assert check_version(good) == good
    for bad in ("", "v", "../1", "1.0", "LATEST"):
        with pytest.raises(UsageError):
            check_version(bad)
    assert given.timeout_seconds("2.5") == 2.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(UsageError):
            given.timeout_seconds(bad)


def test_write_private_file(tmp_path: Path) -> None:
    target = tmp_path / "token"
    cli.write_private_file(target, "abc\n")
    assert target.read_text() == "abc\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


# -- server errors ----------------------------------------------------------------------------


def response(status: int, body: bytes) -> httpx.Response:
    return httpx.Response(status, content=body)


def test_error_text_prefers_the_envelope() -> None:
    body = b'{"status": false, "error": "cannot find specified collection", "data": {}}'
    assert error_text(response(404, body), body) == (
        "server answered 404 Not Found: cannot find specified collection"
    )
    login = b'{"code": 401, "message": "incorrect Username or Password"}'
    assert error_text(response(401, login), login).endswith("incorrect Username or Password")
    assert error_text(response(502, b"<html>Bad gateway</html>"), b"<html>Bad gateway</html>") == (
        "server answered 502 Bad Gateway: <html>Bad gateway</html>"
    )
    assert error_text(response(503, b""), b"") == "server answered 503 Service Unavailable"


# -- gpg ----------------------------------------------------------------------------------------


def gpg_output(*lines: str) -> GpgOutput:
    output = GpgOutput()
    for line in lines:
        output.add(line)
    return output


def test_a_complete_decryption_is_accepted() -> None:
    ok = gpg_output("[GNUPG:] BEGIN_DECRYPTION", "[GNUPG:] DECRYPTION_OKAY", "[GNUPG:] GOODMDC")
    assert decryption_error(0, ok) is None
    unconfirmed = gpg_output("[GNUPG:] BEGIN_DECRYPTION")
    assert isinstance(decryption_error(0, unconfirmed), GpgFailed)
    assert decryption_error(2, ok) is not None


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["[GNUPG:] ERROR pkdecrypt_failed 67108875", "[GNUPG:] DECRYPTION_FAILED"], "wrong pass"),
        (["[GNUPG:] ERROR pkdecrypt_failed 67109041"], "no passphrase was given"),
        (["[GNUPG:] NO_SECKEY ABCDEF0123456789", "[GNUPG:] DECRYPTION_FAILED"], "ABCDEF01234"),
        (["gpg: WARNING: encrypted message has been manipulated!"], "damaged or was tampered"),
        (["[GNUPG:] BADMDC"], "damaged or was tampered"),
        (["[GNUPG:] NODATA 1", "gpg: decrypt_message failed: Unknown system error"], "not an"),
        (["gpg: something else"], "something else"),
    ],
)
def test_gpg_failures_in_plain_words(lines: list[str], message: str) -> None:
    error = decryption_error(2, gpg_output(*lines))
    assert error is not None
    assert message in error.message


def test_the_passphrase_travels_through_a_pipe() -> None:
    fd = passphrase_pipe("s3cret phrase")
    try:
        assert os.read(fd, 100) == b"s3cret phrase\n"
    finally:
        os.close(fd)
    fd = passphrase_pipe(None)
    try:
        assert os.read(fd, 100) == b"\n"
    finally:
        os.close(fd)
    with pytest.raises(UsageError, match="one line"):
        passphrase_pipe("two\nlines")


# -- tables -----------------------------------------------------------------------------------


def test_human_sizes() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(5 * 1024**3) == "5.0 GiB"
    assert human_size(None) == "-"
    assert human_size(True) == "-"


def test_format_table_aligns_columns() -> None:
    assert format_table(["N", "NAME"], [["1", "a"], ["10", "bbb"]], right=1) == (
        " N  NAME\n 1  a\n10  bbb"
    )


def test_versions_table() -> None:
    data = {
        "collectionId": "db",
        "versions": [
            {
                "versionNumber": 2, "filesize": 2048, "CreatedAt": "2026-11-27T01:00:00.123456Z",
                "sha256": SHA, "user": "alice", "filename": "db-2.gpg",
            },
        ],
        "usage": {
            "versions": 1, "bytesUsed": 2048, "maxBackupsCount": 5,
            "maxOneVersionSize": 1048576, "maxCollectionSize": 10485760,
        },
    }  # fmt: skip
    lines = versions_table(data).splitlines()
    assert lines[0] == (
        "collection db: 1 version(s), 2.0 KiB used of 10.0 MiB (at most 5 versions of 1.0 MiB each)"
    )
    assert lines[2].split() == [
        "2",
        "2.0",
        "KiB",
        "2026-11-27",
        "01:00:00Z",
        SHA[:16],
        "alice",
        "db-2.gpg",
    ]


def test_collections_table() -> None:
    data = {
        "collections": [
            {
                "id": "db", "description": "Production", "strategyName": "fifo",
                "windows": [{"from": "30 0 * * *", "duration": 3600}],
                "usage": {"versions": 1, "bytesUsed": 10, "maxBackupsCount": 3,
                          "maxOneVersionSize": 1024, "maxCollectionSize": 4096},
            },
            {"id": "empty", "usage": {}},
        ]
    }  # fmt: skip
    lines = collections_table(data).splitlines()
    assert lines[0].split()[:3] == ["ID", "VERSIONS", "USED"]
    assert "30 0 * * * for 1h (UTC)" in lines[1]
    assert lines[1].split()[:3] == ["db", "1/3", "10"]
    assert lines[2].split()[:2] == ["empty", "-/-"]
    assert "any time" in lines[2]
