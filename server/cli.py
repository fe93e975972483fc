"""The `alliance` command. Every sub-command reads the same settings (ALLIANCE_*)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from alliance.config import get_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    print(f"Serving the alliance at http://{args.host}:{args.port}/")
    print(f"  FHIR R4:  http://{args.host}:{args.port}/fhir/metadata")
    print(f"  API docs: http://{args.host}:{args.port}/docs")
    if settings.demo:
        print("  Demo accounts (password alliance-demo): dr.xinyuan.people, sp.subei, auditor, ...")
    uvicorn.run(
        "server.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        log_level="info",
    )
    return 0


def _db_upgrade(_args: argparse.Namespace) -> int:
    from server.migrate import upgrade

    url = get_settings().database_url
    upgrade(url)
    print("database is at the latest revision")
    return 0


def _seed_demo(_args: argparse.Namespace) -> int:
    from server.demo import seed_demo

    counts = seed_demo(get_settings())
    print("demo alliance seeded: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alliance", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the API and the portal")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=_serve)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply all migrations").set_defaults(func=_db_upgrade)

    sub.add_parser("seed-demo", help="seed the demo alliance (idempotent)").set_defaults(
        func=_seed_demo
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
