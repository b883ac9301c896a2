#!/usr/bin/env bash
# The project's test command: starts a throwaway PostgreSQL (installing it from apt when
# missing), runs the unit and integration tests for several feature sets, then a real
# --quick run of a small matrix into a temporary folder, and cleans up.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

# Feature sets the API tests run under: none, each alone, all; and the memory-store
# reference with the fastest build's other features (its own tests, tests/memory_store.rs).
FEATURE_SETS=("" pool prepared mimalloc simd-json metrics pipeline coalesce current-thread full "memory-store,full")

usage() {
  cat <<'USAGE'
usage: scripts/test.sh [--no-matrix]

Runs every test against a real, throwaway PostgreSQL cluster.
  --no-matrix   skip the end-to-end --quick matrix run (which needs oha)
USAGE
}

# Everything this run creates lives under RUN_TMP (the TMPDIR of every child) and every
# process it starts carries PERFLAB_TEST_RUN in its environment, so the closing check can
# find whatever would outlive the run.
start_run_scope() {
  RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/perflab-test.XXXXXX")"
  chmod 755 "${RUN_TMP}"
  RUN_ID="$(basename "${RUN_TMP}")"
  TMP_BEFORE="$(tmp_entries)"
  export TMPDIR="${RUN_TMP}"
  export PERFLAB_TEST_RUN="${RUN_ID}"
  TEST_LOG="${RUN_TMP}/test.log"
  : >"${TEST_LOG}"
}

# The top-level entries of the machine's temporary folders, to compare before and after.
tmp_entries() {
  local dir
  for dir in /tmp /var/tmp /run; do
    if [[ -d "${dir}" ]]; then
      find "${dir}" -mindepth 1 -maxdepth 1 -printf '%p\n' 2>/dev/null || true
    fi
  done | sort
  return 0
}

# Prints "pid command" for every live process of this run: its environment carries
# PERFLAB_TEST_RUN=RUN_ID, or its command line names RUN_TMP. Pure bash, so the scan
# starts no process that could match itself.
run_processes() {
  local dir pid entry cmd
  local -a envs args
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    [[ "${pid}" == "$$" || "${pid}" == "${BASHPID}" ]] && continue
    alive "${pid}" || continue
    mapfile -d '' -t args 2>/dev/null <"${dir}/cmdline" || continue
    cmd="${args[*]}"
    if [[ "${cmd}" == *"${RUN_TMP}"* ]]; then
      printf '%s %s\n' "${pid}" "${cmd}"
      continue
    fi
    mapfile -d '' -t envs 2>/dev/null <"${dir}/environ" || continue
    for entry in "${envs[@]}"; do
      if [[ "${entry}" == "PERFLAB_TEST_RUN=${RUN_ID}" ]]; then
        printf '%s %s\n' "${pid}" "${cmd}"
        break
      fi
    done
  done
}

# The closing check: no process of the run is alive and no temporary folder of it
# remains. What it finds is reported, then killed or removed.
check_leftovers() {
  local procs pids left
  procs="$(run_processes)"
  if [[ -n "${procs}" ]]; then
    warn "processes of this run outlived it; killing them:"
    printf '  %s\n' "${procs}" >&2
    pids="$(awk '{print $1}' <<<"${procs}")"
    # shellcheck disable=SC2086  # one pid per word
    kill -TERM ${pids} 2>/dev/null
    sleep 2
    # shellcheck disable=SC2086
    kill -KILL ${pids} 2>/dev/null
  fi
  remove_dir "${RUN_TMP}" || warn "clean-up: could not remove ${RUN_TMP}"
  left="$(comm -13 <(printf '%s\n' "${TMP_BEFORE}") <(tmp_entries) | grep -E 'perflab|libpod|containers|buildah|podman' || true)"
  if [[ -n "${left}" ]]; then
    warn "temporary folders of this run remain: $(tr '\n' ' ' <<<"${left}")"
  fi
  if [[ -z "${procs}" && -z "${left}" && ! -e "${RUN_TMP}" ]]; then
    log "clean: no process of this run is left, and no temporary folder"
  fi
}

# The EXIT trap: every step runs whatever failed before; the run's status is kept.
cleanup() {
  local status=$?
  set +e
  trap '' INT TERM
  unset PERFLAB_TEST_RUN
  [[ -n "${RUN_TMP:-}" ]] || return "${status}"
  cleanup_step "stopping PostgreSQL" pg_stop
  cleanup_step "the closing check" check_leftovers
  return "${status}"
}

