"""The application: the :class:`App` class, and the composition root
``create_app(settings)``, which builds every part from one Settings object. Nothing is
created at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.types import ASGIApp

from backup_repository import __version__
from backup_repository.config.providers import open_provider
from backup_repository.db.audit import SqlAuditRepository
from backup_repository.db.console import SqlConsoleRepository
from backup_repository.db.engine import create_engine, migrate
from backup_repository.db.integrity import SqlIntegrityRepository, SqlLeaseRepository
from backup_repository.db.notifications import (
    SqlNotificationFacts,
    SqlNotificationStateRepository,
    SqlOutboxRepository,
)
from backup_repository.db.repositories import SqlDatabaseHealth, SqlSessionRepository
from backup_repository.db.urls import render_url_safely
from backup_repository.db.versions import SqlVersionRepository
from backup_repository.domain.replica import ReplicaIdentity
from backup_repository.http import errors, ui
from backup_repository.http.deps import Services
from backup_repository.http.metrics import (
    DeliveryCounter,
    Metrics,
    MetricsSink,
    RequestMetrics,
    collection_source,
    configuration_source,
    integrity_source,
    notification_source,
)
from backup_repository.http.middleware import (
    BodyLimitMiddleware,
    ClientAddressMiddleware,
    HeaderLimitMiddleware,
    RateLimitMiddleware,
)
from backup_repository.http.openapi import docs_page
from backup_repository.http.openapi.description import complete_description
from backup_repository.http.ratelimit import RateLimiter
from backup_repository.http.request_log import RequestIdMiddleware
from backup_repository.http.routers import audit, auth, collections, health
from backup_repository.http.routers import metrics as metrics_router
from backup_repository.http.routers import notifications as notifications_router
from backup_repository.notify import build_sender
from backup_repository.services.audit import AuditLog, AuditService
from backup_repository.services.auth import AuthService
from backup_repository.services.clock import clock_for
from backup_repository.services.collection_health import CollectionHealthService
from backup_repository.services.collections import CollectionService
from backup_repository.services.console import ConsoleService
from backup_repository.services.downloads import DownloadService
from backup_repository.services.events import FanOut
from backup_repository.services.health import (
    ConfigurationProviderValidator,
    DbValidator,
    StorageAvailabilityValidator,
)
from backup_repository.services.integrity import IntegrityService
from backup_repository.services.notifications import NotificationService
from backup_repository.services.passwords import PasswordHasher
from backup_repository.services.ports import ConfigSnapshot
from backup_repository.services.resolver import CachingResolver
from backup_repository.services.session_purge import SessionPurger
from backup_repository.services.stats import StatsService
from backup_repository.services.tokens import TokenCodec
from backup_repository.services.uploads import UploadService
from backup_repository.services.versions import VersionService
from backup_repository.settings import Settings
from backup_repository.storage.factory import idle_timeout_for, open_blob_store
from backup_repository.storage.urls import redact_storage_url

logger = logging.getLogger(__name__)
# How long the shutdown waits for each background loop after cancelling it.
SHUTDOWN_WAIT_S = 10.0


class App(FastAPI):
    """FastAPI with layers outside Starlette's error middleware (``outermost`` middleware
    sees every response, the 500 answers to unhandled errors included) and the complete
    OpenAPI description. FastAPI's own documentation pages are off: :mod:`.openapi.docs_page`
    serves one without any CDN."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("docs_url", None)
        kwargs.setdefault("redoc_url", None)
        # FastAPI's own OpenTelemetry hooks off: the server has its Prometheus metrics and its
        # access log, and with them on FastAPI looks up the global OpenTelemetry providers
        # on every request (about 7 µs each, to find none configured).
        kwargs.setdefault("telemetry", {"tracing": False, "metrics": False, "logs": False})
        super().__init__(*args, **kwargs)
        self.outermost: list[Middleware] = []

    def add_outermost_middleware(self, cls: Any, **options: Any) -> None:
        """Wrap the whole app; the first one added is the outermost."""
        if self.middleware_stack is not None:
            raise RuntimeError("cannot add middleware after the app has started")
        self.outermost.append(Middleware(cls, **options))

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        for middleware in reversed(self.outermost):
            app = middleware.cls(app, *middleware.args, **middleware.kwargs)
        return app

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = complete_description(super().openapi(), self)
        return self.openapi_schema


