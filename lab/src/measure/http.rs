//! A tiny blocking HTTP/1.1 client for the harness's own checks (`/readyz`,
//! `/version`, `/metrics`, the contract probe); the load itself is always oha's.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub struct Reply {
    pub status: u16,
    pub body: String,
}

pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Reply> {
    request(addr, "GET", path, None, timeout)
}

/// One request on its own connection; `json` is sent as an `application/json` body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(body) = json {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(json.unwrap_or(""));
    s.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading {method} {path}"))?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Reply> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("malformed HTTP reply");
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status in HTTP reply")?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A chunked body's data (servers other than ours may send one), in bytes: chunk sizes
/// count bytes, and a character may straddle two chunks.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a truncated chunked body")?;
        let line = String::from_utf8_lossy(&body[..end]);
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .context("a malformed chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        let rest = &body[end + 2..];
        out.extend_from_slice(rest.get(..size).context("a truncated chunk")?);
        body = rest.get(size..).unwrap_or_default();
        body = body.strip_prefix(b"\r\n").unwrap_or(body);
    }
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
        let r = super::parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, "{\"a\":1}");
        // "é" is two bytes, split across two chunks.
        let r = super::parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n\"\xc3\r\n2\r\n\xa9\"\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, "\"é\"");
    }
}
