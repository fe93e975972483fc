"""The portal's words, Chinese first. One table; a missing English word falls back to the key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from alliance.errors import AllianceError

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
    "login_throttled": (
        "登录失败次数过多，请 {seconds} 秒后再试",
        "Too many failed logins; try again in {seconds} seconds",
    ),
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
    "choose_file_again": (
        "已选的文件「{name}」未能保留，请重新选择该文件后再提交。",
        "The file you chose ({name}) is not kept; choose it again before sending.",
    ),
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
    "fail": ("无法完成", "Could not be done"),
    "hold": ("暂停", "Put on hold"),
    "day_heading": ("{month}月{day:02d}日 {weekday}", "{month}/{day:02d} {weekday}"),
    "mon": ("周一", "Mon"),
    "tue": ("周二", "Tue"),
    "wed": ("周三", "Wed"),
    "thu": ("周四", "Thu"),
    "fri": ("周五", "Fri"),
    "sat": ("周六", "Sat"),
    "sun": ("周日", "Sun"),
    "earlier_week": ("上一周", "Previous week"),
    "later_week": ("下一周", "Next week"),
    "week_from": ("从此日起的一周", "The week from"),
    "show": ("显示", "Show"),
    "confirm_booking": ("确认预约", "Confirm the booking"),
    "confirm_booking_text": (
        "将为此会诊预约以下时间，并通知会诊专家。",
        "This time will be booked for the consult and the specialist told.",
    ),
    "specialist": ("会诊专家", "Specialist"),
    "back": ("返回", "Back"),
    "held_studies": ("待关联患者的影像", "Studies waiting for their patient"),
    "held_text": (
        "以下检查上传时未能按患者ID匹配到本院患者，已暂存；仅本院可见。请输入患者身份证号关联。",
        "These studies matched none of this hospital's patients when uploaded and are held, "
        "seen by this hospital only. Link each by the patient's identity number.",
    ),
    "held_link_one": (
        "找到 {n} 位患者，请输入能唯一确定患者的身份证号",
        "{n} patients found: give the identity number of exactly one",
    ),
    "link": ("关联", "Link"),
    "dicom_patient_id": ("DICOM 患者ID", "DICOM PatientID"),
    "instances": ("图像数", "Images"),
    "n_minutes": ("{n} 分钟", "{n} min"),
    "n_hours": ("{n} 小时", "{n} h"),
    "n_days": ("{n} 天", "{n} days"),
    "per_pair": ("各医院间的申请数", "Requests per pair of hospitals"),
    "median": ("中位数", "Median"),
    "p90": ("第90百分位", "90th percentile"),
    "direction": ("类型", "Kind"),
    "month": ("月份", "Month"),
    "audit_read": ("查阅", "read"),
    "audit_vread": ("查阅历史版本", "read a version"),
    "audit_history": ("查看修改历史", "history"),
    "audit_search": ("检索", "search"),
    "audit_create": ("新建", "create"),
    "audit_update": ("修改", "update"),
    "audit_delete": ("删除", "delete"),
    "audit_operation": ("执行操作", "operation"),
    "audit_retrieve": ("调阅影像", "retrieve imaging"),
    "audit_store": ("上传影像", "store imaging"),
    "audit_export": ("导出", "export"),
    "audit_110122": ("登录", "log in"),
    "audit_110123": ("退出登录", "log out"),
    "audit_grant-open": ("开放共享", "sharing opened"),
    "audit_grant-close": ("关闭共享", "sharing closed"),
    "audit_grant-end": ("共享到期", "sharing ended"),
    "audit_audit-verify": ("校验审计链", "trail verified"),
    "audit_dicom-association-rejected": ("拒绝DICOM连接", "DICOM association refused"),
    "outcome_0": ("成功", "success"),
    "outcome_4": ("失败（请求被拒绝或无效）", "failed (refused or invalid)"),
    "outcome_8": ("严重失败（服务出错）", "serious failure (server error)"),
    "outcome_12": ("重大失败", "major failure"),
    "patient_name_or_id": ("患者姓名或身份证号", "Patient's name or identity number"),
    "choose_patient": ("请选择要查的患者：", "Choose the patient:"),
    "no_such_patient": ("没有找到该患者", "No such patient"),
    "all": ("全部", "All"),
    "through": ("至", "–"),
    "list_and": ("、", ", "),
    "role_county-doctor": ("基层医生", "County doctor"),
    "role_specialist": ("专科医生", "Specialist"),
    "role_hospital-admin": ("医院管理员", "Hospital administrator"),
    "role_auditor": ("医联体审计员", "Alliance auditor"),
    "role_hospital-system": ("医院信息系统", "Hospital system"),
    "department_name": ("科室名称", "Department"),
    "department_subject": ("诊疗科目", "Registered subject"),
    "unlinked_study": ("（未关联患者的检查）", "(a study linked to no patient)"),
    "study_date": ("检查日期", "Study date"),
    "dicom_header": ("DICOM 文件头", "DICOM header"),
    "sign_preview": ("签署前请核对会诊意见", "Check the opinion before signing"),
    "sign_preview_text": (
        "签署后意见不可更改（只能以修订版更正），并发送给申请医院。",
        "Once signed the opinion cannot change (only be amended); it goes to the requesting "
        "hospital.",
    ),
    "sign_confirm": ("确认签署", "Sign"),
    "free_text_diagnosis": ("（自由文本，非编码诊断）", "(free text, not a coded diagnosis)"),
    "edit": ("修改", "Edit"),
    "appointment_proposed": ("拟定", "proposed"),
    "appointment_pending": ("待专家确认", "awaiting the specialist"),
    "appointment_booked": ("已预约", "booked"),
    "appointment_arrived": ("会诊中", "in progress"),
    "appointment_fulfilled": ("已完成", "done"),
    "appointment_cancelled": ("已取消", "cancelled"),
    "appointment_noshow": ("未到", "no-show"),
    "appointment_entered-in-error": ("录入错误", "entered in error"),
    "appointment_waitlist": ("候补", "waiting list"),
    "age_years": ("{age}岁", "{age} y"),
    "not_shared": ("（未共享）", "(not shared)"),
    "kind": ("类型", "Kind"),
    "up-referral": ("上转", "Up-referral"),
    "down-referral": ("下转", "Down-referral"),
    "teleconsult": ("远程会诊", "Teleconsult"),
    "resume": ("恢复", "Resume"),
    "send_down": ("下转回基层", "Refer back down"),
    "book_consult": ("预约远程会诊", "Book a teleconsult"),
    "free_times": ("双方工作时间内的空闲时段", "Free times inside both sites' working hours"),
    "no_free_times": ("所选时间内没有空闲时段", "No free time in this period"),
    "consult_calendar": ("会诊日程", "Consult calendar"),
    "video": ("视频", "Video"),
    "join_video": ("进入视频会诊", "Join the video consult"),
    "appointments": ("会诊预约", "Consult appointments"),
    "write_opinion": ("填写并签署会诊意见", "Write and sign the opinion"),
    "conclusion": ("会诊意见", "Conclusion"),
    "discharge_summary": ("出院小结", "Discharge summary"),
    "care_plan": ("康复及随访计划（每行一项）", "Follow-up / rehabilitation plan (one per line)"),
    "down_needs": (
        "下转需要出院小结和康复随访计划",
        "A down-referral needs a discharge summary and a plan",
    ),
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
    "departments": ("科室", "Departments"),
    "consult_hours": ("会诊工作时间与停诊", "Consult hours and closures"),
    "time_zone": ("所用时区", "Time zone kept"),
    "zone_Asia/Urumqi": ("新疆时间", "Xinjiang time"),
    "zone_Asia/Shanghai": ("北京时间", "Beijing time"),
    "weekdays": ("星期", "Days"),
    "hours": ("时间", "Hours"),
    "closures": ("停诊（节假日等）", "Closures (holidays, ...)"),
    "add_closure": ("添加停诊", "Add a closure"),
    "remove": ("删除", "Remove"),
    "edit_hours": ("每周工作时间（每行一段）", "Weekly hours (one span per line)"),
    "hours_no_time": (
        "行末缺少时间段（如 08:00-12:00）。",
        "No hours such as 08:00-12:00 at the end.",
    ),
    "hours_bad_time": ("“{text}”不是有效的时间。", "{text} is not a time of day."),
    "hours_backwards": (
        "“{text}”的星期顺序颠倒了，请从前往后写（如 周一至周五）。",
        "{text}: the days run backwards; write them first to last (such as Mon-Fri).",
    ),
    "hours_not_a_day": (
        "“{text}”不是星期几，请写 周一 至 周日。",
        "{text} is not a day of the week; write Mon to Sun.",
    ),
    "hours_no_days": ("请写明星期几，例如 周一至周五。", "Name the days, such as 周一至周五."),
    "hours_hint": (
        "每行一段：星期 开始-结束，例如 周一至周五 08:00-12:00 或 周二、周四 14:00-17:00；"
        "时间按上面的时区",
        "One span per line: days start-end, e.g. Mon-Fri as 周一至周五 08:00-12:00 or "
        "mon tue wed thu fri 08:00-12:00; in the time zone above",
    ),
    "new_department": ("新建科室", "New department"),
    "add_studies": ("补充影像（转诊发出后上传的检查）", "Add images (studies uploaded since)"),
    "add_to_referral": ("添加到本次转诊", "Add to this referral"),
    "studies_added": ("（补充了影像检查）", "(added imaging studies)"),
    "practitioner": ("执业医师", "Practitioner"),
    "link_practitioner": ("关联医师、科室及职称", "Link to a doctor, department and title"),
    "linked": ("已关联（修改）", "Linked (change)"),
    "already_linked": (
        "该账号已关联医师；再次保存将以新的科室及职称重新关联。",
        "This account is linked to a doctor; saving again links it anew with this department "
        "and title.",
    ),
    "professional_title": ("职称", "Professional title"),
    "consult_weekly_hours": (
        "每周会诊时间（专家填写，每行一段）",
        "Weekly consult hours (specialists; one span per line)",
    ),
    "consult_weekly_hours_hint": (
        "例如 周二、周四 14:00-17:00；按本院时区；留空则不接受远程会诊预约",
        "Such as 周二、周四 14:00-17:00, in this hospital's time zone; leave empty if the "
        "doctor takes no teleconsults",
    ),
    "inactive": ("已停用", "closed"),
    "close_dept": ("停用", "Close"),
    "open_dept": ("启用", "Reopen"),
    "create_account": ("新建账号", "Create an account"),
    "role": ("角色", "Role"),
    "lock": ("锁定", "Lock"),
    "unlock": ("解锁", "Unlock"),
    "reset_password": ("重置密码", "Reset password"),
    "change_role": ("更改角色", "Change role"),
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
    "after_acceptance": ("（接受转诊后可查看）", "(opens on acceptance)"),
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


#: The notices' words (issue 14.4): the section's labels, and each kind of event as
#: `notice:<kind>` (the topics of alliance.notify.topics), kept as data beside the rules.
NOTICE_WORDS: dict[str, tuple[str, str]] = {
    key: (said["zh"], said["en"])
    for key, said in json.loads(
        (Path(__file__).parent / "locale" / "notices.json").read_text(encoding="utf-8")
    ).items()
}


def translator(lang: str):  # type: ignore[no-untyped-def]
    index = 1 if lang == "en" else 0

    def t(key: str) -> str:
        for table in (STATUS, PRIORITY, WORDS, NOTICE_WORDS):
            if key in table:
                return table[key][index]
        return key

    return t


def role_label(t: Callable[[str], str], role: str) -> str:
    """A role in words (roles are data: one without words keeps its name)."""
    key = f"role_{role}"
    said = t(key)
    return role if said == key else said


#: What each rule code says to a person, in both languages: `{code: {"zh": ..., "en": ...}}`.
#: Kept as data beside the code; tests/test_rule_words.py checks that every rule the code
#: names has both texts here, and nothing else is here.
RULES_FILE = Path(__file__).parent / "locale" / "rules.json"
RULE_WORDS: dict[str, dict[str, str]] = json.loads(RULES_FILE.read_text(encoding="utf-8"))


def rule_words(error: AllianceError, lang: str) -> str:
    """What the portal shows for an error: the catalogue's words for its rule in the user's
    language (Chinese unless English is asked), else the error's own message."""
    words = RULE_WORDS.get(error.rule or "")
    if words is None:
        return error.message
    return words["en" if lang == "en" else "zh"]
