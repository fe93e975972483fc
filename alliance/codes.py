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
HL7_ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"

#: 医疗机构诊疗科目名录 codes the alliance's hospitals use (the register has many more).
DEPARTMENT_CODES = {
    "03": "内科",
    "03.01": "呼吸内科专业",
    "03.02": "消化内科专业",
    "03.03": "神经内科专业",
    "03.04": "心血管内科专业",
    "04": "外科",
    "04.01": "普通外科专业",
    "04.03": "骨科专业",
    "05.01": "妇科专业",
    "05.02": "产科专业",
    "07": "儿科",
    "07.01": "新生儿专业",
    "32": "医学影像科",
    "50": "中医科",
    "50.01": "内科专业",
    "50.13": "针灸科专业",
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
