#!/usr/bin/env bash
# bench/run.sh: the gateway benchmark of issue 2, end to end, on this machine.
#
#   bench/run.sh            # ~8 minutes; prints a Markdown results table and the exact commands
#
# It (a) starts or reuses the local broker, (b) builds the release binary, (c) measures the HTTP
# ceiling, a no-op axum server parsing the same JSON, with `formstream load` and with wrk,
# (d) starts a real gateway on fresh topics (12 partitions) and measures single POSTs and batches
# after a warm-up, recording its RSS and CPU, (e) measures Kafka's own ProducerPerformance on a
# fresh topic with the same record size, partitions, acks=all and idempotence, and (f) prints the
# results. Each measurement runs BENCH_REPS times; the table shows the median and the raw runs.
# Everything it started is stopped on exit (the broker only if this script started it), and its
# topics are deleted (BENCH_KEEP_TOPICS=1 keeps them).
#
# Environment (all optional): BENCH_DURATION (15s), BENCH_WARMUP (3s), BENCH_REPS (3),
# BENCH_CONNECTIONS (64), BENCH_BATCH_CONNECTIONS (4), BENCH_BATCH_SIZE (500),
# BENCH_PARTITIONS (12), BENCH_PERF_RECORDS (2000000), BENCH_WRK_DURATION (20s),
# BENCH_OUT (target/bench/<timestamp>), BENCH_PROFILE=1 to also `perf record` the gateway.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION="${BENCH_DURATION:-15s}"
WARMUP="${BENCH_WARMUP:-3s}"
REPS="${BENCH_REPS:-3}"
CONNS="${BENCH_CONNECTIONS:-64}"
BATCH_CONNS="${BENCH_BATCH_CONNECTIONS:-4}"
BATCH_SIZE="${BENCH_BATCH_SIZE:-500}"
PARTITIONS="${BENCH_PARTITIONS:-12}"
PERF_RECORDS="${BENCH_PERF_RECORDS:-2000000}"
WRK_DURATION="${BENCH_WRK_DURATION:-20s}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="${BENCH_OUT:-$ROOT/target/bench/$STAMP}"
NOOP_PORT=18099
GATEWAY_PORT=18080
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/formstream"
KAFKA="$ROOT/deploy/local/kafka.sh"
mkdir -p "$OUT"
COMMANDS="$OUT/commands.txt"
: >"$COMMANDS"

log() { echo "bench: $*" >&2; }
# Runs and records a command (for the "exact commands" section).
record() { printf '%s\n' "$*" >>"$COMMANDS"; "$@"; }

STARTED_PIDS=()
STARTED_BROKER=0
cleanup() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  # A run leaves millions of records on the broker's disk; BENCH_KEEP_TOPICS=1 keeps them.
  if [[ -n "${TOPIC:-}" && "${BENCH_KEEP_TOPICS:-0}" != 1 ]]; then
    "$KAFKA" topics --delete --topic "$TOPIC-.*" >/dev/null 2>&1 || true
  fi
  if [[ "$STARTED_BROKER" == 1 ]]; then "$KAFKA" stop || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() { # url, seconds
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || { log "$1 did not answer within $2 s"; return 1; }
    sleep 0.2
  done
}

# (a) broker
if ! "$KAFKA" status >/dev/null 2>&1; then STARTED_BROKER=1; fi
"$KAFKA" start
BROKER_PID="$(cat "${FORMSTREAM_KAFKA_HOME:-$HOME/.cache/formstream/kafka}/instances/${FORMSTREAM_KAFKA_INSTANCE:-default}/kafka.pid" 2>/dev/null || true)"
BROKER_ARGS=()
[[ -n "$BROKER_PID" ]] && BROKER_ARGS=(--broker-pid "$BROKER_PID")
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' deploy/local/pom.xml | head -n1)"

# (b) build
record cargo build --release -p formstream

