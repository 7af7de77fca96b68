//! A small blocking HTTP/1.1 client for the daemon's API (the `ferrovisor vm` CLI and tests):
//! one request per connection, over the Unix socket or TCP.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Where the daemon listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP address (`127.0.0.1:PORT`).
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix socket {}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp {a}"),
        }
    }
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Sends one request; `body` is sent as JSON when given.
pub fn request(ep: &Endpoint, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Reply> {
    let mut s: Box<dyn Stream> = match ep {
        Endpoint::Unix(p) => {
            let s = std::os::unix::net::UnixStream::connect(p)?;
            s.set_read_timeout(Some(Duration::from_secs(120)))?;
            Box::new(s)
        }
        Endpoint::Tcp(a) => {
            let s = std::net::TcpStream::connect(a)?;
            s.set_read_timeout(Some(Duration::from_secs(120)))?;
            Box::new(s)
        }
    };
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    // A server may answer (413) before reading a large body: a write error then is not fatal.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw).ok_or_else(|| std::io::Error::other("malformed HTTP response"))
}

fn parse_response(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut chunked = false;
    let mut len = None;
    for l in lines {
        let (k, v) = l.split_once(':')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
            "content-length" => len = v.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        let mut p = 0;
        loop {
            let e = rest[p..].windows(2).position(|w| w == b"\r\n")? + p;
            let n = usize::from_str_radix(std::str::from_utf8(&rest[p..e]).ok()?.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(rest.get(e + 2..e + 2 + n)?);
            p = e + 4 + n;
        }
        out
    } else {
        rest[..len.unwrap_or(rest.len()).min(rest.len())].to_vec()
    };
    Some(Reply { status, body })
}
