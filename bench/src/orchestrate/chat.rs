//! Section 14: class messages a slave relays. One master, one slave with a class publishing,
//! then `classcast-bench chat-relay`: 1,000 students reading the class's messages and posters
//! sending 10, then 50 messages a second in chat mode, then 2,000 readers (the default
//! `CHAT_MAX_READERS`) at 50 a second, 15 s each.

use std::time::Duration;

use super::procs;
use super::sample::small_media;
use super::{Ctx, log};
use crate::args;

pub async fn run(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    log("14 class messages: 1,000 readers at 10 and 50 messages/s, 2,000 at 50, 15 s each");
    let p = ctx.port(52);
    ctx.start_master("master-chat", p).await?;
    let (h, r) = (ctx.port(53), ctx.port(54));
    let s = ctx
        .start_slave("slave-chat", p, h, r, &args!["--chat-max-readers", 5000])
        .await?;
    ctx.wait_nodes(p, 1).await?;
    let small = small_media(ctx).await?;
    let publisher = super::serving::publish_loop(ctx, p, "qa", &small).await?;
    ctx.viewer_url(p, "qa").await?;
    procs::sleep(Duration::from_secs(2)).await?;
    for (readers, rate) in [(1000, 10), (1000, 50), (2000, 50)] {
        ctx.bench_run(
            "chat-relay",
            &args![
                "chat-relay",
                "--master",
                ctx.master_url(p),
                "--stream",
                "qa",
                "--teacher",
                ctx.teacher,
                "--readers",
                readers,
                "--rate",
                rate,
                "--seconds",
                15,
                "--pid",
                s,
                "--label",
                format!("chat:{readers}:{rate}")
            ],
        )
        .await?;
    }
    ctx.sup.stop(publisher);
    Ok(())
}
