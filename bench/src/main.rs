//! `classcast-bench`: load and latency benchmarks for a running classcast cluster.
//!
//! Every subcommand prints a human summary and then one JSON line (the last line of its
//! output); `--results FILE` also appends that line to FILE. `report` turns a results file into
//! `docs/benchmarks.md`. `run` starts fresh clusters and peers, runs them all and writes the
//! report (`scripts/bench.sh` builds the binaries and execs it).

mod chat;
mod control;
mod flv;
mod http;
mod ingest;
mod latency;
mod netlab;
mod opus;
mod orchestrate;
mod report;
mod rtmp;
mod stats;
mod util;
mod viewers;
mod whep;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "classcast-bench",
    version,
    about = "Benchmarks for a classcast cluster"
)]
struct Cli {
    /// Append each result's JSON line to this file.
    #[arg(long, global = true)]
    results: Option<PathBuf>,
    /// Worker threads of the load generator's runtime (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every benchmark against freshly started release processes on loopback, then the report
    /// (what scripts/bench.sh runs; its environment knobs are these flags' variables).
    Run(Box<orchestrate::RunArgs>),
    /// WebRTC viewers: N WHEP clients on one stream, their loss and the slave's CPU. Each
    /// client asks the master for its own student token, as a student does (a slave keeps
    /// one session per token).
    WhepViewers {
        /// The master's URL.
        #[arg(long)]
        master: String,
        /// The stream's name.
        #[arg(long)]
        stream: String,
        #[arg(long, default_value_t = 100)]
        viewers: usize,
        #[arg(long, default_value_t = 15.0)]
        seconds: f64,
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long, default_value = "classcast")]
        label: String,
        /// The clients' own address (their ICE candidate), e.g. a netlab namespace's.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
    },
    /// Class messages a slave relays: READERS students reading the class's messages, RATE
    /// messages a second posted in chat mode, for SECONDS; delivery, lag, the slave's CPU/RSS.
    ChatRelay {
        #[arg(long)]
        master: String,
        #[arg(long)]
        stream: String,
        /// The teacher password (to switch the class to chat mode).
        #[arg(long, env = "TEACHER_PASSWORD", hide_env_values = true)]
        teacher: String,
        #[arg(long, default_value_t = 1000)]
        readers: usize,
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        #[arg(long, default_value_t = 15.0)]
        seconds: f64,
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long, default_value = "classcast")]
        label: String,
    },
    /// Opus encode CPU per stream: ropus (in this process) against libopus (the ffmpeg on
    /// PATH) on the same generated stereo PCM at 96 kbit/s, 20 ms frames.
    OpusEncode {
        /// Directory for the PCM file ffmpeg reads (removed afterwards).
        #[arg(long, default_value = "/tmp")]
        work: PathBuf,
        /// Seconds of audio.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Runs per encoder and setting (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// A student's network: a namespace joined to this host by an emulated link (delay and
    /// jitter, rate, bursty loss, UDP blocked), until SIGTERM or stdin closes. Needs root.
    Netlab {
        /// The namespace (≤ 12 characters); its devices are NAMEh and NAMEs.
        #[arg(long)]
        name: String,
        /// Addresses 10.77.INDEX.1 (this host) and 10.77.INDEX.2 (the namespace).
        #[arg(long)]
        index: u8,
        /// Toward the student: clean, good, busy, poor or udp-blocked.
        #[arg(long, default_value = "busy")]
        profile: String,
        /// From the student (default: the same profile).
        #[arg(long)]
        up_profile: Option<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Student tokens per second from POST /api/token (registers fake slaves first).
    Tokens {
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        master: String,
        #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Fake slaves to register and balance across.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The master's PID, to report its CPU use next to the generator's.
        #[arg(long)]
        master_pid: Option<u32>,
    },
    /// Heartbeats per second from many simulated slaves, and GET /cluster/nodes latency.
    Heartbeats {
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        master: String,
        #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long)]
        master_pid: Option<u32>,
    },
    /// RTMP publish → LL-HLS part latency at the origin, and the edge's lag behind it.
    Latency {
        /// `rtmp://host:port/live/NAME?key=KEY` (the key in the publish name, as OBS sends it).
        #[arg(long)]
        publish: String,
        /// Origin slave's HTTP base URL.
        #[arg(long)]
        origin: String,
        /// Edge slave's HTTP base URL (it mirrors the stream from the origin).
        #[arg(long)]
        edge: Option<String>,
        /// Cluster secret: the followers read as peers (`Authorization: Bearer`).
        #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long)]
        flv: PathBuf,
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        /// Parts whose first frame was sent in the first this-many seconds are not counted.
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        /// Write per-part figures (CSV) to this file.
        #[arg(long)]
        dump: Option<PathBuf>,
    },
    /// Server CPU and RSS while K publishers stream into it (no viewers).
    IngestCpu {
        /// PID(s) of the server process(es) to measure (comma-separated or repeated).
        #[arg(long = "pid", value_delimiter = ',', required = true)]
        pids: Vec<u32>,
        /// `rtmp://host:port/live`; each stream publishes to `<base>/<key>`.
        #[arg(long)]
        publish_base: String,
        /// Stream keys, one per stream (`NAME?key=TOKEN`); missing ones become `bench<i>`.
        #[arg(long = "keys", value_delimiter = ',')]
        keys: Vec<String>,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long)]
        flv: PathBuf,
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// The server's Prometheus metrics URL: at the end, read the media it says it holds
        /// (`classcast_slave_media_held_bytes`), to tell held media from allocator retention.
        #[arg(long)]
        metrics_url: Option<String>,
        /// Seconds of publishing before the measurement starts.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
        /// Seconds of idle measurement before publishing.
        #[arg(long, default_value_t = 3.0)]
        baseline: f64,
        /// Name of the server in the report.
        #[arg(long, default_value = "classcast")]
        label: String,
    },
    /// Waits until a URL answers 2xx (for scripts).
    Wait {
        #[arg(long)]
        url: String,
        /// Also wait until the JSON answer's `healthy_nodes` reaches this.
        #[arg(long)]
        min_nodes: Option<u64>,
        #[arg(long, default_value_t = 20.0)]
        timeout: f64,
    },
    /// Logs in as a teacher; prints `<rtmp publish URL with key> <HLS base URL of that slave>`.
    TeacherKey {
        #[arg(long)]
        master: String,
        #[arg(long, env = "TEACHER_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long)]
        stream: String,
    },
    /// N simulated LL-HLS players against one slave, ramped in steps (part GET p99, errors).
    Viewers {
        /// Master base URL (one student token per viewer comes from it).
        #[arg(long)]
        master: String,
        /// The slave's HTTP base URL (the one the tokens name).
        #[arg(long)]
        slave: String,
        #[arg(long)]
        stream: String,
        /// Viewer counts to run, one after the other.
        #[arg(long, value_delimiter = ',', default_value = "250,500,1000,1500,2000")]
        steps: Vec<usize>,
        /// Measured seconds per step.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Seconds after the viewers joined before a step is measured.
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        #[arg(long)]
        slave_pid: Option<u32>,
        #[arg(long, default_value_t = 50.0)]
        goal_p99_ms: f64,
        /// Label of the server in the results.
        #[arg(long, default_value = "classcast")]
        label: String,
        /// Synchronized fixed-URL mode (a reference for servers without blocking reload): the
        /// playlist path every viewer GETs on each tick, then `--sync-part`.
        #[arg(long, requires = "sync_part")]
        sync_playlist: Option<String>,
        #[arg(long, requires = "sync_playlist")]
        sync_part: Option<String>,
        /// Tick interval of the synchronized mode (the part duration).
        #[arg(long, default_value_t = 200)]
        sync_interval_ms: u64,
        /// `/metrics` of the classcast slave behind the server under test (a cache in front
        /// of it): each step reports the requests per part that reached the slave.
        #[arg(long)]
        origin_metrics: Option<String>,
    },
    /// Prints a student's HLS playlist URL (with its token) for a stream.
    ViewerUrl {
        #[arg(long)]
        master: String,
        #[arg(long)]
        stream: String,
    },
    /// Renders a results file (JSON lines) into the benchmarks document.
    Report {
        #[arg(long)]
        input: PathBuf,
        /// `key: value` lines describing the machine (written by `run`).
        #[arg(long)]
        machine: PathBuf,
        /// Full `lscpu` output, shown folded.
        #[arg(long)]
        lscpu: Option<PathBuf>,
        /// Hand-written observations appended verbatim.
        #[arg(long)]
        notes: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn emit<T: Serialize>(results: Option<&PathBuf>, value: &T) -> anyhow::Result<()> {
    let line = serde_json::to_string(value)?;
    println!("{line}");
    if let Some(path) = results {
        orchestrate::finish::append(path, &line)?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Run(args) = cli.cmd {
        return orchestrate::main(*args);
    }
    if let Cmd::OpusEncode {
        work,
        seconds,
        runs,
    } = &cli.cmd
    {
        // No runtime: the encoder is timed on this thread.
        let a = opus::OpusArgs {
            work: work.clone(),
            seconds: (*seconds).max(1),
            runs: *runs,
        };
        return opus::run(&a, cli.results.as_ref());
    }
    if let Cmd::Netlab {
        name,
        index,
        profile,
        up_profile,
        seed,
    } = &cli.cmd
    {
        let named = |p: &str| {
            netlab::LinkProfile::named(p).ok_or_else(|| anyhow::anyhow!("no profile {p:?}"))
        };
        return netlab::run(netlab::LabArgs {
            name: name.clone(),
            index: *index,
            down: named(profile)?,
            up: named(up_profile.as_deref().unwrap_or(profile))?,
            seed: *seed,
        });
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build()?;
    let results = cli.results.as_ref();
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Tokens {
                master,
                secret,
                concurrency,
                seconds,
                nodes,
                master_pid,
            } => {
                let r = control::tokens(control::TokensArgs {
                    master,
                    secret,
                    concurrency: concurrency.max(1),
                    seconds,
                    nodes: nodes.max(1),
                    master_pid,
                })
                .await?;
                control::print_tokens(&r);
                emit(results, &r)
            }
            Cmd::Heartbeats {
                master,
                secret,
                nodes,
                seconds,
                concurrency,
                master_pid,
            } => {
                let r = control::heartbeats(control::HeartbeatsArgs {
                    master,
                    secret,
                    nodes: nodes.max(1),
                    concurrency: concurrency.max(1),
                    seconds,
                    master_pid,
                })
                .await?;
                control::print_heartbeats(&r);
                emit(results, &r)
            }
            Cmd::Latency {
                publish,
                origin,
                edge,
                secret,
                flv,
                seconds,
                warmup,
                dump,
            } => {
                let r = latency::run(latency::LatencyArgs {
                    publish,
                    origin,
                    edge,
                    secret,
                    flv,
                    seconds,
                    warmup,
                    dump,
                })
                .await?;
                latency::print(&r);
                emit(results, &r)
            }
            Cmd::WhepViewers {
                master,
                stream,
                viewers,
                seconds,
                pid,
                label,
                bind,
            } => {
                let targets = whep::targets(&master, &stream, viewers).await?;
                let r = whep::run(whep::WhepArgs {
                    targets,
                    viewers,
                    seconds,
                    pid,
                    label,
                    bind,
                })
                .await?;
                println!("{}", serde_json::to_string(&r)?);
                emit(results, &r)
            }
            Cmd::IngestCpu {
                pids,
                publish_base,
                keys,
                streams,
                flv,
                seconds,
                metrics_url,
                settle,
                baseline,
                label,
            } => {
                let r = ingest::run(ingest::IngestArgs {
                    metrics_url,
                    label,
                    pids,
                    publish_base,
                    keys,
                    streams,
                    flv,
                    seconds,
                    settle,
                    baseline,
                })
                .await?;
                ingest::print(&r);
                emit(results, &r)
            }
            Cmd::Wait {
                url,
                min_nodes,
                timeout,
            } => util::wait(&url, min_nodes, std::time::Duration::from_secs_f64(timeout)).await,
            Cmd::TeacherKey {
                master,
                password,
                stream,
            } => {
                println!("{}", util::teacher_key(&master, &password, &stream).await?);
                Ok(())
            }
            Cmd::Viewers {
                master,
                slave,
                stream,
                steps,
                seconds,
                warmup,
                slave_pid,
                goal_p99_ms,
                label,
                sync_playlist,
                sync_part,
                sync_interval_ms,
                origin_metrics,
            } => {
                let sync = sync_playlist
                    .zip(sync_part)
                    .map(|(playlist, part)| viewers::SyncArgs {
                        playlist,
                        part,
                        interval: std::time::Duration::from_millis(sync_interval_ms),
                    });
                let r = viewers::run(viewers::ViewersArgs {
                    master,
                    slave,
                    stream,
                    steps,
                    seconds,
                    warmup,
                    slave_pid,
                    goal_p99_ms,
                    label,
                    sync,
                    origin_metrics,
                })
                .await?;
                viewers::print(&r);
                emit(results, &r)
            }
            Cmd::ChatRelay {
                master,
                stream,
                teacher,
                readers,
                rate,
                seconds,
                pid,
                label,
            } => {
                let r = chat::run(
                    &master, &stream, &teacher, readers, rate, seconds, pid, label,
                )
                .await?;
                chat::print(&r);
                emit(results, &r)
            }
            Cmd::ViewerUrl { master, stream } => {
                println!("{}", util::viewer_url(&master, &stream).await?);
                Ok(())
            }
            Cmd::Report {
                input,
                machine,
                lscpu,
                notes,
                out,
            } => report::write(&input, &machine, lscpu.as_deref(), notes.as_deref(), &out),
            Cmd::Run(_) | Cmd::OpusEncode { .. } | Cmd::Netlab { .. } => {
                unreachable!("handled before the runtime starts")
            }
        }
    })
}
