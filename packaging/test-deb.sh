#!/bin/bash
# Build the cuckoodist Debian package from a clean copy of the git tree,
# install it, run the installed daemon exactly as its systemd unit would
# against the local RabbitMQ and the simulators, push samples through, stop
# it with SIGTERM, purge the package and check that nothing is left behind.
#
# Run as root on Debian 12: sudo packaging/test-deb.sh
# Missing build dependencies and lintian are installed with apt-get.
# DEB_BUILD_OPTIONS is passed on; unset, it is "nocheck": CI has just run
# the same trial suite against the same pins, and the run below exercises
# the installed code. DEB_BUILD_OPTIONS= (empty) runs the suite in the build.
# On success the work directory is removed; on failure it is kept for its
# logs. Everything this script starts is stopped when it exits.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=/opt/venvs/cuckoodist
UNIT=/lib/systemd/system/cuckoodist.service
CONFIG=/etc/cuckoodist/cuckoodist.yaml
SAMPLES=${CUCKOODIST_TEST_SAMPLES:-3}
# Unique per run, so that queues of other runs and tests are not touched.
RUN_ID="debtest-$$-$(date +%s)"
QUEUE_PREFIX="$RUN_ID/"

WORK=$(mktemp -d /tmp/cuckoodist-deb.XXXXXX)
SRC="$WORK/src"
PIDS=()
INSTALLED=0
DAEMON_PID=
STARTED_RABBITMQ=0
STARTED_EPMD=0
LINTIAN_PID=
TICKER_PID=