# Runs cargo test, keeping its summary lines for the closing count.
cargo_test() {
  cargo test --locked "$@" 2>&1 | tee -a "${TEST_LOG}"
}

# One closing line over every cargo test run and the end-to-end checks.
print_totals() {
  cargo run --locked --quiet --release -p lab -- test-totals "${TEST_LOG}" --extra "$1"
}

run_feature_tests() {
  local features
  for features in "${FEATURE_SETS[@]}"; do
    log "API tests with features: ${features:-(none)}"
    if [[ -z "${features}" ]]; then
      cargo_test -p perflab
    else
      cargo_test -p perflab --features "${features}"
    fi
  done
}

require_kubernetes_validate() {
  command -v kubernetes-validate >/dev/null 2>&1 && return 0
  command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
  log "installing kubernetes-validate from PyPI (offline Kubernetes schema checks)"
  python3 -m pip install --quiet kubernetes-validate >&2 || die "could not install kubernetes-validate"
}

run_k8s_checks() {
  command -v kubectl >/dev/null 2>&1 || die "kubectl not found: install kubectl 1.32 (it carries kustomize)"
  require_kubernetes_validate
  log "k8s: --target k8s --dry-run renders and checks every overlay of matrix.toml"
  "${ROOT}/scripts/run-matrix.sh" --target k8s --dry-run >/dev/null
  log "k8s: the same for matrix-peers.toml (external rows run their own image)"
  "${ROOT}/scripts/run-matrix.sh" --target k8s --dry-run --matrix "${ROOT}/matrix-peers.toml" >/dev/null
  log "k8s: the same for matrix-resources.toml and matrix-postgres.toml (rows that set the pod's resources and PostgreSQL's settings)"
  "${ROOT}/scripts/run-matrix.sh" --target k8s --dry-run --matrix "${ROOT}/matrix-resources.toml" >/dev/null
  "${ROOT}/scripts/run-matrix.sh" --target k8s --dry-run --matrix "${ROOT}/matrix-postgres.toml" >/dev/null
  local rendered
  for rendered in "${ROOT}"/target/k8s/*/rendered.yaml; do
    kubernetes-validate --strict -k 1.32.0 --quiet "${rendered}"
  done
  log "k8s: every rendered overlay is valid for Kubernetes 1.32"
}

# The images, built and run with podman under the pods' constraints (no cluster needed).
run_container_test() {
  "${ROOT}/scripts/container-test.sh"
}

# A real --quick run on the cluster KUBECONFIG points at; skipped without one.
run_live_k8s() {
  local out
  out="$(mktemp -d "${TMPDIR:-/tmp}/perflab-k8s.XXXXXX")"
  log "live Kubernetes test: a --quick run of tests/ci-matrix.toml on $(kubectl config current-context)"
  # Every row but "broken peer" (it has no image: it tests the local run's failures).
  local -a rows=(--only "+index" --only all --only "FastAPI tuned")
  "${ROOT}/scripts/run-matrix.sh" --target k8s --quick --matrix "${ROOT}/tests/ci-matrix.toml" \
    "${rows[@]}" --out "${out}" ${PERFLAB_K8S_LOAD:+--load "${PERFLAB_K8S_LOAD}"} \
    ${PERFLAB_K8S_REGISTRY:+--registry "${PERFLAB_K8S_REGISTRY}"}
  cargo run --locked --quiet -p lab -- verify --matrix "${ROOT}/tests/ci-matrix.toml" "${rows[@]}" \
    --quick --out "${out}"
  rm -rf "${out}"
}

run_quick_matrix() {
  require_oha
  local out_dir
  out_dir="$(mktemp -d "${TMPDIR:-/tmp}/perflab-matrix.XXXXXX")"
  cp "${ROOT}/README.md" "${out_dir}/README.md"
  log "end-to-end: a --quick, --profile run of tests/ci-matrix.toml into ${out_dir}"
  # Its row "broken peer" breaks the API contract on purpose: the run reports it as
  # failed (exit 1) and measures every other row, which verify checks.
  local status=0
  "${ROOT}/scripts/run-matrix.sh" --quick --profile --matrix "${ROOT}/tests/ci-matrix.toml" \
    --out "${out_dir}" --readme "${out_dir}/README.md" || status=$?
  [[ "${status}" -eq 1 ]] || die "the end-to-end run exited ${status}, not 1 (one row fails on purpose)"
  cargo run --locked --quiet -p lab -- verify --matrix "${ROOT}/tests/ci-matrix.toml" \
    --out "${out_dir}" --readme "${out_dir}/README.md" --profiled --blocks --expect-failed "broken peer"
}

# quick_matrix_check NAME WHAT [VERIFY-ARGS...]: a --quick run of tests/NAME.toml into a
# folder of its own (with a copy of README for its block), checked by `lab verify`.
quick_matrix_check() {
  require_oha
  local name="$1" what="$2" out_dir
  shift 2
  out_dir="$(mktemp -d "${TMPDIR:-/tmp}/perflab-${name}.XXXXXX")"
  cp "${ROOT}/README.md" "${out_dir}/README.md"
  log "end-to-end: a --quick run of tests/${name}.toml (${what}) into ${out_dir}"
  "${ROOT}/scripts/run-matrix.sh" --quick --matrix "${ROOT}/tests/${name}.toml" \
    --out "${out_dir}" --readme "${out_dir}/README.md"
  cargo run --locked --quiet -p lab -- verify --matrix "${ROOT}/tests/${name}.toml" \
    --out "${out_dir}" --readme "${out_dir}/README.md" --blocks "$@"
  rm -rf "${out_dir}"
}

# Rows that set their pod (a CPU limit the server is throttled at, worker threads, a
# pool size) and their database (a setting that needs a restart: a cluster of the
# row's own; one a session takes: on the row's database).
run_pod_matrix() {
  quick_matrix_check pod-matrix "resources, workers, env, a row's own PostgreSQL" \
    --expect-own-cluster "own cluster"
}

# A curve: rows with their own users, ids, connections and PostgreSQL memory limit,
# each window followed by one at the fixed rate; the curve's table and chart written.
run_scale_matrix() {
  quick_matrix_check scale-matrix "a curve: users, Zipf ids, connections, a memory-limited PostgreSQL, fixed-rate windows"
}

# A --quick run against a PostgreSQL of "yours" (--database-url): the lab works in a
# database of its own and puts back what it changed. The cluster holds a users table,
# a server setting and the app's role (password and settings) of its own; after the
# run all are as before and nothing of the run is left.
run_user_database_check() {
  require_psql_tools
  pg_start
  local admin="${PG_URL}" yours out before after
  yours="${PG_URL/\/postgres\?//yours?}"
  log "end-to-end: a --quick run against your own PostgreSQL leaves it as it was"
  psql -X -q -v ON_ERROR_STOP=1 "${admin}" -c "CREATE DATABASE yours" \
    -c "ALTER SYSTEM SET work_mem = '7MB'" -c "SELECT pg_reload_conf()" \
    -c "CREATE ROLE perflab_app LOGIN PASSWORD 'theirs'" \
    -c "ALTER ROLE perflab_app SET search_path = 'public'"
  psql -X -q -v ON_ERROR_STOP=1 "${yours}" \
    -c "CREATE TABLE users (id int PRIMARY KEY, note text)" \
    -c "INSERT INTO users VALUES (1, 'a'), (2, 'b'), (3, 'c')"
  local state_sql="SELECT concat_ws(' | ',
    (SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database),
    (SELECT rolpassword FROM pg_authid WHERE rolname = 'perflab_app'),
    (SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s
       JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = 'perflab_app' AND s.setdatabase = 0),
    current_setting('work_mem'),
    (SELECT string_agg(name || '=' || setting, ',' ORDER BY seqno) FROM pg_file_settings
       WHERE sourcefile LIKE '%postgresql.auto.conf'))"
  local table_sql="SELECT count(*) || ':' || string_agg(id || note, ',' ORDER BY id) FROM users"
  before="$(psql -X -tA "${admin}" -c "${state_sql}") / $(psql -X -tA "${yours}" -c "${table_sql}")"
  # The CI matrix with a setting of its own, which the second run may change (and must
  # put back: the cluster holds work_mem = 7MB of its own).
  local matrix="${ROOT}/target/ci-matrix-settings.toml" extra
  { cat "${ROOT}/tests/ci-matrix.toml"; printf '\n[postgres]\nwork_mem = "9MB"\n'; } >"${matrix}"
  # Once leaving the settings alone, once with leave to change them (then put back).
  for extra in "" --allow-settings; do
    out="$(mktemp -d "${TMPDIR:-/tmp}/perflab-yours.XXXXXX")"
    "${ROOT}/scripts/run-matrix.sh" --quick --matrix "${matrix}" --only all \
      --database-url "${yours}" --out "${out}" ${extra:+"${extra}"}
    after="$(psql -X -tA "${admin}" -c "${state_sql}") / $(psql -X -tA "${yours}" -c "${table_sql}")"
    [[ "${before}" == "${after}" ]] || die "your PostgreSQL changed (${extra:-no flag}): before: ${before}; after: ${after}"
    if compgen -G "${ROOT}/target/lab-sandbox-*.json" >/dev/null; then
      die "the run left its journal: it did not put everything back"
    fi
    rm -rf "${out}"
  done
  rm -f "${matrix}"
  log "your PostgreSQL is as it was: ${after}"
  pg_stop
}

# `lab run --url`: our server started by hand on loopback, as a user starts theirs, is
# measured by URL; its database, given read only, checks every PATCH.
run_service_check() {
  require_oha
  pg_start
  local out app port pid
  out="$(mktemp -d "${TMPDIR:-/tmp}/perflab-service.XXXXXX")"
  log "end-to-end: lab run --url measures a server started by hand on loopback"
  cargo build --locked --release --quiet -p perflab --features pool,prepared
  cp "${ROOT}/target/release/perflab" "${out}/perflab"
  app="$(cargo run --locked --quiet --release -p lab -- seed --database-url "${PG_URL}" \
    --quick --matrix "${ROOT}/tests/ci-matrix.toml")"
  port="$(free_port)"
  DATABASE_URL="${app}" LISTEN_ADDR="127.0.0.1:${port}" RUST_LOG=warn \
    "${out}/perflab" >"${out}/server.log" 2>&1 &
  pid=$!
  "${ROOT}/scripts/run-matrix.sh" --quick --matrix "${ROOT}/tests/ci-matrix.toml" \
    --url "http://127.0.0.1:${port}" --database-url "${PG_URL}" --out "${out}" 2>&1 \
    | tee "${out}/run.log"
  grep -q "is process ${pid} on this machine" "${out}/run.log" \
    || die "the run did not find the server's process (${pid}) listening on its port"
  cargo run --locked --quiet -p lab -- verify --matrix "${ROOT}/tests/ci-matrix.toml" --quick \
    --url "http://127.0.0.1:${port}" --out "${out}" --blocks
  kill -TERM "${pid}"
  wait "${pid}" || die "the server started by hand did not exit 0 on SIGTERM"
  rm -rf "${out}"
  pg_stop
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
  # tests/tls.rs makes its certificates with openssl.
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  cd "${ROOT}"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  start_run_scope
  # The tests' cluster trusts loopback: tests connect as the app role (and others they
  # make) without passwords. The lab's clusters, below and in run-matrix.sh, use scram.
  pg_start
  export TEST_DATABASE_URL="${PG_URL}"
  # tests/restarts.rs restarts this cluster with its own pg_ctl.
  export TEST_PG_BIN="${PG_BIN}"
  log "lab unit tests"
  cargo_test -p lab
  log "the server's micro-benchmarks build (benches/; run them with cargo bench)"
  cargo bench --locked -p perflab --no-run
  run_feature_tests
  pg_stop
  local e2e=0
  run_k8s_checks
  e2e=$((e2e + 1))
  run_container_test
  e2e=$((e2e + 1))
  if [[ -n "${KUBECONFIG:-}" ]]; then
    run_live_k8s
    e2e=$((e2e + 1))
  else
    log "live Kubernetes test skipped: KUBECONFIG is not set (see docs/kubernetes.md)"
  fi
  if [[ "${matrix}" -eq 1 ]]; then
    run_quick_matrix
    e2e=$((e2e + 1))
    run_pod_matrix
    e2e=$((e2e + 1))
    run_scale_matrix
    e2e=$((e2e + 1))
    run_user_database_check
    e2e=$((e2e + 1))
    run_service_check
    e2e=$((e2e + 1))
  fi
  log "all tests passed"
  print_totals "${e2e}"
}

main "$@"
