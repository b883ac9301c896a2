#!/usr/bin/env bash
# Static checks: rustfmt, clippy -D warnings over the server's feature powerset (with
# cargo-hack, installed from crates.io when missing) and the lab, and shellcheck.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "${ROOT}/scripts/lib.sh"

require_cargo_hack() {
  if cargo hack --version >/dev/null 2>&1; then return 0; fi
  log "cargo-hack not found: installing it with 'cargo install cargo-hack --locked'"
  cargo install cargo-hack --locked >&2 || die "could not install cargo-hack"
}

require_shellcheck() {
  command -v shellcheck >/dev/null 2>&1 && return 0
  apt_install shellcheck
}

main() {
  require_cargo
  cd "${ROOT}"
  log "cargo fmt --check"
  cargo fmt --all -- --check
  require_cargo_hack
  log "clippy -D warnings on every feature combination of the server (the umbrella 'full' is their union)"
  cargo hack clippy --locked -p perflab --all-targets --feature-powerset --exclude-features full,default,memory-store,current-thread \
    -- -D warnings -D dead_code -D unused_imports
  cargo clippy --locked -p perflab --all-targets --features full -- -D warnings -D dead_code -D unused_imports
  # current-thread swaps only the runtime module, independent of the others (and is in
  # 'full'); the memory-store reference swaps the executor whatever else is on: alone,
  # with the features that change how it reaches PostgreSQL, and with everything.
  local set
  for set in current-thread memory-store memory-store,pool,prepared memory-store,pipeline memory-store,full; do
    cargo clippy --locked -p perflab --all-targets --features "${set}" -- -D warnings -D dead_code -D unused_imports
  done
  cargo clippy --locked -p lab --all-targets -- -D warnings -D dead_code -D unused_imports
  require_shellcheck
  log "shellcheck"
  shellcheck -x scripts/*.sh .ci/run peers/*/run
  command -v python3 >/dev/null 2>&1 || apt_install python3
  log "python: every peer and test server parses"
  python3 -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' \
    peers/*/*.py tests/peers/*.py
}

main "$@"
