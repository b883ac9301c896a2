//! Routing: maps a request to its handler, answers errors as JSON and counts every
//! reply for the metrics. No feature branches here.
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use crate::build_info::VersionInfo;
use crate::error::AppError;
use crate::process::ProcessStats;
use crate::response::{self, Reply};
use crate::state::AppState;
use crate::{metrics, users};

/// The header that carries a request's id (see [`request_id`]).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

/// A request's id, returned in `x-request-id`: the process's start (seconds, hex) and a
/// counter, unique per process and never reused across restarts.
fn request_id() -> HeaderValue {
    static START: LazyLock<u64> = LazyLock::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{:x}-{n:x}", *START))
        .unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The hyper service function.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let to = route(req.uri().path());
    let user = match &to {
        Route::User(Ok(id)) => Some(*id),
        _ => None,
    };
    let (route, result) = dispatch(&state, to, req).await;
    let id = request_id();
    // A client that got "outcome unknown" can be answered from the log: each one is a
    // line with its request id, method and user.
    if let Err(AppError::OutcomeUnknown(detail)) = &result {
        tracing::warn!(
            request_id = id.to_str().unwrap_or("-"),
            method = %method,
            user,
            %detail,
            "outcome unknown"
        );
    }
    let mut response = result.unwrap_or_else(AppError::into_response);
    response.headers_mut().insert(REQUEST_ID, id);
    // Draining (after SIGTERM): every reply asks its client to leave, so a keep-alive
    // client reconnects (to another pod) instead of racing the close at shutdown.
    if state.draining.load(Ordering::Relaxed) {
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    metrics::observe(
        route,
        method.as_str(),
        response.status().as_u16(),
        start.elapsed(),
    );
    Ok(response)
}

/// The probes' listener (`PROBE_ADDR`): `/healthz` and `/readyz`, answered like on the
/// main port; anything else is 404 there.
pub async fn handle_probe(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Reply, Infallible> {
    match route(req.uri().path()) {
        Route::Fixed(Fixed::Healthz | Fixed::Readyz) => handle(state, req).await,
        _ => Ok(
            AppError::NotFound("the probe port answers /healthz and /readyz only").into_response(),
        ),
    }
}

/// Where a path goes: a user (with its id parsed, or why not), one of the fixed routes,
/// or nowhere. Pure, so the hot path's routing is benchmarked alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    User(Result<i64, AppError>),
    Fixed(Fixed),
    Unknown,
}

/// The fixed routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixed {
    Healthz,
    Readyz,
    Version,
    Metrics,
    Stats,
}

impl Fixed {
    /// Its path: also its name in logs and metrics.
    pub fn path(self) -> &'static str {
        match self {
            Fixed::Healthz => "/healthz",
            Fixed::Readyz => "/readyz",
            Fixed::Version => "/version",
            Fixed::Metrics => "/metrics",
            Fixed::Stats => "/stats",
        }
    }
}

pub fn route(path: &str) -> Route {
    if let Some(id) = path.strip_prefix("/users/").filter(|id| !id.contains('/')) {
        return Route::User(users::parse_id(id));
    }
    match path {
        "/healthz" => Route::Fixed(Fixed::Healthz),
        "/readyz" => Route::Fixed(Fixed::Readyz),
        "/version" => Route::Fixed(Fixed::Version),
        "/metrics" => Route::Fixed(Fixed::Metrics),
        "/stats" => Route::Fixed(Fixed::Stats),
        _ => Route::Unknown,
    }
}

async fn dispatch(
    state: &AppState,
    to: Route,
    req: Request<Incoming>,
) -> (&'static str, Result<Reply, AppError>) {
    let fixed = match to {
        Route::User(id) => return ("/users/{id}", users::handle(state, id, req).await),
        Route::Fixed(fixed) => fixed,
        Route::Unknown => return ("other", Err(AppError::NotFound("no such route"))),
    };
    let route = fixed.path();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return (route, Err(AppError::MethodNotAllowed("GET, HEAD")));
    }
    let result = match fixed {
        Fixed::Healthz => json(StatusCode::OK, &Status { status: "ok" }),
        Fixed::Readyz if state.draining.load(Ordering::Relaxed) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &Status { status: "draining" },
        ),
        Fixed::Readyz => match state.db.ping().await {
            Ok(()) => json(StatusCode::OK, &Status { status: "ready" }),
            Err(e) => Err(e),
        },
        Fixed::Version => json(StatusCode::OK, &VersionInfo::current()),
        Fixed::Stats => json(StatusCode::OK, &ProcessStats::current()),
        Fixed::Metrics => match metrics::render(state.db.pool_state(), state.db.admitted()) {
            Some(text) => Ok(response::metrics_text(text)),
            None => Err(AppError::NotFound(
                "metrics are not built into this server (feature `metrics`)",
            )),
        },
    };
    (route, result)
}

/// A JSON reply; a value that cannot be encoded is our bug (500).
fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Reply, AppError> {
    response::json(status, value).map_err(AppError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_without_copying() {
        assert_eq!(route("/users/42"), Route::User(Ok(42)));
        assert!(matches!(
            route("/users/0"),
            Route::User(Err(AppError::BadRequest(_)))
        ));
        assert!(matches!(
            route("/users/"),
            Route::User(Err(AppError::BadRequest(_)))
        ));
        assert_eq!(route("/users/4/2"), Route::Unknown);
        assert_eq!(route("/readyz"), Route::Fixed(Fixed::Readyz));
        assert_eq!(route("/metrics"), Route::Fixed(Fixed::Metrics));
        assert_eq!(Fixed::Stats.path(), "/stats");
        assert_eq!(route("/nope"), Route::Unknown);
    }
}
