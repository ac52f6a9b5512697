#!/usr/bin/env bash
# Runs every classcast benchmark against freshly started release processes on loopback and
# rewrites docs/benchmarks.md with the figures (about 25 minutes on 2 cores, a few more with
# XIU=1; BENCH_ONLY runs a subset and merges it into the last results).
#
#   ./scripts/bench.sh
#
# Environment knobs (defaults in brackets):
#   BENCH_PORT_BASE [18700]  first of the loopback ports used (base .. base+40; xiu binds its
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
#                            viewers,memory,g2g. With a subset, results are appended to
#                            target/bench-media/extra-results.jsonl and the document is not
#                            rewritten (the hand-written figures live in bench/OBSERVATIONS.md)
#   VIEWER_STEPS [500,750,1000,1250,1500,2000,2500]  viewer counts of the `viewers` ramp
#   G2G_RUNS [3]             glass-to-glass runs per configuration (30 s each)
#   G2G_LONG_S [300]         then one run of this many seconds of classcast (100 ms parts) with
#                            hls.js low-latency + catch-up 1.5, counting stalls; 0 skips it
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
ONLY=${BENCH_ONLY:-all}
want() { [ "$ONLY" = all ] || [[ ",$ONLY," == *",$1,"* ]]; }
# Thousands of viewer connections: raise the soft limit of open files to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NGINX=${NGINX:-auto}
XIU=${XIU:-0}
XIU_VERSION=0.14.0
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
  if [ -n "${SHM:-}" ]; then rm -rf "$SHM"; fi
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
xiu_bin() { # the xiu binary on PATH or in ~/.cargo/bin (where cargo install puts it), or nothing
  local c=${CARGO_HOME:-$HOME/.cargo}/bin/xiu
  command -v xiu 2>/dev/null || { [ -x "$c" ] && echo "$c"; } || true
}
if [ "$XIU" = 1 ] && [ -z "$(xiu_bin)" ]; then
  # Building xiu needs libopus (its WebRTC part links it) and pkg-config to find it.
  for p in libopus-dev pkg-config; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [ "$NGINX" = auto ]; then
  if nginx_installed; then NGINX=1; else NGINX=0; fi
fi
if [ "$XIU" = 1 ] && [ -z "$(xiu_bin)" ]; then
  log "installing xiu $XIU_VERSION (cargo install --locked, at nice 19: ~16 minutes on 2 cores)"
  nice -n 19 cargo install xiu --version "$XIU_VERSION" --locked
fi
if [ "$XIU" = auto ]; then
  if [ -n "$(xiu_bin)" ]; then XIU=1; else XIU=0; fi
fi
XIU_BIN=$(xiu_bin)
if [ "$XIU" = 1 ] && [ -z "$XIU_BIN" ]; then echo "XIU=1 but no xiu binary after installing it" >&2; exit 1; fi

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
  # Every load generator is one loopback address: the per-address token limit would measure
  # itself, not the issuer.
  "${RT[@]}" "$CC" master --bind "127.0.0.1:$port" --jwt-key-file "$WORK/$name/jwt.pem" \
    --heartbeat-interval-ms 1000 --token-rate-per-addr 1000000 --token-burst-per-addr 1000000 >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  "$BENCH" wait --url "http://127.0.0.1:$port/health"
}

# start_slave NAME MASTER_PORT HTTP_PORT RTMP_PORT [EXTRA SLAVE FLAGS…] → sets LAST_PID
start_slave() {
  local name=$1 mport=$2 hport=$3 rport=$4
  "${RT[@]}" "$CC" slave --master-url "http://127.0.0.1:$mport" --node-id "$name" \
    --http-bind "127.0.0.1:$hport" --rtmp-bind "127.0.0.1:$rport" --public-host 127.0.0.1 \
    --heartbeat-interval-ms 1000 --max-connections 10000 "${@:5}" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  "$BENCH" wait --url "http://127.0.0.1:$hport/health"
}

stop() { stop_pid "$1"; }

