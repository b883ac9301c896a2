//! The `/users/{id}` resource: GET reads a profile, PATCH changes its email.
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, Method, Request, StatusCode};
use serde::Deserialize;

use crate::config::BODY_LIMIT;
use crate::error::AppError;
use crate::json;
use crate::response::{self, Reply};
use crate::state::AppState;

/// The only accepted PATCH body: `{"email": "..."}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailChange {
    pub email: String,
}

/// Longest email accepted, in bytes (RFC 5321's path limit).
pub const EMAIL_MAX_BYTES: usize = 254;

/// `id` is the path's id, parsed (a bad one is answered 400 unless the method is not
/// allowed at all).
pub async fn handle(
    state: &AppState,
    id: Result<i64, AppError>,
    req: Request<Incoming>,
) -> Result<Reply, AppError> {
    match *req.method() {
        // HEAD is GET without the body (RFC 9110); hyper leaves the body out.
        Method::GET | Method::HEAD => {
            let id = id?;
            match state.db.user(id).await? {
                Some(user) => response::json(StatusCode::OK, &user).map_err(AppError::Internal),
                None => Err(no_such_user(id)),
            }
        }
        Method::PATCH => {
            let id = id?;
            check_json_content_type(req.headers())?;
            let body = read_body(req, state.body_read_timeout).await?;
            let change: EmailChange = json::decode(body).map_err(|e| {
                tracing::debug!(error = %e, "a PATCH body that does not decode");
                AppError::BadRequest(
                    "invalid body: it must be a JSON object with one string field, email",
                )
            })?;
            validate_email(&change.email).map_err(AppError::Unprocessable)?;
            match state.db.update_email(id, &change.email).await? {
                Some(user) => response::json(StatusCode::OK, &user).map_err(AppError::Internal),
                None => Err(no_such_user(id)),
            }
        }
        _ => Err(AppError::MethodNotAllowed("GET, HEAD, PATCH")),
    }
}

fn no_such_user(_id: i64) -> AppError {
    AppError::NotFound("no such user")
}

/// A user id is a positive 64-bit integer written in plain decimal digits, without
/// leading zeros: `/users/0001` names no user (404), so no profile has two URLs.
pub fn parse_id(raw: &str) -> Result<i64, AppError> {
    const BAD: AppError =
        AppError::BadRequest("user id must be a positive 64-bit integer in decimal digits");
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD);
    }
    match raw.parse::<i64>() {
        Ok(id) if id > 0 && !raw.starts_with('0') => Ok(id),
        Ok(id) if id > 0 => Err(AppError::NotFound("no such user")),
        _ => Err(BAD),
    }
}

/// Says why an email is refused, or accepts it. Accepted: at most 254 bytes, exactly
/// one `@` with text on both sides, a local part of at most 64 bytes, and no
/// whitespace, control, bidirectional or zero-width characters (nothing a reader of the
/// address cannot see). It does not check that the domain exists or that mail reaches
/// it.
pub fn validate_email(email: &str) -> Result<(), &'static str> {
    if email.is_empty() {
        return Err("email must not be empty");
    }
    if email.len() > EMAIL_MAX_BYTES {
        return Err(EMAIL_TOO_LONG);
    }
    if email.chars().any(char::is_whitespace) {
        return Err("email must not contain whitespace");
    }
    // NUL would reach PostgreSQL, which refuses it in text: reject every control
    // character here, before any statement.
    if email.chars().any(char::is_control) {
        return Err("email must not contain control characters");
    }
    if email.chars().any(is_invisible) {
        return Err("email must not contain bidirectional or zero-width characters");
    }
    match email.split_once('@') {
        Some((_, domain)) if domain.contains('@') => Err("email must contain one `@`"),
        Some((local, _)) if local.len() > EMAIL_LOCAL_MAX_BYTES => Err(LOCAL_TOO_LONG),
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(()),
        Some(_) => Err("email needs text on both sides of `@`"),
        None => Err("email must contain `@`"),
    }
}

const EMAIL_TOO_LONG: &str = "email is longer than 254 bytes";
const EMAIL_LOCAL_MAX_BYTES: usize = 64;
const LOCAL_TOO_LONG: &str = "email's part before `@` is longer than 64 bytes";

/// Characters that change how text around them is shown or that show nothing:
/// bidirectional marks, embeddings, overrides and isolates; zero-width spaces and
/// joiners; the word joiner and the byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

