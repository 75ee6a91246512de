"""``backup-maker make --sign-key`` and ``restore``/``download --verify-signature`` against
the real server with a collection of trusted uploaders (docs/client.md, "Signed uploads"):
the signed upload is stored with its signer, an unsigned one is refused, the restore
verifies the signature before decrypting, and a stored object replaced together with its
recorded SHA-256 (a compromised server) is caught by the signature."""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from client_support import KeyFiles, run_bm

from support import ServerProcess, collection_doc, start_server, user_doc, write_config
from trusted_keys import Signers, signers_fixture

signers = signers_fixture
pytestmark = pytest.mark.e2e

COLLECTION = "signed"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, signers: Signers
) -> Iterator[tuple[ServerProcess, Path]]:
    workdir = tmp_path_factory.mktemp("signed-client")
    signed = collection_doc(
        COLLECTION, acl=[{"name": "ops", "type": "user", "roles": ["collectionManager"]}]
    )
    signed["spec"]["trustedUploaders"] = {
        "keysFromRef": {"name": "uploaders", "entry": "keys.asc"},
    }
    write_config(
        workdir / "config",
        [
            user_doc("ops", "ops-pass"),
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "uploaders"},
                "stringData": {"keys.asc": signers.public("trusted")},
            },
            signed,
        ],
    )
    process = start_server(workdir, workdir / "config")
    try:
        yield process, workdir
    finally:
        process.stop()


def test_signed_make_restore_and_a_tampered_object(
    server: tuple[ServerProcess, Path], signers: Signers, keys: KeyFiles, tmp_path: Path
) -> None:
    process, workdir = server
    login = httpx.post(
        process.url + "/api/stable/auth/login", json={"username": "ops", "password": "ops-pass"}
    )
    token = login.json()["data"]["token"]
    env = {
        "BM_URL": process.url,
        "BM_COLLECTION_ID": COLLECTION,
        "BM_AUTH_TOKEN": token,
        "GNUPGHOME": str(signers.home),  # the uploader's own keyring, with the signing key
    }
    data = tmp_path / "data.bin"
    data.write_bytes(random.Random(7).randbytes(150_000))
    make = ["make", "-c", f"cat '{data}'", "-k", str(keys.alice_public)]

    unsigned = run_bm(*make, env=env)
    assert unsigned.returncode == 5, unsigned.stderr
    assert "carries no signature" in unsigned.stderr

    spool = tmp_path / "spool"
    spool.mkdir()
    made = run_bm(
        *make, "--sign-key", signers.fingerprints["trusted"], "--spool-dir", spool, env=env
    )
    assert made.returncode == 0, made.stderr
    assert list(spool.iterdir()) == []  # the spool and the signature are gone
    listing = httpx.get(
        f"{process.url}/api/stable/repository/collection/{COLLECTION}/version",
        headers={"Authorization": f"Bearer {token}"},
    ).json()["data"]["versions"]
    assert [v["signedBy"] for v in listing] == [signers.fingerprints["trusted"]]

    trusted_key = tmp_path / "trusted.asc"
    trusted_key.write_text(signers.public("trusted"))
    other_key = tmp_path / "other.asc"
    other_key.write_text(signers.public("second"))
    out = tmp_path / "out.bin"
    restore = ["restore", "-c", f"cat > '{out}'", "-p", str(keys.alice_secret)]
    restored = run_bm(*restore, "--verify-signature", "--trusted-key", trusted_key, env=env)
    assert restored.returncode == 0, restored.stderr
    assert "signature verified" in restored.stderr
    assert out.read_bytes() == data.read_bytes()

    # Signed by a key the restorer does not trust: refused before anything is decrypted.
    out.unlink()
    untrusted = run_bm(*restore, "--verify-signature", "--trusted-key", other_key, env=env)
    assert untrusted.returncode == 6, untrusted.stderr
    assert "--trusted-key" in untrusted.stderr
    assert not out.exists() or out.read_bytes() == b""

    # A compromised server replaces the object and the checksum it records: the SHA-256
    # check passes, the signature does not.
    stored = workdir / "storage" / COLLECTION / listing[0]["filename"]
    forged = bytearray(stored.read_bytes())
    forged[-10] ^= 0xFF
    stored.write_bytes(bytes(forged))
    with sqlite3.connect(workdir / "server.db") as db:
        db.execute(
            "UPDATE backup_versions SET sha256 = ? WHERE collection_id = ?",
            (hashlib.sha256(forged).hexdigest(), COLLECTION),
        )
    saved = tmp_path / "saved.gpg"
    download = ["download", "--save-path", saved, "--verify-signature"]
    tampered = run_bm(*download, "--trusted-key", trusted_key, env=env)
    assert tampered.returncode == 6, tampered.stderr
    assert "does not verify the downloaded data" in tampered.stderr
    assert "changed after the upload" in tampered.stderr
    assert not saved.exists()
