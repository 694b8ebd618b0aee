#!/usr/bin/env bash
# Updates agentcom-sidecar without an outage: pulls and builds while the old
# sidecar keeps running and connected, and restarts it through its
# supervisor only once a binary for the new HEAD is ready. The restart then
# costs the sidecar's shutdown and start, well under a second, instead of a
# pull and a build.
#
#   scripts/update.sh [--if-changed] [--restart-command CMD]
#
#   1. scripts/start.sh with AGENTCOM_BUILD_ONLY=1: git pull --ff-only, then
#      build when HEAD moved, with all of start.sh's guarantees (the last good
#      binary is replaced only by a successful build; a revision that failed
#      to build is not retried until HEAD moves).
#   2. If there is no binary for HEAD (the build failed): stop here, exit 1.
#      The running sidecar is not touched.
#   3. Leave a marker so that the restarted start.sh skips its pull, then run
#      the restart command. With --if-changed, skip the restart when the
#      sidecar last started is already this revision (for cron jobs).
#
# The restart command: --restart-command CMD, else $AGENTCOM_RESTART_COMMAND,
# else `pm2 restart <app>`, where <app> is pm2's id of the process when pm2
# started the caller (the sidecar's update_command inherits it), else
# agentcom-sidecar. For systemd, e.g.
# AGENTCOM_RESTART_COMMAND='sudo systemctl restart agentcom-sidecar'.
#
# The sidecar runs this itself on the hub's restart_sidecar when its config
# has "update_command": "scripts/update.sh" (detached from the sidecar, so
# the restart does not kill it; its output goes to update_log).
#
# With update_url in the config (the binary channel), step 1 is
# `agentcom-sidecar update` instead (${AGENTCOM_BINARY:-bin/agentcom-sidecar}:
# the signed release is downloaded, verified, run once and put in place while
# the sidecar keeps running); nothing newer: no restart.
#
# Only one update runs at a time (flock, where installed). Exit codes: 0
# updated or nothing to do, 1 no binary for HEAD (sidecar left running),
# 2 usage, 3 the restart command failed, 4 another update is running.
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
    printf '%s update.sh: %s\n' "$(timestamp)" "$*" >&2
}

usage() {
    printf 'usage: scripts/update.sh [--if-changed] [--restart-command CMD]\n' >&2
    exit 2
}

if_changed=""
restart_command="${AGENTCOM_RESTART_COMMAND:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
    --if-changed) if_changed=1 ;;
    --restart-command)
        [[ $# -ge 2 ]] || usage
        restart_command="$2"
        shift
        ;;
    --restart-command=*) restart_command="${1#--restart-command=}" ;;
    -h | --help) usage ;;
    *)
        log "unexpected argument: $1"
        usage
        ;;
    esac
    shift
done

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
release_dir="${CARGO_TARGET_DIR:-target}/release"
mkdir -p "$release_dir"

if command -v flock >/dev/null 2>&1; then
    exec 9>"$release_dir/.agentcom-update.lock"
    if ! flock -n 9; then
        log "another update is running; leaving it to finish"
        exit 4
    fi
fi

config="${SIDECAR_CONFIG:-config.json}"
if [[ -f "$config" ]] && grep -Eq '"update_url"[[:space:]]*:[[:space:]]*"[^"[:space:]]' "$config"; then
    binary="${AGENTCOM_BINARY:-bin/agentcom-sidecar}"
    log "update_url is set: installing the signed release with $binary update"
    status=0
    "$binary" update --config "$config" >&2 || status=$?
    case "$status" in
    0) ;;
    3)
        log "nothing newer; not restarting"
        exit 0
        ;;
    *)
        log "the update failed (exit $status); not restarting: the running sidecar stays as it is"
        exit 1
        ;;
    esac
    if [[ -z "$restart_command" ]]; then
        restart_command="pm2 restart ${pm_id:-agentcom-sidecar}"
    fi
    log "the new binary is in place; restarting: $restart_command"
    if ! sh -c "$restart_command" </dev/null >&2 9>&-; then
        log "the restart command failed; the new binary runs from the sidecar's next restart"
        exit 3
    fi
    log "restarted"
    exit 0
fi

log "pulling and building while the sidecar keeps running"
if ! AGENTCOM_BUILD_ONLY=1 bash scripts/start.sh; then
    log "no binary for HEAD; not restarting: the running sidecar stays as it is"
    exit 1
fi
built_rev=$(<"$release_dir/.agentcom-built-rev")

if [[ -n "$if_changed" && -f "$release_dir/.agentcom-started-rev" &&
    "$(<"$release_dir/.agentcom-started-rev")" == "$built_rev" ]]; then
    log "the sidecar already runs $built_rev; not restarting"
    exit 0
fi

printf '%s\n' "$built_rev" >"$release_dir/.agentcom-prepared-rev"
if [[ -z "$restart_command" ]]; then
    # pm2 puts pm_id in the environment of the processes it starts.
    restart_command="pm2 restart ${pm_id:-agentcom-sidecar}"
fi
log "binary for $built_rev is ready; restarting: $restart_command"
if ! sh -c "$restart_command" </dev/null >&2 9>&-; then
    rm -f "$release_dir/.agentcom-prepared-rev"
    log "the restart command failed; the sidecar keeps running the old binary until its next restart"
    exit 3
fi
log "restarted"
