"""The portal's words, Chinese first. One table; a missing English word falls back to the key."""

from __future__ import annotations

LANGS = ("zh", "en")

WORDS: dict[str, tuple[str, str]] = {
    "app": ("医联体双向转诊与远程会诊平台", "Alliance referral and teleconsult service"),
    "login": ("登录", "Log in"),
    "logout": ("退出", "Log out"),
    "username": ("用户名", "User name"),
    "password": ("密码", "Password"),
    "login_failed": (
        "用户名或密码错误，或账号已锁定",
        "Wrong user name or password, or the account is locked",
    ),
    "session_ended": ("会话已结束，请重新登录", "Your session ended; please log in again"),
    "patients": ("患者", "Patients"),
    "find_patients": ("查找患者", "Find patients"),
    "register_patient": ("登记新患者", "Register a patient"),
    "search": ("查询", "Search"),
    "name": ("姓名", "Name"),
    "name_script": ("文字", "Script"),
    "other_name": ("其他姓名（选填）", "Another name (optional)"),
    "identity_number": ("居民身份证号码", "Resident identity number"),
    "gender": ("性别", "Gender"),
    "male": ("男", "male"),
    "female": ("女", "female"),
    "birth_date": ("出生日期", "Date of birth"),
    "phone": ("电话", "Phone"),
    "save": ("保存", "Save"),
    "referrals": ("转诊", "Referrals"),
    "sent_referrals": ("我院发出的转诊", "Referrals we sent"),
    "new_referral": ("发起转诊", "New referral"),
    "worklist": ("待处理转诊", "Worklist"),
    "status": ("状态", "Status"),
    "priority": ("紧急程度", "Priority"),
    "deadline": ("处理时限", "Deadline"),
    "overdue": ("已超时", "Overdue"),
    "target_hospital": ("转入医院及科室", "Hospital and department asked"),
    "diagnosis": ("诊断（ICD-10 国家临床版2.0）", "Diagnosis (ICD-10 China clinical 2.0)"),
    "summary": ("病情摘要", "Clinical summary"),
    "wished_time": ("期望时间", "Wished time"),
    "consent": ("知情同意", "Consent"),
    "consent_form": ("签字的知情同意书（照片或扫描件）", "Signed consent form (photo or scan)"),
    "consenter": ("签字人", "Signed by"),
    "the_patient": ("患者本人", "the patient"),
    "relationship": ("与患者关系", "Relationship to the patient"),
    "documents": ("资料", "Documents"),
    "attach_document": (
        "附加病历资料（PDF/图片，选填）",
        "Attach a document (PDF/image, optional)",
    ),
    "imaging": ("影像检查", "Imaging studies"),
    "upload_dicom": ("上传影像（DICOM）", "Upload imaging (DICOM)"),
    "choose_files": ("选择DICOM文件", "Choose DICOM files"),
    "choose_folder": ("或选择整个文件夹", "Or choose a whole folder"),
    "upload_hint": (
        "每个文件单独上传，显示进度和结果；与本院患者按身份证号或病历号自动关联。",
        "Each file uploads on its own, with its progress and result; studies are linked "
        "to this hospital's patients by identity number or MRN.",
    ),
    "viewer": ("影像浏览", "Viewer"),
    "send": ("发送", "Send"),
    "accept": ("接收", "Accept"),
    "decline": ("拒绝", "Decline"),
    "reason": ("原因", "Reason"),
    "start": ("开始诊治", "Start"),
    "complete": ("完成并提交意见", "Complete with opinion"),
    "opinion": ("诊疗意见", "Opinion"),
    "cancel": ("撤回", "Cancel"),
    "messages": ("沟通留言", "Messages"),
    "message": ("留言", "Message"),
    "post": ("发送留言", "Post"),
    "timeline": ("诊疗时间线", "Timeline"),
    "audit": ("审计日志", "Audit trail"),
    "dashboard": ("医联体运行统计", "Alliance dashboard"),
    "verify_chain": ("校验审计链", "Verify the chain"),
    "chain_ok": ("审计链完整", "The audit chain is intact"),
    "chain_broken": ("审计链已被破坏", "The audit chain is BROKEN"),
    "export_csv": ("导出 CSV", "Export CSV"),
    "user": ("用户", "User"),
    "hospital": ("医院", "Hospital"),
    "patient": ("患者", "Patient"),
    "type": ("类型", "Type"),
    "outcome": ("结果", "Outcome"),
    "period_from": ("起", "From"),
    "period_to": ("止", "To"),
    "time": ("时间", "Time"),
    "entity": ("对象", "Record"),
    "staff": ("员工账号", "Staff accounts"),
    "create_account": ("新建账号", "Create an account"),
    "role": ("角色", "Role"),
    "lock": ("锁定", "Lock"),
    "unlock": ("解锁", "Unlock"),
    "reset_password": ("重置密码", "Reset password"),
    "new_password_is": ("新密码（仅显示一次）", "New password (shown once)"),
    "active": ("正常", "active"),
    "locked": ("已锁定", "locked"),
    "not_found": ("未找到该页面或记录", "Nothing to show here"),
    "not_found_text": (
        "该记录不存在，或您无权查看。",
        "This record does not exist, or it is not yours to see.",
    ),
    "forbidden": ("无权进行此操作", "Not allowed"),
    "back_home": ("返回首页", "Back to the start page"),
    "required": ("必填", "required"),
    "next_page": ("下一页", "Next page"),
    "none": ("暂无", "None"),
    "up": ("上转", "up"),
    "down": ("下转", "down"),
    "sent": ("发出", "sent"),
    "accepted": ("接收", "accepted"),
    "rejected": ("拒绝", "rejected"),
    "completed": ("完成", "completed"),
    "median_hours": ("中位时长（小时）", "Median (hours)"),
    "p90_hours": ("90百分位（小时）", "90th percentile (hours)"),
    "to_acceptance": ("申请至接收", "Request to acceptance"),
    "to_completion": ("申请至完成", "Request to completion"),
    "decline_reasons": ("拒绝原因", "Decline reasons"),
    "overdue_now": ("当前超时", "Overdue now"),
    "per_month": ("每月转诊量", "Referrals per month"),
}

STATUS: dict[str, tuple[str, str]] = {
    "draft": ("草稿", "draft"),
    "requested": ("待接收", "requested"),
    "received": ("已查看", "received"),
    "accepted": ("已接收", "accepted"),
    "rejected": ("已拒绝", "declined"),
    "in-progress": ("诊治中", "in progress"),
    "on-hold": ("暂停", "on hold"),
    "completed": ("已完成", "completed"),
    "failed": ("未完成", "failed"),
    "cancelled": ("已撤回", "cancelled"),
}
PRIORITY: dict[str, tuple[str, str]] = {
    "routine": ("常规", "routine"),
    "urgent": ("紧急", "urgent"),
    "asap": ("尽快", "as soon as possible"),
    "stat": ("急诊绿色通道", "stat (green channel)"),
}


def translator(lang: str):  # type: ignore[no-untyped-def]
    index = 1 if lang == "en" else 0

    def t(key: str) -> str:
        for table in (STATUS, PRIORITY, WORDS):
            if key in table:
                return table[key][index]
        return key

    return t
