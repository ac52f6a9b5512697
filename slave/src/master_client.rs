//! Every call a slave makes to its master, typed: register, heartbeat, announce, unregister,
//! and the origin lookup an edge makes for a viewer who arrived before the mirror order.

use std::time::Duration;

use common::api::{
    Heartbeat, MirrorOrder, RegisterRequest, RegisterResponse, StreamAnnounce, UnregisterRequest,
    paths,
};
use common::secret::ClusterSecret;

/// Why a heartbeat did not land.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The master does not know this node (it restarted): register again.
    #[error("the master does not know this node")]
    UnknownNode,
    #[error("the master answered {0}")]
    Refused(reqwest::StatusCode),
    #[error("heartbeat failed: {0}")]
    Failed(#[from] reqwest::Error),
}

/// Every master this slave reports to. Each gets the same calls independently, so one master
/// down never delays the others; any one of them can then mint tokens this slave accepts
/// (they share one signing key). The set changes when a `dns+` entry of `MASTER_URL` resolves
/// to other addresses (master pods behind a headless Service, see [`crate::discovery`]).
#[derive(Clone)]
pub struct Masters {
    current: std::sync::Arc<parking_lot::RwLock<Vec<MasterClient>>>,
    secret: ClusterSecret,
    node_id: String,
    http: reqwest::Client,
}

impl Masters {
    pub fn new(secret: &ClusterSecret, node_id: &str, http: reqwest::Client) -> Self {
        Self {
            current: Default::default(),
            secret: secret.clone(),
            node_id: node_id.to_string(),
            http,
        }
    }

    /// Adds the master at `url` (a no-op if it is known) and returns its client.
    pub fn add(&self, url: &str) -> MasterClient {
        let client = MasterClient::new(url, &self.secret, &self.node_id, self.http.clone());
        let mut all = self.current.write();
        if !all.iter().any(|m| m.base == client.base) {
            all.push(client.clone());
        }
        client
    }

    pub fn remove(&self, url: &str) {
        self.current.write().retain(|m| m.base != url);
    }

    pub fn all(&self) -> Vec<MasterClient> {
        self.current.read().clone()
    }

    /// Tells every master (see [`MasterClient::announce`]).
    pub fn announce(&self, path: &str, live: bool) {
        for m in self.all() {
            m.announce(path, live);
        }
    }

    pub async fn unregister(&self) {
        futures::future::join_all(self.all().iter().map(|m| m.unregister())).await;
    }

    /// Which node holds recording `id`, from the first master that knows.
    pub async fn recording_origin(&self, id: &str) -> Option<common::api::RecordingOrigin> {
        for m in self.all() {
            if let Some(o) = m.recording_origin(id).await {
                return Some(o);
            }
        }
        None
    }

    /// Where the publisher of `path` should move while this node drains, from the first master
    /// that answers.
    pub async fn move_publisher(
        &self,
        path: &str,
        user: &str,
        rec: Option<bool>,
    ) -> Option<common::api::PublisherMove> {
        for m in self.all() {
            if let Some(o) = m.move_publisher(path, user, rec).await {
                return Some(o);
            }
        }
        None
    }

    /// Where `path` is live, from the first master that knows.
    pub async fn origin_of(&self, path: &str) -> Option<MirrorOrder> {
        for m in self.all() {
            if let Some(o) = m.origin_of(path).await {
                return Some(o);
            }
        }
        None
    }
}

#[derive(Clone)]
pub struct MasterClient {
    http: reqwest::Client,
    base: String,
    auth: String,
    node_id: String,
}

impl MasterClient {
    pub fn new(
        master_url: &str,
        secret: &ClusterSecret,
        node_id: &str,
        http: reqwest::Client,
    ) -> Self {
        Self {
            http,
            base: master_url.trim_end_matches('/').to_string(),
            auth: secret.bearer(),
            node_id: node_id.to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, &self.auth)
    }

    pub async fn register(&self, req: &RegisterRequest) -> anyhow::Result<RegisterResponse> {
        let resp = self
            .post(paths::REGISTER)
            .timeout(Duration::from_secs(5))
            .json(req)
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!("master answered {status}: {body}");
        }
        Ok(resp.json().await?)
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<(), HeartbeatError> {
        let r = self
            .post(paths::HEARTBEAT)
            .timeout(Duration::from_secs(5))
            .json(hb)
            .send()
            .await?;
        match r.status() {
            s if s.is_success() => Ok(()),
            reqwest::StatusCode::NOT_FOUND => Err(HeartbeatError::UnknownNode),
            s => Err(HeartbeatError::Refused(s)),
        }
    }

    /// Tells the master at once that a stream started or ended here (the heartbeat would be up
    /// to an interval late, and edges and routing wait on this), retrying in the background.
    pub fn announce(&self, path: &str, live: bool) {
        let client = self.clone();
        let body = StreamAnnounce {
            node_id: self.node_id.clone(),
            path: path.to_string(),
            live,
        };
        tokio::spawn(async move {
            for attempt in 0..5u32 {
                let res = client
                    .post(paths::ANNOUNCE)
                    .timeout(Duration::from_secs(5))
                    .json(&body)
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), path = %body.path, "stream announcement refused")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, path = %body.path, "stream announcement failed")
                    }
                }
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        });
    }

    /// Best effort, on graceful shutdown.
    pub async fn unregister(&self) {
        let body = UnregisterRequest {
            node_id: self.node_id.clone(),
        };
        match self
            .post(paths::UNREGISTER)
            .json(&body)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => tracing::info!("unregistered from the master"),
            Ok(r) => tracing::warn!(status = %r.status(), "unregister refused"),
            Err(e) => tracing::warn!(error = %e, "unregister failed"),
        }
    }

    /// Which node holds recording `id` (ids are URL-safe, checked by the callers).
    pub async fn recording_origin(&self, id: &str) -> Option<common::api::RecordingOrigin> {
        self.lookup(&format!("{}?id={id}", paths::RECORDING_ORIGIN))
            .await
    }

    /// Where `path` is live, if anywhere. Stream paths are `live/<name>` of URL-safe
    /// characters (checked by the callers).
    pub async fn origin_of(&self, path: &str) -> Option<MirrorOrder> {
        self.lookup(&format!("{}?path={path}", paths::ORIGIN)).await
    }

    pub async fn move_publisher(
        &self,
        path: &str,
        user: &str,
        rec: Option<bool>,
    ) -> Option<common::api::PublisherMove> {
        let body = common::api::MovePublisher {
            node_id: self.node_id.clone(),
            path: path.to_string(),
            user: user.to_string(),
            rec,
        };
        let req = self
            .http
            .post(format!("{}{}", self.base, paths::MOVE_PUBLISHER))
            .json(&body);
        self.answer(req).await
    }

    /// A directory question to the master (cluster secret); `None` when it does not know.
    async fn lookup<T: serde::de::DeserializeOwned>(&self, path_and_query: &str) -> Option<T> {
        let req = self.http.get(format!("{}{path_and_query}", self.base));
        self.answer(req).await
    }

    /// Sends `req` with the cluster secret; its JSON answer, `None` for anything but a 2xx.
    async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Option<T> {
        let resp = req
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }
}
