"""Notices to people beyond the portal (issue 14.4): e-mail to a real SMTP server (aiosmtpd) and
a hospital's webhook to a real HTTP receiver, delivered by the notify worker at least once,
held in the person's quiet hours until they end (an urgent referral past its deadline breaks
through), and never to anyone the event does not concern. The clock is moved, never slept."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage as Mail
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alliance import clock
from alliance.config import Settings
from alliance.notify.channels import channels_from
from alliance.notify.models import PersonChannel
from alliance.notify.people import Choices, choose, quiet_until
from alliance.notify.worker import Worker
from alliance.security.models import User
from server.app import Services, create_app
from server.notify import build_worker
from tests.accounts import portal as sign_in
from tests.conftest import free_port
from tests.notices import Receiver, drain, send
from tests.teleconsults import (
    beijing,
    book,
    open_consult,
    proposal_at,
    respond,
    slot_id,
    weekday_ahead,
)

BEIJING_23H = 15  # 23:00 Beijing time is 15:00 UTC


class Mailbox:
    """An aiosmtpd handler keeping every message it accepted; answers 451 while `failing`."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], Mail]] = []
        self.failing = False

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        if self.failing:
            return "451 4.3.0 try again later"
        mail = message_from_bytes(envelope.content, policy=policy.default)
        self.mails.append((list(envelope.rcpt_tos), mail))
        return "250 OK"

    def to(self) -> list[str]:
        return [address for rcpt, _ in self.mails for address in rcpt]


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    from aiosmtpd.controller import Controller

    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
def gateway() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture
def wired(
    settings: Settings, mailbox: tuple[Mailbox, int], gateway: Receiver
) -> Iterator[tuple[FastAPI, Settings]]:
    """The app with an SMTP server and 苏北人民医院's gateway configured."""
    configured = settings.model_copy(
        update={
            "notice_smtp_host": "127.0.0.1",
            "notice_smtp_port": mailbox[1],
            "notice_mail_from": "notices@yzxy-alliance.cn",
            "notice_webhooks": f"subei={gateway.url}",
            "notice_webhook_secret": "gateway-secret",
        }
    )
    app = create_app(configured)
    yield app, configured
    app.state.services.db.dispose()


def chose(app: FastAPI, settings: Settings, username: str, **choices: Any) -> None:
    services: Services = app.state.services
    with services.db.transaction(write=True) as session:
        user = session.query(User).filter_by(username=username).one()
        choose(session, user, Choices(**choices), channels_from(settings))


