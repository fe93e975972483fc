"""The demo alliance (`alliance seed-demo`): six hospitals, their partnerships and departments,
practitioners with titles, and patients with Han, Kazakh, Uyghur and Hui names.

Idempotent: every record has a stable id and is created only when it is missing.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

from sqlalchemy import text as sql

from alliance.codes import (
    AFFILIATION_ROLE,
    DEPARTMENT,
    DEPARTMENT_VERSION,
    HL7_ORG_TYPE,
    HOSPITAL_MRN,
    LANGUAGE_EXTENSION,
    ORGANIZATION_KIND,
    RESIDENT_ID,
)
from alliance.config import Settings
from alliance.db import Database
from alliance.directory.commands import PersonName, department, practitioner, practitioner_role
from alliance.directory.identity import check_character
from alliance.errors import NotFound
from alliance.fhir.store import FhirStore
from alliance.security.service import OPERATOR, create_user, get_user
from fhir_mappings import build_registry
from teleconsult.calendars import TIME_ZONE_EXTENSION
from teleconsult.commands import consult_schedule

Resource = dict[str, Any]

# (id, Chinese name, English name, kind, city, partner id or None)
HOSPITALS = [
    ("subei", "苏北人民医院", "Subei People's Hospital", "general", "扬州市", None),
    ("yz-tcm", "扬州市中医院", "Yangzhou Hospital of TCM", "tcm", "扬州市", None),
    (
        "yz-mch",
        "扬州市妇幼保健院",
        "Yangzhou Maternal and Child Health Hospital",
        "mch",
        "扬州市",
        None,
    ),
    (
        "xy-people",
        "新源县人民医院",
        "Xinyuan County People's Hospital",
        "general",
        "新源县",
        "subei",
    ),
    ("xy-tcm", "新源县中医医院", "Xinyuan County Hospital of TCM", "tcm", "新源县", "yz-tcm"),
    (
        "xy-mch",
        "新源县妇幼保健院",
        "Xinyuan County Maternal and Child Health Hospital",
        "mch",
        "新源县",
        "yz-mch",
    ),
]
KIND_NAMES = {"general": "综合医院", "tcm": "中医医院", "mch": "妇幼保健院"}

# 医疗机构诊疗科目名录 codes, per kind of hospital: (slug, code, display, department name)
DEPARTMENTS = {
    "general": [
        ("cardiology", "03.04", "心血管内科专业", "心血管内科"),
        ("respiratory", "03.01", "呼吸内科专业", "呼吸内科"),
        ("neurology", "03.03", "神经内科专业", "神经内科"),
        ("general-surgery", "04.01", "普通外科专业", "普外科"),
        ("orthopaedics", "04.03", "骨科专业", "骨科"),
        ("radiology", "32", "医学影像科", "影像科"),
    ],
    "tcm": [
        ("tcm-internal", "50.01", "内科专业", "中医内科"),
        ("acupuncture", "50.13", "针灸科专业", "针灸推拿科"),
        ("radiology", "32", "医学影像科", "影像科"),
    ],
    "mch": [
        ("obstetrics", "05.02", "产科专业", "产科"),
        ("gynaecology", "05.01", "妇科专业", "妇科"),
        ("paediatrics", "07", "儿科", "儿科"),
        ("neonatology", "07.01", "新生儿专业", "新生儿科"),
    ],
}

# (practitioner id, hospital, department slug, title, name text, family, given, other names)
PRACTITIONERS: list[tuple[str, str, str, str, str, str | None, str | None, list[Resource]]] = [
    ("sp-subei", "subei", "cardiology", "chief-physician", "陈志明", "陈", "志明", []),
    ("subei-resp", "subei", "respiratory", "associate-chief-physician", "刘海燕", "刘", "海燕", []),
    ("subei-radiology", "subei", "radiology", "chief-physician", "周国平", "周", "国平", []),
    ("sp-yz-tcm", "yz-tcm", "tcm-internal", "chief-tcm-physician", "孙永康", "孙", "永康", []),
    ("sp-yz-mch", "yz-mch", "obstetrics", "associate-chief-physician", "吴丽华", "吴", "丽华", []),
    (
        "dr-xinyuan-people",
        "xy-people",
        "cardiology",
        "attending-physician",
        "努尔兰·别克",
        None,
        None,
        [{"text": "Нұрлан Бек", "lang": "kk-Cyrl"}],
    ),
    (
        "xy-people-radiology",
        "xy-people",
        "radiology",
        "attending-physician",
        "李军",
        "李",
        "军",
        [],
    ),
    (
        "dr-xinyuan-tcm",
        "xy-tcm",
        "tcm-internal",
        "attending-tcm-physician",
        "马玉花",
        "马",
        "玉花",
        [],
    ),
    (
        "dr-xinyuan-mch",
        "xy-mch",
        "obstetrics",
        "attending-physician",
        "古丽娜尔·吐尔逊",
        None,
        None,
        [
            {"text": "گۈلنار تۇرسۇن", "lang": "ug-Arab"},
            {"text": "Gülnar Tursun", "lang": "ug-Latn"},
        ],
    ),
]

# (patient id, hospital, address code, birth YYYYMMDD, sequence, gender, names, family, given)
PATIENTS: list[tuple[str, str, str, str, str, str, list[Resource], str | None, str | None]] = [
    (
        "demo-wang-jianguo",
        "xy-people",
        "654025",
        "19650312",
        "013",
        "male",
        [{"text": "王建国", "lang": "zh-Hans"}],
        "王",
        "建国",
    ),
    (
        "demo-aygul",
        "xy-people",
        "654025",
        "19780921",
        "024",
        "female",
        [
            {"text": "阿依古丽·努尔兰", "lang": "zh-Hans"},
            {"text": "Айгүл Нұрлан", "lang": "kk-Cyrl"},
        ],
        None,
        None,
    ),
    (
        "demo-memet",
        "xy-people",
        "654125",
        "19591105",
        "031",
        "male",
        [
            {"text": "买买提·艾力", "lang": "zh-Hans"},
            {"text": "مەمەت ئەلى", "lang": "ug-Arab"},
            {"text": "Memet Eli", "lang": "ug-Latn"},
        ],
        None,
        None,
    ),
    (
        "demo-ma-xiulan",
        "xy-tcm",
        "654025",
        "19700130",
        "042",
        "female",
        [{"text": "马秀兰", "lang": "zh-Hans"}],
        "马",
        "秀兰",
    ),
    (
        "demo-erlan",
        "xy-tcm",
        "652425",
        "19830617",
        "057",
        "male",
        [
            {"text": "叶尔兰·哈布都拉", "lang": "zh-Hans"},
            {"text": "Ерлан Қабдолла", "lang": "kk-Cyrl"},
        ],
        None,
        None,
    ),
    (
        "demo-patigul",
        "xy-mch",
        "654025",
        "19960402",
        "068",
        "female",
        [
            {"text": "帕提古丽·艾合买提", "lang": "zh-Hans"},
            {"text": "پاتىگۈل ئەخمەت", "lang": "ug-Arab"},
        ],
        None,
        None,
    ),
    (
        "demo-zhang-min",
        "xy-mch",
        "654025",
        "19990818",
        "082",
        "female",
        [{"text": "张敏", "lang": "zh-Hans"}],
        "张",
        "敏",
    ),
]


def identity_number(address: str, birth: str, sequence: str) -> str:
    first17 = address + birth + sequence
    return first17 + check_character(first17)


def _ref(rtype: str, rid: str) -> Resource:
    return {"reference": f"{rtype}/{rid}"}


def _name(text: str, lang: str, family: str | None = None, given: str | None = None) -> Resource:
    name: Resource = {
        "extension": [{"url": LANGUAGE_EXTENSION, "valueCode": lang}],
        "use": "official",
        "text": text,
    }
    if family:
        name["family"] = family
    if given:
        name["given"] = [given]
    return name


def _hospital(hid: str, zh: str, en: str, kind: str, city: str) -> Resource:
    return {
        "resourceType": "Organization",
        "active": True,
        "type": [
            {
                "coding": [
                    {"system": HL7_ORG_TYPE, "code": "prov", "display": "Healthcare Provider"}
                ]
            },
            {"coding": [{"system": ORGANIZATION_KIND, "code": kind, "display": KIND_NAMES[kind]}]},
        ],
        "name": zh,
        "alias": [en],
        "address": [{"city": city, "state": "江苏省" if city == "扬州市" else "新疆维吾尔自治区"}],
    }


def demo_resources() -> list[tuple[str, str, Resource]]:
    """Every demo record as (type, id, resource), in an order that keeps references valid."""
    out: list[tuple[str, str, Resource]] = []
    dept_codes: dict[tuple[str, str], tuple[str, str]] = {}
    for hid, zh, en, kind, city, _partner in HOSPITALS:
        out.append(("Organization", hid, _hospital(hid, zh, en, kind, city)))
        for slug, code, display, name in DEPARTMENTS[kind]:
            out.append(
                (
                    "Organization",
                    f"{hid}-{slug}",
                    department(hid, name=name, code=code, display=display),
                )
            )
            dept_codes[(hid, slug)] = (code, display)
    for hid, _zh, _en, _kind, _city, partner in HOSPITALS:
        if partner:
            out.append(
                (
                    "OrganizationAffiliation",
                    f"{partner}-{hid}",
                    {
                        "resourceType": "OrganizationAffiliation",
                        "active": True,
                        "period": {"start": "2017-01-01"},
                        "organization": _ref("Organization", partner),
                        "participatingOrganization": _ref("Organization", hid),
                        "code": [
                            {
                                "coding": [
                                    {
                                        "system": AFFILIATION_ROLE,
                                        "code": "alliance-partner",
                                        "display": "医联体对口帮扶",
                                    }
                                ]
                            }
                        ],
                    },
                )
            )
    for pid, hid, slug, title, text, family, given, others in PRACTITIONERS:
        names = [_name(text, "zh-Hans", family, given)]
        names += [{**_name(o["text"], o["lang"]), "use": "usual"} for o in others]
        doctor = practitioner(hid, name=PersonName(text), title=title)
        doctor["name"] = names  # with the family and given parts, and the other scripts
        out.append(("Practitioner", pid, doctor))
        code, display = dept_codes[(hid, slug)]
        specialty = {
            "system": DEPARTMENT,
            "version": DEPARTMENT_VERSION,
            "code": code,
            "display": display,
        }
        out.append(
            (
                "PractitionerRole",
                f"{pid}-role",
                practitioner_role(hid, practitioner_id=pid, specialty=specialty),
            )
        )
    for n, (pid, hid, address, birth, seq, gender, names, family, given) in enumerate(PATIENTS):
        number = identity_number(address, birth, seq)
        first, *others = names
        patient_names = [_name(first["text"], first["lang"], family, given)]
        patient_names += [{**_name(o["text"], o["lang"]), "use": "usual"} for o in others]
        out.append(
            (
                "Patient",
                pid,
                {
                    "resourceType": "Patient",
                    "active": True,
                    "identifier": [
                        {"system": RESIDENT_ID, "value": number},
                        {"system": f"{HOSPITAL_MRN}/{hid}", "value": f"MRN{2026000 + n}"},
                    ],
                    "name": patient_names,
                    "gender": gender,
                    "birthDate": f"{birth[:4]}-{birth[4:6]}-{birth[6:]}",
                    "address": [{"city": "新源县", "state": "新疆维吾尔自治区"}],
                    "managingOrganization": _ref("Organization", hid),
                },
            )
        )
    out += teleconsult_calendars()
    return out


# Teleconsult calendars: each hospital's working hours in the zone it keeps (hours as
# (days, start, end)), a holiday, and the city specialists' consult templates, so the demo
# offers consult times where both sites are open.
YANGZHOU_HOURS = [
    ("mon tue wed thu fri", "08:00", "12:00"),
    ("mon tue wed thu fri", "14:00", "17:30"),
]
CALENDARS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "subei": ("Asia/Shanghai", YANGZHOU_HOURS),
    "yz-tcm": ("Asia/Shanghai", YANGZHOU_HOURS),
    "yz-mch": ("Asia/Shanghai", YANGZHOU_HOURS),
    # Xinjiang hours (10:00-19:00 Beijing time), and a site that keeps Beijing hours.
    "xy-people": ("Asia/Urumqi", [("mon tue wed thu fri", "08:00", "17:00")]),
    "xy-tcm": (
        "Asia/Shanghai",
        [("mon tue wed thu fri", "10:00", "14:00"), ("mon tue wed thu fri", "16:00", "19:30")],
    ),
    "xy-mch": (
        "Asia/Urumqi",
        [("mon tue wed thu fri", "08:30", "12:30"), ("mon tue wed thu fri", "14:30", "17:30")],
    ),
}
# (practitioner, [(days, start, end)]) of the specialists who take teleconsults, 30-minute slots.
CONSULT_TEMPLATES = [
    (
        "sp-subei",
        [("mon tue wed thu fri", "08:00", "12:00"), ("mon tue wed thu fri", "14:00", "17:30")],
    ),
    ("subei-resp", [("tue thu", "14:00", "17:00")]),
    ("sp-yz-tcm", [("mon wed fri", "09:00", "11:30"), ("mon wed fri", "14:30", "17:00")]),
    ("sp-yz-mch", [("tue wed thu fri", "08:30", "11:30"), ("tue wed thu fri", "14:00", "16:30")]),
]


def teleconsult_calendars() -> list[tuple[str, str, Resource]]:
    out: list[tuple[str, str, Resource]] = []
    names = {hid: zh for hid, zh, *_ in HOSPITALS}
    for hid, (zone, hours) in CALENDARS.items():
        out.append(
            (
                "HealthcareService",
                f"{hid}-teleconsult",
                {
                    "resourceType": "HealthcareService",
                    "extension": [{"url": TIME_ZONE_EXTENSION, "valueCode": zone}],
                    "active": True,
                    "providedBy": _ref("Organization", hid),
                    "name": f"{names[hid]}远程会诊",
                    "availableTime": [
                        {
                            "daysOfWeek": days.split(),
                            "availableStartTime": f"{start}:00",
                            "availableEndTime": f"{end}:00",
                        }
                        for days, start, end in hours
                    ],
                    "notAvailable": [
                        {
                            "description": "元旦",
                            "during": {"start": "2027-01-01", "end": "2027-01-01"},
                        }
                    ],
                },
            )
        )
    for pid, sessions in CONSULT_TEMPLATES:
        spans = [
            {
                "daysOfWeek": days.split(),
                "availableStartTime": f"{start}:00",
                "availableEndTime": f"{end}:00",
            }
            for days, start, end in sessions
        ]
        out.append(
            (
                "Schedule",
                f"{pid}-consult",
                consult_schedule(f"{pid}-role", spans, start=date(2026, 11, 1)),
            )
        )
    return out


#: The demo accounts of ARCHITECTURE.md: (username, hospital, role, practitioner, display name).
ACCOUNTS = [
    ("dr.xinyuan.people", "xy-people", "county-doctor", "dr-xinyuan-people", "努尔兰·别克"),
    ("dr.xinyuan.tcm", "xy-tcm", "county-doctor", "dr-xinyuan-tcm", "马玉花"),
    ("dr.xinyuan.mch", "xy-mch", "county-doctor", "dr-xinyuan-mch", "古丽娜尔·吐尔逊"),
    ("sp.subei", "subei", "specialist", "sp-subei", "陈志明"),
    ("sp.yz.tcm", "yz-tcm", "specialist", "sp-yz-tcm", "孙永康"),
    ("sp.yz.mch", "yz-mch", "specialist", "sp-yz-mch", "吴丽华"),
    ("admin.subei", "subei", "hospital-admin", None, "苏北人民医院管理员"),
    ("admin.xinyuan.people", "xy-people", "hospital-admin", None, "新源县人民医院管理员"),
    ("auditor", "subei", "auditor", None, "医联体审计员"),
]
DEMO_PASSWORD = "alliance-demo"


def seed_demo(settings: Settings) -> dict[str, int]:
    """Create the demo records and accounts that are missing; returns how many were created.

    Accounts get the demo password only in demo mode; otherwise they are made without one and
    an administrator sets it (`alliance user reset-password`).
    """
    db = Database(settings.database_url)
    store = FhirStore(
        build_registry(settings), base_url=settings.fhir_base, server_url=settings.base_url
    )
    created: Counter[str] = Counter()
    try:
        with db.transaction(write=True) as session:
            for rtype, rid, resource in demo_resources():
                try:
                    store.read(rtype, rid, session=session)
                    continue
                except NotFound:
                    pass
                store.create(rtype, resource, session=session, resource_id=rid)
                created[rtype] += 1
            for username, hospital, role, practitioner, display in ACCOUNTS:
                try:
                    get_user(session=session, username=username)
                    continue
                except NotFound:
                    pass
                create_user(
                    session=session,
                    by=OPERATOR,
                    username=username,
                    hospital_id=hospital,
                    role=role,
                    password=DEMO_PASSWORD if settings.demo else None,
                    display_name=display,
                    practitioner_id=practitioner,
                )
                created["account"] += 1
        if created and not db.is_sqlite:
            # Fresh statistics, so the planner does not pick nested loops over empty guesses.
            with db.transaction(write=True) as session:
                session.execute(sql("ANALYZE"))
    finally:
        db.dispose()
    return dict(created)