fn check_json_content_type(headers: &HeaderMap) -> Result<(), AppError> {
    let value = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = value.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(AppError::UnsupportedMediaType)
    }
}

/// The body, at most `BODY_LIMIT` bytes, arriving within `timeout` (else 408).
async fn read_body(
    req: Request<Incoming>,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, AppError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return Err(AppError::PayloadTooLarge(BODY_LIMIT));
    }
    let collect = Limited::new(req.into_body(), BODY_LIMIT).collect();
    let collected = tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| AppError::RequestTimeout(timeout))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                AppError::PayloadTooLarge(BODY_LIMIT)
            } else {
                tracing::debug!(error = %e, "a request body that could not be read");
                AppError::BadRequest("could not read the body")
            }
        })?;
    Ok(Vec::from(collected.to_bytes()))
}

/// For benches and tests: the body bytes a client sends for an email change.
pub fn email_change_body(email: &str) -> Bytes {
    Bytes::from(format!("{{\"email\":{}}}", serde_json::Value::from(email)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_positive_decimal_i64() {
        assert_eq!(parse_id("1").unwrap(), 1);
        assert_eq!(parse_id("9223372036854775807").unwrap(), i64::MAX);
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            "1.0",
            "abc",
            "9223372036854775808",
            " 1",
            "1/2",
        ] {
            assert_eq!(parse_id(bad).unwrap_err().status(), 400, "{bad:?}");
        }
    }

    #[test]
    fn emails_are_refused_with_a_reason() {
        assert!(validate_email("a@b").is_ok());
        assert!(validate_email("").unwrap_err().contains("empty"));
        assert!(validate_email("ab.example.com").unwrap_err().contains('@'));
        assert!(validate_email("a b@c").unwrap_err().contains("whitespace"));
        for bad in ["a\u{0}@b", "a@b\u{7f}", "a\u{1b}[0m@b", "a@\u{85}b"] {
            let e = validate_email(bad).unwrap_err();
            assert!(
                e.contains("control") || e.contains("whitespace"),
                "{bad:?}: {e}"
            );
        }
        assert!(validate_email("@c").is_err());
        assert!(validate_email("a@").is_err());
        assert!(validate_email("a@b@c").unwrap_err().contains("one `@`"));
        for hidden in [
            "a\u{200B}@b",
            "a@b\u{202E}moc",
            "\u{FEFF}a@b",
            "a@b\u{2066}",
        ] {
            let e = validate_email(hidden).unwrap_err();
            assert!(e.contains("zero-width"), "{hidden:?}: {e}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(validate_email(&long).unwrap_err().contains("254"));
        let local = format!("{}@b", "a".repeat(65));
        assert!(validate_email(&local).unwrap_err().contains("64"));
        let exact = format!("{}@{}", "a".repeat(64), "b".repeat(189));
        assert_eq!(exact.len(), 254);
        assert!(validate_email(&exact).is_ok());
        assert!(
            validate_email("josé@exämple.org").is_ok(),
            "non-ASCII letters are fine"
        );
    }

    #[test]
    fn a_profile_has_one_url_and_errors_echo_nothing() {
        assert_eq!(parse_id("0001").unwrap_err().status(), 404);
        assert_eq!(parse_id("01").unwrap_err().status(), 404);
        let e = parse_id("12ab<script>").unwrap_err();
        assert!(!e.message().contains("script"), "{}", e.message());
        assert_eq!(no_such_user(42).message(), no_such_user(7).message());
    }

    #[test]
    fn content_type_must_be_json() {
        let mut h = HeaderMap::new();
        assert!(check_json_content_type(&h).is_err());
        h.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(check_json_content_type(&h).is_err());
        h.insert(
            CONTENT_TYPE,
            "Application/JSON; charset=utf-8".parse().unwrap(),
        );
        assert!(check_json_content_type(&h).is_ok());
    }

    #[test]
    fn body_decoding_rejects_unknown_and_missing_fields() {
        let ok: EmailChange = json::decode(b"{\"email\":\"a@b\"}".to_vec()).unwrap();
        assert_eq!(ok.email, "a@b");
        assert!(json::decode::<EmailChange>(b"{}".to_vec()).is_err());
        assert!(json::decode::<EmailChange>(b"{\"email\":\"a@b\",\"x\":1}".to_vec()).is_err());
        assert!(json::decode::<EmailChange>(b"{\"email\":".to_vec()).is_err());
        assert!(json::decode::<EmailChange>(b"{\"email\":5}".to_vec()).is_err());
    }
}