def night() -> None:
    """23:00 Beijing time tomorrow."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(
        hour=BEIJING_23H, minute=0, second=0, microsecond=0
    )
    clock.set_to(tomorrow)


def worker_of(app: FastAPI, settings: Settings) -> Worker:
    services: Services = app.state.services
    return build_worker(settings, services.db, services.fhir)


def test_one_mail_for_a_referral_after_the_quiet_hours_and_none_to_another_hospital(
    wired: tuple[FastAPI, Settings], mailbox: tuple[Mailbox, int]
) -> None:
    app, settings = wired
    box, _ = mailbox
    night()
    quiet = {"quiet_start": 22 * 60, "quiet_end": 7 * 60}
    chose(app, settings, "sp.subei", time_zone="Asia/Shanghai", email="chen@subei.cn", **quiet)
    chose(app, settings, "sp.yz.tcm", time_zone="Asia/Shanghai", email="liu@yztcm.cn")
    # The sender chose e-mail too: nobody is told what they did themselves.
    chose(app, settings, "dr.xinyuan.people", time_zone="Asia/Urumqi", email="li@xyrmyy.cn")
    worker = worker_of(app, settings)

    task = send(app.state.services, "xy-people", "demo-aygul")
    drain(worker)
    assert box.mails == []  # 23:00 Beijing time: quiet

    clock.advance(timedelta(hours=7, minutes=59))  # 06:59
    drain(worker)
    assert box.mails == []
    clock.advance(timedelta(minutes=2))  # 07:01: the quiet hours are over
    drain(worker)
    drain(worker)
    assert box.to() == ["chen@subei.cn"]
    mail = box.mails[0][1]
    assert mail["Subject"] == "[医联体] 转诊已发出"
    body = mail.get_content()
    assert f"/referrals/{task}" in body and "北京时间" in body
    assert "阿依古丽" not in body  # no patient name leaves by e-mail

    # Later referrals outside the quiet hours go at once, one mail each pass.
    send(app.state.services, "xy-people", "demo-memet")
    drain(worker)
    assert box.to() == ["chen@subei.cn", "chen@subei.cn"]


def test_an_overdue_urgent_referral_breaks_through_quiet_hours(
    wired: tuple[FastAPI, Settings], mailbox: tuple[Mailbox, int]
) -> None:
    app, settings = wired
    box, _ = mailbox
    night()
    chose(
        app,
        settings,
        "admin.subei",
        time_zone="Asia/Shanghai",
        email="admin@subei.cn",
        quiet_start=22 * 60,
        quiet_end=7 * 60,
    )
    worker = worker_of(app, settings)
    send(app.state.services, "xy-people", "demo-aygul", priority="urgent")
    drain(worker)
    assert box.mails == []
    clock.advance(timedelta(hours=3))  # 02:00, still quiet; the 2-hour deadline has passed
    worker.schedule(force=True)
    drain(worker)
    assert box.to() == ["admin@subei.cn"]
    mail = box.mails[0][1]
    assert mail["Subject"] == "[医联体] 2 条新通知（含紧急）"
    assert mail["Importance"] == "high"
    assert "【紧急】转诊超时未处理" in mail.get_content()


def test_a_failing_smtp_server_is_retried_until_it_takes_the_mail(
    wired: tuple[FastAPI, Settings], mailbox: tuple[Mailbox, int]
) -> None:
    app, settings = wired
    box, _ = mailbox
    chose(app, settings, "sp.subei", time_zone="Asia/Shanghai", email="chen@subei.cn")
    worker = worker_of(app, settings)
    box.failing = True
    send(app.state.services, "xy-people", "demo-aygul")
    drain(worker)
    with app.state.services.db.transaction() as session:
        state = session.query(PersonChannel).filter_by(channel="email").one()
        assert (state.failures, state.error is not None) == (1, True)
    box.failing = False
    drain(worker)
    assert box.mails == []  # waiting for its back-off
    clock.advance(timedelta(seconds=2))
    drain(worker)
    drain(worker)
    assert box.to() == ["chen@subei.cn"]


def test_the_hospital_gateway_gets_each_notice_once_after_failing(
    wired: tuple[FastAPI, Settings], gateway: Receiver
) -> None:
    app, settings = wired
    chose(app, settings, "sp.subei", time_zone="Asia/Shanghai", webhook_to="13800000000")
    chose(app, settings, "sp.yz.tcm", time_zone="Asia/Shanghai")
    worker = worker_of(app, settings)
    gateway.failing = 500
    task = send(app.state.services, "xy-people", "demo-aygul")
    drain(worker)
    assert (gateway.refused, gateway.received) == (1, [])
    gateway.failing = None
    clock.advance(timedelta(seconds=2))
    drain(worker)
    drain(worker)
    assert len(gateway.received) == 1
    sent = gateway.received[0]
    raw = json.dumps(sent["body"], ensure_ascii=False).encode()
    body = sent["body"]
    assert (body["to"], body["user"], body["urgent"]) == ("13800000000", "sp.subei", False)
    assert [(e["kind"], e["link"]) for e in body["events"]] == [
        ("referral-sent", f"{settings.base_url}/referrals/{task}")
    ]
    expected = hmac.new(b"gateway-secret", raw, hashlib.sha256).hexdigest()
    assert sent["headers"]["X-Alliance-Signature"] == f"sha256={expected}"


def test_the_settings_page_keeps_choices_and_says_what_to_correct(
    wired: tuple[FastAPI, Settings],
) -> None:
    app, _ = wired
    with TestClient(app) as client:
        csrf = sign_in(client, "dr.xinyuan.tcm")  # 新源县中医医院: no gateway configured
        page = client.get("/notices/settings")
        assert page.status_code == 200
        assert 'value="Asia/Urumqi" selected' in page.text  # a Xinyuan site: Xinjiang time
        form = {
            "csrf": csrf,
            "time_zone": "Asia/Shanghai",
            "quiet_start": "22:00",
            "quiet_end": "",
            "email": "ma@xytcm.cn",
            "email_on": "on",
        }
        refused = client.post("/notices/settings", data=form)
        assert refused.status_code == 422
        assert "免打扰时段需要填写开始和结束时间" in refused.text
        assert 'value="ma@xytcm.cn"' in refused.text  # what was typed is kept
        gateway = {**form, "quiet_end": "07:30", "webhook_on": "on", "webhook_to": "139"}
        assert client.post("/notices/settings", data=gateway).status_code == 422
        form["email"] = "not an address"
        form["quiet_end"] = "07:30"
        assert "电子邮件地址格式不正确" in client.post("/notices/settings", data=form).text
        form["email"] = "ma@xytcm.cn"
        saved = client.post("/notices/settings", data=form, follow_redirects=False)
        assert (saved.status_code, saved.headers["location"]) == (303, "/notices/settings?saved=1")
        page = client.get("/notices/settings?saved=1")
        assert 'value="Asia/Shanghai" selected' in page.text
        assert 'value="07:30"' in page.text and "通知设置已保存" in page.text
    with app.state.services.db.transaction() as session:
        user = session.query(User).filter_by(username="dr.xinyuan.tcm").one()
        channels = session.query(PersonChannel).filter_by(user_id=user.id).all()
        assert [c.channel for c in channels] == ["email"]


def test_the_list_names_patients_marks_overdue_and_reminds_of_consults(
    app: FastAPI, as_user: Any
) -> None:
    services: Services = app.state.services
    urgent = send(services, "xy-people", "demo-aygul", priority="urgent")
    # A consult booked for the day after tomorrow, 15:00 Beijing time, with 陈志明.
    doctor, specialist = as_user("dr.xinyuan.people"), as_user("sp.subei")
    sr, _ = open_consult(doctor)
    start = beijing(weekday_ahead(2), "15:00")
    appt = book(
        doctor, proposal_at(sr, "sp-subei-role", start, [slot_id("sp-subei-consult", start)])
    ).json()
    assert respond(specialist, appt["id"], "accepted", "PractitionerRole/sp-subei-role")
    clock.set_to(start - timedelta(hours=23))  # past the urgent referral's deadline too
    worker = build_worker(services.settings, services.db, services.fhir)
    worker.schedule(force=True)  # the overdue escalation and the 24-hour reminder

    with TestClient(app) as client:
        sign_in(client, "admin.subei")
        home = client.get("/")
        count = re.search(r'<span id="notice-count" class="badge"[^>]*>(\d+)</span>', home.text)
        assert count is not None and int(count.group(1)) >= 1
        page = client.get("/notices")
        rows = re.findall(r'<tr class="([^"]*)" data-kind="([^"]+)">(.*?)</tr>', page.text, re.S)
        overdue = [(cls, text) for cls, kind, text in rows if kind == "referral-overdue"]
        assert len(overdue) == 1 and "urgent" in overdue[0][0]
        assert "紧急转诊超时未处理" in overdue[0][1] and f"/referrals/{urgent}" in overdue[0][1]
        # An administrator sees no clinical record: the patient is not named to them.
        assert "阿依古丽" not in overdue[0][1] and "（未共享）" in overdue[0][1]
        # Read now: the count is gone.
        assert 'id="notice-count" class="badge" hidden' in client.get("/").text

    with TestClient(app) as client:
        sign_in(client, "sp.subei")
        page = client.get("/notices")
        reminders = re.findall(r'data-kind="consult-reminder">(.*?)</tr>', page.text, re.S)
        assert len(reminders) == 1 and "会诊即将开始" in reminders[0]
        assert "阿依古丽·努尔兰" in page.text  # the referral's patient, by name
        # The specialist is not an administrator: the escalation is not theirs.
        assert 'data-kind="referral-overdue"' not in page.text


@pytest.mark.parametrize(
    ("zone", "utc", "until"),
    [
        # 22:00-07:00 新疆时间 (UTC+6): 23:30 Beijing is 21:30 there, not yet quiet...
        ("Asia/Urumqi", "2026-12-01T15:30", None),
        # ...01:00 Beijing is 23:00 there: quiet until 07:00 Xinjiang time, 01:00 UTC.
        ("Asia/Urumqi", "2026-12-01T17:00", "2026-12-02T01:00"),
        # The same hours in Beijing time end two hours earlier (23:00 UTC).
        ("Asia/Shanghai", "2026-12-01T17:00", "2026-12-01T23:00"),
        ("Asia/Shanghai", "2026-12-01T23:00", None),
    ],
)
def test_quiet_hours_are_the_persons_own_time_zone(zone: str, utc: str, until: str | None) -> None:
    choices = Choices(zone, quiet_start=22 * 60, quiet_end=7 * 60)
    now = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    expected = datetime.fromisoformat(until).replace(tzinfo=UTC) if until else None
    assert quiet_until(choices, now) == expected
