#!/usr/bin/env bash
# deploy/local/kafka.sh: a local single-node Apache Kafka (KRaft, broker+controller in one JVM)
# built from Maven Central jars. No Docker, no tarball: Maven copies the jars listed in
# deploy/local/pom.xml (Kafka version pinned there) into one folder, and this script runs them.
#
# Usage: deploy/local/kafka.sh COMMAND [ARGS...]      (works from any directory)
#   start            fetch jars if needed, format storage on first use, start the broker in the
#                    background and wait until it serves metadata. No-op if already running.
#   stop             SIGTERM, wait (deadline), then SIGKILL. No-op if not running.
#   restart          stop + start
#   status           print state; exit 0 if the broker answers, 3 if not
#   fetch            only download the jars (Maven) into the cache
#   logs [-f]        print the server log path (stderr) and its tail (-f: follow)
#   env              print shell exports (eval "$(deploy/local/kafka.sh env)")
#   destroy          stop, then delete the instance's directory (data, logs, certificates);
#                    refused for the default instance
#   topics ARGS      org.apache.kafka.tools.TopicCommand   (e.g. topics --create --topic t --partitions 3)
#   perf-producer ARGS  org.apache.kafka.tools.ProducerPerformance
#   perf-consumer ARGS  org.apache.kafka.tools.ConsumerPerformance
#   tool CLASS ARGS  any main class from the Kafka jars
#   topics/perf-* add `--bootstrap-server localhost:$PORT` unless ARGS name a bootstrap already.
#
# Environment (all optional):
#   FORMSTREAM_KAFKA_HOME             state dir, outside the clone so CI clones reuse it
#                                     (default $HOME/.cache/formstream/kafka). Jars go to
#                                     $FORMSTREAM_KAFKA_HOME/lib-<kafka version>.
#   FORMSTREAM_KAFKA_INSTANCE         instance name (default "default"); its files live in
#                                     $FORMSTREAM_KAFKA_HOME/instances/<name>/: server.properties,
#                                     log4j2.xml, data/, logs/server.log, logs/kafka.out, kafka.pid
#   FORMSTREAM_KAFKA_PORT             PLAINTEXT listener port (default 9092)
#   FORMSTREAM_KAFKA_CONTROLLER_PORT  KRaft controller port (default 9093)
#   FORMSTREAM_KAFKA_DATA_DIR         log.dirs override (default <instance dir>/data); reused when
#                                     already formatted
#   FORMSTREAM_KAFKA_HEAP             JVM heap flags (default "-Xms256m -Xmx1g")
#   FORMSTREAM_KAFKA_JVM_OPTS         extra JVM flags for the broker (default empty)
#   FORMSTREAM_KAFKA_START_TIMEOUT    seconds `start` waits for the broker (default 90)
#   FORMSTREAM_KAFKA_STOP_TIMEOUT     seconds `stop` waits after SIGTERM before SIGKILL (default 60)
#   FORMSTREAM_KAFKA_SECURE           1: the listener is SASL_SSL instead of PLAINTEXT, with a
#                                     self-signed CA and SCRAM-SHA-256/512 users generated for the
#                                     instance at its first start (<instance>/tls/, mode 0600; the
#                                     passwords are random, never in the repository). Clients find
#                                     their librdkafka settings in <instance>/tls/client.properties
#                                     (`env` prints its path). Needs the openssl CLI.
#   JAVA                              java binary (default: java on PATH)
#   MVN                               maven binary (default: mvn on PATH)
#
# A second, private broker (e.g. one a test may stop mid-test):
#   FORMSTREAM_KAFKA_INSTANCE=second FORMSTREAM_KAFKA_PORT=19092 FORMSTREAM_KAFKA_CONTROLLER_PORT=19093 \
#     deploy/local/kafka.sh start        # ... and the same variables with `stop`
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$SCRIPT_DIR/pom.xml"

