//! The machine around the benchmarks: free ports, real-time scheduling, how busy other work
//! keeps it, and the cached test media.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::procs::{self, Output};
use super::{Ctx, log, path_str};

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

pub fn check_ports(base: u16) -> anyhow::Result<()> {
    for p in base..=base.saturating_add(51) {
        if port_open(p) {
            bail!("port {p} is in use: set BENCH_PORT_BASE to a free range");
        }
    }
    Ok(())
}

/// Whether this user may use SCHED_RR (root, or CAP_SYS_NICE / an rtprio limit).
pub fn chrt_works() -> bool {
    Command::new("chrt")
        .args(["-r", "1", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// user, nice, system, irq, softirq, steal jiffies of the whole machine.
fn busy_jiffies() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if v.len() < 8 {
        bail!("short cpu line in /proc/stat: {line}");
    }
    Ok(v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
}

/// Busy CPU of the whole machine over 2 s, in % of one core (200 = both cores busy). Jiffies
/// are 1/100 s (USER_HZ), as the shell version assumed.
pub async fn busy_pct() -> anyhow::Result<u64> {
    let a = busy_jiffies()?;
    procs::sleep(Duration::from_secs(2)).await?;
    let b = busy_jiffies()?;
    Ok(b.saturating_sub(a) * 100 / 200)
}

/// The figures mean little while something else loads the machine: waits up to `max_s` for
/// quiet and returns the last busy figure (recorded with the results).
pub async fn quiet_wait(max_s: u64) -> anyhow::Result<u64> {
    let mut waited = 0;
    loop {
        let b = busy_pct().await?;
        if b <= 20 {
            return Ok(b);
        }
        if waited >= max_s {
            log(&format!(
                "WARNING: the machine is still {b} % busy (of one core) with other work; benchmarking anyway (each result records the CPU others used)"
            ));
            return Ok(b);
        }
        eprintln!(
            "[bench] machine {b} % busy with other work; waiting for it to settle ({waited}/{max_s} s)"
        );
        procs::sleep(Duration::from_secs(8)).await?;
        waited += 10;
    }
}

/// 720p30 x264 CBR 6 Mbit/s + AAC, 10 s.
const FFMPEG_ARGS: [&str; 44] = [
    "-f",
    "lavfi",
    "-i",
    "testsrc2=size=1280x720:rate=30",
    "-f",
    "lavfi",
    "-i",
    "sine=frequency=440:sample_rate=48000",
    "-t",
    "10",
    "-vf",
    "noise=alls=30:allf=t",
    "-pix_fmt",
    "yuv420p",
    "-c:v",
    "libx264",
    "-preset",
    "veryfast",
    "-tune",
    "zerolatency",
    "-g",
    "30",
    "-keyint_min",
    "30",
    "-sc_threshold",
    "0",
    "-b:v",
    "6M",
    "-minrate",
    "6M",
    "-maxrate",
    "6M",
    "-bufsize",
    "6M",
    "-c:a",
    "aac",
    "-b:a",
    "128k",
    "-ar",
    "48000",
    "-ac",
    "2",
    "-f",
    "flv",
];

/// 640x360 30 fps x264 1.4 Mbit/s + AAC 96 kbit/s, 10 s: its 200 ms parts are ~40 KB.
const SMALL_ARGS: [&str; 44] = [
    "-f",
    "lavfi",
    "-i",
    "testsrc2=size=640x360:rate=30",
    "-f",
    "lavfi",
    "-i",
    "sine=frequency=440:sample_rate=48000",
    "-t",
    "10",
    "-vf",
    "noise=alls=20:allf=t",
    "-pix_fmt",
    "yuv420p",
    "-c:v",
    "libx264",
    "-preset",
    "veryfast",
    "-tune",
    "zerolatency",
    "-g",
    "30",
    "-keyint_min",
    "30",
    "-sc_threshold",
    "0",
    "-b:v",
    "1400k",
    "-minrate",
    "1400k",
    "-maxrate",
    "1400k",
    "-bufsize",
    "1400k",
    "-c:a",
    "aac",
    "-b:a",
    "96k",
    "-ar",
    "48000",
    "-ac",
    "2",
    "-f",
    "flv",
];

/// The cache name depends on the encoder settings, as the shell version named it (the first 12
/// hex digits of the sha256 of the arguments, each followed by a space), so that files it
/// encoded are reused.
fn args_hash(args: &[&str]) -> anyhow::Result<String> {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("sha256sum")?;
    let mut stdin = c.stdin.take().context("sha256sum stdin")?;
    for a in args {
        write!(stdin, "{a} ")?;
    }
    drop(stdin);
    let out = c.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .chars()
        .take(12)
        .collect())
}

async fn encode(ctx: &Ctx<'_>, args: &[&str], out: &PathBuf) -> anyhow::Result<()> {
    let tmp = out.with_extension("flv.tmp");
    let mut all = Vec::from(crate::args!["-hide_banner", "-loglevel", "error", "-y"]);
    all.extend(args.iter().map(|s| s.to_string()));
    all.push(path_str(&tmp));
    let cmd = ctx
        .launch
        .command(false, std::path::Path::new("ffmpeg"), &all);
    ctx.sup
        .run("ffmpeg (test media)", cmd, Output::Inherit)
        .await?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// The 720p test stream (cached under target/bench-media).
pub async fn test_media(ctx: &Ctx<'_>) -> anyhow::Result<PathBuf> {
    let flv = ctx
        .media
        .join(format!("720p30-6M-{}.flv", args_hash(&FFMPEG_ARGS)?));
    if std::fs::metadata(&flv).map(|m| m.len()).unwrap_or(0) == 0 {
        log("encoding the test stream (ffmpeg, ~30 s)");
        encode(ctx, &FFMPEG_ARGS, &flv).await?;
    }
    Ok(flv)
}

/// The small stream of serving and viewers (cached).
pub async fn small_media(ctx: &Ctx<'_>) -> anyhow::Result<PathBuf> {
    let flv = ctx.media.join("360p30-1400k.flv");
    if std::fs::metadata(&flv).map(|m| m.len()).unwrap_or(0) == 0 {
        encode(ctx, &SMALL_ARGS, &flv).await?;
    }
    Ok(flv)
}

/// The children of `pid` (nginx's workers), from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// First line of a command's output (stdout, else stderr), or "?".
pub fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "?".into())
}
