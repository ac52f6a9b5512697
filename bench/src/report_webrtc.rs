//! Section 11 of the benchmarks document: WebRTC viewers per slave.

use std::fmt::Write as _;

use serde_json::Value;

pub fn section(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let rows: Vec<&Value> = r
        .iter()
        .filter(|v| v["bench"] == "webrtc_viewers")
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let idle = r
        .iter()
        .find(|v| v["bench"] == "webrtc_baseline")
        .and_then(|v| v["server_cpu_pct"].as_f64());
    writeln!(w, "## 11. WebRTC viewers per slave")?;
    writeln!(w)?;
    writeln!(
        w,
        "`BENCH_ONLY=webrtc ./scripts/bench.sh` (steps from `WEBRTC_STEPS`). One slave, one stream published \
         by the bench's RTMP publisher (360p30 x264 zerolatency at 1,400 kbit/s + AAC 96 kbit/s, GOP 1 s), \
         then `classcast-bench whep-viewers`: N WHEP clients (str0m, one UDP socket and one tokio task \
         each, each with its own student token from the master, joining over 1 s; the slave started with \
         `--max-webrtc-viewers 5000` so that the steps measure past the default, with its default of one \
         WebRTC engine per core, 2 here, unless `WEBRTC_ENGINES` is set for the run) play it for 10 s after \
         their joins; a client's loss is the fraction its own \
         receive statistics count lost in the last second (the largest of its two tracks). The slave's CPU \
         is measured over the same window; with no viewer it used {} % of a core (ingest, packaging, \
         recording). Slave, generator and publisher share the 2 cores.",
        idle.map(|x| format!("{x:.1}"))
            .unwrap_or_else(|| "?".into())
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| viewers | connected | packets/s per viewer | loss mean / max | Mbit/s total | slave CPU % | CPU % per viewer | generator CPU % |"
    )?;
    writeln!(w, "| --- | --- | --- | --- | --- | --- | --- | --- |")?;
    for v in rows {
        let n = v["viewers"].as_f64().unwrap_or(0.0);
        let cpu = v["server_cpu_pct"].as_f64();
        let per = match (cpu, idle) {
            (Some(c), Some(i)) if n > 0.0 => format!("{:.3}", (c - i) / n),
            _ => "–".into(),
        };
        writeln!(
            w,
            "| {} | {} | {} | {:.3} / {:.3} | {} | {} | {} | {} |",
            v["viewers"],
            v["connected"],
            v["packets_per_viewer_s"],
            v["loss_mean"].as_f64().unwrap_or(f64::NAN),
            v["loss_max"].as_f64().unwrap_or(f64::NAN),
            v["mbit_s_total"],
            cpu.map(|c| format!("{c:.1}")).unwrap_or_else(|| "–".into()),
            per,
            v["generator_cpu_pct"],
        )?;
    }
    writeln!(w)?;
    Ok(())
}
