//! `classcast up`: a master and N slaves in one process on loopback, with generated secrets —
//! the README's "run" command.

use std::net::SocketAddr;
use std::time::Duration;

use common::secret::ClusterSecret;

use crate::cli::{Common, SlaveArgs, UpArgs};
use crate::config::{check_teacher_password, master_config, slave_config};
use crate::{bind, shutdown_signal};

pub(crate) async fn run_up(a: UpArgs) -> anyhow::Result<()> {
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
    mcfg.public_url = common::http::origin_of(&format!("http://{}:{master_port}", a.public_host));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(master::serve(
        mcfg,
        master_listener,
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
        let args = SlaveArgs {
            common: Common {
                cluster_secret: None,
                insecure_dev: false,
                heartbeat_interval_ms: a.heartbeat_interval_ms,
                http_header_timeout_ms: 10_000,
                http_idle_timeout_ms: 30_000,
                http_max_connections: 0,
                cors_origins: Vec::new(),
            },
            master_url: vec![master_url.clone()],
            cluster_secret_file: None,
            node_id: Some(format!("slave-{}", i + 1)),
            node_name: Some(format!("Slave {}", i + 1)),
            rtmp_bind: rtmp.local_addr()?,
            http_bind: http.local_addr()?,
            rtmp_port_range: None,
            http_port_range: None,
            port_file: None,
            public_url: None,
            cache_url: None,
            public_host: Some(a.public_host.clone()),
            internal_url: Some(format!("http://127.0.0.1:{hp}")),
            internal_host: None,
            max_connections: a.max_connections,
            upstream_url: None,
            media: a.media.clone(),
        };
        let cfg = slave_config(&args, secret.clone(), hp, rp)?;
        slaves.push((
            cfg.node_id.clone(),
            cfg.rtmp_url.clone(),
            cfg.public_url.clone(),
        ));
        tasks.push(tokio::spawn(slave::serve(
            cfg,
            rtmp,
            http,
            wait(stop_rx.clone()),
        )));
    }
    let host = &a.public_host;
    println!("\nclasscast is up: a master and {} slave(s).\n", a.slaves);
    println!("  master     http://{host}:{master_port}/   (cluster view: /admin, /cluster/nodes)");
    for (id, rtmp, http) in &slaves {
        println!("  {id:<10} {rtmp}   {http}");
    }
    println!(
        "\nTeacher: open http://{host}:{master_port}/teacher and log in with password {teacher}"
    );
    println!(
        "         (or: curl -s -XPOST http://{host}:{master_port}/api/token -H 'content-type: application/json' \\"
    );
    println!(
        "                -d '{{\"role\":\"teacher\",\"user_id\":\"teacher\",\"credential\":\"{teacher}\"}}')"
    );
    println!(
        "         then put the Server and Stream Key it shows into OBS (Settings → Stream → Custom)."
    );
    println!("Students: open http://{host}:{master_port}/ , type a name, and watch.\n");
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    Ok(())
}
