//! Media tickets: the short credential a viewer's playlist puts after every media URI.
//!
//! Players resolve media URIs against the playlist's URL and drop its query, so each URI has to
//! carry a credential of its own. Repeating the viewer's ~400-character JWT there made a
//! viewer's playlist about seven times the size of the bare one, and every part request paid
//! for hashing those 400 bytes. A ticket is `<exp>.<mac>`: HMAC-SHA256, cut to 128 bits, over
//! the stream path and the JWT's expiry, under a key derived from the cluster secret and this
//! node's id. It grants exactly what the JWT granted for media — reading that stream on this
//! node until `exp` — and is refused for playlists, so the JWT check stays on the playlist
//! request, which a player repeats every part.
//!
//! The ticket also names its viewer: `<exp>.<viewer>.<mac>`, where `viewer` is 8 bytes of a hash
//! of the JWT's `jti`, under the MAC. A viewer is counted when it fetches media with its ticket,
//! not when it fetches a playlist: a token minted and used for one playlist (or a thousand of
//! them) moves no load figure, and the routing, the dashboard and the alerts follow viewers who
//! actually play.
//!
//! Why a derived key rather than a random one: tickets survive a slave restart (the player keeps
//! its playlist's URIs for a moment), and whoever could compute the key already holds the
//! cluster secret, which reads any stream as a peer anyway; so it grants nothing new. The node
//! id in the key keeps one slave's tickets from working on another, as a JWT's `node_id` does.

use aws_lc_rs::{constant_time, hmac};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::secret::ClusterSecret;

/// Why a ticket was refused. Forged, tampered, other-stream and other-node tickets look the
/// same on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("invalid media ticket (take the URIs from a playlist fetched with your token)")]
    Invalid,
    #[error("media ticket expired: the token it came with has expired")]
    Expired,
}

impl TicketError {
    /// The stable `error` code of the JSON refusal.
    pub fn code(&self) -> &'static str {
        match self {
            TicketError::Invalid => "ticket_invalid",
            TicketError::Expired => "ticket_expired",
        }
    }
}

/// The viewer id of a ticket shared by every viewer of a stream on this node, listed in
/// playlists when the slave sits behind a cache (`CACHE_URL`): the URIs are then the same for
/// everyone for a while, so the cache serves each part to all of them after one fetch. It grants
/// what every viewer's playlist already granted (reading this stream here) for at most
/// [`SHARED_TICKET_BUCKET_SECS`] × 2. It counts no viewer: behind a cache, a viewer is counted
/// when the cache checks its token for a playlist (`/auth/live/…`).
pub const SHARED_VIEWER: &str = "AAAAAAAAAAA";

/// Shared tickets change once per bucket: a part is fetched again under the new URI at most
/// once per bucket.
pub const SHARED_TICKET_BUCKET_SECS: u64 = 60;

/// Expiry of the shared ticket listed at `now`: the end of the next bucket, so a ticket listed
/// just before a bucket ends still lives a whole bucket.
pub fn shared_expiry(now: u64) -> u64 {
    (now / SHARED_TICKET_BUCKET_SECS + 2) * SHARED_TICKET_BUCKET_SECS
}

/// Bytes of the MAC kept: 128 bits is beyond online guessing.
const MAC_LEN: usize = 16;
/// Base64url characters of a [`MAC_LEN`]-byte MAC.
const MAC_CHARS: usize = 22;
/// Base64url characters of the 8-byte viewer id.
const VIEWER_CHARS: usize = 11;

/// The viewer id a ticket carries for the token `jti`.
pub fn viewer_id(jti: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, jti.as_bytes());
    URL_SAFE_NO_PAD.encode(&d.as_ref()[..8])
}

pub struct TicketKey {
    key: hmac::Key,
}

