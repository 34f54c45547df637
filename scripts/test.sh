#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine with Python 3.11:
# installs the servers the tests run for real (Redis, Mosquitto and its clients),
# creates .venv, installs Channel with its dev extras, runs lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages, only when a command is missing (CI runs as root on Debian bookworm).
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)  # redis-server, redis-cli
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)  # + mosquitto_sub, _rr
command -v npm >/dev/null || missing+=(nodejs npm)  # mqtt.js, an MQTT client the tests drive
# The broker itself: stress/compare (and its smoke test) runs it side by side with Channel.
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || missing+=(mosquitto)
# The local fleet (tests/test_fleet.py): namespaces, a balancer, Prometheus and promtool.
command -v ip >/dev/null || missing+=(iproute2)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v promtool >/dev/null || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "== apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# TCP Fast Open for servers too (bit 0x2), so tests/test_fastopen.py can check the
# round trip it saves; only where we may (root), keeping the bits already set.
tfo=/proc/sys/net/ipv4/tcp_fastopen
if [ -w "$tfo" ] && [ $(( $(cat "$tfo") & 3 )) -ne 3 ]; then
    echo "== sysctl net.ipv4.tcp_fastopen=$(( $(cat "$tfo") | 3 )) (was $(cat "$tfo"))"
    echo $(( $(cat "$tfo") | 3 )) > "$tfo" || echo "   (refused: fast-open tests will skip)"
fi

# The native engine is Rust: cargo (rustup's, in ~/.cargo/bin when not on PATH) builds it.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || {
    echo "cargo not found: install Rust (https://rustup.rs) to build the native engine" >&2
    exit 1
}

# mqtt.js for tests/test_mqtt_cli_clients.py, into .tools/node (gitignored), pinned.
MQTT_JS_VERSION=5.16.0
if [ ! -f .tools/node/node_modules/mqtt/package.json ] || \
   [ "$(node -p "require('./.tools/node/node_modules/mqtt/package.json').version")" != "$MQTT_JS_VERSION" ]; then
    echo "== npm install mqtt@$MQTT_JS_VERSION (into .tools/node)"
    mkdir -p .tools/node
    npm install --prefix .tools/node --no-audit --no-fund --silent "mqtt@$MQTT_JS_VERSION"
fi

# The same install script the container image runs (deploy/Dockerfile), editable here.
./deploy/install.sh .venv --editable --extras dev

echo "== ruff"
.venv/bin/ruff check channel sdk_client stress tests scripts
echo "== mypy --strict (channel/wire, sdk_client)"
.venv/bin/mypy
echo "== cargo fmt --check, clippy -D warnings, test (native/: the MMTP core and the engine)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The Python module (py.rs) is behind the `python` feature that maturin turns on:
# linted here too (a check needs no libpython).
cargo clippy -p channel-engine --features python --lib --quiet -- -D warnings
cargo test --workspace --quiet
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