KHOME="${FORMSTREAM_KAFKA_HOME:-${HOME:-/root}/.cache/formstream/kafka}"
INSTANCE="${FORMSTREAM_KAFKA_INSTANCE:-default}"
PORT="${FORMSTREAM_KAFKA_PORT:-9092}"
CPORT="${FORMSTREAM_KAFKA_CONTROLLER_PORT:-9093}"
HEAP="${FORMSTREAM_KAFKA_HEAP:--Xms256m -Xmx1g}"
EXTRA_JVM_OPTS="${FORMSTREAM_KAFKA_JVM_OPTS:-}"
START_TIMEOUT="${FORMSTREAM_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${FORMSTREAM_KAFKA_STOP_TIMEOUT:-60}"
SECURE="${FORMSTREAM_KAFKA_SECURE:-0}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"

INST_DIR="$KHOME/instances/$INSTANCE"
DATA_DIR="${FORMSTREAM_KAFKA_DATA_DIR:-$INST_DIR/data}"
LOG_DIR="$INST_DIR/logs"
SERVER_LOG="$LOG_DIR/server.log"
OUT_LOG="$LOG_DIR/kafka.out"
PID_FILE="$INST_DIR/kafka.pid"
PROPS="$INST_DIR/server.properties"
LOG4J="$INST_DIR/log4j2.xml"
TOOLS_LOG4J="$KHOME/tools-log4j2.xml"
PROBE_PROPS="$KHOME/probe-admin.properties"
BOOTSTRAP="localhost:$PORT"
TLS_DIR="$INST_DIR/tls"
CLIENT_PROPS="$TLS_DIR/client.properties"          # librdkafka (formstream -X)
JAVA_CLIENT_PROPS="$TLS_DIR/client-java.properties" # Kafka's own tools (--command-config)

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1)"
[[ -n "$KAFKA_VERSION" ]] || { echo "kafka.sh: cannot read <kafka.version> from $POM" >&2; exit 1; }
LIB_DIR="$KHOME/lib-$KAFKA_VERSION"
MARKER="$LIB_DIR/.complete"

log() { echo "kafka.sh[$INSTANCE]: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

jars_ok() { [[ -f "$MARKER" && "$(cat "$MARKER")" == "$(pom_hash)" ]]; }

# Download the jars (Maven, ~/.m2 is reused) into $LIB_DIR; atomic, safe against concurrent callers.
fetch() {
  jars_ok && return 0
  mkdir -p "$KHOME"
  exec 8>"$KHOME/.fetch.lock"
  flock 8
  if jars_ok; then exec 8>&-; return 0; fi
  command -v "$MVN" >/dev/null || die "maven ($MVN) not found"
  log "fetching Kafka $KAFKA_VERSION jars with Maven into $LIB_DIR ..."
  local tmp="$LIB_DIR.tmp.$$" work="$KHOME/.mvn-work.$$" t0=$SECONDS
  rm -rf "$tmp" "$work"
  mkdir -p "$work"
  cp "$POM" "$work/pom.xml"   # run in a scratch dir so nothing is written into the git clone
  if ! (cd "$work" && "$MVN" -q -B dependency:copy-dependencies \
          -DoutputDirectory="$tmp" -DincludeScope=runtime >"$work/mvn.log" 2>&1); then
    cat "$work/mvn.log" >&2
    rm -rf "$tmp"
    die "maven failed to fetch the Kafka jars (log above)"
  fi
  ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar "$tmp"/kafka-tools-"$KAFKA_VERSION".jar >/dev/null \
    || die "maven finished but the Kafka jars are missing in $tmp"
  pom_hash >"$tmp/.complete"
  rm -rf "$LIB_DIR" "$work"
  mv "$tmp" "$LIB_DIR"
  log "fetched $(find "$LIB_DIR" -name '*.jar' | wc -l) jars in $((SECONDS - t0)) s"
  exec 8>&-
}

write_tools_log4j() {
  mkdir -p "$KHOME"
  [[ -f "$PROBE_PROPS" ]] || printf '%s\n' request.timeout.ms=5000 default.api.timeout.ms=10000 \
    >"$PROBE_PROPS"
  [[ -f "$TOOLS_LOG4J" ]] && return 0
  cat >"$TOOLS_LOG4J.$$" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="STDERR" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="STDERR"/></Root>
  </Loggers>
</Configuration>
EOF
  mv "$TOOLS_LOG4J.$$" "$TOOLS_LOG4J"
}

# Run a Kafka main class (tools) in the foreground.
run_tool() {
  local cls="$1"; shift
  fetch
  write_tools_log4j
  exec "$JAVA" -Xmx512m -XX:+UseG1GC -Dlog4j2.configurationFile="$TOOLS_LOG4J" \
    -cp "$LIB_DIR/*" "$cls" "$@"
}

# Args for tools: add --bootstrap-server unless the caller named one.
with_bootstrap() {
  local a
  for a in "$@"; do
    case "$a" in
      --bootstrap-server|--bootstrap-server=*|*bootstrap.servers=*|--broker-list|--producer.config|--consumer.config|--command-config|--help|-h|--version)
        printf '%s\0' "$@"; return 0 ;;
    esac
  done
  printf '%s\0' --bootstrap-server "$BOOTSTRAP" "$@"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid of our broker if alive (pid file + process + its command line names our server.properties).
our_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid; pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $PROPS" || return 1
  echo "$pid"
}

