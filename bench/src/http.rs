//! A minimal HTTP/1.1 keep-alive client for the request-rate benchmarks.
//!
//! The load generator runs on the same two cores as the server it measures, so every
//! microsecond it spends is taken from the server. This client writes a prebuilt request and
//! reads one `Content-Length` response per round trip, with no pool, no header map and no
//! allocation in the steady state: a fraction of what a general client costs per request.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawConn {
    addr: SocketAddr,
    host: String,
    sock: Option<TcpStream>,
    buf: Vec<u8>,
    req: Vec<u8>,
}

/// One response: status and the byte range of its body in the connection's buffer.
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

impl RawConn {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: addr.to_string(),
            sock: None,
            buf: Vec::with_capacity(16 * 1024),
            req: Vec::with_capacity(4 * 1024),
        }
    }

    async fn sock(&mut self) -> anyhow::Result<&mut TcpStream> {
        if self.sock.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            s.set_nodelay(true)?;
            self.sock = Some(s);
        }
        Ok(self.sock.as_mut().expect("just set"))
    }

    /// Sends one request and reads its response. On any error the connection is dropped, so
    /// the next call reconnects.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response<'_>> {
        self.req.clear();
        self.req.extend_from_slice(method.as_bytes());
        self.req.push(b' ');
        self.req.extend_from_slice(path.as_bytes());
        self.req.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        self.req.extend_from_slice(self.host.as_bytes());
        self.req.extend_from_slice(b"\r\n");
        for (k, v) in headers {
            self.req.extend_from_slice(k.as_bytes());
            self.req.extend_from_slice(b": ");
            self.req.extend_from_slice(v.as_bytes());
            self.req.extend_from_slice(b"\r\n");
        }
        if let Some(b) = body {
            self.req
                .extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
            self.req.extend_from_slice(b.len().to_string().as_bytes());
            self.req.extend_from_slice(b"\r\n\r\n");
            self.req.extend_from_slice(b);
        } else {
            self.req.extend_from_slice(b"\r\n");
        }
        match self.round_trip().await {
            Ok((status, start, end)) => Ok(Response {
                status,
                body: &self.buf[start..end],
            }),
            Err(e) => {
                self.sock = None;
                Err(e)
            }
        }
    }

    async fn round_trip(&mut self) -> anyhow::Result<(u16, usize, usize)> {
        let req = std::mem::take(&mut self.req);
        let res = self.sock().await?.write_all(&req).await;
        self.req = req;
        res?;
        self.buf.clear();
        let mut filled = 0usize;
        let (status, head_end, len) = loop {
            if let Some(h) = parse_head(&self.buf[..filled])? {
                break h;
            }
            filled += self.read_more(filled).await?;
        };
        let end = head_end + len;
        while filled < end {
            filled += self.read_more(filled).await?;
        }
        Ok((status, head_end, end))
    }

    async fn read_more(&mut self, filled: usize) -> anyhow::Result<usize> {
        if self.buf.len() < filled + 8192 {
            self.buf.resize(filled + 16 * 1024, 0);
        }
        let sock = self.sock.as_mut().context("no connection")?;
        let n = sock.read(&mut self.buf[filled..]).await?;
        if n == 0 {
            bail!("server closed the connection");
        }
        Ok(n)
    }
}

/// `Some((status, header length, content length))` once the head is complete.
fn parse_head(b: &[u8]) -> anyhow::Result<Option<(u16, usize, usize)>> {
    let Some(pos) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        if b.len() > 64 * 1024 {
            bail!("response head too large");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&b[..pos]).context("non-UTF-8 response head")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut len = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            len = v.trim().parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked responses are not supported by the raw client");
        }
    }
    Ok(Some((status, pos + 4, len.unwrap_or(0))))
}

/// `http://host:port[/…]` → socket address (the benchmarks only target numeric loopback).
pub fn socket_addr(base_url: &str) -> anyhow::Result<SocketAddr> {
    let rest = base_url
        .strip_prefix("http://")
        .with_context(|| format!("{base_url}: only http:// URLs are supported"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let hostport = hostport.replace("localhost:", "127.0.0.1:");
    hostport
        .parse()
        .with_context(|| format!("{base_url}: host must be a numeric address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
                .unwrap()
                .is_none()
        );
        let h = parse_head(b"HTTP/1.1 201 Created\r\nContent-Length: 12\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert_eq!(h, (201, 44, 12));
        assert_eq!(
            socket_addr("http://127.0.0.1:8000/x").unwrap().to_string(),
            "127.0.0.1:8000"
        );
    }
}
