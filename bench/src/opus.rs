//! `classcast-bench opus-encode`: the CPU one stream's Opus encoder takes, classcast's (ropus,
//! the pure-Rust port of libopus the slave's WebRTC transcoder links) against libopus (the
//! ffmpeg on PATH, `-c:a libopus`) on the same PCM in the same run.
//!
//! The PCM (stereo f32, 48 kHz) is generated here and written to a file ffmpeg reads. libopus's
//! figure is ffmpeg's user + sys CPU (`wait4`) minus that of the same command with
//! `-c:a pcm_f32le` (reading, the filter graph, the muxer: ffmpeg's own overhead); ropus's is
//! this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) around building the encoder and encoding
//! every 20 ms frame. Runs are interleaved (overhead, then per setting libopus and ropus), and
//! each figure is the median of its runs. The output bitrate is the Opus packets' bytes (ffmpeg's
//! from `-f framecrc`, without a container) × 8 / the audio's seconds.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::stats::{round3, system_busy_seconds};

/// Opus's own rate.
const RATE: u32 = 48_000;
/// 20 ms at 48 kHz, per channel.
const FRAME: usize = 960;
/// What the slave gives a stereo stream (mono streams get 64 kbit/s).
const BITRATE: u32 = 96_000;

pub struct OpusArgs {
    /// Where the PCM file goes (removed at the end).
    pub work: PathBuf,
    pub seconds: u32,
    pub runs: usize,
}

/// One encoder at one setting: a line of the results.
#[derive(Debug, Serialize)]
pub struct OpusResult {
    pub bench: &'static str,
    /// `libopus` or `ropus`.
    pub encoder: &'static str,
    pub version: String,
    /// `slave` (what the slave's transcoder builds) or `ffmpeg` (ffmpeg's libopus defaults).
    pub settings: &'static str,
    pub complexity: u8,
    pub vbr_constraint: bool,
    pub channels: u32,
    pub target_kbit_s: f64,
    pub audio_s: f64,
    /// CPU seconds of each run (for libopus: ffmpeg's, overhead included).
    pub cpu_s_runs: Vec<f64>,
    /// libopus only: ffmpeg's CPU seconds with `-c:a pcm_f32le`, each run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overhead_cpu_s_runs: Vec<f64>,
    /// The encoder's CPU seconds (median; for libopus net of ffmpeg's median overhead).
    pub cpu_s: f64,
    pub pct_core_per_stream: f64,
    pub bytes: u64,
    pub packets: u64,
    pub kbit_s: f64,
    pub command: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub overhead_command: String,
    /// CPU of everything else on the machine during the measurement, % of a core.
    pub other_pct_core: f64,
}

/// An encoder setting both encoders run at.
struct Setting {
    key: &'static str,
    /// ropus: `None` keeps the builder's default, as the slave does.
    complexity: Option<u8>,
    vbr_constraint: Option<bool>,
}

const SETTINGS: [Setting; 2] = [
    // What slave/src/webrtc/transcode.rs builds: only the bitrate set.
    Setting {
        key: "slave",
        complexity: None,
        vbr_constraint: None,
    },
    // What `ffmpeg -c:a libopus -vbr on` runs: its compression_level defaults to 10, and `on`
    // is unconstrained VBR.
    Setting {
        key: "ffmpeg",
        complexity: Some(10),
        vbr_constraint: Some(false),
    },
];

/// Deterministic stereo test signal, interleaved: per channel a tone, a repeating linear chirp
/// and a little uniform noise, each different on the two channels, so that the encoder has
/// tonal, sweeping and noisy content to code and the channels do not collapse to mid only.
pub fn test_pcm(seconds: u32) -> Vec<f32> {
    // (tone Hz, chirp from Hz, to Hz, over s, noise seed)
    const CH: [(f64, f64, f64, f64, u64); 2] = [
        (440.0, 200.0, 8_000.0, 4.0, 0x9E37_79B9_7F4A_7C15),
        (554.37, 6_000.0, 300.0, 3.0, 0xD1B5_4A32_D192_ED03),
    ];
    let n = seconds as usize * RATE as usize;
    let mut seeds = [CH[0].4, CH[1].4];
    let mut pcm = Vec::with_capacity(n * 2);
    for i in 0..n {
        let t = i as f64 / f64::from(RATE);
        for (c, &(tone, f0, f1, period, _)) in CH.iter().enumerate() {
            let tau = t % period;
            let chirp_phase = f0 * tau + (f1 - f0) * tau * tau / (2.0 * period);
            let tone = (std::f64::consts::TAU * tone * t).sin();
            let chirp = (std::f64::consts::TAU * chirp_phase).sin();
            // xorshift64*: the top 24 bits as a uniform value in [-1, 1).
            let s = &mut seeds[c];
            *s ^= *s >> 12;
            *s ^= *s << 25;
            *s ^= *s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            let noise = r as f64 / f64::from(1u32 << 23) - 1.0;
            pcm.push((0.3 * tone + 0.2 * chirp + 0.02 * noise) as f32);
        }
    }
    pcm
}

