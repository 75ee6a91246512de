"""NotificationChannel objects and a collection's ``spec.notifications`` through the loader:
secrets resolved into the domain's channels (never shown), one target per channel, event
names checked, a subscription to a missing channel reported without taking the collection
out of service; and the gfs rule that keeps nothing."""

from __future__ import annotations

import json
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from tests.unit.test_config_loader import collection_yaml

from backup_repository.config.documents import SourceFile
from backup_repository.config.loader import BuildResult, load_files
from backup_repository.domain.notification_channels import (
    SUBSCRIBABLE,
    ChannelType,
    EventType,
    NotificationPolicy,
    SmtpSecurity,
    Subscription,
)
from notify_receivers import make_certificate
from support import require_service

CHANNEL_SECRETS = """\
apiVersion: v1
kind: Secret
metadata: {name: notification-secrets}
stringData:
  webhook-key: "hmac-key-value"
  smtp-password: "smtp-password-value"
  apprise-urls: |
    tgram://bot-token/chat
    mailto://user:pass@example.org
"""


def channel_yaml(name: str, spec: str) -> str:
    return (
        "apiVersion: backups.riotkit.org/v1alpha1\nkind: NotificationChannel\n"
        f"metadata: {{name: {name}}}\nspec:\n" + textwrap.indent(textwrap.dedent(spec), "  ")
    )


WEBHOOK = """\
description: on-call webhook
type: webhook
webhook:
  url: https://hooks.example.org/backups
  signingSecretRef: {name: notification-secrets, entry: webhook-key}
"""

EMAIL = """\
type: email
email:
  host: smtp.example.org
  security: starttls
  from: Backups <backups@example.org>
  to: [ops@example.org, oncall@example.org]
  username: backups
  passwordFromRef: {name: notification-secrets, entry: smtp-password}
"""

APPRISE = """\
type: apprise
apprise:
  urlsFromRef: {name: notification-secrets, entry: apprise-urls}
allCollections:
  events: [integrity]
"""


def load(*files: tuple[str, str]) -> BuildResult:
    return load_files([SourceFile(source, text) for source, text in files])


def load_channel(spec: str, name: str = "ch") -> BuildResult:
    return load(("secrets.yaml", CHANNEL_SECRETS), ("channels.yaml", channel_yaml(name, spec)))


def problems(result: BuildResult) -> list[tuple[str, str]]:
    return [(p.field, p.message) for p in result.snapshot.problems]


# --- channels ---------------------------------------------------------------------------------


def test_the_three_kinds_of_channel_load_with_their_secrets() -> None:
    result = load(
        ("secrets.yaml", CHANNEL_SECRETS),
        (
            "channels.yaml",
            "\n---\n".join(
                [
                    channel_yaml("ops-webhook", WEBHOOK),
                    channel_yaml("mail", EMAIL),
                    channel_yaml("chat", APPRISE),
                ]
            ),
        ),
    )

    assert result.snapshot.problems == ()
    channels = result.snapshot.channels
    hook = channels["ops-webhook"]
    assert hook.type is ChannelType.WEBHOOK
    assert hook.description == "on-call webhook"
    assert hook.webhook is not None
    assert hook.webhook.url == "https://hooks.example.org/backups"
    assert hook.webhook.signing_secret == "hmac-key-value"
    assert hook.webhook.timeout == timedelta(seconds=10)
    assert hook.all_collections is None
    assert (hook.email, hook.apprise) == (None, None)

    mail = channels["mail"].email
    assert mail is not None
    assert (mail.host, mail.port, mail.security) == ("smtp.example.org", 587, SmtpSecurity.STARTTLS)
    assert mail.sender == "Backups <backups@example.org>"
    assert mail.recipients == ("ops@example.org", "oncall@example.org")
    assert (mail.username, mail.password) == ("backups", "smtp-password-value")
    assert mail.timeout == timedelta(seconds=30)

    chat = channels["chat"]
    assert chat.apprise is not None
    assert chat.apprise.urls == ("tgram://bot-token/chat", "mailto://user:pass@example.org")
    assert chat.all_collections == frozenset({EventType.INTEGRITY})

    shown = repr(result.snapshot)
    for secret in ("hmac-key-value", "smtp-password-value", "bot-token"):
        assert secret not in shown
    assert "3 notification channels" in result.summary()


