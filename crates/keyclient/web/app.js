// Influxion keyclient web app: one ES module, no build step, no dependencies.
// Every DOM node is built with createElement/textContent (never innerHTML), and no
// inline script or style is used: the page runs under a strict Content-Security-Policy.
// The browser never holds a token: /session, /login, /logout and /api/* are the BFF's.

const CSRF = { 'X-Influxion-CSRF': '1' };
const ROLES = ['admin', 'key-admin', 'signer', 'approver', 'provisioner', 'auditor'];
const REVOKE_REASONS = [
  ['unspecified', 'Unspecified'],
  ['key_compromise', 'Key compromise'],
  ['ca_compromise', 'CA compromise'],
  ['affiliation_changed', 'Affiliation changed'],
  ['superseded', 'Superseded'],
  ['cessation_of_operation', 'Cessation of operation'],
  ['privilege_withdrawn', 'Privilege withdrawn'],
];

let session = null; // GET /session
let me = null; // GET /api/v1/me
let roles = new Set();
let renderSeq = 0;

// ------------------------------------------------------------------ DOM helpers

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = String(v);
    else if (k === 'testid') e.dataset.testid = v;
    else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  add(e, children);
  return e;
}

function add(parent, children) {
  for (const c of [children].flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    parent.append(c instanceof Node ? c : String(c)); // strings become text nodes
  }
  return parent;
}

// replaceChildren, skipping null/false (replaceChildren would print them as text).
const put = (parent, ...children) => { parent.replaceChildren(); return add(parent, children); };

const button = (text, onclick, props = {}) => el('button', { type: 'button', text, onclick, ...props });
const empty = (text) => el('p', { class: 'empty', text });
const loading = () => el('p', { class: 'muted', text: 'Loading…' });
const badge = (s) => el('span', { class: `badge badge-${String(s).replace(/[^a-z-]/g, '')}`, text: s });
const enc = encodeURIComponent;

function field(label, input, hint) {
  return el('div', { class: 'field' }, el('label', { for: input.id, text: label }), input,
    hint ? el('small', { class: 'muted', text: hint }) : null);
}

function select(id, options, value) {
  return el('select', { id }, options.map(([v, label]) => el('option', { value: v, text: label, selected: v === value })));
}

function facts(rows) {
  return el('dl', { class: 'facts' }, rows.filter(Boolean).map(([k, v]) => [el('dt', { text: k }), el('dd', {}, v)]));
}

function table(columns, rows, caption) {
  return el('div', { class: 'table-wrap' }, el('table', {},
    caption ? el('caption', { text: caption }) : null,
    el('thead', {}, el('tr', {}, columns.map(([label]) => el('th', { scope: 'col', text: label })))),
    el('tbody', {}, rows.map((r) => el('tr', {},
      columns.map(([label, cell]) => el('td', { 'data-label': label }, cell(r))))))));
}

function time(v) {
  if (v === null || v === undefined || v === '') return '—';
  const d = typeof v === 'number' ? new Date(v * 1000) : new Date(v);
  if (Number.isNaN(d.getTime())) return String(v);
  return el('time', { datetime: d.toISOString(), title: d.toISOString(), text: d.toLocaleString() });
}

function relative(unix) {
  const secs = unix - Date.now() / 1000;
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  for (const [unit, n] of [['day', 86400], ['hour', 3600], ['minute', 60]]) {
    if (Math.abs(secs) >= n) return rtf.format(Math.round(secs / n), unit);
  }
  return rtf.format(Math.round(secs), 'second');
}

