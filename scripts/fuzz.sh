#!/usr/bin/env bash
# Runs each cargo-fuzz (libFuzzer) target of fuzz/ for a bounded time.
#
#   FUZZ_SECONDS=30 scripts/fuzz.sh            # every target, 30 s each (default)
#   FUZZ_SECONDS=600 scripts/fuzz.sh fuzz_body # one target, longer
#
# Needs the nightly toolchain (sanitizers); installs cargo-fuzz from crates.io when it is missing. Each target
# starts from its committed seeds (fuzz/corpus/<target>, never modified) plus what earlier runs found
# (fuzz/work/<target>, git-ignored). A crash stops that target, is saved under fuzz/artifacts/<target>/, and makes
# the script exit non-zero after the other targets ran; reproduce it with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# and turn it into a unit test in src/.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
ALL_TARGETS=(fuzz_body fuzz_config)
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL_TARGETS[@]}")

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing the $TOOLCHAIN toolchain"
  rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (crates.io, about a minute)"
  cargo install cargo-fuzz --locked
fi

start=$(date +%s)
echo "fuzz: building ${TARGETS[*]}"
for t in "${TARGETS[@]}"; do
  cargo "+$TOOLCHAIN" fuzz build "$t"
done

failed=()
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/work/$t" "fuzz/artifacts/$t"
  extra=()
  [[ -f "fuzz/$t.dict" ]] && extra+=("-dict=fuzz/$t.dict")
  echo "fuzz: $t for ${FUZZ_SECONDS}s"
  # -timeout: one input taking more than 10 s is a finding too (a request that stalls an Envoy worker).
  if ! cargo "+$TOOLCHAIN" fuzz run "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
      -print_final_stats=1 "${extra[@]}" 2>"fuzz/work/$t.log"; then
    failed+=("$t")
    echo "fuzz: $t FAILED; last lines of fuzz/work/$t.log:"
    tail -n 40 "fuzz/work/$t.log"
  else
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^Done' "fuzz/work/$t.log" | sed "s/^/fuzz: $t: /" || true
  fi
done

echo "fuzz: finished in $(( $(date +%s) - start ))s"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/<target>/)"
  ls -l fuzz/artifacts/*/ 2>/dev/null || true
  exit 1
fi
echo "fuzz: no crash in ${TARGETS[*]}"
