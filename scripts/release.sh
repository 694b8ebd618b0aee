#!/usr/bin/env bash
# Builds the release binaries into OUT_DIR and signs their manifest:
#
#   AGENTCOM_SIGNING_KEY=/path/to/minisign.key scripts/release.sh OUT_DIR
#
# OUT_DIR gets, per target, agentcom-sidecar-<target>[.exe], then
# manifest.json (version, git revision, and per target the file name, size
# and SHA-256) and manifest.json.minisig (minisign, Ed25519, with the secret
# key at $AGENTCOM_SIGNING_KEY; minisign asks for its password if it has
# one). Serve the directory as is and point update_url at manifest.json.
#
# Targets ($RELEASE_TARGETS, space-separated; default all three):
#   x86_64-unknown-linux-musl   fully static: musl, and OpenSSL compiled in
#                               (the `vendored-tls` feature: openssl-src)
#   aarch64-unknown-linux-musl  the same for 64-bit ARM (Debian's aarch64
#                               cross gcc and musl-dev:arm64)
#   x86_64-pc-windows-gnu       the .exe, with SChannel (no OpenSSL)
#
# Built with Debian's Rust (rustc-web, cargo-web; std rebuilt from
# rust-web-src with -Zbuild-std), so nothing but Debian packages and
# crates.io is needed; .ci/release.sh installs them. Needs: rustc-web
# cargo-web rust-web-src musl-tools minisign, plus gcc-aarch64-linux-gnu and
# musl-dev:arm64 for ARM (dpkg --add-architecture arm64), and
# gcc-mingw-w64-x86-64 for Windows; libunwind-14-dev is fetched per arch
# with `apt-get download` (see musl_setup).
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: scripts/release.sh OUT_DIR (with AGENTCOM_SIGNING_KEY set)}
key=${AGENTCOM_SIGNING_KEY:?AGENTCOM_SIGNING_KEY must name the minisign secret key}
[ -r "$key" ] || { echo "release: cannot read the signing key $key" >&2; exit 2; }
targets=${RELEASE_TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl x86_64-pc-windows-gnu}
mkdir -p "$out"
out=$(cd "$out" && pwd)

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "release: $1 is missing (Debian package $2)" >&2; exit 2; }
}
need minisign minisign
need sha256sum coreutils
[ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || { echo "release: Debian's rustc-web and cargo-web are missing" >&2; exit 2; }

# Debian's toolchain, not rustup's (which may lack these targets' std).
export PATH="/usr/bin:/bin:$PATH"
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export RUSTC_BOOTSTRAP=1 # -Zbuild-std on a stable toolchain
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/release-build}"

# Debian's musl-gcc.specs for any arch, plus what rustc's static PIE needs
# (-static-pie: rcrt1.o, no program interpreter), and without gcc's
# libgcc_eh.a (see musl_setup).
musl_specs() {
  local lib="/usr/lib/$1-linux-musl" inc="/usr/include/$1-linux-musl"
  cat <<EOF
%rename cpp_options old_cpp_options

*cpp_options:
-nostdinc -isystem $inc -isystem include%s %(old_cpp_options)

*cc1:
%(cc1_cpu) -nostdinc -isystem $inc -isystem include%s

*link_libgcc:
-L$lib -L .%s

*libgcc:
libgcc.a%s

*startfile:
%{static-pie:$lib/rcrt1.o} %{!static-pie:%{!shared: $lib/Scrt1.o}} $lib/crti.o crtbeginS.o%s

*endfile:
crtendS.o%s $lib/crtn.o

*link:
%{!static:%{!static-pie:-dynamic-linker /lib/ld-musl-$1.so.1}} -nostdlib %{shared:-shared} %{static:-static} %{static-pie:-static -pie --no-dynamic-linker -z text}

EOF
}

