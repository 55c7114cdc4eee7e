#!/usr/bin/env bash
# deploy/docker/build.sh: builds the images of the compose stack from what this machine has: the
# formstream binary cargo built, the Kafka jars deploy/local/kafka.sh uses, and Debian packages.
# Works without any container registry (the base is made with debootstrap and `docker import`)
# and, with FORMSTREAM_BASE_IMAGE=debian:bookworm-slim, on a machine that has one.
#
# Usage: deploy/docker/build.sh [--binary PATH] [--tag TAG] [IMAGE...]
#   IMAGE       base, formstream, kafka, prometheus (default: all four, in that order)
#   --binary    the formstream binary to copy in (default: $CARGO_TARGET_DIR or ./target, then
#               release/formstream). deploy/split-debuginfo.sh splits its debug sections off
#               first, into image/ beside it: image/formstream goes in the image,
#               image/formstream.debug stays on the host (backtraces' file:line, gdb)
#   --tag       the formstream image's name (default formstream:local)
# Images made:
#   formstream-base:bookworm    Debian bookworm minbase, without docs, man pages and apt lists
#                               (only when FORMSTREAM_BASE_IMAGE is left at this default)
#   formstream:local            the binary, non-root (Dockerfile)
#   formstream-kafka:<version>  Kafka of deploy/local/pom.xml on Debian's JRE (deploy/docker/kafka)
#   formstream-prometheus:local Debian's prometheus package (deploy/docker/prometheus)
# Every build reuses Docker's layer cache, so a second run only copies a changed binary. Runs of
# this script wait for each other (a lock in the cache folder).
#
# Environment (all optional):
#   FORMSTREAM_BASE_IMAGE     base of every image (default formstream-base:bookworm, made here
#                             when missing; any other name is used as is, pulled if needed)
#   FORMSTREAM_DEBIAN_MIRROR  mirror debootstrap and the base's apt use (default http://deb.debian.org/debian)
#   FORMSTREAM_DOCKER_CACHE   where the base's root file system is kept as a tarball between runs,
#                             so a machine debootstraps once a month (default ~/.cache/formstream/docker)
#   DOCKER_HOST               the daemon (deploy/docker/dockerd.sh env prints it for its own)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BASE_IMAGE="${FORMSTREAM_BASE_IMAGE:-formstream-base:bookworm}"
MIRROR="${FORMSTREAM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${FORMSTREAM_DOCKER_CACHE:-${HOME:-/root}/.cache/formstream/docker}"
# The base tarball is made again after this many days, for Debian's updates.
BASE_MAX_AGE_DAYS=30
# Debian's legacy builder: none of the Dockerfiles needs BuildKit, and Debian's docker.io has no buildx.
export DOCKER_BUILDKIT=0

binary="${CARGO_TARGET_DIR:-$REPO/target}/release/formstream"
tag=formstream:local
images=()
while (($#)); do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    base|formstream|kafka|prometheus) images+=("$1"); shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
((${#images[@]})) || images=(base formstream kafka prometheus)

log() { echo "build.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v docker >/dev/null || die "the docker CLI is not found"
timeout 20 docker version >/dev/null 2>&1 \
  || die "no Docker daemon answers (DOCKER_HOST=${DOCKER_HOST:-unset}); deploy/docker/dockerd.sh start starts one"

mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
flock 9
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# `docker build` with the given context, removing the image the tag named before when the build
# replaced it (so repeated builds leave no untagged images behind).
build() {   # build TAG CONTEXT [docker build args...]
  local name="$1" context="$2"; shift 2
  local before t0=$SECONDS
  before="$(docker image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)"
  docker build --network host --build-arg "BASE=$BASE_IMAGE" -t "$name" "$@" "$context" >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; die "docker build of $name failed"; }
  local after; after="$(docker image inspect --format '{{.Id}}' "$name")"
  if [[ -n "$before" && "$before" != "$after" ]]; then docker rmi "$before" >/dev/null 2>&1 || true; fi
  log "$name: $(docker image inspect --format '{{.Size}}' "$name" | awk '{printf "%.1f MB", $1/1e6}') ($((SECONDS - t0)) s)"
}

# formstream-base:bookworm from Debian's packages: a minbase debootstrap, slimmed as Debian's own
# -slim images are (no docs but copyrights, no man pages or locales, no apt lists or caches), and
# told to stay so in later installs (dpkg path excludes, no recommends).
make_base() {
  local tarball="$CACHE/base-bookworm.tar.gz" t0=$SECONDS
  if [[ ! -f "$tarball" || -n "$(find "$tarball" -mtime +"$BASE_MAX_AGE_DAYS")" ]]; then
    command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
    [[ "$(id -u)" == 0 ]] || die "debootstrap needs root (or set FORMSTREAM_BASE_IMAGE=debian:bookworm-slim)"
    local rootfs="$work/rootfs"
    log "debootstrap --variant=minbase bookworm from $MIRROR ..."
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
      || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    local security="${MIRROR%/debian}/debian-security"
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $security bookworm-security main
EOF
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/formstream-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
    cat >"$rootfs/etc/apt/apt.conf.d/formstream-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log
    tar -C "$rootfs" --numeric-owner -czf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    log "base root file system: $tarball ($(du -h "$tarball" | cut -f1), $((SECONDS - t0)) s)"
  fi
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
  log "$BASE_IMAGE imported from $tarball ($((SECONDS - t0)) s)"
}

ensure_base() {
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
  if [[ "$BASE_IMAGE" == formstream-base:bookworm ]]; then make_base; else docker pull "$BASE_IMAGE"; fi
}

build_formstream() {
  [[ -x "$binary" ]] || die "$binary is missing: cargo build --release --bin formstream (or pass --binary)"
  # The binary without its debug sections, split again only when cargo rebuilt it.
  local split; split="$(dirname "$binary")/image"
  if [[ ! "$split/formstream" -nt "$binary" || ! -f "$split/formstream.debug" ]]; then
    "$REPO/deploy/split-debuginfo.sh" "$binary" "$split"
  fi
  mkdir -p "$work/formstream"
  cp -l "$split/formstream" "$work/formstream/formstream" 2>/dev/null \
    || cp "$split/formstream" "$work/formstream/formstream"
  cp "$REPO/Dockerfile" "$work/formstream/Dockerfile"
  build "$tag" "$work/formstream" --build-arg BINARY=formstream
  log "$tag: its binary's debug file is $split/formstream.debug"
}

build_kafka() {
  "$REPO/deploy/local/kafka.sh" fetch
  local lib version
  lib="$(sed -n 's/^export FORMSTREAM_KAFKA_LIB=//p' < <("$REPO/deploy/local/kafka.sh" env))"
  version="$(sed -n 's/^export FORMSTREAM_KAFKA_VERSION=//p' < <("$REPO/deploy/local/kafka.sh" env))"
  mkdir -p "$work/kafka/libs"
  cp -a "$REPO/deploy/docker/kafka/." "$work/kafka/"
  cp -al "$lib"/*.jar "$work/kafka/libs/" 2>/dev/null || cp -a "$lib"/*.jar "$work/kafka/libs/"
  build "formstream-kafka:$version" "$work/kafka"
}

for image in "${images[@]}"; do
  [[ "$image" == base ]] || ensure_base
  case "$image" in
    base) ensure_base ;;
    formstream) build_formstream ;;
    kafka) build_kafka ;;
    prometheus) build "formstream-prometheus:local" "$REPO/deploy/docker/prometheus" ;;
  esac
done
