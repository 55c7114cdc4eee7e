#!/usr/bin/env bash
# deploy/local/setup.sh: installs the system packages the README's two commands need, when missing.
#   setup.sh run    what deploy/local/run.sh needs (the build dependencies)
#   setup.sh test   that, and what deploy/local/test.sh needs (promtool, prometheus, kcat, ...)
# run.sh, test.sh and .ci/run call it first, so a fresh machine needs no other step. It prints
# nothing when everything is present. Otherwise it installs the missing Debian packages with
# apt-get, as root or with passwordless sudo; if it cannot, it prints the one command to run first
# and exits 1. Rust, Java and Maven are the README's prerequisites: it checks them, never installs
# them.
#
# To add a package: one `need` line below, with the probe that tells it is present and why it is
# needed.
set -euo pipefail

purpose="${1:-test}"
case "$purpose" in
  run | test) ;;
  *) echo "usage: deploy/local/setup.sh [run|test]" >&2; exit 2 ;;
esac

missing=()
need() {   # need PACKAGE PROBE...: PACKAGE counts as missing unless the probe command succeeds
  local package="$1"; shift
  "$@" >/dev/null 2>&1 || missing+=("$package")
}
has() {    # has COMMAND...: every command is on the PATH
  local command
  for command in "$@"; do command -v "$command" || return 1; done
}

# Build dependencies of librdkafka's SSL/SASL and OIDC support (rdkafka features `ssl` and `curl`).
# Without libcurl's headers the build silently drops OAUTHBEARER/OIDC (a unit test catches that).
need pkg-config           has pkg-config
need libssl-dev           pkg-config --exists openssl
need libcurl4-openssl-dev pkg-config --exists libcurl
if [[ "$purpose" == test ]]; then
  # promtool: the alert rules and their unit tests; prometheus: the scrape test.
  need prometheus         has promtool prometheus
  # kafka.sh's fast broker probe (Kafka's own client is the slow fallback), and debugging.
  need kcat               has kcat
  # objcopy and readelf: deploy/split-debuginfo.sh and its test.
  need binutils           has objcopy readelf
  # The console's browser test: headless Chromium driven by Playwright's client (npm, Node 20+).
  need chromium           has chromium
  need nodejs             has node
  need npm                has npm
fi

if ((${#missing[@]})); then
  install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
  if ! has apt-get >/dev/null; then
    echo "setup.sh: missing ${missing[*]} (Debian package names); install them first" >&2
    exit 1
  fi
  sudo=()
  if ((EUID != 0)); then
    if has sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo=(sudo)
    else
      echo "setup.sh: missing ${missing[*]}; run first: sudo apt-get update && sudo ${install[*]}" >&2
      exit 1
    fi
  fi
  echo "setup.sh: installing ${missing[*]}" >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null
fi

# The prerequisites the README names, checked here so that a missing one is one clear line.
require() {   # require COMMAND WHAT-TO-INSTALL
  has "$1" >/dev/null || { echo "setup.sh: $1 not found: install $2" >&2; exit 1; }
}
require cargo "Rust 1.90+ (https://rustup.rs)"
require java "Java 17+ (Debian: default-jre-headless)"
require mvn "Maven (Debian: maven)"
if [[ "$purpose" == test ]]; then
  require rustfmt "rustfmt (rustup component add rustfmt)"
  require cargo-clippy "clippy (rustup component add clippy)"
fi
