#!/usr/bin/env bash
# Runs every classcast benchmark against freshly started release processes on loopback and
# rewrites docs/benchmarks.md with the figures (about 5 minutes on 2 cores).
#
#   ./scripts/bench.sh
#
# Environment knobs (defaults in brackets):
#   BENCH_PORT_BASE [18700]  first of the loopback ports used (base .. base+40)
#   NGINX [auto]             1: run the nginx-rtmp ingest reference (installs it if missing);
#                            0: skip it; auto: run it if nginx and its rtmp module are installed
#   BENCH_OUT [docs/benchmarks.md]
#   KEEP_WORK [0]            1: keep the temp dir with the logs and results
#   BENCH_RT [1]             1: run servers and load generators under SCHED_RR priority 1
#                            (chrt), so that background work on a shared machine (builds,
#                            fuzzers) cannot interleave with them; 0: normal scheduling
#   BENCH_QUIET_WAIT [30]    seconds to wait for other load to settle before starting
#   BENCH_REPORT_ONLY [0]    1: only re-render the document from the last run's results
#
# Every process it starts is stopped by PID at the end, also on error or Ctrl-C.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
ROOT=$PWD

MEDIA_DIR=$ROOT/target/bench-media
if [ "${BENCH_REPORT_ONLY:-0}" = 1 ]; then
  # Re-render the document from the last run's results (after editing bench/OBSERVATIONS.md).
  cargo build --release -p classcast-bench
  NOTES=()
  if [ -f bench/OBSERVATIONS.md ]; then NOTES=(--notes bench/OBSERVATIONS.md); fi
  "$ROOT/target/release/classcast-bench" report --input "$MEDIA_DIR/last-results.jsonl" \
    --machine "$MEDIA_DIR/last-machine.txt" --lscpu "$MEDIA_DIR/last-lscpu.txt" "${NOTES[@]}" \
    --out "${BENCH_OUT:-docs/benchmarks.md}"
  exit 0
fi

