//! Viewer and publisher tokens: Ed25519-signed JWTs. Only the master holds the private key; a
//! slave holds the public key and so can check but never mint.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use dashmap::DashMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Student,
    Teacher,
    Monitor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Teacher => "teacher",
            Role::Monitor => "monitor",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Publish,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub role: Role,
    pub node_id: String,
    /// Stream path, `live/<name>`.
    pub path: String,
    pub action: Action,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    /// Publish tokens: whether the origin records this class (absent: the slave's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rec: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub kid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// The master's signing key. Persisted as a PKCS#8 PEM file so that a restarted master (or a
/// second master sharing the file) keeps every issued token valid.
pub struct SigningKey {
    /// Parsed once: `jsonwebtoken::encode` would parse the PKCS#8 key again for every token,
    /// which derives the public key (a scalar multiplication as costly as the signature).
    pair: Ed25519KeyPair,
    public: Vec<u8>,
    /// `base64url({"alg":"EdDSA","typ":"JWT","kid":…})`, the same for every token.
    header_b64: String,
}

const PEM_LABEL: &str = "PRIVATE KEY";

impl SigningKey {
    pub fn generate() -> anyhow::Result<(Self, Vec<u8>)> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("Ed25519 key generation failed"))?;
        let der = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(&der)?, der))
    }

    pub fn from_pkcs8(der: &[u8]) -> anyhow::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = kid_of(&public);
        let header = serde_json::json!({"typ": "JWT", "alg": "EdDSA", "kid": kid});
        Ok(Self {
            pair,
            public,
            header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
        })
    }

    /// Loads the key at `path`, which must exist (a previous key kept for verification only).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::from_pkcs8(&pem_decode(&pem)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Loads the key at `path`, or generates one and saves it there (mode 0600) if the file does
    /// not exist yet.
    pub fn load_or_generate(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(pem) => Self::from_pkcs8(&pem_decode(&pem)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, der) = Self::generate()?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                crate::secret::write_private(path, &pem_encode(&der))?;
                tracing::info!(path = %path.display(), "generated a new JWT signing key");
                Ok(key)
            }
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Base64url raw public key: the JWK `x`.
    pub fn public_x(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.public)
    }

    /// Key id: a short digest of the public key, so verifiers can tell keys apart.
    pub fn kid(&self) -> String {
        kid_of(&self.public)
    }

    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: self.public_x(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
            kid: self.kid(),
        }
    }

    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: vec![self.jwk()],
        }
    }

    /// A compact JWS (RFC 7515) over the claims, signed with Ed25519 (RFC 8037): exactly what
    /// `jsonwebtoken::encode` produces, without re-parsing the key per token.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let payload = serde_json::to_vec(claims)?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let sig = self.pair.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut token);
        Ok(token)
    }
}

fn kid_of(public: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(public)[..8])
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {PEM_LABEL}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    out
}

fn pem_decode(pem: &str) -> anyhow::Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    Ok(STANDARD.decode(body)?)
}

/// Why a token was refused. `Invalid` maps to 401, the binding errors to 403.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("token is bound to node {0}, not this one")]
    WrongNode(String),
    #[error("token is for stream {0}, not this one")]
    WrongStream(String),
    #[error("token does not allow {0:?}")]
    WrongAction(Action),
}

impl TokenError {
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            TokenError::Missing | TokenError::Invalid(_) | TokenError::Expired => {
                StatusCode::UNAUTHORIZED
            }
            _ => StatusCode::FORBIDDEN,
        }
    }
}

impl From<TokenError> for crate::ApiError {
    fn from(e: TokenError) -> Self {
        let code = match &e {
            TokenError::Missing => "token_missing",
            TokenError::Invalid(_) => "token_invalid",
            TokenError::Expired => "token_expired",
            TokenError::WrongNode(_) => "token_wrong_node",
            TokenError::WrongStream(_) => "token_wrong_stream",
            TokenError::WrongAction(_) => "token_wrong_action",
        };
        crate::ApiError::new(e.status(), code, e.to_string())
    }
}

/// Checks tokens against the master's public key, caching each verified token until it expires
/// so that a viewer's tenth request per second costs a hash lookup, not an Ed25519 verification.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    /// By `kid`: every key the masters publish (during a rotation, the new and the previous).
    keys: Vec<(String, DecodingKey)>,
    validation: Validation,
    cache: DashMap<Box<str>, Arc<Claims>>,
    max_cached: usize,
}

