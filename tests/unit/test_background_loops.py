"""The server's background loops stop when cancelled, even when the cancellation reaches
them as another exception: a cancelled database call whose clean-up fails raises that
failure instead of ``CancelledError``, and a loop that logged it and went on would never
stop (the server's shutdown hung waiting for it)."""

from __future__ import annotations

import asyncio

import pytest

from backup_repository.domain.errors import DependencyUnavailable
from backup_repository.services.leases import repeat_forever


class Swallowing:
    """A turn of a loop whose cancellation surfaces as ``replacement`` (until ``stop``)."""

    def __init__(self, replacement: Exception) -> None:
        self.replacement = replacement
        self.started = asyncio.Event()
        self.swallow = True

    async def run(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()  # a database call in flight
        except asyncio.CancelledError:
            if self.swallow:
                raise self.replacement from None  # the driver's clean-up failed
            raise


@pytest.mark.parametrize(
    "replacement",
    [RuntimeError("cannot rollback"), DependencyUnavailable("database is unavailable")],
)
async def test_repeat_forever_stops_when_a_cancellation_is_replaced(
    replacement: Exception,
) -> None:
    turn = Swallowing(replacement)
    task = asyncio.create_task(repeat_forever(turn.run, 0.01, "test loop"))
    await turn.started.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    if not done:  # stop the runaway loop so that the test fails instead of hanging
        turn.swallow = False
        task.cancel()
        await asyncio.wait({task}, timeout=2)
    assert done, "the loop went on after it was cancelled"
    assert task.cancelled()


async def test_repeat_forever_goes_on_after_an_ordinary_failure() -> None:
    calls = 0
    third = asyncio.Event()

    async def run() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("a passing failure")
        third.set()

    task = asyncio.create_task(repeat_forever(run, 0.001, "test loop"))
    await asyncio.wait_for(third.wait(), timeout=2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls >= 3
