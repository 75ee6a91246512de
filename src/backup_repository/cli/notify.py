"""``backup-repository notify-test --channel NAME``: read the configuration (with the same
provider flags as the server), send a ``test`` event to one NotificationChannel and print
whether it was delivered (docs/notifications.md).

Exit codes: 0 delivered, 1 not delivered (or no such usable channel, or the configuration
could not be read), 2 bad usage.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import click

from backup_repository.cli.options import (
    CONTEXT_SETTINGS,
    inherit_group_options,
    log_level_option,
    option,
    provider_options,
    resolve_config_path,
    resolve_kubeconfig,
)
from backup_repository.domain.notification_channels import (
    Channel,
    DeliveryError,
    EventType,
    NotificationEvent,
)
from backup_repository.logs import configure_logging
from backup_repository.services.ports import ConfigSnapshot, NotificationSender

EXIT_DELIVERED: Final = 0
EXIT_FAILED: Final = 1

# Options the server also takes: given before the command (``backup-repository
# --config-local-path=... notify-test``) they count as if given after it.
_SHARED: Final = ("provider", "kubeconfig", "config_local_path", "namespace", "log_level")


@click.command("notify-test", context_settings=CONTEXT_SETTINGS)
@click.pass_context
@provider_options("Where the NotificationChannel objects come from (as for the server)")
@option(
    "-c",
    "--channel",
    env="BR_NOTIFY_TEST_CHANNEL",
    required=True,
    help="The NotificationChannel to send a test message to",
)
@option(
    "--server-name",
    env="BR_NOTIFY_SERVER_NAME",
    default=None,
    help="The name the message says it comes from [default: this host's name]",
)
@log_level_option("warning")
def notify_test(ctx: click.Context, /, **options: Any) -> None:
    """Send a test message to one notification channel and say whether it arrived.

    Reads the configuration like the server does, sends an event of type "test" to the
    channel and prints "delivered" or the reason it was not; exits 0 when delivered, 1
    when not."""
    inherit_group_options(ctx, options, _SHARED)
    configure_logging(str(options["log_level"]).lower(), "console")
    sys.exit(
        asyncio.run(
            run_notify_test(
                provider=options["provider"],
                config_path=resolve_config_path(options),
                namespace=options["namespace"],
                kubeconfig=resolve_kubeconfig(options),
                channel=options["channel"],
                server_name=options["server_name"] or socket.gethostname(),
            )
        )
    )


async def run_notify_test(
    *,
    provider: str,
    config_path: Path,
    namespace: str,
    kubeconfig: Path | None,
    channel: str,
    server_name: str,
) -> int:
    """Load the configuration once, then :func:`notify_channel`; returns the exit code."""
    from backup_repository.config.providers import open_provider
    from backup_repository.notify import build_sender

    source = open_provider(provider, config_path, namespace, kubeconfig)
    try:
        await source.start()
        snapshot = source.snapshot()
    finally:
        await source.close()
    # The sender makes its own HTTP client for a webhook, and closes it.
    sender = build_sender(server_name=server_name)
    try:
        return await notify_channel(snapshot, channel, sender, server_name)
    finally:
        await sender.aclose()


def make_test_event(channel: Channel, server_name: str, now: datetime) -> NotificationEvent:
    """The event ``notify-test`` sends: type and condition ``test``, no collection, a fresh
    id."""
    return NotificationEvent(
        id=f"test-{uuid.uuid4()}",
        type=EventType.TEST,
        condition="test",
        collection="",
        occurred_at=now,
        summary=(
            f"A test message to the notification channel {channel.name} from "
            f"{server_name}: if you can read this, the channel works."
        ),
        facts={"channel": channel.name, "channelType": str(channel.type)},
    )


async def notify_channel(
    snapshot: ConfigSnapshot,
    name: str,
    sender: NotificationSender,
    server_name: str,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Send a test event to the channel ``name`` of ``snapshot`` through ``sender`` and
    print the outcome; returns the exit code."""
    if not snapshot.usable:
        click.echo(f"error: the configuration cannot be read: {snapshot.unusable_reason}", err=True)
        return EXIT_FAILED
    channel = snapshot.channels.get(name)
    if channel is None:
        problems = [
            p for p in snapshot.problems if p.kind == "NotificationChannel" and p.name == name
        ]
        for problem in problems:
            click.echo(f"error: configuration: {problem}", err=True)
        if not problems:
            known = ", ".join(sorted(snapshot.channels)) or "none"
            click.echo(
                f"error: there is no NotificationChannel named {name} (channels: {known}); "
                "check --channel and the configuration folder or namespace",
                err=True,
            )
        return EXIT_FAILED
    event = make_test_event(channel, server_name, clock())
    try:
        await sender.send(channel, event)
    except DeliveryError as exc:
        kind = (
            "permanent: fix the channel or the receiver"
            if exc.permanent
            else "may pass: the server would try again"
        )
        click.echo(f"not delivered to {name} ({channel.type}): {exc.reason} ({kind})", err=True)
        return EXIT_FAILED
    click.echo(f"delivered to {name} ({channel.type}): test event {event.id}")
    return EXIT_DELIVERED
