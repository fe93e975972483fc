"""A referral's studies on its page: those it shares (listed when it was sent, or added since
by the hospital that sent it: referral.commands.add_studies) and, for that hospital while the
referral is open, the patient's other studies it holds, which it may add."""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy.orm import Session

from alliance.errors import NotFound
from alliance.fhir.registry import Resource
from alliance.fhir.store import FhirStore
from alliance.records import keeper_of, reference_id
from alliance.security.guard import Context
from portal.views import study_view
from referral.service import carried
from referral.workflow import SENT_OPEN


def referral_studies(
    store: FhirStore,
    s: Session,
    ctx: Context,
    task: Resource,
    sr: Resource,
    messages: list[Resource],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the studies the referral shares as the caller may see them, the studies the caller's
    hospital may still add to it)."""
    ids = [
        r for info in sr.get("supportingInfo") or [] if (r := reference_id(info, "ImagingStudy"))
    ]
    ids += [rid for m in messages for rtype, rid in carried(m) if rtype == "ImagingStudy"]
    shared = []
    for rid in dict.fromkeys(ids):
        with contextlib.suppress(NotFound):
            study = store.read("ImagingStudy", rid, session=s, visible=ctx.visible)
            shared.append(study_view(study.resource()))
    hospital = ctx.principal.hospital_id
    if keeper_of(task) != hospital or task.get("status") not in SENT_OPEN:
        return shared, []
    found = store.search(
        "ImagingStudy",
        [("patient", task["for"]["reference"]), ("_sort", "-started")],
        session=s,
        default_count=50,
        max_count=50,
        visible=ctx.visible,
    )
    addable = [
        study_view(v.resource())
        for v in found.matches
        if keeper_of(v.resource()) == hospital and v.id not in ids
    ]
    return shared, addable
