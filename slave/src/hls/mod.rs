//! In-memory LL-HLS on this node: the streams it serves, each a pure [`media::hls::state`]
//! behind a lock with a wake-up channel for blocked requests.

pub mod frames;
pub mod store;

pub use store::{HlsStream, PartIn, StreamStore};