function bytes(n) {
  const v = Number(n);
  if (!Number.isFinite(v)) return String(n);
  const units = ['bytes', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  let x = v;
  while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
  return i === 0 ? `${v} bytes` : `${x.toFixed(1)} ${units[i]} (${v} bytes)`;
}

// A person or pipeline as the API names them (an actor object): the label first, the
// stable id on hover. The label is the identity provider's unverified text ("Security
// Officer" is anyone's to claim), so it is only ever text, and the id is always at hand.
function actorLabel(a) {
  if (a === null || a === undefined || a === '') return '—';
  if (typeof a !== 'object') return String(a); // a record from before actor objects
  return String(a.label || a.name || a.username || a.id || '—');
}

function actorTitle(a) {
  if (!a || typeof a !== 'object') return a ? String(a) : null;
  return [a.id, a.username && !String(a.label || '').includes(a.username) ? a.username : null,
    a.subject ? `subjects: ${a.subject}` : null].filter(Boolean).join('\n');
}

function actor(a, { showId = false } = {}) {
  const id = a && typeof a === 'object' ? a.id : a;
  const label = actorLabel(a);
  return el('span', { class: 'actor', title: actorTitle(a), 'data-actor-id': id || null },
    el('span', { class: 'actor-label', text: label }),
    showId && id && id !== label ? [' ', el('code', { class: 'actor-id', text: id })] : null);
}

// Whether actor `a` (an object, or an old bare id) is identity `id`.
const actorIs = (a, id) => Boolean(id) && (a && typeof a === 'object' ? a.id : a) === id;

function duration(secs) {
  if (!secs) return '—';
  if (secs % 86400 === 0) return `${secs / 86400} d`;
  if (secs % 3600 === 0) return `${secs / 3600} h`;
  return `${Math.round(secs / 60)} min`;
}

// ------------------------------------------------------------------ messages

function clearMessages() {
  $('error').replaceChildren();
  $('notice').replaceChildren();
}

function showNotice(text) {
  $('error').replaceChildren();
  put($('notice'), el('span', { text }), button('Dismiss', () => $('notice').replaceChildren(), { class: 'link' }));
}

function showError(err) {
  if (err && err.handled) return;
  const box = $('error');
  $('notice').replaceChildren();
  if (err instanceof Problem) {
    put(box,
      el('strong', { text: err.status ? `${err.title} (${err.status})` : err.title }),
      err.detail ? el('span', { class: 'detail', text: err.detail }) : null);
  } else {
    put(box, el('strong', { text: 'Something went wrong' }),
      el('span', { class: 'detail', text: String((err && err.message) || err) }));
  }
  box.append(button('Dismiss', () => box.replaceChildren(), { class: 'link' }));
}

// ------------------------------------------------------------------ HTTP

class Problem extends Error {
  constructor(status, title, detail, type) {
    super(detail || title);
    Object.assign(this, { status, title, detail, type });
  }
}

async function problemFrom(res) {
  const text = await res.text().catch(() => '');
  try {
    const p = JSON.parse(text);
    if (p && typeof p.title === 'string') return new Problem(p.status || res.status, p.title, p.detail || '', p.type);
  } catch { /* not JSON */ }
  return new Problem(res.status, res.statusText || 'Request failed', text.slice(0, 300));
}

async function http(url, { method = 'GET', body, accept = 'application/json' } = {}) {
  const headers = { Accept: accept };
  if (method !== 'GET' && method !== 'HEAD') Object.assign(headers, CSRF);
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(url, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new Problem(0, 'Network error', `The server could not be reached (${e.message}).`);
  }
  return res;
}

// `/api/v1/...` is the keyserver's `/v1/...`, proxied by the BFF with the session's token.
async function api(path, opts = {}) {
  const res = await http('/api' + path, opts);
  if (res.status === 401) {
    sessionEnded();
    const p = await problemFrom(res);
    p.handled = true;
    throw p;
  }
  if (!res.ok) throw await problemFrom(res);
  if (res.status === 204) return null;
  const ct = res.headers.get('content-type') || '';
  return ct.includes('json') ? res.json() : res.text();
}

// ------------------------------------------------------------------ permissions

const has = (role) => roles.has(role); // /v1/me lists every role for an admin
const hasAny = (...rs) => rs.some(has);

function patternMatches(pattern, name) {
  const re = pattern.split('*').map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*');
  return new RegExp(`^${re}$`).test(name);
}

// Same rule as the keyserver's Permissions::allows: admin, or the role on a matching pattern.
function allows(role, name) {
  return (me?.grants || []).some((g) => g.role === 'admin' || (g.role === role && patternMatches(g.pattern, name)));
}

function myIdentity() {
  const p = me?.principal;
  if (!p) return '';
  return p.tenant_id ? `${p.tenant_id.toLowerCase()}/${p.object_id}` : p.object_id;
}

// ------------------------------------------------------------------ dialog

// A modal confirmation; resolves true on Confirm, false on Cancel or Escape.
function confirmDialog({ title, body = [], fields = [], confirm = 'Confirm', danger = false, validate }) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const problem = el('p', { class: 'dialog-error', role: 'alert' });
    const cancel = button('Cancel', () => dlg.close(), { testid: 'cancel' });
    const ok = el('button', { type: 'submit', class: danger ? 'danger' : 'primary', text: confirm, testid: 'confirm' });
    const form = el('form', { method: 'dialog' },
      el('h2', { id: 'dialog-title', text: title }), body, fields, problem,
      el('div', { class: 'actions' }, cancel, ok));
    const dlg = el('dialog', { 'aria-labelledby': 'dialog-title' }, form);
    let result = false;
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const msg = validate ? validate() : null;
      if (msg) { problem.textContent = msg; return; }
      result = true;
      dlg.close();
    });
    dlg.addEventListener('close', () => {
      dlg.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(result);
    });
    document.body.append(dlg);
    dlg.showModal(); // Escape closes it (cancel, then close)
    (dlg.querySelector('textarea, input, select') || cancel).focus();
  });
}

// ------------------------------------------------------------------ pages

// One line of text (for dialogs and searches): the label, and the id when it differs.
function requesterText(r) {
  const label = actorLabel(r.requester);
  const id = r.requester && typeof r.requester === 'object' ? r.requester.id : null;
  return id && id !== label ? `${label} (${id})` : label;
}

async function pageApprovals(root, live) {
  const { requests } = await api('/v1/signing-requests?status=pending&limit=500');
  if (!live()) return;
  const pending = requests.filter((r) => r.status === 'pending');
  put(root, pending.length
    ? el('div', { class: 'cards' }, pending.map(requestCard))
    : empty('No signing requests are waiting for approval.'));
}

