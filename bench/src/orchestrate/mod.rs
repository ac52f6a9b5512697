//! `classcast-bench run`: every benchmark against freshly started release processes on loopback,
//! then the report. `scripts/bench.sh` installs the system packages, builds and execs this.
//!
//! Everything started here (servers, peers, publishers, the load generators themselves, which
//! are this binary's other subcommands in their own processes so that their CPU is their own)
//! goes through one [`procs::Supervisor`], which stops it by PID at the end, on error, on panic
//! and on Ctrl-C.

mod cache;
mod chat;
pub mod finish;
mod g2g;
mod ladder;
mod netprofiles;
mod opus;
mod procs;
mod recording;
mod sample;
mod sections;
mod servers;
mod serving;
mod tls;
mod webrtc;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;

use procs::{Launch, Output, Supervisor};

pub const SECTIONS: [&str; 16] = [
    "tokens",
    "heartbeats",
    "latency",
    "ingest",
    "serving",
    "viewers",
    "memory",
    "g2g",
    "cache",
    "recording",
    "webrtc",
    "opus",
    "https",
    "chat",
    "ladder",
    "netprofiles",
];

/// Sections that start no classcast process: they need neither its binary nor the test stream.
const STANDALONE: [&str; 1] = ["opus"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Toggle {
    #[value(name = "auto")]
    Auto,
    #[value(name = "1")]
    On,
    #[value(name = "0")]
    Off,
}

fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

/// The knobs of `scripts/bench.sh`: each flag also reads the environment variable the script
/// has always documented, with the same default and meaning.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// First of the loopback ports used (base .. base+40; xiu binds its ports on all interfaces).
    #[arg(long, env = "BENCH_PORT_BASE", default_value_t = 18700)]
    pub port_base: u16,
    /// 1: run the nginx-rtmp ingest reference; 0: skip it; auto: run it if nginx and its rtmp
    /// module are installed (scripts/bench.sh installs them for NGINX=1).
    #[arg(long, env = "NGINX", value_enum, default_value = "auto")]
    pub nginx: Toggle,
    /// 1: add the xiu live server as a second peer in ingest CPU and glass-to-glass (installed
    /// by scripts/bench.sh); 0: skip it; auto: run it if a xiu binary is there.
    #[arg(long, env = "XIU", value_enum, default_value = "0")]
    pub xiu: Toggle,
    #[arg(long, env = "BENCH_OUT", default_value = "docs/benchmarks.md")]
    pub out: PathBuf,
    /// Keep the temp dir with the logs and results.
    #[arg(long, env = "KEEP_WORK", action = clap::ArgAction::Set, value_parser = boolish(), default_value = "0")]
    pub keep_work: bool,
    /// Run servers and load generators under SCHED_RR priority 1 (chrt -r 1).
    #[arg(long, env = "BENCH_RT", action = clap::ArgAction::Set, value_parser = boolish(), default_value = "1")]
    pub rt: bool,
    /// Seconds to wait for other load to settle before starting.
    #[arg(long, env = "BENCH_QUIET_WAIT", default_value_t = 30)]
    pub quiet_wait: u64,
    /// Only re-render the document from the last run's results.
    #[arg(long, env = "BENCH_REPORT_ONLY", action = clap::ArgAction::Set, value_parser = boolish(), default_value = "0")]
    pub report_only: bool,
    /// Comma-separated subset of tokens,heartbeats,latency,ingest,serving,viewers,memory,g2g,cache,recording,webrtc,opus,https
    /// (merged into target/bench-media/last-results.jsonl), or all.
    #[arg(long, env = "BENCH_ONLY", default_value = "all")]
    pub only: String,
    /// Viewer counts of the `viewers` ramp.
    #[arg(
        long,
        env = "VIEWER_STEPS",
        default_value = "500,750,1000,1250,1500,2000,2500"
    )]
    pub viewer_steps: String,
    /// Viewer counts of the cache tier ramp (section 9), run on a slave alone and through nginx.
    #[arg(long, env = "CACHE_STEPS", default_value = "100,250,500,1000,2000")]
    pub cache_steps: String,
    /// WebRTC viewer counts of section 11.
    #[arg(long, env = "WEBRTC_STEPS", default_value = "1,100,250,500")]
    pub webrtc_steps: String,
    /// Glass-to-glass runs per configuration (30 s each).
    #[arg(long, env = "G2G_RUNS", default_value_t = 3)]
    pub g2g_runs: u32,
    /// Then one run of this many seconds of classcast (100 ms parts) counting stalls; 0 skips it.
    #[arg(long, env = "G2G_LONG_S", default_value_t = 300)]
    pub g2g_long_s: u64,
    /// Extra hls.js settings for every hls.js configuration, e.g. '"maxLiveSyncPlaybackRate":1.5'.
    #[arg(long, env = "G2G_HLS_EXTRA", default_value = "")]
    pub g2g_hls_extra: String,
    /// Label suffix of the results with G2G_HLS_EXTRA, e.g. +catchup.
    #[arg(long, env = "G2G_SUFFIX", default_value = "")]
    pub g2g_suffix: String,
    /// 0: no Shaka Player configurations in glass-to-glass.
    #[arg(long, env = "G2G_SHAKA", action = clap::ArgAction::Set, value_parser = boolish(), default_value = "1")]
    pub g2g_shaka: bool,
    /// 0: no WebRTC (WHEP) configurations in glass-to-glass.
    #[arg(long, env = "G2G_WEBRTC", action = clap::ArgAction::Set, value_parser = boolish(), default_value = "1")]
    pub g2g_webrtc: bool,
    /// Comma-separated kinds of glass-to-glass runs (hls, student, native, shaka, whep); empty:
    /// all of them. The results of the kinds not run stay as they were.
    #[arg(long, env = "G2G_PLAYERS", value_delimiter = ',', default_value = "")]
    pub g2g_players: Vec<String>,
}

