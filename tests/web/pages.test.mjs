// The pages, played in real headless Chromium: the student page plays the class, the admin page
// shows the master's numbers, the teacher page's OBS settings publish, and a student recovers
// when their slave is killed. Screenshots of failures land in target/web-artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, createWriteStream, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import os from 'node:os';
import { chromium } from 'playwright-core';
import jsQR from 'jsqr';

const ROOT = path.resolve(import.meta.dirname, '../..');
const BIN = process.env.CLASSCAST_BIN || path.join(ROOT, 'target/debug/classcast');
const ART = path.join(ROOT, 'target/web-artifacts');
mkdirSync(ART, { recursive: true });
const SECRET = 'web-test-cluster-secret-0123456789';
const TEACHER = 'web-teacher-pass';
const procs = [];
let browser;

// `n` different free ports.
async function distinctPorts(n) {
  const ports = new Set();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

function freePort() {
  return new Promise((res) => { const s = createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); }); });
}

function run(name, cmd, args, env = {}) {
  const log = createWriteStream(path.join(ART, `${name}.log`));
  const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  p.stdout.pipe(log); p.stderr.pipe(log);
  procs.push(p);
  return p;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Ends processes a test started (and no others), so they do not load the machine for the rest.
const stop = (list) => { for (const p of list) { try { p.kill('SIGKILL'); } catch {} } };
async function until(what, ms, f) {
  const end = Date.now() + ms;
  for (;;) {
    try { const v = await f(); if (v) return v; } catch {}
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(100);
  }
}
const json = async (url, init) => (await fetch(url, init)).json();

function publish(name, url) {
  return run(name, 'ffmpeg', ['-hide_banner', '-loglevel', 'warning', '-nostdin', '-re',
    '-f', 'lavfi', '-i', 'testsrc=size=640x360:rate=30', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-c:v', 'libx264', '-preset', 'ultrafast', '-tune', 'zerolatency', '-g', '30', '-pix_fmt', 'yuv420p',
    '-c:a', 'aac', '-b:a', '64k', '-f', 'flv', url]);
}

// Logs in on the teacher page for class `stream`, and waits for its settings.
async function teacherLogin(page, base, stream) {
  await page.goto(`${base}/teacher`);
  await page.fill('#password', TEACHER);
  await page.fill('#stream', stream);
  await page.click('button[type=submit]');
  await page.waitForSelector('#settings:not([hidden])');
}

async function newPage(name) {
  const ctx = await browser.newContext({ viewport: { width: 420, height: 860 } }); // a phone-sized screen
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write']).catch(() => {});
  const page = await ctx.newPage();
  page._csp = [];
  page.on('console', (m) => {
    if (m.type() === 'error') console.log(`[${name}] console: ${m.text()}`);
    // Anything the pages' Content-Security-Policy blocked: there must be none.
    if (/Content Security Policy/i.test(m.text())) page._csp.push(m.text());
  });
  page.on('response', (r) => { if (r.status() >= 400) console.log(`[${name}] ${r.status()} ${r.url().slice(0, 140)}`); });
  page._name = name;
  return page;
}

async function withShot(page, f) {
  try { return await f(); }
  catch (e) { await page.screenshot({ path: path.join(ART, `${page._name}-failure.png`), fullPage: true }).catch(() => {}); throw e; }
}

// Waits until the student page plays `secs` seconds of video, and returns the node it plays from.
async function playsFor(page, secs, ms = 30000) {
  const start = await until('playback starts', ms, () => page.evaluate(() => { const v = document.getElementById('video'); return v.currentTime > 0.2 ? v.currentTime : null; }));
  await until(`currentTime advances ${secs}s`, ms, () => page.evaluate((s) => document.getElementById('video').currentTime >= s, start + secs));
  return page.evaluate(() => window.classcast.current.node_id);
}

let up, upPort;
before(async () => {
  // The fake microphone plays a 440 Hz sine (a file of ours; Chromium loops it), so a student
  // hearing the teacher's microphone is a frequency check, not a level that the fake beep's
  // timing decides.
  const sine = path.join(ART, 'fake-mic-440.wav');
  execFileSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-y', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-t', '5', '-ac', '1', sine]);
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    // A fake camera (a test pattern) and microphone (the sine above) for the teacher page's go-live.
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--autoplay-policy=no-user-gesture-required',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream', `--use-file-for-fake-audio-capture=${sine}`] });
  upPort = await freePort();
  rmSync(path.join(ART, 'up-data'), { recursive: true, force: true });
  up = run('up', BIN, ['up', '--slaves', '2', '--webrtc-udp-port', '0', '--master-port', String(upPort), '--rtmp-port-base', '0', '--http-port-base', '0',
    '--heartbeat-interval-ms', '500', '--grace-ms', '1000', '--teacher-password', TEACHER, '--data-dir', path.join(ART, 'up-data')]);
  await until('up is healthy', 30000, async () => (await json(`http://127.0.0.1:${upPort}/cluster/nodes`)).healthy_nodes === 2);
});

after(async () => {
  await browser?.close();
  for (const p of procs) { try { p.kill('SIGKILL'); } catch {} }
});

// The network tests come first: they measure playback and would be skewed by the encoders and
// clusters that later tests leave running; they stop their own processes when done.

// A school network that drops UDP: an iptables rule drops every UDP datagram to the test
// slave's WebRTC ports (its two engines' ports only, removed in `finally`), so the slave's
// ICE-TCP candidates on the same port numbers are the only way in; with it switched off (WEBRTC_TCP=false) the page
// must play LL-HLS within 2 s. Needs root, as CI has.
// The page's own latency figure (`window.classcast.latency`, s) every `every` s for `seconds`.
async function latencySamples(page, seconds, every) {
  const lat = [];
  for (let s = 0; s < seconds; s += every) {
    await sleep(every * 1000);
    const l = await page.evaluate(() => window.classcast.latency);
    if (typeof l === 'number') lat.push(l);
  }
  return lat;
}

function iptables(op, port) {
  return new Promise((res, rej) => {
    const p = spawn('iptables', [op, 'INPUT', '-p', 'udp', '--dport', String(port), '-m', 'comment',
      '--comment', 'classcast-web-test', '-j', 'DROP'], { stdio: 'inherit' });
    p.on('exit', (c) => (c === 0 ? res() : rej(new Error(`iptables ${op} exited ${c}`))));
    p.on('error', rej);
  });
}

async function oneSlaveCluster(name, tcp, procs) {
  const [mp, r, h, udp] = await distinctPorts(4);
  const master = `http://127.0.0.1:${mp}`;
  const env = { CLUSTER_SECRET: SECRET };
  procs.push(run(`${name}-master`, BIN, ['master', '--bind', `127.0.0.1:${mp}`, '--jwt-key-file', path.join(ART, `${name}-jwt.pem`),
    '--heartbeat-interval-ms', '300', '--teacher-password', TEACHER], env));
  await until(`${name} master up`, 15000, async () => (await fetch(`${master}/health`)).ok);
  procs.push(run(`${name}-slave`, BIN, ['slave', '--master-url', master, '--node-id', `${name}1`, '--rtmp-bind', `127.0.0.1:${r}`,
    '--http-bind', `127.0.0.1:${h}`, '--heartbeat-interval-ms', '300', '--webrtc-udp-port', String(udp), '--webrtc-engines', '2', '--webrtc-tcp', String(tcp),
    '--record-dir', path.join(ART, `${name}-rec`)], env));
  await until(`${name} slave healthy`, 30000, async () => (await json(`${master}/cluster/nodes`)).healthy_nodes === 1);
  const t = await json(`${master}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'teacher', user_id: 't', stream: name, credential: TEACHER }) });
  procs.push(publish(`${name}-publisher`, `${t.rtmp_url}/${t.stream_key}`));
  await until(`${name} live`, 20000, async () => (await json(`${master}/cluster/streams`)).streams?.some((s) => s.path === `live/${name}`));
  // Both engines' ports (udp, udp + 1), as iptables' --dport range.
  return { master, udp: `${udp}:${udp + 1}` };
}

test('a student whose network drops UDP plays WebRTC over TCP, or LL-HLS within 2 s where the slave has no TCP', async () => {
  const blocked = [];
  const mine = [];
  try {
    // ICE-TCP: WebRTC over TCP, with picture and sound, and the page says so.
    const withTcp = await oneSlaveCluster('udptcp', true, mine);
    await iptables('-I', withTcp.udp);
    blocked.push(withTcp.udp);
    const page = await newPage('udp-blocked-tcp');
    await withShot(page, async () => {
      const t0 = Date.now();
      await page.goto(`${withTcp.master}/?name=Tcp&stream=udptcp&autoplay`);
      await until('plays over WebRTC', 20000, () => page.evaluate(() => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 10));
      console.log(`UDP blocked, ICE-TCP: 10 frames decoded ${Date.now() - t0} ms after the page opened`);
      await until('transport known', 5000, () => page.evaluate(() => window.classcast.webrtcTransport));
      assert.equal(await page.evaluate(() => window.classcast.webrtcTransport), 'tcp');
      assert.equal(await page.textContent('#mode'), 'WebRTC (TCP)');
      const f0 = await page.evaluate(() => window.classcast.webrtc.frames);
      await until('frames advance', 5000, () => page.evaluate((f) => window.classcast.webrtc.frames > f + 30, f0));
      const heard = await listen(page);
      assert.ok(Math.abs(heard.hz - 440) < 30 && heard.rms > 0.01, `the sine is heard over TCP: ${JSON.stringify(heard)}`);
      const events = await page.evaluate(() => window.classcast.events.filter((e) => e.type === 'webrtc-fallback'));
      assert.deepEqual(events, [], 'no fallback to LL-HLS');
    });
    await page.context().close();
    stop(mine.splice(0));
    // No TCP candidate either: LL-HLS within 2 s of the answer, and the page says LL-HLS.
    const noTcp = await oneSlaveCluster('udpnotcp', false, mine);
    await iptables('-I', noTcp.udp);
    blocked.push(noTcp.udp);
    const page2 = await newPage('udp-blocked-no-tcp');
    await withShot(page2, async () => {
      await page2.goto(`${noTcp.master}/?name=Hls&stream=udpnotcp&autoplay`);
      const fb = await until('falls back to LL-HLS', 10000, () => page2.evaluate(() => window.classcast.events.find((e) => e.type === 'webrtc-fallback')));
      const tried = await page2.evaluate(() => window.classcast.events.find((e) => e.type === 'mode' && e.mode === 'webrtc'));
      const took = fb.t - tried.t;
      console.log(`UDP blocked, no TCP: LL-HLS ${took} ms after WebRTC was tried (${fb.why})`);
      assert.ok(took <= 2500, `fell back ${took} ms after WebRTC was tried`);
      await playsFor(page2, 1, 20000);
      assert.equal(await page2.textContent('#mode'), 'LL-HLS');
    });
  } finally {
    for (const port of blocked) await iptables('-D', port).catch((e) => console.log(`cleanup: ${e.message}`));
    stop(mine);
  }
});

// Issue 29: a Wi-Fi classroom. Students in network namespaces of their own, each joined to
// this host by a link `classcast-bench netlab` emulates (the kernel has no netem): delay and
// jitter, a rate with a bounded queue, bursty loss. One origin and one edge on the host's lab
// address; Chromium plays WebRTC on busy Wi-Fi (40 ± 20 ms RTT, 3 % loss in bursts, 4 Mbit/s)
// for 60 s. On poor Wi-Fi (80 ± 40 ms, 8 %, 2 Mbit/s) the page starts on WebRTC too, leaves it
// for hls.js once the picture keeps freezing, and hls.js plays 60 s. Needs root, as CI has.
const BENCH = process.env.CLASSCAST_BENCH || path.join(ROOT, 'target/debug/classcast-bench');
const WIFI_SECONDS = Number(process.env.WIFI_SECONDS || 60);
// Bounds for 60 s, from measurements here (docs/benchmarks.md, "Wi-Fi classroom"): WebRTC on
// busy Wi-Fi froze 3 times in 60 s (0–1 in 30 s runs). hls.js on poor Wi-Fi: in low-latency
// mode TCP over 8 % loss at 80 ms stalled a 0.6 s hold-back 22–32 times a minute; the page now
// leaves low latency after the first stalls (master/web/live-hls.js, "steady"), and stalled
// 4 times a minute on a quiet machine, 9 with a third process spinning on one of the two
// cores, showing 54 and 45 s of the minute's pictures. About twice the measured, so that a
// regression (a player that stops, a stall per part, jumps that skip the class) fails.
const MAX_WEBRTC_FREEZES_BUSY = Math.ceil(6 * WIFI_SECONDS / 60);
const MAX_HLS_STALLS_POOR = Math.ceil(18 * WIFI_SECONDS / 60);
// str0m clients (the bench's WHEP generator) on good Wi-Fi beside them: every one connects and
// is fed (a starved one receives a fraction of the 30 frames and 50 audio packets a second).
const STR0M_CLIENTS = 8;
const MIN_STR0M_PACKETS_S = 80;
const MAX_STR0M_LOSS = 0.03;

function netlab(name, index, profile) {
  const p = spawn(BENCH, ['netlab', '--name', name, '--index', String(index), '--profile', profile], { stdio: ['pipe', 'pipe', 'pipe'] });
  procs.push(p);
  let out = '';
  p.stdout.on('data', (d) => { out += d; });
  p.stderr.on('data', (d) => { out += d; });
  const exited = new Promise((res) => p.on('exit', res));
  return {
    host: `10.77.${index}.1`,
    ready: () => until(`netlab ${name} ready`, 15000, () => { if (p.exitCode !== null) throw new Error(out); return out.includes('ready '); }),
    // Ends the lab (it removes its namespace) and returns what its link did.
    stop: async () => { p.stdin.end(); await Promise.race([exited, sleep(5000)]); const line = out.split('\n').find((l) => l.includes('"bench":"netlab"')); return line ? JSON.parse(line) : { out }; },
    browser: () => {
      const wrapper = path.join(ART, `chromium-in-${name}.sh`);
      writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${name} ${process.env.CHROMIUM || '/usr/bin/chromium'} "$@"\n`, { mode: 0o755 });
      return chromium.launch({ executablePath: wrapper, headless: true,
        args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--no-first-run', '--autoplay-policy=no-user-gesture-required'] });
    },
  };
}

