"""The one settings object. Every command and the server read it; env prefix `ALLIANCE_`.

With nothing set, everything lives under `./var/` of the working directory.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    #: Browser origins of DICOMweb viewers allowed by CORS on /dicomweb, separated by commas.
    viewer_origins: str = ""

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/") + "/fhir"

    @property
    def dicomweb_base(self) -> str:
        return self.base_url.rstrip("/") + "/dicomweb"

    @property
    def calling_ae_hospitals(self) -> dict[str, str]:
        """Calling AE title -> hospital id of the C-STORE peers allowed to associate."""
        pairs = [p.strip() for p in self.dicom_calling_aes.split(",") if p.strip()]
        if not pairs and self.demo:
            pairs = ["XYPEOPLE=xy-people", "XYTCM=xy-tcm", "XYMCH=xy-mch"]
        found: dict[str, str] = {}
        for pair in pairs:
            ae, sep, hospital = (x.strip() for x in pair.partition("="))
            if not sep or not ae or not hospital or len(ae) > 16:
                raise ValueError(
                    "ALLIANCE_DICOM_CALLING_AES holds AE=hospital-id pairs (AE titles of at "
                    "most 16 characters)"
                )
            found[ae] = hospital
        return found

    @property
    def viewer_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.viewer_origins.split(",") if o.strip()]

    @property
    def token_issuer(self) -> str:
        return self.base_url.rstrip("/") + "/auth"

    @property
    def signing_keys(self) -> list[tuple[str, str]]:
        """(kid, secret) pairs, signing key first. Demo mode has a fixed, public demo key."""
        pairs = [p.strip() for p in self.jwt_keys.split(",") if p.strip()]
        keys = []
        for pair in pairs:
            kid, sep, secret = pair.partition(":")
            if not sep or not kid or len(secret) < 32:
                raise ValueError(
                    "ALLIANCE_JWT_KEYS holds kid:secret pairs with secrets of 32+ characters"
                )
            keys.append((kid, secret))
        if not keys and self.demo:
            keys = [("demo", "alliance-demo-signing-key-not-for-production-use")]
        if not keys:
            raise ValueError("ALLIANCE_JWT_KEYS must be set outside demo mode")
        return keys


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
