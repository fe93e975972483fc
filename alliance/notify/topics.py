"""What the server notifies of: one topic per kind of event (issue 14), published as FHIR
SubscriptionTopics (R4 Subscriptions Backport IG, topic-based subscriptions) at the canonical
URL `{ALLIANCE_BASE}/SubscriptionTopic/{code}`."""

from __future__ import annotations

from dataclasses import dataclass

from alliance.codes import ALLIANCE_BASE


@dataclass(frozen=True)
class Topic:
    code: str
    title: str
    description: str
    #: The resource type a notification of this topic is about (its focus).
    focus: str

    @property
    def url(self) -> str:
        return f"{ALLIANCE_BASE}/SubscriptionTopic/{self.code}"


TOPICS: dict[str, Topic] = {
    t.code: t
    for t in (
        Topic(
            "referral-sent",
            "转诊已发出",
            "A referral was sent (its Task became requested).",
            "Task",
        ),
        Topic(
            "referral-received",
            "转诊已接收",
            "The hospital asked opened the referral (Task received).",
            "Task",
        ),
        Topic("referral-accepted", "转诊已接受", "The hospital asked accepted it.", "Task"),
        Topic("referral-declined", "转诊被拒绝", "The hospital asked declined it.", "Task"),
        Topic(
            "referral-overdue",
            "转诊超时未处理",
            "An urgent referral was not accepted or declined within its deadline; the asked "
            "hospital's administrators are notified.",
            "Task",
        ),
        Topic("referral-completed", "转诊已完成", "The referral was completed.", "Task"),
        Topic(
            "down-referral-arrived",
            "下转患者到达",
            "A patient was sent down to the hospital that referred them up.",
            "Task",
        ),
        Topic(
            "message-posted",
            "新消息",
            "A message was posted on a referral (Communication).",
            "Communication",
        ),
        Topic("consult-booked", "会诊已预约", "A teleconsult was booked.", "Appointment"),
        Topic(
            "consult-reminder",
            "会诊提醒",
            "A booked teleconsult starts in 24 hours, or in 15 minutes.",
            "Appointment",
        ),
        Topic("consult-started", "会诊已开始", "A teleconsult started (Encounter).", "Encounter"),
        Topic(
            "opinion-signed", "会诊意见已签署", "A consult opinion was signed.", "DiagnosticReport"
        ),
        Topic(
            "opinion-amended",
            "会诊意见已更正",
            "A signed consult opinion was amended and signed again.",
            "DiagnosticReport",
        ),
        Topic(
            "study-shared",
            "影像已共享",
            "An imaging study was opened to another hospital for a referral or consult.",
            "ImagingStudy",
        ),
        Topic(
            "imaging-arrived",
            "影像已到达",
            "New images arrived for a study shared with another hospital.",
            "ImagingStudy",
        ),
    )
}


#: The topic of every event above: one channel, in one order, for a hospital system that
#: wants them all (each notification-event names its kind, EVENT_KIND).
ALL = Topic(
    "all",
    "全部通知",
    "Every event of the topics above that the subscriber may see, in one order.",
    "Resource",
)
#: The kind of an event in a notification (an extension on the notification-event parameter).
EVENT_KIND = f"{ALLIANCE_BASE}/StructureDefinition/notification-event-kind"


def topic_by_url(url: str) -> Topic | None:
    """The topic a canonical URL names (the URL, or a code alone)."""
    code = url.rstrip("/").rsplit("/", 1)[-1]
    found = ALL if code == ALL.code else TOPICS.get(code)
    return found if found is not None and url in (found.url, code) else None