test('a Wi-Fi classroom: WebRTC on busy Wi-Fi keeps playing; on poor Wi-Fi the page leaves a freezing WebRTC for hls.js, which keeps playing', async () => {
  const busy = netlab('ccwbusy', 71, 'busy');
  const poor = netlab('ccwpoor', 72, 'poor');
  const good = netlab('ccwgood', 73, 'good');
  const browsers = [];
  const mine = [];
  try {
    await busy.ready();
    await poor.ready();
    await good.ready();
    // The servers listen on the busy lab's host address, which every namespace reaches.
    const ip = busy.host;
    const [mp, r1, h1, r2, h2] = await distinctPorts(5);
    const master = `http://${ip}:${mp}`;
    const env = { CLUSTER_SECRET: SECRET };
    mine.push(run('wifi-master', BIN, ['master', '--bind', `${ip}:${mp}`, '--jwt-key-file', path.join(ART, 'wifi-jwt.pem'),
      '--heartbeat-interval-ms', '300', '--teacher-password', TEACHER], env));
    await until('wifi master up', 15000, async () => (await fetch(`${master}/health`)).ok);
    for (const [id, r, h] of [['w1', r1, h1], ['w2', r2, h2]]) {
      mine.push(run(`wifi-${id}`, BIN, ['slave', '--master-url', master, '--node-id', id, '--rtmp-bind', `127.0.0.1:${r}`,
        '--http-bind', `${ip}:${h}`, '--public-host', ip, '--heartbeat-interval-ms', '300', '--webrtc-udp-port', '0',
        '--record-dir', path.join(ART, `wifi-rec-${id}`)], env));
    }
    await until('wifi cluster healthy', 30000, async () => (await json(`${master}/cluster/nodes`)).healthy_nodes === 2);
    const t = await json(`${master}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ role: 'teacher', user_id: 't', stream: 'wifi', credential: TEACHER }) });
    mine.push(publish('wifi-publisher', `${t.rtmp_url.replace(ip, '127.0.0.1')}/${t.stream_key}`));
    await until('wifi class live on both', 20000, async () => (await json(`${master}/cluster/streams`)).streams?.some((s) => s.path === 'live/wifi' && s.serving.length === 2));

    const open = async (lab, name, query) => {
      const b = await lab.browser();
      browsers.push(b);
      const page = await (await b.newContext({ viewport: { width: 420, height: 860 } })).newPage();
      page._name = name;
      page.on('console', (m) => { if (m.type() === 'error') console.log(`[${name}] console: ${m.text()}`); });
      await page.goto(`${master}/?name=${name}&stream=wifi&autoplay${query}`);
      return page;
    };
    const rtc = await open(busy, 'wifi-webrtc', '');
    const hls = await open(poor, 'wifi-hls', '');
    await withShot(rtc, () => until('WebRTC plays on busy Wi-Fi', 30000, () => rtc.evaluate(() => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 30)));
    // The page's rule: 4 s frozen or 10 freezes within 20 s leaves WebRTC (for good: the
    // network cannot carry it). Poor Wi-Fi froze 19 s a minute in bench section 16.
    const leftRtc = await withShot(hls, () => until('the poor-Wi-Fi page leaves a freezing WebRTC', 60000, () => hls.evaluate(() => {
      const e = window.classcast.events;
      const rtcPlayed = e.some((x) => x.type === 'mode' && x.mode === 'webrtc');
      const fb = e.find((x) => x.type === 'webrtc-fallback');
      return fb && rtcPlayed ? { why: fb.why, after_ms: fb.t - e.find((x) => x.type === 'mode' && x.mode === 'webrtc').t, frames: window.classcast.webrtc?.frames || 0 } : null;
    })).catch(async (e) => {
      console.log(`wifi classroom, poor, still on WebRTC: ${JSON.stringify(await hls.evaluate(() => ({ webrtc: window.classcast.webrtc, events: window.classcast.events })))}`);
      throw e;
    }));
    console.log(`wifi classroom, poor: WebRTC left after ${leftRtc.after_ms} ms and ${leftRtc.frames} frames: ${leftRtc.why}`);
    assert.match(leftRtc.why, /^no smooth picture: /, 'left because the picture kept freezing');
    await withShot(hls, () => playsFor(hls, 1, 40000)).catch(async (e) => {
      console.log(`wifi classroom, poor, hls.js not playing: ${JSON.stringify(await hls.evaluate(() => window.classcast.events.filter((x) => x.type !== 'latency')))}`);
      throw e;
    });
    assert.equal(await hls.evaluate(() => window.classcast.mode), 'hls');
    await hls.evaluate(() => {
      const v = document.getElementById('video');
      window.stalls = 0;
      window.seeks = 0;
      v.addEventListener('waiting', () => { window.stalls += 1; });
      // Seeks are the page's own jumps back to the live edge.
      v.addEventListener('seeking', () => { window.seeks += 1; });
    });
    // The str0m clients join now and play through the measured minute, each with its own
    // student token from the master (which spreads them over origin and edge).
    const str0m = spawn('ip', ['netns', 'exec', 'ccwgood', BENCH, 'whep-viewers', '--master', master, '--stream', 'wifi',
      '--viewers', String(STR0M_CLIENTS), '--seconds', String(WIFI_SECONDS), '--bind', '10.77.73.2', '--label', 'wifi-str0m'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
    procs.push(str0m);
    let str0mOut = '';
    str0m.stdout.on('data', (d) => { str0mOut += d; });
    str0m.stderr.on('data', (d) => { str0mOut += d; });
    const str0mDone = new Promise((res) => str0m.on('exit', res));
    const r0 = await rtc.evaluate(() => ({ ...window.classcast.webrtc }));
    // Frames shown, beside the playhead's advance: a jump forward moves the playhead without
    // showing what it skips.
    const shown = () => hls.evaluate(() => { const q = document.getElementById('video').getVideoPlaybackQuality(); return q.totalVideoFrames - q.droppedVideoFrames; });
    const h0 = await hls.evaluate(() => document.getElementById('video').currentTime);
    const f0 = await shown();
    const n0 = await hls.evaluate(() => window.classcast.events.length);
    const lat = await latencySamples(hls, WIFI_SECONDS, 5);
    const r1s = await rtc.evaluate(() => ({ ...window.classcast.webrtc, mode: window.classcast.mode }));
    const f1 = await shown();
    const h1s = await hls.evaluate((n0) => ({ t: document.getElementById('video').currentTime, stalls: window.stalls, seeks: window.seeks, mode: window.classcast.mode,
      moves: window.classcast.events.slice(n0).filter((e) => e.type === 'failover').length,
      events: window.classcast.events.filter((e) => e.type !== 'latency').map((e) => `${e.type}:${e.details || e.why || e.mode || ''}${e.fatal ? '!' : ''}`) }), n0);
    await Promise.race([str0mDone, sleep(20000)]);
    const str0mLine = str0mOut.split('\n').find((l) => l.includes('"bench":"webrtc_viewers"'));
    const [busyLink, poorLink, goodLink] = [await busy.stop(), await poor.stop(), await good.stop()];
    lat.sort((a, b) => a - b);
    const fig = {
      webrtc_busy: { seconds: WIFI_SECONDS, frames: r1s.frames - r0.frames, freezes: r1s.freezes - r0.freezes, dropped: r1s.dropped - r0.dropped,
        nacks: r1s.nacks - r0.nacks, packets_lost: r1s.lost - r0.lost, mode: r1s.mode },
      webrtc_poor_left: leftRtc,
      hls_poor: { seconds: WIFI_SECONDS, played_s: +(h1s.t - h0).toFixed(2), shown_s: +((f1 - f0) / 30).toFixed(2), stalls: h1s.stalls, jumps: h1s.seeks, latency_p50_s: lat[Math.floor(lat.length / 2)], mode: h1s.mode, moves: h1s.moves, events: h1s.events },
      str0m_good: str0mLine ? JSON.parse(str0mLine) : { out: str0mOut.slice(-2000) },
      links: { busy: busyLink, poor: poorLink, good: goodLink },
    };
    console.log(`wifi classroom: ${JSON.stringify(fig)}`);
    assert.equal(r1s.mode, 'webrtc', 'still on WebRTC');
    assert.ok(fig.webrtc_busy.frames >= 25 * WIFI_SECONDS, `frames kept coming: ${fig.webrtc_busy.frames}`);
    assert.ok(fig.webrtc_busy.freezes <= MAX_WEBRTC_FREEZES_BUSY, `WebRTC freezes on busy Wi-Fi: ${fig.webrtc_busy.freezes}`);
    assert.ok(busyLink.down.lost > 0, 'the busy link did lose packets');
    // Pictures shown, not the playhead's advance: before the page left low latency on such a
    // network, jumps to the live edge moved the playhead 17 s further than the pictures shown
    // (50 s "played", 33 s shown), and a CI run played 5 s of 60 while moving between slaves.
    // Shown now: 54 s quiet, 45 s beside a spinning process (the link is emulated in user
    // space and shares the two cores with Chromium and the cluster). Half the minute: a player
    // that stops, or waits on every part, fails.
    assert.ok(fig.hls_poor.shown_s >= WIFI_SECONDS / 2, `hls.js showed ${fig.hls_poor.shown_s} s of ${WIFI_SECONDS}: ${JSON.stringify(fig.hls_poor)}`);
    // On a slow network the student stays with the slave that answers (the page asks it before
    // moving on): a move restarts the player from nothing.
    assert.equal(h1s.moves, 0, `no move between slaves: ${h1s.events}`);
    assert.ok(fig.hls_poor.stalls <= MAX_HLS_STALLS_POOR, `hls.js stalls on poor Wi-Fi: ${fig.hls_poor.stalls}`);
    assert.ok(poorLink.down.lost > 0, 'the poor link did lose packets');
    const sc = fig.str0m_good;
    assert.equal(sc.connected, STR0M_CLIENTS, `str0m clients connected: ${JSON.stringify(sc)}`);
    assert.ok(sc.packets_per_viewer_s >= MIN_STR0M_PACKETS_S, `str0m clients fed: ${sc.packets_per_viewer_s} packets/s each`);
    // The median client: one client whose own process is starved of CPU (CI's two cores also run
    // Chromium twice and the link emulator) can lose a second's packets in its socket buffer.
    assert.ok(sc.loss_median <= MAX_STR0M_LOSS, `str0m clients' loss: ${JSON.stringify(sc)}`);
  } finally {
    for (const b of browsers) await b.close().catch(() => {});
    stop(mine);
    await busy.stop();
    await poor.stop();
    await good.stop();
  }
  // Every namespace the test made is gone.
  const left = await new Promise((res) => { const p = spawn('ip', ['netns', 'list']); let o = ''; p.stdout.on('data', (d) => { o += d; }); p.on('exit', () => res(o)); });
  assert.ok(!/ccwbusy|ccwpoor|ccwgood/.test(left), `namespaces left: ${left}`);
});

// Issue 30: the student page over LL-HLS on the defaults (200 ms parts, PART-HOLD-BACK of three
// part targets) plays STUDENT_SECONDS after its first frame without one `waiting` event, at the
// latency its own figure shows (program date → now), without drifting. The bound is the
// measured 0.72–0.95 s of bench section 8 with room for CI's shared cores; the goal of 0.7 s is
// not met at 200 ms parts (docs/operations.md).
const STUDENT_SECONDS = Number(process.env.STUDENT_SECONDS || 60);
const MAX_STUDENT_LATENCY_S = 1.5;

test('the student page over LL-HLS on the defaults plays a minute with no stall, under 1.5 s behind, without drift', async () => {
  const mine = [];
  try {
    const c = await oneSlaveCluster('llhls', true, mine);
    const page = await newPage('llhls-student');
    await withShot(page, async () => {
      await page.goto(`${c.master}/?name=Ll&stream=llhls&autoplay&webrtc=0`);
      await playsFor(page, 1, 30000);
      await page.evaluate(() => {
        window.stalls = [];
        const v = document.getElementById('video');
        v.addEventListener('waiting', () => { window.stalls.push(v.currentTime); });
      });
      const t0 = await page.evaluate(() => document.getElementById('video').currentTime);
      const lat = await latencySamples(page, STUDENT_SECONDS, 2);
      const end = await page.evaluate(() => ({ t: document.getElementById('video').currentTime, stalls: window.stalls, mode: window.classcast.mode }));
      const sorted = [...lat].sort((a, b) => a - b);
      const head = lat.slice(0, 5).reduce((a, b) => a + b, 0) / Math.min(5, lat.length);
      const tail = lat.slice(-5).reduce((a, b) => a + b, 0) / Math.min(5, lat.length);
      const fig = { seconds: STUDENT_SECONDS, played_s: +(end.t - t0).toFixed(2), waiting: end.stalls.length, mode: end.mode,
        latency_p50_s: sorted[Math.floor(sorted.length / 2)], latency_max_s: sorted[sorted.length - 1], drift_s: +(tail - head).toFixed(3) };
      console.log(`student page, LL-HLS defaults: ${JSON.stringify(fig)}`);
      assert.equal(end.mode, 'hls');
      assert.ok(fig.played_s >= STUDENT_SECONDS - 3, `played ${fig.played_s} s of ${STUDENT_SECONDS}`);
      assert.equal(fig.waiting, 0, `waiting events after the first frame at ${JSON.stringify(end.stalls)}`);
      assert.ok(fig.latency_p50_s <= MAX_STUDENT_LATENCY_S, `latency p50 ${fig.latency_p50_s} s`);
      assert.ok(Math.abs(fig.drift_s) <= 0.3, `latency drifted ${fig.drift_s} s`);
    });
    await page.context().close();
  } finally {
    stop(mine);
  }
});

// Issue 33: ABR from the teacher's own encoder. ffmpeg 9 sends a three-rendition H.264
// ladder (1080p 3 Mbit/s, 720p 1.5, 360p 0.5) and one AAC track as one multitrack FLV; the
// slave serves one multivariant playlist and no transcoder runs. A student behind a
// 1.5 Mbit/s link (`netlab --profile capped`) settles on 360p and plays ABR_SECONDS without
// a stall; a student on the host's own link climbs to 1080p.
const ABR_SECONDS = Number(process.env.ABR_SECONDS || 60);

function ladder(name, url) {
  const rates = ['3000k', '1500k', '500k'].flatMap((r, i) => [`-b:v:${i}`, r, `-maxrate:v:${i}`, r, `-bufsize:v:${i}`, r]);
  return run(name, process.env.FFMPEG9, ['-hide_banner', '-loglevel', 'warning', '-nostdin', '-re',
    '-f', 'lavfi', '-i', 'testsrc2=size=1920x1080:rate=30', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-filter_complex', '[0:v]split=3[a][b][c];[b]scale=1280:720[b2];[c]scale=640:360[c2]',
    '-map', '[a]', '-map', '[b2]', '-map', '[c2]', '-map', '1:a',
    '-c:v', 'libx264', '-preset', 'ultrafast', '-tune', 'zerolatency', '-g', '30', '-keyint_min', '30', '-sc_threshold', '0',
    '-pix_fmt', 'yuv420p', ...rates, '-c:a', 'aac', '-b:a', '96k', '-f', 'flv', url]);
}

// The rendition hls.js plays now, as its height.
const playingHeight = (page) => page.evaluate(() => { const h = window.classcast.hls; return h && h.currentLevel >= 0 ? h.levels[h.currentLevel].height : null; });

test('a ladder: behind 1.5 Mbit/s hls.js settles on 360p with no stall and WebRTC is moved down to it; on a fast link hls.js reaches 1080p', async () => {
  if (!process.env.FFMPEG9) {
    assert.ok(!process.env.CI, 'FFMPEG9 is unset (scripts/test.sh sets it)');
    return;
  }
  const lab = netlab('ccabr', 73, 'capped');
  const browsers = [];
  const mine = [];
  let fast;
  try {
    await lab.ready();
    const ip = lab.host;
    const [mp, r1, h1] = await distinctPorts(3);
    const master = `http://${ip}:${mp}`;
    const env = { CLUSTER_SECRET: SECRET };
    mine.push(run('abr-master', BIN, ['master', '--bind', `${ip}:${mp}`, '--jwt-key-file', path.join(ART, 'abr-jwt.pem'),
      '--heartbeat-interval-ms', '300', '--teacher-password', TEACHER], env));
    await until('abr master up', 15000, async () => (await fetch(`${master}/health`)).ok);
    mine.push(run('abr-slave', BIN, ['slave', '--master-url', master, '--node-id', 'a1', '--rtmp-bind', `127.0.0.1:${r1}`,
      '--http-bind', `${ip}:${h1}`, '--public-host', ip, '--heartbeat-interval-ms', '300', '--webrtc-udp-port', '0',
      '--record-dir', path.join(ART, 'abr-rec')], env));
    await until('abr cluster healthy', 30000, async () => (await json(`${master}/cluster/nodes`)).healthy_nodes === 1);
    const t = await json(`${master}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ role: 'teacher', user_id: 't', stream: 'abr', credential: TEACHER }) });
    mine.push(ladder('abr-publisher', `${t.rtmp_url.replace(ip, '127.0.0.1')}/${t.stream_key}`));
    await until('abr class live', 20000, async () => (await json(`${master}/cluster/streams`)).streams?.some((s) => s.path === 'live/abr'));

    const b = await lab.browser();
    browsers.push(b);
    const capped = await (await b.newContext({ viewport: { width: 420, height: 860 } })).newPage();
    capped._name = 'abr-capped';
    capped.on('console', (m) => { if (m.type() === 'error') console.log(`[abr-capped] console: ${m.text()}`); });
    await capped.goto(`${master}/?name=Capped&stream=abr&autoplay&webrtc=0`);
    await withShot(capped, async () => {
      await playsFor(capped, 1, 40000);
      const levels = await capped.evaluate(() => window.classcast.hls.levels.map((l) => `${l.height}p@${l.bitrate}`));
      assert.equal(levels.length, 3, `hls.js sees three renditions: ${levels}`);
      // Settled: playing, loading and about to load 360p, for 5 s running (hls.js tries a
      // higher rendition first on a fresh estimate, and comes back down).
      const t0 = Date.now();
      let since = null;
      await until('settles on 360p', 60000, async () => {
        const all360 = await capped.evaluate(() => { const h = window.classcast.hls; return [h.currentLevel, h.loadLevel, h.nextLoadLevel].every((l) => l >= 0 && h.levels[l].height === 360); });
        since = all360 ? (since ?? Date.now()) : null;
        return since !== null && Date.now() - since >= 5000;
      });
      console.log(`abr capped: levels ${levels}; settled on 360p ${Date.now() - t0} ms after playing`);
      await capped.evaluate(() => {
        const v = document.getElementById('video');
        window.abr = { stalls: 0, heights: [] };
        v.addEventListener('waiting', () => { window.abr.stalls += 1; });
        window.classcast.hls.on('hlsLevelSwitched', (_, d) => { window.abr.heights.push(window.classcast.hls.levels[d.level].height); });
      });
      const c0 = await capped.evaluate(() => document.getElementById('video').currentTime);
      await sleep(ABR_SECONDS * 1000);
      const end = await capped.evaluate(() => ({ ...window.abr, t: document.getElementById('video').currentTime, mode: window.classcast.mode }));
      const fig = { seconds: ABR_SECONDS, played_s: +(end.t - c0).toFixed(2), stalls: end.stalls, switches_to: end.heights,
        height: await playingHeight(capped) };
      console.log(`abr capped: ${JSON.stringify(fig)}`);
      assert.equal(end.mode, 'hls');
      assert.equal(fig.height, 360, 'still on the lowest rendition');
      assert.equal(await capped.textContent('#mode'), 'LL-HLS · 360p', 'the page says which rendition');
      assert.equal(fig.stalls, 0, 'no stall on the capped link');
      assert.ok(fig.played_s >= ABR_SECONDS * 0.9, `played ${fig.played_s} s of ${ABR_SECONDS}`);
    });
    // WebRTC on the same link: the viewer starts on 720p (under the initial estimate) and the
    // send-side estimate moves it down a rendition within 10 s.
    const rtc = await (await b.newContext({ viewport: { width: 420, height: 860 } })).newPage();
    rtc._name = 'abr-webrtc-capped';
    await rtc.goto(`${master}/?name=CappedRtc&stream=abr&autoplay`);
    await withShot(rtc, async () => {
      await until('WebRTC plays', 30000, () => rtc.evaluate(() => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 10));
      const t0 = Date.now();
      const first = await rtc.evaluate(() => document.getElementById('video').videoHeight);
      await until('moved down to 360p', 10000, () => rtc.evaluate(() => document.getElementById('video').videoHeight === 360));
      // It starts on 720p; the move down can come before the page's first look at the picture
      // (ten frames in), so the slave's own count of moves down is what proves it.
      const downs = Number(((await (await fetch(`http://${ip}:${h1}/metrics`)).text())
        .match(/classcast_slave_webrtc_rendition_switches_total\{direction="down"\} (\d+)/) || [])[1] || 0);
      console.log(`abr webrtc capped: ${first}p ten frames in, on 360p ${Date.now() - t0} ms after playing, ${downs} move(s) down`);
      assert.ok(downs >= 1, `the slave moved the viewer down a rendition: ${downs}`);
      const f0 = await rtc.evaluate(() => window.classcast.webrtc.frames);
      await until('frames keep coming on 360p', 10000, () => rtc.evaluate((f) => window.classcast.webrtc.frames > f + 100, f0));
    });
    await rtc.context().close();
    // The host's own link: no cap, so hls.js climbs to the top rendition.
    fast = await newPage('abr-fast');
    await withShot(fast, async () => {
      await fast.goto(`${master}/?name=Fast&stream=abr&autoplay&webrtc=0`);
      await playsFor(fast, 1, 30000);
      const t0 = Date.now();
      await until('climbs to 1080p', 60000, async () => (await playingHeight(fast)) === 1080);
      console.log(`abr fast: on 1080p ${Date.now() - t0} ms after playing`);
    });
    await fast.context().close();
    // WebRTC on the host's link plays on. The move up (a 30 % room held 4 s, then a keyframe)
    // took 20–60+ s here and is not asserted: `ladder::tests` hold its rule; the height is logged.
    // Nor is the height: with the three-rendition encoder and Chromium decoding 1080p on the same
    // two cores, the browser's receive delay can grow enough for the delay-based estimate to
    // move this viewer down (seen in 1 of 4 runs this stop).
    fast = await newPage('abr-webrtc-fast');
    await withShot(fast, async () => {
      await fast.goto(`${master}/?name=FastRtc&stream=abr&autoplay`);
      await until('WebRTC plays', 30000, () => fast.evaluate(() => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 10));
      const f0 = await fast.evaluate(() => window.classcast.webrtc.frames);
      await sleep(15000);
      const r = await fast.evaluate(() => ({ frames: window.classcast.webrtc.frames, h: document.getElementById('video').videoHeight }));
      console.log(`abr webrtc fast: ${r.h}p after 15 s`);
      assert.ok(r.frames > f0 + 300, `frames keep coming on the host's link: ${r.frames - f0}`);
    });
    const metrics = await (await fetch(`http://${ip}:${h1}/metrics`)).text();
    const moves = (dir) => Number((metrics.match(new RegExp(`classcast_slave_webrtc_rendition_switches_total\\{direction="${dir}"\\} (\\d+)`)) || [])[1] || 0);
    assert.ok(moves('down') >= 1, `the slave counted the move down: ${moves('down')}`);
    console.log(`abr capped link: ${JSON.stringify((await lab.stop()).down)}`);
  } finally {
    if (fast) await fast.context().close().catch(() => {});
    for (const x of browsers) await x.close().catch(() => {});
    stop(mine);
    await lab.stop();
  }
  const left = await new Promise((res) => { const p = spawn('ip', ['netns', 'list']); let o = ''; p.stdout.on('data', (d) => { o += d; }); p.on('exit', () => res(o)); });
  assert.ok(!/ccabr/.test(left), `namespaces left: ${left}`);
});

