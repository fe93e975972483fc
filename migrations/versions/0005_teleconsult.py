"""teleconsult: calendars, consult schedules, bookings and the occupancy that makes a double
booking impossible (teleconsult.models)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 17:10:56.341924
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import alliance.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "teleconsult_booking",
        sa.Column("appointment_id", sa.String(length=64), nullable=False),
        sa.Column("service_request_id", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("schedule_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_role_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_id", sa.String(length=64), nullable=False),
        sa.Column("specialist_hospital", sa.String(length=64), nullable=False),
        sa.Column("requesting_hospital", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("starts", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("ends", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hold_expires", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("room_id", sa.String(length=64), nullable=False),
        sa.Column("specialist_response", sa.String(length=16), nullable=False),
        sa.Column("encounter_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("booked_at", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("ended_at", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("appointment_id", name=op.f("pk_teleconsult_booking")),
        sa.UniqueConstraint("encounter_id", name=op.f("uq_teleconsult_booking_encounter_id")),
        sa.UniqueConstraint("room_id", name=op.f("uq_teleconsult_booking_room_id")),
    )
    with op.batch_alter_table("teleconsult_booking", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_teleconsult_booking_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            "ix_teleconsult_booking_practitioner_starts",
            ["practitioner_id", "starts"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_teleconsult_booking_service_request_id"),
            ["service_request_id"],
            unique=False,
        )
        batch_op.create_index("ix_teleconsult_booking_starts", ["starts"], unique=False)

    op.create_table(
        "teleconsult_calendar",
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.String(length=64), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("hospital_id", name=op.f("pk_teleconsult_calendar")),
        sa.UniqueConstraint("service_id", name=op.f("uq_teleconsult_calendar_service_id")),
    )
    op.create_table(
        "teleconsult_schedule",
        sa.Column("schedule_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_role_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_id", sa.String(length=64), nullable=False),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("horizon_start", alliance.db.UTCDateTime(), nullable=True),
        sa.Column("horizon_end", alliance.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("schedule_id", name=op.f("pk_teleconsult_schedule")),
        sa.UniqueConstraint(
            "practitioner_role_id", name=op.f("uq_teleconsult_schedule_practitioner_role_id")
        ),
    )
    with op.batch_alter_table("teleconsult_schedule", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_teleconsult_schedule_hospital_id"), ["hospital_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_teleconsult_schedule_practitioner_id"), ["practitioner_id"], unique=False
        )

    op.create_table(
        "teleconsult_closure",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("starts", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("ends", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["hospital_id"],
            ["teleconsult_calendar.hospital_id"],
            name=op.f("fk_teleconsult_closure_hospital_id_teleconsult_calendar"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teleconsult_closure")),
    )
    with op.batch_alter_table("teleconsult_closure", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_teleconsult_closure_hospital_id"), ["hospital_id"], unique=False
        )

    op.create_table(
        "teleconsult_occupancy",
        sa.Column("party", sa.String(length=16), nullable=False),
        sa.Column("party_id", sa.String(length=64), nullable=False),
        sa.Column("cell", alliance.db.UTCDateTime(), nullable=False),
        sa.Column("appointment_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["teleconsult_booking.appointment_id"],
            name=op.f("fk_teleconsult_occupancy_appointment_id_teleconsult_booking"),
        ),
        sa.PrimaryKeyConstraint("party", "party_id", "cell", name=op.f("pk_teleconsult_occupancy")),
    )
    with op.batch_alter_table("teleconsult_occupancy", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_teleconsult_occupancy_appointment_id"), ["appointment_id"], unique=False
        )

    op.create_table(
        "teleconsult_template",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("schedule_id", sa.String(length=64), nullable=False),
        sa.Column("weekday", sa.Integer(), nullable=False),
        sa.Column("starts", sa.Integer(), nullable=False),
        sa.Column("ends", sa.Integer(), nullable=False),
        sa.Column("slot_minutes", sa.Integer(), nullable=False),
        sa.CheckConstraint("slot_minutes > 0", name=op.f("ck_teleconsult_template_slot_minutes")),
        sa.CheckConstraint(
            "starts >= 0 AND starts < ends AND ends <= 1440",
            name=op.f("ck_teleconsult_template_hours"),
        ),
        sa.CheckConstraint("weekday BETWEEN 1 AND 7", name=op.f("ck_teleconsult_template_weekday")),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["teleconsult_schedule.schedule_id"],
            name=op.f("fk_teleconsult_template_schedule_id_teleconsult_schedule"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teleconsult_template")),
    )
    with op.batch_alter_table("teleconsult_template", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_teleconsult_template_schedule_id"), ["schedule_id"], unique=False
        )

    op.create_table(
        "teleconsult_working_hours",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("hospital_id", sa.String(length=64), nullable=False),
        sa.Column("weekday", sa.Integer(), nullable=False),
        sa.Column("opens", sa.Integer(), nullable=False),
        sa.Column("closes", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "opens >= 0 AND opens < closes AND closes <= 1440",
            name=op.f("ck_teleconsult_working_hours_hours"),
        ),
        sa.CheckConstraint(
            "weekday BETWEEN 1 AND 7", name=op.f("ck_teleconsult_working_hours_weekday")
        ),
        sa.ForeignKeyConstraint(
            ["hospital_id"],
            ["teleconsult_calendar.hospital_id"],
            name=op.f("fk_teleconsult_working_hours_hospital_id_teleconsult_calendar"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teleconsult_working_hours")),
    )
    with op.batch_alter_table("teleconsult_working_hours", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_teleconsult_working_hours_hospital_id"), ["hospital_id"], unique=False
        )

    # Hospital administrators edit their hospital's teleconsult calendar (HealthcareService);
    # roles are data, so a database made before this revision gets the scope added here.
    op.execute(
        "UPDATE security_role SET scope_ceiling = scope_ceiling || ' user/HealthcareService.cruds' "
        "WHERE name = 'hospital-admin' AND scope_ceiling NOT LIKE '%HealthcareService%'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE security_role SET scope_ceiling = "
        "replace(scope_ceiling, ' user/HealthcareService.cruds', '') WHERE name = 'hospital-admin'"
    )
    with op.batch_alter_table("teleconsult_working_hours", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_teleconsult_working_hours_hospital_id"))

    op.drop_table("teleconsult_working_hours")
    with op.batch_alter_table("teleconsult_template", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_teleconsult_template_schedule_id"))

    op.drop_table("teleconsult_template")
    with op.batch_alter_table("teleconsult_occupancy", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_teleconsult_occupancy_appointment_id"))

    op.drop_table("teleconsult_occupancy")
    with op.batch_alter_table("teleconsult_closure", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_teleconsult_closure_hospital_id"))

    op.drop_table("teleconsult_closure")
    with op.batch_alter_table("teleconsult_schedule", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_teleconsult_schedule_practitioner_id"))
        batch_op.drop_index(batch_op.f("ix_teleconsult_schedule_hospital_id"))

    op.drop_table("teleconsult_schedule")
    op.drop_table("teleconsult_calendar")
    with op.batch_alter_table("teleconsult_booking", schema=None) as batch_op:
        batch_op.drop_index("ix_teleconsult_booking_starts")
        batch_op.drop_index(batch_op.f("ix_teleconsult_booking_service_request_id"))
        batch_op.drop_index("ix_teleconsult_booking_practitioner_starts")
        batch_op.drop_index(batch_op.f("ix_teleconsult_booking_patient_id"))

    op.drop_table("teleconsult_booking")
