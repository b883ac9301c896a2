#!/usr/bin/env bash
# The soak test (not in CI): the fullest build of matrix.toml at 70% of its capacity
# (searched first on this machine) for 10 minutes by default, against a throwaway
# PostgreSQL. Prints memory, errors and p99 per interval and a per-id write check, and
# writes them to target/soak/soak.md and soak.json. Every option is lab's:
#   scripts/soak.sh --help
#   scripts/soak.sh --duration 1h --share 0.5 --row "+coalesce"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

main() {
  require_cargo
  cd "${ROOT}"
  log "building the harness (lab)"
  cargo build --locked --release --quiet -p lab
  local lab="${ROOT}/target/release/lab" arg
  for arg in "$@"; do
    case "${arg}" in
      -h | --help) exec "${lab}" soak --help ;;
      --database-url | --database-url=*)
        # The caller's PostgreSQL: nothing to start.
        exec "${lab}" soak --oha "$(command -v oha || echo oha)" "$@" ;;
    esac
  done
  command -v taskset >/dev/null 2>&1 || apt_install util-linux
  require_oha
  find_pg_bin
  trap 'trap "" INT TERM; cleanup_step "stopping PostgreSQL" pg_stop' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  pg_start
  "${lab}" soak --database-url "${PG_URL}" --pg-data "${PG_DIR}/data" \
    --oha "$(command -v oha)" "$@"
}

main "$@"
