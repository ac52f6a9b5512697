//! `classcast`: one binary for every role. `master` runs the control plane, `slave` an
//! ingest + LL-HLS edge, `up` a whole local cluster in one process.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};

/// Every request allocates a little (headers, the playlist copy, hyper's buffers) on whichever
/// tokio worker runs it; glibc's allocator spent ~16 % of a slave's CPU under 1,000 viewers,
/// partly waiting on its arena lock. mimalloc's per-thread free lists avoid both. How it gives
/// memory back is set in `allocator`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod allocator;
mod cli;
mod config;
mod up;

use cli::{Cli, Cmd, HealthArgs, MasterArgs, SlaveArgs};
use config::{
    SlavePorts, check_teacher_password, client_ca, http_limits, master_config, node_certs, origins,
    refuse_clear_text, resolve_secret, slave_config,
};

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub(crate) async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: cannot listen on {addr}"))
}

pub(crate) fn parse_range(r: &str) -> anyhow::Result<(u16, u16)> {
    let (a, b) = r.split_once('-').unwrap_or((r, r));
    let (a, b): (u16, u16) = (a.trim().parse()?, b.trim().parse()?);
    anyhow::ensure!(a <= b, "port range {r:?} is empty");
    Ok((a, b))
}

/// Binds `addr`, or with a range the first free port of it (on `addr`'s IP).
pub(crate) async fn bind_in_range(
    addr: SocketAddr,
    range: Option<&str>,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    let Some(range) = range else {
        return bind(addr, what).await;
    };
    let (lo, hi) = parse_range(range).with_context(|| format!("{what} port range"))?;
    for port in lo..=hi {
        if let Ok(l) = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            return Ok(l);
        }
    }
    anyhow::bail!("{what}: no free port in {lo}-{hi} on {}", addr.ip())
}

async fn run_master(a: MasterArgs) -> anyhow::Result<()> {
    check_teacher_password(a.teacher_password.as_deref())?;
    let secret = resolve_secret(&a.common, a.cluster_secret_file.as_ref(), a.generate_secret)?;
    let mut cfg = master_config(
        a.bind,
        secret,
        a.jwt_key_file.clone(),
        a.teacher_password.clone(),
        a.common.heartbeat_interval_ms,
        &a.tuning,
    );
    cfg.http = http_limits(&a.common);
    cfg.previous_key_paths = a.jwt_previous_key_file.clone();
    cfg.cors_origins = origins(&a.common.cors_origins)?;
    cfg.masters = origins(&a.masters).context("MASTERS")?;
    cfg.public_url = match a.public_url.as_deref() {
        Some(u) => Some(common::http::origin_of(u).context("PUBLIC_URL must be an http(s) URL")?),
        None => None,
    };
    if let Some(f) = &a.frame_ancestors {
        cfg.frame_ancestors = f.clone();
    }
    cfg.token_rate = master::ratelimit::Rate {
        per_second: a.token_rate_per_addr,
        burst: a.token_burst_per_addr,
    };
    cfg.client_ca = client_ca(&a.common.tls)?;
    let listener = bind(a.bind, "master").await?;
    let https = match node_certs(&a.common.tls)? {
        Some((store, acme)) => {
            let at = a
                .common
                .tls
                .https_bind
                .unwrap_or(SocketAddr::new(a.bind.ip(), 8443));
            Some(common::listeners::Https {
                listener: bind(at, "https").await?,
                acceptor: common::tls::acceptor(store, &common::tls::HTTP_ALPN)?,
                acme,
            })
        }
        None => None,
    };
    master::serve(cfg, listener, https, shutdown_signal()).await
}

