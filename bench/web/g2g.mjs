// Glass-to-glass latency in headless Chromium: plays a stream published by publish.mjs with
// hls.js (or Shaka Player, or mpegts.js for HTTP-FLV: --player mpegts), reads the clock burnt
// into the frame on screen every animation frame (page.html) and records Date.now() − that
// clock. One JSON line per run on stdout (and --out).
//
//   node g2g.mjs --label classcast-200 --src URL --player hls --cfg '{"lowLatencyMode":true}' \
//     --epoch MS [--runs 3] [--seconds 30] [--warmup 5] [--out results.jsonl] [--bench g2g]
//     [--web-security off] [--port N]
//
// --bench names the result lines (`g2g`; `g2g_long` for the long stall run). --web-security off
// launches Chromium with --disable-web-security, for a server that sends no CORS header (xiu's
// HLS): the page is served from another origin (this script's port) than the stream. A run may
// last as long as wanted (--seconds 300 for the stall run): no Playwright timeout bounds the wait.
// --port fixes the page's port, so that a server can be told to allow its origin (classcast's
// CORS_ORIGINS).
import { createServer } from 'node:http';
import { readFileSync, appendFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const DIR = import.meta.dirname;
const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const runs = Number(args.runs || 3), seconds = Number(args.seconds || 30), warmup = Number(args.warmup || 5);
const bench = args.bench || 'g2g';
const files = {
  '/': ['page.html', 'text/html'],
  '/hls.js': ['node_modules/hls.js/dist/hls.light.min.js', 'text/javascript'],
  '/shaka.js': ['node_modules/shaka-player/dist/shaka-player.compiled.js', 'text/javascript'],
  '/mpegts.js': ['node_modules/mpegts.js/dist/mpegts.js', 'text/javascript'],
  // What the student page plays with (`--cfg student`).
  '/live-hls.js': ['../../master/web/live-hls.js', 'text/javascript'],
};
const server = createServer((req, res) => {
  const f = files[req.url.split('?')[0]];
  if (!f) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { 'content-type': f[1] });
  res.end(readFileSync(path.join(DIR, f[0])));
});
await new Promise((r) => server.listen(Number(args.port || 0), '127.0.0.1', r));
const port = server.address().port;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--autoplay-policy=no-user-gesture-required',
    ...(args['web-security'] === 'off' ? ['--disable-web-security'] : [])],
});
const pct = (s, p) => s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil(p / 100 * s.length) - 1))] : null;
try {
  for (let run = 1; run <= runs; run++) {
    const ctx = await browser.newContext({ viewport: { width: 640, height: 360 } });
    const page = await ctx.newPage();
    page.on('console', (m) => { if (m.type() === 'error') console.error(`[page] ${m.text()}`); });
    // --token: the viewer token a WHEP player sends (kept out of cfg, which the results record).
    const q = new URLSearchParams({ src: args.src, player: args.player || 'hls', epoch: args.epoch, cfg: args.cfg || '{}', token: args.token || '' });
    // The run's length is a plain sleep (no Playwright timeout applies to it); loading the page
    // and reading the figures get generous bounds of their own.
    page.setDefaultTimeout(60_000);
    const t0 = Date.now();
    await page.goto(`http://127.0.0.1:${port}/?${q}`, { timeout: 60_000 });
    await new Promise((r) => setTimeout(r, seconds * 1000));
    const g = await page.evaluate(() => window.g2gResult());
    await ctx.close();
    const first = g.samples.length ? g.samples[0][0] : null;
    const counted = g.samples.filter(([t]) => t - first >= warmup * 1000);
    const lat = counted.map(([, l]) => l).sort((a, b) => a - b);
    // Longest time between two new frames on screen after the warm-up (a freeze, with or without
    // a `waiting` event).
    let gap = 0;
    for (let i = 1; i < counted.length; i++) gap = Math.max(gap, counted[i][0] - counted[i - 1][0]);
    const r = {
      bench, label: args.label, player: args.player || 'hls', cfg: args.cfg === 'student' ? 'student' : JSON.parse(args.cfg || '{}'), run,
      seconds, warmup_s: warmup, startup_ms: first ? first - t0 : null, frames: lat.length,
      p50_ms: pct(lat, 50), p95_ms: pct(lat, 95), min_ms: lat[0] ?? null, max_ms: lat.at(-1) ?? null,
      waiting: g.waiting, stalled_ms: g.stalledMs,
      // [s after the first frame, ms stalled] of each stall (the first 50).
      stalls: g.stalls.map(([t, ms]) => [first ? Math.round((t - first) / 100) / 10 : null, ms]),
      max_frame_gap_ms: counted.length > 1 ? gap : null,
      decoded_frames: g.decodedFrames, dropped_frames: g.droppedFrames,
      decode_failures: g.decodeFail, error_count: g.errorCount ?? g.errors.length, errors: g.errors,
    };
    // hls.js only: its own latency (distance behind the live edge it computes) and the buffer
    // ahead, p50 after the warm-up, and its target.
    const pl = g.player.filter(([t]) => first !== null && t - first >= warmup * 1000);
    if (pl.length) {
      r.player_latency_p50_ms = pct(pl.map(([, l]) => l).sort((a, b) => a - b), 50);
      r.buffer_p50_ms = pct(pl.map(([, , b]) => b).sort((a, b) => a - b), 50);
    }
    if (seconds >= 120 && first) {
      // p50 of each whole minute after the warm-up: does the latency drift over a long run?
      r.p50_by_minute_ms = [];
      for (let m = 0; warmup * 1000 + (m + 1) * 60_000 <= seconds * 1000 - (first - t0); m++) {
        const lo = first + warmup * 1000 + m * 60_000;
        const w = counted.filter(([t]) => t >= lo && t < lo + 60_000).map(([, l]) => l).sort((a, b) => a - b);
        r.p50_by_minute_ms.push(pct(w, 50));
      }
    }
    const line = JSON.stringify(r);
    console.log(line);
    if (args.out) appendFileSync(args.out, line + '\n');
  }
} finally {
  await browser.close();
  server.close();
}