log() { printf '== %s\n' "$*"; }
# took START: "    done in N s", for the steps that take a while.
took() { printf '   done in %d s\n' "$(($(date +%s) - $1))"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local rc=$?
    set +e
    local pid i
    # The daemon first, gracefully: runuser would SIGKILL it 2 s after a
    # SIGTERM of its own.
    if [ -n "$DAEMON_PID" ] && kill -TERM "$DAEMON_PID" 2>/dev/null; then
        for i in $(seq 1 350); do
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DAEMON_PID" 2>/dev/null
    fi
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [ -n "$TICKER_PID" ]; then
        kill "$TICKER_PID" 2>/dev/null
        wait "$TICKER_PID" 2>/dev/null
    fi
    if [ -n "$LINTIAN_PID" ]; then
        kill -TERM "$LINTIAN_PID" 2>/dev/null
        wait "$LINTIAN_PID" 2>/dev/null
    fi
    if [ "$INSTALLED" = 1 ] && dpkg-query -W cuckoodist >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq cuckoodist \
            >>"$WORK/purge.log" 2>&1
    fi
    if command -v rabbitmqctl >/dev/null; then
        rabbitmqctl -q list_queues name 2>/dev/null | grep -F "$QUEUE_PREFIX" |
            while IFS= read -r queue; do
                rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null 2>&1
            done
    fi
    if [ "$STARTED_RABBITMQ" = 1 ]; then
        rabbitmqctl -q stop >/dev/null 2>&1
        # ... and the epmd that rabbitmq-server started with it (epmd -kill
        # refuses while a node is still registered).
        if [ "$STARTED_EPMD" = 1 ]; then
            for i in $(seq 1 20); do
                epmd -names >/dev/null 2>&1 || break
                epmd -kill >/dev/null 2>&1
                sleep 0.5
            done
        fi
    fi
    if [ "$rc" = 0 ]; then
        rm -rf "$WORK"
    else
        echo "logs kept in $WORK" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run Python code with the installed package's interpreter.
venv_python() { "$VENV/bin/python" -B "$@"; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
    local port=$1 what=$2 i
    for i in $(seq 1 100); do
        port_open "$port" && return 0
        sleep 0.2
    done
    fail "$what did not listen on port $port"
}

[ "$(id -u)" = 0 ] || fail "must run as root (it installs and purges a package)"
# One run at a time on a machine: two would install and purge the same
# package under each other.
exec 9>/run/lock/cuckoodist-test-deb.lock
flock -w 900 9 || fail "another packaging/test-deb.sh kept the lock for 15 minutes"
if dpkg-query -W -f '${Status}' cuckoodist 2>/dev/null | grep -q installed; then
    fail "cuckoodist is already installed here; purge it before running this test"
fi

# --- 1. Build from a clean copy of the tree ---------------------------------
# Tracked files as they are in the working tree: uncommitted edits are
# tested, untracked files and build products are not, and nothing the build
# writes lands in the checkout.
log "copying the git tree to $SRC"
mkdir -p "$SRC"
git -C "$REPO" ls-files -z --cached |
    (cd "$REPO" && while IFS= read -r -d '' f; do
        [ -e "$f" ] && printf '%s\0' "$f"
    done) |
    tar -C "$REPO" --null -T - -cf - | tar -C "$SRC" -xf -

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update_once() {
    [ "$APT_UPDATED" = 1 ] || apt_quiet update
    APT_UPDATED=1
}
# apt-get, its output kept in apt.log and shown only if it fails.
apt_quiet() {
    apt-get -q "$@" >>"$WORK/apt.log" 2>&1 || { tail -n 30 "$WORK/apt.log" >&2; fail "apt-get $* failed"; }
}
if ! command -v dpkg-checkbuilddeps >/dev/null ||
        ! (cd "$SRC" && dpkg-checkbuilddeps) 2>/dev/null; then
    log "installing the build dependencies (apt-get build-dep: debhelper, dh-virtualenv, python3-dev)"
    start=$(date +%s)
    apt_update_once
    apt_quiet install -y --no-install-recommends dpkg-dev
    (cd "$SRC" && apt_quiet build-dep -y --no-install-recommends .)
    took "$start"
fi
# lintian checks the package; pgrep (procps) finds the daemon.
missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v pgrep >/dev/null || missing+=(procps)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    start=$(date +%s)
    apt_update_once
    apt_quiet install -y --no-install-recommends "${missing[@]}"
    took "$start"
fi

# The build-time trial run and the daemon both need the local RabbitMQ.
if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null || fail "RabbitMQ is not running and not installed"
    log "starting RabbitMQ"
    epmd -names >/dev/null 2>&1 || STARTED_EPMD=1
    rabbitmq-server -detached
    STARTED_RABBITMQ=1
    rabbitmqctl -q await_startup --timeout 60 || fail "RabbitMQ did not start"
fi

export DEB_BUILD_OPTIONS=${DEB_BUILD_OPTIONS-nocheck}
log "building with dpkg-buildpackage -us -uc -b (DEB_BUILD_OPTIONS=$DEB_BUILD_OPTIONS; log: $WORK/build.log)"
start=$(date +%s)
# Every 30 s, the debhelper step the build is at (pip in dh_virtualenv is
# the long one).
(
    while sleep 30; do
        step=$(grep -oE '^ +dh_[a-z_]+|^\s*(debian/rules|make) [a-z_-]+' "$WORK/build.log" 2>/dev/null | tail -n 1 | xargs)
        printf '   ... %d s, at %s\n' "$(($(date +%s) - start))" "${step:-the start}"
    done
) 9>&- &
TICKER_PID=$!
if ! (cd "$SRC" && dpkg-buildpackage -us -uc -b) >"$WORK/build.log" 2>&1; then
    tail -n 60 "$WORK/build.log" >&2
    fail "dpkg-buildpackage failed (log: $WORK/build.log)"
fi
kill "$TICKER_PID" 2>/dev/null; wait "$TICKER_PID" 2>/dev/null || true
TICKER_PID=
DEB=$(ls "$WORK"/cuckoodist_*.deb)
log "built $(basename "$DEB") in $(($(date +%s) - start)) s: $(stat -c %s "$DEB") bytes," \
    "$(dpkg-deb -f "$DEB" Installed-Size) KiB installed"
if git -C "$REPO" status --porcelain --ignored -- debian | grep -q '^!!'; then
    fail "the build wrote into the checkout's debian/ directory"
fi

# lintian takes a minute on the venv's thousands of files: run it while
# the package is exercised, and read its verdict at the end.
lintian --tag-display-limit 0 --fail-on error,warning "$DEB" >"$WORK/lintian.log" 2>&1 9>&- &
LINTIAN_PID=$!

# --- 2. Install -------------------------------------------------------------
log "installing"
INSTALLED=1
apt-get install -y -qq --no-install-recommends "$DEB" >"$WORK/install.log" 2>&1 ||
    { cat "$WORK/install.log" >&2; fail "apt-get install failed"; }

getent passwd cuckoodist >/dev/null || fail "no cuckoodist user"
[ "$(stat -c '%a %U %G' "$CONFIG")" = "640 root cuckoodist" ] ||
    fail "$CONFIG is $(stat -c '%a %U %G' "$CONFIG"), not 640 root cuckoodist"
grep -qx "$CONFIG" /var/lib/dpkg/info/cuckoodist.conffiles || fail "$CONFIG is not a conffile"
for dir in /var/lib/cuckoodist /var/lib/cuckoodist/dump; do
    [ "$(stat -c '%a %U' "$dir")" = "750 cuckoodist" ] ||
        fail "$dir is $(stat -c '%a %U' "$dir"), not 750 cuckoodist"
done
[ -L /etc/systemd/system/multi-user.target.wants/cuckoodist.service ] ||
    fail "the unit was not enabled"
[ "$(readlink -e /usr/bin/cuckoodist)" = "$VENV/bin/cuckoodist" ] ||
    fail "/usr/bin/cuckoodist does not lead to the venv"
[ "$(readlink -e "$VENV/bin/python")" = "$(readlink -e /usr/bin/python3)" ] ||
    fail "the venv does not use the Debian python3"
/usr/bin/cuckoodist --help >/dev/null || fail "cuckoodist --help failed"
# The compiled extensions were stripped at build time: they must still load.
venv_python -c '
import yaml, ijson, OpenSSL.SSL, zope.interface
from cryptography.fernet import Fernet
assert yaml.__with_libyaml__, "PyYAML without libyaml"
assert ijson.backend == "yajl2_c", ijson.backend
Fernet(Fernet.generate_key()).encrypt(b"x")
' || fail "compiled extensions of the venv do not load"

# --- 3. twistd finds the plugin through the prebuilt cache -------------------
log "checking the twistd plugin"
for who in root cuckoodist; do
    out=$(cd / && runuser -u "$who" -- "$VENV/bin/twistd" --help 2>&1) ||
        fail "twistd --help failed as $who: $out"
    grep -qE '^ +cuckoodist +' <<<"$out" || fail "twistd --help as $who does not list cuckoodist: $out"
    if grep -qiE 'plugin cache|dropin|Traceback' <<<"$out"; then
        fail "twistd --help as $who warned: $out"
    fi
done
# The daemon's user must not have written a cache of its own.
[ -z "$(find "$VENV" -name dropin.cache -user cuckoodist)" ] || fail "cuckoodist wrote a plugin cache"

# --- 4. Run the unit's command as the unit's user ---------------------------
CUCKOO_PORT=$(free_port)
CRITS_PORT=$(free_port)
log "starting the simulators (Cuckoo on $CUCKOO_PORT, CRITs on $CRITS_PORT)"
# The API key goes through the environment, not the process list.
CRITS_API_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
CUCKOODIST_SIM_CRITS_API_KEY=$CRITS_API_KEY /usr/bin/cuckoodist simulate \
    --cuckoo-port "$CUCKOO_PORT" --crits-port "$CRITS_PORT" --analysis-seconds 1 \
    >"$WORK/simulate.log" 2>&1 9>&- &
PIDS+=($!)
wait_for_port "$CUCKOO_PORT" "the Cuckoo simulator"
wait_for_port "$CRITS_PORT" "the CRITs simulator"

# The installed example configuration, pointed at the simulators and at
# queues of this run only.
CRITS_API_KEY=$CRITS_API_KEY \
    venv_python - "$CONFIG" "$CUCKOO_PORT" "$CRITS_PORT" "$QUEUE_PREFIX" <<'EOF'
import os, sys, yaml
path, cuckoo_port, crits_port, prefix = sys.argv[1:]
with open(path) as f:
    config = yaml.safe_load(f)
config["crits"]["url"] = f"http://127.0.0.1:{crits_port}"
config["crits"]["api_key"] = os.environ["CRITS_API_KEY"]
for cuckoo in config["cuckoo"].values():
    cuckoo["url"] = f"http://127.0.0.1:{cuckoo_port}"
for stage in config["stages"]:
    for key in ("consumer_queue", "producer_queue", "failed_queue"):
        if stage.get(key):
            stage[key] = prefix + stage[key]
    if "wait_between_requests" in stage:
        stage["wait_between_requests"] = 0.5
    if "retry_delay" in stage:
        stage["retry_delay"] = 1
with open(path, "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
EOF

EXEC=$(sed -n 's/^ExecStart=[-@:+!]*//p' "$UNIT")
[ -n "$EXEC" ] || fail "no ExecStart in $UNIT"
WORKDIR=$(sed -n 's/^WorkingDirectory=//p' "$UNIT")
read -r -a ARGV <<<"$EXEC"
log "running as cuckoodist: $EXEC"
(cd "${WORKDIR:-/}" && exec runuser -u cuckoodist -- "${ARGV[@]}") >"$WORK/daemon.log" 2>&1 9>&- &
RUNUSER_PID=$!
PIDS+=("$RUNUSER_PID")
# runuser forks; signal the daemon itself, since runuser answers SIGTERM by
# SIGKILLing its child two seconds later.
DAEMON_PID=
for i in $(seq 1 50); do
    DAEMON_PID=$(pgrep -P "$RUNUSER_PID" || true)
    [ -n "$DAEMON_PID" ] && break
    sleep 0.1
done
[ -n "$DAEMON_PID" ] || { cat "$WORK/daemon.log" >&2; fail "the daemon did not start"; }
[ "$(stat -c %U "/proc/$DAEMON_PID")" = cuckoodist ] || fail "the daemon does not run as cuckoodist"

# --- 5. Push samples through -------------------------------------------------
log "publishing $SAMPLES samples"
# With the installed command-line tool: it publishes with publisher
# confirms to the feed_cuckoo queue of the daemon's configuration, then
# waits for the simulated CRITs.
/usr/bin/cuckoodist demo -c "$CONFIG" -n "$SAMPLES" --timeout 120 >"$WORK/publish.log" 2>&1 ||
    { cat "$WORK/publish.log" >&2; fail "publishing failed"; }

log "checking that the simulated CRITs received every analysis"
venv_python - "$CRITS_PORT" "$SAMPLES" <<'EOF' || { tail -n 40 "$WORK/daemon.log" >&2; fail "the samples did not arrive"; }
import json, sys, time, urllib.request
port, expected = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 120
state = None
while time.monotonic() < deadline:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/state", timeout=10) as r:
        state = json.load(r)
    analyses = state.get("analyses", [])
    if isinstance(analyses, dict):
        analyses = list(analyses.values())
    done = [a for a in analyses if a.get("status") == "completed" and a.get("results")]
    if len(analyses) == expected and len(done) == expected:
        results = sum(len(a["results"]) for a in done)
        print(f"{len(done)} analyses completed with {results} results")
        sys.exit(0)
    time.sleep(1)
print("timed out; last state:", json.dumps(state)[:2000], file=sys.stderr)
sys.exit(1)
EOF
kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon died"

# --- 6. Stop, purge, check ---------------------------------------------------
log "stopping the daemon with SIGTERM"
start=$(date +%s)
kill -TERM "$DAEMON_PID"
rc=0
for i in $(seq 1 350); do
    kill -0 "$RUNUSER_PID" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$RUNUSER_PID" 2>/dev/null && fail "the daemon did not exit within 35 s of SIGTERM"
wait "$RUNUSER_PID" || rc=$?
DAEMON_PID=
# twistd shuts down cleanly and then re-raises the SIGTERM on itself, so
# that its parent sees why it stopped: runuser reports that as 143. systemd
# counts death by SIGTERM as a clean exit (SuccessExitStatus), so does this
# test, but only after the log shows the orderly shutdown: a daemon killed
# by an unhandled SIGTERM would also end with 143.
case "$rc" in
    0) how="exit status 0" ;;
    143) how="SIGTERM re-raised by twistd after its shutdown" ;;
    *) tail -n 40 "$WORK/daemon.log" >&2; fail "the daemon exited $rc after SIGTERM" ;;
