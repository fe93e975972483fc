"""What an operator sees: one JSON log line per request, a request id that joins the log line
to the request's AuditEvent (a 500 included)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from alliance.audit.service import BALP_ENTITY_TYPE
from alliance.config import Settings
from alliance.fhir.store import FhirStore
from server.app import create_app
from server.logs import JsonFormatter
from tests.conftest import bearer
from tests.imaging_data import ct_series, multipart, stow_headers


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, object]]]]:
    """The `alliance.access` lines written meanwhile, each parsed from its JSON."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("alliance.access")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def request_ids(event: dict) -> list[str]:
    return [
        e["what"]["identifier"]["value"]
        for e in event.get("entity", [])
        if e["type"]
        == {
            "system": BALP_ENTITY_TYPE,
            "code": "XrequestId",
            "display": "transport specific unique identifier where http X-Request-Id is used",
        }
    ]


def audited(auditor: TestClient, **params: str) -> list[dict]:
    r = auditor.get("/fhir/AuditEvent", params={**params, "_count": "200"})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def test_a_request_id_given_is_answered_logged_and_audited(
    as_user: Callable[[str], TestClient],
    log_lines: Callable[[], list[dict[str, object]]],
) -> None:
    doctor, auditor = as_user("dr.xinyuan.people"), as_user("auditor")
    r = doctor.get("/fhir/Patient/demo-aygul", headers={"X-Request-ID": "nginx-7f3a.42"})
    assert r.status_code == 200
    assert r.headers["X-Request-ID"] == "nginx-7f3a.42"
    line = next(x for x in log_lines() if x["request_id"] == "nginx-7f3a.42")
    assert {k: v for k, v in line.items() if k not in ("time", "duration_ms", "client")} == {
        "level": "INFO",
        "logger": "alliance.access",
        "message": "GET /fhir/Patient/demo-aygul 200",
        "request_id": "nginx-7f3a.42",
        "user": "dr.xinyuan.people",
        "hospital": "xy-people",
        "method": "GET",
        "route": "/fhir/{rtype}/{rid}",
        "path": "/fhir/Patient/demo-aygul",
        "status": 200,
    }
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
    assert str(line["time"]).endswith("+00:00")
    [event] = audited(auditor, patient="Patient/demo-aygul", subtype="read")
    assert request_ids(event) == ["nginx-7f3a.42"]


@pytest.mark.parametrize(
    "given",
    ["x" * 65, "has space", "tab\there", "控制", ""],
    ids=["65 characters", "a space", "a control character", "not ASCII", "empty"],
)
def test_an_unacceptable_request_id_is_replaced(
    given: str, as_user: Callable[[str], TestClient]
) -> None:
    doctor = as_user("dr.xinyuan.people")
    r = doctor.get("/fhir/Patient/demo-aygul", headers=[(b"x-request-id", given.encode())])
    assert r.status_code == 200
    made = r.headers["X-Request-ID"]
    assert made != given and len(made) == 32 and int(made, 16) >= 0


def test_without_a_request_id_one_is_made_for_each_request(client: TestClient) -> None:
    first, second = client.get("/healthz"), client.get("/healthz")
    assert len(first.headers["X-Request-ID"]) == 32
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