async fn run_slave(a: SlaveArgs) -> anyhow::Result<()> {
    let secret = resolve_secret(&a.common, a.cluster_secret_file.as_ref(), false)?;
    let certs = node_certs(&a.common.tls)?;
    if certs.is_some() {
        refuse_clear_text("MASTER_URL", &a.master_url)?;
    }
    let rtmp = match a.rtmp_plain {
        true => Some(bind_in_range(a.rtmp_bind, a.rtmp_port_range.as_deref(), "rtmp").await?),
        false => None,
    };
    let http = bind_in_range(a.http_bind, a.http_port_range.as_deref(), "http").await?;
    if let Some(f) = &a.port_file {
        std::fs::write(f, http.local_addr()?.port().to_string())
            .with_context(|| format!("writing {}", f.display()))?;
    }
    let (mut https, mut rtmps) = (None, None);
    if let Some((store, acme)) = certs {
        let at = a
            .common
            .tls
            .https_bind
            .unwrap_or(SocketAddr::new(a.http_bind.ip(), 8889));
        https = Some(common::listeners::Https {
            listener: bind_in_range(at, a.https_port_range.as_deref(), "https").await?,
            acceptor: common::tls::acceptor(store.clone(), &common::tls::HTTP_ALPN)?,
            acme,
        });
        rtmps = Some((
            bind_in_range(a.rtmps_bind, a.rtmps_port_range.as_deref(), "rtmps").await?,
            common::tls::acceptor(store, &[])?,
        ));
    }
    let port =
        |l: Option<&tokio::net::TcpListener>| l.and_then(|l| l.local_addr().ok()).map(|a| a.port());
    let ports = SlavePorts {
        http: http.local_addr()?.port(),
        https: port(https.as_ref().map(|x| &x.listener)),
        rtmp: port(rtmp.as_ref()),
        rtmps: port(rtmps.as_ref().map(|x| &x.0)),
    };
    let cfg = slave_config(&a, secret, &ports)?;
    let listeners = slave::Listeners {
        rtmp,
        rtmps,
        http,
        https,
    };
    slave::serve(cfg, listeners, shutdown_signal()).await
}

async fn healthcheck(a: HealthArgs, mode: Option<&str>) -> anyhow::Result<()> {
    let url = a.url.unwrap_or_else(|| match mode {
        Some("slave") => {
            let from_file = std::env::var("PORT_FILE")
                .ok()
                .and_then(|f| std::fs::read_to_string(f).ok())
                .map(|p| p.trim().to_string());
            let port = from_file
                .or_else(|| {
                    std::env::var("HTTP_BIND")
                        .ok()
                        .and_then(|b| b.rsplit(':').next().map(str::to_string))
                })
                .unwrap_or("8888".into());
            format!("http://127.0.0.1:{port}/health")
        }
        _ => {
            let port = std::env::var("MASTER_BIND")
                .ok()
                .and_then(|b| b.rsplit(':').next().map(str::to_string))
                .unwrap_or("8000".into());
            format!("http://127.0.0.1:{port}/health")
        }
    });
    // The probe is plain HTTP (the plain port answers /health with TLS on too): no roots needed.
    let r = common::tls::client(&[], |b| b.timeout(Duration::from_secs(3)))?
        .get(&url)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "{url} answered {}", r.status());
    println!("ok {url}");
    Ok(())
}

/// `LOG`: a level (`debug`) or directives (`warn,classcast_slave=debug`); `info` when unset. An
/// unreadable value is reported and `info` used, so a typo never silences the logs.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let spec = std::env::var("LOG").unwrap_or_default();
    let (filter, bad) = match spec.trim() {
        "" => ("info".parse().expect("a level"), None),
        s => match s.parse::<tracing_subscriber::filter::Targets>() {
            Ok(t) => (t, None),
            Err(e) => ("info".parse().expect("a level"), Some(e)),
        },
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
        )
        .with(filter)
        .init();
    if let Some(e) = bad {
        tracing::warn!(log = %spec, error = %e, "LOG is not a level or target=level list; using info");
    }
}

fn main() -> anyhow::Result<()> {
    allocator::return_freed_memory();
    init_logging();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cmd = match cli.cmd {
        Some(c) => c,
        None => match cli.mode.as_deref() {
            // `MODE=master classcast` parses the role's flags from the environment.
            Some("master") => Cmd::Master(Box::new(MasterArgs::parse_from_env())),
            Some("slave") => Cmd::Slave(Box::new(SlaveArgs::parse_from_env())),
            Some(m) => anyhow::bail!("MODE must be master or slave, not {m:?}"),
            None => {
                use clap::CommandFactory;
                Cli::command().print_help()?;
                std::process::exit(2);
            }
        },
    };
    rt.block_on(async move {
        match cmd {
            Cmd::Master(a) => run_master(*a).await,
            Cmd::Slave(a) => run_slave(*a).await,
            Cmd::Up(a) => up::run_up(*a).await,
            Cmd::Healthcheck(a) => healthcheck(a, cli.mode.as_deref()).await,
        }
    })
}

/// Parses a role's flags from the environment alone (for `MODE=…` without a subcommand).
trait FromEnv: Sized {
    fn parse_from_env() -> Self;
}

impl<T: Args> FromEnv for T {
    fn parse_from_env() -> Self {
        let cmd = T::augment_args(clap::Command::new("classcast").no_binary_name(true));
        let m = cmd.get_matches_from(Vec::<String>::new());
        T::from_arg_matches(&m).unwrap_or_else(|e| e.exit())
    }
}
