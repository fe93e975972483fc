"""The vocabulary the FHIR plumbing and the domains share: who acts, what a stored version, a
parsed search and its result are, and what a caller may see.

It sits below every other module of `alliance.fhir` except `models` and `values`, so the
registry (which holds the domains' hooks), the search engine and the store can all name these
types without importing each other: the package's import graph has no cycle (`.importlinter`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from sqlalchemy import ColumnElement, Row, SQLColumnExpression, and_, not_, or_
from sqlalchemy.orm import Session

from alliance import clock
from alliance.errors import Gone, Issue
from alliance.fhir.models import ResourceVersion
from alliance.security.scopes import Scope

#: A resource as JSON (FHIR R4 json.html), as it was accepted.
Resource = dict[str, Any]
ParamType = Literal["token", "string", "reference", "date"]


class Speaker(Protocol):
    """Whom a request speaks for, as far as the audit trail records it: a token's claims or a
    principal (a person, `kind` user, or a partner system, client; for one hospital)."""

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


class Actor(Speaker, Protocol):
    """Who acts, as the domains read it (alliance.security.access.Principal is one), with what
    its role and token allow. Read-only, so a frozen Principal satisfies it."""

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


@dataclass(frozen=True)
class Token:
    """A token search value (search.html#token): `code`, `system|code`, `|code` (no system),
    `system|` (any code of the system). None is "any"; `no_system` asks for none."""

    system: str | None
    code: str | None
    no_system: bool = False


@dataclass(frozen=True)
class DateValue:
    """A date search value: its prefix (search.html#prefix) and the instants `[low, high)` its
    date covers at the precision written."""

    prefix: str
    low: datetime
    high: datetime

    def condition(
        self, low: SQLColumnExpression[datetime], high: SQLColumnExpression[datetime]
    ) -> ColumnElement[bool]:
        """The prefix over a stored range `[low, high)` in SQL."""
        lo, hi = self.low, self.high
        within = and_(low >= lo, high <= hi)
        if self.prefix == "eq":
            return within
        if self.prefix == "ne":
            return not_(within)
        if self.prefix == "gt":
            return high > hi
        if self.prefix == "lt":
            return low < lo
        if self.prefix == "ge":
            return or_(high > hi, within)
        if self.prefix == "le":
            return or_(low < lo, within)
        if self.prefix == "sa":
            return low >= hi
        if self.prefix == "eb":
            return high <= lo
        slack = self.slack()  # ap
        return and_(low < _shift(hi, slack), high > _shift(lo, -slack))

    def matches(self, low: datetime, high: datetime) -> bool:
        """The same prefix over a range held in Python (a derived resource, such as a Slot,
        or "now" for `_lastUpdated` of one derived as of now)."""
        lo, hi = self.low, self.high
        within = low >= lo and high <= hi
        return {
            "eq": within,
            "ne": not within,
            "gt": high > hi,
            "lt": low < lo,
            "ge": high > hi or within,
            "le": low < lo or within,
            "sa": low >= hi,
            "eb": high <= lo,
            "ap": low < _shift(hi, self.slack()) and high > _shift(lo, -self.slack()),
        }[self.prefix]

    def window(self) -> tuple[datetime | None, datetime | None]:
        """Where an instant that matches can lie, `[earliest, latest]` (None: unbounded): a
        superset, for a provider that derives what it searches (Slots) to generate only
        there, then keep what `matches`."""
        lo, hi = self.low, self.high
        return {
            "eq": (lo, hi),
            "ne": (None, None),
            "gt": (hi, None),
            "sa": (hi, None),
            "ge": (lo, None),
            "lt": (None, lo),
            "eb": (None, lo),
            "le": (None, hi),
            "ap": (_shift(lo, -self.slack()), _shift(hi, self.slack())),
        }[self.prefix]

    def slack(self) -> timedelta:
        """How far `ap` reaches: 10% of the distance from now, at least a day (search.html
        suggests 10%)."""
        return max(abs(clock.now() - self.low) / 10, timedelta(days=1))


def _shift(value: datetime, delta: timedelta) -> datetime:
    """`value + delta`, held at the ends of the representable range: `ap` near year 1 or 9999
    reaches the end of time rather than overflowing."""
    try:
        return value + delta
    except OverflowError:
        return (datetime.min if delta < timedelta(0) else datetime.max).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Filter:
    """One search parameter as asked, its values parsed by its type's grammar. The values are
    alternatives (a comma: OR); the filters of a search all hold (repeated parameter: AND)."""

    param: SearchParam
    modifier: str
    #: The alternatives as written, unescaped.
    values: tuple[str, ...]
    tokens: tuple[Token, ...] = ()
    #: (type or None when the value names no type, id); a value that cannot match (a
    #: reference to another type than the `:Type` modifier asks) is left out.
    references: tuple[tuple[str | None, str], ...] = ()
    dates: tuple[DateValue, ...] = ()

    @property
    def name(self) -> str:
        return self.param.name


@dataclass
class SearchSpec:
    """A parsed search (FHIR R4 search.html): the filters and the result parameters. The one
    parse every type's search goes through; a provider answers it from its own tables."""

    resource_type: str
    filters: list[Filter] = field(default_factory=list)
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

    @property
    def wants_total(self) -> bool:
        return self.summary_count or self.total != "none" or self.count == 0


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
    def of(
        cls, row: ResourceVersion | Row[*tuple[Any, ...]], patient_id: str | None = None
    ) -> Version:
        """The version a `ResourceVersion`, or a row of its columns (store.VERSION_COLUMNS),
        holds."""
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

    def redact(
        self,
        session: Session,
        versions: list[Version],
        known: Mapping[tuple[str, str], bool] | None = None,
    ) -> None:
        """`known`: of (type, id), whether it is opened whole, as the query that found it
        already asked (`full` selected as a column); the rest is asked here."""
        ...

    def may_read(self, resource_type: str) -> bool:
        """Whether the caller's token may read this type at all (`_include` brings in only
        types it may)."""
        ...


class ResourceProvider(Protocol):
    """A type kept outside the generic resource tables (the audit trail), read-only here. Its
    searches are parsed by the kernel (alliance.fhir.search) like every other type's; the
    provider answers the parsed search (filters and result parameters) from its own tables."""

    def read(self, session: Session, resource_id: str, visible: ColumnElement[bool]) -> Version: ...

    def search_parsed(
        self, session: Session, spec: SearchSpec, *, visible: ColumnElement[bool]
    ) -> SearchResult: ...
