"""Builders of valid test resources."""

from __future__ import annotations

import itertools
from typing import Any

from alliance.codes import LANGUAGE_EXTENSION, RESIDENT_ID
from alliance.directory.identity import check_character

_serial = itertools.count(1)


def identity_number(
    birth: str = "19900101", address: str = "654025", seq: int | None = None
) -> str:
    """A valid GB 11643 number; each call gives a new sequence unless `seq` is given."""
    n = seq if seq is not None else next(_serial) % 1000
    first17 = f"{address}{birth}{n:03d}"
    return first17 + check_character(first17)


def hospital(rid: str = "xy-people", name: str = "新源县人民医院") -> dict[str, Any]:
    return {"resourceType": "Organization", "id": rid, "name": name, "active": True}


def patient(
    text: str = "王建国",
    *,
    hospital_id: str = "xy-people",
    number: str | None = None,
    lang: str = "zh-Hans",
    other_names: list[tuple[str, str]] = (),  # type: ignore[assignment]
    **extra: Any,
) -> dict[str, Any]:
    names = [{"extension": [{"url": LANGUAGE_EXTENSION, "valueCode": lang}], "text": text}] + [
        {"extension": [{"url": LANGUAGE_EXTENSION, "valueCode": lg}], "text": t, "use": "usual"}
        for t, lg in other_names
    ]
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": RESIDENT_ID, "value": number or identity_number()}],
        "name": names,
        "gender": "male",
        "birthDate": "1990-01-01",
        "managingOrganization": {"reference": f"Organization/{hospital_id}"},
    }
    body.update(extra)
    return body