impl TicketKey {
    pub fn derive(secret: &ClusterSecret, node_id: &str) -> Self {
        let master = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
        let mut ctx = hmac::Context::with_key(&master);
        ctx.update(b"classcast media ticket v1\0");
        ctx.update(node_id.as_bytes());
        let derived = ctx.sign();
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    fn mac(&self, path: &str, exp: u64, viewer: &str) -> [u8; MAC_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(path.as_bytes());
        ctx.update(b"\0");
        ctx.update(&exp.to_be_bytes());
        ctx.update(viewer.as_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        out
    }

    /// The ticket for `viewer` (see [`viewer_id`]) reading `path` here until `exp` (Unix
    /// seconds).
    pub fn mint(&self, path: &str, exp: u64, viewer: &str) -> String {
        let mut t = exp.to_string();
        t.push('.');
        t.push_str(viewer);
        t.push('.');
        URL_SAFE_NO_PAD.encode_string(self.mac(path, exp, viewer), &mut t);
        t
    }

    /// Checks a ticket for `path` at `now` and returns its expiry and viewer id: 401 when it is
    /// malformed, forged, for another stream or node (those three look the same), or expired.
    pub fn check<'t>(
        &self,
        ticket: &'t str,
        path: &str,
        now: u64,
    ) -> Result<(u64, &'t str), TicketError> {
        let invalid = || TicketError::Invalid;
        let (exp, rest) = ticket.split_once('.').ok_or_else(invalid)?;
        let (viewer, mac) = rest.split_once('.').ok_or_else(invalid)?;
        if exp.is_empty()
            || exp.len() > 20
            || viewer.len() != VIEWER_CHARS
            || mac.len() != MAC_CHARS
        {
            return Err(invalid());
        }
        let exp: u64 = exp.parse().map_err(|_| invalid())?;
        let mut given = [0u8; MAC_LEN + 2];
        let n = URL_SAFE_NO_PAD
            .decode_slice(mac, &mut given)
            .map_err(|_| invalid())?;
        if n != MAC_LEN
            || constant_time::verify_slices_are_equal(
                &given[..MAC_LEN],
                &self.mac(path, exp, viewer),
            )
            .is_err()
        {
            return Err(invalid());
        }
        if exp <= now {
            return Err(TicketError::Expired);
        }
        Ok((exp, viewer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(node: &str) -> TicketKey {
        TicketKey::derive(
            &ClusterSecret::new("0123456789abcdef-secret").unwrap(),
            node,
        )
    }

    #[test]
    fn mint_and_check() {
        let k = key("node-a");
        let v = viewer_id("jti-1");
        let t = k.mint("live/class", 2_000, &v);
        assert!(t.len() < 52, "{t}");
        assert!(t.starts_with("2000."));
        assert_eq!(
            k.check(&t, "live/class", 1_999).unwrap(),
            (2_000, v.as_str())
        );
        // Another viewer's id under this MAC is refused.
        let other = t.replacen(&v, &viewer_id("jti-2"), 1);
        assert!(k.check(&other, "live/class", 1).is_err());
        // Expired, other stream, other node, other secret, tampered expiry or MAC.
        assert_eq!(
            k.check(&t, "live/class", 2_000).unwrap_err().code(),
            "ticket_expired"
        );
        assert_eq!(
            k.check(&t, "live/other", 1).unwrap_err().code(),
            "ticket_invalid"
        );
        assert!(key("node-b").check(&t, "live/class", 1).is_err());
        let other = TicketKey::derive(
            &ClusterSecret::new("another-secret-0123456789").unwrap(),
            "node-a",
        );
        assert!(other.check(&t, "live/class", 1).is_err());
        let later = t.replacen("2000.", "9000.", 1);
        assert!(k.check(&later, "live/class", 1).is_err());
        let mut bad = t.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert!(
            k.check(std::str::from_utf8(&bad).unwrap(), "live/class", 1)
                .is_err()
        );
        for junk in [
            "",
            ".",
            "2000",
            "2000.",
            "x.AAAAAAAAAAAAAAAAAAAAAA",
            "2000.!!!!",
            "2000.AAAAAAAAAAA",
            "2000.AAAAAAAAAAA.!!",
        ] {
            assert_eq!(
                k.check(junk, "live/class", 1).unwrap_err().code(),
                "ticket_invalid",
                "{junk:?}"
            );
        }
    }
}
