// The formstream console: a signed-in organisation's forms, flags, dead letters and slang, through the
// gateway's own /v1 routes (the session cookie authenticates them; requests but GET carry the
// session's CSRF token), and the Slang page through /console/api/slang (the gateway asks the slang search
// API as the organisation). Every value from the server is put in the page as text, never as HTML.
'use strict';

let session = null;
let refresh = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function main() { return document.getElementById('main'); }

function show(title, ...content) {
  document.title = `${title} · formstream console`;
  const m = main();
  m.replaceChildren(el('h1', {}, title), ...content.filter((c) => c !== null && c !== undefined && c !== false));
  m.focus({ preventScroll: true });
  for (const link of document.querySelectorAll('nav a')) {
    const here = location.hash.startsWith(link.getAttribute('href'));
    if (here) link.setAttribute('aria-current', 'page'); else link.removeAttribute('aria-current');
  }
}

async function api(method, path, body, extraHeaders) {
  const headers = Object.assign({ accept: 'application/json' }, extraHeaders || {});
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && session) headers['x-csrf-token'] = session.csrf_token;
  const response = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (response.status === 401 && path !== '/console/api/session') {
    session = null;
    signIn('Your session ended: sign in again.');
    throw new Error('signed out');
  }
  return { status: response.status, data };
}

function problems(result) {
  const p = result.data || {};
  const list = (p.errors || []).map((e) =>
    el('li', {}, el('code', {}, e.pointer || '/'), ` ${e.detail} `, el('span', { class: 'muted' }, `(${e.code})`)));
  return el('div', { class: 'problems', role: 'alert' },
    el('p', {}, `${p.title || 'Error'} (${result.status}): ${p.detail || ''}`),
    list.length ? el('ul', {}, list) : null);
}

function table(caption, headers, rows) {
  return el('div', { class: 'table' }, el('table', {},
    el('caption', {}, caption),
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: headers.length, class: 'muted' }, 'None.')))));
}

// --- Sign in ---------------------------------------------------------------------------------

function signIn(message) {
  stopRefresh();
  document.getElementById('nav').hidden = true;
  document.getElementById('who').replaceChildren();
  const error = el('div', { id: 'signin-error', role: 'alert' });
  const form = el('form', { class: 'signin', onsubmit: async (event) => {
    event.preventDefault();
    const key = form.querySelector('#api-key').value;
    const result = await api('POST', '/console/api/session', { api_key: key });
    if (result.status === 201) { session = result.data; signedIn(); }
    else error.replaceChildren(problems(result));
  } },
  el('label', { for: 'api-key' }, 'API key of your organisation'),
  el('input', { id: 'api-key', type: 'password', autocomplete: 'off', required: true, size: 40 }),
  el('p', { class: 'muted' }, 'The key is exchanged for a session; the browser does not keep it.'),
  el('button', { type: 'submit' }, 'Sign in'), error);
  show('Sign in', message ? el('p', { class: 'notice' }, message) : null, form);
  form.querySelector('#api-key').focus();
}

function signedIn() {
  document.getElementById('nav').hidden = false;
  document.getElementById('who').replaceChildren(
    el('span', {}, 'Organisation ', el('strong', { id: 'organisation' }, session.organisation)),
    el('button', { class: 'secondary', onclick: async () => {
      await api('DELETE', '/console/api/session');
      session = null;
      signIn('Signed out.');
    } }, 'Sign out'));
  if (!location.hash || location.hash === '#/') location.hash = '#/forms';
  else route();
}

// --- Forms -----------------------------------------------------------------------------------

