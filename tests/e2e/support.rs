//! Test harness: real `classcast` processes on loopback, real ffmpeg, and small HTTP helpers.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_classcast");
pub const SECRET: &str = "test-cluster-secret-0123456789";
pub const TEACHER: &str = "teacher-pass";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn log_dir(test: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e-logs")
        .join(test);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A child process killed when dropped (and by the kernel if the test process dies).
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, log: PathBuf, cmd: &mut Command) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        cmd.stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .stdin(Stdio::null());
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit (SIGKILL after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        None
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Debug)]
pub struct Timings {
    pub heartbeat_ms: u64,
    pub offline_after_ms: u64,
    pub grace_ms: u64,
    pub token_ttl_secs: u64,
    pub http_header_timeout_ms: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 300,
            offline_after_ms: 1500,
            grace_ms: 2000,
            token_ttl_secs: 3600,
            http_header_timeout_ms: 1000,
        }
    }
}

pub struct SlaveProc {
    pub id: String,
    pub rtmp_port: u16,
    pub http_port: u16,
    pub proc: Proc,
}

impl SlaveProc {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
}

pub struct Cluster {
    pub test: String,
    pub master_port: u16,
    pub key_file: PathBuf,
    pub master: Option<Proc>,
    pub slaves: Vec<SlaveProc>,
    pub timings: Timings,
    pub http: reqwest::Client,
    /// Extra flags for every master and slave this cluster starts.
    pub master_flags: Vec<String>,
    /// What slaves get as `--master-url` (default: this cluster's one master).
    pub slave_master_urls: Option<String>,
    pub slave_flags: Vec<String>,
}

impl Cluster {
    pub async fn start(test: &str, n: usize, timings: Timings) -> Cluster {
        Self::start_with(test, n, timings, &[], &[]).await
    }

