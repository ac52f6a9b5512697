// Section 16: one student on each network profile of `classcast-bench netlab` (good, busy and
// poor Wi-Fi), 60 s per player: WebRTC on the student page (Chromium's freezeCount), hls.js on
// the student page (`webrtc=0`, as the page configures it), and stock hls.js on nginx-rtmp's HLS
// of the same stream through the same link (`waiting` events once playing). Then the time from
// opening the student page to the first decoded WebRTC frame with UDP blocked (ICE-TCP), 3 runs.
// One JSON line per run appended to --results.
//
//   node netprofiles.mjs --bin target/release/classcast --bench-bin target/release/classcast-bench \
//     --flv small.flv --rtmp-module /usr/lib/nginx/modules/ngx_rtmp_module.so \
//     --ports P1,...,P6 --seconds 60 --work DIR --results results.jsonl
import { createServer } from 'node:http';
import { appendFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Procs, cluster, live, loop, netlab, parseArgs, sleep, until, watch } from './lab.mjs';

const DIR = import.meta.dirname;
const args = parseArgs();
const seconds = Number(args.seconds || 60);
const [mp, hp, rp, nr, nh, pagePort] = args.ports.split(',').map(Number);
mkdirSync(args.work, { recursive: true });
const procs = new Procs(args.work);
const record = (r) => { console.log(JSON.stringify(r)); appendFileSync(args.results, JSON.stringify(r) + '\n'); };

// nginx-rtmp with HLS (1 s fragments, as section 8), its HTTP on the lab's address; one process
// (`master_process off`), so that ending it by PID leaves no worker behind.
function nginx(ip, dir) {
  mkdirSync(path.join(dir, 'hls'), { recursive: true });
  mkdirSync(path.join(dir, 'logs'), { recursive: true });
  const conf = path.join(dir, 'nginx.conf');
  const d = dir;
  const text = `load_module ${args['rtmp-module']};
master_process off; pid ${d}/nginx.pid; error_log ${d}/logs/error.log warn; daemon off;
events { worker_connections 1024; }
rtmp { server { listen 127.0.0.1:${nr}; chunk_size 4096;
  application live { live on; record off; hls on; hls_path ${d}/hls; hls_fragment 1s; hls_playlist_length 4s; } } }
http { access_log off; sendfile on; types { application/vnd.apple.mpegurl m3u8; video/mp2t ts; }
  server { listen ${ip}:${nh}; location /hls/ { alias ${d}/hls/; add_header Cache-Control no-cache; add_header Access-Control-Allow-Origin *; } } }
`;
  writeFileSync(conf, text);
  return procs.run('nginx', 'nginx', ['-c', conf, '-p', d]);
}

// The glass-to-glass page and hls.js, served on the lab's address for nginx's stream.
function pageServer(ip) {
  const files = {
    '/': ['page.html', 'text/html'],
    '/hls.js': ['node_modules/hls.js/dist/hls.light.min.js', 'text/javascript'],
    '/live-hls.js': ['../../master/web/live-hls.js', 'text/javascript'],
  };
  const s = createServer((req, res) => {
    const f = files[req.url.split('?')[0]];
    if (!f) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { 'content-type': f[1] });
    res.end(readFileSync(path.join(DIR, f[0])));
  });
  return new Promise((r) => s.listen(pagePort, ip, () => r(s)));
}

async function play(browser, url, ready, arg) {
  const page = await (await browser.newContext({ viewport: { width: 420, height: 860 } })).newPage();
  page.setDefaultTimeout(60_000);
  await page.goto(url);
  await until('playing', 45000, () => page.evaluate(ready, arg));
  return page;
}

