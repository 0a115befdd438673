// The dashboard page: plain DOM and SVG, no framework. Live data arrives as Server-Sent Events
// from /dashboard/events (read with fetch, so the admin token can travel in a header); traces
// and fault switches are fetched from the gateway's /traces and /debug routes.

const SERVICE_COLOURS = { gateway: '#4f7fe0', 'user-service': '#22a065', 'product-service': '#d08a00', 'order-service': '#9b55d6' };
const TOKEN_KEY = 'gatewayDashboardToken';
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY) ?? '';
let controls = false;
const tiles = new Map();

function authHeaders(extra = {}) {
  return token ? { ...extra, authorization: `Bearer ${token}` } : extra;
}

/** Makes an element; `text` is set as text, never parsed as HTML. */
function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

const fmtMs = (ms) => (ms === null || ms === undefined ? '–' : ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : Math.round(ms).toString());

function setConn(state, text) {
  const c = $('conn');
  c.dataset.conn = state;
  c.textContent = text;
}

// 401: no token or a wrong one; 403: a user's token, or (open mode without ADMIN_TOKEN) a browser on
// another machine, which an admin's token lets in.
function needToken() {
  setConn('error', 'admin token needed');
  $('auth').hidden = false;
}

$('auth').addEventListener('submit', (e) => {
  e.preventDefault();
  token = $('token').value;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('auth').hidden = true;
  connect();
  loadTraces();
});

// ---- live stream ----

let streamAbort;
async function connect() {
  streamAbort?.abort();
  const abort = new AbortController();
  streamAbort = abort;
  try {
    const res = await fetch('/dashboard/events', { headers: authHeaders({ accept: 'text/event-stream' }), signal: abort.signal, cache: 'no-store' });
    if (res.status === 401 || res.status === 403) return needToken();
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
    setConn('live', 'live');
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) !== -1) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
        if (data) render(JSON.parse(data));
      }
    }
  } catch {
    if (abort.signal.aborted) return;
  }
  if (abort.signal.aborted) return;
  setConn('error', 'reconnecting');
  setTimeout(connect, 2000);
}

// ---- service tiles ----

function sparkPoints(values, height, max) {
  const top = Math.max(max ?? Math.max(...values, 1), 1);
  return values.map((v, i) => `${i},${(height - (v / top) * (height - 1)).toFixed(1)}`).join(' ');
}

function makeTile(name) {
  const tile = el('article', { class: 'tile', 'data-service': name });
  const head = el('header');
  head.append(el('h3', {}, name), el('span', { class: 'state' }, '…'));
  const svg = svgEl('svg', { class: 'spark', viewBox: '0 0 119 40', preserveAspectRatio: 'none', 'aria-hidden': 'true' });
  const rate = svgEl('polyline', { class: 'rate' });
  const err = svgEl('polyline', { class: 'err' });
  svg.append(rate, err);
  const figures = el('div', { class: 'figures' });
  const fields = {};
  for (const [key, label] of [['rps', 'req/s'], ['errorPct', 'failed %'], ['p50', 'p50 ms'], ['p99', 'p99 ms'], ['rejected', 'refused'], ['stale', 'stale'], ['timeouts', 'timeouts'], ['probe', 'probe ms (now)']]) {
    const value = el('strong', { 'data-field': key }, '–');
    const fig = el('div', { class: 'fig' });
    fig.append(value, el('span', {}, label));
    figures.append(fig);
    fields[key] = value;
  }
  const faults = el('p', { class: 'faults-active muted' });
  // Every count is over the same ten seconds; "failed" counts refused and stale answers too.
  const caption = el('p', { class: 'muted small' }, 'last 10 s · failed %: 5xx, refused or stale · sparkline: 2 min');
  const instances = el('table', { class: 'instances' });
  const instHead = el('tr');
  for (const h of ['instance', 'state', 'in flight', 'req/s', 'failed %']) instHead.append(el('th', {}, h));
  const instBody = el('tbody');
  const thead = el('thead');
  thead.append(instHead);
  instances.append(thead, instBody);
  tile.append(head, svg, caption, figures, instances, faults);
  const box = el('div', { class: 'controls' });
  tile.append(box);
  $('tiles').append(tile);
  const t = { tile, state: head.querySelector('.state'), rate, err, fields, faults, box, instBody, controlsBuilt: false };
  tiles.set(name, t);
  return t;
}

