//! What every request handler can reach.
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::db::Db;

pub struct AppState {
    pub db: Db,
    /// `BODY_READ_TIMEOUT_MS`: how long a request body may take to arrive.
    pub body_read_timeout: Duration,
    /// Set on SIGTERM: `/readyz` answers 503 while requests are still served.
    pub draining: AtomicBool,
    /// `MAX_CONNECTIONS`: open client connections, over every listener; past it a new
    /// connection is closed at once.
    pub connections: Arc<Semaphore>,
    /// `MAX_CONNECTIONS_PER_PEER`: open connections per client address.
    pub peers: Arc<crate::conn::Peers>,
}