# One metadata round trip: the broker answers and lists topics.
metadata_ok() {
  write_tools_log4j
  local command_config="$PROBE_PROPS"
  if [[ "$SECURE" == 1 ]]; then
    # Kafka's own client only: Debian's kcat (librdkafka 2.0) fails SCRAM against this broker
    # where formstream's librdkafka 2.12 and the Java client succeed.
    command_config="$JAVA_CLIENT_PROPS"
  elif command -v kcat >/dev/null 2>&1; then
    timeout 20 kcat -b "$BOOTSTRAP" -L -m 10 >/dev/null 2>&1 && return 0
  fi
  timeout 60 "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIB_DIR/*" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list \
    --command-config "$command_config" >/dev/null 2>&1
}

# Secure mode: a CA, a broker certificate for localhost and two SCRAM users (the broker's own
# `admin`, for its inter-broker connections, and `formstream`, for clients), made once per
# instance. Random passwords: nothing secret is in the repository, and each instance differs.
write_secrets() {
  [[ -f "$TLS_DIR/.complete" ]] && return 0
  command -v openssl >/dev/null || die "secure mode needs the openssl CLI"
  rm -rf "$TLS_DIR"
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  local log="$TLS_DIR/openssl.log"
  (
    umask 077
    cd "$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=formstream local CA ($INSTANCE)" \
      -keyout ca.key -out ca.crt
    # PKCS#8, unencrypted: the form Kafka's PEM key store reads without ssl.key.password.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out broker.key
    openssl req -new -key broker.key -subj "/CN=localhost" -out broker.csr
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >broker.ext
    openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile broker.ext -out broker.crt
    cat broker.key broker.crt >broker.pem
    head -c 24 /dev/urandom | base64 | tr -d '/+=' >admin.password
    head -c 24 /dev/urandom | base64 | tr -d '/+=' >client.password
  ) >"$log" 2>&1 || { cat "$log" >&2; die "generating the secure instance's certificates failed"; }
  local client_password; client_password="$(cat "$TLS_DIR/client.password")"
  (
    umask 077
    cat >"$CLIENT_PROPS" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.username=formstream
sasl.password=$client_password
ssl.ca.location=$TLS_DIR/ca.crt
EOF
    cat >"$JAVA_CLIENT_PROPS" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="formstream" password="$client_password";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.crt
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF
  )
  touch "$TLS_DIR/.complete"
}

# The broker's own login (every enabled mechanism needs one, though it uses SCRAM-SHA-512).
scram_jaas() {
  printf 'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="%s";' \
    "$(cat "$TLS_DIR/admin.password")"
}

