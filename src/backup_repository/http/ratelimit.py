"""Per-client rate limits: one bucket each for login, collection health, server health and
everything else; in memory, or shared across replicas through Redis. A client is counted by
``rate_limit_key``: an IPv4 address, or the IPv6 network of ``ipv6_prefix`` bits around an
IPv6 address (by default its /64, which one host or customer holds whole).

Both count in moving windows: a hit is allowed when the client made fewer than ``limit``
allowed hits in the ``window`` seconds before it; a refused hit is not counted. The
in-memory windows are :class:`MovingWindows` (no library: the process does not load
``limits`` and its storage backends unless Redis is configured); the shared ones are the
``limits`` library's moving-window strategy over its Redis storage, which counts alike."""

from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backup_repository.domain.network import DEFAULT_IPV6_KEY_PREFIX, rate_limit_key

if TYPE_CHECKING:
    from limits import RateLimitItem
    from limits.aio.strategies import MovingWindowRateLimiter

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


@dataclass(frozen=True)
class Limit:
    """At most ``amount`` hits in any ``seconds`` seconds."""

    amount: int
    seconds: int


class MovingWindows:
    """Moving windows in memory, one per (bucket, client): the times of a key's last
    ``amount`` allowed hits, oldest first. A hit is refused when the oldest of them is at
    most ``seconds`` old (the window is full); the refusal says how long until it leaves
    the window (at least 1 s). Keys whose hits all left their window are removed once per
    ``sweep_every`` seconds, so clients that went away hold no memory."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, sweep_every: float = 60.0
    ) -> None:
        self._clock = clock
        self._sweep_every = sweep_every
        self._hits: dict[tuple[str, str], tuple[Limit, deque[float]]] = {}
        self._next_sweep = clock() + sweep_every

    def __len__(self) -> int:
        """Keys held now."""
        return len(self._hits)

    def hit(self, limit: Limit, bucket: str, client: str) -> Decision:
        if limit.amount <= 0:
            return Decision(False, max(1, limit.seconds))
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        key = (bucket, client)
        held = self._hits.get(key)
        if held is None or (held[0] is not limit and held[0] != limit):
            # A new key, or another limit: the times kept suit only their own limit.
            times: deque[float] = deque(maxlen=limit.amount)
            self._hits[key] = (limit, times)
        else:
            times = held[1]
        if len(times) == limit.amount and times[0] >= now - limit.seconds:
            return Decision(False, max(1, math.ceil(times[0] + limit.seconds - now)))
        times.append(now)  # the deque's maxlen drops the oldest
        return Decision(True)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self._sweep_every
        gone = [
            key
            for key, (limit, times) in self._hits.items()
            if not times or times[-1] < now - limit.seconds
        ]
        for key in gone:
            del self._hits[key]


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ipv6_prefix = ipv6_prefix
        self._limits: dict[str, Limit | None] = {
            DEFAULT: Limit(default_per_second, 1) if default_per_second else None,
            AUTH: Limit(auth_per_minute, 60) if auth_per_minute else None,
            COLLECTION_HEALTH: (
                Limit(collection_health_per_minute, 60) if collection_health_per_minute else None
            ),
            SERVER_HEALTH: (
                Limit(server_health_per_minute, 60) if server_health_per_minute else None
            ),
        }
        self._memory = MovingWindows(clock)
        self._shared: _SharedWindows | None = _SharedWindows(redis_url) if redis_url else None
        self._shared_down_since: float | None = None

    @property
    def shared(self) -> bool:
        return self._shared is not None

    async def hit(self, bucket: str, client_ip: str) -> Decision:
        limit = self._limits.get(bucket)
        if limit is None:
            return Decision(True)
        # The same key in memory and in Redis, so replicas count a client alike.
        client = rate_limit_key(client_ip, self._ipv6_prefix)
        if self._shared is not None:
            try:
                decision = await self._shared.hit(limit, bucket, client)
                self._shared_down_since = None
                return decision
            except Exception as exc:  # any Redis failure: fall back, keep serving
                if self._shared_down_since is None:
                    logger.warning(
                        "shared rate limit store unavailable, limiting per replica: %s", exc
                    )
                    self._shared_down_since = time.monotonic()
        return self._memory.hit(limit, bucket, client)


class _SharedWindows:
    """The moving windows in Redis, through ``limits`` (imported here: only a server with
    ``--redis-url`` loads it)."""

    def __init__(self, redis_url: str) -> None:
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        uri = redis_url.replace("redis://", "async+redis://", 1).replace(
            "rediss://", "async+rediss://", 1
        )
        storage = RedisStorage(uri, implementation="redispy", key_prefix="br-rate")
        self._limiter: MovingWindowRateLimiter = MovingWindowRateLimiter(storage)
        self._items: dict[Limit, RateLimitItem] = {}

    def _item(self, limit: Limit) -> RateLimitItem:
        item = self._items.get(limit)
        if item is None:
            from limits import RateLimitItemPerMinute, RateLimitItemPerSecond

            per = RateLimitItemPerSecond if limit.seconds == 1 else RateLimitItemPerMinute
            item = self._items[limit] = per(limit.amount)
        return item

    async def hit(self, limit: Limit, bucket: str, client: str) -> Decision:
        item = self._item(limit)
        if await self._limiter.hit(item, bucket, client):
            return Decision(True)
        try:
            stats = await self._limiter.get_window_stats(item, bucket, client)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
        except Exception:
            retry = item.get_expiry()
        return Decision(False, retry)
