#!/bin/sh
# Container entrypoint for the alliance API image.
#
# With no arguments: bring the database to the latest migration, seed the demo
# alliance when demo mode is on, then replace this shell with the server so that
# it is PID 1 and receives `docker stop`'s SIGTERM directly.
# With arguments: run them instead (e.g. `docker compose run --rm api alliance audit verify`),
# without migrating, so operator commands never change the schema behind your back.
set -eu

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

echo "entrypoint: alliance db upgrade"
alliance db upgrade

# Ask the settings object itself whether demo mode is on, so that "true", "1", "yes"...
# mean here exactly what they mean to the application (pydantic's bool parsing).
demo_status=0
python - <<'PY' || demo_status=$?
import sys

from alliance.config import get_settings

sys.exit(0 if get_settings().demo else 3)
PY
case "$demo_status" in
    0)
        echo "entrypoint: ALLIANCE_DEMO is on: alliance seed-demo"
        alliance seed-demo
        ;;
    3)
        echo "entrypoint: ALLIANCE_DEMO is off: no demo data"
        ;;
    *)
        echo "entrypoint: could not read the settings (exit $demo_status)" >&2
        exit "$demo_status"
        ;;
esac

echo "entrypoint: alliance serve --workers ${ALLIANCE_WORKERS:-2}"
exec alliance serve --host 0.0.0.0 --port 8000 --workers "${ALLIANCE_WORKERS:-2}"
