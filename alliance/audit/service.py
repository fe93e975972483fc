"""Writing, verifying and searching the audit trail.

Each event is an AuditEvent resource in the IHE Basic Audit Log Patterns (BALP) shape. Rows are
appended under one lock (a PostgreSQL advisory lock; SQLite's single writer), each row's hash
covering its position, the previous row's hash and its canonical JSON, so a changed, removed
or inserted row breaks the chain at that row (GB/T 22239-2019 8.1.4.3: records are protected
from deletion, modification and overwriting).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache, partial
from typing import Any, Protocol, cast

from sqlalchemy import ColumnElement, Table, false, func, insert, not_, or_, select, text
from sqlalchemy.orm import Session

from alliance import clock, metrics, trace
from alliance.audit.models import AUDIT_COLUMNS, GENESIS_HASH, AuditRecord
from alliance.db import Database, after_commit, lock_key
from alliance.errors import Unavailable
from alliance.fhir.search import string_pattern
from alliance.fhir.types import Filter, Speaker
from alliance.fhir.values import instant

log = logging.getLogger("alliance.audit")

AUDIT_LOCK = "audit-chain"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
USER_SYSTEM = "https://fhir.yzxy-alliance.cn/sid/user"
HOSPITAL_EXTENSION = "https://fhir.yzxy-alliance.cn/StructureDefinition/agent-organization"
ROLE_SYSTEM = "https://fhir.yzxy-alliance.cn/CodeSystem/user-role"
#: IHE BALP's entity type of the transport's request id (the `transaction` entity of its
#: profiles: `what.identifier.value` holds the HTTP X-Request-ID).
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"

#: Event types: (system, code, display). `rest` is FHIR's; the rest are DICOM's (PS3.15 A.5).
EVENT_TYPES = {
    "rest": (AUDIT_TYPE, "rest", "Restful Operation"),
    "login": (DCM, "110114", "User Authentication"),
    "export": (DCM, "110106", "Export"),
    "query": (DCM, "110112", "Query"),
    "security": (DCM, "110113", "Security Alert"),
    # DICOMweb and DIMSE stores and retrievals (PS3.15 A.5.3.13).
    "transfer": (DCM, "110104", "DICOM Instances Transferred"),
}
#: Outcome codes of AuditEvent.outcome (FHIR R4 valueset-audit-event-outcome).
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE, MAJOR_FAILURE = "0", "4", "8", "12"


def outcome_for_status(status: int) -> str:
    if status < 400:
        return SUCCESS
    return MINOR_FAILURE if status < 500 else SERIOUS_FAILURE


@dataclass(frozen=True)
class AuditActor:
    """Who acted, as the trail records it (BALP agent)."""

    username: str
    hospital_id: str | None = None
    role: str | None = None
    practitioner_id: str | None = None
    kind: str = "user"


def actor_of(who: Speaker | None) -> AuditActor | None:
    """The trail's record of who acts (None: the server itself)."""
    if who is None:
        return None
    return AuditActor(who.username, who.hospital_id, who.role, who.practitioner_id, who.kind)


@dataclass
class AuditInput:
    """What happened; `build_event` turns it into the AuditEvent resource."""

    type: str  # a key of EVENT_TYPES
    subtype: str  # read, vread, history, search, create, update, delete, login, ...
    action: str  # C R U D E
    outcome: str
    actor: AuditActor | None
    client_address: str | None = None
    entity: str | None = None
    patient_id: str | None = None
    query: str | None = None
    description: str | None = None
    user_agent: str | None = None
    extra_entities: list[str] = field(default_factory=list)
    #: The HTTP request's id (alliance.trace); None: the request being served, if any.
    request_id: str | None = None


# ---- what may be recorded ---------------------------------------------------------------------