test('teacher page OBS settings publish, and the student page plays the class', async () => {
  const base = `http://127.0.0.1:${upPort}`;
  const teacher = await newPage('teacher');
  let server, key;
  await withShot(teacher, async () => {
    await teacher.goto(`${base}/teacher`);
    await teacher.fill('#password', TEACHER);
    await teacher.click('button[type=submit]');
    await teacher.waitForSelector('#settings:not([hidden])');
    server = (await teacher.textContent('#server')).trim();
    key = (await teacher.textContent('#key')).trim();
    // OBS's multitrack set-up: the --config-url line and the master's answer for this key.
    assert.match(await teacher.textContent('#config-url'), /^obs --config-url http:\/\/127\.0\.0\.1:\d+\/api\/obs\/golive$/);
    const override = JSON.parse(await until('the OBS override is shown', 5000, async () => { const t = await teacher.textContent('#config-override'); return t.startsWith('{') ? t : null; }));
    assert.deepEqual(override.encoder_configurations.map((e) => e.height), [1080, 720, 360]);
    assert.equal(override.ingest_endpoints[0].authentication, key);
    // The copy button puts exactly the shown text on the clipboard.
    await teacher.click('[data-copy=key]');
    const clip = await teacher.evaluate(() => navigator.clipboard.readText()).catch(() => null);
    if (clip !== null) assert.equal(clip, key);
    assert.match(server, /^rtmp:\/\/127\.0\.0\.1:\d+\/live$/);
    assert.match(key, /^stream\?key=ey/);
  });
  // ffmpeg publishes with exactly the URL and key copied from the page.
  publish('publisher', `${server}/${key}`);

  const student = await newPage('student');
  await withShot(student, async () => {
    const errors = [];
    const resp = await student.goto(`${base}/?name=Alice&stream=stream&autoplay&webrtc=0`);
    const h = resp.headers();
    assert.match(h['content-security-policy'] || '', /script-src 'self'/);
    assert.match(h['content-security-policy'] || '', /frame-ancestors/);
    assert.equal(h['x-content-type-options'], 'nosniff');
    assert.equal(h['referrer-policy'], 'no-referrer');
    const node = await playsFor(student, 3);
    const events = await student.evaluate(() => window.classcast.events);
    for (const e of events) if (e.type === 'hls-error' && e.fatal) errors.push(e);
    assert.deepEqual(errors, [], 'no fatal hls.js errors');
    // It plays from the slave that the token names.
    const tok = await student.evaluate(() => window.classcast.current);
    assert.equal(node, tok.node_id);
    const hlsUrl = await student.evaluate(() => window.classcast.hls.url);
    const nodes = await json(`${base}/cluster/nodes`);
    const named = nodes.nodes.find((n) => n.node_id === tok.node_id);
    assert.ok(hlsUrl.startsWith(named.public_url), `${hlsUrl} is served by ${named.public_url}`);
    assert.match(await student.textContent('#node'), new RegExp(tok.node_id));
    const latency = await until('latency estimate', 10000, () => student.evaluate(() => window.classcast.latency));
    assert.ok(latency > 0 && latency < 5, `latency estimate ${latency}`);
    // A student who falls behind (a 3 s pause) is brought back to the live edge by the page's
    // hls.js settings (master/web/live-hls.js): without them hls.js stays 3 s behind for good
    // (its catch-up only acts within a target duration of its target).
    await student.evaluate(() => document.getElementById('video').pause());
    await sleep(3000); // the pause under test, not a wait for an event
    await student.evaluate(() => document.getElementById('video').play());
    // The playhead's distance from the live edge as hls.js estimates it (the playlist's end
    // plus the time since it arrived), computed afresh at each look.
    const behind = await until('back near the live edge after a 3 s pause', 10000, () => student.evaluate(() => {
      const h = window.classcast.hls, d = h && h.latestLevelDetails, v = document.getElementById('video');
      const x = d && !v.paused ? d.edge + d.age - v.currentTime : null;
      return x !== null && x > 0 && x < 1.5 ? x : null;
    }));
    assert.ok(behind < 1.5, `distance from the live edge after the pause: ${behind} s`);
    await student.screenshot({ path: path.join(ART, 'student.png') });
    assert.deepEqual(student._csp, [], 'the CSP blocked nothing the student page needs');
  });
  // The teacher's preview plays too, and the page says students get WebRTC.
  await withShot(teacher, async () => {
    await until('preview plays', 30000, () => teacher.evaluate(() => document.getElementById('preview').currentTime > 1));
    await until('WebRTC shown ready', 10000, () => teacher.evaluate(() => document.getElementById('webrtc-state').dataset.state === 'ready'));
    await teacher.screenshot({ path: path.join(ART, 'teacher.png'), fullPage: true });
    assert.deepEqual(teacher._csp, [], 'the CSP blocked nothing the teacher page needs');
  });
});

