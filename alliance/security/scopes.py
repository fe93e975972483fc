"""SMART App Launch v2 scopes (`user/Patient.rs`, `user/*.cruds`, `system/ServiceRequest.cr`).

A role (or a partner system's registration) grants a ceiling; a token holds what was asked for
within it. v1 spellings (`.read`, `.write`, `.*`) are read as their v2 equivalents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PERMISSIONS = "cruds"
_SCOPE_RE = re.compile(r"^(user|system|patient)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}

#: The permission each FHIR interaction needs.
INTERACTION_PERMISSION = {
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "search-type": "s",
    "create": "c",
    "update": "u",
    "delete": "d",
}


@dataclass(frozen=True)
class Scope:
    context: str
    resource: str
    permissions: frozenset[str]

    def __str__(self) -> str:
        perms = "".join(p for p in PERMISSIONS if p in self.permissions)
        return f"{self.context}/{self.resource}.{perms}"


def parse_scope(text: str) -> Scope | None:
    """A resource scope, or None for anything else (`openid`, `launch`, ...)."""
    m = _SCOPE_RE.match(text)
    if not m:
        return None
    context, resource, perms = m.groups()
    perms = _V1.get(perms, perms)
    if not perms or any(p not in PERMISSIONS for p in perms) or len(set(perms)) != len(perms):
        return None
    return Scope(context, resource, frozenset(perms))


def parse_scopes(text: str) -> list[Scope]:
    return [s for s in (parse_scope(t) for t in text.split()) if s is not None]


def format_scopes(scopes: list[Scope]) -> str:
    return " ".join(str(s) for s in scopes)


def within_ceiling(requested: list[Scope], ceiling: list[Scope]) -> list[Scope]:
    """What of `requested` the ceiling allows; an empty request asks for the whole ceiling."""
    if not requested:
        return list(ceiling)
    granted: dict[tuple[str, str], set[str]] = {}
    for want in requested:
        for cap in ceiling:
            if cap.context != want.context:
                continue
            if want.resource == "*":
                resource = cap.resource
            elif cap.resource in ("*", want.resource):
                resource = want.resource
            else:
                continue
            perms = want.permissions & cap.permissions
            if perms:
                granted.setdefault((want.context, resource), set()).update(perms)
    return [Scope(c, r, frozenset(p)) for (c, r), p in granted.items()]


def allows(scopes: list[Scope], resource_type: str, permission: str) -> bool:
    return any(s.resource in ("*", resource_type) and permission in s.permissions for s in scopes)