#: Longest text kept of each field that comes from a request. The searchable ones are the sizes
#: of their columns (models.py), so an absurd value is clamped, never refused by the database;
#: the others bound what an unauthenticated caller can make the trail store for one request.
FIELD_LIMITS = {
    "username": 64,
    "hospital_id": 64,
    "role": 64,
    "practitioner_id": 64,
    "client_address": 64,
    "patient_id": 64,
    "entity": 160,
    "user_agent": 200,
    "description": 2000,
    "query": 4096,
    "request_id": 64,
}
#: Most entities beyond the first that one event lists.
MAX_EXTRA = 100
#: NUL, the other C0 controls, DEL, C1 controls and lone surrogates: PostgreSQL refuses NUL in
#: text, a surrogate cannot be encoded as UTF-8 (so not hashed), and control characters forge
#: lines and terminal escapes in whatever shows the trail later.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
#: Ends a value that was cut.
CLAMPED = "\u2026"


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def recordable(value: str | None, limit: int) -> str | None:
    """`value` as the trail can always keep it: unprintable characters escaped (`\\x00`,
    `\\n`, `\\ud800`), then at most `limit` characters, the last one "…" when it was cut.
    Only the first `limit` characters are looked at, so a megabyte costs no more than a line.
    (A backslash typed by the caller stays as it is: the escapes are for reading, not for
    decoding back.)"""
    if value is None:
        return None
    if len(value) <= limit and _UNPRINTABLE.search(value) is None:
        return value  # what nearly every value is: nothing to escape or cut
    text = _UNPRINTABLE.sub(_escape, value[: limit + 1])
    if len(text) > limit or len(value) > limit:
        text = text[: limit - 1] + CLAMPED
    return text


def _recordable_event(event: AuditInput) -> AuditInput:
    """The event with every field that may come from a request made recordable (see
    `recordable`): a request is audited whatever it carried (GB/T 22239-2019 8.1.4.3 a: audit
    covers every user and every interaction), and never makes the trail fail or bloat."""
    limit = FIELD_LIMITS
    made = copy.copy(event)
    made.subtype = recordable(event.subtype, 64) or ""
    made.actor = _recordable_actor_of(event.actor)
    made.client_address = recordable(event.client_address, limit["client_address"])
    made.query = recordable(event.query, limit["query"])
    made.description = recordable(event.description, limit["description"])
    made.user_agent = recordable(event.user_agent, limit["user_agent"])
    made.patient_id, made.entity, made.extra_entities, made.request_id = _recordable_targets(event)
    return made


def _recordable_targets(
    event: AuditInput,
) -> tuple[str | None, str | None, list[str], str | None]:
    """What of an event names the records it touched and its request, made recordable: its
    patient, its entity, at most `MAX_EXTRA` further entities and its request id (the fields
    that differ between events of one caller; `_unlinked` makes only these per event)."""
    limit = FIELD_LIMITS
    return (
        recordable(event.patient_id, limit["patient_id"]),
        recordable(event.entity, limit["entity"]),
        [recordable(e, limit["entity"]) or "" for e in event.extra_entities[:MAX_EXTRA]],
        recordable(event.request_id, limit["request_id"]),
    )


def _recordable_actor_of(actor: AuditActor | None) -> AuditActor | None:
    """The actor made recordable: the same few accounts act again and again (every event of
    a search, every request of a client), so each is made once and kept (`_recordable_actor`)
    - unless a field is too long (a user name typed at a failed login): kept, it would hold
    what an unauthenticated caller sent."""
    if actor is None:
        return None
    fields = ("username", "hospital_id", "role", "practitioner_id")
    if any(len(getattr(actor, f) or "") > FIELD_LIMITS[f] for f in fields):
        return _recordable_actor.__wrapped__(actor)
    return _recordable_actor(actor)


@lru_cache(maxsize=1024)
def _recordable_actor(actor: AuditActor) -> AuditActor:
    limit = FIELD_LIMITS
    return dataclasses.replace(
        actor,
        username=recordable(actor.username, limit["username"]) or "",
        hospital_id=recordable(actor.hospital_id, limit["hospital_id"]),
        role=recordable(actor.role, limit["role"]),
        practitioner_id=recordable(actor.practitioner_id, limit["practitioner_id"]),
    )


def build_event(
    event: AuditInput, *, event_id: str, recorded: datetime, server: str
) -> dict[str, Any]:
    """The AuditEvent resource of `event`, with what came from the request made recordable."""
    event = _recordable_event(event)
    agents = _agents(event.actor, event.client_address, event.user_agent, server)
    return _resource(event, event_id, instant(recorded), agents, _source(server))