# xiu_version → "0.14.0 (cargo install …)" or what the binary says about itself
xiu_version() {
  local v
  v=$(cargo install --list 2>/dev/null | sed -n 's/^xiu v\([^:]*\):$/\1/p')
  if [ -n "$v" ] && [ "$XIU_BIN" = "${CARGO_HOME:-$HOME/.cargo}/bin/xiu" ]; then
    echo "$v (\`cargo install xiu --version $v --locked\`)"
  else
    "$XIU_BIN" --version 2>&1 | head -1
  fi
}

# machine_info → the key: value lines of the Machine section
machine_info() {
  local commit
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
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
  if [ "$XIU" = 1 ]; then echo "xiu: $(xiu_version)"; fi
}

# write_xiu_conf DIR RTMP_PORT HLS_PORT [HTTPFLV_PORT] → DIR/xiu.toml: RTMP in, HLS out (MPEG-TS
# segments cut at the first keyframe ≥ 1 s after the previous cut, i.e. one segment per 1 s GOP:
# `fragment` is in whole seconds, 1 is its smallest useful value), 10 segments in the playlist:
# xiu deletes a segment's file the moment it leaves the playlist, and Shaka starts 3 target
# durations (6 s: xiu says 2) behind the end, so with 4 it sometimes asked for a deleted segment
# (404) and never played. The length does not move hls.js, which counts from the end.
write_xiu_conf() {
  local dir=$1 rport=$2 hport=$3 fport=${4:-}
  mkdir -p "$dir"
  {
    # xiu always serves its HTTP API, on 0.0.0.0:8000 unless told otherwise: keep it in our range.
    echo "[httpapi]"
    echo "port = $((PORT_BASE + 39))"
    echo "[rtmp]"
    echo "enabled = true"
    echo "port = $rport"
    echo "[hls]"
    echo "enabled = true"
    echo "port = $hport"
    echo "need_record = false"
    echo "fragment = 1"
    echo "live_ts_count = 10"
    # xiu 0.14.0 (hls 0.5.6) unwraps the S3 settings when a stream starts: without this table
    # the HLS remuxer panics at the first publish and no playlist is ever written. Disabled,
    # it only satisfies that; segments go to local files.
    echo "[hls.s3]"
    echo "enabled = false"
    echo 'bucket = "unused"'
    echo 'region = "unused"'
    if [ -n "$fport" ]; then
      echo "[httpflv]"
      echo "enabled = true"
      echo "port = $fport"
    fi
    echo "[authsecret]"
    echo 'key = ""'
    echo 'password = ""'
    echo "[log]"
    echo 'level = "info"'
  } >"$dir/xiu.toml"
}

# start_xiu DIR PORT… → sets LAST_PID once every PORT accepts connections. xiu writes its HLS
# files under ./APP/STREAM/ and serves them from there, so it runs in DIR.
start_xiu() {
  local dir=$1 p
  (cd "$dir" && exec "${RT[@]}" "$XIU_BIN" -c "$dir/xiu.toml") >"$dir/xiu.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  for p in "${@:2}"; do
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
      if ! alive "$LAST_PID"; then echo "xiu exited: $(cat "$dir/xiu.log")" >&2; return 1; fi
      sleep 0.1
    done
  done
}

# viewer_url MASTER_PORT STREAM → a student's playlist URL, once the stream is live (≤ 30 s)
viewer_url() {
  local u
  for _ in $(seq 100); do
    if u=$("$BENCH" viewer-url --master "http://127.0.0.1:$1" --stream "$2" 2>/dev/null); then
      echo "$u"
      return 0
    fi
    sleep 0.3
  done
  echo "stream $2 never went live on the master at port $1" >&2
  return 1
}

if want tokens; then
# --- 1. tokens ----------------------------------------------------------------------------------
P_TOK=$PORT_BASE
log "1/4 tokens: POST /api/token, 64 connections, 10 s"
start_master master-tokens "$P_TOK"
M_TOK=$LAST_PID
"${RT[@]}" "$BENCH" --results "$RESULTS" tokens --master "http://127.0.0.1:$P_TOK" --secret "$SECRET" \
  --concurrency 64 --seconds 10 --master-pid "$M_TOK"
