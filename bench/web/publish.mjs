// Publisher for the glass-to-glass benchmark: draws 640x360 grey frames at 30 fps whose top
// 80 rows carry the wall clock as 32 black/white blocks of 40x40 px (24 bits of "ms since
// EPOCH", then an 8-bit check), stamped when the frame is handed to the encoder, and pipes them
// to one ffmpeg (x264 veryfast zerolatency, GOP 1 s, ~2 Mbit/s + AAC) that publishes the same
// encoded stream to every RTMP URL given (tee muxer), so all servers get identical frames.
//
//   node publish.mjs EPOCH_MS rtmp://a/live/x?key=… rtmp://b/live/y …
import { spawn } from 'node:child_process';

const [epochArg, ...urls] = process.argv.slice(2);
const EPOCH = Number(epochArg);
if (!EPOCH || urls.length === 0) { console.error('usage: publish.mjs EPOCH_MS RTMP_URL…'); process.exit(2); }
const W = 640, H = 360, FPS = 30, BS = 40, COLS = 16;
const tee = urls.map((u) => `[f=flv:onfail=ignore]${u}`).join('|');
const ff = spawn('ffmpeg', ['-hide_banner', '-loglevel', process.env.FFLOG || 'error', '-nostdin',
  '-thread_queue_size', '64', '-f', 'rawvideo', '-pix_fmt', 'gray', '-s', `${W}x${H}`, '-r', String(FPS), '-i', '-',
  // Audio (silence) comes from this process too, on fd 3, so that both tracks' timestamps start
  // together: a separately paced source (lavfi -re) would start later and the muxer's
  // interleaving would then hold every video packet back by that gap.
  '-thread_queue_size', '64', '-f', 's16le', '-ar', '48000', '-ac', '2', '-i', 'pipe:3',
  '-map', '0:v', '-map', '1:a',
  // Film-grain noise makes the encoder spend its ~2 Mbit/s; the 40 px blocks survive it.
  '-vf', 'noise=alls=20:allf=t',
  '-c:v', 'libx264', '-preset', 'veryfast', '-tune', 'zerolatency', '-g', '30', '-keyint_min', '30',
  '-sc_threshold', '0', '-b:v', '2M', '-maxrate', '2M', '-bufsize', '1M', '-pix_fmt', 'yuv420p',
  '-c:a', 'aac', '-b:a', '64k', '-ar', '48000',
  // The tee muxer does not ask the encoders for global headers: without this the FLV sequence
  // headers (avcC, AudioSpecificConfig) are empty and no server can package the stream.
  '-flags', '+global_header', '-f', 'tee', tee], { stdio: ['pipe', 'inherit', 'inherit', 'pipe'] });
ff.on('exit', (c) => { console.error(`ffmpeg exited ${c}`); process.exit(c ?? 1); });
ff.stdin.on('error', () => {});
ff.stdio[3].on('error', () => {});
const SILENCE = Buffer.alloc((48000 / FPS) * 2 * 2); // one frame's worth of s16le stereo

function draw(i, val) {
  // A fresh buffer per frame: a stream keeps a reference to what it has not written yet.
  const frame = Buffer.alloc(W * H, 96);
  // A moving bar below the code, so the encoder has motion to code.
  const x = (i * 8) % W;
  for (let y = 100; y < H; y++) frame.fill(200, y * W + x, y * W + Math.min(W, x + 40));
  const chk = ((val & 0xff) + ((val >> 8) & 0xff) + ((val >> 16) & 0xff) + 0x5a) & 0xff;
  const bits = [];
  for (let b = 23; b >= 0; b--) bits.push((val >> b) & 1);
  for (let b = 7; b >= 0; b--) bits.push((chk >> b) & 1);
  bits.forEach((bit, k) => {
    const bx = (k % COLS) * BS, by = Math.floor(k / COLS) * BS;
    for (let y = by; y < by + BS; y++) frame.fill(bit ? 235 : 16, y * W + bx, y * W + bx + BS);
  });
  return frame;
}
const t0 = Date.now();
let i = 0;
function next() {
  const now = Date.now();
  ff.stdin.write(draw(i, (now - EPOCH) & 0xffffff));
  ff.stdio[3].write(SILENCE);
  i++;
  setTimeout(next, Math.max(0, t0 + (i * 1000) / FPS - Date.now()));
}
next();
process.on('SIGTERM', () => { ff.kill('SIGTERM'); process.exit(0); });