async function formsPage() {
  const result = await api('GET', '/v1/forms');
  if (result.status !== 200) return show('Forms', problems(result));
  const rows = result.data.forms.map((f) => el('tr', {},
    el('td', {}, el('a', { href: `#/forms/${encodeURIComponent(f.id)}` }, f.title)),
    el('td', {}, el('code', {}, f.id)), el('td', {}, f.version), el('td', {}, f.rules.length),
    el('td', {}, actionsOf(f).join(', ') || '—'), el('td', {}, f.updated_at)));
  const template = {
    id: 'my-form', title: 'My form',
    questions: [{ key: 'income', text: 'Monthly income', type: 'number', required: true }],
    rules: [{ id: 'income-positive', expression: 'income >= 0', message: 'Income cannot be negative.', question_keys: ['income'] }],
  };
  const editor = el('textarea', { id: 'new-form-json', spellcheck: 'false' }, JSON.stringify(template, null, 2));
  const outcome = el('div', { id: 'new-form-outcome' });
  const create = el('form', { onsubmit: async (event) => {
    event.preventDefault();
    let body;
    try { body = JSON.parse(editor.value); } catch (e) {
      outcome.replaceChildren(el('div', { class: 'problems', role: 'alert' }, `Not JSON: ${e.message}`));
      return;
    }
    const created = await api('POST', '/v1/forms', body);
    if (created.status === 201) location.hash = `#/forms/${encodeURIComponent(created.data.id)}`;
    else outcome.replaceChildren(problems(created));
  } }, el('label', { for: 'new-form-json' }, 'A new form (JSON); problems are listed at their JSON pointers'), editor,
  el('div', { class: 'row' }, el('button', { type: 'submit' }, 'Create form')), outcome);
  show('Forms', table(`${result.data.forms.length} forms of ${session.organisation}`,
    ['Title', 'Id', 'Version', 'Rules', 'Actions', 'Updated'], rows),
  el('h2', {}, 'New form'), create);
}

function actionsOf(f) {
  const actions = [];
  if (f.rules.length) actions.push('rules');
  if (f.notify && (f.notify.sms_collector || f.notify.webhook_url)) actions.push('notify');
  if (f.receipt) actions.push('receipt');
  if (f.sheets) actions.push('sheets');
  if (f.slang) actions.push('slang');
  return actions;
}

function changes(before, after) {
  const out = [];
  for (const field of ['title', 'description', 'default_region']) {
    if (before[field] !== after[field]) out.push(`${field}: ${JSON.stringify(before[field] ?? null)} → ${JSON.stringify(after[field] ?? null)}`);
  }
  const byKey = (list, key) => new Map((list || []).map((x) => [x[key], JSON.stringify(x)]));
  for (const [what, key, list] of [['question', 'key', 'questions'], ['rule', 'id', 'rules']]) {
    const a = byKey(before[list], key); const b = byKey(after[list], key);
    for (const k of b.keys()) if (!a.has(k)) out.push(`${what} ${k} added`);
    for (const k of a.keys()) if (!b.has(k)) out.push(`${what} ${k} removed`);
    for (const [k, v] of b) if (a.has(k) && a.get(k) !== v) out.push(`${what} ${k} changed`);
  }
  for (const action of ['notify', 'receipt', 'slang', 'sheets', 'metadata']) {
    if (JSON.stringify(before[action] ?? null) !== JSON.stringify(after[action] ?? null)) out.push(`${action} changed`);
  }
  return out;
}

function editable(form) {
  const body = Object.assign({}, form);
  for (const field of ['organisation', 'version', 'created_at', 'updated_at']) delete body[field];
  return body;
}

async function formPage(id) {
  const path = `/v1/forms/${encodeURIComponent(id)}`;
  const current = await api('GET', path);
  if (current.status !== 200) return show('Form', problems(current));
  const form = current.data;
  const versions = [form];
  for (let v = form.version - 1; v >= 1; v--) {
    const older = await api('GET', `${path}?version=${v}`);
    if (older.status === 200) versions.push(older.data);
  }
  const history = versions.map((v, i) => {
    const previous = versions[i + 1];
    const list = previous ? changes(previous, v) : ['created'];
    return el('li', {}, el('strong', {}, `Version ${v.version}`), ` · ${v.updated_at}`,
      el('ul', { class: 'changes' }, (list.length ? list : ['no change']).map((c) => el('li', {}, c))));
  });
  const rules = form.rules.map((r) => el('tr', {}, el('td', {}, el('code', {}, r.id)),
    el('td', {}, el('code', {}, r.expression || '')), el('td', {}, r.message), el('td', {}, r.question_keys.join(', '))));
  const editor = el('textarea', { id: 'form-json', spellcheck: 'false' }, JSON.stringify(editable(form), null, 2));
  const outcome = el('div', { id: 'edit-outcome' });
  const publish = el('button', { type: 'submit' }, `Publish version ${form.version + 1}`);
  const edit = el('form', { onsubmit: async (event) => {
    event.preventDefault();
    let body;
    try { body = JSON.parse(editor.value); } catch (e) {
      outcome.replaceChildren(el('div', { class: 'problems', role: 'alert' }, `Not JSON: ${e.message}`));
      return;
    }
    const result = await api('PUT', path, body, { 'if-match': `"${form.version}"` });
    if (result.status === 200) { outcome.replaceChildren(el('p', { class: 'ok', role: 'status' }, `Published version ${result.data.version}.`)); formPage(id); }
    else outcome.replaceChildren(problems(result));
  } }, el('label', { for: 'form-json' }, 'The form (JSON); problems are listed at their JSON pointers'), editor,
  el('div', { class: 'row' }, publish), outcome);
  show(form.title,
    el('p', {}, el('code', {}, form.id), ` · version ${form.version} · `, el('a', { href: `#/flags/${encodeURIComponent(form.id)}` }, 'Flags')),
    el('h2', {}, 'Actions'),
    el('p', {}, actionsOf(form).map((a) => el('span', { class: 'pill' }, a)).flatMap((p) => [p, ' '])),
    table('Rules', ['Rule', 'Expression (CEL)', 'Message', 'Questions'], rules),
    form.receipt ? el('p', {}, 'Receipt to the answer of ', el('code', {}, form.receipt.phone_question)) : null,
    form.sheets ? el('p', {}, 'Sheets: ', form.sheets.spreadsheet_id ? el('code', {}, form.sheets.spreadsheet_id) : 'a spreadsheet the exporter creates') : null,
    form.slang ? el('p', {}, 'Slang: city from ', el('code', {}, form.slang.city_question), ', words from ', form.slang.text_questions.join(', ')) : null,
    el('h2', {}, 'Versions'), el('ol', { reversed: true, class: 'versions' }, history),
    el('h2', {}, 'Edit'), edit);
}