def _resource(
    event: AuditInput,
    event_id: str,
    recorded: str,
    agents: list[dict[str, Any]],
    source: dict[str, Any],
) -> dict[str, Any]:
    """The AuditEvent of a recordable `event`, with its agents and source as given (the parts
    that every event of one caller shares; `_chain` makes them once per batch)."""
    system, code, display = EVENT_TYPES[event.type]
    subtype_system = RESTFUL if event.type == "rest" else DCM
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": event_id,
        "type": {"system": system, "code": code, "display": display},
        "subtype": [{"system": subtype_system, "code": event.subtype}],
        "action": event.action,
        "recorded": recorded,
        "outcome": event.outcome,
    }
    if event.description:
        resource["outcomeDesc"] = event.description
    resource["agent"] = agents
    resource["source"] = source
    entities = [
        *_target_entities(event.patient_id, [event.entity, *event.extra_entities]),
        *_query_entities(event.query),
        *_request_entities(event.request_id),
    ]
    if entities:
        resource["entity"] = entities
    return resource


def _target_entities(patient_id: str | None, refs: list[str | None]) -> list[dict[str, Any]]:
    """The entities of the records an event touched: the patient first (BALP's patient
    entity), then each other record once."""
    entities: list[dict[str, Any]] = []
    if patient_id:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient_id}"},
                "type": _entity_type("1", "Person"),
                "role": _object_role("1", "Patient"),
            }
        )
    for ref in refs:
        if ref and ref != f"Patient/{patient_id}":
            entities.append(
                {
                    "what": {"reference": ref},
                    "type": _entity_type("2", "System Object"),
                    "role": _object_role("4", "Domain Resource"),
                }
            )
    return entities


def _query_entities(query: str | None) -> list[dict[str, Any]]:
    """The query entity of a search (BALP: the query, base64)."""
    if query is None:
        return []
    return [
        {
            "type": _entity_type("2", "System Object"),
            "role": _object_role("24", "Query"),
            "query": base64.b64encode(query.encode()).decode(),
        }
    ]


def _request_entities(request_id: str | None) -> list[dict[str, Any]]:
    """BALP's transaction entity: the log line of the same request carries this id."""
    if not request_id:
        return []
    return [
        {
            "what": {"identifier": {"value": request_id}},
            "type": {
                "system": BALP_ENTITY_TYPE,
                "code": "XrequestId",
                "display": "transport specific unique identifier where http X-Request-Id is used",
            },
        }
    ]


def _agents(
    actor: AuditActor | None, client_address: str | None, user_agent: str | None, server: str
) -> list[dict[str, Any]]:
    """The agents of an event (BALP): the user who asked, from where and with what, and this
    server as the source role."""
    user: dict[str, Any] = {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "code": "IRCP",
                    "display": "information recipient",
                }
            ]
        },
        "requestor": True,
    }
    if actor is not None:
        who: dict[str, Any] = {
            "identifier": {"system": USER_SYSTEM, "value": actor.username},
            "display": actor.username,
        }
        if actor.practitioner_id:
            who["reference"] = f"Practitioner/{actor.practitioner_id}"
        user["who"] = who
        if actor.role:
            user["role"] = [{"coding": [{"system": ROLE_SYSTEM, "code": actor.role}]}]
        if actor.hospital_id:
            user["extension"] = [
                {
                    "url": HOSPITAL_EXTENSION,
                    "valueReference": {"reference": f"Organization/{actor.hospital_id}"},
                }
            ]
    else:
        user["who"] = {"display": "anonymous"}
    if client_address:
        user["network"] = {"address": client_address, "type": "2"}
    if user_agent:
        user["name"] = user_agent
    server_agent = {
        "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
        "who": {"display": server},
        "requestor": False,
        "network": {"address": server, "type": "5"},
    }
    return [user, server_agent]


def _source(server: str) -> dict[str, Any]:
    return {
        "observer": {"display": server},
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server",
            }
        ],
    }


def _entity_type(code: str, display: str) -> dict[str, str]:
    return {
        "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
        "code": code,
        "display": display,
    }


def _object_role(code: str, display: str) -> dict[str, str]:
    return {
        "system": "http://terminology.hl7.org/CodeSystem/object-role",
        "code": code,
        "display": display,
    }


