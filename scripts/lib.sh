# Shared by scripts/test and scripts/demo: set up a fresh Debian 12 machine
# (Python venv with the pinned requirements, a local RabbitMQ) and tear down
# only what we started.
# shellcheck shell=bash

CUCKOODIST_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CUCKOODIST_VENV:-$CUCKOODIST_ROOT/.venv}"
STARTED_RABBITMQ=0

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "==> installing ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

ensure_venv() {
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.requirements.sha256"
    local want
    want="$(cat "$CUCKOODIST_ROOT/requirements.txt" "$CUCKOODIST_ROOT/requirements-test.txt" | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing pinned requirements into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$CUCKOODIST_ROOT/requirements-test.txt"
        echo "$want" > "$stamp"
    fi
}

rabbitmq_answers() {
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

ensure_rabbitmq() {
    if rabbitmq_answers; then
        return
    fi
    apt_install rabbitmq-server
    echo "==> starting RabbitMQ"
    as_root rabbitmq-server -detached
    STARTED_RABBITMQ=1
    for _ in $(seq 1 60); do
        if rabbitmq_answers && as_root rabbitmqctl -q await_startup >/dev/null 2>&1; then
            return
        fi
        sleep 1
    done
    echo "RabbitMQ did not start on 127.0.0.1:5672" >&2
    exit 1
}

stop_started_rabbitmq() {
    if [ "$STARTED_RABBITMQ" -eq 1 ]; then
        echo "==> stopping the RabbitMQ we started"
        as_root rabbitmqctl -q stop >/dev/null 2>&1 || true
    fi
}
