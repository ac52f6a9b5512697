//! A shadow reader of the RTMP chunk stream, run on the bytes before rml_rtmp sees them. It
//! follows chunk boundaries exactly as rml_rtmp 0.8 does (one message in assembly at a time,
//! headers remembered per chunk stream, extended timestamps when the header field is 0xFFFFFF)
//! and checks what rml_rtmp does not: the size a message declares before any of it is buffered
//! (rml_rtmp reserves the whole declared length at the first chunk), and Set Chunk Size, which
//! rml_rtmp applies without raising an event. Sans-IO: bytes in, a verdict out.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("peer set chunk size {0} (limit {1})")]
    ChunkSize(u32, u32),
    #[error("peer announced a {0}-byte message (limit {1} at this stage)")]
    MessageTooLarge(u32, u32),
    #[error("chunk on stream {0} continues a header never sent")]
    NoPreviousHeader(u32),
}

/// RTMP message type of Set Chunk Size.
const SET_CHUNK_SIZE: u8 = 1;
const INITIAL_CHUNK_SIZE: u32 = 128;
const EXTENDED: u32 = 0xFF_FFFF;

#[derive(Debug, Clone, Copy, Default)]
struct Header {
    timestamp_field: u32,
    length: u32,
    type_id: u8,
}

#[derive(Debug)]
enum Stage {
    /// Collecting a chunk header (basic + message + extended timestamp) in `head`.
    Header,
    /// Inside a chunk's payload: this many bytes left in the chunk.
    Payload { left: u32 },
}

pub struct ChunkGuard {
    chunk_size: u32,
    max_chunk_size: u32,
    max_message: u32,
    headers: HashMap<u32, Header>,
    current: Header,
    csid: u32,
    /// Bytes of the message in assembly (rml_rtmp keeps one, whatever the chunk stream).
    assembled: u32,
    stage: Stage,
    head: Vec<u8>,
    /// The first bytes of a Set Chunk Size payload.
    scs: Vec<u8>,
}

impl ChunkGuard {
    pub fn new(max_chunk_size: u32, max_message: u32) -> Self {
        Self {
            chunk_size: INITIAL_CHUNK_SIZE,
            max_chunk_size,
            max_message,
            headers: HashMap::new(),
            current: Header::default(),
            csid: 0,
            assembled: 0,
            stage: Stage::Header,
            head: Vec::with_capacity(18),
            scs: Vec::with_capacity(4),
        }
    }

    /// Changes the largest message accepted from now on (larger once a publish is accepted).
    pub fn set_max_message(&mut self, max: u32) {
        self.max_message = max;
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Follows `bytes`; an error means the connection must close.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), ChunkError> {
        while !bytes.is_empty() {
            match self.stage {
                Stage::Header => {
                    let take = bytes.len().min(18 - self.head.len().min(18));
                    let before = self.head.len();
                    self.head.extend_from_slice(&bytes[..take]);
                    match self.parse_header()? {
                        Some(used) => {
                            bytes = &bytes[used - before..];
                            self.head.clear();
                        }
                        None => bytes = &bytes[take..],
                    }
                }
                Stage::Payload { left } => {
                    let n = left.min(bytes.len() as u32);
                    if self.current.type_id == SET_CHUNK_SIZE && self.scs.len() < 4 {
                        let k = (4 - self.scs.len()).min(n as usize);
                        self.scs.extend_from_slice(&bytes[..k]);
                    }
                    bytes = &bytes[n as usize..];
                    self.assembled += n;
                    if n == left {
                        self.end_chunk()?;
                    } else {
                        self.stage = Stage::Payload { left: left - n };
                    }
                }
            }
        }
        Ok(())
    }

    /// Parses the header in `head` if it is complete: `Some(bytes used)`.
    fn parse_header(&mut self) -> Result<Option<usize>, ChunkError> {
        let h = &self.head;
        let Some(&b0) = h.first() else {
            return Ok(None);
        };
        let fmt = b0 >> 6;
        let (csid, mut i) = match b0 & 0x3f {
            0 if h.len() >= 2 => (64 + u32::from(h[1]), 2),
            1 if h.len() >= 3 => (64 + u32::from(h[1]) + 256 * u32::from(h[2]), 3),
            0 | 1 => return Ok(None),
            n => (u32::from(n), 1),
        };
        let mut header = if fmt == 0 {
            Header::default()
        } else {
            *self
                .headers
                .get(&csid)
                .ok_or(ChunkError::NoPreviousHeader(csid))?
        };
        let msg_len = [11, 7, 3, 0][fmt as usize];
        if h.len() < i + msg_len {
            return Ok(None);
        }
        let u24 = |b: &[u8]| u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        if fmt <= 2 {
            header.timestamp_field = u24(&h[i..]);
        }
        if fmt <= 1 {
            header.length = u24(&h[i + 3..]);
            header.type_id = h[i + 6];
        }
        i += msg_len;
        if header.timestamp_field >= EXTENDED {
            if h.len() < i + 4 {
                return Ok(None);
            }
            i += 4;
        }
        if header.length > self.max_message {
            return Err(ChunkError::MessageTooLarge(header.length, self.max_message));
        }
        if self.assembled == 0 && header.type_id == SET_CHUNK_SIZE {
            self.scs.clear();
        }
        self.csid = csid;
        self.current = header;
        // rml_rtmp's rule: a message longer than the chunk size comes in chunk-size pieces,
        // a shorter one whole.
        let left = if header.length > self.chunk_size {
            header
                .length
                .saturating_sub(self.assembled)
                .min(self.chunk_size)
        } else {
            header.length
        };
        if left == 0 {
            self.end_chunk()?;
        } else {
            self.stage = Stage::Payload { left };
        }
        Ok(Some(i))
    }