def canonical(resource: dict[str, Any]) -> str:
    """The resource as the chain hashes it: JSON, keys sorted, no spaces, not ASCII-escaped."""
    return _json(resource)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical_with(resource: dict[str, Any], written: dict[str, str]) -> str:
    """`canonical(resource)`, with the values of the top-level keys in `written` given already
    as canonical JSON (the same text, made once for many events): keys sorted as
    `json.dumps(sort_keys=True)` sorts them."""
    return (
        "{"
        + ",".join(
            f'"{key}":{written[key] if key in written else _json(value)}'
            for key, value in sorted(resource.items())
        )
        + "}"
    )


def chain_hash(seq: int, prev_hash: str, content: str) -> str:
    return hashlib.sha256(f"{seq}\n{prev_hash}\n{content}".encode()).hexdigest()


#: How the server names itself in the AuditEvents it writes (agent and source).
SERVER_NAME = "alliance"
#: Where `append` finds the trail's anchor in `Session.info` (put there by the wiring through
#: `Database.info`; see alliance.audit.anchor).
ANCHOR_INFO = "alliance_audit_anchor"


class Anchoring(Protocol):
    """What `append` needs of the anchor (alliance.audit.anchor.Anchor)."""

    every: int

    def reached(self, seq: int, digest: str) -> None: ...


def stamped(events: list[AuditInput]) -> list[AuditInput]:
    """The events, those without a request id given the id of the request being served (in
    the thread that serves it: a batch is written by whichever request's thread has the
    turn, see `GroupCommit`)."""
    serving = trace.current()
    if serving is None:
        return events
    return [
        e if e.request_id else dataclasses.replace(e, request_id=serving.request_id) for e in events
    ]


def append(session: Session, events: list[AuditInput], *, server: str = SERVER_NAME) -> int:
    """Append events to the chain in the caller's transaction (they commit with it); returns
    the position of the last one. The lock is held until that transaction ends (on PostgreSQL
    it is taken inside `audit_append`, migration 0012, and is transaction-scoped all the same).
    When the appended records reach a multiple of the anchor's N, its checkpoint is written once
    the transaction has committed (alliance.audit.anchor explains why then)."""
    if not events:
        return 0
    return _chain(session, stamped(events), server)


#: The end of the chain, and the insert of its new links: built once, not per append. The
#: insert is of the table (Core), executed with a list of rows: one executemany of one
#: compiled statement, without the ORM's bulk-insert bookkeeping per row.
_LAST_LINK = select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
_INSERT_LINKS = insert(cast(Table, AuditRecord.__table__))
#: PostgreSQL: the chain's lock, end, hashes and insert in one statement (migration 0012's
#: function), given the batch as one JSON array of rows (made by json.dumps in C: a text array
#: parameter would have every quote of every AuditEvent escaped in Python).
_APPEND_ON_SERVER = text("SELECT link_seq, link_hash FROM audit_append(:lock_key, :at, :batch)")
_AUDIT_LOCK_KEY = lock_key(AUDIT_LOCK)


def _chain(session: Session, events: list[AuditInput], server: str) -> int:
    """Append `events` to the chain in `session`'s transaction; the position of the last."""
    recorded = clock.now()
    rows = _unlinked(events, recorded, server)
    if session.get_bind().dialect.name == "postgresql":
        batch = json.dumps(rows, ensure_ascii=False)
        params = {"lock_key": _AUDIT_LOCK_KEY, "at": recorded, "batch": batch}
        links = [
            (int(seq), str(digest)) for seq, digest in session.execute(_APPEND_ON_SERVER, params)
        ]
    else:
        # SQLite: the write transaction holds the database's one writer lock already.
        last = session.execute(_LAST_LINK).first()
        seq, prev = (last[0], last[1]) if last else (0, GENESIS_HASH)
        links = []
        for row in rows:
            seq += 1
            digest = chain_hash(seq, prev, row["content"])
            row.update(seq=seq, recorded=recorded, prev_hash=prev, hash=digest)
            links.append((seq, digest))
            prev = digest
        session.execute(_INSERT_LINKS, rows)
    after_commit(session, partial(metrics.AUDIT_APPENDS.inc, len(links)))
    anchor: Anchoring | None = session.info.get(ANCHOR_INFO)
    first, last_seq = links[0][0], links[-1][0]
    if anchor is not None and anchor.every > 0:
        # Did this append reach a multiple of N? Arithmetic on what was just written: no query,
        # no lock beyond the one held; the checkpoint itself is written after the commit.
        mark = last_seq - last_seq % anchor.every
        if mark >= first:
            after_commit(session, partial(anchor.reached, mark, links[mark - first][1]))
    return last_seq


