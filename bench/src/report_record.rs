//! Section 10 of the benchmarks document: what recording costs, and replay serving.

use std::fmt::Write as _;

use serde_json::Value;

fn f(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

fn ingest<'a>(r: &'a [Value], server: &str, streams: u64) -> Option<&'a Value> {
    r.iter().find(|v| {
        v["bench"] == "ingest_cpu"
            && v["server"] == server
            && v["streams"].as_u64() == Some(streams)
    })
}

pub fn section(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let on1 = ingest(r, "classcast-record-on", 1);
    if on1.is_none() {
        return Ok(());
    }
    writeln!(w, "## 10. Recording: its cost, and replay")?;
    writeln!(w)?;
    writeln!(
        w,
        "`BENCH_ONLY=recording ./scripts/bench.sh`. One master and a fresh slave per run, the 6.4 Mbit/s \
         720p FLV of section 4 published 30 s per stream, first with recording on (the default), then \
         with `--record false` (off), in the same run. Disk bytes are what the 1-stream run left in its \
         recording folder, scaled to an hour."
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| publishers | recording on: % of a core per stream | off | on / off |"
    )?;
    writeln!(w, "| --- | --- | --- | --- |")?;
    for k in [1, 4] {
        if let (Some(a), Some(b)) = (
            ingest(r, "classcast-record-on", k),
            ingest(r, "classcast-record-off", k),
        ) {
            let (x, y) = (f(a, "pct_core_per_stream"), f(b, "pct_core_per_stream"));
            writeln!(w, "| {k} | {x:.2} | {y:.2} | {:.2}× |", x / y)?;
        }
    }
    writeln!(w)?;
    if let Some(d) = r.iter().find(|v| v["bench"] == "recording_disk") {
        writeln!(
            w,
            "Disk: **{:.2} GB per stream-hour** at 6.4 Mbit/s ({:.0} bytes in 30 s).",
            f(d, "bytes_per_stream_hour") / 1e9,
            f(d, "bytes")
        )?;
        writeln!(w)?;
    }
    let pl: Vec<&Value> = r
        .iter()
        .filter(|v| v["bench"] == "playlist_bytes")
        .collect();
    if !pl.is_empty() {
        writeln!(
            w,
            "Playlist bytes a player reloads while rewinding a running class (the recording's growing \
             playlist, 1 s segments, a viewer ticket after every URI), rendered by `media::hls::vod`:"
        )?;
        writeln!(w)?;
        writeln!(
            w,
            "| class so far | whole playlist | delta update (`_HLS_skip=YES`) |"
        )?;
        writeln!(w, "| --- | --- | --- |")?;
        for v in pl {
            writeln!(
                w,
                "| {:.0} min | {:.0} B | {:.0} B |",
                f(v, "minutes"),
                f(v, "full"),
                f(v, "delta")
            )?;
        }
        writeln!(w)?;
    }
    let serving = |server: &str| {
        r.iter().find(|v| {
            v["bench"] == "serving" && v["kind"] == "vod-segment" && v["server"] == server
        })
    };
    if let (Some(c), Some(n)) = (serving("classcast"), serving("nginx")) {
        writeln!(
            w,
            "A recorded segment ({:.0} B) as a viewer fetches it (with its ticket), from the slave's disk, \
             against static nginx serving the same bytes from tmpfs (`wrk -t2 -c200 -d8s`): classcast \
             **{:.0} req/s** (p99 {:.2} ms), nginx {:.0} req/s (p99 {:.2} ms): **{:.2}×**.",
            f(c, "bytes"),
            f(c, "rps"),
            f(c, "p99_ms"),
            f(n, "rps"),
            f(n, "p99_ms"),
            f(c, "rps") / f(n, "rps")
        )?;
        writeln!(w)?;
    }
    Ok(())
}