def create_app(
    settings: Settings, on_started: Callable[[ConfigSnapshot], None] | None = None
) -> FastAPI:
    """The app. ``on_started`` is called once everything is running, with the
    configuration as it was loaded (the start-up banner lists its accounts)."""
    # Its own registry per app; the scrape-time sources join once the database is open.
    metrics = Metrics(__version__)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.db_url)
        provider = open_provider(
            settings.provider, settings.config_local_path, settings.namespace, settings.kubeconfig
        )
        hasher = PasswordHasher(
            settings.password_hash_concurrency, max_waiting=settings.login_queue
        )
        store = open_blob_store(
            settings.storage_url,
            io_timeout=idle_timeout_for(settings.storage_io_timeout.total_seconds()),
        )
        try:
            logger.info("database: %s", render_url_safely(settings.db_url))
            logger.info("storage: %s", redact_storage_url(settings.storage_url))
            logger.info("replica id: %s", settings.replica_id)
            await migrate(engine)
            await provider.start()
            # The server's clock: real time, or the test facility's (docs/notifications.md).
            clock = clock_for(settings.test_clock_file)
            database_health = SqlDatabaseHealth(engine)
            # Every listener of what happens (audit log, metrics) joins this fan-out.
            events = FanOut([])
            audit_events = SqlAuditRepository(engine)
            events.add(AuditLog(audit_events))
            stats = StatsService(provider, SqlVersionRepository(engine), clock=clock)
            events.add(MetricsSink(metrics, stats.is_configured))
            metrics.add_source("collections", collection_source(stats))
            metrics.add_source("configuration", configuration_source(stats))
            # This process in the lock and lease tables: <replica tag>/<random life>.
            identity = ReplicaIdentity.start(settings.replica_id)
            integrity = IntegrityService(
                versions=SqlVersionRepository(engine),
                store=store,
                results=SqlIntegrityRepository(engine),
                io_timeout=settings.storage_io_timeout.total_seconds(),
                events=events,
                leases=SqlLeaseRepository(engine),
                instance=identity.instance,
            )
            metrics.add_source("integrity", integrity_source(integrity))
            versions = SqlVersionRepository(engine)
            collection_service = CollectionService(provider, versions, clock=clock)
            uploads = UploadService(
                collection_service,
                provider,
                versions,
                store,
                io_timeout=settings.storage_io_timeout.total_seconds(),
                deadline=settings.http_upload_timeout.total_seconds(),
                lock_lease=settings.upload_lock_lease.total_seconds(),
                events=events,
                instance=identity.instance,
                clock=clock,
            )
            # Notifications: judged on a schedule and after uploads, delivered from the
            # outbox by every replica (services/notifications.py).
            # Real time for the senders: a signature's timestamp is checked by receivers.
            # Each channel type's library is loaded at its first delivery (notify/).
            notify_sender = build_sender(server_name=socket.gethostname())
            notifications = NotificationService(
                provider,
                versions,
                SqlIntegrityRepository(engine),
                SqlNotificationFacts(engine),
                SqlNotificationStateRepository(engine),
                SqlOutboxRepository(engine),
                notify_sender,
                max_age=settings.notify_max_age,
                events=events,
                leases=SqlLeaseRepository(engine),
                observer=DeliveryCounter(metrics),
                clock=clock,
                instance=identity.instance,
            )
            if settings.notify_interval:
                # Uploads ask for an evaluation (only where evaluations run: the trigger
                # keeps the names until then).
                events.add(notifications.trigger)
            metrics.add_source("notifications", notification_source(notifications))
            # What this replica's previous life held (killed mid-upload, say) is freed before
            # anything takes a lock, not left until its leases run out. A server on SQLite
            # is the only one on its database: every server's locks go.
            previous = None if engine.dialect.name == "sqlite" else identity.tag
            await uploads.cleanup.free_locks_of_previous_life(previous)
            await integrity.free_lease_of_previous_life(previous)
            await notifications.free_claims_of_previous_life(previous)
            # In the background: an unreachable storage must not keep the server from
            # starting (and from reporting the problem in /ready).
            cleanup = asyncio.create_task(uploads.cleanup.clean_all(), name="start-up clean-up")
            # Scheduled integrity checks (--verify-interval), one replica at a time.
            scrubber = (
                asyncio.create_task(
                    integrity.run_periodically(settings.verify_interval.total_seconds()),
                    name="integrity checks",
                )
                if settings.verify_interval
                else None
            )
            notify_tasks = (
                [
                    asyncio.create_task(
                        notifications.run_evaluator(settings.notify_interval.total_seconds()),
                        name="notification evaluation",
                    ),
                    asyncio.create_task(
                        notifications.run_triggered(), name="notification evaluation on upload"
                    ),
                    asyncio.create_task(
                        notifications.run_dispatcher(
                            settings.notify_dispatch_interval.total_seconds()
                        ),
                        name="notification delivery",
                    ),
                ]
                if settings.notify_interval
                else []
            )
            sessions = SqlSessionRepository(engine)
            # Sessions expired or revoked longer than --session-retention ago are deleted,
            # one replica at a time.
            purger = (
                asyncio.create_task(
                    SessionPurger(
                        sessions,
                        SqlLeaseRepository(engine),
                        settings.session_retention,
                        instance=identity.instance,
                    ).run_periodically(settings.session_purge_interval.total_seconds()),
                    name="session purge",
                )
                if settings.session_retention
                else None
            )
            app.state.services = Services(
                settings=settings,
                config=provider,
                auth=AuthService(
                    config=provider,
                    sessions=sessions,
                    hasher=hasher,
                    tokens=TokenCodec(settings.jwt_secret_key, settings.jwt_lifetime),
                    resolver=CachingResolver(),
                    events=events,
                ),
                collections=collection_service,
                uploads=uploads,
                downloads=DownloadService(collection_service, versions, store, events),
                collection_health=CollectionHealthService(
                    provider, versions, store, checks=[integrity.health_check], clock=clock
                ),
                integrity=integrity,
                events=events,
                audit=AuditService(audit_events),
                readiness=[
                    DbValidator(database_health),
                    StorageAvailabilityValidator(store),
                    ConfigurationProviderValidator(provider),
                ],
                metrics=metrics,
                notifications=notifications,
                versions=VersionService(
                    collection_service,
                    versions,
                    uploads.cleanup,
                    lock_lease=settings.upload_lock_lease.total_seconds(),
                    instance=identity.instance,
                    events=events,
                ),
            )
            # The web console's view models (http/ui/), on the services above.
            app.state.console = ConsoleService(
                collection_service,
                app.state.services.collection_health,
                SqlConsoleRepository(engine),
                clock=clock,
            )
            if on_started is not None:
                on_started(provider.snapshot())
            yield
            for task in (scrubber, purger, *notify_tasks):
                if task is not None:
                    task.cancel()
                    # Bounded: a background loop that failed to stop must not hang the
                    # shutdown (the process is exiting anyway).
                    done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_WAIT_S)
                    if not done:
                        logger.error("%s did not stop when asked; leaving it", task.get_name())
                    elif not task.cancelled() and task.exception() is not None:
                        logger.error("%s ended with %r", task.get_name(), task.exception())
            cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleanup
            await notify_sender.aclose()
        finally:
            await provider.close()
            await store.close()
            hasher.close()
            await engine.dispose()

    app = App(
        title="Backup Repository",
        version=__version__,
        description="Storage server for end-to-end encrypted (OpenPGP) backups.",
        lifespan=lifespan,
    )
    errors.install(app)
    docs_page.install(app)
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(collections.router)
    app.include_router(audit.router)
    app.include_router(metrics_router.router)
    app.include_router(notifications_router.router)

    limiter = RateLimiter(
        default_per_second=settings.rate_default_limit,
        auth_per_minute=settings.rate_auth_limit,
        collection_health_per_minute=settings.rate_collection_health_limit,
        server_health_per_minute=settings.rate_server_health_limit,
        redis_url=settings.redis_url,
        ipv6_prefix=settings.rate_limit_ipv6_prefix,
    )
    # Added innermost first: the client address is known before the rate limit is checked,
    # and the rate limit is checked before any body is read.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_body)
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    app.add_middleware(ClientAddressMiddleware, trusted_proxies=settings.trusted_proxies)
    app.add_middleware(HeaderLimitMiddleware)
    # The web console under /ui (its pages, static files and security headers); its login
    # form counts in the login bucket of the rate limits.
    ui.install(app, limiter)
    # Outside even Starlette's error layer: every log line of a request carries its id, and
    # every response (a 500 too) the X-Request-ID header. The same layer tells the metrics
    # of every request once it is done, those refused by the middleware above included.
    app.add_outermost_middleware(RequestIdMiddleware, on_end=[RequestMetrics(metrics)])
    return app
