#!/usr/bin/env bash
# Where the server's CPU goes: the given rows of matrix.toml (default: +prepared, the
# `pool,prepared` build, and +coalesce, the fastest) measured as usual with --profile
# and no pgbench line. Writes studies/server-profile/: results.md and its charts, and
# the run's summary.json, steps.json, results.csv and one flame graph per row and
# workload under results/<run>/ (the links in results.md resolve there).
# Usage: ./scripts/profile-study.sh [ROW...]
# PERFLAB_STUDY_DIR (relative to the repository) writes the study elsewhere.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

WORK=""
cleanup() { if [[ -n "${WORK}" ]]; then rm -rf "${WORK}"; fi; }

main() {
  local -a rows=("$@")
  if [[ "${#rows[@]}" -eq 0 ]]; then rows=(+prepared +coalesce); fi
  local study="${ROOT}/${PERFLAB_STUDY_DIR:-studies/server-profile}" row run
  local -a only=()
  for row in "${rows[@]}"; do only+=(--only "${row}"); done
  WORK="$(mktemp -d /tmp/perflab-profile.XXXXXX)"
  trap cleanup EXIT
  local work="${WORK}"
  log "profiling ${rows[*]}: the usual search, then perf at the common rate (first repetition)"
  cp "${ROOT}/README.md" "${work}/README.md"
  "${ROOT}/scripts/run-matrix.sh" "${only[@]}" --profile --no-reference \
    --out "${work}" --readme "${work}/README.md"
  run="$(find "${work}/results" -mindepth 1 -maxdepth 1 -type d | sort | tail -n 1)"
  rm -rf "${study}"
  mkdir -p "${study}/results/$(basename "${run}")"
  cp "${work}/results.md" "${work}"/results-*.svg "${study}/"
  cp "${run}/summary.json" "${run}"/steps.json* "${run}/results.csv" "${run}"/flame-*.svg \
    "${study}/results/$(basename "${run}")/"
  log "wrote ${study}"
}

main "$@"
