"""Database: engine, the declarative base, and one transaction per unit of work.

SQLite (the embedded default) runs in WAL mode with foreign keys on. Its write transactions
start with `BEGIN IMMEDIATE`, so a unit of work that reads and then writes (a conditional
create, a state move) holds the single writer lock from its first statement and cannot lose a
race to another writer between its read and its write. PostgreSQL (psycopg 3) gets the same
guarantee from `named_lock`, a transaction-scoped advisory lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    DateTime,
    Dialect,
    Engine,
    MetaData,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, ORMExecuteState, Session, sessionmaker

from alliance.errors import Conflict, Unavailable

log = logging.getLogger("alliance.db")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """An instant, stored in UTC and always returned timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an instant is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


_WRITE_OPTION = "alliance_write"
#: `Session.info` key of a unit of work opened read-only (`Database.transaction(read_only=...)`).
_READ_ONLY = "alliance_read_only"


class WriteAttempted(Exception):
    """A unit of work opened read-only tried to write (an INSERT, UPDATE or DELETE, a flush
    of changed objects, or a statement that is not a SELECT, such as a lock). Nothing was
    written: the unit rolls back, and its caller runs it again as a write unit of work."""


def _refuse_write_statements(state: ORMExecuteState) -> None:
    if state.session.info.get(_READ_ONLY) and (
        not state.is_select or getattr(state.statement, "_for_update_arg", None) is not None
    ):
        # A locking read (SELECT ... FOR UPDATE) is the first step of a write: the lock would
        # not outlast its statement in a read-only unit of work on PostgreSQL (autocommit).
        raise WriteAttempted(f"{type(state.statement).__name__} in a read-only unit of work")


def _refuse_flushed_writes(session: Session, _context: Any, _instances: Any) -> None:
    if session.info.get(_READ_ONLY) and (
        session.new or session.deleted or any(session.is_modified(o) for o in session.dirty)
    ):
        raise WriteAttempted("a flush of changed records in a read-only unit of work")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event, not the driver, decide how a transaction starts.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        # String-search columns hold case-folded text and needles are folded the same way, so
        # a case-sensitive LIKE matches the same rows and lets SQLite use the index for the
        # prefix match of FHIR string search.
        cur.execute("PRAGMA case_sensitive_like=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _hung_up(dbapi_conn: Any) -> bool:
    """Whether the server has closed this idle PostgreSQL connection (a backend terminated,
    the server restarted): its socket is readable while no query is outstanding. A server
    says nothing on an idle connection unless it is ending it (FATAL, then end of file); this
    application LISTENs for nothing. One poll(2) that does not wait, instead of a round trip
    to the server (`pool_pre_ping`) at every checkout."""
    if getattr(dbapi_conn, "closed", False) or getattr(dbapi_conn, "broken", False):
        return True
    try:
        fd = dbapi_conn.pgconn.socket
    except Exception:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


def _replace_hung_up(engine: Engine) -> None:
    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        if _hung_up(dbapi_conn):
            # The pool discards it and checks out another (a new connection if need be).
            raise DisconnectionError("the database server closed this connection")


#: Connections an SQLite engine keeps open: one per thread that may hold a unit of work at
#: once (Starlette's thread pool has 40), so none is closed and opened again under load
#: (opening one sets its PRAGMAs). They are file handles, not server processes.
SQLITE_POOL_SIZE = 40


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for `url` (`sqlite:///...` or `postgresql+psycopg://...`).

    A PostgreSQL connection that the server closed while it sat in the pool is replaced when
    it is next checked out (`_hung_up`); one that fails while in use fails that unit of work
    (503), and SQLAlchemy then discards the pool's other connections of that moment."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_pre_ping=False,
            pool_size=max(pool_size, SQLITE_POOL_SIZE),
            max_overflow=pool_size,
            # The connection used last is taken first: its page cache is the warmest (each
            # connection keeps its own, dropped when another connection has written).
            pool_use_lifo=True,
        )
        _configure_sqlite(engine)
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False)
    _replace_hung_up(engine)
    return engine


class WriterQueue:
    """The queue for SQLite's one writer. SQLite itself makes a writer that finds the database
    locked poll for it with back-off (busy_timeout: sleeps of 1, 2, 5 ... 100 ms), so under
    contention a write waits long after the lock was freed, and the tail latency grows to a
    second. Here the threads of this process queue on a lock, in order, and the processes
    sharing the database file (`alliance serve --workers N`) on an flock(2) of a file beside
    it (`<database>-writer`), which the kernel grants the moment it is released, without
    polling. Both are taken before `BEGIN IMMEDIATE`, so SQLite's own lock is then free at
    once; a process that does not queue here (a command run beside the server) still gets it
    through busy_timeout. An in-memory database has no file and one process."""

    def __init__(self, database: str | None) -> None:
        self._threads = threading.Lock()
        self._path = None
        if database and database != ":memory:" and not database.startswith("file:"):
            self._path = f"{database}-writer"
        self._file: Any = None  # opened at the first write, closed by `close`

    def acquire(self) -> None:
        self._threads.acquire()
        try:
            if self._path is not None:
                if self._file is None:
                    self._file = open(self._path, "a+b")  # noqa: SIM115 -- kept open
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)  # waits without the GIL
        except BaseException:
            self._threads.release()
            raise

    def release(self) -> None:
        try:
            if self._file is not None:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def close(self) -> None:
        with self._threads:
            if self._file is not None:
                self._file.close()
                self._file = None


