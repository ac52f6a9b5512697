//! LL-HLS without IO: the per-stream state ([`state`]), the playlist renderer and the parser
//! edges use on their origin's playlist ([`playlist`]), the multivariant playlist of a ladder ([`multivariant`]), the playlist of a recorded class
//! ([`vod`]), the URL space ([`names`]), and the RFC 8216bis / Apple rules every playlist is
//! checked against in the tests ([`conformance`]).

pub mod conformance;
pub mod multivariant;
pub mod names;
pub mod playlist;
pub mod state;
pub mod vod;
