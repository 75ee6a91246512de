"""From YAML text to a :class:`ConfigSnapshot`, without any I/O.

Two steps, so that every provider can share the second one:

1. :func:`~backup_repository.config.documents.parse_yaml` turns one file (its name and
   text) into :class:`~backup_repository.config.documents.Document` objects;
2. :func:`build` (here) turns all documents into a snapshot of usable users and
   collections, resolving ``passwordFromRef`` and ``healthSecretRef`` against the Secrets.

Two exceptions to "no I/O": the public keys of ``trustedUploaders`` are read by the
``gpg`` binary (services/signatures.py ``read_keys``, cached by the keys' text, so a
reload that did not change them runs no gpg), and the ``caFile`` of a notification
channel is read to check it holds certificates (:func:`ca_file_problem`).

Nothing here raises on bad input. Every broken object becomes one or more
:class:`ConfigProblem` (naming the file, the object and the dotted field path) and is left
out of the snapshot, so that it refuses every request instead of running on a guess.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import argon2
from pydantic import BaseModel, ValidationError

from backup_repository.config.documents import (
    Document,
    SourceFile,
    UnreadFile,
    our_kind,
    parse_yaml,
)
from backup_repository.config.models import (
    KIND_CHANNEL,
    KIND_COLLECTION,
    KIND_SECRET,
    KIND_USER,
    AccessKeySpec,
    BackupCollection,
    BackupUser,
    NotificationChannel,
    NotificationsSpec,
    ObjectGrantSpec,
    Secret,
    SecretRef,
    TrustedUploadersSpec,
)
from backup_repository.config.problems import ProblemFactory, dotted_path, operator_message
from backup_repository.domain.identity import (
    AccessControlEntry,
    AccessKey,
    BackupWindow,
    Collection,
    ObjectGrant,
    RotationStrategy,
    User,
)
from backup_repository.domain.notification_channels import (
    AppriseTarget,
    Channel,
    ChannelType,
    EmailTarget,
    NotificationPolicy,
    SmtpSecurity,
    Subscription,
    WebhookTarget,
)
from backup_repository.domain.password_format import InvalidPasswordHash, decode_stored_hash
from backup_repository.domain.signatures import TrustedKey
from backup_repository.services.health import describe_problems, plural
from backup_repository.services.ports import ConfigProblem, ConfigSnapshot
from backup_repository.services.signatures import read_keys

_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class BuildResult:
    snapshot: ConfigSnapshot
    secrets: int = 0  # usable Secrets
    ignored: int = 0  # documents of other kinds
    other_namespace: int = 0  # our kinds, declared in another namespace, skipped
    # Accepted, but worth a line in the log (a webhook over plain http to another host).
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        """``3 users, 2 collections, 1 notification channel, 4 secrets loaded; 2 problems
        (1 file could not be read, 1 object refused)``."""
        snap = self.snapshot
        text = (
            f"{plural(len(snap.users), 'user')}, "
            f"{plural(len(snap.collections), 'collection')}, "
            f"{plural(len(snap.channels), 'notification channel')}, "
            f"{plural(self.secrets, 'secret')} loaded; {describe_problems(snap)}"
        )
        if self.ignored:
            text += f"; {plural(self.ignored, 'document')} of other kinds ignored"
        if self.other_namespace:
            text += f"; {plural(self.other_namespace, 'object')} of other namespaces skipped"
        return text


def load_files(
    files: Iterable[SourceFile],
    namespace: str | None = None,
    problems: Iterable[ConfigProblem] = (),
    unread: Iterable[UnreadFile] | None = None,
) -> BuildResult:
    """Parse every file and build the snapshot from all of them together. ``problems`` found
    while reading the files (unreadable ones) come first in the snapshot's problems;
    ``unread`` names those files (by default, the source of every one of ``problems``)."""
    found = list(problems)
    missing = (
        list(unread) if unread is not None else [UnreadFile(p.source) for p in found if p.source]
    )
    documents: list[Document] = []
    for file in files:
        parsed = parse_yaml(file.source, file.text, file.placement)
        documents.extend(parsed.documents)
        found.extend(parsed.problems)
        if parsed.unread is not None:
            missing.append(parsed.unread)
    return build(documents, found, namespace=namespace, unread=missing)


def build(
    documents: Iterable[Document],
    problems: Iterable[ConfigProblem] = (),
    *,
    namespace: str | None = None,
    unread: Iterable[UnreadFile] = (),
) -> BuildResult:
    """The snapshot of every usable object among ``documents``; ``problems`` found earlier
    (unreadable files, bad YAML) are carried into it. With ``namespace``, objects that
    declare another ``metadata.namespace`` are skipped. ``unread`` are the files whose
    objects are unknown: a reference that finds nothing says it may be in one of them."""
    return _Builder(list(problems), namespace, list(unread)).run(documents)


@dataclass
class _Builder:
    problems: list[ConfigProblem]
    namespace: str | None
    unread: list[UnreadFile] = field(default_factory=list)
    secrets: dict[str, Secret] = field(default_factory=dict)
    # Secret names that exist but cannot be used, with the reason.
    unusable_secrets: dict[str, str] = field(default_factory=dict)
    ignored: int = 0
    other_namespace: int = 0
    channels: dict[str, Channel] = field(default_factory=dict)
    # Channel names that exist but cannot be used, with the reason.
    unusable_channels: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def run(self, documents: Iterable[Document]) -> BuildResult:
        ours: list[tuple[str, Document]] = []
        for document in documents:
            kind = our_kind(document)
            if kind is None:
                self.ignored += 1
            elif self.namespace and document.namespace not in ("", self.namespace):
                self.other_namespace += 1
            else:
                ours.append((kind, document))

        duplicated = self._find_duplicates(ours)
        kept = [(k, d) for k, d in ours if (k, d.name) not in duplicated]

        for kind, document in kept:
            if kind == KIND_SECRET:
                self._add_secret(document)
        for kind, document in kept:
            if kind == KIND_CHANNEL:
                channel = self._channel(document)
                if channel is not None:
                    self.channels[channel.name] = channel
        users: dict[str, User] = {}
        collections: dict[str, Collection] = {}
        for kind, document in kept:
            if kind == KIND_USER:
                user = self._user(document)
                if user is not None:
                    users[user.name] = user
            elif kind == KIND_COLLECTION:
                collection = self._collection(document)
                if collection is not None:
                    collections[collection.name] = collection

        snapshot = ConfigSnapshot(
            users=users,
            collections=collections,
            channels=dict(self.channels),
            problems=tuple(self.problems),
        )
        return BuildResult(
            snapshot=snapshot,
            secrets=len(self.secrets),
            ignored=self.ignored,
            other_namespace=self.other_namespace,
            warnings=tuple(self.warnings),
        )

    def _find_duplicates(self, ours: Sequence[tuple[str, Document]]) -> set[tuple[str, str]]:
        counts = Counter((kind, doc.name) for kind, doc in ours if doc.name)
        duplicated = {key for key, count in counts.items() if count > 1}
        for kind, doc in ours:
            if (kind, doc.name) not in duplicated:
                continue
            others = [
                f"{o.source} (document {o.index})" if o.source == doc.source else o.source
                for k, o in ours
                if (k, o.name) == (kind, doc.name) and o is not doc
            ]
            self.problems.append(
                ProblemFactory(doc)(
                    f"{kind} {doc.name!r} is also defined in {', '.join(others)}; "
                    "none of the copies is used until only one is left",
                    "metadata.name",
                )
            )
            if kind == KIND_SECRET:
                self.unusable_secrets[doc.name] = "is defined more than once"
            elif kind == KIND_CHANNEL:
                self.unusable_channels[doc.name] = "is defined more than once"
        return duplicated

    def _validate(self, model: type[_M], document: Document) -> _M | None:
        try:
            return model.model_validate(dict(document.body))
        except ValidationError as exc:
            problem = ProblemFactory(document)
            for error in exc.errors():
                self.problems.append(problem(operator_message(error), dotted_path(error["loc"])))
            return None

    # Secrets

    def _add_secret(self, document: Document) -> None:
        secret = self._validate(Secret, document)
        if secret is None:
            if document.name:
                self.unusable_secrets[document.name] = "is broken (see its own problems)"
            return
        self.secrets[secret.metadata.name] = secret

    def _resolve(self, ref: SecretRef) -> tuple[str | None, str]:
        """The value a reference points to, or None and why not."""
        if ref.name in self.unusable_secrets:
            return None, f"Secret {ref.name!r} {self.unusable_secrets[ref.name]}"
        secret = self.secrets.get(ref.name)
        if secret is None:
            return None, self._not_found(KIND_SECRET, ref.name)
        value = secret.value(ref.entry)
        if value is None:
            return None, f"Secret {ref.name!r} has no entry {ref.entry!r}"
        if not value:
            return None, f"entry {ref.entry!r} of Secret {ref.name!r} is empty"
        return value, ""

    def _not_found(self, kind: str, name: str) -> str:
        """``Secret 'x' does not exist``; when files could not be read, that it may be in
        one of them (only the files that could hold it: in the reference layout, the file
        of that kind and name)."""
        candidates = [u.source for u in self.unread if u.may_hold(kind, name)]
        if not candidates:
            return f"{kind} {name!r} does not exist"
        shown = ", ".join(candidates[:3])
        if len(candidates) > 3:
            shown += f" and {len(candidates) - 3} more"
        verb = "could not be read (see the problem reported for it)"
        if len(candidates) > 1:
            verb = "could not be read (see the problems reported for them)"
        return f"{kind} {name!r} was not found; {shown} {verb}, it may be there"

    def _password(
        self,
        inline: str,
        ref: SecretRef | None,
        field_prefix: str,
        problem: ProblemFactory,
    ) -> str | None:
        """The encoded password hash: from the reference when given (it wins over an inline
        value, which the reference examples fill with a placeholder), else inline."""
        if ref is not None:
            value, why = self._resolve(ref)
            if value is None:
                self.problems.append(problem(why, f"{field_prefix}passwordFromRef"))
                return None
            where = f"{field_prefix}passwordFromRef"
            described = f"the value of entry {ref.entry!r} in Secret {ref.name!r}"
        elif inline:
            value, where, described = inline, f"{field_prefix}password", "the password"
        else:
            self.problems.append(
                problem("no password: set passwordFromRef (or password)", f"{field_prefix}password")
            )
            return None
        invalid = password_hash_problem(value)
        if invalid:
            self.problems.append(problem(f"{described} {invalid}", where))
            return None
        return value

    # Users

    def _user(self, document: Document) -> User | None:
        model = self._validate(BackupUser, document)
        if model is None:
            return None
        problem = ProblemFactory(document)
        before = len(self.problems)
        name = model.metadata.name
        naming = _user_name_problem(name)
        if naming:
            self.problems.append(problem(naming, "metadata.name"))
        spec = model.spec
        password_hash = self._password(spec.password, spec.password_from_ref, "spec.", problem)
        keys: list[AccessKey] = []
        seen: set[str] = set()
        for position, key_spec in enumerate(spec.access_keys):
            prefix = f"spec.accessKeys[{position}]."
            key_naming = _access_key_name_problem(key_spec.name)
            if key_naming:
                self.problems.append(problem(key_naming, prefix + "name"))
            elif key_spec.name in seen:
                self.problems.append(
                    problem(f"access key name {key_spec.name!r} is used twice", prefix + "name")
                )
            seen.add(key_spec.name)
            key = self._access_key(key_spec, prefix, problem)
            if key is not None:
                keys.append(key)
        if len(self.problems) > before or password_hash is None:
            return None
        return User(
            name=name,
            email=spec.email,
            password_hash=password_hash,
            roles=frozenset(spec.roles),
            deactivated=spec.deactivated,
            organization=spec.organization,
            about=spec.about,
            restrict_by_ip=spec.restrict_by_ip,
            access_keys=tuple(keys),
        )

    def _access_key(
        self, spec: AccessKeySpec, prefix: str, problem: ProblemFactory
    ) -> AccessKey | None:
        password_hash = self._password(spec.password, spec.password_from_ref, prefix, problem)
        if password_hash is None:
            return None
        return AccessKey(
            name=spec.name,
            password_hash=password_hash,
            objects=tuple(grant_from_spec(g) for g in spec.objects),
        )

    # Collections

    def _collection(self, document: Document) -> Collection | None:
        model = self._validate(BackupCollection, document)
        if model is None:
            return None
        problem = ProblemFactory(document)
        before = len(self.problems)
        name = model.metadata.name
        if not _COLLECTION_NAME.match(name):
            self.problems.append(
                problem(
                    f"collection name {name!r} must be 1-253 letters, digits, '.', '-' or '_', "
                    "starting and ending with a letter or digit (it is used in URLs and "
                    "storage keys)",
                    "metadata.name",
                )
            )
        spec = model.spec
        if spec.max_one_version_size > spec.max_collection_size:
            self.problems.append(
                problem(
                    f"maxOneVersionSize ({spec.max_one_version_size} bytes) is larger than "
                    f"maxCollectionSize ({spec.max_collection_size} bytes)",
                    "spec.maxOneVersionSize",
                )
            )
        strategy = spec.strategy_spec
        if (
            spec.strategy_name == "fifo-plus-older"
            and strategy.keep_last_older_not_more_than is None
        ):
            self.problems.append(
                problem(
                    "strategyName fifo-plus-older needs keepLastOlderNotMoreThan "
                    "(how far apart the older copies are kept, e.g. 5d)",
                    "spec.strategySpec.keepLastOlderNotMoreThan",
                )
            )
        if spec.strategy_name == "gfs" and not any(
            (
                strategy.keep_last,
                strategy.keep_hourly,
                strategy.keep_daily,
                strategy.keep_weekly,
                strategy.keep_monthly,
                strategy.keep_yearly,
            )
        ):
            self.problems.append(
                problem(
                    "gfs keeps nothing: set at least one of keepLast, keepHourly, keepDaily, "
                    "keepWeekly, keepMonthly or keepYearly above 0",
                    "spec.strategySpec",
                )
            )
        health_secret: str | None = None
        if spec.health_secret_ref is not None:
            ref = spec.health_secret_ref
            value, why = self._resolve(ref)
            if value is None:
                self.problems.append(problem(why, "spec.healthSecretRef"))
            elif not _SHA256_HEX.match(value):
                self.problems.append(
                    problem(
                        f"the value of entry {ref.entry!r} in Secret {ref.name!r} must be the "
                        "SHA-256 of the health code as 64 hex digits (echo -n CODE | sha256sum)",
                        "spec.healthSecretRef",
                    )
                )
            else:
                health_secret = value.lower()
        trusted_keys: tuple[TrustedKey, ...] = ()
        if spec.trusted_uploaders is not None:
            trusted_keys = self._trusted_keys(spec.trusted_uploaders, problem, document, name)
        if len(self.problems) > before:
            return None
        # After the checks that refuse the collection: a mistake in its notifications is
        # reported, but the collection stays in service.
        notifications = self._notifications(spec.notifications, problem)
        return Collection(
            name=name,
            description=spec.description,
            filename_template=spec.filename_template,
            max_backups_count=spec.max_backups_count,
            max_one_version_size=spec.max_one_version_size,
            max_collection_size=spec.max_collection_size,
            strategy=RotationStrategy(
                name=spec.strategy_name,
                keep_last_older_not_more_than=strategy.keep_last_older_not_more_than,
                max_older_copies=strategy.max_older_copies,
                keep_last=strategy.keep_last,
                keep_hourly=strategy.keep_hourly,
                keep_daily=strategy.keep_daily,
                keep_weekly=strategy.keep_weekly,
                keep_monthly=strategy.keep_monthly,
                keep_yearly=strategy.keep_yearly,
                time_zone=strategy.time_zone,
            ),
            windows=tuple(BackupWindow(cron=w.from_, duration=w.duration) for w in spec.windows),
            health_secret=health_secret,
            access_control=tuple(
                AccessControlEntry(user=entry.user, roles=frozenset(entry.roles))
                for entry in spec.access_control
            ),
            notifications=notifications,
            trusted_keys=trusted_keys,
        )

    def _trusted_keys(
        self,
        spec: TrustedUploadersSpec,
        problem: ProblemFactory,
        document: Document,
        collection: str,
    ) -> tuple[TrustedKey, ...]:
        """The keys of ``spec.trustedUploaders`` (the pinned ones when fingerprints are
        given). Any mistake is a problem that leaves the collection out: a collection that
        asks for signatures must never take unsigned uploads because its keys are broken.
        An expired or revoked key is kept, with a warning: gpg refuses its signatures."""
        where = "spec.trustedUploaders.keysFromRef"
        text = self._secret_value(spec.keys_from_ref, where, problem)
        if text is None:
            return ()
        reading = read_keys(text)
        ref = spec.keys_from_ref
        if reading.error:
            self.problems.append(
                problem(
                    f"the value of entry {ref.entry!r} in Secret {ref.name!r} {reading.error}",
                    where,
                )
            )
            return ()
        keys = list(reading.keys)
        if spec.fingerprints:
            by_fingerprint = {key.fingerprint: key for key in keys}
            pinned: list[TrustedKey] = []
            for position, fingerprint in enumerate(spec.fingerprints):
                key = by_fingerprint.get(fingerprint)
                if key is not None:
                    pinned.append(key)
                    continue
                owner = next((k for k in keys if fingerprint in k.subkeys), None)
                hint = (
                    f"it is a subkey of {owner.fingerprint}: pin the primary key's fingerprint"
                    if owner is not None
                    else "add the key to the Secret, or correct the fingerprint; keys there: "
                    + ", ".join(k.fingerprint for k in keys)
                )
                self.problems.append(
                    problem(
                        f"fingerprint {fingerprint} is not among the keys in entry "
                        f"{ref.entry!r} of Secret {ref.name!r}: {hint}",
                        f"spec.trustedUploaders.fingerprints[{position}]",
                    )
                )
            keys = pinned
        now = datetime.now(UTC)
        for key in keys:
            state = "revoked" if key.revoked else "expired" if key.expired(now) else ""
            if state:
                self.warnings.append(
                    f"{document.source}: {KIND_COLLECTION}/{collection}: "
                    f"spec.trustedUploaders: key {key.label} is {state}: uploads signed by it "
                    "are refused"
                )
        return tuple(keys)

    def _notifications(self, raw: Any, problem: ProblemFactory) -> NotificationPolicy:
        """The collection's policy. Whatever is wrong in ``spec.notifications`` is a problem
        naming the field; a broken subscription is left out and a broken setting keeps its
        default (both said in the problem), so that the rest still notifies."""
        prefix = "spec.notifications"
        if raw is None:
            return NotificationPolicy()
        if not isinstance(raw, dict):
            self.problems.append(
                problem(
                    f"must be a mapping (channels, gracePeriod, ...), got {type(raw).__name__}; "
                    "no notifications are sent for this collection until it is fixed",
                    prefix,
                )
            )
            return NotificationPolicy()
        data = dict(raw)
        channels = data.get("channels")
        entries: dict[int, Any] = dict(enumerate(channels)) if isinstance(channels, list) else {}
        # Validate until what is left is valid: each round drops what an error points at.
        for _ in range(len(data) + len(entries) + 2):
            attempt = dict(data)
            if isinstance(channels, list):
                attempt["channels"] = [entries[i] for i in sorted(entries)]
            try:
                spec = NotificationsSpec.model_validate(attempt)
            except ValidationError as exc:
                order = sorted(entries)
                for error in exc.errors():
                    loc = list(error["loc"])
                    message = operator_message(error)
                    if loc[:1] == ["channels"] and len(loc) > 1 and isinstance(loc[1], int):
                        original = order[loc[1]]
                        loc[1] = original
                        entries.pop(original, None)
                        message += "; this subscription is left out until it is fixed"
                    elif loc:
                        if loc[0] == "channels":
                            channels = None
                        data.pop(str(loc[0]), None)
                        if loc[0] != "channels" and str(loc[0]) in _POLICY_DEFAULTS:
                            message += f"; the default {_POLICY_DEFAULTS[str(loc[0])]} is used"
                    self.problems.append(problem(message, f"{prefix}.{dotted_path(loc)}"))
                continue
            break
        else:  # pragma: no cover - every round removes what failed
            return NotificationPolicy()
        order = sorted(entries)
        subscriptions: list[Subscription] = []
        for position, entry in enumerate(spec.channels):
            channel = entry.name
            if channel not in self.channels:
                why = self.unusable_channels.get(channel)
                text = (
                    f"{KIND_CHANNEL} {channel!r} {why}"
                    if why
                    else self._not_found(KIND_CHANNEL, channel)
                )
                field_path = f"{prefix}.channels[{order[position]}].name"
                self.problems.append(
                    problem(f"{text}; the collection's other subscriptions work", field_path)
                )
                continue
            subscriptions.append(Subscription(channel=channel, events=entry.event_set()))
        return NotificationPolicy(
            subscriptions=tuple(subscriptions),
            grace_period=spec.grace_period,
            max_age=spec.max_age,
            shrink_ratio=spec.shrink_ratio,
            size_sample=spec.size_sample,
            refusal_threshold=spec.refusal_threshold,
            refusal_period=spec.refusal_period,
            usage_threshold=spec.usage_threshold,
            reminder_interval=spec.reminder_interval,
        )

    # Notification channels

    def _channel(self, document: Document) -> Channel | None:
        model = self._validate(NotificationChannel, document)
        if model is None:
            if document.name:
                self.unusable_channels[document.name] = "is broken (see its own problems)"
            return None
        problem = ProblemFactory(document)
        before = len(self.problems)
        name = model.metadata.name
        spec = model.spec
        blocks = {
            ChannelType.WEBHOOK: spec.webhook,
            ChannelType.EMAIL: spec.email,
            ChannelType.APPRISE: spec.apprise,
        }
        for kind, block in blocks.items():
            if kind is not spec.type and block is not None:
                self.problems.append(
                    problem(
                        f"type is {spec.type.value}, so {kind.value} must not be set "
                        f"(a channel has exactly one of webhook, email and apprise)",
                        f"spec.{kind.value}",
                    )
                )
        if blocks[spec.type] is None:
            self.problems.append(
                problem(
                    f"type {spec.type.value} needs {_article(spec.type.value)} "
                    f"{spec.type.value} block",
                    "spec",
                )
            )
        webhook: WebhookTarget | None = None
        email: EmailTarget | None = None
        apprise: AppriseTarget | None = None
        if spec.type is ChannelType.WEBHOOK and spec.webhook is not None:
            hook = spec.webhook
            url_problem, warning = webhook_url_problem(hook.url)
            if url_problem:
                self.problems.append(problem(url_problem, "spec.webhook.url"))
            elif warning:
                self.warnings.append(f"{document.source}: {KIND_CHANNEL}/{name}: {warning}")
            key = self._secret_value(
                hook.signing_secret_ref, "spec.webhook.signingSecretRef", problem
            )
            ca_file = self._ca_file(hook.ca_file, "spec.webhook.caFile", problem)
            if hook.ca_file is not None and not url_problem and urlsplit(hook.url).scheme == "http":
                self.warnings.append(
                    f"{document.source}: {KIND_CHANNEL}/{name}: spec.webhook.caFile is used "
                    "for https URLs only, and the webhook URL is http"
                )
            if key is not None and not url_problem:
                webhook = WebhookTarget(
                    url=hook.url, signing_secret=key, timeout=hook.timeout, ca_file=ca_file
                )
        elif spec.type is ChannelType.EMAIL and spec.email is not None:
            mail = spec.email
            password = ""
            if mail.password_from_ref is not None:
                if not mail.username:
                    self.problems.append(
                        problem(
                            "passwordFromRef needs username (the login of the SMTP server)",
                            "spec.email.username",
                        )
                    )
                if mail.security is SmtpSecurity.NONE:
                    self.problems.append(
                        problem(
                            "security none would send the SMTP password unencrypted: use "
                            "starttls or tls, or a relay that needs no login",
                            "spec.email.security",
                        )
                    )
                value = self._secret_value(
                    mail.password_from_ref, "spec.email.passwordFromRef", problem
                )
                password = value or ""
            elif mail.username:
                self.problems.append(
                    problem(
                        "username needs passwordFromRef (the password of the SMTP login)",
                        "spec.email.passwordFromRef",
                    )
                )
            ca_file = self._ca_file(mail.ca_file, "spec.email.caFile", problem)
            if mail.ca_file is not None and mail.security is SmtpSecurity.NONE:
                self.warnings.append(
                    f"{document.source}: {KIND_CHANNEL}/{name}: spec.email.caFile is used "
                    "with security tls or starttls only, and security is none"
                )
            email = EmailTarget(
                host=mail.host,
                port=mail.effective_port,
                security=mail.security,
                sender=mail.from_,
                recipients=mail.to,
                username=mail.username,
                password=password,
                timeout=mail.timeout,
                ca_file=ca_file,
            )
        elif spec.type is ChannelType.APPRISE and spec.apprise is not None:
            text = self._secret_value(
                spec.apprise.urls_from_ref, "spec.apprise.urlsFromRef", problem
            )
            if text is not None:
                urls = tuple(text.split())
                if not all("://" in url for url in urls):
                    self.problems.append(
                        problem(
                            f"the value of entry {spec.apprise.urls_from_ref.entry!r} in Secret "
                            f"{spec.apprise.urls_from_ref.name!r} must be one or more Apprise "
                            "URLs (such as mailto://... or tgram://...), separated by spaces "
                            "or new lines",
                            "spec.apprise.urlsFromRef",
                        )
                    )
                apprise = AppriseTarget(urls=urls, timeout=spec.apprise.timeout)
        if len(self.problems) > before:
            self.unusable_channels[name] = "is broken (see its own problems)"
            return None
        return Channel(
            name=name,
            type=spec.type,
            description=spec.description,
            webhook=webhook,
            email=email,
            apprise=apprise,
            all_collections=(
                spec.all_collections.event_set() if spec.all_collections is not None else None
            ),
        )

    def _ca_file(self, path: str | None, where: str, problem: ProblemFactory) -> str:
        """A channel's ``caFile`` once it was found usable ("" when not given). A file that
        is missing or holds no certificate is a problem: the channel could never deliver
        (its senders verify every certificate), so it is refused with the reason rather
        than loaded to fail each delivery."""
        if path is None:
            return ""
        why = ca_file_problem(path)
        if why:
            self.problems.append(problem(why, where))
            return ""
        return path

    def _secret_value(self, ref: SecretRef, where: str, problem: ProblemFactory) -> str | None:
        value, why = self._resolve(ref)
        if value is None:
            self.problems.append(problem(why, where))
        return value


# --- single values -----------------------------------------------------------------------------

# What a broken setting of spec.notifications falls back to, as the problem says it.
_POLICY_DEFAULTS = {
    "gracePeriod": "15m",
    "maxAge": "(none: never judged missing without windows)",
    "shrinkRatio": "0.5",
    "sizeSample": "5",
    "refusalThreshold": "3",
    "refusalPeriod": "24h",
    "usageThreshold": "90%",
    "reminderInterval": "24h",
}


def _article(word: str) -> str:
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


def webhook_url_problem(url: str) -> tuple[str, str]:
    """``(problem, warning)`` about a webhook URL: it must be http(s) with a host and no
    user or password in it; plain http to anything but a loopback address is accepted with
    a warning (the body is signed, but readable on the way). Neither names more of the URL
    than its scheme, host and port: a path may carry a token."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:
        return f"the webhook URL is not a valid URL ({exc})", ""
    shown = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
    if parts.scheme not in ("http", "https"):
        scheme = f"{parts.scheme}://" if parts.scheme else "no scheme"
        return f"the webhook URL must start with https:// (or http://), not {scheme}", ""
    if not host:
        return "the webhook URL has no host (write https://host/path)", ""
    if parts.username is not None or parts.password is not None:
        return (
            "the webhook URL must not carry a user or password (user:password@host); the "
            "receiver checks the signature header instead",
            "",
        )
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        return "the webhook URL must not contain spaces or control characters", ""
    if parts.scheme == "http" and not _is_loopback(host):
        return "", (
            f"the webhook URL {shown}/... uses plain http: the notifications are signed but "
            "can be read on the way; use https unless the network is trusted"
        )
    return "", ""


