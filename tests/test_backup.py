"""`alliance backup` / `alliance restore` of the embedded default: a round trip taken while the
server runs, restored elsewhere, passes `alliance audit verify` with its checkpoints."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from alliance.audit.anchor import PREFIX
from alliance.config import Settings, get_settings
from alliance.storage import FileBlobStore
from server.app import create_app
from server.cli import main
from tests.conftest import bearer
from tests.imaging_data import ct_series, multipart, stow_headers


@pytest.fixture
def use(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], None]]:
    """Point the CLI's settings at a database and a blob store."""

    def point(database_url: str, storage_url: str) -> None:
        monkeypatch.setenv("ALLIANCE_DATABASE_URL", database_url)
        monkeypatch.setenv("ALLIANCE_STORAGE_URL", storage_url)
        monkeypatch.setenv("ALLIANCE_DEMO", "true")
        get_settings.cache_clear()

    yield point
    get_settings.cache_clear()


def test_a_backup_restored_elsewhere_verifies(
    settings: Settings,
    as_user: Callable[[str], TestClient],
    use: Callable[[str, str], None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL is backed up with pg_dump (README: Backup and restore)")
    doctor = as_user("dr.xinyuan.people")
    instances = ct_series(2)
    sops = [pydicom.dcmread(io.BytesIO(i)).SOPInstanceUID for i in instances]
    study = pydicom.dcmread(io.BytesIO(instances[0])).StudyInstanceUID
    r = doctor.post("/dicomweb/studies", content=multipart(instances), headers=stow_headers())
    assert r.status_code == 200
    use(settings.database_url, settings.storage_url)
    assert main(["audit", "checkpoint"]) == 0
    assert main(["backup", str(tmp_path / "backup")]) == 0
    # After the backup: a record and a checkpoint the backup does not have.
    assert doctor.get("/fhir/Patient/demo-aygul").status_code == 200
    assert main(["audit", "checkpoint"]) == 0
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["checkpoints_left_out"] == 0

    restored_db = f"sqlite:///{tmp_path / 'restored' / 'alliance.db'}"
    restored_blobs = (tmp_path / "restored" / "blobs").as_uri()
    use(restored_db, restored_blobs)
    capsys.readouterr()
    assert main(["restore", str(tmp_path / "backup")]) == 0
    assert main(["audit", "verify"]) == 0
    out = capsys.readouterr().out
    assert f"{manifest['audit_records']} records" in out, out
    # Every blob the restored database points to is there: the study reads back whole.
    restored = FileBlobStore(tmp_path / "restored" / "blobs")
    original = FileBlobStore(Path(settings.storage_url.removeprefix("file://")))
    assert set(restored.list_keys()) <= set(original.list_keys())
    assert len([k for k in restored.list_keys(PREFIX)]) == 1
    # A second restore over the data there is refused without --force.
    assert main(["restore", str(tmp_path / "backup")]) == 2
    assert "already holds data" in capsys.readouterr().err
    assert main(["restore", "--force", str(tmp_path / "backup")]) == 0
    assert main(["audit", "verify"]) == 0
    # The restored service serves the study, every instance's bytes from the restored blobs.
    again = settings.model_copy(update={"database_url": restored_db, "storage_url": restored_blobs})
    app = create_app(again)
    try:
        with TestClient(app, headers=bearer(again, "dr.xinyuan.people")) as client:
            r = client.get(
                f"/dicomweb/studies/{study}",
                headers={"Accept": 'multipart/related; type="application/dicom"'},
            )
            assert r.status_code == 200
            assert all(sop.encode() in r.content for sop in sops)
    finally:
        app.state.services.db.dispose()


def test_a_checkpoint_newer_than_the_copied_trail_is_left_out(
    settings: Settings,
    use: Callable[[str, str], None],
    tmp_path: Path,
) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL is backed up with pg_dump (README: Backup and restore)")
    use(settings.database_url, settings.storage_url)
    store = FileBlobStore(Path(settings.storage_url.removeprefix("file://")))
    store.put(io.BytesIO(b"{}"), key=f"{PREFIX}999999999999.json")
    assert main(["backup", str(tmp_path / "b")]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["checkpoints_left_out"] == 1
    assert not (tmp_path / "b" / "blobs" / "audit-checkpoints" / "999999999999.json").exists()


def test_backup_refuses_postgresql_and_a_folder_in_use(
    use: Callable[[str, str], None], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    use("postgresql+psycopg://u@127.0.0.1/db", (tmp_path / "blobs").as_uri())
    assert main(["backup", str(tmp_path / "b")]) == 2
    assert "for PostgreSQL use pg_dump" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    use(f"sqlite:///{tmp_path / 'a.db'}", (tmp_path / "blobs").as_uri())
    (tmp_path / "a.db").write_bytes(b"")
    assert main(["backup", str(tmp_path / "full")]) == 2
    assert "is not empty" in capsys.readouterr().err
