"""Accounts, partner systems, logins and access grants. Functions take the session keyword-only
and never commit; the caller's unit of work does."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from alliance import clock
from alliance.audit.service import AuditActor, AuditInput, append
from alliance.config import Settings
from alliance.errors import BadRequest, Conflict, Forbidden, Invalid, NotFound
from alliance.fhir.models import ResourceRow
from alliance.notify.outbox import Recipient, record
from alliance.security import throttle
from alliance.security.access import FULL, TRIAGE, Principal, shareable
from alliance.security.models import AccessGrant, AccessGrantResource, Client, Role, User
from alliance.security.passwords import hash_password, verify_password
from alliance.security.scopes import format_scopes, parse_scopes, within_ceiling
from alliance.security.tokens import TokenClaims, invalid_token

#: The roles every alliance starts with (data: more can be added to the table): name,
#: description, capabilities, scope ceiling, and the roles whose accounts it manages.
BUILTIN_ROLES = [
    (
        "county-doctor",
        "County doctor: registers patients, refers, books teleconsults, uploads imaging",
        "clinical",
        "user/*.cruds",
        "",
    ),
    (
        "specialist",
        "City specialist: works the worklist, reviews imaging, writes and signs opinions",
        "clinical",
        "user/*.cruds",
        "",
    ),
    (
        "hospital-admin",
        "Hospital administrator: staff accounts, departments, consult calendars",
        "administer",
        "user/Organization.cruds user/OrganizationAffiliation.rs user/Practitioner.cruds "
        "user/PractitionerRole.cruds user/Schedule.cruds user/Slot.cruds "
        "user/HealthcareService.cruds",
        # Administrators and auditors are the operator's to make (`alliance user ...`).
        "county-doctor specialist",
    ),
    (
        "auditor",
        "Alliance auditor: the audit trail and the alliance's figures",
        "audit",
        "user/AuditEvent.rs user/Organization.rs user/OrganizationAffiliation.rs "
        "user/Practitioner.rs user/PractitionerRole.rs",
        "",
    ),
    (
        "hospital-system",
        "A hospital's own system (HIS, PACS) acting for that hospital",
        "clinical",
        "system/*.cruds",
        "",
    ),
]
MIN_PASSWORD_LENGTH = 10


class LoginFailure(Exception):
    """Why a login failed: for the audit trail (the client hears only `invalid_grant`).
    `retry_after` is set when the attempt was throttled (seconds to wait)."""

    def __init__(
        self,
        reason: str,
        username: str,
        user: User | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.username = username
        self.user = user
        self.retry_after = retry_after


@dataclass(frozen=True)
class Operator:
    """Whoever runs the `alliance` command on the server: manages every account."""

    name: str = "operator"


OPERATOR = Operator()
#: Who is managing an account: a signed-in administrator, or the operator.
Manager = Principal | Operator


def ensure_roles(session: Session) -> None:
    for name, description, caps, ceiling, manages in BUILTIN_ROLES:
        if session.get(Role, name) is None:
            session.add(
                Role(
                    name=name,
                    description=description,
                    capabilities=caps,
                    scope_ceiling=ceiling,
                    manages=manages,
                )
            )
    session.flush()


def manageable_roles(session: Session, by: Manager) -> list[str]:
    """The roles `by` may give an account (all of them for the operator)."""
    names = list(session.scalars(select(Role.name).order_by(Role.name)))
    if isinstance(by, Operator):
        return names
    role = session.get(Role, by.role)
    allowed = role.manages_set if role is not None else frozenset()
    return [n for n in names if n in allowed]


def check_manage(
    session: Session,
    by: Manager,
    *,
    hospital_id: str,
    role: str,
    username: str,
    new_role: str | None = None,
) -> None:
    """The one rule on who manages which account (create, lock, unlock, reset the password
    of, change the role of). The operator manages all. Anyone else manages accounts of their
    own hospital only (another hospital's account answers 404, as if it did not exist), never
    their own, and only those whose role - and the role given - is one their own role
    `manages` (security_role.manages: for hospital-admin, county-doctor and specialist), so
    no one hands out more than their role allows and auditors' and administrators' accounts
    are the operator's alone."""
    if isinstance(by, Operator):
        return
    if hospital_id != by.hospital_id:
        raise NotFound(f"no account {username!r} at this hospital")
    if by.kind != "user" or username == by.username:
        raise Forbidden("an administrator does not manage their own account", rule="account-own")
    allowed = manageable_roles(session, by)
    for wanted in (role, new_role):
        if wanted is not None and wanted not in allowed:
            raise Forbidden(
                f"a {by.role} does not manage {wanted} accounts; the roles it manages: "
                f"{', '.join(allowed) or 'none'}",
                rule="account-role-managed",
            )


def _managed_user(
    session: Session, by: Manager, username: str, new_role: str | None = None
) -> User:
    user = get_user(session=session, username=username)
    check_manage(
        session,
        by,
        hospital_id=user.hospital_id,
        role=user.role_name,
        username=user.username,
        new_role=new_role,
    )
    return user


def revoke_tokens(*, session: Session, account: User | Client) -> None:
    """End every token and portal session of `account` now: its token epoch moves on (an
    UPDATE, so concurrent revocations each count)."""
    model: Any = type(account)
    key = model.id if isinstance(account, User) else model.client_id
    session.execute(
        update(model)
        .where(key == (account.id if isinstance(account, User) else account.client_id))
        .values(token_epoch=model.token_epoch + 1)
    )
    session.refresh(account)


def log_out(*, session: Session, principal: Principal) -> None:
    """Logging out ends every token and portal session of the principal's account."""
    if principal.kind == "client":
        client = session.get(Client, principal.subject)
        if client is not None:
            revoke_tokens(session=session, account=client)
        return
    user = session.get(User, principal.subject)
    if user is not None:
        revoke_tokens(session=session, account=user)


def _role(session: Session, name: str) -> Role:
    role = session.get(Role, name)
    if role is None:
        known = ", ".join(session.scalars(select(Role.name).order_by(Role.name)))
        raise Invalid(f"no role {name!r}; roles: {known}", rule="account-role-unknown")
    return role


def _hospital_exists(session: Session, hospital_id: str) -> None:
    row = session.get(ResourceRow, ("Organization", hospital_id))
    if row is None or row.deleted:
        raise Invalid(
            f"Organization/{hospital_id} is not a hospital of the alliance",
            rule="account-hospital-unknown",
        )


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Invalid(
            f"a password has at least {MIN_PASSWORD_LENGTH} characters", rule="password-length"
        )


def person_name(session: Session, subject: str) -> str:
    """How a person signs (their display name), by their token's subject; a partner system,
    or an account gone since, by nothing."""
    found = session.scalar(select(User.display_name).where(User.id == subject))
    return found or ""


@dataclass(frozen=True)
class Account:
    username: str
    display_name: str
    hospital_id: str
    role: str
    active: bool
    practitioner_id: str | None


def accounts(session: Session, hospital_id: str | None = None) -> list[Account]:
    """The people with accounts (of one hospital, or the alliance), by hospital and name:
    what an administrator lists and an auditor picks a user from."""
    query = select(
        User.username,
        User.display_name,
        User.hospital_id,
        User.role_name,
        User.active,
        User.practitioner_id,
    )
    if hospital_id is not None:
        query = query.where(User.hospital_id == hospital_id)
    rows = session.execute(query.order_by(User.hospital_id, User.display_name, User.username))
    return [Account(*row) for row in rows]


def create_user(
    *,
    session: Session,
    by: Manager,
    username: str,
    hospital_id: str,
    role: str,
    password: str | None,
    display_name: str | None = None,
    practitioner_id: str | None = None,
) -> User:
    """A new account. Without a password it cannot log in until `reset_password`."""
    _role(session, role)
    check_manage(session, by, hospital_id=hospital_id, role=role, username=username)
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"an account named {username!r} exists", rule="account-username-taken")
    _hospital_exists(session, hospital_id)
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
        token_epoch=0,
        created=clock.now(),
    )
    session.add(user)
    session.flush()
    return user