impl TokenVerifier {
    /// `x` is the base64url Ed25519 public key (JWK `x`).
    pub fn from_public_x(x: &str, issuer: &str) -> anyhow::Result<Self> {
        let raw = URL_SAFE_NO_PAD.decode(x)?;
        Self::from_keys(
            &[Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: x.into(),
                alg: "EdDSA".into(),
                use_: "sig".into(),
                kid: kid_of(&raw),
            }],
            issuer,
        )
    }

    /// A verifier accepting a token signed by any of `keys` (chosen by the token's `kid`).
    pub fn from_keys(keys: &[Jwk], issuer: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(!keys.is_empty(), "no verification key");
        let mut decoding = Vec::with_capacity(keys.len());
        for k in keys {
            anyhow::ensure!(
                k.kty == "OKP" && k.crv == "Ed25519",
                "key {} is not an Ed25519 key",
                k.kid
            );
            let raw = URL_SAFE_NO_PAD.decode(&k.x)?;
            anyhow::ensure!(
                raw.len() == 32,
                "an Ed25519 public key is 32 bytes, got {}",
                raw.len()
            );
            decoding.push((k.kid.clone(), DecodingKey::from_ed_components(&k.x)?));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.leeway = 0;
        Ok(Self {
            inner: Arc::new(VerifierInner {
                keys: decoding,
                validation,
                cache: DashMap::new(),
                max_cached: 200_000,
            }),
        })
    }

    /// The key a token names. A token without `kid` is tried with the only key, if there is one.
    fn key_for(&self, token: &str) -> Result<&DecodingKey, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let keys = &self.inner.keys;
        match header.kid {
            Some(kid) => keys
                .iter()
                .find(|(k, _)| *k == kid)
                .map(|(_, key)| key)
                .ok_or_else(|| TokenError::Invalid(format!("unknown signing key {kid}"))),
            None if keys.len() == 1 => Ok(&keys[0].1),
            None => Err(TokenError::Invalid("token names no signing key".into())),
        }
    }

    /// Verifies signature, algorithm, issuer and expiry; the bindings (node, stream, action)
    /// are the caller's to check with [`Claims`] or [`TokenVerifier::authorize`].
    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let now = crate::now_unix();
        if let Some(c) = self.inner.cache.get(token) {
            if c.exp > now {
                return Ok(c.clone());
            }
            drop(c);
            self.inner.cache.remove(token);
            return Err(TokenError::Expired);
        }
        if token.len() > 4096 {
            return Err(TokenError::Invalid("token too long".into()));
        }
        let key = self.key_for(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.inner.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            },
        )?;
        let claims = Arc::new(data.claims);
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if self.inner.cache.len() >= self.inner.max_cached {
            self.purge_expired();
            if self.inner.cache.len() >= self.inner.max_cached {
                // Still full of live tokens: shed the cache rather than grow without bound.
                self.inner.cache.clear();
            }
        }
        self.inner.cache.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// Full check for a request on this node: valid, bound to `node_id`, to `path`, and
    /// allowing `action` (a publish token also allows reading, for the teacher's preview).
    pub fn authorize(
        &self,
        token: Option<&str>,
        node_id: &str,
        path: &str,
        action: Action,
    ) -> Result<Arc<Claims>, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let claims = self.verify(token)?;
        if claims.node_id != node_id {
            return Err(TokenError::WrongNode(claims.node_id.clone()));
        }
        if claims.path != path {
            return Err(TokenError::WrongStream(claims.path.clone()));
        }
        if action == Action::Publish && claims.action != Action::Publish {
            return Err(TokenError::WrongAction(action));
        }
        Ok(claims)
    }

    pub fn purge_expired(&self) {
        let now = crate::now_unix();
        self.inner.cache.retain(|_, c| c.exp > now);
    }

    pub fn cached(&self) -> usize {
        self.inner.cache.len()
    }
}

