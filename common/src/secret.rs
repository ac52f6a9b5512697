//! The cluster secret: a shared bearer credential for every intra-cluster call (register,
//! heartbeat, stream announcements, edge → origin pulls).

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::ApiError;

/// Creates `path` holding `contents`, readable by its owner only (0600) from the first byte:
/// every secret the nodes write (the signing key, a generated cluster secret) goes through here.
/// Fails if the file exists.
pub fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Compares two credentials in time independent of where they differ.
pub fn credential_eq(a: &str, b: &str) -> bool {
    digests_eq(
        &Sha256::digest(a.as_bytes()).into(),
        &Sha256::digest(b.as_bytes()).into(),
    )
}

/// Constant-time comparison of two digests.
fn digests_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[derive(Clone)]
pub struct ClusterSecret {
    /// Kept as a digest so comparisons are constant-time in the secret's length and the secret
    /// itself never sits in a `Debug` output.
    digest: [u8; 32],
    raw: std::sync::Arc<str>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// A secret shorter than this is refused at start: it could be guessed online.
pub const MIN_SECRET_LEN: usize = 16;

impl ClusterSecret {
    pub fn new(raw: &str) -> anyhow::Result<Self> {
        if raw.len() < MIN_SECRET_LEN {
            anyhow::bail!("the cluster secret must be at least {MIN_SECRET_LEN} characters");
        }
        Ok(Self {
            digest: Sha256::digest(raw.as_bytes()).into(),
            raw: raw.into(),
        })
    }

    /// Generates a random secret, for `classcast up` and the insecure dev mode.
    pub fn generate() -> Self {
        let bytes: [u8; 24] = rand::random();
        Self::new(&hex::encode(bytes)).expect("48 hex chars is long enough")
    }

    pub fn expose(&self) -> &str {
        &self.raw
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.raw)
    }

    pub fn matches(&self, candidate: &str) -> bool {
        digests_eq(&Sha256::digest(candidate.as_bytes()).into(), &self.digest)
    }

    /// Checks `Authorization: Bearer <secret>`; 401 otherwise.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing cluster secret (Authorization: Bearer …)",
            ));
        };
        let value = value.to_str().unwrap_or("");
        let token = value.strip_prefix("Bearer ").unwrap_or("");
        if self.matches(token) {
            Ok(())
        } else {
            Err(ApiError::unauthorized("wrong cluster secret"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn secret_checks() {
        assert!(ClusterSecret::new("short").is_err());
        let s = ClusterSecret::new("0123456789abcdef-secret").unwrap();
        assert!(s.matches("0123456789abcdef-secret"));
        assert!(!s.matches("0123456789abcdef-secreT"));
        let mut h = HeaderMap::new();
        assert!(s.check(&h).is_err());
        h.insert("authorization", "Bearer nope".parse().unwrap());
        assert!(s.check(&h).is_err());
        h.insert("authorization", s.bearer().parse().unwrap());
        assert!(s.check(&h).is_ok());
        assert!(!format!("{s:?}").contains("secret"));
    }
}