    fn end_chunk(&mut self) -> Result<(), ChunkError> {
        self.headers.insert(self.csid, self.current);
        self.stage = Stage::Header;
        if self.assembled >= self.current.length {
            self.assembled = 0;
            if self.current.type_id == SET_CHUNK_SIZE && self.scs.len() == 4 {
                let size = u32::from_be_bytes([self.scs[0], self.scs[1], self.scs[2], self.scs[3]]);
                if size == 0 || size > self.max_chunk_size {
                    return Err(ChunkError::ChunkSize(size, self.max_chunk_size));
                }
                self.chunk_size = size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as one or more chunks (fmt 0 then fmt 3) at `chunk` bytes each.
    fn message(csid: u8, type_id: u8, payload: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = vec![csid, 0, 0, 0];
        let len = payload.len() as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(type_id);
        out.extend_from_slice(&[1, 0, 0, 0]);
        for (i, c) in payload.chunks(chunk).enumerate() {
            if i > 0 {
                out.push(0xC0 | csid);
            }
            out.extend_from_slice(c);
        }
        out
    }

    #[test]
    fn follows_chunk_size_changes_and_bounds_them() {
        let mut g = ChunkGuard::new(1 << 20, 64 * 1024);
        let mut bytes = message(2, 1, &4096u32.to_be_bytes(), 128);
        // A 5,000-byte command at the new size: two chunks of 4,096 and 904.
        bytes.extend(message(3, 20, &[7u8; 5000], 4096));
        bytes.extend(message(2, 1, &0x7fff_ffffu32.to_be_bytes(), 4096));
        // Byte by byte, as a trickling peer would send it.
        let mut res = Ok(());
        for b in &bytes {
            res = g.feed(std::slice::from_ref(b));
            if res.is_err() {
                break;
            }
        }
        assert_eq!(g.chunk_size(), 4096);
        assert_eq!(res, Err(ChunkError::ChunkSize(0x7fff_ffff, 1 << 20)));
    }

    #[test]
    fn an_announced_message_over_the_bound_is_refused_before_its_payload() {
        let mut g = ChunkGuard::new(1 << 20, 64 * 1024);
        let mut header = vec![3u8, 0, 0, 0];
        header.extend_from_slice(&(8u32 << 20).to_be_bytes()[1..]);
        header.extend_from_slice(&[20, 0, 0, 0, 0]);
        assert_eq!(
            g.feed(&header),
            Err(ChunkError::MessageTooLarge(8 << 20, 64 * 1024))
        );
        let mut g = ChunkGuard::new(1 << 20, 64 * 1024);
        g.set_max_message(16 << 20);
        assert!(g.feed(&header).is_ok());
    }

    #[test]
    fn extended_timestamps_and_continuations() {
        let mut g = ChunkGuard::new(1 << 20, 1 << 20);
        // fmt 0 with an extended timestamp, 300 bytes at 128: fmt-3 continuations carry the
        // extended timestamp again, as rml_rtmp expects.
        let mut b = vec![4u8, 0xff, 0xff, 0xff, 0, 1, 44, 9, 1, 0, 0, 0, 0, 0, 0, 1];
        b.extend_from_slice(&[0u8; 128]);
        b.extend_from_slice(&[0xC4, 0, 0, 0, 1]);
        b.extend_from_slice(&[0u8; 128]);
        b.extend_from_slice(&[0xC4, 0, 0, 0, 1]);
        b.extend_from_slice(&[0u8; 44]);
        // Then a Set Chunk Size that must be read correctly after all that.
        b.extend(message(2, 1, &256u32.to_be_bytes(), 128));
        g.feed(&b).unwrap();
        assert_eq!(g.chunk_size(), 256);
        assert_eq!(
            ChunkGuard::new(1 << 20, 1 << 20).feed(&[0x45, 0, 0, 0]),
            Err(ChunkError::NoPreviousHeader(5))
        );
    }
}
