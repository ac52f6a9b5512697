//! `classcast up`: a master and N slaves in one process on loopback, with generated secrets —
//! the README's "run" command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use common::secret::ClusterSecret;

use crate::cli::{Common, SlaveArgs, UpArgs};
use crate::config::{check_teacher_password, master_config, slave_config};
use crate::{bind, shutdown_signal};

/// The address other machines on the LAN reach this one at: the source address of the route
/// towards the outside world, which the kernel picks without sending a packet (a Docker bridge
/// or a VPN interface is not it, unless it carries the default route).
fn lan_address() -> anyhow::Result<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect("198.51.100.1:9")
        .context("no route off this machine; set PUBLIC_HOST to its LAN address")?;
    let ip = s.local_addr()?.ip();
    anyhow::ensure!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "no LAN address found ({ip}); set PUBLIC_HOST to this machine's LAN address"
    );
    Ok(ip)
}

/// A QR code for a terminal: two rows of modules per line of text.
fn terminal_qr(text: &str) -> String {
    qrcode::QrCode::new(text.as_bytes())
        .map(|c| {
            c.render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build()
        })
        .unwrap_or_default()
}

pub(crate) async fn run_up(mut a: UpArgs) -> anyhow::Result<()> {
    if a.lan {
        a.bind_host = "0.0.0.0".into();
        if a.public_host == "127.0.0.1" {
            a.public_host = lan_address()?.to_string();
        }
    }
    let secret = ClusterSecret::generate();
    let teacher = a
        .teacher_password
        .clone()
        .unwrap_or_else(|| ClusterSecret::generate().expose()[..16].to_string());
    check_teacher_password(Some(&teacher))?;
    let master_bind: SocketAddr = format!("{}:{}", a.bind_host, a.master_port).parse()?;
    let master_listener = bind(master_bind, "master").await?;
    let master_port = master_listener.local_addr()?.port();
    let master_url = format!("http://127.0.0.1:{master_port}");
    let mcfg = master_config(
        master_bind,
        secret.clone(),
        a.data_dir.join("jwt-ed25519.pem"),
        Some(teacher.clone()),
        a.heartbeat_interval_ms,
        &a.tuning,
    );
    let mut mcfg = mcfg;
    // TLS: one certificate for PUBLIC_HOST on every node, re-read when its files change; the
    // slaves reach the master, and one another, by that name.
    let tls_args = crate::cli::TlsArgs {
        tls_cert_file: a.tls_cert_file.clone(),
        tls_key_file: a.tls_key_file.clone(),
        tls_ca_file: a.tls_ca_file.clone(),
        tls_reload_ms: 2000,
        https_bind: None,
        acme_domains: Vec::new(),
        acme_email: None,
        acme_directory_url: String::new(),
        acme_ca_file: None,
        acme_dir: PathBuf::new(),
        acme_renew_before_days: 30.0,
        acme_retry_ms: 60_000,
    };
    // No ACME here, so no HTTP-01 answers to serve: the store alone.
    let certs = crate::config::node_certs(&tls_args)?.map(|(store, _)| store);
    mcfg.client_ca = crate::config::client_ca(&tls_args)?;
    let host = a.public_host.clone();
    let https = |store: &std::sync::Arc<common::tls::CertStore>, port: u16, what: &'static str| {
        let (store, bind_host) = (store.clone(), a.bind_host.clone());
        async move {
            anyhow::Ok(common::listeners::Https {
                listener: bind(format!("{bind_host}:{port}").parse()?, what).await?,
                acceptor: common::tls::acceptor(store, &common::tls::HTTP_ALPN)?,
                acme: None,
            })
        }
    };
    let master_https = match &certs {
        Some(store) => Some(https(store, a.https_port, "https").await?),
        None => None,
    };
    let (master_url, master_page) = match &master_https {
        Some(h) => {
            let p = h.listener.local_addr()?.port();
            (format!("https://{host}:{p}"), format!("https://{host}:{p}"))
        }
        None => (master_url, format!("http://{host}:{master_port}")),
    };
    mcfg.public_url = common::http::origin_of(&master_page);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(master::serve(
        mcfg,
        master_listener,
        master_https,
        wait(stop_rx.clone()),
    )));
    let mut slaves = Vec::new();
    for i in 0..a.slaves {
        let port = |base: u16| if base == 0 { 0 } else { base + i as u16 };
        let rtmp = bind(
            format!("{}:{}", a.bind_host, port(a.rtmp_port_base)).parse()?,
            "rtmp",
        )
        .await?;
        let http = bind(
            format!("{}:{}", a.bind_host, port(a.http_port_base)).parse()?,
            "http",
        )
        .await?;
        let (hp, rp) = (http.local_addr()?.port(), rtmp.local_addr()?.port());
        let (mut slave_https, mut rtmps) = (None, None);
        if let Some(store) = &certs {
            slave_https = Some(https(store, port(a.https_port_base), "https").await?);
            rtmps = Some((
                bind(
                    format!("{}:{}", a.bind_host, port(a.rtmps_port_base)).parse()?,
                    "rtmps",
                )
                .await?,
                common::tls::acceptor(store.clone(), &[])?,
            ));
        }
        let hsp = slave_https
            .as_ref()
            .and_then(|h| h.listener.local_addr().ok())
            .map(|x| x.port());
        let args = SlaveArgs {
            common: Common {
                cluster_secret: None,
                insecure_dev: false,
                heartbeat_interval_ms: a.heartbeat_interval_ms,
                http_header_timeout_ms: 10_000,
                http_idle_timeout_ms: 30_000,
                http_max_connections: 0,
                cors_origins: Vec::new(),
                tls: tls_args.clone(),
            },
            master_url: vec![master_url.clone()],
            cluster_secret_file: None,
            node_id: Some(format!("slave-{}", i + 1)),
            node_name: Some(format!("Slave {}", i + 1)),
            rtmp_bind: rtmp.local_addr()?,
            rtmp_plain: true,
            rtmps_bind: rtmp.local_addr()?,
            http_bind: http.local_addr()?,
            rtmp_port_range: None,
            http_port_range: None,
            https_port_range: None,
            rtmps_port_range: None,
            port_file: None,
            public_url: None,
            cache_url: None,
            record_dir: a
                .data_dir
                .join("recordings")
                .join(format!("slave-{}", i + 1)),
            record: a.record.clone(),
            public_host: Some(a.public_host.clone()),
            internal_url: Some(match hsp {
                Some(p) => format!("https://{}:{p}", a.public_host),
                None => format!("http://127.0.0.1:{hp}"),
            }),
            internal_host: None,
            max_connections: a.max_connections,
            upstream_url: None,
            media: a.media.clone(),
        };
        let ports = crate::config::SlavePorts {
            http: hp,
            https: hsp,
            rtmp: Some(rp),
            rtmps: rtmps
                .as_ref()
                .and_then(|(l, _)| l.local_addr().ok())
                .map(|x| x.port()),
        };
        let mut cfg = slave_config(&args, secret.clone(), &ports)?;
        if cfg.webrtc.udp_ports.0 != 0 {
            let p = cfg
                .webrtc
                .udp_ports
                .0
                .saturating_add((i * cfg.webrtc.engines) as u16);
            cfg.webrtc.udp_ports = (p, p);
        }
        if a.lan {
            // OBS runs on this PC: its server stays on loopback, whatever address students use
            // (in clear with TLS on too: loopback never leaves the PC, and the certificate is
            // for PUBLIC_HOST).
            cfg.rtmp_url = format!("rtmp://127.0.0.1:{rp}/live");
        }
        slaves.push((
            cfg.node_id.clone(),
            cfg.rtmp_url.clone(),
            cfg.public_url.clone(),
        ));
        tasks.push(tokio::spawn(slave::serve(
            cfg,
            slave::Listeners {
                rtmp: Some(rtmp),
                rtmps,
                http,
                https: slave_https,
            },
            wait(stop_rx.clone()),
        )));
    }
    let m = &master_page;
    println!("\nclasscast is up: a master and {} slave(s).\n", a.slaves);
    println!("  master     {m}/   (cluster view: /admin, /cluster/nodes)");
    for (id, rtmp, http) in &slaves {
        println!("  {id:<10} {rtmp}   {http}");
    }
    println!("\nTeacher: open {m}/teacher and log in with password {teacher}");
    println!("         (or: curl -s -XPOST {m}/api/token -H 'content-type: application/json' \\");
    println!(
        "                -d '{{\"role\":\"teacher\",\"user_id\":\"teacher\",\"credential\":\"{teacher}\"}}')"
    );
    println!(
        "         then press \"Go live\" there (camera or screen, from the browser), or put the Server"
    );
    println!("         and Stream Key it shows into OBS (Settings → Stream → Custom).");
    let student = format!("{m}/?stream=stream");
    println!("Students: open {student} , type a name, and watch (class \"stream\").");
    if a.lan {
        println!("          Phones on this network can scan it (also on the teacher page):\n");
        println!("{}", terminal_qr(&student));
    }
    println!();
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}
