"""Accounts, roles, partner-system clients and access grants."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from alliance.db import Base, UTCDateTime
from alliance.fhir.models import ID_LEN, TYPE_LEN


class Role(Base):
    """A role is data: what its holders may do (capabilities) and the scope ceiling of their
    tokens. Capabilities: `clinical` (patient records of their hospital and what grants open),
    `administer` (their hospital's directory and staff), `audit` (the audit trail, figures)."""

    __tablename__ = "security_role"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(String(255))
    capabilities: Mapped[str] = mapped_column(String(255))
    scope_ceiling: Mapped[str] = mapped_column(Text)
    #: The roles whose accounts its holders manage (create, lock, unlock, reset the password
    #: of, assign), at their own hospital only (alliance.security.service.check_manage): the
    #: cap on what an administrator can hand out. Empty: they manage no account.
    manages: Mapped[str] = mapped_column(String(255), default="", server_default="")

    @property
    def capability_set(self) -> frozenset[str]:
        return frozenset(self.capabilities.split())

    @property
    def manages_set(self) -> frozenset[str]:
        return frozenset(self.manages.split())


class User(Base):
    __tablename__ = "security_user"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128))
    #: argon2id hash; None until a password is set (no account has a default password).
    password_hash: Mapped[str | None] = mapped_column(String(255))
    hospital_id: Mapped[str] = mapped_column(String(ID_LEN))
    role_name: Mapped[str] = mapped_column(ForeignKey("security_role.name"))
    practitioner_id: Mapped[str | None] = mapped_column(String(ID_LEN))
    active: Mapped[bool] = mapped_column(default=True)
    #: Tokens and portal sessions carry the epoch they were issued in; logging out, a password
    #: reset, a lock or a role change moves it on, which ends them all at once.
    token_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created: Mapped[datetime] = mapped_column(UTCDateTime())

    role: Mapped[Role] = relationship(lazy="joined")


class Client(Base):
    """A partner system (a hospital's HIS or PACS) using `client_credentials`."""

    __tablename__ = "security_client"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    secret_hash: Mapped[str] = mapped_column(String(255))
    hospital_id: Mapped[str] = mapped_column(String(ID_LEN))
    role_name: Mapped[str] = mapped_column(ForeignKey("security_role.name"))
    active: Mapped[bool] = mapped_column(default=True)
    #: As User.token_epoch: locking the client or resetting its secret ends its tokens.
    token_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    role: Mapped[Role] = relationship(lazy="joined")


class LoginThrottle(Base):
    """Failed logins per account or per client address (alliance.security.throttle), kept in
    the database so that every API worker agrees."""

    __tablename__ = "security_login_throttle"

    #: `account:<name>`, `client:<id>` or `address:<ip>`.
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failure: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SigningKey(Base):
    """The public key of a signature key (alliance.security.signing), recorded when it first
    signs and kept for good: signatures stay verifiable after the private key is rotated out."""

    __tablename__ = "security_signing_key"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The raw Ed25519 public key, base64url without padding (the JWK `x`, RFC 8037).
    public_key: Mapped[str] = mapped_column(String(64))
    first_used: Mapped[datetime] = mapped_column(UTCDateTime())


class AccessGrant(Base):
    """Records of one patient opened to another hospital, for a reason (the referral or consult
    that opened it), from a time until a time. Made and closed by the domain that needs it."""

    __tablename__ = "security_access_grant"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    hospital_id: Mapped[str] = mapped_column(String(ID_LEN), index=True)
    #: What opened it, as a reference: `ServiceRequest/123`.
    reason: Mapped[str] = mapped_column(String(160), index=True)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime())
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    closed_reason: Mapped[str | None] = mapped_column(String(255))
    #: `full` opens the records as they are; `triage` opens only what a receiving hospital
    #: needs to decide on a request (alliance.security.access.TRIAGE_ELEMENTS).
    level: Mapped[str] = mapped_column(String(16), default="full", server_default="full")

    resources: Mapped[list[AccessGrantResource]] = relationship(
        back_populates="grant", cascade="all, delete-orphan"
    )


class AccessGrantResource(Base):
    """One record a grant opens; nothing else of the patient is opened."""

    __tablename__ = "security_access_grant_resource"

    grant_id: Mapped[str] = mapped_column(ForeignKey("security_access_grant.id"), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(TYPE_LEN), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True, index=True)

    grant: Mapped[AccessGrant] = relationship(back_populates="resources")
