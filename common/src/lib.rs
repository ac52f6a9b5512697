//! Types and machinery shared by the master and the slaves: the cluster wire format, the token
//! format and its signer/verifier, the JSON error type, and the cluster-secret check.

pub mod acme;
pub mod api;
pub mod error;
pub mod http;
pub mod listeners;
pub mod secret;
pub mod sysstats;
pub mod tls;
pub mod token;

pub use error::ApiError;

/// The version every node reports at registration, so an operator can spot a mixed cluster.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Upper bound on every JSON body the cluster accepts; larger bodies get 413.
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// Streams are addressed as `<app>/<name>`; `live` is the only app.
pub const APP: &str = "live";

/// Validates a stream name (the part after `live/`): short, URL- and path-safe, so it can be
/// used verbatim in URLs, metric-free logs and map keys without escaping or traversal risk.
pub fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Normalises `live/x`, `/live/x` or `x` to the canonical path `live/x`.
pub fn stream_path(stream: &str) -> Option<String> {
    let s = stream.trim_start_matches('/');
    let name = s.strip_prefix("live/").unwrap_or(s);
    valid_stream_name(name).then(|| format!("{APP}/{name}"))
}

/// The token path of a recording: `rec/<id>`, id of `[A-Za-z0-9_-]` (1–96).
pub fn recording_path(id: &str) -> Option<String> {
    valid_recording_id(id).then(|| format!("rec/{id}"))
}

pub fn valid_recording_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 96
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_paths() {
        assert_eq!(stream_path("live/stream").as_deref(), Some("live/stream"));
        assert_eq!(stream_path("/live/a-b_1").as_deref(), Some("live/a-b_1"));
        assert_eq!(stream_path("class1").as_deref(), Some("live/class1"));
        assert_eq!(stream_path("live/../x"), None);
        assert_eq!(stream_path(""), None);
        assert_eq!(stream_path("live/a b"), None);
    }
}
