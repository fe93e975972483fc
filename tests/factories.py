"""Builders of valid test resources."""

from __future__ import annotations

import itertools
from typing import Any

from alliance.codes import LANGUAGE_EXTENSION, RESIDENT_ID
from alliance.directory.identity import IdentityNumberError, check_character, parse_identity_number

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


def _stated(number: str) -> tuple[str, str] | None:
    """(sex, birth date) a valid identity number states, or None for an invalid one."""
    try:
        parsed = parse_identity_number(number)
    except IdentityNumberError:
        return None
    return parsed.sex, parsed.birth_date.isoformat()


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
    # The birth date and sex are the ones the identity number states (GB 11643), as on a
    # real record: taken from a number given, or a number made to state those given.
    stated = _stated(number) if number else None
    gender = extra.pop("gender", stated[0] if stated else "male")
    born = str(extra.pop("birthDate", stated[1] if stated else "1990-01-01"))
    if number is None and gender in ("male", "female") and born[:4].isdigit() and len(born) == 10:
        serial = next(_serial) % 500 * 2 + (1 if gender == "male" else 0)
        number = identity_number(birth=born.replace("-", ""), seq=serial)
    body: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": RESIDENT_ID, "value": number or identity_number()}],
        "name": names,
        "gender": gender,
        "birthDate": born,
        "managingOrganization": {"reference": f"Organization/{hospital_id}"},
    }
    body.update(extra)
    return body
