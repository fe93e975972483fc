"""Accounts, partner systems, logins and access grants. Functions take the session keyword-only
and never commit; the caller's unit of work does."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import null, select, update
from sqlalchemy.orm import Session

from alliance.audit.service import Actor, AuditInput, append
from alliance.config import Settings
from alliance.errors import BadRequest, Conflict, Invalid, NotFound
from alliance.fhir.models import ResourceRow
from alliance.security.access import Principal
from alliance.security.models import AccessGrant, AccessGrantResource, Client, Role, User
from alliance.security.passwords import hash_password, verify_password
from alliance.security.scopes import format_scopes, parse_scopes, within_ceiling
from alliance.security.tokens import TokenClaims, invalid_token

#: The roles every alliance starts with (data: more can be added to the table).
BUILTIN_ROLES = [
    (
        "county-doctor",
        "County doctor: registers patients, refers, books teleconsults, uploads imaging",
        "clinical",
        "user/*.cruds",
    ),
    (
        "specialist",
        "City specialist: works the worklist, reviews imaging, writes and signs opinions",
        "clinical",
        "user/*.cruds",
    ),
    (
        "hospital-admin",
        "Hospital administrator: staff accounts, departments, consult calendars",
        "administer",
        "user/Organization.cruds user/OrganizationAffiliation.rs user/Practitioner.cruds "
        "user/PractitionerRole.cruds user/Schedule.cruds user/Slot.cruds "
        "user/HealthcareService.cruds",
    ),
    (
        "auditor",
        "Alliance auditor: the audit trail and the alliance's figures",
        "audit",
        "user/AuditEvent.rs user/Organization.rs user/OrganizationAffiliation.rs "
        "user/Practitioner.rs user/PractitionerRole.rs",
    ),
    (
        "hospital-system",
        "A hospital's own system (HIS, PACS) acting for that hospital",
        "clinical",
        "system/*.cruds",
    ),
]
MIN_PASSWORD_LENGTH = 10


class LoginFailure(Exception):
    """Why a login failed: for the audit trail (the client hears only `invalid_grant`)."""

    def __init__(self, reason: str, username: str, user: User | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.username = username
        self.user = user


def ensure_roles(session: Session) -> None:
    for name, description, caps, ceiling in BUILTIN_ROLES:
        if session.get(Role, name) is None:
            session.add(
                Role(name=name, description=description, capabilities=caps, scope_ceiling=ceiling)
            )
    session.flush()


def _role(session: Session, name: str) -> Role:
    role = session.get(Role, name)
    if role is None:
        known = ", ".join(session.scalars(select(Role.name).order_by(Role.name)))
        raise Invalid(f"no role {name!r}; roles: {known}")
    return role


def _hospital_exists(session: Session, hospital_id: str) -> None:
    row = session.get(ResourceRow, ("Organization", hospital_id))
    if row is None or row.deleted:
        raise Invalid(f"Organization/{hospital_id} is not a hospital of the alliance")


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Invalid(f"a password has at least {MIN_PASSWORD_LENGTH} characters")


def create_user(
    *,
    session: Session,
    username: str,
    hospital_id: str,
    role: str,
    password: str | None,
    display_name: str | None = None,
    practitioner_id: str | None = None,
) -> User:
    """A new account. Without a password it cannot log in until `reset_password`."""
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"an account named {username!r} exists")
    _hospital_exists(session, hospital_id)
    _role(session, role)
    if password is not None:
        check_password_strength(password)
    user = User(
        id=str(uuid.uuid4()),
        username=username,
        display_name=display_name or username,
        password_hash=hash_password(password) if password is not None else None,
        hospital_id=hospital_id,
        role_name=role,
        practitioner_id=practitioner_id,
        active=True,
        failed_logins=0,
        created=datetime.now(UTC),
    )
    session.add(user)
    session.flush()
    return user


def get_user(*, session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no account named {username!r}")
    return user


def set_locked(*, session: Session, username: str, locked: bool) -> User:
    """Lock an account until unlocked (active=False), or unlock it and clear failed logins."""
    user = get_user(session=session, username=username)
    user.active = not locked
    if not locked:
        user.failed_logins, user.locked_until = 0, None
    return user


def reset_password(*, session: Session, username: str, password: str | None = None) -> str:
    """Set a new password (a random one when none is given, returned to show once)."""
    user = get_user(session=session, username=username)
    new = password or secrets.token_urlsafe(12)
    check_password_strength(new)
    user.password_hash = hash_password(new)
    user.failed_logins, user.locked_until = 0, None
    return new


def authenticate(*, session: Session, settings: Settings, username: str, password: str) -> User:
    """The user, if the password is right and the account may log in; else `LoginFailure`.

    Failed attempts in a row lock the account for `lockout_seconds`; the counter is bumped
    with an UPDATE so concurrent guesses all count.
    """
    user = session.scalar(select(User).where(User.username == username))
    ok = verify_password(user.password_hash if user else None, password)
    if user is None:
        raise LoginFailure("unknown account", username)
    now = datetime.now(UTC)
    if not user.active:
        raise LoginFailure("account locked by an administrator", username, user)
    if user.locked_until is not None and user.locked_until > now:
        raise LoginFailure("account locked after failed logins", username, user)
    if not ok:
        session.execute(
            update(User).where(User.id == user.id).values(failed_logins=User.failed_logins + 1)
        )
        session.refresh(user)
        if user.failed_logins >= settings.max_failed_logins:
            user.locked_until = now + timedelta(seconds=settings.lockout_seconds)
            user.failed_logins = 0
        raise LoginFailure("wrong password", username, user)
    if user.failed_logins or user.locked_until:
        user.failed_logins, user.locked_until = 0, None
    return user


def register_client(
    *, session: Session, client_id: str, name: str, hospital_id: str, role: str = "hospital-system"
) -> str:
    """Register a partner system; returns its secret (shown once, stored hashed)."""
    if session.get(Client, client_id) is not None:
        raise Conflict(f"a client {client_id!r} exists")
    _hospital_exists(session, hospital_id)
    _role(session, role)
    secret = secrets.token_urlsafe(32)
    session.add(
        Client(
            client_id=client_id,
            name=name,
            secret_hash=hash_password(secret),
            hospital_id=hospital_id,
            role_name=role,
            active=True,
        )
    )
    session.flush()
    return secret


def authenticate_client(*, session: Session, client_id: str, secret: str) -> Client:
    client = session.get(Client, client_id)
    ok = verify_password(client.secret_hash if client else None, secret)
    if client is None or not client.active or not ok:
        raise LoginFailure("unknown client or wrong secret", client_id)
    return client


def token_claims(account: User | Client, requested_scope: str) -> TokenClaims:
    """The claims of a token for this account: the scopes asked for within its role's ceiling."""
    role = account.role
    context = "system" if isinstance(account, Client) else "user"
    ceiling = [s for s in parse_scopes(role.scope_ceiling) if s.context == context]
    requested = parse_scopes(requested_scope)
    if requested_scope.strip() and not requested:
        raise BadRequest("invalid_scope: no resource scope was understood")
    granted = within_ceiling(requested, ceiling)
    if not granted:
        raise BadRequest(f"invalid_scope: the role {role.name} allows none of {requested_scope}")
    if isinstance(account, Client):
        return TokenClaims(
            account.client_id,
            account.client_id,
            "client",
            account.hospital_id,
            role.name,
            format_scopes(granted),
            None,
            str(uuid.uuid4()),
        )
    return TokenClaims(
        account.id,
        account.username,
        "user",
        account.hospital_id,
        role.name,
        format_scopes(granted),
        account.practitioner_id,
        str(uuid.uuid4()),
    )


