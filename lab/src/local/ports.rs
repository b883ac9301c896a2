//! Loopback ports for the servers the harness starts. A port the kernel handed out for
//! `127.0.0.1:0` lies in its ephemeral range, where any outgoing connection (oha opens
//! thousands) may take it between our check and the server's bind. So a port is drawn
//! below that range, where the kernel never assigns local ends, and checked by binding.
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;

use anyhow::{bail, Result};

/// The lowest port we draw from: above the registered services most machines run.
const FLOOR: u16 = 10_000;

/// The kernel's ephemeral range (`net.ipv4.ip_local_port_range`), Linux's default when
/// it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_range(&s))
        .unwrap_or((32_768, 60_999))
}

fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// The ports outside the ephemeral range we may draw from: below it when there is room,
/// else above it.
fn candidates((lo, hi): (u16, u16)) -> (u16, u16) {
    if lo > FLOOR + 1_000 {
        (FLOOR, lo - 1)
    } else if hi < u16::MAX - 1_000 {
        (hi + 1, u16::MAX)
    } else {
        (FLOOR, u16::MAX)
    }
}

/// A loopback port outside the ephemeral range that can be bound right now.
pub fn free_port() -> Result<u16> {
    let (lo, hi) = candidates(ephemeral_range());
    let span = u64::from(hi - lo) + 1;
    let seed = RandomState::new();
    for attempt in 0..200u64 {
        let mut h = seed.build_hasher();
        h.write_u64(attempt);
        let port = lo + (h.finish() % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no bindable loopback port in {lo}-{hi} after 200 tries")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_below_the_ephemeral_range() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_range("garbage"), None);
        assert_eq!(candidates((32_768, 60_999)), (10_000, 32_767));
        // A range that starts low leaves room only above it.
        assert_eq!(candidates((1_024, 50_000)), (50_001, 65_535));
        // The port bound when it was chosen; binding it again here would race with
        // every other program on the machine, which is the very race callers retry.
        let port = free_port().expect("a port");
        let (lo, _) = ephemeral_range();
        assert!(
            port >= FLOOR && (lo <= FLOOR + 1_000 || port < lo),
            "{port}"
        );
    }
}