/// Builds claims with a fresh `jti`.
pub fn new_claims(
    issuer: &str,
    user_id: &str,
    role: Role,
    node_id: &str,
    path: &str,
    action: Action,
    ttl: Duration,
) -> Claims {
    let iat = crate::now_unix();
    Claims {
        iss: issuer.to_string(),
        sub: user_id.to_string(),
        role,
        node_id: node_id.to_string(),
        path: path.to_string(),
        action,
        iat,
        exp: iat + ttl.as_secs().max(1),
        jti: uuid::Uuid::new_v4().simple().to_string(),
        rec: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(ttl: u64) -> Claims {
        new_claims(
            "classcast",
            "u1",
            Role::Student,
            "n1",
            "live/stream",
            Action::Read,
            Duration::from_secs(ttl),
        )
    }

    #[test]
    fn sign_verify_and_bindings() {
        let (key, _) = SigningKey::generate().unwrap();
        let v = TokenVerifier::from_public_x(&key.public_x(), "classcast").unwrap();
        let t = key.sign(&claims(60)).unwrap();
        let c = v
            .authorize(Some(&t), "n1", "live/stream", Action::Read)
            .unwrap();
        assert_eq!(c.node_id, "n1");
        assert_eq!(v.cached(), 1);
        // Second verification comes from the cache and gives the same claims.
        assert_eq!(*v.verify(&t).unwrap(), *c);
        assert!(matches!(
            v.authorize(Some(&t), "n2", "live/stream", Action::Read),
            Err(TokenError::WrongNode(_))
        ));
        assert!(matches!(
            v.authorize(Some(&t), "n1", "live/other", Action::Read),
            Err(TokenError::WrongStream(_))
        ));
        assert!(matches!(
            v.authorize(Some(&t), "n1", "live/stream", Action::Publish),
            Err(TokenError::WrongAction(_))
        ));
        assert_eq!(
            v.authorize(None, "n1", "live/stream", Action::Read),
            Err(TokenError::Missing)
        );
    }

    #[test]
    fn manual_signature_is_a_standard_jwt() {
        let (key, der) = SigningKey::generate().unwrap();
        let c = claims(60);
        let ours = key.sign(&c).unwrap();
        // jsonwebtoken decodes our token, and a token it makes with the same key verifies here.
        let mut header = jsonwebtoken::Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid());
        let theirs =
            jsonwebtoken::encode(&header, &c, &jsonwebtoken::EncodingKey::from_ed_der(&der))
                .unwrap();
        let dk = DecodingKey::from_ed_components(&key.public_x()).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&["classcast"]);
        let d = jsonwebtoken::decode::<Claims>(&ours, &dk, &v).unwrap();
        assert_eq!(d.claims, c);
        assert_eq!(d.header.kid.as_deref(), Some(key.kid().as_str()));
        let verifier = TokenVerifier::from_public_x(&key.public_x(), "classcast").unwrap();
        assert!(verifier.verify(&theirs).is_ok());
        assert!(verifier.verify(&ours).is_ok());
    }

    #[test]
    fn wrong_key_expired_and_forged() {
        let (key, _) = SigningKey::generate().unwrap();
        let (other, _) = SigningKey::generate().unwrap();
        let v = TokenVerifier::from_public_x(&key.public_x(), "classcast").unwrap();
        let forged = other.sign(&claims(60)).unwrap();
        assert!(matches!(v.verify(&forged), Err(TokenError::Invalid(_))));
        let mut c = claims(60);
        c.exp = crate::now_unix() - 1;
        let expired = key.sign(&c).unwrap();
        assert_eq!(v.verify(&expired), Err(TokenError::Expired));
        // alg=none: header {"alg":"none"} with the same payload and no signature.
        let good = key.sign(&claims(60)).unwrap();
        let payload = good.split('.').nth(1).unwrap();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            payload
        );
        assert!(matches!(v.verify(&none), Err(TokenError::Invalid(_))));
        // HS256 signed with the public key as the HMAC secret.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims(60),
            &jsonwebtoken::EncodingKey::from_secret(key.public_x().as_bytes()),
        )
        .unwrap();
        assert!(matches!(v.verify(&hs), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn rotation_accepts_both_keys_by_kid_and_drops_the_old_one() {
        let (old, _) = SigningKey::generate().unwrap();
        let (new, _) = SigningKey::generate().unwrap();
        let t_old = old.sign(&claims(60)).unwrap();
        let t_new = new.sign(&claims(60)).unwrap();
        let overlap = TokenVerifier::from_keys(&[new.jwk(), old.jwk()], "classcast").unwrap();
        assert!(overlap.verify(&t_old).is_ok());
        assert!(overlap.verify(&t_new).is_ok());
        let after = TokenVerifier::from_keys(&[new.jwk()], "classcast").unwrap();
        assert!(after.verify(&t_new).is_ok());
        assert_eq!(
            after.verify(&t_old),
            Err(TokenError::Invalid(format!(
                "unknown signing key {}",
                old.kid()
            )))
        );
        // A key published under another key's kid does not verify that key's tokens.
        let mut lying = old.jwk();
        lying.kid = new.kid();
        let v = TokenVerifier::from_keys(&[lying], "classcast").unwrap();
        assert!(matches!(v.verify(&t_new), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn key_file_round_trip() {
        let dir = std::env::temp_dir().join(format!("cc-key-{}", uuid::Uuid::new_v4()));
        let path = dir.join("jwt.pem");
        let a = SigningKey::load_or_generate(&path).unwrap();
        let b = SigningKey::load_or_generate(&path).unwrap();
        assert_eq!(a.public_x(), b.public_x());
        let t = a.sign(&claims(60)).unwrap();
        let v = TokenVerifier::from_public_x(&b.public_x(), "classcast").unwrap();
        assert!(v.verify(&t).is_ok());
        std::fs::remove_dir_all(dir).ok();
    }
}