@dataclass(frozen=True)
class _Shape:
    """What the events of one caller share, made once: everything but the records touched,
    the request and the id (a search writes one event per patient found, all alike but that;
    a client's reads are alike but for the record and the request)."""

    resource: dict[str, Any]  # the AuditEvent less its id, recorded time and entities
    written: dict[str, str]  # the canonical JSON of its other top-level values
    query: list[dict[str, Any]]  # the query entity, if any
    columns: dict[str, Any]  # the searchable columns the agents and codes give


#: Shapes made, by what they were made of (`_shape_of`).
_shapes: dict[tuple[Any, ...], _Shape] = {}
#: Most shapes kept by one process; past it the cache starts again (a caller-given user agent,
#: query or address makes a shape of its own, so what is kept stays bounded).
_KEPT_SHAPES = 256


def _shape_of(event: AuditInput, server: str) -> _Shape:
    """The shape of `event` (see `_Shape`), made recordable once and kept."""
    key = (
        event.type,
        event.subtype,
        event.action,
        event.outcome,
        event.actor,
        event.client_address,
        event.query,
        event.description,
        event.user_agent,
        server,
    )
    shape = _shapes.get(key)
    if shape is not None:
        return shape
    common = _recordable_event(
        dataclasses.replace(event, entity=None, patient_id=None, extra_entities=[], request_id=None)
    )
    agents = _agents(common.actor, common.client_address, common.user_agent, server)
    resource = _resource(common, "", "", agents, _source(server))
    resource.pop("entity", None)
    written = {
        key: _json(value) for key, value in resource.items() if key not in ("id", "recorded")
    }
    shape = _Shape(resource, written, _query_entities(common.query), _agent_columns(resource))
    if len(_shapes) >= _KEPT_SHAPES:
        _shapes.clear()
    _shapes[key] = shape
    return shape


def _unlinked(events: list[AuditInput], recorded: datetime, server: str) -> list[dict[str, Any]]:
    """The rows of `events`, all but their place in the chain (seq, prev_hash, hash) and the
    time (`recorded`), which the chain's writer sets. Each row's content is exactly
    `canonical(build_event(...))` of its event; what events share (`_Shape`) is made and
    written as JSON once, and per event only its records, request and id."""
    when = {"recorded": _json(instant(recorded))}
    randomness = os.urandom(16 * len(events))
    rows: list[dict[str, Any]] = []
    for n, event in enumerate(events):
        shape = _shape_of(event, server)
        patient_id, entity, extra, request_id = _recordable_targets(event)
        entities = [
            *_target_entities(patient_id, [entity, *extra]),
            *shape.query,
            *_request_entities(request_id),
        ]
        event_id = str(uuid.UUID(bytes=randomness[16 * n : 16 * n + 16], version=4))
        resource = {**shape.resource, "id": event_id}
        if entities:
            resource["entity"] = entities
        rows.append(
            {
                "id": event_id,
                "content": _canonical_with(resource, {**shape.written, **when}),
                **shape.columns,
                **_entity_columns(entities),
            }
        )
    return rows


@dataclass(eq=False)
class _Queued:
    """One caller's events waiting for the trail, and what became of them."""

    events: list[AuditInput]
    settled: bool = False
    failure: BaseException | None = None


