#!/bin/sh
# Install Channel from this checkout into a virtual environment (the Rust engine is
# built with cargo). One script for every install, so the image's is the tested one:
#   scripts/test.sh (CI):  deploy/install.sh .venv --editable --extras dev
#   deploy/Dockerfile:     deploy/install.sh /opt/channel/venv
#   a host (systemd):      deploy/install.sh /opt/channel/venv
set -eu
usage="usage: deploy/install.sh VENV_DIR [--editable] [--extras NAME]"
VENV="${1:?$usage}"
shift
EDITABLE=""
EXTRAS=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --editable) EDITABLE="-e" ;;
        --extras) EXTRAS="[$2]"; shift ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
    shift
done
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null
# shellcheck disable=SC2086  # $EDITABLE is one flag or nothing
"$VENV/bin/python" -m pip install --quiet $EDITABLE "$SRC$EXTRAS"
"$VENV/bin/channel" --help >/dev/null