# The listener section of server.properties: PLAINTEXT, or SASL_SSL in secure mode.
listener_config() {
  if [[ "$SECURE" != 1 ]]; then
    cat <<EOF
listeners=PLAINTEXT://localhost:$PORT,CONTROLLER://localhost:$CPORT
advertised.listeners=PLAINTEXT://localhost:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
EOF
    return 0
  fi
  cat <<EOF
listeners=SASL_SSL://localhost:$PORT,CONTROLLER://localhost:$CPORT
advertised.listeners=SASL_SSL://localhost:$PORT
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$(scram_jaas)
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$(scram_jaas)
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.crt
ssl.client.auth=none
EOF
}

write_config() {
  mkdir -p "$INST_DIR" "$LOG_DIR" "$DATA_DIR"
  if [[ "$SECURE" == 1 ]]; then write_secrets; fi
  # 0600: in secure mode it holds the broker's SCRAM password.
  (umask 077; cat >"$PROPS" <<EOF
# Generated by deploy/local/kafka.sh on every start (edit the script, not this file).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:$CPORT
$(listener_config)
controller.listener.names=CONTROLLER
log.dirs=$DATA_DIR
num.partitions=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=3
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
EOF
  )
  cat >"$LOG4J" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="SERVER" fileName="$SERVER_LOG" filePattern="$LOG_DIR/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="SERVER"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

format_storage() {
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    log "reusing formatted data dir $DATA_DIR"
    return 0
  fi
  local id
  while :; do   # Kafka's base64url UUID; avoid a leading '-' (reads as an option)
    id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    [[ "$id" != -* ]] && break
  done
  log "formatting new data dir $DATA_DIR (cluster id $id)"
  local scram=()
  if [[ "$SECURE" == 1 ]]; then
    # SCRAM credentials are KRaft metadata: written at format time, before the broker starts.
    local admin client
    admin="$(cat "$TLS_DIR/admin.password")"
    client="$(cat "$TLS_DIR/client.password")"
    scram=(--add-scram "SCRAM-SHA-512=[name=admin,password=$admin]"
           --add-scram "SCRAM-SHA-512=[name=formstream,password=$client]"
           --add-scram "SCRAM-SHA-256=[name=formstream,password=$client]")
  fi
  "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIB_DIR/*" \
    kafka.tools.StorageTool format -t "$id" -c "$PROPS" "${scram[@]}" >"$LOG_DIR/format.log" 2>&1 \
    || { cat "$LOG_DIR/format.log" >&2; die "storage format failed"; }
}

start() {
  local pid
  # One `start` per instance at a time (two test runs starting at once must not race).
  mkdir -p "$INST_DIR"
  exec 9>"$INST_DIR/.start.lock"
  flock -w "$((START_TIMEOUT + 60))" 9 || die "another 'kafka.sh start' holds $INST_DIR/.start.lock"
  if pid="$(our_pid)"; then
    if port_open "$PORT"; then
      log "already running (pid $pid) on $BOOTSTRAP"
      return 0
    fi
    log "process $pid is alive but $BOOTSTRAP does not answer yet; waiting for it"
  elif port_open "$PORT"; then
    fetch
    if metadata_ok; then
      log "port $PORT already answers as a Kafka broker not started by this instance; reusing it"
      return 0
    fi
    die "port $PORT is taken by something that does not answer Kafka metadata requests"
  else
    port_open "$CPORT" && die "controller port $CPORT is already in use (set FORMSTREAM_KAFKA_CONTROLLER_PORT)"
    fetch
    write_tools_log4j
    write_config
    format_storage
    rm -f "$PID_FILE"
    log "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller $CPORT, data $DATA_DIR)"
    # shellcheck disable=SC2086  # HEAP / EXTRA_JVM_OPTS are flag lists
    setsid nohup "$JAVA" -server $HEAP \
      -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$LOG4J" -Dkafka.logs.dir="$LOG_DIR" $EXTRA_JVM_OPTS \
      -cp "$LIB_DIR/*" kafka.Kafka "$PROPS" >"$OUT_LOG" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
  fi

  # Wait: port open, then one metadata round trip. Never a fixed sleep.
  local deadline=$((SECONDS + START_TIMEOUT)) t0=$SECONDS
  until port_open "$PORT"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$OUT_LOG" "$SERVER_LOG" >&2 2>/dev/null || true
      rm -f "$PID_FILE"
      die "broker exited during startup (logs: $SERVER_LOG, $OUT_LOG)"
    fi
    ((SECONDS < deadline)) || die "port $PORT not open after ${START_TIMEOUT}s (log: $SERVER_LOG)"
    sleep 0.2
  done
  until metadata_ok; do
    kill -0 "$pid" 2>/dev/null || die "broker exited during startup (log: $SERVER_LOG)"
    ((SECONDS < deadline)) || die "broker does not serve metadata after ${START_TIMEOUT}s (log: $SERVER_LOG)"
    sleep 0.5
  done
  log "ready on $BOOTSTRAP (pid $pid, $((SECONDS - t0)) s; log $SERVER_LOG)"
}

stop() {
  local pid
  if ! pid="$(our_pid)"; then
    rm -f "$PID_FILE"
    if port_open "$PORT"; then
      log "not running from this instance (port $PORT is answered by another process; left alone)"
    else
      log "not running"
    fi
    return 0
  fi
  log "stopping pid $pid ..."
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "still alive after ${STOP_TIMEOUT}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  log "stopped"
}

# Stops the instance and deletes its directory: what a test does with its private broker.
destroy() {
  [[ "$INSTANCE" != default ]] || die "refusing to destroy the default instance"
  stop
  rm -rf "$INST_DIR"
  if [[ -n "${FORMSTREAM_KAFKA_DATA_DIR:-}" ]]; then rm -rf "$DATA_DIR"; fi
  log "destroyed"
}

status() {
  local pid
  if pid="$(our_pid)"; then
    if port_open "$PORT"; then echo "running (pid $pid, $BOOTSTRAP)"; return 0; fi
    echo "starting (pid $pid, $BOOTSTRAP not answering yet)"; return 3
  fi
  if port_open "$PORT"; then echo "running (port $PORT answered by a process not started by this instance)"; return 0; fi
  echo "not running"
  return 3
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  destroy) destroy ;;
  fetch) fetch; log "jars in $LIB_DIR" ;;
  logs)
    echo "$SERVER_LOG" >&2
    [[ -f "$SERVER_LOG" ]] || die "no log yet at $SERVER_LOG"
    if [[ "${1:-}" == "-f" ]]; then exec tail -n 50 -F "$SERVER_LOG"; else tail -n 100 "$SERVER_LOG"; fi ;;
  env)
    cat <<EOF
export KAFKA_BOOTSTRAP=$BOOTSTRAP
export FORMSTREAM_TEST_BOOTSTRAP=$BOOTSTRAP
export FORMSTREAM_KAFKA_VERSION=$KAFKA_VERSION
export FORMSTREAM_KAFKA_LIB=$LIB_DIR
export FORMSTREAM_KAFKA_LOG=$SERVER_LOG
EOF
    if [[ "$SECURE" == 1 ]]; then echo "export FORMSTREAM_KAFKA_CLIENT_PROPERTIES=$CLIENT_PROPS"; fi
    ;;
  topics|perf-producer|perf-consumer)
    case "$cmd" in
      topics) cls=org.apache.kafka.tools.TopicCommand ;;
      perf-producer) cls=org.apache.kafka.tools.ProducerPerformance ;;
      perf-consumer) cls=org.apache.kafka.tools.ConsumerPerformance ;;
    esac
    mapfile -d '' args < <(with_bootstrap "$@")
    run_tool "$cls" "${args[@]}" ;;
  tool)
    [[ $# -ge 1 ]] || die "usage: kafka.sh tool MAIN_CLASS [ARGS...]"
    cls="$1"; shift
    run_tool "$cls" "$@" ;;
  ""|-h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$cmd' (try --help)" ;;
esac
