"""The vocabulary the FHIR plumbing and the domains share: who acts, what a stored version, a
parsed search and its result are, and what a caller may see.

It sits below every other module of `alliance.fhir` except `models` and `values`, so the
registry (which holds the domains' hooks), the search engine and the store can all name these
types without importing each other: the package's import graph has no cycle (`.importlinter`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from alliance.errors import Gone, Issue
from alliance.fhir.models import ResourceVersion
from alliance.security.scopes import Scope

#: A resource as JSON (FHIR R4 json.html), as it was accepted.
Resource = dict[str, Any]
ParamType = Literal["token", "string", "reference", "date"]


class Actor(Protocol):
    """Who acts, as the domains read it (alliance.security.access.Principal is one): a person
    (`kind` user) or a partner system (client), always for one hospital. Read-only, so a frozen
    Principal satisfies it."""

    @property
    def username(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def hospital_id(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def practitioner_id(self) -> str | None: ...

    @property
    def capabilities(self) -> frozenset[str]: ...

    @property
    def scopes(self) -> tuple[Scope, ...]: ...


@dataclass(frozen=True)
class SearchParam:
    """A search parameter (FHIR R4 search.html): `path` is a dotted element path from the root
    (`name.family`, `managingOrganization`); values found there are indexed by `type`."""

    name: str
    type: ParamType
    path: str
    documentation: str
    targets: tuple[str, ...] = ()
    #: For a parameter computed from a domain's typed tables rather than indexed from the
    #: resource (`Task?overdue=true`): the SQL condition on `ResourceRow` for a value.
    condition: Callable[[str], ColumnElement[bool]] | None = None


@dataclass(frozen=True)
class Include:
    param: SearchParam
    target_type: str | None
    text: str


@dataclass
class SearchSpec:
    """A parsed search: filters, order, page, and what to include."""

    resource_type: str
    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    order: list[tuple[str, bool]] = field(default_factory=list)  # (param, descending)
    count: int = 20
    page_after: str | None = None
    offset: int = 0
    includes: list[Include] = field(default_factory=list)
    total: str = "none"
    summary_count: bool = False
    #: The parameters that were applied, in order, for the self and next links.
    applied: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)


@dataclass
class Version:
    """One stored version of a resource."""

    resource_type: str
    id: str
    version: int
    last_updated: datetime
    method: str
    content: str | None
    #: The patient whose record this is (for the audit trail), when known.
    patient_id: str | None = None

    @property
    def deleted(self) -> bool:
        return self.content is None

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    def resource(self) -> Resource:
        if self.content is None:
            raise Gone(f"{self.resource_type}/{self.id} was deleted")
        parsed: Resource = json.loads(self.content)
        return parsed

    @classmethod
    def of(cls, row: ResourceVersion, patient_id: str | None = None) -> Version:
        return cls(
            row.resource_type,
            row.id,
            row.version,
            row.last_updated,
            row.method,
            row.content,
            patient_id,
        )


@dataclass
class SearchResult:
    spec: SearchSpec
    matches: list[Version]
    included: list[Version]
    total: int | None
    #: The paging parameter for the next page, or None on the last page.
    next_page: tuple[str, str] | None


@dataclass
class WriteResult:
    version: Version
    created: bool
    warnings: list[Issue] = field(default_factory=list)


class Visibility(Protocol):
    """What a caller may see (alliance.security.access.Reach): called with a type, the
    condition on `ResourceRow` for what it may read; `full`, what is opened to it whole;
    `redact`, serving what it sees only in part as that part."""

    def __call__(self, resource_type: str) -> ColumnElement[bool]: ...

    def full(self, resource_type: str) -> ColumnElement[bool]: ...

    def redact(self, session: Session, versions: list[Version]) -> None: ...

    def may_read(self, resource_type: str) -> bool:
        """Whether the caller's token may read this type at all (`_include` brings in only
        types it may)."""
        ...


class ResourceProvider(Protocol):
    """A type kept outside the generic resource tables (the audit trail), read-only here."""

    def read(self, session: Session, resource_id: str, visible: ColumnElement[bool]) -> Version: ...

    def search(
        self,
        session: Session,
        params: list[tuple[str, str]],
        *,
        default_count: int,
        max_count: int,
        lenient: bool,
        visible: ColumnElement[bool],
    ) -> SearchResult: ...
