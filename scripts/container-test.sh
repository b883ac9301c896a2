#!/usr/bin/env bash
# The Kubernetes images, run for real without a cluster: builds the server image of one
# row and the load-generator image with buildah, checks their config, then runs them with
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
APP_PORT=""
APP_NAME="perflab-ct-$$"

cleanup() {
  if [[ -n "${CT_DIR:-}" ]]; then
    podman rm -f "${APP_NAME}" >/dev/null 2>&1 || true
    if [[ -n "${KEEP_CT:-}" ]]; then log "kept ${CT_DIR}"; else rm -rf "${CT_DIR}"; fi
  fi
  pg_stop
}

require_containers() {
  local missing=()
  command -v buildah >/dev/null 2>&1 || missing+=(buildah)
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  if [[ ${#missing[@]} -gt 0 ]]; then apt_install "${missing[@]}"; fi
}

# Settings for a root sandbox without systemd: runc, cgroupfs, no raised rlimits or pid
# limits, and a private vfs image store under CT_DIR (see README, "Containers in CI").
container_config() {
  mkdir -p "${CT_DIR}/storage" "${CT_DIR}/run"
  cat >"${CT_DIR}/containers.conf" <<'EOF'
[containers]
default_ulimits = []
pids_limit = 0
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
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

main() {
  require_cargo
  require_oha
  require_containers
  find_pg_bin
  require_psql_tools
  cd "${ROOT}"
  cargo build --locked --release --quiet -p lab
  local lab="${ROOT}/target/release/lab"
  CT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/perflab-ct.XXXXXX")"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  container_config

  log "containers: building the images of row ${ROW} and the load generator (buildah)"
  "${lab}" images --matrix "${MATRIX}" --only "${ROW}" --engine buildah --oha "$(command -v oha)" \
    | tee "${CT_DIR}/images.txt"
  local server loadgen
  server="$(awk -F'\t' '$1 ~ /perflab-server:/ {print $1}' "${CT_DIR}/images.txt")"
  loadgen="$(awk -F'\t' '$1 ~ /perflab-loadgen:/ {print $1}' "${CT_DIR}/images.txt")"
  [[ -n "${server}" && -n "${loadgen}" ]] || die "lab images named no images"
  # Small: the server image is one static binary.
  awk -F'\t' '$1 ~ /perflab-server:/ { split($2, s, " ");
      mb = (s[2] == "kB") ? s[1] / 1000 : (s[2] == "MB") ? s[1] : 1e9;
      if (mb > 20) { print "server image too large: " $2; exit 1 } }' "${CT_DIR}/images.txt" \
    || die "the server image is over 20 MB"
  if podman run --rm --pull=never --entrypoint /bin/sh "${server}" -c true >/dev/null 2>&1; then
    die "the server image has a shell; it should hold only the binary"
  fi
  log "containers: the images run as 65532:65532, have no shell, and the server image is small"

  pg_start
  "${lab}" plan --matrix "${MATRIX}" --only "${ROW}" --quick >"${CT_DIR}/plan.json"
  local users
  users="$(sed -n 's/.*"users": \([0-9]*\).*/\1/p' "${CT_DIR}/plan.json" | head -n1)"
  "${lab}" seed --database-url "${PG_URL}" --users "${users}"

  APP_PORT="$(free_port)"
  log "containers: the app image on 127.0.0.1:${APP_PORT} with the pod's constraints"
  # "localhost" in the URL: the image must resolve names (its /etc/nsswitch.conf).
  podman run -d --name "${APP_NAME}" "${POD_FLAGS[@]}" \
    -e "DATABASE_URL=postgres://postgres@localhost:${PG_PORT}/postgres" \
    -e "LISTEN_ADDR=127.0.0.1:${APP_PORT}" -e RUST_LOG=info "${server}" >/dev/null
  local constraints
  constraints="$(podman inspect "${APP_NAME}" \
    --format '{{.HostConfig.ReadonlyRootfs}} {{.Config.User}} {{.HostConfig.CapDrop}} {{.HostConfig.NanoCpus}}')"
  log "containers: app runs with read-only rootfs, user, dropped caps, CPU: ${constraints}"
  [[ "${constraints}" == "true 65532:65532 "*"1000000000" ]] || die "the app container lacks a constraint: ${constraints}"

  # The load generator, as its Job: read-only root, a writable /work like the Job's
  # emptyDir, the plan mounted where the ConfigMap goes. It waits for /readyz and
  # refuses to measure unless /version lists the row's features.
  mkdir -p "${CT_DIR}/work"
  chown 65532:65532 "${CT_DIR}/work"
  local before after
  before="$(psql "${PG_URL}" -tAc 'SELECT coalesce(sum(version), 0) FROM users')"
  log "containers: a --quick search of row ${ROW} from the load-generator image"
  timeout 600 podman run --rm "${POD_FLAGS[@]}" -v "${CT_DIR}/work:/work" \
    -v "${CT_DIR}/plan.json:/etc/perflab/plan.json:ro" "${loadgen}" \
    loadgen --url "http://localhost:${APP_PORT}" >"${CT_DIR}/loadgen.log" \
    || { podman logs "${APP_NAME}" | tail -n 20 >&2; die "the load-generator container failed"; }
  after="$(psql "${PG_URL}" -tAc 'SELECT coalesce(sum(version), 0) FROM users')"
  podman logs "${APP_NAME}" 2>&1 | grep -q "listening" || die "the app did not log that it listened"

  mkdir -p "${CT_DIR}/out"
  "${lab}" ingest --matrix "${MATRIX}" --only "${ROW}" --quick --log "${CT_DIR}/loadgen.log" \
    --applied "$((after - before))" --out "${CT_DIR}/out"
  "${lab}" verify --matrix "${MATRIX}" --only "${ROW}" --quick --out "${CT_DIR}/out"
  log "containers: the load generator's result passed the report's checks ($((after - before)) writes applied)"
}

main "$@"