class GroupCommit:
    """The AuditEvents of concurrent units of work, appended to the chain as one batch (group
    commit, as databases commit their logs): one lock on the chain, one read of its end, one
    hash pass, one INSERT and one commit for every caller queued at that moment. On PostgreSQL
    that is one statement, run in autocommit (migration 0012's `audit_append`), so the chain's
    lock is held only while the server runs it and commits; on SQLite, one write transaction.

    A caller queues its events and waits for its turn at the trail. Whoever gets the turn
    takes everything queued by then (its own events, and those of the callers that arrived
    while the previous batch was being written) and appends it in a transaction of its own;
    the callers whose events it wrote find them settled when their turn comes and return at
    once. `append` returns only after the batch holding the caller's events has committed, so
    a response is never sent before its AuditEvent is durable, and a crash loses no record of
    an answered request. Batches of several processes (workers) are serialised by the
    chain's lock (`append`), so the trail stays one verifiable sequence. A batch that cannot
    be written fails every caller in it with 503 (GB/T 22239-2019 8.1.4.3: no interaction
    goes unaudited)."""

    def __init__(self, db: Database, *, server: str = SERVER_NAME) -> None:
        self.db = db
        self.server = server
        self._queued: list[_Queued] = []
        #: Guards the queue and `_writing`; waited on by the callers whose turn has not come.
        self._changed = threading.Condition()
        self._writing = False

    def append(self, events: list[AuditInput]) -> None:
        """Append `events` and return once they are committed; `Unavailable` if they cannot
        be."""
        if not events:
            return
        mine = _Queued(stamped(events))
        with self._changed:
            self._queued.append(mine)
            while self._writing and not mine.settled:
                self._changed.wait()
            batch: list[_Queued] = []
            if not mine.settled:
                self._writing = True
                batch, self._queued = self._queued, []
        if batch:
            self._write(batch)
        if mine.failure is not None:
            raise Unavailable(AUDIT_UNAVAILABLE) from mine.failure

    def _write(self, batch: list[_Queued]) -> None:
        failure: BaseException | None = None
        try:
            # One statement on PostgreSQL (migration 0012's function), committed as it ends.
            with self.db.transaction(write=True, one_statement=True) as session:
                _chain(session, [e for queued in batch for e in queued.events], self.server)
        except Exception as exc:
            log.exception("the audit trail cannot be written")
            failure = exc
        except BaseException as exc:  # the thread is being stopped: none of them was written
            failure = exc
            raise
        finally:
            with self._changed:
                for queued in batch:
                    queued.failure = failure
                    queued.settled = True
                self._writing = False
                self._changed.notify_all()


#: What a caller hears when its AuditEvent cannot be written (nothing it asked is answered).
AUDIT_UNAVAILABLE = "the audit trail cannot be written; nothing was done"


def _columns(resource: dict[str, Any]) -> dict[str, Any]:
    """The searchable columns, derived from the AuditEvent (and re-derived by `verify`)."""
    return {**_agent_columns(resource), **_entity_columns(resource.get("entity", []))}


def _agent_columns(resource: dict[str, Any]) -> dict[str, Any]:
    """The columns the AuditEvent's codes and requesting agent give."""
    user = resource["agent"][0]
    who = user.get("who", {})
    hospital = None
    for ext in user.get("extension", []):
        if ext["url"] == HOSPITAL_EXTENSION:
            hospital = ext["valueReference"]["reference"].removeprefix("Organization/")
    role = user.get("role", [{}])[0].get("coding", [{}])[0].get("code") if "role" in user else None
    return {
        "type": resource["type"]["code"],
        "subtype": resource["subtype"][0]["code"],
        "action": resource["action"],
        "outcome": resource["outcome"],
        "username": who.get("identifier", {}).get("value"),
        "hospital_id": hospital,
        "role": role,
        "practitioner_id": (who.get("reference") or "").removeprefix("Practitioner/") or None,
        "client_address": user.get("network", {}).get("address"),
    }