async function profile(name) {
  const lab = await netlab(procs, args['bench-bin'], 'ccbnet', 75, name);
  let mine = [], browser, server;
  const link = {};
  try {
    const ip = lab.host;
    const c = await cluster(procs, args.bin, ip, [mp, hp, rp], 'net');
    mine = c.mine;
    const n = nginx(ip, path.join(args.work, `nginx-${name}`));
    mine.push(n);
    await sleep(500);
    mine.push(loop(procs, `publisher-${name}`, 'ffmpeg', args.flv, c.publishUrl));
    mine.push(loop(procs, `publisher-nginx-${name}`, 'ffmpeg', args.flv, `rtmp://127.0.0.1:${nr}/live/net`));
    await live(c.master, 'net');
    server = await pageServer(ip);
    browser = await lab.browser();
    // WebRTC on the student page.
    let page = await play(browser, `${c.master}/?name=Bench&stream=net&autoplay`,
      () => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 30);
    let s0 = await page.evaluate(() => ({ ...window.classcast.webrtc }));
    await sleep(seconds * 1000);
    let s1 = await page.evaluate(() => ({ ...window.classcast.webrtc, mode: window.classcast.mode }));
    const freezes = s1.freezes - s0.freezes;
    record({ bench: 'netprofile', profile: name, player: 'webrtc', seconds, freezes, freezes_per_min: +(freezes * 60 / seconds).toFixed(2),
      freeze_s: +(s1.freeze_s - s0.freeze_s).toFixed(2), frames: s1.frames - s0.frames, nacks: s1.nacks - s0.nacks,
      packets_lost: s1.lost - s0.lost, still_webrtc: s1.mode === 'webrtc' });
    await page.context().close();
    // hls.js on the student page, and stock hls.js on nginx-rtmp's HLS.
    const runs = [
      ['hls-classcast', `${c.master}/?name=Bench&stream=net&autoplay&webrtc=0`, 'video'],
      ['hls-nginx', `http://${ip}:${pagePort}/?player=hls&epoch=0&cfg=${encodeURIComponent('{}')}&src=${encodeURIComponent(`http://${ip}:${nh}/hls/net.m3u8`)}`, 'v'],
    ];
    for (const [player, url, id] of runs) {
      page = await play(browser, url, (id) => document.getElementById(id).currentTime > 1, id);
      await watch(page, id);
      // Frames shown beside the playhead's advance (a jump moves the playhead past pictures
      // never shown), and on the student page what it decided (leaving low latency, moving).
      const shown = () => page.evaluate((id) => { const q = document.getElementById(id).getVideoPlaybackQuality(); return q.totalVideoFrames - q.droppedVideoFrames; }, id);
      const f0 = await shown();
      await sleep(seconds * 1000);
      const f1 = await shown();
      const r = await page.evaluate((id) => ({ t: document.getElementById(id).currentTime, ...window.bench,
        events: (window.classcast?.events || []).filter((e) => e.type === 'steady' || e.type === 'failover' || e.type === 'slow-network') }), id);
      record({ bench: 'netprofile', profile: name, player, seconds, stalls: r.stalls, stalls_per_min: +(r.stalls * 60 / seconds).toFixed(2), jumps: r.jumps,
        played_s: +(r.t - r.t0).toFixed(2), shown_s: +((f1 - f0) / 30).toFixed(2),
        ...(player === 'hls-classcast' ? { steady: r.events.find((e) => e.type === 'steady')?.why || null, moves: r.events.filter((e) => e.type === 'failover').length } : {}) });
      await page.context().close();
    }
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (server) server.close();
    procs.stop(mine);
    Object.assign(link, await lab.stop());
  }
  record({ bench: 'netprofile_link', profile: name, link });
}

// UDP blocked: the student page's time to its first WebRTC frame over ICE-TCP.
async function ttff() {
  const lab = await netlab(procs, args['bench-bin'], 'ccbnet', 75, 'udp-blocked');
  let mine = [], browser;
  try {
    const c = await cluster(procs, args.bin, lab.host, [mp, hp, rp], 'net');
    mine = c.mine;
    mine.push(loop(procs, 'publisher-ttff', 'ffmpeg', args.flv, c.publishUrl));
    await live(c.master, 'net');
    browser = await lab.browser();
    const ms = [];
    let transports = [];
    for (let i = 0; i < 3; i++) {
      const page = await (await browser.newContext({ viewport: { width: 420, height: 860 } })).newPage();
      const t0 = Date.now();
      await page.goto(`${c.master}/?name=Bench${i}&stream=net&autoplay`);
      await until('first WebRTC frame', 30000, () => page.evaluate(() => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 0));
      ms.push(Date.now() - t0);
      transports.push(await until('transport', 5000, () => page.evaluate(() => window.classcast.webrtcTransport)));
      await page.context().close();
    }
    record({ bench: 'ttff_tcp', runs_ms: ms, median_ms: [...ms].sort((a, b) => a - b)[1], transports });
  } finally {
    if (browser) await browser.close().catch(() => {});
    procs.stop(mine);
    await lab.stop();
  }
}

try {
  // NET_PROFILES re-runs some of them, e.g. `poor` or `poor,udp-blocked`.
  const only = (process.env.NET_PROFILES || 'good,busy,poor,udp-blocked').split(',');
  for (const p of ['good', 'busy', 'poor']) if (only.includes(p)) await profile(p);
  if (only.includes('udp-blocked')) await ttff();
} finally {
  procs.stopAll();
}
