"""Rebuilding the search index when the rules that build it change (how strings are
normalised, which forms of a name are indexed), so stored records are found as new ones are.

The index holds what `alliance.fhir.indexing.index_rows` makes of each current version.
`INDEX_VERSION` counts changes to those rules; `alliance db upgrade` (server.migrate) calls
`reindex_if_behind` after the schema migrations, which rebuilds the string index of every
current record once and records the version. Only the string index is rebuilt: version 2
changed only string normalisation and name forms."""

from __future__ import annotations

import json

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from alliance.fhir.indexing import index_rows, insert_index_rows
from alliance.fhir.models import IndexState, ResourceRow, ResourceVersion, StringIndex
from alliance.fhir.registry import Registry

#: 1: the first index. 2: separators in strings written as one '·'; names in Chinese
#: characters indexed in pinyin too; Patient.identity.
INDEX_VERSION = 2
_KEY = "search-index"


def index_version(session: Session) -> int:
    row = session.get(IndexState, _KEY)
    return row.version if row is not None else 1


def reindex_strings(session: Session, registry: Registry, base_url: str) -> int:
    """Rebuild the string index of every current record of every registered type; the number
    of records indexed."""
    done = 0
    for definition in registry.definitions():
        if not any(p.type == "string" for p in definition.search_params):
            continue
        current = session.execute(
            select(ResourceVersion.id, ResourceVersion.content)
            .join(
                ResourceRow,
                (ResourceRow.resource_type == ResourceVersion.resource_type)
                & (ResourceRow.id == ResourceVersion.id)
                & (ResourceRow.version == ResourceVersion.version),
            )
            .where(ResourceRow.resource_type == definition.type, ResourceRow.deleted.is_(False))
        )
        for resource_id, content in current:
            if content is None:
                continue
            session.execute(
                delete(StringIndex).where(
                    StringIndex.resource_type == definition.type,
                    StringIndex.resource_id == resource_id,
                )
            )
            rows = index_rows(definition, resource_id, json.loads(content), base_url)
            insert_index_rows(session, {StringIndex: rows.get(StringIndex, [])})
            done += 1
    return done


def reindex_if_behind(session: Session, registry: Registry, base_url: str) -> int | None:
    """Rebuild what the current rules index differently, if the index is older than them;
    the number of records reindexed, or None when the index was current."""
    if index_version(session) >= INDEX_VERSION:
        return None
    done = reindex_strings(session, registry, base_url)
    state = session.get(IndexState, _KEY)
    if state is None:
        session.add(IndexState(key=_KEY, version=INDEX_VERSION))
    else:
        state.version = INDEX_VERSION
    return done
