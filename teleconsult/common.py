"""What every part of the teleconsult domain shares: the category, how a refusal names its
rule, extension helpers, and the steps (reading what the actor may see, moving the consult's
Task) that the booking, the answers, the consult and the opinion all take."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, NoReturn

from alliance.codes import REQUEST_CATEGORY
from alliance.errors import AllianceError, Forbidden, Invalid
from alliance.fhir.registry import Resource, WriteContext
from alliance.fhir.store import Version
from alliance.fhir.types import Actor
from alliance.security.access import visibility
from referral.models import Referral

TELECONSULT_CATEGORY = {"coding": [{"system": REQUEST_CATEGORY, "code": "teleconsult"}]}
#: The zone of a hospital that keeps no calendar (yet).
DEFAULT_ZONE = "Asia/Shanghai"


def refuse(
    kind: type[AllianceError], rule: str, message: str, where: str | None = None
) -> NoReturn:
    """Raise `kind` naming its rule, so the OperationOutcome says which rule (and the portal
    shows its words)."""
    raise kind(message, rule=rule, expression=[where] if where else None)


def ext(resource: Resource, url: str) -> Any:
    return next((e for e in resource.get("extension") or [] if e.get("url") == url), None)


def set_ext(resource: Resource, url: str, value: dict[str, Any] | None) -> None:
    others = [e for e in resource.get("extension") or [] if e.get("url") != url]
    resource["extension"] = others + ([{"url": url, **value}] if value else [])
    if not resource["extension"]:
        resource.pop("extension")


def parse_instant(value: Any, where: str) -> datetime:
    if not isinstance(value, str) or "T" not in value:
        refuse(Invalid, "appointment-time", "start and end are instants with an offset", where)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        refuse(Invalid, "appointment-time", f"{value!r} is not an instant", where)


def actor_key(part: Resource) -> str | None:
    ref = (part.get("actor") or {}).get("reference")
    return ref if isinstance(ref, str) else None


def read_visible(ctx: WriteContext, rtype: str, rid: str) -> Version:
    """The current version, if the actor may see it (404 otherwise; the server sees all)."""
    visible = visibility(ctx.actor, ctx.store.registry.get) if ctx.actor else None
    return ctx.store.read(rtype, rid, session=ctx.session, visible=visible)


def move_task(ctx: WriteContext, task_id: str, target: str) -> None:
    """Move the consult's Task to `target` through the referral workflow, as the acting
    user (the specialist's hospital is its owner), each step with its Provenance."""
    path = {
        "accepted": {"requested": ["received", "accepted"], "received": ["accepted"]},
        "in-progress": {
            "requested": ["received", "accepted", "in-progress"],
            "received": ["accepted", "in-progress"],
            "accepted": ["in-progress"],
        },
    }[target]
    row = ctx.session.get(Referral, task_id)
    assert row is not None
    for status in path.get(row.status, []):
        body = ctx.store.read("Task", task_id, session=ctx.session).resource()
        body["status"] = status
        ctx.store.update("Task", task_id, body, session=ctx.session, actor=ctx.actor)


def dumps(resource: Resource) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))


def acting(ctx: WriteContext) -> Actor:
    """Who acts in a write that only a signed-in user makes (signing, booking): never the
    server on its own."""
    if ctx.actor is None:
        raise Forbidden("only a signed-in user does this")
    return ctx.actor
