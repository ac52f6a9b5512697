//! Certificates that come and renew by themselves: an ACME client (RFC 8555) answering HTTP-01
//! challenges on the node's plain HTTP port, as Caddy does.
//!
//! instant-acme does the protocol (account, order, JWS, polling); this module decides when to
//! order, keeps the account key and the certificate 0600 under `ACME_DIR`, and installs each new
//! certificate in the node's [`CertStore`] for the next connection. HTTP-01 was chosen over
//! TLS-ALPN-01 because the plain port already exists on every node (it redirects to HTTPS and
//! answers `/health`), so the challenge needs no special handshake path in the TLS listener.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use parking_lot::RwLock;

use crate::tls::CertStore;

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// Names (or IP addresses) the certificate is for; the first names the files.
    pub domains: Vec<String>,
    pub email: Option<String>,
    pub directory_url: String,
    /// A CA to trust for the ACME server's own HTTPS (a school's step-ca, a test's pebble),
    /// instead of the system's roots.
    pub directory_ca: Option<PathBuf>,
    /// Account key and certificates, 0600.
    pub dir: PathBuf,
    /// Renew when less than this is left, or a third of the certificate's lifetime, whichever
    /// comes first.
    pub renew_before: Duration,
    /// Wait after a failed order before the next try (doubled up to an hour).
    pub retry: Duration,
}

/// The HTTP-01 answers in flight: token → key authorization.
#[derive(Default)]
pub struct Http01 {
    answers: RwLock<HashMap<String, String>>,
}

impl Http01 {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// `/.well-known/acme-challenge/{token}`, merged into a node's router.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/acme-challenge/{token}", get(answer))
            .with_state(self.clone())
    }
}

async fn answer(State(h): State<Arc<Http01>>, Path(token): Path<String>) -> impl IntoResponse {
    match h.answers.read().get(&token) {
        Some(k) => (StatusCode::OK, k.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no such challenge").into_response(),
    }
}

/// Installs the stored certificate when it is still good, then orders and renews for ever.
pub async fn run(cfg: AcmeConfig, store: Arc<CertStore>, http01: Arc<Http01>) {
    let files = Files::new(&cfg);
    match files.load() {
        Ok(Some(k)) => {
            store.install(k);
            crate::tls::log_installed(&store, &files.cert.display().to_string());
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "stored ACME certificate unreadable; ordering a new one")
        }
    }
    let mut backoff = cfg.retry;
    loop {
        if let Some(wait) = time_to_renew(&store, cfg.renew_before) {
            tracing::debug!(in_ = ?wait, "next ACME renewal");
            // Checked at least hourly: a clock jump or a suspended VM does not miss the window.
            tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
            if time_to_renew(&store, cfg.renew_before).is_some() {
                continue;
            }
        }
        match order(&cfg, &files, &http01).await {
            Ok(k) => {
                store.install(k);
                crate::tls::log_installed(&store, &format!("ACME {}", cfg.directory_url));
                backoff = cfg.retry;
                // A `renew_before` longer than the CA's lifetimes makes every certificate due at
                // once: at most one order per retry interval, never a loop.
                tokio::time::sleep(cfg.retry).await;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, domains = ?cfg.domains, "ACME order failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(3600));
            }
        }
    }
}

/// How long until the installed certificate should be renewed; `None` when it is due now (or
/// there is none). A certificate is renewed when `renew_before` or a third of its lifetime is
/// left, whichever is more.
fn time_to_renew(store: &CertStore, renew_before: Duration) -> Option<Duration> {
    let cert = store.current()?;
    let (from, until) = crate::tls::validity(cert.cert.first()?)?;
    let lifetime = until.duration_since(from).ok()?;
    let margin = renew_before.max(lifetime / 3);
    let renew_at = until.checked_sub(margin).unwrap_or(from);
    renew_at.duration_since(SystemTime::now()).ok()
}

struct Files {
    account: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(cfg: &AcmeConfig) -> Self {
        let stem: String = cfg
            .domains
            .first()
            .map(String::as_str)
            .unwrap_or("node")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            account: cfg.dir.join("account.json"),
            cert: cfg.dir.join(format!("{stem}.crt.pem")),
            key: cfg.dir.join(format!("{stem}.key.pem")),
        }
    }

    fn load(&self) -> anyhow::Result<Option<rustls::sign::CertifiedKey>> {
        let (Ok(c), Ok(k)) = (std::fs::read(&self.cert), std::fs::read(&self.key)) else {
            return Ok(None);
        };
        Ok(Some(crate::tls::certified_key(&c, &k)?))
    }
}

