// Student page: get a token from the master, play the class over WebRTC (WHEP) when the slave
// offers it, else with hls.js in low-latency mode (native HLS where MSE is missing, e.g. iOS
// Safari); fall back to LL-HLS when WebRTC fails, and move to another slave if one fails.
(() => {
  const $ = (id) => document.getElementById(id);
  const video = $('video');
  const state = (t) => { $('state').textContent = t; };
  let hls = null;
  // The live-hls.js handle of the current live hls.js player (null for a replay).
  let liveHls = null;
  let current = null; // token response
  let user = '', stream = '';
  // A recorded class being replayed (its id), instead of the live one.
  let recording = null;
  let recovering = false;
  // Where tokens come from: this page's own master first, then every other master of the
  // cluster (GET /api/masters), so a student whose master is down still joins.
  let masters = [''];
  let pc = null; // the WebRTC session, when playing over WHEP
  let whepSession = null; // its URL, for DELETE
  let mode = null; // 'webrtc' | 'hls'
  window.classcast = { events: [], get current() { return current; }, get hls() { return hls; }, get masters() { return masters; },
                       get mode() { return mode; }, get pc() { return pc; } };
  const log = (e) => { window.classcast.events.push({ t: Date.now(), ...e }); };
  // `?webrtc=0`: LL-HLS only (a school network that blocks UDP, or a test of the HLS path).
  if (new URLSearchParams(location.search).get('webrtc') === '0') window.classcast.noWebRtc = true;
  const mastersLoaded = fetch('/api/masters').then((r) => r.json())
    .then((j) => { masters = [''].concat((j.masters || []).filter((m) => m !== location.origin)); })
    .catch(() => {});

  // POST /api/token to the first master that answers; the one that did is tried first next time.
  async function postToken(body) {
    await mastersLoaded;
    let last;
    for (const m of masters) {
      try {
        const r = await fetch(m + '/api/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
        if (m !== masters[0]) { masters = [m].concat(masters.filter((x) => x !== m)); log({ type: 'master', master: m }); }
        return r;
      } catch (e) {
        last = e;
      }
    }
    throw last;
  }

  async function getToken(exclude) {
    for (;;) {
      const body = recording ? { role: 'student', user_id: user, recording } : { role: 'student', user_id: user, stream };
      if (exclude) body.exclude = exclude;
      let r;
      try {
        r = await postToken(body);
      } catch (e) {
        state('Cannot reach the school server; retrying…');
        await sleep(2000);
        continue;
      }
      const j = await r.json().catch(() => ({}));
      if (r.ok) return j;
      if (r.status === 404 && j.error === 'stream_not_live') {
        state('Waiting for the class to start…');
        log({ type: 'waiting' });
        await sleep(2000);
        continue;
      }
      if (r.status === 503) {
        state('All servers are busy; retrying…');
        await sleep(2000);
        continue;
      }
      throw new Error(j.message || ('error ' + r.status));
    }
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  const setMode = (m) => { mode = m; $('mode').textContent = m === 'webrtc' ? 'WebRTC' : 'LL-HLS'; log({ type: 'mode', mode: m }); };

  function stopWebRtc() {
    if (whepSession) {
      // The WHEP session URL ends the session on the slave (its viewer count drops at once).
      fetch(whepSession, { method: 'DELETE', keepalive: true }).catch(() => {});
      whepSession = null;
    }
    if (pc) { pc.close(); pc = null; }
  }
  window.addEventListener('pagehide', stopWebRtc);

  // WHEP: POST our offer with the same token that plays LL-HLS; 201 brings the answer. Any
  // failure (refused, no media within a few seconds, connection lost) falls back to LL-HLS on
  // the same slave; a slave that is gone is left by the stall check below.
  async function playWebRtc(tok) {
    const mine = new RTCPeerConnection();
    pc = mine;
    mine.addTransceiver('video', { direction: 'recvonly' });
    mine.addTransceiver('audio', { direction: 'recvonly' });
    const ms = new MediaStream();
    mine.ontrack = (e) => { ms.addTrack(e.track); video.srcObject = ms; video.play().catch(() => {}); };
    const fallback = (why) => {
      if (pc !== mine || current !== tok) return;
      log({ type: 'webrtc-fallback', why });
      // This network cannot carry the class over WebRTC (no connection, or no picture): the
      // page does not try again when it rejoins, on this slave or another.
      if (/^no /.test(why)) window.classcast.noWebRtc = true;
      stopWebRtc();
      playHls(tok);
    };
    try {
      await mine.setLocalDescription(await mine.createOffer());
      const r = await fetch(tok.whep_url, { method: 'POST', body: mine.localDescription.sdp,
        headers: { 'content-type': 'application/sdp', authorization: 'Bearer ' + tok.token } });
      if (r.status !== 201) {
        const j = await r.json().catch(() => ({}));
        return fallback('refused ' + r.status + (j.error ? ' ' + j.error : ''));
      }
      whepSession = new URL(r.headers.get('location'), tok.whep_url).href;
      await mine.setRemoteDescription({ type: 'answer', sdp: await r.text() });
    } catch (e) {
      return fallback('error ' + e.message);
    }
    rtcFrames = 0; rtcProgress = Date.now(); rtcFallback = fallback; rtcFreezes = []; rtcStarted = Date.now();
    mine.onconnectionstatechange = () => {
      if (pc !== mine) return;
      if (['disconnected', 'failed'].includes(mine.connectionState)) failover('webrtc ' + mine.connectionState);
      if (mine.connectionState === 'connected') showTransport(mine);
    };
    // A network that drops UDP (and reaches no TCP candidate either) never connects: LL-HLS
    // within 2 s of the answer, not after the 5 s allowed for the first picture.
    setTimeout(() => { if (pc === mine && mine.connectionState !== 'connected') fallback('no connection in 2 s (UDP blocked?)'); }, 2000);
    setTimeout(() => { if (pc === mine && !(video.videoWidth > 0 && video.currentTime > 0)) fallback('no media'); }, 5000);
    setMode('webrtc');
  }

  // Says whether WebRTC runs over UDP or, where the network drops UDP, over TCP.
  async function showTransport(mine) {
    try {
      const stats = await mine.getStats();
      let pair = null;
      stats.forEach((s) => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
      const local = pair && stats.get(pair.localCandidateId);
      if (!local || pc !== mine) return;
      window.classcast.webrtcTransport = local.protocol;
      $('mode').textContent = local.protocol === 'tcp' ? 'WebRTC (TCP)' : 'WebRTC';
      log({ type: 'webrtc-transport', protocol: local.protocol });
    } catch {}
  }

  function playHls(tok) {
    setMode('hls');
    video.srcObject = null;
    if (window.Hls && Hls.isSupported()) {
      hls = new Hls({ ...ClasscastLiveHls.config, backBufferLength: 30,
                      manifestLoadingMaxRetry: 1, levelLoadingMaxRetry: 1, fragLoadingMaxRetry: 1,
                      startPosition: recording ? 0 : -1 });
      liveHls = recording ? null : ClasscastLiveHls.attach(hls, (why) => log({ type: 'steady', why }));
      hls.on(Hls.Events.ERROR, (_, data) => {
        log({ type: 'hls-error', fatal: data.fatal, details: data.details });
        if (data.fatal) failover('playback failed (' + data.details + ')');
      });
      hls.on(Hls.Events.MANIFEST_PARSED, () => { video.play().catch(() => {}); });
      // A class sent as a ladder: say which rendition this student's link carries.
      hls.on(Hls.Events.LEVEL_SWITCHED, (_, d) => {
        if (hls.levels.length < 2) return;
        const h = hls.levels[d.level].height;
        $('mode').textContent = 'LL-HLS · ' + h + 'p';
        log({ type: 'rendition', height: h });
      });
      hls.loadSource(tok.hls_url);
      hls.attachMedia(video);
    } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
      video.src = tok.hls_url;
      video.addEventListener('error', () => failover('playback failed'), { once: true });
      video.play().catch(() => {});
    } else {
      state('This browser cannot play HLS video.');
      return false;
    }
    return true;
  }

  function play(tok) {
    current = tok;
    // Rewinding a class still running plays its recording (an EVENT playlist growing with the
    // class) from the start; "Back to live" returns to the live stream.
    $('back-live').hidden = !(recording && liveRecording());
    $('rewind').hidden = true;
    $('node').textContent = tok.node_name + ' (' + tok.node_id + ')';
    log({ type: 'play', node_id: tok.node_id });
    if (hls) { hls.destroy(); hls = null; }
    liveHls = null;
    // A new player gets its own time to start before the stall rules judge it.
    lastProgress = Date.now();
    stopWebRtc();
    // The class's questions follow the student to whichever slave plays the class.
    if (!recording) window.dispatchEvent(new CustomEvent('classcast-play', { detail: { tok, user, teacher: false } }));
    else window.dispatchEvent(new CustomEvent('classcast-replay', { detail: { tok } }));
    if (tok.whep_url && !recording && window.RTCPeerConnection && !window.classcast.noWebRtc) playWebRtc(tok);
    else if (!playHls(tok)) return;
    state('Connecting to ' + tok.node_name + '…');
  }

  // Ask for a token that avoids the slave that just failed, and resume there.
  async function failover(why) {
    if (recovering) return;
    recovering = true;
    const failed = current && current.node_id;
    log({ type: 'failover', from: failed, why });
    state('Reconnecting (' + why + ')…');
    try {
      play(await getToken(failed));
    } catch (e) {
      state('Could not reconnect: ' + e.message);
    } finally {
      recovering = false;
    }
  }

  // A stalled picture with no error (a slave that vanished mid-request) also triggers failover.
  let lastTime = 0, lastProgress = Date.now();
  let rtcFrames = 0, rtcProgress = Date.now();
  // The WebRTC session's freeze figures over the last FREEZE_WINDOW_MS: leaving WebRTC for LL-HLS
  // takes FREEZE_MAX_S frozen or FREEZE_MAX_COUNT freezes in that window.
  let rtcFreezes = [];
  const FREEZE_WINDOW_MS = 20000, FREEZE_MAX_S = 4, FREEZE_MAX_COUNT = 10, FREEZE_GRACE_MS = 10000;
  let rtcStarted = 0;
  // The current WebRTC attempt's way back to LL-HLS on the same slave (set by playWebRtc).
  let rtcFallback = null;
  // How many checks in a row saw the picture move, on which slave: what "playing again" means.
  const progressed = () => {
    const node = current && current.node_id;
    const p = window.classcast.progress;
    window.classcast.progress = p && p.node === node ? { node, count: p.count + 1 } : { node, count: 1 };
  };
  // hls.js stalled for 3 s: a slave that is gone, or a network too slow for the moment (poor
  // Wi-Fi: 8 % loss, where a TCP retransmission alone takes a second). Moving to another slave
  // cures the first and, on a slow network, restarts the student from nothing every few
  // seconds (one run on poor Wi-Fi: two moves and 0.8 s played in a minute). So the page asks
  // this slave for the playlist: an answer means the network, and hls.js carries on (it raises
  // its own target after a stall); an error or no answer in 5 s means the slave, and the page
  // moves. A slave that answers and yet feeds nothing for HLS_STUCK_MS (an edge cut off from
  // its origin, still listing the old window) is left all the same.
  let asking = null, answeredAt = 0;
  const HLS_STUCK_MS = 15000;
  function askSlave() {
    if (asking || Date.now() - answeredAt < 3000) return;
    const tok = current, mine = hls;
    asking = fetch(tok.hls_url, { cache: 'no-store', signal: AbortSignal.timeout(5000) })
      .then((r) => {
        if (r.body) r.body.cancel().catch(() => {});
        if (hls !== mine) return;
        if (!r.ok) { failover('stalled, the slave answered ' + r.status); return; }
        answeredAt = Date.now();
        log({ type: 'slow-network', node_id: tok.node_id });
        if (liveHls) liveHls.steady('stalled 3 s and the slave answers');
      })
      .catch(() => { if (hls === mine) failover('stalled'); })
      .finally(() => { asking = null; });
  }
  setInterval(() => {
    if (!current) return;
    if (video.currentTime !== lastTime) {
      lastTime = video.currentTime; lastProgress = Date.now();
      if (mode === 'hls') progressed();
    }
    // A WebRTC session with no picture yet is the WebRTC checks' to judge (it falls back to
    // LL-HLS on this slave): moving to another slave would only try WebRTC again.
    const rtcWaiting = mode === 'webrtc' && rtcFrames === 0;
    if (!rtcWaiting && !video.paused && !video.ended && !video.seeking && Date.now() - lastProgress > 3000) {
      if (mode === 'hls' && hls && Date.now() - lastProgress < HLS_STUCK_MS) askSlave();
      else failover('stalled');
    }
    if (recording) {
      // A replay: the date the picture was filmed, not a latency.
      if (hls && hls.playingDate) $('latency').textContent = hls.playingDate.toLocaleString();
      if (!video.paused && video.currentTime > 0) state('Replay of a past class');
      return;
    }
    if (mode === 'webrtc' && pc) {
      // A MediaStream's currentTime runs on even when frames stop: watch decoded frames instead.
      // WebRTC has no programme date; the receiver's jitter buffer is what the page can show.
      const mine = pc;
      mine.getStats().then((st) => {
        st.forEach((s) => {
          if (s.type !== 'inbound-rtp' || s.kind !== 'video') return;
          if (s.framesDecoded !== rtcFrames) { rtcFrames = s.framesDecoded; rtcProgress = Date.now(); if (pc === mine) progressed(); }
          const buf = s.jitterBufferEmittedCount ? s.jitterBufferDelay / s.jitterBufferEmittedCount : 0;
          $('latency').textContent = 'buffer ' + Math.round(buf * 1000) + ' ms';
          window.classcast.webrtc = { frames: s.framesDecoded, buffer: buf, freezes: s.freezeCount || 0, freeze_s: s.totalFreezesDuration || 0,
            dropped: s.framesDropped || 0, nacks: s.nackCount || 0, lost: s.packetsLost || 0 };
        });
        if (pc === mine && rtcFrames > 0 && Date.now() - rtcProgress > 1500) failover('stalled');
        // A picture that keeps freezing (poor Wi-Fi: 42 freezes and 19 s frozen a minute in bench
        // section 16, against 6 and 1.4 s on busy Wi-Fi) is worse than LL-HLS's few stalls there.
        // Counted from 10 s after the answer: a ladder's first move down (a link too thin for the
        // starting rendition) freezes the picture for a moment, and settles.
        if (pc === mine && rtcFallback && window.classcast.webrtc && Date.now() - rtcStarted > FREEZE_GRACE_MS) {
          const w = window.classcast.webrtc, now = Date.now();
          rtcFreezes.push({ t: now, n: w.freezes, s: w.freeze_s });
          while (rtcFreezes.length && now - rtcFreezes[0].t > FREEZE_WINDOW_MS) rtcFreezes.shift();
          const first = rtcFreezes[0];
          const frozen = w.freeze_s - first.s, count = w.freezes - first.n;
          if (frozen >= FREEZE_MAX_S || count >= FREEZE_MAX_COUNT) {
            rtcFallback('no smooth picture: ' + count + ' freezes, ' + frozen.toFixed(1) + ' s frozen in ' + Math.round((now - first.t) / 1000) + ' s');
          }
        }
        // Connected, and yet no picture: a link too thin for the class's only rendition loses a
        // piece of every keyframe (bench section 15). LL-HLS still plays there.
        if (pc === mine && rtcFrames === 0 && Date.now() - rtcProgress > 6000 && rtcFallback) rtcFallback('no picture in 6 s');
      }).catch(() => {});
    } else if (hls && hls.playingDate) {
      const lat = (Date.now() - hls.playingDate.getTime()) / 1000;
      $('latency').textContent = lat.toFixed(1) + ' s';
      window.classcast.latency = lat;
    }
    if (!video.paused && video.currentTime > 0) state('Live');
    $('rewind').hidden = !liveRecording();
  }, 500);

  // The recording of the live class, while it is being made.
  const liveRecording = () => (window.classcast.past_all || []).find((r) => r.recording && r.path === 'live/' + stream);
  setInterval(() => { if (current) loadPast(); }, 3000);
  $('rewind').addEventListener('click', () => { const r = liveRecording(); if (r) playRecording(r.id); });
  $('back-live').addEventListener('click', async () => {
    recording = null;
    $('latency-label').textContent = 'Latency';
    state('Back to the live class…');
    play(await getToken());
  });

  $('join-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    user = $('name').value.trim();
    stream = $('stream').value.trim() || 'stream';
    recording = null;
    $('latency-label').textContent = 'Latency';
    $('join-error').textContent = '';
    try {
      $('player').hidden = false;
      state('Asking for a seat…');
      play(await getToken());
    } catch (e) {
      $('join-error').textContent = e.message;
    }
  });

  // Past classes (GET /api/recordings): a row each, played like the live class.
  const fmtDuration = (s) => { const m = Math.floor(s / 60); return m + ':' + String(Math.round(s % 60)).padStart(2, '0'); };
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  async function loadPast() {
    const j = await fetch('/api/recordings').then((r) => r.json()).catch(() => null);
    if (!j) return;
    window.classcast.past_all = j.recordings || [];
    const done = window.classcast.past_all.filter((r) => !r.recording);
    $('past-empty').hidden = done.length > 0;
    $('past-table').hidden = done.length === 0;
    $('past-list').innerHTML = done.map((r) => `<tr data-id="${esc(r.id)}"><td>${esc(r.path.replace(/^live\//, ''))}</td>` +
      `<td>${esc(new Date(r.started_ms).toLocaleString())}</td><td>${fmtDuration(r.duration_s)}</td>` +
      `<td><button type="button" class="secondary" data-play="${esc(r.id)}">Watch</button></td></tr>`).join('');
    window.classcast.past = done;
  }
  $('past-list').addEventListener('click', (ev) => {
    const id = ev.target && ev.target.dataset && ev.target.dataset.play;
    if (id) playRecording(id);
  });
  async function playRecording(id, exclude) {
    user = $('name').value.trim();
    $('past-error').textContent = '';
    if (!user) { $('past-error').textContent = 'Type your name above first.'; $('name').focus(); return; }
    recording = id;
    $('latency-label').textContent = 'Filmed';
    $('player').hidden = false;
    state('Asking for a seat…');
    try { play(await getToken(exclude)); } catch (e) { $('past-error').textContent = e.message; }
  }
  window.classcast.playRecording = playRecording;
  window.classcast.pastLoaded = loadPast();

  const params = new URLSearchParams(location.search);
  // A class link (`/?stream=…`, the teacher page's QR code) fills in the class.
  if (params.get('stream')) $('stream').value = params.get('stream');
  if (params.get('name')) {
    $('name').value = params.get('name');
    if (params.get('recording')) playRecording(params.get('recording'));
    else if (params.get('autoplay') !== null) $('join-form').requestSubmit();
  }
})();