function requestCard(r) {
  const meta = r.metadata || {};
  const headingId = `req-${r.id}`;
  const decided = r.approvals.some((a) => actorIs(a.approver, myIdentity()));
  const actions = el('div', { class: 'actions' });
  if (r.can_decide) {
    actions.append(
      button('Approve', () => decide(r, true), { class: 'primary', testid: 'approve' }),
      button('Reject', () => decide(r, false), { class: 'danger', testid: 'reject' }));
  } else {
    actions.append(el('p', {
      class: 'muted',
      text: r.is_requester ? 'You made this request: other approvers must decide on it.'
        : decided ? 'You have already decided on this request.'
          : 'You may not decide on this request.',
    }));
  }
  if (r.is_requester) actions.append(button('Cancel request', () => cancelRequest(r)));
  return el('article', { class: 'card', testid: `request-${r.id}`, 'aria-labelledby': headingId },
    el('h2', { id: headingId }, `Sign with ${r.key_name}`,
      el('span', { class: 'count', text: ` ${r.approvals_count} of ${r.quorum} approvals` })),
    facts([
      ['Key', `${r.key_name} (${r.algorithm})`],
      ['Digest', el('code', { class: 'hash', text: r.digest })],
      // The id too: the label is the provider's unverified text, the id is who it is.
      ['Requested by', actor(r.requester, { showId: true })],
      ['Reason', r.reason || '—'],
      ['Created', time(r.created_at)],
      ['Expires', el('span', {}, time(r.expires_at), ` (${relative(r.expires_at)})`)],
      ['Approvals', `${r.approvals_count} of ${r.quorum} required`],
      r.approver_subjects?.length && ['Approvers', r.approver_subjects.join(', ')],
    ]),
    // File name, size and metadata come from the requester and are not checked by the
    // keyserver: shown apart, so a metadata entry named "Digest" cannot pass for a fact.
    Object.keys(meta).length ? el('h3', { class: 'supplied', text: 'Supplied by the requester (not verified)' }) : null,
    Object.keys(meta).length ? facts([
      'file' in meta && ['File', String(meta.file)],
      'size' in meta && ['Size', bytes(meta.size)],
      ...Object.entries(meta).filter(([k]) => k !== 'file' && k !== 'size').map(([k, v]) => [k, String(v)]),
    ]) : null,
    r.approvals.length ? el('ul', { class: 'decisions', 'aria-label': 'Decisions so far' }, r.approvals.map((a) =>
      el('li', { testid: 'decision' }, `${a.decision === 'approve' ? 'Approved' : 'Rejected'} by `,
        actor(a.approver), ' ', time(a.at), a.comment ? `: “${a.comment}”` : ''))) : null,
    actions);
}

async function decide(r, approve) {
  const comment = el('textarea', { id: 'dialog-comment', testid: 'comment', rows: 4, maxlength: 1000, required: !approve });
  const ok = await confirmDialog({
    title: approve ? 'Approve signing request' : 'Reject signing request',
    body: [
      el('p', { text: `${approve ? 'Approve' : 'Reject'} signing with ${r.key_name}, requested by ${requesterText(r)}.` }),
      el('p', {}, 'Digest: ', el('code', { class: 'hash', text: r.digest })),
    ],
    fields: [field(approve ? 'Comment (optional)' : 'Comment (required)', comment)],
    confirm: approve ? 'Approve' : 'Reject',
    danger: !approve,
    validate: () => (!approve && !comment.value.trim() ? 'A rejection needs a comment.' : null),
  });
  if (!ok) return;
  try {
    const v = await api(`/v1/signing-requests/${enc(r.id)}/${approve ? 'approve' : 'reject'}`,
      { method: 'POST', body: { comment: comment.value } });
    showNotice(!approve ? `Rejected the signing request on ${r.key_name}.`
      : v.status === 'signed' ? `Approved: the request on ${r.key_name} reached its quorum and is signed.`
        : `Approved: ${v.approvals_count} of ${v.quorum} approvals on ${r.key_name}.`);
  } catch (e) {
    showError(e);
  }
  refresh();
}

async function cancelRequest(r) {
  const ok = await confirmDialog({
    title: 'Cancel signing request',
    body: el('p', { text: `Cancel your signing request on ${r.key_name}? It cannot be signed afterwards.` }),
    confirm: 'Cancel request',
    danger: true,
  });
  if (!ok) return;
  try {
    await api(`/v1/signing-requests/${enc(r.id)}/cancel`, { method: 'POST' });
    showNotice(`Cancelled the signing request on ${r.key_name}.`);
  } catch (e) {
    showError(e);
  }
  refresh();
}

const requestFilter = { status: 'all', text: '' };

