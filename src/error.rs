//! The one error type of a request, and the one place it becomes an HTTP status.
use hyper::header::{HeaderValue, ALLOW, CONNECTION, RETRY_AFTER};
use hyper::StatusCode;
use serde::Serialize;

/// Everything that can go wrong while answering a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppError {
    /// 400: the request is malformed (bad id, bad JSON, unknown or missing fields).
    /// Every client-facing message is a fixed sentence: nothing the client sent is
    /// echoed back (the types say so).
    BadRequest(&'static str),
    /// 404: no such route or no such user.
    NotFound(&'static str),
    /// 405: the route exists, the method does not; carries the `Allow` value.
    MethodNotAllowed(&'static str),
    /// 408: the body did not arrive within `BODY_READ_TIMEOUT_MS`; the connection closes.
    RequestTimeout(std::time::Duration),
    /// 413: the body is larger than the limit.
    PayloadTooLarge(usize),
    /// 415: the body is not declared as JSON.
    UnsupportedMediaType,
    /// 422: well-formed but invalid (e.g. an email without `@`).
    Unprocessable(&'static str),
    /// 503: the database is down, slow or out of connections.
    Unavailable(String),
    /// 503 at once: `MAX_PENDING` requests are already in the database layer.
    Overloaded,
    /// 503: the statement was sent, but no answer came (the connection broke or
    /// stalled): it may have been applied, once.
    OutcomeUnknown(String),
    /// 500: a bug or an unexpected failure.
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Unavailable(_) | AppError::Overloaded | AppError::OutcomeUnknown(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(&self) -> String {
        match self {
            AppError::BadRequest(m) | AppError::NotFound(m) | AppError::Unprocessable(m) => {
                (*m).to_owned()
            }
            // The cause (PostgreSQL's or the OS's own text) goes to the log, not the client.
            AppError::Unavailable(_) => {
                "service unavailable: the database did not answer; retry later".into()
            }
            AppError::Overloaded => "service overloaded: request not applied; retry later".into(),
            AppError::OutcomeUnknown(_) => {
                "service unavailable: the database did not answer after the request was sent; \
                 its outcome is unknown"
                    .into()
            }
            AppError::MethodNotAllowed(allow) => format!("method not allowed; use {allow}"),
            AppError::RequestTimeout(t) => {
                format!("the body did not arrive within {} ms", t.as_millis())
            }
            AppError::PayloadTooLarge(limit) => format!("body larger than {limit} bytes"),
            AppError::UnsupportedMediaType => "content type must be application/json".into(),
            AppError::Internal(_) => "internal error".into(),
        }
    }

    /// The JSON response for this error. Database trouble is logged at most once a
    /// second per kind, with how many like it were not (an outage answers thousands of
    /// 503s a second; the log says so in one line a second).
    pub fn into_response(self) -> crate::response::Reply {
        match &self {
            AppError::Overloaded => crate::metrics::observe_unavailable("shed"),
            AppError::Unavailable(_) => crate::metrics::observe_unavailable("unavailable"),
            AppError::OutcomeUnknown(_) => crate::metrics::observe_unavailable("outcome_unknown"),
            _ => {}
        }
        match &self {
            AppError::Internal(detail) => tracing::error!(%detail, "internal error"),
            AppError::Unavailable(detail) => {
                if let Some(more) = UNAVAILABLE.admit() {
                    tracing::warn!(%detail, more, "unavailable (more: like it in the last second)");
                }
            }
            // Logged per request, with its id, where the request is known (routes).
            _ => {}
        }
        let message = self.message();
        let body = crate::json::encode(&ErrorBody { error: &message })
            .unwrap_or_else(|_| b"{\"error\":\"error\"}".to_vec());
        let mut response = crate::response::json_body(self.status(), body);
        let headers = response.headers_mut();
        match self {
            AppError::MethodNotAllowed(allow) => {
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            AppError::Unavailable(_) | AppError::Overloaded | AppError::OutcomeUnknown(_) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            AppError::RequestTimeout(_) => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

static UNAVAILABLE: Throttle = Throttle::new();

/// At most one log line a second: `admit` says whether this event is logged, and how
/// many were not since the last one that was.
pub struct Throttle {
    /// The second (since the process's first event, plus one) of the last line.
    second: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub const fn new() -> Self {
        Self {
            second: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn admit(&self) -> Option<u64> {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let start = START.get_or_init(std::time::Instant::now);
        self.admit_at(start.elapsed().as_secs() + 1)
    }

    fn admit_at(&self, second: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.second.load(Relaxed);
        if second > last
            && self
                .second
                .compare_exchange(last, second, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status(), self.message())
    }
}

impl std::error::Error for AppError {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::CONTENT_TYPE;

    #[test]
    fn statuses_are_mapped_in_one_place() {
        assert_eq!(AppError::BadRequest("x").status(), 400);
        assert_eq!(AppError::NotFound("x").status(), 404);
        assert_eq!(AppError::MethodNotAllowed("GET").status(), 405);
        assert_eq!(AppError::PayloadTooLarge(1).status(), 413);
        assert_eq!(
            AppError::RequestTimeout(std::time::Duration::from_secs(1)).status(),
            408
        );
        assert_eq!(AppError::UnsupportedMediaType.status(), 415);
        assert_eq!(AppError::Unprocessable("x").status(), 422);
        assert_eq!(AppError::Unavailable("x".into()).status(), 503);
        assert_eq!(AppError::Overloaded.status(), 503);
        assert_eq!(AppError::Internal("x".into()).status(), 500);
    }

    #[test]
    fn database_trouble_is_logged_once_a_second_with_a_count() {
        let t = Throttle::new();
        assert_eq!(t.admit_at(1), Some(0));
        for _ in 0..999 {
            assert_eq!(t.admit_at(1), None);
        }
        assert_eq!(t.admit_at(2), Some(999));
        assert_eq!(t.admit_at(2), None);
        assert_eq!(t.admit_at(7), Some(1));
    }

    #[test]
    fn method_not_allowed_carries_allow_header() {
        let r = AppError::MethodNotAllowed("GET, PATCH").into_response();
        assert_eq!(r.headers()[ALLOW], "GET, PATCH");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn internal_details_are_not_leaked() {
        assert_eq!(
            AppError::Internal("secret".into()).message(),
            "internal error"
        );
        let cause =
            "database unavailable: error connecting to server: Connection refused (os error 111)";
        let e = AppError::Unavailable(cause.into());
        assert!(!e.message().contains("os error"), "{}", e.message());
        assert_eq!(e.message(), AppError::Unavailable("other".into()).message());
        assert_eq!(e.into_response().headers()[RETRY_AFTER], "1");
    }
}
