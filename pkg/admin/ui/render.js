// l4lb console: drawing the snapshot. The tables are kept in step row by
// row (target rows by group and address), and only changed cells are
// written, so a page with hundreds of targets stays responsive and a
// filter or an open dialog survives the updates. Every value goes in as
// text (textContent), never as markup. console.js polls and acts.
'use strict';

// ---- small helpers ----

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function setText(e, text) {
  text = String(text);
  if (e.textContent !== text) e.textContent = text;
}

function fmtNum(n) {
  if (n === undefined || n === null) return '0';
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(1) + 'G';
  if (a >= 1e6) return (n / 1e6).toFixed(1) + 'M';
  if (a >= 1e4) return (n / 1e3).toFixed(1) + 'k';
  if (Number.isInteger(n)) return String(n);
  return a >= 100 ? n.toFixed(0) : n.toFixed(1);
}

function fmtBytes(n) {
  const u = ['B/s', 'kB/s', 'MB/s', 'GB/s'];
  let i = 0;
  n = n || 0;
  while (n >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + ' ' + u[i];
}

function fmtAgo(iso) {
  const t = Date.parse(iso);
  if (!t || t < 0) return '';
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return s + 's ago';
  if (s < 3600) return Math.floor(s / 60) + 'm ago';
  if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm ago';
  return Math.floor(s / 86400) + 'd ago';
}

function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? '' : d.toLocaleTimeString([], { hour12: false });
}

function byReason(m) {
  if (!m) return '';
  return Object.keys(m).sort().map((k) => k + ' ' + fmtNum(m[k])).join(', ');
}

function stateClass(state) {
  return 'state s-' + String(state).replace('.', '-');
}

function toast(msg, bad) {
  const t = $('toast');
  t.textContent = msg;
  t.className = 'toast' + (bad ? ' bad' : '');
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
}

// ---- rendering ----

function render(s) {
  renderNode(s);
  renderTiles(s);
  renderListeners(s.listeners);
  renderGroups(s.target_groups);
  renderZones(s.zones, s.target_groups);
  renderBGP(s.bgp);
  renderKernel(s.kernel);
  renderConfig(s);
  renderEvents(s.events);
  renderAuth();
}

function renderNode(s) {
  const c = s.config || {};
  const parts = [];
  if (c.version) parts.push(c.version);
  if (c.pid) parts.push('pid ' + c.pid);
  if (c.sha256) parts.push('config ' + c.sha256.slice(0, 12));
  if (c.loaded_at) parts.push('loaded ' + fmtAgo(c.loaded_at));
  setText($('node'), parts.join(' · '));
}

function renderTiles(s) {
  let targets = 0, healthy = 0, draining = 0, newFlows = 0, bytes = 0, flows = 0, rejects = 0;
  for (const g of s.target_groups) {
    for (const t of g.targets) {
      targets++;
      if (t.state === 'healthy') healthy++;
      if (t.state === 'draining' || t.state === 'unhealthy.draining') draining++;
    }
  }
  for (const l of s.listeners) {
    flows += l.active_flows || 0;
    newFlows += l.new_flows_per_second || 0;
    bytes += l.bytes_per_second || 0;
    rejects += l.rejects_per_second || 0;
  }
  const failOpen = s.target_groups.filter((g) => g.fail_open).length;
  const zonesDown = s.zones.filter((z) => !z.healthy).length;
  const tiles = [
    ['Targets healthy', healthy + ' / ' + targets, healthy < targets - draining],
    ['Draining', String(draining), false],
    ['Active flows', fmtNum(flows), false],
    ['New flows/s', fmtNum(newFlows), false],
    ['Traffic', fmtBytes(bytes), false],
    ['Rejects/s', fmtNum(rejects), rejects > 0],
    ['Zones unhealthy', String(zonesDown), zonesDown > 0],
    ['Groups failing open', String(failOpen), failOpen > 0],
  ];
  const box = $('tiles');
  while (box.children.length < tiles.length) {
    const t = el('div', 'tile');
    t.append(el('div', 'k'), el('div', 'v'));
    box.append(t);
  }
  tiles.forEach(([k, v, bad], i) => {
    const t = box.children[i];
    t.classList.toggle('bad', bad);
    setText(t.children[0], k);
    setText(t.children[1], v);
  });
}

// fillRows replaces a table body's rows with one per item, built by cells,
// reusing the rows there are (the tables other than the targets' are short).
function fillRows(tbody, items, cells) {
  while (tbody.rows.length > items.length) tbody.deleteRow(-1);
  items.forEach((item, i) => {
    const tr = tbody.rows[i] || tbody.insertRow();
    const vals = cells(item);
    while (tr.cells.length < vals.length) tr.insertCell();
    vals.forEach((v, j) => {
      const td = tr.cells[j];
      if (v instanceof Node) {
        if (td.firstChild !== v) td.replaceChildren(v);
      } else if (Array.isArray(v)) {
        td.replaceChildren(...v);
      } else {
        setText(td, v);
      }
    });
  });
}

