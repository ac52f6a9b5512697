#!/usr/bin/env bash
# Fails when a binary links anything beyond the C runtime (libc, libm, libgcc_s, the loader and
# the kernel's vDSO): the binary must run on a Linux machine with no package installed.
#
#   scripts/ldd-check.sh target/release/classcast        runs ldd on the file
#   ldd BINARY | scripts/ldd-check.sh                    checks ldd output (e.g. from a container)
set -euo pipefail
if [ $# -gt 0 ]; then out=$(ldd "$1"); what=$1; else out=$(cat); what="ldd output"; fi
[ -n "$out" ] || { echo "ldd-check: no ldd output for $what" >&2; exit 1; }
extra=$(printf '%s\n' "$out" | awk '{print $1}' |
  grep -vE '^(linux-vdso\.so\.1|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|/lib64/ld-linux-x86-64\.so\.2|/lib/ld-linux-aarch64\.so\.1)$' || true)
if [ -n "$extra" ]; then
  echo "ldd-check: $what links more than the C runtime:" >&2
  printf '%s\n' "$out" >&2
  exit 1
fi
echo "ldd-check: $what links only the C runtime ($(printf '%s\n' "$out" | awk '{print $1}' | tr '\n' ' '))"
