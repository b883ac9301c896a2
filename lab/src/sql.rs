//! The database contract both targets share: the schema, seed and index statements
//! (the same files the server's tests and the Kubernetes seed Job use), and the app's
//! least-privileged role.
use anyhow::{Context, Result};

pub const SCHEMA: &str = include_str!("../../sql/schema.sql");
pub const INDEX: &str = include_str!("../../sql/index.sql");
pub const SEED: &str = include_str!("../../sql/seed.sql");
pub const APP_ROLE: &str = include_str!("../../sql/app_role.sql");
/// The role the server under test connects as (SELECT and UPDATE on `users` only).
pub const APP_USER: &str = "perflab_app";

/// 24 random letters and digits from the kernel.
pub fn random_password() -> Result<String> {
    use std::io::Read;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut buf = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}
