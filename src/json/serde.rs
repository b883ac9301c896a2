//! serde_json: the portable baseline.
use serde::de::DeserializeOwned;
use serde::Serialize;

pub const IMPLEMENTATION: &str = "serde_json";

/// Decodes an owned request body. The error text is shown to the client.
pub fn decode<T: DeserializeOwned>(body: Vec<u8>) -> Result<T, String> {
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// Encodes a response body.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| e.to_string())
}
