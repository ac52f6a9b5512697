//! TLS for every listener a node has (HTTPS with HTTP/2, RTMPS) and for the calls nodes make
//! to one another. rustls with the aws-lc-rs provider, the crypto the tokens already use.
//!
//! One [`CertStore`] per node holds the certificate it serves now. Every handshake asks the
//! store, so a certificate replaced (files rewritten, an ACME renewal) is served to the next
//! connection, and connections already open keep theirs: nothing restarts, nothing drops.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use tokio_rustls::TlsAcceptor;

/// ALPN of the HTTPS port: HTTP/2 first, as browsers and Apple's LL-HLS players expect.
pub const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The certificate a node serves now.
#[derive(Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// Certificates installed since start (the first one included), for metrics and tests.
    pub installed: AtomicU64,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("installed", &self.installed.load(Ordering::Relaxed))
            .finish()
    }
}

impl CertStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn install(&self, key: CertifiedKey) {
        *self.current.write() = Some(Arc::new(key));
        self.installed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().clone()
    }

    /// The leaf certificate's notAfter, when a certificate is installed.
    pub fn not_after(&self) -> Option<SystemTime> {
        not_after(self.current()?.cert.first()?)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Before the first certificate arrives (ACME still ordering) the handshake fails, which
        // a client reports as a TLS error: better than serving one that is not ours.
        self.current()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate chain and its key from PEM: the chain's first certificate is the leaf, the key
/// PKCS#8, PKCS#1 or SEC1. Refused when the key does not match the leaf.
pub fn certified_key(chain_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .context("reading the certificate PEM")?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in the PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("reading the private key PEM")?;
    let ck = CertifiedKey::from_der(chain, key, &provider())
        .context("the private key does not match the certificate, or its type is unsupported")?;
    Ok(ck)
}

/// A certificate and key kept in two files (`TLS_CERT_FILE`, `TLS_KEY_FILE`).
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

type Stamp = [(Option<SystemTime>, u64); 2];

impl CertFiles {
    fn stamp(&self) -> Stamp {
        let one = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| (m.modified().ok(), m.len()))
                .unwrap_or((None, 0))
        };
        [one(&self.cert), one(&self.key)]
    }

    pub fn load(&self) -> anyhow::Result<CertifiedKey> {
        let chain = std::fs::read(&self.cert)
            .with_context(|| format!("TLS_CERT_FILE {}", self.cert.display()))?;
        let key = std::fs::read(&self.key)
            .with_context(|| format!("TLS_KEY_FILE {}", self.key.display()))?;
        certified_key(&chain, &key)
            .with_context(|| format!("{} with {}", self.cert.display(), self.key.display()))
    }

    /// Loads the files into `store` now (an error here stops the node from starting), then
    /// checks them every `every` and installs them again when either changed. A pair that does
    /// not load (half written, key and certificate out of step while an operator copies them)
    /// is logged and the certificate served so far stays.
    pub fn load_and_watch(
        self,
        store: Arc<CertStore>,
        every: Duration,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let mut seen = self.stamp();
        store.install(self.load()?);
        log_installed(&store, &self.cert.display().to_string());
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(50)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = self.stamp();
                if now == seen {
                    continue;
                }
                match self.load() {
                    Ok(k) => {
                        seen = now;
                        store.install(k);
                        log_installed(&store, &self.cert.display().to_string());
                    }
                    // Not marked seen: the next tick tries again, when the copy is complete.
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "TLS files changed but do not load; still serving the previous certificate")
                    }
                }
            }
        }))
    }
}

pub fn log_installed(store: &CertStore, from: &str) {
    let left = store
        .not_after()
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .map(|d| format!("{:.1} days", d.as_secs_f64() / 86_400.0))
        .unwrap_or_else(|| "unknown".into());
    tracing::info!(from, valid_for = %left, "TLS certificate installed; new connections get it");
}

