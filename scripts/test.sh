#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine with Python 3.11:
# creates .venv, installs Channel with its dev extras, runs lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet -e '.[dev]'

echo "== ruff"
.venv/bin/ruff check channel sdk_client stress tests scripts
echo "== mypy --strict (channel/wire, sdk_client)"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
