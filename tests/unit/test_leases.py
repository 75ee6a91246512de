"""The lease an upload holds (services/leases.py): when the work asks the database whether
it is still its own, and a lease the work freed itself is neither taken for lost nor
released again."""

from __future__ import annotations

import asyncio
import time

from backup_repository.services.leases import Lease, renewed_lease


class Renewals:
    def __init__(self, answer: bool = True, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.calls = 0
        self.releases = 0

    async def renew(self) -> bool:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.answer

    async def release(self) -> None:
        self.releases += 1


def test_a_lease_confirmed_within_a_third_of_it_is_not_asked_for() -> None:
    renewals = Renewals()
    lease = Lease(renewals.renew, 30.0, time.monotonic())
    assert asyncio.run(lease.ensure_held())
    assert renewals.calls == 0


def test_an_older_or_unknown_confirmation_asks_the_database() -> None:
    renewals = Renewals()
    older = Lease(renewals.renew, 30.0, time.monotonic() - 10.5)
    assert asyncio.run(older.ensure_held())
    assert renewals.calls == 1
    # The renewal confirmed it: the next step need not ask.
    assert asyncio.run(older.ensure_held())
    assert renewals.calls == 1
    unknown = Lease(renewals.renew, 30.0, None)
    assert asyncio.run(unknown.ensure_held())
    assert renewals.calls == 2


def test_a_lost_lease_is_told() -> None:
    renewals = Renewals(answer=False)
    lease = Lease(renewals.renew, 30.0, time.monotonic() - 11)
    assert not asyncio.run(lease.ensure_held())
    assert not lease.surely_held()


def test_a_lease_the_work_freed_is_not_taken_for_lost_nor_released_again() -> None:
    # The renewal runs every 0.1 s and takes 0.05 s; the work frees the lease while one is
    # under way, which the database then answers with "not yours".
    renewals = Renewals(delay=0.05)

    async def work() -> None:
        async with renewed_lease(renewals.renew, renewals.release, 0.3, "test") as lease:
            await asyncio.sleep(0.12)
            assert renewals.calls == 1
            lease.stop_renewing()
            renewals.answer = False
            await asyncio.sleep(0.25)
            lease.released()

    asyncio.run(work())
    assert renewals.calls == 1
    assert renewals.releases == 0


def test_a_lease_not_freed_by_the_work_is_released() -> None:
    renewals = Renewals()

    async def work() -> None:
        async with renewed_lease(renewals.renew, renewals.release, 30.0, "test") as lease:
            # The last transaction failed: the lease is still held, and released after.
            lease.stop_renewing()

    asyncio.run(work())
    assert renewals.releases == 1
