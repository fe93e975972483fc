"""Throttling failed logins, per account (or client) and per client address, with exponential
back-off (OWASP Authentication Cheat Sheet, "Login Throttling"; NIST SP 800-63B 5.2.2).

After `login_account_failures` failures on one account, or `login_address_failures` from one
client address, the next attempts through that key are refused, before any password is
checked, for `login_backoff_seconds`, doubling with every further failure up to
`login_backoff_max_seconds`. Failures are forgotten once twice that long has passed without
one (so a guesser who waits out the longest wait meets it again); a successful login forgets
its account's failures (not its address's: a guesser who also holds one good account must not
reset the counter of the address it guesses from).

Throttling slows guessing and nothing else: it never ends the account's live sessions or
tokens (unlike a lock, which only an administrator sets), so an attacker's failures cannot
log a victim out. The state is in the database (`security_login_throttle`), so every API
worker agrees; each failure is counted by one atomic upsert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from alliance.config import Settings
from alliance.security.models import LoginThrottle


@dataclass(frozen=True)
class Key:
    """One throttled counter: its key and after how many failures it slows down."""

    key: str
    threshold: int


def keys_for(settings: Settings, kind: str, name: str, address: str | None) -> list[Key]:
    """The counters a login attempt goes through: the account (or client) named, whether it
    exists or not (so a refusal says nothing about existence), and the client address."""
    keys = [Key(f"{kind}:{name.strip().lower()}"[:200], settings.login_account_failures)]
    if address:
        keys.append(Key(f"address:{address}"[:200], settings.login_address_failures))
    return keys


def wait_seconds(session: Session, keys: list[Key], now: datetime) -> int:
    """Seconds to wait before an attempt through `keys` is heard; 0 when none is blocked."""
    until = session.scalar(
        select(LoginThrottle.blocked_until)
        .where(LoginThrottle.key.in_([k.key for k in keys]), LoginThrottle.blocked_until > now)
        .order_by(LoginThrottle.blocked_until.desc())
        .limit(1)
    )
    return 0 if until is None else max(1, math.ceil((until - now).total_seconds()))


def _backoff(settings: Settings, failures: int, threshold: int) -> int:
    if failures < threshold:
        return 0
    steps = min(failures - threshold, 30)  # 2**30 seconds is beyond any cap
    return int(min(settings.login_backoff_max_seconds, settings.login_backoff_seconds * 2**steps))


def record_failure(session: Session, settings: Settings, keys: list[Key], now: datetime) -> int:
    """Count a failure on each key; returns the longest wait it now imposes (seconds)."""
    forget_before = now - timedelta(seconds=2 * settings.login_backoff_max_seconds)
    session.execute(delete(LoginThrottle).where(LoginThrottle.last_failure < forget_before))
    dialect = session.get_bind().dialect.name
    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    longest = 0
    for key in keys:
        stmt = insert(LoginThrottle).values(
            key=key.key, failures=1, last_failure=now, blocked_until=None
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=[LoginThrottle.key],
                set_={
                    "failures": case(
                        (LoginThrottle.last_failure < forget_before, 1),
                        else_=LoginThrottle.failures + 1,
                    ),
                    "last_failure": now,
                },
            )
        )
        failures = session.scalar(
            select(LoginThrottle.failures).where(LoginThrottle.key == key.key)
        )
        wait = _backoff(settings, failures or 0, key.threshold)
        if wait:
            session.execute(
                update(LoginThrottle)
                .where(LoginThrottle.key == key.key)
                .values(blocked_until=now + timedelta(seconds=wait))
            )
        longest = max(longest, wait)
    return longest


def forget(session: Session, key: Key) -> None:
    """A successful login: the account's failures are forgotten."""
    session.execute(delete(LoginThrottle).where(LoginThrottle.key == key.key))
