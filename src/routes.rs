//! Routing: maps a request to its handler, answers errors as JSON and counts every
//! reply for the metrics. No feature branches here.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::build_info::VersionInfo;
use crate::db::Db;
use crate::error::AppError;
use crate::process::ProcessStats;
use crate::{json, metrics, users};

/// What every request handler can reach.
pub struct AppState {
    pub db: Db,
    /// `BODY_READ_TIMEOUT_MS`: how long a request body may take to arrive.
    pub body_read_timeout: std::time::Duration,
    /// Set on SIGTERM: `/readyz` answers 503 while requests are still served.
    pub draining: std::sync::atomic::AtomicBool,
}

pub type Reply = Response<Full<Bytes>>;

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
        "/healthz" => json_response(StatusCode::OK, &Status { status: "ok" }),
        "/readyz" if state.draining.load(std::sync::atomic::Ordering::Relaxed) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &Status { status: "draining" },
        ),
        "/readyz" => match state.db.ping().await {
            Ok(()) => json_response(StatusCode::OK, &Status { status: "ready" }),
            Err(e) => Err(e),
        },
        "/version" => json_response(StatusCode::OK, &VersionInfo::current()),
        "/stats" => json_response(StatusCode::OK, &ProcessStats::current()),
        _ => match metrics::render(state.db.pool_state()) {
            Some(text) => Ok(text_response(text)),
            None => Err(AppError::NotFound(
                "metrics are not built into this server (feature `metrics`)".into(),
            )),
        },
    };
    (route, result)
}

/// A JSON response with the given status.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Result<Reply, AppError> {
    let body = json::encode(value).map_err(AppError::Internal)?;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn text_response(text: String) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
