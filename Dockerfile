# Backup Repository server image (also carries the backup-maker client and gpg).
#
#   docker build -t backup-repository:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v br-data:/data -p 8080:8080 \
#     -e BR_JWT_SECRET_KEY="$(openssl rand -base64 48)" backup-repository:0.1.0
#
# The base image is pinned to a patch release; pin it further by digest in your own
# registry mirror if you need byte-for-byte reproducible builds.

# --- builder: the wheel and a virtual environment with every dependency -----------------------
FROM python:3.11.14-slim-trixie AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade "pip==25.3" \
    && pip install "build==1.3.0"

COPY pyproject.toml README.md ./
COPY src ./src
# Every dependency ships manylinux wheels (argon2-cffi, asyncpg, granian, obstore...), so no
# compiler is needed; the byte-code is compiled here because the runtime root is read-only.
RUN python -m build --wheel --outdir /dist . \
    && /opt/venv/bin/pip install --compile /dist/*.whl

# --- runtime -----------------------------------------------------------------------------------
FROM python:3.11.14-slim-trixie

# gnupg: the backup-maker client encrypts and decrypts with the gpg binary, and the server
# verifies the signatures of trusted uploaders with it (a throw-away keyring under /tmp).
# Debian's security updates are wanted here, so the package is not pinned to one revision.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gnupg \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 backup-repository \
    && useradd --system --uid 65532 --gid 65532 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin backup-repository \
    && mkdir -p /data /etc/backup-repository \
    && chown 65532:65532 /data

COPY --from=builder /opt/venv /opt/venv

# Defaults for one container with SQLite and files on the /data volume; every BR_* variable
# can be overridden at run time (the Helm chart sets PostgreSQL and S3 for replicas).
# No secret is set here: BR_JWT_SECRET_KEY must come from the runtime environment.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/data \
    BR_LISTEN=:8080 \
    BR_DB_URL=sqlite:////data/backup-repository.db \
    BR_STORAGE_DRIVER_URL=file:///data/storage \
    BR_CONFIG_LOCAL_PATH=/etc/backup-repository \
    BR_LOG_FORMAT=json

USER 65532:65532
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]

ENTRYPOINT ["backup-repository"]
