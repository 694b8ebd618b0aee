#!/usr/bin/env bash
# CI, release stage: builds the release artifacts with scripts/release.sh,
# signed with a throwaway minisign key made here (never kept), checks the
# signature with the minisign CLI and every file against the manifest, and
# runs the static Linux binaries in an empty root (chroot into a directory
# holding nothing but the binary, its config and, for ARM, qemu-user):
# `--version`, `check`, `update --check` and `update --force` from a
# file:// copy of the release (signature, hashes, the new binary's own run
# and the swap, all inside the empty root), and the x86_64 one connected to
# the development hub on loopback. The Windows .exe is built here once (the
# Windows stage builds and tests the debug build under Wine).
# Everything comes from Debian packages and crates.io. Needs root (chroot).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

arm_ok=1
missing=()
for pkg in rustc-web cargo-web rust-web-src musl-tools minisign gcc-mingw-w64-x86-64 \
  gcc-aarch64-linux-gnu qemu-user-static binutils; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ! dpkg -s musl-dev:arm64 >/dev/null 2>&1; then
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  missing+=(musl-dev:arm64)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

scratch=$(mktemp -d)
hub_pid=
cleanup() {
  [ -z "$hub_pid" ] || kill "$hub_pid" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT
out="$scratch/out"
minisign -G -W -p "$scratch/test.pub" -s "$scratch/test.key" >/dev/null
public_key=$(tail -n1 "$scratch/test.pub")

AGENTCOM_SIGNING_KEY="$scratch/test.key" scripts/release.sh "$out"
built=$SECONDS

echo "== release: verify as the README says"
minisign -V -p "$scratch/test.pub" -m "$out/manifest.json"
for file in "$out"/agentcom-sidecar-*; do
  name=$(basename "$file")
  want=$(grep -o "\"file\": \"$name\", \"size\": [0-9]*, \"sha256\": \"[0-9a-f]*\"" "$out/manifest.json" |
    sed 's/.*"sha256": "\([0-9a-f]*\)"/\1/')
  [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$want" ] || { echo "release: $name does not match the manifest"; exit 1; }
  echo "release: $name $(stat -c %s "$file") bytes, SHA-256 as signed"
done

# Static: no program interpreter, no shared library needed.
static_check() {
  if readelf -lW "$1" | grep -q 'program interpreter' || readelf -dW "$1" | grep -q NEEDED; then
    echo "release: $1 is not static:"
    readelf -dW "$1" | grep NEEDED || true
    exit 1
  fi
  echo "release: $(basename "$1") is static (no interpreter, no NEEDED)"
}

# An empty root with the binary (as /agentcom-sidecar), a config and the
# release as a file:// share; $2: a program the binary runs under.
empty_root() {
  local root=$1 binary=$2 hub_url=$3
  mkdir -p "$root/release"
  cp "$binary" "$root/agentcom-sidecar"
  cp "$out/manifest.json" "$out/manifest.json.minisig" "$binary" "$root/release/"
  cat >"$root/config.json" <<EOF
{"agent_id": "release-smoke", "token": "t", "hub_url": "$hub_url",
 "update_url": "file:///release/manifest.json", "update_public_key": "$public_key",
 "reconnect_initial_ms": 100, "reconnect_max_ms": 500}
EOF
  chmod 600 "$root/config.json"
}

in_root() { # root, runner-or-empty, args...
  local root=$1 runner=$2
  shift 2
  if [ -n "$runner" ]; then chroot "$root" "/$runner" /agentcom-sidecar "$@"; else chroot "$root" /agentcom-sidecar "$@"; fi
}

smoke() { # target, runner-or-empty
  local target=$1 runner=$2 root="$scratch/root-$1"
  local binary="$out/agentcom-sidecar-$target"
  echo "== release: $target in an empty root${runner:+ (under $runner)}"
  static_check "$binary"
  empty_root "$root" "$binary" ws://127.0.0.1:9/ws
  [ -z "$runner" ] || cp "$(command -v "$runner")" "$root/"
  echo "release: the root holds: $(cd "$root" && find . -type f | sort | tr '\n' ' ')"
  in_root "$root" "$runner" --version
  in_root "$root" "$runner" check --config /config.json >/dev/null
  echo "release: check accepted the config"
  local status=0
  in_root "$root" "$runner" update --check --config /config.json || status=$?
  [ "$status" = 3 ] || { echo "release: update --check exited $status, expected 3 (same version)"; exit 1; }
  if [ -z "$runner" ]; then
    # The whole update inside the empty root: verified, run, swapped.
    in_root "$root" "" update --force --config /config.json
    cmp "$root/agentcom-sidecar" "$binary"
    [ -f "$root/agentcom-sidecar.previous" ]
    in_root "$root" "" update --rollback
    cmp "$root/agentcom-sidecar" "$binary"
  fi
}

smoke x86_64-unknown-linux-musl ""
if [ -f "$out/agentcom-sidecar-aarch64-unknown-linux-musl" ]; then
  smoke aarch64-unknown-linux-musl qemu-aarch64-static
fi

echo "== release: the static x86_64 binary in its empty root, connected to the dev hub"
hub=target/debug/agentcom-devhub
[ -x "$hub" ] || cargo build --locked --bin agentcom-devhub
root="$scratch/root-x86_64-unknown-linux-musl"
mkfifo "$scratch/hub.in"
"$hub" --port 0 --agent-id release-smoke --token t <"$scratch/hub.in" >"$scratch/hub.log" 2>&1 &
hub_pid=$!
exec 3>"$scratch/hub.in"
wait_for() { # file, pattern, what
  local deadline=$((SECONDS + 30))
  until grep -q "$2" "$1" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "release: timed out waiting for $3"; cat "$1"; exit 1; }
    sleep 0.1
  done
}
wait_for "$scratch/hub.log" 'ws://127.0.0.1:[0-9]*/ws' "the dev hub"
url=$(grep -o 'ws://127.0.0.1:[0-9]*/ws' "$scratch/hub.log" | head -n1)
sed -i "s#ws://127.0.0.1:9/ws#$url#" "$root/config.json"
chroot "$root" /agentcom-sidecar --config /config.json >"$scratch/sidecar.log" 2>&1 &
sidecar=$!
wait_for "$scratch/hub.log" '"identified"' "the sidecar to identify"
kill -TERM "$sidecar"
wait "$sidecar"
echo "release: identified at the dev hub from the empty root, stopped cleanly"
exec 3>&-
wait "$hub_pid" || true
hub_pid=

echo "== release: the update with the binary's directory full, then read-only (tmpfs in a mount namespace)"
cargo test --locked --test it selfupdate:: -- --ignored

echo "release: stage took $((SECONDS - started)) s (build $((built - started)) s)"