@pytest.mark.parametrize(("security", "port"), [("tls", 465), ("starttls", 587), ("none", 25)])
def test_the_smtp_port_follows_the_security(security: str, port: int) -> None:
    spec = f"""\
    type: email
    email: {{host: relay, security: {security}, from: a@example.org, to: [b@example.org]}}
    """
    result = load_channel(spec)
    email = result.snapshot.channels["ch"].email
    assert email is not None
    assert email.port == port


def test_all_collections_without_events_means_every_subscribable_event() -> None:
    result = load_channel(WEBHOOK + "allCollections: {}\n")
    assert result.snapshot.channels["ch"].all_collections == SUBSCRIBABLE


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (
            "type: webhook\n",
            "spec",
            "type webhook needs a webhook block",
        ),
        (
            WEBHOOK + "email: {host: h, from: a@example.org, to: [b@example.org]}\n",
            "spec.email",
            "type is webhook, so email must not be set (a channel has exactly one of webhook, "
            "email and apprise)",
        ),
        (
            WEBHOOK.replace("https://hooks.example.org/backups", "ftp://hooks.example.org/x"),
            "spec.webhook.url",
            "the webhook URL must start with https:// (or http://), not ftp://",
        ),
        (
            WEBHOOK.replace("https://", "https://user:pw@"),
            "spec.webhook.url",
            "the webhook URL must not carry a user or password (user:password@host); the "
            "receiver checks the signature header instead",
        ),
        (
            WEBHOOK.replace("webhook-key", "no-such-entry"),
            "spec.webhook.signingSecretRef",
            "Secret 'notification-secrets' has no entry 'no-such-entry'",
        ),
        (
            EMAIL.replace("to: [ops@example.org, oncall@example.org]", "to: []"),
            "spec.email.to",
            "list at least one recipient address (to: [ops@example.org])",
        ),
        (
            EMAIL.replace("from: Backups <backups@example.org>", "from: backups"),
            "spec.email.from",
            "'backups' is not an e-mail address (write ops@example.org or "
            "Backups <backups@example.org>)",
        ),
        (
            EMAIL.replace(
                "to: [ops@example.org, oncall@example.org]", 'to: ["a@b.org\\nBcc: x@y.org"]'
            ),
            "spec.email.to[0]",
            "an e-mail address must not contain line breaks or control characters",
        ),
        (
            EMAIL.replace("  username: backups\n", ""),
            "spec.email.username",
            "passwordFromRef needs username (the login of the SMTP server)",
        ),
        (
            EMAIL.replace("security: starttls", "security: none"),
            "spec.email.security",
            "security none would send the SMTP password unencrypted: use starttls or tls, or "
            "a relay that needs no login",
        ),
        (
            APPRISE.replace("apprise-urls", "webhook-key"),
            "spec.apprise.urlsFromRef",
            "the value of entry 'webhook-key' in Secret 'notification-secrets' must be one or "
            "more Apprise URLs (such as mailto://... or tgram://...), separated by spaces or "
            "new lines",
        ),
        (
            WEBHOOK + "allCollections: {events: [missing, tset]}\n",
            "spec.allCollections.events[1]",
            "unknown event 'tset': valid events are integrity, limits, missing, recovered, "
            "suspicious",
        ),
        (
            WEBHOOK + "allCollections: {events: [test]}\n",
            "spec.allCollections.events[0]",
            "'test' cannot be subscribed to: test messages are sent to a channel on request; "
            "subscribe to integrity, limits, missing, recovered, suspicious",
        ),
        (
            WEBHOOK.replace("type: webhook", "type: slack"),
            "spec.type",
            "Input should be 'webhook', 'email' or 'apprise'",
        ),
    ],
)
def test_a_broken_channel_is_refused_with_the_field(spec: str, field: str, message: str) -> None:
    result = load_channel(spec)

    assert result.snapshot.channels == {}
    assert (field, message) in problems(result), problems(result)
    assert all(p.kind == "NotificationChannel" for p in result.snapshot.problems)


