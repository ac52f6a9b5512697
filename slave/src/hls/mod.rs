//! In-memory LL-HLS: the per-stream segment store and the playlist renderer.

pub mod playlist;
pub mod store;

pub use store::{HlsStream, PartIn, StreamStore};
