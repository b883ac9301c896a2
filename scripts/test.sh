#!/usr/bin/env bash
# The project's test command: starts a throwaway PostgreSQL (installing it from apt when
# missing), runs the unit and integration tests for several feature sets, then a real
# --quick run of a small matrix into a temporary folder, and cleans up.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

# Feature sets the API tests run under: none, each alone, all.
FEATURE_SETS=("" pool prepared mimalloc simd-json metrics full)

usage() {
  cat <<'USAGE'
usage: scripts/test.sh [--no-matrix]

Runs every test against a real, throwaway PostgreSQL cluster.
  --no-matrix   skip the end-to-end --quick matrix run (which needs oha)
USAGE
}

cleanup() {
  pg_stop
  if [[ -n "${OUT_DIR:-}" ]]; then rm -rf "${OUT_DIR}"; fi
}

run_feature_tests() {
  local features
  for features in "${FEATURE_SETS[@]}"; do
    log "API tests with features: ${features:-(none)}"
    if [[ -z "${features}" ]]; then
      cargo test --locked -p perflab
    else
      cargo test --locked -p perflab --features "${features}"
    fi
  done
}

run_quick_matrix() {
  require_oha
  OUT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/perflab-matrix.XXXXXX")"
  cp "${ROOT}/README.md" "${OUT_DIR}/README.md"
  log "end-to-end: a --quick run of tests/ci-matrix.toml into ${OUT_DIR}"
  "${ROOT}/scripts/run-matrix.sh" --quick --matrix "${ROOT}/tests/ci-matrix.toml" \
    --out "${OUT_DIR}" --readme "${OUT_DIR}/README.md"
  cargo run --locked --quiet -p lab -- verify --matrix "${ROOT}/tests/ci-matrix.toml" \
    --out "${OUT_DIR}" --readme "${OUT_DIR}/README.md"
}

main() {
  local matrix=1
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --no-matrix) matrix=0 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
    shift
  done
  require_cargo
  cd "${ROOT}"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  pg_start
  export TEST_DATABASE_URL="${PG_URL}"
  log "lab unit tests"
  cargo test --locked -p lab
  run_feature_tests
  pg_stop
  if [[ "${matrix}" -eq 1 ]]; then
    run_quick_matrix
  fi
  log "all tests passed"
}

main "$@"
