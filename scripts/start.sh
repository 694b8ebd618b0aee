#!/usr/bin/env bash
# Starts agentcom-sidecar, updating it first. pm2 (scripts/ecosystem.config.js)
# and systemd (scripts/agentcom-sidecar.service) run this on every (re)start,
# so "restart the sidecar" also means "update it":
#
#   1. git pull --ff-only in the repository this script lives in. Failing is
#      not fatal (no network, diverged history): we start what is checked out.
#   2. Rebuild with `cargo build --release --locked` only if HEAD differs from
#      the revision recorded at the last successful build, or if there is no
#      good binary yet. A build that failed is remembered (its revision in
#      .agentcom-failed-rev) and not tried again until HEAD moves, so a
#      broken commit does not cost a build at every restart; to retry anyway
#      (e.g. after a full disk was the cause) set AGENTCOM_FORCE_BUILD=1 or
#      delete that file.
#   3. exec the last good binary with --config "${SIDECAR_CONFIG:-config.json}"
#      and any arguments given to this script.
#
# scripts/update.sh runs this script with AGENTCOM_BUILD_ONLY=1 (steps 1 and
# 2 only, while the old sidecar keeps running; exit 0 only if the last good
# binary is built from HEAD), then restarts the sidecar through the
# supervisor. It leaves a marker (.agentcom-prepared-rev) so that this
# restart skips the pull: the binary it needs is ready, and the restart
# costs well under a second.
#
# Why a copy ("last-good") rather than cargo's own output: we never run
# target/release/agentcom-sidecar itself. After each successful build it is
# copied to a temporary name and renamed onto agentcom-sidecar.last-good, and
# only then is the revision stamp written. A rename is atomic, so the file we
# run is always a complete binary from a build that succeeded, whatever
# happens to cargo's output meanwhile (a failed or interrupted build, a
# crash between cargo removing the old file and linking the new one). If the
# machine dies between the rename and the stamp, the next start just
# rebuilds. A running binary may be renamed over (the running process keeps
# its file), which is what lets update.sh build while the sidecar runs.
#
# The binary channel: when the config sets update_url, there is nothing to
# pull or build. This script then runs the release binary at
# ${AGENTCOM_BINARY:-bin/agentcom-sidecar} (installed as README "Install"
# says; the sidecar replaces it itself on the hub's restart_sidecar, and
# update.sh with `agentcom-sidecar update`); AGENTCOM_BUILD_ONLY=1 then
# does nothing.
#
# Messages go to stderr, so stdout carries only the sidecar's own log. Each
# starts with a UTC timestamp like the sidecar's lines (pm2 adds none).
# Environment: SIDECAR_CONFIG (config path, relative to the repository root),
# CARGO_TARGET_DIR (honoured like cargo does), AGENTCOM_SKIP_PULL=1 (do not
# pull, e.g. for a checkout you are editing by hand), AGENTCOM_FORCE_BUILD=1
# (build even if this HEAD failed to build before), AGENTCOM_BUILD_ONLY=1
# (pull and build, do not start; used by update.sh).
set -euo pipefail

# GNU date prints milliseconds; where %N is unknown (BSD), whole seconds.
timestamp() {
    local now
    now=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ 2>/dev/null) || now=""
    case "$now" in
    *N* | "") now=$(date -u +%Y-%m-%dT%H:%M:%S.000Z) ;;
    esac
    printf '%s' "$now"
}

log() {
    printf '%s start.sh: %s\n' "$(timestamp)" "$*" >&2
}

# Makes the binary cargo just built the last good one; the comment at the
# top explains the order. Chained with && because `set -e` does not apply
# inside a function called as an `if` condition.
# cargo build in a process group of its own, so that a stop while it builds
# ends the whole build: pm2 (treekill off) and the systemd unit
# (KillMode=process) signal this script alone, so that an agent at work
# survives a restart; without this, cargo and its rustc processes would go
# on building without us.
build_release() {
    local pid status
    set -m
    cargo build --release --locked >&2 &
    pid=$!
    set +m
    trap 'kill -TERM -- "-$pid" 2>/dev/null; wait "$pid" || true; exit 143' TERM
    trap 'kill -TERM -- "-$pid" 2>/dev/null; wait "$pid" || true; exit 130' INT
    status=0
    wait "$pid" || status=$?
    trap - TERM INT
    return "$status"
}

install_build() {
    cp "$built_binary" "$good_binary.tmp.$$" &&
        mv -f "$good_binary.tmp.$$" "$good_binary" &&
        printf '%s\n' "$head_rev" >"$stamp.tmp.$$" &&
        mv -f "$stamp.tmp.$$" "$stamp" &&
        rm -f "$failed_stamp"
}

