#!/usr/bin/env bash
# bench/slang.sh: the slang benchmark of issue 7, end to end, on this machine.
#
#   bench/slang.sh          # ~5 minutes after the release build; prints the figures as JSON lines
#
# It starts or reuses the local broker, runs `cargo bench -p formstream-slang --bench slang`
# (fills a fresh 12-partition topic with BENCH_SLANG_RECORDS responses of a form with a slang
# action, indexes them with the slang processor in-process, then times the three search queries
# over HTTP), and then runs Kafka's own ConsumerPerformance over the same topic, so that the
# indexing rate can be compared with the broker's raw read rate in the same run.
#
# Environment (all optional): BENCH_SLANG_RECORDS (1000000), BENCH_SLANG_QUERIES (2000 per query).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
KAFKA="$ROOT/deploy/local/kafka.sh"
RECORDS="${BENCH_SLANG_RECORDS:-1000000}"
OUT="$(mktemp -d)"

"$KAFKA" start >&2
echo "BENCH_SLANG_RECORDS=$RECORDS cargo bench -p formstream-slang --bench slang" >&2
BENCH_SLANG_RECORDS="$RECORDS" cargo bench -p formstream-slang --bench slang | tee "$OUT/figures.jsonl"
TOPIC="$(sed -n 's/.*"topic":"\([^"]*\)".*/\1/p' "$OUT/figures.jsonl" | head -1)"
echo "$KAFKA perf-consumer --topic $TOPIC --messages $RECORDS --timeout 60000" >&2
"$KAFKA" perf-consumer --topic "$TOPIC" --messages "$RECORDS" --timeout 60000 | tee "$OUT/perf-consumer.txt"
"$KAFKA" topics --delete --topic "$TOPIC" >/dev/null 2>&1 || true
