#!/usr/bin/env bash
# Checks the Kubernetes manifests in deploy/kubernetes/ without a cluster (CI runs it):
#   1. every *.yaml validates with `kubernetes-validate --strict` (rejects unknown fields) against
#      the newest Kubernetes version the installed kubernetes-validate knows; a warning (e.g. an
#      unknown kind, for which it has no schema) fails too;
#   2. every env var a classcast container sets, and every `# - name: FOO` env entry left
#      commented out, is a flag of its role: the `[env: NAME]` list of `classcast <role> --help`
#      (helpers only used for $(…) interpolation are allowed by name below);
#   3. every $(VAR) in an env value names a var defined EARLIER in the same list (Kubernetes leaves
#      anything else as literal text);
#   4. every classcast command line (container command/args, exec probes, lifecycle hooks) is a
#      real subcommand with real flags: `classcast <the same arguments> --help` exits 0; master
#      and slave containers have a readiness and a liveness probe;
#   5. consistency: objects are in the Namespace defined here; Services, PDBs and the HPA select
#      or name a workload defined here; a StatefulSet's serviceName and the *.svc names in env
#      values are Services defined here (a `dns+` MASTER_URL a headless one); every referenced
#      Secret key is in secrets.example.yaml; a slave's terminationGracePeriodSeconds exceeds
#      DRAIN_MS + 5 s.
#   Checks 2-4 and the commented-out env entries concern classcast containers (image
#   classcast[:tag]) and the files defining one; the other containers (monitoring.yaml's
#   Prometheus and Alertmanager) get checks 1 and 5, and:
#   6. monitoring configs: the ConfigMap key alerts.yml is byte-identical to
#      deploy/prometheus/alerts.yml, and alertmanager.yml is deploy/alertmanager/alertmanager.yml
#      except its webhook `- url:` line (any URL, same indentation); the *.svc names in
#      prometheus.yml are Services defined here; `promtool check config` (with alerts.yml next to
#      it) and `amtool check-config` pass on the extracted configs. Without promtool / amtool
#      (apt: prometheus, prometheus-alertmanager) those two are skipped with a warning, but fail
#      under CI=true.
# Fails (non-zero) and prints every failed check.
#
#   deploy/kubernetes/check.sh [DIR]      DIR: the manifests (default: this script's directory)
#   CLASSCAST_BIN=/path/to/classcast      the binary whose --help is the truth (default:
#                                         target/debug/classcast; `cargo build -p classcast`)
#   K8S_VERSION=1.33.0                    validate against this version instead of the newest
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="$(cd "${1:-$here}" && pwd)"
bin="${CLASSCAST_BIN:-$root/target/debug/classcast}"
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
if [ ! -x "$bin" ]; then
  echo "FAIL: $bin is not an executable classcast binary (build it: cargo build -p classcast, or set CLASSCAST_BIN)" >&2
  exit 1
fi

if ! python3 -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
  echo "installing kubernetes-validate (and PyYAML) with pip"
  if ! python3 -m pip install --quiet kubernetes-validate; then
    # A distribution's Python may refuse (PEP 668 "externally managed"): use a venv of our own.
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/classcast/kubernetes-validate-venv"
    echo "pip refused; installing into the venv $venv"
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install --quiet kubernetes-validate
    PATH="$venv/bin:$PATH"
  fi
fi

