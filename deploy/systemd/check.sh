#!/usr/bin/env bash
# Checks the systemd units in deploy/systemd/ without installing them (CI runs it):
#   1. `systemd-analyze verify` on copies of the units whose ExecStart names the real binary
#      (verify refuses an ExecStart that does not exist); verify exits 0 on unknown keys and
#      unparsable values (it only warns), so ANY output line about our units fails the check;
#   2. the hardening the units promise is there (DynamicUser, ProtectSystem=strict, an empty
#      CapabilityBoundingSet, …: REQUIRED below), and `systemd-analyze security --offline`
#      rates each unit's exposure at most $EXPOSURE_MAX (0-100; the units are at 15, "1.5 OK");
#   3. each unit runs `/usr/local/bin/classcast <role>` with EnvironmentFile=/etc/classcast/X.env,
#      and X.env.example exists here; every NAME= in it, commented out or not, is a flag of that
#      role (the `[env: NAME]` list of `classcast <role> --help`; LOG, the log filter, allowed);
#   4. the example env file as shipped is REFUSED by classcast (it exits non-zero within 10 s on
#      loopback, instead of running): its placeholders are no working secrets;
#   5. the slave's TimeoutStopSec exceeds DRAIN_MS (of its example env file, else the default)
#      + 5 s, so systemd's SIGKILL does not cut the SIGTERM drain short.
# Fails (non-zero) and prints every failed check.
#
#   deploy/systemd/check.sh [DIR]       DIR: the units (default: this script's directory)
#   CLASSCAST_BIN=/path/to/classcast    the binary (default: target/debug/classcast)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="$(cd "${1:-$here}" && pwd)"
bin="${CLASSCAST_BIN:-$root/target/debug/classcast}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
EXPOSURE_MAX="${EXPOSURE_MAX:-20}"
if [ ! -x "$bin" ]; then
  echo "FAIL: $bin is not an executable classcast binary (build it: cargo build -p classcast, or set CLASSCAST_BIN)" >&2
  exit 1
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "FAIL: systemd-analyze not found (apt-get install systemd)" >&2
  exit 1
fi