/// Median of a few figures (the lower middle of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

/// (bytes, packets) of the packets `ffmpeg -f framecrc` lists: `stream, dts, pts, duration,
/// size, crc[, side data]` per packet, `#` comment lines.
pub fn framecrc_bytes(text: &str) -> (u64, u64) {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(',').nth(4)?.trim().parse::<u64>().ok())
        .fold((0, 0), |(b, n), size| (b + size, n + 1))
}

fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// This process's CPU and that of its waited-for children (the ffmpeg runs), in seconds.
fn own_cpu_s() -> f64 {
    let mut total = 0.0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage writes the struct it is given.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut ru) } == 0 {
            total += timeval_s(ru.ru_utime) + timeval_s(ru.ru_stime);
        }
    }
    total
}

fn timeval_s(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 * 1e-6
}

/// Runs `cmd` to its end and returns its user + sys CPU seconds (from `wait4`) and stdout.
fn child_cpu_s(cmd: &mut Command) -> anyhow::Result<(f64, String)> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id() as libc::pid_t;
    // framecrc output is a few hundred KB: read it all before reaping.
    let mut out = String::new();
    if let Some(mut o) = child.stdout {
        std::io::Read::read_to_string(&mut o, &mut out)?;
    }
    let mut status = 0;
    // SAFETY: a zeroed rusage for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child; `child` is never waited on by std afterwards.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (wait status {status})");
    }
    Ok((timeval_s(ru.ru_utime) + timeval_s(ru.ru_stime), out))
}

/// ffmpeg reading the PCM file, then `codec` args (the output options) to `out` (`-f null -`).
fn ffmpeg_args(pcm: &str, codec: &[String], out: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["-hide_banner", "-nostdin", "-loglevel", "error"]
        .iter()
        .chain(&["-f", "f32le", "-ar", "48000", "-ac", "2", "-i"])
        .map(|s| s.to_string())
        .collect();
    a.push(pcm.to_string());
    a.extend_from_slice(codec);
    a.extend(out.iter().map(|s| s.to_string()));
    a
}

/// The libopus options of a setting, as ffmpeg's libopus wrapper takes them.
fn libopus_opts(complexity: u8, constrained: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "-c:a",
        "libopus",
        "-b:a",
        "96k",
        "-application",
        "audio",
        "-frame_duration",
        "20",
        "-vbr",
        if constrained { "constrained" } else { "on" },
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if complexity != 10 {
        // 10 is ffmpeg's default compression_level for libopus.
        a.extend(["-compression_level".to_string(), complexity.to_string()]);
    }
    a
}

/// The command as the report shows it: the temp file's path as `pcm.f32le`.
fn shown(args: &[String]) -> String {
    let mut s = String::from("ffmpeg");
    for a in args {
        let a = if a.ends_with(".f32le") {
            "pcm.f32le"
        } else {
            a
        };
        s.push(' ');
        s.push_str(a);
    }
    s
}

fn ropus_encoder(s: &Setting) -> anyhow::Result<ropus::Encoder> {
    let mut b = ropus::Encoder::builder(RATE, ropus::Channels::Stereo, ropus::Application::Audio)
        .bitrate(ropus::Bitrate::Bits(BITRATE));
    if let Some(c) = s.complexity {
        b = b.complexity(c);
    }
    if let Some(v) = s.vbr_constraint {
        b = b.vbr(true).vbr_constraint(v);
    }
    b.build()
        .map_err(|e| anyhow::anyhow!("ropus encoder: {e:?}"))
}

