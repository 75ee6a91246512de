"""Storage URLs: the reference's Go-Cloud-style URLs, turned into what obstore needs.

Accepted forms (``--storage-url`` / ``BR_STORAGE_DRIVER_URL``)::

    file:///var/lib/backups
    memory://                                   (also mem://; one private store per open)
    s3://bucket[/prefix]?endpoint=host:9000&disableSSL=true&s3ForcePathStyle=true&region=eu-central-1
    gs://bucket[/prefix][?disableSSL=true]     (plain http:// to a GCS-compatible endpoint)
    azblob://container[/prefix]?domain=blob.core.windows.net&protocol=https&localemulator=false

Credentials never travel in the URL; they come from the environment variables each cloud's
tools read (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, web
identity and container credentials; ``GOOGLE_APPLICATION_CREDENTIALS``;
``AZURE_STORAGE_ACCOUNT``/``AZURE_STORAGE_KEY`` or ``AZURE_STORAGE_SAS_TOKEN``). obstore
reads most of them itself when the store is built; this module only maps the Go-Cloud
spellings obstore does not know.

Parsing is pure apart from reading the environment: nothing touches the network or the
disk. Every error is a :class:`ValueError` whose message names the scheme and query keys but
never echoes a value, so it can be logged as is.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

DEFAULT_S3_REGION = "us-east-1"
DEFAULT_AZURE_DOMAIN = "blob.core.windows.net"

SUPPORTED_FORMS = (
    "file:///absolute/path, memory://, "
    "s3://bucket[/prefix]?endpoint=host:port&disableSSL=true&s3ForcePathStyle=true&region=..., "
    "gs://bucket[/prefix], azblob://container[/prefix]"
)

# Query keys per scheme. Keys Go-Cloud accepts that change nothing for us (which SDK
# generation to use, signing options of signed URLs we never create) are accepted and
# ignored, so a reference configuration keeps working.
_S3_KEYS = frozenset({"endpoint", "disableSSL", "s3ForcePathStyle", "region", "awssdk"})
_GS_KEYS = frozenset({"access_id", "private_key_path", "disableSSL"})
_AZURE_KEYS = frozenset({"domain", "protocol", "localemulator"})
_NO_KEYS: frozenset[str] = frozenset()

# Query keys whose values are shown by redact_storage_url(); any other value is hidden.
_VISIBLE_KEYS = _S3_KEYS | _AZURE_KEYS

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # Go's strconv.ParseBool
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,254}$")


@dataclass(frozen=True)
class FileLocation:
    """A folder on a local (or mounted) disk; created when the store is opened."""

    root: Path


@dataclass(frozen=True)
class MemoryLocation:
    """A process-private in-memory store (tests, ``--dev`` experiments)."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    region: str
    endpoint: str | None
    """Full endpoint URL (scheme, host, port; the bucket included for virtual-hosted
    requests), or None for AWS's own endpoint of ``region``."""
    virtual_hosted: bool
    allow_http: bool


@dataclass(frozen=True)
class GCSLocation:
    bucket: str
    prefix: str
    allow_http: bool = False
    """Plain http:// to the endpoint: only for an emulator or a GCS-compatible store named
    by ``gcs_base_url`` in the service-account file (``GOOGLE_SERVICE_ACCOUNT``)."""


@dataclass(frozen=True)
class AzureLocation:
    container: str
    prefix: str
    account_name: str | None
    account_key: str | None = field(default=None, repr=False)
    endpoint: str | None = None
    allow_http: bool = False
    use_emulator: bool = False


StorageLocation = FileLocation | MemoryLocation | S3Location | GCSLocation | AzureLocation


