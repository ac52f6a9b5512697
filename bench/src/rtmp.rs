//! A pure-Rust RTMP publisher (rml_rtmp's client session): connect, publish `name?key=…` the
//! way OBS does, then send an FLV file's tags paced in real time, looping the file with
//! timestamps that keep increasing.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::flv::{FlvFile, TagKind};

/// Where to publish: `rtmp://host:port/app/streamkey` split into its parts.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub app: String,
    /// Everything after the app, including `?key=…` (the key travels in the publish name).
    pub stream_key: String,
    pub tc_url: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("rtmp://")
            .with_context(|| format!("{url}: not an rtmp:// URL"))?;
        let (hostport, path) = rest
            .split_once('/')
            .with_context(|| format!("{url}: no app"))?;
        let (app, key) = path
            .split_once('/')
            .with_context(|| format!("{url}: no stream key after the app"))?;
        let hostport = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:1935")
        };
        let addr = hostport
            .replace("localhost:", "127.0.0.1:")
            .parse()
            .with_context(|| format!("{url}: host must be a numeric address"))?;
        Ok(Self {
            addr,
            app: app.to_string(),
            stream_key: key.to_string(),
            tc_url: format!("rtmp://{hostport}/{app}"),
        })
    }

    /// The stream name without the `?key=…` part.
    pub fn name(&self) -> &str {
        self.stream_key
            .split_once('?')
            .map_or(self.stream_key.as_str(), |(n, _)| n)
    }
}

/// What a publisher records while it runs.
#[derive(Default)]
pub struct PublishLog {
    /// (media timestamp ms after the loop offset, instant the tag's write returned), video
    /// frames only (no sequence header), in send order.
    pub video_sent: Mutex<Vec<(u32, Instant)>>,
    /// Bytes written to the socket after the publish was accepted (RTMP chunk bytes).
    pub bytes: AtomicU64,
    pub tags: AtomicU64,
    /// Largest lateness of a tag behind its real-time deadline, in µs (publisher overload).
    pub max_late_us: AtomicU64,
}

pub struct Publisher {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    session: ClientSession,
    buf: Vec<u8>,
}

