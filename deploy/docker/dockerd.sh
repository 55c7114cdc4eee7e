#!/usr/bin/env bash
# deploy/docker/dockerd.sh: a Docker daemon of its own, for machines that run none (CI, and VMs
# like it where Debian's docker.io is installed but no service manager starts it). A laptop with
# Docker Desktop or a running docker.service needs none of this.
#
# Usage: deploy/docker/dockerd.sh COMMAND
#   start    start dockerd in the background on its own socket and wait until it answers;
#            a no-op when it already answers
#   stop     SIGTERM the daemon this script started (its pid file), wait, then SIGKILL
#   status   exit 0 if the daemon answers, 3 if not
#   env      print `export DOCKER_HOST=...` (eval "$(deploy/docker/dockerd.sh env)")
#
# The daemon: no default bridge and no iptables rules (--bridge=none --iptables=false: nothing on
# the host's network changes). Compose's own network still works: its containers reach each other
# by service name and publish ports through docker-proxy. `docker build` steps have no network on
# such a daemon, so builds pass `--network host` (deploy/docker/build.sh does). The storage driver
# is dockerd's own choice (overlay2 where the kernel has overlayfs, else vfs, which copies every
# layer in full) unless FORMSTREAM_DOCKER_STORAGE_DRIVER names one.
#
# Environment (all optional):
#   FORMSTREAM_DOCKER_SOCKET          socket path (default /run/formstream-docker/docker.sock)
#   FORMSTREAM_DOCKER_DATA            images, containers, volumes (default /var/lib/formstream-docker)
#   FORMSTREAM_DOCKER_STORAGE_DRIVER  e.g. vfs or overlay2 (default: dockerd picks)
#   FORMSTREAM_DOCKER_START_TIMEOUT   seconds `start` waits for the daemon (default 60)
set -euo pipefail

SOCKET="${FORMSTREAM_DOCKER_SOCKET:-/run/formstream-docker/docker.sock}"
DATA="${FORMSTREAM_DOCKER_DATA:-/var/lib/formstream-docker}"
DRIVER="${FORMSTREAM_DOCKER_STORAGE_DRIVER:-}"
START_TIMEOUT="${FORMSTREAM_DOCKER_START_TIMEOUT:-60}"
RUN_DIR="$(dirname "$SOCKET")"
PID_FILE="$RUN_DIR/dockerd.pid"
LOG="$DATA/dockerd.log"

log() { echo "dockerd.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

answers() { DOCKER_HOST="unix://$SOCKET" timeout 10 docker version >/dev/null 2>&1; }

our_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid; pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "dockerd .*--host unix://$SOCKET" || return 1
  echo "$pid"
}

start() {
  if answers; then log "already answering on $SOCKET"; return 0; fi
  command -v dockerd >/dev/null || die "dockerd not found (apt-get install docker.io docker-compose)"
  command -v docker >/dev/null || die "the docker CLI is not found (apt-get install docker.io)"
  [[ "$(id -u)" == 0 ]] || die "dockerd needs root"
  mkdir -p "$RUN_DIR" "$DATA"
  local pid
  if ! pid="$(our_pid)"; then
    # A pid file no daemon of ours holds (dockerd killed, or the machine restarted and its pid
    # now belongs to another process) makes dockerd refuse to start: "pid file found".
    if [[ -f "$PID_FILE" ]]; then
      log "removing the stale pid file $PID_FILE (pid $(cat "$PID_FILE" 2>/dev/null) is no dockerd on $SOCKET)"
      rm -f "$PID_FILE"
    fi
    # dockerd's bind mount of the host's network namespace outlives a killed daemon.
    umount "$RUN_DIR/exec/netns/default" 2>/dev/null || true
    local args=(--host "unix://$SOCKET" --data-root "$DATA" --exec-root "$RUN_DIR/exec"
                --pidfile "$PID_FILE" --bridge=none --iptables=false --ip-masq=false)
    [[ -n "$DRIVER" ]] && args+=(--storage-driver "$DRIVER")
    log "starting dockerd ${args[*]} (log $LOG)"
    setsid nohup dockerd "${args[@]}" >>"$LOG" 2>&1 </dev/null &
    pid=$!
  fi
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers; do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$LOG" >&2; die "dockerd exited (log $LOG)"; }
    ((SECONDS < deadline)) || die "dockerd does not answer after ${START_TIMEOUT}s (log $LOG)"
    sleep 0.5
  done
  log "ready on unix://$SOCKET (storage driver $(DOCKER_HOST="unix://$SOCKET" docker info --format '{{.Driver}}'))"
}

stop() {
  local pid
  if ! pid="$(our_pid)"; then log "not running from this script"; return 0; fi
  log "stopping pid $pid ..."
  kill -TERM "$pid"
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then log "still alive after 30 s; SIGKILL"; kill -KILL "$pid"; break; fi
    sleep 0.2
  done
  # dockerd leaves its bind mount of the host's network namespace behind.
  umount "$RUN_DIR/exec/netns/default" 2>/dev/null || true
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if answers; then echo "answering on unix://$SOCKET"; else echo "not answering on unix://$SOCKET"; exit 3; fi ;;
  env) echo "export DOCKER_HOST=unix://$SOCKET" ;;
  ""|-h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$1' (try --help)" ;;
esac