# (c) the HTTP ceiling: the no-op server, loaded by formstream load and by wrk
printf '%s\n' "$BIN load --mode noop-server --listen 127.0.0.1:$NOOP_PORT --log warn &" >>"$COMMANDS"
"$BIN" load --mode noop-server --listen "127.0.0.1:$NOOP_PORT" --log warn >"$OUT/noop-server.log" 2>&1 &
NOOP_PID=$!
STARTED_PIDS+=("$NOOP_PID")
wait_http "http://127.0.0.1:$NOOP_PORT/readyz" 20
for i in $(seq 1 "$REPS"); do
  log "no-op ceiling, formstream load, run $i/$REPS"
  record "$BIN" load --log warn --mode single --url "http://127.0.0.1:$NOOP_PORT" --skip-setup \
    -c "$CONNS" --duration "$DURATION" --warmup "$WARMUP" --gateway-pid "$NOOP_PID" \
    --write-body "$OUT/body.json" --json >"$OUT/noop-load-$i.json" 2>"$OUT/noop-load-$i.txt"
done
cat >"$OUT/post.lua" <<LUA
-- POST the load generator's own single-response body (with a fixed response id).
local f = assert(io.open("$OUT/body.json", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer dev-acme-key"
LUA
if ! command -v wrk >/dev/null 2>&1; then
  log "wrk is missing; trying apt-get install wrk"
  (apt-get install -y wrk >/dev/null 2>&1 || (apt-get update >/dev/null 2>&1 && apt-get install -y wrk >/dev/null 2>&1)) || true
fi
if command -v wrk >/dev/null 2>&1; then
  for i in $(seq 1 "$REPS"); do
    log "no-op ceiling, wrk, run $i/$REPS"
    record wrk -t1 -c64 -d"$WRK_DURATION" --latency -s "$OUT/post.lua" \
      "http://127.0.0.1:$NOOP_PORT/v1/forms/bench-0000/responses" >"$OUT/wrk-$i.txt" 2>&1
  done
else
  log "wrk is not available on this machine: no wrk figures"
  echo "wrk unavailable" >"$OUT/wrk-unavailable"
fi
kill -TERM "$NOOP_PID"; wait "$NOOP_PID" 2>/dev/null || true

# (d) the real gateway, fresh topics
TOPIC="bench-$STAMP"
GATEWAY_CMD=("$BIN" gateway --log warn --listen "127.0.0.1:$GATEWAY_PORT"
  --forms-topic "$TOPIC-forms" --responses-topic "$TOPIC-responses" --flags-topic "$TOPIC-flags"
  --responses-partitions "$PARTITIONS")
# Started directly, not through `record`: a backgrounded shell function is a subshell, and $!
# would be the subshell's pid rather than the gateway's.
printf '%s\n' "${GATEWAY_CMD[*]} &" >>"$COMMANDS"
"${GATEWAY_CMD[@]}" >"$OUT/gateway.log" 2>&1 &
GATEWAY_PID=$!
STARTED_PIDS+=("$GATEWAY_PID")
wait_http "http://127.0.0.1:$GATEWAY_PORT/readyz" 90
GW=(--url "http://127.0.0.1:$GATEWAY_PORT" --gateway-pid "$GATEWAY_PID" "${BROKER_ARGS[@]}")
log "gateway warm-up (creates the forms)"
record "$BIN" load --log warn --mode single "${GW[@]}" -c "$CONNS" --duration 5s --warmup 1s \
  >"$OUT/gateway-warmup.txt" 2>&1
for i in $(seq 1 "$REPS"); do
  log "gateway single, run $i/$REPS"
  record "$BIN" load --log warn --mode single "${GW[@]}" -c "$CONNS" --duration "$DURATION" \
    --warmup "$WARMUP" --json >"$OUT/gateway-single-$i.json" 2>"$OUT/gateway-single-$i.txt"
done
for i in $(seq 1 "$REPS"); do
  log "gateway batch, run $i/$REPS"
  record "$BIN" load --log warn --mode batch "${GW[@]}" -c "$BATCH_CONNS" --batch-size "$BATCH_SIZE" \
    --duration "$DURATION" --warmup "$WARMUP" --json >"$OUT/gateway-batch-$i.json" 2>"$OUT/gateway-batch-$i.txt"
done
if [[ "${BENCH_PROFILE:-0}" == 1 ]] && command -v perf >/dev/null 2>&1; then
  for mode in single batch; do
    log "profiling the gateway under $mode load"
    c="$CONNS"; [[ $mode == batch ]] && c="$BATCH_CONNS"
    "$BIN" load --log warn --mode "$mode" "${GW[@]}" -c "$c" --duration 12s --warmup 1s >/dev/null 2>&1 &
    sleep 3
    perf record -F 499 -g -p "$GATEWAY_PID" -o "$OUT/perf-$mode.data" -- sleep 6 >/dev/null 2>&1 || true
    wait $! 2>/dev/null || true
    perf report -i "$OUT/perf-$mode.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
      | grep -E '^ +[0-9]' | head -40 >"$OUT/perf-$mode.txt" || true
  done
fi
grep -E 'VmHWM|VmRSS' "/proc/$GATEWAY_PID/status" >"$OUT/gateway-memory.txt" || true
kill -TERM "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null || true

# (e) Kafka's own producer on the same broker, same record size and partitions
RECORD_SIZE="$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["sizes"]["avg_avro_record_bytes"]))' "$OUT/gateway-single-1.json")"
for i in $(seq 1 "$REPS"); do
  log "kafka ProducerPerformance, run $i/$REPS ($RECORD_SIZE-byte records)"
  record "$KAFKA" topics --create --topic "$TOPIC-perf-$i" --partitions "$PARTITIONS" --replication-factor 1 >/dev/null
  record "$KAFKA" perf-producer --topic "$TOPIC-perf-$i" --num-records "$PERF_RECORDS" \
    --record-size "$RECORD_SIZE" --throughput -1 \
    --producer-props acks=all enable.idempotence=true linger.ms=1 compression.type=lz4 \
    bootstrap.servers=localhost:9092 >"$OUT/kafka-perf-$i.txt" 2>&1
done

# (f) results
python3 - "$OUT" "$REPS" "$KAFKA_VERSION" "$CONNS" "$BATCH_CONNS" "$BATCH_SIZE" <<'PY' | tee "$OUT/results.md"
import json, os, re, statistics, sys
out, reps, kafka_version, conns, batch_conns, batch_size = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]

def loads(prefix):
    runs = []
    for i in range(1, reps + 1):
        with open(f"{out}/{prefix}-{i}.json") as f:
            runs.append(json.loads(f.read().strip().splitlines()[-1]))
    return runs

def proc(run, name, key):
    return next((p[key] for p in run["processes"] if p["name"] == name and p[key] is not None), None)

def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)] if m else None

