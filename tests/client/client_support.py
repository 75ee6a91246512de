"""Helpers of the client tests: real GnuPG keys exported to files, a live server with many
collections, and ``backup-maker`` run as a separate process."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gpg_fixtures import GpgHome, gpg_binary
from support import ServerProcess, collection_doc, start_server, user_doc, write_config

PASSPHRASE = "client test passphrase"
CAROL = "Carol Backup <carol@example.org>"
CAROL_EMAIL = "carol@example.org"
COLLECTIONS = 60
API = "/api/stable/repository/collection"
CLIENT_TIMEOUT_S = 180


@dataclass(frozen=True)
class KeyFiles:
    """Exported keys: alice (no passphrase), bob (no passphrase, the "wrong" key) and carol
    (protected by :data:`PASSPHRASE`)."""

    folder: Path
    alice_public: Path
    alice_public_binary: Path
    alice_secret: Path
    bob_secret: Path
    carol_public: Path
    carol_secret: Path
    garbage: Path


def export_keys(folder: Path) -> KeyFiles:
    """Generate the keys in a throw-away home and export them to ``folder``."""
    home = GpgHome.create(Path(tempfile.mkdtemp(prefix="bm-test-gpg-")))
    try:
        home.run(
            "--passphrase", PASSPHRASE, "--quick-generate-key", CAROL, "future-default",
            "default", "never",
        )  # fmt: skip
        files = {
            "alice_public": home.run("--armor", "--export", "alice@example.org"),
            "alice_public_binary": home.run("--export", "alice@example.org"),
            "alice_secret": home.run("--armor", "--export-secret-keys", "alice@example.org"),
            "bob_secret": home.run("--export-secret-keys", "bob@example.org"),  # binary
            "carol_public": home.run("--export", CAROL_EMAIL),
            "carol_secret": home.run(
                "--passphrase", PASSPHRASE, "--armor", "--export-secret-keys", CAROL_EMAIL
            ),
        }
    finally:
        home.close()
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, data in files.items():
        path = folder / f"{name}.key"
        path.write_bytes(data)
        paths[name] = path
    garbage = folder / "garbage.key"
    garbage.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n")
    return KeyFiles(folder=folder, garbage=garbage, **paths)


def server_documents(count: int = COLLECTIONS) -> list[dict[str, Any]]:
    """An admin, an uploader and a downloader, and ``count`` collections col-0..col-N
    where the uploader may upload and the downloader may download."""
    acl = [
        {"name": "uploader", "type": "user", "roles": ["backupUploader"]},
        {"name": "downloader", "type": "user", "roles": ["backupDownloader"]},
    ]
    docs: list[dict[str, Any]] = [
        user_doc("admin", "admin-pass", ["systemAdmin"]),
        user_doc("uploader", "uploader-pass", []),
        user_doc("downloader", "downloader-pass", []),
    ]
    for index in range(count):
        doc = collection_doc(f"col-{index}", acl=acl)
        doc["spec"].update(maxBackupsCount=3, maxOneVersionSize="4M", maxCollectionSize="16M")
        docs.append(doc)
    small = collection_doc("small", acl=acl)  # max 1M + 2M extra for one upload
    docs.append(small)
    return docs


@dataclass
class LiveServer:
    process: ServerProcess
    storage: Path
    _counter: Iterator[int] = field(default_factory=itertools.count)
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.process.url

    def token(self, user: str = "admin") -> str:
        if user not in self._tokens:
            response = httpx.post(
                self.url + "/api/stable/auth/login",
                json={"username": user, "password": f"{user}-pass"},
                timeout=30,
            )
            assert response.status_code == 200, response.text
            self._tokens[user] = response.json()["data"]["token"]
        return self._tokens[user]

    def headers(self, user: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user)}"}

    def new_collection(self) -> str:
        index = next(self._counter)
        assert index < COLLECTIONS, "raise COLLECTIONS in client_support.py"
        return f"col-{index}"

    def versions(self, collection: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}{API}/{collection}/version", headers=self.headers())
        assert response.status_code == 200, response.text
        versions: list[dict[str, Any]] = response.json()["data"]["versions"]
        return versions

    def download(self, collection: str, version: str = "latest") -> bytes:
        response = httpx.get(
            f"{self.url}{API}/{collection}/version/{version}", headers=self.headers(), timeout=60
        )
        assert response.status_code == 200, response.text
        return response.content

    def upload(self, collection: str, data: bytes) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}{API}/{collection}/version",
            content=data,
            headers=self.headers(),
            timeout=60,
        )
        assert response.status_code == 200, response.text
        version: dict[str, Any] = response.json()["data"]["version"]
        return version

    def stored_objects(self, collection: str) -> list[Path]:
        """Files under the collection's folder in the storage (staging files included)."""
        folder = self.storage / collection
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def start_live_server(workdir: Path) -> LiveServer:
    config = workdir / "config"
    write_config(config, server_documents())
    process = start_server(workdir, config)
    return LiveServer(process=process, storage=workdir / "storage")


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any BM_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BM_")}
    env.update(extra or {})
    return env


def run_bm(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    timeout: float = CLIENT_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """``backup-maker ARGS`` in a process of its own (stdin not a terminal, so no progress
    and the unattended behaviour)."""
    result = subprocess.run(
        [sys.executable, "-m", "backup_repository.client", *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=clean_environment(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 (files) or "dir" / "link:target", for comparing trees."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            found[relative] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            found[relative] = "dir"
        else:
            found[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
            found[relative + ":mode"] = oct(path.stat().st_mode & 0o777)
    return found


def make_tree(root: Path, seed: int = 1) -> Path:
    """A small folder with text, binary, empty and nested files and a symlink."""
    import random

    rng = random.Random(seed)
    (root / "etc" / "app").mkdir(parents=True)
    (root / "var" / "lib" / "db").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "etc" / "app" / "config.yaml").write_text("name: app\nreplicas: 3\n")
    (root / "var" / "lib" / "db" / "data.bin").write_bytes(rng.randbytes(300_000))
    (root / "var" / "lib" / "db" / "empty").write_bytes(b"")
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (root / "zażółć gęślą jaźń.txt").write_text("unicode name\n")
    (root / "link").symlink_to("etc/app/config.yaml")
    return root


def encrypt_to(public_key: Path, data: bytes, *, compress: bool = True) -> bytes:
    """``data`` encrypted by the real gpg to the key in ``public_key`` (in a throw-away
    keyring)."""
    real = gpg_binary()
    assert real is not None
    home = GpgHome(path=Path(tempfile.mkdtemp(prefix="bm-enc-")), binary=real)
    try:
        home.run("--import", str(public_key))
        listing = home.run("--with-colons", "--list-keys").decode()
        fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")
        )
        extra = [] if compress else ["--compress-algo", "none"]
        return home.run(*extra, "--encrypt", "--recipient", fingerprint, data=data)
    finally:
        home.close()  # also stops the gpg-agent the import started
