"""The portal's live notices (issue 14.4) over real HTTP: the Server-Sent Events stream of the
signed-in person's notices (patient by name, link), resumed with Last-Event-ID, ended when the
session is revoked; and in Chromium, the specialist's page showing a new referral within 2
seconds of the county doctor sending it, without reloading."""

from __future__ import annotations

import json
import queue
import signal
import threading
from pathlib import Path
from typing import Any

import httpx

from alliance.config import Settings
from alliance.notify.outbox import last_event_number
from server.app import Services
from tests.accounts import portal
from tests.conftest import LiveServer, serving
from tests.notices import send
from tests.test_portal_browser import browser, fill_request, shot, sign_in

__all__ = ["browser"]  # the Chromium fixture, shared with the portal's browser tests


def portal_client(url: str, username: str) -> tuple[httpx.Client, str]:
    """An HTTP client signed in to the portal at `url`; with the session's CSRF token."""
    client = httpx.Client(base_url=url, timeout=10)
    return client, portal(client, username)


class Stream:
    """A Server-Sent Events stream read in a thread: each event as (type, id, data)."""

    def __init__(self, client: httpx.Client, headers: dict[str, str], after: int | None) -> None:
        self.events: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self.status: int | None = None
        params = {"after": str(after)} if after is not None else {}
        self.opened = threading.Event()

        def read() -> None:
            try:
                with client.stream(
                    "GET", "/notices/stream", params=params, headers=headers, timeout=30
                ) as r:
                    self.status = r.status_code
                    self.opened.set()
                    kind, number, data = "message", "", ""
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("id: "):
                            number = line[4:]
                        elif line.startswith("data: "):
                            data = line[6:]
                        elif line == "" and data:
                            self.events.put((kind, number, json.loads(data)))
                            kind, number, data = "message", "", ""
            except httpx.TransportError:
                pass  # the server went away mid-stream: the stream is closed
            finally:
                self.opened.set()
                self.events.put(("closed", "", None))

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()
        assert self.opened.wait(10)

    def next(self, timeout: float = 10) -> tuple[str, str, Any]:
        return self.events.get(timeout=timeout)


def newest(server: LiveServer) -> int:
    services: Services = server.app.state.services
    with services.db.transaction() as session:
        return last_event_number(session)


def test_the_stream_sends_notices_resumes_and_ends_with_the_session(
    live_server: LiveServer,
) -> None:
    services: Services = live_server.app.state.services
    specialist, csrf = portal_client(live_server.url, "sp.subei")
    start = newest(live_server)
    stream = Stream(specialist, {}, start)
    task = send(services, "xy-people", "demo-aygul")
    kind, number, notice = stream.next()
    assert (kind, notice["kind"]) == ("notice", "referral-sent")
    assert notice["link"] == f"/referrals/{task}"
    assert notice["words"] == "新的转诊申请"
    assert notice["patient"].startswith("阿依古丽·努尔兰 · 女")
    assert int(number) > start and notice["unread"] >= 1

    # A browser that reconnects sends the last id it had: it gets what it missed, only that.
    specialist, csrf = portal_client(live_server.url, "sp.subei")
    missed = send(services, "xy-people", "demo-memet")
    send(services, "xy-tcm", "demo-ma-xiulan")  # another hospital's: not theirs
    resumed = Stream(specialist, {"Last-Event-ID": number}, None)
    kind, _, notice = resumed.next()
    assert (kind, notice["link"]) == ("notice", f"/referrals/{missed}")
    # The first stream, still open, gets it too (read before the logout below: a stream that
    # finds its session ended says `end` at its next look, whatever it had not sent yet).
    kind, _, notice = stream.next()
    assert (kind, notice["link"]) == ("notice", f"/referrals/{missed}")

    # Logging out ends the account's sessions everywhere, and their streams (the first one's
    # too); reconnecting is answered 204, which tells a browser to stop.
    assert specialist.post("/logout", data={"csrf": csrf}).status_code == 303
    assert [resumed.next()[0], resumed.next()[0]] == ["end", "closed"]
    assert [stream.next()[0], stream.next()[0]] == ["end", "closed"]
    assert Stream(specialist, {"Last-Event-ID": number}, None).status == 204

    # The other hospital's specialist hears nothing of either.
    other, other_csrf = portal_client(live_server.url, "sp.yz.mch")
    quiet = Stream(other, {}, start)
    send(services, "xy-mch", "demo-patigul")
    kind, _, notice = quiet.next()
    assert notice["kind"] == "referral-sent" and notice["patient"].startswith("帕提古丽")
    assert other.post("/logout", data={"csrf": other_csrf}).status_code == 303
    assert [quiet.next()[0], quiet.next()[0]] == ["end", "closed"]


def test_the_specialist_sees_a_new_referral_within_2_seconds(
    browser: Any, live_server: LiveServer, tmp_path: Path
) -> None:
    specialist = sign_in(browser, live_server, "sp.subei")
    specialist.goto(f"{live_server.url}/notices")  # reading the list: nothing unread now
    specialist.wait_for_function("document.documentElement.dataset.live === 'open'")
    assert specialist.is_hidden("#notice-count")

    county = sign_in(browser, live_server, "dr.xinyuan.people")
    fill_request(
        county,
        f"{live_server.url}/referrals/new?patient=demo-aygul",
        tmp_path,
        "胸痛3天，心电图ST段抬高。",
    )
    county.click("main button[type=submit]")
    county.wait_for_url("**/referrals/*")
    task_id = county.url.rsplit("/", 1)[1]

    # Sent: the specialist's page shows it without reloading, within 2 seconds.
    row = specialist.wait_for_selector(
        f"#notice-rows tr:has(a[href='/referrals/{task_id}'])", timeout=2000
    )
    assert row is not None and "阿依古丽·努尔兰" in row.inner_text()
    assert specialist.inner_text("#notice-count") == "1"
    assert "新的转诊申请" in specialist.inner_text("#live-notices")
    shot(specialist, "n1-live-notice")
    county.close()
    specialist.close()


def test_a_stopping_server_is_not_held_by_an_open_stream(
    settings: Settings, tmp_path: Path
) -> None:
    """`alliance serve` told to stop (SIGTERM) with a notice stream open stops after its grace
    (ALLIANCE_SHUTDOWN_GRACE_SECONDS), not when the stream would have ended (STREAM_SECONDS,
    two minutes): uvicorn waits for the requests under way, and a stream is one."""
    log = tmp_path / "serve.log"
    with serving(settings, log, ALLIANCE_SHUTDOWN_GRACE_SECONDS="1") as (url, proc):
        client, _csrf = portal_client(url, "sp.subei")
        stream = Stream(client, {}, None)
        assert stream.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == -signal.SIGTERM
        assert stream.next(timeout=10)[0] == "closed"