    /// A cluster whose master and slaves get these extra flags.
    pub async fn start_with(
        test: &str,
        n: usize,
        timings: Timings,
        master_flags: &[&str],
        slave_flags: &[&str],
    ) -> Cluster {
        let dir = log_dir(test);
        let mut c = Cluster {
            master_flags: master_flags.iter().map(|s| s.to_string()).collect(),
            slave_master_urls: None,
            slave_flags: slave_flags.iter().map(|s| s.to_string()).collect(),
            test: test.into(),
            master_port: free_port(),
            key_file: dir.join("jwt.pem"),
            master: None,
            slaves: Vec::new(),
            timings,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        };
        let _ = std::fs::remove_file(&c.key_file);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("rec-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        c.start_master();
        c.master_bound().await;
        for i in 0..n {
            c.add_slave(&format!("s{}", i + 1), &[]);
        }
        c.settle(n).await;
        c
    }

    /// Whether `p` exited because a port `free_port` picked was taken before it bound (another
    /// test's connection or listener got it in between).
    fn lost_its_port(p: &mut Proc) -> bool {
        p.child.try_wait().ok().flatten().is_some()
            && p.log_text().contains("Address already in use")
    }

    /// Waits for the master to answer; one that lost its port is started again on a new one.
    async fn master_bound(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if healthy(&self.http, &self.master_url()).await {
                return;
            }
            if self.master.as_mut().is_some_and(Self::lost_its_port) {
                eprintln!("master: its port was taken before it bound; starting it on another");
                self.master_port = free_port();
                self.start_master();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for `n` healthy slaves; a slave that lost a port it was given is started again on
    /// new ones, in its place.
    pub async fn settle(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.nodes().await["healthy_nodes"].as_u64() == Some(n as u64) {
                return;
            }
            for i in 0..self.slaves.len() {
                if Self::lost_its_port(&mut self.slaves[i].proc) {
                    let id = self.slaves[i].id.clone();
                    eprintln!("{id}: a port was taken before it bound; starting it on new ones");
                    drop(self.slaves.remove(i));
                    let j = self.spawn_slave(&id, free_port(), free_port(), &[]);
                    let again = self.slaves.remove(j);
                    self.slaves.insert(i, again);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_healthy(n).await;
    }

    pub fn master_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.master_port)
    }

    pub fn start_master(&mut self) {
        self.master = Some(self.spawn_master_on(self.master_port));
    }

    /// A master on `port` with this cluster's key file, secret and flags: another master of
    /// the same cluster when `port` is not `master_port`.
    pub fn spawn_master_on(&self, port: u16) -> Proc {
        let t = &self.timings;
        let dir = log_dir(&self.test);
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        let mut cmd = Command::new(BIN);
        cmd.arg("master")
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--jwt-key-file", self.key_file.to_str().unwrap()])
            .args(["--heartbeat-interval-ms", &t.heartbeat_ms.to_string()])
            .args(["--offline-after-ms", &t.offline_after_ms.to_string()])
            .args(["--token-ttl-secs", &t.token_ttl_secs.to_string()])
            .args([
                "--http-header-timeout-ms",
                &t.http_header_timeout_ms.to_string(),
            ])
            .args(&self.master_flags)
            .env("CLUSTER_SECRET", SECRET)
            .env("TEACHER_PASSWORD", TEACHER)
            .env("LOG", "info");
        Proc::spawn(
            "master",
            dir.join(format!("master-{port}-{n}.log")),
            &mut cmd,
        )
    }

    pub fn add_slave(&mut self, id: &str, extra: &[&str]) -> usize {
        let (rtmp, http) = (free_port(), free_port());
        self.spawn_slave(id, rtmp, http, extra)
    }

    fn spawn_slave(&mut self, id: &str, rtmp: u16, http: u16, extra: &[&str]) -> usize {
        let t = &self.timings;
        let n = std::fs::read_dir(log_dir(&self.test))
            .map(|d| d.count())
            .unwrap_or(0);
        let mut cmd = Command::new(BIN);
        cmd.arg("slave")
            .args([
                "--master-url",
                self.slave_master_urls
                    .as_deref()
                    .unwrap_or(&self.master_url()),
            ])
            .args(["--node-id", id])
            .args(["--rtmp-bind", &format!("127.0.0.1:{rtmp}")])
            .args(["--http-bind", &format!("127.0.0.1:{http}")])
            .args(["--heartbeat-interval-ms", &t.heartbeat_ms.to_string()])
            .args(["--grace-ms", &t.grace_ms.to_string()])
            .args(["--viewer-window-ms", "3000"])
            // Several slaves share this host: each takes a free UDP port for WebRTC.
            .args(["--webrtc-udp-port", "0"])
            .args([
                "--http-header-timeout-ms",
                &t.http_header_timeout_ms.to_string(),
            ])
            .args(&self.slave_flags)
            .args(extra);
        // Each slave records into its own folder of the test's directory (a restarted slave
        // finds its recordings there), unless the test says otherwise.
        if !self.slave_flags.iter().any(|f| f == "--record-dir") && !extra.contains(&"--record-dir")
        {
            cmd.args(["--record-dir", self.record_dir(id).to_str().unwrap()]);
        }
        // No ICE-TCP listener (a TCP port numbered like the free UDP one could be a port
        // `free_port` just handed to another test's process); the page tests cover ICE-TCP.
        if !self.slave_flags.iter().any(|f| f == "--webrtc-tcp") && !extra.contains(&"--webrtc-tcp")
        {
            cmd.args(["--webrtc-tcp", "false"]);
        }
        // A short drain on SIGTERM, unless the test sets its own.
        if !self.slave_flags.iter().any(|f| f == "--drain-ms") && !extra.contains(&"--drain-ms") {
            cmd.args(["--drain-ms", "300"]);
        }
        cmd.env("CLUSTER_SECRET", SECRET).env("LOG", "info");
        let proc = Proc::spawn(
            id,
            log_dir(&self.test).join(format!("{id}-{n}.log")),
            &mut cmd,
        );
        self.slaves.push(SlaveProc {
            id: id.into(),
            rtmp_port: rtmp,
            http_port: http,
            proc,
        });
        self.slaves.len() - 1
    }

    /// Where slave `id` records (emptied when the cluster starts).
    pub fn record_dir(&self, id: &str) -> PathBuf {
        log_dir(&self.test).join(format!("rec-{id}"))
    }

    /// Kills a slave (SIGKILL) and starts it again on the same ports with the same arguments.
    pub fn restart_slave(&mut self, id: &str, extra: &[&str]) {
        let i = self.slaves.iter().position(|s| s.id == id).unwrap();
        let old = self.slaves.remove(i);
        let (rtmp, http) = (old.rtmp_port, old.http_port);
        drop(old);
        self.spawn_slave(id, rtmp, http, extra);
    }

    pub fn slave(&self, id: &str) -> &SlaveProc {
        self.slaves.iter().find(|s| s.id == id).unwrap()
    }

    pub fn slave_mut(&mut self, id: &str) -> &mut SlaveProc {
        self.slaves.iter_mut().find(|s| s.id == id).unwrap()
    }

    pub async fn nodes(&self) -> Value {
        get_json(&self.http, &format!("{}/cluster/nodes", self.master_url()))
            .await
            .unwrap_or(Value::Null)
    }

    pub async fn wait_healthy(&self, n: usize) {
        let ok = wait_until(Duration::from_secs(30), || async {
            let v = self.nodes().await;
            v["healthy_nodes"].as_u64() == Some(n as u64)
        })
        .await;
        assert!(
            ok,
            "cluster did not reach {n} healthy nodes: {}",
            self.nodes().await
        );
    }

    /// A teacher's (rtmp_url, stream_key) for `stream`.
    pub async fn teacher(&self, stream: &str) -> (String, String, Value) {
        let v = self
            .token(json!({"role": "teacher", "user_id": "teacher", "stream": stream, "credential": TEACHER}))
            .await
            .expect("teacher token");
        (
            v["rtmp_url"].as_str().unwrap().into(),
            v["stream_key"].as_str().unwrap().into(),
            v,
        )
    }

    pub async fn token(&self, body: Value) -> Result<Value, (u16, Value)> {
        let r = self
            .http
            .post(format!("{}/api/token", self.master_url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status == 200 {
            Ok(v)
        } else {
            Err((status, v))
        }
    }

    pub async fn student(&self, stream: &str, user: &str) -> Value {
        self.token(json!({"role": "student", "user_id": user, "stream": stream}))
            .await
            .expect("student token")
    }

    /// Publishes with ffmpeg to `rtmp_url/stream_key` (a lavfi test pattern, 30 fps, GOP 1 s).
    pub fn publish(
        &self,
        name: &str,
        rtmp_url: &str,
        stream_key: &str,
        seconds: Option<u32>,
    ) -> Proc {
        ffmpeg_publish(
            &self.test,
            name,
            &format!("{rtmp_url}/{stream_key}"),
            seconds,
        )
    }

    /// Waits until `stream` is live at its origin and announced.
    pub async fn wait_live(&self, stream: &str, serving: usize) {
        let path = format!("live/{stream}");
        let ok = wait_until(Duration::from_secs(30), || async {
            let v = get_json(
                &self.http,
                &format!("{}/cluster/streams", self.master_url()),
            )
            .await
            .unwrap_or(Value::Null);
            v["streams"].as_array().is_some_and(|a| {
                a.iter().any(|s| {
                    s["path"] == path
                        && s["serving"].as_array().map(|x| x.len()).unwrap_or(0) >= serving
                })
            })
        })
        .await;
        assert!(ok, "{path} did not go live on {serving} nodes");
    }
}

pub fn ffmpeg_publish(test: &str, name: &str, url: &str, seconds: Option<u32>) -> Proc {
    ffmpeg_publish_sized(test, name, url, seconds, "640x360")
}

/// [`ffmpeg_publish`] at another picture size (`WxH`): new encoder settings for the class.
pub fn ffmpeg_publish_sized(
    test: &str,
    name: &str,
    url: &str,
    seconds: Option<u32>,
    size: &str,
) -> Proc {
    ffmpeg_publish_with(test, name, url, seconds, size, &[])
}

/// [`ffmpeg_publish_sized`] with `extra` output options (e.g. RTMPS certificate checks).
pub fn ffmpeg_publish_with(
    test: &str,
    name: &str,
    url: &str,
    seconds: Option<u32>,
    size: &str,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "warning", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", &format!("testsrc=size={size}:rate=30")])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]);
    if let Some(s) = seconds {
        cmd.args(["-t", &s.to_string()]);
    }
    cmd.args([
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-g",
        "30",
        "-pix_fmt",
        "yuv420p",
    ])
    .args(["-c:a", "aac", "-b:a", "64k"])
    .args(extra)
    .args(["-f", "flv", url]);
    Proc::spawn(name, log_dir(test).join(format!("{name}.log")), &mut cmd)
}

/// ffmpeg 9 (Enhanced RTMP v2: HEVC, AV1 and Opus in FLV), which Debian's ffmpeg 5.1 is not:
/// `$FFMPEG9`, set by scripts/test.sh from PyPI's imageio-ffmpeg. `None` (and a note) where a
/// developer has not installed it; under `CI=true` a missing ffmpeg 9 fails the test.
pub fn ffmpeg9() -> Option<String> {
    let exe = std::env::var("FFMPEG9").unwrap_or_else(|_| "ffmpeg9".into());
    let ok = Command::new(&exe)
        .arg("-version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ffmpeg version"));
    if ok {
        return Some(exe);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ffmpeg 9 not found at {exe:?}: scripts/test.sh installs it and sets FFMPEG9"
    );
    eprintln!("ffmpeg 9 not found ({exe:?}); skipping (CI fails here)");
    None
}

/// Publishes a 320x240 test pattern with a sine tone through ffmpeg 9, with the given video and
/// audio encoder options (Enhanced RTMP for what legacy FLV cannot carry).
pub fn ffmpeg9_publish(
    exe: &str,
    test: &str,
    name: &str,
    url: &str,
    video: &[&str],
    audio: &[&str],
) -> Proc {
    let mut cmd = Command::new(exe);
    cmd.args(["-hide_banner", "-loglevel", "warning", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-g", "30", "-pix_fmt", "yuv420p"])
        .args(video)
        .args(audio)
        // ffmpeg then declares its FourCCs in `connect` (Enhanced RTMP), and reads our answer.
        .args(["-rtmp_enhanced_codecs", "hvc1,av01,avc1,Opus,mp4a"])
        .args(["-f", "flv", url]);
    Proc::spawn(name, log_dir(test).join(format!("{name}.log")), &mut cmd)
}

/// A teacher's ladder through ffmpeg 9: one multitrack FLV over RTMP with three H.264
/// renditions of one test pattern (1080p at 3 Mbit/s, 720p at 1.5, 360p at 0.5), keyframes
/// aligned every second, and one AAC track.
pub fn ffmpeg9_ladder(exe: &str, test: &str, name: &str, url: &str) -> Proc {
    let mut cmd = Command::new(exe);
    cmd.args(["-hide_banner", "-loglevel", "warning", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-filter_complex",
            "[0:v]split=3[a][b][c];[b]scale=1280:720[b2];[c]scale=640:360[c2]",
        ])
        .args(["-map", "[a]", "-map", "[b2]", "-map", "[c2]", "-map", "1:a"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
        ]);
    for (i, rate) in ["3000k", "1500k", "500k"].iter().enumerate() {
        cmd.arg(format!("-b:v:{i}"))
            .arg(rate)
            .arg(format!("-maxrate:v:{i}"))
            .arg(rate)
            .arg(format!("-bufsize:v:{i}"))
            .arg(rate);
    }
    cmd.args(["-c:a", "aac", "-b:a", "96k"])
        .args(["-rtmp_enhanced_codecs", "avc1,mp4a"])
        .args(["-f", "flv", url]);
    Proc::spawn(name, log_dir(test).join(format!("{name}.log")), &mut cmd)
}

/// mpv (with Debian's ffmpeg) plays 2 s of `url`; fails the test with its output otherwise.
pub fn assert_mpv_plays(url: &str) {
    let mpv = Command::new("mpv")
        .args(["--no-config", "--vo=null", "--ao=null", "--length=2"])
        .arg(url)
        .output()
        .expect("mpv is installed (scripts/test.sh installs it)");
    assert!(
        mpv.status.success(),
        "mpv: {}",
        String::from_utf8_lossy(&mpv.stdout)
    );
}

/// Waits until the master lists no live stream at `path`.
pub async fn stream_gone(c: &Cluster, path: &str, within: Duration) -> bool {
    wait_until(within, || async {
        let v = get_json(&c.http, &format!("{}/cluster/streams", c.master_url()))
            .await
            .unwrap_or(Value::Null);
        !v["streams"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["path"] == path))
    })
    .await
}

/// A node's Prometheus text (`{base}/metrics`).
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// Polls `f` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs ffprobe on `url` and returns its JSON (streams), or the error output.
pub fn ffprobe(url: &str) -> Result<Value, String> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-rw_timeout",
            "15000000",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "json",
            url,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Decodes `secs` seconds of `url` with ffmpeg; returns (success, stderr).
pub fn ffmpeg_decode(url: &str, secs: u32) -> (bool, String) {
    let out = Command::new("timeout")
        .args([
            &(secs + 25).to_string(),
            "ffmpeg",
            "-hide_banner",
            "-v",
            "error",
            "-nostdin",
            "-i",
            url,
            "-t",
            &secs.to_string(),
            // Decoded frames keep the stream's own time base: in 1/fps ticks (the default), two
            // frames of a publisher with jittery timestamps (GStreamer's librtmp `rtmpsink`) can
            // round to one tick, which the null muxer reports as an error that is not ours.
            "-enc_time_base",
            "-1",
            "-f",
            "null",
            "-",
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Whether `base` answers `GET /health` with a success.
pub async fn healthy(http: &reqwest::Client, base: &str) -> bool {
    http.get(format!("{base}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Fetches a playlist with the cluster secret (no tokens in the URIs).
pub async fn peer_get(http: &reqwest::Client, url: &str) -> reqwest::Response {
    http.get(url)
        .header("authorization", format!("Bearer {SECRET}"))
        .send()
        .await
        .unwrap()
}

pub fn codecs(probe: &Value) -> Vec<String> {
    probe["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["codec_name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// (msn, part index) of the last part listed in a playlist.
pub fn last_part(playlist: &str) -> Option<(u64, usize)> {
    let mut last = None;
    for l in playlist.lines() {
        if let Some(rest) = l.strip_prefix("#EXT-X-PART:") {
            let uri = rest.split("URI=\"").nth(1)?.split('"').next()?;
            let r = uri.strip_prefix("part")?.split(".m4s").next()?;
            let (m, i) = r.split_once('.')?;
            last = Some((m.parse().ok()?, i.parse().ok()?));
        }
    }
    last
}

pub fn media_sequence(playlist: &str) -> Option<u64> {
    playlist.lines().find_map(|l| {
        l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:")?
            .trim()
            .parse()
            .ok()
    })
}

/// A raw RTMP client that completes the handshake, for the hostile-input cases.
pub fn rtmp_handshake(port: u16) -> std::net::TcpStream {
    use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hs = Handshake::new(PeerType::Client);
    s.write_all(&hs.generate_outbound_p0_and_p1().unwrap())
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "server closed during handshake");
        match hs.process_bytes(&buf[..n]).unwrap() {
            HandshakeProcessResult::InProgress { response_bytes } => {
                s.write_all(&response_bytes).unwrap()
            }
            HandshakeProcessResult::Completed { response_bytes, .. } => {
                s.write_all(&response_bytes).unwrap();
                return s;
            }
        }
    }
}

/// Chunk with a type-0 header.
pub fn chunk0(csid: u8, type_id: u8, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![csid & 0x3f, 0, 0, 0];
    v.extend_from_slice(&len.to_be_bytes()[1..]);
    v.push(type_id);
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(payload);
    v
}

/// True if the server closes the connection within `within` (reads drain until EOF/reset).
pub fn closed_by_server(s: &mut std::net::TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// Sets this process's soft descriptor limit to half its hard one (at least 2,048), so that the
/// nodes it starts inherit a soft limit they have to raise themselves. Returns (soft, hard).
pub fn halve_soft_fd_limit() -> (u64, u64) {
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = (l.rlim_max / 2).max(2048).min(l.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        (l.rlim_cur, l.rlim_max)
    }
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// A metric's value (the first series of that name) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Reads from `s` until the server closes it; how long that took, or `None` if it was still
/// open after `within`.
pub fn time_to_close(s: &mut std::net::TcpStream, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    closed_by_server(s, within).then(|| t0.elapsed())
}

/// A student read token for `path` on `node` that expires `ttl_secs` from now (negative:
/// already expired), signed with the cluster's key, or with `key` (a forgery).
pub fn sign_student(
    c: &Cluster,
    node: &str,
    path: &str,
    ttl_secs: i64,
    key: Option<&common::token::SigningKey>,
) -> String {
    use common::token::{Action, Role, SigningKey, new_claims};
    let own;
    let key = match key {
        Some(k) => k,
        None => {
            own = SigningKey::load_or_generate(&c.key_file).unwrap();
            &own
        }
    };
    let mut claims = new_claims(
        "classcast",
        "tester",
        Role::Student,
        node,
        path,
        Action::Read,
        Duration::from_secs(3600),
    );
    claims.exp = (common::now_unix() as i64 + ttl_secs) as u64;
    key.sign(&claims).unwrap()
}

/// Fails with every RFC 8216bis / Apple LL-HLS rule `playlist` breaks
/// (`media::hls::conformance`), naming the playlist kind.
pub fn assert_conforms(kind: &str, playlist: &str) {
    let v = media::hls::conformance::check_media_playlist(playlist);
    assert!(
        v.is_empty(),
        "the {kind} playlist breaks:\n{}\n{playlist}",
        v.iter()
            .map(|v| format!("  - {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
