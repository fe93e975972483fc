"""Diagnoses offered by the referral form's search: common ICD-10 国家临床版2.0 codes of the
alliance's referrals. The form accepts any code typed in this form ("CODE name"); this list
only suggests. (The full 国家临床版2.0 table is licensed data the alliance loads separately.)"""

from __future__ import annotations

COMMON_DIAGNOSES: list[tuple[str, str]] = [
    ("I21.900", "急性心肌梗死"),
    ("I20.000", "不稳定性心绞痛"),
    ("I10.x00", "原发性高血压"),
    ("I50.900", "心力衰竭"),
    ("I48.x00", "心房颤动"),
    ("I63.900", "脑梗死"),
    ("I61.900", "脑出血"),
    ("J18.900", "肺炎"),
    ("J44.100", "慢性阻塞性肺病伴急性加重"),
    ("J45.900", "哮喘"),
    ("C34.900", "支气管或肺恶性肿瘤"),
    ("K35.800", "急性阑尾炎"),
    ("K80.200", "胆囊结石"),
    ("K92.200", "消化道出血"),
    ("S72.000", "股骨颈骨折"),
    ("S82.200", "胫骨干骨折"),
    ("M51.202", "腰椎间盘突出"),
    ("E11.900", "2型糖尿病"),
    ("N18.500", "慢性肾脏病5期"),
    ("O14.100", "重度子痫前期"),
    ("O60.x00", "早产"),
    ("O44.100", "前置胎盘伴出血"),
    ("P07.300", "早产儿"),
    ("P59.900", "新生儿黄疸"),
    ("Q21.100", "房间隔缺损"),
    ("N80.000", "子宫腺肌病"),
    ("D25.900", "子宫平滑肌瘤"),
]
DIAGNOSES: dict[str, str] = dict(COMMON_DIAGNOSES)