shopt -s nullglob
files=("$dir"/*.yaml)
if [ ${#files[@]} -eq 0 ]; then
  echo "FAIL: no *.yaml in $dir" >&2
  exit 1
fi

# ------------------------------------------------------------------ 1. schema validation
version="${K8S_VERSION:-$(python3 -c 'import kubernetes_validate.utils as u; print(u.latest_version())')}"
echo "== kubernetes-validate --strict -k $version (kubernetes-validate $(python3 -m kubernetes_validate --version))"
rc=0
out="$(python3 -m kubernetes_validate --strict --quiet -k "$version" "${files[@]}" 2>&1)" || rc=$?
[ -n "$out" ] && printf '%s\n' "$out"
failed=0
if [ "$rc" != 0 ] || grep -qE '^(WARN|ERROR|FATAL)' <<<"$out"; then
  echo "FAIL: schema validation (exit $rc)" >&2
  failed=1
else
  echo "ok: ${#files[@]} files valid"
fi

# ------------------------------------------------------------------ 2-5. classcast checks
echo "== classcast flags, commands and references (binary: $bin)"
python3 - "$bin" "${files[@]}" <<'PY' || failed=1
import os
import re
import subprocess
import sys

import yaml

BIN, FILES = sys.argv[1], sys.argv[2:]

# Env vars a manifest may set that are not classcast flags, each with why.
HELPERS = {
    # The pod's name / namespace from the downward API, only for $(POD_NAME) / $(POD_NAMESPACE)
    # in other values (INTERNAL_URL, PUBLIC_URL, MASTER_URL).
    "POD_NAME": "downward-API helper for $(POD_NAME) interpolation",
    "POD_NAMESPACE": "downward-API helper for $(POD_NAMESPACE) interpolation",
    # Read by the logger (tracing EnvFilter in src/main.rs), not by clap, so not in --help.
    "LOG": "log filter, read by the logger",
}
ROLES = ("master", "slave")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod")
DRAIN_MS_DEFAULT = 3000  # `classcast slave --help`: DRAIN_MS default

errors = []


def fail(msg):
    errors.append(msg)


def run_help(argv):
    env = dict(os.environ, COLUMNS="1000")
    return subprocess.run([BIN, *argv, "--help"], capture_output=True, text=True, env=env)


_env_cache = {}


def role_envs(role):
    if role not in _env_cache:
        r = run_help([role])
        if r.returncode != 0:
            fail(f"`classcast {role} --help` exited {r.returncode}: {r.stderr.strip()}")
        _env_cache[role] = set(re.findall(r"\[env: ([A-Z][A-Z0-9_]*)", r.stdout))
    return _env_cache[role]


def is_classcast_image(image):
    return re.search(r"(^|/)classcast(:|@|$)", image or "") is not None


def check_argv(where, argv):
    """argv as the container would exec it; returns the subcommand or None."""
    if not argv or os.path.basename(str(argv[0])) != "classcast":
        fail(f"{where}: {argv!r} does not run classcast")
        return None
    args = [str(a) for a in argv[1:]]
    if not args or args[0].startswith("-"):
        fail(f"{where}: {argv!r} names no classcast subcommand")
        return None
    r = run_help(args)
    if r.returncode != 0:
        err = (r.stderr.strip().splitlines() or ["?"])[0]
        fail(f"{where}: `classcast {' '.join(args)} --help` exited {r.returncode}: {err}")
        return None
    return args[0]


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


docs = []  # (file, object)
for f in FILES:
    try:
        with open(f) as fh:
            loaded = [o for o in yaml.safe_load_all(fh) if o]
    except yaml.YAMLError as e:
        print(f"FAIL: {os.path.basename(f)}: not YAML: {e}", file=sys.stderr)
        sys.exit(1)
    docs.extend((os.path.basename(f), o) for o in loaded)


def name_of(o):
    return f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"


namespaces = {o["metadata"]["name"] for _, o in docs if o.get("kind") == "Namespace"}
services = {o["metadata"]["name"]: o for _, o in docs if o.get("kind") == "Service"}
secrets = {}
for _, o in docs:
    if o.get("kind") == "Secret":
        secrets[o["metadata"]["name"]] = set((o.get("data") or {}) | (o.get("stringData") or {}))
workloads = []  # (kind, name, pod template labels)
classcast_files = set()  # the files with a classcast container


def pod_spec(o):
    if o.get("kind") == "Pod":
        return o.get("metadata", {}).get("labels", {}), o.get("spec", {})
    tpl = o.get("spec", {}).get("template", {})
    return tpl.get("metadata", {}).get("labels", {}), tpl.get("spec", {})


def need_secret(where, name, key, optional):
    if optional:
        return
    if name not in secrets:
        fail(f"{where}: Secret {name!r} is not defined in secrets.example.yaml")
    elif key is not None and key not in secrets[name]:
        fail(f"{where}: Secret {name!r} has no key {key!r} in secrets.example.yaml")


SVC_RE = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.(\$\(POD_NAMESPACE\)|[a-z0-9-]+)\.svc(\.cluster\.local)?\b")

for f, o in docs:
    kind, meta = o.get("kind"), o.get("metadata", {})
    where = f"{f}: {name_of(o)}"
    if kind != "Namespace":
        if meta.get("namespace") not in namespaces:
            fail(f"{where}: metadata.namespace {meta.get('namespace')!r} is not a Namespace defined here {sorted(namespaces)}")
    if kind not in WORKLOADS:
        continue
    labels, spec = pod_spec(o)
    workloads.append((kind, meta.get("name"), labels))
    if kind == "StatefulSet":
        svc = o["spec"].get("serviceName")
        if svc not in services or services[svc]["spec"].get("clusterIP") != "None":
            fail(f"{where}: serviceName {svc!r} is not a headless Service defined here")
    for v in spec.get("volumes", []) or []:
        if "secret" in v:
            s = v["secret"]
            for it in s.get("items", []) or [{"key": None}]:
                need_secret(f"{where} volume {v['name']}", s.get("secretName"), it["key"], s.get("optional"))
        for src in (v.get("projected") or {}).get("sources", []) or []:
            if "secret" in src:
                s = src["secret"]
                for it in s.get("items", []) or [{"key": None}]:
                    need_secret(f"{where} volume {v['name']}", s.get("name"), it["key"], s.get("optional"))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        cw = f"{where} container {c.get('name')}"
        if not is_classcast_image(c.get("image")):
            continue
        classcast_files.add(f)
        # The image's ENTRYPOINT is ["classcast"] (deploy/Dockerfile).
        argv = (c.get("command") or ["classcast"]) + (c.get("args") or [])
        role = check_argv(cw, argv)
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            p = c.get(probe)
            if p is None:
                if role in ROLES and probe != "startupProbe":
                    fail(f"{cw}: no {probe}")
                continue
            if "exec" in p:
                check_argv(f"{cw} {probe}", p["exec"].get("command"))
        for hook, h in (c.get("lifecycle") or {}).items():
            if "exec" in (h or {}):
                check_argv(f"{cw} lifecycle.{hook}", h["exec"].get("command"))
        if role not in ROLES:
            continue
        known = role_envs(role)
        defined = []
        env_values = {}
        for e in c.get("env", []) or []:
            n = e["name"]
            if n not in known and n not in HELPERS:
                fail(f"{cw}: env {n} is not a `classcast {role}` flag (not in `classcast {role} --help`)")
            for ref in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value", ""))):
                if ref not in defined:
                    fail(f"{cw}: env {n} uses $({ref}), which is not defined before it in the same env list")
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                need_secret(f"{cw} env {n}", ref.get("name"), ref.get("key"), ref.get("optional"))
            if "value" in e:
                env_values[n] = str(e["value"])
                for m in SVC_RE.finditer(env_values[n]):
                    svc = m.group(1)
                    if svc not in services:
                        fail(f"{cw}: env {n} names Service {svc!r}, which is not defined here")
                    elif n == "MASTER_URL" and "dns+" in env_values[n] and services[svc]["spec"].get("clusterIP") != "None":
                        fail(f"{cw}: env {n} resolves Service {svc!r} with dns+, but it is not headless (clusterIP: None)")
            defined.append(n)
        for ef in c.get("envFrom", []) or []:
            fail(f"{cw}: envFrom hides which flags are set; list env entries instead")
        if role == "slave":
            drain = int(env_values.get("DRAIN_MS", DRAIN_MS_DEFAULT))
            if grace * 1000 <= drain + 5000:
                fail(f"{cw}: terminationGracePeriodSeconds {grace} s does not exceed DRAIN_MS {drain} ms + 5 s")

# Env entries left commented out (`# - name: FOO`, for the operator to enable) are checked too,
# in the files that define a classcast container (not in monitoring.yaml's embedded configs).
known_all = set().union(*(role_envs(r) for r in ROLES)) | set(HELPERS)
for f in FILES:
    if os.path.basename(f) not in classcast_files:
        continue
    for i, line in enumerate(open(f), 1):
        m = re.match(r"^\s*#\s*-\s*name:\s*([A-Z][A-Z0-9_]*)\s*$", line)
        if m and m.group(1) not in known_all:
            fail(f"{os.path.basename(f)}:{i}: commented env {m.group(1)} is not a classcast master or slave flag")

for f, o in docs:
    kind, where = o.get("kind"), f"{f}: {name_of(o)}"
    if kind == "Service":
        sel = o["spec"].get("selector")
        if not any(labels_match(sel, lab) for _, _, lab in workloads):
            fail(f"{where}: selector {sel} matches no workload's pods defined here")
    elif kind == "PodDisruptionBudget":
        sel = o["spec"].get("selector", {}).get("matchLabels")
        if not any(labels_match(sel, lab) for _, _, lab in workloads):
            fail(f"{where}: selector {sel} matches no workload's pods defined here")
    elif kind == "HorizontalPodAutoscaler":
        t = o["spec"]["scaleTargetRef"]
        if (t.get("kind"), t.get("name")) not in {(k, n) for k, n, _ in workloads}:
            fail(f"{where}: scaleTargetRef {t.get('kind')}/{t.get('name')} is not a workload defined here")

for e in errors:
    print(f"FAIL: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"ok: {len(docs)} objects; env names, commands, probes and references check out")
PY

# ------------------------------------------------------------------ 6. monitoring configs
echo "== monitoring configs (ConfigMaps vs deploy/prometheus, deploy/alertmanager; promtool, amtool)"
python3 - "$root" "${files[@]}" <<'PY' || failed=1
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT, FILES = sys.argv[1], sys.argv[2:]
CI = os.environ.get("CI") == "true"
ALERTS = os.path.join(ROOT, "deploy/prometheus/alerts.yml")
ALERTMANAGER = os.path.join(ROOT, "deploy/alertmanager/alertmanager.yml")
# The one line of alertmanager.yml a Kubernetes copy may change: the webhook receiver's URL.
URL_LINE = re.compile(r"^(\s*)- url: \S+$")

errors = []
fail = errors.append

docs = []  # (file, object)
for f in FILES:
    with open(f) as fh:
        docs.extend((os.path.basename(f), o) for o in yaml.safe_load_all(fh) if o)
services = {o["metadata"]["name"] for _, o in docs if o.get("kind") == "Service"}
keys = {}  # ConfigMap data key -> [(where, text)]
for f, o in docs:
    if o.get("kind") == "ConfigMap":
        for k, v in (o.get("data") or {}).items():
            keys.setdefault(k, []).append((f"{f}: ConfigMap/{o['metadata']['name']} key {k}", v))


def one(key):
    found = keys.get(key, [])
    if len(found) != 1:
        fail(f"{len(found)} ConfigMaps with key {key} (want exactly 1, monitoring.yaml's)")
        return None, None
    return found[0]


def first_diff(a, b):
    al, bl = a.splitlines(True), b.splitlines(True)
    for i, (x, y) in enumerate(zip(al, bl), 1):
        if x != y:
            return f"line {i}: {x!r} != {y!r}"
    return f"{len(al)} lines != {len(bl)} lines, or another final newline"


where, alerts = one("alerts.yml")
if alerts is not None:
    want = open(ALERTS, encoding="utf-8").read()
    if alerts != want:
        fail(f"{where} is not byte-identical to deploy/prometheus/alerts.yml ({first_diff(alerts, want)}): copy the file into it")

am_where, am = one("alertmanager.yml")
if am is not None:
    want = open(ALERTMANAGER, encoding="utf-8").read()
    got_l, want_l = am.splitlines(True), want.splitlines(True)
    url_lines = [i for i, l in enumerate(want_l) if URL_LINE.match(l.rstrip("\n"))]
    if len(url_lines) != 1:
        fail(f"deploy/alertmanager/alertmanager.yml has {len(url_lines)} `- url:` lines, not 1 (the webhook's): adapt check.sh")
    elif len(got_l) != len(want_l) or not am.endswith("\n") or not want.endswith("\n"):
        fail(f"{am_where} differs from deploy/alertmanager/alertmanager.yml ({first_diff(am, want)}): copy the file into it")
    else:
        for i, (g, w) in enumerate(zip(got_l, want_l)):
            if g == w:
                continue
            m, n = URL_LINE.match(g.rstrip("\n")), URL_LINE.match(w.rstrip("\n"))
            if i == url_lines[0] and m and m.group(1) == n.group(1):
                continue  # the webhook URL: the one line allowed to differ
            fail(f"{am_where} differs from deploy/alertmanager/alertmanager.yml at line {i + 1}: {g!r} != {w!r} (only the webhook `- url:` line may)")
            break

prom_where, prom = one("prometheus.yml")
if prom is not None:
    for m in re.finditer(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.([a-z0-9-]+)\.svc(\.cluster\.local)?\b", prom):
        if m.group(1) not in services:
            fail(f"{prom_where} names Service {m.group(1)!r}, which is not defined here")


def tool(name, argv, what):
    if shutil.which(name) is None:
        pkg = "prometheus" if name == "promtool" else "prometheus-alertmanager"
        msg = f"{name} not found (apt: {pkg}): {what} not checked"
        if CI:
            fail(f"{msg} (required under CI=true)")
        else:
            print(f"WARN: {msg}", file=sys.stderr)
        return
    r = subprocess.run([name, *argv], capture_output=True, text=True)
    if r.returncode != 0:
        out = (r.stdout + r.stderr).strip()
        fail(f"`{name} {' '.join(argv)}` on {what} exited {r.returncode}:\n{out}")
    else:
        print(f"ok: {name} {argv[0]} {argv[1] if argv[0] == 'check' else ''}".rstrip() + f": {what}")


with tempfile.TemporaryDirectory(prefix="classcast-k8s-check.") as tmp:
    if prom is not None:
        with open(os.path.join(tmp, "prometheus.yml"), "w", encoding="utf-8") as fh:
            fh.write(prom)
        # Next to it, for its `rule_files: [alerts.yml]` (checked by promtool too).
        if alerts is not None:
            with open(os.path.join(tmp, "alerts.yml"), "w", encoding="utf-8") as fh:
                fh.write(alerts)
        tool("promtool", ["check", "config", os.path.join(tmp, "prometheus.yml")], f"{prom_where} (rules: alerts.yml)")
    if am is not None:
        with open(os.path.join(tmp, "alertmanager.yml"), "w", encoding="utf-8") as fh:
            fh.write(am)
        tool("amtool", ["check-config", os.path.join(tmp, "alertmanager.yml")], am_where)

for e in errors:
    print(f"FAIL: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print("ok: alerts.yml identical, alertmanager.yml identical but for the webhook URL, Services exist")
PY

if [ "$failed" != 0 ]; then
  echo "deploy/kubernetes/check.sh: FAILED" >&2
  exit 1
fi
echo "deploy/kubernetes/check.sh: all checks passed"