function pathTag(a) {
  const s = el('span', 'tag tag-' + a.path, a.path);
  s.title = a.path === 'socket' ? 'carried by l4lb\'s sockets' : 'carried by the kernel path (' + a.path + ')';
  return s;
}

function renderListeners(ls) {
  const tb = $('listeners').tBodies[0];
  fillRows(tb, ls, (l) => {
    const addrs = l.addresses.map((a) => {
      const d = el('div', 'mono', (a.zone ? a.zone + ': ' : '') + a.address + ' ');
      d.append(pathTag(a));
      return d;
    });
    if (addrs.length === 0) addrs.push(el('span', 'muted', 'not bound'));
    return [l.name, l.protocol + ':' + l.port, addrs, (l.target_groups || []).join(', '),
      fmtNum(l.active_flows), fmtNum(l.new_flows_per_second), fmtBytes(l.bytes_per_second),
      fmtNum(l.rejects_per_second), byReason(l.rejects) || '—', byReason(l.resets) || '—'];
  });
  for (const tr of tb.rows) {
    for (const i of [4, 5, 6, 7]) tr.cells[i].className = 'num';
    tr.cells[2].className = 'wrap';
  }
}

function matches(g, t) {
  if ($('only-bad').checked && t.state === 'healthy') return false;
  const f = $('filter').value.trim().toLowerCase();
  if (!f) return true;
  return [g.name, t.address, t.zone, t.state, t.reason, t.description]
    .some((x) => x && String(x).toLowerCase().includes(f));
}

function groupBlock(g) {
  let b = app.groups.get(g.name);
  if (b) return b;
  const root = el('div', 'group');
  root.dataset.group = g.name;
  const head = el('div', 'group-head');
  const name = el('span', 'group-name', g.name);
  const proto = el('span', 'muted');
  const meter = el('div', 'meter');
  const fill = el('span');
  meter.append(fill);
  const count = el('span', 'muted');
  const badges = el('span');
  head.append(name, proto, meter, count, badges);
  const table = el('table', 'grid targets');
  const thead = table.createTHead().insertRow();
  for (const [h, num] of [['Target', 0], ['Zone', 0], ['Weight', 1], ['State', 0], ['Reason', 0],
    ['Flows', 1], ['New/s', 1], ['Trend', 0], ['Traffic', 1], ['Resets', 1], ['Connect errors', 1],
    ['Check', 1], ['', 0]]) {
    const th = el('th', num ? 'num' : '', h);
    thead.append(th);
  }
  if (thead.cells[7]) thead.cells[7].title = 'New flows per second, over the last minutes';
  const tbody = table.createTBody();
  root.append(head, table);
  b = { root, proto, fill, count, badges, tbody };
  app.groups.set(g.name, b);
  return b;
}

function sparkline(svg, points) {
  const w = 90, h = 18;
  const n = points.length;
  let line = svg.firstChild;
  if (!line) {
    line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    svg.append(line);
  }
  if (n < 2) { line.setAttribute('points', ''); return; }
  const max = Math.max(1, ...points);
  const step = w / (n - 1);
  const pts = points.map((v, i) => (i * step).toFixed(1) + ',' + (h - 1 - (v / max) * (h - 2)).toFixed(1));
  line.setAttribute('points', pts.join(' '));
  svg.lastTitle = 'max ' + fmtNum(max) + '/s';
}

function targetRow(key) {
  let r = app.rows.get(key);
  if (r) return r;
  const tr = el('tr');
  const cells = [];
  for (let i = 0; i < 13; i++) cells.push(tr.insertCell());
  for (const i of [2, 5, 6, 8, 9, 10, 11]) cells[i].className = 'num';
  cells[0].className = 'addr';
  const state = el('span');
  cells[3].append(state);
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', '0 0 90 18');
  svg.setAttribute('preserveAspectRatio', 'none');
  cells[7].append(svg);
  const acts = el('div', 'actions-cell');
  cells[12].append(acts);
  r = { tr, cells, state, svg, acts, mode: '' };
  app.rows.set(key, r);
  return r;
}