stop "$M_TOK"
fi

if want heartbeats; then
# --- 2. heartbeats ------------------------------------------------------------------------------
P_HB=$((PORT_BASE + 1))
log "2/4 heartbeats: 1000 simulated slaves, 64 connections, 10 s"
start_master master-heartbeats "$P_HB"
M_HB=$LAST_PID
"${RT[@]}" "$BENCH" --results "$RESULTS" heartbeats --master "http://127.0.0.1:$P_HB" --secret "$SECRET" \
  --nodes 1000 --concurrency 64 --seconds 10 --master-pid "$M_HB"
stop "$M_HB"
fi

if want latency; then
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
fi

if want ingest; then
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
fi

# --- 4b. reference: nginx-rtmp ingesting the same streams ---------------------------------------
if want ingest && [ "$NGINX" = 1 ]; then
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

# --- 4c. second peer: xiu (RTMP in, HLS out) ingesting the same streams -------------------------
if want ingest && [ "$XIU" = 1 ]; then
  R_X=$((PORT_BASE + 34)) H_X=$((PORT_BASE + 35))
  log "4c ingest CPU peer: xiu with HLS (1 s segments), 1 and 4 publishers, 30 s each"
  for k in 1 4; do
    XI=$WORK/xiu-ingest-$k
    write_xiu_conf "$XI" "$R_X" "$H_X"
    start_xiu "$XI" "$R_X" "$H_X"
    X_PID=$LAST_PID
    "${RT[@]}" "$BENCH" --results "$RESULTS" ingest-cpu --label xiu --pid "$X_PID" \
      --publish-base "rtmp://127.0.0.1:$R_X/live" --streams "$k" --flv "$FLV" --seconds 30
    stop "$X_PID"
    # It packaged HLS all along (it logs each segment; the files go when the publishers stop).
    echo "xiu wrote $(grep -c 'on_hls success' "$XI/xiu.log" || true) HLS segments" >&2
  done
fi

# --- 5. serving, viewers per slave, memory: one slave with one live ~1.5 Mbit/s stream ---------
# A 640x360 30 fps x264 stream at 1.4 Mbit/s + AAC 96 kbit/s: its 200 ms parts are ~40 KB.
SMALL_FLV=$MEDIA_DIR/360p30-1400k.flv
if { want serving || want viewers; } && [ ! -s "$SMALL_FLV" ]; then
  ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=size=640x360:rate=30" \
    -f lavfi -i "sine=frequency=440:sample_rate=48000" -t 10 -vf "noise=alls=20:allf=t" -pix_fmt yuv420p \
    -c:v libx264 -preset veryfast -tune zerolatency -g 30 -keyint_min 30 -sc_threshold 0 \
    -b:v 1400k -minrate 1400k -maxrate 1400k -bufsize 1400k -c:a aac -b:a 96k -ar 48000 -ac 2 \
    -f flv "$SMALL_FLV.tmp"
  mv "$SMALL_FLV.tmp" "$SMALL_FLV"
fi

# start_nginx_static ROOT PORT → sets LAST_PID (1 worker, sendfile, the files of ROOT)
start_nginx_static() {
  local root=$1 port=$2 dir=$WORK/nginx-static-$2
  mkdir -p "$dir/logs"
  {
    echo "worker_processes 1;"
    echo "pid $dir/nginx.pid;"
    echo "error_log $dir/logs/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;"
    echo "  types { application/vnd.apple.mpegurl m3u8; video/mp4 m4s; }"
    echo "  server { listen 127.0.0.1:$port; root $root; }"
    echo "}"
  } >"$dir/nginx.conf"
  "${RT[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" -g 'daemon off;' &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  "$BENCH" wait --url "http://127.0.0.1:$port/part.m4s"
}

