"""Portal pages through HTTP (the browser flows are in test_portal_browser.py): sessions, CSRF,
idle timeout, who sees which page, administrators' pages."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import datetime

import pytest
from fastapi.testclient import TestClient

from alliance import clock
from alliance.codes import ICD10_CN
from alliance.config import Settings
from alliance.security import sessions
from portal.i18n import RULE_WORDS
from tests.accounts import portal as sign_in


def test_login_needs_its_csrf_token_and_the_right_password(client: TestClient) -> None:
    client.get("/login")
    r = client.post(
        "/login", data={"username": "auditor", "password": "alliance-demo", "csrf": "x"}
    )
    assert r.status_code == 403
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = client.post("/login", data={"username": "auditor", "password": "wrong", "csrf": csrf})
    assert r.status_code == 401 and "用户名或密码错误" in r.text
    assert client.get("/audit", follow_redirects=False).headers["location"].startswith("/login")


def test_pages_by_role(client: TestClient) -> None:
    sign_in(client, "dr.xinyuan.people")
    assert client.get("/patients").status_code == 200
    assert client.get("/audit").status_code == 403
    assert client.get("/dashboard").status_code == 403
    assert client.get("/admin/staff").status_code == 403
    assert client.get("/patients/demo-ma-xiulan").status_code == 404  # another hospital's


def test_session_cookie_is_protected_and_expires(client: TestClient, settings: Settings) -> None:
    sign_in(client, "auditor")
    cookie = client.cookies.get(sessions.COOKIE)
    assert cookie
    session = sessions.decode(settings, cookie)
    assert session is not None
    forged = cookie[:-4] + ("0000" if not cookie.endswith("0000") else "1111")
    assert sessions.decode(settings, forged) is None
    idle = sessions.WebSession(session.token, session.csrf, time.time() - 31 * 60, session.lang)
    client.cookies.delete(sessions.COOKIE)  # one cookie of that name, not two
    client.cookies.set(sessions.COOKIE, sessions.encode(settings, idle))
    assert client.get("/audit", follow_redirects=False).status_code == 303  # back to login


def test_administrator_manages_staff_and_departments(client: TestClient) -> None:
    csrf = sign_in(client, "admin.xinyuan.people")
    r = client.post(
        "/admin/staff", data={"csrf": csrf, "username": "dr.new.one", "role": "county-doctor"}
    )
    assert r.status_code == 200
    password = re.search(r'id="new-password">([^<]+)<', r.text).group(1)  # type: ignore[union-attr]
    other = TestClient(client.app)
    login = other.post(
        "/auth/token",
        data={"grant_type": "password", "username": "dr.new.one", "password": password},
    )
    assert login.status_code == 200
    assert client.post("/admin/staff/dr.new.one/lock", data={"csrf": csrf}).status_code == 200
    assert (
        other.post(
            "/auth/token",
            data={"grant_type": "password", "username": "dr.new.one", "password": password},
        ).status_code
        == 400
    )
    # Another hospital's staff is not theirs to touch.
    assert client.post("/admin/staff/sp.subei/lock", data={"csrf": csrf}).status_code == 404
    assert client.post("/admin/staff/dr.new.one/unlock").status_code == 403  # no CSRF token
    r = client.post(
        "/admin/departments", data={"csrf": csrf, "name": "呼吸内科", "code": "03.01|呼吸内科专业"}
    )
    assert r.status_code == 200 and "呼吸内科" in r.text
    dept = re.search(r"/admin/departments/([^/]+)/close", r.text)
    assert dept is not None
    assert (
        "已停用"
        in client.post(f"/admin/departments/{dept.group(1)}/close", data={"csrf": csrf}).text
    )


@pytest.mark.parametrize("path", ["/audit", "/dashboard"])
def test_auditor_pages(client: TestClient, path: str) -> None:
    sign_in(client, "auditor")
    assert client.get(path).status_code == 200


def test_a_teleconsult_booked_and_signed_through_the_portal(
    client: TestClient, app: object
) -> None:
    from tests.referrals import PNG

    csrf = sign_in(client, "dr.xinyuan.people")
    form = client.get("/teleconsults/new", params={"patient": "demo-aygul"})
    assert form.status_code == 200 and 'value="teleconsult"' in form.text
    r = client.post(
        "/referrals/new",
        data={
            "csrf": csrf,
            "patient": "demo-aygul",
            "category": "teleconsult",
            "target": "subei-cardiology",
            "diagnosis": "I21.900 急性心肌梗死",
            "summary": "胸痛3天",
            "priority": "urgent",
            "consenter": "patient",
        },
        files={"consent_form": ("consent.png", PNG, "image/png")},
        follow_redirects=True,
    )
    assert r.status_code == 200 and "/teleconsults/" in str(r.url), r.text
    task_id = str(r.url).split("/")[-2]
    times = re.findall(r'name="proposal" value="([^"]+)"', r.text)
    assert times, r.text
    assert "北京时间 (新疆时间" in r.text  # a Xinyuan user sees Xinjiang time beside it
    # By day, with the weekday and the specialist's name and title; weeks page forward.
    first_day = re.search(r"<h2>(\d+)月(\d+)日 (周[一二三四五六日])</h2>", r.text)
    assert first_day is not None, r.text
    assert "陈志明 主任医师" in r.text
    later = re.search(r'href="\?from=([\d-]+)">下一周', r.text)
    assert later is not None
    next_week = client.get(f"/teleconsults/{task_id}/times", params={"from": later.group(1)})
    assert next_week.status_code == 200 and first_day.group(0) not in next_week.text
    import html

    proposal = html.unescape(times[0])
    asked = client.post(
        f"/teleconsults/{task_id}/book",
        data={"csrf": csrf, "proposal": proposal, "who": "陈志明 主任医师"},
    )
    # Nothing is booked before the doctor confirms what they chose.
    assert asked.status_code == 200 and "确认预约" in asked.text, asked.text
    assert "陈志明 主任医师" in asked.text
    assert "进入视频会诊" not in client.get(f"/referrals/{task_id}").text
    booked = client.post(
        f"/teleconsults/{task_id}/book",
        data={"csrf": csrf, "proposal": proposal, "confirm": "yes"},
        follow_redirects=True,
    )
    assert booked.status_code == 200 and "进入视频会诊" in booked.text, booked.text
    assert re.findall(r"<li>[^<]*· ([^<·]+?) · <a", booked.text) == ["已预约"]
    # The county doctor is not offered the specialist's answer.
    assert "/accept" not in client.get("/consults").text

    specialist = TestClient(app)  # type: ignore[arg-type]
    csrf2 = sign_in(specialist, "sp.subei")
    calendar = specialist.get("/consults")
    assert "进入视频会诊" in calendar.text and "北京时间" in calendar.text
    assert "新疆时间" not in calendar.text  # Yangzhou users see Beijing time alone
    appointment = re.search(r"/consults/([^/]+)/accept", calendar.text)
    assert appointment is not None
    assert (
        specialist.post(
            f"/consults/{appointment.group(1)}/accept", data={"csrf": csrf2}
        ).status_code
        == 200
    )
    written = {"csrf": csrf2, "conclusion": "建议尽快冠脉造影", "diagnosis": "I21.900 急性心肌梗死"}
    preview = specialist.post(f"/referrals/{task_id}/opinion", data=written)
    assert preview.status_code == 200 and "确认签署" in preview.text
    assert "建议尽快冠脉造影" in preview.text and "I21.900 急性心肌梗死" in preview.text
    assert "已完成" not in client.get(f"/referrals/{task_id}").text  # nothing signed yet
    confirmed = {**written, "confirm": "yes"}
    early = specialist.post(f"/referrals/{task_id}/opinion", data=confirmed)
    # Not before the consult took place.
    assert early.status_code == 409 and RULE_WORDS["consult-not-started"]["zh"] in early.text
    clock.set_to(datetime.fromisoformat(json.loads(proposal)["start"].replace("Z", "+00:00")))
    signed = specialist.post(f"/referrals/{task_id}/opinion", data=confirmed, follow_redirects=True)
    assert signed.status_code == 200 and "已完成" in signed.text, signed.text
    page = client.get(f"/referrals/{task_id}")
    assert "已完成" in page.text and "/api/attachments/" in page.text
    letter_url = re.search(r'href="(?:https?://[^/"]+)?(/api/attachments/[^"]+)"', page.text)
    assert letter_url is not None
    letter = client.get(letter_url.group(1)).text
    assert "<th>申请医生</th><td>努尔兰·别克</td>" in letter and "陈志明 主任医师" in letter


def test_administrator_adds_and_removes_a_closure(client: TestClient) -> None:
    csrf = sign_in(client, "admin.xinyuan.people")
    page = client.get("/admin/calendar")
    assert page.status_code == 200 and "Asia/Urumqi" in page.text and "元旦" in page.text
    added = client.post(
        "/admin/calendar/closures",
        data={"csrf": csrf, "start": "2027-02-05", "end": "2027-02-12", "description": "春节"},
        follow_redirects=True,
    )
    assert added.status_code == 200 and "春节" in added.text
    removed = client.post(
        "/admin/calendar/closures/1/remove", data={"csrf": csrf}, follow_redirects=True
    )
    assert "春节" not in removed.text and "元旦" in removed.text
    doctor = TestClient(client.app)
    sign_in(doctor, "dr.xinyuan.people")
    assert doctor.get("/admin/calendar").status_code == 403


def test_a_referral_made_through_the_portal_is_what_the_doctor_said(
    client: TestClient, app: object, as_user: Callable[[str], TestClient]
) -> None:
    """The portal's forms go through the referral commands: free text stays text (never a
    code), a picked code is coded with its version, messages are signed 姓名 · 医院, and the
    moves offered are the workflow's for each hospital's part."""
    from tests.referrals import PNG

    csrf = sign_in(client, "dr.xinyuan.people")
    made = {}
    for diagnosis, priority in (("胸痛待查", "routine"), ("I21.900 急性心肌梗死", "urgent")):
        r = client.post(
            "/referrals/new",
            data={
                "csrf": csrf,
                "patient": "demo-aygul",
                "target": "subei-cardiology",
                "diagnosis": diagnosis,
                "summary": "胸痛3天",
                "priority": priority,
                "consenter": "patient",
            },
            files={"consent_form": ("consent.png", PNG, "image/png")},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        made[diagnosis] = r.headers["location"].rsplit("/", 1)[-1]
    api = as_user("dr.xinyuan.people")
    reasons = {}
    for diagnosis, task_id in made.items():
        task = api.get(f"/fhir/Task/{task_id}").json()
        sr = api.get(f"/fhir/{task['focus']['reference']}").json()
        reasons[diagnosis] = sr["reasonCode"]
    assert reasons == {
        "胸痛待查": [{"text": "胸痛待查"}],
        "I21.900 急性心肌梗死": [
            {
                "coding": [
                    {
                        "system": ICD10_CN,
                        "version": "2.0",
                        "code": "I21.900",
                        "display": "急性心肌梗死",
                    }
                ],
                "text": "急性心肌梗死",
            }
        ],
    }

    # The list names people and places, the urgent one first.
    listed = client.get("/referrals").text
    rows = re.findall(
        r'<tr class="[^"]*">\s*<td><a href="/referrals/([^"]+)">([^<]+)</a></td>\s*'
        r"<td>([^<]*)</td>\s*<td>([^<]*)</td>",
        listed,
    )
    age = clock.now().year - 1978 - ((clock.now().month, clock.now().day) < (9, 21))
    line = f"阿依古丽·努尔兰 · 女 · {age}岁"
    assert rows[:2] == [
        (made["I21.900 急性心肌梗死"], line, "上转", "苏北人民医院 · 心血管内科"),
        (made["胸痛待查"], line, "上转", "苏北人民医院 · 心血管内科"),
    ]

    task_id = made["胸痛待查"]
    page = client.get(f"/referrals/{task_id}")
    offered = set(re.findall(r'name="status" value="([^"]+)"', page.text))
    assert offered == {"cancelled", "on-hold"}  # the placer's moves from requested
    client.post(f"/referrals/{task_id}/message", data={"csrf": csrf, "text": "请尽快安排"})

    specialist = TestClient(app)  # type: ignore[arg-type]
    sign_in(specialist, "sp.subei")
    page = specialist.get(f"/referrals/{task_id}")  # opening it receives it
    offered = set(re.findall(r'name="status" value="([^"]+)"', page.text))
    assert offered == {"accepted", "rejected", "on-hold"}
    senders = [
        e["resource"]["sender"]["display"]
        for e in api.get(
            "/fhir/Communication",
            params={"based-on": api.get(f"/fhir/Task/{task_id}").json()["focus"]["reference"]},
        ).json()["entry"]
    ]
    assert senders == ["努尔兰·别克 · 新源县人民医院"]


def test_the_site_has_an_icon(client: TestClient) -> None:
    r = client.get("/favicon.ico")
    assert (r.status_code, r.headers["content-type"]) == (200, "image/vnd.microsoft.icon")
    assert r.content[:4] == b"\x00\x00\x01\x00"  # an ICO file (icon resource directory)


def test_administrators_read_roles_subjects_and_hours_in_words(client: TestClient) -> None:
    """Roles in words, the departments' register with its specialties, and weekly hours
    written and shown as people write them (周一至周五 08:00-12:00)."""
    csrf = sign_in(client, "admin.subei")
    staff = client.get("/admin/staff").text
    assert "专科医生" in staff and "<td>specialist</td>" not in staff
    departments = client.get("/admin/departments").text
    assert "<th>科室名称</th><th>诊疗科目</th>" in departments
    assert 'value="03.05|血液内科专业"' in departments and 'value="51.01|维吾尔医学"' in departments
    saved = client.post(
        "/admin/calendar/hours",
        data={"csrf": csrf, "hours": "周一至周五 08:00-12:00\n周二、周四 14:00-17:30"},
        follow_redirects=True,
    )
    assert saved.status_code == 200, saved.text
    shown = re.findall(r"<tr><td>(周[^<]+)</td></tr>", saved.text)
    assert shown == ["周一至周五 08:00-12:00", "周二、周四 14:00-17:30"]
    wrong = client.post("/admin/calendar/hours", data={"csrf": csrf, "hours": "每天 08:00-12:00"})
    assert wrong.status_code == 422 and "“每天”不是星期几，请写 周一 至 周日。" in wrong.text
    assert "is not a day of the week" not in wrong.text
    assert "每天 08:00-12:00</textarea>" in wrong.text  # what was typed, kept to correct


@pytest.mark.parametrize(
    ("line", "days", "start", "end"),
    [
        ("周一至周五 08:00-12:00", ["mon", "tue", "wed", "thu", "fri"], "08:00:00", "12:00:00"),
        ("周二、周四 14:00-17:30", ["tue", "thu"], "14:00:00", "17:30:00"),
        ("星期六 到 星期日 9:00~11:00", ["sat", "sun"], "09:00:00", "11:00:00"),
        ("mon tue wed 08:00-12:00", ["mon", "tue", "wed"], "08:00:00", "12:00:00"),
        ("周五-周一 08:00-12:00", None, "", ""),
        ("周一至周五", None, "", ""),
        ("周一 25:00-26:00", None, "", ""),
    ],
)
def test_weekly_hours_as_people_write_them(
    line: str, days: list[str] | None, start: str, end: str
) -> None:
    from portal.i18n import translator
    from portal.views import hours_line, parse_hours_line

    if days is None:
        with pytest.raises(ValueError):
            parse_hours_line(line)
        return
    span = parse_hours_line(line)
    assert span == {"daysOfWeek": days, "availableStartTime": start, "availableEndTime": end}
    again = parse_hours_line(hours_line(span, translator("zh")))
    assert again == span  # what the page shows can be saved back unchanged


@pytest.mark.parametrize(
    "typed", ["阿依古丽 努尔兰", "阿依古丽.努尔兰", "ayiguli", "aygl", "210242"]
)
def test_a_doctor_finds_a_patient_as_they_type(client: TestClient, typed: str) -> None:
    """Name parts separated anyhow, pinyin, or a part of the identity number."""
    sign_in(client, "dr.xinyuan.people")
    page = client.get("/patients", params={"q": typed})
    assert page.status_code == 200
    assert re.findall(r'href="/patients/(demo-[^"]+)"', page.text) == ["demo-aygul"]


def test_a_held_study_is_linked_from_the_portal(
    client: TestClient, as_user: Callable[[str], TestClient]
) -> None:
    """A study that matched no patient is listed for its hospital and linked by identity
    number; a name that finds no single patient is refused with what to do."""
    from pydicom.uid import generate_uid

    from tests.imaging_data import ct_slice, encode, multipart, stow_headers

    doctor = as_user("dr.xinyuan.people")
    study_uid = generate_uid()
    part = encode(
        ct_slice(study_uid=study_uid, series_uid=generate_uid(), number=1, patient_id="X-9")
    )
    stored = doctor.post("/dicomweb/studies", content=multipart([part]), headers=stow_headers())
    assert stored.status_code == 200 and "held for reconciliation" in stored.headers["warning"]
    memet = doctor.get("/fhir/Patient/demo-memet").json()
    number = memet["identifier"][0]["value"]

    csrf = sign_in(client, "dr.xinyuan.people")
    page = client.get("/imaging/held")
    assert page.status_code == 200 and "X-9" in page.text
    link = f"/imaging/held/{study_uid}/link"
    refused = client.post(link, data={"csrf": csrf, "patient": "没有这个人"})
    assert refused.status_code == 422 and "找到 0 位患者" in refused.text
    done = client.post(link, data={"csrf": csrf, "patient": number}, follow_redirects=False)
    assert done.status_code == 303
    assert "X-9" not in client.get("/imaging/held").text
    linked = doctor.get(f"/fhir/ImagingStudy/{study_uid}").json()
    assert linked["subject"] == {"reference": "Patient/demo-memet"}
