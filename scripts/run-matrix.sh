#!/usr/bin/env bash
# The main job: measures every build in matrix.toml and writes results.md, results.svg,
# results/<timestamp>/ and the README's results table. A thin entry point: it checks and
# installs prerequisites and owns the throwaway PostgreSQL; the lab binary (lab/) does
# the validation, builds, measurement, statistics and rendering.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

usage() {
  cat <<'USAGE'
usage: scripts/run-matrix.sh [options]

Measures every row of matrix.toml (max QPS and p99 for each workload) and writes
results.md, results.svg, results/<timestamp>/ and the README's results table.

options:
  --target local|k8s    where to run (default: local; this machine, throwaway PostgreSQL)
  --matrix FILE         the matrix to run (default: matrix.toml)
  --only ROW            measure only this row (name or file name); repeatable
  --quick               short durations, one repetition: a smoke run (~3 min)
  --database-url URL    use this PostgreSQL (superuser) instead of a throwaway cluster
  --out DIR             where results.md, results.svg and results/ go (default: repo root)
  --readme FILE         the README whose table is replaced (default: README.md in the repo;
                        with --out elsewhere, none unless given)
  --dry-run             k8s: render and check every overlay and print every command,
                        without building images or touching a cluster
  --registry REG        k8s: registry the images are pushed to (default: localhost)
  --load kind|k3d|minikube  k8s: load images into a local cluster instead of pushing
  --engine auto|docker|buildah  k8s: image builder (default: docker if its daemon
                        answers, else buildah)
  -h, --help            this help
USAGE
}

main() {
  local target="local" matrix="${ROOT}/matrix.toml" out="${ROOT}" readme="" database_url=""
  local -a pass=() k8s_args=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --target) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; target="$2"; shift ;;
      --matrix) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; matrix="$2"; shift ;;
      --only) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; pass+=(--only "$2"); shift ;;
      --quick) pass+=(--quick) ;;
      --database-url) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; database_url="$2"; shift ;;
      --dry-run) k8s_args+=(--dry-run) ;;
      --registry) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; k8s_args+=(--registry "$2"); shift ;;
      --load) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; k8s_args+=(--load "$2"); shift ;;
      --engine) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; k8s_args+=(--engine "$2"); shift ;;
      --out) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; out="$2"; shift ;;
      --readme) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; readme="$2"; shift ;;
      *) printf 'error: unknown option %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
    shift
  done
  case "${target}" in
    local)
      if [[ ${#k8s_args[@]} -gt 0 ]]; then
        printf 'error: --dry-run, --registry, --load and --engine go with --target k8s\n' >&2
        exit 2
      fi
      ;;
    k8s) ;;
    *) printf 'error: unknown target %s (local or k8s)\n' "${target}" >&2; exit 2 ;;
  esac
  if [[ -z "${readme}" && "${out}" == "${ROOT}" ]]; then
    readme="${ROOT}/README.md"
  fi

  require_cargo
  cd "${ROOT}"
  log "building the harness (lab)"
  cargo build --locked --release --quiet -p lab
  local lab="${ROOT}/target/release/lab"
  # Validate everything before starting or installing anything.
  "${lab}" validate --matrix "${matrix}" "${pass[@]}"

  if [[ "${target}" == "k8s" ]]; then
    command -v kubectl >/dev/null 2>&1 || die "kubectl not found: install kubectl 1.32 (it carries kustomize)"
    local -a k8s_out=(--out "${out}")
    if [[ -n "${readme}" ]]; then k8s_out+=(--readme "${readme}"); fi
    if [[ " ${k8s_args[*]} " != *" --dry-run "* ]]; then
      # A live run builds images: oha goes into the load generator's.
      require_oha
      if ! command -v docker >/dev/null 2>&1 && ! command -v buildah >/dev/null 2>&1; then
        apt_install buildah
      fi
      mkdir -p "${out}"
    fi
    "${lab}" k8s --matrix "${matrix}" "${pass[@]}" "${k8s_args[@]}" "${k8s_out[@]}" \
      --oha "$(command -v oha || echo oha)"
    return
  fi

  command -v taskset >/dev/null 2>&1 || apt_install util-linux
  require_oha
  find_pg_bin
  require_psql_tools

  local -a db_args=()
  if [[ -z "${database_url}" ]]; then
    trap 'trap "" INT TERM; cleanup_step "stopping PostgreSQL" pg_stop' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    pg_start
    database_url="${PG_URL}"
    db_args=(--pg-data "${PG_DIR}/data")
  fi
  local -a readme_args=()
  if [[ -n "${readme}" ]]; then readme_args=(--readme "${readme}"); fi
  mkdir -p "${out}"
  "${lab}" run --matrix "${matrix}" "${pass[@]}" --database-url "${database_url}" \
    "${db_args[@]}" --out "${out}" "${readme_args[@]}" --oha "$(command -v oha)"
}

main "$@"