def principal_for(session: Session, claims: TokenClaims) -> Principal:
    """The principal a verified token speaks for. The account is looked up on every request,
    so locking it or changing its role takes effect at once, not when its tokens expire."""
    account: Any  # a Row of (active, locked_until, role, capabilities), or None
    if claims.kind == "client":
        account = session.execute(
            select(Client.active, null(), Client.role_name, Role.capabilities)
            .join(Role, Role.name == Client.role_name)
            .where(Client.client_id == claims.subject)
        ).first()
    else:
        account = session.execute(
            select(User.active, User.locked_until, User.role_name, Role.capabilities)
            .join(Role, Role.name == User.role_name)
            .where(User.id == claims.subject)
        ).first()
    now = datetime.now(UTC)
    if account is None or not account[0] or (account[1] is not None and account[1] > now):
        raise invalid_token("the token's account is locked or no longer exists")
    role_name, caps = account[2], frozenset(account[3].split())
    return Principal(
        subject=claims.subject,
        username=claims.username,
        kind=claims.kind,
        hospital_id=claims.hospital_id,
        role=role_name,
        capabilities=caps,
        scopes=tuple(parse_scopes(claims.scope)),
        practitioner_id=claims.practitioner_id,
        token_id=claims.token_id,
    )


# ---- access grants ---------------------------------------------------------------------------


