//! A tiny blocking HTTP/1.1 client for the harness's own checks (`/readyz`,
//! `/version`, `/metrics`); the load itself is always oha's.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub struct Reply {
    pub status: u16,
    pub body: String,
}

pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading GET {path}"))?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Reply> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed HTTP reply");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status in HTTP reply")?;
    Ok(Reply {
        status,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_a_reply() {
        let r = super::parse(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}")
            .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "{}");
        assert!(super::parse(b"garbage").is_err());
    }
}
