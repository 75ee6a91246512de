"""Work done under a lease that is renewed while the work runs.

A lease (an upload lock in ``collection_states``, a maintenance lease in
``maintenance_leases``) is held for a number of seconds and renewed every third of that
while the work goes on, so it never pins a database connection and frees itself within
the lease when the process holding it dies. :func:`renewed_lease` is the one place that
renews it, notices that it was lost, stops the work and releases it::

    async with renewed_lease(renew, release, seconds, "upload lock of db") as lease:
        ...  # the work; raises LockLost if the lease is lost and the work was stopped

The work can ask whether the lease is still its own before a step that must not happen
without it (:meth:`Lease.ensure_held`: the database is asked only when the lease was last
confirmed more than a third of it ago), and can free the lease in the transaction that
ends the work (:meth:`Lease.stop_renewing` before it, :meth:`Lease.released` after it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from backup_repository.domain.errors import DependencyUnavailable
from backup_repository.services.ports import LeaseRepository, LockLost

T = TypeVar("T")

logger = logging.getLogger(__name__)


class Lease:
    """A lease held under :func:`renewed_lease`, as the work sees it."""

    def __init__(
        self, renew: Callable[[], Awaitable[bool]], seconds: float, taken_at: float | None
    ) -> None:
        self._renew = renew
        self.seconds = seconds
        # time.monotonic() when the last take or renewal that succeeded was sent: the lease
        # runs until at least a lease after it. None: not known (ask the database).
        self._confirmed_at = taken_at
        self._stopped = False
        self._released = False

    @property
    def is_stopped(self) -> bool:
        return self._stopped

    @property
    def is_released(self) -> bool:
        return self._released

    def stop_renewing(self) -> None:
        """The work is about to free the lease in its last transaction (which checks the
        lease is still its own): the renewal stops, so that it cannot take the freed lease
        for lost."""
        self._stopped = True

    def released(self) -> None:
        """The work freed the lease itself: it is not released again."""
        self._stopped = True
        self._released = True

    def surely_held(self) -> bool:
        """True while the lease was confirmed less than a third of it ago (as the renewal
        does it then, at least two thirds of it are left): nobody can have taken it over."""
        confirmed = self._confirmed_at
        return confirmed is not None and time.monotonic() - confirmed < self.seconds / 3

    async def renew(self) -> bool:
        """Extend the lease now; False when it is no longer ours."""
        sent = time.monotonic()
        if not await self._renew():
            return False
        self._confirmed_at = sent
        return True

    async def ensure_held(self) -> bool:
        """Whether the lease is still ours, for a step that must not happen without it:
        known without asking while :meth:`surely_held`, else renewed (False when lost)."""
        return self.surely_held() or await self.renew()


@contextlib.asynccontextmanager
async def renewed_lease(
    renew: Callable[[], Awaitable[bool]],
    release: Callable[[], Awaitable[None]],
    seconds: float,
    what: str,
    *,
    stop_on_loss: bool = True,
    taken_at: float | None = None,
) -> AsyncIterator[Lease]:
    """Hold a lease already taken while the body runs: ``renew`` (True while it is still
    ours) every third of ``seconds``, ``release`` once the body is done, unless the lease
    was lost (it may be someone else's by then) or the body freed it itself
    (:meth:`Lease.released`). ``what`` names it in the log; ``taken_at`` is
    ``time.monotonic()`` from just before the lease was taken, when known.

    With ``stop_on_loss`` a lost lease cancels the body at once and the body's
    cancellation becomes :class:`LockLost`; without it the body goes on and learns of the
    loss from its own writes (which check the lease). A failure to renew is logged and
    tried again a third of a lease later; a failure to release is logged (the lease then
    runs out by itself). The release is shielded: a cancelled body still releases."""
    task = asyncio.current_task()
    lost = asyncio.Event()
    lease = Lease(renew, seconds, taken_at)

    async def keep() -> None:
        while not lease.is_stopped:
            try:
                ours = await lease.renew()
            except Exception:
                logger.exception("could not renew the %s", what)
            else:
                if not ours:
                    if lease.is_stopped:
                        return
                    logger.error("the %s was lost (a stall longer than the lease)", what)
                    lost.set()
                    if stop_on_loss and task is not None:
                        task.cancel()
                    return
            await asyncio.sleep(seconds / 3)

    # The renewing task starts at the first renewal, from a timer: a short body (a small
    # upload) costs a timer set and cancelled, not a task started, cancelled and awaited.
    loop = asyncio.get_running_loop()
    renewer: asyncio.Task[None] | None = None

    def start_renewing() -> None:
        nonlocal renewer
        if not lease.is_stopped:
            renewer = loop.create_task(keep(), name=f"renew {what}")

    async def release_quietly() -> None:
        try:
            await release()
        except Exception:
            logger.exception("could not release the %s", what)

    timer = loop.call_later(seconds / 3, start_renewing)
    try:
        yield lease
    except asyncio.CancelledError:
        if stop_on_loss and lost.is_set() and task is not None and task.uncancel() == 0:
            # Cancelled by the renewer, not by anyone else: the work must stop because
            # another holder may be at work now.
            raise LockLost(f"the {what} was lost") from None
        raise
    finally:
        timer.cancel()
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if not lost.is_set() and not lease.is_released:
            await asyncio.shield(release_quietly())


class UploadLocks(Protocol):
    """The collections' upload locks, as :class:`~services.ports.VersionRepository` holds
    them."""

    async def renew_lock(self, collection_id: str, owner: str, lease_seconds: float) -> bool: ...

    async def release_lock(self, collection_id: str, owner: str) -> None: ...


def renewed_upload_lock(
    locks: UploadLocks,
    collection_id: str,
    owner: str,
    seconds: float,
    *,
    stop_on_loss: bool = True,
    taken_at: float | None = None,
) -> contextlib.AbstractAsyncContextManager[Lease]:
    """:func:`renewed_lease` for the upload lock of a collection that ``owner`` took."""

    async def renew() -> bool:
        return await locks.renew_lock(collection_id, owner, seconds)

    async def release() -> None:
        await locks.release_lock(collection_id, owner)

    return renewed_lease(
        renew,
        release,
        seconds,
        f"upload lock of {collection_id}",
        stop_on_loss=stop_on_loss,
        taken_at=taken_at,
    )


async def run_on_schedule(
    leases: LeaseRepository,
    name: str,
    owner: str,
    lease_seconds: float,
    interval: float,
    work: Callable[[], Awaitable[T]],
    what: str,
) -> T | None:
    """Scheduled maintenance that one replica at a time does: run ``work`` when no replica
    ran it in the last ``interval`` seconds and none is running it, under the maintenance
    lease ``name`` (renewed by :func:`renewed_lease` while the work runs). After work that
    finished, the lease stays taken until ``interval`` after its start, so the replicas
    share one schedule. Returns what ``work`` returned, or None when it was not this
    replica's turn or the lease was lost (another replica goes on)."""
    if not await leases.try_take(name, owner, lease_seconds):
        return None
    started = datetime.now(UTC)
    finished = False

    async def renew() -> bool:
        return await leases.renew(name, owner, lease_seconds)

    async def release() -> None:
        until = started + timedelta(seconds=interval) if finished else None
        await leases.release(name, owner, until)

    try:
        async with renewed_lease(renew, release, lease_seconds, what):
            result = await work()
            finished = True
    except LockLost:
        # Logged by renewed_lease.
        return None
    return result


async def repeat_forever(run: Callable[[], Awaitable[object]], poll: float, what: str) -> None:
    """Call ``run`` every ``poll`` seconds until cancelled. Never raises: a failure is
    logged (a database or storage outage as a warning) and ``run`` is tried again at the
    next turn."""
    while True:
        try:
            await run()
        except DependencyUnavailable as exc:
            raise_if_cancelled()
            logger.warning("%s failed: %s; trying again later", what, exc)
        except Exception:
            raise_if_cancelled()
            logger.exception("%s failed; trying again later", what)
        await asyncio.sleep(poll)


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` when the current task was asked to stop. For loops that
    catch ``Exception``: a cancellation that arrives while a database call is in flight
    can surface as another exception (the driver's clean-up fails and replaces it), and a
    loop that logged it and went on would never stop, hanging the server's shutdown."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
