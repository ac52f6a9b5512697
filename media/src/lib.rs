//! classcast's media path without IO: RTMP bytes in, LL-HLS playlists and CMAF parts out.
//!
//! Nothing in here touches sockets, files, tasks or locks: every piece is a state machine fed
//! with bytes (and, where time matters, the time), so the whole path is unit-tested and fuzzed
//! with plain buffers. The slave owns the sockets, the locks and the clock; this crate must
//! never depend on tokio, axum, hyper or reqwest (`scripts/test.sh` checks it).
//!
//! Along the data path:
//! - [`rtmp`] — the rml_rtmp adapter (bytes in → [`rtmp::RtmpEvent`]s + bytes out) and the
//!   chunk reader that bounds what a peer can make it buffer.
//! - [`flv`] — FLV VIDEODATA / AUDIODATA body parsing (legacy + enhanced-RTMP header shape).
//! - [`multitrack`] — Enhanced RTMP v2 multitrack bodies split into one ordinary body per track.
//! - [`avc`], [`hevc`], [`av1`], [`aac`], [`opus`] — each codec's decoder configuration
//!   (record, picture size, codec string); [`codec`] puts them behind one type per track kind.
//! - [`packager`] — tags → CMAF parts and segments (video part cutting, the audio queue and the
//!   timeline each in their own module); [`cmaf`] writes the boxes.
//! - [`hls`] — the per-stream LL-HLS state, the playlist renderer and parser, the URL space.
//! - [`whip`] — WHIP ingest's adapter: depacketized WebRTC frames in, the FLV tags RTMP brings out.
//! - [`flv_file`] — the FLV file reader for tests, fuzz seeds and the bench.

pub mod aac;
pub mod av1;
pub mod avc;
pub mod cmaf;
pub mod codec;
mod error;
pub mod flv;
pub mod flv_file;
pub mod frames;
pub mod hevc;
pub mod hls;
pub mod multitrack;
pub mod opus;
pub mod packager;
pub mod rtmp;
pub mod whip;

pub use aac::AacConfig;
pub use avc::AvcConfig;
pub use codec::{AudioConfig, VideoConfig};
pub use error::MediaError;
pub use packager::{Packager, PackagerConfig, PackagerOutput};
