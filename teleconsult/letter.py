"""The signed teleconsult opinion as the document people print and file: a Chinese letterhead
page (远程会诊意见书) with who the patient is, who asked and who answered, the conclusion and
diagnoses, and the signature. Print-ready HTML (A4, the browser's own CJK fonts), every value
escaped; no internal references or code-system addresses, which mean nothing on paper."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from html import escape

SEX = {"male": "男", "female": "女", "other": "其他", "unknown": "未知"}

STYLE = """
@page { size: A4; margin: 18mm 16mm; }
body { font-family: "Noto Serif CJK SC", "Source Han Serif SC", "SimSun", serif;
       color: #111; max-width: 180mm; margin: 0 auto; line-height: 1.6; }
header { text-align: center; border-bottom: 2px solid #111; padding-bottom: 4mm; }
header .hospital { font-size: 20pt; font-weight: bold; letter-spacing: .2em; }
header .title { font-size: 16pt; margin-top: 2mm; letter-spacing: .3em; }
table.facts { width: 100%; border-collapse: collapse; margin: 5mm 0; font-size: 11pt; }
table.facts th { text-align: left; font-weight: normal; color: #444; width: 16%; }
table.facts td { width: 34%; border-bottom: 1px solid #bbb; }
h2 { font-size: 13pt; margin: 6mm 0 2mm; }
.conclusion { white-space: pre-wrap; font-size: 12pt; min-height: 40mm; }
.amended { border: 1px solid #b42318; padding: 2mm 4mm; }
.signature { margin-top: 12mm; text-align: right; font-size: 12pt; }
footer { margin-top: 10mm; font-size: 9pt; color: #555; border-top: 1px solid #bbb; }
@media screen { body { padding: 10mm; } }
"""


@dataclass(frozen=True)
class LetterFacts:
    hospital: str
    patient_name: str
    sex: str | None
    birth_date: str | None
    identity_number: str | None
    requesting_hospital: str
    requesting_doctor: str
    consult_time: str
    conclusion: str
    diagnoses: list[tuple[str | None, str]]
    signer: str
    signer_title: str
    signed_at: str
    signed_on: date
    amendment: str | None = None


def age_at(birth_date: str | None, on: date) -> str:
    if not birth_date or len(birth_date) < 10:
        return ""
    try:
        born = date.fromisoformat(birth_date[:10])
    except ValueError:
        return ""
    return f"{on.year - born.year - ((on.month, on.day) < (born.month, born.day))}岁"


def opinion_letter(facts: LetterFacts) -> bytes:
    """The page, as UTF-8 bytes."""
    e = escape
    rows = [
        ("姓名", facts.patient_name, "性别", SEX.get(facts.sex or "", "")),
        ("年龄", age_at(facts.birth_date, facts.signed_on), "出生日期", facts.birth_date or ""),
        ("身份证号", facts.identity_number or "", "会诊时间", facts.consult_time),
        ("申请医院", facts.requesting_hospital, "申请医生", facts.requesting_doctor),
    ]
    table = "".join(
        f"<tr><th>{e(a)}</th><td>{e(b)}</td><th>{e(c)}</th><td>{e(d)}</td></tr>"
        for a, b, c, d in rows
    )
    diagnoses = "".join(
        f"<li>{e(name)}{f'（ICD-10 {e(code)}）' if code else ''}</li>"
        for code, name in facts.diagnoses
    )
    amended = (
        f'<p class="amended"><strong>更正说明：</strong>{e(facts.amendment)}</p>'
        if facts.amendment
        else ""
    )
    page = (
        '<!DOCTYPE html><html lang="zh-CN"><head><meta charset="utf-8">'
        f"<title>远程会诊意见书 · {e(facts.patient_name)}</title><style>{STYLE}</style></head>"
        f'<body><header><div class="hospital">{e(facts.hospital)}</div>'
        '<div class="title">远程会诊意见书</div></header>'
        f'<table class="facts">{table}</table>'
        f"{amended}"
        f'<h2>会诊意见</h2><div class="conclusion">{e(facts.conclusion)}</div>'
        + (f"<h2>诊断</h2><ul>{diagnoses}</ul>" if diagnoses else "")
        + f'<p class="signature">会诊专家：{e(facts.signer)} {e(facts.signer_title)}<br>'
        f"签署时间：{e(facts.signed_at)}</p>"
        "<footer>本意见书经会诊专家电子签名，签名可在医联体平台核验。"
        "仅供申请医院诊疗参考。</footer></body></html>"
    )
    return page.encode()
