#!/usr/bin/env bash
# bench/gateway-ab.sh: two gateway builds compared on a noisy machine, interleaved.
#
#   bench/gateway-ab.sh BASE_BINARY AFTER_BINARY     # ~3 minutes
#
# Both gateways run at once, each on fresh topics of its own (12 partitions) on the local broker;
# `formstream load` (from BASE_BINARY) then measures base, after, base, after, ... BENCH_REPS
# rounds of single POSTs (-c 64) and then of batches (-c 4, 500 items), BENCH_DURATION each after a
# warm-up. Whatever else the machine does at a moment costs both sides alike, which one
# `bench/run.sh` after another cannot promise. Prints each side's runs, medians and the ratio,
# then Kafka's ProducerPerformance on the same broker (352-byte records, acks=all, idempotence).
# Stops both gateways and deletes every topic it created on exit.
#
# Environment (all optional): BENCH_REPS (3), BENCH_DURATION (10s), BENCH_WARMUP (2s),
# BENCH_PERF_RECORDS (2000000).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${1:?usage: bench/gateway-ab.sh BASE_BINARY AFTER_BINARY}"
AFTER="${2:?usage: bench/gateway-ab.sh BASE_BINARY AFTER_BINARY}"
REPS="${BENCH_REPS:-3}"
DURATION="${BENCH_DURATION:-10s}"
WARMUP="${BENCH_WARMUP:-2s}"
PERF_RECORDS="${BENCH_PERF_RECORDS:-2000000}"
KAFKA="$ROOT/deploy/local/kafka.sh"
STAMP="ab-$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="$(mktemp)"

"$KAFKA" start
BROKER_PID="$(cat "${FORMSTREAM_KAFKA_HOME:-$HOME/.cache/formstream/kafka}/instances/default/kafka.pid")"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  for side in base after; do
    for topic in forms responses flags; do
      "$KAFKA" topics --delete --topic "$STAMP-$side-$topic" >/dev/null 2>&1 || true
    done
  done
  "$KAFKA" topics --delete --topic "$STAMP-perf" >/dev/null 2>&1 || true
  rm -f "$RESULTS"
}
trap cleanup EXIT

declare -A port=([base]=18081 [after]=18082) bin=([base]="$BASE" [after]="$AFTER") pid=()
for side in base after; do
  "${bin[$side]}" gateway --log warn --listen "127.0.0.1:${port[$side]}" \
    --forms-topic "$STAMP-$side-forms" --responses-topic "$STAMP-$side-responses" \
    --flags-topic "$STAMP-$side-flags" --responses-partitions 12 \
    --api-keys-file "$ROOT/deploy/local/api-keys.toml" >"/tmp/$STAMP-$side.log" 2>&1 &
  pid[$side]=$!
  pids+=("$!")
done
for side in base after; do
  deadline=$((SECONDS + 60))
  until curl -sf "http://127.0.0.1:${port[$side]}/readyz" >/dev/null; do
    ((SECONDS < deadline)) || { echo "the $side gateway is not ready (log /tmp/$STAMP-$side.log)" >&2; exit 1; }
    sleep 0.5
  done
  # Creates the load's forms on this gateway.
  "$BASE" load --log warn --mode single --url "http://127.0.0.1:${port[$side]}" -c 64 --duration 3s --warmup 1s >/dev/null
done

for mode in single batch; do
  shape=(-c 64)
  [[ "$mode" == batch ]] && shape=(-c 4 --batch-size 500)
  for round in $(seq 1 "$REPS"); do
    for side in base after; do
      echo "bench: $mode, round $round/$REPS, $side" >&2
      out="$("$BASE" load --log warn --mode "$mode" --url "http://127.0.0.1:${port[$side]}" \
        --gateway-pid "${pid[$side]}" --broker-pid "$BROKER_PID" "${shape[@]}" \
        --duration "$DURATION" --warmup "$WARMUP" --json --skip-setup 2>/dev/null | tail -n 1)"
      echo "$mode $side $out" >>"$RESULTS"
    done
  done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    mode, side, text = line.split(" ", 2)
    runs.setdefault((mode, side), []).append(json.loads(text)["responses_per_s"])
print("| measurement | base (median; runs) | after (median; runs) | after / base |")
print("|---|---|---|---|")
for mode, label in (("single", "gateway single, -c64"), ("batch", "gateway batch x500, -c4")):
    base, after = runs[(mode, "base")], runs[(mode, "after")]
    fmt = lambda xs: f"{statistics.median(xs):,.0f} resp/s ({' / '.join(f'{x:,.0f}' for x in xs)})"
    print(f"| {label} | {fmt(base)} | {fmt(after)} | {statistics.median(after) / statistics.median(base):.2f} |")
PY

"$KAFKA" topics --create --topic "$STAMP-perf" --partitions 12 --replication-factor 1 >/dev/null
echo "Kafka ProducerPerformance, same broker:"
"$KAFKA" perf-producer --topic "$STAMP-perf" --num-records "$PERF_RECORDS" --record-size 352 --throughput -1 \
  --producer-props acks=all enable.idempotence=true linger.ms=1 compression.type=lz4 bootstrap.servers=localhost:9092 | tail -n 1
