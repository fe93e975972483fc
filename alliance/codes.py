"""Code systems and identifier systems the alliance uses. Every code carries its system (and
its version where the system has versions); alliance-owned URIs live under one base."""

from __future__ import annotations

ALLIANCE_BASE = "https://fhir.yzxy-alliance.cn"

#: 居民身份证号码 (GB 11643-1999). No HL7-registered URI exists for it, so the alliance owns one.
RESIDENT_ID = f"{ALLIANCE_BASE}/sid/resident-id"
#: Each hospital's own medical record number; the hospital's id is appended.
HOSPITAL_MRN = f"{ALLIANCE_BASE}/sid/mrn"
#: 统一社会信用代码 of an institution.
USCC = f"{ALLIANCE_BASE}/sid/uscc"

#: ICD-10 国家临床版2.0 (no HL7-registered URI exists), version "2.0".
ICD10_CN = f"{ALLIANCE_BASE}/CodeSystem/icd10-cn-clinical"
ICD10_CN_VERSION = "2.0"
#: 中医病证分类与代码 (GB/T 15657-2021, published 2020), for the TCM hospitals.
TCM_DIAGNOSIS = f"{ALLIANCE_BASE}/CodeSystem/tcm-disease-syndrome"
TCM_DIAGNOSIS_VERSION = "2020"
#: 医疗机构诊疗科目名录: the departments (specialties) a hospital is licensed for.
DEPARTMENT = f"{ALLIANCE_BASE}/CodeSystem/clinical-department"
DEPARTMENT_VERSION = "1994"
#: Professional titles (专业技术职务) of practitioners.
PROFESSIONAL_TITLE = f"{ALLIANCE_BASE}/CodeSystem/professional-title"
#: Kind of alliance hospital (general, TCM, maternal and child health) and department.
ORGANIZATION_KIND = f"{ALLIANCE_BASE}/CodeSystem/organization-kind"
#: Role of a partnership between hospitals (OrganizationAffiliation.code).
AFFILIATION_ROLE = f"{ALLIANCE_BASE}/CodeSystem/affiliation-role"

#: FHIR's extension for the language (BCP 47, with the script subtag) of an element; it tags
#: each of a person's names with its script: zh-Hans, kk-Cyrl, kk-Latn, ug-Arab, ug-Latn.
LANGUAGE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/language"
#: The hospital whose staff a Practitioner is (who administers the record).
PRACTITIONER_HOSPITAL = f"{ALLIANCE_BASE}/StructureDefinition/practitioner-hospital"
#: The hospital that keeps a clinical record (wrote it, answers for it); set by the server.
RECORD_KEEPER = f"{ALLIANCE_BASE}/StructureDefinition/record-keeper"
#: The patient a record is about, where the resource has no subject element (Provenance).
RECORD_PATIENT = f"{ALLIANCE_BASE}/StructureDefinition/record-patient"
#: Where an attachment's bytes live and their SHA-256 (FHIR's Attachment.hash is SHA-1).
ATTACHMENT_SHA256 = f"{ALLIANCE_BASE}/StructureDefinition/attachment-sha256"
#: Category of a ServiceRequest: up-referral, down-referral, teleconsult.
REQUEST_CATEGORY = f"{ALLIANCE_BASE}/CodeSystem/request-category"
#: Task.businessStatus codes (overdue, ...).
TASK_BUSINESS_STATUS = f"{ALLIANCE_BASE}/CodeSystem/task-business-status"
#: Reasons to decline a referral or consult (Task.statusReason).
DECLINE_REASON = f"{ALLIANCE_BASE}/CodeSystem/decline-reason"
#: The decline reasons the alliance counts (its figures give these codes, never free text).
DECLINE_REASON_CODES = {
    "no-capacity": "床位或接诊能力不足",
    "not-indicated": "无转诊指征",
    "wrong-specialty": "科室不符",
    "incomplete": "资料不全",
    "patient-declined": "患者拒绝",
    "other": "其他",
}
#: Moves of the referral workflow, as Provenance.activity.
WORKFLOW_MOVE = f"{ALLIANCE_BASE}/CodeSystem/workflow-move"
#: The rule a refusal names (OperationOutcome.issue.details): short kebab-case codes, each with
#: its words in both languages in portal/locale/rules.json.
RULE = f"{ALLIANCE_BASE}/CodeSystem/rule"
HL7_ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"

