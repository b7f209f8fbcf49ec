#!/usr/bin/env bash
# Installs Debian's Docker engine and debootstrap if missing, and starts or stops a dockerd for the container
# images and tests. The engine runs with no bridge and no iptables rules: every build and container uses host
# networking and only ever talks to 127.0.0.1 (nothing listens on or sends to a private-range address).
#
# Usage: scripts/dockerd.sh install | start | stop | status
#   install  apt-get install docker.io debootstrap (root; skipped when present)
#   start    start dockerd unless one already answers; prints "started" or "running"
#   stop     stop the dockerd that `start` started (by the PID it recorded); an engine it did not start is left alone
# Environment: VISIONNODE_DOCKERD_STATE (default /var/lib/visionnode-dockerd): PID and log of the started engine.
set -euo pipefail

STATE="${VISIONNODE_DOCKERD_STATE:-/var/lib/visionnode-dockerd}"
PID_FILE="$STATE/dockerd.pid"
LOG_FILE="$STATE/dockerd.log"
DOCKER=/usr/bin/docker   # Debian's client: it builds with BuildKit without a buildx plugin

engine_answers() { "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install() {
  local missing=()
  [[ -x /usr/sbin/dockerd && -x "$DOCKER" ]] || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  ((${#missing[@]})) || return 0
  echo "==> apt-get install ${missing[*]}"
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start() {
  if engine_answers; then echo "running"; return 0; fi
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: no Docker engine answers and starting one needs root (run: sudo $0 start)" >&2; exit 2
  fi
  [[ -x /usr/sbin/dockerd ]] || { echo "error: dockerd is not installed (run: $0 install)" >&2; exit 2; }
  mkdir -p "$STATE"
  # setsid: the engine outlives this shell; its PID is what `stop` signals.
  setsid /usr/sbin/dockerd --bridge=none --iptables=false --ip6tables=false --ip-forward=false \
    --ip-masq=false --host unix:///var/run/docker.sock --pidfile "$STATE/dockerd.engine.pid" \
    >"$LOG_FILE" 2>&1 < /dev/null &
  echo $! > "$PID_FILE"
  for _ in $(seq 1 60); do
    if engine_answers; then echo "started"; return 0; fi
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then break; fi
    sleep 1
  done
  echo "error: dockerd did not come up in 60 s; its log ends with:" >&2
  tail -n 5 "$LOG_FILE" >&2
  exit 1
}

stop() {
  [[ -f "$PID_FILE" ]] || { echo "no dockerd started by this script"; return 0; }
  local pid; pid="$(cat "$PID_FILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$PID_FILE"
  echo "stopped"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if engine_answers; then echo "running"; else echo "not running"; exit 1; fi ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
esac
