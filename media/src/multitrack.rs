//! Enhanced RTMP v2 multitrack: one FLV tag body that carries one or more tracks, each with a
//! track id (veovera enhanced-rtmp-v2, "Multitrack"). An encoder sends an ABR ladder this way:
//! ffmpeg 9 writes its first video stream as an ordinary tag and every other one as a OneTrack
//! multitrack tag with its own id; OBS's multitrack output does the same per track.
//!
//! [`split`] turns such a body into ordinary single-track bodies, one per track, so that
//! everything after it (the FLV parser, the packager, the frame tap) sees the tags a
//! single-track publisher sends. A body that is not multitrack is track 0 as it is.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::MediaError;

/// The ids an encoder gives tracks are its own; this bounds how many distinct video tracks one
/// publish may bring (the main one included), so a peer cannot make us build unbounded state.
pub const MAX_VIDEO_TRACKS: usize = 4;

/// `AvMultitrackType`.
const ONE_TRACK: u8 = 0;
const MANY_TRACKS: u8 = 1;
const MANY_TRACKS_MANY_CODECS: u8 = 2;

/// The multitrack packet type: video 6, audio 5. ModEx (7) may come before it.
const VIDEO_MULTITRACK: u8 = 6;
const AUDIO_MULTITRACK: u8 = 5;
const MOD_EX: u8 = 7;

/// What [`split`] found.
#[derive(Debug, PartialEq)]
pub enum Split {
    /// Not a multitrack body: it is track 0, unchanged.
    Single,
    /// A multitrack body, as `(track id, single-track body)` in the order sent.
    Tracks(Vec<(u8, Bytes)>),
}

/// Splits one VIDEODATA (`video`) or AUDIODATA body. Bounds-checked on every read: this runs on
/// publisher bytes.
pub fn split(body: &Bytes, video: bool) -> Result<Split, MediaError> {
    let what = if video {
        "multitrack video tag"
    } else {
        "multitrack audio tag"
    };
    let Some(&first) = body.first() else {
        return Ok(Split::Single);
    };
    let enhanced = if video {
        first & 0x80 != 0
    } else {
        first >> 4 == 9
    };
    if !enhanced {
        return Ok(Split::Single);
    }
    let multitrack = if video {
        VIDEO_MULTITRACK
    } else {
        AUDIO_MULTITRACK
    };
    let (packet_type, mut at) = skip_mod_ex(body, first & 0x0F, what)?;
    if packet_type != multitrack {
        return Ok(Split::Single);
    }
    let header = *body
        .get(at)
        .ok_or_else(|| short(what, at + 1, body.len()))?;
    at += 1;
    let layout = header >> 4;
    let inner_type = header & 0x0F;
    if inner_type == multitrack
        || inner_type == MOD_EX
        || !matches!(layout, ONE_TRACK | MANY_TRACKS | MANY_TRACKS_MANY_CODECS)
    {
        return Err(MediaError::UnsupportedMultitrack(if video {
            "video layout"
        } else {
            "audio layout"
        }));
    }
    // The header byte of each track's own body: the same frame type (video) or sound format
    // (audio), with the inner packet type.
    let own_first = (first & 0xF0) | inner_type;
    let mut fourcc = [0u8; 4];
    if layout != MANY_TRACKS_MANY_CODECS {
        fourcc = take4(body, at, what)?;
        at += 4;
    }
    let mut tracks = Vec::new();
    while at < body.len() {
        if layout == MANY_TRACKS_MANY_CODECS {
            fourcc = take4(body, at, what)?;
            at += 4;
        }
        let id = *body
            .get(at)
            .ok_or_else(|| short(what, at + 1, body.len()))?;
        at += 1;
        let end = if layout == ONE_TRACK {
            body.len()
        } else {
            let s = body
                .get(at..at + 3)
                .ok_or_else(|| short(what, at + 3, body.len()))?;
            at += 3;
            let size = usize::from(s[0]) << 16 | usize::from(s[1]) << 8 | usize::from(s[2]);
            if at + size > body.len() {
                return Err(short(what, at + size, body.len()));
            }
            at + size
        };
        let mut one = BytesMut::with_capacity(5 + end - at);
        one.put_u8(own_first);
        one.put_slice(&fourcc);
        one.put_slice(&body[at..end]);
        tracks.push((id, one.freeze()));
        at = end;
        if layout == ONE_TRACK {
            break;
        }
        // Every track costs at least its id; a bound on the count keeps a tag of empty
        // tracks from building a long list.
        if tracks.len() > 255 {
            return Err(MediaError::UnsupportedMultitrack("track count"));
        }
    }
    Ok(Split::Tracks(tracks))
}

