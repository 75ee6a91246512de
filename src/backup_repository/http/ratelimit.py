"""Per-client rate limits: one bucket each for login, collection health, server health and
everything else; in memory, or shared across replicas through Redis. A client is counted by
``rate_limit_key``: an IPv4 address, or the IPv6 network of ``ipv6_prefix`` bits around an
IPv6 address (by default its /64, which one host or customer holds whole)."""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from backup_repository.domain.network import DEFAULT_IPV6_KEY_PREFIX, rate_limit_key

logger = logging.getLogger(__name__)

AUTH = "auth"
COLLECTION_HEALTH = "collection-health"
SERVER_HEALTH = "server-health"
DEFAULT = "default"

_AUTH_PATHS = re.compile(r"^/api/(stable|alpha)/auth/(login|refresh_token)/?$")
_COLLECTION_HEALTH = re.compile(r"^/api/(stable|alpha)/repository/collection/[^/]+/health/?$")
# Prometheus scrapes count with the health checks (--rate-server-health-limit, per minute).
_SERVER_HEALTH = {"/health", "/ready", "/metrics"}


def bucket_for(path: str) -> str:
    if path in _SERVER_HEALTH:
        return SERVER_HEALTH
    if _AUTH_PATHS.match(path):
        return AUTH
    if _COLLECTION_HEALTH.match(path):
        return COLLECTION_HEALTH
    return DEFAULT


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int = 0


class RateLimiter:
    def __init__(
        self,
        *,
        default_per_second: int,
        auth_per_minute: int,
        collection_health_per_minute: int,
        server_health_per_minute: int,
        redis_url: str | None = None,
        ipv6_prefix: int = DEFAULT_IPV6_KEY_PREFIX,
    ) -> None:
        self._ipv6_prefix = ipv6_prefix
        self._items: dict[str, RateLimitItem | None] = {
            DEFAULT: RateLimitItemPerSecond(default_per_second) if default_per_second else None,
            AUTH: RateLimitItemPerMinute(auth_per_minute) if auth_per_minute else None,
            COLLECTION_HEALTH: (
                RateLimitItemPerMinute(collection_health_per_minute)
                if collection_health_per_minute
                else None
            ),
            SERVER_HEALTH: (
                RateLimitItemPerMinute(server_health_per_minute)
                if server_health_per_minute
                else None
            ),
        }
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        self._storage: Storage | None = None
        if redis_url:
            uri = redis_url.replace("redis://", "async+redis://", 1).replace(
                "rediss://", "async+rediss://", 1
            )
            self._storage = RedisStorage(uri, implementation="redispy", key_prefix="br-rate")
            self._shared = MovingWindowRateLimiter(self._storage)
        self._shared_down_since: float | None = None

    @property
    def shared(self) -> bool:
        return self._shared is not None

    async def hit(self, bucket: str, client_ip: str) -> Decision:
        item = self._items.get(bucket)
        if item is None:
            return Decision(True)
        # The same key in memory and in Redis, so replicas count a client alike.
        client = rate_limit_key(client_ip, self._ipv6_prefix)
        limiter = self._memory
        if self._shared is not None:
            try:
                allowed = await self._shared.hit(item, bucket, client)
                self._shared_down_since = None
                return (
                    Decision(True)
                    if allowed
                    else await self._refusal(self._shared, item, bucket, client)
                )
            except Exception as exc:  # any Redis failure: fall back, keep serving
                if self._shared_down_since is None:
                    logger.warning(
                        "shared rate limit store unavailable, limiting per replica: %s", exc
                    )
                    self._shared_down_since = time.monotonic()
        if await limiter.hit(item, bucket, client):
            return Decision(True)
        return await self._refusal(limiter, item, bucket, client)

    @staticmethod
    async def _refusal(
        limiter: MovingWindowRateLimiter, item: RateLimitItem, bucket: str, client: str
    ) -> Decision:
        try:
            stats = await limiter.get_window_stats(item, bucket, client)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
        except Exception:
            retry = item.get_expiry()
        return Decision(False, retry)
