"""Server time of the web console's pages with a large data set: 100 collections holding
10,000 live versions (100 each, a stored object each, each with an integrity result), one
systemAdmin who sees them all.

The app runs in process (httpx over ASGI, no network), so the figures are the server's own
time per page: authentication of the session cookie, the database queries, the checks and
the rendering. Each page is asked for ``--repeat`` times after two warm-up requests; the
median, the fastest and the slowest are printed, in wall-clock time and in CPU time of the
process (on a busy machine the wall-clock time includes waiting for a CPU). The server's
background work (notifications, session purge) is off while pages are timed.

    .venv/bin/python bench/console.py [--collections 100] [--versions 100] [--repeat 20]
                                      [--db-url postgresql://postgres@127.0.0.1:5432/bench]

SQLite in a temporary folder by default; with ``--db-url`` an empty PostgreSQL database
(its tables are created; give one that can be thrown away). Exit status 0 when every
page's median is under ``--budget`` milliseconds (default 100), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import insert

from backup_repository.db.engine import create_engine, migrate
from backup_repository.db.tables import backup_versions, collection_states, version_checks
from backup_repository.http.app import create_app
from backup_repository.services.passwords import PasswordHasher
from backup_repository.settings import Settings

USER = "bench-admin"
# Made anew for each run: nothing outside the run uses them.
PASSWORD = secrets.token_urlsafe(16)
SECRET = secrets.token_urlsafe(48)


def documents(collections: int, versions: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "backups.riotkit.org/v1alpha1",
            "kind": "BackupUser",
            "metadata": {"name": USER},
            "spec": {
                "email": "bench@example.org",
                "password": PasswordHasher(1).hash_sync(PASSWORD),
                "roles": ["systemAdmin"],
            },
        }
    ]
    for index in range(collections):
        docs.append(
            {
                "apiVersion": "backups.riotkit.org/v1alpha1",
                "kind": "BackupCollection",
                "metadata": {"name": f"c{index:03d}"},
                "spec": {
                    "description": f"collection {index}",
                    "filenameTemplate": f"c{index:03d}-${{version}}.gpg",
                    "maxBackupsCount": versions,
                    "maxOneVersionSize": "1M",
                    "maxCollectionSize": "1G",
                    "strategyName": "fifo",
                    "strategySpec": {},
                    # 24 different schedules, as a real fleet has a few.
                    "windows": [{"from": f"0 {index % 24} * * *", "duration": "1h"}],
                    "accessControl": [],
                },
            }
        )
    return docs


async def fill(db_url: str, storage: Path, collections: int, versions: int) -> None:
    """The versions, their objects and integrity results, written directly (an upload
    each would take minutes and measure the upload, not the console)."""
    engine = create_engine(db_url)
    await migrate(engine)
    now = datetime.now(UTC).replace(microsecond=0)
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    states: list[dict[str, Any]] = []
    for index in range(collections):
        name = f"c{index:03d}"
        states.append({"collection_id": name, "last_version_number": versions, "updated_at": now})
        for number in range(1, versions + 1):
            data = os.urandom(64 + number)
            key = f"{name}/{name}-{number}.gpg"
            (storage / name).mkdir(parents=True, exist_ok=True)
            (storage / key).write_bytes(data)
            created = now - timedelta(hours=versions - number)
            version_id = str(uuid.uuid4())
            digest = hashlib.sha256(data).hexdigest()
            rows.append(
                {
                    "id": version_id,
                    "collection_id": name,
                    "version_number": number,
                    "filename": f"{name}-{number}.gpg",
                    "storage_key": key,
                    "filesize": len(data),
                    "sha256": digest,
                    "uploaded_by_session_id": "0" * 64,
                    "user_name": USER,
                    "created_at": created,
                    "updated_at": created,
                }
            )
            checks.append(
                {
                    "version_id": version_id,
                    "collection_id": name,
                    "version_number": number,
                    "checked_at": now,
                    "status": "ok",
                    "detail": "",
                    "actual_size": len(data),
                    "actual_sha256": digest,
                }
            )
    async with engine.begin() as connection:
        await connection.execute(insert(collection_states), states)
        for start in range(0, len(rows), 1000):
            await connection.execute(insert(backup_versions), rows[start : start + 1000])
            await connection.execute(insert(version_checks), checks[start : start + 1000])
    await engine.dispose()


async def measure(
    settings: Settings, repeat: int, collections: int, versions: int
) -> dict[str, list[float]]:
    app = create_app(settings)
    timings: dict[str, list[float]] = {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            page = await client.get("/ui/login")
            token = re.search(r'name="csrf_token" value="([^"]*)"', page.text)
            assert token, page.text
            response = await client.post(
                "/ui/login", data={"username": USER, "password": PASSWORD, "csrf_token": token[1]}
            )
            assert response.status_code == 303, response.text
            middle = f"c{collections // 2:03d}"
            pages = {
                "login page": "/ui/login?next=/ui/",
                "dashboard": "/ui/",
                "dashboard, filtered": f"/ui/?name={middle[:3]}",
                "collection page": f"/ui/collections/{middle}",
                "download (1 version)": f"/ui/collections/{middle}/versions/{versions}/download",
            }
            for label, path in pages.items():
                if label == "login page":
                    cookies = dict(client.cookies)
                    client.cookies.clear()
                for _ in range(2):
                    assert (await client.get(path)).status_code == 200
                spent: list[float] = []
                cpu: list[float] = []
                for _ in range(repeat):
                    started, started_cpu = time.perf_counter(), time.process_time()
                    response = await client.get(path)
                    spent.append((time.perf_counter() - started) * 1000)
                    cpu.append((time.process_time() - started_cpu) * 1000)
                    assert response.status_code == 200, (path, response.status_code)
                timings[label] = spent
                timings[label + " (CPU)"] = cpu
                if label == "login page":
                    client.cookies.update(cookies)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collections", type=int, default=100)
    parser.add_argument("--versions", type=int, default=100, help="per collection")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--budget", type=float, default=100.0, help="milliseconds")
    parser.add_argument("--db-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="br-console-bench-") as folder:
        tmp = Path(folder)
        storage = tmp / "storage"
        storage.mkdir()
        config = tmp / "config"
        config.mkdir()
        (config / "objects.yaml").write_text(
            yaml.safe_dump_all(documents(args.collections, args.versions), sort_keys=False)
        )
        db_url = args.db_url or f"sqlite:///{tmp / 'db.sqlite'}"
        started = time.perf_counter()
        asyncio.run(fill(db_url, storage, args.collections, args.versions))
        print(
            f"data set: {args.collections} collections, "
            f"{args.collections * args.versions} versions "
            f"({time.perf_counter() - started:.1f} s to build); database "
            f"{db_url.split(':', 1)[0]}"
        )
        settings = Settings(
            db_url=db_url,
            jwt_secret_key=SECRET,
            storage_url=storage.as_uri(),
            config_local_path=config,
            rate_default_limit=0,
            rate_auth_limit=0,
            rate_collection_health_limit=0,
            rate_server_health_limit=0,
            log_level="warning",
            # No background work in the same process while pages are timed.
            notify_interval=None,
            session_retention=None,
        )
        timings = asyncio.run(measure(settings, args.repeat, args.collections, args.versions))
    worst = 0.0
    print(f"{'page':<28}{'median ms':>10}{'min ms':>10}{'max ms':>10}")
    for label, spent in timings.items():
        median = statistics.median(spent)
        if not label.endswith("(CPU)"):
            worst = max(worst, median)
        print(f"{label:<28}{median:>10.1f}{min(spent):>10.1f}{max(spent):>10.1f}")
    if worst > args.budget:
        print(f"over the budget of {args.budget:.0f} ms", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