// Listens to the page's WebRTC audio with a WebAudio analyser: the loudest frequency and the RMS.
// What the page's player (its WebRTC stream), or the element `selector` (any playback, by
// captureStream), sounds like: the loudest frequency and the level.
async function listen(page, selector = null) {
  return page.evaluate(async (sel) => {
    const tracks = sel ? document.querySelector(sel).captureStream().getAudioTracks()
      : document.getElementById('video').srcObject?.getAudioTracks() || [];
    if (!tracks.length) return { tracks: 0 };
    const ac = new AudioContext();
    const an = ac.createAnalyser();
    an.fftSize = 4096;
    ac.createMediaStreamSource(new MediaStream(tracks)).connect(an);
    await new Promise((r) => setTimeout(r, 1500));
    const f = new Float32Array(an.frequencyBinCount);
    an.getFloatFrequencyData(f);
    let bin = 0;
    f.forEach((x, i) => { if (x > f[bin]) bin = i; });
    const td = new Float32Array(an.fftSize);
    an.getFloatTimeDomainData(td);
    const rms = Math.sqrt(td.reduce((a, x) => a + x * x, 0) / td.length);
    ac.close();
    return { tracks: tracks.length, hz: (bin * ac.sampleRate) / an.fftSize, rms };
  }, selector);
}

