//! Request decoding and response encoding. serde_json by default; with `simd-json`,
//! simd-json parses the owned request buffer in place (no extra copy) and serialises.
//! Both implementations expose the same two functions, so callers carry no `cfg`.

#[cfg_attr(feature = "simd-json", path = "simd.rs")]
#[cfg_attr(not(feature = "simd-json"), path = "serde.rs")]
mod imp;

pub use imp::{decode, encode, IMPLEMENTATION};