fn skip_mod_ex(
    body: &[u8],
    mut packet_type: u8,
    what: &'static str,
) -> Result<(u8, usize), MediaError> {
    let mut at = 1;
    while packet_type == MOD_EX {
        let mut size = usize::from(
            *body
                .get(at)
                .ok_or_else(|| short(what, at + 1, body.len()))?,
        ) + 1;
        at += 1;
        if size == 256 {
            let s = body
                .get(at..at + 2)
                .ok_or_else(|| short(what, at + 2, body.len()))?;
            size = usize::from(u16::from_be_bytes([s[0], s[1]])) + 1;
            at += 2;
        }
        at += size;
        packet_type = *body
            .get(at)
            .ok_or_else(|| short(what, at + 1, body.len()))?
            & 0x0F;
        at += 1;
    }
    Ok((packet_type, at))
}

fn take4(body: &[u8], at: usize, what: &'static str) -> Result<[u8; 4], MediaError> {
    body.get(at..at + 4)
        .map(|s| [s[0], s[1], s[2], s[3]])
        .ok_or_else(|| short(what, at + 4, body.len()))
}

fn short(what: &'static str, need: usize, have: usize) -> MediaError {
    MediaError::Truncated { what, need, have }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flv::{VideoPacket, parse_audio_tag, parse_video_tag};

    fn b(v: &[u8]) -> Bytes {
        Bytes::copy_from_slice(v)
    }

    #[test]
    fn ordinary_tags_are_track_zero() {
        assert_eq!(
            split(&b(&[0x17, 1, 0, 0, 0, 9]), true).unwrap(),
            Split::Single
        );
        assert_eq!(split(&b(&[0xaf, 1, 9]), false).unwrap(), Split::Single);
        assert_eq!(
            split(&b(&[0x91, b'a', b'v', b'c', b'1', 0, 0, 0, 9]), true).unwrap(),
            Split::Single
        );
        assert_eq!(split(&Bytes::new(), true).unwrap(), Split::Single);
    }

    #[test]
    fn one_track_as_ffmpeg_9_writes_it() {
        // A keyframe's sequence start for track 1, as in ffmpeg 9's ladder FLV.
        let body = b(&[0x96, 0x00, b'a', b'v', b'c', b'1', 1, 0x01, 0x64, 0x00]);
        let Split::Tracks(t) = split(&body, true).unwrap() else {
            panic!()
        };
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, 1);
        assert_eq!(
            &t[0].1[..],
            &[0x90, b'a', b'v', b'c', b'1', 0x01, 0x64, 0x00]
        );
        let tag = parse_video_tag(&t[0].1).unwrap();
        assert!(tag.is_keyframe());
        assert!(matches!(tag.packet, VideoPacket::SequenceHeader(_)));
        // Coded frames keep their composition time.
        let body = b(&[
            0xa6, 0x01, b'a', b'v', b'c', b'1', 2, 0, 0, 33, 0, 0, 0, 1, 7,
        ]);
        let Split::Tracks(t) = split(&body, true).unwrap() else {
            panic!()
        };
        let tag = parse_video_tag(&t[0].1).unwrap();
        assert!(!tag.is_keyframe());
        assert!(matches!(
            tag.packet,
            VideoPacket::Frame {
                composition_time_ms: 33,
                ..
            }
        ));
    }

    #[test]
    fn many_tracks_and_many_codecs() {
        let body = b(&[
            0x96, 0x11, b'a', b'v', b'c', b'1', // ManyTracks, CodedFrames, avc1
            0, 0, 0, 4, 0, 0, 0, 9, // track 0, 4 bytes
            3, 0, 0, 5, 0, 0, 0, 8, 8, // track 3, 5 bytes
        ]);
        let Split::Tracks(t) = split(&body, true).unwrap() else {
            panic!()
        };
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 3]);
        assert_eq!(&t[1].1[..], &[0x91, b'a', b'v', b'c', b'1', 0, 0, 0, 8, 8]);
        let body = b(&[
            0x96, 0x21, // ManyTracksManyCodecs
            b'a', b'v', b'c', b'1', 0, 0, 0, 4, 0, 0, 0, 1, //
            b'h', b'v', b'c', b'1', 1, 0, 0, 4, 0, 0, 0, 2,
        ]);
        let Split::Tracks(t) = split(&body, true).unwrap() else {
            panic!()
        };
        assert_eq!(&t[1].1[1..5], b"hvc1");
        // Audio: OneTrack AAC behind a ModEx prefix.
        let body = b(&[0x97, 0, 0, 0x05, 0x01, b'm', b'p', b'4', b'a', 2, 0xaa]);
        let Split::Tracks(t) = split(&body, false).unwrap() else {
            panic!()
        };
        assert_eq!(t[0].0, 2);
        assert!(parse_audio_tag(&t[0].1).is_ok());
    }

    #[test]
    fn malformed_multitrack_is_an_error_never_a_panic() {
        for bad in [
            &[0x96][..],
            &[0x96, 0x00, b'a', b'v'],
            &[0x96, 0x10, b'a', b'v', b'c', b'1', 0, 0, 0, 9],
            &[0x96, 0x06, b'a', b'v', b'c', b'1', 0],
            &[0x96, 0x30, b'a', b'v', b'c', b'1', 0],
            &[0x97, 200],
        ] {
            assert!(split(&b(bad), true).is_err(), "{bad:?}");
        }
    }
}
