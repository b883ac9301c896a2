//! The environment variables the server reads: one list, which `config.rs` is tested
//! against and which the lab reads (it includes this file) to refuse a matrix row that
//! sets a name the server does not know.

/// Every variable `Config::from_lookup` reads.
pub const VARIABLES: &[&str] = &[
    "DATABASE_URL",
    "DATABASE_CA_FILE",
    "LISTEN_ADDR",
    "PROBE_ADDR",
    "POOL_SIZE",
    "DB_TIMEOUT_MS",
    "HEADER_READ_TIMEOUT_MS",
    "BODY_READ_TIMEOUT_MS",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_PEER",
    "WRITE_TIMEOUT_MS",
    "MAX_PENDING",
    "SHUTDOWN_DELAY_MS",
    "SHUTDOWN_GRACE_MS",
    "PIPELINE_CONNECTIONS",
    "COALESCE_MAX_BATCH",
    "COALESCE_READERS",
    "COALESCE_WRITERS",
    "WORKER_THREADS",
];
