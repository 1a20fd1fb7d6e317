// FractOS dashboard page: renders each Snapshot (dashboard/collector.ts) that arrives over
// SSE (/api/events). Every text from the cluster (Process names, errors) goes through
// textContent: a Process names itself and may be hostile.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const MAX_PER_COLUMN = 40;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function sv(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function rate(x) {
  if (x >= 1e9) return (x / 1e9).toFixed(2) + ' G';
  if (x >= 1e6) return (x / 1e6).toFixed(2) + ' M';
  if (x >= 1e3) return (x / 1e3).toFixed(1) + ' k';
  return x.toFixed(x < 10 && x > 0 ? 1 : 0);
}

function renderNodes(s) {
  const box = document.getElementById('nodes');
  box.replaceChildren();
  for (const n of s.nodes) {
    const d = el('div', { class: 'node', 'data-node': n.id, 'data-up': n.up, 'data-testid': `node-${n.id || n.address}` });
    const head = el('div');
    head.append(el('strong', {}, n.id ? `controller ${n.id}` : n.address), ' ');
    head.append(el('span', { class: 'state' }, n.up ? 'up' : 'down'), ' ');
    if (n.id && n.address) head.append(el('span', { class: 'counts' }, `epoch ${n.epoch} · ${n.address}`));
    d.append(head);
    if (n.error) d.append(el('div', { class: 'err' }, n.error));
    if (!n.up && n.lastSeen) d.append(el('div', { class: 'err' }, `last seen ${new Date(n.lastSeen).toLocaleTimeString()}; counts below are from then`));
    if (n.address !== null) {
      d.append(el('div', { class: 'counts' }, `${n.processes.length} processes · ${n.objects} objects · ${n.caps} caps · ${n.proxies} proxies · ${n.names} names` + (n.peers.length ? ` · peers ${n.peers.join(', ')}` : '')));
      if (n.processes.length) {
        const t = el('table');
        const hr = el('tr');
        for (const h of ['id', 'name', 'pid', 'objects', 'caps', 'frames/s', 'bytes/s']) hr.append(el('th', { class: h === 'name' ? '' : 'n' }, h));
        t.append(hr);
        for (const p of n.processes) {
          const r = el('tr', { 'data-process': `${n.id}:${p.id}` });
          r.append(el('td', { class: 'n' }, p.id), el('td', {}, p.name), el('td', { class: 'n' }, p.pid || '—'), el('td', { class: 'n' }, p.objects), el('td', { class: 'n' }, p.caps), el('td', { class: 'n' }, rate(p.framesPerSec)), el('td', { class: 'n' }, rate(p.bytesPerSec)));
          t.append(r);
        }
        d.append(t);
        if (n.lostInvocations) d.append(el('div', { class: 'err', 'data-lost': n.lostInvocations }, `${n.lostInvocations} invocations were overwritten in its ring before they were read: the graph undercounts`));
        if (n.procsTruncated) d.append(el('div', { class: 'err' }, 'more Processes than one INTROSPECT lists'));
      }
    }
    box.append(d);
  }
}

function renderLinks(s) {
  const body = document.querySelector('#links tbody');
  body.replaceChildren();
  for (const l of s.links) {
    const r = el('tr', { 'data-link': `${Math.min(l.from, l.to)}-${Math.max(l.from, l.to)}`, 'data-up': l.up });
    r.append(
      el('td', {}, `${l.from} ↔ ${l.to}`), el('td', {}, l.up ? 'up' : 'down'),
      el('td', { class: 'n' }, rate(l.framesOutPerSec)), el('td', { class: 'n' }, rate(l.framesInPerSec)),
      el('td', { class: 'n' }, rate(l.bytesOutPerSec) + 'B'), el('td', { class: 'n' }, rate(l.bytesInPerSec) + 'B'),
      el('td', { class: 'n' }, count(l.framesOut + l.framesIn)), el('td', { class: 'n' }, (l.bytesOut + l.bytesIn >= 1e4 ? rate(l.bytesOut + l.bytesIn) : l.bytesOut + l.bytesIn) + ' B'),
    );
    body.append(r);
  }
  if (!s.links.length) {
    const r = el('tr');
    r.append(el('td', { colspan: 8, class: 'counts' }, 'no Controller links'));
    body.append(r);
  }
}

function count(x) {
  return x >= 1e4 ? rate(x) : String(x);
}

function endKey(e) {
  return e.process ? `${e.controller}:${e.process}` : e.object !== undefined ? `${e.controller}:o${e.object}` : `${e.controller}:ctl`;
}