def wrk_runs():
    runs = []
    for i in range(1, reps + 1):
        path = f"{out}/wrk-{i}.txt"
        if not os.path.exists(path):
            return []
        text = open(path).read()
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
        lat = {q: to_ms(re.search(rf"^\s+{q}%\s+(\S+)", text, re.M).group(1)) for q in ("50", "99")}
        non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
        errors = re.search(r"Socket errors:.*", text)
        runs.append({"rps": rps, "p50": lat["50"], "p99": lat["99"],
                     "non2xx": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(0) if errors else ""})
    return runs

def perf_runs():
    runs = []
    for i in range(1, reps + 1):
        text = open(f"{out}/kafka-perf-{i}.txt").read()
        m = re.findall(r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, ([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th", text)
        if not m:
            runs.append(None)
            continue
        last = m[-1]
        runs.append({"rps": float(last[1]), "mbs": float(last[2]), "p50": float(last[5]), "p99": float(last[7])})
    return runs

med = lambda xs: statistics.median(xs) if xs else None
fmt = lambda v, d=0: "n/a" if v is None else f"{v:,.{d}f}"
raw = lambda xs, d=0: " / ".join(fmt(x, d) for x in xs)

noop, single, batch = loads("noop-load"), loads("gateway-single"), loads("gateway-batch")
wrk, kperf = wrk_runs(), perf_runs()
rows = []
def row(name, rate, unit, p50, p99, p999, extra=""):
    rows.append(f"| {name} | {fmt(med(rate))} {unit} | {raw(rate)} | {fmt(med(p50),2)} | {fmt(med(p99),2)} | {fmt(med(p999),2) if p999 else '-'} | {extra} |")

def lat(runs, q):
    return [r["latency"][q] for r in runs]

def errs(runs):
    return sum(r["non_2xx"] + r["transport_errors"] + r["rejected_items"] for r in runs)

row(f"no-op ceiling, formstream load -c{conns}", [r["requests_per_s"] for r in noop], "req/s",
    lat(noop, "p50_ms"), lat(noop, "p99_ms"), lat(noop, "p999_ms"), f"errors {errs(noop)}")
if wrk:
    row("no-op ceiling, wrk -t1 -c64", [r["rps"] for r in wrk], "req/s", [r["p50"] for r in wrk],
        [r["p99"] for r in wrk], None, f"non-2xx {sum(r['non2xx'] for r in wrk)}")
else:
    rows.append("| no-op ceiling, wrk | wrk unavailable | | | | | |")
row(f"gateway single, -c{conns}", [r["responses_per_s"] for r in single], "resp/s",
    lat(single, "p50_ms"), lat(single, "p99_ms"), lat(single, "p999_ms"), f"errors {errs(single)}")
row(f"gateway batch x{batch_size}, -c{batch_conns}", [r["responses_per_s"] for r in batch], "resp/s",
    lat(batch, "p50_ms"), lat(batch, "p99_ms"), lat(batch, "p999_ms"), f"errors {errs(batch)}")
if all(kperf):
    row("Kafka ProducerPerformance", [r["rps"] for r in kperf], "rec/s", [r["p50"] for r in kperf],
        [r["p99"] for r in kperf], None, f"{fmt(med([r['mbs'] for r in kperf]),1)} MB/s")
else:
    rows.append("| Kafka ProducerPerformance | (could not parse its output) | | | | | |")

s_med = med([r["responses_per_s"] for r in single])
b_med = med([r["responses_per_s"] for r in batch])
noop_med = med([r["requests_per_s"] for r in noop])
wrk_med = med([r["rps"] for r in wrk]) if wrk else None
perf_med = med([r["rps"] for r in kperf]) if all(kperf) else None
hwm = max(filter(None, [proc(r, "gateway", "hwm_mib") for r in single + batch]), default=None)
size = single[0]["sizes"]

print(f"## formstream gateway benchmark ({os.path.basename(out)})\n")
print(f"Kafka {kafka_version}; {single[0]['forms']} forms, Zipf s={single[0]['zipf_exponent']} "
      f"(hottest form {single[0]['top1_share']*100:.0f}% of responses, top 10 {single[0]['top10_share']*100:.0f}%); "
      f"mean response {size['avg_item_json_bytes']:.0f} B JSON, {size['avg_avro_record_bytes']:.0f} B Avro; "
      f"medians of {reps} runs (raw runs in order).\n")
print("| measurement | median | raw runs | p50 ms | p99 ms | p99.9 ms | notes |")
print("|---|---|---|---|---|---|---|")
print("\n".join(rows))
ratio = lambda a, b: "n/a" if a is None or not b else f"{a / b:.2f}"
print()
print(f"- gateway single / no-op ceiling (formstream load): {ratio(s_med, noop_med)}")
print(f"- gateway single / no-op ceiling (wrk): {ratio(s_med, wrk_med)}")
print(f"- gateway batch / Kafka ProducerPerformance: {ratio(b_med, perf_med)}")
print(f"- gateway peak RSS (VmHWM, whole run): {fmt(hwm,1)} MiB")
print()
print("CPU in the measured windows, cores (median): ")
for name, runs in (("no-op single", noop), ("gateway single", single), ("gateway batch", batch)):
    parts = [f"{p} {fmt(med([c for c in (proc(r, p, 'cores') for r in runs) if c is not None]),2)}"
             for p in ("gateway", "broker", "loadgen")]
    busy = fmt(med([r["machine_busy_cores"] for r in runs if r.get("machine_busy_cores") is not None]), 2)
    print(f"- {name}: " + ", ".join(parts) + f"; whole machine {busy} of {runs[0].get('machine_cores')}")
print()
print("Commands:\n```")
print(open(f"{out}/commands.txt").read().rstrip())
print("```")
PY
log "raw output in $OUT"
