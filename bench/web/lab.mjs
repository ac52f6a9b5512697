// What the network-lab benches share (abr.mjs, netprofiles.mjs): processes they start and end
// by PID, a `classcast-bench netlab` namespace, a classcast master and slave on the lab's host
// address with a class publishing, and Chromium inside the namespace.
import { spawn } from 'node:child_process';
import { createWriteStream, writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const SECRET = 'lab-bench-cluster-secret-0123456789';
export const TEACHER = 'lab-bench-teacher-password';
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function parseArgs() {
  return Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []));
}

export class Procs {
  constructor(work) { this.work = work; this.all = []; }
  run(name, cmd, argv, env = {}) {
    const log = createWriteStream(path.join(this.work, `${name}.log`));
    const p = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    p.stdout.pipe(log); p.stderr.pipe(log);
    this.all.push(p);
    return p;
  }
  stop(list) { for (const p of list) { try { p.kill('SIGKILL'); } catch {} } }
  stopAll() { this.stop(this.all); }
}

export async function until(what, ms, f) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try { const v = await f(); if (v) return v; } catch {}
    await sleep(200);
  }
  throw new Error(`timed out: ${what}`);
}

export const json = async (url, init) => (await fetch(url, init)).json();

export async function metric(base, name) {
  const t = await (await fetch(`${base}/metrics`)).text();
  const m = t.match(new RegExp(`^${name} (\\d+)`, 'm'));
  return m ? Number(m[1]) : 0;
}

// A namespace joined to this host by an emulated link; `stop()` ends it (it removes what it made).
export async function netlab(procs, benchBin, name, index, profile) {
  const p = procs.run(`netlab-${name}-${profile}`, benchBin, ['netlab', '--name', name, '--index', String(index), '--profile', profile]);
  let out = '';
  p.stdout.on('data', (d) => { out += d; });
  await until(`netlab ${profile} ready`, 15000, () => out.includes('ready '));
  const exited = new Promise((r) => p.on('exit', r));
  return {
    host: `10.77.${index}.1`,
    stop: async () => {
      p.stdin.end();
      await Promise.race([exited, sleep(5000)]);
      const line = out.split('\n').find((l) => l.includes('"bench":"netlab"'));
      return line ? JSON.parse(line) : null;
    },
    browser: () => {
      const wrapper = path.join(procs.work, `chromium-in-${name}.sh`);
      writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${name} ${process.env.CHROMIUM || '/usr/bin/chromium'} "$@"\n`, { mode: 0o755 });
      return chromium.launch({ executablePath: wrapper, headless: true,
        args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic', '--autoplay-policy=no-user-gesture-required'] });
    },
  };
}

// A master and a slave on `ip` (RTMP on loopback), and the teacher's publish URL for `stream`.
// Returns the processes to stop and the URLs.
export async function cluster(procs, bin, ip, [mp, hp, rp], stream, extra = []) {
  const master = `http://${ip}:${mp}`;
  const slave = `http://${ip}:${hp}`;
  const env = { CLUSTER_SECRET: SECRET };
  const mine = [
    procs.run('master', bin, ['master', '--bind', `${ip}:${mp}`, '--jwt-key-file', path.join(procs.work, 'jwt.pem'),
      '--heartbeat-interval-ms', '500', '--teacher-password', TEACHER], env),
  ];
  await until('master up', 15000, async () => (await fetch(`${master}/health`)).ok);
  mine.push(procs.run('slave', bin, ['slave', '--master-url', master, '--node-id', 'b1', '--rtmp-bind', `127.0.0.1:${rp}`,
    '--http-bind', `${ip}:${hp}`, '--public-host', ip, '--heartbeat-interval-ms', '500', '--webrtc-udp-port', '0',
    '--record', 'false', '--record-dir', path.join(procs.work, 'rec'), ...extra], env));
  await until('slave registered', 30000, async () => (await json(`${master}/cluster/nodes`)).healthy_nodes === 1);
  const t = await json(`${master}/api/token`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ role: 'teacher', user_id: 't', stream, credential: TEACHER }) });
  return { master, slave, mine, publishUrl: `rtmp://127.0.0.1:${rp}/live/${t.stream_key}` };
}

export const live = (master, stream) => until(`${stream} live`, 20000,
  async () => (await json(`${master}/cluster/streams`)).streams?.some((s) => s.path === `live/${stream}`));

// Loops an FLV file into `url` with `-c copy` (ffmpeg of the caller's choice).
export const loop = (procs, name, ffmpeg, flv, url) => procs.run(name, ffmpeg,
  ['-hide_banner', '-loglevel', 'warning', '-nostdin', '-re', '-stream_loop', '-1', '-i', flv, '-map', '0', '-c', 'copy', '-f', 'flv', url]);

// Counts `waiting` events on the page's #video from now on, and the seconds spent at each
// picture height.
export const watch = (page, id = 'video') => page.evaluate((id) => {
  const v = document.getElementById(id);
  window.bench = { stalls: 0, jumps: 0, heights: {}, t0: v.currentTime };
  v.addEventListener('waiting', () => { window.bench.stalls += 1; });
  // A live player that falls behind jumps ahead (the student page's own jump, or hls.js's live
  // sync): content skipped without a `waiting` event.
  v.addEventListener('seeking', () => { window.bench.jumps += 1; });
  setInterval(() => { const h = v.videoHeight; window.bench.heights[h] = (window.bench.heights[h] || 0) + 1; }, 1000);
}, id);
