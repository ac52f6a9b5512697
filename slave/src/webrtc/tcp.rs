//! ICE-TCP (RFC 6544): for viewers whose network drops UDP. The slave offers a passive TCP
//! host candidate beside its UDP one; a browser that cannot reach the UDP port connects here,
//! and its STUN, DTLS and SRTP travel as RFC 4571 frames (a 16-bit length before each
//! datagram). Each connection has a reader and a writer task; the engine sees datagrams with
//! their TCP source and sends through [`TcpLinks`], which drops what a slow connection cannot
//! take (as UDP would) instead of letting one viewer's socket hold the engine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

/// Largest frame taken from a viewer: STUN, DTLS and RTCP from a browser stay under a
/// datagram's size; a peer that announces more is not speaking RFC 4571.
pub const MAX_FRAME: usize = 4096;
/// A connection that has not sent its first frame (the browser's STUN check) by then is closed.
pub const FIRST_FRAME_DEADLINE: Duration = Duration::from_secs(5);
/// Nor may one go quiet longer: browsers send consent checks every few seconds.
pub const IDLE_DEADLINE: Duration = Duration::from_secs(30);
/// Frames queued for one viewer's connection; past it frames are dropped, as a full UDP
/// buffer would, and NACKs or the next keyframe repair the picture.
const QUEUE: usize = 1024;
/// A write that takes longer ends the connection (the viewer's network is gone).
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// What the connection tasks tell the engine.
pub enum TcpEvent {
    Opened {
        peer: SocketAddr,
        tx: mpsc::Sender<Bytes>,
    },
    Frame {
        peer: SocketAddr,
        data: Vec<u8>,
    },
    Closed {
        peer: SocketAddr,
    },
}

/// The engine's side: where to send a viewer's datagrams over TCP.
#[derive(Default)]
pub struct TcpLinks {
    links: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
}

impl TcpLinks {
    pub fn opened(&mut self, peer: SocketAddr, tx: mpsc::Sender<Bytes>) {
        self.links.insert(peer, tx);
    }

    pub fn closed(&mut self, peer: &SocketAddr) {
        self.links.remove(peer);
    }

    /// Queues one datagram; false when it was dropped (no such connection, or it is full).
    pub fn send(&self, peer: &SocketAddr, data: &[u8]) -> bool {
        self.links
            .get(peer)
            .is_some_and(|tx| tx.try_send(Bytes::copy_from_slice(data)).is_ok())
    }
}

/// One RFC 4571 frame: the length prefix and the datagram.
pub fn frame(data: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(data.len()).ok()?;
    let mut out = Vec::with_capacity(2 + data.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    Some(out)
}

/// Accepts viewers' connections, at most `max` at once, until the engine goes away.
pub async fn listen(listener: TcpListener, max: usize, events: mpsc::Sender<TcpEvent>) {
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if events.is_closed() {
            return;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max, "webrtc tcp connection refused: too many");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let events = events.clone();
        tokio::spawn(async move {
            connection(stream, peer, events).await;
            drop(permit);
        });
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, events: mpsc::Sender<TcpEvent>) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    if events.send(TcpEvent::Opened { peer, tx }).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            let Some(f) = frame(&d) else { continue };
            match tokio::time::timeout(WRITE_DEADLINE, wr.write_all(&f)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut deadline = FIRST_FRAME_DEADLINE;
    let mut len = [0u8; 2];
    loop {
        let read = tokio::time::timeout(deadline, async {
            rd.read_exact(&mut len).await?;
            let n = u16::from_be_bytes(len) as usize;
            if n == 0 || n > MAX_FRAME {
                return Err(std::io::Error::other("frame length out of bounds"));
            }
            let mut data = vec![0u8; n];
            rd.read_exact(&mut data).await?;
            Ok(data)
        })
        .await;
        match read {
            Ok(Ok(data)) => {
                if events.send(TcpEvent::Frame { peer, data }).await.is_err() {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "webrtc tcp connection ended");
                break;
            }
            Err(_) => {
                tracing::debug!(%peer, "webrtc tcp connection timed out");
                break;
            }
        }
        deadline = IDLE_DEADLINE;
        if writer.is_finished() {
            break;
        }
    }
    writer.abort();
    let _ = events.send(TcpEvent::Closed { peer }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_the_length_then_the_datagram() {
        assert_eq!(frame(b"abc").unwrap(), vec![0, 3, b'a', b'b', b'c']);
        assert!(frame(&vec![0u8; 70_000]).is_none());
    }

    #[tokio::test]
    async fn frames_reach_the_engine_and_bad_lengths_close_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(listen(listener, 1, tx));
        let mut c = TcpStream::connect(addr).await.unwrap();
        let TcpEvent::Opened { peer, tx: out } = rx.recv().await.unwrap() else {
            panic!("opened first")
        };
        c.write_all(&frame(b"stun").unwrap()).await.unwrap();
        match rx.recv().await.unwrap() {
            TcpEvent::Frame { data, .. } => assert_eq!(data, b"stun"),
            _ => panic!("a frame"),
        }
        // The engine's datagrams come back framed.
        out.try_send(Bytes::from_static(b"dtls")).unwrap();
        let mut got = [0u8; 6];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, &[0, 4, b'd', b't', b'l', b's']);
        // A second connection is over the limit of one: closed at once.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), second.read(&mut b)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
        // A length past MAX_FRAME ends the connection.
        c.write_all(&[0xff, 0xff]).await.unwrap();
        match rx.recv().await.unwrap() {
            TcpEvent::Closed { peer: p } => assert_eq!(p, peer),
            _ => panic!("closed"),
        }
    }
}
