#!/usr/bin/env bash
# Shared helpers for the project's scripts: messages, prerequisites, and a throwaway
# PostgreSQL cluster. Sourced, never run.

# shellcheck disable=SC2034  # PG_* are read by the scripts that source this file.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

is_root() { [[ "$(id -u)" -eq 0 ]]; }

apt_install() {
  is_root || die "cannot install $* without root; install it yourself (apt-get install $*)"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* with your package manager"
  if [[ -z "${APT_UPDATED:-}" ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  log "installing $* from apt"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

require_cargo() {
  command -v cargo >/dev/null 2>&1 && return 0
  if [[ -x "${HOME}/.cargo/bin/cargo" ]]; then
    PATH="${HOME}/.cargo/bin:${PATH}"
    export PATH
    return 0
  fi
  die "cargo not found: install Rust with rustup (https://rustup.rs), toolchain 1.95"
}

# Sets PG_BIN to a directory holding initdb, pg_ctl and postgres; installs PostgreSQL
# from apt when root and none is found.
find_pg_bin() {
  local dir
  for dir in "${PG_BIN:-}" /usr/lib/postgresql/*/bin; do
    if [[ -n "${dir}" && -x "${dir}/initdb" && -x "${dir}/pg_ctl" ]]; then
      PG_BIN="${dir}"
      return 0
    fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    PG_BIN="$(dirname "$(command -v initdb)")"
    return 0
  fi
  log "PostgreSQL server binaries not found"
  apt_install postgresql postgresql-contrib
  find_pg_bin_after_install
}

find_pg_bin_after_install() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [[ -x "${dir}/initdb" ]]; then
      PG_BIN="${dir}"
      return 0
    fi
  done
  die "PostgreSQL installed but initdb not found under /usr/lib/postgresql"
}

require_psql_tools() {
  if ! command -v psql >/dev/null 2>&1 || ! command -v pgbench >/dev/null 2>&1; then
    if [[ -x "${PG_BIN}/psql" && -x "${PG_BIN}/pgbench" ]]; then
      PATH="${PG_BIN}:${PATH}"
      export PATH
    else
      apt_install postgresql-client
    fi
  fi
}

# A loopback port nobody listens on (bash only: no python needed).
free_port() {
  local port tries=0
  while [[ "${tries}" -lt 100 ]]; do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
      printf '%s\n' "${port}"
      return 0
    fi
    tries=$((tries + 1))
  done
  die "no free loopback port found"
}

# Runs a command as the cluster's owner: `postgres` when we are root (the server
# refuses to run as root), ourselves otherwise.
as_pg_owner() {
  if is_root; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# pg_start [extra postgres -c settings...]: starts a throwaway cluster on a free
# loopback port; sets PG_DIR, PG_PORT, PG_URL. Pair it with pg_stop in a trap.
pg_start() {
  find_pg_bin
  if is_root && ! id postgres >/dev/null 2>&1; then
    log "creating the postgres system user"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/perflab-pg.XXXXXX")"
  chmod 755 "${PG_DIR}"
  if is_root; then chown postgres: "${PG_DIR}"; fi
  PG_PORT="$(free_port)"
  log "starting a throwaway PostgreSQL ($("${PG_BIN}/postgres" --version | awk '{print $3}')) in ${PG_DIR} on 127.0.0.1:${PG_PORT}"
  as_pg_owner "${PG_BIN}/initdb" -D "${PG_DIR}/data" -U postgres -A trust -E UTF8 --no-sync >"${PG_DIR}/initdb.log" 2>&1 \
    || { cat "${PG_DIR}/initdb.log" >&2; die "initdb failed"; }
  local opts="-c listen_addresses=127.0.0.1 -p ${PG_PORT} -k ${PG_DIR} -c max_connections=300 -c shared_buffers=256MB"
  local setting
  for setting in "$@"; do
    opts="${opts} -c ${setting}"
  done
  as_pg_owner "${PG_BIN}/pg_ctl" -D "${PG_DIR}/data" -l "${PG_DIR}/server.log" -o "${opts}" -w -t 60 start >/dev/null \
    || { cat "${PG_DIR}/server.log" >&2; die "PostgreSQL did not start"; }
  PG_URL="postgres://postgres@127.0.0.1:${PG_PORT}/postgres"
}

pg_stop() {
  if [[ -n "${PG_DIR:-}" && -d "${PG_DIR}" ]]; then
    as_pg_owner "${PG_BIN}/pg_ctl" -D "${PG_DIR}/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "${PG_DIR}"
    PG_DIR=""
  fi
}

# Installs oha 1.16.0 from crates.io when it is missing (~7 minutes on 2 cores).
require_oha() {
  if command -v oha >/dev/null 2>&1; then return 0; fi
  if [[ -x "${HOME}/.cargo/bin/oha" ]]; then
    PATH="${HOME}/.cargo/bin:${PATH}"
    export PATH
    return 0
  fi
  log "oha (the load generator) not found: building it with 'cargo install oha --version 1.16.0 --locked' (about 7 minutes on 2 cores)"
  cargo install oha --version 1.16.0 --locked >&2 || die "could not install oha"
  PATH="${HOME}/.cargo/bin:${PATH}"
  export PATH
}