test('the student page plays over WebRTC from the origin and from an edge, with sound', async () => {
  const base = `http://127.0.0.1:${upPort}`;
  const seen = new Map();
  // Pages stay open, so their load sends the next student to the other slave.
  const open = [];
  for (let i = 0; i < 8 && seen.size < 2; i++) {
    const page = await newPage(`webrtc-${i}`);
    open.push(page);
    await withShot(page, async () => {
      await page.goto(`${base}/?name=Rtc${i}&stream=stream&autoplay`);
      await until('plays over WebRTC', 20000, () => page.evaluate(() => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 10));
      const node = await page.evaluate(() => window.classcast.current.node_id);
      if (seen.has(node)) return;
      // Frames keep coming, the picture has a size, and the 440 Hz sine is heard.
      const f0 = await page.evaluate(() => window.classcast.webrtc.frames);
      await until('frames advance', 5000, () => page.evaluate((f) => window.classcast.webrtc.frames > f + 30, f0));
      assert.equal(await page.evaluate(() => document.getElementById('video').videoWidth), 640);
      const heard = await listen(page);
      assert.equal(heard.tracks, 1, 'an audio track');
      assert.ok(Math.abs(heard.hz - 440) < 30 && heard.rms > 0.01, `the sine is heard: ${JSON.stringify(heard)}`);
      assert.equal(await page.textContent('#mode'), 'WebRTC');
      const events = await page.evaluate(() => window.classcast.events.filter((e) => e.type === 'webrtc-fallback'));
      assert.deepEqual(events, [], 'no fallback to LL-HLS');
      seen.set(node, heard);
    });
  }
  assert.equal(seen.size, 2, `played from the origin and the edge: ${[...seen.keys()]}`);
  // Leaving the page ends its session at once (DELETE on pagehide): the slaves hold none.
  for (const p of open) await p.close({ runBeforeUnload: true });
  await until('sessions ended', 5000, async () => {
    const nodes = (await json(`${base}/cluster/nodes`)).nodes;
    return nodes.every((n) => n.webrtc && n.webrtc.sessions === 0);
  });
});

test('a stream with B-frames: WebRTC is refused, the student page plays it over LL-HLS and the teacher page says why', async () => {
  const from = procs.length; // what this test starts, stopped at its end
  const base = `http://127.0.0.1:${upPort}`;
  const t = await json(`${base}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'teacher', user_id: 't', stream: 'bframes', credential: TEACHER }) });
  const pub = run('bf-publisher', 'ffmpeg', ['-hide_banner', '-loglevel', 'warning', '-nostdin', '-re',
    '-f', 'lavfi', '-i', 'testsrc=size=640x360:rate=30', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-c:v', 'libx264', '-preset', 'ultrafast', '-bf', '2', '-g', '30', '-pix_fmt', 'yuv420p',
    '-c:a', 'aac', '-b:a', '64k', '-f', 'flv', `${t.rtmp_url}/${t.stream_key}`]);
  try {
    await until('the master knows of the B-frames', 20000, async () => {
      const r = await json(`${base}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ role: 'student', user_id: 'probe', stream: 'bframes' }) }).catch(() => ({}));
      return r.webrtc === 'bframes';
    });
    const page = await newPage('bframes');
    await withShot(page, async () => {
      await page.goto(`${base}/?name=Dan&stream=bframes&autoplay`);
      await playsFor(page, 2, 30000);
      assert.equal(await page.evaluate(() => window.classcast.mode), 'hls');
      assert.equal(await page.textContent('#mode'), 'LL-HLS');
    });
    const teacher = await newPage('teacher-bframes');
    await withShot(teacher, async () => {
      await teacherLogin(teacher, base, 'bframes');
      await until('teacher told of the B-frames', 10000, () => teacher.evaluate(() => document.getElementById('webrtc-state').dataset.state === 'bframes'));
      assert.match(await teacher.textContent('#webrtc-state'), /B-frames/);
    });
  } finally {
    pub.kill('SIGINT');
  }
  stop(procs.slice(from));
});

