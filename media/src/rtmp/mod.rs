//! The one module that talks to rml_rtmp. Sans-IO: bytes in, events and bytes out. rml_rtmp can
//! panic on hostile input, so every call into it is behind `catch_unwind`: a panic becomes an
//! error that closes only the connection that caused it. Bytes reach rml_rtmp only after the
//! [`ChunkGuard`] has followed them: the bounds on chunk size and message size hold before
//! rml_rtmp buffers anything.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;

pub mod chunks;
pub mod enhanced;

use chunks::{ChunkError, ChunkGuard};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};

#[derive(Debug, Clone)]
pub struct RtmpLimits {
    /// Most bytes accepted without a complete message coming out, once a publish is accepted:
    /// bounds what a publisher can make us buffer (one keyframe of a 20 Mbps stream fits).
    pub max_message_bytes: usize,
    /// The same bound before a publish is accepted: commands are small, and a connection that
    /// has not proved anything must not hold megabytes.
    pub max_message_bytes_before_publish: usize,
    /// Largest chunk size a peer may set.
    pub max_chunk_size: u32,
}

impl Default for RtmpLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 8 * 1024 * 1024,
            max_message_bytes_before_publish: 64 * 1024,
            max_chunk_size: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RtmpEvent {
    Connect {
        request_id: u32,
        app: String,
    },
    Publish {
        request_id: u32,
        /// `name?key=TOKEN`, as publishers send it.
        stream_key: String,
    },
    PublishFinished,
    Play {
        request_id: u32,
        stream_key: String,
    },
    Video {
        timestamp: u32,
        data: Bytes,
    },
    Audio {
        timestamp: u32,
        data: Bytes,
    },
    Metadata,
}

#[derive(Debug, thiserror::Error)]
pub enum RtmpError {
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("rml_rtmp panicked on this peer's input: {0}")]
    Panic(String),
    #[error("peer sent {0} bytes without completing a message (limit {1})")]
    MessageTooLarge(usize, usize),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
}

fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, RtmpError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        RtmpError::Panic(msg)
    })
}

/// The chunk size the server announces after the handshake.
const SERVER_CHUNK_SIZE: u32 = 4096;
/// The message stream id rml_rtmp's `createStream` hands out first, the one a publisher uses.
const PUBLISH_STREAM_ID: u32 = 1;

pub struct RtmpSession {
    handshake: Option<Handshake>,
    session: Option<ServerSession>,
    guard: ChunkGuard,
    out: Vec<u8>,
    since_message: usize,
    limits: RtmpLimits,
    /// Publish requests raised and not yet answered.
    publish_requests: Vec<u32>,
    publishing: bool,
    /// The client's `connect`, read for its Enhanced RTMP capabilities.
    sniffer: enhanced::ConnectSniffer,
    /// The connect request, while it is not answered, and its app.
    connect_request: Option<(u32, String)>,
}

impl RtmpSession {
    pub fn new(limits: RtmpLimits) -> Self {
        Self {
            handshake: Some(Handshake::new(PeerType::Server)),
            session: None,
            guard: ChunkGuard::new(
                limits.max_chunk_size,
                limits.max_message_bytes_before_publish as u32,
            ),
            out: Vec::new(),
            since_message: 0,
            limits,
            publish_requests: Vec::new(),
            publishing: false,
            sniffer: Default::default(),
            connect_request: None,
        }
    }

    /// What the client declared in `connect` (Enhanced RTMP): empty for a legacy client.
    pub fn client_caps(&self) -> &enhanced::ClientCaps {
        &self.sniffer.caps
    }

    pub fn handshake_done(&self) -> bool {
        self.session.is_some()
    }

    /// Whether a publish was accepted on this connection (the larger bounds apply).
    pub fn publishing(&self) -> bool {
        self.publishing
    }

    fn max_unfinished(&self) -> usize {
        if self.publishing {
            self.limits.max_message_bytes
        } else {
            self.limits.max_message_bytes_before_publish
        }
    }