function buildControls(t, name) {
  t.controlsBuilt = true;
  const circuit = el('div', { class: 'circuit-buttons' });
  circuit.append(el('span', { class: 'muted' }, 'circuit'));
  for (const action of ['open', 'close', 'reset']) {
    const b = el('button', { type: 'button', 'data-action': `circuit-${action}` }, action);
    b.addEventListener('click', () => post(`/debug/circuit/${name}/${action}`));
    circuit.append(b);
  }
  const form = el('form', { class: 'fault-form' });
  form.append(
    el('span', { class: 'muted' }, 'faults'),
    labelled('latency ms', el('input', { type: 'number', name: 'latencyMs', min: '0', max: '60000', step: '10', value: '0' })),
    labelled('errors', el('input', { type: 'number', name: 'errorRate', min: '0', max: '1', step: '0.05', value: '0' })),
    labelled('resets', el('input', { type: 'number', name: 'resetRate', min: '0', max: '1', step: '0.05', value: '0' })),
    labelled('down', el('input', { type: 'checkbox', name: 'down' })),
  );
  const apply = el('button', { type: 'submit', 'data-action': 'faults-apply' }, 'switch on');
  const clear = el('button', { type: 'button', 'data-action': 'faults-clear' }, 'all off');
  form.append(apply, clear);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const body = {};
    for (const key of ['latencyMs', 'errorRate', 'resetRate']) {
      const v = Number(f.get(key));
      if (v > 0) body[key] = v;
    }
    if (f.get('down')) body.down = true;
    post(`/debug/faults/${name}`, body).then(loadFaults);
  });
  clear.addEventListener('click', () => {
    form.reset();
    post(`/debug/faults/${name}`, {}).then(loadFaults);
  });
  t.box.append(circuit, form);
}

function labelled(text, input) {
  const l = el('label', {}, `${text} `);
  l.append(input);
  return l;
}

