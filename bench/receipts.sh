#!/usr/bin/env bash
# bench/receipts.sh: the receipts benchmark of issue 5, on this machine.
#
#   bench/receipts.sh          # ~2 minutes; prints the receipts rate and Kafka's consumer rate
#
# It (a) starts or reuses the local broker, (b) builds and runs the `receipts-bench` binary of the
# tests crate: a fresh 12-partition responses topic filled with BENCH_RECORDS responses (distinct
# numbers), the receipts processor in-process (real runtime, real Twilio client, the effect ledger
# on the broker) against the Twilio fake answering each create after BENCH_LATENCY, rate limit
# BENCH_RATE segments/s, BENCH_IN_FLIGHT records in flight; the rate is counted between the first
# and the last message the fake created; (c) runs Kafka's ConsumerPerformance on the same topic,
# same broker, right after; (d) deletes the topics.
#
# Environment (all optional): BENCH_RECORDS (20000), BENCH_RATE (500), BENCH_LATENCY (100ms),
# BENCH_IN_FLIGHT (128), BENCH_PROFILE (dev; `release` builds an optimised binary first).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RECORDS="${BENCH_RECORDS:-20000}"
RATE="${BENCH_RATE:-500}"
LATENCY="${BENCH_LATENCY:-100ms}"
IN_FLIGHT="${BENCH_IN_FLIGHT:-128}"
PROFILE="${BENCH_PROFILE:-dev}"
KAFKA="$ROOT/deploy/local/kafka.sh"

"$KAFKA" start >&2
echo "bench: machine load before: $(cut -d' ' -f1-3 /proc/loadavg) (nproc $(nproc))" >&2
cmd=(cargo run --quiet --profile "$PROFILE" -p formstream-tests --bin receipts-bench --
  --records "$RECORDS" --rate "$RATE" --latency "$LATENCY" --max-in-flight "$IN_FLIGHT" --keep-topics)
echo "bench: ${cmd[*]}" >&2
line="$("${cmd[@]}" | tail -1)"
echo "$line"
topic="$(sed -n 's/.* topic=\([^ ]*\).*/\1/p' <<<"$line")"
echo "bench: machine load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "bench: $KAFKA perf-consumer --topic $topic --num-records $RECORDS" >&2
"$KAFKA" perf-consumer --topic "$topic" --num-records "$RECORDS" --timeout 60000
for t in "$topic" "${topic%-responses}-forms" "$topic-ledger" "${topic%-responses}-dlq"; do
  "$KAFKA" topics --delete --if-exists --topic "$t" >/dev/null 2>&1 || true
done