function renderActions(r, g, t) {
  const can = app.auth === 'token' && app.token !== '';
  const draining = t.state === 'draining' || t.state === 'unhealthy.draining';
  const mode = can ? (draining ? 'drain' : 'live') : 'ro';
  r.target = { group: g.name, t };
  if (r.mode === mode) return;
  r.mode = mode;
  r.acts.replaceChildren();
  if (!can) return;
  if (draining) {
    const b = el('button', 'btn btn-small', 'Register');
    b.dataset.action = 'register';
    b.title = 'Register it again: it takes new flows once it passes its health checks';
    b.addEventListener('click', () => confirmRegister(r.target.group, r.target.t));
    r.acts.append(b);
    return;
  }
  const w = el('button', 'btn btn-small', 'Weight');
  w.dataset.action = 'weight';
  w.addEventListener('click', () => confirmWeight(r.target.group, r.target.t));
  const d = el('button', 'btn btn-small', 'Deregister');
  d.dataset.action = 'deregister';
  d.addEventListener('click', () => confirmDeregister(r.target.group, r.target.t));
  r.acts.append(w, d);
}

function renderGroups(groups) {
  const box = $('groups');
  const seenGroups = new Set();
  const seenRows = new Set();
  groups.forEach((g, gi) => {
    seenGroups.add(g.name);
    const b = groupBlock(g);
    if (box.children[gi] !== b.root) box.insertBefore(b.root, box.children[gi] || null);
    const healthy = g.targets.filter((t) => t.state === 'healthy').length;
    setText(b.proto, g.protocol + (g.port ? ':' + g.port : '') + (g.listeners && g.listeners.length ? ' · ' + g.listeners.join(', ') : ''));
    b.fill.style.width = (g.targets.length ? (100 * healthy / g.targets.length) : 0) + '%';
    setText(b.count, healthy + ' of ' + g.targets.length + ' healthy');
    const badge = g.fail_open ? 'fail-open: routing to every target' : '';
    if (b.badges.textContent !== badge) {
      b.badges.replaceChildren();
      if (badge) b.badges.append(el('span', 'tag tag-bad', badge));
    }
    let i = 0;
    for (const t of g.targets) {
      const key = g.name + '\u0000' + t.address;
      if (!matches(g, t)) continue;
      seenRows.add(key);
      const r = targetRow(key);
      if (b.tbody.rows[i] !== r.tr) b.tbody.insertBefore(r.tr, b.tbody.rows[i] || null);
      i++;
      r.tr.dataset.target = t.address;
      r.tr.dataset.state = t.state;
      const c = r.cells;
      setText(c[0], t.address);
      setText(c[1], t.zone || '—');
      setText(c[2], t.weight);
      r.state.className = stateClass(t.state);
      setText(r.state, t.state);
      setText(c[4], t.reason || '');
      c[4].title = t.description || '';
      setText(c[5], fmtNum(t.active_flows));
      setText(c[6], fmtNum(t.new_flows_per_second));
      sparkline(r.svg, t.spark || []);
      c[7].title = r.svg.lastTitle || '';
      setText(c[8], fmtBytes(t.bytes_per_second));
      setText(c[9], fmtNum(t.resets));
      setText(c[10], fmtNum(t.connect_errors));
      setText(c[11], t.check_seconds ? (t.check_seconds * 1000).toFixed(1) + ' ms' : '—');
      renderActions(r, g, t);
    }
    while (b.tbody.rows.length > i) b.tbody.deleteRow(-1);
  });
  for (const [key, r] of app.rows) {
    if (!seenRows.has(key)) { r.tr.remove(); app.rows.delete(key); }
  }
  for (const [name, b] of app.groups) {
    if (!seenGroups.has(name)) { b.root.remove(); app.groups.delete(name); }
  }
}

function renderZones(zones, groups) {
  fillRows($('zones').tBodies[0], zones, (z) => {
    const h = el('span', 'tag ' + (z.healthy ? 'tag-ok' : 'tag-bad'), z.healthy ? 'healthy' : 'unhealthy');
    const shift = z.zonal_shift ? 'away until ' + fmtTime(z.zonal_shift.expires) : '—';
    // The groups with targets in the zone that route to every target,
    // healthy or not, because too few are healthy.
    const open = groups.filter((g) => g.fail_open && g.targets.some((t) => t.zone === z.name)).map((g) => g.name);
    return [z.name, (z.ips || []).join(', '), h, open.length ? el('span', 'tag tag-bad', open.join(', ')) : '—', shift];
  });
}

