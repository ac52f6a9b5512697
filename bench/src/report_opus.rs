//! Section 12 of the benchmarks document: Opus encode per stream, ropus (classcast's encoder)
//! against libopus through ffmpeg, measured in the same run (`classcast-bench opus-encode`).

use std::fmt::Write as _;

use serde_json::Value;

use super::extra::{s, when};
use super::f;

fn lines(r: &[Value]) -> Vec<&Value> {
    r.iter().filter(|v| v["bench"] == "opus_encode").collect()
}

/// (libopus, ropus) at one setting.
fn pair<'a>(r: &[&'a Value], settings: &str) -> Option<(&'a Value, &'a Value)> {
    let get = |enc: &str| {
        r.iter()
            .copied()
            .find(|v| v["encoder"] == enc && v["settings"] == settings)
    };
    Some((get("libopus")?, get("ropus")?))
}

fn ratio(enc: &Value, lib: &Value) -> f64 {
    f(enc, "pct_core_per_stream") / f(lib, "pct_core_per_stream")
}

/// What a setting is, in words.
fn settings_text(v: &Value) -> String {
    let who = match v["settings"].as_str() {
        Some("slave") => "the slave's (only the bitrate set: the library defaults)",
        Some("ffmpeg") => "ffmpeg's `-vbr on` defaults",
        _ => "?",
    };
    let vbr = if v["vbr_constraint"] == true {
        "constrained"
    } else {
        "unconstrained"
    };
    format!("{who}: complexity {}, {vbr} VBR", f(v, "complexity"))
}

/// One row of the table: encoder, settings, % of a core, × libopus, kbit/s, command.
pub(super) fn row(v: &Value, lib: &Value) -> String {
    let enc = s(v, "encoder");
    let command = match v["overhead_command"].as_str() {
        Some(o) => format!("`{}` minus `{o}`", s(v, "command")),
        None => format!("`{}`", s(v, "command")),
    };
    format!(
        "| {enc} ({}) | {} | **{:.2}** | {:.2}× | {:.1} | {command} |",
        s(v, "version"),
        settings_text(v),
        f(v, "pct_core_per_stream"),
        ratio(v, lib),
        f(v, "kbit_s"),
    )
}

fn runs(v: &Value, key: &str) -> String {
    v[key]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| format!("{:.3}", x.as_f64().unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(" / ")
        })
        .unwrap_or_else(|| "?".into())
}

pub fn summary(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let r = lines(r);
    let Some((lib, enc)) = pair(&r, "slave") else {
        return Ok(());
    };
    let other = pair(&r, "ffmpeg")
        .map(|(l, e)| format!("; {:.2}× at ffmpeg's `-vbr on` defaults", ratio(e, l)))
        .unwrap_or_default();
    writeln!(
        w,
        "| Opus encode per stereo stream at 96 kbit/s, ropus vs libopus (same run, the slave's settings) | none set | {:.2}× ({:.2} % vs {:.2} % of a core per stream{other}) | measured |",
        ratio(enc, lib),
        f(enc, "pct_core_per_stream"),
        f(lib, "pct_core_per_stream"),
    )
}

