// Going live from the teacher page: the camera, the screen (with the microphone), or both
// (the camera in a corner of the screen), sent over WHIP to the origin the master chose, with
// the class's publish token. It reconnects by itself after a network blip and says so.
(() => {
  const $ = (id) => document.getElementById(id);
  // Width, height, and the bitrate the encoder is held to.
  const QUALITY = { 1080: [1920, 1080, 4500000], 720: [1280, 720, 2500000], 480: [854, 480, 1200000] };
  let tok = null, media = null, pc = null, session = null, wanted = false, timer = null, stopDrawing = null;
  const status = { state: 'idle', connects: 0, reconnects: 0 };
  window.classcast = Object.assign(window.classcast || {}, { golive: status });
  window.addEventListener('classcast-teacher', (e) => { tok = e.detail; });
  const say = (text, st) => {
    const el = $('golive-state');
    el.textContent = text;
    el.dataset.state = st;
    status.state = st;
  };
  const publishToken = () => tok.stream_key.split('key=')[1];

  // What the students get: a MediaStream of one video track and the microphone.
  async function capture() {
    const [w, h] = QUALITY[$('quality').value] || QUALITY[720];
    const source = $('source').value;
    const mic = () => navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
    if (source === 'camera') {
      return navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: w }, height: { ideal: h }, frameRate: { ideal: 30 } },
        audio: { echoCancellation: true, noiseSuppression: true },
      });
    }
    const screen = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 30 } }, audio: false });
    const voice = await mic();
    if (source === 'screen') {
      const v = screen.getVideoTracks()[0];
      v.contentHint = 'detail'; // text on slides stays sharp, at the cost of frame rate
      return new MediaStream([v, ...voice.getAudioTracks()]);
    }
    // Screen and camera: drawn together on a canvas, the camera in the bottom right corner.
    const camera = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 360 } } });
    const canvas = document.createElement('canvas');
    canvas.width = w;
    canvas.height = h;
    const ctx = canvas.getContext('2d');
    const play = (s) => { const v = document.createElement('video'); v.muted = true; v.srcObject = s; v.play().catch(() => {}); return v; };
    const sv = play(screen), cv = play(camera);
    const tick = setInterval(() => {
      ctx.fillStyle = '#000';
      ctx.fillRect(0, 0, w, h);
      if (sv.videoWidth) {
        const k = Math.min(w / sv.videoWidth, h / sv.videoHeight);
        ctx.drawImage(sv, (w - sv.videoWidth * k) / 2, (h - sv.videoHeight * k) / 2, sv.videoWidth * k, sv.videoHeight * k);
      }
      if (cv.videoWidth) {
        const cw = w / 4, ch = (cw * cv.videoHeight) / cv.videoWidth;
        ctx.drawImage(cv, w - cw - 16, h - ch - 16, cw, ch);
      }
    }, 1000 / 30);
    stopDrawing = () => { clearInterval(tick); for (const s of [screen, camera]) s.getTracks().forEach((t) => t.stop()); };
    return new MediaStream([...canvas.captureStream(30).getVideoTracks(), ...voice.getAudioTracks()]);
  }

  // One WHIP session: offer, POST with the publish token, answer. H.264 only (what every
  // player of the class decodes), without B-frames (browsers' encoders use none).
  async function connect() {
    const [, , bitrate] = QUALITY[$('quality').value] || QUALITY[720];
    pc = new RTCPeerConnection();
    for (const track of media.getTracks()) {
      const t = pc.addTransceiver(track, {
        direction: 'sendonly',
        streams: [media],
        sendEncodings: track.kind === 'video' ? [{ maxBitrate: bitrate, maxFramerate: 30 }] : undefined,
      });
      if (track.kind === 'video' && t.setCodecPreferences) {
        const h264 = RTCRtpSender.getCapabilities('video').codecs
          .filter((c) => c.mimeType === 'video/H264' && /packetization-mode=1/.test(c.sdpFmtpLine || ''));
        if (h264.length) t.setCodecPreferences(h264);
      }
    }
    const mine = pc;
    pc.onconnectionstatechange = () => {
      if (mine !== pc) return;
      if (pc.connectionState === 'connected') {
        status.connects++;
        say('Live: your students see and hear you.', 'live');
      } else if (['disconnected', 'failed'].includes(pc.connectionState) && wanted) {
        reconnect();
      }
    };
    await pc.setLocalDescription(await pc.createOffer());
    const r = await fetch(tok.whip_url, {
      method: 'POST',
      headers: { 'content-type': 'application/sdp', authorization: 'Bearer ' + publishToken() },
      body: pc.localDescription.sdp,
    });
    if (!r.ok) {
      const j = await r.json().catch(() => ({}));
      throw new Error(j.message || 'the server answered ' + r.status);
    }
    session = new URL(r.headers.get('location'), tok.whip_url).href;
    status.session = session;
    await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
  }

  async function hangUp() {
    const old = session;
    session = null;
    if (pc) { pc.onconnectionstatechange = null; pc.close(); pc = null; }
    if (old) await fetch(old, { method: 'DELETE' }).catch(() => {});
  }

  // Within the server's grace period the class goes on where it was, same recording.
  function reconnect() {
    if (timer) return;
    status.reconnects++;
    say('Connection lost; reconnecting…', 'reconnecting');
    const attempt = async () => {
      timer = null;
      if (!wanted) return;
      await hangUp();
      try {
        await connect();
      } catch (e) {
        say(`Connection lost; reconnecting… (${e.message})`, 'reconnecting');
        timer = setTimeout(attempt, 2000);
      }
    };
    timer = setTimeout(attempt, 1000);
  }

  $('golive').addEventListener('click', async () => {
    if (!tok) return;
    $('golive').disabled = true;
    say('Starting…', 'starting');
    try {
      media = await capture();
      $('local').srcObject = media;
      wanted = true;
      await connect();
      $('stoplive').hidden = false;
      $('golive').hidden = true;
    } catch (e) {
      wanted = false;
      say(`Could not go live: ${e.message}`, 'error');
      $('golive').disabled = false;
    }
  });

  $('stoplive').addEventListener('click', async () => {
    wanted = false;
    clearTimeout(timer);
    timer = null;
    await hangUp();
    if (media) media.getTracks().forEach((t) => t.stop());
    if (stopDrawing) stopDrawing();
    media = null;
    $('local').srcObject = null;
    $('stoplive').hidden = true;
    $('golive').hidden = false;
    $('golive').disabled = false;
    say('The class has ended.', 'ended');
  });
  // Leaving the page ends the publish at once rather than after the idle deadline.
  window.addEventListener('pagehide', () => { if (session) fetch(session, { method: 'DELETE', keepalive: true }).catch(() => {}); });
})();