def test_plain_http_to_another_host_is_accepted_with_a_warning() -> None:
    result = load_channel(WEBHOOK.replace("https://hooks.example.org", "http://hooks.internal"))

    assert result.snapshot.problems == ()
    assert "ch" in result.snapshot.channels
    (warning,) = result.warnings
    assert warning.startswith("channels.yaml: NotificationChannel/ch: the webhook URL ")
    assert "the webhook URL http://hooks.internal/... uses plain http" in warning
    assert "/backups" not in warning  # a path may carry a token

    for loopback in ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000"):
        local = load_channel(WEBHOOK.replace("https://hooks.example.org", loopback))
        assert local.warnings == ()
        assert "ch" in local.snapshot.channels


def test_secret_values_never_appear_in_problems() -> None:
    result = load_channel(APPRISE.replace("apprise-urls", "smtp-password"))
    assert "smtp-password-value" not in str(result.snapshot.problems)


# --- caFile and the Apprise timeout --------------------------------------------------------------


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away certificate in PEM form, as a private CA would hand out."""
    made = make_certificate(tmp_path_factory.mktemp("ca"))
    if made is None:
        require_service("openssl", "openssl is not installed (needed for a test certificate)")
    return made[0]


def with_ca_file(spec: str, block: str, path: object) -> str:
    """``spec`` with ``caFile: path`` added to its ``block`` (webhook or email)."""
    return spec.replace(f"{block}:\n", f"{block}:\n  caFile: {json.dumps(str(path))}\n", 1)


def test_webhook_and_email_take_a_ca_file(ca_file: Path) -> None:
    result = load(
        ("secrets.yaml", CHANNEL_SECRETS),
        (
            "channels.yaml",
            channel_yaml("hook", with_ca_file(WEBHOOK, "webhook", ca_file))
            + "\n---\n"
            + channel_yaml("mail", with_ca_file(EMAIL, "email", ca_file)),
        ),
    )

    assert result.snapshot.problems == ()
    assert result.warnings == ()
    hook, mail = result.snapshot.channels["hook"].webhook, result.snapshot.channels["mail"].email
    assert hook is not None
    assert mail is not None
    assert (hook.ca_file, mail.ca_file) == (str(ca_file), str(ca_file))


def test_without_a_ca_file_the_system_store_is_used() -> None:
    result = load_channel(WEBHOOK)
    hook = result.snapshot.channels["ch"].webhook
    assert hook is not None
    assert hook.ca_file == ""


def test_the_apprise_timeout_is_read_and_defaults_to_30s() -> None:
    default = load_channel(APPRISE).snapshot.channels["ch"].apprise
    assert default is not None
    assert default.timeout == timedelta(seconds=30)

    result = load_channel(APPRISE.replace("apprise:\n", "apprise:\n  timeout: 1m30s\n"))
    assert result.snapshot.problems == ()
    chat = result.snapshot.channels["ch"].apprise
    assert chat is not None
    assert chat.timeout == timedelta(seconds=90)


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("0s", "must be greater than zero"),
        ("soon", "invalid duration 'soon'"),
    ],
)
def test_a_bad_apprise_timeout_refuses_the_channel(written: str, message: str) -> None:
    result = load_channel(APPRISE.replace("apprise:\n", f"apprise:\n  timeout: {written}\n"))

    assert result.snapshot.channels == {}
    ((field, text),) = problems(result)
    assert field == "spec.apprise.timeout"
    assert message in text


def broken_ca_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that cannot serve as a CA file, with what the problem says of each."""
    folder.mkdir(exist_ok=True)
    text = folder / "notes.txt"
    text.write_text("not a certificate\n")
    garbled = folder / "garbled.pem"
    garbled.write_text("-----BEGIN CERTIFICATE-----\nMIIBnot-base64!!\n-----END CERTIFICATE-----\n")
    return {
        "missing": (
            folder / "no-such-ca.pem",
            f"the CA file {folder / 'no-such-ca.pem'} does not exist: mount the ConfigMap or "
            "Secret that holds it there, or correct the path",
        ),
        "not-pem": (
            text,
            f"the CA file {text} is not usable: no PEM certificate in it; it must hold the CA's "
            "certificates in PEM form (-----BEGIN CERTIFICATE-----)",
        ),
        "garbled": (garbled, f"the CA file {garbled} is not usable: a certificate in it cannot"),
        "folder": (
            folder,
            f"the CA file {folder} is not a regular file: name the PEM file itself",
        ),
    }


