"""Every rule a refusal names has its words in both languages (portal/locale/rules.json), and
the catalogue holds no word for a rule the code no longer names.

The codes are read from the source exactly (its syntax tree, not a pattern): `rule="code"` on
any call and `refuse(Kind, "code", ...)`. A rule given in a form this scan cannot read (a
variable, a hand-written "[code] ..." prefix in a message) fails the test, so no code escapes
the catalogue by being written differently."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from markupsafe import escape

from alliance.codes import RULE
from portal.i18n import RULE_WORDS, RULES_FILE
from tests.accounts import portal as sign_in
from tests.factories import identity_number, patient

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("alliance", "referral", "teleconsult", "imaging", "portal", "fhir_mappings")
CODE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
#: Calls that hand on a rule already named elsewhere (and read there): (file, the argument).
PASSED_ON = {
    ("teleconsult/common.py", "rule"),  # refuse(...) raising its kind with the rule it was given
    ("alliance/directory/service.py", "exc.rule"),  # an IdentityNumberError's rule, as Invalid
    ("alliance/fhir/store.py", "issues[0].rule"),  # the first structural issue's (_issue's)
}
#: A message that starts with "[code]" is a rule written by hand, out of the catalogue's sight.
HAND_WRITTEN = re.compile(r"^\[[a-z][a-z0-9-]*\] ")


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def rule_codes() -> tuple[dict[str, list[str]], list[str]]:
    """The codes the source names (code -> where), and what the scan cannot read."""
    found: dict[str, list[str]] = {}
    unreadable: list[str] = []
    for path in _sources():
        name = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), name)):
            where = f"{name}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if HAND_WRITTEN.match(node.value):
                    unreadable.append(f"{where}: a rule written into a message")
            elif isinstance(node, ast.JoinedStr) and node.values:
                first = node.values[0]
                if isinstance(first, ast.Constant) and HAND_WRITTEN.match(str(first.value)):
                    unreadable.append(f"{where}: a rule written into a message")
            if not isinstance(node, ast.Call):
                continue
            values: list[ast.expr] = [k.value for k in node.keywords if k.arg == "rule"]
            called = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if called == "refuse":
                values.append(node.args[1] if len(node.args) > 1 else node)
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    if not CODE.match(value.value):
                        unreadable.append(f"{where}: {value.value!r} is not kebab-case")
                    found.setdefault(value.value, []).append(where)
                elif (name, ast.unparse(value)) not in PASSED_ON:
                    unreadable.append(f"{where}: rule {ast.unparse(value)} is not a literal")
    return found, unreadable


def test_the_scan_reads_every_rule() -> None:
    found, unreadable = rule_codes()
    assert not unreadable, "\n".join(unreadable)
    # The scan sees both forms (a guard against it silently finding nothing).
    assert {"identity-sex", "identity-checksum", "referral-needs-consent"} <= set(found)
    assert {"hold-expired", "outside-working-hours"} <= set(found)


def test_every_rule_has_its_words_in_both_languages() -> None:
    found, _ = rule_codes()
    missing = sorted(set(found) - set(RULE_WORDS))
    unused = sorted(set(RULE_WORDS) - set(found))
    assert not missing, f"rules without words in {RULES_FILE.name}: {missing}"
    assert not unused, f"words in {RULES_FILE.name} for rules no code names: {unused}"
    for code, words in RULE_WORDS.items():
        assert set(words) == {"zh", "en"}, code
        assert words["zh"].strip() and words["en"].strip(), code
        # The Chinese is Chinese (not English copied over).
        assert re.search(r"[\u4e00-\u9fff]", words["zh"]), code


def test_the_catalogue_is_data_kept_sorted() -> None:
    raw = json.loads(RULES_FILE.read_text(encoding="utf-8"))
    assert list(raw) == sorted(raw)


# ---- the faces: the FHIR OperationOutcome names the rule; the portal says it in words ---------


def test_a_refusal_names_its_rule_in_the_operation_outcome(
    as_user: Callable[[str], TestClient],
) -> None:
    fhir = as_user("dr.xinyuan.people")
    number = identity_number(birth="19800315", seq=11)  # odd sequence: male
    r = fhir.post("/fhir/Patient", json=patient("王建国", number=number, gender="female"))
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert issue["details"] == {"coding": [{"system": RULE, "code": "identity-sex"}]}
    assert issue["diagnostics"].startswith("[identity-sex] ")
    assert issue["expression"] == ["Patient.gender"]
    # A protocol error names no rule.
    bad = fhir.post(
        "/fhir/Patient", content=b"{", headers={"Content-Type": "application/fhir+json"}
    )
    assert bad.status_code == 400 and "details" not in bad.json()["issue"][0]


def test_an_invalid_fhir_body_names_its_structural_rule(
    as_user: Callable[[str], TestClient],
) -> None:
    """The base model's checks (FHIR R4 JSON) name their rule like the domains' rules do: an
    element the type does not define, a required one missing, a wrong type, a bad format."""
    fhir = as_user("dr.xinyuan.people")
    valid = patient("王建国", number=identity_number(birth="19800315", seq=11))
    bodies = {
        "unknown": ({**valid, "nickname": "老王"}, "Patient.nickname"),
        "type": ({**valid, "active": "maybe"}, "Patient.active"),
        "list": ({**valid, "name": "王建国"}, "Patient.name"),
        "format": ({**valid, "birthDate": "1980-13-45"}, "Patient.birthDate"),
    }
    said = {}
    for why, (body, where) in bodies.items():
        r = fhir.post("/fhir/Patient", json=body)
        issue = r.json()["issue"][0]
        assert issue["expression"] == [where] and issue["diagnostics"].startswith("[fhir-")
        said[why] = (r.status_code, issue["code"], issue["details"]["coding"][0]["code"])
    missing = {"resourceType": "Communication", "subject": {"reference": "Patient/demo-aygul"}}
    r = fhir.post("/fhir/Communication", json=missing)
    issue = r.json()["issue"][0]
    said["missing"] = (r.status_code, issue["code"], issue["details"]["coding"][0]["code"])
    assert said == {
        "unknown": (400, "structure", "fhir-unknown-element"),
        "type": (400, "value", "fhir-type"),
        "list": (400, "value", "fhir-type"),
        "format": (400, "value", "fhir-value"),
        "missing": (400, "required", "fhir-required"),
    }
    assert all(c["system"] == RULE for c in issue["details"]["coding"])


def _patient_form(csrf: str, **values: str) -> dict[str, str]:
    return {
        "csrf": csrf,
        "name": "阿依古丽·吐尔逊",
        "name_lang": "zh-Hans",
        "gender": "male",
        "birth_date": "1980-03-15",
        **values,
    }


def test_the_patient_form_says_the_rule_in_chinese_and_keeps_what_was_typed(
    client: TestClient,
) -> None:
    csrf = sign_in(client, "dr.xinyuan.people")  # the portal is Chinese unless asked
    number = identity_number(birth="19800315", seq=11)  # male
    wrong_check = number[:17] + ("0" if number[17] != "0" else "1")
    r = client.post("/patients/new", data=_patient_form(csrf, identity=wrong_check))
    assert r.status_code == 422, r.text
    assert RULE_WORDS["identity-checksum"]["zh"] == (
        "身份证号校验码不正确（最后一位与前17位不符），可能有数字输错，请逐位核对。"
    )
    assert RULE_WORDS["identity-checksum"]["zh"] in r.text
    assert 'value="阿依古丽·吐尔逊"' in r.text and f'value="{wrong_check}"' in r.text
    assert "check character" not in r.text and "ISO 7064" not in r.text

    r = client.post("/patients/new", data=_patient_form(csrf, identity=number, gender="female"))
    assert r.status_code == 422, r.text
    said = "性别与身份证号不符：身份证号第17位为奇数表示男性、偶数表示女性，请核对。"
    assert RULE_WORDS["identity-sex"]["zh"] == said
    assert said in r.text
    assert 'value="阿依古丽·吐尔逊"' in r.text
    assert '<option value="female" selected>' in r.text  # the sex typed, shown to correct
    assert "is not the one the identity number states" not in r.text

    # In English, the English words.
    client.get("/lang/en")
    r = client.post("/patients/new", data=_patient_form(csrf, identity=wrong_check))
    assert r.status_code == 422 and str(escape(RULE_WORDS["identity-checksum"]["en"])) in r.text


def test_the_referral_form_says_the_rule_and_that_the_file_must_be_chosen_again(
    client: TestClient,
) -> None:
    csrf = sign_in(client, "dr.xinyuan.people")
    data = {
        "csrf": csrf,
        "patient": "demo-aygul",
        "target": "subei-cardiology",
        "diagnosis": "I21.900 急性心肌梗死",
        "summary": "胸痛3天，心电图ST段抬高",
        "priority": "urgent",
        "consenter": "SPS",
        "consenter_name": "吐尔逊·买买提",
    }
    # A "PNG" that is not one: the attachment rule refuses it (415 file-content).
    fake = ("同意书.png", b"this is not a picture", "image/png")
    r = client.post("/referrals/new", data=data, files={"consent_form": fake})
    assert r.status_code == 415, r.text
    assert RULE_WORDS["file-content"]["zh"] in r.text
    assert "the file is not a image/png" not in r.text
    assert "已选的文件「同意书.png」未能保留，请重新选择该文件后再提交。" in r.text
    # What was typed is kept: the summary, the diagnosis, who signed and how related.
    assert "胸痛3天，心电图ST段抬高</textarea>" in r.text
    assert 'value="I21.900 急性心肌梗死"' in r.text
    assert 'value="吐尔逊·买买提"' in r.text
    assert '<option value="SPS" selected>' in r.text
    assert '<option value="subei-cardiology" selected>' in r.text