// Issue 33: a class in AV1 + Opus from ffmpeg 9 (Enhanced RTMP) plays in hls.js with sound;
// WebRTC is not offered for it, and the teacher page says why. A class in a codec the origin
// cannot package (MP3 audio) is refused, and the teacher's preview names it.
test('AV1 + Opus plays over LL-HLS with sound and the teacher page says why not WebRTC; H.264 + Opus plays over WebRTC and hls.js with sound; an MP3 publish is refused by name', async () => {
  const ffmpeg9 = process.env.FFMPEG9;
  if (!ffmpeg9) {
    assert.ok(!process.env.CI, 'FFMPEG9 is unset (scripts/test.sh sets it)');
    return;
  }
  const from = procs.length;
  const base = `http://127.0.0.1:${upPort}`;
  const token = (body) => json(`${base}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const t = await token({ role: 'teacher', user_id: 't', stream: 'av1', credential: TEACHER });
  run('av1-publisher', ffmpeg9, ['-hide_banner', '-loglevel', 'warning', '-nostdin', '-re',
    '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=30', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-c:v', 'libsvtav1', '-preset', '12', '-svtav1-params', 'lp=1', '-g', '30', '-pix_fmt', 'yuv420p',
    '-c:a', 'libopus', '-b:a', '48k', '-f', 'flv', `${t.rtmp_url}/${t.stream_key}`]);
  try {
    await until('the master knows the class is AV1', 20000, async () =>
      (await token({ role: 'student', user_id: 'probe', stream: 'av1' }).catch(() => ({}))).webrtc === 'codec');
    const page = await newPage('av1');
    await withShot(page, async () => {
      await page.goto(`${base}/?name=Ava&stream=av1&autoplay`);
      await playsFor(page, 2, 30000);
      assert.equal(await page.evaluate(() => window.classcast.mode), 'hls');
      assert.equal(await page.evaluate(() => document.getElementById('video').videoWidth), 320);
      const heard = await listen(page, '#video');
      assert.ok(heard.tracks === 1 && Math.abs(heard.hz - 440) < 30, `the Opus sine is heard: ${JSON.stringify(heard)}`);
    });
    const teacher = await newPage('teacher-av1');
    await withShot(teacher, async () => {
      await teacherLogin(teacher, base, 'av1');
      await until('teacher told WebRTC is off for AV1', 10000, () => teacher.evaluate(() => document.getElementById('webrtc-state').dataset.state === 'codec'));
      assert.match(await teacher.textContent('#webrtc-state'), /HEVC or AV1/);
    });
    // H.264 + Opus: WebRTC sends the publisher's Opus as it is (no transcoder), and hls.js
    // plays the same class from CMAF with Opus; the sine is heard both ways.
    const t2 = await token({ role: 'teacher', user_id: 't', stream: 'h264opus', credential: TEACHER });
    run('h264opus-publisher', ffmpeg9, ['-hide_banner', '-loglevel', 'warning', '-nostdin', '-re',
      '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=30', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
      '-c:v', 'libx264', '-preset', 'ultrafast', '-tune', 'zerolatency', '-g', '30', '-pix_fmt', 'yuv420p',
      '-c:a', 'libopus', '-b:a', '48k', '-f', 'flv', `${t2.rtmp_url}/${t2.stream_key}`]);
    const rtc = await newPage('h264opus');
    await withShot(rtc, async () => {
      await rtc.goto(`${base}/?name=Oli&stream=h264opus&autoplay`);
      await until('plays over WebRTC', 30000, () => rtc.evaluate(() => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 10));
      const heard = await listen(rtc);
      assert.ok(heard.tracks === 1 && Math.abs(heard.hz - 440) < 30 && heard.rms > 0.01, `Opus passed through to WebRTC: ${JSON.stringify(heard)}`);
      const t = await rtc.evaluate(async () => {
        const v = document.createElement('video');
        v.id = 'hls-check';
        v.muted = true;
        document.body.append(v);
        window.hlsCheck = new window.Hls({ lowLatencyMode: true });
        window.hlsCheck.loadSource(window.classcast.current.hls_url);
        window.hlsCheck.attachMedia(v);
        await v.play().catch(() => {});
        const end = Date.now() + 20000;
        while (v.currentTime < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
        return v.currentTime;
      });
      const hls = { t, ...(await listen(rtc, '#hls-check')) };
      await rtc.evaluate(() => window.hlsCheck.destroy());
      assert.ok(hls.t >= 2 && hls.tracks === 1 && Math.abs(hls.hz - 440) < 30, `hls.js plays H.264 + Opus with sound: ${JSON.stringify(hls)}`);
    });
    // MP3 audio (legacy FLV, Debian's ffmpeg): refused, and the preview says so by name.
    const mp3 = await newPage('teacher-mp3');
    await withShot(mp3, async () => {
      await teacherLogin(mp3, base, 'mp3');
      const server = (await mp3.textContent('#server')).trim();
      const key = (await mp3.textContent('#key')).trim();
      run('mp3-publisher', 'ffmpeg', ['-hide_banner', '-loglevel', 'warning', '-nostdin', '-re',
        '-f', 'lavfi', '-i', 'testsrc=size=320x240:rate=30', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=44100',
        '-c:v', 'libx264', '-preset', 'ultrafast', '-g', '30', '-pix_fmt', 'yuv420p',
        '-c:a', 'libmp3lame', '-f', 'flv', `${server}/${key}`]);
      await until('the preview names the refused codec', 20000, () => mp3.evaluate(() => document.getElementById('preview-state').dataset.state === 'refused'));
      assert.match(await mp3.textContent('#preview-state'), /refused: MP3 audio is not accepted/);
    });
    // Pages left open would hold WebRTC sessions into the next tests.
    for (const p of [page, teacher, rtc, mp3]) await p.close();
  } finally {
    stop(procs.slice(from));
  }
});

// Issue 32: a teacher with only a browser goes live over WHIP from the teacher page (Chromium's
// fake camera and microphone); a student on an edge sees and hears the class; when the WHIP
// session is cut, the page reconnects by itself and says so; the class is recorded.
test('a teacher goes live from the page; a student on an edge sees and hears it; a cut session reconnects', async () => {
  const base = `http://127.0.0.1:${upPort}`;
  const teacher = await newPage('golive-teacher');
  const open = [];
  let origin;
  await withShot(teacher, async () => {
    await teacherLogin(teacher, base, 'golive');
    await teacher.waitForSelector('#golive-card:not([hidden])');
    await teacher.selectOption('#source', 'camera');
    await teacher.selectOption('#quality', '480');
    await teacher.click('#golive');
    await until('the page says it is live', 20000, () => teacher.evaluate(() => window.classcast.golive.state === 'live'));
    assert.match(await teacher.textContent('#golive-state'), /Live/);
    // The preview (LL-HLS from the origin) plays what the camera sends, and the page and the
    // admin page say the class comes in over WHIP.
    await until('the preview plays', 30000, () => teacher.evaluate(() => document.getElementById('preview').currentTime > 1));
    await until('the teacher page names WHIP', 10000, () => teacher.evaluate(() => document.getElementById('publisher-state').dataset.kind === 'whip'));
    const admin = await newPage('golive-admin');
    await admin.goto(`${base}/admin`);
    await until('the admin page names WHIP', 10000, async () => (await admin.textContent('#streams tr[data-path="live/golive"] .publisher').catch(() => '')) === 'WHIP');
    await admin.close();
    origin = await teacher.evaluate(async () => {
      const r = await fetch('/cluster/streams').then((x) => x.json());
      return r.streams.find((s) => s.path === 'live/golive').origin;
    });
  });
  // Students until one lands on the edge: it plays over WebRTC (a browser sends H.264 without
  // B-frames) and hears the microphone.
  let onEdge = null;
  for (let i = 0; i < 8 && !onEdge; i++) {
    const page = await newPage(`golive-student-${i}`);
    open.push(page);
    await page.goto(`${base}/?name=Stu${i}&stream=golive&autoplay`);
    await until('the student plays', 30000, () => page.evaluate(() => (window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 10) || (document.getElementById('video')?.currentTime || 0) > 1));
    if ((await page.evaluate(() => window.classcast.current.node_id)) !== origin) onEdge = page;
  }
  assert.ok(onEdge, 'a student landed on the edge');
  await withShot(onEdge, async () => {
    assert.equal(await onEdge.evaluate(() => window.classcast.mode), 'webrtc');
    const heard = await listen(onEdge);
    // The browser's noise suppression lowers a steady tone; its frequency is what is checked.
    assert.ok(heard.tracks === 1 && Math.abs(heard.hz - 440) < 30 && heard.rms > 0.002, `the microphone's 440 Hz is heard on the edge: ${JSON.stringify(heard)}`);
  });
  // The WHIP session is cut from the server side (as a network blip leaves it): the page notices,
  // says so, and is live again by itself.
  await withShot(teacher, async () => {
    const session = await teacher.evaluate(() => window.classcast.golive.session);
    assert.ok(session, 'the page knows its WHIP session');
    assert.equal((await fetch(session, { method: 'DELETE' })).status, 200);
    await until('the page says it reconnects', 20000, () => teacher.evaluate(() => window.classcast.golive.reconnects >= 1));
    await until('live again', 20000, () => teacher.evaluate(() => window.classcast.golive.state === 'live' && window.classcast.golive.connects >= 2));
    // The class is being recorded, once.
    const recs = await json(`${base}/api/recordings`);
    assert.equal(recs.recordings.filter((r) => r.path === 'live/golive').length, 1, JSON.stringify(recs));
    await teacher.click('#stoplive');
    await until('ended', 5000, () => teacher.evaluate(() => window.classcast.golive.state === 'ended'));
  });
  for (const p of [teacher, ...open]) await p.close();
  // The recording of the class goes live-to-VOD when it ends, and replays.
  const rec = await until('the recording finished', 30000, async () =>
    (await json(`${base}/api/recordings`)).recordings.find((r) => r.path === 'live/golive' && !r.recording));
  const replay = await newPage('golive-replay');
  await withShot(replay, async () => {
    await replay.goto(`${base}/?name=Rae&recording=${encodeURIComponent(rec.id)}`);
    await playsFor(replay, 2, 30000);
  });
  await replay.close();
});

// Issue 32: ffmpeg 9 publishes over WHIP (-f whip, the publish token as Bearer); Chromium
// students play it over WebRTC from the origin and from an edge, and hear its 440 Hz sine.
test('ffmpeg publishes over WHIP; students play it over WebRTC from the origin and an edge, with sound', async () => {
  const ffmpeg9 = process.env.FFMPEG9;
  if (!ffmpeg9) {
    assert.ok(!process.env.CI, 'FFMPEG9 is unset (scripts/test.sh sets it)');
    return;
  }
  const from = procs.length;
  const base = `http://127.0.0.1:${upPort}`;
  const t = await json(`${base}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'teacher', user_id: 't', stream: 'whip', credential: TEACHER }) });
  run('whip-publisher', ffmpeg9, ['-hide_banner', '-loglevel', 'warning', '-nostdin', '-re',
    '-f', 'lavfi', '-i', 'testsrc=size=640x360:rate=30', '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000',
    '-c:v', 'libx264', '-preset', 'ultrafast', '-tune', 'zerolatency', '-bf', '0', '-g', '30', '-pix_fmt', 'yuv420p',
    '-c:a', 'libopus', '-b:a', '48k', '-ac', '2', '-authorization', t.stream_key.split('key=')[1], '-f', 'whip', t.whip_url]);
  const open = [];
  try {
    const seen = new Set();
    for (let i = 0; i < 8 && seen.size < 2; i++) {
      const page = await newPage(`whip-student-${i}`);
      open.push(page);
      await withShot(page, async () => {
        await page.goto(`${base}/?name=Wes${i}&stream=whip&autoplay`);
        await until('plays over WebRTC', 30000, () => page.evaluate(() => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 10));
        const node = await page.evaluate(() => window.classcast.current.node_id);
        if (seen.has(node)) return;
        assert.equal(await page.evaluate(() => document.getElementById('video').videoWidth), 640);
        const heard = await listen(page);
        assert.ok(heard.tracks === 1 && Math.abs(heard.hz - 440) < 30 && heard.rms > 0.01, `the sine is heard: ${JSON.stringify(heard)}`);
        seen.add(node);
      });
    }
    assert.equal(seen.size, 2, `played from the origin and the edge: ${[...seen]}`);
  } finally {
    for (const p of open) await p.close();
    stop(procs.slice(from));
  }
});

// Issue 32: class Q&A on the pages. A student on an edge asks (with markup in the text), the
// teacher sees it as text and answers everyone; in Q&A mode another student sees the answer but
// not the question; hide and mute reach the student's page within a second; the rate limit
// shows as a message.
test('class Q&A: a question from an edge reaches the teacher as text; answer, hide, mute and the rate limit show on the pages', async () => {
  const from = procs.length;
  const base = `http://127.0.0.1:${upPort}`;
  const t = await json(`${base}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'teacher', user_id: 't', stream: 'qa', credential: TEACHER }) });
  publish('qa-publisher', `${t.rtmp_url}/${t.stream_key}`);
  try {
    const teacher = await newPage('qa-teacher');
    await teacherLogin(teacher, base, 'qa');
    await teacher.waitForSelector('#qa-card:not([hidden])');
    const students = [];
    let asker = null;
    for (let i = 0; i < 8 && (!asker || students.length < 2); i++) {
      const page = await newPage(`qa-student-${i}`);
      await page.goto(`${base}/?name=Kid${i}&stream=qa&autoplay`);
      await page.waitForSelector('#chat-card:not([hidden])', { timeout: 30000 });
      students.push(page);
      if (!asker && (await page.evaluate(() => window.classcast.current.node_id)) !== t.node_id) asker = page;
    }
    assert.ok(asker, 'a student on an edge');
    const other = students.find((p) => p !== asker);
    const question = '<script>window.pwned=1</script><b>why</b> is the sky blue?';
    const asked = Date.now();
    await withShot(asker, async () => {
      await asker.fill('#chat-text', question);
      await asker.click('#chat-form button[type=submit]');
      await until('the asker sees the question', 5000, () => asker.evaluate((q) => window.classcast.chat.messages().some((m) => m.text === q), question));
    });
    await withShot(teacher, async () => {
      await until('the teacher sees the question', 5000, () => teacher.evaluate((q) => window.classcast.chat.messages().some((m) => m.text === q), question));
      assert.ok(Date.now() - asked < 2000, 'within a second or so of the post');
      assert.equal(await teacher.evaluate(() => document.querySelectorAll('#chat-list script, #chat-list b').length), 0, 'markup stays text');
      assert.equal(await teacher.evaluate(() => window.pwned), undefined);
      await teacher.fill('#chat-text', 'Rayleigh scattering');
      await teacher.click('#chat-form button[type=submit]');
    });
    await withShot(other, async () => {
      await until('another student sees the answer', 5000, () => other.evaluate(() => window.classcast.chat.messages().some((m) => m.text === 'Rayleigh scattering' && m.from === 'Teacher')));
      assert.ok(!(await other.evaluate((q) => window.classcast.chat.messages().some((m) => m.text === q), question)), 'Q&A: not the question');
    });
    // Hide, then mute, from the teacher's buttons.
    const id = await teacher.evaluate((q) => window.classcast.chat.messages().find((m) => m.text === q).id, question);
    await teacher.click(`#chat-list li[data-id="${id}"] button[data-action=hide]`);
    const hidAt = Date.now();
    await until('hidden on the asker\'s page', 1000, () => asker.evaluate((i) => !window.classcast.chat.messages().some((m) => m.id === i), id));
    assert.ok(Date.now() - hidAt <= 1100);
    await asker.fill('#chat-text', 'one more');
    await asker.click('#chat-form button[type=submit]');
    await until('the teacher sees it', 5000, () => teacher.evaluate(() => window.classcast.chat.messages().some((m) => m.text === 'one more')));
    const id2 = await teacher.evaluate(() => window.classcast.chat.messages().find((m) => m.text === 'one more').id);
    await teacher.click(`#chat-list li[data-id="${id2}"] button[data-action=mute]`);
    await until('the asker is told it is muted', 1000, () => asker.evaluate(() => window.classcast.chat.muted));
    assert.match(await asker.textContent('#chat-state'), /muted/);
    // The rate limit: the fourth message at once is refused with a wait.
    await withShot(other, async () => {
      for (let i = 0; i < 4; i++) {
        await other.fill('#chat-text', `quick ${i}`);
        await other.click('#chat-form button[type=submit]');
        await sleep(50);
      }
      await until('told to slow down', 3000, async () => /Slow down/.test(await other.textContent('#chat-state')));
    });
    for (const p of [teacher, ...students]) await p.close();
    // The replay shows the answer when the video reaches the time it was sent, and never the
    // hidden question nor a Q&A question.
    stop(procs.slice(from));
    const rec = await until('the recording finished', 30000, async () =>
      (await json(`${base}/api/recordings`)).recordings.find((r) => r.path === 'live/qa' && !r.recording));
    const replay = await newPage('qa-replay');
    await withShot(replay, async () => {
      await replay.goto(`${base}/?name=Rex&recording=${encodeURIComponent(rec.id)}`);
      await until('the replay plays', 30000, () => replay.evaluate(() => document.getElementById('video').currentTime > 0.3));
      const early = await replay.evaluate(() => ({ date: window.classcast.hls.playingDate.getTime(), shown: window.classcast.chat.messages().map((m) => m.text) }));
      const answerAt = await replay.evaluate(async () => {
        const j = await fetch(window.classcast.current.hls_url.replace('/index.m3u8?', '/chat.json?')).then((r) => r.json());
        return j.messages.find((m) => m.text === 'Rayleigh scattering').at_ms;
      });
      assert.ok(answerAt > early.date, 'the answer came after the start');
      assert.ok(!early.shown.includes('Rayleigh scattering'), 'not before its time');
      await replay.evaluate(() => { const v = document.getElementById('video'); v.currentTime = v.duration - 0.5; });
      await until('the answer shown at its time', 10000, () => replay.evaluate(() => window.classcast.chat.messages().some((m) => m.text === 'Rayleigh scattering')));
      const texts = await replay.evaluate(() => window.classcast.chat.messages().map((m) => m.text));
      assert.ok(!texts.includes(question) && !texts.includes('one more'), `no hidden or Q&A question: ${texts}`);
    });
    await replay.close();
  } finally {
    stop(procs.slice(from));
  }
});

// Issue 29: another student's token and requests cannot freeze a viewer playing over WebRTC.
// Each flood is bounded by the slave before its engine (the task that sends every viewer's
// media) does any work; tests/e2e/webrtc_bounds.rs asserts each bound on its own.
test('WebRTC abuse from another student on the same slave leaves a playing viewer unfrozen', async () => {
  const base = `http://127.0.0.1:${upPort}`;
  const page = await newPage('webrtc-victim');
  await withShot(page, async () => {
    await page.goto(`${base}/?name=Victim&stream=stream&autoplay`);
    await until('plays over WebRTC', 20000, () => page.evaluate(() => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 30));
    const node = await page.evaluate(() => window.classcast.current.node_id);
    const other = (await json(`${base}/cluster/nodes`)).nodes.map((n) => n.node_id).find((id) => id !== node);
    const tok = await json(`${base}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ role: 'student', user_id: 'mallory', stream: 'stream', exclude: other }) });
    assert.equal(tok.node_id, node, 'the attacker is on the viewer\'s slave');
    const sdp = await page.evaluate(async () => {
      const pc = new RTCPeerConnection();
      pc.addTransceiver('video', { direction: 'recvonly' });
      pc.addTransceiver('audio', { direction: 'recvonly' });
      const o = await pc.createOffer();
      pc.close();
      return o.sdp;
    });
    const offer = (body) => fetch(tok.whep_url, { method: 'POST', body, headers: { 'content-type': 'application/sdp', authorization: 'Bearer ' + tok.token } });
    const inBatches = async (n, size, f) => { const out = []; for (let i = 0; i < n; i += size) out.push(...await Promise.all(Array.from({ length: Math.min(size, n - i) }, (_, j) => f(i + j)))); return out; };
    const before = await page.evaluate(() => ({ ...window.classcast.webrtc }));
    const t0 = Date.now();

    // 1. A PATCH flood of candidates on one session: every PATCH refused before parsing.
    const r = await offer(sdp);
    assert.equal(r.status, 201);
    const session = new URL(r.headers.get('location'), tok.whep_url).href;
    const cands = (k) => Array.from({ length: 800 }, (_, i) => `a=candidate:${k}${i} 1 udp 2122260223 10.${k % 250}.${i >> 8}.${i & 255} ${10000 + i} typ host\r\n`).join('');
    const patches = await inBatches(200, 20, (k) => fetch(session, { method: 'PATCH', body: cands(k), headers: { 'content-type': 'application/trickle-ice-sdpfrag' } }).then((x) => x.status));
    assert.ok(patches.every((s) => s === 422), `PATCH floods refused: ${[...new Set(patches)]}`);
    // 2. 600 offers with one token: each replaces the one before.
    const offers = await inBatches(600, 50, () => offer(sdp).then((x) => x.status));
    assert.ok(offers.every((s) => s === 201), `${[...new Set(offers)]}`);
    // 3. Offers of 132 m-lines: refused by their shape.
    const [head] = sdp.split(/\r\nm=/);
    const wide = head + '\r\n' + Array.from({ length: 132 }, (_, m) => `m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:${m}\r\na=recvonly\r\na=rtpmap:96 H264/90000\r\n`).join('');
    const wides = await inBatches(200, 20, () => offer(wide).then((x) => x.status));
    assert.ok(wides.every((s) => s === 422), `${[...new Set(wides)]}`);
    const took = Date.now() - t0;

    // The attacker holds one session (its last offer's), the viewer its own.
    await until('sessions reported', 5000, async () => (await json(`${base}/cluster/nodes`)).nodes.find((n) => n.node_id === node).webrtc.sessions <= 2);
    // The viewer kept playing: frames advanced through the floods and none froze.
    await sleep(1500);
    const after = await page.evaluate(() => ({ ...window.classcast.webrtc }));
    const frozeS = after.freeze_s - before.freeze_s;
    console.log(`abuse for ${took} ms: viewer frames ${before.frames} -> ${after.frames}, freezes ${before.freezes} -> ${after.freezes} (${frozeS.toFixed(3)} s)`);
    // Chromium counts a freeze when one frame comes 150 ms later than the average gap. Its
    // decoder, the slave setting up 600 sessions and this test share two cores: in 5 runs
    // here 0 freezes, in one CI run 1. At most one short freeze; a viewer the slave stopped
    // feeding freezes for the whole flood (seconds) and fails.
    assert.ok(after.freezes - before.freezes <= 1, `freezes during the abuse: ${after.freezes - before.freezes}`);
    assert.ok(frozeS < 0.5, `frozen for ${frozeS} s during the abuse`);
    assert.ok(after.frames - before.frames >= 25 * (took / 1000), `frames kept coming: ${after.frames - before.frames} in ${took} ms`);
    assert.equal(await page.evaluate(() => window.classcast.mode), 'webrtc');
  });
  await page.context().close();
});

test('admin page shows the same numbers as /cluster/nodes', async () => {
  const base = `http://127.0.0.1:${upPort}`;
  const admin = await newPage('admin');
  await withShot(admin, async () => {
    await admin.goto(`${base}/admin`);
    await until('admin matches the API', 15000, async () => {
      const api = await json(`${base}/cluster/nodes`);
      const rows = await admin.$$eval('#nodes tbody tr', (trs) => trs.map((tr) => ({
        id: tr.dataset.node, status: tr.querySelector('.badge').textContent, conns: tr.querySelector('.conns').textContent.trim(),
        webrtc: tr.querySelector('.webrtc').textContent.trim() })));
      // WebRTC sessions against capacity, as the slaves report them.
      const want = api.nodes.map((n) => ({ id: n.node_id, status: n.status, conns: `${n.current_connections} / ${n.max_connections}`,
        webrtc: n.webrtc ? `${n.webrtc.sessions} / ${n.webrtc.capacity}` : 'off' }));
      const totals = await admin.textContent('#t-nodes');
      return JSON.stringify(rows) === JSON.stringify(want) && totals === String(api.total_nodes) && rows.length === 2;
    });
    assert.equal(await admin.textContent('#t-healthy'), '2');
    assert.match(await admin.textContent('#nodes tbody'), /\d+ \/ 200/, 'WebRTC sessions against the default capacity');
    assert.match(await admin.textContent('#streams tbody'), /live\/stream/);
    await admin.screenshot({ path: path.join(ART, 'admin.png'), fullPage: true });
  });
});

test('a live class rewinds to its start and back; a past class replays from an edge with a seek to the middle; the teacher downloads and deletes it', async () => {
  const base = `http://127.0.0.1:${upPort}`;
  const t = await json(`${base}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'teacher', user_id: 't', stream: 'replay', credential: TEACHER, record: true }) });
  const pub = publish('replay-publisher', `${t.rtmp_url}/${t.stream_key}`);
  // Longer than the 4 s the slaves list (PLAYLIST_WINDOW; 9 s held), so rewinding needs the recording.
  const rec = await until('9 s recorded', 60000, async () =>
    (await json(`${base}/api/recordings`)).recordings.find((r) => r.path === 'live/replay' && r.duration_s >= 9));

  // During the class: a student rewinds to the start (the recording so far), then back to live.
  const live = await newPage('rewind');
  await withShot(live, async () => {
    await live.goto(`${base}/?name=Ros&stream=replay&autoplay`);
    await playsFor(live, 1, 30000);
    await live.waitForSelector('#rewind:not([hidden])', { timeout: 10000 });
    await live.click('#rewind');
    await until('plays the class from the start', 20000, () => live.evaluate(() => {
      const v = document.getElementById('video');
      return window.classcast.current.hls_url.includes('/vod/') && v.currentTime > 0.2 && v.currentTime < 4;
    }));
    const span = await live.evaluate(() => document.getElementById('video').seekable.end(0));
    assert.ok(span >= 8, `the seek bar covers the class so far (${span} s), beyond the live window`);
    await live.click('#back-live');
    await until('live again', 20000, () => live.evaluate(() => window.classcast.current.hls_url.includes('/live/')));
    await playsFor(live, 1, 30000);
    assert.deepEqual(live._csp, [], 'the CSP blocked nothing');
  });
  pub.kill('SIGINT');
  const done = await until('the recording is finished', 30000, async () =>
    (await json(`${base}/api/recordings`)).recordings.find((r) => r.id === rec.id && !r.recording));

  const page = await newPage('replay');
  await withShot(page, async () => {
    await page.goto(`${base}/?name=Vic`);
    await page.waitForSelector(`#past-list tr[data-id="${done.id}"]`, { timeout: 10000 });
    // Played like a failover would: avoiding the slave that holds it, so an edge serves it.
    await page.evaluate(([id, origin]) => window.classcast.playRecording(id, origin), [done.id, done.node_id]);
    const node = await playsFor(page, 1, 30000);
    assert.notEqual(node, done.node_id, 'the replay comes from an edge');
    const dur = await page.evaluate(() => document.getElementById('video').duration);
    assert.ok(dur >= 9 && Number.isFinite(dur), `a VOD of the whole class, duration ${dur}`);
    // A seek to the middle lands within one segment (1 s) and plays on from there.
    const target = dur / 2;
    await page.evaluate((t) => new Promise((res) => { const v = document.getElementById('video');
      v.addEventListener('seeked', res, { once: true }); v.currentTime = t; }), target);
    const at = await page.evaluate(() => document.getElementById('video').currentTime);
    assert.ok(Math.abs(at - target) < 1.0, `seeked to ${at}, asked ${target}`);
    await until('plays on after the seek', 10000, () => page.evaluate((a) => document.getElementById('video').currentTime > a + 0.5, at));
    assert.deepEqual(page._csp, [], 'the CSP blocked nothing');
  });

  const teacher = await newPage('replay-teacher');
  teacher.on('dialog', (d) => d.accept());
  await withShot(teacher, async () => {
    await teacherLogin(teacher, base, 'replay2');
    const row = `#recordings tr[data-id="${done.id}"]`;
    await teacher.waitForSelector(row, { timeout: 10000 });
    assert.equal(await teacher.getAttribute(`${row} a`, 'href'), `/?name=teacher&recording=${encodeURIComponent(done.id)}`);
    await teacher.click(`${row} button[data-download]`);
    const href = await teacher.getAttribute('#download-link', 'href');
    const r = await fetch(href, { headers: { range: 'bytes=0-7' } });
    assert.equal(r.status, 206);
    assert.equal(Buffer.from(await r.arrayBuffer()).subarray(4, 8).toString(), 'ftyp');
    await teacher.click(`${row} button[data-delete]`);
    await teacher.waitForSelector(row, { state: 'detached', timeout: 10000 });
    assert.ok(!(await json(`${base}/api/recordings`)).recordings.some((x) => x.id === done.id), 'deleted for everyone');
    assert.deepEqual(teacher._csp, [], 'the CSP blocked nothing');
  });
});

test('a class recorded at two resolutions: the teacher page offers both parts and says why', async () => {
  const base = `http://127.0.0.1:${upPort}`;
  const t = await json(`${base}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'teacher', user_id: 't', stream: 'twosizes', credential: TEACHER, record: true }) });
  const sized = (name, size) => new Promise((res) => {
    const p = run(name, 'ffmpeg', ['-hide_banner', '-loglevel', 'warning', '-nostdin', '-re',
      '-f', 'lavfi', '-i', `testsrc=size=${size}:rate=30`, '-f', 'lavfi', '-i', 'sine=frequency=440:sample_rate=48000', '-t', '3',
      '-c:v', 'libx264', '-preset', 'ultrafast', '-tune', 'zerolatency', '-g', '30', '-pix_fmt', 'yuv420p',
      '-c:a', 'aac', '-b:a', '64k', '-f', 'flv', `${t.rtmp_url}/${t.stream_key}`]);
    p.on('exit', res);
  });
  // The teacher's encoder reconnects within the grace period with another resolution.
  await sized('twosizes-360p', '640x360');
  await sized('twosizes-720p', '1280x720');
  const done = await until('recording finished', 30000, async () =>
    (await json(`${base}/api/recordings`)).recordings.find((r) => r.path === 'live/twosizes' && !r.recording));
  const teacher = await newPage('parts-teacher');
  await withShot(teacher, async () => {
    await teacherLogin(teacher, base, 'twosizes2');
    const row = `#recordings tr[data-id="${done.id}"]`;
    await teacher.waitForSelector(row, { timeout: 10000 });
    await teacher.click(`${row} button[data-download]`);
    await teacher.waitForSelector('#download-parts', { timeout: 10000 });
    const text = await teacher.textContent('#download-parts');
    assert.match(text, /In 2 parts \(the encoder settings changed during the class\)/);
    assert.match(text, /Part 1 of 2 .*Part 2 of 2/);
    for (const i of [1, 2]) {
      const href = await teacher.getAttribute(`#download-link-${i}`, 'href');
      assert.match(href, new RegExp(`/download-${i}\\.mp4\\?`));
      const r = await fetch(href, { headers: { range: 'bytes=0-7' } });
      assert.equal(r.status, 206);
      assert.equal(Buffer.from(await r.arrayBuffer()).subarray(4, 8).toString(), 'ftyp');
    }
    assert.deepEqual(teacher._csp, [], 'the CSP blocked nothing');
  });
  await teacher.context().close();
});

test('a student whose slave is killed recovers on another within 5 s', async () => {
  const from = procs.length; // what this test starts, stopped at its end
  // Separate processes, so one slave can be killed: a master and three slaves.
  // Every port taken before any process starts (see the two-masters test).
  const [mport, ...slavePorts] = await distinctPorts(7);
  const master = `http://127.0.0.1:${mport}`;
  const env = { CLUSTER_SECRET: SECRET };
  run('fo-master', BIN, ['master', '--bind', `127.0.0.1:${mport}`, '--jwt-key-file', path.join(ART, 'fo-jwt.pem'),
    '--heartbeat-interval-ms', '300', '--offline-after-ms', '1500', '--teacher-password', TEACHER], env);
  const slaves = {};
  for (const [i, id] of ['f1', 'f2', 'f3'].entries()) {
    const [r, h] = slavePorts.slice(2 * i, 2 * i + 2);
    slaves[id] = run(`fo-${id}`, BIN, ['slave', '--master-url', master, '--node-id', id, '--rtmp-bind', `127.0.0.1:${r}`,
      '--http-bind', `127.0.0.1:${h}`, '--heartbeat-interval-ms', '300', '--webrtc-udp-port', '0',
      '--record-dir', path.join(ART, `fo-rec-${id}`)], env);
  }
  await until('failover cluster healthy', 30000, async () => (await json(`${master}/cluster/nodes`)).healthy_nodes === 3);
  const t = await json(`${master}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'teacher', user_id: 't', stream: 'fo', credential: TEACHER }) });
  publish('fo-publisher', `${t.rtmp_url}/${t.stream_key}`);
  const origin = t.node_id;

  const page = await newPage('failover');
  await withShot(page, async () => {
    // Land on an edge: killing the origin would end the class everywhere, which is not failover.
    // The master sends each join to the least-loaded slave by reported CPU, which on a busy CI
    // machine can favour the origin six times running (seen once): try up to 20 joins.
    let node;
    for (let i = 0; i < 20; i++) {
      await page.goto(`${master}/?name=Bob${i}&stream=fo&autoplay`);
      node = await playsFor(page, 1, 30000);
      if (node !== origin) break;
    }
    assert.notEqual(node, origin, 'student landed on an edge');
    await until('plays over WebRTC', 10000, () => page.evaluate(() => window.classcast.mode === 'webrtc' && (window.classcast.webrtc?.frames || 0) > 10));
    const killedAt = Date.now();
    slaves[node].kill('SIGKILL');
    // Playing again: the picture seen moving twice in a row (WebRTC: decoded frames; LL-HLS:
    // currentTime), on another slave.
    const recovered = await until('recovered on another slave', 15000, () => page.evaluate((dead) => {
      const p = window.classcast.progress;
      return p && p.node !== dead && p.count >= 2 ? p.node : null;
    }, node));
    const took = Date.now() - killedAt;
    assert.notEqual(recovered, node);
    assert.ok(took <= 5000, `recovered in ${took} ms`);
    console.log(`failover: ${node} → ${recovered} in ${took} ms`);
  });
  stop(procs.slice(from));
});

test('a student whose master is down at join time gets a token from another master and plays', async () => {
  const from = procs.length; // what this test starts, stopped at its end
  // Two masters sharing one key file and secret, each told of the other; one slave reporting to both.
  // Every port taken before any process starts: a port chosen after master B was spawned could be
  // the one B was about to bind (seen once in CI: the slave could not listen).
  const [pa, pb, r, h] = await distinctPorts(4);
  const [a, b] = [`http://127.0.0.1:${pa}`, `http://127.0.0.1:${pb}`];
  const env = { CLUSTER_SECRET: SECRET };
  const key = path.join(ART, 'mm-jwt.pem');
  rmSync(key, { force: true });
  const master = (name, port) => run(name, BIN, ['master', '--bind', `127.0.0.1:${port}`, '--jwt-key-file', key,
    '--heartbeat-interval-ms', '300', '--teacher-password', TEACHER, '--masters', `${a},${b}`], env);
  const masterA = master('mm-master-a', pa);
  await until('master A up', 15000, async () => (await fetch(`${a}/health`)).ok);
  master('mm-master-b', pb);
  run('mm-slave', BIN, ['slave', '--master-url', `${a},${b}`, '--node-id', 'm1', '--rtmp-bind', `127.0.0.1:${r}`,
    '--http-bind', `127.0.0.1:${h}`, '--heartbeat-interval-ms', '300', '--webrtc-udp-port', '0',
    '--record-dir', path.join(ART, 'mm-rec')], env);
  for (const m of [a, b]) await until(`${m} sees the slave`, 30000, async () => (await json(`${m}/cluster/nodes`)).healthy_nodes === 1);
  const t = await json(`${a}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'teacher', user_id: 't', stream: 'mm', credential: TEACHER }) });
  publish('mm-publisher', `${t.rtmp_url}/${t.stream_key}`);
  await until('the class is live at master B', 30000, async () =>
    (await json(`${b}/cluster/streams`)).streams.some((s) => s.path === 'live/mm'));

  // The teacher is logged in on master A's page, previewing the class.
  const teacher = await newPage('masters-teacher');
  await withShot(teacher, async () => {
    await teacher.goto(`${a}/teacher`);
    await until('the teacher page knows master B', 10000, () => teacher.evaluate(() => window.classcast.others.length === 1));
    await teacher.fill('#password', TEACHER);
    await teacher.fill('#stream', 'mm');
    await teacher.click('button[type=submit]');
    await teacher.waitForSelector('#key:not(:empty)', { timeout: 10000 });
  });
  const page = await newPage('masters');
  await withShot(page, async () => {
    await page.goto(`${a}/?name=Carol&stream=mm`);
    await until('the page knows both masters', 10000, () => page.evaluate(() => window.classcast.masters.length === 2));
    masterA.kill('SIGKILL');
    await until('master A is gone', 10000, async () => { try { await fetch(`${a}/health`); return false; } catch { return true; } });
    await page.click('#join-form button[type=submit]');
    const node = await playsFor(page, 2, 30000);
    assert.equal(node, 'm1');
    const used = await page.evaluate(() => window.classcast.events.filter((e) => e.type === 'master').map((e) => e.master));
    assert.deepEqual(used, [b], 'the token came from master B');
    assert.deepEqual(page._csp, [], 'the CSP blocked nothing');
  });
  // The teacher page says its master is down and links to B; the preview (from the slave) and
  // OBS carry on; on B's page the teacher logs in again.
  await withShot(teacher, async () => {
    await teacher.waitForSelector('#master-down:not([hidden])', { timeout: 10000 });
    const t0 = await teacher.evaluate(() => document.getElementById('preview').currentTime);
    await until('the preview keeps playing', 10000, () => teacher.evaluate((t) => document.getElementById('preview').currentTime > t + 1, t0));
    await teacher.click(`#other-masters a[href="${b}/teacher"]`);
    await teacher.waitForURL(`${b}/teacher`);
    await teacher.fill('#password', TEACHER);
    await teacher.fill('#stream', 'mm');
    await teacher.click('button[type=submit]');
    await teacher.waitForSelector('#key:not(:empty)', { timeout: 10000 });
    assert.deepEqual(teacher._csp, [], 'the CSP blocked nothing');
  });
  stop(procs.slice(from));
});

test('up --lan prints a LAN student link that answers, and the teacher page QR code decodes to it', async () => {
  const port = await freePort();
  rmSync(path.join(ART, 'lan-data'), { recursive: true, force: true });
  const lan = run('up-lan', BIN, ['up', '--lan', '--slaves', '1', '--webrtc-udp-port', '0', '--master-port', String(port), '--rtmp-port-base', '0',
    '--http-port-base', '0', '--teacher-password', TEACHER, '--data-dir', path.join(ART, 'lan-data')]);
  let out = '';
  lan.stdout.on('data', (d) => { out += d; });
  const link = await until('up --lan prints the student link', 20000, () => (out.match(/Students: open (\S+)/) || [])[1]);
  const url = new URL(link);
  const mine = Object.values(os.networkInterfaces()).flat().map((i) => i.address);
  assert.ok(!/^127\.|^::1$|^localhost$/.test(url.hostname), `the link uses a loopback address: ${link}`);
  assert.ok(mine.includes(url.hostname), `${url.hostname} is not an address of this machine (${mine})`);
  // The link line and the QR code may arrive in separate reads of the pipe.
  assert.ok(await until('a QR code is printed in the terminal', 10000, () => /\u2580|\u2584|\u2588/.test(out)));
  const r = await until('the student link answers', 20000, async () => { const r = await fetch(link); return r.ok && r; });
  assert.match(await r.text(), /id="join-form"/);

  const teacher = await newPage('lan-teacher');
  await withShot(teacher, async () => {
    await teacher.goto(`${url.origin}/teacher`);
    await teacher.fill('#password', TEACHER);
    await teacher.fill('#stream', 'stream');
    await teacher.click('button[type=submit]');
    await teacher.waitForSelector('#join-card:not([hidden])', { timeout: 10000 });
    assert.equal(await teacher.textContent('#student-url'), link);
    // The QR code as the page shows it, rasterized in the page, decoded here with jsQR.
    await until('the QR image loads', 10000, () => teacher.evaluate(() => document.getElementById('qr').complete && document.getElementById('qr').naturalWidth > 0));
    const px = await teacher.evaluate(() => {
      const img = document.getElementById('qr');
      const c = document.createElement('canvas');
      c.width = c.height = 512;
      const g = c.getContext('2d');
      g.fillStyle = '#fff'; g.fillRect(0, 0, 512, 512);
      g.drawImage(img, 0, 0, 512, 512);
      return Array.from(g.getImageData(0, 0, 512, 512).data);
    });
    const code = jsQR(Uint8ClampedArray.from(px), 512, 512);
    assert.ok(code, 'the QR code on the teacher page decodes');
    assert.equal(code.data, link);
    assert.deepEqual(teacher._csp, [], 'the CSP blocked nothing');
  });
  lan.kill('SIGTERM');
});