# Never wait for a password prompt, and where coreutils' timeout exists, do
# not let a stalled network hold up the start for ever.
pull() {
    if command -v timeout >/dev/null 2>&1; then
        GIT_TERMINAL_PROMPT=0 timeout 120 git pull --ff-only
    else
        GIT_TERMINAL_PROMPT=0 git pull --ff-only
    fi
}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

# The binary channel (see the top): update_url set to a non-empty string.
config="${SIDECAR_CONFIG:-config.json}"
if [[ -f "$config" ]] && grep -Eq '"update_url"[[:space:]]*:[[:space:]]*"[^"[:space:]]' "$config"; then
    binary="${AGENTCOM_BINARY:-bin/agentcom-sidecar}"
    if [[ "${AGENTCOM_BUILD_ONLY:-}" == 1 ]]; then
        exit 0
    fi
    if [[ ! -x "$binary" ]]; then
        log "update_url is set but there is no release binary at $binary; install one (README, Install) or set AGENTCOM_BINARY"
        exit 1
    fi
    log "update_url is set: running the release binary $binary (no pull, no build)"
    exec "$binary" --config "$config" "$@"
fi

release_dir="${CARGO_TARGET_DIR:-target}/release"
built_binary="$release_dir/agentcom-sidecar"
good_binary="$release_dir/agentcom-sidecar.last-good"
stamp="$release_dir/.agentcom-built-rev"
failed_stamp="$release_dir/.agentcom-failed-rev"
prepared="$release_dir/.agentcom-prepared-rev"
build_only="${AGENTCOM_BUILD_ONLY:-}"

# update.sh pulled and built just before restarting us: start what it built.
prepared_rev=""
if [[ "$build_only" != 1 && -f "$prepared" ]]; then
    prepared_rev=$(<"$prepared")
    rm -f "$prepared"
fi

if [[ "${AGENTCOM_SKIP_PULL:-}" == 1 ]]; then
    log "AGENTCOM_SKIP_PULL=1: not pulling"
elif [[ -n "$prepared_rev" && "$prepared_rev" == "$(git rev-parse HEAD 2>/dev/null)" ]]; then
    log "update.sh prepared $prepared_rev: not pulling"
elif ! pull >&2; then
    log "git pull --ff-only failed; starting the code already checked out"
fi

head_rev=$(git rev-parse HEAD) || head_rev=""
built_rev=""
if [[ -f "$stamp" ]]; then
    built_rev=$(<"$stamp")
fi
failed_rev=""
if [[ -f "$failed_stamp" ]]; then
    failed_rev=$(<"$failed_stamp")
fi

if [[ -x "$good_binary" && -n "$head_rev" && "$head_rev" == "$built_rev" ]]; then
    log "binary is up to date with $head_rev; not rebuilding"
elif [[ -x "$good_binary" && -z "$head_rev" ]]; then
    log "cannot read the checked-out revision; running the last good binary (rev ${built_rev:-unknown})"
elif [[ -n "$head_rev" && "$head_rev" == "$failed_rev" && "${AGENTCOM_FORCE_BUILD:-}" != 1 ]]; then
    if [[ -x "$good_binary" ]]; then
        log "$head_rev failed to build before; not retrying until HEAD moves (AGENTCOM_FORCE_BUILD=1 forces it); keeping the last good binary (rev ${built_rev:-unknown})"
    else
        log "$head_rev failed to build before and there is no previous binary to fall back on; not starting (AGENTCOM_FORCE_BUILD=1 retries the build)"
        exit 1
    fi
else
    log "building ${head_rev:-the checkout} (last good build: ${built_rev:-none})"
    if build_release && install_build; then
        log "built ${head_rev:-the checkout}"
    else
        if [[ -n "$head_rev" ]]; then
            mkdir -p "$release_dir" && printf '%s\n' "$head_rev" >"$failed_stamp" || true
        fi
        if [[ -x "$good_binary" ]]; then
            log "build failed; keeping the last good binary (rev ${built_rev:-unknown})"
        else
            log "build failed and there is no previous binary to fall back on; not starting"
            exit 1
        fi
    fi
fi

if [[ "$build_only" == 1 ]]; then
    # Success means: the binary start.sh would run is built from HEAD.
    built_rev=""
    if [[ -f "$stamp" ]]; then
        built_rev=$(<"$stamp")
    fi
    [[ -x "$good_binary" && -n "$head_rev" && "$head_rev" == "$built_rev" ]]
    exit
fi

# For `update.sh --if-changed`: the revision of the binary started last.
if [[ -f "$stamp" ]]; then
    cp -f "$stamp" "$release_dir/.agentcom-started-rev" 2>/dev/null || true
fi
exec "$good_binary" --config "${SIDECAR_CONFIG:-config.json}" "$@"
