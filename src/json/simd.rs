//! simd-json: parses the owned request buffer in place with SIMD, serialises responses.
use serde::de::DeserializeOwned;
use serde::Serialize;

pub const IMPLEMENTATION: &str = "simd-json";

/// Decodes an owned request body in place (simd-json rewrites the buffer while parsing).
/// The error text is shown to the client.
pub fn decode<T: DeserializeOwned>(mut body: Vec<u8>) -> Result<T, String> {
    // simd-json reads a lone UTF-16 surrogate escape (`\ud800`) as NUL where serde_json
    // refuses it. A body with any `\u` escape (rare in a PATCH) takes serde_json's path,
    // so both builds accept and refuse exactly the same bodies (tests/json_agree.rs).
    if body.windows(2).any(|w| w == b"\\u") {
        return serde_json::from_slice(&body).map_err(|e| e.to_string());
    }
    simd_json::serde::from_slice(&mut body).map_err(|e| e.to_string())
}

/// Encodes a response body.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    simd_json::to_vec(value).map_err(|e| e.to_string())
}
