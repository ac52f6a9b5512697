// Teacher page: log in, show the OBS server and stream key, preview the class, count viewers.
(() => {
  const $ = (id) => document.getElementById(id);
  let tok = null, hls = null;
  // The other masters of this school (GET /api/masters): where to log in when this one is down.
  // Teacher tokens are only minted for a master's own page, so the teacher moves, not the call.
  let others = [];
  window.classcast = { get others() { return others; } };
  fetch('/api/masters').then((r) => r.json())
    .then((j) => { others = (j.masters || []).filter((m) => m !== location.origin); }).catch(() => {});
  function masterDown(down) {
    $('master-down').hidden = !down;
    $('other-masters').innerHTML = others.map((m) => `<li><a href="${esc(m)}/teacher">${esc(m)}</a></li>`).join('')
      || '<li>No other server is configured (MASTERS).</li>';
  }

  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('login-error').textContent = '';
    const stream = $('stream').value.trim() || 'stream';
    const body = { role: 'teacher', user_id: 'teacher', stream, credential: $('password').value, record: $('record').checked };
    let r;
    try {
      r = await fetch('/api/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    } catch {
      masterDown(true);
      return;
    }
    masterDown(false);
    const j = await r.json().catch(() => ({}));
    if (!r.ok) { $('login-error').textContent = j.message || ('error ' + r.status); return; }
    tok = j;
    $('server').textContent = j.rtmp_url;
    $('key').textContent = j.stream_key;
    $('expires').textContent = new Date(j.expires_at * 1000).toLocaleString();
    showLadder(j.stream_key);
    $('login').hidden = true;
    for (const id of ['settings', 'preview-card', 'viewers-card', 'recordings-card']) $(id).hidden = false;
    // Going live from the page needs WHIP at the origin (WebRTC on) and a browser that can send.
    if (j.whip_url && window.RTCPeerConnection && navigator.mediaDevices) $('golive-card').hidden = false;
    window.dispatchEvent(new CustomEvent('classcast-teacher', { detail: j }));
    $('qa-card').hidden = false;
    window.dispatchEvent(new CustomEvent('classcast-play', { detail: { tok: j, user: 'teacher', teacher: true } }));
    showStudentLink(stream);
    refreshRecordings();
    setInterval(refreshRecordings, 5000);
    startPreview();
    refreshViewers();
    setInterval(refreshViewers, 3000);
  });

  // OBS's multitrack configuration: what the master answers OBS's own request with, for this
  // teacher's key, shown as the command line and as the override to paste.
  async function showLadder(key) {
    const url = location.origin + '/api/obs/golive';
    $('config-url').textContent = 'obs --config-url ' + url;
    const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ authentication: key, preferences: { width: 1920, height: 1080, framerate: { numerator: 30, denominator: 1 } } }) }).catch(() => null);
    $('config-override').textContent = r && r.ok ? JSON.stringify(await r.json(), null, 2) : '(not available: ' + (r ? r.status : 'no answer') + ')';
  }

  document.querySelectorAll('[data-copy]').forEach((b) => b.addEventListener('click', async () => {
    const text = $(b.dataset.copy).textContent;
    try { await navigator.clipboard.writeText(text); $('copied').textContent = 'Copied.'; }
    catch { $('copied').textContent = 'Select the text and copy it by hand.'; }
  }));

  // The preview plays the teacher's own read token from the origin; it retries until live.
  function startPreview() {
    const video = $('preview');
    if (!(window.Hls && Hls.isSupported())) { video.src = tok.hls_url; return; }
    const attempt = () => {
      if (hls) hls.destroy();
      hls = new Hls({ lowLatencyMode: true, maxLiveSyncPlaybackRate: 1.5, manifestLoadingMaxRetry: 0 });
      hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) { showRefusal(); setTimeout(attempt, 2000); } });
      hls.on(Hls.Events.MANIFEST_PARSED, () => { $('preview-state').textContent = 'Live'; video.play().catch(() => {}); });
      hls.loadSource(tok.hls_url);
      hls.attachMedia(video);
    };
    attempt();
  }

  // Until the stream plays: waiting, or why the origin refused what the encoder sends (a codec
  // it cannot serve), with the setting to change.
  async function showRefusal() {
    const j = await fetch(tok.hls_url).then((r) => r.json()).catch(() => null);
    const el = $('preview-state');
    if (j && j.error === 'publish_refused') {
      el.textContent = `Your stream was refused: ${j.message}. In OBS: Settings → Output → Video Encoder (x264, HEVC or AV1) and Audio Encoder (AAC or Opus), then start streaming again.`;
      el.dataset.state = 'refused';
    } else {
      el.textContent = 'Waiting for your stream…';
      delete el.dataset.state;
    }
  }

  // The link (and QR code) students open for this class.
  async function showStudentLink(stream) {
    const q = '?stream=' + encodeURIComponent(stream);
    const j = await fetch('/api/student-link' + q).then((r) => r.json()).catch(() => null);
    if (!j || !j.url) return;
    $('student-url').textContent = j.url;
    $('qr').src = '/qr.svg' + q;
    $('join-card').hidden = false;
  }

  // Recordings: play (the student page), download (one MP4, with a viewer token for it),
  // delete (the teacher password again, checked by the master).
  const fmtDuration = (s) => { const m = Math.floor(s / 60); return m + ':' + String(Math.round(s % 60)).padStart(2, '0'); };
  async function refreshRecordings() {
    const j = await fetch('/api/recordings').then((r) => r.json()).catch(() => null);
    if (!j) return;
    const all = j.recordings || [];
    $('recordings-empty').hidden = all.length > 0;
    $('recordings-table').hidden = all.length === 0;
    $('recordings').innerHTML = all.map((r) => `<tr data-id="${esc(r.id)}"><td>${esc(r.path.replace(/^live\//, ''))}</td>` +
      `<td>${esc(new Date(r.started_ms).toLocaleString())}</td><td>${fmtDuration(r.duration_s)}${r.recording ? ' (recording)' : ''}</td><td>` +
      (r.recording ? '' : `<a href="/?name=teacher&recording=${encodeURIComponent(r.id)}" target="_blank" rel="noopener">Play</a> ` +
        `<button type="button" class="secondary" data-download="${esc(r.id)}">Download</button> ` +
        `<button type="button" class="secondary" data-delete="${esc(r.id)}">Delete</button>`) + '</td></tr>').join('');
  }
  $('recordings').addEventListener('click', async (ev) => {
    const d = ev.target && ev.target.dataset;
    if (!d) return;
    $('recordings-error').textContent = '';
    if (d.download) {
      const r = await fetch('/api/token', { method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ role: 'student', user_id: 'teacher', recording: d.download }) });
      const j = await r.json().catch(() => ({}));
      if (!r.ok) { $('recordings-error').textContent = j.message || ('error ' + r.status); return; }
      // A class whose encoder settings changed midway (a new resolution) is several MP4s:
      // the slave answers download.mp4 with the list (300), and the page offers each part.
      const whole = j.hls_url.replace('/index.m3u8?', '/download.mp4?');
      const probe = await fetch(whole, { headers: { range: 'bytes=0-0' } }).catch(() => null);
      const list = probe && probe.status === 300 ? await probe.json().catch(() => null) : null;
      const link = (href, name, text, id) => {
        const a = document.createElement('a');
        a.href = href; a.download = name; a.textContent = text; a.id = id;
        return a;
      };
      if (list && list.parts && list.parts.length > 1) {
        const box = document.createElement('span');
        box.id = 'download-parts';
        const n = list.parts.length;
        const note = document.createElement('span');
        note.className = 'muted';
        note.textContent = `In ${n} parts (the encoder settings changed during the class): `;
        box.append(note);
        list.parts.forEach((p, i) => {
          box.append(link(j.hls_url.replace('/index.m3u8?', `/${p.file}?`), `${d.download}-part${i + 1}.mp4`,
            `Part ${i + 1} of ${n} (${fmtDuration(p.duration_s)})`, `download-link-${i + 1}`), ' ');
        });
        ev.target.replaceWith(box);
        return;
      }
      const a = link(whole, d.download + '.mp4', 'Download ' + d.download + '.mp4', 'download-link');
      ev.target.replaceWith(a);
      a.click();
    } else if (d.delete) {
      if (!window.confirm('Delete this recording for everyone?')) return;
      const r = await fetch('/api/recordings/delete', { method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ id: d.delete, credential: $('password').value }) });
      const j = await r.json().catch(() => ({}));
      if (!r.ok) { $('recordings-error').textContent = j.message || ('error ' + r.status); return; }
      refreshRecordings();
    }
  });

  async function refreshViewers() {
    const r = await fetch('/cluster/nodes').catch(() => null);
    masterDown(!r);
    if (!r || !r.ok) return;
    const j = await r.json();
    const rows = j.nodes.map((n) => `<tr><td>${esc(n.node_name)}</td><td>${n.current_connections}</td><td><span class="badge ${n.status}">${n.status}</span></td></tr>`);
    $('viewers').innerHTML = rows.join('');
    showWebRtc(j.nodes);
  }

  // Whether students get the sub-second WebRTC delivery, and what the teacher can do if not.
  function showWebRtc(nodes) {
    const path = 'live/' + ($('stream').value.trim() || 'stream');
    const serving = nodes.filter((n) => n.status !== 'offline' && n.streams.some((s) => s.path === path));
    const origin = serving.map((n) => n.streams.find((s) => s.path === path && s.publisher)).find(Boolean);
    const kinds = { rtmp: 'RTMP (OBS or another encoder)', rtmps: 'RTMPS (OBS or another encoder, encrypted)', whip: 'WHIP (this browser, OBS 30+ or ffmpeg)' };
    $('publisher-state').textContent = origin ? 'Your class comes in over ' + (kinds[origin.publisher] || origin.publisher) + '.' : '';
    $('publisher-state').dataset.kind = origin ? origin.publisher : '';
    const el = $('webrtc-state');
    let text, st;
    if (!serving.length) { text = ''; st = 'waiting'; }
    else if (serving.some((n) => n.streams.some((s) => s.path === path && s.bframes))) {
      st = 'bframes';
      text = 'WebRTC: off for this stream, because your encoder sends B-frames (browsers cannot play them over WebRTC). Students get LL-HLS (about 1 s behind). In OBS set Output → Encoder → "B-frames" to 0 (or x264 options: bframes=0) and restart streaming.';
    } else if (serving.some((n) => n.streams.some((s) => s.path === path && s.hls_only_codec))) {
      st = 'codec';
      text = 'WebRTC: off for this stream, because your encoder sends HEVC or AV1, which students get over LL-HLS only (about 1 s behind). For WebRTC, choose an H.264 encoder (OBS: Output → Video Encoder → x264).';
    } else {
      const ready = nodes.filter((n) => n.status !== 'offline' && n.webrtc && n.webrtc.sessions < n.webrtc.capacity);
      st = ready.length ? 'ready' : 'off';
      text = ready.length ? `WebRTC: ready on ${ready.length} slave(s); students play over WebRTC, LL-HLS where it fails.` : 'WebRTC: not offered by any slave now; students get LL-HLS.';
    }
    el.textContent = text;
    el.dataset.state = st;
  }
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
})();
