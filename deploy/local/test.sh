#!/usr/bin/env bash
# deploy/local/test.sh: the project's test command (README and CI run exactly this).
#   0. installs missing system packages (deploy/local/setup.sh test: promtool, prometheus, ...)
#   1. starts the local Kafka broker (deploy/local/kafka.sh start; a no-op when it already runs)
#   2. exports FORMSTREAM_TEST_BOOTSTRAP (and KAFKA_BOOTSTRAP) for the integration tests
#   3. cargo fmt --all -- --check
#   4. cargo clippy --workspace --all-targets -- -D warnings
#   5. cargo build --bin formstream            (the kill -9 test runs the real binary)
#   6. promtool check rules / test rules / check config on deploy/prometheus/ (alert rules and
#      their unit tests, the compose scrape config)
#   7. cargo test --workspace [ARGS...]       (extra arguments go to cargo test; the scrape test
#      runs the real `prometheus` binary, the SASL_SSL test a private broker)
# Every step runs even when an earlier one failed; a summary follows; exit 1 if any step failed.
# The broker is left running for the next run, unless this script started it AND
# FORMSTREAM_TEST_STOP_BROKER=1.
#
# Environment:
#   FORMSTREAM_TEST_STOP_BROKER=1   stop the broker at the end if this script started it
#   FORMSTREAM_TEST_SKIP_LINT=1     skip fmt and clippy (quick local test runs)
#   FORMSTREAM_KAFKA_*              passed to kafka.sh (port, instance, ...; see kafka.sh)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KAFKA="$REPO/deploy/local/kafka.sh"
cd "$REPO"

"$REPO/deploy/local/setup.sh" test
started_here=0
if ! "$KAFKA" status >/dev/null 2>&1; then started_here=1; fi
"$KAFKA" start
eval "$("$KAFKA" env)"
export KAFKA_BOOTSTRAP FORMSTREAM_TEST_BOOTSTRAP
echo "test.sh: FORMSTREAM_TEST_BOOTSTRAP=$FORMSTREAM_TEST_BOOTSTRAP" >&2

cleanup() {
  if [[ "$started_here" == 1 && "${FORMSTREAM_TEST_STOP_BROKER:-0}" == 1 ]]; then
    "$KAFKA" stop || true
  fi
}
trap cleanup EXIT

declare -a summary=()
failed=0
step() {   # step NAME COMMAND...
  local name="$1"; shift
  local t0=$SECONDS
  echo "==> $name: $*" >&2
  if "$@"; then
    summary+=("  OK    $name ($((SECONDS - t0)) s)")
  else
    local rc=$?
    summary+=("  FAIL  $name (exit $rc, $((SECONDS - t0)) s)")
    failed=1
  fi
}

if [[ "${FORMSTREAM_TEST_SKIP_LINT:-0}" != 1 ]]; then
  step fmt cargo fmt --all -- --check
  step clippy cargo clippy --workspace --all-targets -- -D warnings
fi
# Alert rules and their unit tests (promtool: Debian package `prometheus`, which setup.sh installs).
# A missing promtool fails the run rather than skipping: untested alert rules are how pages go silent.
promtool_checks() {
  command -v promtool >/dev/null || { echo "test.sh: promtool not found (deploy/local/setup.sh test)" >&2; return 1; }
  promtool check rules deploy/prometheus/alerts.yml \
    && promtool test rules deploy/prometheus/alerts.test.yml \
    && promtool check config --syntax-only deploy/prometheus/prometheus.yml
}
step promtool promtool_checks
# The runtime's kill -9 test drives the real binary: build it first.
step build cargo build --bin formstream
step test cargo test --workspace "$@"

echo "" >&2
echo "test.sh summary (broker $FORMSTREAM_TEST_BOOTSTRAP):" >&2
printf '%s\n' "${summary[@]}" >&2
if [[ "$failed" != 0 ]]; then
  echo "test.sh: FAILED" >&2
  exit 1
fi
echo "test.sh: all steps OK" >&2