function renderGraph(s) {
  const svg = document.getElementById('graph-svg');
  svg.replaceChildren();
  document.getElementById('window').textContent = `(last ${Math.round(s.windowMs / 1000)} s)`;
  const W = svg.clientWidth || 700;
  const H = svg.clientHeight || 460;
  const defs = sv('defs');
  const marker = sv('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerUnits: 'userSpaceOnUse', markerWidth: 10, markerHeight: 10, orient: 'auto-start-reverse' });
  marker.append(sv('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#0969da' }));
  defs.append(marker);
  svg.append(defs);

  // Columns: one per Controller (nodes and edge ends), ordered by id.
  const cols = new Map();
  const up = new Map();
  const col = (c) => {
    if (!cols.has(c)) cols.set(c, new Map());
    return cols.get(c);
  };
  for (const n of s.nodes) {
    if (!n.id) continue;
    up.set(n.id, n.up);
    const m = col(n.id);
    for (const p of n.processes) m.set(`${n.id}:${p.id}`, { label: `${p.name} (${p.id})` });
  }
  for (const e of s.edges) {
    for (const end of [e.from, e.to]) {
      const m = col(end.controller);
      const k = endKey(end);
      if (!m.has(k)) m.set(k, { label: end.process ? `process ${end.process}` : end.object !== undefined ? `object ${end.object}` : `controller ${end.controller}` });
    }
  }
  const ids = [...cols.keys()].sort((a, b) => a - b);
  const pos = new Map();
  ids.forEach((c, ci) => {
    const x = ((ci + 0.5) * W) / ids.length;
    const label = sv('text', { x, y: 16, 'text-anchor': 'middle', class: 'ctl-label', 'data-up': up.get(c) !== false }, `controller ${c}${up.get(c) === false ? ' (down)' : ''}`);
    svg.append(label);
    const entries = [...cols.get(c).entries()].slice(0, MAX_PER_COLUMN);
    entries.forEach(([k, v], i) => {
      const y = 40 + ((i + 0.5) * (H - 50)) / Math.max(entries.length, 1);
      pos.set(k, { x, y, label: v.label, up: up.get(c) !== false });
    });
  });

  const maxCount = Math.max(1, ...s.edges.map((e) => e.count));
  const gEdges = sv('g');
  for (const e of s.edges) {
    const a = pos.get(endKey(e.from));
    const b = pos.get(endKey(e.to));
    if (!a || !b) continue;
    const width = 1 + 4 * Math.log1p(e.count) / Math.log1p(maxCount);
    let d;
    let lx;
    let ly;
    if (a === b) {
      d = `M ${a.x + 10} ${a.y - 4} C ${a.x + 60} ${a.y - 40}, ${a.x + 60} ${a.y + 40}, ${a.x + 12} ${a.y + 5}`;
      lx = a.x + 50;
      ly = a.y;
    } else {
      const dx = b.x - a.x;
      const dy = b.y - a.y;
      const len = Math.hypot(dx, dy) || 1;
      const ux = dx / len;
      const uy = dy / len;
      const sx = a.x + ux * 12;
      const sy = a.y + uy * 12;
      const tx = b.x - ux * 13;
      const ty = b.y - uy * 13;
      const cx = (sx + tx) / 2 - uy * 30;
      const cy = (sy + ty) / 2 + ux * 30;
      d = `M ${sx} ${sy} Q ${cx} ${cy} ${tx} ${ty}`;
      lx = cx;
      ly = cy;
    }
    const g = sv('g', { 'data-edge': `${endKey(e.from)}->${endKey(e.to)}`, 'data-count': e.count });
    const path = sv('path', { d, class: 'edge', 'stroke-width': width.toFixed(1), 'marker-end': 'url(#arrow)' });
    path.append(sv('title', {}, `${a.label} → ${b.label}: ${e.count} invocations, last ${(e.lastAgeMs / 1000).toFixed(1)} s ago`));
    g.append(path, sv('text', { x: lx, y: ly, class: 'edge-label', 'text-anchor': 'middle' }, e.count));
    gEdges.append(g);
  }
  svg.append(gEdges);
  for (const [k, p] of pos) {
    const g = sv('g', { class: 'pnode', 'data-end': k, 'data-up': p.up });
    g.append(sv('circle', { cx: p.x, cy: p.y, r: 10 }));
    g.append(sv('text', { x: p.x + 14, y: p.y + 4 }, p.label));
    svg.append(g);
  }
}

function render(s) {
  renderNodes(s);
  renderLinks(s);
  renderGraph(s);
  document.getElementById('time').textContent = new Date(s.time).toLocaleTimeString();
  document.body.dataset.snapshotTime = String(s.time);
}

const conn = document.getElementById('conn');
const es = new EventSource('/api/events');
es.addEventListener('snapshot', (ev) => {
  conn.dataset.state = 'live';
  conn.textContent = 'live';
  render(JSON.parse(ev.data));
});
es.onerror = () => {
  conn.dataset.state = 'lost';
  conn.textContent = 'dashboard server unreachable; retrying';
};