async function fetchRequests(status) {
  const get = async (s) => (await api(`/v1/signing-requests?limit=500${s ? `&status=${s}` : ''}`)).requests;
  if (status === 'all') return get(null);
  // A pending request past its expiry is listed as pending but shown as expired.
  const list = status === 'expired' ? [...await get('expired'), ...await get('pending')] : await get(status);
  return list.filter((r) => r.status === status).sort((a, b) => b.created_at.localeCompare(a.created_at));
}

async function pageRequests(root, live) {
  const statuses = ['all', 'pending', 'signed', 'rejected', 'cancelled', 'expired'];
  const status = select('filter-status', statuses.map((s) => [s, s]), requestFilter.status);
  const text = el('input', { id: 'filter-text', type: 'search', value: requestFilter.text, autocomplete: 'off' });
  const results = el('div', {}, loading());
  const form = el('form', { class: 'filters', role: 'search' },
    field('Status', status), field('Key or requester contains', text));
  form.addEventListener('submit', (e) => e.preventDefault());
  put(root, form, results);
  let list = [];
  const draw = () => {
    const q = requestFilter.text.trim().toLowerCase();
    const rows = list.filter((r) => !q || [r.key_name, requesterText(r)]
      .some((s) => s.toLowerCase().includes(q)));
    put(results, rows.length ? table([
      ['Created', (r) => time(r.created_at)],
      ['Key', (r) => r.key_name],
      ['Requested by', (r) => actor(r.requester)],
      ['Reason', (r) => r.reason || '—'],
      ['Status', (r) => badge(r.status)],
      ['Approvals', (r) => `${r.approvals_count} of ${r.quorum}`],
      ['Finished', (r) => time(r.finished_at)],
      ['', (r) => (r.is_requester && r.status === 'pending' ? button('Cancel', () => cancelRequest(r)) : '')],
    ], rows, `${rows.length} signing request${rows.length === 1 ? '' : 's'}`) : empty('No signing requests match.'));
  };
  const load = async () => {
    put(results, loading());
    try {
      list = await fetchRequests(requestFilter.status);
      if (live()) draw();
    } catch (e) {
      if (live()) { put(results, empty('Could not load signing requests.')); showError(e); }
    }
  };
  status.addEventListener('change', () => { requestFilter.status = status.value; load(); });
  text.addEventListener('input', () => { requestFilter.text = text.value; draw(); });
  await load();
}

function policy(p) {
  if (!p || !p.approvals_required) return 'No approval needed';
  return `${p.approvals_required} approval${p.approvals_required === 1 ? '' : 's'}, requests live ${duration(p.approval_ttl_secs)}`;
}

async function pageKeys(root, live) {
  const { keys } = await api('/v1/keys');
  if (!live()) return;
  put(root, keys.length ? table([
    ['Name', (k) => el('strong', { text: k.name })],
    ['Type', (k) => k.key_type],
    ['Purpose', (k) => k.purpose || 'sign'],
    ['Backend', (k) => k.backend],
    ['Status', (k) => badge(k.status)],
    ['Approval policy', (k) => policy(k.policy)],
    ['Approvers', (k) => (k.policy?.approver_subjects?.length ? k.policy.approver_subjects.join(', ')
      : k.policy?.approvals_required ? 'Any approver of the key' : '—')],
    ['Created', (k) => time(k.created_at)],
    ['Public key', (k) => button('Download PEM', () => downloadPublicKey(k.name),
      { 'aria-label': `Download the public key of ${k.name} (PEM)` })],
  ], keys) : empty('There are no keys yet.'));
}

