#!/usr/bin/env bash
# Fuzzes the envelope decoder (fuzz/fuzz_targets/decode_envelope.rs) for a
# while, seeded with the golden events and the poison corpus.
#
#   scripts/fuzz.sh [seconds]      (default 60)
#
# Findings land in fuzz/artifacts/decode_envelope/ and make this exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

if ! command -v cargo-fuzz >/dev/null; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

corpus=fuzz/corpus/decode_envelope
mkdir -p "$corpus"
cp messages/tests/golden/*.json "$corpus"/
for fixture in tests/poison/*; do
    [ "$(basename "$fixture")" = corpus.json ] || cp "$fixture" "$corpus"/
done

# libFuzzer instrumentation needs nightly-only rustc flags; this machine has
# one stable toolchain, which accepts them when bootstrapping is allowed.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-/var/tmp/fleet-fuzz-target}"
cargo fuzz run decode_envelope "$corpus" -- \
    -max_total_time="$seconds" -max_len=300000 -rss_limit_mb=2048 -print_final_stats=1
