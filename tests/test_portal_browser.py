"""The portal in a real browser (Debian's Chromium driven by Playwright) against the app
served on a free port: a county doctor refers a patient with imaging, the specialist accepts,
reviews the study in the viewer and completes with an opinion, the county doctor reads it, and
the auditor finds it all. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.conftest import LiveServer, skip_or_fail
from tests.factories import identity_number
from tests.imaging_data import ct_slice, encode
from tests.referrals import PDF, PNG

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        skip_or_fail("browser tests need Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("browser tests need Python Playwright (pip install playwright)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


def sign_in(browser: Any, server: LiveServer, username: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 720}, accept_downloads=True)
    page.goto(f"{server.url}/login")
    page.fill("#username", username)
    page.fill("#password", "alliance-demo")
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    assert "/login" not in page.url, page.content()
    return page


def fill_request(page: Any, url: str, tmp_path: Path, summary: str) -> None:
    """Open the request form at `url` (a referral's or a teleconsult's) and fill in what every
    request to 苏北人民医院 心血管内科 needs: the photographed consent form, the department,
    the diagnosis and `summary`. The caller adds the rest and sends it."""
    form_photo = tmp_path / "consent.png"
    form_photo.write_bytes(PNG)
    page.goto(url)
    page.set_input_files("#consent_form", str(form_photo))
    page.select_option("#target", "subei-cardiology")
    page.fill("#diagnosis", "I21.900 急性心肌梗死")
    page.fill("#summary", summary)


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def canvas_sum(page: Any) -> int:
    return int(
        page.evaluate(
            "() => { const c = document.getElementById('image');"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s; }"
        )
    )


def test_refer_review_and_audit_in_the_browser(
    browser: Any, live_server: LiveServer, tmp_path: Path
) -> None:
    number = identity_number(birth="19800315", seq=771)  # odd sequence: male

    # (a) The county doctor registers a patient (the identity number is checked as typed)...
    county = sign_in(browser, live_server, "dr.xinyuan.people")
    county.goto(f"{live_server.url}/patients/new")
    county.fill("#name", "哈力木拉提·艾买提")
    county.fill("#other_name", "Халимұрат Әмет")
    county.select_option("#other_lang", "kk-Cyrl")
    county.fill("#identity", number[:-1] + ("0" if number[-1] != "0" else "1"))
    assert county.inner_text("#identity-error")  # a wrong check character, said at once
    county.fill("#identity", number)
    assert county.inner_text("#identity-error") == ""
    # The number states the birth date and sex: the form fills them in.
    assert (county.input_value("#birth_date"), county.input_value("#gender")) == (
        "1980-03-15",
        "male",
    )
    shot(county, "a1-register")
    county.click("main button[type=submit]")
    county.wait_for_url("**/patients/*")
    patient_id = county.url.rsplit("/", 1)[1]
    assert "哈力木拉提·艾买提" in county.inner_text("h1")

    # ...uploads a DICOM folder, with a progress bar and a result per file...
    folder = tmp_path / "CT"
    folder.mkdir()
    study_uid, series_uid = generate_uid(), generate_uid()
    for i in range(3):
        ds = ct_slice(
            study_uid=study_uid,
            series_uid=series_uid,
            number=i + 1,
            patient_id=number,
            patient_name="Halimurat^Emet",
            rows=128,
            columns=128,
        )
        ds.PixelSpacing = [0.5, 0.5]
        (folder / f"IM{i:04d}.dcm").write_bytes(encode(ds))
    (folder / "notes.txt").write_text("not a DICOM file")
    county.goto(f"{live_server.url}/imaging/upload")
    county.set_input_files("#folder", str(folder))
    county.wait_for_selector("#upload-summary[data-done=true]", timeout=30000)
    results = county.eval_on_selector_all("#uploads li", "els => els.map(e => e.dataset.result)")
    assert sorted(results) == ["failed", "ok", "ok", "ok"]
    said = county.inner_text("#uploads")
    assert "notes.txt ✗ 无法识别：不是有效的DICOM文件，或文件已损坏" in said  # words, not 0xC000
    assert "0x" not in said and "409" not in said
    assert county.inner_text("#upload-summary") == "已处理 4 / 4，成功 3，失败 1"
    shot(county, "a2-upload")

    # ...records consent with the photographed form and sends the referral with the study.
    summary_pdf = tmp_path / "summary.pdf"
    summary_pdf.write_bytes(PDF)
    fill_request(
        county,
        f"{live_server.url}/referrals/new?patient={patient_id}",
        tmp_path,
        "胸痛3天，心电图ST段抬高。",
    )
    county.set_input_files("#document", str(summary_pdf))
    county.check("input[name=study]")
    shot(county, "a3-referral-form")
    county.click("main button[type=submit]")
    county.wait_for_url("**/referrals/*")
    task_id = county.url.rsplit("/", 1)[1]
    assert "待接收" in county.inner_text("h1")

    # A user of another hospital typing the record's address gets the not-found page.
    other = sign_in(browser, live_server, "dr.xinyuan.tcm")
    response = other.goto(f"{live_server.url}/patients/{patient_id}")
    assert response.status == 404 and "未找到" in other.inner_text("h1")
    assert other.goto(f"{live_server.url}/referrals/{task_id}").status == 404
    shot(other, "a4-not-found")

    # (b) The specialist finds it in the worklist, accepts it, reviews the images.
    specialist = sign_in(browser, live_server, "sp.subei")
    specialist.goto(f"{live_server.url}/worklist")
    specialist.click(f"a[href='/referrals/{task_id}']")
    specialist.wait_for_url(f"**/referrals/{task_id}")
    shot(specialist, "b1-referral")
    specialist.click("button:has-text('接收')")
    specialist.wait_for_load_state("networkidle")
    assert "已接收" in specialist.inner_text("h1")
    specialist.click("a[href^='/viewer/']")
    specialist.wait_for_function(
        "document.getElementById('image').dataset.index === '0'", timeout=30000
    )
    before = canvas_sum(specialist)
    box = specialist.locator("#image").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    specialist.mouse.move(cx, cy)
    specialist.mouse.down()
    specialist.mouse.move(cx + 80, cy + 60, steps=5)
    specialist.mouse.up()
    assert canvas_sum(specialist) != before  # window/level changed the pixels
    specialist.keyboard.press("ArrowDown")
    specialist.wait_for_function("document.getElementById('image').dataset.index === '1'")
    specialist.click("#tool-measure")
    specialist.mouse.move(cx - 100, cy)
    specialist.mouse.down()
    specialist.mouse.move(cx + 100, cy, steps=5)
    specialist.mouse.up()
    length = float(specialist.get_attribute("#image", "data-length") or 0)
    assert length > 0  # millimetres, from Pixel Spacing
    # Who is on the screen is always in view: the banner and the four-corner overlay.
    banner = specialist.inner_text("#banner")
    assert "哈力木拉提·艾买提" in banner and number in banner
    assert specialist.inner_text("#corner-tl").splitlines() == [
        next(line for line in banner.splitlines() if "哈力木拉提" in line).strip(),
        number,
    ]
    status = specialist.inner_text("#status")
    assert status.startswith("第 2 / ") and "窗宽" in status and "长度" in status
    status_box = specialist.locator("#status").bounding_box()
    assert status_box["y"] + status_box["height"] <= 720  # on a 1280x720 screen, unscrolled
    specialist.click("button[data-preset=lung]")
    pressed = specialist.eval_on_selector_all(
        "[data-preset]",
        "bs => bs.filter(b => b.getAttribute('aria-pressed') === 'true')"
        ".map(b => b.dataset.preset)",
    )
    assert pressed == ["lung"]
    specialist.wait_for_function(
        "[...document.querySelectorAll('#header tr')].some(r => r.cells[1].textContent)"
    )
    names = specialist.eval_on_selector_all(
        "#header tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])"
    )
    assert ["0008,0060", "Modality"] in names
    shot(specialist, "b2-viewer")

    # ...starts, and completes with the signed opinion.
    specialist.goto(f"{live_server.url}/referrals/{task_id}")
    specialist.click("button:has-text('开始诊治')")
    specialist.wait_for_load_state("networkidle")
    opinion = tmp_path / "opinion.pdf"
    opinion.write_bytes(PDF)
    specialist.set_input_files("#opinion-file", str(opinion))
    specialist.click("button:has-text('完成并提交意见')")
    specialist.wait_for_load_state("networkidle")
    assert "已完成" in specialist.inner_text("h1")
    shot(specialist, "b3-completed")
    # ...and refers the patient back down with the discharge summary and the plan.
    discharge = tmp_path / "discharge.pdf"
    discharge.write_bytes(PDF)
    specialist.set_input_files("#discharge", str(discharge))
    specialist.fill("#plan", "出院后2周心内科门诊复诊\n阿司匹林 100mg 每日一次")
    specialist.click("button:has-text('下转回基层')")
    specialist.wait_for_load_state("networkidle")
    down_task = specialist.url.rsplit("/", 1)[1]
    assert down_task != task_id and "待接收" in specialist.inner_text("h1")

    # (c) The county doctor finds the down-referral in the worklist, and reads the opinion.
    county.goto(f"{live_server.url}/worklist")
    assert county.locator(f"a[href='/referrals/{down_task}']").count() == 1
    county.goto(f"{live_server.url}/referrals/{task_id}")
    link = county.locator("section:has(h2:has-text('诊疗意见')) a").first
    href = link.get_attribute("href")
    body = county.request.get(href)
    assert body.status == 200 and body.body() == PDF
    shot(county, "c1-opinion")

    # CSRF: a form posted without its token is refused, and nothing moves.
    refused = county.request.post(
        f"{live_server.url}/referrals/{task_id}/move", form={"status": "cancelled", "reason": "x"}
    )
    assert refused.status == 403

    # (d) The auditor finds all this, exports it, verifies the chain, sees the dashboard.
    auditor = sign_in(browser, live_server, "auditor")
    # The patient is found by name, not by id; people, hospitals and codes read as words.
    auditor.goto(f"{live_server.url}/audit")
    auditor.fill("input[name=patient_q]", "哈力木拉提·艾买提")
    auditor.click("main form.grid button[type=submit]")
    auditor.wait_for_selector("table tbody tr")
    rows = auditor.inner_text("table tbody")
    assert "努尔兰·别克 (dr.xinyuan.people)" in rows and "陈志明 (sp.subei)" in rows
    assert "新源县人民医院" in rows and "苏北人民医院" in rows
    assert "查阅" in rows and "成功" in rows and "哈力木拉提·艾买提 · 男" in rows
    assert patient_id not in rows  # the patient column names the patient
    with auditor.expect_download() as download:
        auditor.click("text=导出 CSV")
    csv_text = Path(download.value.path()).read_text(encoding="utf-8-sig")
    assert patient_id in csv_text and "sp.subei" in csv_text
    auditor.click("button:has-text('校验审计链')")
    auditor.wait_for_selector("#verify-result")
    assert "审计链完整" in auditor.inner_text("#verify-result")
    shot(auditor, "d1-audit")
    auditor.goto(f"{live_server.url}/dashboard")
    # Two charts (per month, per pair; no decline to chart here); text stays text-sized.
    assert auditor.locator("svg.chart").count() == 2
    heights = auditor.eval_on_selector_all(
        "svg.chart text", "ts => ts.map(t => t.getBoundingClientRect().height)"
    )
    assert heights and max(heights) <= 18
    pairs = auditor.inner_text("main")
    assert "新源县人民医院 → 苏北人民医院 · 上转" in pairs
    assert "苏北人民医院 → 新源县人民医院 · 下转" in pairs
    assert "分钟" in auditor.inner_text("main .grid2")  # minutes, not 0.059 小时
    shot(auditor, "d2-dashboard")
    auditor.goto(f"{live_server.url}/lang/en")
    auditor.goto(f"{live_server.url}/dashboard")
    assert "Alliance dashboard" in auditor.inner_text("h1")  # English, switched


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_administrator_in_the_browser(browser: Any, live_server: LiveServer) -> None:
    """Roles in words, a department from the national register, weekly hours written as
    people write them."""
    admin = sign_in(browser, live_server, "admin.xinyuan.people")
    admin.goto(f"{live_server.url}/admin/staff")
    staff = admin.inner_text("main table")
    assert "基层医生" in staff and "county-doctor" not in staff
    shot(admin, "e1-staff")

    admin.goto(f"{live_server.url}/admin/departments")
    admin.fill("#dept-name", "维吾尔医科")
    admin.select_option("#dept-code", "51.01|维吾尔医学")
    admin.click("main form.card button[type=submit]")
    admin.wait_for_load_state("networkidle")
    assert "51.01 维吾尔医学" in admin.inner_text("main table")
    shot(admin, "e2-departments")

    admin.goto(f"{live_server.url}/admin/calendar")
    admin.fill("#hours", "周一至周五 09:30-13:30\n周六 10:00-12:00")
    admin.click("form[action='/admin/calendar/hours'] button[type=submit]")
    admin.wait_for_load_state("networkidle")
    rows = admin.eval_on_selector_all(
        "main table:first-of-type tbody td", "cells => cells.map(c => c.textContent)"
    )
    assert rows == ["周一至周五 09:30-13:30", "周六 10:00-12:00"]
    shot(admin, "e3-calendar")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_new_specialist_enrolled_by_the_administrator_is_booked(
    browser: Any, live_server: LiveServer, tmp_path: Path
) -> None:
    """The administrator of 苏北人民医院 makes an account for a new cardiologist, links it to
    a doctor in 心血管内科 with the title 主任医师 and their consult hours; a county doctor then
    finds that specialist's times on the booking page and books one."""
    admin = sign_in(browser, live_server, "admin.subei")
    admin.goto(f"{live_server.url}/admin/staff")
    admin.fill("#new-username", "sp.subei.zhao")
    admin.fill("#new-name", "赵心宁")
    admin.select_option("#new-role", "specialist")
    admin.click("form[action='/admin/staff'] button[type=submit]")
    password = admin.inner_text("#new-password")
    admin.click("a[href='/admin/staff/sp.subei.zhao/practitioner']")
    admin.wait_for_url("**/admin/staff/sp.subei.zhao/practitioner")
    assert admin.input_value("#doctor-name") == "赵心宁"
    admin.select_option("#doctor-department", "subei-cardiology")
    admin.select_option("#doctor-title", label="主任医师")
    admin.fill("#doctor-hours", "周一至周五 10:00-12:00")
    shot(admin, "e4-link-practitioner")
    admin.click("main form.card button[type=submit]")
    admin.wait_for_url("**/admin/staff")
    row = admin.inner_text("main table tr:has-text('sp.subei.zhao')")
    assert "已关联" in row and "专科医生" in row, row

    county = sign_in(browser, live_server, "dr.xinyuan.people")
    fill_request(
        county,
        f"{live_server.url}/teleconsults/new?patient=demo-aygul",
        tmp_path,
        "胸痛3天，请心内科专家会诊。",
    )
    county.click("main button[type=submit]")
    county.wait_for_url("**/teleconsults/*/times")
    task_id = county.url.split("/")[-2]
    mine = county.locator("ul.times li", has_text="赵心宁 主任医师")
    assert mine.count() > 0, county.inner_text("main")
    shot(county, "e5-new-specialist-times")
    mine.first.locator("button").click()
    county.wait_for_selector("text=确认预约")
    assert "赵心宁 主任医师" in county.inner_text("main")
    county.click("main form button[type=submit]")
    county.wait_for_url(f"**/referrals/{task_id}")
    assert "进入视频会诊" in county.inner_text("main")
    shot(county, "e6-booked-with-new-specialist")

    # The consult is the new specialist's: it is on their calendar once they sign in.
    specialist = browser.new_page(viewport={"width": 1280, "height": 720})
    specialist.goto(f"{live_server.url}/login")
    specialist.fill("#username", "sp.subei.zhao")
    specialist.fill("#password", password)
    specialist.click("button[type=submit]")
    specialist.wait_for_load_state("networkidle")
    specialist.goto(f"{live_server.url}/consults")
    assert "进入视频会诊" in specialist.inner_text("main")