impl Publisher {
    /// Connects, handshakes, and publishes; returns once the server accepted the publish.
    pub async fn connect(t: &Target) -> anyhow::Result<Self> {
        let sock = TcpStream::connect(t.addr)
            .await
            .with_context(|| format!("connect {}", t.addr))?;
        sock.set_nodelay(true)?;
        let (mut rd, mut wr) = sock.into_split();
        let mut hs = Handshake::new(PeerType::Client);
        let p0p1 = hs
            .generate_outbound_p0_and_p1()
            .map_err(|e| anyhow::anyhow!("handshake: {e:?}"))?;
        wr.write_all(&p0p1).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let remaining = loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                bail!("server closed during the handshake");
            }
            match hs
                .process_bytes(&buf[..n])
                .map_err(|e| anyhow::anyhow!("handshake: {e:?}"))?
            {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    wr.write_all(&response_bytes).await?;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    wr.write_all(&response_bytes).await?;
                    break remaining_bytes;
                }
            }
        };
        let mut config = ClientSessionConfig::new();
        config.tc_url = Some(t.tc_url.clone());
        config.chunk_size = 4096;
        let (session, initial) =
            ClientSession::new(config).map_err(|e| anyhow::anyhow!("session: {e:?}"))?;
        let mut p = Self {
            rd,
            wr,
            session,
            buf,
        };
        p.send_results(initial).await?;
        if !remaining.is_empty() {
            let r = p.input(&remaining)?;
            p.send_results(r).await?;
        }
        let r = p
            .session
            .request_connection(t.app.clone())
            .map_err(|e| anyhow::anyhow!("connect request: {e:?}"))?;
        p.send_results(vec![r]).await?;
        p.wait_for(
            |e| matches!(e, ClientSessionEvent::ConnectionRequestAccepted),
            "connect",
        )
        .await?;
        let r = p
            .session
            .request_publishing(t.stream_key.clone(), PublishRequestType::Live)
            .map_err(|e| anyhow::anyhow!("publish request: {e:?}"))?;
        p.send_results(vec![r]).await?;
        p.wait_for(
            |e| matches!(e, ClientSessionEvent::PublishRequestAccepted),
            "publish",
        )
        .await?;
        Ok(p)
    }

    fn input(&mut self, bytes: &[u8]) -> anyhow::Result<Vec<ClientSessionResult>> {
        self.session
            .handle_input(bytes)
            .map_err(|e| anyhow::anyhow!("rtmp input: {e:?}"))
    }

    /// Writes the session's outbound packets; returns the events it raised.
    async fn send_results(
        &mut self,
        results: Vec<ClientSessionResult>,
    ) -> anyhow::Result<Vec<ClientSessionEvent>> {
        let mut events = Vec::new();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => self.wr.write_all(&p.bytes).await?,
                ClientSessionResult::RaisedEvent(e) => events.push(e),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(events)
    }

    async fn wait_for(
        &mut self,
        want: impl Fn(&ClientSessionEvent) -> bool,
        what: &str,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let n = tokio::time::timeout_at(deadline, self.rd.read(&mut self.buf))
                .await
                .with_context(|| format!("{what}: no answer within 10 s"))??;
            if n == 0 {
                bail!("{what}: the server closed the connection (refused?)");
            }
            let bytes = self.buf[..n].to_vec();
            let results = self.input(&bytes)?;
            for e in self.send_results(results).await? {
                match e {
                    e if want(&e) => return Ok(()),
                    ClientSessionEvent::ConnectionRequestRejected { description } => {
                        bail!("{what} refused: {description}")
                    }
                    ClientSessionEvent::UnhandleableOnStatusCode { code } => {
                        bail!("{what} refused: {code}")
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends the file's tags paced by their timestamps for `duration` of media time, looping
    /// the file. Sequence headers go out once, at the start.
    pub async fn run(
        mut self,
        flv: &FlvFile,
        duration: Duration,
        log: &PublishLog,
    ) -> anyhow::Result<()> {
        let loop_len = flv.loop_length_ms();
        // Loop k covers [first_video + k·len, first_video + (k+1)·len); headers and audio before
        // the first frame go out at the start of the first loop only.
        let loop_start = flv.first_video_ts();
        let first_ts = flv.tags.iter().map(|t| t.ts).min().unwrap_or(0);
        let end_ms = duration.as_millis() as u64;
        let start = tokio::time::Instant::now();
        let mut lap = 0u32;
        'outer: loop {
            for tag in &flv.tags {
                let skip = tag.kind == TagKind::Script
                    || tag.is_end_of_sequence()
                    || (lap > 0 && (tag.is_sequence_header() || tag.ts < loop_start))
                    || tag.ts >= loop_start + loop_len;
                if skip {
                    continue;
                }
                let ts = tag.ts - first_ts + lap * loop_len;
                if u64::from(ts) >= end_ms {
                    break 'outer;
                }
                let deadline = start + Duration::from_millis(u64::from(ts));
                self.pace_until(deadline).await?;
                let late = tokio::time::Instant::now().saturating_duration_since(deadline);
                log.max_late_us
                    .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
                let stamp = RtmpTimestamp::new(ts);
                let r = match tag.kind {
                    TagKind::Video => {
                        self.session
                            .publish_video_data(tag.body.clone(), stamp, false)
                    }
                    _ => self
                        .session
                        .publish_audio_data(tag.body.clone(), stamp, false),
                }
                .map_err(|e| anyhow::anyhow!("rtmp send: {e:?}"))?;
                let ClientSessionResult::OutboundResponse(packet) = r else {
                    continue;
                };
                self.wr.write_all(&packet.bytes).await?;
                let sent = Instant::now();
                log.bytes
                    .fetch_add(packet.bytes.len() as u64, Ordering::Relaxed);
                log.tags.fetch_add(1, Ordering::Relaxed);
                if tag.is_video_frame() {
                    log.video_sent.lock().expect("poisoned").push((ts, sent));
                }
            }
            lap += 1;
        }
        if let Ok(r) = self.session.stop_publishing() {
            let _ = self.send_results(r).await;
        }
        let _ = self.wr.shutdown().await;
        Ok(())
    }

    /// Sleeps until `deadline` while answering whatever the server sends (acks, pings).
    async fn pace_until(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                n = self.rd.read(&mut self.buf) => {
                    let n = n?;
                    if n == 0 {
                        bail!("the server closed the connection while publishing");
                    }
                    let bytes = self.buf[..n].to_vec();
                    let results = self.input(&bytes)?;
                    self.send_results(results).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("rtmp://127.0.0.1:1935/live/class1?key=a.b.c").unwrap();
        assert_eq!(t.addr.to_string(), "127.0.0.1:1935");
        assert_eq!(t.app, "live");
        assert_eq!(t.stream_key, "class1?key=a.b.c");
        assert_eq!(t.name(), "class1");
        assert_eq!(t.tc_url, "rtmp://127.0.0.1:1935/live");
        assert!(Target::parse("rtmp://127.0.0.1/live").is_err());
    }
}