// --- Flags -----------------------------------------------------------------------------------

async function flagsPage(formId, status) {
  const forms = await api('GET', '/v1/forms');
  if (forms.status !== 200) return show('Flags', problems(forms));
  const list = forms.data.forms;
  if (!list.length) return show('Flags', el('p', {}, 'No forms yet.'));
  const id = formId || list[0].id;
  status = status || 'open';
  const go = () => { location.hash = `#/flags/${encodeURIComponent(pick.value)}/${state.value}`; };
  const pick = el('select', { id: 'flags-form', onchange: go },
    list.map((f) => el('option', { value: f.id, selected: f.id === id }, `${f.title} (${f.id})`)));
  const state = el('select', { id: 'flags-status', onchange: go },
    ['open', 'resolved'].map((s) => el('option', { value: s, selected: s === status }, s)));
  const body = el('div', { 'aria-live': 'polite' });
  show('Flags', el('div', { class: 'row' },
    el('div', {}, el('label', { for: 'flags-form' }, 'Form'), pick),
    el('div', {}, el('label', { for: 'flags-status' }, 'Status'), state)), body);
  const load = async () => {
    const result = await api('GET', `/v1/forms/${encodeURIComponent(id)}/flags?status=${status}&limit=200`);
    if (result.status !== 200) return body.replaceChildren(problems(result));
    const rows = result.data.items.map((f) => el('tr', { 'data-response': f.response_id },
      el('td', {}, el('code', {}, f.response_id)), el('td', {}, f.revision),
      el('td', {}, f.status === 'open' ? el('span', { class: 'bad' }, 'open') : el('span', { class: 'ok' }, 'resolved')),
      el('td', {}, f.collector_id),
      el('td', {}, el('ul', {}, f.violations.map((v) => el('li', {}, v.message, ' ', el('code', {}, v.rule_id), v.error ? el('span', { class: 'bad' }, ` (${v.error})`) : null)))),
      el('td', {}, f.flagged_at),
      el('td', {}, f.resolved_at ? `${f.resolved_at} by revision ${f.resolved_by_revision}` : el('code', { title: 'How the collector corrects it' }, `PUT /v1/forms/${id}/responses/${f.response_id}`))));
    body.replaceChildren(table(`${result.data.items.length} ${status} flags, updated ${new Date().toLocaleTimeString()}`,
      ['Response', 'Revision', 'Status', 'Collector', 'Violated rules', 'Flagged at', 'Resolved / correction'], rows));
  };
  await load();
  every(5000, load);
}

// --- Dead letters ----------------------------------------------------------------------------