def _entity_columns(entities: list[dict[str, Any]]) -> dict[str, Any]:
    """The columns the AuditEvent's entities give: its patient, and the record touched (the
    first other one, else the patient)."""
    patient = None
    entity = None
    for e in entities:
        ref = e.get("what", {}).get("reference")
        if ref is None:
            continue
        if e["role"]["code"] == "1":
            patient = ref.removeprefix("Patient/")
        elif entity is None:
            entity = ref
    return {"entity": entity or (f"Patient/{patient}" if patient else None), "patient_id": patient}


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify(session: Session, *, batch: int = 5000) -> VerifyResult:
    """Walk the chain from the start; name the first row that does not match."""
    expected_seq, prev, checked = 1, GENESIS_HASH, 0
    for row in _rows_in_order(session, batch):
        problem = None
        if row.seq != expected_seq:
            problem = f"row {expected_seq} is missing (found {row.seq} next)"
            bad = expected_seq
        elif row.prev_hash != prev:
            problem = "its previous-hash does not match the row before it"
        elif chain_hash(row.seq, row.prev_hash, row.content) != row.hash:
            problem = "its content does not match its hash"
        else:
            try:
                derived = _columns(json.loads(row.content))
            except (ValueError, KeyError, IndexError, TypeError):
                derived = {}
            changed = [c for c in AUDIT_COLUMNS if getattr(row, c) != derived.get(c)]
            if changed:
                problem = f"its column(s) {', '.join(changed)} do not match its content"
        if problem:
            return VerifyResult(
                False, checked, row.seq if row.seq == expected_seq else bad, problem
            )
        checked += 1
        expected_seq += 1
        prev = row.hash
    return VerifyResult(True, checked)


def _rows_in_order(session: Session, batch: int) -> Iterator[AuditRecord]:
    after = 0
    while True:
        rows = list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.seq > after)
                .order_by(AuditRecord.seq)
                .limit(batch)
            )
        )
        if not rows:
            return
        yield from rows
        after = rows[-1].seq
        session.expunge_all()


def search_events(
    session: Session,
    conditions: list[ColumnElement[bool]],
    *,
    newest_first: bool = True,
    limit: int | None = None,
    offset: int = 0,
    count: bool = False,
) -> tuple[list[AuditRecord], int | None]:
    """Rows meeting every condition, newest first by default, and their number when `count`
    is asked."""
    query = select(AuditRecord).where(*conditions)
    total = None
    if count:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    order = AuditRecord.seq.desc() if newest_first else AuditRecord.seq.asc()
    query = query.order_by(order).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query)), total


def audit_conditions(filters: list[Filter]) -> list[ColumnElement[bool]]:
    """The AuditEvent search (parsed by alliance.fhir.search; fhir_mappings.audit declares its
    parameters) over the trail's columns: every filter holds, a filter's values are
    alternatives."""
    return [_audit_condition(f) for f in filters]


#: Token parameters and the column holding their code. Each column holds codes of one system
#: per event type, so the system a client writes is not compared.
_TOKEN_COLUMNS: dict[str, Any] = {
    "altid": AuditRecord.username,
    "agent-role": AuditRecord.role,
    "subtype": AuditRecord.subtype,
    "outcome": AuditRecord.outcome,
    "action": AuditRecord.action,
    "type": AuditRecord.type,
}


def _audit_condition(f: Filter) -> ColumnElement[bool]:
    if f.name == "_id":
        return AuditRecord.id.in_(f.values)
    if f.param.type == "date":  # date and _lastUpdated: when it was recorded
        recorded = AuditRecord.recorded
        return or_(false(), *(d.condition(recorded, recorded) for d in f.dates))
    if f.param.type == "token":
        column = _TOKEN_COLUMNS[f.name]
        codes = [column == t.code if t.code else column.is_not(None) for t in f.tokens]
        matched = or_(false(), *codes)
        return or_(column.is_(None), not_(matched)) if f.modifier == "not" else matched
    if f.param.type == "string":  # address (FHIR R4 AuditEvent: a string parameter)
        column = AuditRecord.client_address
        if f.modifier == "exact":
            return column.in_(f.values)
        patterns = (func.lower(column).like(string_pattern(v, f.modifier), "\\") for v in f.values)
        return or_(false(), *patterns)
    return or_(false(), *(_reference(f.name, t, i) for t, i in f.references))


def _reference(name: str, rtype: str | None, rid: str) -> ColumnElement[bool]:
    if name == "agent":  # a Practitioner, or a user by account name
        if rtype == "Practitioner":
            return AuditRecord.practitioner_id == rid
        return AuditRecord.username == rid if rtype is None else false()
    if name == "entity":
        if rtype is None:
            return AuditRecord.entity.endswith(f"/{rid}", autoescape=True)
        return AuditRecord.entity == f"{rtype}/{rid}"
    column, wanted = {
        "hospital": (AuditRecord.hospital_id, "Organization"),
        "patient": (AuditRecord.patient_id, "Patient"),
    }[name]
    return column == rid if rtype in (None, wanted) else false()
