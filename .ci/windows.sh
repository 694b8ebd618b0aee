#!/usr/bin/env bash
# CI, Windows stage: cross-builds both binaries and the tests for
# x86_64-pc-windows-gnu with Debian's Rust (rustc-web, cargo-web, with std
# rebuilt from rust-web-src) and mingw, then runs the unit and integration
# tests and `agentcom-devhub --demo` under Wine. Everything comes from Debian
# packages; nothing is downloaded from elsewhere.
#
# Wine 8 lacks ProcessPrng (bcryptprimitives.dll), which Rust's std imports:
# tests/wine/bcryptprimitives.c provides it. That DLL is test support, built
# here into a scratch directory and found through WINEPATH; it is never
# shipped. The Wine prefix is a scratch directory too, and no wineserver is
# left running at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

missing=()
for pkg in rustc-web cargo-web rust-web-src gcc-mingw-w64-x86-64 wine wine64; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Debian's toolchain, not rustup's (which has no Windows std here).
export PATH="/usr/bin:/bin:$PATH"
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export RUSTC_BOOTSTRAP=1 # -Zbuild-std on a stable toolchain
export CARGO_TARGET_DIR="$PWD/target/windows"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
target=x86_64-pc-windows-gnu
cross=(--locked --target "$target" -Zbuild-std=std,panic_unwind)

scratch=$(mktemp -d)
export WINEPREFIX="$scratch/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
export WINEPATH="Z:${scratch//\//\\}\\dll"
cleanup() {
  wineserver -k >/dev/null 2>&1 || true
  wineserver -w >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT

echo "== windows: $(cargo --version), $(x86_64-w64-mingw32-gcc --version | head -n1), $(wine --version 2>/dev/null)"
mkdir -p "$scratch/dll"
x86_64-w64-mingw32-gcc -shared -s -O2 -o "$scratch/dll/bcryptprimitives.dll" \
  tests/wine/bcryptprimitives.c tests/wine/bcryptprimitives.def -ladvapi32

echo "== windows: cargo build (both binaries)"
cargo build "${cross[@]}" --bins
echo "== windows: cargo test --no-run"
cargo test "${cross[@]}" --no-run
built=$(date +%s)
echo "windows: build took $((built - started)) s"

# One persistent wineserver for the whole stage, started with its output to
# /dev/null, and the prefix's services started the same way: a wineserver
# that a test run starts itself keeps that run's output pipe open, and
# whatever reads the pipe (tee) then never sees its end.
mkdir -p "$WINEPREFIX"
wineserver -p </dev/null >/dev/null 2>&1
wine cmd /c exit 0 </dev/null >/dev/null 2>&1 || true # creates the prefix
# Services (tests/it/windows_service.rs) start from Wine's service manager,
# whose environment has no WINEPATH: they find the DLL in the scratch
# prefix's system32.
cp "$scratch/dll/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
# Wine's service manager gives a starting service process 10 s to connect
# (service_pipe_timeout), Windows' 30 s; with the whole suite starting Wine
# processes beside it on two cores, a service start once took longer than
# 10 s (error 1053). Windows' budget, set before the service manager that
# the tests use starts (it reads the value once): the wineserver is started
# again.
wine reg add 'HKLM\System\CurrentControlSet\Control' /v ServicesPipeTimeout /t REG_DWORD /d 30000 /f \
  </dev/null >/dev/null 2>&1
wineserver -k >/dev/null 2>&1 || true
wineserver -w >/dev/null 2>&1 || true
wineserver -p </dev/null >/dev/null 2>&1
set_to=$(wine reg query 'HKLM\System\CurrentControlSet\Control' /v ServicesPipeTimeout </dev/null 2>/dev/null || true)
if [[ $set_to != *ServicesPipeTimeout*0x7530* ]]; then
  echo "windows: cannot set Wine's ServicesPipeTimeout: $set_to"
  exit 1
fi

echo "== windows: cargo test under Wine"
log="$scratch/test.log"
set +e
# To a file, not through a pipe, so no process left by Wine can hold it open.
cargo test "${cross[@]}" --no-fail-fast >"$log" 2>&1
status=$?
set -e
cat "$log"
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "windows: %d passed, %d failed, %d skipped\n", passed, failed, ignored }' "$log"
echo "windows: skipped under Wine, with reasons:"
grep -E '^test .* \.\.\. ignored, ' "$log" | sed 's/^test /  /' || true
echo "windows: test modules not built on Windows, with reasons (tests/it/main.rs):"
awk '/^\/\/ / { reason = reason substr($0, 4) " "; next }
     /^#\[cfg\((unix|target_os = "linux")\)\]/ { unix_only = 1; next }
     /^mod / { if (unix_only) { name = $2; sub(/;$/, "", name); print "  " name ": " reason } }
     { reason = ""; unix_only = 0 }' tests/it/main.rs
echo "== windows: agentcom-devhub.exe --demo under Wine"
if wine "$CARGO_TARGET_DIR/$target/debug/agentcom-devhub.exe" --demo </dev/null; then
  echo "windows: the demo exited 0"
else
  demo_status=$?
  echo "windows: the demo FAILED (exit $demo_status)"
  [ "$status" -ne 0 ] || status=$demo_status
fi
echo "windows: stage took $(($(date +%s) - started)) s (tests $(($(date +%s) - built)) s)"
exit "$status"