PORT_BASE=${BENCH_PORT_BASE:-18700}
NGINX=${NGINX:-auto}
OUT=${BENCH_OUT:-docs/benchmarks.md}
WORK=$(mktemp -d /tmp/classcast-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
PIDS=()

log() { printf '\n\033[1m[bench] %s\033[0m\n' "$*" >&2; }

alive() { # a child that exited but was not reaped yet is a zombie: not alive
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}

# Stops one process this script started, by PID (SIGTERM, then SIGKILL after 5 s), reaps it and
# forgets it, so that a recycled PID is never signalled later.
stop_pid() {
  local pid=$1 rest=() p
  if alive "$pid"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || rest+=("$p"); done
  PIDS=("${rest[@]}")
}

cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  trap - EXIT
  if [ "${KEEP_WORK:-0}" = 1 ] || [ "$rc" != 0 ]; then
    echo "[bench] logs and results kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- prerequisites ------------------------------------------------------------------------------
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
nginx_installed() { command -v nginx >/dev/null 2>&1 && [ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ]; }
if [ "$NGINX" = 1 ] && ! nginx_installed; then need+=(nginx libnginx-mod-rtmp); fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [ "$NGINX" = auto ]; then
  if nginx_installed; then NGINX=1; else NGINX=0; fi
fi

for p in $(seq "$PORT_BASE" $((PORT_BASE + 40))); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is in use: set BENCH_PORT_BASE to a free range" >&2
    exit 1
  fi
done

# Busy CPU of the whole machine over 2 s, in % of one core (200 = both cores busy).
busy_pct() {
  local a b
  read -r -a a < /proc/stat
  sleep 2
  read -r -a b < /proc/stat
  local busy=$(( (b[1]+b[2]+b[3]+b[6]+b[7]+b[8]) - (a[1]+a[2]+a[3]+a[6]+a[7]+a[8]) ))
  echo $(( busy * 100 / 200 ))
}

log "building release binaries"
cargo build --release -p classcast -p classcast-bench
CC=$ROOT/target/release/classcast
BENCH=$ROOT/target/release/classcast-bench

# --- test media: 720p30 x264 CBR 6 Mbit/s + AAC, 10 s (cached under target/) -------------------
FFMPEG_ARGS=(-f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440:sample_rate=48000"
  -t 10 -vf "noise=alls=30:allf=t" -pix_fmt yuv420p
  -c:v libx264 -preset veryfast -tune zerolatency -g 30 -keyint_min 30 -sc_threshold 0
  -b:v 6M -minrate 6M -maxrate 6M -bufsize 6M
  -c:a aac -b:a 128k -ar 48000 -ac 2 -f flv)
mkdir -p "$MEDIA_DIR"
FLV=$MEDIA_DIR/720p30-6M-$(printf '%s ' "${FFMPEG_ARGS[@]}" | sha256sum | cut -c1-12).flv
if [ ! -s "$FLV" ]; then
  log "encoding the test stream (ffmpeg, ~30 s)"
  ffmpeg -hide_banner -loglevel error -y "${FFMPEG_ARGS[@]}" "$FLV.tmp"
  mv "$FLV.tmp" "$FLV"
fi

# Real-time scheduling for everything the benchmarks start (inherited by their threads and
# children): on a dedicated machine it changes nothing; on a shared one it keeps background
# work from stealing the cores mid-request. Bounded by the kernel's RT throttling (95 %).
RT=()
SCHED="normal (CFS)"
if [ "${BENCH_RT:-1}" = 1 ] && command -v chrt >/dev/null 2>&1 && chrt -r 1 true 2>/dev/null; then
  RT=(chrt -r 1)
  SCHED="SCHED_RR priority 1 (chrt -r 1) for every server, load generator and publisher"
fi

# The figures mean little while something else loads the machine: wait a while for quiet.
QUIET_WAIT=${BENCH_QUIET_WAIT:-30}
waited=0
while :; do
  b=$(busy_pct)
  if [ "$b" -le 20 ]; then break; fi
  if [ "$waited" -ge "$QUIET_WAIT" ]; then
    log "WARNING: the machine is still ${b} % busy (of one core) with other work; benchmarking anyway (each result records the CPU others used)"
    break
  fi
  echo "[bench] machine ${b} % busy with other work; waiting for it to settle ($waited/$QUIET_WAIT s)" >&2
  sleep 8
  waited=$((waited + 10))
done
BUSY_BEFORE=$b

# --- cluster helpers ----------------------------------------------------------------------------
SECRET=bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
TEACHER=teach-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
export CLUSTER_SECRET=$SECRET TEACHER_PASSWORD=$TEACHER
export LOG=${LOG:-info}

# start_master NAME PORT → sets LAST_PID
start_master() {
  local name=$1 port=$2
  mkdir -p "$WORK/$name"
  "${RT[@]}" "$CC" master --bind "127.0.0.1:$port" --jwt-key-file "$WORK/$name/jwt.pem" \
    --heartbeat-interval-ms 1000 >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  "$BENCH" wait --url "http://127.0.0.1:$port/health"
}

# start_slave NAME MASTER_PORT HTTP_PORT RTMP_PORT → sets LAST_PID
start_slave() {
  local name=$1 mport=$2 hport=$3 rport=$4
  "${RT[@]}" "$CC" slave --master-url "http://127.0.0.1:$mport" --node-id "$name" \
    --http-bind "127.0.0.1:$hport" --rtmp-bind "127.0.0.1:$rport" --public-host 127.0.0.1 \
    --heartbeat-interval-ms 1000 --max-connections 10000 >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  "$BENCH" wait --url "http://127.0.0.1:$hport/health"
}

stop() { stop_pid "$1"; }

# --- 1. tokens ----------------------------------------------------------------------------------
P_TOK=$PORT_BASE
log "1/4 tokens: POST /api/token, 64 connections, 10 s"
start_master master-tokens "$P_TOK"
M_TOK=$LAST_PID
"${RT[@]}" "$BENCH" --results "$RESULTS" tokens --master "http://127.0.0.1:$P_TOK" --secret "$SECRET" \
  --concurrency 64 --seconds 10 --master-pid "$M_TOK"
stop "$M_TOK"

# --- 2. heartbeats ------------------------------------------------------------------------------
P_HB=$((PORT_BASE + 1))
log "2/4 heartbeats: 1000 simulated slaves, 64 connections, 10 s"
start_master master-heartbeats "$P_HB"
M_HB=$LAST_PID
"${RT[@]}" "$BENCH" --results "$RESULTS" heartbeats --master "http://127.0.0.1:$P_HB" --secret "$SECRET" \
  --nodes 1000 --concurrency 64 --seconds 10 --master-pid "$M_HB"
stop "$M_HB"

# --- 3. latency: a master and two slaves --------------------------------------------------------
P_M=$((PORT_BASE + 2))
H_A=$((PORT_BASE + 10)) R_A=$((PORT_BASE + 20))
H_B=$((PORT_BASE + 11)) R_B=$((PORT_BASE + 21))
log "3/4 latency: publish → part at origin, edge lag (30 s)"
start_master master-media "$P_M"
M_MEDIA=$LAST_PID
start_slave slave-a "$P_M" "$H_A" "$R_A"
S_A=$LAST_PID
start_slave slave-b "$P_M" "$H_B" "$R_B"
S_B=$LAST_PID
"$BENCH" wait --url "http://127.0.0.1:$P_M/health" --min-nodes 2
KEYLINE=$("$BENCH" teacher-key --master "http://127.0.0.1:$P_M" --stream latency)
read -r PUBLISH ORIGIN <<<"$KEYLINE"
if [ "$ORIGIN" = "http://127.0.0.1:$H_A" ]; then EDGE=http://127.0.0.1:$H_B; else EDGE=http://127.0.0.1:$H_A; fi
echo "origin $ORIGIN, edge $EDGE" >&2
"${RT[@]}" "$BENCH" --results "$RESULTS" latency --publish "$PUBLISH" --origin "$ORIGIN" --edge "$EDGE" \
  --secret "$SECRET" --flv "$FLV" --seconds 30 --dump "$WORK/latency-parts.csv"
stop "$S_A"; stop "$S_B"; stop "$M_MEDIA"

# --- 4. ingest CPU: a master and one slave (nothing pulls from it), a fresh slave per run -------
P_MI=$((PORT_BASE + 3))
H_C=$((PORT_BASE + 12)) R_C=$((PORT_BASE + 22))
log "4/4 ingest CPU: 1 and 4 publishers into one slave, 30 s each"
start_master master-ingest "$P_MI"
M_ING=$LAST_PID
keys() { # keys PREFIX N → comma-separated NAME?key=… list
  local out=() line url
  for i in $(seq 0 $(($2 - 1))); do
    line=$("$BENCH" teacher-key --master "http://127.0.0.1:$P_MI" --stream "$1$i")
    url=${line%% *}
    out+=("${url#rtmp://127.0.0.1:$R_C/live/}")
  done
  (IFS=,; echo "${out[*]}")
}
for k in 1 4; do
  start_slave slave-c "$P_MI" "$H_C" "$R_C"
  S_C=$LAST_PID
  "$BENCH" wait --url "http://127.0.0.1:$P_MI/health" --min-nodes 1
  "${RT[@]}" "$BENCH" --results "$RESULTS" ingest-cpu --label classcast --pid "$S_C" \
    --publish-base "rtmp://127.0.0.1:$R_C/live" --streams "$k" --keys "$(keys "ingest$k-" "$k")" \
    --flv "$FLV" --seconds 30
  stop "$S_C"
done
stop "$M_ING"

# --- 4b. reference: nginx-rtmp ingesting the same streams ---------------------------------------
if [ "$NGINX" = 1 ]; then
  R_N=$((PORT_BASE + 30))
  log "4b ingest CPU reference: nginx-rtmp, 1 and 4 publishers, 30 s each"
  NGX=$WORK/nginx
  mkdir -p "$NGX/logs"
  cat >"$NGX/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
worker_processes 1;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events { worker_connections 256; }
rtmp {
  server {
    listen 127.0.0.1:$R_N;
    chunk_size 4096;
    application live { live on; record off; }
  }
}
EOF
  for k in 1 4; do
    "${RT[@]}" nginx -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/logs/error.log" -g 'daemon off;' &
    N_PID=$!
    PIDS+=("$N_PID")
    for _ in $(seq 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$R_N") 2>/dev/null && break
      sleep 0.1
    done
    N_WORKERS=$(tr ' ' ',' <"/proc/$N_PID/task/$N_PID/children" | sed 's/,$//')
    "${RT[@]}" "$BENCH" --results "$RESULTS" ingest-cpu --label nginx-rtmp --pid "$N_PID,$N_WORKERS" \
      --publish-base "rtmp://127.0.0.1:$R_N/live" --streams "$k" --flv "$FLV" --seconds 30
    stop "$N_PID"
  done
fi

# --- report -------------------------------------------------------------------------------------
log "writing $OUT"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $commit"
  echo "nproc: $(nproc)"
  echo "busy_before: $BUSY_BEFORE"
  echo "scheduling: $SCHED"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1) ($(lscpu | sed -n 's/^Hypervisor vendor: *//p' | head -1 | sed 's/^$/bare metal/;s/^\(.\+\)$/\1 VM/'))"
  echo "memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -sr)"
  echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "rustc: $(rustc --version)"
  echo "ffmpeg: $(ffmpeg -version | head -1 | cut -d' ' -f1-3)"
  if [ "$NGINX" = 1 ]; then echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //') with libnginx-mod-rtmp $(dpkg-query -W -f='${Version}' libnginx-mod-rtmp 2>/dev/null || echo '?')"; else echo "nginx: not run"; fi
} >"$WORK/machine.txt"
lscpu >"$WORK/lscpu.txt"
NOTES=()
if [ -f bench/OBSERVATIONS.md ]; then NOTES=(--notes bench/OBSERVATIONS.md); fi
"$BENCH" report --input "$RESULTS" --machine "$WORK/machine.txt" --lscpu "$WORK/lscpu.txt" \
  "${NOTES[@]}" --out "$OUT"
cp "$RESULTS" "$MEDIA_DIR/last-results.jsonl"
cp "$WORK/machine.txt" "$MEDIA_DIR/last-machine.txt"
cp "$WORK/lscpu.txt" "$MEDIA_DIR/last-lscpu.txt"
cp "$WORK/latency-parts.csv" "$MEDIA_DIR/last-latency-parts.csv"
log "done: $OUT (raw results in target/bench-media/last-results.jsonl, per-part latencies in last-latency-parts.csv)"
