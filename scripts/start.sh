#!/usr/bin/env bash
# Starts agentcom-sidecar, updating it first. pm2 (scripts/ecosystem.config.js)
# and systemd (scripts/agentcom-sidecar.service) run this on every (re)start,
# so "restart the sidecar" also means "update it":
#
#   1. git pull --ff-only in the repository this script lives in. Failing is
#      not fatal (no network, diverged history): we start what is checked out.
#   2. Rebuild with `cargo build --release --locked` only if HEAD differs from
#      the revision recorded at the last successful build, or if there is no
#      good binary yet.
#   3. exec the last good binary with --config "${SIDECAR_CONFIG:-config.json}"
#      and any arguments given to this script.
#
# Why a copy ("last-good") rather than cargo's own output: we never run
# target/release/agentcom-sidecar itself. After each successful build it is
# copied to a temporary name and renamed onto agentcom-sidecar.last-good, and
# only then is the revision stamp written. A rename is atomic, so the file we
# run is always a complete binary from a build that succeeded, whatever
# happens to cargo's output meanwhile (a failed or interrupted build, a
# crash between cargo removing the old file and linking the new one). If the
# machine dies between the rename and the stamp, the next start just
# rebuilds. The sidecar is not running while this script runs (pm2 and
# systemd stop it first), and on Linux a running binary may be renamed over
# anyway.
#
# Messages go to stderr, so stdout carries only the sidecar's own log.
# Environment: SIDECAR_CONFIG (config path, relative to the repository root),
# CARGO_TARGET_DIR (honoured like cargo does), AGENTCOM_SKIP_PULL=1 (do not
# pull, e.g. for a checkout you are editing by hand).
set -euo pipefail

log() {
    printf 'start.sh: %s\n' "$*" >&2
}

# Makes the binary cargo just built the last good one; the comment at the
# top explains the order. Chained with && because `set -e` does not apply
# inside a function called as an `if` condition.
install_build() {
    cp "$built_binary" "$good_binary.tmp" &&
        mv -f "$good_binary.tmp" "$good_binary" &&
        printf '%s\n' "$head_rev" >"$stamp.tmp" &&
        mv -f "$stamp.tmp" "$stamp"
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

if [[ "${AGENTCOM_SKIP_PULL:-}" == 1 ]]; then
    log "AGENTCOM_SKIP_PULL=1: not pulling"
elif ! pull >&2; then
    log "git pull --ff-only failed; starting the code already checked out"
fi

release_dir="${CARGO_TARGET_DIR:-target}/release"
built_binary="$release_dir/agentcom-sidecar"
good_binary="$release_dir/agentcom-sidecar.last-good"
stamp="$release_dir/.agentcom-built-rev"

head_rev=$(git rev-parse HEAD) || head_rev=""
built_rev=""
if [[ -f "$stamp" ]]; then
    built_rev=$(<"$stamp")
fi

if [[ -x "$good_binary" && -n "$head_rev" && "$head_rev" == "$built_rev" ]]; then
    log "binary is up to date with $head_rev; not rebuilding"
elif [[ -x "$good_binary" && -z "$head_rev" ]]; then
    log "cannot read the checked-out revision; running the last good binary (rev ${built_rev:-unknown})"
else
    log "building ${head_rev:-the checkout} (last good build: ${built_rev:-none})"
    if cargo build --release --locked >&2 && install_build; then
        log "built ${head_rev:-the checkout}"
    elif [[ -x "$good_binary" ]]; then
        log "build failed; keeping the last good binary (rev ${built_rev:-unknown})"
    else
        log "build failed and there is no previous binary to fall back on; not starting"
        exit 1
    fi
fi

exec "$good_binary" --config "${SIDECAR_CONFIG:-config.json}" "$@"
