//! Publish → part-available latency at the origin, and the edge's lag behind it.
//!
//! A Rust RTMP publisher sends an FLV file in real time and records when each video frame's
//! write returned. Two LL-HLS followers (origin and edge) use blocking playlist reloads and
//! fetch every new part as soon as it is listed, stamping when its body has fully arrived. A
//! part's first video frame is found from its `tfdt` (video track, 90 kHz), which the
//! packager derives from the RTMP timestamp (within a few ms: see `sent_at`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::rtmp::{PublishLog, Publisher, Target};
use crate::stats::Summary;

pub struct LatencyArgs {
    pub publish: String,
    pub origin: String,
    pub edge: Option<String>,
    pub secret: String,
    pub flv: std::path::PathBuf,
    pub seconds: f64,
    pub warmup: f64,
    /// Writes one CSV line per origin part (first dts, (a), (b), edge lag) here.
    pub dump: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
pub struct PartSeen {
    pub first_dts_ms: u64,
    pub arrival: Instant,
    pub bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct LatencyResult {
    pub bench: &'static str,
    pub seconds: f64,
    pub warmup_s: f64,
    pub flv_video_kbps: f64,
    pub parts_origin: usize,
    pub parts_edge: usize,
    pub mean_part_ms: f64,
    pub mean_part_kib: f64,
    /// (a) origin arrival − send of the part's first frame.
    pub first_frame_to_part: Summary,
    /// (b) origin arrival − send of the part's last frame.
    pub last_frame_to_part: Summary,
    /// (c) edge arrival − origin arrival of the same part.
    pub edge_lag: Summary,
    /// Edge arrival − send of the part's first frame.
    pub first_frame_to_edge_part: Summary,
    pub unmatched_parts: usize,
    pub publisher_max_late_ms: f64,
    /// Whole-machine busy CPU over the run, % of one core (200 % = both cores busy).
    pub machine_busy_pct: f64,
    pub goal_first_frame_p50_ms: f64,
    pub goal_edge_lag_ms: f64,
}

/// The parts a playlist lists, and where the next one will be.
#[derive(Debug, Default, PartialEq)]
struct Listing {
    parts: Vec<(u64, u64)>,
    complete: BTreeSet<u64>,
    preload: Option<(u64, u64)>,
    ended: bool,
}

impl Listing {
    fn parse(text: &str) -> Self {
        let mut l = Listing::default();
        let uri = |line: &str| -> Option<String> {
            let at = line.find("URI=\"")? + 5;
            let rest = &line[at..];
            Some(rest[..rest.find('"')?].split('?').next()?.to_string())
        };
        let part_id = |u: &str| -> Option<(u64, u64)> {
            let r = u.strip_prefix("part")?.strip_suffix(".m4s")?;
            let (m, i) = r.split_once('.')?;
            Some((m.parse().ok()?, i.parse().ok()?))
        };
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("#EXT-X-PART:") {
                if let Some(p) = uri(line).as_deref().and_then(part_id) {
                    l.parts.push(p);
                }
            } else if line.starts_with("#EXT-X-PRELOAD-HINT:") {
                l.preload = uri(line).as_deref().and_then(part_id);
            } else if line == "#EXT-X-ENDLIST" {
                l.ended = true;
            } else if !line.starts_with('#') && !line.is_empty() {
                let u = line.split('?').next().unwrap_or("");
                if let Some(m) = u
                    .strip_prefix("seg")
                    .and_then(|r| r.strip_suffix(".m4s"))
                    .and_then(|m| m.parse().ok())
                {
                    l.complete.insert(m);
                }
            }
        }
        l
    }

