//! Which masters this slave reports to. A plain `MASTER_URL` entry is one master for the
//! slave's whole life. A `dns+http://name:port` entry stands for every address `name` resolves
//! to, resolved again every heartbeat interval: on Kubernetes the masters are a Deployment
//! whose pods come and go, a headless Service names them all, and each must hear from every
//! slave (each master holds the whole registry on its own).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::AbortHandle;

use crate::agent::Agent;
use crate::ctx::SlaveCtx;

/// One `MASTER_URL` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterEntry {
    Fixed(String),
    /// `dns+<scheme>://<host>:<port>`: one master per address of `host`.
    Dns {
        scheme: String,
        host: String,
        port: u16,
    },
}

impl MasterEntry {
    pub fn parse(entry: &str) -> anyhow::Result<Self> {
        let entry = entry.trim().trim_end_matches('/');
        let Some(rest) = entry.strip_prefix("dns+") else {
            return Ok(Self::Fixed(entry.to_string()));
        };
        let (scheme, authority) = rest
            .split_once("://")
            .filter(|(s, _)| *s == "http" || *s == "https")
            .ok_or_else(|| anyhow::anyhow!("{entry}: expected dns+http://host:port"))?;
        let (host, port) = authority
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| anyhow::anyhow!("{entry}: expected dns+{scheme}://host:port"))?;
        Ok(Self::Dns {
            scheme: scheme.into(),
            host: host.into(),
            port,
        })
    }

    /// The master URLs this entry stands for now. A failed or empty lookup keeps `known`: a
    /// DNS hiccup must not make the slave leave every master.
    async fn resolve(&self, known: &BTreeSet<String>) -> BTreeSet<String> {
        match self {
            Self::Fixed(url) => BTreeSet::from([url.clone()]),
            Self::Dns { scheme, host, port } => {
                match tokio::net::lookup_host((host.as_str(), *port)).await {
                    Ok(addrs) => {
                        let found: BTreeSet<String> =
                            addrs.map(|a| format!("{scheme}://{a}")).collect();
                        if found.is_empty() {
                            known.clone()
                        } else {
                            found
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%host, error = %e, "resolving the masters failed; keeping the known ones");
                        known.clone()
                    }
                }
            }
        }
    }
}

/// The heartbeat loops, one per master, started and stopped as the set of masters changes.
pub struct MasterSet {
    ctx: Arc<SlaveCtx>,
    entries: Vec<MasterEntry>,
    agents: Mutex<HashMap<String, AbortHandle>>,
    stopped: AtomicBool,
}

impl MasterSet {
    pub fn new(ctx: Arc<SlaveCtx>) -> anyhow::Result<Arc<Self>> {
        let entries = ctx
            .cfg
            .master_urls
            .iter()
            .map(|u| MasterEntry::parse(u))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Arc::new(Self {
            ctx,
            entries,
            agents: Default::default(),
            stopped: AtomicBool::new(false),
        }))
    }

    /// Resolves the entries every heartbeat interval until [`MasterSet::stop`]; with fixed
    /// entries only, resolves once.
    pub async fn run(self: Arc<Self>) {
        let every = self
            .ctx
            .cfg
            .heartbeat_interval
            .unwrap_or(Duration::from_secs(5));
        let dynamic = self
            .entries
            .iter()
            .any(|e| matches!(e, MasterEntry::Dns { .. }));
        loop {
            let known: BTreeSet<String> = self.agents.lock().keys().cloned().collect();
            let mut want = BTreeSet::new();
            for e in &self.entries {
                want.extend(e.resolve(&known).await);
            }
            self.reconcile(&want);
            if !dynamic || self.stopped.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Starts a heartbeat loop for every master in `want` that has none, and ends those of
    /// masters no longer in it (which stop vouching for their signing keys).
    pub fn reconcile(&self, want: &BTreeSet<String>) {
        let mut agents = self.agents.lock();
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        agents.retain(|url, handle| {
            if want.contains(url) {
                return true;
            }
            tracing::info!(master = %url, "master gone; no longer reporting to it");
            handle.abort();
            self.ctx.masters.remove(url);
            if let Err(e) = self.ctx.forget_master_keys(url) {
                tracing::warn!(error = %e, "dropping a gone master's keys");
            }
            false
        });
        for url in want {
            if !agents.contains_key(url) {
                let client = self.ctx.masters.add(url);
                let task = tokio::spawn(Agent::new(self.ctx.clone(), client).run());
                agents.insert(url.clone(), task.abort_handle());
            }
        }
    }

    /// Ends every heartbeat loop at once (the drain: they would re-register the node).
    pub fn stop(&self) {
        let agents = self.agents.lock();
        self.stopped.store(true, Ordering::Relaxed);
        for handle in agents.values() {
            handle.abort();
        }
    }

    pub fn reporting_to(&self) -> BTreeSet<String> {
        self.agents.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse() {
        assert_eq!(
            MasterEntry::parse("http://m1:8000/").unwrap(),
            MasterEntry::Fixed("http://m1:8000".into())
        );
        assert_eq!(
            MasterEntry::parse("dns+http://classcast-master-peers.cc.svc:8000").unwrap(),
            MasterEntry::Dns {
                scheme: "http".into(),
                host: "classcast-master-peers.cc.svc".into(),
                port: 8000
            }
        );
        for bad in [
            "dns+ftp://m:1",
            "dns+http://m",
            "dns+http://:80",
            "dns+m:80",
        ] {
            assert!(MasterEntry::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_name_stands_for_each_of_its_addresses() {
        let e = MasterEntry::parse("dns+http://127.0.0.1:8123").unwrap();
        let got = e.resolve(&BTreeSet::new()).await;
        assert_eq!(got, BTreeSet::from(["http://127.0.0.1:8123".to_string()]));
        // An unresolvable name keeps what was known.
        let e = MasterEntry::parse("dns+http://no-such-master.invalid:8000").unwrap();
        let known = BTreeSet::from(["http://10.0.0.7:8000".to_string()]);
        assert_eq!(e.resolve(&known).await, known);
    }
}
