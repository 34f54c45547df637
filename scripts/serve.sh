#!/usr/bin/env bash
# Run a gateway on a fresh Debian machine with Python 3.11: creates .venv,
# installs Channel, starts `channel serve` with embedded defaults (dev CA and
# certificate, token key, in-memory presence) unless you pass other flags.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# (Re)install when the venv is new or pyproject.toml changed since (a new dependency).
stamp=.venv/.channel-installed
if [ ! -x .venv/bin/channel ] || [ pyproject.toml -nt "$stamp" ]; then
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
    .venv/bin/python -m pip install --quiet -e .
    touch "$stamp"
fi
exec .venv/bin/channel serve --log-text "$@"
