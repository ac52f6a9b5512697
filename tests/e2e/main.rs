//! End-to-end tests: the real `classcast` binary as separate processes on loopback, real
//! ffmpeg/ffprobe as publisher and players.

mod acme;
mod bounds;
mod cache_tier;
mod chat;
mod clients;
mod codecs;
mod control_plane;
mod fanout;
mod faults;
mod ladder;
mod masters;
mod media_plane;
mod reconnect;
mod recording;
mod support;
mod tls;
mod webrtc;
mod webrtc_bounds;
mod whip;
