//! Enhanced RTMP v2 on the NetConnection: what a client says it can do in `connect`
//! (`fourCcList`, `videoFourCcInfoMap`, `audioFourCcInfoMap`, `capsEx`), what we answer in the
//! connect `_result`, and the server's own messages rml_rtmp has no call for (an error status
//! for a publish, and `NetConnection.Connect.ReconnectRequest`).

use rml_rtmp::chunk_io::{ChunkDeserializer, ChunkSerializer};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::time::RtmpTimestamp;
use std::collections::HashMap;

use super::RtmpError;

/// `CapsExMask` (E-RTMP v2, "Enhancing NetConnection connect Command").
pub mod caps_ex {
    pub const RECONNECT: u32 = 0x01;
    pub const MULTITRACK: u32 = 0x02;
    pub const MOD_EX: u32 = 0x04;
    pub const TIMESTAMP_NANO_OFFSET: u32 = 0x08;
}

/// What we take: video and audio FourCCs packaged as they come.
const VIDEO_FOURCCS: [&str; 3] = ["avc1", "hvc1", "av01"];
const AUDIO_FOURCCS: [&str; 2] = ["mp4a", "Opus"];
/// `FourCcInfoMask.CanDecode`: we read (package) the codec; we neither encode nor forward RTMP.
const CAN_DECODE: f64 = 1.0;

/// What the client declared in `connect`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ClientCaps {
    /// Any Enhanced RTMP property was present.
    pub enhanced: bool,
    pub caps_ex: u32,
    pub fourccs: Vec<String>,
}

/// Reads the client's `connect` command from the bytes after the handshake, alongside
/// rml_rtmp (which keeps the command object to itself). It stops at `connect`, so it holds at
/// most what comes before it, which the chunk guard already bounds.
#[derive(Default)]
pub struct ConnectSniffer {
    de: Option<ChunkDeserializer>,
    done: bool,
    pub caps: ClientCaps,
}

impl ConnectSniffer {
    /// Stops reading: what was read stays, nothing more is.
    pub fn give_up(&mut self) {
        self.done = true;
        self.de = None;
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        let de = self.de.get_or_insert_with(ChunkDeserializer::new);
        let mut input = bytes;
        loop {
            let payload = match de.get_next_message(input) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(_) => {
                    self.done = true;
                    return;
                }
            };
            input = &[];
            match payload.to_rtmp_message() {
                Ok(RtmpMessage::SetChunkSize { size })
                    if de.set_max_chunk_size(size as usize).is_err() =>
                {
                    self.done = true;
                    return;
                }
                Ok(RtmpMessage::Amf0Command {
                    command_name,
                    command_object,
                    ..
                }) if command_name == "connect" => {
                    self.caps = read_caps(command_object);
                    self.done = true;
                    self.de = None;
                    return;
                }
                _ => {}
            }
        }
    }
}

fn read_caps(command_object: Amf0Value) -> ClientCaps {
    let Amf0Value::Object(props) = command_object else {
        return ClientCaps::default();
    };
    let mut caps = ClientCaps::default();
    if let Some(Amf0Value::Number(n)) = props.get("capsEx") {
        caps.enhanced = true;
        caps.caps_ex = if n.is_finite() && *n >= 0.0 && *n <= f64::from(u32::MAX) {
            *n as u32
        } else {
            0
        };
    }
    if let Some(Amf0Value::StrictArray(list)) = props.get("fourCcList") {
        caps.enhanced = true;
        caps.fourccs = list
            .iter()
            .take(64)
            .filter_map(|v| match v {
                Amf0Value::Utf8String(s) if s.len() <= 4 => Some(s.clone()),
                _ => None,
            })
            .collect();
    }
    for map in ["videoFourCcInfoMap", "audioFourCcInfoMap"] {
        if let Some(Amf0Value::Object(m)) = props.get(map) {
            caps.enhanced = true;
            caps.fourccs
                .extend(m.keys().take(64).filter(|k| k.len() <= 4).cloned());
        }
    }
    caps
}

