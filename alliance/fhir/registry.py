"""What the FHIR face serves: each resource type's definition, registered by `fhir_mappings`.

This package knows no resource type by itself; the capability statement, the router and the
search engine are all driven by these definitions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel
from sqlalchemy.orm import Session

from alliance.errors import Issue, NotFound
from alliance.fhir.types import (
    Actor,
    Resource,
    ResourceProvider,
    SearchParam,
    SearchResult,
    Version,
    Visibility,
    WriteResult,
)

__all__ = [
    "ALL_INTERACTIONS",
    "AccessClass",
    "AfterWrite",
    "Operation",
    "OperationContext",
    "OperationResult",
    "Prepare",
    "Presenter",
    "ReadHook",
    "ReaderPresenter",
    "Registry",
    "Resource",
    "ResourceDefinition",
    "SearchParam",
    "Store",
    "WriteCheck",
    "WriteContext",
    "WriteHook",
]

AccessClass = Literal["directory", "clinical", "audit"]
#: A fhir.resources model class (named here: `ResourceDefinition.type` shadows `type`).
ModelClass = type[BaseModel]

#: FHIR R4 CapabilityStatement.rest.resource.interaction codes this plumbing implements.
ALL_INTERACTIONS = frozenset(
    {"read", "vread", "update", "create", "history-instance", "search-type", "delete"}
)


class Store(Protocol):
    """What a hook may do with the store (alliance.fhir.store.FhirStore is the one): read,
    search and write other resources in the same transaction. Named here, not imported, so the
    registry stays below the store that uses it."""

    @property
    def registry(self) -> Registry: ...

    @property
    def base_url(self) -> str: ...

    def read(
        self,
        resource_type: str,
        resource_id: str,
        *,
        session: Session,
        visible: Visibility | None = None,
        actor: Actor | None = None,
    ) -> Version: ...

    def search(
        self,
        resource_type: str,
        params: list[tuple[str, str]],
        *,
        session: Session,
        default_count: int,
        max_count: int,
        lenient: bool = False,
        visible: Visibility | None = None,
        actor: Actor | None = None,
    ) -> SearchResult: ...

    def create(
        self,
        resource_type: str,
        body: Resource,
        *,
        session: Session,
        if_none_exist: str | None = None,
        resource_id: str | None = None,
        visible: Visibility | None = None,
        authorize: WriteCheck | None = None,
        actor: Actor | None = None,
    ) -> WriteResult: ...

    def update(
        self,
        resource_type: str,
        resource_id: str,
        body: Resource,
        *,
        session: Session,
        if_match: str | None = None,
        visible: Visibility | None = None,
        authorize: WriteCheck | None = None,
        actor: Actor | None = None,
    ) -> WriteResult: ...


@dataclass(frozen=True)
class WriteContext:
    """What a domain hook gets besides the resource: the transaction, the store (to write
    other resources, such as a Provenance), and who acts (None for the server itself)."""

    session: Session
    store: Store
    actor: Actor | None


#: Checks beyond the base model, and typed-table upkeep, run in the write's transaction with
#: (context, the resource as it will be stored, the current version or None). It raises
#: `Invalid`/`Conflict`/`Forbidden` to refuse the write and returns warnings to report.
WriteHook = Callable[[WriteContext, Resource, Resource | None], list[Issue]]
#: Fills the fields the server manages (who keeps the record, timestamps, deadlines) before
#: the write is authorised and checked; it may change the resource in place.
Prepare = Callable[[WriteContext, Resource, Resource | None], None]
#: Run after the version is written, in the same transaction (Provenance, access grants).
AfterWrite = Callable[[WriteContext, Version, Resource | None], None]
#: Run when a resource is read by id; may move it (a Task becomes `received` when its owner
#: first opens it) and return the version to answer with.
ReadHook = Callable[[WriteContext, Version], Version]
#: Rewrites the served form of current versions in place (values derived at read time, such as
#: an overdue Task's businessStatus); vread and history serve versions exactly as stored.
Presenter = Callable[[Session, list[Version]], None]
#: The same for one reader (the actor reading): what only some readers may see, or what is
#: shown in the reader's own terms. Runs after `Presenter` on reads and searches that know who
#: reads; whatever it adds is never stored, so vread and history cannot leak it.
ReaderPresenter = Callable[[Session, Actor, list[Version]], None]


@dataclass(frozen=True)
class OperationContext:
    """What a type-level operation gets: the transaction, the store, who calls (always
    someone: operations are not run by the server itself), what they may see (`visible`) and
    the write check to pass to the store's writes."""

    session: Session
    store: Store
    actor: Actor
    visible: Visibility
    authorize: WriteCheck

    def read(self, resource_type: str, resource_id: str) -> Version:
        """The current version, as the caller may see it (404 otherwise)."""
        return self.store.read(
            resource_type, resource_id, session=self.session, visible=self.visible
        )

    def create(self, body: Resource) -> Version:
        """Create as the caller, through every check a FHIR client's create passes: the
        domain commands (referral.commands, ...) write through this."""
        return self.store.create(
            body["resourceType"],
            body,
            session=self.session,
            visible=self.visible,
            authorize=self.authorize,
            actor=self.actor,
        ).version

    def update(self, body: Resource) -> Version:
        """Update `body` (its type and id) as the caller, as a FHIR client's update."""
        return self.store.update(
            body["resourceType"],
            body["id"],
            body,
            session=self.session,
            visible=self.visible,
            authorize=self.authorize,
            actor=self.actor,
        ).version