    /// Bytes to write to the peer, in order.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<RtmpEvent>, RtmpError> {
        if let Some(hs) = self.handshake.as_mut() {
            let res = guarded(|| hs.process_bytes(bytes))?
                .map_err(|e| RtmpError::Handshake(format!("{e:?}")))?;
            match res {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.out.extend_from_slice(&response_bytes);
                    return Ok(Vec::new());
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    self.out.extend_from_slice(&response_bytes);
                    self.handshake = None;
                    let mut config = ServerSessionConfig::new();
                    config.chunk_size = SERVER_CHUNK_SIZE;
                    let (session, initial) = guarded(|| ServerSession::new(config))?
                        .map_err(|e| RtmpError::Protocol(format!("{e:?}")))?;
                    self.session = Some(session);
                    let mut events = self.absorb(initial)?;
                    // OBS sends Set Chunk Size in the same TCP segment as the end of the
                    // handshake: those bytes belong to the session.
                    if !remaining_bytes.is_empty() {
                        events.extend(self.feed(&remaining_bytes)?);
                    }
                    return Ok(events);
                }
            }
        }
        self.guard.feed(bytes)?;
        // rml_rtmp's chunk reader can panic on hostile input: behind `catch_unwind` like every
        // other call into it, and a panic only ends the sniffing (the session's own reader
        // then fails on the same bytes).
        if guarded(|| self.sniffer.feed(bytes)).is_err() {
            self.sniffer.give_up();
        }
        self.since_message += bytes.len();
        let session = self.session.as_mut().expect("handshake done");
        let results = guarded(|| session.handle_input(bytes))?
            .map_err(|e| RtmpError::Protocol(format!("{e:?}")))?;
        let events = self.absorb(results)?;
        if self.since_message > self.max_unfinished() {
            return Err(RtmpError::MessageTooLarge(
                self.since_message,
                self.max_unfinished(),
            ));
        }
        Ok(events)
    }

    pub fn accept(&mut self, request_id: u32) -> Result<Vec<RtmpEvent>, RtmpError> {
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| RtmpError::Protocol("no session".into()))?;
        let mut results = guarded(|| session.accept_request(request_id))?
            .map_err(|e| RtmpError::Protocol(format!("{e:?}")))?;
        if let Some((_, app)) = self.connect_request.take_if(|(id, _)| *id == request_id)
            && self.sniffer.caps.enhanced
        {
            self.answer_enhanced_connect(&mut results, &app)?;
        }
        if let Some(i) = self.publish_requests.iter().position(|&r| r == request_id) {
            self.publish_requests.swap_remove(i);
            self.publishing = true;
            self.guard
                .set_max_message(self.limits.max_message_bytes.min(u32::MAX as usize) as u32);
        }
        self.absorb(results)
    }

    pub fn reject(
        &mut self,
        request_id: u32,
        code: &str,
        description: &str,
    ) -> Result<(), RtmpError> {
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| RtmpError::Protocol("no session".into()))?;
        let results = guarded(|| session.reject_request(request_id, code, description))?
            .map_err(|e| RtmpError::Protocol(format!("{e:?}")))?;
        self.absorb(results)?;
        Ok(())
    }

    /// Ends an accepted publish with `onStatus(level: "error")` carrying `description`: what
    /// ffmpeg prints as "Server error: …" and OBS shows before it disconnects. rml_rtmp only
    /// answers requests, so this message is serialised here, on the stream rml_rtmp gives the
    /// first publish (1).
    pub fn fail_publish(&mut self, code: &str, description: &str) -> Result<(), RtmpError> {
        let info = [
            ("level", "error"),
            ("code", code),
            ("description", description),
        ];
        let bytes = enhanced::on_status(PUBLISH_STREAM_ID, &info, SERVER_CHUNK_SIZE)?;
        self.out.extend_from_slice(&bytes);
        Ok(())
    }

    /// Asks the client to reconnect to `tc_url` (E-RTMP v2 "Reconnect Request"), if it said in
    /// `connect` that it can; returns whether it was asked. It keeps publishing here until it
    /// has, so nothing is lost.
    pub fn request_reconnect(
        &mut self,
        tc_url: &str,
        description: &str,
    ) -> Result<bool, RtmpError> {
        if self.sniffer.caps.caps_ex & enhanced::caps_ex::RECONNECT == 0 {
            return Ok(false);
        }
        let info = [
            ("level", "status"),
            ("code", "NetConnection.Connect.ReconnectRequest"),
            ("description", description),
            ("tcUrl", tc_url),
        ];
        let bytes = enhanced::on_status(0, &info, SERVER_CHUNK_SIZE)?;
        self.out.extend_from_slice(&bytes);
        Ok(true)
    }

    /// Replaces rml_rtmp's connect `_result` with one that also states our Enhanced RTMP
    /// support, with the same header kind and timestamp on the same chunk stream, so that the
    /// headers rml_rtmp compresses against it still read right (only a later message of exactly
    /// its length on that chunk stream could be misread, and the next commands there are far
    /// shorter). Left as it is if its header is not one that replacement handles.
    fn answer_enhanced_connect(
        &mut self,
        results: &mut [ServerSessionResult],
        app: &str,
    ) -> Result<(), RtmpError> {
        if let [ServerSessionResult::OutboundResponse(p)] = results
            && let Some((fmt, ts)) = enhanced::leading_header(&p.bytes)
        {
            let ours = enhanced::connect_result(app, ts, SERVER_CHUNK_SIZE)?;
            p.bytes = if fmt == 0 {
                ours
            } else {
                enhanced::as_type1(&ours, ts)
            };
        }
        Ok(())
    }

    fn absorb(&mut self, results: Vec<ServerSessionResult>) -> Result<Vec<RtmpEvent>, RtmpError> {
        let mut events = Vec::new();
        for r in results {
            match r {
                ServerSessionResult::OutboundResponse(p) => self.out.extend_from_slice(&p.bytes),
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
                ServerSessionResult::RaisedEvent(ev) => {
                    self.since_message = 0;
                    if let Some(e) = self.translate(ev)? {
                        events.push(e);
                    }
                }
            }
        }
        Ok(events)
    }

    fn translate(&mut self, ev: ServerSessionEvent) -> Result<Option<RtmpEvent>, RtmpError> {
        Ok(match ev {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                self.connect_request = Some((request_id, app_name.clone()));
                Some(RtmpEvent::Connect {
                    request_id,
                    app: app_name,
                })
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => {
                if self.publish_requests.len() < 8 {
                    self.publish_requests.push(request_id);
                }
                Some(RtmpEvent::Publish {
                    request_id,
                    stream_key,
                })
            }
            ServerSessionEvent::PublishStreamFinished { .. } => Some(RtmpEvent::PublishFinished),
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                stream_key,
                ..
            } => Some(RtmpEvent::Play {
                request_id,
                stream_key,
            }),
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => Some(RtmpEvent::Video {
                timestamp: timestamp.value,
                data,
            }),
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => Some(RtmpEvent::Audio {
                timestamp: timestamp.value,
                data,
            }),
            ServerSessionEvent::StreamMetadataChanged { .. } => Some(RtmpEvent::Metadata),
            _ => None,
        })
    }
}

