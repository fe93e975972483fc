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

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/") + "/fhir"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
