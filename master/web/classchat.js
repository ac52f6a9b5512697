// The class's questions, on the student and the teacher page: read over Server-Sent Events
// from the slave that plays the class, with the page's own token, resumed by event id when the
// page moves to another slave; posts go to the same slave. Every text is set as text (never
// as HTML). The teacher also hides, pins, mutes and chooses Q&A or chat.
(() => {
  const $ = (id) => document.getElementById(id);
  if (!$('chat-list')) return;
  let es = null, url = null, me = '', teacher = false, lastId = 0, chatMode = false, retry = null, replayTimer = null;
  const items = new Map(); // message id → { li, from, text }
  const state = { get lastId() { return lastId; }, get chatMode() { return chatMode; }, muted: false,
    messages: () => [...items.entries()].map(([id, m]) => ({ id, from: m.from, text: m.text })) };
  window.classcast = Object.assign(window.classcast || {}, { chat: state });
  const say = (t) => { $('chat-state').textContent = t; };

  window.addEventListener('classcast-play', (e) => {
    clearInterval(replayTimer);
    $('chat-form').hidden = false;
    const { tok, user } = e.detail;
    me = user;
    teacher = !!e.detail.teacher;
    url = tok.hls_url.replace('/index.m3u8?', '/chat?');
    if (!teacher) $('chat-card').hidden = false;
    connect();
  });

  // A replay: the class's messages (`chat.json` beside the recording), each shown once the
  // video reaches the time it was sent (hls.js's playing date), and gone again on a seek back.
  window.addEventListener('classcast-replay', async (e) => {
    if (es) { es.close(); es = null; }
    clearInterval(replayTimer);
    items.clear();
    $('chat-list').textContent = '';
    $('chat-form').hidden = true;
    $('chat-mode').textContent = 'The class\'s messages, as they came during the class.';
    const j = await fetch(e.detail.tok.hls_url.replace('/index.m3u8?', '/chat.json?')).then((r) => r.json()).catch(() => null);
    const all = (j && j.messages) || [];
    $('chat-card').hidden = all.length === 0;
    replayTimer = setInterval(() => {
      const date = window.classcast.hls && window.classcast.hls.playingDate;
      if (!date) return;
      const now = date.getTime();
      for (const m of all) {
        const shown = items.has(m.id);
        if (m.at_ms <= now && !shown) add({ ...m, id: m.id });
        else if (m.at_ms > now && shown) { items.get(m.id).li.remove(); items.delete(m.id); }
      }
    }, 250);
  });

  function connect() {
    clearTimeout(retry);
    if (es) es.close();
    es = new EventSource(url + '&after=' + lastId);
    es.onmessage = (m) => handle(JSON.parse(m.data));
    // EventSource retries a dropped stream itself, but not a refusal (the class not live yet).
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) retry = setTimeout(connect, 2000); };
  }

  function handle(e) {
    if (e.id <= lastId) return;
    lastId = e.id;
    if (e.type === 'message') add(e);
    else if (e.type === 'hide') { const m = items.get(e.message); if (m) { m.li.remove(); items.delete(e.message); } }
    else if (e.type === 'pin') {
      const m = e.message && items.get(e.message);
      $('chat-pinned').hidden = !m;
      $('chat-pinned').textContent = m ? `📌 ${m.from}: ${m.text}` : '';
    } else if (e.type === 'mute' && e.name === me && !teacher) {
      state.muted = true;
      say('The teacher has muted you for this class.');
      $('chat-form').querySelector('button').disabled = true;
    } else if (e.type === 'mode') {
      chatMode = e.chat;
      if ($('chat-mode')) $('chat-mode').textContent = chatMode
        ? 'Everyone in the class sees the messages.'
        : 'Your questions go to the teacher; the class sees the teacher\'s answers.';
      if ($('qa-mode')) $('qa-mode').value = chatMode ? 'chat' : 'qa';
    }
  }

  function add(e) {
    const li = document.createElement('li');
    li.dataset.id = e.id;
    if (e.teacher) li.className = 'teacher';
    const from = document.createElement('span');
    from.className = 'from';
    from.textContent = e.teacher ? 'Teacher' : e.from;
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = e.text;
    li.append(from, text);
    if (teacher && !e.teacher) {
      for (const [label, body] of [['Hide', { hide: e.id }], ['Pin', { pin: e.id }], ['Mute', { mute: e.from }]]) {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'secondary';
        b.textContent = label;
        b.dataset.action = label.toLowerCase();
        b.addEventListener('click', () => moderate(body));
        li.append(b);
      }
    }
    items.set(e.id, { li, from: e.teacher ? 'Teacher' : e.from, text: e.text });
    $('chat-list').append(li);
    li.scrollIntoView({ block: 'nearest' });
  }

  async function moderate(body) {
    const r = await fetch(url.replace('/chat?', '/chat/moderate?'), {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }).catch(() => null);
    if (!r || !r.ok) say('Not done: ' + (r ? (await r.json().catch(() => ({}))).message || r.status : 'no answer'));
  }

  $('chat-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = $('chat-text');
    const text = input.value.trim();
    if (!text || !url) return;
    const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text }) }).catch(() => null);
    if (r && r.status === 201) { input.value = ''; say(''); return; }
    const j = r ? await r.json().catch(() => ({})) : {};
    if (r && r.status === 429) say(`Slow down: you can send again in ${r.headers.get('retry-after') || 'a few'} s.`);
    else if (r && r.status === 403 && j.error === 'muted') { state.muted = true; say('The teacher has muted you for this class.'); }
    else say('Not sent: ' + (j.message || (r ? 'error ' + r.status : 'no answer')));
  });

  const mode = $('qa-mode');
  if (mode) mode.addEventListener('change', () => moderate({ mode: mode.value }));
})();