/// Splits an RTMP stream key `name?key=TOKEN` (the key may also come as `token=` or `jwt=`).
pub fn split_stream_key(stream_key: &str) -> (&str, Option<&str>) {
    let (name, query) = match stream_key.split_once('?') {
        Some((n, q)) => (n, Some(q)),
        None => (stream_key, None),
    };
    let key = query.and_then(|q| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            matches!(k, "key" | "token" | "jwt").then_some(v)
        })
    });
    (name, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_publish_is_an_error_status_a_client_reads_whole() {
        use rml_rtmp::chunk_io::ChunkDeserializer;
        use rml_rtmp::messages::RtmpMessage;
        use rml_rtmp::rml_amf0::Amf0Value;
        let mut s = RtmpSession::new(RtmpLimits::default());
        // Longer than the default 128-byte chunk: it must come in one 4096-byte chunk.
        let why = "video codec \"vp09\" is not accepted: ".repeat(8);
        s.fail_publish("NetStream.Publish.Rejected", &why).unwrap();
        let bytes = s.take_output();
        let mut d = ChunkDeserializer::new();
        d.set_max_chunk_size(SERVER_CHUNK_SIZE as usize).unwrap();
        let payload = d
            .get_next_message(&bytes)
            .unwrap()
            .expect("one whole message");
        assert_eq!(payload.message_stream_id, PUBLISH_STREAM_ID);
        let RtmpMessage::Amf0Command {
            command_name,
            additional_arguments,
            ..
        } = payload.to_rtmp_message().unwrap()
        else {
            panic!("not a command");
        };
        assert_eq!(command_name, "onStatus");
        let Some(Amf0Value::Object(status)) = additional_arguments.first() else {
            panic!("no status object");
        };
        assert_eq!(status["level"], Amf0Value::Utf8String("error".into()));
        assert_eq!(status["description"], Amf0Value::Utf8String(why));
    }

    #[test]
    fn stream_keys() {
        assert_eq!(split_stream_key("stream?key=abc"), ("stream", Some("abc")));
        assert_eq!(split_stream_key("stream"), ("stream", None));
        assert_eq!(split_stream_key("s?x=1&jwt=t"), ("s", Some("t")));
    }

    #[test]
    fn garbage_handshake_is_an_error_not_a_panic() {
        let mut s = RtmpSession::new(RtmpLimits::default());
        // Version byte 0x03 is required; anything else is refused.
        let r = s.feed(&[0xffu8; 1537]);
        assert!(r.is_err());
    }

    /// A session past the handshake (C0+C1 of zeros, then C2).
    fn after_handshake(limits: RtmpLimits) -> RtmpSession {
        let mut s = RtmpSession::new(limits);
        let mut c0c1 = vec![3u8];
        c0c1.extend(std::iter::repeat_n(0u8, 1536));
        s.feed(&c0c1).unwrap();
        s.feed(&[0u8; 1536]).unwrap();
        assert!(s.handshake_done());
        s
    }

    /// A message in one chunk with a type-0 header on chunk stream `csid`.
    fn chunk0(csid: u8, type_id: u8, len: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![csid, 0, 0, 0];
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.push(type_id);
        v.extend_from_slice(&[0, 0, 0, 0]);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn chunk_size_bound_holds_inside_the_session() {
        let mut s = after_handshake(RtmpLimits::default());
        // 64 KiB is fine, and rml_rtmp follows it.
        s.feed(&chunk0(2, 1, 4, &65_536u32.to_be_bytes())).unwrap();
        let r = s.feed(&chunk0(2, 1, 4, &0x7fff_ffffu32.to_be_bytes()));
        assert!(
            matches!(
                r,
                Err(RtmpError::Chunk(ChunkError::ChunkSize(0x7fff_ffff, _)))
            ),
            "{r:?}"
        );
    }

    #[test]
    fn large_messages_only_after_an_accepted_publish() {
        let limits = RtmpLimits::default();
        let big = (limits.max_message_bytes_before_publish + 1) as u32;
        let mut s = after_handshake(limits.clone());
        let r = s.feed(&chunk0(4, 9, big, &[0x17; 16]));
        assert!(
            matches!(r, Err(RtmpError::Chunk(ChunkError::MessageTooLarge(n, _))) if n == big),
            "{r:?}"
        );
        // Once publishing, the publisher bound applies instead.
        let mut s = after_handshake(limits);
        s.publishing = true;
        s.guard.set_max_message(8 << 20);
        assert!(s.feed(&chunk0(4, 9, big, &[0x17; 16])).is_ok());
    }
}