/// A TLS acceptor serving `store`'s certificate, offering `alpn` (empty for RTMPS).
pub fn acceptor(store: Arc<CertStore>, alpn: &[&[u8]]) -> anyhow::Result<TlsAcceptor> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// The certificates of a CA file (`TLS_CA_FILE`), for clients to trust beside the system's.
pub fn ca_certificates(file: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(file).with_context(|| format!("TLS_CA_FILE {}", file.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("TLS_CA_FILE {}: not PEM certificates", file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "TLS_CA_FILE {}: no certificate",
        file.display()
    );
    Ok(certs)
}

/// A client for calls to other nodes: the system's roots plus `ca` (a school's own CA), set up
/// by `configure`. A machine without any root certificates (a minimal container) still gets a
/// client, trusting `ca` only, with a warning: plain HTTP calls must keep working there.
pub fn client(
    ca: &[reqwest::Certificate],
    configure: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> anyhow::Result<reqwest::Client> {
    let with_system = if ca.is_empty() {
        reqwest::Client::builder()
    } else {
        reqwest::Client::builder().tls_certs_merge(ca.iter().cloned())
    };
    match configure(with_system).build() {
        Ok(c) => Ok(c),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the system's CA certificates could not be loaded; HTTPS calls to other nodes trust TLS_CA_FILE only");
            let only = reqwest::Client::builder().tls_certs_only(ca.iter().cloned());
            Ok(configure(only).build()?)
        }
    }
}

/// notAfter of an X.509 certificate.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    validity(cert).map(|(_, until)| until)
}

/// (notBefore, notAfter) of an X.509 certificate, read from its DER without a full parser: the
/// fields before `validity` are walked by their lengths.
pub fn validity(cert: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serial INTEGER,
    //   signature AlgorithmIdentifier, issuer Name, validity SEQUENCE { notBefore, notAfter } … } }
    let (_, cert_body, _) = der_item(cert.as_ref())?;
    let (_, mut tbs, _) = der_item(cert_body)?;
    let (tag, _, rest) = der_item(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..3 {
        tbs = der_item(tbs)?.2; // serial, signature, issuer
    }
    let (_, validity, _) = der_item(tbs)?;
    let (tag, from, after) = der_item(validity)?;
    let from = parse_der_time(tag, from)?;
    let (tag, until, _) = der_item(after)?;
    Some((from, parse_der_time(tag, until)?))
}

/// (tag, contents, rest) of the DER item at the start of `b`.
fn der_item(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let body = b.get(head..head.checked_add(len)?)?;
    Some((tag, body, &b[head + len..]))
}

fn parse_der_time(tag: u8, t: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(t).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let y: i64 = s.get(..2)?.parse().ok()?;
            (if y < 50 { 2000 + y } else { 1900 + y }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let n = |r: std::ops::Range<usize>| rest.get(r)?.parse::<i64>().ok();
    let (mo, d, h, mi, se) = (n(0..2)?, n(2..4)?, n(4..6)?, n(6..8)?, n(8..10)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_times() {
        let t = parse_der_time(0x17, b"300101000000Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_893_456_000
        );
        let t = parse_der_time(0x18, b"20240229120000Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_709_208_000
        );
        assert!(parse_der_time(0x17, b"garbage").is_none());
    }

    #[test]
    fn der_items_out_of_bounds_are_none() {
        assert!(der_item(&[0x30, 0x05, 1, 2]).is_none());
        assert!(der_item(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(not_after(&CertificateDer::from(vec![0x30, 0x03, 0x30, 0x01, 0x02])).is_none());
    }
}

#[cfg(test)]
mod rcgen_tests {
    use super::*;

    #[test]
    fn a_generated_pair_loads_and_its_expiry_is_read() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["node.test".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let cert = params.self_signed(&key).unwrap();
        let ck = certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        let store = CertStore::new();
        store.install(ck);
        let secs = store
            .not_after()
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(secs, 1_936_742_400);
        // Another key than the certificate's is refused.
        let other = rcgen::KeyPair::generate().unwrap();
        assert!(certified_key(cert.pem().as_bytes(), other.serialize_pem().as_bytes()).is_err());
    }
}