class Database:
    """The engine and how units of work are opened on it."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size)
        #: Shared with every session of this database as its `Session.info` (the wiring puts
        #: here what kernel code finds through the session, such as the audit anchor).
        self.info: dict[str, Any] = {}
        self._sessions = sessionmaker(
            self.engine, expire_on_commit=False, autoflush=True, info=self.info
        )
        event.listen(self._sessions, "do_orm_execute", _refuse_write_statements)
        event.listen(self._sessions, "before_flush", _refuse_flushed_writes)
        # SQLite has one writer: its units of work queue for it (`WriterQueue`).
        self._writer = WriterQueue(make_url(url).database) if self.is_sqlite else None
        # PostgreSQL: read-only units of work (every audited read, search and history) take a
        # turn here, at most all but two of the pooled connections at once, so that they never
        # open overflow connections (each a new server process, closed again on its return:
        # at 32 clients, ~100 a second), and the trail's group commit and a write always find
        # one in the pool. A read-only unit is never opened inside another unit of work, so
        # a thread waiting here holds no connection: no wait can go round in a cycle.
        self._readers = (
            None if self.is_sqlite else threading.BoundedSemaphore(max(1, pool_size - 2))
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(
        self, *, write: bool = False, read_only: bool = False, one_statement: bool = False
    ) -> Iterator[Session]:
        """One unit of work: commits when the block ends, rolls back if it raises.

        `write=True` on SQLite takes the writer lock at the start (see the module docstring);
        read units of work may still write (an audit row), they just take the lock later.
        `read_only=True` takes no lock at all (on PostgreSQL it runs in autocommit), and refuses
        the first write or locking read with `WriteAttempted` (so that a read which turns out to
        write, such as the owner opening a requested referral, is run again by its caller as a
        write unit of work, instead of upgrading its read to a write halfway, which SQLite
        refuses under contention).

        `one_statement=True`: a write of one statement (the audit trail's group commit). On
        PostgreSQL it runs in autocommit: the statement is its own transaction, which commits
        as it ends, with no BEGIN and COMMIT round trips, and its locks end with it.
        """
        if write and read_only:
            raise ValueError("a unit of work is either a write or read-only")
        # The turn this unit waits for: SQLite's writer, or a PostgreSQL reader's connection.
        turn = self._writer if write else self._readers if read_only else None
        if turn is not None:
            turn.acquire()
        session = self._sessions()
        if read_only:
            session.info[_READ_ONLY] = True
        committed: list[Callable[[], None]] = []
        try:
            if not self.is_sqlite and (read_only or (write and one_statement)):
                # PostgreSQL: each statement on its own, with no BEGIN and COMMIT around them
                # (two round trips of the three a one-query read would cost). Nothing is lost:
                # under READ COMMITTED, PostgreSQL's level here, every statement of a
                # transaction takes its own snapshot all the same; a read-only unit of work
                # writes nothing and holds no lock (`_refuse_write_statements`), and a write of
                # one statement commits with it.
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            elif write:
                session.connection(execution_options={_WRITE_OPTION: True})
            yield session
            session.commit()
            committed = session.info.pop(_AFTER_COMMIT, [])
        except IntegrityError as exc:
            # A constraint the code checks first was broken by a concurrent unit of work.
            session.rollback()
            raise Conflict(
                "the change conflicts with a concurrent one; try again", rule="concurrent-change"
            ) from exc
        except OperationalError as exc:
            session.rollback()
            raise Unavailable(f"the database is not available: {exc.orig}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
            if turn is not None:
                turn.release()
        for callback in committed:
            try:
                callback()
            except Exception:
                # The unit of work has committed: its caller must hear success.
                log.exception("a task run after a commit failed")

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            raise Unavailable(f"the database is not reachable: {exc}") from exc

    def dispose(self) -> None:
        self.engine.dispose()
        if self._writer is not None:
            self._writer.close()


_AFTER_COMMIT = "alliance_after_commit"


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the unit of work of `session` (a `Database.transaction`) has
    committed and let go of its locks and connection; never if it rolls back. For work that
    must see the commit and must not hold the unit's locks (talking to the blob store). A
    failing callback is logged: the unit of work has succeeded all the same."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


def named_lock(session: Session, name: str) -> None:
    """Serialise units of work that share `name` until the current transaction ends.

    PostgreSQL: `pg_advisory_xact_lock`. SQLite: nothing to do, a write transaction already
    holds the database's single writer lock (BEGIN IMMEDIATE).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(name)})


def lock_key(name: str) -> int:
    """The PostgreSQL advisory lock key of `name` (`named_lock`)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
