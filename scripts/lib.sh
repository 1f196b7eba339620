# Shared by scripts/test and scripts/demo: set up a fresh Debian 12 machine
# (python3-venv, a venv with the pinned requirements and cuckoodist itself,
# a local RabbitMQ) and tear down only what we started.
#
# Root is needed only to install what is missing (apt-get) and to start a
# RabbitMQ that is installed but not running. As another user, with all of
# that in place, nothing here asks for root; without sudo, a step that needs
# root stops with a message that says what to install.
# shellcheck shell=bash

CUCKOODIST_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CUCKOODIST_VENV:-$CUCKOODIST_ROOT/.venv}"
STARTED_RABBITMQ=0
STARTED_EPMD=0
APT_UPDATED=0

say() { printf '==> %s\n' "$*"; }

# run_step WHAT CMD...: one line before, the elapsed time after. The
# command's own output goes to a log, shown (its end) only if it fails.
run_step() {
    local what=$1 log start rc=0
    shift
    log=$(mktemp "${TMPDIR:-/tmp}/cuckoodist-step.XXXXXX")
    say "$what"
    start=$SECONDS
    "$@" >"$log" 2>&1 </dev/null || rc=$?
    if [ "$rc" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "FAILED after $((SECONDS - start)) s (exit $rc): $what; full log: $log" >&2
        return "$rc"
    fi
    rm -f "$log"
    printf '    done in %d s\n' "$((SECONDS - start))"
}

have_root() {
    [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# need_root WHAT: stop with a clear message when WHAT needs root and there
# is no way to get it.
need_root() {
    have_root && return 0
    echo "error: $1 needs root, and this is $(id -un) without sudo." >&2
    echo "Run this command once as root (it installs what is missing), or have an administrator do that first." >&2
    exit 1
}

apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    need_root "installing the Debian packages ${missing[*]} (apt-get install ${missing[*]})"
    if [ "$APT_UPDATED" = 0 ]; then
        run_step "apt-get update" as_root apt-get update -q
        APT_UPDATED=1
    fi
    run_step "installing ${missing[*]} (apt-get)" \
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

ensure_venv() {
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    # libarchive-c (by-reference samples: ZipCrypto at C speed) loads the
    # system's libarchive.
    if ! ldconfig -p 2>/dev/null | grep -q 'libarchive\.so\.13'; then
        apt_install libarchive13
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        run_step "creating the virtualenv $VENV" python3 -m venv "$VENV"
    fi
    # The requirements, and cuckoodist itself as an editable install: it puts
    # the checkout on the venv's sys.path, so .venv/bin/cuckoodist and
    # .venv/bin/twistd cuckoodist run this tree's code from any directory.
    local stamp="$VENV/.cuckoodist-installed.sha256" want
    want="$(cat "$CUCKOODIST_ROOT/requirements.txt" "$CUCKOODIST_ROOT/requirements-test.txt" \
        "$CUCKOODIST_ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x "$VENV/bin/cuckoodist" ] ||
            ! (cd / && "$VENV/bin/python" -c 'import cuckoodist, sys; sys.exit(not cuckoodist.__file__.startswith(sys.argv[1]))' \
                "$CUCKOODIST_ROOT/") >/dev/null 2>&1 </dev/null; then
        run_step "installing the pinned requirements into $VENV (pip)" \
            "$VENV/bin/python" -m pip install --disable-pip-version-check -r "$CUCKOODIST_ROOT/requirements-test.txt"
        run_step "installing cuckoodist into $VENV (pip install -e .)" \
            "$VENV/bin/python" -m pip install --disable-pip-version-check --no-deps -e "$CUCKOODIST_ROOT"
        echo "$want" > "$stamp"
    fi
}

# The dashboard's browser test (tests/test_dashboard_browser.py) drives
# Debian's chromium through Debian's chromium-driver; nothing is downloaded
# at test time. Installed when we can (root or sudo); where we cannot, or
# the install fails, the suite runs anyway and that test is skipped with a
# reason that says what to install.
ensure_browser() {
    local missing=() pkg
    for pkg in chromium chromium-driver; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    if ! have_root; then
        say "not installing ${missing[*]} (apt-get install needs root or sudo): the browser test will be skipped"
        return 0
    fi
    apt_install "${missing[@]}" ||
        say "could not install ${missing[*]}: the browser test will be skipped"
}

rabbitmq_answers() {
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

epmd_runs() {
    command -v epmd >/dev/null 2>&1 && epmd -names >/dev/null 2>&1
}

ensure_rabbitmq() {
    if rabbitmq_answers; then
        return
    fi
    apt_install rabbitmq-server
    # Its package may have started it (as systemd does): that one is a
    # system service, not ours to stop.
    if rabbitmq_answers; then
        return
    fi
    need_root "starting RabbitMQ (rabbitmq-server -detached)"
    epmd_runs || STARTED_EPMD=1
    STARTED_RABBITMQ=1
    local start=$SECONDS
    say "starting RabbitMQ (rabbitmq-server -detached)"
    as_root rabbitmq-server -detached
    for _ in $(seq 1 90); do
        if rabbitmq_answers && as_root rabbitmqctl -q await_startup >/dev/null 2>&1; then
            printf '    done in %d s\n' "$((SECONDS - start))"
            return
        fi
        sleep 1
    done
    echo "RabbitMQ did not start on 127.0.0.1:5672 within 90 s" >&2
    exit 1
}

# Stops the RabbitMQ that ensure_rabbitmq started, and the epmd that it
# started with it (epmd -kill refuses while any node is still registered).
stop_started_rabbitmq() {
    [ "$STARTED_RABBITMQ" -eq 1 ] || return 0
    STARTED_RABBITMQ=0
    local start=$SECONDS
    say "stopping the RabbitMQ we started"
    # rabbitmqctl stop returns before the Erlang VM has exited: wait for it.
    local pid
    pid=$(as_root rabbitmqctl -q eval 'os:getpid().' 2>/dev/null | tr -dc 0-9) || true
    as_root rabbitmqctl -q stop >/dev/null 2>&1 || true
    if [ -n "$pid" ]; then
        for _ in $(seq 1 60); do
            [ -d "/proc/$pid" ] || break
            sleep 0.5
        done
    fi
    if [ "$STARTED_EPMD" -eq 1 ]; then
        for _ in $(seq 1 20); do
            epmd_runs || break
            as_root epmd -kill >/dev/null 2>&1 || true
            sleep 0.5
        done
        epmd_runs && echo "warning: epmd still runs" >&2
    fi
    printf '    done in %d s\n' "$((SECONDS - start))"
}
