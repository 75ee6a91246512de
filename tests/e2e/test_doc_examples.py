"""Every shell block of README.md and docs/*.md that runs ``curl``, ``backup-maker`` or
``backup-repository`` is run against a live server, so an example cannot drift from the
server. A block that fails names its file and line.

How a block is made runnable, mechanically (nothing else in it is changed):

- the URLs of the examples (``https://backups.example.org``, ``http://127.0.0.1:8080``)
  and the placeholder ``URL`` after ``-u`` become the live server's URL;
- ``<token>`` becomes ``$TOKEN``, a token of ``admin`` taken before the block runs;
- an elided password (``"password": "…"``) becomes the account's password
  (:data:`PASSWORDS`);
- a line ``make run`` is dropped: the test has started the server, with the example
  configuration ``make run`` uses (``examples/config``) and the documentation's accounts
  and collections (:func:`doc_documents`);
- the block runs under ``bash -euo pipefail`` in a folder of its own, with ``HOME`` there,
  a throw-away GnuPG home, the server's settings as ``BR_*`` variables (for
  ``backup-repository`` subcommands), and the files the examples read: ``dump.sql.gpg``
  (real gpg output) and ``some/folder``;
- ``curl`` is wrapped to record each answer's status: a command whose line ends with a
  comment naming a status (``# 401``) must get that status, every other one a 2xx.

Blocks that cannot run here are listed in :data:`NOT_RUN` with the reason, found by their
file and first line; a listed block that no longer exists fails the test, so the list
cannot go stale."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpg_fixtures import make_encrypted
from support import ServerProcess, collection_doc, start_server, user_doc, write_config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PASSWORD = "docs-example-pass"
# The password of each account an example logs in with ("…" in the docs).
PASSWORDS = {"admin": "admin", "alice": PASSWORD, "alice$ci": PASSWORD}
COMMAND = re.compile(r"(?:^|[\s($|;&])(curl|backup-maker|backup-repository)\s")
EXAMPLE_URLS = ("https://backups.example.org", "http://127.0.0.1:8080")
SHELL = ("sh", "bash", "shell")
# Blocks without a language, or labelled as a terminal session, that run one of the commands
# would escape the test: they must be labelled ``sh``.
UNMARKED = ("", "console", "text", "shell-session")
UNLABELLED: list[Block] = []
EXPECTED_STATUS = re.compile(r"#\s*(\d{3})\s*$")

# (file, how the block's first line starts): why the block is not run here.
NOT_RUN: dict[tuple[str, str], str] = {
    ("README.md", "pip install ."): "a production install: PostgreSQL at the host db",
    ("README.md", "export BM_URL="): "reads /srv/data and writes /srv/restored on the host",
    ("docs/client.md", "pip install ."): "installs the package",
    ("docs/client.md", "# Once, on a safe machine"): (
        "generates a key in the user's keyring and dumps a PostgreSQL database mydb"
    ),
    ("docs/client.md", "backup-maker login -u URL --username alice "): (
        "prompts at a terminal and writes /etc and /run"
    ),
    ("docs/client.md", "export BM_PASSPHRASE_FILE="): "restores into a PostgreSQL database mydb",
    ("docs/api.md", "gpg --local-user uploader@example.org"): (
        "needs a collection with trustedUploaders and the uploader's signing key "
        "(tests/integration/test_signed_uploads.py sends both forms)"
    ),
    ("docs/client.md", 'backup-maker make -c "pg_dump -Fc app"'): (
        "dumps a PostgreSQL database app (tests/client/test_signed_client.py runs both)"
    ),
    ("docs/deployment.md", "kubectl apply -k deploy/crds"): "kubectl",
    ("docs/deployment.md", "docker volume create"): "docker",
    ("docs/deployment.md", "helm install"): "helm",
    ("docs/deployment.md", "# 1. edit deployment.yaml"): "kubectl",
    ("docs/deployment.md", "# release"): "kubeseal",
    ("docs/migration.md", "backup-repository import-reference"): (
        "needs a reference deployment's database and bucket"
    ),
}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence
    text: str

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))

    @property
    def first_line(self) -> str:
        return self.text.strip().splitlines()[0].strip()

    def __str__(self) -> str:
        return f"{self.name}:{self.line}"


def shell_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        index = 0
        while index < len(lines):
            fence = re.match(r"\s*```(\w*)\s*$", lines[index])
            if fence is None:
                index += 1
                continue
            start, body = index, []
            index += 1
            while index < len(lines) and not lines[index].strip().startswith("```"):
                body.append(lines[index])
                index += 1
            index += 1
            text = "\n".join(body)
            if fence.group(1) in SHELL and COMMAND.search(text):
                blocks.append(Block(path, start + 1, _dedent(text)))
            elif fence.group(1) in UNMARKED and COMMAND.search(text):
                UNLABELLED.append(Block(path, start + 1, text))
    return blocks


def _dedent(text: str) -> str:
    lines = text.splitlines()
    margin = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[margin:] for line in lines)


def not_run(block: Block) -> tuple[str, str] | None:
    """The entry of NOT_RUN that covers ``block``, if any."""
    for name, start in NOT_RUN:
        if block.name == name and block.first_line.startswith(start):
            return (name, start)
    return None


BLOCKS = shell_blocks()
RUN = [block for block in BLOCKS if not_run(block) is None]


def doc_documents() -> list[dict[str, Any]]:
    """The accounts and collections the docs' examples use, besides examples/config."""
    return [
        user_doc(
            "alice",
            PASSWORD,
            [],
            access_keys=[
                {
                    "name": "ci",
                    "password": PASSWORD,
                    "objects": [
                        {"name": "db-prod", "type": "collection", "roles": ["backupUploader"]}
                    ],
                }
            ],
        ),
        collection_doc(
            "db-prod", acl=[{"name": "alice", "type": "user", "roles": ["collectionManager"]}]
        ),
        collection_doc("wiki"),
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("doc-examples")
    config = workdir / "config"
    shutil.copytree(ROOT / "examples" / "config", config)
    write_config(config, doc_documents())
    process = start_server(workdir, config)
    try:
        yield process
    finally:
        process.stop()
    assert "Traceback" not in process.log(), process.log()


def admin_token(server: ServerProcess) -> str:
    response = httpx.post(
        server.url + "/api/stable/auth/login", json={"username": "admin", "password": "admin"}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["data"]["token"]
    return token


def runnable(text: str, url: str) -> str:
    for example in EXAMPLE_URLS:
        text = text.replace(example, url)
    text = re.sub(r"(-u\s+)URL\b", rf"\g<1>{url}", text)
    text = text.replace("<token>", "$TOKEN")
    text = re.sub(
        r'"username": "([^"]+)", "password": "…"',
        lambda match: f'"username": "{match[1]}", "password": "{PASSWORDS[match[1]]}"',
        text,
    )
    return "\n".join(line for line in text.splitlines() if line.strip() != "make run")


def expected_statuses(text: str) -> list[str]:
    """One expectation per curl call, in order: a status named by the comment at the end of
    its command, or "2xx"."""
    expected = []
    for command in re.sub(r"\\\n", " ", text).splitlines():
        comment = EXPECTED_STATUS.search(command)
        calls = len(re.findall(r"(?:^|[\s($|;&])curl\s", command.split(" #")[0]))
        expected += [comment.group(1) if comment else "2xx"] * calls
    return expected


def server_environment(server: ServerProcess) -> dict[str, str]:
    """The server's command-line settings as BR_* variables."""
    args = server.args
    values = {
        "BR_DB_URL": args[args.index("--db-url") + 1],
        "BR_STORAGE_DRIVER_URL": args[args.index("--storage-url") + 1],
        "BR_CONFIG_LOCAL_PATH": args[args.index("--config-local-path") + 1],
    }
    return values


def test_every_command_block_is_labelled_sh() -> None:
    assert not UNLABELLED, [str(block) for block in UNLABELLED]


def test_every_listed_block_still_exists() -> None:
    found = {not_run(block) for block in BLOCKS}
    assert set(NOT_RUN) <= found, sorted(set(NOT_RUN) - found)
    assert RUN, "no block to run"


@pytest.mark.parametrize("block", RUN, ids=str)
def test_doc_example_runs(server: ServerProcess, block: Block, tmp_path: Path) -> None:
    (tmp_path / "some" / "folder").mkdir(parents=True)
    (tmp_path / "some" / "folder" / "data.txt").write_text("rows\n")
    (tmp_path / "dump.sql.gpg").write_bytes(
        make_encrypted(tmp_path / "keys", b"-- a dump\n" * 100, armor=False, symmetric=False)
    )
    gnupg = tmp_path / "gnupg-home"
    gnupg.mkdir(mode=0o700)
    statuses = tmp_path / "curl-statuses"
    script = (
        'curl() { command curl -w "%{stderr}%{http_code}\\n" "$@" 2>>"$CURL_STATUSES"; }\n'
        + runnable(block.text, server.url)
        + "\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BR_", "BM_"))}
    env.update(server_environment(server))
    env.update(
        HOME=str(tmp_path),
        GNUPGHOME=str(gnupg),
        TOKEN=admin_token(server),
        CURL_STATUSES=str(statuses),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    where = f"{block} failed:\n{script}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, where
    got = statuses.read_text().split() if statuses.exists() else []
    wanted = expected_statuses(block.text)
    assert len(got) == len(wanted), f"{where}\nstatuses {got}, expected {wanted}"
    for status, expected in zip(got, wanted, strict=True):
        ok = status.startswith("2") if expected == "2xx" else status == expected
        assert ok, f"{where}\nstatuses {got}, expected {wanted}"
