"""The main pages pass an axe-core scan (WCAG 2.1 A/AA rules) with no serious or critical
violation, in Chromium. axe-core comes from the npm registry (installed on first use into
tests/.axe, which git ignores) and is given to each page by the test."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from tests.conftest import LiveServer, bearer, skip_or_fail
from tests.imaging_data import AYGUL, ct_series, multipart, stow_headers
from tests.referrals import create, record_consent, request_body, task_body
from tests.test_portal_browser import browser, sign_in  # noqa: F401  (the fixture)

AXE_DIR = Path(__file__).parent / ".axe"
AXE = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"


@pytest.fixture(scope="session")
def axe_script() -> Path:
    if not AXE.exists():
        npm = shutil.which("npm")
        if npm is None:
            skip_or_fail("the accessibility scan needs npm to install axe-core")
        subprocess.run(
            [str(npm), "install", "--no-save", "--silent", "--prefix", str(AXE_DIR), "axe-core@4"],
            check=True,
            timeout=300,
        )
    return AXE


def violations(page: Any, axe: Path) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(axe))
    found = page.evaluate(
        "async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21a',"
        " 'wcag21aa']})).violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))"
    )
    return [v for v in found if v["impact"] in ("serious", "critical")]


PAGES = {
    "dr.xinyuan.people": [
        "/patients",
        "/patients/new",
        "/patients/demo-aygul",
        "/referrals/new?patient=demo-aygul",
        "/referrals",
        "/imaging/upload",
        "/imaging/held",
    ],
    "sp.subei": ["/worklist", "/consults", "/notices", "/notices/settings"],
    "auditor": ["/audit", "/dashboard"],
    "admin.xinyuan.people": [
        "/admin/staff",
        "/admin/staff/dr.xinyuan.people/practitioner",
        "/admin/departments",
        "/admin/calendar",
    ],
}


def accepted_referral_with_a_study(server: LiveServer) -> tuple[str, str]:
    """A referral of 阿依古丽 to 苏北人民医院 with a CT study, accepted, and a study uploaded
    since (so the county doctor's page offers to add it): (Task id, the referral's study UID)."""

    def client(username: str) -> httpx.Client:
        return httpx.Client(base_url=server.url, headers=bearer(server.settings, username))

    def stored(county: httpx.Client) -> str:
        slices = ct_series(2, patient_id=AYGUL)
        done = county.post("/dicomweb/studies", content=multipart(slices), headers=stow_headers())
        assert done.status_code == 200, done.text
        return str(pydicom.dcmread(io.BytesIO(slices[0])).StudyInstanceUID)

    with client("dr.xinyuan.people") as county, client("sp.subei") as city:
        uid = stored(county)
        record_consent(county, "demo-aygul", ("subei",))
        sr = create(
            county,
            request_body(
                "demo-aygul", performer="subei-cardiology", supporting=[f"ImagingStudy/{uid}"]
            ),
        )
        task = create(county, task_body(sr, "subei"))
        received = city.get(f"/fhir/Task/{task['id']}").json()
        accepted = city.put(f"/fhir/Task/{task['id']}", json={**received, "status": "accepted"})
        assert accepted.status_code == 200, accepted.text
        stored(county)
    return task["id"], uid


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_main_pages_have_no_serious_accessibility_violation(
    browser: Any,  # noqa: F811
    live_server: LiveServer,
    axe_script: Path,
) -> None:
    # The scan finds what it should: a form field nobody can name, an image with no text.
    control = browser.new_page()
    control.set_content(
        '<html lang="zh-CN"><head><title>x</title></head><body><main><input name="q">'
        '<img src="data:image/png;base64,iVBORw0KGgo="></main></body></html>'
    )
    assert {v["id"] for v in violations(control, axe_script)} == {"label", "image-alt"}
    control.close()

    task_id, uid = accepted_referral_with_a_study(live_server)
    pages = {
        **PAGES,
        "dr.xinyuan.people": [*PAGES["dr.xinyuan.people"], f"/referrals/{task_id}"],
        "sp.subei": [*PAGES["sp.subei"], f"/referrals/{task_id}", f"/viewer/{uid}"],
    }
    found: dict[str, list[dict[str, Any]]] = {}
    county = sign_in(browser, live_server, "dr.xinyuan.people")
    county.goto(f"{live_server.url}/referrals/{task_id}")
    assert county.locator("input[name=study]").count() == 1  # the control is scanned too
    county.close()
    login = browser.new_page()
    login.goto(f"{live_server.url}/login")
    found["/login"] = violations(login, axe_script)
    login.close()
    for username, paths in pages.items():
        page = sign_in(browser, live_server, username)
        for path in paths:
            assert page.goto(f"{live_server.url}{path}").status == 200, path
            page.wait_for_load_state("networkidle")
            found[f"{username} {path}"] = violations(page, axe_script)
        page.close()
    bad = {path: v for path, v in found.items() if v}
    assert bad == {}, json.dumps(bad, ensure_ascii=False, indent=1)
