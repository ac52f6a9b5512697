//! Mints the tokens that bind a viewer (or a teacher's publisher) to one slave and one stream.

use std::time::Duration;

use common::token::{Action, Claims, Role, SigningKey, new_claims};

pub struct TokenIssuer {
    key: SigningKey,
    pub issuer: String,
    pub read_ttl: Duration,
    pub publish_ttl: Duration,
}

impl TokenIssuer {
    pub fn new(key: SigningKey, issuer: String, read_ttl: Duration, publish_ttl: Duration) -> Self {
        Self {
            key,
            issuer,
            read_ttl,
            publish_ttl,
        }
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
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
}
