//! The one FLV *file* reader (tests, fuzz seeds, the bench's publishers): the 9-byte header,
//! then (previous tag size, tag)*. Tag bodies come out exactly as an RTMP server hands them
//! over, for [`crate::Packager`] or an RTMP publisher.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvFileError {
    #[error("not an FLV file")]
    NotFlv,
    #[error("bad FLV header")]
    BadHeader,
    #[error("encrypted FLV tags are not supported")]
    Encrypted,
    #[error("the FLV file has no video tags")]
    NoVideo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    Audio,
    Video,
    Script,
}

#[derive(Debug, Clone)]
pub struct Tag {
    pub kind: TagKind,
    /// Milliseconds (24-bit timestamp plus the extension byte as the high 8 bits).
    pub ts: u32,
    pub body: Bytes,
}

impl Tag {
    /// A video frame (not a sequence header or an end-of-sequence marker).
    pub fn is_video_frame(&self) -> bool {
        self.kind == TagKind::Video && self.body.len() >= 2 && self.body[1] == 1
            || self.kind == TagKind::Video && self.body.first().is_some_and(|b| b & 0x0f != 7)
    }

    /// AVC end-of-sequence marker (ffmpeg writes one at the end of a file).
    pub fn is_end_of_sequence(&self) -> bool {
        self.kind == TagKind::Video
            && self.body.len() >= 2
            && self.body[0] & 0x0f == 7
            && self.body[1] == 2
    }

    /// AVC or AAC sequence header (decoder configuration), sent once per publish.
    pub fn is_sequence_header(&self) -> bool {
        match self.kind {
            // FrameType|CodecID, AVCPacketType (0 = sequence header) for codec 7 (AVC).
            TagKind::Video => self.body.len() >= 2 && self.body[0] & 0x0f == 7 && self.body[1] == 0,
            // SoundFormat 10 (AAC), AACPacketType 0 = sequence header.
            TagKind::Audio => self.body.len() >= 2 && self.body[0] >> 4 == 10 && self.body[1] == 0,
            TagKind::Script => false,
        }
    }
}

pub struct FlvFile {
    pub tags: Vec<Tag>,
}

impl FlvFile {
    /// Every tag of a file with video; a truncated last tag (a file cut while writing) ends
    /// the list.
    pub fn parse(data: Bytes) -> Result<Self, FlvFileError> {
        let tags = Self::tags(data)?;
        if !tags.iter().any(|t| t.kind == TagKind::Video) {
            return Err(FlvFileError::NoVideo);
        }
        Ok(Self { tags })
    }

    /// Every tag, whatever the file carries.
    pub fn tags(data: Bytes) -> Result<Vec<Tag>, FlvFileError> {
        if data.len() < 13 || &data[..3] != b"FLV" {
            return Err(FlvFileError::NotFlv);
        }
        let header_len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
        if header_len < 9 || header_len + 4 > data.len() {
            return Err(FlvFileError::BadHeader);
        }
        // PreviousTagSize0 follows the header.
        let mut pos = header_len + 4;
        let mut tags = Vec::new();
        while pos + 11 <= data.len() {
            let h = &data[pos..pos + 11];
            let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
            let ts = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
            let body_start = pos + 11;
            let body_end = body_start + size;
            if body_end > data.len() {
                // A truncated last tag (file cut while writing): stop there.
                break;
            }
            let kind = match h[0] & 0x1f {
                8 => Some(TagKind::Audio),
                9 => Some(TagKind::Video),
                18 => Some(TagKind::Script),
                _ => None,
            };
            if h[0] & 0x20 != 0 {
                return Err(FlvFileError::Encrypted);
            }
            if let Some(kind) = kind {
                tags.push(Tag {
                    kind,
                    ts,
                    body: data.slice(body_start..body_end),
                });
            }
            pos = body_end + 4;
        }
        Ok(tags)
    }

    /// Media duration of one pass through the file: from the first video frame to one frame
    /// interval after the last, so that the next loop's first (key)frame follows the last frame
    /// at the normal frame interval. Tags at or past `first video frame + length` (trailing
    /// audio) are skipped when looping, so that timestamps never go backwards.
    pub fn loop_length_ms(&self) -> u32 {
        let video = self.video_frame_ts();
        let mut steps: Vec<u32> = video
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .filter(|d| *d > 0)
            .collect();
        steps.sort_unstable();
        let frame = steps.get(steps.len() / 2).copied().unwrap_or(33);
        let last = video.iter().copied().max().unwrap_or(0);
        let first = video.iter().copied().min().unwrap_or(0);
        last - first + frame
    }

    /// Timestamp of the first video frame: where a loop starts.
    pub fn first_video_ts(&self) -> u32 {
        self.video_frame_ts().into_iter().min().unwrap_or(0)
    }

    fn video_frame_ts(&self) -> Vec<u32> {
        self.tags
            .iter()
            .filter(|t| t.is_video_frame())
            .map(|t| t.ts)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(kind: u8, ts: u32, body: &[u8]) -> Vec<u8> {
        let mut t = vec![kind];
        let n = body.len() as u32;
        t.extend_from_slice(&n.to_be_bytes()[1..]);
        t.extend_from_slice(&ts.to_be_bytes()[1..]);
        t.push((ts >> 24) as u8);
        t.extend_from_slice(&[0, 0, 0]);
        t.extend_from_slice(body);
        t.extend_from_slice(&(11 + n).to_be_bytes());
        t
    }

    #[test]
    fn parses_tags() {
        let mut f = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        f.extend(tag(9, 0, &[0x17, 0, 0, 0, 0, 1]));
        f.extend(tag(8, 0, &[0xaf, 0, 0x12, 0x10]));
        f.extend(tag(9, 0, &[0x17, 1, 0, 0, 0, 9]));
        f.extend(tag(9, 33, &[0x27, 1, 0, 0, 0, 9]));
        f.extend(tag(9, 0x0100_0042, &[0x27, 1, 0, 0, 0, 9]));
        let flv = FlvFile::parse(Bytes::from(f)).unwrap();
        assert_eq!(flv.tags.len(), 5);
        assert!(flv.tags[0].is_sequence_header() && flv.tags[1].is_sequence_header());
        assert!(!flv.tags[2].is_sequence_header() && flv.tags[2].is_video_frame());
        assert!(!flv.tags[0].is_video_frame() && !flv.tags[1].is_video_frame());
        assert_eq!(flv.first_video_ts(), 0);
        assert_eq!(flv.tags[4].ts, 0x0100_0042);
    }
}
