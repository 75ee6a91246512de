"""``backup-maker`` against the real server on loopback, with real GnuPG keys: backups made,
restored and downloaded; every failure aborts cleanly, uploads nothing and says why."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from client_support import (
    PASSPHRASE,
    KeyFiles,
    LiveServer,
    clean_environment,
    encrypt_to,
    make_tree,
    run_bm,
    tree_digest,
)

from gpg_fixtures import gpg_binary
from support import wait_until

pytestmark = pytest.mark.e2e


def server_args(server: LiveServer, collection: str, user: str = "admin") -> list[str]:
    return ["-u", server.url, "-i", collection, "-t", server.token(user)]


def make_args(server: LiveServer, collection: str, keys: KeyFiles, command: str) -> list[str]:
    return ["make", *server_args(server, collection), "-c", command, "-k", str(keys.alice_public)]


def restore_args(server: LiveServer, collection: str, keys: KeyFiles, command: str) -> list[str]:
    return [
        "restore", *server_args(server, collection), "-c", command,
        "-p", str(keys.alice_secret),
    ]  # fmt: skip


def payload(folder: Path, size: int = 200_000, seed: int = 3) -> Path:
    path = folder / "payload.bin"
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def assert_nothing_stored(server: LiveServer, collection: str) -> None:
    assert server.versions(collection) == []
    # The server removes the staging object of an aborted upload on its own.
    wait_until(lambda: server.stored_objects(collection) == [], timeout=15)


# -- make and restore ----------------------------------------------------------------------


def test_tar_a_folder_make_restore_into_another_folder(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "source")
    made = run_bm(*make_args(live_server, collection, keys, f"tar -C '{source}' -cf - ."))
    assert made.returncode == 0, made.stderr
    assert "(verified)" in made.stderr
    assert made.stdout == ""

    versions = live_server.versions(collection)
    assert [v["versionNumber"] for v in versions] == [1]
    stored = live_server.download(collection)
    assert hashlib.sha256(stored).hexdigest() == versions[0]["sha256"]
    assert stored[0] & 0x80  # binary OpenPGP by default, not armor
    assert b"etc/app/config.yaml" not in stored  # encrypted

    target = tmp_path / "target"
    target.mkdir()
    restored = run_bm(*restore_args(live_server, collection, keys, f"tar -C '{target}' -xf -"))
    assert restored.returncode == 0, restored.stderr
    assert "download verified" in restored.stderr
    assert tree_digest(target) == tree_digest(source)


def test_restore_while_downloading_with_stream(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "source", seed=2)
    made = run_bm(*make_args(live_server, collection, keys, f"tar -C '{source}' -czf - ."))
    assert made.returncode == 0, made.stderr
    target = tmp_path / "target"
    target.mkdir()
    restored = run_bm(
        *restore_args(live_server, collection, keys, f"tar -C '{target}' -xzf -"), "--stream"
    )
    assert restored.returncode == 0, restored.stderr
    assert tree_digest(target) == tree_digest(source)


def test_armor_uploads_ascii_armored_openpgp(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    data = payload(tmp_path)
    made = run_bm(*make_args(live_server, collection, keys, f"cat '{data}'"), "--armor")
    assert made.returncode == 0, made.stderr
    assert live_server.download(collection).startswith(b"-----BEGIN PGP MESSAGE-----")
    out = tmp_path / "out.bin"
    restored = run_bm(*restore_args(live_server, collection, keys, f"cat > '{out}'"))
    assert restored.returncode == 0, restored.stderr
    assert out.read_bytes() == data.read_bytes()


def test_make_with_a_secret_key_file_never_starts_a_gpg_agent(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    real = gpg_binary()
    log = tmp_path / "argv.log"
    spy = tmp_path / "spy-gpg"
    spy.write_text(f"#!/bin/bash\nprintf '%s\\n' \"$*\" >> '{log}'\nexec '{real}' \"$@\"\n")
    spy.chmod(0o755)
    made = run_bm(
        "make", *server_args(live_server, collection), "-c", "echo from-secret-key-file",
        "-k", str(keys.carol_secret), "--gpg-binary", str(spy),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    calls = log.read_text().splitlines()
    assert len(calls) >= 3  # import, listing, test encryption, encryption
    assert all("--no-autostart" in call for call in calls)
    out = tmp_path / "out"
    restored = run_bm(
        "restore", *server_args(live_server, collection), "-c", f"cat > '{out}'",
        "-p", str(keys.carol_secret), env={"BM_PASSPHRASE": PASSPHRASE},
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert out.read_text() == "from-secret-key-file\n"


def test_compress_level_zero_stores_compressible_data_uncompressed(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    zeros = "head -c 300000 /dev/zero"
    assert run_bm(*make_args(live_server, collection, keys, zeros)).returncode == 0
    plain = run_bm(*make_args(live_server, collection, keys, zeros), "--compress-level", "0")
    assert plain.returncode == 0, plain.stderr
    compressed, uncompressed = (v["filesize"] for v in reversed(live_server.versions(collection)))
    assert compressed < 10_000 < 300_000 < uncompressed
    out = tmp_path / "out"
    restored = run_bm(*restore_args(live_server, collection, keys, f"cat > '{out}'"))
    assert restored.returncode == 0, restored.stderr
    assert out.read_bytes() == bytes(300_000)
    bad = run_bm(*make_args(live_server, collection, keys, zeros), "--compress-level", "10")
    assert bad.returncode == 2
    assert "--compress-level must be 0 to 9" in bad.stderr


def test_restore_a_given_version(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    for text in ("first", "second", "third"):
        made = run_bm(*make_args(live_server, collection, keys, f"echo {text}"))
        assert made.returncode == 0, made.stderr
    for version, expected in (("1", "first"), ("v2", "second"), ("latest", "third")):
        out = tmp_path / f"out-{version}"
        restored = run_bm(
            *restore_args(live_server, collection, keys, f"cat > '{out}'"), "-s", version
        )
        assert restored.returncode == 0, restored.stderr
        assert out.read_text() == expected + "\n"


def test_empty_command_output_is_a_valid_backup(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    made = run_bm(*make_args(live_server, collection, keys, "true"))
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    restored = run_bm(*restore_args(live_server, collection, keys, f"cat > '{out}'"))
    assert restored.returncode == 0, restored.stderr
    assert out.read_bytes() == b""


def test_two_recipients_either_key_restores(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    both = tmp_path / "both.key"
    both.write_bytes(keys.alice_public_binary.read_bytes() + keys.carol_public.read_bytes())
    data = payload(tmp_path)
    made = run_bm(
        "make", *server_args(live_server, collection), "-c", f"cat '{data}'", "-k", str(both)
    )  # no --recipient: every key in the file
    assert made.returncode == 0, made.stderr
    for key, secret in ((keys.alice_secret, None), (keys.carol_secret, PASSPHRASE)):
        out = tmp_path / f"out-{key.stem}"
        args = ["restore", *server_args(live_server, collection), "-c", f"cat > '{out}'"]
        args += ["-p", str(key)] + (["--passphrase", secret] if secret else [])
        restored = run_bm(*args)
        assert restored.returncode == 0, restored.stderr
        assert out.read_bytes() == data.read_bytes()


# -- download -------------------------------------------------------------------------------


def test_download_save_path_decrypts_into_the_file(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    data = payload(tmp_path)
    assert run_bm(*make_args(live_server, collection, keys, f"cat '{data}'")).returncode == 0
    folder = tmp_path / "downloads"
    folder.mkdir()
    target = folder / "restored.bin"
    result = run_bm(
        "download", *server_args(live_server, collection), "--save-path", str(target),
        "-p", str(keys.alice_secret),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == data.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir()] == ["restored.bin"]  # no temporary file left


def test_download_without_a_key_saves_the_encrypted_file(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    data = payload(tmp_path)
    assert run_bm(*make_args(live_server, collection, keys, f"cat '{data}'")).returncode == 0
    target = tmp_path / "backup.gpg"
    result = run_bm(
        "download", *server_args(live_server, collection), "--save-path", str(target), "-s", "1"
    )
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == live_server.download(collection)


def test_download_with_a_wrong_key_keeps_nothing(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    assert run_bm(*make_args(live_server, collection, keys, "echo secret")).returncode == 0
    folder = tmp_path / "downloads"
    folder.mkdir()
    result = run_bm(
        "download", *server_args(live_server, collection),
        "--save-path", str(folder / "out"), "-p", str(keys.bob_secret),
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert list(folder.iterdir()) == []


# -- failures of make: nothing is stored ------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("cat '{data}'; exit 3", id="exit-status"),
        pytest.param("false | cat '{data}'", id="pipefail"),
        pytest.param("false; cat '{data}'", id="errexit"),
        pytest.param("cat '{data}'; kill -KILL $$", id="killed"),
    ],
)
def test_a_failing_command_uploads_nothing(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path, command: str
) -> None:
    data = payload(tmp_path)
    result = run_bm(*make_args(live_server, collection, keys, command.format(data=data)))
    assert result.returncode == 3, result.stderr
    assert "the backup command failed" in result.stderr
    assert "stored nothing" in result.stderr
    assert_nothing_stored(live_server, collection)


def test_a_bad_key_file_fails_before_the_command_runs(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    result = run_bm(
        "make", *server_args(live_server, collection),
        "-c", f"touch '{marker}'; echo data", "-k", str(keys.garbage),
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "cannot import the key file" in result.stderr
    assert not marker.exists()
    assert_nothing_stored(live_server, collection)


def test_a_missing_key_file_is_a_usage_error(
    live_server: LiveServer, collection: str, tmp_path: Path
) -> None:
    result = run_bm(
        "make", *server_args(live_server, collection), "-c", "echo x",
        "-k", str(tmp_path / "missing.asc"),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "cannot read the key file" in result.stderr


def test_an_unknown_recipient_fails_before_the_command_runs(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    result = run_bm(
        *make_args(live_server, collection, keys, f"touch '{marker}'"),
        "-r", "nobody@example.org",
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "nobody@example.org" in result.stderr
    assert not marker.exists()


def write_failing_gpg(folder: Path) -> Path:
    """A gpg that encrypts for real and then exits 2 when the message is larger than a
    key check's: the server receives a complete, valid OpenPGP message, yet the upload
    must not be recorded."""
    real = gpg_binary()
    assert real is not None
    script = folder / "failing-gpg"
    script.write_text(
        f"#!{sys.executable}\n"
        "import subprocess, sys\n"
        f"result = subprocess.run([{real!r}, *sys.argv[1:]], stdout=subprocess.PIPE)\n"
        "sys.stdout.buffer.write(result.stdout)\n"
        "sys.stdout.flush()\n"
        "if '--encrypt' in sys.argv and len(result.stdout) > 5000:\n"
        "    sys.exit(2)\n"
        "sys.exit(result.returncode)\n"
    )
    script.chmod(0o755)
    return script


def test_gpg_failing_after_a_complete_message_uploads_nothing(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    data = payload(tmp_path, size=100_000)
    result = run_bm(
        *make_args(live_server, collection, keys, f"cat '{data}'"),
        "--gpg-binary", str(write_failing_gpg(tmp_path)),
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "gpg failed to encrypt" in result.stderr
    assert_nothing_stored(live_server, collection)


def test_an_upload_over_quota_shows_the_server_error_and_stops_the_command(
    live_server: LiveServer, keys: KeyFiles, tmp_path: Path
) -> None:
    # "small": 1M per version plus 2M extra. The server answers 413 at once, drains at most
    # 64 MiB of what follows and then closes the connection; the command writes more than
    # that, so the client's next write fails and it reads the answer. The command then
    # sleeps, and must be stopped rather than waited for.
    pid_file = tmp_path / "pid"
    command = f"echo $$ > '{pid_file}'; head -c 167772160 /dev/urandom; sleep 60"
    result = run_bm(
        *make_args(live_server, "small", keys, command), "--compress-level", "0", timeout=50
    )
    assert result.returncode == 5, result.stderr
    assert "filesize reached allowed limit" in result.stderr
    pid = int(pid_file.read_text())
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10)  # stopped, not left
    assert_nothing_stored(live_server, "small")


def test_sigterm_aborts_the_upload_and_stops_the_command(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    data = payload(tmp_path)
    pid_file = tmp_path / "pid"
    command = f"echo $$ > '{pid_file}'; cat '{data}'; sleep 60"
    process = subprocess.Popen(
        [sys.executable, "-m", "backup_repository.client",
         *make_args(live_server, collection, keys, command)],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_environment(),
    )  # fmt: skip
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=30)
    # The upload is under way: the server is writing it to a staging file.
    wait_until(lambda: live_server.stored_objects(collection), timeout=30)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert b"terminated" in stderr
    pid = int(pid_file.read_text())
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10)
    assert_nothing_stored(live_server, collection)


# -- failures of restore: reported, the command never started or stopped --------------------


def test_a_wrong_private_key_never_starts_the_restore_command(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    assert run_bm(*make_args(live_server, collection, keys, "echo secret")).returncode == 0
    marker = tmp_path / "started"
    result = run_bm(
        "restore", *server_args(live_server, collection),
        "-c", f"touch '{marker}'; cat > /dev/null", "-p", str(keys.bob_secret),
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "none of them" in result.stderr
    assert "restore finished" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("wrong passphrase", "wrong passphrase for the private key"),
        (None, "the private key is protected and no passphrase was given"),
    ],
)
def test_a_wrong_or_missing_passphrase_fails_before_downloading(
    live_server: LiveServer,
    collection: str,
    keys: KeyFiles,
    tmp_path: Path,
    given: str | None,
    message: str,
) -> None:
    made = run_bm(
        "make", *server_args(live_server, collection), "-c", "echo secret",
        "-k", str(keys.carol_public),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    marker = tmp_path / "started"
    args = [
        "restore", *server_args(live_server, collection),
        "-c", f"touch '{marker}'; cat > /dev/null", "-p", str(keys.carol_secret),
    ]  # fmt: skip
    result = run_bm(*args, *(["--passphrase", given] if given else []))
    assert result.returncode == 4, result.stderr
    assert message in result.stderr
    assert "downloading" not in result.stderr
    assert not marker.exists()


def test_the_passphrase_never_appears_on_a_command_line(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    made = run_bm(
        "make", *server_args(live_server, collection), "-c", "echo secret",
        "-k", str(keys.carol_public),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    real = gpg_binary()
    log = tmp_path / "argv.log"
    spy = tmp_path / "spy-gpg"
    spy.write_text(f"#!/bin/bash\nprintf '%s\\n' \"$*\" >> '{log}'\nexec '{real}' \"$@\"\n")
    spy.chmod(0o755)
    out = tmp_path / "out"
    result = run_bm(
        "restore", *server_args(live_server, collection), "-c", f"cat > '{out}'",
        "-p", str(keys.carol_secret), "--gpg-binary", str(spy),
        env={"BM_PASSPHRASE": PASSPHRASE},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "secret\n"
    calls = log.read_text()
    assert "--decrypt" in calls
    assert "--passphrase-fd" in calls
    assert PASSPHRASE not in calls


def test_a_failing_restore_command_is_reported(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    data = payload(tmp_path)
    assert run_bm(*make_args(live_server, collection, keys, f"cat '{data}'")).returncode == 0
    result = run_bm(*restore_args(live_server, collection, keys, "head -c 10 > /dev/null; exit 7"))
    assert result.returncode == 3, result.stderr
    assert "restore" in result.stderr
    assert "finished" not in result.stderr


def test_damaged_ciphertext_is_detected_and_the_command_stopped(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    # The server checks only the head and tail of an upload; a damaged middle is stored
    # (with the SHA-256 of the damaged bytes) and must be caught by gpg on restore.
    data = random.Random(5).randbytes(2_000_000)
    sealed = encrypt_to(keys.alice_public, data, compress=False)
    damaged = bytearray(sealed)
    damaged[len(damaged) // 2] ^= 0xFF
    live_server.upload(collection, bytes(damaged))
    for mode in ([], ["--stream"]):
        out = tmp_path / f"out{len(mode)}"
        result = run_bm(*restore_args(live_server, collection, keys, f"cat > '{out}'"), *mode)
        assert result.returncode == 4, result.stderr
        assert "damaged or was tampered with" in result.stderr
        assert "restore finished" not in result.stderr


# -- settings: BM_* variables, precedence, errors ------------------------------------------------


def test_bm_variables_work_instead_of_flags(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    source = make_tree(tmp_path / "source", seed=9)
    env = {
        "BM_URL": live_server.url,
        "BM_COLLECTION_ID": collection,
        "BM_AUTH_TOKEN": live_server.token(),
        "BM_CMD": f"tar -C '{source}' -cf - .",
        "BM_PUBLIC_KEY_PATH": str(keys.carol_public),
        "BM_RECIPIENT": "carol@example.org",
        "BM_TIMEOUT": "60",
        "BM_LOG_LEVEL": "debug",
    }
    made = run_bm("make", env=env)
    assert made.returncode == 0, made.stderr
    assert "DEBUG" in made.stderr
    target = tmp_path / "target"
    target.mkdir()
    env.update(
        BM_CMD=f"tar -C '{target}' -xf -",
        BM_PRIVATE_KEY_PATH=str(keys.carol_secret),
        BM_PASSPHRASE=PASSPHRASE,
        BM_VERSION="1",
        BM_LOG_LEVEL="info",
    )
    restored = run_bm("restore", env=env)
    assert restored.returncode == 0, restored.stderr
    assert tree_digest(target) == tree_digest(source)
    saved = tmp_path / "saved.tar"
    downloaded = run_bm("download", "--save-path", str(saved), env=env)
    assert downloaded.returncode == 0, downloaded.stderr
    listed = run_bm("versions", env=env)
    assert listed.returncode == 0, listed.stderr
    assert f"collection {collection}: 1 version(s)" in listed.stdout


def test_flags_win_over_variables_and_global_flags_go_anywhere(
    live_server: LiveServer, collection: str, keys: KeyFiles
) -> None:
    env = {"BM_URL": "http://127.0.0.1:9", "BM_COLLECTION_ID": "nonexistent"}
    result = run_bm(
        "-u", live_server.url, "make", "-i", collection, "-t", live_server.token(),
        "-c", "echo ok", "-k", str(keys.alice_public), env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [v["versionNumber"] for v in live_server.versions(collection)] == [1]


def test_token_from_a_file(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(live_server.token() + "\n")
    result = run_bm(
        "make", "-u", live_server.url, "-i", collection, "-c", "echo ok",
        "-k", str(keys.alice_public), env={"BM_AUTH_TOKEN_FILE": str(token_file)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_missing_settings_are_named(keys: KeyFiles) -> None:
    result = run_bm("make", "-c", "echo", "-k", str(keys.alice_public))
    assert result.returncode == 2
    assert "missing --url (or BM_URL)" in result.stderr
    result = run_bm(
        "make", "-u", "http://127.0.0.1:9", "-t", "x", "-i", "db", "-k", str(keys.alice_public)
    )
    assert result.returncode == 2
    assert "missing --cmd (or BM_CMD)" in result.stderr


def test_server_errors_are_shown_with_the_servers_text(
    live_server: LiveServer, collection: str, keys: KeyFiles, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    unknown = run_bm(*make_args(live_server, "no-such-collection", keys, f"touch '{marker}'"))
    assert unknown.returncode == 5
    assert "cannot find specified collection" in unknown.stderr
    assert not marker.exists()  # refused before the backup command ran

    forbidden = run_bm(
        "make", *server_args(live_server, collection, user="downloader"),
        "-c", "echo data", "-k", str(keys.alice_public),
    )  # fmt: skip
    assert forbidden.returncode == 5
    assert "not authorized to upload versions to this collection" in forbidden.stderr
    assert live_server.versions(collection) == []

    missing = run_bm(*restore_args(live_server, collection, keys, "cat"), "-s", "7")
    assert missing.returncode == 5
    assert "cannot find specified version" in missing.stderr

    refused = run_bm("versions", "-u", live_server.url, "-i", collection, "-t", "not-a-token")
    assert refused.returncode == 5
    assert "401" in refused.stderr
    assert "log in again" in refused.stderr


def test_an_unreachable_server_fails_before_the_command_runs(
    keys: KeyFiles, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    result = run_bm(
        "make", "-u", "http://127.0.0.1:9", "-i", "db", "-t", "token",
        "-c", f"touch '{marker}'", "-k", str(keys.alice_public), "--timeout", "5",
    )  # fmt: skip
    assert result.returncode == 5
    assert "cannot connect" in result.stderr
    assert not marker.exists()


# -- login, versions, collections -------------------------------------------------------------


def test_login_prints_the_token_or_saves_it(live_server: LiveServer, tmp_path: Path) -> None:
    printed = run_bm(
        "login", "-u", live_server.url, "--username", "uploader", "--password-stdin",
        stdin=b"uploader-pass\n",
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    token = printed.stdout.strip()
    who = httpx.get(
        live_server.url + "/api/stable/auth/whoami", headers={"Authorization": f"Bearer {token}"}
    )
    assert who.status_code == 200
    assert who.json()["data"]["user"] == "uploader"

    saved = tmp_path / "token"
    stored = run_bm(
        "login", "-u", live_server.url, "--username", "uploader", "--save-token", str(saved),
        "--ttl", "1h", "--scope", "col-0=backupUploader",
        env={"BM_PASSWORD": "uploader-pass"},
    )  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout == ""
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_text().count(".") == 2  # a JWT
    listed = run_bm("collections", "-u", live_server.url, "--auth-token-file", str(saved))
    assert listed.returncode == 0, listed.stderr

    wrong = run_bm(
        "login", "-u", live_server.url, "--username", "uploader", "--password-stdin",
        stdin=b"nope\n",
    )  # fmt: skip
    assert wrong.returncode == 5
    assert "incorrect Username or Password" in wrong.stderr
    assert wrong.stdout == ""


def test_versions_and_collections_tables_and_json(
    live_server: LiveServer, collection: str, keys: KeyFiles
) -> None:
    for _ in range(2):
        assert run_bm(*make_args(live_server, collection, keys, "echo row")).returncode == 0
    versions = live_server.versions(collection)
    table = run_bm("versions", *server_args(live_server, collection))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"collection {collection}: 2 version(s)")
    assert lines[1].split() == [
        "VERSION",
        "SIZE",
        "CREATED",
        "(UTC)",
        "SHA-256",
        "USER",
        "FILENAME",
    ]
    assert lines[2].split()[0] == "2"
    assert lines[3].split()[0] == "1"
    assert versions[0]["sha256"][:16] in lines[2]
    assert f"{collection}-2.tar.gz" in lines[2]

    as_json = run_bm("versions", *server_args(live_server, collection), "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["versions"] == versions

    listing = run_bm("collections", "-u", live_server.url, "-t", live_server.token("uploader"))
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert rows[collection].split()[1] == "2/3"
    assert "small" in rows


def test_help_everywhere() -> None:
    for args in ([], ["make"], ["restore"], ["download"], ["login"], ["versions"], ["collections"]):
        result = run_bm(*args, "--help")
        assert result.returncode == 0, args
        assert "usage: backup-maker" in result.stdout
    assert "BM_PUBLIC_KEY_PATH" in run_bm("make", "--help").stdout
    assert "BM_PRIVATE_KEY_PATH" in run_bm("restore", "--help").stdout


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "backup-maker"
    assert script.exists()
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, check=False, env=os.environ
    )
    assert result.returncode == 0
    assert "make" in result.stdout
