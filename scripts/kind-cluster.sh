#!/usr/bin/env bash
# Creates a local kind cluster for the Kubernetes target: one node for the app and
# PostgreSQL, and one load-generator node, labelled and tainted perflab.dev/loadgen=true:NoSchedule
# so that only the load-generator Job runs there. Needs Docker and kind.
# Note: kind's nodes are containers sharing this host's CPUs, so numbers measured on
# such a cluster are not isolated; use it to try the target, not to publish results.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

usage() {
  cat <<'USAGE'
usage: scripts/kind-cluster.sh [--name NAME] [--delete]

Creates (or with --delete removes) a two-node kind cluster: an app node and a
load-generator node labelled and tainted perflab.dev/loadgen=true:NoSchedule.
USAGE
}

main() {
  local name="perflab" delete=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; name="$2"; shift ;;
      --delete) delete=1 ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
    shift
  done
  command -v kind >/dev/null 2>&1 || die "kind not found: see https://kind.sigs.k8s.io (it needs Docker)"
  command -v kubectl >/dev/null 2>&1 || die "kubectl not found: install kubectl 1.32"
  if [[ "${delete}" -eq 1 ]]; then
    kind delete cluster --name "${name}"
    return
  fi
  local config
  config="$(mktemp)"
  trap 'rm -f "${config}"' EXIT
  cat >"${config}" <<'KIND'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
    labels:
      perflab.dev/loadgen: "true"
KIND
  log "creating kind cluster ${name} (control plane, app worker, load-generator worker)"
  kind create cluster --name "${name}" --config "${config}"
  local node
  node="$(kubectl get nodes -l perflab.dev/loadgen=true -o jsonpath='{.items[0].metadata.name}')"
  # The two commands that prepare a load-generator node on any cluster:
  kubectl label node "${node}" perflab.dev/loadgen=true --overwrite
  kubectl taint node "${node}" perflab.dev/loadgen=true:NoSchedule --overwrite
  log "ready: ${node} runs only the load generator; run ./scripts/run-matrix.sh --target k8s --load kind --dry-run"
}

main "$@"