def ca_file_problem(path: str) -> str:
    """Empty when ``path`` is a file of PEM certificates the senders can trust, as they
    will load it (``ssl.create_default_context(cafile=...)``); else what is wrong with it.
    The file is read each time the configuration is built (a few kilobytes)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return f"the CA file {path} is not a regular file: name the PEM file itself"
        ssl.create_default_context(cafile=path)
    except FileNotFoundError:
        return (
            f"the CA file {path} does not exist: mount the ConfigMap or Secret that holds "
            "it there, or correct the path"
        )
    except PermissionError:
        return f"the CA file {path} cannot be read by the server (permission denied)"
    except ssl.SSLError as exc:
        if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND":
            reason = "no PEM certificate in it"
        else:
            reason = f"a certificate in it cannot be read ({exc.reason or exc.strerror or exc})"
        return (
            f"the CA file {path} is not usable: {reason}; it must hold the CA's certificates "
            "in PEM form (-----BEGIN CERTIFICATE-----)"
        )
    except OSError as exc:
        return f"the CA file {path} cannot be read ({exc.strerror or exc})"
    return ""


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_FORBIDDEN_IN_LOGIN = re.compile(r"[\s/\x00-\x1f\x7f]")


def _user_name_problem(name: str) -> str:
    if "$" in name:
        return (
            f"user name {name!r} must not contain '$' (it separates the user from the access "
            "key in a login)"
        )
    if len(name) > 253 or _FORBIDDEN_IN_LOGIN.search(name):
        return f"user name {name!r} must be at most 253 characters without spaces or '/'"
    return ""


def _access_key_name_problem(name: str) -> str:
    if not name.strip():
        return "an access key needs a name"
    if "$" in name:
        return f"access key name {name!r} must not contain '$' (the login is user$key)"
    if len(name) > 253 or _FORBIDDEN_IN_LOGIN.search(name):
        return f"access key name {name!r} must be at most 253 characters without spaces or '/'"
    return ""


def password_hash_problem(value: str) -> str:
    """Empty when ``value`` is an encoded password hash as the reference writes it (base64 of
    an Argon2 PHC string) or a bare PHC string; else what is wrong with it."""
    try:
        phc = decode_stored_hash(value)
    except InvalidPasswordHash:
        return (
            "is not an encoded Argon2 password hash (make one with "
            "`backup-repository --encode-password`)"
        )
    try:
        argon2.extract_parameters(phc)
    except argon2.exceptions.InvalidHashError:
        return "is a malformed Argon2 hash (its parameters, salt or hash cannot be read)"
    return ""


def grant_from_spec(spec: ObjectGrantSpec) -> ObjectGrant:
    return ObjectGrant(type=spec.type, name=spec.name, roles=frozenset(spec.roles))