esac
grep -q 'Server Shut Down' "$WORK/daemon.log" ||
    { tail -n 40 "$WORK/daemon.log" >&2; fail "the daemon did not shut down in order"; }
log "daemon stopped cleanly ($how) after $(($(date +%s) - start)) s"
if grep -qE 'Traceback|Unhandled' "$WORK/daemon.log"; then
    grep -nE -A5 'Traceback|Unhandled' "$WORK/daemon.log" >&2
    fail "the daemon logged a traceback"
fi

log "stopping the simulators"
for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
done
for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
done
PIDS=()

log "purging"
apt-get purge -y -qq -o Dpkg::Use-Pty=0 cuckoodist >"$WORK/purge.log" 2>&1 ||
    { cat "$WORK/purge.log" >&2; fail "apt-get purge failed"; }
INSTALLED=0
# dpkg may keep a shared parent such as /opt that holds other software; any
# other warning means files of ours were in the way.
if grep -i 'warning' "$WORK/purge.log" | grep -qvE "directory '/opt' not empty"; then
    cat "$WORK/purge.log" >&2
    fail "dpkg warned during the purge"
fi
for path in /opt/venvs/cuckoodist /var/lib/cuckoodist /etc/cuckoodist "$UNIT" \
        /usr/bin/cuckoodist /etc/systemd/system/multi-user.target.wants/cuckoodist.service; do
    [ ! -e "$path" ] && [ ! -L "$path" ] || fail "$path is left after purge"
done
! dpkg-statoverride --list | grep -q cuckoodist || fail "a statoverride is left after purge"
! pgrep -u cuckoodist >/dev/null || fail "processes of cuckoodist are left"
# Kept on purge by choice (see docs/packaging.md): the user and its group.
getent passwd cuckoodist >/dev/null && log "user cuckoodist kept, as intended"

# --- lintian ----------------------------------------------------------------
log "waiting for lintian"
start=$(date +%s)
lintian_rc=0
wait "$LINTIAN_PID" || lintian_rc=$?
LINTIAN_PID=
grep -vE '^(N:|running with root)' "$WORK/lintian.log" || true
[ "$lintian_rc" = 0 ] || fail "lintian reported errors or warnings"
log "lintian: no errors, no warnings (expected venv tags are overridden); waited $(($(date +%s) - start)) s"

echo "1 passed, 0 failed"