@dataclass
class OperationResult:
    """What an operation answers: the resource of its `return` parameter (a Bundle, an
    Appointment, ...), and the records it touched as (Type/id, patient id) for the audit."""

    resource: Resource
    touched: list[tuple[str | None, str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class Operation:
    """A type-level operation, `POST [base]/{type}/${name}` with a Parameters body (FHIR R4
    operations.html). The router runs it through the Guard like any interaction: the token's
    scope must allow `interaction` on the type, and the call is audited."""

    name: str
    #: Canonical URL of the OperationDefinition it implements (listed in the capabilities).
    definition: str
    documentation: str
    #: The interaction whose permission the caller's scope needs (search-type, create, ...).
    interaction: str
    run: Callable[[OperationContext, Resource], OperationResult]
    #: An operation that changes nothing may also be invoked with GET and query parameters.
    affects_state: bool = True


#: May the caller store this resource (replacing the previous version)? Raises if not. Typed
#: over the definition, so it lives beside it rather than in `alliance.fhir.types`.
WriteCheck = Callable[["ResourceDefinition", Session, Resource, Resource | None], None]


def _no_owner(_resource: Resource) -> str | None:
    return None


@dataclass
class ResourceDefinition:
    type: str
    #: The fhir.resources model class that validates the base structure.
    model: ModelClass
    search_params: list[SearchParam]
    documentation: str
    interactions: frozenset[str] = ALL_INTERACTIONS
    #: How access rules treat it: `directory` (shared across the alliance), `clinical`
    #: (patient data: own hospital, own patients, grants), `audit` (auditors only).
    access: AccessClass = "clinical"
    prepare: Prepare | None = None
    on_write: WriteHook | None = None
    #: Run in order; several domains may add theirs to one type (a Task is the referral's,
    #: and a teleconsult frees its bookings when its request ends).
    after_write: list[AfterWrite] = field(default_factory=list)
    on_read: ReadHook | None = None
    present: Presenter | None = None
    #: The Patient id whose compartment the resource is in, for access rules.
    patient_of: Callable[[Resource], str | None] = _no_owner
    #: The Organization id of the hospital that owns the resource, for access rules.
    organization_of: Callable[[Resource], str | None] = _no_owner
    #: The hospitals whose users may write it, when more than its owner may (a referral's
    #: Task is moved by both the sending and the receiving hospital); default: the owner.
    writers: Callable[[Resource], set[str | None]] | None = None
    #: Updates must be based on the current version: a body whose meta.versionId is older
    #: answers 409 even without If-Match (a workflow resource must not lose a move).
    versioned_updates: bool = False
    #: Serves the type from its own tables instead of the generic store (read and search).
    provider: ResourceProvider | None = None
    #: Rewrites what one reader is served (ReaderPresenter), after `present`.
    present_to: ReaderPresenter | None = None
    #: Type-level operations by name (without the `$`).
    operations: dict[str, Operation] = field(default_factory=dict)
    #: Extensions on the type's entry in the CapabilityStatement (the topics a Subscription
    #: may name, R4 Subscriptions Backport IG).
    capability_extensions: list[Resource] = field(default_factory=list)
    _by_name: dict[str, SearchParam] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {p.name: p for p in self.search_params}

    def param(self, name: str) -> SearchParam | None:
        return self._by_name.get(name)

    @property
    def includes(self) -> list[str]:
        """`_include` values served: every reference parameter of a generically kept type."""
        if self.provider is not None:
            return []
        return [f"{self.type}:{p.name}" for p in self.search_params if p.type == "reference"]


class Registry:
    def __init__(self, definitions: Iterable[ResourceDefinition] = ()) -> None:
        self._types: dict[str, ResourceDefinition] = {}
        for d in definitions:
            self.register(d)

    def register(self, definition: ResourceDefinition) -> None:
        if definition.type in self._types:
            raise ValueError(f"{definition.type} registered twice")
        self._types[definition.type] = definition

    def get(self, resource_type: str) -> ResourceDefinition:
        try:
            return self._types[resource_type]
        except KeyError:
            raise NotFound(f"resource type {resource_type!r} is not supported here") from None

    def __contains__(self, resource_type: str) -> bool:
        return resource_type in self._types

    def definitions(self) -> list[ResourceDefinition]:
        return sorted(self._types.values(), key=lambda d: d.type)
