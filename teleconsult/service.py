"""The teleconsult domain, built once and wired into the FHIR writes of its resources.

A teleconsult is a ServiceRequest (category teleconsult) with its Task, exactly as a referral
(referral.service): consent, the workflow, its Provenance and its grants are the referral's.
What this domain adds, by concern:

- teleconsult.calendars: a hospital's working hours and closures (HealthcareService) and each
  specialist's consult templates (Schedule), kept in typed tables; teleconsult.slots derives
  the Slots from them.
- teleconsult.booking and teleconsult.appointments: the Appointment (FHIR R4
  appointment.html) on free slots inside both sites' working hours, its occupancy, and its
  life after booking (reschedule, cancel with a reason, no-show); teleconsult.operations:
  `$find`, `$hold` and `$book` (IHE ITI-115/116/117).
- teleconsult.responses: the participants' AppointmentResponse (accept, or decline with a
  reason); teleconsult.encounters: the consult's Encounter (class VR) from start to end;
  teleconsult.opinion: the signed DiagnosticReport.
- teleconsult.presentation: what one reader is shown (local time, the video room).

Every refusal names its rule in brackets (`[booking-in-the-past] ...`) and, raised inside the
write's transaction, changes nothing. Hooks take the session through the WriteContext and
never commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from alliance.config import Settings
from referral.service import ReferralRules
from teleconsult.appointments import AppointmentRules
from teleconsult.booking import Bookings
from teleconsult.calendars import CalendarRules
from teleconsult.encounters import EncounterRules
from teleconsult.operations import SchedulingOperations
from teleconsult.opinion import OpinionRules
from teleconsult.presentation import Presentation
from teleconsult.responses import ResponseRules


@dataclass(frozen=True)
class Teleconsult:
    """Every rule object of the domain; built once (`build`) where the registry is built."""

    calendars: CalendarRules
    appointments: AppointmentRules
    operations: SchedulingOperations
    presentation: Presentation
    responses: ResponseRules
    encounters: EncounterRules
    opinion: OpinionRules

    @classmethod
    def build(cls, settings: Settings, referral: ReferralRules) -> Teleconsult:
        return cls(
            calendars=CalendarRules(),
            appointments=AppointmentRules(Bookings(settings), referral),
            operations=SchedulingOperations(settings),
            presentation=Presentation(settings),
            responses=ResponseRules(),
            encounters=EncounterRules(),
            opinion=OpinionRules(settings),
        )