function renderBGP(b) {
  const box = $('bgp');
  if (!b) {
    if (box.dataset.mode !== 'none') {
      box.dataset.mode = 'none';
      box.replaceChildren(el('p', 'muted', 'No BGP speaker: the config has no bgp section.'));
    }
    return;
  }
  if (box.dataset.mode !== 'bgp') {
    box.dataset.mode = 'bgp';
    const info = el('p', 'muted');
    const peers = el('table', 'grid');
    peers.createTHead().insertRow().append(...['Peer', 'AS', 'BGP', 'Since', 'BFD', 'Detect'].map((h) => el('th', '', h)));
    peers.createTBody();
    const routes = el('table', 'grid');
    routes.createTHead().insertRow().append(...['Prefix', 'Zone', 'Route', 'Why'].map((h) => el('th', '', h)));
    routes.createTBody();
    box.replaceChildren(info, peers, el('h2', '', 'Routes'), routes);
  }
  const [info, peers, , routes] = box.children;
  setText(info, 'AS ' + b.local_as + ', router ID ' + b.router_id + (b.leaving ? ' · leaving: every route withdrawn' : ''));
  fillRows(peers.tBodies[0], b.peers || [], (p) => {
    const up = p.state === 'established';
    const bfd = p.bfd ? el('span', 'tag ' + (p.bfd.state === 'up' ? 'tag-ok' : 'tag-bad'), p.bfd.state) : '—';
    return [p.address, String(p.as), el('span', 'tag ' + (up ? 'tag-ok' : 'tag-bad'), p.state),
      p.since ? fmtAgo(p.since) : '', bfd, p.bfd ? p.bfd.detect_time_ms + ' ms' : ''];
  });
  fillRows(routes.tBodies[0], b.routes || [], (r) => [r.prefix, r.zone,
    el('span', 'tag ' + (r.announced ? 'tag-ok' : 'tag-warn'), r.announced ? 'announced' : 'withdrawn'), r.why]);
}

function renderKernel(ks) {
  fillRows($('kernel').tBodies[0], ks, (k) => [k.listener, k.name, fmtNum(k.value), fmtNum(k.per_second)]);
  for (const tr of $('kernel').tBodies[0].rows) { tr.cells[2].className = 'num'; tr.cells[3].className = 'num'; }
  $('kernel-none').hidden = ks.length > 0;
}

function renderConfig(s) {
  const c = s.config || {};
  const facts = [
    ['Version', c.version || ''], ['PID', c.pid ? String(c.pid) : ''],
    ['Config file', c.path || '(flags only)'], ['SHA-256', c.sha256 || ''],
    ['Loaded', c.loaded_at ? new Date(c.loaded_at).toLocaleString() + ' (' + fmtAgo(c.loaded_at) + ')' : ''],
  ];
  if (s.cluster) {
    facts.push(['Registry', s.cluster.backend + (s.cluster.prefix ? ' ' + s.cluster.prefix : '')]);
    if (s.cluster.applied_revision) facts.push(['Applied revision', String(s.cluster.applied_revision)]);
    facts.push(['Table hash', s.cluster.table_hash || '']);
  }
  facts.push(['Changes', app.auth === 'token' ? 'with the admin token' : 'none from here (the API has no token)']);
  const dl = $('config');
  while (dl.children.length > facts.length * 2) dl.lastChild.remove();
  facts.forEach(([k, v], i) => {
    if (!dl.children[2 * i]) dl.append(el('dt'), el('dd'));
    setText(dl.children[2 * i], k);
    setText(dl.children[2 * i + 1], v);
  });
}

function renderEvents(evs) {
  const tb = $('events').tBodies[0];
  const fresh = evs.filter((e) => e.seq > app.lastEvent);
  if (evs.length && evs[evs.length - 1].seq < app.lastEvent) {
    tb.replaceChildren(); // a new process: its own numbering
  }
  for (const e of (evs.length && evs[evs.length - 1].seq < app.lastEvent ? evs : fresh)) {
    const tr = tb.insertRow(0);
    tr.dataset.seq = e.seq;
    const t = tr.insertCell();
    t.textContent = fmtTime(e.time);
    t.title = e.time;
    const k = tr.insertCell();
    k.append(el('span', 'k-' + e.kind, e.kind));
    tr.insertCell().textContent = e.object;
    const d = tr.insertCell();
    d.className = 'wrap';
    d.textContent = e.detail || '';
  }
  if (evs.length) app.lastEvent = evs[evs.length - 1].seq;
  while (tb.rows.length > 200) tb.deleteRow(-1);
}

function renderAuth() {
  const b = $('auth-btn');
  if (app.auth !== 'token') {
    setText(b, 'read-only');
    b.title = 'The admin API has no token, so the console makes no changes. Give it one (admin.token_file) to deregister, register and weigh targets from here.';
    b.disabled = true;
    return;
  }
  b.disabled = false;
  setText(b, app.token ? 'forget token' : 'token');
  b.title = app.token ? 'Changes are on. Forget the token in this tab.' : 'Give the admin token';
}

