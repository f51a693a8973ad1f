// l4lb console: reads GET /v1/console once a second and has render.js draw
// it; asks for the admin token where the API has one; makes the changes the
// operator confirms.
'use strict';

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
const TOKEN_KEY = 'l4lb-console-token';
const THEME_KEY = 'l4lb-console-theme';

const app = {
  auth: 'none',          // what the API asks for changes: "token" or "none"
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  snap: null,
  rows: new Map(),        // target rows by "group\u0000address"
  groups: new Map(),      // group blocks by name
  lastEvent: 0,
  timer: 0,
  confirmAction: null,
};

// ---- the admin API ----

async function call(method, path, body) {
  const headers = {};
  if (app.token) headers.Authorization = 'Bearer ' + app.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await r.json(); } catch (_) { /* no JSON body */ }
  if (!r.ok) {
    const e = new Error((data && data.error) || (r.status + ' ' + r.statusText));
    e.status = r.status;
    throw e;
  }
  return data;
}

async function poll() {
  clearTimeout(app.timer);
  try {
    const s = await call('GET', '/v1/console');
    app.snap = s;
    const t0 = performance.now();
    render(s);
    // How long a whole update took, for whoever wants to know (the test
    // with hundreds of targets reads it).
    document.documentElement.dataset.renderMs = (performance.now() - t0).toFixed(1);
    document.documentElement.dataset.renderedAt = s.time;
    live(true);
  } catch (e) {
    if (e.status === 401) {
      live(false, 'token needed');
      askToken(app.token ? 'The token was refused: ' + e.message : '');
      return; // the token dialog starts polling again
    }
    live(false, e.message);
  }
  app.timer = setTimeout(poll, POLL_MS);
}

function live(ok, why) {
  const p = $('live');
  if (ok) {
    p.className = 'pill pill-live';
    setText(p, 'live');
    p.title = 'Updated ' + new Date().toLocaleTimeString([], { hour12: false });
  } else {
    p.className = 'pill pill-stale';
    setText(p, 'stale');
    p.title = why || '';
  }
}

// ---- changes, each with a confirmation ----

function confirmBox(title, text, ok, action, weight) {
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = ok;
  $('confirm-ok').className = 'btn ' + (ok === 'Deregister' ? 'btn-danger' : 'btn-primary');
  $('weight-field').hidden = weight === undefined;
  if (weight !== undefined) $('weight-input').value = weight;
  app.confirmAction = action;
  $('confirm').showModal();
  if (weight !== undefined) $('weight-input').focus();
}

function confirmDeregister(group, t) {
  confirmBox('Deregister ' + t.address + '?',
    'New flows stop reaching it at once; its flows drain for the group\'s deregistration delay, then it leaves ' + group + '.',
    'Deregister', () => change('DELETE', '/v1/target-groups/' + encodeURIComponent(group) + '/targets/' + encodeURIComponent(t.address), undefined,
      t.address + ' is draining'));
}

function registration(t, weight) {
  const body = { address: t.address, weight };
  if (t.zone) body.zone = t.zone;
  if (t.quic_server_id) body.quic_server_id = t.quic_server_id;
  return body;
}

function confirmRegister(group, t) {
  confirmBox('Register ' + t.address + ' again?',
    'It stops draining and takes new flows in ' + group + ' once it passes its health checks.',
    'Register', () => change('POST', '/v1/target-groups/' + encodeURIComponent(group) + '/targets', registration(t, t.weight),
      t.address + ' is registered again'));
}

function confirmWeight(group, t) {
  confirmBox('Change the weight of ' + t.address,
    'Its share of new flows in ' + group + ' follows its weight; established flows keep their targets.',
    'Set weight', () => {
      const w = Number($('weight-input').value);
      if (!Number.isInteger(w) || w < 1 || w > 1000) {
        toast('The weight must be a whole number from 1 to 1000', true);
        return;
      }
      return change('POST', '/v1/target-groups/' + encodeURIComponent(group) + '/targets', registration(t, w),
        t.address + ' has weight ' + w);
    }, t.weight);
}

async function change(method, path, body, done) {
  try {
    await call(method, path, body);
    toast(done);
  } catch (e) {
    toast('Refused: ' + e.message, true);
  }
  poll();
}

// ---- token, theme, wiring ----

function askToken(err) {
  $('token-error').hidden = !err;
  $('token-error').textContent = err || '';
  $('token-input').value = '';
  if (!$('token-dialog').open) $('token-dialog').showModal();
  $('token-input').focus();
}

function useToken() {
  const v = $('token-input').value.trim();
  if (!v) return;
  app.token = v;
  sessionStorage.setItem(TOKEN_KEY, v);
  $('banner').hidden = true;
  $('token-dialog').close();
  poll();
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  setText($('theme-btn'), theme === 'dark' ? 'light' : 'dark');
}

async function start() {
  const saved = localStorage.getItem(THEME_KEY);
  applyTheme(saved || (matchMedia('(prefers-color-scheme: light)').matches ? 'light' : 'dark'));
  $('theme-btn').addEventListener('click', () => {
    const next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
    localStorage.setItem(THEME_KEY, next);
    applyTheme(next);
  });
  $('auth-btn').addEventListener('click', () => {
    if (app.token) {
      app.token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      app.rows.forEach((r) => { r.mode = ''; });
      poll();
      return;
    }
    askToken('');
  });
  // The form is never sent anywhere: submitting it (the button, or Enter)
  // only keeps the token in this tab.
  $('token-form').addEventListener('submit', (e) => { e.preventDefault(); useToken(); });
  $('token-cancel').addEventListener('click', () => $('token-dialog').close());
  $('confirm-cancel').addEventListener('click', () => $('confirm').close());
  $('confirm-ok').addEventListener('click', () => {
    const act = app.confirmAction;
    app.confirmAction = null;
    $('confirm').close();
    if (act) act();
  });
  $('filter').addEventListener('input', () => app.snap && renderGroups(app.snap.target_groups));
  $('only-bad').addEventListener('change', () => app.snap && renderGroups(app.snap.target_groups));
  try {
    const a = await call('GET', '/ui/auth');
    app.auth = a.auth;
  } catch (e) {
    live(false, e.message);
  }
  if (app.auth === 'token' && !app.token) {
    const b = $('banner');
    b.textContent = 'This admin API needs its token: the console reads nothing without it.';
    b.hidden = false;
    askToken('');
    return;
  }
  poll();
}

document.addEventListener('DOMContentLoaded', start);
