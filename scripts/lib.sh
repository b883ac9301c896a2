#!/usr/bin/env bash
# Shared helpers for the project's scripts: messages, prerequisites, and a throwaway
# PostgreSQL cluster. Sourced, never run.

# shellcheck disable=SC2034  # PG_* are read by the scripts that source this file.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# Exits 2, the code for "could not start" (a tool missing or not installable, no
# PostgreSQL): nothing was measured.
cannot_start() { printf 'error: %s\n' "$*" >&2; exit 2; }
warn() { printf 'warning: %s\n' "$*" >&2; }

# cleanup_step WHAT CMD...: one step of a clean-up trap. It always returns 0, so every
# later step runs; a failure is a warning, never the result of the run.
cleanup_step() {
  local what="$1"
  shift
  "$@" || warn "clean-up: ${what} failed (exit $?)"
  return 0
}

# remove_dir DIR: rm -rf that retries for a few seconds (a process that is exiting may
# still be writing into it) and warns instead of failing.
remove_dir() {
  local dir="$1" try
  [[ -n "${dir}" && -e "${dir}" ]] || return 0
  for try in 1 2 3 4 5; do
    rm -rf -- "${dir}" 2>/dev/null && return 0
    sleep "${try}"
  done
  rm -rf -- "${dir}"
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

apt_install() {
  is_root || cannot_start "cannot install $* without root; install it yourself (apt-get install $*)"
  command -v apt-get >/dev/null 2>&1 || cannot_start "apt-get not found; install $* with your package manager"
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
  cannot_start "cargo not found: install Rust with rustup (https://rustup.rs), toolchain 1.95"
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
  cannot_start "PostgreSQL installed but initdb not found under /usr/lib/postgresql"
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

# A loopback port to listen on: drawn outside the kernel's ephemeral range (where any
# outgoing connection's local end could hold it), with nothing accepting on it. Another
# program can still win the race before we bind: callers retry with a new port.
free_port() {
  local low=32768 high=60999 lo hi port tries=0
  if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
    read -r low high </proc/sys/net/ipv4/ip_local_port_range
  fi
  if ((low > 11000)); then
    lo=10000 hi=$((low - 1))
  elif ((high < 64535)); then
    lo=$((high + 1)) hi=65535
  else
    lo=10000 hi=65535
  fi
  while ((tries < 100)); do
    port=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
      printf '%s\n' "${port}"
      return 0
    fi
    tries=$((tries + 1))
  done
  cannot_start "no free loopback port found in ${lo}-${hi}"
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

# Removes the CPU-accounting groups a run left (lab removes its own on a normal exit;
# an interrupted run leaves them empty once its processes are gone).
cgroups_cleanup() {
  local dir
  # Accounting (cpuacct), a pod's CPU and memory (cpu, memory: under this process's own
  # group there, e.g. a container's), and cgroup v2's root.
  while IFS= read -r dir; do
    find "${dir}" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null || true
    rmdir "${dir}" 2>/dev/null || true
  done < <(find /sys/fs/cgroup/cpuacct /sys/fs/cgroup/cpu /sys/fs/cgroup/memory /sys/fs/cgroup \
    -maxdepth 4 -type d -name 'perflab-*' 2>/dev/null | sort -u)
  return 0
}

# pg_start [extra postgres -c settings...]: starts a throwaway cluster on a free
# loopback port; sets PG_DIR, PG_PORT, PG_URL. Pair it with pg_stop in a trap. A start
# that loses its port to another program retries on another port. TCP connections are
# trusted unless PG_AUTH_HOST names another method (scram-sha-256: a row of a `users`
# curve does not start under it yet, so it is not the default); the URL carries the
# cluster's fresh password either way.
pg_start() {
  find_pg_bin
  if is_root && ! id postgres >/dev/null 2>&1; then
    log "creating the postgres system user"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  # Its Unix socket lives in PG_DIR (mode 700: only its owner and root get in), where
  # connections are trusted; TCP connections authenticate with scram-sha-256 and a
  # password made for this cluster, so no other local user is a superuser during a
  # run and the app role's password is checked.
  PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/perflab-pg.XXXXXX")"
  chmod 700 "${PG_DIR}"
  if is_root; then chown postgres: "${PG_DIR}"; fi
  local password
  password="$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')"
  (umask 077 && printf '%s\n' "${password}" >"${PG_DIR}/pwfile")
  if is_root; then chown postgres: "${PG_DIR}/pwfile"; fi
  if ! as_pg_owner "${PG_BIN}/initdb" -D "${PG_DIR}/data" -U postgres --auth-local=trust \
    --auth-host="${PG_AUTH_HOST:-trust}" --pwfile="${PG_DIR}/pwfile" -E UTF8 --no-sync >"${PG_DIR}/initdb.log" 2>&1; then
    rm -f "${PG_DIR}/pwfile"
    cat "${PG_DIR}/initdb.log" >&2
    cannot_start "initdb failed"
  fi
  rm -f "${PG_DIR}/pwfile"
  local extra="" setting attempt
  for setting in "$@"; do
    extra="${extra} -c ${setting}"
  done
  for attempt in 1 2 3 4 5; do
    PG_PORT="$(free_port)"
    log "starting a throwaway PostgreSQL ($("${PG_BIN}/postgres" --version | awk '{print $3}')) in ${PG_DIR} on 127.0.0.1:${PG_PORT}"
    rm -f "${PG_DIR}/server.log"
    if as_pg_owner "${PG_BIN}/pg_ctl" -D "${PG_DIR}/data" -l "${PG_DIR}/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p ${PG_PORT} -k ${PG_DIR} -c max_connections=300 -c shared_buffers=256MB${extra}" \
      start >/dev/null; then
      # This cluster has no TLS: say so, rather than have clients ask for it first.
      PG_URL="postgres://postgres:${password}@127.0.0.1:${PG_PORT}/postgres?sslmode=disable"
      return 0
    fi
    if grep -q "Address already in use" "${PG_DIR}/server.log" && [[ "${attempt}" -lt 5 ]]; then
      log "port ${PG_PORT} was taken before PostgreSQL could bind it (attempt ${attempt}/5); trying another"
      continue
    fi
    cat "${PG_DIR}/server.log" >&2
    cannot_start "PostgreSQL did not start"
  done
}

# alive PID: the process exists and is not a zombie (an exited process nobody reaped).
alive() {
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != "Z" ]]
}

# wait_gone PID SECONDS: waits until the process is gone; false if it outlives SECONDS.
wait_gone() {
  local pid="$1" i
  for ((i = 0; i < $2 * 10; i++)); do
    alive "${pid}" || return 0
    sleep 0.1
  done
  ! alive "${pid}"
}

# pg_stop: stops the throwaway cluster (immediate shutdown, then SIGKILL if the
# postmaster is still there) and removes its folder. Never fails: problems are warnings.
pg_stop() {
  [[ -n "${PG_DIR:-}" ]] || return 0
  local dir="${PG_DIR}" pid=""
  PG_DIR=""
  if [[ -f "${dir}/data/postmaster.pid" ]]; then
    pid="$(head -n1 "${dir}/data/postmaster.pid" 2>/dev/null || true)"
    as_pg_owner "${PG_BIN}/pg_ctl" -D "${dir}/data" -m immediate -w -t 30 stop >/dev/null 2>&1 \
      || warn "clean-up: pg_ctl stop failed for ${dir}"
    if [[ "${pid}" =~ ^[0-9]+$ ]] && ! wait_gone "${pid}" 10; then
      warn "clean-up: PostgreSQL (pid ${pid}) still runs; killing it"
      kill -KILL "${pid}" 2>/dev/null || true
    fi
  fi
  # Rows' own clusters (lab stops them; a killed lab leaves them running).
  local extra extra_pid
  for extra in "${dir}"/row-cluster-*/data; do
    [[ -f "${extra}/postmaster.pid" ]] || continue
    extra_pid="$(head -n1 "${extra}/postmaster.pid" 2>/dev/null || true)"
    as_pg_owner "${PG_BIN}/pg_ctl" -D "${extra}" -m immediate -w -t 30 stop >/dev/null 2>&1 \
      || warn "clean-up: pg_ctl stop failed for ${extra}"
    if [[ "${extra_pid}" =~ ^[0-9]+$ ]] && ! wait_gone "${extra_pid}" 10; then
      kill -KILL "${extra_pid}" 2>/dev/null || true
    fi
  done
  # A postmaster whose pid file is gone (killed mid-start) is found by its data folder
  # (the run's, or a row's own cluster's under it).
  if pgrep -f -- "-D ${dir}/" >/dev/null 2>&1; then
    warn "clean-up: killing PostgreSQL processes left in ${dir}"
    pkill -KILL -f -- "-D ${dir}/" 2>/dev/null || true
    sleep 1
  fi
  remove_dir "${dir}" || warn "clean-up: could not remove ${dir}"
  return 0
}

# Installs oha 1.16.0 from crates.io when it is missing (~7 minutes on 2 cores).
# require_peer_venv NAME: the virtual environment of peer NAME (target/peers/NAME),
# made from its pinned peers/NAME/requirements.txt with Debian's python3 on first use,
# and again when the requirements change (a stamp holds their checksum).
require_peer_venv() {
  local name="$1"
  local req="${ROOT}/peers/${name}/requirements.txt" venv="${ROOT}/target/peers/${name}"
  local sum
  [[ -f "${req}" ]] || cannot_start "peer ${name}: ${req} not found"
  sum="$(sha256sum "${req}" | cut -d' ' -f1)"
  if [[ -x "${venv}/bin/python" && "$(cat "${venv}/.requirements.sha256" 2>/dev/null)" == "${sum}" ]]; then
    return 0
  fi
  if ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  log "creating the ${name} peer's virtual environment in ${venv} from PyPI (pinned in peers/${name}/requirements.txt; under a minute, once)"
  rm -rf "${venv}"
  /usr/bin/python3 -m venv "${venv}" >&2 || cannot_start "could not create ${venv}"
  "${venv}/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: \
    --requirement "${req}" >&2 || { rm -rf "${venv}"; cannot_start "could not install the ${name} peer's requirements from PyPI"; }
  printf '%s\n' "${sum}" >"${venv}/.requirements.sha256"
}

require_oha() {
  if command -v oha >/dev/null 2>&1; then return 0; fi
  if [[ -x "${HOME}/.cargo/bin/oha" ]]; then
    PATH="${HOME}/.cargo/bin:${PATH}"
    export PATH
    return 0
  fi
  log "oha (the load generator) not found: building it with 'cargo install oha --version 1.16.0 --locked' (about 7 minutes on 2 cores)"
  cargo install oha --version 1.16.0 --locked >&2 || cannot_start "could not install oha"
  PATH="${HOME}/.cargo/bin:${PATH}"
  export PATH
}
