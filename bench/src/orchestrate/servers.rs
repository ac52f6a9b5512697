//! Starting the servers: classcast masters and slaves (with the flags every benchmark has used),
//! nginx (static files, nginx-rtmp, nginx-rtmp with HLS) and xiu.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::procs::{self, Output};
use super::sample::port_open;
use super::{Ctx, path_str};
use crate::args;

pub const RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

pub fn nginx_installed() -> bool {
    on_path("nginx").is_some() && Path::new(RTMP_MODULE).is_file()
}

/// The xiu binary on PATH or in ~/.cargo/bin (where cargo install puts it).
pub fn xiu_bin() -> Option<PathBuf> {
    on_path("xiu").or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        let c = home.join("bin/xiu");
        c.is_file().then_some(c)
    })
}

fn log_tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Ctx<'_> {
    /// Waits until `url` answers 2xx (and reports `min_nodes` healthy nodes); fails at once, with
    /// the end of its log, if the process `pid` that should answer has exited.
    pub async fn wait_http(
        &self,
        pid: u32,
        log: &Path,
        url: &str,
        min_nodes: Option<u64>,
    ) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            procs::check_interrupted()?;
            if !self.sup.alive(pid) {
                bail!(
                    "pid {pid} exited before {url} answered; {}:\n{}",
                    log.display(),
                    log_tail(log)
                );
            }
            // Short rounds of the shared wait, so that a dead process is noticed promptly.
            if crate::util::wait(url, min_nodes, Duration::from_millis(500))
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        bail!("{url}: not ready after 20 s (log {})", log.display())
    }

    /// Waits until every port accepts connections, or the process `pid` has exited.
    pub async fn wait_ports(&self, pid: u32, log: &Path, ports: &[u16]) -> anyhow::Result<()> {
        for &p in ports {
            let mut up = false;
            for _ in 0..100 {
                procs::check_interrupted()?;
                if port_open(p) {
                    up = true;
                    break;
                }
                if !self.sup.alive(pid) {
                    bail!("pid {pid} exited: {}:\n{}", log.display(), log_tail(log));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !up {
                bail!("port {p} never opened (log {})", log.display());
            }
        }
        Ok(())
    }

    pub async fn start_master(&self, name: &str, port: u16) -> anyhow::Result<u32> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir)?;
        // Every load generator is one loopback address: the per-address token limit would
        // measure itself, not the issuer.
        let a = args![
            "master",
            "--bind",
            format!("127.0.0.1:{port}"),
            "--jwt-key-file",
            path_str(&dir.join("jwt.pem")),
            "--heartbeat-interval-ms",
            1000,
            "--token-rate-per-addr",
            1000000,
            "--token-burst-per-addr",
            1000000,
        ];
        let log = self.work.join(format!("{name}.log"));
        let cmd = self.launch.command(true, &self.cc, &a);
        let pid = self.sup.spawn(name, cmd, Output::Log(log.clone()))?;
        self.wait_http(
            pid,
            &log,
            &format!("{}/health", self.master_url(port)),
            None,
        )
        .await?;
        Ok(pid)
    }

    pub async fn start_slave(
        &self,
        name: &str,
        master_port: u16,
        http_port: u16,
        rtmp_port: u16,
        extra: &[String],
    ) -> anyhow::Result<u32> {
        let mut a = Vec::from(args![
            "slave",
            "--master-url",
            self.master_url(master_port),
            "--node-id",
            name,
            "--http-bind",
            format!("127.0.0.1:{http_port}"),
            "--rtmp-bind",
            format!("127.0.0.1:{rtmp_port}"),
            "--webrtc-udp-port",
            "0",
            "--public-host",
            "127.0.0.1",
            "--heartbeat-interval-ms",
            1000,
            "--max-connections",
            10000,
        ]);
        // Recording is on by default: measured as a user gets it, into the run's folder (unless
        // the section sets its own).
        if !extra.iter().any(|a| a == "--record-dir") {
            a.extend(args![
                "--record-dir",
                path_str(&self.work.join("recordings").join(name))
            ]);
        }
        a.extend_from_slice(extra);
        let log = self.work.join(format!("{name}.log"));
        let cmd = self.launch.command(true, &self.cc, &a);
        let pid = self.sup.spawn(name, cmd, Output::Log(log.clone()))?;
        self.wait_http(
            pid,
            &log,
            &format!("http://127.0.0.1:{http_port}/health"),
            None,
        )
        .await?;
        Ok(pid)
    }

    /// Waits until the master at `port` counts `n` healthy slaves.
    pub async fn wait_nodes(&self, port: u16, n: u64) -> anyhow::Result<()> {
        crate::util::wait(
            &format!("{}/health", self.master_url(port)),
            Some(n),
            Duration::from_secs(20),
        )
        .await
    }

    /// A teacher's `(publish URL with key, HLS base URL of its slave)` for `stream`.
    pub async fn teacher_key(&self, port: u16, stream: &str) -> anyhow::Result<(String, String)> {
        let line = crate::util::teacher_key(&self.master_url(port), &self.teacher, stream).await?;
        let (publish, origin) = line.split_once(' ').context("teacher key line")?;
        Ok((publish.to_string(), origin.to_string()))
    }

    /// A student's playlist URL, once the stream is live (≤ 30 s).
    pub async fn viewer_url(&self, port: u16, stream: &str) -> anyhow::Result<String> {
        let master = self.master_url(port);
        super::retry(100, Duration::from_millis(300), || {
            crate::util::viewer_url(&master, stream)
        })
        .await
        .with_context(|| format!("stream {stream} never went live on the master at port {port}"))
    }

    /// nginx in the foreground with `conf` (written into `dir`), its error log in `dir/logs`.
    pub fn spawn_nginx(&self, name: &str, dir: &Path, conf: &str) -> anyhow::Result<u32> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let a = args![
            "-p",
            path_str(dir),
            "-c",
            path_str(&path),
            "-e",
            path_str(&dir.join("logs/error.log")),
            "-g",
            "daemon off;"
        ];
        let cmd = self.launch.command(true, Path::new("nginx"), &a);
        self.sup
            .spawn(name, cmd, Output::Log(dir.join("logs/stderr.log")))
    }

    /// Static nginx (1 worker, sendfile) serving the files of `root` on `port`.
    pub async fn start_nginx_static(&self, root: &Path, port: u16) -> anyhow::Result<u32> {
        let dir = self.work.join(format!("nginx-static-{port}"));
        let d = path_str(&dir);
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 4096; }}\nhttp {{\n  access_log off; sendfile on; \
             tcp_nopush on; keepalive_requests 1000000;\n  types {{ application/vnd.apple.mpegurl \
             m3u8; video/mp4 m4s; }}\n  server {{ listen 127.0.0.1:{port}; root {}; }}\n}}\n",
            root.display()
        );
        let pid = self.spawn_nginx("nginx-static", &dir, &conf)?;
        self.wait_http(
            pid,
            &dir.join("logs/error.log"),
            &format!("http://127.0.0.1:{port}/part.m4s"),
            None,
        )
        .await?;
        Ok(pid)
    }

    /// nginx-rtmp ingesting (no HLS) on `rtmp_port`.
    pub fn nginx_rtmp_conf(&self, dir: &Path, rtmp_port: u16) -> String {
        let d = path_str(dir);
        format!(
            "load_module {RTMP_MODULE};\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log warn;\nevents {{ worker_connections 256; }}\nrtmp {{\n  \
             server {{\n    listen 127.0.0.1:{rtmp_port};\n    chunk_size 4096;\n    \
             application live {{ live on; record off; }}\n  }}\n}}\n"
        )
    }

    /// nginx-rtmp with HLS: its shortest sensible setting with a 1 s GOP is 1 s fragments and a
    /// 4 s playlist (hls.js needs a few fragments listed to start).
    pub fn nginx_hls_conf(&self, dir: &Path, rtmp_port: u16, http_port: u16) -> String {
        let d = path_str(dir);
        format!(
            "load_module {RTMP_MODULE};\n\
             worker_processes 1; pid {d}/nginx.pid; error_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{rtmp_port}; chunk_size 4096;\n  \
             application live {{ live on; record off; hls on; hls_path {d}/hls; hls_fragment 1s; \
             hls_playlist_length 4s; }} }} }}\n\
             http {{ access_log off; sendfile on;\n  types {{ application/vnd.apple.mpegurl m3u8; \
             video/mp2t ts; }}\n  server {{ listen 127.0.0.1:{http_port}; location /hls/ {{ alias \
             {d}/hls/;\n    add_header Cache-Control no-cache; add_header \
             Access-Control-Allow-Origin *; }} }} }}\n"
        )
    }

    /// `dir/xiu.toml`: RTMP in, HLS out (MPEG-TS segments cut at the first keyframe ≥ 1 s after
    /// the previous cut, i.e. one segment per 1 s GOP: `fragment` is in whole seconds, 1 is its
    /// smallest useful value), 10 segments in the playlist: xiu deletes a segment's file the
    /// moment it leaves the playlist, and Shaka starts 3 target durations (6 s: xiu says 2)
    /// behind the end, so with 4 it sometimes asked for a deleted segment (404) and never
    /// played. The length does not move hls.js, which counts from the end.
    pub fn write_xiu_conf(
        &self,
        dir: &Path,
        rtmp_port: u16,
        hls_port: u16,
        flv_port: Option<u16>,
    ) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        // xiu always serves its HTTP API, on 0.0.0.0:8000 unless told otherwise: keep it in our
        // range, on the last port (base+39 is the glass-to-glass page's).
        let mut c = format!(
            "[httpapi]\nport = {}\n[rtmp]\nenabled = true\nport = {rtmp_port}\n[hls]\n\
             enabled = true\nport = {hls_port}\nneed_record = false\nfragment = 1\n\
             live_ts_count = 10\n",
            self.port(40)
        );
        // xiu 0.14.0 (hls 0.5.6) unwraps the S3 settings when a stream starts: without this
        // table the HLS remuxer panics at the first publish and no playlist is ever written.
        // Disabled, it only satisfies that; segments go to local files.
        c.push_str("[hls.s3]\nenabled = false\nbucket = \"unused\"\nregion = \"unused\"\n");
        if let Some(f) = flv_port {
            c.push_str(&format!("[httpflv]\nenabled = true\nport = {f}\n"));
        }
        c.push_str("[authsecret]\nkey = \"\"\npassword = \"\"\n[log]\nlevel = \"info\"\n");
        std::fs::write(dir.join("xiu.toml"), c)?;
        Ok(())
    }

    /// xiu in `dir` (it writes its HLS files under ./APP/STREAM/ and serves them from there),
    /// once every port accepts connections.
    pub async fn start_xiu(&self, dir: &Path, ports: &[u16]) -> anyhow::Result<u32> {
        let bin = self.xiu.as_ref().context("xiu is not enabled")?;
        let log = dir.join("xiu.log");
        let mut cmd = self
            .launch
            .command(true, bin, &args!["-c", path_str(&dir.join("xiu.toml"))]);
        cmd.current_dir(dir);
        let pid = self.sup.spawn("xiu", cmd, Output::Log(log.clone()))?;
        self.wait_ports(pid, &log, ports).await?;
        Ok(pid)
    }
}
