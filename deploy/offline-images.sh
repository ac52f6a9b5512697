#!/usr/bin/env bash
# Builds the two base images deploy/Dockerfile starts from, with their official tags, without a
# container registry:
#
#   debian:bookworm-slim        debootstrap --variant=minbase bookworm + docker import
#   rust:<ver>-slim-bookworm    FROM the image above, gcc libc6-dev ca-certificates from Debian (the
#                               official image's package set: no pkg-config, no cmake), and this
#                               machine's Rust toolchain (`rustup which rustc`)
#
# Both carry this machine's extra trusted CA certificates (/usr/local/share/ca-certificates/*.crt),
# so cargo works behind a TLS-inspecting proxy. With a registry nobody needs this script: `docker
# compose build` pulls the real images. Air-gapped or proxied sites (and our CI) run it once.
#
# Idempotent: an image that already exists is left alone (FORCE=1 rebuilds both).
#
#   sudo deploy/offline-images.sh            # needs root (debootstrap), docker, debootstrap
#
# Environment:
#   DOCKER          docker CLI to use (default: docker; honours DOCKER_HOST)
#   DEBIAN_MIRROR   where debootstrap and apt fetch packages (default http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR  the images' security source (default http://deb.debian.org/debian-security)
#   RUST_TOOLCHAIN  toolchain directory to copy (default: the one `rustup which rustc` points into)
#   RUST_TAG        tag of the builder image (default: rust:<major.minor of that rustc>-slim-bookworm;
#                   the full version tag is added too)
#   CA_DIR          extra CA certificates to trust (default /usr/local/share/ca-certificates)
#   FORCE=1         rebuild even if the images exist
set -euo pipefail

DOCKER=${DOCKER:-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
CA_DIR=${CA_DIR:-/usr/local/share/ca-certificates}
DEBIAN_TAG=debian:bookworm-slim
FORCE=${FORCE:-0}

log() { printf '[offline-images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
have_image() { [ "$FORCE" != 1 ] && $DOCKER image inspect "$1" >/dev/null 2>&1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap needs it)"
$DOCKER version >/dev/null 2>&1 || die "cannot talk to the Docker engine ($DOCKER, DOCKER_HOST=${DOCKER_HOST:-default})"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/classcast-images.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

copy_cas() { # $1: destination folder; copies *.crt from CA_DIR (may be none)
  mkdir -p "$1"
  if [ -d "$CA_DIR" ]; then
    find "$CA_DIR" -maxdepth 2 -type f -name '*.crt' -exec cp {} "$1"/ \;
  fi
}

# ---------------------------------------------------------------- debian:bookworm-slim
if have_image "$DEBIAN_TAG"; then
  log "$DEBIAN_TAG exists; skipping"
else
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  t0=$(date +%s)
  root="$WORK/rootfs"
  log "debootstrap --variant=minbase bookworm from $MIRROR (about a minute)"
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }

  # Trim it the way the official slim image is trimmed, and keep later installs slim.
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/* "$root"/tmp/* "$root"/root/.bash_history
  : >"$root/etc/hostname"
  : >"$root/etc/resolv.conf"
  rm -f "$root/etc/machine-id" && : >"$root/etc/machine-id"
  # Trusted CAs, so that anything built FROM this image can use this site's proxy.
  copy_cas "$root/usr/local/share/ca-certificates"

  log "docker import -> $DEBIAN_TAG"
  tar --numeric-owner --xattrs -C "$root" -c . |
    $DOCKER import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' \
      --message "debootstrap --variant=minbase bookworm (classcast deploy/offline-images.sh)" \
      - "$DEBIAN_TAG" >/dev/null
  rm -rf "$root"
  log "$DEBIAN_TAG built in $(($(date +%s) - t0)) s ($($DOCKER image inspect -f '{{.Size}}' "$DEBIAN_TAG" | awk '{printf "%d MB", $1/1e6}'))"
fi

# ---------------------------------------------------------------- rust:<ver>-slim-bookworm
if [ -n "${RUST_TOOLCHAIN:-}" ]; then
  tc=$RUST_TOOLCHAIN
else
  command -v rustup >/dev/null || die "no rustup on PATH; set RUST_TOOLCHAIN to a toolchain directory"
  tc=$(dirname "$(dirname "$(readlink -f "$(rustup which rustc)")")")
fi
[ -x "$tc/bin/rustc" ] && [ -x "$tc/bin/cargo" ] || die "$tc is not a Rust toolchain (no bin/rustc, bin/cargo)"
full=$("$tc/bin/rustc" --version | awk '{print $2}')   # e.g. 1.95.0
minor=${full%.*}                                        # e.g. 1.95
RUST_TAG=${RUST_TAG:-rust:$minor-slim-bookworm}
triple=$("$tc/bin/rustc" -vV | awk '/^host:/ {print $2}')

# An image made by an older version of this script had pkg-config, which the official one has not:
# such an image would hide a build that needs it, so it is made again.
if have_image "$RUST_TAG" && $DOCKER run --rm --network host "$RUST_TAG" sh -c '! command -v pkg-config' >/dev/null 2>&1; then
  log "$RUST_TAG exists; skipping"
else
  t0=$(date +%s)
  ctx="$WORK/rust"
  mkdir -p "$ctx/toolchain"
  copy_cas "$ctx/ca"
  # The toolchain without its docs (share/ is ~800 MB of HTML); hard links when possible.
  for d in bin lib libexec etc; do
    [ -e "$tc/$d" ] || continue
    cp -al "$tc/$d" "$ctx/toolchain/" 2>/dev/null || cp -a "$tc/$d" "$ctx/toolchain/"
  done
  cat >"$ctx/Dockerfile" <<EOF
FROM $DEBIAN_TAG
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    RUST_VERSION=$full
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \\
 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \\
 && update-ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
COPY toolchain/ /usr/local/rustup/toolchains/$full-$triple/
RUN mkdir -p /usr/local/cargo/bin \\
 && for b in /usr/local/rustup/toolchains/$full-$triple/bin/*; do ln -s "\$b" /usr/local/cargo/bin/; done \\
 && chmod -R a+w /usr/local/cargo \\
 && rustc --version && cargo --version
EOF
  log "building $RUST_TAG from $tc ($full, $triple)"
  # --network host: the default bridge may not exist (it does not on our CI machines).
  $DOCKER build --network host -t "$RUST_TAG" -t "rust:$full-slim-bookworm" "$ctx" >"$WORK/build.log" 2>&1 ||
    { tail -30 "$WORK/build.log" >&2; die "building $RUST_TAG failed"; }
  log "$RUST_TAG built in $(($(date +%s) - t0)) s"
fi
$DOCKER image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(debian:bookworm-slim|rust:$minor)" >&2 || true
