#!/usr/bin/env bash
# Fuzz smoke test: builds the cargo-fuzz targets in fuzz/ and runs each one briefly from the
# committed seeds. Exits non-zero if any target crashes (panic, abort, timeout, OOM) or fails
# to build. Works on stable Rust: the targets are built without a sanitizer (`-s none`),
# which needs no nightly features. See docs/fuzzing.md.
#
# Environment:
#   FUZZ_SMOKE_SECONDS  seconds per target (default 25)
#   FUZZ_TARGETS        space-separated subset of targets (default: all four)
#   CARGO_TARGET_DIR    build directory (default: fuzz/target, gitignored)
#
# A crash leaves its input in fuzz/artifacts/<target>/; reproduce it with
#   cargo fuzz run -s none -a <target> fuzz/artifacts/<target>/crash-...
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
SECONDS_PER_TARGET=${FUZZ_SMOKE_SECONDS:-25}
TARGETS=${FUZZ_TARGETS:-"rtmp_session flv_media cmaf_packager hls_query"}
CARGO_FUZZ_VERSION=0.13.2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/fuzz/target}

log() { echo "fuzz-smoke: $*"; }

# libfuzzer-sys compiles libFuzzer (C++) with the system compiler.
if ! command -v c++ >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        log "no C++ compiler; installing g++"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends g++
    else
        log "a C++ compiler (c++/g++) is required to build libFuzzer" >&2
        exit 2
    fi
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# -s none: no sanitizer (stable Rust; the code under test is safe Rust).
# -a: debug assertions and overflow checks on, so arithmetic overflow is a crash.
BUILD_FLAGS=(-s none -a)
log "building fuzz targets"
nice -n 19 cargo fuzz build "${BUILD_FLAGS[@]}"

failed=()
for t in $TARGETS; do
    corpus=$(mktemp -d)
    dirs=("$corpus")
    [ -d "fuzz/seeds/$t" ] && dirs+=("fuzz/seeds/$t")
    args=(-max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [ -f "fuzz/dicts/$t.dict" ] && args+=(-dict="fuzz/dicts/$t.dict")
    [ "$t" = rtmp_session ] && args+=(-max_len=16384)
    log "running $t for ${SECONDS_PER_TARGET}s"
    if nice -n 19 cargo fuzz run "${BUILD_FLAGS[@]}" "$t" "${dirs[@]}" -- "${args[@]}" \
        >"$corpus.log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^Done ' "$corpus.log" | sed "s/^/  $t: /" || true
    else
        log "$t FAILED:" >&2
        grep -E -A2 'panicked at|uncaught panic|ERROR: libFuzzer' "$corpus.log" | head -n 20 >&2 || true
        log "last lines of its log:" >&2
        tail -n 40 "$corpus.log" >&2
        failed+=("$t")
    fi
    rm -rf "$corpus" "$corpus.log"
done

if [ ${#failed[@]} -gt 0 ]; then
    log "crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
log "all targets ran without a crash"