#: 医疗机构诊疗科目名录 (the register of clinical departments, 卫医发〔1994〕第27号, with its
#: later additions), the subjects and specialties a hospital registers departments under. 51.06
#: 其他 covers Kazakh medicine (哈萨克医学) at Xinyuan's hospitals.
DEPARTMENT_CODES = {
    "01": "预防保健科",
    "02": "全科医疗科",
    "03": "内科",
    "03.01": "呼吸内科专业",
    "03.02": "消化内科专业",
    "03.03": "神经内科专业",
    "03.04": "心血管内科专业",
    "03.05": "血液内科专业",
    "03.06": "肾病学专业",
    "03.07": "内分泌专业",
    "03.08": "免疫学专业",
    "03.09": "变态反应专业",
    "03.10": "老年病专业",
    "03.11": "其他",
    "04": "外科",
    "04.01": "普通外科专业",
    "04.02": "神经外科专业",
    "04.03": "骨科专业",
    "04.04": "泌尿外科专业",
    "04.05": "胸外科专业",
    "04.06": "心脏大血管外科专业",
    "04.07": "烧伤科专业",
    "04.08": "整形外科专业",
    "04.09": "其他",
    "05": "妇产科",
    "05.01": "妇科专业",
    "05.02": "产科专业",
    "05.03": "计划生育专业",
    "05.04": "优生学专业",
    "05.05": "生殖健康与不孕症专业",
    "05.06": "其他",
    "06": "妇女保健科",
    "07": "儿科",
    "07.01": "新生儿专业",
    "07.02": "小儿传染病专业",
    "07.03": "小儿消化专业",
    "07.04": "小儿呼吸专业",
    "07.05": "小儿心脏病专业",
    "07.06": "小儿肾病专业",
    "07.07": "小儿血液病专业",
    "07.08": "小儿神经病学专业",
    "07.09": "小儿内分泌专业",
    "07.10": "小儿遗传病专业",
    "07.11": "小儿免疫专业",
    "07.12": "其他",
    "08": "小儿外科",
    "09": "儿童保健科",
    "10": "眼科",
    "11": "耳鼻咽喉科",
    "12": "口腔科",
    "13": "皮肤科",
    "14": "医疗美容科",
    "15": "精神科",
    "16": "传染科",
    "17": "结核病科",
    "18": "地方病科",
    "19": "肿瘤科",
    "20": "急诊医学科",
    "21": "康复医学科",
    "22": "运动医学科",
    "23": "职业病科",
    "24": "临终关怀科",
    "25": "特种医学与军事医学科",
    "26": "麻醉科",
    "27": "疼痛科",
    "28": "重症医学科",
    "30": "医学检验科",
    "31": "病理科",
    "32": "医学影像科",
    "32.01": "X线诊断专业",
    "32.02": "CT诊断专业",
    "32.03": "磁共振成像诊断专业",
    "32.04": "核医学专业",
    "32.05": "超声诊断专业",
    "32.06": "心电诊断专业",
    "32.07": "脑电及脑血流图诊断专业",
    "32.08": "神经肌肉电图专业",
    "32.09": "介入放射学专业",
    "32.10": "放射治疗专业",
    "50": "中医科",
    "50.01": "内科专业",
    "50.02": "外科专业",
    "50.03": "妇产科专业",
    "50.04": "儿科专业",
    "50.05": "皮肤科专业",
    "50.06": "眼科专业",
    "50.07": "耳鼻咽喉科专业",
    "50.08": "口腔科专业",
    "50.09": "肿瘤科专业",
    "50.10": "骨伤科专业",
    "50.11": "肛肠科专业",
    "50.12": "老年病科专业",
    "50.13": "针灸科专业",
    "50.14": "推拿科专业",
    "50.15": "康复医学专业",
    "50.16": "急诊科专业",
    "50.17": "预防保健科专业",
    "50.18": "其他",
    "51": "民族医学科",
    "51.01": "维吾尔医学",
    "51.02": "藏医学",
    "51.03": "蒙医学",
    "51.04": "彝医学",
    "51.05": "傣医学",
    "51.06": "其他",
    "52": "中西医结合科",
    "69": "其他业务科室",
}

PROFESSIONAL_TITLES = {
    "chief-physician": "主任医师",
    "associate-chief-physician": "副主任医师",
    "attending-physician": "主治医师",
    "resident-physician": "住院医师",
    "chief-tcm-physician": "主任中医师",
    "associate-chief-tcm-physician": "副主任中医师",
    "attending-tcm-physician": "主治中医师",
}
#: Seniority of titles, for "at least this title" searches.
TITLE_RANK = {
    "resident-physician": 1,
    "attending-physician": 2,
    "attending-tcm-physician": 2,
    "associate-chief-physician": 3,
    "associate-chief-tcm-physician": 3,
    "chief-physician": 4,
    "chief-tcm-physician": 4,
}
