#!/usr/bin/env bash
# Runs every classcast benchmark against freshly started release processes on loopback and
# rewrites docs/benchmarks.md with the figures (about 25 minutes on 2 cores, a few more with
# XIU=1; BENCH_ONLY runs a subset and merges it into the last results). This script installs
# the system packages (apt, cargo install xiu), builds the release binaries and execs
# `classcast-bench run`, which starts, schedules, samples and stops every process and writes
# the report (`target/release/classcast-bench run --help` lists the knobs as flags).
#
#   ./scripts/bench.sh
#
# Environment knobs (defaults in brackets):
#   BENCH_PORT_BASE [18700]  first of the loopback ports used (base .. base+46; xiu binds its
#                            ports on all interfaces)
#   NGINX [auto]             1: run the nginx-rtmp ingest reference (installs it if missing);
#                            0: skip it; auto: run it if nginx and its rtmp module are installed
#   XIU [0]                  1: add the xiu live server (Rust, crates.io `xiu`) as a second peer
#                            in ingest CPU and glass-to-glass; without a `xiu` binary on PATH or
#                            in ~/.cargo/bin it installs apt libopus-dev + pkg-config and runs
#                            `cargo install xiu --version 0.14.0 --locked` (~16 min on 2 cores,
#                            at nice 19); 0: skip it; auto: run it if a xiu binary is there
#   BENCH_OUT [docs/benchmarks.md]
#   KEEP_WORK [0]            1: keep the temp dir with the logs and results
#   BENCH_RT [1]             1: run servers and load generators under SCHED_RR priority 1
#                            (chrt), so that background work on a shared machine (builds,
#                            fuzzers) cannot interleave with them; 0: normal scheduling
#   BENCH_QUIET_WAIT [30]    seconds to wait for other load to settle before starting
#   BENCH_REPORT_ONLY [0]    1: only re-render the document from the last run's results
#   BENCH_ONLY [all]         comma-separated subset: tokens,heartbeats,latency,ingest,serving,
#                            viewers,memory,g2g,cache,recording,webrtc,opus,https,chat,ladder,netprofiles
#                            (ladder: section 15, a teacher's multitrack ladder, needs ffmpeg 9;
#                            netprofiles: section 16, a student on each netlab profile, needs root; https: section
#                            13, a part over HTTPS/1.1 and HTTP/2 vs nginx with TLS; opus: section 12, Opus
#                            encode CPU of ropus vs libopus through ffmpeg; it starts no server, so
#                            BENCH_ONLY=opus builds only classcast-bench). With a subset, results are appended to
#                            target/bench-media/extra-results.jsonl and merged into
#                            target/bench-media/last-results.jsonl, from which the document is
#                            re-rendered (the hand-written figures live in bench/OBSERVATIONS.md)
#   VIEWER_STEPS [500,750,1000,1250,1500,2000,2500]  viewer counts of the `viewers` ramp
#   WEBRTC_STEPS [1,100,250,500]  WHEP clients of section 11 (WebRTC viewers per slave)
#   G2G_WEBRTC [1]           0: no WebRTC (WHEP) runs in glass-to-glass
#   G2G_PLAYERS [all]        glass-to-glass kinds to run: hls,student,native,shaka,whep
#   NET_PROFILES [all]       section 16 profiles to run: good,busy,poor,udp-blocked
#   CACHE_STEPS [100,250,500,1000,2000]  viewer counts of the cache tier ramp (section 9: a
#                            slave alone, then through the shipped nginx cache in front of one)
#   G2G_RUNS [3]             glass-to-glass runs per configuration (30 s each)
#   G2G_LONG_S [300]         then one run of this many seconds of classcast (100 ms parts) with
#                            hls.js low-latency + catch-up 1.5, counting stalls; 0 skips it
#
# Every process it starts is stopped by PID at the end, also on error, panic or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

want() { [ "${BENCH_ONLY:-all}" = all ] || [[ ",$BENCH_ONLY," == *",$1,"* ]]; }
need=()
if [ "${BENCH_REPORT_ONLY:-0}" != 1 ]; then
  command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
  if want serving && ! command -v wrk >/dev/null 2>&1; then need+=(wrk); fi
  if want https && ! command -v h2load >/dev/null 2>&1; then need+=(nghttp2-client); fi
  # nginx-rtmp is the ingest reference (NGINX=1); serving, viewers and g2g need nginx too.
  if [ "${NGINX:-auto}" = 1 ] || want serving || want viewers || want g2g || want cache || want recording || want https || want netprofiles; then
    command -v nginx >/dev/null 2>&1 && [ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ] \
      || need+=(nginx libnginx-mod-rtmp)
  fi
  xiu_bin() { command -v xiu 2>/dev/null || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/xiu" ]; }
  if [ "${XIU:-0}" = 1 ] && ! xiu_bin >/dev/null; then
    # Building xiu needs libopus (its WebRTC part links it) and pkg-config to find it.
    for p in libopus-dev pkg-config; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  fi
fi
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "[bench] installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [ "${XIU:-0}" = 1 ] && ! xiu_bin >/dev/null; then
  echo "[bench] installing xiu 0.14.0 (cargo install --locked, at nice 19: ~16 minutes on 2 cores)" >&2
  nice -n 19 cargo install xiu --version 0.14.0 --locked
fi

# Sections that start no classcast process (opus), and re-rendering, need only the bench binary.
only_standalone() {
  [ "${BENCH_ONLY:-all}" != all ] || return 1
  local s
  IFS=, read -ra sections <<<"$BENCH_ONLY"
  for s in "${sections[@]}"; do [ "$s" = opus ] || return 1; done
}
# The ladder section (15) needs ffmpeg 9 for multitrack FLV.
if [ "${BENCH_REPORT_ONLY:-0}" != 1 ] && want ladder && [ -z "${FFMPEG9:-}" ]; then
  . scripts/ffmpeg9.sh
fi
echo "[bench] building release binaries" >&2
if [ "${BENCH_REPORT_ONLY:-0}" = 1 ] || only_standalone; then
  cargo build --release -p classcast-bench
else
  cargo build --release -p classcast -p classcast-bench
fi
exec target/release/classcast-bench run "$@"
