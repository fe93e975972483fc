"""The FHIR face of notifications: the Subscription type (R4 Subscriptions Backport IG,
topic-based) with its `$status` and `$events` operations. The rules are alliance.notify's."""

from __future__ import annotations

from fhir.resources.R4B.subscription import Subscription

from alliance.config import Settings
from alliance.fhir.registry import ALL_INTERACTIONS, Operation, ResourceDefinition, SearchParam
from alliance.notify.subscriptions import SubscriptionRules, run_events, run_status
from alliance.notify.topics import ALL, TOPICS
from alliance.notify.websocket import run_binding_token
from alliance.records import keeper_of

BACKPORT_OPERATIONS = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition"
#: The topics a server supports, on its CapabilityStatement's Subscription entry (backport IG).
TOPIC_CANONICAL = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "capabilitystatement-subscriptiontopic-canonical"
)


def definitions(settings: Settings) -> list[ResourceDefinition]:
    rules = SubscriptionRules(settings.notify_endpoint_prefixes)
    base = settings.fhir_base
    definition = ResourceDefinition(
        "Subscription",
        Subscription,
        [
            SearchParam("status", "token", "status", "requested, active, error or off"),
            SearchParam("criteria", "string", "criteria", "The topic's canonical URL"),
            SearchParam("url", "token", "channel.endpoint", "Where notifications are sent"),
        ],
        "Topic-based subscriptions (R4 Subscriptions Backport IG): a hospital's system is "
        "notified of the events of one topic that its hospital may see, over a rest-hook. "
        "Turn one off by updating it with status off.",
        # Not deleted: its event numbers and delivery attempts stay accountable.
        interactions=ALL_INTERACTIONS - {"delete"},
        prepare=rules.prepare,
        on_write=rules.check,
        after_write=[rules.after],
        organization_of=keeper_of,
        capability_extensions=[
            {"url": TOPIC_CANONICAL, "valueCanonical": topic.url}
            for topic in [*TOPICS.values(), ALL]
        ],
    )
    definition.operations["status"] = Operation(
        "status",
        f"{BACKPORT_OPERATIONS}/backport-subscription-status",
        "The subscription's status (Subscription/[id]/$status, or $status?id=...).",
        "read",
        lambda acting, params: run_status(acting, params, base),
        affects_state=False,
    )
    definition.operations["events"] = Operation(
        "events",
        f"{BACKPORT_OPERATIONS}/backport-subscription-events",
        "Its events by number, to catch up (Subscription/[id]/$events?eventsSinceNumber=N"
        "&eventsUntilNumber=M&content=id-only).",
        "read",
        lambda acting, params: run_events(acting, params, acting.store, base),
        affects_state=False,
    )
    definition.operations["get-ws-binding-token"] = Operation(
        "get-ws-binding-token",
        f"{BACKPORT_OPERATIONS}/backport-subscription-get-ws-binding-token",
        "A token (5 minutes) binding a websocket to a websocket subscription, and the "
        "socket's URL (Subscription/[id]/$get-ws-binding-token).",
        "read",
        lambda acting, params: run_binding_token(acting, params, settings),
        affects_state=False,
    )
    return [definition]
