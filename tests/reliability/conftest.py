"""Fixtures of the reliability suites: dependencies these tests break on purpose.

Each is the test's own, never a shared service: a PostgreSQL cluster (``initdb`` +
``pg_ctl``), a SeaweedFS that can be frozen, killed and restarted on the same ports, a
small filesystem (tmpfs, else a loop-mounted image) that can be filled up or made
read-only, and a proxy that breaks a database connection at the worst moment. Each skips
with a reason when it cannot be set up here, or fails under ``BR_REQUIRE_SERVICES=1``.
The classes behind them are in ``reliability_support.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_support import (
    CommitCuttingProxy,
    PgpBodies,
    PrivatePostgres,
    PrivateSeaweedFS,
    SmallFilesystem,
    mount_small_filesystem,
    postgres_bin_dir,
)

from gpg_fixtures import GpgHome
from storage_fixtures import SeaweedFSUnavailable, start_seaweedfs
from support import free_port, require_service

# -- a private PostgreSQL ----------------------------------------------------------------------


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster (started). Run as the ``postgres`` account when the
    tests run as root, because initdb refuses root."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        require_service("PostgreSQL binaries", "initdb/pg_ctl are not installed")
    run_as: list[str] = []
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            import pwd

            account = pwd.getpwnam("postgres")
        except KeyError:
            require_service("PostgreSQL", "running as root and there is no postgres account")
        if runuser is None:
            require_service("PostgreSQL", "running as root and runuser is missing")
        run_as = [runuser, "-u", "postgres", "--"]
        owner = (account.pw_uid, account.pw_gid)
    # A short path of its own in the temp folder: pytest's tmp_path is private to root.
    base = Path(tempfile.mkdtemp(prefix="br-pg-"))
    if owner is not None:
        os.chown(base, *owner)
    cluster = PrivatePostgres(bin_dir, base / "data", free_port(), run_as)
    try:
        try:
            cluster.initdb()
            cluster.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            require_service("private PostgreSQL", f"cannot start a private PostgreSQL: {exc}")
        yield cluster
    finally:
        if cluster.running():
            with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
                cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


# -- a private SeaweedFS -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_seaweedfs() -> Iterator[PrivateSeaweedFS]:
    """Not the session's shared endpoint: this one gets frozen and killed. Shared by the
    tests of one module (each uses a prefix of its own); ``ensure_running`` brings it back
    when a test left it stopped."""
    directory = Path(tempfile.mkdtemp(prefix="br-weed-"))
    try:
        try:
            server = start_seaweedfs(directory)
        except SeaweedFSUnavailable as exc:
            require_service("SeaweedFS", str(exc))
        private = PrivateSeaweedFS(server)
        try:
            yield private
        finally:
            private.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- a small filesystem ------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[SmallFilesystem]:
    """An 8 MiB filesystem of its own (root can write into a chmod 0500 folder, so a full
    or read-only filesystem is the honest way to refuse writes)."""
    size = 8 * 1024 * 1024
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    try:
        kind = mount_small_filesystem(mount_point, tmp_path / "small-fs.img", size)
    except RuntimeError as exc:
        require_service("a small filesystem", f"cannot mount a small filesystem here: {exc}")
    try:
        yield SmallFilesystem(mount_point, size, kind)
    finally:
        # Lazy: a server the test failed to stop must not keep the mount alive forever.
        subprocess.run(
            ["umount", "-l", str(mount_point)], capture_output=True, check=False, timeout=30
        )


@pytest.fixture(scope="session")
def pgp_bodies(gpg_home: GpgHome) -> PgpBodies:
    return PgpBodies([gpg_home.encrypt(f"backup number {i}".encode()) for i in range(4)])


# -- a connection that breaks at the worst moment ----------------------------------------------


@pytest.fixture
def commit_cutting_proxy(postgres_url: str) -> Iterator[tuple[CommitCuttingProxy, str]]:
    """The proxy in front of the shared PostgreSQL, and a URL of the test's fresh database
    through it."""
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    proxy = CommitCuttingProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        yield (
            proxy,
            url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        )
    finally:
        proxy.close()
