"""The `alliance` command. Every sub-command reads the same settings (ALLIANCE_*)."""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from alliance.audit.service import AuditActor, AuditInput
from alliance.config import Settings, get_settings
from alliance.errors import AllianceError

if TYPE_CHECKING:
    from alliance.audit.anchor import Anchor
    from alliance.db import Database


def _serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    print(f"Serving the alliance at http://{args.host}:{args.port}/")
    print(f"  FHIR R4:  http://{args.host}:{args.port}/fhir/metadata")
    print(f"  API docs: http://{args.host}:{args.port}/docs")
    print(f"  DICOMweb: http://{args.host}:{args.port}/dicomweb")
    if settings.demo:
        print("  Demo accounts (password alliance-demo): dr.xinyuan.people, sp.subei, auditor, ...")
    if settings.dicom_port is not None:
        # One receiver per deployment, in this (the supervising) process: with --workers N,
        # uvicorn's N worker processes could not all listen on the DICOM port.
        _start_scp(settings, settings.dicom_host, settings.dicom_port, block=False)
    serve_app("server.app:create_app", args.host, args.port, args.workers, settings)
    return 0


def _worker(_args: argparse.Namespace) -> int:
    """Deliver notifications until stopped (SIGTERM or Ctrl-C): for deployments whose API
    processes run with ALLIANCE_NOTIFY_WORKER=false, or beside them; any number of these
    share the work (alliance.notify.worker)."""
    import signal
    import threading

    from alliance.db import Database
    from alliance.fhir.store import FhirStore
    from fhir_mappings import build_registry
    from server.notify import build_worker

    settings = get_settings()
    db = Database(settings.database_url)
    store = FhirStore(
        build_registry(settings), base_url=settings.fhir_base, server_url=settings.base_url
    )
    worker = build_worker(settings, db, store, name="worker")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker.start()
    print("Delivering notifications; stop with Ctrl-C or SIGTERM", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        worker.stop()
        db.dispose()
    return 0


def _metrics_folder(workers: int) -> str | None:
    """With several workers, `/metrics` must add up every worker's counts: prometheus-client's
    multiprocess mode, each worker writing to files in PROMETHEUS_MULTIPROC_DIR. The folder is
    made here (emptied when given: counts of a previous run would add up too) before uvicorn
    starts the workers, which read the variable when they import prometheus-client. Returns the
    folder to remove at exit when it was made here."""
    if workers <= 1:
        return None
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.db"):
            old.unlink()
        return None
    made = tempfile.mkdtemp(prefix="alliance-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made


def serve_app(factory: str, host: str, port: int, workers: int, settings: Settings) -> None:
    """Serve the app `factory` ("module:function") as `alliance serve` does, until stopped:
    uvicorn with `workers` processes, the JSON logs, no access log line, the shutdown grace.
    (bench/unaudited_floor.py serves the shipped app plus one route this way.)"""
    import uvicorn

    from server.logs import logging_config

    metrics_dir = _metrics_folder(workers)
    try:
        uvicorn.run(
            factory,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # ForwardedMiddleware believes proxy headers from ALLIANCE_TRUSTED_PROXIES alone.
            proxy_headers=False,
            log_config=logging_config(),
            access_log=False,
            # On SIGTERM uvicorn stops taking connections and waits for the requests under way;
            # a live notice stream would hold it for minutes. After this long what is left is
            # cancelled: a STOW part cut off is not stored (the client sends it again), a stream
            # reconnects with Last-Event-ID and loses nothing.
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _start_scp(settings: Settings, host: str, port: int, *, block: bool) -> None:
    from server.dicom import build_scp

    scp = build_scp(settings)
    peers = ", ".join(f"{ae} ({h})" for ae, h in settings.calling_ae_hospitals.items()) or "none"
    print(f"  DICOM C-STORE: {settings.dicom_ae_title}@{host}:{port}; calling AE titles: {peers}")
    scp.start(host, port, block=block)


def _dicom_scp(args: argparse.Namespace) -> int:
    settings = get_settings()
    port = args.port if args.port is not None else settings.dicom_port
    if port is None:
        print("error: give --port or set ALLIANCE_DICOM_PORT", file=sys.stderr)
        return 2
    _start_scp(settings, args.host or settings.dicom_host, port, block=True)
    return 0


def _db_upgrade(_args: argparse.Namespace) -> int:
    from server.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url, settings=settings)
    print("database is at the latest revision")
    return 0


def _seed_demo(_args: argparse.Namespace) -> int:
    from server.demo import seed_demo
    from server.dicom import seed_demo_imaging

    settings = get_settings()
    counts = seed_demo(settings)
    counts["DICOM instance"] = seed_demo_imaging(settings)
    print("demo alliance seeded: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0


def _operator() -> AuditActor:
    """Who ran the command, as the audit trail records them."""
    return AuditActor(f"cli:{getpass.getuser()}", None, "operator", None, "operator")


def _audited(subtype: str, entity: str, description: str) -> AuditInput:
    return AuditInput(
        type="security",
        subtype=subtype,
        action="U" if subtype != "user-create" else "C",
        outcome="0",
        actor=_operator(),
        entity=entity,
        description=description,
    )


def _user(args: argparse.Namespace) -> int:
    from alliance.audit.service import append
    from alliance.security import service

    settings = get_settings()
    db = _anchored_database(settings)
    try:
        with db.transaction(write=True) as session:
            if args.user_command == "create":
                password = None
                if args.password_stdin:
                    password = sys.stdin.readline().rstrip("\n")
                user = service.create_user(
                    session=session,
                    by=service.OPERATOR,
                    username=args.username,
                    hospital_id=args.hospital,
                    role=args.role,
                    password=password,
                    display_name=args.name,
                    practitioner_id=args.practitioner,
                )
                note = "with the password given" if password else "without a password"
                message = (
                    f"account {user.username} ({user.role_name}, {user.hospital_id}) created {note}"
                )
            elif args.user_command in ("lock", "unlock"):
                service.set_locked(
                    session=session,
                    by=service.OPERATOR,
                    username=args.username,
                    locked=args.user_command == "lock",
                )
                message = f"account {args.username} {args.user_command}ed"
            elif args.user_command == "set-role":
                user = service.set_role(
                    session=session, by=service.OPERATOR, username=args.username, role=args.role
                )
                message = f"account {args.username} is now {user.role_name}"
            else:
                given = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
                new = service.reset_password(
                    session=session, by=service.OPERATOR, username=args.username, password=given
                )
                message = f"password of {args.username} reset"
                if given is None:
                    message += f"; the new password (shown once): {new}"
            append(
                session,
                [
                    _audited(
                        f"user-{args.user_command}", f"user/{args.username}", message.split(";")[0]
                    )
                ],
            )
    except AllianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    print(message)
    return 0


def _client(args: argparse.Namespace) -> int:
    from alliance.audit.service import append
    from alliance.security import service

    settings = get_settings()
    db = _anchored_database(settings)
    try:
        with db.transaction(write=True) as session:
            command = args.client_command
            if command == "register":
                secret = service.register_client(
                    session=session,
                    client_id=args.client_id,
                    name=args.name,
                    hospital_id=args.hospital,
                )
                message = f"client {args.client_id} registered; its secret (shown once): {secret}"
            elif command in ("lock", "unlock"):
                service.set_client_active(
                    session=session, client_id=args.client_id, active=command == "unlock"
                )
                message = f"client {args.client_id} {command}ed"
            else:
                secret = service.reset_client_secret(session=session, client_id=args.client_id)
                message = (
                    f"secret of client {args.client_id} reset, its tokens ended; "
                    f"the new secret (shown once): {secret}"
                )
            append(
                session,
                [_audited(f"client-{command}", f"client/{args.client_id}", message.split(";")[0])],
            )
    except AllianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    print(message)
    return 0


def _anchor(settings: Settings) -> Anchor:
    """The database with the audit trail's anchor attached (a command's audit record may be
    the N-th, whose checkpoint is then due)."""
    from alliance.audit.anchor import Anchor
    from alliance.db import Database
    from alliance.storage import open_blob_store

    return Anchor(settings, Database(settings.database_url), open_blob_store(settings.storage_url))


def _anchored_database(settings: Settings) -> Database:
    return _anchor(settings).attach().db


def _backup(args: argparse.Namespace) -> int:
    from server.backup import backup, restore

    settings = get_settings()
    try:
        if args.command == "backup":
            manifest = backup(settings, Path(args.folder))
            print(
                f"backup in {args.folder}: {manifest.audit_records} audit records, "
                f"{manifest.blobs} blobs"
            )
        else:
            manifest = restore(settings, Path(args.folder), force=args.force)
            print(
                f"restored the backup of {manifest.taken} ({manifest.audit_records} audit "
                "records); check it with `alliance audit verify`"
            )
    except AllianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from alliance.audit.anchor import verify_trail
    from alliance.db import Database
    from alliance.storage import open_blob_store

    settings = get_settings()
    try:
        files = [(str(p), Path(p).read_bytes()) for p in args.checkpoint]
        jwks = json.loads(Path(args.jwks).read_bytes()) if args.jwks else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    db = Database(settings.database_url)
    try:
        blobs = None if args.no_blob_store else open_blob_store(settings.storage_url)
        with db.transaction() as session:
            result = verify_trail(session, blobs, files=files, jwks=jwks)
    except AllianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    anchored = result.checkpoints
    if result.chain_ok:
        print(f"hash chain intact: {result.checked} records verified")
    else:
        print(
            f"audit trail BROKEN at record {result.first_bad_seq}: {result.problem} "
            f"({result.checked} records before it verified)",
            file=sys.stderr,
        )
    for problem in anchored.problems:
        print(f"audit trail BROKEN: {problem}", file=sys.stderr)
    latest = anchored.latest
    if latest is None:
        print("no checkpoint found to hold the trail to (write one: alliance audit checkpoint)")
    elif anchored.ok:
        print(
            f"anchored: the checkpoint of {latest['time']} (record {latest['seq']}, signed by "
            f"{latest['kid']}, {latest['source']}) matches the database"
        )
    if result.ok:
        print(f"audit trail intact: {result.checked} records verified")
        return 0
    return 1


def _audit_checkpoint(_args: argparse.Namespace) -> int:
    """Write a checkpoint of the newest record now; print it (JSON) to keep offline."""
    import json

    anchor = _anchor(get_settings())
    try:
        checkpoint = anchor.write_head()
    except AllianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        anchor.db.dispose()
    if checkpoint is None:
        print("the audit trail is empty: nothing to checkpoint", file=sys.stderr)
        return 1
    print(
        f"audit checkpoint written: record {checkpoint.seq}, hash {checkpoint.hash}, "
        f"{checkpoint.time}, signed by {checkpoint.kid}, at {checkpoint.source}",
        file=sys.stderr,
    )
    print(json.dumps(checkpoint.document(), indent=1))
    return 0


def _storage_sweep(args: argparse.Namespace) -> int:
    """Remove orphan blobs, partial uploads and spool files; re-derive stale ImagingStudies."""
    from alliance.db import Database
    from alliance.fhir.store import FhirStore
    from alliance.storage import open_blob_store
    from fhir_mappings import build_registry
    from server.dicom import build_imaging
    from server.sweep import sweep

    settings = get_settings()
    db = Database(settings.database_url)
    try:
        blobs = open_blob_store(settings.storage_url)
        fhir = FhirStore(
            build_registry(settings), base_url=settings.fhir_base, server_url=settings.base_url
        )
        imaging = build_imaging(settings, db, blobs, fhir)
        min_age = settings.sweep_min_age_seconds if args.min_age is None else args.min_age
        report = sweep(db, blobs, imaging, min_age, dry_run=args.dry_run)
    except AllianceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    for line in report.lines():
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alliance", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API and the portal")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=_serve)

    sub.add_parser(
        "worker", help="deliver notifications (FHIR Subscriptions) from the outbox"
    ).set_defaults(func=_worker)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply all migrations").set_defaults(func=_db_upgrade)

    sub.add_parser("seed-demo", help="seed the demo alliance (idempotent)").set_defaults(
        func=_seed_demo
    )

    user = sub.add_parser("user", help="staff accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    create = user_sub.add_parser("create", help="create an account")
    create.add_argument("username")
    create.add_argument("--hospital", required=True, help="Organization id, e.g. xy-people")
    create.add_argument(
        "--role", required=True, help="county-doctor, specialist, hospital-admin, auditor, ..."
    )
    create.add_argument("--name", help="display name")
    create.add_argument("--practitioner", help="Practitioner id of this person")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (otherwise none: reset it to log in)",
    )
    for name, text in (("lock", "lock an account"), ("unlock", "unlock an account")):
        cmd = user_sub.add_parser(name, help=text)
        cmd.add_argument("username")
    set_role = user_sub.add_parser(
        "set-role", help="give an account another role (its tokens and sessions end)"
    )
    set_role.add_argument("username")
    set_role.add_argument("role")
    reset = user_sub.add_parser("reset-password", help="set a new password")
    reset.add_argument("username")
    reset.add_argument(
        "--password-stdin", action="store_true", help="read it from stdin (else a random one)"
    )
    user.set_defaults(func=_user)

    client = sub.add_parser("client", help="partner systems (client_credentials)")
    client_sub = client.add_subparsers(dest="client_command", required=True)
    register = client_sub.add_parser("register", help="register a hospital's system")
    register.add_argument("client_id")
    register.add_argument("--hospital", required=True)
    register.add_argument("--name", required=True)
    for name, text in (
        ("lock", "lock a partner system (its tokens end at once)"),
        ("unlock", "unlock a partner system"),
        ("reset-secret", "a new secret, printed once (its tokens end at once)"),
    ):
        client_sub.add_parser(name, help=text).add_argument("client_id")
    client.set_defaults(func=_client)

    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="walk the hash chain and hold it to its signed checkpoints; exit 1 naming the "
        "first record that does not match, or the records missing or altered",
    )
    verify.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="also hold the trail to a checkpoint kept offline (repeatable)",
    )
    verify.add_argument(
        "--jwks",
        metavar="FILE",
        help="verify checkpoint signatures with this JWK Set kept offline, not the database's keys",
    )
    verify.add_argument(
        "--no-blob-store",
        action="store_true",
        help="use only the --checkpoint files, not the checkpoints in the blob store",
    )
    verify.set_defaults(func=_audit_verify)
    audit_sub.add_parser(
        "checkpoint",
        help="sign and store a checkpoint of the newest record now; print it to keep offline",
    ).set_defaults(func=_audit_checkpoint)
    storage = sub.add_parser("storage", help="the blob store")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True)
    sweep = storage_sub.add_parser(
        "sweep",
        help="remove blobs no record references, interrupted uploads and spool files older "
        "than ALLIANCE_SWEEP_MIN_AGE_SECONDS; re-derive stale ImagingStudy resources",
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="print what would be removed; change nothing"
    )
    sweep.add_argument(
        "--min-age",
        type=int,
        metavar="SECONDS",
        help="only what is older than this (default ALLIANCE_SWEEP_MIN_AGE_SECONDS)",
    )
    sweep.set_defaults(func=_storage_sweep)
    backup = sub.add_parser(
        "backup",
        help="copy the embedded database (SQLite online backup) and blob folder into a new "
        "folder, while the server runs",
    )
    backup.add_argument("folder")
    backup.set_defaults(func=_backup)
    restore = sub.add_parser(
        "restore", help="put a backup back into the configured database and blob folder"
    )
    restore.add_argument("folder")
    restore.add_argument(
        "--force", action="store_true", help="replace the database and blobs that are there"
    )
    restore.set_defaults(func=_backup)
    scp = sub.add_parser(
        "dicom-scp", help="run the DICOM C-STORE receiver alone (PACS and modalities send here)"
    )
    scp.add_argument("--host", help="address to listen on (default ALLIANCE_DICOM_HOST)")
    scp.add_argument("--port", type=int, help="TCP port (default ALLIANCE_DICOM_PORT)")
    scp.set_defaults(func=_dicom_scp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
