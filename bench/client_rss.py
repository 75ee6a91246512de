"""Memory of ``backup-maker make`` streaming a large command output to a live server.

Starts the server (SQLite, ``file://`` storage) on a loopback port in a temporary folder,
generates a GnuPG key, and runs ``backup-maker make -c "head -c SIZE /dev/urandom"`` once
per size. While each runs, a thread samples ``/proc`` every 20 ms: the resident memory of
the client's own process (Python), of its ``gpg`` child, and of the backup command (bash and
what it runs), each separately, with ``VmHWM`` (the kernel's own peak) read too, so that a
spike between samples still counts. Prints the peaks per size and whether the client's
peak grows with the size.

    .venv/bin/python bench/client_rss.py [--sizes 64M,1G] [--compress-level 0] [--keep]

Exit status 0 when every upload succeeded (the client verifies the SHA-256 the server
recorded) and the client's peak grew by at most 16 MiB from the smallest size to the
largest; 1 when it grew more; 2 when a run failed. Everything started or written is
removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

MiB = 1024 * 1024
USERNAME = "bench-admin"
PASSWORD = "bench-password"  # noqa: S105 - a throw-away account on a loopback server
JWT_SECRET = "bench-jwt-secret-that-is-long-enough-for-hs256"  # noqa: S105
COLLECTION = "bench"
GROWTH_LIMIT = 16 * MiB
SAMPLE_S = 0.02


class BenchError(RuntimeError):
    pass


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "")
    return int(float(number) * units[unit])


def human(size: float) -> str:
    return f"{size / MiB:.1f} MiB"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- /proc sampling


def status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in bytes (empty once it is gone)."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                key, _, rest = line.partition(":")
                if key in {"VmRSS", "VmHWM"}:
                    values[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return {}
    return values


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as file:
                found += [int(p) for p in file.read().split()]
        except FileNotFoundError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process (not of its children)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as file:
            return file.read().strip()
    except FileNotFoundError:
        return ""


@dataclass
class Peaks:
    """Peak resident memory per role: the client itself, gpg, the backup command."""

    bytes: dict[str, int] = field(default_factory=lambda: {"client": 0, "gpg": 0, "command": 0})
    samples: int = 0
    client_cpu_s: float = 0.0  # user + system time of the client process itself

    def note(self, role: str, values: dict[str, int]) -> None:
        self.bytes[role] = max(self.bytes[role], values.get("VmRSS", 0), values.get("VmHWM", 0))


class Sampler:
    """Samples the client process tree until it exits."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _walk(self, pid: int, role: str) -> None:
        for child in children(pid):
            name = command_name(child)
            if name.startswith("python"):
                continue  # a fork of the client between fork() and exec(): its pages are shared
            child_role = "gpg" if name == "gpg" else "command"
            if role == "command":  # everything below the command belongs to it
                child_role = "command"
            self.peaks.note(child_role, status_kib(child))
            self._walk(child, child_role)

    def _run(self) -> None:
        while not self._stop.is_set():
            own = status_kib(self.pid)
            if not own:
                return
            self.peaks.note("client", own)
            self.peaks.client_cpu_s = max(self.peaks.client_cpu_s, cpu_seconds(self.pid))
            self._walk(self.pid, "client")
            self.peaks.samples += 1
            time.sleep(SAMPLE_S)

    def stop(self) -> Peaks:
        self._stop.set()
        self._thread.join(5)
        return self.peaks


# --------------------------------------------------------------------------- server and key