@pytest.mark.parametrize("case", ["missing", "not-pem", "garbled", "folder"])
@pytest.mark.parametrize(("spec", "block"), [(WEBHOOK, "webhook"), (EMAIL, "email")])
def test_an_unusable_ca_file_refuses_the_channel_with_the_reason(
    tmp_path: Path, case: str, spec: str, block: str
) -> None:
    """Its senders verify every certificate: such a channel could never deliver."""
    path, message = broken_ca_files(tmp_path / "ca")[case]
    result = load(
        ("secrets.yaml", CHANNEL_SECRETS),
        ("channels.yaml", channel_yaml("ch", with_ca_file(spec, block, path))),
        ("collections.yaml", collection_with("channels: [{name: ch}]\n")),
    )

    assert result.snapshot.channels == {}
    ((field, text), subscription) = problems(result)
    assert field == f"spec.{block}.caFile"
    assert text.startswith(message), text
    # The collection that subscribes says why it gets nothing, and keeps working.
    assert subscription == (
        "spec.notifications.channels[0].name",
        "NotificationChannel 'ch' is broken (see its own problems); the collection's other "
        "subscriptions work",
    )
    assert "db" in result.snapshot.collections


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ("ca.pem", "'ca.pem' is not an absolute path: give the full path of the PEM file, such "
         "as /etc/backup-repository-ca/ca.crt"),
        ('""', "must not be empty: leave caFile out to trust the system's CA store"),
        ('"/etc/ca.pem\\n"', "a file path must not contain line breaks or control characters"),
        ("[/etc/ca.pem]", "Input should be a valid string, got list"),
    ],
)  # fmt: skip
def test_a_ca_file_must_be_an_absolute_path(written: str, message: str) -> None:
    result = load_channel(WEBHOOK.replace("webhook:\n", f"webhook:\n  caFile: {written}\n"))

    assert result.snapshot.channels == {}
    assert problems(result) == [("spec.webhook.caFile", message)]


def test_a_ca_file_that_cannot_apply_is_accepted_with_a_warning(ca_file: Path) -> None:
    hook = with_ca_file(
        WEBHOOK.replace("https://hooks.example.org", "http://127.0.0.1:9000"), "webhook", ca_file
    )
    relay = with_ca_file(EMAIL.replace("  username: backups\n", ""), "email", ca_file)
    relay = relay.replace("security: starttls", "security: none").replace(
        "  passwordFromRef: {name: notification-secrets, entry: smtp-password}\n", ""
    )
    result = load(
        ("secrets.yaml", CHANNEL_SECRETS),
        ("channels.yaml", channel_yaml("hook", hook) + "\n---\n" + channel_yaml("relay", relay)),
    )

    assert result.snapshot.problems == ()
    assert set(result.snapshot.channels) == {"hook", "relay"}
    assert result.warnings == (
        "channels.yaml: NotificationChannel/hook: spec.webhook.caFile is used for https URLs "
        "only, and the webhook URL is http",
        "channels.yaml: NotificationChannel/relay: spec.email.caFile is used with security tls "
        "or starttls only, and security is none",
    )