/// The connect `_result` for an Enhanced RTMP client: rml_rtmp's own properties plus ours,
/// as the spec asks the server to state what it supports.
pub fn connect_result(app: &str, timestamp: u32, chunk_size: u32) -> Result<Vec<u8>, RtmpError> {
    let mut props: HashMap<String, Amf0Value> = HashMap::new();
    props.insert(
        "fmsVer".into(),
        Amf0Value::Utf8String("FMS/3,0,1,123".into()),
    );
    props.insert("capabilities".into(), Amf0Value::Number(31.0));
    props.insert(
        "fourCcList".into(),
        Amf0Value::StrictArray(
            VIDEO_FOURCCS
                .iter()
                .chain(AUDIO_FOURCCS.iter())
                .map(|s| Amf0Value::Utf8String(s.to_string()))
                .collect(),
        ),
    );
    let map = |list: &[&str]| {
        Amf0Value::Object(
            list.iter()
                .map(|s| (s.to_string(), Amf0Value::Number(CAN_DECODE)))
                .collect(),
        )
    };
    props.insert("videoFourCcInfoMap".into(), map(&VIDEO_FOURCCS));
    props.insert("audioFourCcInfoMap".into(), map(&AUDIO_FOURCCS));
    props.insert(
        "capsEx".into(),
        Amf0Value::Number(f64::from(
            caps_ex::RECONNECT | caps_ex::MULTITRACK | caps_ex::MOD_EX,
        )),
    );
    let info = [
        ("level", "status"),
        ("code", "NetConnection.Connect.Success"),
        (
            "description",
            &format!("Successfully connected on app: {app}"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Amf0Value::Utf8String(v.to_string())))
    .chain(std::iter::once((
        "objectEncoding".to_string(),
        Amf0Value::Number(0.0),
    )))
    .collect();
    serialize(
        RtmpMessage::Amf0Command {
            command_name: "_result".into(),
            transaction_id: 1.0,
            command_object: Amf0Value::Object(props),
            additional_arguments: vec![Amf0Value::Object(info)],
        },
        timestamp,
        0,
        chunk_size,
    )
}

/// An `onStatus` on message stream `stream_id` with `info` as its info object.
pub fn on_status(
    stream_id: u32,
    info: &[(&str, &str)],
    chunk_size: u32,
) -> Result<Vec<u8>, RtmpError> {
    let info = info
        .iter()
        .map(|(k, v)| (k.to_string(), Amf0Value::Utf8String(v.to_string())))
        .collect();
    serialize(
        RtmpMessage::Amf0Command {
            command_name: "onStatus".into(),
            transaction_id: 0.0,
            command_object: Amf0Value::Null,
            additional_arguments: vec![Amf0Value::Object(info)],
        },
        0,
        stream_id,
        chunk_size,
    )
}

/// One message with a full chunk header, at the chunk size the session announced (the
/// SetChunkSize packet is not resent: the peer already has it).
fn serialize(
    message: RtmpMessage,
    timestamp: u32,
    stream_id: u32,
    chunk_size: u32,
) -> Result<Vec<u8>, RtmpError> {
    let fail = |e: String| RtmpError::Protocol(format!("serialising a server message: {e}"));
    let payload = message
        .into_message_payload(RtmpTimestamp::new(timestamp), stream_id)
        .map_err(|e| fail(format!("{e:?}")))?;
    let mut serializer = ChunkSerializer::new();
    serializer
        .set_max_chunk_size(chunk_size, RtmpTimestamp::new(0))
        .map_err(|e| fail(format!("{e:?}")))?;
    let packet = serializer
        .serialize(&payload, true, false)
        .map_err(|e| fail(format!("{e:?}")))?;
    Ok(packet.bytes)
}

/// How rml_rtmp's packet begins: a full (type 0) header with its timestamp, or a type 1
/// header (the message stream id of the previous message on that chunk stream) with its
/// timestamp delta. `None` for anything else.
pub fn leading_header(packet: &[u8]) -> Option<(u8, u32)> {
    let first = *packet.first()?;
    let fmt = first >> 6;
    if fmt > 1 || first & 0x3F < 2 {
        return None;
    }
    let t = packet.get(1..4)?;
    let ts = u32::from(t[0]) << 16 | u32::from(t[1]) << 8 | u32::from(t[2]);
    // An extended timestamp follows a field of 0xFFFFFF: not worth handling here.
    (ts < 0xFF_FFFF).then_some((fmt, ts))
}

/// `full` (a message serialised with a type 0 header) as a type 1 header with `delta`: the
/// message stream id dropped, the rest (continuation chunks included) unchanged.
pub fn as_type1(full: &[u8], delta: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(full.len() - 4);
    out.push(0x40 | (full[0] & 0x3F));
    out.extend_from_slice(&delta.to_be_bytes()[1..]);
    out.extend_from_slice(&full[4..8]);
    out.extend_from_slice(&full[12..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_bytes(props: Vec<(&str, Amf0Value)>) -> Vec<u8> {
        let message = RtmpMessage::Amf0Command {
            command_name: "connect".into(),
            transaction_id: 1.0,
            command_object: Amf0Value::Object(
                props.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            ),
            additional_arguments: vec![],
        };
        let payload = message
            .into_message_payload(RtmpTimestamp::new(0), 0)
            .unwrap();
        ChunkSerializer::new()
            .serialize(&payload, true, false)
            .unwrap()
            .bytes
    }

    #[test]
    fn a_clients_enhanced_connect_is_read_byte_by_byte() {
        let bytes = connect_bytes(vec![
            ("app", Amf0Value::Utf8String("live".into())),
            ("capsEx", Amf0Value::Number(3.0)),
            (
                "fourCcList",
                Amf0Value::StrictArray(vec![Amf0Value::Utf8String("hvc1".into())]),
            ),
        ]);
        let mut s = ConnectSniffer::default();
        for b in bytes.chunks(1) {
            s.feed(b);
        }
        assert!(s.caps.enhanced);
        assert_eq!(s.caps.caps_ex, caps_ex::RECONNECT | caps_ex::MULTITRACK);
        assert_eq!(s.caps.fourccs, ["hvc1"]);
        // A legacy connect declares nothing.
        let mut s = ConnectSniffer::default();
        s.feed(&connect_bytes(vec![(
            "app",
            Amf0Value::Utf8String("live".into()),
        )]));
        assert_eq!(s.caps, ClientCaps::default());
    }

    #[test]
    fn our_connect_result_states_what_we_take() {
        let bytes = connect_result("live", 7, 4096).unwrap();
        assert_eq!(leading_header(&bytes), Some((0, 7)));
        assert_eq!(leading_header(&as_type1(&bytes, 5)), Some((1, 5)));
        let mut de = ChunkDeserializer::new();
        de.set_max_chunk_size(4096).unwrap();
        let msg = de
            .get_next_message(&bytes)
            .unwrap()
            .unwrap()
            .to_rtmp_message()
            .unwrap();
        let RtmpMessage::Amf0Command {
            command_name,
            command_object: Amf0Value::Object(props),
            ..
        } = msg
        else {
            panic!("{msg:?}")
        };
        assert_eq!(command_name, "_result");
        assert_eq!(props.get("capsEx"), Some(&Amf0Value::Number(7.0)));
        let Some(Amf0Value::Object(video)) = props.get("videoFourCcInfoMap") else {
            panic!()
        };
        assert!(video.contains_key("hvc1") && video.contains_key("av01"));
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;
    use crate::rtmp::{RtmpEvent, RtmpLimits, RtmpSession};
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};

    #[test]
    fn an_enhanced_connect_gets_our_result() {
        let mut server = RtmpSession::new(RtmpLimits::default());
        let mut client = Handshake::new(PeerType::Client);
        let mut to_server = client.generate_outbound_p0_and_p1().unwrap();
        loop {
            server.feed(&to_server).unwrap();
            let back = server.take_output();
            match client.process_bytes(&back).unwrap() {
                HandshakeProcessResult::InProgress { response_bytes } => to_server = response_bytes,
                HandshakeProcessResult::Completed { response_bytes, .. } => {
                    to_server = response_bytes;
                    break;
                }
            }
        }
        server.feed(&to_server).unwrap();
        let mut out = server.take_output();
        let mut ser = ChunkSerializer::new();
        let mut bytes = ser
            .set_max_chunk_size(65536, RtmpTimestamp::new(0))
            .unwrap()
            .bytes;
        let props: HashMap<String, Amf0Value> = [
            ("app".to_string(), Amf0Value::Utf8String("live".into())),
            ("capsEx".to_string(), Amf0Value::Number(1.0)),
        ]
        .into_iter()
        .collect();
        let payload = RtmpMessage::Amf0Command {
            command_name: "connect".into(),
            transaction_id: 1.0,
            command_object: Amf0Value::Object(props),
            additional_arguments: vec![],
        }
        .into_message_payload(RtmpTimestamp::new(0), 0)
        .unwrap();
        bytes.extend(ser.serialize(&payload, false, false).unwrap().bytes);
        let events = server.feed(&bytes).unwrap();
        assert_eq!(
            server.client_caps().caps_ex,
            1,
            "{:?}",
            server.client_caps()
        );
        let Some(RtmpEvent::Connect { request_id, .. }) = events.into_iter().next() else {
            panic!()
        };
        out.extend(server.take_output());
        server.accept(request_id).unwrap();
        out.extend(server.take_output());
        // Read as a client would, from the first byte after the handshake.
        let mut de = ChunkDeserializer::new();
        let mut found = None;
        let mut input = &out[..];
        while let Ok(Some(p)) = de.get_next_message(input) {
            input = &[];
            match p.to_rtmp_message() {
                Ok(RtmpMessage::SetChunkSize { size }) => {
                    de.set_max_chunk_size(size as usize).unwrap()
                }
                Ok(RtmpMessage::Amf0Command {
                    command_name,
                    command_object,
                    ..
                }) if command_name == "_result" => found = Some(command_object),
                _ => {}
            }
        }
        let Some(Amf0Value::Object(p)) = found else {
            panic!("no _result: {out:?}")
        };
        assert_eq!(p.get("capsEx"), Some(&Amf0Value::Number(7.0)));
    }
}
