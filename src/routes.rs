//! Routing: maps a request to its handler, answers errors as JSON and counts every
//! reply for the metrics. No feature branches here.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use crate::build_info::VersionInfo;
use crate::error::AppError;
use crate::process::ProcessStats;
use crate::response::{self, Reply};
use crate::state::AppState;
use crate::{metrics, users};

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

/// The hyper service function.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let start = Instant::now();
    let method = req.method().clone();
    let (route, result) = dispatch(&state, req).await;
    let response = result.unwrap_or_else(AppError::into_response);
    metrics::observe(
        route,
        method.as_str(),
        response.status().as_u16(),
        start.elapsed(),
    );
    Ok(response)
}

async fn dispatch(
    state: &AppState,
    req: Request<Incoming>,
) -> (&'static str, Result<Reply, AppError>) {
    let path = req.uri().path().to_owned();
    if let Some(id) = path.strip_prefix("/users/").filter(|id| !id.contains('/')) {
        return ("/users/{id}", users::handle(state, id, req).await);
    }
    let route: &'static str = match path.as_str() {
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/version" => "/version",
        "/metrics" => "/metrics",
        "/stats" => "/stats",
        _ => {
            return (
                "other",
                Err(AppError::NotFound(format!("no route for {path}"))),
            )
        }
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return (route, Err(AppError::MethodNotAllowed("GET, HEAD")));
    }
    let result = match route {
        "/healthz" => json(StatusCode::OK, &Status { status: "ok" }),
        "/readyz" if state.draining.load(std::sync::atomic::Ordering::Relaxed) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &Status { status: "draining" },
        ),
        "/readyz" => match state.db.ping().await {
            Ok(()) => json(StatusCode::OK, &Status { status: "ready" }),
            Err(e) => Err(e),
        },
        "/version" => json(StatusCode::OK, &VersionInfo::current()),
        "/stats" => json(StatusCode::OK, &ProcessStats::current()),
        _ => match metrics::render(state.db.pool_state()) {
            Some(text) => Ok(response::metrics_text(text)),
            None => Err(AppError::NotFound(
                "metrics are not built into this server (feature `metrics`)".into(),
            )),
        },
    };
    (route, result)
}

/// A JSON reply; a value that cannot be encoded is our bug (500).
fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Reply, AppError> {
    response::json(status, value).map_err(AppError::Internal)
}
