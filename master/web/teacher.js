// Teacher page: log in, show the OBS server and stream key, preview the class, count viewers.
(() => {
  const $ = (id) => document.getElementById(id);
  let tok = null, hls = null;

  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('login-error').textContent = '';
    const body = { role: 'teacher', user_id: 'teacher', stream: $('stream').value.trim() || 'stream', credential: $('password').value };
    const r = await fetch('/api/token', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) { $('login-error').textContent = j.message || ('error ' + r.status); return; }
    tok = j;
    $('server').textContent = j.rtmp_url;
    $('key').textContent = j.stream_key;
    $('expires').textContent = new Date(j.expires_at * 1000).toLocaleString();
    $('login').hidden = true;
    for (const id of ['settings', 'preview-card', 'viewers-card']) $(id).hidden = false;
    startPreview();
    refreshViewers();
    setInterval(refreshViewers, 3000);
  });

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
      hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) { $('preview-state').textContent = 'Waiting for your stream…'; setTimeout(attempt, 2000); } });
      hls.on(Hls.Events.MANIFEST_PARSED, () => { $('preview-state').textContent = 'Live'; video.play().catch(() => {}); });
      hls.loadSource(tok.hls_url);
      hls.attachMedia(video);
    };
    attempt();
  }

  async function refreshViewers() {
    const r = await fetch('/cluster/nodes').catch(() => null);
    if (!r || !r.ok) return;
    const j = await r.json();
    const rows = j.nodes.map((n) => `<tr><td>${esc(n.node_name)}</td><td>${n.current_connections}</td><td><span class="badge ${n.status}">${n.status}</span></td></tr>`);
    $('viewers').innerHTML = rows.join('');
  }
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
})();
