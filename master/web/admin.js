// Admin page: the cluster as the master sees it, refreshed every 2 s.
(() => {
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  const rate = (b) => b > 1e6 ? (b / 1e6).toFixed(1) + ' MB/s' : (b / 1e3).toFixed(0) + ' kB/s';
  async function refresh() {
    try {
      const [n, s] = await Promise.all([fetch('/cluster/nodes').then((r) => r.json()), fetch('/cluster/streams').then((r) => r.json())]);
      $('t-nodes').textContent = n.total_nodes;
      $('t-healthy').textContent = n.healthy_nodes;
      $('t-conns').textContent = n.total_connections;
      $('t-cap').textContent = n.total_capacity;
      $('t-util').textContent = n.utilization.toFixed(1) + ' %';
      document.querySelector('#nodes tbody').innerHTML = n.nodes.map((x) => `
        <tr data-node="${esc(x.node_id)}">
          <td>${esc(x.node_name)}<br><span class="muted">${esc(x.public_url)}</span></td>
          <td><span class="badge ${esc(x.status)}">${esc(x.status)}</span></td>
          <td class="conns">${x.current_connections} / ${x.max_connections}</td>
          <td class="webrtc">${x.webrtc ? `${x.webrtc.sessions} / ${x.webrtc.capacity}` : 'off'}</td>
          <td class="load">${x.load_percentage.toFixed(1)} %</td>
          <td class="hide-narrow">${x.cpu_usage.toFixed(0)} %</td>
          <td class="hide-narrow">${x.memory_usage.toFixed(0)} %</td>
          <td class="hide-narrow">${rate(x.egress_bytes_per_sec)}</td>
          <td class="hide-narrow">${x.heartbeat_age_secs.toFixed(1)} s ago</td>
        </tr>`).join('');
      document.querySelector('#streams tbody').innerHTML = s.streams.map((x) => `
        <tr data-path="${esc(x.path)}"><td>${esc(x.path)}</td><td>${esc(x.origin)}</td><td class="publisher">${esc((x.publisher || '–').toUpperCase())}</td><td>${x.serving.map(esc).join(', ')}</td></tr>`).join('')
        || '<tr><td colspan="4" class="muted">No live stream.</td></tr>';
      $('updated').textContent = 'Updated ' + new Date().toLocaleTimeString() + '.';
    } catch (e) {
      $('updated').textContent = 'Cannot reach the master: ' + e.message;
    }
  }
  refresh();
  setInterval(refresh, 2000);
})();
