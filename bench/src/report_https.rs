//! Section 13 of the benchmarks document: a part over HTTPS/1.1 and HTTP/2, classcast against
//! static nginx with TLS on the same certificate, same run (`orchestrate/tls.rs`).

use std::fmt::Write as _;

use serde_json::Value;

use super::extra::{s, when};
use super::f;

fn lines(r: &[Value]) -> Vec<&Value> {
    r.iter().filter(|v| v["bench"] == "https").collect()
}

fn pair<'a>(r: &[&'a Value], proto: &str) -> Option<(&'a Value, &'a Value)> {
    let get = |server: &str| {
        r.iter()
            .copied()
            .find(|v| v["server"] == server && v["proto"] == proto)
    };
    Some((get("classcast")?, get("nginx")?))
}

fn proto_name(p: &str) -> &'static str {
    if p == "h2" { "HTTP/2" } else { "HTTPS/1.1" }
}

pub fn summary(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let r = lines(r);
    for proto in ["h1", "h2"] {
        let Some((c, n)) = pair(&r, proto) else {
            continue;
        };
        let ratio = f(c, "rps") / f(n, "rps");
        writeln!(
            w,
            "| a ~{:.0} KB part over {} (TLS 1.3), vs static nginx with TLS on the same certificate | ≥ 1.0× | {ratio:.2}× ({:.0} vs {:.0} req/s) | {} |",
            f(c, "bytes") / 1000.0,
            proto_name(proto),
            f(c, "rps"),
            f(n, "rps"),
            if f(c, "failed") + f(n, "failed") > 0.0 {
                "**no** (requests failed)"
            } else if ratio >= 1.0 {
                "yes"
            } else {
                "**no**"
            }
        )?;
    }
    Ok(())
}

pub fn section(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let r = lines(r);
    let Some(first) = r.first() else {
        return Ok(());
    };
    writeln!(
        w,
        "## 13. A part over HTTPS/1.1 and HTTP/2: classcast vs nginx with TLS, same run"
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "`BENCH_ONLY=https ./scripts/bench.sh`.{} One slave with TLS on (`TLS_CERT_FILE`, a P-256 \
         certificate from a CA the run makes) and one live ~1.5 Mbit/s stream published by ffmpeg \
         over RTMPS; the newest listed part, as a viewer fetches it, is copied to tmpfs and served \
         by static nginx 1.22 (one worker, sendfile, TLS 1.3 only, `listen … ssl http2`) with the \
         same certificate and key. h2load (nghttp2) loads each for 8 s from 200 connections, one \
         request in flight per connection (`-m1`), over HTTP/1.1 (`--h1`) and over HTTP/2 chosen \
         by ALPN. Both servers, h2load and the publisher share the run's two cores (the Machine \
         section); classcast has its two tokio workers, nginx one worker process, as in section 5.",
        when(first)
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| protocol | server | part bytes | req/s | × nginx | mean ms | succeeded | failed | command |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|---|---|")?;
    for proto in ["h1", "h2"] {
        let Some((c, n)) = pair(&r, proto) else {
            continue;
        };
        for v in [c, n] {
            writeln!(
                w,
                "| {} | {} | {:.0} | **{:.0}** | {:.2}× | {:.2} | {:.0} | {:.0} | `{}` |",
                proto_name(proto),
                s(v, "server"),
                f(v, "bytes"),
                f(v, "rps"),
                f(v, "rps") / f(n, "rps"),
                f(v, "mean_ms"),
                f(v, "succeeded"),
                f(v, "failed"),
                s(v, "command"),
            )?;
        }
    }
    writeln!(w)?;
    Ok(())
}
