#!/usr/bin/env bash
# The Kubernetes images, run for real without a cluster: builds the server image of one
# row, the FastAPI peer's image (on a Debian base made here with debootstrap: no
# registry) and the load-generator image with buildah, checks their config, then runs them with
# podman under the pod's own constraints (non-root UID, read-only root filesystem, all
# capabilities dropped, no privilege escalation, a CPU limit) on the host network against
# a throwaway PostgreSQL. The load generator runs a --quick search exactly as its Job
# would, and its log goes through the same reader and report as a Kubernetes run.
# Traffic stays on loopback.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

MATRIX="${ROOT}/tests/ci-matrix.toml"
ROW="all"
PEER_ROW="FastAPI tuned"
APP_PORT=""
APP_NAME="perflab-ct-$$"
PEER_NAME="perflab-ct-peer-$$"
LOADGEN_NAME="perflab-ct-loadgen-$$"

# Removes the containers (killing what a failed removal leaves running), waits until
# podman's own processes (conmon and the `podman container cleanup` it starts on exit)
# have let go of the private store, removes the images from it, then the folder. Every
# step runs, each podman call is time-bounded, and a problem is a warning. No `podman
# system reset`: it would also delete the machine's own networks and caches.
cleanup() {
  local status=$?
  set +e
  trap '' INT TERM
  # Only ever the private store: never touch the machine's own containers.
  if [[ -n "${CT_DIR:-}" && -d "${CT_DIR}" && "${CONTAINERS_STORAGE_CONF:-}" == "${CT_DIR}/storage.conf" ]]; then
    cleanup_step "removing the containers" \
      timeout -k 5 60 podman rm --force --ignore --time 0 "${APP_NAME}" "${PEER_NAME}" "${LOADGEN_NAME}" >/dev/null
    cleanup_step "stopping containers that survived removal" kill_running_containers
    cleanup_step "waiting for podman to release ${CT_DIR}" wait_store_released
    cleanup_step "removing the images" timeout -k 5 120 podman rmi --all --force >/dev/null 2>&1
    cleanup_step "waiting for podman to release ${CT_DIR}" wait_store_released
  fi
  if [[ -n "${CT_DIR:-}" && -d "${CT_DIR}" ]]; then
    if [[ -n "${KEEP_CT:-}" ]]; then
      log "kept ${CT_DIR}"
    else
      cleanup_step "removing ${CT_DIR}" remove_dir "${CT_DIR}"
    fi
  fi
  cleanup_step "stopping PostgreSQL" pg_stop
  return "${status}"
}

# Kills the processes of any container of the private store still running (their
# environment and command line name nothing of this run, so no later check finds them).
kill_running_containers() {
  local id pid
  for id in $(timeout -k 5 30 podman ps --quiet --no-trunc 2>/dev/null); do
    pid="$(timeout -k 5 30 podman inspect --format '{{.State.Pid}}' "${id}" 2>/dev/null)"
    if [[ "${pid}" =~ ^[1-9][0-9]*$ ]]; then
      warn "clean-up: container ${id:0:12} (pid ${pid}) still runs; killing it"
      kill -KILL "${pid}" 2>/dev/null
    fi
  done
  return 0
}

# Waits (up to 30 s) until no process names the private store on its command line:
# conmon and podman's exit-time clean-up carry --root/--runroot under CT_DIR. Kills
# what is still there after that, with a warning.
wait_store_released() {
  local i
  for ((i = 0; i < 60; i++)); do
    pgrep -f -- "${CT_DIR}/" >/dev/null 2>&1 || return 0
    sleep 0.5
  done
  warn "clean-up: processes still hold ${CT_DIR}: $(pgrep -a -f -- "${CT_DIR}/" | tr '\n' ';')"
  pkill -KILL -f -- "${CT_DIR}/" 2>/dev/null
  sleep 1
  ! pgrep -f -- "${CT_DIR}/" >/dev/null 2>&1
}