def parse_storage_url(url: str, *, environ: Mapping[str, str] | None = None) -> StorageLocation:
    """Parse ``url`` into a :data:`StorageLocation`; ``environ`` defaults to ``os.environ``.

    Raises :class:`ValueError` for unsupported schemes, unknown query keys, credentials in
    the URL and malformed values.
    """
    env = os.environ if environ is None else environ
    if not url or url != url.strip():
        raise ValueError(
            f"storage URL must not be empty or padded with spaces; use {SUPPORTED_FORMS}"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"storage URL is malformed; use {SUPPORTED_FORMS}") from None
    scheme = parts.scheme.lower()
    if parts.fragment:
        raise ValueError(f"{scheme}:// storage URL must not have a #fragment")
    if "@" in parts.netloc:
        raise ValueError(
            f"{scheme}:// storage URL must not carry credentials; set them in the "
            "environment (see docs/storage.md)"
        )
    if port is not None:
        raise ValueError(f"{scheme}:// storage URL must not name a port")
    query = _query(scheme, parts.query)

    if scheme == "file":
        _allow_keys(scheme, query, _NO_KEYS)
        return _file_location(parts.netloc, parts.path)
    if scheme in ("memory", "mem"):
        _allow_keys(scheme, query, _NO_KEYS)
        if parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"{scheme}:// storage URL takes no bucket or path")
        return MemoryLocation()
    if scheme == "s3":
        _allow_keys(scheme, query, _S3_KEYS)
        return _s3_location(_bucket(scheme, parts.netloc), _prefix(parts.path), query, env)
    if scheme == "gs":
        _allow_keys(scheme, query, _GS_KEYS)
        allow_http = (
            _bool(scheme, "disableSSL", query["disableSSL"]) if "disableSSL" in query else False
        )
        return GCSLocation(_bucket(scheme, parts.netloc), _prefix(parts.path), allow_http)
    if scheme == "azblob":
        _allow_keys(scheme, query, _AZURE_KEYS)
        return _azure_location(_bucket(scheme, parts.netloc), _prefix(parts.path), query, env)
    shown = f"{scheme}://" if scheme else "a URL without a scheme"
    raise ValueError(f"storage URL scheme {shown} is not supported; use {SUPPORTED_FORMS}")


def redact_storage_url(url: str) -> str:
    """``url`` fit for logs: user info and the values of query keys we do not know as
    harmless are replaced by ``***``. Never raises."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        pairs = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in _VISIBLE_KEYS:
                value = "***"
            elif key == "endpoint" and "@" in value:
                value = "***@" + value.rpartition("@")[2]
            pairs.append((key, value))
        query = urlencode(pairs, safe=":/*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "<malformed storage URL>"


# -- helpers ---------------------------------------------------------------------------------


def _query(scheme: str, raw: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=bool(raw))
    except ValueError:
        raise ValueError(f"{scheme}:// storage URL has a malformed query string") from None
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise ValueError(f"{scheme}:// storage URL repeats the query key {key!r}")
        query[key] = value
    return query


def _allow_keys(scheme: str, query: Mapping[str, str], allowed: frozenset[str]) -> None:
    unknown = sorted(set(query) - allowed)
    if unknown:
        supported = ", ".join(sorted(allowed)) if allowed else "none"
        raise ValueError(
            f"{scheme}:// storage URL has unknown query key(s) {', '.join(unknown)}; "
            f"supported: {supported}"
        )


def _bool(scheme: str, key: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{scheme}:// storage URL query key {key!r} must be true or false")


def _file_location(netloc: str, raw_path: str) -> FileLocation:
    if netloc not in ("", "localhost"):
        raise ValueError(
            "file:// storage URL must name an absolute path with three slashes, "
            "e.g. file:///var/lib/backups"
        )
    path = unquote(raw_path)
    if not path.startswith("/") or "\x00" in path:
        raise ValueError(
            "file:// storage URL must name an absolute path, e.g. file:///var/lib/backups"
        )
    segments = path.split("/")
    if ".." in segments:
        raise ValueError("file:// storage URL must not contain '..' segments")
    return FileLocation(Path(os.path.normpath(path)))


def _bucket(scheme: str, netloc: str) -> str:
    what = "container" if scheme == "azblob" else "bucket"
    if not netloc:
        raise ValueError(f"{scheme}:// storage URL must name a {what}, e.g. {scheme}://name")
    if not _BUCKET_NAME.match(netloc):
        raise ValueError(f"{scheme}:// storage URL has an invalid {what} name")
    return netloc


def _prefix(raw_path: str) -> str:
    """The key prefix of ``s3://bucket/a/b/``: ``a/b`` (obstore adds the separator)."""
    path = unquote(raw_path).strip("/")
    if not path:
        return ""
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments) or any(ord(c) < 0x20 for c in path):
        raise ValueError("storage URL prefix must not contain empty, '.' or '..' segments")
    return path