async function downloadPublicKey(name) {
  try {
    const pem = await api(`/v1/keys/${enc(name)}/public?format=pem`, { accept: 'application/x-pem-file' });
    const url = URL.createObjectURL(new Blob([pem], { type: 'application/x-pem-file' }));
    const a = el('a', { href: url, download: `${name}.pem`, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    showNotice(`Downloaded the public key of ${name} as ${name}.pem.`);
  } catch (e) {
    showError(e);
  }
}

async function pagePki(root, live) {
  const [{ cas }, { profiles }] = await Promise.all([api('/v1/cas'), api('/v1/profiles')]);
  if (!live()) return;
  put(root,
    el('h2', { text: 'Certificate authorities' }),
    cas.length ? table([
      ['Name', (c) => el('strong', { text: c.name })],
      ['Status', (c) => badge(c.status)],
      ['Subject', (c) => c.subject?.common_name || '—'],
      ['Parent', (c) => c.parent || (c.status === 'pending' ? 'external root' : 'root')],
      ['Key', (c) => `${c.key} (${c.key_type})`],
      ['Valid until', (c) => time(c.not_after)],
      ['Issued / revoked', (c) => `${c.counters?.issued ?? 0} / ${c.counters?.revoked ?? 0}`],
      ['CRL', (c) => el('span', {}, `#${c.crl_number}`, c.crl_next_update ? [', next ', time(c.crl_next_update)] : '')],
    ], cas) : empty('There are no certificate authorities yet.'),
    el('h2', { text: 'Profiles' }),
    profiles.length ? table([
      ['Name', (p) => el('strong', { text: p.name })],
      ['CA', (p) => p.ca],
      ['Validity', (p) => `${p.validity_days} days`],
      ['Key types', (p) => (p.key_types || []).join(', ')],
      ['Usage', (p) => [...(p.key_usage || []), ...(p.extended_key_usage || [])].join(', ')],
      ['Subject', (p) => Object.entries(p.subject || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—'],
      ['Per device', (p) => (p.max_per_device ? `at most ${p.max_per_device}` : 'no limit')],
      ['Server keygen', (p) => (p.allow_server_keygen === false ? 'no' : 'yes')],
    ], profiles) : empty('There are no certificate profiles yet.'));
}

const certSearch = { device_id: '', serial: '', subject: '', profile: '', ca: '', status: '', limit: '100' };

async function pageCertificates(root, live) {
  const inputs = {};
  const text = (k, label) => {
    inputs[k] = el('input', { id: `cert-${k}`, type: 'search', value: certSearch[k], autocomplete: 'off' });
    return field(label, inputs[k]);
  };
  inputs.status = select('cert-status', [['', 'any'], ['valid', 'valid'], ['revoked', 'revoked']], certSearch.status);
  inputs.limit = select('cert-limit', ['50', '100', '500', '1000'].map((n) => [n, n]), certSearch.limit);
  const form = el('form', { class: 'filters', role: 'search' },
    text('device_id', 'Device id'), text('serial', 'Serial'), text('subject', 'Subject contains'),
    text('profile', 'Profile'), text('ca', 'CA'), field('Status', inputs.status), field('Limit', inputs.limit),
    el('div', { class: 'field field-button' }, el('button', { type: 'submit', class: 'primary', text: 'Search' })));
  const results = el('div', {}, loading());
  put(root, form, results);
  const load = async () => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(certSearch)) if (v.trim()) q.set(k, v.trim());
    put(results, loading());
    try {
      const { certificates } = await api(`/v1/certificates?${q}`);
      if (!live()) return;
      put(results, certificates.length ? table([
        ['Serial', (c) => el('code', { class: 'hash', text: c.serial })],
        ['Device', (c) => c.device_id],
        ['Subject', (c) => c.subject],
        ['Profile', (c) => c.profile],
        ['CA', (c) => c.ca],
        ['Issued', (c) => time(c.issued_at)],
        ['Valid until', (c) => time(c.not_after)],
        ['Issued by', (c) => actor(c.requested_by)],
        ['Status', (c) => el('span', {}, badge(c.status),
          c.status === 'revoked' ? [' ', time(c.revoked_at), ` (${c.revocation_reason || 'unspecified'})`] : '')],
        ['', (c) => (c.status === 'valid' && (allows('key-admin', c.profile) || allows('provisioner', c.profile))
          ? button('Revoke', () => revoke(c), { class: 'danger', testid: 'revoke' }) : '')],
      ], certificates, `${certificates.length} certificate${certificates.length === 1 ? '' : 's'}`)
        : empty('No certificates match.'));
    } catch (e) {
      if (live()) { put(results, empty('Could not search certificates.')); showError(e); }
    }
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    for (const k of Object.keys(certSearch)) certSearch[k] = inputs[k].value;
    clearMessages();
    load();
  });
  await load();
}

async function revoke(c) {
  const reason = select('dialog-reason', REVOKE_REASONS, 'unspecified');
  const ok = await confirmDialog({
    title: 'Revoke certificate',
    body: [
      el('p', { text: `Revoke the certificate of device ${c.device_id} (${c.subject})? This cannot be undone; the CA's CRL is regenerated.` }),
      el('p', {}, 'Serial: ', el('code', { class: 'hash', text: c.serial })),
    ],
    fields: [field('Reason', reason)],
    confirm: 'Revoke',
    danger: true,
  });
  if (!ok) return;
  try {
    await api(`/v1/certificates/${enc(c.serial)}/revoke`, { method: 'POST', body: { reason: reason.value } });
    showNotice(`Revoked certificate ${c.serial} of device ${c.device_id} (${reason.value}).`);
  } catch (e) {
    showError(e);
  }
  refresh();
}

async function pageSubjects(root, live) {
  const { subjects } = await api('/v1/subjects');
  if (!live()) return;
  put(root, subjects.length ? el('div', { class: 'cards' }, subjects.map(subjectCard))
    : empty('There are no subjects.'));
}

function subjectCard(s) {
  const admin = has('admin');
  const rules = ['issuer', 'tenant_id', 'object_id', 'app_id', 'app_role', 'group_id']
    .filter((k) => s[k]).map((k) => [k, el('code', { text: s[k] })]);
  const role = select(`grant-role-${s.id}`, ROLES.map((r) => [r, r]), 'signer');
  const pattern = el('input', { id: `grant-pattern-${s.id}`, type: 'text', value: '*', maxlength: 64, autocomplete: 'off' });
  const form = el('form', { class: 'filters' }, field('Role', role),
    field('Pattern', pattern, 'Key or profile names; * matches anything'),
    el('div', { class: 'field field-button' }, el('button', { type: 'submit', text: 'Add grant' })));
  form.addEventListener('submit', (e) => { e.preventDefault(); addGrant(s, role.value, pattern.value.trim() || '*'); });
  return el('article', { class: 'card', testid: `subject-${s.name}`, 'aria-labelledby': `subject-${s.id}` },
    el('h2', { id: `subject-${s.id}`, text: s.name }),
    s.description ? el('p', { text: s.description }) : null,
    facts([...rules, ['Created', el('span', {}, time(s.created_at), ' by ', actor(s.created_by))]]),
    s.grants.length ? table([
      ['Role', (g) => g.role],
      ['Pattern', (g) => el('code', { text: g.pattern })],
      ['', (g) => (admin ? button('Remove', () => removeGrant(s, g),
        { class: 'danger', 'aria-label': `Remove grant ${g.role} on ${g.pattern} from ${s.name}` }) : '')],
    ], s.grants, 'Grants') : empty('This subject holds no grants.'),
    admin ? form : null);
}

async function addGrant(s, role, pattern) {
  const ok = await confirmDialog({
    title: 'Add grant',
    body: el('p', { text: `Grant the ${role} role on "${pattern}" to subject ${s.name}?` }),
    confirm: 'Add grant',
  });
  if (!ok) return;
  try {
    await api(`/v1/subjects/${enc(s.name)}/grants`, { method: 'POST', body: { role, pattern } });
    showNotice(`Granted ${role} on "${pattern}" to ${s.name}.`);
  } catch (e) {
    showError(e);
  }
  refresh();
}

async function removeGrant(s, g) {
  const ok = await confirmDialog({
    title: 'Remove grant',
    body: el('p', { text: `Remove the ${g.role} role on "${g.pattern}" from subject ${s.name}?` }),
    confirm: 'Remove grant',
    danger: true,
  });
  if (!ok) return;
  try {
    await api(`/v1/subjects/${enc(s.name)}/grants/${enc(g.id)}`, { method: 'DELETE' });
    showNotice(`Removed ${g.role} on "${g.pattern}" from ${s.name}.`);
  } catch (e) {
    showError(e);
  }
  refresh();
}

// Readable names for the keys of an audit record's detail; others show as they are.
const DETAIL_LABELS = {
  key: 'Key', key_id: 'Key id', key_type: 'Key type', backend: 'Backend', digest: 'Digest',
  algorithm: 'Algorithm', reason: 'Reason', comment: 'Comment', metadata: 'Metadata (from the requester)',
  request: 'Signing request', change: 'Policy change', requester: 'Requested by', approvals: 'Approvals',
  quorum: 'Quorum', before: 'Policy before', after: 'Policy after', weakens: 'Weakens', serial: 'Serial',
  device_id: 'Device', subject: 'Subject', profile: 'Profile', ca: 'CA', parent: 'Parent CA',
  issuer: 'Issuer', not_after: 'Valid until', revoked: 'Revoked', crl_number: 'CRL number', status: 'Status',
  role: 'Role', pattern: 'Pattern', grants: 'Grants', rules: 'Rules', id: 'Id', method: 'Method',
  mode: 'Mode', from: 'From', through: 'Through', key_generated: 'Key generated on the server',
  signature_sha256: 'Signature (SHA-256)', suppressed_before: 'Refusals not recorded before this one',
  suppressed_total: 'Refusals not recorded in all', sealed: 'Sealed', head_was_unsealed: 'Head was unsealed',
  unkeyed_records: 'Records without a MAC',
};
const HEX_KEYS = new Set(['digest', 'signature_sha256', 'serial', 'key_id', 'id', 'request', 'change']);

const detailLabel = (k) => DETAIL_LABELS[k] || k.replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());
const isActor = (v) => v && typeof v === 'object' && !Array.isArray(v) && typeof v.id === 'string' && 'label' in v;

