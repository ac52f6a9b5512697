// Section 15b: what one student behind a 1.5 Mbit/s link costs and gets, with the class sent as
// a three-rendition ladder (Enhanced RTMP multitrack) against the same class as its top
// rendition only. A `classcast-bench netlab` namespace with the `capped` profile, a master and a
// slave on the lab's host address, ffmpeg 9 looping a pre-encoded FLV with `-c copy` (both runs
// send the very same top rendition), and Chromium in the namespace on the student page, first
// over LL-HLS (`webrtc=0`), then over WebRTC. One JSON line per run appended to --results.
//
//   node abr.mjs --bin target/release/classcast --bench-bin target/release/classcast-bench \
//     --ffmpeg9 PATH --ladder ladder.flv --single single.flv --ports P1,P2,P3 --seconds 60 \
//     --work DIR --results results.jsonl
import { appendFileSync, mkdirSync } from 'node:fs';
import { Procs, cluster, live, loop, metric, netlab, parseArgs, sleep, until, watch } from './lab.mjs';

const args = parseArgs();
const seconds = Number(args.seconds || 60);
const ports = args.ports.split(',').map(Number);
mkdirSync(args.work, { recursive: true });
const procs = new Procs(args.work);

async function once(mode, flv, transport) {
  const lab = await netlab(procs, args['bench-bin'], 'ccbabr', 74, 'capped');
  let mine = [], browser;
  try {
    const c = await cluster(procs, args.bin, lab.host, ports, 'abr');
    mine = c.mine;
    mine.push(loop(procs, `publisher-${mode}`, args.ffmpeg9, flv, c.publishUrl));
    await live(c.master, 'abr');
    browser = await lab.browser();
    const page = await (await browser.newContext({ viewport: { width: 420, height: 860 } })).newPage();
    page.setDefaultTimeout(60_000);
    await page.goto(`${c.master}/?name=Bench&stream=abr&autoplay${transport === 'hls' ? '&webrtc=0' : ''}`);
    if (transport === 'hls') {
      await until('playing', 40000, () => page.evaluate(() => document.getElementById('video').currentTime > 1));
    } else {
      // A stream the link cannot carry may never play over WebRTC: the page then falls back to
      // LL-HLS, and that is the result.
      const ok = await until('WebRTC playing', 40000, () => page.evaluate(() => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 30)).then(() => true, () => false);
      if (!ok) {
        const st = await page.evaluate(() => ({ page_mode: window.classcast.mode, frames: window.classcast.webrtc?.frames || 0,
          why: (window.classcast.events.find((e) => e.type === 'webrtc-fallback') || {}).why || null,
          events: window.classcast.events.slice(-8).map((e) => e.type + (e.why ? ':' + e.why : '') + (e.mode ? ':' + e.mode : '')) }));
        const r = { bench: 'abr_viewer', mode, transport, seconds, webrtc_played: false, ...st };
        console.log(JSON.stringify(r));
        appendFileSync(args.results, JSON.stringify(r) + '\n');
        return;
      }
    }
    await watch(page);
    const counter = transport === 'hls' ? 'classcast_slave_bytes_out_total' : 'classcast_slave_webrtc_bytes_total';
    const b0 = await metric(c.slave, counter);
    const s0 = await page.evaluate(() => ({ t: document.getElementById('video').currentTime, ...(window.classcast.webrtc || {}) }));
    await sleep(seconds * 1000);
    const b1 = await metric(c.slave, counter);
    const s1 = await page.evaluate(() => ({ t: document.getElementById('video').currentTime, ...(window.classcast.webrtc || {}), bench: window.bench }));
    const r = {
      bench: 'abr_viewer', mode, transport, seconds, webrtc_played: transport === 'webrtc' ? true : null,
      bytes: b1 - b0, mbit_per_s: +((b1 - b0) * 8 / seconds / 1e6).toFixed(3),
      played_s: +(s1.t - s0.t).toFixed(2), stalls: s1.bench.stalls, jumps: s1.bench.jumps,
      freezes: transport === 'webrtc' ? (s1.freezes || 0) - (s0.freezes || 0) : null,
      frames: transport === 'webrtc' ? (s1.frames || 0) - (s0.frames || 0) : null,
      seconds_at_height: s1.bench.heights,
    };
    console.log(JSON.stringify(r));
    appendFileSync(args.results, JSON.stringify(r) + '\n');
  } finally {
    if (browser) await browser.close().catch(() => {});
    procs.stop(mine);
    await lab.stop();
  }
}

try {
  // --runs ladder:hls,top-only:webrtc runs a subset (default: all four).
  const only = args.runs ? args.runs.split(',') : null;
  for (const [mode, flv] of [['ladder', args.ladder], ['top-only', args.single]]) {
    for (const transport of ['hls', 'webrtc']) {
      if (!only || only.includes(`${mode}:${transport}`)) await once(mode, flv, transport);
    }
  }
} finally {
  procs.stopAll();
}