/// One ropus run: (this thread's CPU seconds, bytes, packets).
fn ropus_run(pcm: &[f32], s: &Setting) -> anyhow::Result<(f64, u64, u64)> {
    let mut out = vec![0u8; 4000];
    let (mut bytes, mut packets) = (0u64, 0u64);
    let t0 = thread_cpu_s();
    let mut enc = ropus_encoder(s)?;
    for frame in pcm.chunks_exact(FRAME * 2) {
        let n = enc
            .encode_float(frame, &mut out)
            .map_err(|e| anyhow::anyhow!("ropus encode: {e:?}"))?;
        bytes += n as u64;
        packets += 1;
    }
    let cpu = thread_cpu_s() - t0;
    std::hint::black_box(&out);
    Ok((cpu, bytes, packets))
}

/// The ropus version the bench was built with, from the workspace's Cargo.lock.
fn ropus_version() -> String {
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    lock.split("[[package]]")
        .find(|p| p.contains("name = \"ropus\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "?".into())
}

fn libopus_version() -> String {
    let ffmpeg = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.split_whitespace().nth(2).map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    let lib = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "libopus0"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!("Debian libopus0 {}", String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_else(|| "libopus".into());
    format!("{lib}, through ffmpeg {ffmpeg}")
}

pub fn run(a: &OpusArgs, results: Option<&PathBuf>) -> anyhow::Result<()> {
    let runs = a.runs.max(1);
    let audio_s = f64::from(a.seconds);
    let pcm = test_pcm(a.seconds);
    std::fs::create_dir_all(&a.work)?;
    let file = a.work.join("opus-test.f32le");
    write_pcm(&file, &pcm)?;
    let pcm_path = file.to_string_lossy().into_owned();
    let null = ["-f", "null", "-"];
    let overhead_args = ffmpeg_args(&pcm_path, &["-c:a".into(), "pcm_f32le".into()], &null);
    // Each setting as ropus builds it; libopus is given the same complexity and VBR mode.
    let mut plan = Vec::new();
    for s in &SETTINGS {
        let e = ropus_encoder(s)?;
        let (c, v) = (e.complexity(), e.vbr_constraint());
        anyhow::ensure!(e.vbr(), "ropus built a CBR encoder");
        let opts = libopus_opts(c, v);
        // The bitrate, once, from the packets ffmpeg lists (libopus is deterministic).
        let (_, crc) = child_cpu_s(Command::new("ffmpeg").args(ffmpeg_args(
            &pcm_path,
            &opts,
            &["-f", "framecrc", "-"],
        )))?;
        let (bytes, packets) = framecrc_bytes(&crc);
        anyhow::ensure!(packets > 0, "ffmpeg -f framecrc listed no packet");
        plan.push((
            s,
            c,
            v,
            ffmpeg_args(&pcm_path, &opts, &null),
            bytes,
            packets,
        ));
    }

    let busy0 = system_busy_seconds();
    let own0 = own_cpu_s();
    let t0 = std::time::Instant::now();
    let mut overhead = Vec::new();
    let mut lib_cpu = vec![Vec::new(); plan.len()];
    let mut rs = vec![Vec::new(); plan.len()];
    for run in 0..runs {
        overhead.push(child_cpu_s(Command::new("ffmpeg").args(&overhead_args))?.0);
        for (i, (s, _, _, args, _, _)) in plan.iter().enumerate() {
            lib_cpu[i].push(child_cpu_s(Command::new("ffmpeg").args(args))?.0);
            rs[i].push(ropus_run(&pcm, s)?);
        }
        eprintln!("opus-encode: run {}/{runs} done", run + 1);
    }
    let wall = t0.elapsed().as_secs_f64();
    let other = ((system_busy_seconds() - busy0) - (own_cpu_s() - own0)).max(0.0) / wall * 100.0;
    let _ = std::fs::remove_file(&file);

    let over = median(overhead.clone());
    let (lib_v, rs_v) = (libopus_version(), ropus_version());
    for (i, (s, c, v, args, bytes, packets)) in plan.iter().enumerate() {
        let lib = median(lib_cpu[i].clone()) - over;
        let line = OpusResult {
            bench: "opus_encode",
            encoder: "libopus",
            version: lib_v.clone(),
            settings: s.key,
            complexity: *c,
            vbr_constraint: *v,
            channels: 2,
            target_kbit_s: f64::from(BITRATE) / 1000.0,
            audio_s,
            cpu_s_runs: lib_cpu[i].iter().map(|x| round3(*x)).collect(),
            overhead_cpu_s_runs: overhead.iter().map(|x| round3(*x)).collect(),
            cpu_s: round3(lib),
            pct_core_per_stream: round3(lib / audio_s * 100.0),
            bytes: *bytes,
            packets: *packets,
            kbit_s: crate::stats::round1(*bytes as f64 * 8.0 / audio_s / 1000.0),
            command: shown(args),
            overhead_command: shown(&overhead_args),
            other_pct_core: crate::stats::round1(other),
        };
        emit(results, &line)?;
        let cpu = median(rs[i].iter().map(|r| r.0).collect());
        let (bytes, packets) = (rs[i][0].1, rs[i][0].2);
        let api = match s.complexity {
            None => ".bitrate(Bitrate::Bits(96_000)), as the slave builds it".to_string(),
            Some(_) => format!(
                ".bitrate(Bitrate::Bits(96_000)).complexity({c}).vbr(true).vbr_constraint({v})"
            ),
        };
        let line = OpusResult {
            encoder: "ropus",
            version: rs_v.clone(),
            cpu_s_runs: rs[i].iter().map(|r| round3(r.0)).collect(),
            overhead_cpu_s_runs: Vec::new(),
            cpu_s: round3(cpu),
            pct_core_per_stream: round3(cpu / audio_s * 100.0),
            bytes,
            packets,
            kbit_s: crate::stats::round1(bytes as f64 * 8.0 / audio_s / 1000.0),
            command: format!(
                "classcast-bench opus-encode, in process: Encoder::builder(48_000, Channels::Stereo, Application::Audio){api}, then encode_float per 960-sample frame"
            ),
            overhead_command: String::new(),
            ..line
        };
        emit(results, &line)?;
    }
    Ok(())
}

fn emit(results: Option<&PathBuf>, v: &OpusResult) -> anyhow::Result<()> {
    eprintln!(
        "opus-encode: {} ({}): {:.3} % of a core per stream, {:.1} kbit/s",
        v.encoder, v.settings, v.pct_core_per_stream, v.kbit_s
    );
    crate::emit(results, v)
}

fn write_pcm(path: &Path, pcm: &[f32]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for s in pcm {
        f.write_all(&s.to_le_bytes())?;
    }
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pcm_is_deterministic_and_not_trivial() {
        let a = test_pcm(2);
        assert_eq!(a.len(), 2 * 48_000 * 2);
        assert_eq!(a, test_pcm(2), "the same samples every time");
        // A longer signal starts with the same samples.
        assert_eq!(&test_pcm(3)[..a.len()], &a[..]);
        let (l, r): (Vec<f32>, Vec<f32>) = a.chunks_exact(2).map(|f| (f[0], f[1])).unzip();
        assert_ne!(l, r, "the channels differ");
        assert!(a.iter().all(|s| s.abs() <= 0.52), "no clipping");
        let rms = |v: &[f32]| (v.iter().map(|s| s * s).sum::<f32>() / v.len() as f32).sqrt();
        for ch in [&l, &r] {
            assert!((0.2..0.3).contains(&rms(ch)), "rms {}", rms(ch));
        }
    }

    #[test]
    fn framecrc_sums_packet_sizes() {
        let text = "#tb 0: 1/48000\n#media_type 0: audio\n#codec_id 0: opus\n\
                    0,       -312,       -312,      960,      283, 0x5a1b2c3d, S=1,       10\n\
                    0,        648,        648,      960,      301, 0x0badf00d\n";
        assert_eq!(framecrc_bytes(text), (584, 2));
    }

    #[test]
    fn median_of_runs() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn commands_as_shown() {
        let a = ffmpeg_args(
            "/tmp/x/opus-test.f32le",
            &libopus_opts(10, false),
            &["-f", "null", "-"],
        );
        assert_eq!(
            shown(&a),
            "ffmpeg -hide_banner -nostdin -loglevel error -f f32le -ar 48000 -ac 2 -i pcm.f32le \
             -c:a libopus -b:a 96k -application audio -frame_duration 20 -vbr on -f null -"
        );
        assert!(
            libopus_opts(9, true)
                .join(" ")
                .ends_with("-vbr constrained -compression_level 9")
        );
    }
}