def get_user(*, session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no account named {username!r}")
    return user


def set_locked(*, session: Session, by: Manager, username: str, locked: bool) -> User:
    """Lock an account until unlocked (active=False; its tokens and sessions end at once), or
    unlock it (what it held before stays ended)."""
    user = _managed_user(session, by, username)
    user.active = not locked
    if locked:
        revoke_tokens(session=session, account=user)
    return user


def set_role(*, session: Session, by: Manager, username: str, role: str) -> User:
    """Give an account another role; its tokens and sessions (made for the old one) end."""
    _role(session, role)
    user = _managed_user(session, by, username, new_role=role)
    if user.role_name != role:
        user.role_name = role
        session.flush()
        session.expire(user, ["role"])
        revoke_tokens(session=session, account=user)
    return user


def link_practitioner(
    *, session: Session, by: Manager, username: str, practitioner_id: str
) -> User:
    """Link an account to the Practitioner it acts as (its tokens' fhirUser, SMART App Launch
    2.0): one on the staff of the account's hospital. The account's tokens and sessions (made
    without the link) end, so it signs in again as that practitioner."""
    user = _managed_user(session, by, username)
    row = session.get(ResourceRow, ("Practitioner", practitioner_id))
    if row is None or row.deleted or row.organization_id != user.hospital_id:
        raise Invalid(
            f"Practitioner/{practitioner_id} is not on the staff of this account's hospital",
            rule="account-practitioner",
        )
    if user.practitioner_id != practitioner_id:
        user.practitioner_id = practitioner_id
        session.flush()
        revoke_tokens(session=session, account=user)
    return user


def reset_password(
    *, session: Session, by: Manager, username: str, password: str | None = None
) -> str:
    """Set a new password (a random one when none is given, returned to show once); the
    account's tokens and sessions end, and its throttled failures are forgotten."""
    user = _managed_user(session, by, username)
    new = password or secrets.token_urlsafe(12)
    check_password_strength(new)
    user.password_hash = hash_password(new)
    revoke_tokens(session=session, account=user)
    throttle.forget(session, throttle.Key(f"account:{user.username.lower()}", 0))
    return new


def _throttled(
    session: Session, settings: Settings, keys: list[throttle.Key], name: str, now: datetime
) -> None:
    wait = throttle.wait_seconds(session, keys, now)
    if wait:
        raise LoginFailure(
            f"throttled after failed logins: retry after {wait} s", name, retry_after=wait
        )


def authenticate(
    *,
    session: Session,
    settings: Settings,
    username: str,
    password: str,
    address: str | None = None,
) -> User:
    """The user, if the password is right and the account may log in; else `LoginFailure`.

    Failures are throttled per account name and per client address (alliance.security
    .throttle): a throttled attempt is refused before the password is checked. Throttling
    never touches the account's live tokens and sessions.
    """
    now = clock.now()
    keys = throttle.keys_for(settings, "account", username, address)
    _throttled(session, settings, keys, username, now)
    user = session.scalar(select(User).where(User.username == username))
    ok = verify_password(user.password_hash if user else None, password)
    if not ok:
        wait = throttle.record_failure(session, settings, keys, now)
        reason = "unknown account" if user is None else "wrong password"
        if wait:
            reason += f"; further logins throttled for {wait} s"
        raise LoginFailure(reason, username, user)
    assert user is not None
    if not user.active:
        raise LoginFailure("account locked by an administrator", username, user)
    throttle.forget(session, keys[0])
    return user


def register_client(
    *, session: Session, client_id: str, name: str, hospital_id: str, role: str = "hospital-system"
) -> str:
    """Register a partner system; returns its secret (shown once, stored hashed)."""
    if session.get(Client, client_id) is not None:
        raise Conflict(f"a client {client_id!r} exists", rule="client-id-taken")
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


def authenticate_client(
    *,
    session: Session,
    settings: Settings,
    client_id: str,
    secret: str,
    address: str | None = None,
) -> Client:
    """The client, if the secret is right and it is active; throttled as `authenticate`."""
    now = clock.now()
    keys = throttle.keys_for(settings, "client", client_id, address)
    _throttled(session, settings, keys, client_id, now)
    client = session.get(Client, client_id)
    ok = verify_password(client.secret_hash if client else None, secret)
    if not ok:
        throttle.record_failure(session, settings, keys, now)
    if client is None or not client.active or not ok:
        raise LoginFailure("unknown client or wrong secret", client_id)
    throttle.forget(session, keys[0])
    return client


def set_client_active(*, session: Session, client_id: str, active: bool) -> Client:
    """Lock a partner system (its tokens end at once) or unlock it. The operator's alone."""
    client = session.get(Client, client_id)
    if client is None:
        raise NotFound(f"no client {client_id!r}")
    client.active = active
    if not active:
        revoke_tokens(session=session, account=client)
    return client


def reset_client_secret(*, session: Session, client_id: str) -> str:
    """A new secret for a partner system (shown once); its tokens end at once."""
    client = session.get(Client, client_id)
    if client is None:
        raise NotFound(f"no client {client_id!r}")
    secret = secrets.token_urlsafe(32)
    client.secret_hash = hash_password(secret)
    revoke_tokens(session=session, account=client)
    return secret


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
            account.token_epoch,
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
        account.token_epoch,
    )


