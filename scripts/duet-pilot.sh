#!/usr/bin/env bash
# A pilot for the next design step (docs/studies.md, "Duet: two builds at once"): are
# two servers measured at the same time steadier against each other than the same two
# measured one right after the other? Starts a throwaway PostgreSQL, seeds it, starts
# builds A and B (both pinned to the server CPU) and runs PAIRS pairs of GET-only,
# closed-loop 3 s windows: one after the other (128 connections each, in a random
# order) and at once (64 connections each). oha's JSON summaries go to OUT; nothing
# else is kept. Needs target/release/lab, the row binaries under target/lab-bin (a run
# of the matrix builds them) and oha.
#
#   scripts/duet-pilot.sh OUT [BINARY_A [BINARY_B]]     (PAIRS=20 by default)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

OUT="${1:?usage: scripts/duet-pilot.sh OUT [BINARY_A [BINARY_B]]}"
BIN_A="${2:-${ROOT}/target/lab-bin/perflab-prepared}"
BIN_B="${3:-${BIN_A}}"
PAIRS="${PAIRS:-20}"
LAB="${ROOT}/target/release/lab"
OHA="$(command -v oha || echo "${HOME}/.cargo/bin/oha")"
for f in "${LAB}" "${BIN_A}" "${BIN_B}" "${OHA}"; do
  [[ -x "${f}" ]] || die "${f} is missing: build it first (./scripts/run-matrix.sh builds the rows)"
done
mkdir -p "${OUT}"
SERVERS=()
cleanup() {
  local pid
  for pid in "${SERVERS[@]}"; do kill "${pid}" 2>/dev/null || true; done
  rm -f "${OUT}"/urls-*.txt
  pg_stop
}
trap cleanup EXIT

pg_start
APP_URL="$("${LAB}" seed --database-url "${PG_URL}" --users 100000 2>/dev/null | tail -n1)"
start() { # BINARY PORT LOG
  DATABASE_URL="${APP_URL}" LISTEN_ADDR="127.0.0.1:$2" POOL_SIZE=16 \
    taskset -c 0 "$1" >"$3" 2>&1 &
  SERVERS+=("$!")
}
PORT_A="$(free_port)"
start "${BIN_A}" "${PORT_A}" "${OUT}/a.log"
PORT_B="$(free_port)"
start "${BIN_B}" "${PORT_B}" "${OUT}/b.log"
for port in "${PORT_A}" "${PORT_B}"; do
  for _ in $(seq 20000); do
    echo "http://127.0.0.1:${port}/users/$((RANDOM * 3 % 100000 + 1))"
  done >"${OUT}/urls-${port}.txt"
done
sleep 2

# load PORT CONNECTIONS FILE: one closed-loop window, bounded even if oha hangs.
load() {
  timeout 30 nice -n -10 taskset -c 1 "${OHA}" --no-tui -w --disable-compression -z 3s \
    -c "$2" --output-format json -o "$3" --urls-from-file "${OUT}/urls-$1.txt" >/dev/null 2>&1
}
load "${PORT_A}" 64 "${OUT}/warm-a.json"
load "${PORT_B}" 64 "${OUT}/warm-b.json"
for i in $(seq "${PAIRS}"); do
  if ((RANDOM % 2)); then
    load "${PORT_A}" 128 "${OUT}/seq-${i}-a.json"
    load "${PORT_B}" 128 "${OUT}/seq-${i}-b.json"
  else
    load "${PORT_B}" 128 "${OUT}/seq-${i}-b.json"
    load "${PORT_A}" 128 "${OUT}/seq-${i}-a.json"
  fi
  load "${PORT_A}" 64 "${OUT}/duet-${i}-a.json" &
  a=$!
  load "${PORT_B}" 64 "${OUT}/duet-${i}-b.json" &
  b=$!
  wait "${a}" "${b}"
  log "pair ${i}/${PAIRS}"
done
