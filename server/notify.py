"""The notification worker wired to the domains: the delivery worker of alliance.notify with
the scheduled jobs that raise events on time (urgent referrals past their deadline, consult
reminders). Runs inside `alliance serve` (ALLIANCE_NOTIFY_WORKER, default on) and alone as
`alliance worker`."""

from __future__ import annotations

from alliance.config import Settings
from alliance.db import Database
from alliance.fhir.registry import Store
from alliance.notify.channels import channels_from
from alliance.notify.people import PeopleDelivery
from alliance.notify.worker import Worker
from referral.service import record_overdue
from teleconsult.notices import record_reminders


def build_worker(settings: Settings, db: Database, store: Store, *, name: str = "serve") -> Worker:
    """The worker, delivering to FHIR subscriptions and to people's channels (e-mail, the
    hospitals' webhooks) in each pass."""
    people = PeopleDelivery(db, channels_from(settings), settings.base_url)
    return Worker(
        db,
        store,
        settings.fhir_base,
        jobs=[lambda session: record_overdue(session), record_reminders],
        outlets=[people.run_once],
        name=name,
    )