class Environment:
    """The server, a key pair and a token, in one temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.gnupg = Path(tempfile.mkdtemp(prefix="bm-bench-gpg-"))
        self.public_key = root / "public.asc"
        self.token = ""

    def start(self) -> None:
        from backup_repository.services.passwords import PasswordHasher

        config = self.root / "config"
        config.mkdir()
        documents = [
            {
                "apiVersion": "backups.riotkit.org/v1alpha1",
                "kind": "BackupUser",
                "metadata": {"name": USERNAME},
                "spec": {
                    "email": f"{USERNAME}@example.org",
                    "password": PasswordHasher(1).hash_sync(PASSWORD),
                    "roles": ["systemAdmin"],
                },
            },
            {
                "apiVersion": "backups.riotkit.org/v1alpha1",
                "kind": "BackupCollection",
                "metadata": {"name": COLLECTION},
                "spec": {
                    "description": "client memory benchmark",
                    "filenameTemplate": "bench-${version}.gpg",
                    "maxBackupsCount": 2,
                    "maxOneVersionSize": "4G",
                    "maxCollectionSize": "8G",
                    "strategyName": "fifo",
                    "strategySpec": {},
                    "accessControl": [],
                },
            },
        ]
        (config / "objects.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
        log = (self.root / "server.log").open("wb")
        self.server = subprocess.Popen(
            [
                sys.executable, "-m", "backup_repository", f"--listen=127.0.0.1:{self.port}",
                "--db-url", f"sqlite:///{self.root / 'db.sqlite'}", "--jwt-secret-key", JWT_SECRET,
                "--config-local-path", str(config),
                "--storage-url", (self.root / "storage").as_uri(),
                "--rate-default-limit=0", "--rate-auth-limit=0", "--log-level=warning",
            ],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("BR_")},
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while True:
            if self.server.poll() is not None:
                raise BenchError(f"the server exited: {(self.root / 'server.log').read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchError("the server did not start within 60 s")
            time.sleep(0.1)
        answer = httpx.post(
            self.url + "/api/stable/auth/login",
            json={"username": USERNAME, "password": PASSWORD},
            timeout=30,
        )
        if answer.status_code != 200:
            raise BenchError(f"login failed: {answer.text}")
        self.token = str(answer.json()["data"]["token"])
        os.chmod(self.gnupg, 0o700)
        gpg = ["gpg", "--homedir", str(self.gnupg), "--batch", "--yes", "--quiet"]
        subprocess.run(
            [*gpg, "--passphrase", "", "--quick-generate-key", "Bench <bench@example.org>",
             "future-default", "default", "never"],
            check=True, capture_output=True,
        )  # fmt: skip
        exported = subprocess.run(
            [*gpg, "--armor", "--export", "bench@example.org"], check=True, capture_output=True
        ).stdout
        self.public_key.write_bytes(exported)

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()
        subprocess.run(
            ["gpgconf", "--homedir", str(self.gnupg), "--kill", "all"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.gnupg, ignore_errors=True)

    def versions(self) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.url}/api/stable/repository/collection/{COLLECTION}/version",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        versions: list[dict[str, Any]] = answer.json()["data"]["versions"]
        return versions


# --------------------------------------------------------------------------- the run


@dataclass
class Result:
    size: int
    seconds: float
    peaks: Peaks
    uploaded: int


def run_make(env: Environment, size: int, compress_level: str | None) -> Result:
    command = [
        sys.executable, "-m", "backup_repository.client", "make", "-u", env.url,
        "-i", COLLECTION, "-k", str(env.public_key), "-c", f"head -c {size} /dev/urandom",
        "--log-level", "warn",
    ]  # fmt: skip
    if compress_level is not None:
        command += ["--compress-level", compress_level]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "BM_AUTH_TOKEN": env.token},
    )
    sampler = Sampler(process.pid)
    _, stderr = process.communicate()
    seconds = time.monotonic() - started
    peaks = sampler.stop()
    if process.returncode != 0:
        raise BenchError(f"backup-maker make failed ({process.returncode}): {stderr.decode()}")
    latest = env.versions()[0]
    return Result(size=size, seconds=seconds, peaks=peaks, uploaded=int(latest["filesize"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64M,1G", help="comma-separated sizes (K/M/G)")
    parser.add_argument(
        "--compress-level", help="passed to make (0: gpg does not compress; default gpg's)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    sizes = sorted(parse_size(s) for s in args.sizes.split(",") if s.strip())
    if not sizes:
        parser.error("--sizes is empty")
    root = Path(tempfile.mkdtemp(prefix="bm-client-rss-"))
    if shutil.disk_usage(root).free < sizes[-1] * 1.2:
        print(f"not enough free space in {root} for {human(sizes[-1])}", file=sys.stderr)
        return 2
    env = Environment(root)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    results: list[Result] = []
    try:
        env.start()
        for size in sizes:
            result = run_make(env, size, args.compress_level)
            results.append(result)
            peaks = result.peaks.bytes
            print(
                f"{human(size):>12} in {result.seconds:6.1f} s "
                f"({size / MiB / result.seconds:6.1f} MiB/s of plaintext, "
                f"{human(result.uploaded)} uploaded): client {human(peaks['client'])}, "
                f"gpg {human(peaks['gpg'])}, command {human(peaks['command'])}; "
                f"client CPU {result.peaks.client_cpu_s:.1f} s ({result.peaks.samples} samples)",
                flush=True,
            )
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"run failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 2
    finally:
        env.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    growth = results[-1].peaks.bytes["client"] - results[0].peaks.bytes["client"]
    gpg_growth = results[-1].peaks.bytes["gpg"] - results[0].peaks.bytes["gpg"]
    print(
        f"client peak growth {human(results[0].size)} -> {human(results[-1].size)}: "
        f"{human(growth)} (limit {human(GROWTH_LIMIT)}); gpg: {human(gpg_growth)}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "size": r.size,
                        "seconds": r.seconds,
                        "uploaded": r.uploaded,
                        "client_cpu_s": r.peaks.client_cpu_s,
                        **r.peaks.bytes,
                    }
                    for r in results
                ],
                indent=2,
            )
            + "\n"
        )
    return 0 if growth <= GROWTH_LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