require_containers() {
  local missing=()
  command -v buildah >/dev/null 2>&1 || missing+=(buildah)
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  if [[ ${#missing[@]} -gt 0 ]]; then apt_install "${missing[@]}"; fi
}

# Settings for a root sandbox without systemd: runc, cgroupfs, no raised rlimits or pid
# limits, and a private vfs image store under CT_DIR (see docs/kubernetes.md, "Tests of the Kubernetes target").
container_config() {
  mkdir -p "${CT_DIR}/storage" "${CT_DIR}/run" "${CT_DIR}/tmp" "${CT_DIR}/networks"
  cat >"${CT_DIR}/containers.conf" <<EOF
[containers]
default_ulimits = []
pids_limit = 0
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
tmp_dir = "${CT_DIR}/tmp"
volume_path = "${CT_DIR}/storage/volumes"
[network]
network_config_dir = "${CT_DIR}/networks"
EOF
  cat >"${CT_DIR}/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "${CT_DIR}/storage"
runroot = "${CT_DIR}/run"
EOF
  export CONTAINERS_CONF="${CT_DIR}/containers.conf"
  export CONTAINERS_STORAGE_CONF="${CT_DIR}/storage.conf"
}

# The pod's constraints, as podman flags.
POD_FLAGS=(--pull=never --network host --user 65532:65532 --read-only --cap-drop ALL
  --security-opt no-new-privileges --cpus 1 --memory 1g)

# start_app IMAGE: runs the server image with the pod's constraints on a free loopback
# port (APP_PORT) and waits until it listens; a port lost to a race is retried.
start_app() {
  local image="$1" attempt i
  for attempt in 1 2 3 4 5; do
    APP_PORT="$(free_port)"
    log "containers: the app image on 127.0.0.1:${APP_PORT} with the pod's constraints"
    podman run -d --name "${APP_NAME}" "${POD_FLAGS[@]}" \
      -e "DATABASE_URL=${APP_DB_URL}" \
      -e "LISTEN_ADDR=127.0.0.1:${APP_PORT}" -e RUST_LOG=info "${image}" >/dev/null
    for ((i = 0; i < 100; i++)); do
      podman logs "${APP_NAME}" >"${CT_DIR}/app.log" 2>&1 || true
      if grep -q "listening" "${CT_DIR}/app.log"; then return 0; fi
      [[ "$(podman inspect "${APP_NAME}" --format '{{.State.Running}}')" == "true" ]] || break
      sleep 0.1
    done
    podman logs "${APP_NAME}" >"${CT_DIR}/app.log" 2>&1 || true
    if grep -q "cannot listen" "${CT_DIR}/app.log" && [[ "${attempt}" -lt 5 ]]; then
      log "containers: port ${APP_PORT} was taken before the app could bind it (attempt ${attempt}/5); trying another"
      podman rm --force --time 0 "${APP_NAME}" >/dev/null
      continue
    fi
    podman logs "${APP_NAME}" 2>&1 | tail -n 20 >&2
    die "the app container did not start listening"
  done
}

# run_loadgen IMAGE ROW PORT PLAN: the load generator, as its Job: read-only root, a
# writable /work like the Job's emptyDir, the plan mounted where the ConfigMap goes. It
# waits for /readyz, refuses to measure unless /version lists the row's features (ours)
# and the contract probe passes. Detached and polled (at most 10 minutes), so Ctrl-C
# reaches the clean-up at once.
run_loadgen() {
  local image="$1" row="$2" port="$3" plan="$4" i code
  rm -rf "${CT_DIR}/work"
  mkdir -p "${CT_DIR}/work"
  chown 65532:65532 "${CT_DIR}/work"
  log "containers: a --quick search of row ${row} from the load-generator image"
  podman run -d --name "${LOADGEN_NAME}" "${POD_FLAGS[@]}" -v "${CT_DIR}/work:/work" \
    -v "${plan}:/etc/perflab/plan.json:ro" "${image}" \
    loadgen --url "http://localhost:${port}" >/dev/null
  for ((i = 0; i < 600; i++)); do
    [[ "$(podman inspect "${LOADGEN_NAME}" --format '{{.State.Running}}')" == "true" ]] || break
    sleep 1
  done
  podman logs "${LOADGEN_NAME}" >"${CT_DIR}/loadgen.log" 2>"${CT_DIR}/loadgen.err"
  code="$(podman inspect "${LOADGEN_NAME}" --format '{{.State.ExitCode}}')"
  if [[ "${i}" -ge 600 || "${code}" != "0" ]]; then
    tail -n 20 "${CT_DIR}/loadgen.err" >&2
    podman logs "${APP_NAME}" 2>&1 | tail -n 20 >&2
    podman logs "${PEER_NAME}" 2>&1 | tail -n 20 >&2 || true
    die "the load-generator container failed (exit ${code}, $((i)) s)"
  fi
  cat "${CT_DIR}/loadgen.err" >&2
  podman rm --force --time 0 "${LOADGEN_NAME}" >/dev/null
}

# The Debian mirror apt uses here (one-line or deb822 sources), for debootstrap.
debian_mirror() {
  local mirror
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n 1 | tr -d ' ')"
  printf '%s\n' "${mirror:-http://deb.debian.org/debian}"
}

# debian:bookworm-slim in the private store, for the FastAPI peer's Containerfile: no
# registry can be reached here, so it is made with debootstrap (minbase) and imported.
make_debian_base() {
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local mirror
  mirror="$(debian_mirror)"
  log "containers: making debian:bookworm-slim with debootstrap from ${mirror} (no registry here; about a minute)"
  if ! debootstrap --variant=minbase bookworm "${CT_DIR}/debian" "${mirror}" >"${CT_DIR}/debootstrap.log" 2>&1; then
    tail -n 20 "${CT_DIR}/debootstrap.log" >&2
    die "debootstrap failed"
  fi
  tar -C "${CT_DIR}/debian" -c . | podman import - docker.io/library/debian:bookworm-slim >/dev/null
  remove_dir "${CT_DIR}/debian"
}

# The FastAPI peer's image, run with the pod's constraints and searched by the load
# generator like our server: its entrypoint is the row's command, with its arguments.
run_peer() {
  local image="$1" loadgen="$2" port before after
  port="$(free_port)"
  log "containers: the FastAPI peer's image on 127.0.0.1:${port} with the pod's constraints"
  podman run -d --name "${PEER_NAME}" "${POD_FLAGS[@]}" "${image}" \
    tuned --port "${port}" --database-url "${APP_DB_URL}" --pool-size 8 >/dev/null
  "${lab}" plan --matrix "${MATRIX}" --only "${PEER_ROW}" --quick >"${CT_DIR}/peer-plan.json"
  before="$(psql "${PG_URL}" -tAc 'SELECT coalesce(sum(version), 0) FROM users')"
  run_loadgen "${loadgen}" "${PEER_ROW}" "${port}" "${CT_DIR}/peer-plan.json"
  after="$(psql "${PG_URL}" -tAc 'SELECT coalesce(sum(version), 0) FROM users')"
  mkdir -p "${CT_DIR}/peer-out"
  "${lab}" ingest --matrix "${MATRIX}" --only "${PEER_ROW}" --quick --log "${CT_DIR}/loadgen.log" \
    --applied "$((after - before))" --out "${CT_DIR}/peer-out"
  "${lab}" verify --matrix "${MATRIX}" --only "${PEER_ROW}" --quick --out "${CT_DIR}/peer-out"
  log "containers: the FastAPI peer passed the contract probe and the report's checks ($((after - before)) writes applied)"
}

main() {
  require_cargo
  require_oha
  require_containers
  find_pg_bin
  require_psql_tools
  cd "${ROOT}"
  cargo build --locked --release --quiet -p lab
  local lab="${ROOT}/target/release/lab"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  CT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/perflab-ct.XXXXXX")"
  container_config

  make_debian_base
  log "containers: building the images of rows ${ROW} and ${PEER_ROW} and the load generator (buildah)"
  # Small: the server image is one static binary (lab checks the size). RUN steps (the
  # peer's) run chroot-isolated (see docs/kubernetes.md, "Tests of the Kubernetes target").
  local -a names
  mapfile -t names < <(BUILDAH_ISOLATION=chroot "${lab}" images --matrix "${MATRIX}" \
    --only "${ROW}" --only "${PEER_ROW}" --engine buildah \
    --oha "$(command -v oha)" --names-only --max-server-mb 20)
  [[ ${#names[@]} -eq 3 ]] || die "lab images named ${#names[@]} images, not a server, a peer and a load generator"
  local server="${names[0]}" peer="${names[1]}" loadgen="${names[2]}"
  if podman run --rm --pull=never --entrypoint /bin/sh "${server}" -c true >/dev/null 2>&1; then
    die "the server image has a shell; it should hold only the binary"
  fi
  log "containers: the images run as 65532:65532, have no shell, and the server image is small"

  pg_start
  "${lab}" plan --matrix "${MATRIX}" --only "${ROW}" --quick >"${CT_DIR}/plan.json"
  # As many users as the plan's; the app connects as the least-privileged role the
  # seed grants; "localhost" in its URL, since the image must resolve names (its
  # /etc/nsswitch.conf).
  APP_DB_URL="$("${lab}" seed --database-url "${PG_URL}" --matrix "${MATRIX}" --only "${ROW}" --quick)"
  APP_DB_URL="${APP_DB_URL/@127.0.0.1:/@localhost:}"

  start_app "${server}"
  local constraints
  constraints="$(podman inspect "${APP_NAME}" \
    --format '{{.HostConfig.ReadonlyRootfs}} {{.Config.User}} {{.HostConfig.CapDrop}} {{.HostConfig.NanoCpus}}')"
  log "containers: app runs with read-only rootfs, user, dropped caps, CPU: ${constraints}"
  [[ "${constraints}" == "true 65532:65532 "*"1000000000" ]] || die "the app container lacks a constraint: ${constraints}"

  local before after
  before="$(psql "${PG_URL}" -tAc 'SELECT coalesce(sum(version), 0) FROM users')"
  run_loadgen "${loadgen}" "${ROW}" "${APP_PORT}" "${CT_DIR}/plan.json"
  after="$(psql "${PG_URL}" -tAc 'SELECT coalesce(sum(version), 0) FROM users')"
  podman logs "${APP_NAME}" >"${CT_DIR}/app.log" 2>&1
  grep -q "listening" "${CT_DIR}/app.log" || die "the app did not log that it listened"

  mkdir -p "${CT_DIR}/out"
  "${lab}" ingest --matrix "${MATRIX}" --only "${ROW}" --quick --log "${CT_DIR}/loadgen.log" \
    --applied "$((after - before))" --out "${CT_DIR}/out"
  "${lab}" verify --matrix "${MATRIX}" --only "${ROW}" --quick --out "${CT_DIR}/out"
  log "containers: the load generator's result passed the report's checks ($((after - before)) writes applied)"
  run_peer "${peer}" "${loadgen}"
}

main "$@"
