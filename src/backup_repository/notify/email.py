"""Email channels: one ``multipart/alternative`` message (plain text and HTML) per event,
over SMTP with implicit TLS, STARTTLS or no encryption, with optional authentication.

The standard library's ``smtplib`` runs in a worker thread: a notification is one short
SMTP conversation, so an asynchronous client would add a dependency for nothing. Every
socket operation is bounded by the channel's timeout, and the whole delivery by the same
bound (plus a little) on the event loop's side.

Certificates are always verified (against the channel's CA file when it names one). The
``Message-ID`` is derived from the event id, so a redelivered event is recognisable as the
same message. Classification: a 5xx reply and a refused login are permanent; a 4xx reply,
a time-out, a dropped connection or a TLS failure may pass (retryable). The password
never appears in a message or a log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import smtplib
import ssl
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, parseaddr
from typing import Final

from backup_repository.domain.notification_channels import (
    DeliveryError,
    EmailTarget,
    NotificationEvent,
    SmtpSecurity,
)
from backup_repository.notify.payload import ServerInfo, html_text, plain_text, subject

# Time left to smtplib to give up by itself after the channel's timeout passed.
_GRACE_SECONDS: Final = 2.0
_MSG_ID_LEFT: Final = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,200}")
_DOMAIN: Final = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*"
)


def message_id(event_id: str, sender: str, server: ServerInfo) -> str:
    """``<event id@domain of the sender>``: the same for every delivery of one event. An id
    with characters a Message-ID cannot hold is replaced by its SHA-256."""
    left = event_id.strip(".")
    if not _MSG_ID_LEFT.fullmatch(left) or ".." in left:
        left = hashlib.sha256(event_id.encode()).hexdigest()
    _local, at, domain = parseaddr(sender)[1].rpartition("@")
    if not at or not _DOMAIN.fullmatch(domain):
        domain = server.name if _DOMAIN.fullmatch(server.name) else "backup-repository.invalid"
    return f"<{left}@{domain}>"


def build_message(
    target: EmailTarget, event: NotificationEvent, server: ServerInfo, now: datetime
) -> EmailMessage:
    """The message: Subject, From, To, Date, Message-ID, ``Auto-Submitted`` (so that
    vacation replies are not sent back), a text/plain and a text/html part. Raises
    DeliveryError (permanent) when an address cannot be a header."""
    message = EmailMessage()
    try:
        message["Subject"] = subject(event, server)
        message["From"] = target.sender
        message["To"] = ", ".join(target.recipients)
        message["Date"] = format_datetime(now)
        message["Message-ID"] = message_id(event.id, target.sender, server)
        message["Auto-Submitted"] = "auto-generated"
        message["X-Backup-Repository-Event"] = event.id
    except (ValueError, TypeError) as exc:
        raise DeliveryError(
            f"the channel's sender or recipients cannot be used in a message ({exc}); "
            "check from and to",
            permanent=True,
        ) from None
    message.set_content(plain_text(event, server))
    message.add_alternative(html_text(event, server), subtype="html")
    return message


class EmailSender:
    def __init__(self, server: ServerInfo, clock: Callable[[], datetime]) -> None:
        self._server = server
        self._clock = clock
        name = server.name
        # EHLO's name: the server's name when it is one (smtplib would otherwise look up
        # this host's fully qualified name, which can hang on a broken resolver).
        self._helo = name if _DOMAIN.fullmatch(name) else "localhost"

    async def send(self, target: EmailTarget, event: NotificationEvent) -> None:
        if not target.recipients:
            raise DeliveryError(
                "the channel has no recipients; add an address to its to list", permanent=True
            )
        message = build_message(target, event, self._server, self._clock())
        seconds = target.timeout.total_seconds()
        place = f"the SMTP server {target.host}:{target.port}"
        try:
            async with asyncio.timeout(seconds + _GRACE_SECONDS):
                await asyncio.to_thread(_deliver, target, message, seconds, self._helo, place)
        except TimeoutError:
            raise DeliveryError(f"{place} did not answer within {seconds:g}s") from None


def _context(target: EmailTarget) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=target.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise DeliveryError(
            f"the CA file {target.ca_file} cannot be used ({exc}); check the channel's caFile",
            permanent=True,
        ) from None


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error
    said = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return f"{exc.smtp_code} {' '.join(said.split())}".strip()


def _deliver(
    target: EmailTarget, message: EmailMessage, seconds: float, helo: str, place: str
) -> None:
    """One SMTP conversation (in a worker thread); raises DeliveryError."""
    context = _context(target)
    envelope_from = parseaddr(target.sender)[1]
    recipients = [address for _name, address in getaddresses(list(target.recipients))]
    try:
        client: smtplib.SMTP
        if target.security is SmtpSecurity.TLS:
            client = smtplib.SMTP_SSL(
                target.host, target.port, local_hostname=helo, timeout=seconds, context=context
            )
        else:
            client = smtplib.SMTP(target.host, target.port, local_hostname=helo, timeout=seconds)
        with client:
            client.ehlo_or_helo_if_needed()
            if target.security is SmtpSecurity.STARTTLS:
                if not client.has_extn("starttls"):
                    raise DeliveryError(
                        f"{place} does not offer STARTTLS; check the channel's security "
                        "(tls for implicit TLS, usually port 465) and port",
                        permanent=True,
                    )
                client.starttls(context=context)
                client.ehlo()
            if target.username:
                client.login(target.username, target.password)
            refused = client.send_message(message, from_addr=envelope_from, to_addrs=recipients)
    except DeliveryError:
        raise
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(
            f"{place} refused the login of {target.username} ({_reply(exc)}); check the "
            "channel's username and password",
            permanent=True,
        ) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(
            f"{place} does not support what the channel asks ({exc}); check its security "
            "and whether the server wants a login",
            permanent=True,
        ) from None
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _text in exc.recipients.values()]
        raise DeliveryError(
            f"{place} refused every recipient: {_refusals(exc.recipients)}",
            permanent=all(code >= 500 for code in codes),
        ) from None
    except smtplib.SMTPResponseException as exc:
        permanent = exc.smtp_code >= 500
        raise DeliveryError(
            f"{place} answered {_reply(exc)}" + ("" if permanent else " (a temporary refusal)"),
            permanent=permanent,
        ) from None
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(
            f"{place}: certificate verify failed ({exc.verify_message}); the server's "
            "certificate must be trusted by this host (or by the channel's CA file)"
        ) from None
    except ssl.SSLError as exc:
        raise DeliveryError(
            f"{place}: the TLS handshake failed ({exc.reason or exc}); check the channel's "
            "security (tls: implicit TLS, usually port 465; starttls: usually port 587)"
        ) from None
    except TimeoutError:
        raise DeliveryError(f"{place} did not answer within {seconds:g}s") from None
    except smtplib.SMTPException as exc:
        if isinstance(exc.__context__, TimeoutError):
            # smtplib turns a read that timed out into "Connection unexpectedly closed".
            raise DeliveryError(f"{place} did not answer within {seconds:g}s") from None
        raise DeliveryError(f"{place}: {exc}") from None
    except OSError as exc:
        raise DeliveryError(f"{place} could not be reached: {exc.strerror or exc}") from None
    if refused:
        delivered = len(recipients) - len(refused)
        raise DeliveryError(
            f"{place} took the message for {delivered} of {len(recipients)} recipients and "
            f"refused {_refusals(refused)}; it is not sent again (the others have it)",
            permanent=True,
        )


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return ", ".join(
        f"{address} ({code} {' '.join(text.decode(errors='replace').split())})"
        for address, (code, text) in refused.items()
    )