async function deadLettersPage(processor) {
  const summary = await api('GET', '/v1/dead-letters');
  if (summary.status === 404 && summary.data && summary.data.type === '/problems/not-found') {
    return show('Dead letters', el('p', { class: 'notice', id: 'dead-letters-unavailable' },
      'The dead-letter routes (/v1/dead-letters) are not available on this gateway.'));
  }
  if (summary.status !== 200) return show('Dead letters', problems(summary));
  const counts = el('div', { 'aria-live': 'polite' });
  const countsOf = (data) => table(`Pending dead letters per processor, updated ${new Date().toLocaleTimeString()}`,
    ['Processor', 'Pending'], (data.processors || []).map((p) => el('tr', { 'data-processor': p.processor },
      el('td', {}, el('a', { href: `#/dead-letters/${encodeURIComponent(p.processor)}` }, p.processor)),
      el('td', { class: 'pending' }, p.pending))));
  counts.replaceChildren(countsOf(summary.data));
  const detail = el('div', { 'aria-live': 'polite' });
  show('Dead letters', el('p', { class: 'muted' }, 'Your organisation\'s dead letters; the counts update every 5 seconds.'), counts, detail);
  every(5000, async () => {
    const fresh = await api('GET', '/v1/dead-letters');
    if (fresh.status === 200) counts.replaceChildren(countsOf(fresh.data));
  });
  if (!processor) return;
  const base = `/v1/dead-letters/${encodeURIComponent(processor)}`;
  const list = await api('GET', `${base}?status=pending&limit=200`);
  if (list.status !== 200) return detail.replaceChildren(problems(list));
  const items = list.data.items || [];
  const outcome = el('div', { role: 'status' });
  const chosen = () => [...detail.querySelectorAll('input[name=dead-letter]:checked')].map((c) => c.value);
  const act = async (action, body) => {
    const result = await api('POST', `${base}/${action}`, body);
    if (result.status === 200) {
      outcome.replaceChildren(`${result.data.action}: ${result.data.done.length} done, ${result.data.skipped.length} skipped.`);
      setTimeout(() => deadLettersPage(processor), 500);
    } else outcome.replaceChildren(problems(result));
  };
  // Each column: its heading and where a dead letter's summary (GET /v1/dead-letters/{processor}) holds it.
  const columns = [
    ['Kind', (item) => item.error && item.error.kind],
    ['Form', (item) => item.record && item.record.form_id],
    ['Response', (item) => item.record && item.record.response_id],
    ['Error', (item) => item.error && item.error.message],
    ['Dead-lettered at', (item) => item.dead_lettered_at],
  ];
  const shown = el('pre', { id: 'dead-letter' }, 'Select a dead letter to see it.');
  const rowsOf = items.map((item) => el('tr', {},
    el('td', {}, el('input', { type: 'checkbox', name: 'dead-letter', value: item.id, 'aria-label': `Select ${item.id}` })),
    el('td', {}, el('button', { class: 'secondary', onclick: async () => {
      const full = await api('GET', `${base}/${encodeURIComponent(item.id)}`);
      shown.textContent = JSON.stringify(full.data, null, 2);
    } }, item.id)),
    columns.map(([, value]) => el('td', {}, value(item) == null ? '' : String(value(item))))));
  detail.replaceChildren(el('h2', {}, processor),
    table(`${items.length} pending`, ['', 'Id', ...columns.map(([heading]) => heading)], rowsOf),
    el('div', { class: 'row' },
      el('button', { onclick: () => act('redrive', { ids: chosen() }) }, 'Re-drive selected'),
      el('button', { class: 'secondary', onclick: () => act('discard', { ids: chosen() }) }, 'Discard selected'),
      el('button', { class: 'secondary', onclick: () => act('redrive', { filter: {} }) }, 'Re-drive all pending'),
      el('button', { class: 'secondary', onclick: () => deadLettersPage(processor) }, 'Refresh the list')),
    outcome, shown);
}

// --- Live ------------------------------------------------------------------------------------

const SVG = 'http://www.w3.org/2000/svg';

