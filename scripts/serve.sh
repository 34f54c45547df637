#!/usr/bin/env bash
# Run a gateway on a fresh Debian machine with Python 3.11: creates .venv,
# installs Channel, starts `channel serve` with embedded defaults (dev CA and
# certificate, token key, in-memory presence) unless you pass other flags.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"  # rustup's cargo builds the native engine
fi
# (Re)install when the venv is new, or pyproject.toml (a new dependency) or the Rust
# engine's sources changed since (the extension is built at install time).
stamp=.venv/.channel-installed
if [ ! -x .venv/bin/channel ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
    || [ -n "$(find native Cargo.toml Cargo.lock -newer "$stamp" -print -quit)" ]; then
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
    .venv/bin/python -m pip install --quiet -e .
    touch "$stamp"
fi
exec .venv/bin/channel serve --log-text "$@"
