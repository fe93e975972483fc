"""Anchoring the audit trail outside the database: signed checkpoints in the blob store.

The hash chain (service.py) shows a row changed, inserted or removed in the middle of the
trail. It cannot show the newest rows removed, nor the chain rewritten from some row on: what
remains is still a valid chain. Someone who holds the database (a copy of the SQLite file, or a
PostgreSQL superuser who drops the append-only triggers) can do both. So every
`ALLIANCE_AUDIT_CHECKPOINT_EVERY` records, when the server stops, and on demand
(`alliance audit checkpoint`), the position and hash of the chain are signed with the server's
Ed25519 key (alliance.security.signing, RFC 8037 JWS) and written to the blob store under
`audit-checkpoints/`, where the database's holder cannot reach, and from where an operator
copies them offline. `verify_checkpoints` then holds the database to what they saw: a chain
shorter than a checkpoint lost its newest records, a different hash at a checkpointed position
means the chain up to it was rewritten (GB/T 22239-2019 8.1.4.3 c: audit records protected from
deletion, modification and overwriting).

When a periodic checkpoint is written: `append` knows the positions it wrote, so it sees with a
little arithmetic, inside the transaction and with no query, whether it crossed a multiple of
N; if so it asks for the checkpoint of that very row (position and hash, which it just
computed) to be written after the transaction commits (`alliance.db.after_commit`). After the
commit, not before and not in the same unit: a checkpoint must only ever name a row that
exists, and a transaction that rolls back after its checkpoint was written would leave one
naming a position that never committed (and that the next append reuses with another hash: a
false alarm forever). And after the commit the audit lock (and SQLite's writer) is released,
so no other request waits while this one signs and talks to S3. The blob-first rule of the
blob store is for rows that point at blobs; here the blob points at a row, so the row comes
first. If the process dies between the commit and the blob, that checkpoint is lost and the
next one, N records on, covers everything before it (each hash covers the whole chain before
it). Writing a checkpoint never fails the request that triggered it: the trail is committed,
and a missing key or store is logged.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from alliance import clock
from alliance.audit.models import AuditRecord
from alliance.audit.service import ANCHOR_INFO, VerifyResult, verify
from alliance.config import Settings
from alliance.db import Database
from alliance.errors import AllianceError, Invalid, NotFound
from alliance.security import signing
from alliance.storage import BlobStore

log = logging.getLogger("alliance.audit")

#: Where checkpoints live in the blob store: `audit-checkpoints/000000000140.json`.
PREFIX = "audit-checkpoints/"
#: The `typ` of a checkpoint's signed payload, so no other signed document passes for one.
PAYLOAD_TYPE = "alliance-audit-checkpoint"
_KEY = re.compile(rf"{re.escape(PREFIX)}(\d{{12,}})\.json")
_HASH = re.compile(r"[0-9a-f]{64}")


def checkpoint_key(seq: int) -> str:
    return f"{PREFIX}{seq:012d}.json"


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint says, once its signature is verified."""

    seq: int
    hash: str
    time: str
    kid: str
    source: str  # the blob key, or the file it was read from
    jws: str  # the signature, whose payload is the above

    def document(self) -> dict[str, Any]:
        """The checkpoint as stored (and as an operator keeps it offline): readable fields for
        people, and the JWS, which alone is trusted."""
        return {
            "typ": PAYLOAD_TYPE,
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "kid": self.kid,
            "jws": self.jws,
        }


def _payload(seq: int, digest: str) -> dict[str, Any]:
    time = clock.now().isoformat(timespec="seconds").replace("+00:00", "Z")
    return {"typ": PAYLOAD_TYPE, "seq": seq, "hash": digest, "time": time}


