"""Host name resolution for ``restrictByIP`` entries that are names, with a short cache so
that an authenticated request does not wait for DNS every time."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

logger = logging.getLogger(__name__)


class CachingResolver:
    def __init__(self, ttl: float = 60.0, timeout: float = 2.0) -> None:
        self._ttl = ttl
        self._timeout = timeout
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    async def resolve(self, host: str) -> frozenset[str]:
        now = time.monotonic()
        cached = self._cache.get(host)
        if cached is not None and cached[0] > now:
            return cached[1]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), self._timeout
            )
            addresses = frozenset(str(info[4][0]) for info in infos)
        except (OSError, TimeoutError) as exc:
            # A name that does not resolve matches no client: the restriction holds.
            logger.warning("restrictByIP host %s does not resolve: %s", host, exc)
            addresses = frozenset()
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[host] = (now + self._ttl, addresses)
        return addresses