# --- a collection's subscriptions --------------------------------------------------------------


def collection_with(notifications: str, name: str = "db") -> str:
    return collection_yaml(name, extra="notifications:\n" + textwrap.indent(notifications, "  "))


def load_collection(notifications: str) -> BuildResult:
    return load(
        ("secrets.yaml", CHANNEL_SECRETS),
        (
            "channels.yaml",
            channel_yaml("ops-webhook", WEBHOOK) + "\n---\n" + channel_yaml("mail", EMAIL),
        ),
        ("collections.yaml", collection_with(notifications)),
    )


def test_a_collection_without_notifications_has_the_default_policy() -> None:
    result = load(("collections.yaml", collection_yaml("db")))
    assert result.snapshot.collections["db"].notifications == NotificationPolicy()


def test_subscriptions_and_settings_reach_the_collection() -> None:
    result = load_collection(
        """\
        channels:
          - name: ops-webhook
            events: [missing, recovered]
          - name: mail
        gracePeriod: 30m
        maxAge: 26h
        shrinkRatio: 0.25
        sizeSample: 7
        refusalThreshold: 5
        refusalPeriod: 12h
        usageThreshold: 85%
        reminderInterval: never
        """
    )

    assert result.snapshot.problems == ()
    policy = result.snapshot.collections["db"].notifications
    assert policy.subscriptions == (
        Subscription("ops-webhook", frozenset({EventType.MISSING, EventType.RECOVERED})),
        Subscription("mail", SUBSCRIBABLE),
    )
    assert policy.grace_period == timedelta(minutes=30)
    assert policy.max_age == timedelta(hours=26)
    assert (policy.shrink_ratio, policy.size_sample) == (0.25, 7)
    assert (policy.refusal_threshold, policy.refusal_period) == (5, timedelta(hours=12))
    assert policy.usage_threshold == pytest.approx(0.85)
    assert policy.reminder_interval is None


@pytest.mark.parametrize(
    ("written", "fraction"), [("90%", 0.9), ("0.9", 0.9), ("1", 1.0), ("'12.5%'", 0.125)]
)
def test_usage_threshold_takes_a_percentage_or_a_fraction(written: str, fraction: float) -> None:
    result = load_collection(f"usageThreshold: {written}\n")
    assert result.snapshot.problems == ()
    threshold = result.snapshot.collections["db"].notifications.usage_threshold
    assert threshold == pytest.approx(fraction)


@pytest.mark.parametrize(("written", "expected"), [("'0'", None), ("0", None), ("6h", 6)])
def test_reminder_interval_zero_or_never_disables_reminders(
    written: str, expected: int | None
) -> None:
    result = load_collection(f"reminderInterval: {written}\n")
    reminder = result.snapshot.collections["db"].notifications.reminder_interval
    assert reminder == (None if expected is None else timedelta(hours=expected))


def test_a_subscription_to_a_missing_channel_is_a_problem_but_the_collection_loads() -> None:
    result = load_collection(
        """\
        channels:
          - name: nowhere
          - name: ops-webhook
        """
    )

    (problem,) = result.snapshot.problems
    assert (problem.kind, problem.name, problem.field) == (
        "BackupCollection",
        "db",
        "spec.notifications.channels[0].name",
    )
    assert problem.message == (
        "NotificationChannel 'nowhere' does not exist; the collection's other subscriptions work"
    )
    collection = result.snapshot.collections["db"]
    assert collection.notifications.subscriptions == (Subscription("ops-webhook", SUBSCRIBABLE),)
    assert result.summary().endswith("1 problem (1 object in use with a problem)")