/// Replaces `path` with `contents`, 0600, by rename: a crash never leaves half a key.
fn write_private_atomic(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    crate::secret::write_private(&tmp, contents)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

async fn account(cfg: &AcmeConfig, files: &Files) -> anyhow::Result<Account> {
    let builder = || match &cfg.directory_ca {
        Some(ca) => Account::builder_with_root(ca).context("ACME_CA_FILE"),
        None => Account::builder().context("the system's root certificates"),
    };
    if let Ok(json) = std::fs::read_to_string(&files.account) {
        let creds: AccountCredentials =
            serde_json::from_str(&json).with_context(|| format!("{}", files.account.display()))?;
        return Ok(builder()?.from_credentials(creds).await?);
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory_url.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an account at {}", cfg.directory_url))?;
    std::fs::create_dir_all(&cfg.dir).with_context(|| format!("{}", cfg.dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg.dir, std::fs::Permissions::from_mode(0o700))?;
    }
    write_private_atomic(&files.account, &serde_json::to_string(&creds)?)?;
    tracing::info!(directory = %cfg.directory_url, "ACME account created");
    Ok(account)
}

/// One order, from account to installed files.
async fn order(
    cfg: &AcmeConfig,
    files: &Files,
    http01: &Http01,
) -> anyhow::Result<rustls::sign::CertifiedKey> {
    let account = account(cfg, files).await?;
    let ids: Vec<Identifier> = cfg
        .domains
        .iter()
        .map(|d| match d.parse::<IpAddr>() {
            Ok(ip) => Identifier::Ip(ip),
            Err(_) => Identifier::Dns(d.clone()),
        })
        .collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut tokens = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let mut a = a?;
        match a.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            s => anyhow::bail!("authorization is {s:?}"),
        }
        let mut ch = a
            .challenge(ChallengeType::Http01)
            .context("the ACME server offers no HTTP-01 challenge")?;
        let key_auth = ch.key_authorization().as_str().to_string();
        http01.answers.write().insert(ch.token.clone(), key_auth);
        tokens.push(ch.token.clone());
        ch.set_ready().await?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&retry).await;
    for t in &tokens {
        http01.answers.write().remove(t);
    }
    let status = status?;
    anyhow::ensure!(
        status == OrderStatus::Ready,
        "order is {status:?}, not ready"
    );
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&retry).await?;
    let key = crate::tls::certified_key(chain_pem.as_bytes(), key_pem.as_bytes())?;
    write_private_atomic(&files.key, &key_pem)?;
    write_private_atomic(&files.cert, &chain_pem)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// A store holding a certificate valid from `ago` before now until `left` after now.
    fn store_with(ago: Duration, left: Duration) -> CertStore {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["node.test".into()]).unwrap();
        let now = SystemTime::now();
        p.not_before = (now - ago).into();
        p.not_after = (now + left).into();
        let cert = p.self_signed(&key).unwrap();
        let store = CertStore::default();
        store.install(
            crate::tls::certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
                .unwrap(),
        );
        store
    }

    fn days(d: Option<Duration>) -> Option<u64> {
        d.map(|d| (d.as_secs() + 43_200) / 86_400)
    }

    #[test]
    fn renews_when_a_third_of_the_lifetime_or_renew_before_is_left() {
        // 90 days of life, 10 gone: a third (30 days) before the end, more than a 10-day
        // renew_before, is 50 days away.
        let s = store_with(10 * DAY, 80 * DAY);
        assert_eq!(days(time_to_renew(&s, 10 * DAY)), Some(50));
        // A longer renew_before wins over the third.
        assert_eq!(days(time_to_renew(&s, 60 * DAY)), Some(20));
        // Inside the window: due now.
        let s = store_with(70 * DAY, 20 * DAY);
        assert_eq!(time_to_renew(&s, 30 * DAY), None);
        // No certificate yet: due now.
        assert_eq!(time_to_renew(&CertStore::default(), 30 * DAY), None);
    }
}
