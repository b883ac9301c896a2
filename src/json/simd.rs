//! simd-json: parses the owned request buffer in place with SIMD, serialises responses.
use serde::de::DeserializeOwned;
use serde::Serialize;

pub const IMPLEMENTATION: &str = "simd-json";

/// Decodes an owned request body in place (simd-json rewrites the buffer while parsing).
/// The error text is shown to the client.
pub fn decode<T: DeserializeOwned>(mut body: Vec<u8>) -> Result<T, String> {
    simd_json::serde::from_slice(&mut body).map_err(|e| e.to_string())
}

/// Encodes a response body.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    simd_json::to_vec(value).map_err(|e| e.to_string())
}