def open_grant(
    *,
    session: Session,
    patient_id: str,
    hospital_id: str,
    reason: str,
    resources: Iterable[tuple[str, str]],
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    actor: Actor | None = None,
) -> AccessGrant:
    """Open `resources` (type, id) of one patient to a hospital, for `reason`; audited (a
    disclosure, PIPL art. 23) in the same transaction."""
    grant = AccessGrant(
        id=str(uuid.uuid4()),
        patient_id=patient_id,
        hospital_id=hospital_id,
        reason=reason,
        valid_from=valid_from or datetime.now(UTC),
        valid_until=valid_until,
    )
    grant.resources = [
        AccessGrantResource(resource_type=t, resource_id=i) for t, i in dict.fromkeys(resources)
    ]
    session.add(grant)
    session.flush()
    opened = ", ".join(f"{r.resource_type}/{r.resource_id}" for r in grant.resources)
    until = valid_until.isoformat() if valid_until else "further notice"
    append(
        session,
        [
            _grant_event(
                "grant-open",
                actor,
                reason,
                patient_id,
                f"opened to Organization/{hospital_id} until {until}: {opened}",
            )
        ],
    )
    return grant


def close_grants(
    *,
    session: Session,
    reason: str,
    why: str,
    at: datetime | None = None,
    actor: Actor | None = None,
) -> int:
    """Close every open grant made for `reason`; returns how many. Audited."""
    grants = session.scalars(
        select(AccessGrant).where(AccessGrant.reason == reason, AccessGrant.closed_at.is_(None))
    ).all()
    for grant in grants:
        grant.closed_at = at or datetime.now(UTC)
        grant.closed_reason = why
    session.flush()
    append(
        session,
        [
            _grant_event(
                "grant-close",
                actor,
                reason,
                g.patient_id,
                f"closed for Organization/{g.hospital_id}: {why}",
            )
            for g in grants
        ],
    )
    return len(grants)


def end_grants(
    *, session: Session, reason: str, until: datetime, actor: Actor | None = None
) -> int:
    """Set when the open grants made for `reason` end (a completed referral keeps its records
    open for a while, then they close by themselves); returns how many. Audited."""
    grants = session.scalars(
        select(AccessGrant).where(AccessGrant.reason == reason, AccessGrant.closed_at.is_(None))
    ).all()
    for grant in grants:
        grant.valid_until = until
    session.flush()
    append(
        session,
        [
            _grant_event(
                "grant-end",
                actor,
                reason,
                g.patient_id,
                f"open to Organization/{g.hospital_id} until {until.isoformat()}",
            )
            for g in grants
        ],
    )
    return len(grants)


def _grant_event(
    subtype: str, actor: Actor | None, reason: str, patient_id: str, description: str
) -> AuditInput:
    return AuditInput(
        type="security",
        subtype=subtype,
        action="E",
        outcome="0",
        actor=actor,
        entity=reason,
        patient_id=patient_id,
        description=description,
    )


def grants_for(*, session: Session, reason: str) -> list[AccessGrant]:
    return list(session.scalars(select(AccessGrant).where(AccessGrant.reason == reason)))
