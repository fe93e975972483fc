"""What a reader is shown of a consult: its time as the reader's site shows it (Beijing time,
with Xinjiang time beside it at a Xinjiang site, teleconsult.time) and, to participants only,
the video room. Added when served, never stored, so vread and history cannot leak it."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from alliance.codes import ALLIANCE_BASE
from alliance.config import Settings
from alliance.fhir.models import ResourceRow, ResourceVersion
from alliance.fhir.registry import Resource
from alliance.fhir.store import Version
from alliance.fhir.types import Actor
from teleconsult.common import actor_key, dumps, parse_instant, set_ext
from teleconsult.models import Booking, Calendar
from teleconsult.time import format_for_site, shows_xinjiang_time

#: The appointment's time as the reader's site shows it (teleconsult.time), added when served.
LOCAL_TIME = f"{ALLIANCE_BASE}/StructureDefinition/local-time"
#: R5 Appointment.virtualService as an R4 cross-version extension (xver-r5.r4).
VIRTUAL_SERVICE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.virtualService"
VIRTUAL_SERVICE_TYPE = f"{ALLIANCE_BASE}/CodeSystem/virtual-service-type"


class Presentation:
    """The Appointment as one reader sees it."""

    def __init__(self, settings: Settings) -> None:
        if "{room}" not in settings.teleconsult_room_url:
            raise ValueError("ALLIANCE_TELECONSULT_ROOM_URL must contain {room}")
        self.settings = settings

    def present_appointments(
        self, session: Session, reader: Actor, versions: list[Version]
    ) -> None:
        """For this reader: the appointment's time as their site shows it (Beijing time, with
        Xinjiang time beside it at a Xinjiang site), and the video room, to participants only,
        while the consult is booked or under way."""
        live = [v for v in versions if v.content is not None]
        if not live:
            return
        bookings = {
            b.appointment_id: b
            for b in session.scalars(
                select(Booking).where(Booking.appointment_id.in_([v.id for v in live]))
            )
        }
        xinjiang = reader_in_xinjiang(session, reader.hospital_id)
        for v in live:
            appt = v.resource()
            booking = bookings.get(v.id)
            if appt.get("start"):
                shown = format_for_site(
                    parse_instant(appt["start"], "Appointment.start"), xinjiang=xinjiang
                )
                set_ext(appt, LOCAL_TIME, {"valueString": shown})
            running = booking is not None and booking.status in ("booked", "arrived")
            if running and booking is not None and is_participant(reader, appt, booking):
                set_ext(appt, VIRTUAL_SERVICE, self.virtual_service(booking))
            v.content = dumps(appt)

    def virtual_service(self, booking: Booking) -> dict[str, Any]:
        """R5 VirtualServiceDetail as the R4 cross-version extension's sub-extensions."""
        link = self.settings.teleconsult_room_url.replace("{room}", booking.room_id)
        return {
            "extension": [
                {
                    "url": "channelType",
                    "valueCoding": {
                        "system": VIRTUAL_SERVICE_TYPE,
                        "code": self.settings.teleconsult_room_channel,
                    },
                },
                {"url": "address", "valueUrl": link},
                {"url": "sessionKey", "valueString": booking.room_id},
            ]
        }


def is_participant(reader: Actor, appt: Resource, booking: Booking) -> bool:
    """Whether the reader takes part: the specialist (by practitioner, whatever role), or a
    practitioner named among the participants (the booking doctor, an interpreter)."""
    own = reader.practitioner_id
    if not own:
        return False
    if own == booking.practitioner_id:
        return True
    return f"Practitioner/{own}" in {actor_key(p) for p in appt.get("participant") or []}


def reader_in_xinjiang(session: Session, hospital_id: str) -> bool:
    """Whether users of this hospital are shown Xinjiang time (teleconsult.time)."""
    row = session.get(ResourceRow, ("Organization", hospital_id))
    org: dict[str, Any] | None = None
    if row is not None and not row.deleted:
        found = session.get(ResourceVersion, ("Organization", hospital_id, row.version))
        if found is not None and found.content:
            org = json.loads(found.content)
    calendar = session.get(Calendar, hospital_id)
    return shows_xinjiang_time(org, calendar.time_zone if calendar else None)
