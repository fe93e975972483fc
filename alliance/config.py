"""The one settings object. Every command and the server read it; env prefix `ALLIANCE_`.

With nothing set, everything lives under `./var/` of the working directory.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The fixed, public key of demo mode (never for production: anyone can read it here).
DEMO_JWT_KEY = ("demo", "alliance-demo-signing-key-not-for-production-use")
DEMO_CALLING_AES = {"XYPEOPLE": "xy-people", "XYTCM": "xy-tcm", "XYMCH": "xy-mch"}


def _default_storage_url() -> str:
    return (Path.cwd() / "var" / "blobs").resolve().as_uri()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ALLIANCE_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///./var/alliance.db"
    storage_url: str = Field(default_factory=_default_storage_url)
    base_url: str = "http://127.0.0.1:8000"
    #: Demo mode allows the documented demo passwords; off in production.
    demo: bool = False

    #: Largest FHIR request body accepted, in bytes (413 beyond it).
    max_body_bytes: int = 16 * 1024 * 1024
    #: Search page size when the client gives no `_count`, and the cap on `_count`.
    default_page_size: int = 20
    max_page_size: int = 200
    #: Database connection pool size per API worker (PostgreSQL).
    db_pool_size: int = 10

    #: Token signing keys as `kid:secret` pairs separated by commas; the first signs, all
    #: verify (rotate by putting a new key first and dropping the old one after a token
    #: lifetime). Required outside demo mode; secrets of at least 32 characters.
    jwt_keys: str = ""
    #: Ed25519 signature keys (signed opinions, audit checkpoints) as `kid:seed` pairs
    #: separated by commas, each seed 32 random bytes in base64url; the first signs. Public
    #: keys are recorded when first used, so a key taken out still verifies what it signed.
    #: Demo mode: a public demo key. Without it a worker verifies but does not sign.
    signature_keys: str = ""
    #: Every this many audit records a signed checkpoint of the chain (position, hash) goes to
    #: the blob store, outside the database; one is also written when the server stops. 0: only
    #: on shutdown and `alliance audit checkpoint`.
    audit_checkpoint_every: int = Field(default=1000, ge=0)
    #: Lifetime of access tokens, in seconds.
    token_lifetime: int = 3600
    #: Minutes without activity after which a portal session ends, and the hours after which
    #: it ends however active it is (its tokens are renewed within that life, never beyond).
    portal_idle_minutes: int = 30
    portal_session_hours: float = 12
    #: Failed logins are throttled (alliance.security.throttle): after this many failures on
    #: one account (or client), and from one client address, further attempts wait
    #: `login_backoff_seconds`, doubling with each further failure up to
    #: `login_backoff_max_seconds`; failures are forgotten after twice that without one.
    login_account_failures: int = 5
    login_address_failures: int = 20
    login_backoff_seconds: int = 30
    login_backoff_max_seconds: int = 900

    #: Hours the owner hospital has to accept or decline a referral, per priority.
    deadline_hours: dict[str, float] = Field(
        default_factory=lambda: {"stat": 2.0, "urgent": 2.0, "asap": 12.0, "routine": 48.0}
    )
    #: Days a completed referral keeps the shared records open to the hospital that took it.
    grant_days_after_completion: int = 90
    #: Largest uploaded attachment (scanned consent, report), in bytes.
    max_attachment_bytes: int = 20 * 1024 * 1024
    #: The ICD-10 国家临床版2.0 table doctors pick diagnoses from (licensed data: a UTF-8 CSV
    #: with a `code,name` header); None: the sample shipped in referral/data.
    icd10_file: str | None = None

    #: Seconds a teleconsult hold ($hold) keeps its time before it frees by itself.
    teleconsult_hold_seconds: int = 600
    #: The video room of a booked teleconsult: a URL template with `{room}` where the random,
    #: unguessable room id goes (a self-hosted Jitsi, for example), and the kind of service.
    teleconsult_room_url: str = "https://meet.yzxy-alliance.cn/{room}"
    teleconsult_room_channel: str = "jitsi"
    #: Longest window `$find` and Slot searches look through, in days.
    teleconsult_find_max_days: int = 92

    #: DICOM C-STORE receiver (PS3.4 Annex B): its TCP port (None: not started by `serve`),
    #: the address it listens on, and its own AE title.
    dicom_port: int | None = None
    dicom_host: str = "127.0.0.1"
    dicom_ae_title: str = "ALLIANCE"
    #: Calling AE titles allowed to store, each with its hospital, as `AE=hospital-id` pairs
    #: separated by commas ("XYPEOPLE_CT=xy-people,XYTCM_US=xy-tcm"). Any other calling AE is
    #: refused at association. Empty outside demo mode means nobody may associate.
    dicom_calling_aes: str = ""
    #: Largest STOW-RS request body, in bytes (413 beyond it, before reading it all).
    max_stow_bytes: int = 2 * 1024 * 1024 * 1024
    #: Most parts in one STOW-RS request (413 beyond): every part costs a spool file and an
    #: entry in the response, however small the part.
    max_stow_parts: int = 10_000
    #: Browser origins of DICOMweb viewers allowed by CORS on /dicomweb, separated by commas.
    viewer_origins: str = ""
    #: Addresses or networks (CIDR) of the reverse proxies whose `Forwarded` /
    #: `X-Forwarded-Proto` / `X-Forwarded-Host` / `X-Forwarded-For` headers are believed,
    #: separated by commas ("127.0.0.1,10.0.0.0/8"). From anyone else they are ignored.
    trusted_proxies: str = ""

    #: The sweep (at start-up and `alliance storage sweep`) removes unreferenced blobs and
    #: spool files only when older than this many seconds, so uploads still running are safe;
    #: it must exceed the longest upload (a STOW-RS body is staged before it is indexed).
    #: 0 removes whatever nothing references at once: only where nothing else can be uploading
    #: when the server starts (one server, restarted after a crash, as the kill tests do).
    sweep_min_age_seconds: int = Field(default=6 * 3600, ge=0)
    #: Whether the server sweeps (orphans, spool files, stale ImagingStudy counts) at start-up.
    sweep_on_start: bool = True
    #: Whether `alliance serve` delivers notifications itself (the outbox worker, issue 14);
    #: off when `alliance worker` processes deliver them instead.
    notify_worker: bool = True
    #: How long `alliance serve`, told to stop (SIGTERM), gives the requests under way before
    #: cancelling them (uvicorn's timeout_graceful_shutdown).
    shutdown_grace_seconds: int = Field(default=30, ge=1)
    #: The URL prefixes a Subscription's rest-hook may name, comma-separated
    #: (`https://his.xy-people.example/fhir-notify,https://10.20.0.5/`). Empty: any http(s)
    #: endpoint, for a demo; set it in production, or a partner's token can make the server
    #: post to any address it can reach.
    notify_endpoints: str = ""
    #: Notices to people beyond the portal (issue 14.4), channel by channel. E-mail: the SMTP
    #: server that relays them (empty: no e-mail channel), STARTTLS, and the account used to
    #: log in to it (empty: none), and the sender's address.
    notice_smtp_host: str = ""
    notice_smtp_port: int = 25
    notice_smtp_starttls: bool = False
    notice_smtp_username: str = ""
    notice_smtp_password: str = ""
    notice_mail_from: str = "noreply@yzxy-alliance.cn"
    #: The webhook each hospital points at its own SMS or WeChat Work gateway, as
    #: `hospital-id=https://...` pairs separated by commas; a hospital without one has no
    #: webhook channel. With a secret, each POST carries `X-Alliance-Signature: sha256=<hex
    #: HMAC-SHA256 of the body>` so the gateway can tell the alliance's from anyone else's.
    notice_webhooks: str = ""
    notice_webhook_secret: str = ""
    #: How often (seconds) an open live-notice stream of the portal looks for new events.
    notice_poll_seconds: float = Field(default=0.5, gt=0)

    # Derived once, when the settings are loaded (a bad value fails `Settings()` with a clear
    # message at start, not a request later), never parsed again per use.
    _signing_keys: list[tuple[str, str]] = PrivateAttr(default_factory=list)
    _signature_seeds: list[tuple[str, bytes]] = PrivateAttr(default_factory=list)
    _calling_ae_hospitals: dict[str, str] = PrivateAttr(default_factory=dict)
    _viewer_origins: list[str] = PrivateAttr(default_factory=list)
    _trusted_proxies: list[IPv4Network | IPv6Network] = PrivateAttr(default_factory=list)
    _notice_webhooks: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _derive(self) -> Self:
        for name in ("base_url",):
            url = urlsplit(getattr(self, name))
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(f"ALLIANCE_{name.upper()} is an http(s) URL, not {url.geturl()!r}")
        if not self.database_url.startswith(("sqlite:", "postgresql")):
            raise ValueError("ALLIANCE_DATABASE_URL is sqlite:///… or postgresql+psycopg://…")
        if self.icd10_file is not None and not Path(self.icd10_file).is_file():
            raise ValueError(f"ALLIANCE_ICD10_FILE {self.icd10_file!r} is not a readable file")
        if urlsplit(self.storage_url).scheme not in ("file", "s3"):
            raise ValueError("ALLIANCE_STORAGE_URL is file:///absolute/path or s3://…")
        self._signing_keys = _jwt_keys(self.jwt_keys, self.demo)
        self._signature_seeds = _signature_seeds(self.signature_keys)
        self._calling_ae_hospitals = _calling_aes(self.dicom_calling_aes, self.demo)
        self._viewer_origins = [
            o.strip().rstrip("/") for o in self.viewer_origins.split(",") if o.strip()
        ]
        try:
            self._trusted_proxies = [
                ip_network(p.strip(), strict=False)
                for p in self.trusted_proxies.split(",")
                if p.strip()
            ]
        except ValueError:
            raise ValueError(
                "ALLIANCE_TRUSTED_PROXIES holds IP addresses or CIDR networks separated by commas, "
                f"not {self.trusted_proxies!r}"
            ) from None
        self._notice_webhooks = _notice_webhooks(self.notice_webhooks)
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with `update`, loaded again, so what is derived follows the new values."""
        if not update:
            return super().model_copy(deep=deep)
        return type(self)(**{**self.model_dump(), **update})

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/") + "/fhir"

    @property
    def dicomweb_base(self) -> str:
        return self.base_url.rstrip("/") + "/dicomweb"

    @property
    def calling_ae_hospitals(self) -> dict[str, str]:
        """Calling AE title -> hospital id of the C-STORE peers allowed to associate."""
        return self._calling_ae_hospitals

    @property
    def notify_endpoint_prefixes(self) -> tuple[str, ...]:
        """`notify_endpoints` as a tuple of prefixes."""
        return tuple(p.strip() for p in self.notify_endpoints.split(",") if p.strip())

    @property
    def notice_webhook_urls(self) -> dict[str, str]:
        """Hospital id -> the webhook of its SMS / WeChat Work gateway."""
        return self._notice_webhooks

    @property
    def viewer_origin_list(self) -> list[str]:
        return self._viewer_origins

    @property
    def trusted_proxy_networks(self) -> list[IPv4Network | IPv6Network]:
        return self._trusted_proxies

    @property
    def token_issuer(self) -> str:
        return self.base_url.rstrip("/") + "/auth"

    @property
    def signing_keys(self) -> list[tuple[str, str]]:
        """Token signing keys as (kid, secret) pairs, signing key first. Demo mode has a
        fixed, public demo key. Commands that issue or check no token (migrating, verifying
        the audit trail) run without them; the server does not start without them."""
        if not self._signing_keys:
            raise ValueError("ALLIANCE_JWT_KEYS must be set outside demo mode")
        return self._signing_keys

    @property
    def signature_seeds(self) -> list[tuple[str, bytes]]:
        """Ed25519 signature keys as (kid, 32-byte seed), signing key first; may be empty."""
        return self._signature_seeds


