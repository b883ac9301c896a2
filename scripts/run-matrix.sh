#!/usr/bin/env bash
# The main job: measures every build in matrix.toml and writes results.md, the charts,
# results/<timestamp>/ and the README's results table. A thin entry point: it installs
# what the chosen target needs and, locally, owns the throwaway PostgreSQL; every flag
# is lab's (`lab run --help`), which does the validation, builds, measurement,
# statistics and rendering.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

main() {
  require_cargo
  cd "${ROOT}"
  log "building the harness (lab)"
  cargo build --locked --release --quiet -p lab
  local lab="${ROOT}/target/release/lab"
  # What to bootstrap depends on a few flags; lab defines and checks them all.
  local target="local" dry_run=0 own_db=1 service=0 prev="" arg
  # Your PostgreSQL, named on the command line or (password off argv) in the environment.
  if [[ -n "${PERFLAB_DATABASE_URL:-}" ]]; then own_db=0; fi
  for arg in "$@"; do
    case "${arg}" in
      -h | --help) exec "${lab}" run --help ;;
      --dry-run) dry_run=1 ;;
      --database-url | --database-url=*) own_db=0 ;;
      --url | --url=*) service=1 ;;
      --target=*) target="${arg#--target=}" ;;
    esac
    if [[ "${prev}" == "--target" ]]; then target="${arg}"; fi
    prev="${arg}"
  done
  # Validate everything before starting or installing anything; lab names the peers
  # (external servers shipped in peers/) the selected rows run.
  local checked peer
  checked="$("${lab}" run --check "$@")"

  if [[ "${target}" == "k8s" ]]; then
    command -v kubectl >/dev/null 2>&1 || cannot_start "kubectl not found: install kubectl 1.32 (it carries kustomize)"
    if [[ "${dry_run}" -eq 0 ]]; then
      # A live run builds images: oha goes into the load generator's.
      require_oha
      if ! command -v docker >/dev/null 2>&1 && ! command -v buildah >/dev/null 2>&1; then
        apt_install buildah
      fi
    fi
    "${lab}" run "$@" --oha "$(command -v oha || echo oha)"
    return
  fi

  if [[ "${service}" -eq 1 ]]; then
    # A service already running: nothing to build, start or seed; oha measures it.
    require_oha
    "${lab}" run "$@" --oha "$(command -v oha)"
    return
  fi

  command -v taskset >/dev/null 2>&1 || apt_install util-linux
  while read -r _ peer; do
    if [[ -n "${peer}" ]]; then require_peer_venv "${peer}"; fi
  done <<<"${checked}"
  # perf counts the server's system calls in the blocks (and draws --profile's flame
  # graphs); without root the blocks leave that counter out and --profile says why.
  if ! command -v perf >/dev/null 2>&1; then
    if is_root; then
      apt_install linux-perf
    else
      warn "perf not found (Debian: apt-get install linux-perf): the server's system calls are not counted"
    fi
  fi
  require_oha
  find_pg_bin
  require_psql_tools
  local -a db_args=()
  if [[ "${own_db}" -eq 1 ]]; then
    trap 'trap "" INT TERM; cleanup_step "stopping PostgreSQL" pg_stop; cgroups_cleanup' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    pg_start shared_preload_libraries=pg_stat_statements
    # The URL (with the cluster's password) goes by the environment, not argv.
    export PERFLAB_DATABASE_URL="${PG_URL}"
    db_args=(--pg-data "${PG_DIR}/data" --own-cluster)
  else
    # Your PostgreSQL: lab works in a database of its own and puts back what it changed;
    # if it is stopped (Ctrl-C) before it could, this does it from this run's journal.
    LAB="${lab}"
    JOURNAL="${ROOT}/target/lab-sandbox-$$.json"
    trap 'trap "" INT TERM; cleanup_step "putting your PostgreSQL back" "${LAB}" restore --journal "${JOURNAL}"; cgroups_cleanup' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    db_args=(--journal "${JOURNAL}")
  fi
  "${lab}" run "$@" "${db_args[@]}" --oha "$(command -v oha)"
}

main "$@"