def test_a_500_in_the_log_joins_its_audit_record(
    app: FastAPI,
    settings: Settings,
    as_user: Callable[[str], TestClient],
    log_lines: Callable[[], list[dict[str, object]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(FhirStore, "read", broken)
    lenient = TestClient(
        app, raise_server_exceptions=False, headers=bearer(settings, "dr.xinyuan.people")
    )
    r = lenient.get("/fhir/Patient/demo-aygul", headers={"X-Request-ID": "trace-500"})
    assert r.status_code == 500
    assert r.headers["X-Request-ID"] == "trace-500"
    line = next(x for x in log_lines() if x["request_id"] == "trace-500")
    assert (line["status"], line["user"], line["hospital"]) == (
        500,
        "dr.xinyuan.people",
        "xy-people",
    )
    monkeypatch.undo()
    [event] = audited(as_user("auditor"), outcome="8", altid="dr.xinyuan.people")
    assert event["outcomeDesc"] == "internal error: a bug"
    assert request_ids(event) == ["trace-500"]


def test_the_server_log_config_writes_json_and_keeps_uvicorn_access_off() -> None:
    from server.logs import logging_config

    config = logging_config()
    assert config["loggers"]["uvicorn.access"] == {
        "handlers": [],
        "level": "WARNING",
        "propagate": False,
    }
    assert config["formatters"]["json"] == {"()": "server.logs.JsonFormatter"}
    record = logging.LogRecord("uvicorn.error", logging.INFO, "f", 1, "Started %s", ("x",), None)
    record.created = 0.0
    assert json.loads(JsonFormatter().format(record)) == {
        "time": "1970-01-01T00:00:00.000+00:00",
        "level": "INFO",
        "logger": "uvicorn.error",
        "message": "Started x",
    }


# ---- links behind a reverse proxy ------------------------------------------------------------


@pytest.fixture
def proxied(settings: Settings) -> Iterator[Callable[[str], TestClient]]:
    """A client of an app that trusts 10.0.0.0/8 as its proxies, calling from `peer`."""
    app = create_app(settings.model_copy(update={"trusted_proxies": "10.0.0.0/8, ::1"}))
    headers = bearer(settings, "dr.xinyuan.people")
    yield lambda peer: TestClient(app, client=(peer, 40000), headers=headers)
    app.state.services.db.dispose()


def test_links_follow_the_forwarded_host_from_a_trusted_proxy(
    proxied: Callable[[str], TestClient],
) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "fhir.yz.example"}
    r = proxied("10.1.2.3").get("/fhir/Patient", params={"_count": "1"}, headers=forwarded)
    assert r.status_code == 200
    bundle = r.json()
    assert bundle["entry"][0]["fullUrl"].startswith("https://fhir.yz.example/fhir/Patient/")
    assert [link["url"].split("?")[0] for link in bundle["link"]] == [
        "https://fhir.yz.example/fhir/Patient"
    ] * len(bundle["link"])
    r = proxied("10.1.2.3").get(
        "/fhir/Patient",
        params={"_count": "1"},
        headers={
            "Forwarded": 'for=192.0.2.1, for="[2001:db8::1]";proto=https;host=yz.example:8443'
        },
    )
    assert r.json()["entry"][0]["fullUrl"].startswith("https://yz.example:8443/fhir/Patient/")


def test_dicomweb_links_follow_the_forwarded_host_from_a_trusted_proxy(
    proxied: Callable[[str], TestClient],
) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.yz.example"}
    r = proxied("10.1.2.3").post(
        "/dicomweb/studies",
        content=multipart(ct_series(1)),
        headers={**stow_headers(), **forwarded},
    )
    assert r.status_code == 200
    [stored] = r.json()["00081199"]["Value"]
    assert stored["00081190"]["Value"][0].startswith("https://pacs.yz.example/dicomweb/studies/")


def test_forwarded_headers_from_anyone_else_are_ignored(
    proxied: Callable[[str], TestClient],
) -> None:
    forged = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    r = proxied("192.0.2.9").get("/fhir/Patient", params={"_count": "1"}, headers=forged)
    assert r.json()["entry"][0]["fullUrl"].startswith("http://testserver/fhir/Patient/")


@pytest.mark.parametrize(
    "host", ["evil.example/path", "user@evil.example", "a b", "evil.example:99999x"]
)
def test_a_forwarded_host_that_is_not_a_host_is_ignored(
    host: str, proxied: Callable[[str], TestClient]
) -> None:
    r = proxied("10.0.0.1").get(
        "/fhir/Patient", params={"_count": "1"}, headers={"X-Forwarded-Host": host}
    )
    assert r.json()["entry"][0]["fullUrl"].startswith("http://testserver/fhir/Patient/")


@pytest.mark.parametrize(
    ("header", "value", "address"),
    [
        ("X-Forwarded-For", "203.0.113.1, 198.51.100.7", "198.51.100.7"),
        ("Forwarded", 'for=203.0.113.1, for="[2001:db8::7]:4711"', "2001:db8::7"),
        ("Forwarded", 'for="198.51.100.7:4711";proto=https', "198.51.100.7"),
        ("Forwarded", "for=unknown", "10.0.0.1"),
    ],
)
def test_the_audit_records_the_client_a_trusted_proxy_names(
    header: str,
    value: str,
    address: str,
    proxied: Callable[[str], TestClient],
    as_user: Callable[[str], TestClient],
) -> None:
    r = proxied("10.0.0.1").get(
        "/fhir/Patient/demo-aygul", headers={header: value, "X-Request-ID": "via-proxy"}
    )
    assert r.status_code == 200
    [event] = audited(as_user("auditor"), patient="Patient/demo-aygul", subtype="read")
    assert event["agent"][0]["network"]["address"] == address
    assert request_ids(event) == ["via-proxy"]


@pytest.mark.parametrize("value", ["10.0.0.0/33", "proxy.example", "10.0.0.1,,nope"])
def test_trusted_proxies_must_be_addresses_or_networks(value: str) -> None:
    with pytest.raises(ValueError, match="ALLIANCE_TRUSTED_PROXIES holds IP addresses"):
        Settings(trusted_proxies=value, demo=True)