// One value of a detail: text, an actor, a list, or (nested) labelled fields. Every
// string becomes a text node, whatever it holds.
function detailValue(k, v, depth = 0) {
  if (v === null || v === undefined || v === '') return '—';
  if (isActor(v)) return actor(v, { showId: true });
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v !== 'object') return HEX_KEYS.has(k) ? el('code', { class: 'hash', text: String(v) }) : String(v);
  if (Array.isArray(v)) {
    if (!v.length) return '—';
    if (v.every((x) => x === null || typeof x !== 'object')) return v.map(String).join(', ');
    return el('ul', { class: 'detail-list' }, v.map((x) => el('li', {}, detailValue(k, x, depth + 1))));
  }
  const entries = Object.entries(v);
  if (!entries.length) return '—';
  if (depth >= 2) return el('code', { class: 'detail', text: JSON.stringify(v) });
  return facts(entries.map(([ck, cv]) => [k === 'metadata' ? ck : detailLabel(ck), detailValue(ck, cv, depth + 1)]));
}

function auditDetail(r) {
  const d = r.detail;
  if (d === null || d === undefined || (typeof d === 'object' && !Object.keys(d).length)) return '';
  if (typeof d !== 'object' || Array.isArray(d)) return el('code', { class: 'detail', text: JSON.stringify(d) });
  // A refusal: `reason` is the problem's slug and `status` the HTTP status.
  const refusal = typeof d.status === 'number' && typeof d.reason === 'string' && r.outcome !== 'ok';
  const rows = [];
  for (const [k, v] of Object.entries(d)) {
    if (k === 'quorum' && typeof d.approvals === 'number') continue; // shown with approvals
    if (refusal && (k === 'suppressed_before' || k === 'suppressed_total') && !v) continue;
    let label = detailLabel(k);
    let value = detailValue(k, v);
    if (k === 'approvals' && typeof v === 'number' && typeof d.quorum === 'number') value = `${v} of ${d.quorum} required`;
    if (refusal && k === 'reason') { label = 'Refused as'; value = el('code', { text: v }); }
    if (refusal && k === 'status') label = 'HTTP status';
    rows.push([label, value]);
  }
  return el('div', { class: 'audit-detail' }, facts(rows),
    el('details', {}, el('summary', { text: 'Raw JSON' }),
      el('pre', { class: 'detail', text: JSON.stringify(d, null, 2) })));
}

