#!/usr/bin/env bash
# deploy/local/run.sh: runs the pipeline locally on local defaults (the README's run command).
#   1. installs missing system packages (deploy/local/setup.sh run)
#   2. starts the local Kafka broker (deploy/local/kafka.sh start; reused when already running)
#   3. builds formstream (release) and creates the topics
#   4. runs `formstream dev` in the foreground: the gateway on $FORMSTREAM_GATEWAY_LISTEN (default
#      127.0.0.1:8080, with the development API keys of deploy/local/api-keys.toml) and every
#      registered processor in the same process, each serving /metrics on its own port from
#      $FORMSTREAM_DEV_METRICS_LISTEN (default 127.0.0.1:9464, then 9465, ... in registration order);
#      the slang search API on $FORMSTREAM_SLANG_SEARCH_LISTEN (default 127.0.0.1:8090), which the
#      console's Slang page reaches through the gateway (`formstream dev` sets --console-slang-url)
# Everything it writes is under .local/ (journal, slang index, SMS outbox, sheets' CSV files) unless
# the FORMSTREAM_* variables say otherwise.
# Ctrl-C stops the gateway and the processors gracefully; the broker keeps running
# (deploy/local/kafka.sh stop). Extra arguments go to `formstream dev` (see `formstream dev --help`).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

"$REPO/deploy/local/setup.sh" run
"$REPO/deploy/local/kafka.sh" start
eval "$("$REPO/deploy/local/kafka.sh" env)"
export FORMSTREAM_KAFKA_BOOTSTRAP="${FORMSTREAM_KAFKA_BOOTSTRAP:-$KAFKA_BOOTSTRAP}"
# The local outputs next to the journal and the slang index, in the git-ignored .local/.
export FORMSTREAM_SMS_OUTBOX="${FORMSTREAM_SMS_OUTBOX:-.local/sms-outbox.jsonl}"
export FORMSTREAM_SHEETS_DIR="${FORMSTREAM_SHEETS_DIR:-.local/sheets}"
# Local development: webhooks may go to a receiver on this machine (never the default elsewhere).
export FORMSTREAM_WEBHOOK_ALLOW_LOOPBACK="${FORMSTREAM_WEBHOOK_ALLOW_LOOPBACK:-true}"

cargo build --release --bin formstream
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/formstream"
"$BIN" topics create
exec "$BIN" dev "$@"