def _jwt_keys(text: str, demo: bool) -> list[tuple[str, str]]:
    keys = []
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        kid, sep, secret = pair.partition(":")
        if not sep or not kid or len(secret) < 32:
            raise ValueError(
                "ALLIANCE_JWT_KEYS holds kid:secret pairs with secrets of 32+ characters"
            )
        keys.append((kid, secret))
    if not keys and demo:
        keys = [DEMO_JWT_KEY]
    return keys


def _signature_seeds(text: str) -> list[tuple[str, bytes]]:
    seeds = []
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        kid, sep, seed_text = (x.strip() for x in pair.partition(":"))
        try:
            seed = base64.urlsafe_b64decode(seed_text + "=" * (-len(seed_text) % 4))
        except (ValueError, binascii.Error):
            seed = b""
        if not sep or not kid or len(kid) > 64 or len(seed) != 32:
            raise ValueError(
                "ALLIANCE_SIGNATURE_KEYS holds kid:seed pairs, each seed 32 random bytes in "
                "base64url (python -c 'import base64,os; "
                "print(base64.urlsafe_b64encode(os.urandom(32)).decode())')"
            )
        seeds.append((kid, seed))
    return seeds


def _calling_aes(text: str, demo: bool) -> dict[str, str]:
    pairs = [p.strip() for p in text.split(",") if p.strip()]
    if not pairs and demo:
        return dict(DEMO_CALLING_AES)
    found: dict[str, str] = {}
    for pair in pairs:
        ae, sep, hospital = (x.strip() for x in pair.partition("="))
        if not sep or not ae or not hospital or len(ae) > 16:
            raise ValueError(
                "ALLIANCE_DICOM_CALLING_AES holds AE=hospital-id pairs (AE titles of at most 16 "
                "characters)"
            )
        found[ae] = hospital
    return found


def _notice_webhooks(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        hospital, sep, url = (x.strip() for x in pair.partition("="))
        parts = urlsplit(url)
        if not sep or not hospital or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                "ALLIANCE_NOTICE_WEBHOOKS holds hospital-id=https://... pairs separated by commas"
            )
        found[hospital] = url
    return found


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
