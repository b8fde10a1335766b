#!/usr/bin/env bash
# Start Scrapyd for Hydra with scrapyd/scrapyd.conf (see scrapyd/README.md).
#
#   SCRAPYD_PASSWORD=... scrapyd/start.sh [extra twistd/scrapyd options]
#
# Refuses to start without SCRAPYD_PASSWORD, so HTTP basic auth is always on.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -z "${SCRAPYD_PASSWORD:-}" ]]; then
    echo "start.sh: SCRAPYD_PASSWORD is unset or empty; refusing to start Scrapyd" \
        "without basic auth. Run: SCRAPYD_PASSWORD=... $0" >&2
    exit 2
fi

# Scrapyd reads ./scrapyd.conf, and its eggs/, logs/ and dbs/ dirs are relative to it.
cd "$here"

if [[ -x ../.venv/bin/scrapyd ]]; then
    exec ../.venv/bin/scrapyd "$@"
fi
if command -v scrapyd >/dev/null 2>&1; then
    exec scrapyd "$@"
fi
echo "start.sh: scrapyd not found (neither ../.venv/bin/scrapyd nor on PATH);" \
    "install it with: pip install -e '.[scrapyd]'" >&2
exit 127