pub fn section(w: &mut String, r: &[Value]) -> std::fmt::Result {
    let r = lines(r);
    let Some(first) = r.first() else {
        return Ok(());
    };
    writeln!(
        w,
        "## 12. Opus encode per stream: ropus vs libopus, same run"
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "`BENCH_ONLY=opus ./scripts/bench.sh`.{} What one WebRTC stream's audio encoder costs: the \
         slave's transcoder (AAC → Opus for WHEP viewers) encodes with ropus, a pure-Rust port of \
         libopus's fixed-point build; the reference is libopus itself, the float build Debian ships, \
         through the ffmpeg on PATH (nothing links it into classcast). `classcast-bench opus-encode` \
         generates {:.0} s of stereo PCM (f32, 48 kHz; per channel a tone, a repeating linear chirp \
         and a little noise, different on each channel), writes it to a temp file, and encodes it at \
         {:.0} kbit/s in 20 ms frames (application audio) with both encoders, {} runs each, \
         interleaved; each figure is the median. libopus: ffmpeg's user + sys CPU (`wait4`) minus the \
         median of the same command with `-c:a pcm_f32le` (reading, the filter graph, the muxer: \
         ffmpeg's own work). ropus: the bench thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) around \
         building the encoder and `encode_float` on every frame, in the bench process. Both run \
         under the same scheduling (the Machine section). kbit/s is the Opus packets' bytes × 8 ÷ \
         the audio's seconds (ffmpeg's packets as `-f framecrc` lists them, no container). Two \
         settings, each on both encoders: the slave's (it sets only the bitrate, so ropus's \
         defaults, which are libopus's own) and ffmpeg's `-vbr on` command as given (ffmpeg sets \
         complexity 10 and unconstrained VBR). AAC decoding and resampling, the rest of the \
         transcoder, are not in these figures (section 11's one-viewer step includes them).",
        when(first),
        f(first, "audio_s"),
        f(first, "target_kbit_s"),
        r[0]["cpu_s_runs"].as_array().map_or(0, Vec::len),
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "| encoder | settings | % of a core per stream (encode only) | × libopus | kbit/s | command |"
    )?;
    writeln!(w, "| --- | --- | --- | --- | --- | --- |")?;
    for key in ["slave", "ffmpeg"] {
        if let Some((lib, enc)) = pair(&r, key) {
            writeln!(w, "{}", row(lib, lib))?;
            writeln!(w, "{}", row(enc, lib))?;
        }
    }
    writeln!(w)?;
    let mut notes = Vec::new();
    for key in ["slave", "ffmpeg"] {
        if let Some((lib, enc)) = pair(&r, key) {
            notes.push(format!(
                "{key} settings: ffmpeg with libopus {} s, ropus {} s",
                runs(lib, "cpu_s_runs"),
                runs(enc, "cpu_s_runs")
            ));
        }
    }
    writeln!(
        w,
        "CPU seconds of the runs ({:.0} s of audio each): {}; ffmpeg's overhead (`-c:a pcm_f32le`) {} s. \
         Everything else on the machine used {:.1} % of a core meanwhile.",
        f(first, "audio_s"),
        notes.join("; "),
        r.iter()
            .find(|v| v["encoder"] == "libopus")
            .map_or_else(|| "?".into(), |v| runs(v, "overhead_cpu_s_runs")),
        f(first, "other_pct_core"),
    )?;
    writeln!(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results() -> Vec<Value> {
        [
            r#"{"bench":"opus_encode","encoder":"libopus","version":"Debian libopus0 1.3.1-3, through ffmpeg 5.1.9","settings":"slave","complexity":9,"vbr_constraint":true,"audio_s":60.0,"target_kbit_s":96.0,"cpu_s_runs":[0.5,0.51,0.52],"overhead_cpu_s_runs":[0.1,0.1,0.11],"cpu_s":0.41,"pct_core_per_stream":0.6,"kbit_s":95.94,"command":"ffmpeg -c:a libopus","overhead_command":"ffmpeg -c:a pcm_f32le","other_pct_core":1.0}"#,
            r#"{"bench":"opus_encode","encoder":"ropus","version":"0.12.18","settings":"slave","complexity":9,"vbr_constraint":true,"audio_s":60.0,"cpu_s_runs":[0.54,0.55,0.56],"cpu_s":0.55,"pct_core_per_stream":0.9,"kbit_s":96.1,"command":"classcast-bench opus-encode"}"#,
            r#"{"bench":"webrtc_baseline","server_cpu_pct":0.8}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
    }

    #[test]
    fn rows_from_results() {
        let r = results();
        let (lib, enc) = pair(&lines(&r), "slave").unwrap();
        assert_eq!(
            row(enc, lib),
            "| ropus (0.12.18) | the slave's (only the bitrate set: the library defaults): complexity 9, \
             constrained VBR | **0.90** | 1.50× | 96.1 | `classcast-bench opus-encode` |"
        );
        assert_eq!(
            row(lib, lib),
            "| libopus (Debian libopus0 1.3.1-3, through ffmpeg 5.1.9) | the slave's (only the bitrate \
             set: the library defaults): complexity 9, constrained VBR | **0.60** | 1.00× | 95.9 | `ffmpeg -c:a libopus` \
             minus `ffmpeg -c:a pcm_f32le` |"
        );
    }

    #[test]
    fn section_and_summary_only_with_results() {
        let mut w = String::new();
        section(&mut w, &results()[2..]).unwrap();
        summary(&mut w, &results()[2..]).unwrap();
        assert!(w.is_empty());
        section(&mut w, &results()).unwrap();
        assert!(w.starts_with("## 12. Opus encode per stream: ropus vs libopus, same run\n"));
        assert!(
            w.contains("slave settings: ffmpeg with libopus 0.500 / 0.510 / 0.520 s, ropus 0.540")
        );
        let mut s = String::new();
        summary(&mut s, &results()).unwrap();
        assert!(s.contains("| 1.50× (0.90 % vs 0.60 % of a core per stream) | measured |"));
    }
}