def read_checkpoint(
    session: Session, data: bytes, source: str, *, jwks: dict[str, Any] | None = None
) -> Checkpoint:
    """The checkpoint in `data` (a document as `Anchor` writes it), its signature verified by
    the public keys the database recorded, or by `jwks` (a JWK Set kept offline) when given.
    `Invalid` says why it cannot be trusted."""
    try:
        document = json.loads(data)
        jws = document["jws"]
        if not isinstance(jws, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise Invalid(f"{source} is not an audit checkpoint") from None
    payload = _verify_offline(jws, jwks) if jwks is not None else signing.verify(session, jws)
    seq, digest, time = payload.get("seq"), payload.get("hash"), payload.get("time")
    if (
        payload.get("typ") != PAYLOAD_TYPE
        or not isinstance(seq, int)
        or seq < 1
        or not isinstance(digest, str)
        or not _HASH.fullmatch(digest)
        or not isinstance(time, str)
    ):
        raise Invalid(f"{source} is signed but is not an audit checkpoint")
    kid = str(jwt.get_unverified_header(jws).get("kid"))
    checkpoint = Checkpoint(seq, digest, time, kid, source, jws)
    readable = {k: document.get(k) for k in ("seq", "hash", "time")}
    if readable != {"seq": seq, "hash": digest, "time": time}:
        raise Invalid(f"{source}: its readable fields differ from what was signed")
    return checkpoint


def _verify_offline(jws: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """Verify with a JWK Set the operator kept (RFC 7517), not the keys in the database: the
    database's holder could have swapped those."""
    try:
        kid = jwt.get_unverified_header(jws).get("kid")
        keys = {k.key_id: k for k in jwt.PyJWKSet.from_dict(jwks).keys}
    except jwt.PyJWTError as exc:
        raise Invalid(f"the signature or the key set is unreadable: {exc}") from None
    if kid not in keys:
        raise Invalid(f"the signature's key {kid!r} is not in the key set given")
    try:
        payload: dict[str, Any] = jwt.decode(
            jws, keys[kid].key, algorithms=[signing.ALGORITHM], options={"verify_aud": False}
        )
    except jwt.PyJWTError as exc:
        raise Invalid(f"the signature does not verify: {exc}") from None
    return payload


class Anchor:
    """Writes the checkpoints of one database's trail to one blob store (see the module
    docstring). `attach` makes `append` find it through the database's sessions."""

    def __init__(self, settings: Settings, db: Database, blobs: BlobStore) -> None:
        self.settings = settings
        self.db = db
        self.blobs = blobs
        #: Write a checkpoint each time the chain reaches a multiple of this (0: never).
        self.every = settings.audit_checkpoint_every

    def attach(self) -> Anchor:
        self.db.info[ANCHOR_INFO] = self
        return self

    def reached(self, seq: int, digest: str) -> None:
        """Called after the commit of the append that wrote record `seq` (a multiple of
        `every`): checkpoint it, logging rather than raising when that cannot be done."""
        try:
            self.write(seq, digest)
        except AllianceError as exc:
            log.warning("audit checkpoint at record %d not written: %s", seq, exc.message)

    def write(self, seq: int, digest: str) -> Checkpoint:
        """Sign and store a checkpoint of record `seq` with hash `digest`."""
        payload = _payload(seq, digest)
        with self.db.transaction(write=True) as session:
            # The key's public half is recorded in this transaction (signing.sign).
            jws = signing.sign(self.settings, session, payload)
        return self._store(payload, jws)

    def write_head(self) -> Checkpoint | None:
        """Checkpoint the newest record (on shutdown and on demand); None when the trail is
        empty."""
        with self.db.transaction(write=True) as session:
            head = session.execute(
                select(AuditRecord.seq, AuditRecord.hash).order_by(AuditRecord.seq.desc()).limit(1)
            ).first()
            if head is None:
                return None
            payload = _payload(head[0], head[1])
            jws = signing.sign(self.settings, session, payload)
        return self._store(payload, jws)

    def _store(self, payload: dict[str, Any], jws: str) -> Checkpoint:
        kid = str(jwt.get_unverified_header(jws).get("kid"))
        key = checkpoint_key(payload["seq"])
        checkpoint = Checkpoint(payload["seq"], payload["hash"], payload["time"], kid, key, jws)
        body = json.dumps(checkpoint.document(), indent=1).encode()
        self.blobs.put(io.BytesIO(body), key=key, content_type="application/json")
        log.info(
            "audit checkpoint: record %d, hash %s, %s, signed by %s, at %s",
            checkpoint.seq,
            checkpoint.hash,
            checkpoint.time,
            kid,
            key,
        )
        return checkpoint


# ---- verification -------------------------------------------------------------------------


@dataclass
class CheckpointsResult:
    """How the database stands against the checkpoints.

    `latest` is the newest checkpoint that verifies; `confirmed_seq` the newest checkpointed
    position the database still matches (everything up to it is as the checkpoint saw it);
    `missing` and `altered` the ranges of records `[first, last]` found missing or changed."""

    ok: bool = True
    read: int = 0
    latest: dict[str, Any] | None = None
    confirmed_seq: int | None = None
    missing: list[int] | None = None
    altered: list[int] | None = None
    problems: list[str] = field(default_factory=list)


def _sources(
    blobs: BlobStore | None, files: Sequence[tuple[str, bytes]]
) -> list[tuple[int, str, bytes | None]]:
    """(position, where, bytes or None when still in the blob store), newest first. Given files
    are read first and come before a blob of the same position."""
    found: list[tuple[int, int, str, bytes | None]] = []
    for name, data in files:
        try:
            seq = int(json.loads(data).get("seq"))
        except (ValueError, TypeError, AttributeError):
            seq = 0
        found.append((seq, 1, name, data))
    if blobs is not None:
        for key in blobs.list_keys(PREFIX):
            match = _KEY.fullmatch(key)
            if match:
                found.append((int(match.group(1)), 0, key, None))
    found.sort(reverse=True)
    return [(seq, name, data) for seq, _, name, data in found]


def verify_checkpoints(
    session: Session,
    blobs: BlobStore | None,
    *,
    files: Sequence[tuple[str, bytes]] = (),
    jwks: dict[str, Any] | None = None,
) -> CheckpointsResult:
    """Hold the trail in the database to its checkpoints: those in the blob store and any
    `files` (name, bytes) an operator kept offline, newest first, until one matches.

    The checkpoints are listed before the database is read, and each is written only after its
    record committed, so a checkpoint written while this runs cannot pass for a missing record.
    In the usual case one checkpoint is read: the newest, whose hash covers every record before
    it. Older ones are read only to narrow down what is missing or altered."""
    result = CheckpointsResult()
    sources = _sources(blobs, files)
    head = session.scalar(select(AuditRecord.seq).order_by(AuditRecord.seq.desc()).limit(1)) or 0
    altered_top: tuple[Checkpoint, str | None] | None = None
    confirmed: Checkpoint | None = None
    for _seq, name, data in sources:
        try:
            raw = data if data is not None else _read_blob(blobs, name)
            checkpoint = read_checkpoint(session, raw, name, jwks=jwks)
        except Invalid as exc:
            result.problems.append(f"checkpoint {name} cannot be trusted: {exc.message}")
            continue
        result.read += 1
        if result.latest is None:
            result.latest = asdict(checkpoint)
        if checkpoint.seq > head:
            if result.missing is None:
                result.missing = [head + 1, checkpoint.seq]
                ends = f"ends at {head}" if head else "holds none"
                result.problems.append(
                    f"records {head + 1}–{checkpoint.seq} are missing: the checkpoint of "
                    f"{checkpoint.time} saw the chain at {checkpoint.seq}, the database {ends}"
                )
            continue
        actual = session.scalar(select(AuditRecord.hash).where(AuditRecord.seq == checkpoint.seq))
        if actual == checkpoint.hash:
            confirmed = checkpoint
            break
        if altered_top is None:
            altered_top = (checkpoint, actual)
    if confirmed is not None:
        result.confirmed_seq = confirmed.seq
    if altered_top is not None:
        top, actual = altered_top
        low = confirmed.seq + 1 if confirmed else 1
        result.altered = [low, top.seq]
        has = f"has {actual}" if actual else "has no such record"
        still = (
            f"; the checkpoint of {confirmed.time} at record {confirmed.seq} still matches"
            if confirmed
            else ""
        )
        result.problems.append(
            f"records {low}–{top.seq} were altered or replaced (at least one of them): the "
            f"checkpoint of {top.time} saw record {top.seq} with hash {top.hash}, the database "
            f"{has}{still}"
        )
    result.ok = not result.problems
    return result


def _read_blob(blobs: BlobStore | None, key: str) -> bytes:
    assert blobs is not None
    try:
        return blobs.read(key)
    except NotFound:
        raise Invalid("it vanished while being read") from None


@dataclass
class TrailResult:
    """The chain (`verify`) and its checkpoints together: `ok` only when both are. The first
    four fields keep the meaning `GET /api/audit/verify` always gave them; `first_bad_seq` and
    `problem` come from the checkpoints when the chain itself is intact."""

    ok: bool
    checked: int
    first_bad_seq: int | None
    problem: str | None
    #: Whether the hash chain itself is intact (`checked` records from the first).
    chain_ok: bool
    checkpoints: CheckpointsResult


def verify_trail(
    session: Session,
    blobs: BlobStore | None,
    *,
    files: Sequence[tuple[str, bytes]] = (),
    jwks: dict[str, Any] | None = None,
) -> TrailResult:
    """Walk the chain and hold it to its checkpoints (`verify`, `verify_checkpoints`)."""
    anchored = verify_checkpoints(session, blobs, files=files, jwks=jwks)
    chain: VerifyResult = verify(session)
    if not chain.ok:
        return TrailResult(
            False, chain.checked, chain.first_bad_seq, chain.problem, False, anchored
        )
    bad = None
    if anchored.altered:
        bad = anchored.altered[0]
    elif anchored.missing:
        bad = anchored.missing[0]
    problem = "; ".join(anchored.problems) or None
    return TrailResult(anchored.ok, chain.checked, bad, problem, True, anchored)