const auditFilter = { limit: '100', action: '', actor: '', key: '', outcome: '' };

async function pageAudit(root, live) {
  const limit = select('audit-limit', ['50', '100', '500', '1000'].map((n) => [n, n]), auditFilter.limit);
  const text = (k, label, placeholder, title) => {
    const input = el('input', { id: `audit-${k}`, type: 'search', value: auditFilter[k], autocomplete: 'off', maxlength: 128, placeholder, title });
    return [input, field(label, input)];
  };
  const [action, actionField] = text('action', 'Action', 'sign,cert.*', 'Actions separated by commas; a trailing * matches a prefix');
  const [who, actorField] = text('actor', 'Actor contains', 'name, username or id');
  const [key, keyField] = text('key', 'Key', 'key name');
  const outcome = select('audit-outcome', [['', 'any'], ['ok', 'ok'], ['refused', 'refused'], ['error', 'error']], auditFilter.outcome);
  const form = el('form', { class: 'filters', role: 'search' }, field('Newest records', limit),
    actionField, actorField, keyField, field('Outcome', outcome),
    el('div', { class: 'field field-button' }, el('button', { type: 'submit', class: 'primary', text: 'Search' })));
  const chain = el('div', {});
  const results = el('div', {}, loading());
  const more = el('div', { class: 'actions' });
  put(root, chain, form, results, more);
  let records = [];
  const draw = () => {
    put(results, records.length ? table([
      ['Seq', (r) => String(r.seq)],
      ['Time', (r) => time(r.at)],
      ['Actor', (r) => actor(r.actor)],
      ['Action', (r) => el('code', { text: r.action })],
      ['Target', (r) => r.target ?? '—'],
      ['Outcome', (r) => badge(r.outcome)],
      ['Detail', auditDetail],
    ], records, `${records.length} record${records.length === 1 ? '' : 's'}, newest first`)
      : empty('No audit records match.'));
  };
  // The filters are the keyserver's (GET /v1/audit): `before` pages on to older records.
  const load = async (before) => {
    const q = new URLSearchParams({ limit: auditFilter.limit });
    for (const k of ['action', 'actor', 'key', 'outcome']) if (auditFilter[k].trim()) q.set(k, auditFilter[k].trim());
    if (before) q.set('before', String(before));
    if (!before) put(results, loading());
    more.replaceChildren();
    try {
      const page = await api(`/v1/audit?${q}`);
      if (!live()) return;
      const c = page.chain;
      if (c) {
        const intact = c.status === 'intact';
        put(chain, el('div', { class: `chain ${intact ? 'chain-ok' : 'chain-bad'}`, testid: 'chain-status', 'data-status': c.status },
          el('strong', { text: intact ? 'Audit chain intact' : 'Audit chain BROKEN' }),
          el('span', { text: intact ? `${c.records} records verified; head ${String(c.head).slice(0, 16)}…`
            : `The chain breaks at record ${c.seq}: ${c.reason}` })));
      }
      records = before ? [...records, ...page.records] : page.records;
      draw();
      const oldest = records.length ? records[records.length - 1].seq : null;
      if (page.records.length >= Number(auditFilter.limit) && oldest > 1) {
        more.append(button('Older records', () => load(oldest), { testid: 'audit-older' }));
      }
    } catch (e) {
      if (live()) { if (!before) put(results, empty('Could not read the audit log.')); showError(e); }
    }
  };
  const inputs = { limit, action, actor: who, key, outcome };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    for (const [k, input] of Object.entries(inputs)) auditFilter[k] = input.value;
    clearMessages();
    load();
  });
  for (const s of [limit, outcome]) s.addEventListener('change', () => form.requestSubmit());
  await load();
}

