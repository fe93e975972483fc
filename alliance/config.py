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
    #: Lifetime of access tokens, in seconds.
    token_lifetime: int = 3600
    #: Failed logins in a row that lock an account, and for how long (seconds).
    max_failed_logins: int = 5
    lockout_seconds: int = 900

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/") + "/fhir"

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