impl RunArgs {
    pub fn all(&self) -> bool {
        self.only == "all"
    }

    pub fn want(&self, section: &str) -> bool {
        self.all() || self.only.split(',').any(|s| s == section)
    }

    /// Whether a section to run starts classcast (all but [`STANDALONE`] ones do).
    pub fn servers(&self) -> bool {
        self.all() || self.only.split(',').any(|s| !STANDALONE.contains(&s))
    }
}

/// What every section needs: where things are, how to start them, the cluster's secrets.
#[derive(Clone)]
pub struct Ctx<'a> {
    pub sup: &'a Supervisor,
    pub args: &'a RunArgs,
    pub launch: Launch,
    pub root: PathBuf,
    pub work: PathBuf,
    pub media: PathBuf,
    pub cc: PathBuf,
    pub bench: PathBuf,
    pub results: PathBuf,
    pub flv: PathBuf,
    pub secret: String,
    pub teacher: String,
    pub nginx: bool,
    pub xiu: Option<PathBuf>,
}

impl Ctx<'_> {
    pub fn port(&self, offset: u16) -> u16 {
        self.args.port_base + offset
    }

    pub fn master_url(&self, port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    /// Runs one of this binary's load generators to its end, under the real-time wrapper,
    /// appending its result line to the results file.
    pub async fn bench_run(&self, name: &str, args: &[String]) -> anyhow::Result<()> {
        let mut all = vec!["--results".to_string(), path_str(&self.results)];
        all.extend_from_slice(args);
        let cmd = self.launch.command(true, &self.bench, &all);
        self.sup.run(name, cmd, Output::Inherit).await
    }
}

pub fn log(msg: &str) {
    eprintln!("\n\x1b[1m[bench] {msg}\x1b[0m");
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `args!["--x", port, path]`: an array of `String`s from anything `Display`.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { [$($a.to_string()),*] };
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Thousands of viewer connections: the soft limit of open files goes up to the hard one, for
/// this process and everything it starts.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// The workspace root: the bench binary lives in `<root>/target/release/`.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    if cwd.join("bench/Cargo.toml").is_file() {
        return Ok(cwd);
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .find(|d| d.join("bench/Cargo.toml").is_file())
        .map(Path::to_path_buf)
        .context("run this from the classcast checkout (no bench/Cargo.toml here)")
}

