//! Building responses, in one place: JSON bodies (results and errors alike) and the
//! metrics text. It depends on nothing else of the server's, so every module can use it.
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// What every handler answers with.
pub type Reply = Response<Full<Bytes>>;

/// A JSON response with `status`; the error is the encoder's.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<Reply, String> {
    Ok(json_body(status, crate::json::encode(value)?))
}

/// A response with `status` and an already encoded JSON body.
pub fn json_body(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The Prometheus text exposition.
pub fn metrics_text(text: String) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