function sparkline(values, label) {
  const width = 160; const height = 32;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('width', width); svg.setAttribute('height', height);
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('role', 'img'); svg.setAttribute('aria-label', label);
  const max = Math.max(1, ...values);
  const points = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * (width - 2) + 1},${height - 1 - (v / max) * (height - 2)}`);
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', points.join(' '));
  line.setAttribute('fill', 'none'); line.setAttribute('stroke', 'currentColor'); line.setAttribute('stroke-width', '2');
  svg.append(line);
  return svg;
}

function circuitCell(p) {
  const state = p.circuit || 'unknown';
  const cls = state === 'closed' ? 'ok' : state === 'unknown' ? 'muted' : 'bad';
  const targets = p.open_target_circuits ? ` (${p.open_target_circuits} targets open)` : '';
  return el('td', { class: 'circuit' }, el('span', { class: cls }, state), targets);
}

function secondsText(seconds) {
  if (seconds === null || seconds === undefined) return el('span', { class: 'muted' }, 'unknown');
  return seconds < 100 ? seconds.toFixed(1) : Math.round(seconds).toString();
}

async function livePage() {
  const samples = [];
  const body = el('div', { 'aria-live': 'polite' });
  show('Live', el('p', { class: 'muted' },
    'Records written per second, and per processor: the records its consumer group has not committed yet and the age of the oldest of them, its circuit, and your organisation\'s pending dead letters. Records, lag and circuits are the pipeline\'s as a whole (its processors are shared by every organisation); the dead letters are yours only. Updated every 3 seconds.'), body);
  const load = async () => {
    const [result, dead] = await Promise.all([api('GET', '/console/api/live'), api('GET', '/v1/dead-letters')]);
    if (result.status !== 200) return body.replaceChildren(problems(result));
    const pending = new Map(dead.status === 200 ? (dead.data.processors || []).map((p) => [p.processor, p.pending]) : []);
    samples.push(result.data);
    if (samples.length > 40) samples.shift();
    const first = samples[0]; const last = samples[samples.length - 1];
    const seconds = (last.at_ms - first.at_ms) / 1000;
    const rate = (topic) => {
      const a = first.topics.find((t) => t.topic === topic); const b = last.topics.find((t) => t.topic === topic);
      return seconds > 0 && a && b ? ((b.records - a.records) / seconds).toFixed(1) : '…';
    };
    const topics = last.topics.map((t) => el('tr', {}, el('td', {}, el('code', {}, t.topic)), el('td', {}, t.records), el('td', { class: 'rate' }, rate(t.topic))));
    const processors = last.processors.map((p) => {
      const history = samples.map((s) => (s.processors.find((q) => q.processor === p.processor) || {}).lag_records || 0);
      const running = p.lag_records !== null;
      return el('tr', { 'data-processor': p.processor }, el('td', {}, p.processor), el('td', {}, el('code', {}, p.group)),
        el('td', { class: 'lag' }, running ? p.lag_records : el('span', { class: 'muted' }, 'not running')),
        el('td', { class: 'lag-seconds' }, running ? secondsText(p.lag_seconds) : '—'),
        circuitCell(p),
        el('td', { class: 'dead-letters' }, pending.has(p.processor) ? pending.get(p.processor) : el('span', { class: 'muted' }, 'not served')),
        el('td', {}, sparkline(history, `lag in records of ${p.processor} over the last ${history.length} samples`)));
    });
    body.replaceChildren(
      table('Topics', ['Topic', 'Records', 'Records/s'], topics),
      table(`Processors, updated ${new Date().toLocaleTimeString()}`,
        ['Processor', 'Consumer group', 'Lag (records)', 'Lag (seconds)', 'Circuit', 'Your dead letters', 'Lag, recent'], processors));
  };
  await load();
  every(3000, load);
}

// --- Slang -----------------------------------------------------------------------------------

// The forms' indexed text questions: [{ form, question }], from each form's slang action.
function slangQuestions(forms) {
  return forms.flatMap((f) => (f.slang ? f.slang.text_questions.map((q) => ({ form: f, question: q })) : []));
}

function wordsTable(city, max) {
  const rows = city.words.map((w) => {
    const bar = el('span', { class: 'bar', 'aria-hidden': 'true' });
    // CSSOM, not a style attribute: the page's CSP allows no inline styles.
    bar.style.width = `${Math.max(0.2, (w.answers / max) * 10)}rem`;
    return el('tr', { 'data-word': w.word }, el('th', { scope: 'row' }, w.word),
      el('td', { class: 'count' }, bar, el('span', { class: 'n' }, w.answers)));
  });
  return el('section', { class: 'city', 'data-city': city.city, 'aria-label': `Top words in ${city.city}` },
    table(`${city.city}: top words in ${city.answers} answer${city.answers === 1 ? '' : 's'} (bars: answers using the word)`,
      ['Word', 'Answers'], rows));
}

async function slangPage(formId, question) {
  const result = await api('GET', '/v1/forms');
  if (result.status !== 200) return show('Slang', problems(result));
  const indexed = slangQuestions(result.data.forms);
  if (!indexed.length) return show('Slang', el('p', { class: 'notice' }, 'None of your forms has a slang action: add one ("slang": {"city_question", "text_questions"}) on the Forms page.'));
  const chosen = indexed.find((i) => i.form.id === formId && i.question === question) || indexed[0];
  const base = `/console/api/slang/${encodeURIComponent(chosen.form.id)}/${encodeURIComponent(chosen.question)}`;
  const pick = el('select', { id: 'slang-question', onchange: () => {
    const i = indexed[Number(pick.value)];
    location.hash = `#/slang/${encodeURIComponent(i.form.id)}/${encodeURIComponent(i.question)}`;
  } }, indexed.map((i, n) => el('option', { value: n, selected: i === chosen }, `${i.form.title} (${i.form.id}): ${i.question}`)));
  const words = el('div', { id: 'slang-words', 'aria-live': 'polite' }, el('p', { class: 'muted' }, 'Loading…'));
  const city = el('select', { id: 'slang-city' }, el('option', { value: '' }, 'All cities'));
  const q = el('input', { id: 'slang-q', type: 'search', required: true, size: 30, maxlength: 500 });
  const hits = el('div', { id: 'slang-answers', 'aria-live': 'polite' });
  const search = el('form', { role: 'search', 'aria-label': 'Search the answers', onsubmit: async (event) => {
    event.preventDefault();
    const params = new URLSearchParams({ q: q.value, limit: '50' });
    if (city.value) params.set('city', city.value);
    const found = await api('GET', `${base}/answers?${params}`);
    if (found.status !== 200) return hits.replaceChildren(problems(found));
    const rows = found.data.items.map((h) => el('tr', { 'data-response': h.response_id },
      el('td', {}, h.cities.join(', ')), el('td', { class: 'answer' }, h.text), el('td', {}, el('code', {}, h.response_id))));
    hits.replaceChildren(table(`${found.data.total} answer${found.data.total === 1 ? '' : 's'} matching “${q.value}”${city.value ? ` in ${city.value}` : ''}${found.data.items.length < found.data.total ? `, the best ${found.data.items.length} shown` : ''}`,
      ['City', 'Answer', 'Response'], rows));
  } },
  el('div', { class: 'row' },
    el('div', {}, el('label', { for: 'slang-q' }, 'Words to find in the answers'), q),
    el('div', {}, el('label', { for: 'slang-city' }, 'City'), city),
    el('button', { type: 'submit' }, 'Search')));
  show('Slang', el('p', { class: 'muted' }, 'The words and two-word phrases your collectors\' answers use most, per city (each counted once per answer), and a search over the answers, from the slang index.'),
    el('div', { class: 'row' }, el('div', {}, el('label', { for: 'slang-question' }, 'Form and question'), pick)),
    el('h2', {}, 'Top words per city'), words, el('h2', {}, 'Search the answers'), search, hits);
  const load = async () => {
    const top = await api('GET', `${base}/words?limit=10&cities=20`);
    if (top.status === 501) {
      return words.replaceChildren(el('p', { class: 'notice', id: 'slang-unconfigured' }, 'Slang search is not configured on this gateway (--console-slang-url).'));
    }
    if (top.status !== 200) return words.replaceChildren(problems(top));
    const cities = top.data.cities;
    const max = Math.max(1, ...cities.flatMap((c) => c.words.map((w) => w.answers)));
    const known = new Set([...city.options].map((o) => o.value));
    for (const c of cities) if (!known.has(c.city)) city.append(el('option', { value: c.city }, c.city));
    words.replaceChildren(cities.length
      ? el('div', { class: 'cities' }, cities.map((c) => wordsTable(c, max)))
      : el('p', { class: 'muted' }, 'No answers indexed yet.'));
  };
  await load();
  every(10000, load);
}

// --- Routing ---------------------------------------------------------------------------------

function every(ms, f) { stopRefresh(); refresh = setInterval(() => f().catch(() => {}), ms); }
function stopRefresh() { if (refresh) clearInterval(refresh); refresh = null; }

async function route() {
  stopRefresh();
  if (!session) return signIn();
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  try {
    if (parts[0] === 'forms' && parts[1]) await formPage(parts[1]);
    else if (parts[0] === 'flags') await flagsPage(parts[1], parts[2]);
    else if (parts[0] === 'dead-letters') await deadLettersPage(parts[1]);
    else if (parts[0] === 'live') await livePage();
    else if (parts[0] === 'slang') await slangPage(parts[1], parts[2]);
    else await formsPage();
  } catch (e) {
    if (e.message !== 'signed out') show('Error', el('p', { class: 'bad', role: 'alert' }, String(e)));
  }
}

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', async () => {
  const current = await api('GET', '/console/api/session');
  if (current.status === 200) { session = current.data; signedIn(); } else signIn();
});