/// Entry point: its own runtime, and the supervisor outside it, so that the children are
/// stopped even when the runtime itself goes down with a panic.
pub fn main(args: RunArgs) -> anyhow::Result<()> {
    for s in args.only.split(',').filter(|_| !args.all()) {
        if !SECTIONS.contains(&s) {
            bail!(
                "BENCH_ONLY: unknown section {s:?} (one of {})",
                SECTIONS.join(",")
            );
        }
    }
    let root = workspace_root()?;
    std::env::set_current_dir(&root)?;
    let media = root.join("target/bench-media");
    if args.report_only {
        return finish::render(&root, &media.join("last-results.jsonl"), &media, &args.out);
    }
    raise_nofile();
    let work = tempdir()?;
    let sup = Supervisor::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            procs::install_signal_handlers()?;
            run(&sup, &args, &root, &work, &media).await
        })
    }));
    sup.stop_all();
    let r = r.unwrap_or_else(|panic| {
        eprintln!("[bench] logs and results kept in {}", work.display());
        std::panic::resume_unwind(panic)
    });
    if args.keep_work || r.is_err() {
        eprintln!("[bench] logs and results kept in {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    if procs::interrupted() {
        // As a shell killed by SIGINT reports it; the error itself says nothing more.
        std::process::exit(130);
    }
    r
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(format!("/tmp/classcast-bench.{}", random_hex(4)?));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

async fn run(
    sup: &Supervisor,
    args: &RunArgs,
    root: &Path,
    work: &Path,
    media: &Path,
) -> anyhow::Result<()> {
    let nginx = match args.nginx {
        Toggle::On if !servers::nginx_installed() => {
            bail!(
                "NGINX=1 but nginx or its rtmp module is not installed (scripts/bench.sh installs them)"
            )
        }
        Toggle::On => true,
        Toggle::Off => false,
        Toggle::Auto => servers::nginx_installed(),
    };
    let xiu = match args.xiu {
        Toggle::Off => None,
        Toggle::Auto => servers::xiu_bin(),
        Toggle::On => Some(servers::xiu_bin().context(
            "XIU=1 but no xiu binary on PATH or in ~/.cargo/bin (scripts/bench.sh installs it)",
        )?),
    };
    sample::check_ports(args.port_base)?;

    let target = root.join("target/release");
    let mut launch = Launch::default();
    let mut sched = "normal (CFS)".to_string();
    if args.rt && sample::chrt_works() {
        launch.rt = args!["chrt", "-r", "1"].to_vec();
        sched =
            "SCHED_RR priority 1 (chrt -r 1) for every server, load generator and publisher".into();
    }
    let secret = format!("bench-{}", random_hex(16)?);
    let teacher = format!("teach-{}", random_hex(8)?);
    launch.env = vec![
        ("CLUSTER_SECRET".into(), secret.clone()),
        ("TEACHER_PASSWORD".into(), teacher.clone()),
        (
            "LOG".into(),
            std::env::var("LOG").unwrap_or_else(|_| "info".into()),
        ),
    ];
    let mut ctx = Ctx {
        sup,
        args,
        launch,
        root: root.to_path_buf(),
        work: work.to_path_buf(),
        media: media.to_path_buf(),
        cc: target.join("classcast"),
        bench: target.join("classcast-bench"),
        results: work.join("results.jsonl"),
        flv: PathBuf::new(),
        secret,
        teacher,
        nginx,
        xiu,
    };
    let needed: &[&PathBuf] = if args.servers() {
        &[&ctx.cc, &ctx.bench]
    } else {
        &[&ctx.bench]
    };
    for b in needed {
        if !b.is_file() {
            bail!(
                "{} is missing: cargo build --release -p classcast -p classcast-bench",
                b.display()
            );
        }
    }
    std::fs::create_dir_all(media)?;
    if args.servers() {
        ctx.flv = sample::test_media(&ctx).await?;
    }

    let busy = sample::quiet_wait(args.quiet_wait).await?;
    let machine = finish::MachineInfo {
        busy_before: busy,
        scheduling: sched,
    };

    if args.want("tokens") {
        sections::tokens(&ctx).await?;
    }
    if args.want("heartbeats") {
        sections::heartbeats(&ctx).await?;
    }
    if args.want("latency") {
        sections::latency(&ctx).await?;
    }
    if args.want("ingest") {
        sections::ingest(&ctx).await?;
    }
    if args.want("serving") || args.want("viewers") || args.want("memory") {
        serving::run(&ctx).await?;
    }
    if args.want("g2g") {
        g2g::run(&ctx).await?;
    }
    if args.want("cache") {
        anyhow::ensure!(
            servers::on_path("nginx").is_some(),
            "the cache section needs nginx (scripts/bench.sh installs it)"
        );
        cache::run(&ctx).await?;
    }
    if args.want("recording") {
        recording::run(&ctx).await?;
    }
    if args.want("webrtc") {
        webrtc::run(&ctx).await?;
    }
    if args.want("chat") {
        chat::run(&ctx).await?;
    }
    if args.want("https") {
        tls::run(&ctx).await?;
    }
    if args.want("opus") {
        opus::run(&ctx).await?;
    }
    if args.want("ladder") {
        ladder::run(&ctx).await?;
    }
    if args.want("netprofiles") {
        netprofiles::run(&ctx).await?;
    }
    // Everything measured: nothing may linger into the report's `git diff` or the next run.
    sup.stop_all();
    if args.all() {
        finish::full(&ctx, &machine)
    } else {
        finish::subset(&ctx, &machine)
    }
}

/// Polls `f` every `every` for up to `tries` times; the last error if it never succeeds.
pub async fn retry<T, F, Fut>(tries: u32, every: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut last = None;
    for _ in 0..tries {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
        procs::sleep(every).await?;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}