# wrk_run LABEL SERVER KIND BYTES URL [HEADER] → one JSON line in $RESULTS
wrk_run() {
  local label=$1 server=$2 kind=$3 bytes=$4 url=$5 hdr=${6:-} out
  local args=(-t2 -c200 -d10s --latency)
  if [ -n "$hdr" ]; then args+=(-H "$hdr"); fi
  out=$("${RT[@]}" wrk "${args[@]}" "$url")
  echo "$out" >"$WORK/wrk-$label.txt"
  echo "$out" | awk -v label="$label" -v server="$server" -v kind="$kind" -v bytes="$bytes" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec:/ { rps = $2 }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) }
    /Non-2xx or 3xx responses:/ { non2xx = $5 }
    /Socket errors:/ { err = $0; sub(/^ *Socket errors: */, "", err) }
    END { printf "{\"bench\":\"serving\",\"label\":\"%s\",\"server\":\"%s\",\"kind\":\"%s\",\"bytes\":%d,\"rps\":%.0f,\"p50_ms\":%.2f,\"p99_ms\":%.2f,\"non2xx\":%d,\"socket_errors\":\"%s\"}\n", label, server, kind, bytes, rps, p50, p99, non2xx + 0, err }' \
    | tee -a "$RESULTS"
}

if want serving || want viewers || want memory; then
  P_MS=$((PORT_BASE + 4))
  H_S=$((PORT_BASE + 13)) R_S=$((PORT_BASE + 23))
  N_S=$((PORT_BASE + 31))
  start_master master-serving "$P_MS"
  M_S=$LAST_PID
fi

if want serving || want viewers; then
  start_slave slave-serving "$P_MS" "$H_S" "$R_S"
  S_S=$LAST_PID
  "$BENCH" wait --url "http://127.0.0.1:$P_MS/health" --min-nodes 1
  KEYLINE=$("$BENCH" teacher-key --master "http://127.0.0.1:$P_MS" --stream serve)
  read -r PUBLISH _ <<<"$KEYLINE"
  # ffmpeg -c copy loops the file in real time (publishing costs no encoder).
  "${RT[@]}" ffmpeg -hide_banner -loglevel error -nostdin -re -stream_loop -1 -i "$SMALL_FLV" -c copy \
    -f flv "$PUBLISH" >"$WORK/publisher-serving.log" 2>&1 &
  PUB_S=$!
  PIDS+=("$PUB_S")
  VURL=$(viewer_url "$P_MS" serve)
  for _ in $(seq 100); do curl -sf -o /dev/null "$VURL" && break; sleep 0.2; done
  sleep 4 # a few segments in the window
fi