def _s3_location(
    bucket: str, prefix: str, query: Mapping[str, str], env: Mapping[str, str]
) -> S3Location:
    region = (
        query.get("region")
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or DEFAULT_S3_REGION
    )
    awssdk = query.get("awssdk", "")
    if awssdk.lower() not in ("", "v1", "v2"):
        raise ValueError("s3:// storage URL query key 'awssdk' must be v1 or v2")
    disable_ssl = _bool("s3", "disableSSL", query["disableSSL"]) if "disableSSL" in query else False
    force_path_style = (
        _bool("s3", "s3ForcePathStyle", query["s3ForcePathStyle"])
        if "s3ForcePathStyle" in query
        else False
    )
    raw_endpoint = query.get("endpoint", "")
    if raw_endpoint or disable_ssl:
        if raw_endpoint:
            scheme, host = _split_endpoint(raw_endpoint, disable_ssl)
        else:  # AWS itself, over http because the URL asks for it
            scheme, host = "http", f"s3.{region}.amazonaws.com"
    else:
        scheme, host = "https", ""
    https = scheme == "https"
    # The AWS SDK the reference uses addresses buckets as <bucket>.<host> unless told
    # otherwise, or unless the name cannot be a host name (dots under TLS, capitals,
    # underscores) or the endpoint is an IP address.
    virtual_hosted = (
        not force_path_style and _dns_compatible(bucket, https=https) and not _is_ip(host)
    )
    endpoint: str | None = None  # obstore derives AWS's endpoint from region and style
    if host:
        endpoint = f"{scheme}://{bucket}.{host}" if virtual_hosted else f"{scheme}://{host}"
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        region=region,
        endpoint=endpoint,
        virtual_hosted=virtual_hosted,
        allow_http=not https,
    )


def _split_endpoint(raw: str, disable_ssl: bool) -> tuple[str, str]:
    """``host:9000`` or ``http://host:9000[/]`` -> (scheme, host[:port])."""
    candidate = raw if "://" in raw else f"{'http' if disable_ssl else 'https'}://{raw}"
    try:
        parts = urlsplit(candidate)
        port = parts.port
    except ValueError:
        raise ValueError("s3:// storage URL query key 'endpoint' is malformed") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("s3:// storage URL endpoint must be http:// or https://")
    if "@" in parts.netloc:
        raise ValueError(
            "s3:// storage URL endpoint must not carry credentials; use AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY"
        )
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("s3:// storage URL endpoint must be a host with an optional port")
    host = parts.netloc if port is None else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:  # IPv6 literal
        host = f"[{parts.hostname}]" + (f":{port}" if port is not None else "")
    return parts.scheme, host


def _dns_compatible(bucket: str, *, https: bool) -> bool:
    if len(bucket) < 3 or len(bucket) > 63:
        return False
    labels = bucket.split(".")
    if https and len(labels) > 1:
        return False
    return all(_DNS_LABEL.match(label) for label in labels)


def _is_ip(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1 : host.index("]")]
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _azure_location(
    container: str, prefix: str, query: Mapping[str, str], env: Mapping[str, str]
) -> AzureLocation:
    use_emulator = (
        _bool("azblob", "localemulator", query["localemulator"])
        if "localemulator" in query
        else False
    )
    # obstore reads AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY by itself; the
    # Go-Cloud names the reference documents are mapped here.
    account = env.get("AZURE_STORAGE_ACCOUNT_NAME") or env.get("AZURE_STORAGE_ACCOUNT") or None
    key = None
    if not any(
        env.get(name)
        for name in (
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_ACCESS_KEY",
            "AZURE_STORAGE_MASTER_KEY",
        )
    ):
        key = env.get("AZURE_STORAGE_KEY") or None
    protocol = query.get("protocol", "https")
    if protocol not in ("http", "https"):
        raise ValueError("azblob:// storage URL query key 'protocol' must be http or https")
    domain = query.get("domain", "")
    endpoint = None
    if domain or protocol != "https":
        if not re.match(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$", domain or DEFAULT_AZURE_DOMAIN):
            raise ValueError("azblob:// storage URL query key 'domain' must be a host name")
        if account is None:
            raise ValueError(
                "azblob:// storage URL with 'domain' or 'protocol' needs the account name in "
                "AZURE_STORAGE_ACCOUNT"
            )
        endpoint = f"{protocol}://{quote(account, safe='')}.{domain or DEFAULT_AZURE_DOMAIN}"
    return AzureLocation(
        container=container,
        prefix=prefix,
        account_name=account,
        account_key=key,
        endpoint=endpoint,
        allow_http=protocol == "http",
        use_emulator=use_emulator,
    )
