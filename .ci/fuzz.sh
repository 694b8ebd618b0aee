#!/usr/bin/env bash
# CI: a short libFuzzer run of every target in fuzz/ (default 20 s each;
# FUZZ_SECONDS to change). Needs the nightly toolchain and cargo-fuzz
# (installed from crates.io if missing). New inputs go to fuzz/corpus-run/
# (ignored by git); the seed corpus in fuzz/corpus/ is only read. A crash
# fails the run and leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz

targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build -O
for target in $targets; do
  mkdir -p "fuzz/corpus-run/$target"
  echo "== fuzz $target for ${seconds} s"
  set +e
  cargo +nightly fuzz run -O "$target" "fuzz/corpus-run/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
    grep -E 'Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb|ERROR|SUMMARY|panicked|artifact_prefix|Test unit written'
  # grep only hides libFuzzer's progress lines; the status is cargo fuzz's.
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" != 0 ]; then
    echo "fuzz target $target failed (exit $status); input in fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
echo "fuzzing: all targets ran ${seconds} s without a finding"