shopt -s nullglob
units=("$dir"/*.service)
if [ ${#units[@]} -eq 0 ]; then
  echo "FAIL: no *.service in $dir" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=0

# ------------------------------------------------------------------ 1. systemd-analyze verify
echo "== systemd-analyze verify ($(systemd-analyze --version | head -n1))"
names=()
for u in "${units[@]}"; do
  n="$(basename "$u")"
  names+=("$n")
  if ! grep -qE '^ExecStart=/usr/local/bin/classcast ' "$u"; then
    echo "FAIL: $n: no ExecStart=/usr/local/bin/classcast <role>" >&2
    failed=1
  fi
  sed "s#^ExecStart=/usr/local/bin/classcast #ExecStart=$bin #" "$u" >"$tmp/$n"
done
rc=0
out="$(cd "$tmp" && systemd-analyze verify "${names[@]/#/./}" 2>&1)" || rc=$?
[ -n "$out" ] && printf '%s\n' "$out"
pattern="$(printf '%s\n' "${names[@]}" "$tmp" | sed 's/[.[\*^$]/\\&/g' | paste -sd'|')"
if [ "$rc" != 0 ] || grep -qE "$pattern" <<<"$out"; then
  echo "FAIL: systemd-analyze verify (exit $rc, or output above about the units)" >&2
  failed=1
else
  echo "ok: ${names[*]} verify cleanly"
fi

# ------------------------------------------------------------------ 2. exposure score
if systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
  echo "== systemd-analyze security --offline=yes --threshold=$EXPOSURE_MAX"
  for n in "${names[@]}"; do
    rc=0
    score="$(cd "$tmp" && systemd-analyze security --offline=yes --threshold="$EXPOSURE_MAX" "./$n" 2>&1)" || rc=$?
    score_line="$(grep -E 'Overall exposure level' <<<"$score" || true)"
    if [ "$rc" != 0 ] || [ -z "$score_line" ]; then
      printf '%s\n' "$score" | grep -E '✗|Overall|rror' >&2 || true
      echo "FAIL: $n: exposure above $EXPOSURE_MAX/100 (exit $rc)" >&2
      failed=1
    else
      echo "ok: ${score_line#→ }"
    fi
  done
else
  echo "skip: this systemd-analyze has no 'security --offline' (systemd < 250); exposure not rated"
fi

# ------------------------------------------------------------------ 2 (directives), 3-5
echo "== hardening directives, env files and drain (binary: $bin)"
python3 - "$bin" "$dir" "${units[@]}" <<'PY' || failed=1
import os
import re
import subprocess
import sys
import tempfile

BIN, DIR, UNITS = sys.argv[1], sys.argv[2], sys.argv[3:]
ROLES = ("master", "slave")
# Not a clap flag, so not in --help: the log filter, read by the logger (src/main.rs).
HELPERS = {"LOG"}
DRAIN_MS_DEFAULT = 3000  # `classcast slave --help`: DRAIN_MS default
# What every unit must say (exact lines in [Service]).
REQUIRED = [
    "DynamicUser=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    "LimitNOFILE=65536",
    "Restart=on-failure",
    "KillSignal=SIGTERM",
]
errors = []


def fail(msg):
    errors.append(msg)


def role_envs(role):
    r = subprocess.run([BIN, role, "--help"], capture_output=True, text=True,
                       env=dict(os.environ, COLUMNS="1000"))
    if r.returncode != 0:
        fail(f"`classcast {role} --help` exited {r.returncode}")
    return set(re.findall(r"\[env: ([A-Z][A-Z0-9_]*)", r.stdout))


def seconds(v):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|sec|min)?\s*", v)
    if not m:
        return None
    n = int(m.group(1))
    return {"ms": n / 1000, "min": n * 60}.get(m.group(2), n)


def env_file(path):
    """(set values, names commented out) of a systemd EnvironmentFile."""
    values, commented = {}, {}
    for i, raw in enumerate(open(path), 1):
        line = raw.strip()
        if not line:
            continue
        m = re.match(r"^#\s*([A-Z][A-Z0-9_]*)=", line)
        if m:
            commented[m.group(1)] = i
            continue
        if line.startswith(("#", ";")):
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not m:
            fail(f"{os.path.basename(path)}:{i}: not NAME=value: {line!r}")
            continue
        v = m.group(2).strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        values[m.group(1)] = (v, i)
    return values, commented


for unit in UNITS:
    n = os.path.basename(unit)
    lines = [l.strip() for l in open(unit)]
    for req in REQUIRED:
        if req not in lines:
            fail(f"{n}: missing {req}")
    role = None
    for l in lines:
        m = re.match(r"^ExecStart=/usr/local/bin/classcast\s+(\S+)", l)
        if m:
            role = m.group(1)
    if role not in ROLES:
        fail(f"{n}: ExecStart runs no classcast master/slave (found {role!r})")
        continue
    envfiles = [l.split("=", 1)[1] for l in lines if l.startswith("EnvironmentFile=")]
    want = f"/etc/classcast/{role}.env"
    if want not in envfiles:
        fail(f"{n}: no EnvironmentFile={want}")
        continue
    example = os.path.join(DIR, f"{role}.env.example")
    if not os.path.exists(example):
        fail(f"{n}: {role}.env.example is missing next to it")
        continue
    en = os.path.basename(example)
    known = role_envs(role)
    values, commented = env_file(example)
    for name, (_, i) in values.items():
        if name not in known and name not in HELPERS:
            fail(f"{en}:{i}: {name} is not a `classcast {role}` flag (not in `classcast {role} --help`)")
    for name, i in commented.items():
        if name not in known and name not in HELPERS:
            fail(f"{en}:{i}: commented {name} is not a `classcast {role}` flag")
    # Unit Environment= defaults count as set too (EnvironmentFile= overrides them).
    for l in lines:
        if l.startswith("Environment="):
            for name in re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]*)=", l[len("Environment="):]):
                if name not in known and name not in HELPERS:
                    fail(f"{n}: Environment= sets {name}, not a `classcast {role}` flag")

    # 4. The example as shipped must not run: its placeholders are refused. Loopback and a
    # scratch key path, so a wrongly working example binds nothing public and writes nothing.
    with tempfile.TemporaryDirectory() as scratch:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_BACKTRACE": "0",
               "HOME": scratch}
        env.update({k: v for k, (v, _) in values.items()})
        env.update({
            "MASTER_BIND": "127.0.0.1:0",
            "JWT_KEY_FILE": os.path.join(scratch, "jwt-ed25519.pem"),
            "RTMP_BIND": "127.0.0.1:0",
            "HTTP_BIND": "127.0.0.1:0",
            "MASTER_URL": "http://127.0.0.1:9",
        })
        p = subprocess.Popen([BIN, role], env=env, cwd=scratch, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = p.communicate(timeout=10)
            if p.returncode == 0:
                fail(f"{en}: `classcast {role}` with it exited 0 instead of refusing the placeholders")
            else:
                print(f"ok: {en} as shipped is refused: {(out.strip().splitlines() or ['?'])[-1]}")
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            fail(f"{en}: `classcast {role}` with it as shipped RUNS (still up after 10 s): "
                 "the example must not contain working secrets")

    # 5. The drain fits in the stop timeout.
    if role == "slave":
        drain = int(values.get("DRAIN_MS", (str(DRAIN_MS_DEFAULT), 0))[0])
        stop = [seconds(l.split("=", 1)[1]) for l in lines if l.startswith("TimeoutStopSec=")]
        stop = stop[-1] if stop else 90  # systemd's DefaultTimeoutStopSec
        if stop is None or stop * 1000 <= drain + 5000:
            fail(f"{n}: TimeoutStopSec ({stop} s) does not exceed DRAIN_MS {drain} ms + 5 s")

for e in errors:
    print(f"FAIL: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"ok: {len(UNITS)} units: hardening directives, env names and drain check out")
PY

if [ "$failed" != 0 ]; then
  echo "deploy/systemd/check.sh: FAILED" >&2
  exit 1
fi
echo "deploy/systemd/check.sh: all checks passed"
