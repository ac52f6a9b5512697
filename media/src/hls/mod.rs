//! LL-HLS without IO: the per-stream state ([`state`]), the playlist renderer and the parser
//! edges use on their origin's playlist ([`playlist`]), the playlist of a recorded class
//! ([`vod`]), and the URL space ([`names`]).

pub mod names;
pub mod playlist;
pub mod state;
pub mod vod;
