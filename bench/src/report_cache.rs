//! Section 9 of the benchmarks document: the cache tier (one slave alone vs the shipped nginx
//! cache in front of one).

use std::fmt::Write as _;

use serde_json::Value;

fn f(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

fn run<'a>(r: &'a [Value], label: &str) -> Option<&'a Value> {
    r.iter()
        .find(|v| v["bench"] == "viewers" && v["label"] == label)
}

pub fn section(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let (Some(alone), Some(cached)) = (
        run(r, "cache-tier:slave-alone"),
        run(r, "cache-tier:through-nginx"),
    ) else {
        return Ok(());
    };
    writeln!(w, "## 9. A cache tier: nginx in front of one slave")?;
    writeln!(w)?;
    writeln!(
        w,
        "`BENCH_ONLY=cache ./scripts/bench.sh` (steps from `CACHE_STEPS`). The same LL-HLS viewer ramp as \
         section 6 (`classcast-bench viewers`: one student token per viewer, blocking reload then the newest \
         part, part GET p99 < 50 ms and 0 errors to pass), first against one slave on its own, then through \
         nginx from apt (one worker) running the shipped `deploy/nginx/classcast-cache.conf` in front of a \
         slave started with `--cache-url`: the master hands viewers the cache's URL, the slave lists shared \
         media tickets, and nginx checks each viewer's token with `auth_request` (remembered 5 s per token) \
         before answering its playlist from the cache. \"At the slave\" counts the part and playlist \
         requests that reached the slave during the measured 10 s, per part it made meanwhile (from its \
         `/metrics`). Everything — slave, nginx, the generator and ffmpeg — shares the 2 cores; the CPU \
         column is the slave's when alone and nginx's worker's through the cache."
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| viewers | alone: part p99 ms | alone: errors | alone: slave CPU % | cache: part p99 ms | cache: errors | cache: nginx CPU % | at the slave behind the cache: part / playlist requests per part |"
    )?;
    writeln!(w, "| --- | --- | --- | --- | --- | --- | --- | --- |")?;
    let empty = Vec::new();
    let a_steps = alone["steps"].as_array().unwrap_or(&empty);
    let c_steps = cached["steps"].as_array().unwrap_or(&empty);
    let mut ns: Vec<f64> = a_steps
        .iter()
        .chain(c_steps)
        .map(|s| f(s, "viewers"))
        .collect();
    ns.sort_by(|a, b| a.total_cmp(b));
    ns.dedup();
    let find = |steps: &[Value], n: f64| steps.iter().find(|s| f(s, "viewers") == n).cloned();
    for n in ns {
        let cell = |s: &Option<Value>, k: &str, digits: usize| {
            s.as_ref()
                .map(|s| format!("{:.*}", digits, f(s, k)))
                .unwrap_or_else(|| "—".into())
        };
        let (a, c) = (find(a_steps, n), find(c_steps, n));
        writeln!(
            w,
            "| {n:.0} | {} | {} | {} | {} | {} | {} | {} / {} |",
            cell(&a, "part_latency.p99_ms", 1),
            cell(&a, "errors", 0),
            cell(&a, "slave_cpu_pct", 0),
            cell(&c, "part_latency.p99_ms", 1),
            cell(&c, "errors", 0),
            cell(&c, "slave_cpu_pct", 0),
            cell(&c, "origin_part_requests_per_part", 2),
            cell(&c, "origin_playlist_requests_per_part", 2),
        )?;
    }
    writeln!(w)?;
    let best = |v: &Value| {
        let b = f(v, "max_ok_viewers");
        if b.is_finite() { b } else { 0.0 }
    };
    let (ba, bc) = (best(alone), best(cached));
    writeln!(
        w,
        "Largest passing step: **{ba:.0}** viewers on the slave alone, **{bc:.0}** through the cache{}.",
        if ba > 0.0 {
            format!(" ({:.2}×)", bc / ba)
        } else {
            String::new()
        }
    )?;
    writeln!(w)
}
