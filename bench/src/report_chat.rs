//! Section 14 of the benchmarks document: class messages a slave relays to 1,000 readers
//! (`classcast-bench chat-relay`).

use std::fmt::Write as _;

use serde_json::Value;

use super::f;

fn lines(r: &[Value]) -> Vec<&Value> {
    r.iter().filter(|v| v["bench"] == "chat_relay").collect()
}

pub fn summary(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let r = lines(r);
    let Some(top) = r
        .iter()
        .max_by(|a, b| f(a, "rate_per_s").total_cmp(&f(b, "rate_per_s")))
    else {
        return Ok(());
    };
    writeln!(
        w,
        "- **Class messages** (section 14): {:.0} readers on one slave, {:.0} messages/s in chat mode: \
         {:.0} deliveries/s, {:.1} % delivered, lag p99 {:.0} ms, the slave at {:.0} % of a core and {:.0} MiB.",
        f(top, "readers_connected"),
        f(top, "rate_per_s"),
        f(top, "delivered_per_s"),
        100.0 * f(top, "delivered") / f(top, "expected"),
        f(top, "lag_ms.p99_ms"),
        f(top, "server_cpu_pct"),
        f(top, "server_rss_mib"),
    )
}

pub fn section(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let r = lines(r);
    if r.is_empty() {
        return Ok(());
    }
    writeln!(w, "## 14. Class messages a slave relays")?;
    writeln!(w)?;
    writeln!(
        w,
        "`BENCH_ONLY=chat ./scripts/bench.sh`. One master and one slave with a class publishing \
         (the 1.5 Mbit/s test stream, `-c copy`). `classcast-bench chat-relay` asks the master for a \
         student token per reader, as a student page does, opens 1,000 or 2,000 (the default `CHAT_MAX_READERS`) readers of the class's messages \
         (Server-Sent Events, `GET /live/qa/chat`), switches the class to chat mode with the teacher's \
         token (so every reader gets every message), then posts at a fixed rate from 3× as many students \
         as the rate (each student may post one message every 2 s) for 15 s. \"Lag\" runs from the \
         origin taking a message (its `at_ms`) to a reader parsing it, on the same clock. The slave's \
         CPU and RSS are read from `/proc` over the posting; the generator shares the 2 cores."
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| messages/s | readers | accepted | delivered (of expected) | deliveries/s | lag p50 / p99 / max (ms) | slave CPU (% of a core) | slave RSS (MiB) |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|---|")?;
    for v in r {
        writeln!(
            w,
            "| {:.0} | {:.0} | {:.0} of {:.0} | {:.0} of {:.0} | {:.0} | {:.0} / {:.0} / {:.0} | {:.1} | {:.1} |",
            f(v, "rate_per_s"),
            f(v, "readers_connected"),
            f(v, "accepted"),
            f(v, "posted"),
            f(v, "delivered"),
            f(v, "expected"),
            f(v, "delivered_per_s"),
            f(v, "lag_ms.p50_ms"),
            f(v, "lag_ms.p99_ms"),
            f(v, "lag_ms.max_ms"),
            f(v, "server_cpu_pct"),
            f(v, "server_rss_mib"),
        )?;
    }
    writeln!(w)
}
