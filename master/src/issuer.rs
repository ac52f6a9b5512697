//! Mints the tokens that bind a viewer (or a teacher's publisher) to one slave and one stream.

use std::time::Duration;

use common::token::{Action, Claims, Role, SigningKey, new_claims};

pub struct TokenIssuer {
    key: SigningKey,
    /// Keys that no longer sign but are still published, so tokens they signed stay valid on
    /// every slave until they expire (a key rotation's overlap).
    previous: Vec<SigningKey>,
    pub issuer: String,
    pub read_ttl: Duration,
    pub publish_ttl: Duration,
}

impl TokenIssuer {
    pub fn new(key: SigningKey, issuer: String, read_ttl: Duration, publish_ttl: Duration) -> Self {
        Self {
            key,
            previous: Vec::new(),
            issuer,
            read_ttl,
            publish_ttl,
        }
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Publishes `previous` next to the signing key, for verification only.
    pub fn with_previous(mut self, previous: Vec<SigningKey>) -> Self {
        let current = self.key.kid();
        self.previous = previous
            .into_iter()
            .filter(|k| k.kid() != current)
            .collect();
        self
    }

    /// Every key a slave must accept: the signing key first, then the previous ones.
    pub fn jwks(&self) -> common::token::Jwks {
        common::token::Jwks {
            keys: std::iter::once(&self.key)
                .chain(&self.previous)
                .map(SigningKey::jwk)
                .collect(),
        }
    }

    pub fn issue(
        &self,
        user_id: &str,
        role: Role,
        node_id: &str,
        path: &str,
        action: Action,
    ) -> anyhow::Result<(String, Claims)> {
        let ttl = match action {
            Action::Read => self.read_ttl,
            Action::Publish => self.publish_ttl,
        };
        let claims = new_claims(&self.issuer, user_id, role, node_id, path, action, ttl);
        let token = self.key.sign(&claims)?;
        Ok((token, claims))
    }

    /// A stream key that also says whether the origin records the class (`None`: the slave's
    /// default).
    pub fn issue_publish(
        &self,
        user_id: &str,
        node_id: &str,
        path: &str,
        record: Option<bool>,
    ) -> anyhow::Result<String> {
        let mut claims = new_claims(
            &self.issuer,
            user_id,
            Role::Teacher,
            node_id,
            path,
            Action::Publish,
            self.publish_ttl,
        );
        claims.rec = record;
        self.key.sign(&claims)
    }
}
