//! Section 12: Opus encode per stream, ropus (classcast's encoder) against libopus (through the
//! ffmpeg on PATH) in the same run. No server: `classcast-bench opus-encode` does it all, under
//! the real-time wrapper like every load generator (its ffmpeg children inherit it).

use super::{Ctx, log, path_str};
use crate::args;

pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    log("12 Opus encode: ropus vs libopus (ffmpeg), 60 s of stereo PCM at 96 kbit/s, 3 runs each");
    ctx.bench_run(
        "opus-encode",
        &args![
            "opus-encode",
            "--work",
            path_str(&ctx.work),
            "--seconds",
            60,
            "--runs",
            3
        ],
    )
    .await
}