    /// The part after the newest listed one.
    fn next(&self) -> Option<(u64, u64)> {
        match self.parts.last() {
            Some(&(m, _)) if self.complete.contains(&m) => Some((m + 1, 0)),
            Some(&(m, i)) => Some((m, i + 1)),
            None => self
                .preload
                .or_else(|| self.complete.last().map(|m| (m + 1, 0))),
        }
    }
}

/// Decode time (ms) of the first video sample of a CMAF chunk: the `tfdt` of the `traf` whose
/// `tfhd` names track 1, at 90 kHz.
pub fn video_tfdt_ms(data: &[u8]) -> Option<u64> {
    let moof = find_box(data, b"moof")?;
    let mut pos = 0;
    while let Some((kind, body, next)) = next_box(moof, pos) {
        pos = next;
        if &kind != b"traf" {
            continue;
        }
        let tfhd = find_box(body, b"tfhd")?;
        let track = u32::from_be_bytes(tfhd.get(4..8)?.try_into().ok()?);
        if track != 1 {
            continue;
        }
        let tfdt = find_box(body, b"tfdt")?;
        let t = match tfdt.first()? {
            0 => u64::from(u32::from_be_bytes(tfdt.get(4..8)?.try_into().ok()?)),
            1 => u64::from_be_bytes(tfdt.get(4..12)?.try_into().ok()?),
            _ => return None,
        };
        return Some(t / 90);
    }
    None
}

/// (type, body, offset of the next box) of the box at `pos`.
fn next_box(data: &[u8], pos: usize) -> Option<([u8; 4], &[u8], usize)> {
    let h = data.get(pos..pos + 8)?;
    let size = u32::from_be_bytes(h[..4].try_into().ok()?) as u64;
    let kind: [u8; 4] = h[4..8].try_into().ok()?;
    let (hdr, size) = match size {
        1 => (
            16,
            u64::from_be_bytes(data.get(pos + 8..pos + 16)?.try_into().ok()?),
        ),
        0 => (8, (data.len() - pos) as u64),
        s => (8, s),
    };
    let end = pos.checked_add(usize::try_from(size).ok()?)?;
    if size < hdr as u64 || end > data.len() {
        return None;
    }
    Some((kind, &data[pos + hdr..end], end))
}

fn find_box<'a>(data: &'a [u8], want: &[u8; 4]) -> Option<&'a [u8]> {
    let mut pos = 0;
    while let Some((kind, body, next)) = next_box(data, pos) {
        if &kind == want {
            return Some(body);
        }
        pos = next;
    }
    None
}