async function post(path, body) {
  const init = { method: 'POST', headers: authHeaders(body === undefined ? {} : { 'content-type': 'application/json' }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  if (res.status === 401 || res.status === 403) needToken();
  else if (!res.ok) {
    const answer = await res.json().catch(() => ({}));
    setConn('error', `${path}: ${answer.error ?? res.status}`);
  }
}

function renderInstances(body, instances) {
  const rows = instances.map((i) => {
    const row = el('tr', { 'data-instance': i.instance, 'data-state': i.state });
    const failed = el('td', {}, i.errorPct.toFixed(1));
    failed.classList.toggle('bad', i.errorPct > 0);
    row.append(el('td', {}, i.instance), el('td', { class: 'inst-state' }, i.state), el('td', {}, String(i.outstanding)), el('td', {}, i.rps.toFixed(1)), failed);
    return row;
  });
  body.replaceChildren(...rows);
}

function render(s) {
  controls = s.controls;
  $('clock').textContent = new Date(s.time).toLocaleTimeString();
  for (const svc of s.services) {
    const t = tiles.get(svc.name) ?? makeTile(svc.name);
    if (controls && !t.controlsBuilt) buildControls(t, svc.name);
    t.tile.dataset.state = svc.state;
    t.state.textContent = svc.state;
    const max = Math.max(...svc.spark, 1);
    t.rate.setAttribute('points', sparkPoints(svc.spark, 40, max));
    t.err.setAttribute('points', sparkPoints(svc.errorSpark, 40, max));
    t.fields.rps.textContent = svc.rps.toFixed(1);
    t.fields.errorPct.textContent = svc.errorPct.toFixed(1);
    t.fields.errorPct.classList.toggle('bad', svc.errorPct > 0);
    t.fields.p50.textContent = fmtMs(svc.p50);
    t.fields.p99.textContent = fmtMs(svc.p99);
    t.fields.rejected.textContent = String(svc.rejected);
    t.fields.stale.textContent = String(svc.stale);
    t.fields.timeouts.textContent = String(svc.timeouts);
    t.fields.probe.textContent = svc.probe ? (svc.probe.ok ? fmtMs(svc.probe.latencyMs) : `failed (${svc.probe.failure ?? 'error'})`) : '–';
    t.fields.probe.classList.toggle('bad', svc.probe ? !svc.probe.ok : false);
    renderInstances(t.instBody, svc.instances);
  }
  const rl = s.rateLimit;
  $('limited-rate').textContent = rl.limitedPerSecond.toFixed(1);
  $('limit-policy').textContent = `(limit ${rl.limit} per ${Math.round(rl.windowMs / 1000)} s per client)`;
  $('limited-spark').querySelector('polyline').setAttribute('points', sparkPoints(rl.spark, 30));
  const rows = rl.topClients.map((c) => {
    const tr = el('tr');
    tr.append(el('td', {}, c.client), el('td', {}, String(c.hits)));
    return tr;
  });
  if (!rows.length) {
    const none = el('tr');
    none.append(el('td', { colspan: '2', class: 'muted' }, controls ? 'no requests in this window' : 'shown where the debug routes are allowed'));
    rows.push(none);
  }
  $('top-clients').replaceChildren(...rows);
}

// ---- fault switches ----

async function loadFaults() {
  if (!controls) return;
  const res = await fetch('/debug/faults', { headers: authHeaders() }).catch(() => undefined);
  if (!res?.ok) return;
  const { services } = await res.json();
  for (const s of services) {
    const t = tiles.get(s.service);
    if (!t) continue;
    const f = s.faults;
    const on = f && f.expiresAt ? [f.down && 'down', f.errorRate && `errors ${Math.round(f.errorRate * 100)} %`, f.resetRate && `resets ${Math.round(f.resetRate * 100)} %`, f.latencyMs && `+${f.latencyMs} ms`].filter(Boolean) : [];
    t.faults.textContent = f === null ? 'fault switches: unreachable' : on.length ? `faults on: ${on.join(', ')} (until ${new Date(f.expiresAt).toLocaleTimeString()})` : '';
    t.tile.classList.toggle('faulted', on.length > 0);
    if (on.length) nextFaultsCheck = Math.min(nextFaultsCheck, Date.parse(f.expiresAt) + 1000);
  }
}
// Each fetch of /debug/faults is a trace of its own: ask after a change, when a switch expires,
// and otherwise every 30 s (for switches set elsewhere), not on every update.
let nextFaultsCheck = 0;
setInterval(() => {
  if (!controls || Date.now() < nextFaultsCheck || document.visibilityState !== 'visible') return;
  nextFaultsCheck = Date.now() + 30_000;
  loadFaults();
}, 1000);

// ---- traces ----

let tracesLoading = false;
async function loadTraces() {
  if (tracesLoading) return;
  tracesLoading = true;
  try {
    const f = new FormData($('trace-filters'));
    const q = new URLSearchParams({ limit: '30' });
    if (f.get('service')) q.set('service', String(f.get('service')));
    if (f.get('errors')) q.set('status', 'error');
    const min = Number(f.get('minDurationMs'));
    if (min > 0) q.set('minDurationMs', String(Math.floor(min)));
    const res = await fetch(`/traces?${q}`, { headers: authHeaders() });
    if (res.status === 401 || res.status === 403) return needToken();
    if (!res.ok) return;
    const { traces } = await res.json();
    $('trace-rows').replaceChildren(...traces.map(traceRow));
  } catch {
    // The next refresh tries again.
  } finally {
    tracesLoading = false;
  }
}

function traceRow(t) {
  const tr = el('tr', { class: `trace-row ${t.status}`, 'data-trace-id': t.traceId, tabindex: '0' });
  const services = el('td');
  for (const s of t.services) services.append(chip(s));
  tr.append(
    el('td', {}, new Date(t.startTime).toLocaleTimeString()),
    el('td', { class: 'request' }, t.method && t.path ? `${t.method} ${t.path}` : t.name),
    el('td', {}, t.httpStatus === undefined ? (t.status === 'error' ? 'error' : '') : String(t.httpStatus)),
    el('td', { class: 'num' }, fmtMs(t.durationMs)),
    services,
    el('td', { class: 'num' }, String(t.spanCount)),
  );
  const open = () => openTrace(t.traceId);
  tr.addEventListener('click', open);
  tr.addEventListener('keydown', (e) => e.key === 'Enter' && open());
  return tr;
}

function chip(service) {
  const c = el('span', { class: 'chip' }, service);
  c.style.background = SERVICE_COLOURS[service] ?? '#888';
  return c;
}

async function openTrace(id) {
  const res = await fetch(`/traces/${encodeURIComponent(id)}`, { headers: authHeaders() });
  if (!res.ok) return;
  const trace = await res.json();
  drawWaterfall(trace);
}

function drawWaterfall({ traceId, spans, meta }) {
  const t0 = Math.min(...spans.map((s) => s.startMs));
  const t1 = Math.max(...spans.map((s) => s.startMs + s.durationMs));
  const total = Math.max(t1 - t0, 0.001);
  const ids = new Set(spans.map((s) => s.spanId));
  const children = new Map();
  for (const s of spans) {
    const parent = s.parentSpanId && ids.has(s.parentSpanId) ? s.parentSpanId : '';
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(s);
  }
  const ordered = [];
  const walk = (parent, depth) => {
    for (const s of (children.get(parent) ?? []).sort((a, b) => a.startMs - b.startMs)) {
      ordered.push([s, depth]);
      walk(s.spanId, depth + 1);
    }
  };
  walk('', 0);
  $('wf-id').textContent = traceId;
  $('wf-meta').textContent = `${spans.length} spans · ${fmtMs(total)} ms${meta.complete ? '' : ` · missing: ${meta.unavailable.join(', ')}`}`;
  const axis = [];
  for (let i = 0; i <= 4; i++) {
    const tick = el('span', { class: 'tick' }, `${fmtMs((total * i) / 4)} ms`);
    tick.style.left = `${i * 25}%`;
    axis.push(tick);
  }
  $('wf-axis').replaceChildren(...axis);
  $('wf-rows').replaceChildren(...ordered.map(([s, depth]) => spanRow(s, depth, t0, total)));
  $('waterfall').hidden = false;
  $('waterfall').scrollIntoView({ block: 'nearest' });
}

function spanRow(s, depth, t0, total) {
  const row = el('div', { class: `span-row ${s.status}`, 'data-service': s.service, 'data-depth': String(depth) });
  const label = el('div', { class: 'label' }, `${s.status === 'error' ? '⚠ ' : ''}${s.name}`);
  label.style.paddingLeft = `${depth * 14 + 4}px`;
  label.prepend(chip(s.service));
  const track = el('div', { class: 'track' });
  const bar = el('div', { class: 'bar' });
  bar.style.left = `${((s.startMs - t0) / total) * 100}%`;
  bar.style.width = `${Math.max((s.durationMs / total) * 100, 0.4)}%`;
  bar.style.background = SERVICE_COLOURS[s.service] ?? '#888';
  const attrs = Object.entries(s.attributes).map(([k, v]) => `${k} = ${v}`);
  row.title = [`${s.service} · ${s.name} · ${s.kind}`, `${fmtMs(s.durationMs)} ms, ${s.status}`, ...attrs].join('\n');
  const lane = el('div', { class: 'lane' });
  lane.append(bar);
  track.append(lane, el('span', { class: 'dur' }, `${fmtMs(s.durationMs)} ms`));
  row.append(label, track);
  return row;
}

$('wf-close').addEventListener('click', () => {
  $('waterfall').hidden = true;
});
$('trace-filters').addEventListener('change', () => loadTraces());
$('trace-filters').addEventListener('submit', (e) => e.preventDefault());

setInterval(() => {
  if (document.visibilityState === 'visible' && !new FormData($('trace-filters')).get('paused')) loadTraces();
}, 5000);

connect();
loadTraces();
