//! After the benchmarks: the machine description, merging a subset into the last full run's
//! results, and rendering the document.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::Context;

use super::sample::first_line;
use super::{Ctx, log};

pub struct MachineInfo {
    pub busy_before: u64,
    pub scheduling: String,
}

pub fn append(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{line}")?;
    Ok(())
}

fn out(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `abc1234`, `abc1234 (with uncommitted changes)` or `unknown`.
fn commit() -> String {
    let c = out("git", &["rev-parse", "--short", "HEAD"])
        .trim()
        .to_string();
    let c = if c.is_empty() { "unknown".into() } else { c };
    let clean = Command::new("git")
        .args(["diff", "--quiet", "HEAD"])
        .status()
        .is_ok_and(|s| s.success());
    if clean {
        c
    } else {
        format!("{c} (with uncommitted changes)")
    }
}

fn utc_now() -> String {
    out("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        .trim()
        .to_string()
}

/// `0.14.0 (`cargo install …`)`, or what the binary says about itself.
fn xiu_version(bin: &Path) -> String {
    let list = out("cargo", &["install", "--list"]);
    let v = list.lines().find_map(|l| {
        l.strip_prefix("xiu v")
            .and_then(|r| r.strip_suffix(':'))
            .map(str::to_string)
    });
    let cargo_bin = super::servers::xiu_bin().filter(|b| b.starts_with(cargo_home()));
    match v {
        Some(v) if cargo_bin.as_deref() == Some(bin) => {
            format!("{v} (`cargo install xiu --version {v} --locked`)")
        }
        _ => first_line(&bin.to_string_lossy(), &["--version"]),
    }
}

fn cargo_home() -> std::path::PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

/// The `key: value` lines of the report's Machine section.
fn machine_info(ctx: &Ctx<'_>, m: &MachineInfo) -> String {
    let lscpu = out("lscpu", &[]);
    let field = |k: &str| {
        lscpu
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    let virt = match field("Hypervisor vendor:") {
        Some(v) if !v.is_empty() => format!("{v} VM"),
        _ => "bare metal".into(),
    };
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    let ffmpeg = first_line("ffmpeg", &["-version"]);
    let ffmpeg: Vec<&str> = ffmpeg.split(' ').take(3).collect();
    let mut s = String::new();
    let mut kv = |k: &str, v: String| s.push_str(&format!("{k}: {v}\n"));
    kv("date", utc_now());
    kv("commit", commit());
    kv("nproc", out("nproc", &[]).trim().to_string());
    kv("busy_before", m.busy_before.to_string());
    kv("scheduling", m.scheduling.clone());
    kv(
        "cpu",
        format!("{} ({virt})", field("Model name:").unwrap_or_default()),
    );
    kv("memory", format!("{:.0} GiB", mem_kib as f64 / 1048576.0));
    kv("kernel", out("uname", &["-sr"]).trim().to_string());
    kv("os", os);
    kv("rustc", out("rustc", &["--version"]).trim().to_string());
    kv("ffmpeg", ffmpeg.join(" "));
    if ctx.nginx {
        let v = first_line("nginx", &["-v"]);
        let v = v.strip_prefix("nginx version: ").unwrap_or(&v).to_string();
        let module = out("dpkg-query", &["-W", "-f=${Version}", "libnginx-mod-rtmp"]);
        let module = if module.is_empty() {
            "?".into()
        } else {
            module
        };
        kv("nginx", format!("{v} with libnginx-mod-rtmp {module}"));
    } else {
        kv("nginx", "not run".into());
    }
    if let Some(x) = &ctx.xiu {
        kv("xiu", xiu_version(x));
    }
    s
}

/// `classcast-bench report` on `input`, with the machine files and notes kept in `media`.
pub fn render(root: &Path, input: &Path, media: &Path, out: &Path) -> anyhow::Result<()> {
    render_with(
        root,
        input,
        &media.join("last-machine.txt"),
        &media.join("last-lscpu.txt"),
        out,
    )
}

fn render_with(
    root: &Path,
    input: &Path,
    machine: &Path,
    lscpu: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let notes = root.join("bench/OBSERVATIONS.md");
    crate::report::write(
        input,
        machine,
        Some(lscpu),
        notes.is_file().then_some(notes.as_path()),
        out,
    )
}

/// A full run: the document from this run's results, which become the last results.
pub fn full(ctx: &Ctx<'_>, m: &MachineInfo) -> anyhow::Result<()> {
    let out = &ctx.args.out;
    log(&format!("writing {}", out.display()));
    let machine = ctx.work.join("machine.txt");
    let lscpu = ctx.work.join("lscpu.txt");
    std::fs::write(&machine, machine_info(ctx, m))?;
    std::fs::write(&lscpu, out_lscpu())?;
    render_with(&ctx.root, &ctx.results, &machine, &lscpu, out)?;
    let media = &ctx.media;
    std::fs::copy(&ctx.results, media.join("last-results.jsonl"))?;
    std::fs::copy(&machine, media.join("last-machine.txt"))?;
    std::fs::copy(&lscpu, media.join("last-lscpu.txt"))?;
    std::fs::copy(
        ctx.work.join("latency-parts.csv"),
        media.join("last-latency-parts.csv"),
    )
    .context("latency-parts.csv")?;
    log(&format!(
        "done: {} (raw results in target/bench-media/last-results.jsonl, per-part latencies in last-latency-parts.csv)",
        out.display()
    ));
    Ok(())
}

fn out_lscpu() -> String {
    out("lscpu", &[])
}

/// The `"bench":…,"label":…,"player":…` prefix g2g.mjs writes: one glass-to-glass
/// configuration (kind of run, label, player).
fn g2g_key(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let bench = v["bench"].as_str()?;
    if !bench.starts_with("g2g") {
        return None;
    }
    Some(format!(
        "\"bench\":{},\"label\":{},\"player\":{}",
        v["bench"], v["label"], v["player"]
    ))
}

/// Which of the last results a subset replaces: everything its sections measure (ingest keeps
/// the memory section's line, which is an ingest_cpu line too; g2g only the configurations
/// measured now).
pub fn merge(last: &str, subset: &[&str], new: &str, stamp: &str) -> String {
    let mut keep: Vec<String> = last.lines().map(str::to_string).collect();
    let drop = |keep: &mut Vec<String>, pat: &str| keep.retain(|l| !l.contains(pat));
    for b in subset {
        match *b {
            "memory" => drop(&mut keep, "\"server\":\"classcast-memory\""),
            "ingest" => {
                // Section 7's and section 15's ingest runs are theirs.
                let mem: Vec<String> = keep
                    .iter()
                    .filter(|l| {
                        l.contains("\"server\":\"classcast-memory\"")
                            || l.contains("\"server\":\"classcast-ladder3\"")
                            || l.contains("\"server\":\"classcast-top-only\"")
                    })
                    .cloned()
                    .collect();
                drop(&mut keep, "\"bench\":\"ingest_cpu\"");
                keep.extend(mem);
            }
            // Section 9's runs are viewer runs labelled `cache-tier:…`; section 6 keeps them.
            "cache" => drop(&mut keep, "\"label\":\"cache-tier:"),
            "recording" => {
                for pat in [
                    "\"server\":\"classcast-record-",
                    "\"bench\":\"recording_disk\"",
                    "\"bench\":\"playlist_bytes\"",
                    "\"kind\":\"vod-segment\"",
                ] {
                    drop(&mut keep, pat);
                }
            }
            "opus" => drop(&mut keep, "\"bench\":\"opus_encode\""),
            "chat" => drop(&mut keep, "\"bench\":\"chat_relay\""),
            "ladder" => {
                for pat in [
                    "\"server\":\"classcast-ladder3\"",
                    "\"server\":\"classcast-top-only\"",
                    "\"bench\":\"abr_viewer\"",
                ] {
                    drop(&mut keep, pat);
                }
            }
            "netprofiles" => {
                drop(&mut keep, "\"bench\":\"netprofile");
                drop(&mut keep, "\"bench\":\"ttff_tcp\"");
            }
            "viewers" => keep.retain(|l| {
                !l.contains("\"bench\":\"viewers\"") || l.contains("\"label\":\"cache-tier:")
            }),
            "g2g" => {
                let mut keys: Vec<String> = new.lines().filter_map(g2g_key).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    drop(&mut keep, &k);
                }
            }
            b => drop(&mut keep, &format!("\"bench\":\"{b}\"")),
        }
    }
    let stamp = serde_json::Value::from(stamp).to_string();
    for l in new.lines() {
        match l.strip_prefix('{') {
            Some(rest) => keep.push(format!("{{\"measured\":{stamp},{rest}")),
            None => keep.push(l.to_string()),
        }
    }
    let mut s = keep.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

/// A subset: stamps its results, replaces the same benchmarks' lines in the last full run's
/// results and re-renders the document from them (the other sections keep their figures).
pub fn subset(ctx: &Ctx<'_>, m: &MachineInfo) -> anyhow::Result<()> {
    let media = &ctx.media;
    let stamp = format!(
        "{}, commit `{}`, the machine {} % busy with other work at the start",
        utc_now(),
        commit(),
        m.busy_before
    );
    let last_path = media.join("last-results.jsonl");
    let last = std::fs::read_to_string(&last_path).unwrap_or_default();
    let new = std::fs::read_to_string(&ctx.results).unwrap_or_default();
    let subset: Vec<&str> = ctx.args.only.split(',').collect();
    std::fs::write(&last_path, merge(&last, &subset, &new, &stamp))?;
    let mut extra = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(media.join("extra-results.jsonl"))?;
    extra.write_all(new.as_bytes())?;
    let machine = media.join("last-machine.txt");
    let has_machine = std::fs::metadata(&machine).is_ok_and(|m| m.len() > 0);
    if !has_machine {
        // No full run yet: this subset's machine stands in for it.
        std::fs::write(&machine, machine_info(ctx, m))?;
        std::fs::write(media.join("last-lscpu.txt"), out_lscpu())?;
    } else if let Some(x) = ctx
        .xiu
        .as_ref()
        .filter(|_| ctx.args.want("ingest") || ctx.args.want("g2g"))
    {
        // The xiu figures merged in are from this xiu: name its version with the machine.
        let old = std::fs::read_to_string(&machine)?;
        let mut s: String = old
            .lines()
            .filter(|l| !l.starts_with("xiu: "))
            .map(|l| format!("{l}\n"))
            .collect();
        s.push_str(&format!("xiu: {}\n", xiu_version(x)));
        std::fs::write(&machine, s)?;
    }
    render(&ctx.root, &last_path, media, &ctx.args.out)?;
    log(&format!(
        "done ({}): merged into target/bench-media/last-results.jsonl and rewrote {}",
        ctx.args.only,
        ctx.args.out.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn subset_replaces_its_sections_only() {
        let last = concat!(
            r#"{"bench":"tokens","rps":1}"#,
            "\n",
            r#"{"bench":"ingest_cpu","server":"classcast","streams":1}"#,
            "\n",
            r#"{"bench":"ingest_cpu","server":"classcast-memory","streams":10}"#,
            "\n",
            r#"{"bench":"g2g","label":"a","player":"hls","run":1}"#,
            "\n",
            r#"{"bench":"g2g","label":"b","player":"hls","run":1}"#,
            "\n",
        );
        let new = concat!(
            r#"{"bench":"ingest_cpu","server":"classcast","streams":4}"#,
            "\n",
            r#"{"bench":"g2g","label":"a","player":"hls","run":2}"#,
            "\n",
        );
        let m = merge(last, &["ingest", "g2g"], new, "now");
        let lines: Vec<&str> = m.lines().collect();
        assert_eq!(
            lines,
            [
                r#"{"bench":"tokens","rps":1}"#,
                r#"{"bench":"g2g","label":"b","player":"hls","run":1}"#,
                r#"{"bench":"ingest_cpu","server":"classcast-memory","streams":10}"#,
                r#"{"measured":"now","bench":"ingest_cpu","server":"classcast","streams":4}"#,
                r#"{"measured":"now","bench":"g2g","label":"a","player":"hls","run":2}"#,
            ]
        );
    }

    #[test]
    fn opus_replaces_its_lines_only() {
        let last = concat!(
            r#"{"bench":"webrtc_baseline","server_cpu_pct":0.8}"#,
            "\n",
            r#"{"measured":"then","bench":"opus_encode","encoder":"ropus","cpu_s":1}"#,
            "\n",
        );
        let new = concat!(
            r#"{"bench":"opus_encode","encoder":"ropus","cpu_s":2}"#,
            "\n"
        );
        assert_eq!(
            merge(last, &["opus"], new, "now"),
            concat!(
                r#"{"bench":"webrtc_baseline","server_cpu_pct":0.8}"#,
                "\n",
                r#"{"measured":"now","bench":"opus_encode","encoder":"ropus","cpu_s":2}"#,
                "\n",
            )
        );
    }
}
