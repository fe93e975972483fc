"""The diagnosis list doctors pick from (referral.diagnoses): the shipped sample or the
alliance's licensed ICD-10 国家临床版2.0 file, searched by code, name and pinyin initials."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alliance.config import Settings
from referral.diagnoses import DiagnosisList
from tests.accounts import portal as sign_in


def test_the_sample_is_searched_as_doctors_type() -> None:
    table = DiagnosisList.load()
    assert table["I21.900"] == "急性心肌梗死"
    assert table.search("i21")[0] == ("I21.900", "急性心肌梗死")  # a code's start
    assert table.search("心肌") == [("I21.900", "急性心肌梗死")]  # any part of the name
    assert table.search("jxxj") == [("I21.900", "急性心肌梗死")]  # pinyin initials
    assert table.search("") == [] and table.search("没有这种病") == []
    assert len(table.search("i", limit=3)) == 3


def test_the_licensed_file_is_loaded_and_a_bad_one_refused(tmp_path: Path) -> None:
    good = tmp_path / "icd10.csv"
    good.write_text("# licensed\ncode,name\nA00.000,霍乱\nA01.000,伤寒\n", encoding="utf-8")
    table = DiagnosisList.load(good)
    assert dict(table) == {"A00.000": "霍乱", "A01.000": "伤寒"}
    assert table.search("hl") == [("A00.000", "霍乱")]
    headless = tmp_path / "bad.csv"
    headless.write_text("A00.000,霍乱\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header code,name"):
        DiagnosisList.load(headless)
    empty = tmp_path / "empty-code.csv"
    empty.write_text("code,name\n,霍乱\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 2 needs a code and a name"):
        DiagnosisList.load(empty)
    with pytest.raises(ValueError, match="ALLIANCE_ICD10_FILE"):
        Settings(icd10_file=str(tmp_path / "missing.csv"))


def test_the_request_form_suggests_diagnoses(client: TestClient) -> None:
    sign_in(client, "dr.xinyuan.people")
    r = client.get("/codes/diagnoses", params={"q": "jxxj"})
    assert (r.status_code, r.json()) == (200, [{"code": "I21.900", "name": "急性心肌梗死"}])
