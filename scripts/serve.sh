#!/usr/bin/env bash
# Run the API and one worker with the same environment; stop both together.
set -euo pipefail
VENV=${VENV:-.venv}
"$VENV/bin/python" -c "from loraq.migrate import upgrade_to_head; upgrade_to_head()"
"$VENV/bin/loraq-worker" &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT INT TERM
"$VENV/bin/loraq-api"