/// Follows a stream like an LL-HLS player until `until`; returns every part fetched.
async fn follow(
    base: String,
    name: String,
    secret: String,
    until: Instant,
) -> anyhow::Result<Vec<PartSeen>> {
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4)
        .build()?;
    let dir = format!("{}/live/{name}", base.trim_end_matches('/'));
    let auth = format!("Bearer {secret}");
    let get = |url: String| {
        let req = http
            .get(url)
            .header("authorization", &auth)
            .timeout(Duration::from_secs(10));
        async move { req.send().await }
    };
    // The stream may not be there yet (the publisher just connected; the edge mirrors it
    // once it is announced).
    let first = loop {
        let r = get(format!("{dir}/index.m3u8")).await?;
        if r.status().is_success() {
            break r.text().await?;
        }
        if Instant::now() > until {
            bail!("{dir}/index.m3u8 never became available ({})", r.status());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut cursor = Listing::parse(&first)
        .next()
        .context("the first playlist lists no parts")?;
    let mut seen = Vec::new();
    while Instant::now() < until {
        let (m, p) = cursor;
        let r = get(format!("{dir}/index.m3u8?_HLS_msn={m}&_HLS_part={p}")).await?;
        match r.status().as_u16() {
            200 => {}
            503 => continue,
            404 => break,
            s => bail!("{dir}: blocking reload answered {s}"),
        }
        let listing = Listing::parse(&r.text().await?);
        for &(msn, idx) in listing.parts.iter().filter(|p| **p >= cursor) {
            let r = get(format!("{dir}/part{msn}.{idx}.m4s")).await?;
            if !r.status().is_success() {
                bail!("{dir}/part{msn}.{idx}.m4s → {}", r.status());
            }
            let body = r.bytes().await?;
            let arrival = Instant::now();
            let first_dts_ms = video_tfdt_ms(&body)
                .with_context(|| format!("part{msn}.{idx}.m4s has no video tfdt"))?;
            seen.push(PartSeen {
                first_dts_ms,
                arrival,
                bytes: body.len(),
            });
        }
        if listing.ended {
            break;
        }
        if let Some(n) = listing.next() {
            cursor = cursor.max(n);
        }
    }
    Ok(seen)
}

pub async fn run(a: LatencyArgs) -> anyhow::Result<LatencyResult> {
    let flv = Arc::new(crate::flv::read(&a.flv)?);
    let target = Target::parse(&a.publish)?;
    let name = target.name().to_string();
    let publisher = Publisher::connect(&target).await.context("RTMP publish")?;
    let log = Arc::new(PublishLog::default());
    let t0 = Instant::now();
    let sys0 = crate::stats::system_busy_seconds();
    let duration = Duration::from_secs_f64(a.seconds);
    let pub_task = {
        let (flv, log) = (flv.clone(), log.clone());
        tokio::spawn(async move { publisher.run(&flv, duration, &log).await })
    };
    // Followers stop a little before the publisher, so the last parts are complete ones.
    let until = t0 + duration - Duration::from_millis(500);
    let origin = tokio::spawn(follow(
        a.origin.clone(),
        name.clone(),
        a.secret.clone(),
        until,
    ));
    let edge = a
        .edge
        .clone()
        .map(|e| tokio::spawn(follow(e, name.clone(), a.secret.clone(), until)));
    let origin_parts = origin.await?.context("origin follower")?;
    let edge_parts = match edge {
        Some(e) => e.await?.context("edge follower")?,
        None => Vec::new(),
    };
    pub_task.await?.context("publisher")?;
    let busy = (crate::stats::system_busy_seconds() - sys0) / t0.elapsed().as_secs_f64() * 100.0;

    let sent = log.video_sent.lock().expect("poisoned").clone();
    let warm = t0 + Duration::from_secs_f64(a.warmup);
    let mut first_lat = Vec::new();
    let mut last_lat = Vec::new();
    let mut unmatched = 0;
    let mut durations = Vec::new();
    // The packager may start a part up to half a frame before its first frame's own timestamp
    // (keeping the video timeline gapless after a predicted duration); take the nearest frame.
    let sent_at = |ts: u64| -> Option<Instant> {
        let i = sent.partition_point(|(t, _)| u64::from(*t) < ts);
        [i.checked_sub(1), Some(i)]
            .into_iter()
            .flatten()
            .filter_map(|i| sent.get(i))
            .filter(|(t, _)| u64::from(*t).abs_diff(ts) <= 5)
            .min_by_key(|(t, _)| u64::from(*t).abs_diff(ts))
            .map(|&(_, at)| at)
    };
    for w in origin_parts.windows(2) {
        let (p, next) = (&w[0], &w[1]);
        let Some(first_sent) = sent_at(p.first_dts_ms) else {
            unmatched += 1;
            continue;
        };
        if first_sent < warm {
            continue;
        }
        // The part's frames: video tags with ts in [first dts, next part's first dts), both
        // ends taken 5 ms early, as a part may start a millisecond off its first frame's own
        // timestamp (frames are ≥ 10 ms apart at any rate we publish).
        let last = sent.iter().rev().find(|(t, _)| {
            let t = u64::from(*t);
            t + 5 < next.first_dts_ms && t + 5 >= p.first_dts_ms
        });
        let Some(&(_, last_sent)) = last else {
            unmatched += 1;
            continue;
        };
        durations.push(next.first_dts_ms.saturating_sub(p.first_dts_ms) as f64);
        first_lat.push(ms_between(first_sent, p.arrival));
        last_lat.push(ms_between(last_sent, p.arrival));
    }
    if let Some(path) = &a.dump {
        let edge_by_dts: BTreeMap<u64, Instant> = edge_parts
            .iter()
            .map(|p| (p.first_dts_ms, p.arrival))
            .collect();
        let mut csv = String::from("first_dts_ms,bytes,first_frame_ms,last_frame_ms,edge_lag_ms\n");
        for w in origin_parts.windows(2) {
            let (p, next) = (&w[0], &w[1]);
            let first = sent_at(p.first_dts_ms).map(|s| ms_between(s, p.arrival));
            let last = sent
                .iter()
                .rev()
                .find(|(t, _)| u64::from(*t) + 5 < next.first_dts_ms)
                .map(|(_, s)| ms_between(*s, p.arrival));
            let lag = edge_by_dts
                .get(&p.first_dts_ms)
                .map(|e| ms_between(p.arrival, *e));
            let opt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_default();
            csv.push_str(&format!(
                "{},{},{},{},{}\n",
                p.first_dts_ms,
                p.bytes,
                opt(first),
                opt(last),
                opt(lag)
            ));
        }
        std::fs::write(path, csv)?;
    }
    let origin_by_dts: BTreeMap<u64, Instant> = origin_parts
        .iter()
        .map(|p| (p.first_dts_ms, p.arrival))
        .collect();
    let mut lag = Vec::new();
    let mut edge_first = Vec::new();
    for p in &edge_parts {
        let Some(first_sent) = sent_at(p.first_dts_ms) else {
            continue;
        };
        if first_sent < warm {
            continue;
        }
        edge_first.push(ms_between(first_sent, p.arrival));
        if let Some(o) = origin_by_dts.get(&p.first_dts_ms) {
            lag.push(ms_between(*o, p.arrival));
        }
    }
    let video_bytes: usize = flv
        .tags
        .iter()
        .filter(|t| t.kind == crate::flv::TagKind::Video)
        .map(|t| t.body.len())
        .sum();
    let flv_video_kbps = video_bytes as f64 * 8.0 / f64::from(flv.loop_length_ms());
    let mean_part = if durations.is_empty() {
        0.0
    } else {
        durations.iter().sum::<f64>() / durations.len() as f64
    };
    Ok(LatencyResult {
        bench: "latency",
        seconds: a.seconds,
        warmup_s: a.warmup,
        flv_video_kbps: flv_video_kbps.round(),
        parts_origin: origin_parts.len(),
        parts_edge: edge_parts.len(),
        mean_part_ms: (mean_part * 10.0).round() / 10.0,
        mean_part_kib: if origin_parts.is_empty() {
            0.0
        } else {
            let b: usize = origin_parts.iter().map(|p| p.bytes).sum();
            (b as f64 / origin_parts.len() as f64 / 1024.0).round()
        },
        first_frame_to_part: Summary::of_ms(first_lat),
        last_frame_to_part: Summary::of_ms(last_lat),
        edge_lag: Summary::of_ms(lag),
        first_frame_to_edge_part: Summary::of_ms(edge_first),
        unmatched_parts: unmatched,
        machine_busy_pct: busy.round(),
        publisher_max_late_ms: log.max_late_us.load(std::sync::atomic::Ordering::Relaxed) as f64
            / 1000.0,
        goal_first_frame_p50_ms: 500.0,
        goal_edge_lag_ms: 50.0,
    })
}

/// `b − a` in ms, negative when `b` is earlier.
fn ms_between(a: Instant, b: Instant) -> f64 {
    if b >= a {
        (b - a).as_secs_f64() * 1000.0
    } else {
        -((a - b).as_secs_f64() * 1000.0)
    }
}

pub fn print(r: &LatencyResult) {
    println!(
        "== latency: RTMP publish → LL-HLS part, {} s ({} s warm-up dropped), {:.0} kbit/s video ==",
        r.seconds, r.warmup_s, r.flv_video_kbps
    );
    println!(
        "  parts fetched: origin {}, edge {}; mean part {:.1} ms, {:.0} KiB; unmatched {}",
        r.parts_origin, r.parts_edge, r.mean_part_ms, r.mean_part_kib, r.unmatched_parts
    );
    println!(
        "  (a) first frame sent → part at origin: {}",
        r.first_frame_to_part.line()
    );
    println!(
        "  (b) last frame sent → part at origin:  {}",
        r.last_frame_to_part.line()
    );
    println!(
        "  (c) edge lag behind origin:            {}",
        r.edge_lag.line()
    );
    println!(
        "      first frame sent → part at edge:   {}",
        r.first_frame_to_edge_part.line()
    );
    println!(
        "  goals: (a) p50 ≤ {:.0} ms: {}; (c) ≤ {:.0} ms: {}",
        r.goal_first_frame_p50_ms,
        verdict(
            r.first_frame_to_part.n > 0
                && r.first_frame_to_part.p50_ms <= r.goal_first_frame_p50_ms
        ),
        r.goal_edge_lag_ms,
        verdict(r.edge_lag.n > 0 && r.edge_lag.p99_ms <= r.goal_edge_lag_ms)
    );
    println!(
        "  publisher pacing: worst tag {:.1} ms behind its real-time deadline; machine busy {:.0} % of a core (all processes)",
        r.publisher_max_late_ms, r.machine_busy_pct
    );
}

pub fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings() {
        let pl = "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:10\n#EXT-X-PROGRAM-DATE-TIME:x\n\
            #EXT-X-PART:DURATION=0.2,URI=\"part10.0.m4s\",INDEPENDENT=YES\n\
            #EXT-X-PART:DURATION=0.2,URI=\"part10.1.m4s\"\n#EXTINF:0.4,\nseg10.m4s\n\
            #EXT-X-PROGRAM-DATE-TIME:y\n#EXT-X-PART:DURATION=0.2,URI=\"part11.0.m4s?jwt=a\"\n\
            #EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part11.1.m4s\"\n";
        let l = Listing::parse(pl);
        assert_eq!(l.parts, vec![(10, 0), (10, 1), (11, 0)]);
        assert!(l.complete.contains(&10));
        assert_eq!(l.next(), Some((11, 1)));
        assert_eq!(l.preload, Some((11, 1)));
        let l = Listing::parse(
            "#EXTM3U\n#EXT-X-PART:DURATION=0.2,URI=\"part3.4.m4s\"\n#EXTINF:1,\nseg3.m4s\n",
        );
        assert_eq!(l.next(), Some((4, 0)));
    }

    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn tfdt() {
        let traf = |track: u32, tfdt: Vec<u8>| {
            let mut tfhd = vec![0, 0, 0, 0];
            tfhd.extend_from_slice(&track.to_be_bytes());
            let mut b = bx(b"tfhd", &tfhd);
            b.extend(bx(b"tfdt", &tfdt));
            bx(b"traf", &b)
        };
        let mut v1 = vec![1, 0, 0, 0];
        v1.extend_from_slice(&(90u64 * 123_456).to_be_bytes());
        let mut moof = bx(b"mfhd", &[0; 8]);
        moof.extend(traf(2, vec![0, 0, 0, 0, 0, 0, 0, 7]));
        moof.extend(traf(1, v1));
        let mut part = bx(b"moof", &moof);
        part.extend(bx(b"mdat", b"xx"));
        assert_eq!(video_tfdt_ms(&part), Some(123_456));
        let mut moof = bx(b"mfhd", &[0; 8]);
        moof.extend(traf(1, vec![0, 0, 0, 0, 0, 0, 0x23, 0x28]));
        assert_eq!(video_tfdt_ms(&bx(b"moof", &moof)), Some(100));
    }
}