#: Of the account a token speaks for: whether it may act, its token epoch, its role and the
#: role's capabilities. Built once, the subject a bound parameter (SQLAlchemy's compiled cache
#: then finds it without building or keying a statement per request).
_USER_ACCOUNT = (
    select(User.active, User.token_epoch, User.role_name, Role.capabilities)
    .join(Role, Role.name == User.role_name)
    .where(User.id == bindparam("subject"))
)
_CLIENT_ACCOUNT = (
    select(Client.active, Client.token_epoch, Client.role_name, Role.capabilities)
    .join(Role, Role.name == Client.role_name)
    .where(Client.client_id == bindparam("subject"))
)
#: Principals made, by token id, each with what it was made of (see `principal_for`).
_principals: dict[str, tuple[TokenClaims, str, str, Principal]] = {}
#: Most principals kept by one process; past it the cache starts again.
_KEPT_PRINCIPALS = 4096


def principal_for(session: Session, claims: TokenClaims) -> Principal:
    """The principal a verified token speaks for. The account is read on every request (one
    query, made once), so a lock, a logout, a password reset or a role change - each moves
    the account's token epoch on - ends its tokens and portal sessions at once, in every
    worker, not when they expire. Failed logins (throttled) never do.

    What is made of the account and the token (the role's capabilities, the token's scopes
    parsed) is kept per token, and served again only while the account still reads the same
    (same epoch, same role and capabilities): nothing kept outlives a revocation, since the
    epoch is checked against the database first, on every request."""
    account: Any  # a Row of (active, token_epoch, role, capabilities), or None
    query = _CLIENT_ACCOUNT if claims.kind == "client" else _USER_ACCOUNT
    # On the unit's connection (Core), not through the ORM: a row of four columns needs none of
    # its entity loading, and this runs on every request.
    account = session.connection().execute(query, {"subject": claims.subject}).first()
    if account is None or not account[0]:
        raise invalid_token("the token's account is locked or no longer exists")
    if account[1] != claims.epoch:
        raise invalid_token("the token was revoked (logout, password reset, lock or new role)")
    role_name, caps = account[2], account[3]
    kept = _principals.get(claims.token_id)
    if kept is not None and kept[0] == claims and kept[1] == role_name and kept[2] == caps:
        return kept[3]
    principal = Principal(
        subject=claims.subject,
        username=claims.username,
        kind=claims.kind,
        hospital_id=claims.hospital_id,
        role=role_name,
        capabilities=frozenset(caps.split()),
        scopes=tuple(parse_scopes(claims.scope)),
        practitioner_id=claims.practitioner_id,
        token_id=claims.token_id,
    )
    if len(_principals) >= _KEPT_PRINCIPALS:
        _principals.clear()
    _principals[claims.token_id] = (claims, role_name, caps, principal)
    return principal


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
    actor: AuditActor | None = None,
    shared_by: str | None = None,
    level: str = FULL,
) -> AccessGrant:
    """Open `resources` (type, id) of one patient to a hospital, for `reason`, in `full` or
    for `triage`; audited (a disclosure, PIPL art. 23) in the same transaction.

    Only what `shared_by` (by default the hospital keeping the patient) may share is opened:
    the records it keeps or keeps the patient of (alliance.security.access.shareable). What it
    sees only through another grant is left out, so nothing derived from a grant outlives it.
    """
    if level not in (FULL, TRIAGE):
        raise ValueError(f"a grant's level is {FULL} or {TRIAGE}, not {level!r}")
    if shared_by is None:
        shared_by = session.scalar(
            select(ResourceRow.organization_id).where(
                ResourceRow.resource_type == "Patient", ResourceRow.id == patient_id
            )
        )
    opened = shareable(session, shared_by or "", list(resources))
    grant = AccessGrant(
        id=str(uuid.uuid4()),
        patient_id=patient_id,
        hospital_id=hospital_id,
        reason=reason,
        valid_from=valid_from or clock.now(),
        valid_until=valid_until,
        level=level,
    )
    grant.resources = [AccessGrantResource(resource_type=t, resource_id=i) for t, i in opened]
    session.add(grant)
    session.flush()
    if level == FULL:
        for study in (i for t, i in opened if t == "ImagingStudy"):
            record(
                session,
                "study-shared",
                focus=("ImagingStudy", study),
                recipients=[Recipient(hospital_id)],
                patient_id=patient_id,
                actor=actor,
            )
    until = valid_until.isoformat() if valid_until else "further notice"
    listed = ", ".join(f"{t}/{i}" for t, i in opened)
    append(
        session,
        [
            _grant_event(
                "grant-open",
                actor,
                reason,
                patient_id,
                f"opened ({level}) by Organization/{shared_by} to Organization/{hospital_id} "
                f"until {until}: {listed}",
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
    actor: AuditActor | None = None,
) -> int:
    """Close every open grant made for `reason`; returns how many. Audited."""
    grants = session.scalars(
        select(AccessGrant).where(AccessGrant.reason == reason, AccessGrant.closed_at.is_(None))
    ).all()
    for grant in grants:
        grant.closed_at = at or clock.now()
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
    *, session: Session, reason: str, until: datetime, actor: AuditActor | None = None
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
    subtype: str, actor: AuditActor | None, reason: str, patient_id: str, description: str
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
