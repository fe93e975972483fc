"""Channels that carry notices to people beyond the portal (issue 14.4), pluggable: each takes
a `Message` to one person and either hands it on or raises `NotDelivered`. Which exist comes
from the settings (`channels_from`); a new one (another gateway, another protocol) is a class
with a `name`, `available(hospital_id)` and `send(message)`, added there.

A message says what happened, when, and where in the portal to read it: no patient name and no
clinical text, because e-mail and SMS leave the alliance's systems (PIPL: health data is
sensitive; the portal shows the rest to whoever signs in and may see it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol

import httpx

from alliance.config import Settings


class NotDelivered(Exception):
    """The channel did not take the message (the delivery is retried)."""


@dataclass(frozen=True)
class Line:
    """One event of a message: its outbox number (receivers de-duplicate by it), kind, words,
    time as the person reads it, and the portal address to read it at."""

    number: int
    kind: str
    words: str
    at: str
    link: str
    urgent: bool


@dataclass(frozen=True)
class Message:
    to: str
    username: str
    hospital_id: str
    subject: str
    lines: list[Line] = field(default_factory=list)

    @property
    def urgent(self) -> bool:
        return any(line.urgent for line in self.lines)

    @property
    def text(self) -> str:
        return "\n".join(
            [f"{line.words} · {line.at}\n  {line.link}" for line in self.lines]
            + ["", "登录医联体平台查看详情。"]
        )

    @property
    def key(self) -> str:
        """The same for the same events to the same person, so a message sent twice (at least
        once) can be recognised as one."""
        first, last = self.lines[0].number, self.lines[-1].number
        return f"{self.username}.{first}-{last}"


class Channel(Protocol):
    name: str

    def available(self, hospital_id: str) -> bool:
        """Whether this channel can reach people of this hospital."""
        ...

    def send(self, message: Message) -> None:
        """Hand the message on; raise NotDelivered when that failed."""
        ...


class Email:
    """E-mail over SMTP (RFC 5321), one message per delivery, its Message-ID made of the event
    numbers it carries (RFC 5322 3.6.4), so a duplicate is recognisable."""

    name = "email"

    def __init__(self, settings: Settings, timeout: float = 10) -> None:
        self.settings = settings
        self.timeout = timeout

    def available(self, hospital_id: str) -> bool:
        return bool(self.settings.notice_smtp_host)

    def send(self, message: Message) -> None:
        s = self.settings
        mail = EmailMessage()
        mail["From"] = s.notice_mail_from
        mail["To"] = message.to
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(localtime=False)
        domain = s.notice_mail_from.rpartition("@")[2] or "alliance"
        mail["Message-ID"] = make_msgid(idstring=f"notice.{message.key}", domain=domain)
        if message.urgent:
            mail["Importance"] = "high"
        mail.set_content(message.text)
        try:
            with smtplib.SMTP(s.notice_smtp_host, s.notice_smtp_port, timeout=self.timeout) as smtp:
                if s.notice_smtp_starttls:
                    smtp.starttls()
                if s.notice_smtp_username:
                    smtp.login(s.notice_smtp_username, s.notice_smtp_password)
                smtp.send_message(mail)
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise NotDelivered(f"SMTP: {type(exc).__name__}: {exc}"[:500]) from exc


class Webhook:
    """A JSON POST to the gateway the person's hospital named (ALLIANCE_NOTICE_WEBHOOKS): its
    SMS or WeChat Work gateway turns it into a text to `to`. A 2xx answer is taken as
    delivered; anything else is retried."""

    name = "webhook"

    def __init__(self, settings: Settings, timeout: float = 10) -> None:
        self.urls = settings.notice_webhook_urls
        self.secret = settings.notice_webhook_secret.encode()
        self.http = httpx.Client(follow_redirects=False, timeout=timeout)

    def available(self, hospital_id: str) -> bool:
        return hospital_id in self.urls

    def body(self, message: Message) -> bytes:
        return json.dumps(
            {
                "id": message.key,
                "to": message.to,
                "user": message.username,
                "urgent": message.urgent,
                "subject": message.subject,
                "text": message.text,
                "events": [
                    {
                        "number": x.number,
                        "kind": x.kind,
                        "text": x.words,
                        "at": x.at,
                        "link": x.link,
                    }
                    for x in message.lines
                ],
            },
            ensure_ascii=False,
        ).encode()

    def send(self, message: Message) -> None:
        url = self.urls.get(message.hospital_id)
        if url is None:
            raise NotDelivered(f"no webhook for hospital {message.hospital_id}")
        body = self.body(message)
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if self.secret:
            digest = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            headers["X-Alliance-Signature"] = f"sha256={digest}"
        try:
            answer = self.http.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise NotDelivered(f"webhook: {type(exc).__name__}: {exc}"[:500]) from exc
        if not 200 <= answer.status_code < 300:
            raise NotDelivered(f"webhook: HTTP {answer.status_code}")


def channels_from(settings: Settings) -> dict[str, Channel]:
    """The channels this deployment has, by name."""
    return {c.name: c for c in (Email(settings), Webhook(settings))}