# The bytes a viewer gets (its playlist, the newest listed part as it is listed: with the media
# ticket) and the bare playlist an edge gets, copied into tmpfs for static nginx (sections 5, 6).
if want serving || want viewers; then
  SHM=$(mktemp -d /dev/shm/classcast-bench.XXXXXX)
  chmod 755 "$SHM" # nginx's worker runs as nobody
  PLAIN=${VURL%%\?*}           # http://…/live/serve/index.m3u8
  BASEURL=${PLAIN%/index.m3u8}
  curl -sf "$VURL" -o "$SHM/viewer.m3u8"
  curl -sf -H "Authorization: Bearer $SECRET" "$PLAIN" -o "$SHM/peer.m3u8"
  # The newest complete part (listed, not the preload hint): it stays available > 10 s.
  PART=$(grep '^#EXT-X-PART:' "$SHM/viewer.m3u8" | tail -1 | sed 's/.*URI="\([^"]*\)".*/\1/')
  curl -sf "$BASEURL/$PART" -o "$SHM/part.m4s"
  PBYTES=$(stat -c %s "$SHM/part.m4s")
  VBYTES=$(stat -c %s "$SHM/viewer.m3u8")
  PEBYTES=$(stat -c %s "$SHM/peer.m3u8")
  chmod 644 "$SHM"/*
  echo "part $PART: $PBYTES bytes; viewer playlist $VBYTES bytes, peer playlist $PEBYTES bytes" >&2
  start_nginx_static "$SHM" "$N_S"
  N_ST=$LAST_PID
fi

if want serving; then
  log "5 serving: one ~40 KB part and the playlist, classcast vs static nginx (wrk -t2 -c200 -d10s)"
  wrk_run part-classcast classcast part "$PBYTES" "$BASEURL/$PART"
  wrk_run part-nginx nginx part "$PBYTES" "http://127.0.0.1:$N_S/part.m4s"
  wrk_run playlist-viewer-classcast classcast playlist-viewer "$VBYTES" "$VURL"
  wrk_run playlist-viewer-nginx nginx playlist-viewer "$VBYTES" "http://127.0.0.1:$N_S/viewer.m3u8"
  wrk_run playlist-peer-classcast classcast playlist-peer "$PEBYTES" "$PLAIN" "Authorization: Bearer $SECRET"
  wrk_run playlist-peer-nginx nginx playlist-peer "$PEBYTES" "http://127.0.0.1:$N_S/peer.m3u8"
fi

if want viewers; then
  log "6 viewers per slave: ${VIEWER_STEPS:-500,750,1000,1250,1500,2000,2500} LL-HLS players, 10 s each"
  "${RT[@]}" "$BENCH" --results "$RESULTS" viewers --master "http://127.0.0.1:$P_MS" \
    --slave "http://127.0.0.1:$H_S" --stream serve --steps "${VIEWER_STEPS:-500,750,1000,1250,1500,2000,2500}" \
    --seconds 10 --slave-pid "$S_S"
  # The same burst shape on static nginx: every viewer woken at once each 200 ms, then the
  # viewer playlist and the part (the bytes classcast served), from tmpfs.
  log "6b viewers reference: static nginx, the same synchronized bursts on fixed URLs"
  N_WORKER=$(pgrep -P "$N_ST" | head -1)
  "${RT[@]}" "$BENCH" --results "$RESULTS" viewers --master unused --slave "http://127.0.0.1:$N_S" \
    --stream serve --steps "${VIEWER_STEPS:-500,750,1000,1250,1500,2000,2500}" --seconds 10 \
    --slave-pid "${N_WORKER:-$N_ST}" --label nginx --sync-playlist /viewer.m3u8 --sync-part /part.m4s \
    --sync-interval-ms 200
fi

if want serving || want viewers; then
  stop "$N_ST"
  rm -rf "$SHM"
  stop "$PUB_S"; stop "$S_S"
fi

if want memory; then
  log "7 memory: slave RSS with 10 streams (6 Mbit/s each) and no viewers"
  start_slave slave-memory "$P_MS" "$H_S" "$R_S"
  S_MEM=$LAST_PID
  "$BENCH" wait --url "http://127.0.0.1:$P_MS/health" --min-nodes 1
  MKEYS=()
  for i in $(seq 0 9); do
    line=$("$BENCH" teacher-key --master "http://127.0.0.1:$P_MS" --stream "mem$i")
    url=${line%% *}
    MKEYS+=("${url#rtmp://127.0.0.1:$R_S/live/}")
  done
  "${RT[@]}" "$BENCH" --results "$RESULTS" ingest-cpu --label classcast-memory --pid "$S_MEM" \
    --publish-base "rtmp://127.0.0.1:$R_S/live" --streams 10 --keys "$(IFS=,; echo "${MKEYS[*]}")" \
    --flv "$FLV" --seconds 20
  stop "$S_MEM"
fi

if want serving || want viewers || want memory; then
  stop "$M_S"
fi

# --- 8. glass-to-glass in headless Chromium: classcast (200 and 100 ms parts) vs nginx-rtmp HLS --
# (and xiu HLS with XIU=1), then one long run of classcast counting stalls (G2G_LONG_S)
if want g2g; then
  log "8 glass-to-glass: one encoder → classcast (parts 200 ms), classcast (100 ms), nginx-rtmp HLS$([ "$XIU" = 1 ] && echo ', xiu HLS')"
  for m in hls.js shaka-player playwright-core mpegts.js; do
    if [ ! -f "bench/web/node_modules/$m/package.json" ]; then (cd bench/web && npm ci --no-audit --no-fund); break; fi
  done
  P_GA=$((PORT_BASE + 5)) H_GA=$((PORT_BASE + 14)) R_GA=$((PORT_BASE + 24))
  P_GB=$((PORT_BASE + 6)) H_GB=$((PORT_BASE + 15)) R_GB=$((PORT_BASE + 25))
  R_GN=$((PORT_BASE + 32)) H_GN=$((PORT_BASE + 33))
  R_GX=$((PORT_BASE + 36)) H_GX=$((PORT_BASE + 37)) F_GX=$((PORT_BASE + 38))
  # g2g.mjs serves its page from its own port: the slaves allow that origin, as a school allows
  # the LMS that embeds the player.
  G2G_PAGE_PORT=$((PORT_BASE + 39))
  export CORS_ORIGINS="http://127.0.0.1:$G2G_PAGE_PORT"
  start_master master-g2g-200 "$P_GA"; M_GA=$LAST_PID
  start_slave slave-g2g-200 "$P_GA" "$H_GA" "$R_GA" --part-target-ms 200; S_GA=$LAST_PID
  start_master master-g2g-100 "$P_GB"; M_GB=$LAST_PID
  start_slave slave-g2g-100 "$P_GB" "$H_GB" "$R_GB" --part-target-ms 100; S_GB=$LAST_PID
  "$BENCH" wait --url "http://127.0.0.1:$P_GA/health" --min-nodes 1
  "$BENCH" wait --url "http://127.0.0.1:$P_GB/health" --min-nodes 1
  # nginx-rtmp with HLS: its shortest sensible setting with a 1 s GOP is 1 s fragments and a
  # 4 s playlist (hls.js needs a few fragments listed to start).
  GN=$WORK/nginx-g2g
  mkdir -p "$GN/logs" "$GN/hls"
  chmod 755 "$WORK" "$GN" "$GN/hls" # nginx's worker (nobody) serves these
  {
    echo "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;"
    echo "worker_processes 1; pid $GN/nginx.pid; error_log $GN/logs/error.log warn;"
    echo "events { worker_connections 1024; }"
    echo "rtmp { server { listen 127.0.0.1:$R_GN; chunk_size 4096;"
    echo "  application live { live on; record off; hls on; hls_path $GN/hls; hls_fragment 1s; hls_playlist_length 4s; } } }"
    echo "http { access_log off; sendfile on;"
    echo "  types { application/vnd.apple.mpegurl m3u8; video/mp2t ts; }"
    echo "  server { listen 127.0.0.1:$H_GN; location /hls/ { alias $GN/hls/;"
    echo "    add_header Cache-Control no-cache; add_header Access-Control-Allow-Origin *; } } }"
  } >"$GN/nginx.conf"
  "${RT[@]}" nginx -p "$GN" -c "$GN/nginx.conf" -e "$GN/logs/error.log" -g 'daemon off;' &
  N_G=$!
  PIDS+=("$N_G")
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$R_GN") 2>/dev/null && break; sleep 0.1; done
  PUB_X=()
  if [ "$XIU" = 1 ]; then
    # xiu with HLS: 1 s MPEG-TS segments (one per GOP), 10 in the playlist (see write_xiu_conf);
    # and HTTP-FLV, its low-latency output.
    write_xiu_conf "$WORK/xiu-g2g" "$R_GX" "$H_GX" "$F_GX"
    start_xiu "$WORK/xiu-g2g" "$R_GX" "$H_GX" "$F_GX"
    X_G=$LAST_PID
    PUB_X=("rtmp://127.0.0.1:$R_GX/live/g2g")
  fi
  read -r PUB_A _ <<<"$("$BENCH" teacher-key --master "http://127.0.0.1:$P_GA" --stream g2g)"
  read -r PUB_B _ <<<"$("$BENCH" teacher-key --master "http://127.0.0.1:$P_GB" --stream g2g)"
  EPOCH=$(date +%s%3N)
  "${RT[@]}" node bench/web/publish.mjs "$EPOCH" "$PUB_A" "$PUB_B" "rtmp://127.0.0.1:$R_GN/live/g2g" \
    "${PUB_X[@]}" >"$WORK/publisher-g2g.log" 2>&1 &
  PUB_G=$!
  PIDS+=("$PUB_G")
  URL_A=$(viewer_url "$P_GA" g2g)
  URL_B=$(viewer_url "$P_GB" g2g)
  URL_N=http://127.0.0.1:$H_GN/hls/g2g.m3u8
  URL_X=http://127.0.0.1:$H_GX/live/g2g/g2g.m3u8
  URL_XF=http://127.0.0.1:$F_GX/live/g2g.flv
  for _ in $(seq 100); do
    curl -sf -o /dev/null "$URL_N" && curl -sf -o /dev/null "$URL_A" \
      && { [ "$XIU" != 1 ] || curl -sf -o /dev/null "$URL_X"; } && break
    sleep 0.2
  done
  sleep 5
  # The playlists the HLS-only servers serve at this point (for the record, in the work dir).
  curl -s "$URL_N" >"$WORK/nginx-g2g.m3u8" || true
  if [ "$XIU" = 1 ]; then curl -s "$URL_X" >"$WORK/xiu-g2g.m3u8" || true; fi
  G2G_RUNS=${G2G_RUNS:-3}
  g2g() { "${RT[@]}" node bench/web/g2g.mjs --port "$G2G_PAGE_PORT" --runs "$G2G_RUNS" --seconds 30 --epoch "$EPOCH" --out "$RESULTS" "$@"; }
  # G2G_HLS_EXTRA adds hls.js settings to every hls.js configuration (its results get a label
  # suffix), e.g. G2G_HLS_EXTRA='"maxLiveSyncPlaybackRate":1.5' G2G_SUFFIX=+catchup
  X=${G2G_HLS_EXTRA:+,$G2G_HLS_EXTRA} SFX=${G2G_SUFFIX:-}
  LL="{\"lowLatencyMode\":true$X}"
  g2g --label "classcast-part200$SFX" --player hls --cfg "$LL" --src "$URL_A"
  g2g --label "classcast-part100$SFX" --player hls --cfg "$LL" --src "$URL_B"
  g2g --label "nginx-rtmp-hls1s$SFX" --player hls --cfg "{\"lowLatencyMode\":true,\"liveSyncDurationCount\":1$X}" --src "$URL_N"
  # xiu's HLS server sends no CORS header: its Chromium runs without web security (the page
  # comes from g2g.mjs's own port). Like nginx-rtmp's HLS it has no parts, so hls.js starts one
  # target duration (liveSyncDurationCount 1; xiu says 2 s) behind the end of the playlist.
  if [ "$XIU" = 1 ]; then
    g2g --label "xiu-hls1s$SFX" --player hls --cfg "{\"lowLatencyMode\":true,\"liveSyncDurationCount\":1$X}" \
      --src "$URL_X" --web-security off
    # Its HTTP-FLV in mpegts.js: no stash buffer (frames go to MSE as they come) and playback-rate
    # live sync (1.2× while more than 0.5 s is buffered, down to 0.3 s; with the defaults, 1.2 s
    # and 0.8 s, it stays wherever in the GOP it joined: 0.4–1.2 s from run to run).
    g2g --label xiu-httpflv --player mpegts \
      --cfg '{"enableStashBuffer":false,"liveSync":true,"liveSyncMaxLatency":0.5,"liveSyncTargetLatency":0.3}' --src "$URL_XF"
  fi
  if [ "${G2G_SHAKA:-1}" = 1 ]; then
    g2g --label classcast-part200 --player shaka --cfg '{"streaming":{"lowLatencyMode":true}}' --src "$URL_A"
    g2g --label nginx-rtmp-hls1s --player shaka --cfg '{}' --src "$URL_N"
    if [ "$XIU" = 1 ]; then
      g2g --label xiu-hls1s --player shaka --cfg '{}' --src "$URL_X" --web-security off
    fi
  fi
  # One long run of the configuration the latency goal is judged on, for its stalls.
  G2G_LONG_S=${G2G_LONG_S:-300}
  if [ "$G2G_LONG_S" -gt 0 ]; then
    log "8b stalls: classcast (100 ms parts), hls.js low-latency + catch-up 1.5, one run of $G2G_LONG_S s"
    "${RT[@]}" node bench/web/g2g.mjs --port "$G2G_PAGE_PORT" --bench g2g_long --runs 1 --seconds "$G2G_LONG_S" --epoch "$EPOCH" \
      --out "$RESULTS" --label classcast-part100+catchup1.5 --player hls \
      --cfg '{"lowLatencyMode":true,"maxLiveSyncPlaybackRate":1.5}' --src "$URL_B"
  fi
  stop "$PUB_G"; stop "$N_G"; stop "$S_GA"; stop "$M_GA"; stop "$S_GB"; stop "$M_GB"
  if [ "$XIU" = 1 ]; then stop "$X_G"; fi
fi

if [ "$ONLY" != all ]; then
  # A subset: stamp its results, replace the same benchmarks' lines in the last full run's
  # results and re-render the document from them (the other sections keep their figures).
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
  stamp="$(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`, the machine $BUSY_BEFORE % busy with other work at the start"
  LAST=$MEDIA_DIR/last-results.jsonl
  touch "$LAST"
  keep=$WORK/kept.jsonl
  cp "$LAST" "$keep"
  drop() { grep -v -F -- "$1" "$keep" >"$keep.new" || true; mv "$keep.new" "$keep"; }
  IFS=, read -r -a subset <<<"$ONLY"
  for b in "${subset[@]}"; do
    case $b in
      memory) drop '"server":"classcast-memory"' ;;
      ingest) grep -F '"server":"classcast-memory"' "$keep" >"$keep.mem" || true
              drop '"bench":"ingest_cpu"'; cat "$keep.mem" >>"$keep" ;;
      g2g) # only the configurations measured now (kind of run + label + player)
           while read -r lp; do drop "$lp"; done \
             < <(grep -o '"bench":"g2g[a-z_]*","label":"[^"]*","player":"[^"]*"' "$RESULTS" | sort -u) ;;
      *) drop "\"bench\":\"$b\"" ;;
    esac
  done
  sed "s|^{|{\"measured\":\"$stamp\",|" "$RESULTS" >>"$keep"
  cp "$keep" "$LAST"
  cat "$RESULTS" >>"$MEDIA_DIR/extra-results.jsonl"
  if [ ! -s "$MEDIA_DIR/last-machine.txt" ]; then
    # No full run yet: this subset's machine stands in for it.
    machine_info >"$MEDIA_DIR/last-machine.txt"
    lscpu >"$MEDIA_DIR/last-lscpu.txt"
  elif [ "$XIU" = 1 ] && { want ingest || want g2g; }; then
    # The xiu figures merged in are from this xiu: name its version with the machine.
    { grep -v '^xiu: ' "$MEDIA_DIR/last-machine.txt" || true; echo "xiu: $(xiu_version)"; } >"$WORK/machine.txt"
    cp "$WORK/machine.txt" "$MEDIA_DIR/last-machine.txt"
  fi
  NOTES=()
  if [ -f bench/OBSERVATIONS.md ]; then NOTES=(--notes bench/OBSERVATIONS.md); fi
  "$BENCH" report --input "$LAST" --machine "$MEDIA_DIR/last-machine.txt" \
    --lscpu "$MEDIA_DIR/last-lscpu.txt" "${NOTES[@]}" --out "$OUT"
  log "done ($ONLY): merged into target/bench-media/last-results.jsonl and rewrote $OUT"
  exit 0
fi

# --- report -------------------------------------------------------------------------------------
log "writing $OUT"
machine_info >"$WORK/machine.txt"
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