const ROUTES = [
  { path: 'approvals', label: 'Approvals', title: 'Pending approvals', render: pageApprovals, visible: () => has('approver') },
  { path: 'requests', label: 'Requests', title: 'Signing requests', render: pageRequests, visible: () => roles.size > 0 },
  { path: 'keys', label: 'Keys', title: 'Keys', render: pageKeys, visible: () => roles.size > 0 },
  { path: 'pki', label: 'Device CA', title: 'Device CA and profiles', render: pagePki, visible: () => roles.size > 0 },
  { path: 'certificates', label: 'Certificates', title: 'Issued certificates', render: pageCertificates, visible: () => hasAny('auditor', 'provisioner', 'key-admin') },
  { path: 'subjects', label: 'Subjects', title: 'Subjects and grants', render: pageSubjects, visible: () => hasAny('admin', 'auditor') },
  { path: 'audit', label: 'Audit log', title: 'Audit log', render: pageAudit, visible: () => has('auditor') },
];

// ------------------------------------------------------------------ shell

function routeName() {
  return location.hash.replace(/^#\/?/, '').split(/[?/]/)[0] || 'approvals';
}

function returnTo() {
  return `/${location.hash || '#/approvals'}`;
}

function signInLink(text = 'Sign in') {
  return el('a', { class: 'button primary', href: `/login?return_to=${enc(returnTo())}`, testid: 'signin', text });
}

function signedOut(title, text) {
  renderSeq++;
  session = null;
  me = null;
  roles = new Set();
  $('nav').replaceChildren();
  $('who').replaceChildren();
  document.title = 'Influxion';
  put($('main'), el('section', { class: 'signin' },
    el('h1', { text: title }), el('p', { text }), signInLink()));
  setState('signin', 'ready');
}

// For tests and tools: which page <main> shows and whether it has finished loading.
function setState(page, state) {
  $('main').dataset.page = page;
  $('main').dataset.state = state;
}

function sessionEnded() {
  if (!me && !session) return;
  signedOut('Your session has ended', 'Sign in again to continue where you left off.');
}

async function signOut(btn) {
  btn.disabled = true;
  try {
    const res = await http('/logout', { method: 'POST' });
    if (!res.ok) throw await problemFrom(res);
    const { logout_url: url } = await res.json();
    const target = new URL(url || '/', location.href);
    location.assign(['http:', 'https:'].includes(target.protocol) ? target.href : '/');
  } catch (e) {
    btn.disabled = false;
    showError(e);
  }
}

function header() {
  const p = me?.principal;
  const name = session.user?.name || p?.name || session.user?.username || p?.username || 'Signed in';
  const title = [session.user?.username || p?.username, me?.principal_id].filter(Boolean).join('\n');
  const r = [...roles];
  put($('who'),
    el('span', { class: 'user', testid: 'user', title: title || null, text: name }),
    el('span', { class: 'roles', testid: 'roles', 'aria-label': 'Your roles' },
      me ? (r.length ? r.flatMap((x, i) => [i ? ' ' : null, el('span', { class: 'role', text: x })]) : 'no roles') : 'roles unknown'),
    button('Sign out', (e) => signOut(e.currentTarget), { testid: 'signout' }));
  put($('nav'), el('ul', {}, ROUTES.filter((rt) => rt.visible()).map((rt) =>
    el('li', {}, el('a', { href: `#/${rt.path}`, 'data-route': rt.path, text: rt.label })))));
}

async function render({ refresh: keep = false, focus = false } = {}) {
  if (!session) return;
  const route = ROUTES.find((r) => r.path === routeName());
  if (!route) { location.replace('#/approvals'); return; }
  const seq = ++renderSeq;
  const live = () => seq === renderSeq;
  if (!keep) clearMessages();
  for (const a of $('nav').querySelectorAll('a')) {
    if (a.dataset.route === route.path) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${route.title} · Influxion`;
  const h1 = el('h1', { tabindex: '-1', text: route.title });
  const content = el('div', { class: 'content' }, loading());
  put($('main'), h1, route.visible() ? null
    : el('p', { class: 'note', text: 'Your roles do not include this page; the keyserver decides what you may see.' }), content);
  setState(route.path, 'loading');
  if (focus) h1.focus();
  try {
    await route.render(content, live);
  } catch (e) {
    if (live()) { put(content, empty('This page could not be loaded.')); showError(e); }
  }
  if (live()) setState(route.path, 'ready');
  if (live() && keep && (!document.activeElement || document.activeElement === document.body)) h1.focus();
}

function refresh() {
  return render({ refresh: true });
}

async function start() {
  try {
    const res = await http('/session');
    if (!res.ok) throw await problemFrom(res);
    const s = await res.json();
    if (!s.authenticated) {
      signedOut('Influxion keyserver', 'Sign in to review signing requests, keys, device certificates and the audit log.');
      return;
    }
    session = s;
  } catch (e) {
    put($('main'), el('h1', { text: 'Influxion' }), empty('The session could not be checked.'));
    setState('start', 'ready');
    showError(e);
    return;
  }
  try {
    me = await api('/v1/me');
    roles = new Set(me.roles || []);
  } catch (e) {
    if (!session) return; // the session ended (401)
    showError(e);
  }
  header();
  window.addEventListener('hashchange', () => render({ focus: true }));
  await render();
}

start();
