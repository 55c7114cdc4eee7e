#!/usr/bin/env bash
# bench/e2e.sh: the whole pipeline at volume, under faults (issue 15). One command:
#
#   bench/e2e.sh            # ~20 minutes on 2 cores (build excluded); writes bench/E2E.md and
#                           # bench/e2e/*.png, prints every check; exit 1 if any check fails
#
# It (a) builds the `formstream` binary and the tests crate's `e2e`, `fake-twilio` and
# `fake-sheets` binaries (BENCH_PROFILE, release by default); (b) starts a broker of its OWN
# (kafka.sh instance `e2e-bench` on ports 29092/29093; the run restarts it, so never the shared
# one); (c) starts Prometheus (Debian's package; installed by deploy/local/setup.sh when missing)
# scraping every process each second with deploy/prometheus/alerts.yml loaded; (d) runs `e2e`:
# the gateway and the five processors as separate processes (each a static member, restarted
# with the same --instance-id after kill -9), the Twilio fake (100 ms per create) and the Sheets
# fake (200 ms per call, 60 writes per minute, 429 past it) as standalone servers, 1,000,000
# responses to 200 forms (Zipf 1.1) through the batch endpoint, kill -9 of each processor 3 times,
# one broker restart, Twilio down for 2 minutes, a minute of Sheets 429s, then the checks, the
# report and its plots; (e) asks Prometheus when the lag alerts fired and resolved; (f) runs
# Kafka's ProducerPerformance on the same broker for the raw figure; (g) deletes the run's
# topics and stops its broker.
#
# Environment (all optional): BENCH_PROFILE (release | dev), BENCH_RESPONSES (1000000),
# BENCH_FORMS (200), BENCH_RATE (2200 responses/s offered), BENCH_KILLS (3 per processor),
# BENCH_TWILIO_OUTAGE (120s), BENCH_CI=1 (the CI size: 20,000 responses, one kill each, a 15 s
# outage, no broker restart), BENCH_KAFKA_PORT (29092), BENCH_KAFKA_CONTROLLER_PORT (29093),
# BENCH_PROMETHEUS=0 (skip Prometheus), BENCH_REPORT_DIR (bench/ : E2E.md there, plots in e2e/),
# BENCH_KEEP_LOGS=1 (keep every process's logs after a passing run too, e.g. to see why a
# restart's first effect came late), BENCH_LOG (every process's log filter, FORMSTREAM_LOG's
# syntax; info by default).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PROFILE="${BENCH_PROFILE:-release}"
KAFKA="$ROOT/deploy/local/kafka.sh"
export FORMSTREAM_KAFKA_INSTANCE=e2e-bench
export FORMSTREAM_KAFKA_PORT="${BENCH_KAFKA_PORT:-29092}"
export FORMSTREAM_KAFKA_CONTROLLER_PORT="${BENCH_KAFKA_CONTROLLER_PORT:-29093}"
export FORMSTREAM_KAFKA_HEAP="${FORMSTREAM_KAFKA_HEAP:--Xms512m -Xmx1g}"
BOOTSTRAP="localhost:$FORMSTREAM_KAFKA_PORT"
REPORT_DIR="${BENCH_REPORT_DIR:-$ROOT/bench}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/formstream-e2e.XXXXXX")"

"$ROOT/deploy/local/setup.sh" test >&2

echo "e2e: building ($PROFILE)" >&2
cargo build --quiet --profile "$PROFILE" --bin formstream
cargo build --quiet --profile "$PROFILE" -p formstream-tests --bin e2e --bin fake-twilio --bin fake-sheets
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/$([[ "$PROFILE" == dev ]] && echo debug || echo "$PROFILE")"

prom_pid=""
status=0
cleanup() {
  [[ -n "$prom_pid" ]] && kill "$prom_pid" 2>/dev/null || true
  "$KAFKA" destroy >&2 || true
  # A failed run keeps its logs (each process's, per life) for the post-mortem.
  if [[ "$status" == 0 && "${BENCH_KEEP_LOGS:-0}" != 1 ]]; then
    rm -rf "$WORK"
  else
    # The slang indexes of a passing run are only disk.
    if [[ "$status" == 0 ]]; then rm -rf "$WORK/run/"*slang-index; fi
    echo "e2e: logs kept in $WORK/run/logs" >&2
  fi
}
trap cleanup EXIT

"$KAFKA" start >&2
echo "e2e: machine load before: $(cut -d' ' -f1-3 /proc/loadavg) (nproc $(nproc))" >&2

args=(--bootstrap "$BOOTSTRAP" --work-dir "$WORK/run" --report-dir "$REPORT_DIR"
  --formstream "$TARGET/formstream" --fake-twilio "$TARGET/fake-twilio" --fake-sheets "$TARGET/fake-sheets"
  --commit "$(git rev-parse --short HEAD)" --command "bench/e2e.sh (BENCH_PROFILE=$PROFILE${BENCH_CI:+ BENCH_CI=1})")
if [[ "${BENCH_CI:-0}" == 1 ]]; then
  args+=(--ci)
else
  args+=(--broker-instance "$FORMSTREAM_KAFKA_INSTANCE" --broker-port "$FORMSTREAM_KAFKA_PORT"
    --broker-controller-port "$FORMSTREAM_KAFKA_CONTROLLER_PORT")
fi
[[ -n "${BENCH_RESPONSES:-}" ]] && args+=(--responses "$BENCH_RESPONSES")
[[ -n "${BENCH_FORMS:-}" ]] && args+=(--forms "$BENCH_FORMS")
[[ -n "${BENCH_RATE:-}" ]] && args+=(--rate "$BENCH_RATE")
[[ -n "${BENCH_KILLS:-}" ]] && args+=(--kills-per-processor "$BENCH_KILLS")
[[ -n "${BENCH_TWILIO_OUTAGE:-}" ]] && args+=(--twilio-outage "$BENCH_TWILIO_OUTAGE")
if [[ "${BENCH_PROMETHEUS:-1}" == 1 ]]; then
  command -v prometheus >/dev/null || { echo "e2e: prometheus not found (deploy/local/setup.sh test installs it)" >&2; exit 1; }
  args+=(--prometheus "$(command -v prometheus)" --alert-rules "$ROOT/deploy/prometheus/alerts.yml")
fi

"$TARGET/e2e" "${args[@]}" || status=$?
echo "e2e: machine load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# The raw Kafka figure of the same broker, right after the run.
echo "e2e: $KAFKA perf-producer --topic e2e-perf --num-records 1000000 --record-size 600 --throughput -1" >&2
"$KAFKA" topics --create --if-not-exists --topic e2e-perf --partitions 12 >/dev/null 2>&1 || true
"$KAFKA" perf-producer --topic e2e-perf --num-records 1000000 --record-size 600 --throughput -1 \
  --producer-props acks=all linger.ms=5 2>/dev/null | tail -1 || true
"$KAFKA" topics --delete --if-exists --topic e2e-perf >/dev/null 2>&1 || true
exit "$status"
