#!/usr/bin/env bash
# Runs every test classcast has, installing what the tests need on a fresh Debian/Ubuntu
# machine first (real ffmpeg/ffprobe as publisher and players).
set -euo pipefail
cd "$(dirname "$0")/.."

# A timing line per stage, and a summary at the end (where the suite's time goes).
T0=$(date +%s)
STAGE=""
STAGE_T=$T0
TIMES=()
stage() { # stage "name": ends the current stage (printing its time) and starts the next
  local now; now=$(date +%s)
  if [ -n "$STAGE" ]; then
    TIMES+=("$(printf '%5ss  %s' "$((now - STAGE_T))" "$STAGE")")
    printf '\n== test.sh: %s took %s s (total %s s)\n' "$STAGE" "$((now - STAGE_T))" "$((now - T0))"
  fi
  STAGE=$1
  STAGE_T=$now
  [ -n "$STAGE" ] && printf '\n== test.sh: %s\n' "$STAGE"
  return 0
}
summary() {
  local rc=$?
  stage ""
  printf '\n== test.sh: stages (%s s in all, exit %s)\n' "$(($(date +%s) - T0))" "$rc"
  printf '%s\n' "${TIMES[@]}"
}
trap summary EXIT

stage "apt installs"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# The ACME tests run pebble, the ACME test server Let's Encrypt publishes (tests/e2e/acme.rs).
command -v pebble >/dev/null 2>&1 || [ -x /usr/bin/pebble ] || need+=(pebble)
# The HTTPS page test: its CA made by openssl, trusted by Chromium through an NSS database
# (certutil), the nodes checked with curl.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v certutil >/dev/null 2>&1 || need+=(libnss3-tools)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The cache tier test runs the shipped nginx configuration in front of a slave.
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
# mpv plays a recorded class from an edge (tests/e2e/recording.rs).
command -v mpv >/dev/null 2>&1 || need+=(mpv)
# The shipped systemd units are checked with systemd-analyze, the Kubernetes manifests with
# kubernetes-validate (from PyPI).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
{ command -v python3 && python3 -m pip --version && python3 -c 'import ensurepip'; } >/dev/null 2>&1 \
  || need+=(python3-pip python3-venv)
# deploy/kubernetes/check.sh runs promtool and amtool on monitoring.yaml's configs (required when
# CI=true); deploy/test.sh needs the same two packages.
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
{ command -v prometheus-alertmanager && command -v amtool; } >/dev/null 2>&1 || need+=(prometheus-alertmanager)
# The network page tests: a network namespace per student (iproute2) and UDP dropped to one
# slave's port (iptables); the deploy test's docker.io would bring iptables only later.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# The teacher's real tools: OBS Studio under Xvfb, GStreamer's two RTMP sinks.
command -v obs >/dev/null 2>&1 || need+=(obs-studio)
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb xauth)
command -v gst-launch-1.0 >/dev/null 2>&1 || need+=(gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# ffmpeg 9 (tests/e2e/codecs.rs, ladder.rs, the codecs and ladder page tests).
. scripts/ffmpeg9.sh

# A clean clone builds everything once: incremental compilation would only add its bookkeeping.
[ "${CI:-}" = true ] && export CARGO_INCREMENTAL=0

stage "fmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The media crate stays without IO (docs/architecture.md): no async runtime or HTTP stack in
# its dependency tree.
if cargo tree -p classcast-media -e normal --prefix none | grep -E '^(tokio|axum|hyper|reqwest|tower) '; then
  echo "classcast-media must not depend on tokio, axum, hyper, reqwest or tower" >&2
  exit 1
fi
stage "cargo tests"
# The cache tier test (tests/e2e/cache_tier.rs) runs the bench's viewer generator, a binary of
# another package: `cargo test` does not build it.
cargo build -p classcast-bench
cargo test --workspace --all-targets -- --test-threads=4 --skip clients::
stage "real teacher clients (OBS, GStreamer)"
# OBS (software rendering takes about a core) and GStreamer run on their own, so the timing
# assertions of the other end-to-end tests do not share the two cores with them.
cargo test --test e2e clients:: -- --test-threads=1

stage "binary, Kubernetes and systemd checks"
# The pages in real headless Chromium (playwright-core drives the apt chromium).
(cd tests/web && npm ci --no-audit --no-fund --loglevel=error)
cargo build -p classcast
# One self-contained binary: nothing linked beyond the C runtime (the deploy test checks the
# image's release binary the same way).
./scripts/ldd-check.sh target/debug/classcast
# Kubernetes manifests and systemd units against the binary's flags (no cluster needed).
./deploy/kubernetes/check.sh
./deploy/systemd/check.sh
stage "pages in Chromium"
(cd tests/web && node --test --test-concurrency=1 pages.test.mjs tls.test.mjs)

stage "fuzz smoke"
# A short fuzz smoke of the four cargo-fuzz targets (the long runs are in docs/fuzzing.md).
./scripts/fuzz-smoke.sh

stage "deploy test (Docker)"
# Deployment for real: images built offline, `docker compose up --scale slave=5` on a private
# Docker engine, Prometheus scraping it, promtool rule tests, dashboard schema checks.
./deploy/test.sh