def test_a_subscription_to_a_channel_in_an_unparsable_file_says_it_may_be_there() -> None:
    result = load(
        ("channels.yaml", channel_yaml("ops-webhook", WEBHOOK) + "\n  broken: [\n"),
        ("collections.yaml", collection_with("channels: [{name: ops-webhook}]\n")),
    )

    message = result.snapshot.problems[-1].message
    assert message.startswith(
        "NotificationChannel 'ops-webhook' was not found; channels.yaml could not be read"
    )


def test_a_subscription_to_a_broken_channel_points_at_its_problems() -> None:
    result = load(
        ("channels.yaml", channel_yaml("ops-webhook", WEBHOOK)),  # its Secret is missing
        ("collections.yaml", collection_with("channels: [{name: ops-webhook}]\n")),
    )

    assert problems(result)[-1] == (
        "spec.notifications.channels[0].name",
        "NotificationChannel 'ops-webhook' is broken (see its own problems); the collection's "
        "other subscriptions work",
    )


def test_an_unknown_event_leaves_that_subscription_out_and_lists_the_valid_ones() -> None:
    result = load_collection(
        """\
        channels:
          - name: mail
          - name: ops-webhook
            events: [missing, test]
        """
    )

    assert problems(result) == [
        (
            "spec.notifications.channels[1].events[1]",
            "'test' cannot be subscribed to: test messages are sent to a channel on request; "
            "subscribe to integrity, limits, missing, recovered, suspicious; this "
            "subscription is left out until it is fixed",
        )
    ]
    policy = result.snapshot.collections["db"].notifications
    assert policy.subscriptions == (Subscription("mail", SUBSCRIBABLE),)


def test_a_broken_setting_keeps_its_default_and_the_rest_applies() -> None:
    result = load_collection(
        """\
        channels: [{name: mail}]
        usageThreshold: 190%
        gracePeriod: soon
        sizeSample: 5
        """
    )

    fields = [field for field, _ in problems(result)]
    assert sorted(fields) == ["spec.notifications.gracePeriod", "spec.notifications.usageThreshold"]
    usage = dict(problems(result))["spec.notifications.usageThreshold"]
    assert usage == (
        "'190%' must be above 0% and at most 100% (a fraction up to 1); the default 90% is used"
    )
    policy = result.snapshot.collections["db"].notifications
    assert policy.usage_threshold == 0.9
    assert policy.grace_period == timedelta(minutes=15)
    assert policy.subscriptions == (Subscription("mail", SUBSCRIBABLE),)


def test_an_unknown_setting_is_named() -> None:
    result = load_collection("channels: [{name: mail}]\ngracePerod: 5m\n")
    assert problems(result) == [
        (
            "spec.notifications.gracePerod",
            "unknown field (misspelt fields are refused, not ignored)",
        )
    ]
    assert "db" in result.snapshot.collections


def test_notifications_that_are_not_a_mapping() -> None:
    result = load(("collections.yaml", collection_yaml("db", extra="notifications: yes\n")))
    assert problems(result)[0][0] == "spec.notifications"
    assert "db" in result.snapshot.collections


# --- gfs ---------------------------------------------------------------------------------------


def test_gfs_that_keeps_nothing_is_refused() -> None:
    result = load(("c.yaml", collection_yaml("db", extra="strategyName: gfs\n")))

    assert problems(result) == [
        (
            "spec.strategySpec",
            "gfs keeps nothing: set at least one of keepLast, keepHourly, keepDaily, "
            "keepWeekly, keepMonthly or keepYearly above 0",
        )
    ]
    assert result.snapshot.collections == {}


def test_gfs_with_one_rule_loads() -> None:
    extra = "strategyName: gfs\nstrategySpec: {keepDaily: 7, timeZone: Europe/Warsaw}\n"
    result = load(("c.yaml", collection_yaml("db", extra=extra)))

    assert result.snapshot.problems == ()
    strategy = result.snapshot.collections["db"].strategy
    assert (strategy.name, strategy.keep_daily, strategy.time_zone) == ("gfs", 7, "Europe/Warsaw")
