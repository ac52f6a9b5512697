//! In-memory LL-HLS on this node: the streams it serves, each a pure [`media::hls::state`]
//! behind a lock with a wake-up channel for blocked requests, and beside each stream its frames
//! ([`frames`], for WebRTC) and its class's messages ([`messages`], for Q&A).

pub mod frames;
pub mod messages;
pub mod store;

pub use store::{HlsStream, PartIn, StreamStore};
