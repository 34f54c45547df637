#!/usr/bin/env bash
# Run a gateway on a fresh Debian machine with Python 3.11: creates .venv,
# installs Channel, starts `channel serve` with embedded defaults (dev CA and
# certificate, token key, in-memory presence) unless you pass other flags.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/channel ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
    .venv/bin/python -m pip install --quiet -e .
fi
exec .venv/bin/channel serve --log-text "$@"