# Static musl with Debian's gcc: a musl-gcc for the arch (Debian's specs
# file with the paths swapped), and the libunwind.a that Rust's musl std
# links (a -Zbuild-std sysroot has none): LLVM's, as in Rust's own musl
# targets, from Debian's libunwind-14-dev for that arch (fetched with
# `apt-get download`, not installed), plus __fprintf_chk, the one glibc-only
# symbol it uses. (gcc's libgcc_eh.a does not do: it calls glibc's
# _dl_find_object.) Kept under the target dir at a fixed path, so the
# flags, and with them cargo's cache, stay the same from run to run.
musl_setup() {
  local arch=$1 gcc=$2 debarch=$3 upper
  upper=$(echo "${arch}_unknown_linux_musl" | tr 'a-z' 'A-Z')
  local libdir="/usr/lib/${arch}-linux-musl" tools="$CARGO_TARGET_DIR/musl-tools/$arch"
  [ -f "$libdir/libc.a" ] || { echo "release: $libdir/libc.a is missing (musl-dev:$debarch)" >&2; exit 2; }
  need "$gcc" "gcc for $arch"
  mkdir -p "$tools"
  musl_specs "$arch" >"$tools/musl-gcc.specs"
  printf '#!/bin/sh\nexec %s "$@" -specs %s\n' "$gcc" "$tools/musl-gcc.specs" >"$tools/cc"
  chmod +x "$tools/cc"
  if [ ! -f "$tools/libunwind.a" ]; then
    rm -rf "$tools/deb" && mkdir -p "$tools/deb"
    (cd "$tools/deb" && apt-get download "libunwind-14-dev:$debarch" >/dev/null) ||
      { echo "release: cannot fetch libunwind-14-dev:$debarch (apt-get download)" >&2; exit 2; }
    dpkg -x "$tools"/deb/*.deb "$tools/deb/x"
    printf '%s\n' '#include <stdarg.h>' '#include <stdio.h>' \
      'int __fprintf_chk(FILE *f, int flag, const char *fmt, ...) {' \
      '    va_list ap; va_start(ap, fmt); int n = vfprintf(f, fmt, ap); va_end(ap); (void)flag; return n;' \
      '}' >"$tools/fortify.c"
    "$tools/cc" -O2 -c "$tools/fortify.c" -o "$tools/fortify.o"
    cp "$tools/deb/x/usr/lib/llvm-14/lib/libunwind.a" "$tools/libunwind.a.tmp"
    chmod u+w "$tools/libunwind.a.tmp"
    "${gcc%gcc}ar" rs "$tools/libunwind.a.tmp" "$tools/fortify.o"
    mv "$tools/libunwind.a.tmp" "$tools/libunwind.a"
  fi
  export "CARGO_TARGET_${upper}_LINKER=$tools/cc"
  export "CARGO_TARGET_${upper}_RUSTFLAGS=-C link-self-contained=no -C target-feature=+crt-static -L $tools"
  # openssl-src's C compiler and archiver.
  export "CC_${arch}_unknown_linux_musl=$tools/cc"
  export "AR_${arch}_unknown_linux_musl=${gcc%gcc}ar"
}

build() {
  local target=$1 features=() name="agentcom-sidecar-$1" exe=agentcom-sidecar
  case "$target" in
    x86_64-unknown-linux-musl) musl_setup x86_64 x86_64-linux-gnu-gcc amd64; features=(--features vendored-tls) ;;
    aarch64-unknown-linux-musl) musl_setup aarch64 aarch64-linux-gnu-gcc arm64; features=(--features vendored-tls) ;;
    x86_64-pc-windows-gnu)
      need x86_64-w64-mingw32-gcc gcc-mingw-w64-x86-64
      export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
      name="$name.exe" exe=agentcom-sidecar.exe
      ;;
    *) echo "release: unknown target $target" >&2; exit 2 ;;
  esac
  echo "== release: $target"
  local started=$SECONDS
  cargo build --locked --release --target "$target" -Zbuild-std=std,panic_unwind \
    "${features[@]}" --bin agentcom-sidecar
  cp "$CARGO_TARGET_DIR/$target/release/$exe" "$out/$name"
  echo "release: $name $(stat -c %s "$out/$name") bytes, built in $((SECONDS - started)) s"
}

for target in $targets; do
  build "$target"
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
{
  printf '{\n  "version": "%s",\n  "git_revision": "%s",\n  "files": {' "$version" "$revision"
  sep=""
  for target in $targets; do
    name="agentcom-sidecar-$target"
    [ "$target" = x86_64-pc-windows-gnu ] && name="$name.exe"
    printf '%s\n    "%s": { "file": "%s", "size": %s, "sha256": "%s" }' "$sep" "$target" "$name" \
      "$(stat -c %s "$out/$name")" "$(sha256sum "$out/$name" | cut -d' ' -f1)"
    sep=","
  done
  printf '\n  }\n}\n'
} >"$out/manifest.json"
rm -f "$out/manifest.json.minisig"
minisign -S -s "$key" -m "$out/manifest.json" -x "$out/manifest.json.minisig" \
  -t "agentcom-sidecar $version ($revision)"
echo "release: $out/manifest.json signed"
cat "$out/manifest.json"
