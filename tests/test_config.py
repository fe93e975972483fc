"""Settings are checked when loaded: a bad value fails `Settings()` with a message naming the
variable, at start, not in a request later; what is derived is not parsed again per use."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from alliance.config import Settings
from server.app import create_app

GOOD_KEY = "k1:" + "s" * 40


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"jwt_keys": "k1:short"}, "ALLIANCE_JWT_KEYS"),
        ({"jwt_keys": GOOD_KEY, "signature_keys": "s1:not-32-bytes"}, "ALLIANCE_SIGNATURE_KEYS"),
        ({"jwt_keys": GOOD_KEY, "dicom_calling_aes": "TOO_LONG_AE_TITLE_X=xy-people"}, "AE"),
        ({"jwt_keys": GOOD_KEY, "dicom_calling_aes": "XYPEOPLE"}, "ALLIANCE_DICOM_CALLING_AES"),
        ({"jwt_keys": GOOD_KEY, "base_url": "127.0.0.1:8000"}, "ALLIANCE_BASE_URL"),
        ({"jwt_keys": GOOD_KEY, "database_url": "mysql://x"}, "ALLIANCE_DATABASE_URL"),
        ({"jwt_keys": GOOD_KEY, "storage_url": "ftp://x/y"}, "ALLIANCE_STORAGE_URL"),
    ],
)
def test_a_bad_setting_fails_at_load_naming_it(values: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError) as failure:
        Settings(demo=False, **values)  # type: ignore[arg-type]
    assert named in str(failure.value)


def test_derived_settings_follow_a_copy_with_new_values() -> None:
    settings = Settings(demo=True)
    assert settings.calling_ae_hospitals == {
        "XYPEOPLE": "xy-people",
        "XYTCM": "xy-tcm",
        "XYMCH": "xy-mch",
    }
    moved = settings.model_copy(
        update={"dicom_calling_aes": "XYPEOPLE_CT=xy-people", "jwt_keys": GOOD_KEY}
    )
    assert moved.calling_ae_hospitals == {"XYPEOPLE_CT": "xy-people"}
    assert moved.signing_keys == [("k1", "s" * 40)]
    with pytest.raises(ValidationError):
        settings.model_copy(update={"viewer_origins": "x", "base_url": "nope"})


def test_the_server_does_not_start_without_token_keys_outside_demo_mode(tmp_path: Path) -> None:
    """Migrating or verifying the trail needs no token key; serving does."""
    settings = Settings(demo=False, database_url=f"sqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(ValueError, match="ALLIANCE_JWT_KEYS must be set outside demo mode"):
        create_app(settings)
