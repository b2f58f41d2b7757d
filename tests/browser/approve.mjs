// Browser check of the keyclient web app: sign in through the identity provider, look at
// every page, approve one signing request, and prove no token or secret reached the
// browser. Driven by a Rust integration test through environment variables (README.md).
//
// stdout: one JSON line {"ok": true, "screenshots": [...], "responses_checked": N}.
// stderr: progress, and the reason on failure (exit status 1, failure.png saved).

import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';

const OVERALL_TIMEOUT_MS = 60_000;
const STEP_TIMEOUT_MS = 15_000;
const JWT = /eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}/;
const PAGES = ['approvals', 'requests', 'keys', 'pki', 'certificates', 'subjects', 'audit'];

const log = (msg) => process.stderr.write(`[browser] ${msg}\n`);

function env(name, fallback) {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === '') throw new Error(`environment variable ${name} is required`);
  return v;
}

const cfg = (() => {
  try {
    const strings = (name) => {
      const v = JSON.parse(process.env[name] || '[]');
      if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) {
        throw new Error(`${name} must be a JSON array of strings`);
      }
      return v;
    };
    const forbidden = strings('FORBIDDEN');
    return {
      base: new URL(env('KEYCLIENT_URL')).origin,
      user: env('LOGIN_USER'),
      requestId: env('REQUEST_ID'),
      comment: env('COMMENT', 'approved by the browser test'),
      shots: env('SCREENSHOT_DIR'),
      forbidden: forbidden.filter((s) => s.length > 0),
      deciders: strings('EXPECT_DECIDERS'),
      auditActors: strings('EXPECT_AUDIT_ACTORS'),
      hostile: process.env.HOSTILE_NAME || '',
      hostileId: process.env.HOSTILE_ID || '',
    };
  } catch (e) {
    process.stderr.write(`[browser] FAIL: ${e.message}\n`);
    process.exit(1);
  }
})();

// ------------------------------------------------------------------ leak checks

const violations = [];
const unreadable = [];
const pageErrors = [];
const pending = new Set();
let responsesChecked = 0;

// Where a forbidden value shows up, say which one (by index) without echoing it.
function scan(where, text) {
  cfg.forbidden.forEach((f, i) => {
    if (text.includes(f)) violations.push(`${where} contains FORBIDDEN[${i}]`);
  });
  const m = JWT.exec(text);
  if (m) violations.push(`${where} contains a JWT-shaped string (${m[0].slice(0, 16)}…)`);
}

async function checkResponse(res) {
  const url = res.url();
  const status = res.status();
  scan(`URL ${url}`, url);
  for (const { name, value } of await res.headersArray().catch(() => [])) {
    scan(`header ${name} of ${status} ${url}`, value);
  }
  let body;
  try {
    // A body Chromium has already dropped (the page navigated on) never arrives.
    body = await Promise.race([res.body(), new Promise((_, reject) => {
      setTimeout(() => reject(new Error('body not available within 5 s')), 5_000);
    })]);
  } catch (e) {
    // Redirects have no body to read; any other unreadable body is a gap in the check.
    if (!(status >= 300 && status < 400) && !routedBodies.has(url)) unreadable.push(`${status} ${url}: ${e.message.split('\n')[0]}`);
    return;
  }
  responsesChecked++;
  scan(`body of ${status} ${url}`, body.toString('utf8'));
}

// Responses whose bodies were checked where they passed through page.route.
const routedBodies = new Set();

async function settleChecks() {
  while (pending.size) await Promise.allSettled([...pending]);
}

// ------------------------------------------------------------------ steps

// The text a selector shows, on one line.
async function shown(page, selector) {
  return (await page.innerText(selector)).replace(/\s+/g, ' ').replace(/ ?Dismiss$/, '').trim();
}

async function pageReady(page, name) {
  await page.locator(`main[data-page="${name}"][data-state="ready"]`).waitFor({ state: 'attached' });
}

async function signIn(page) {
  await page.goto(`${cfg.base}/`);
  const signin = page.locator('[data-testid="signin"]');
  await signin.waitFor({ state: 'visible' });
  log('signed out: clicking Sign in');
  await signin.click();

  // panva/oidc-provider's development login page (any password is accepted).
  await page.locator('input[name="login"]').waitFor({ state: 'visible' });
  log(`at the identity provider (${new URL(page.url()).origin}): logging in as ${cfg.user}`);
  await page.fill('input[name="login"]', cfg.user);
  await page.fill('input[name="password"]', 'test');
  await page.click('button[type="submit"]');

  const back = (u) => u.origin === cfg.base;
  try {
    await page.waitForURL(back, { timeout: 10_000 });
  } catch {
    // A consent page, if the provider shows one: confirm it once.
    log(`not back yet (${page.url()}); confirming a consent page`);
    await page.click('button[type="submit"]');
    await page.waitForURL(back);
  }
  await page.locator('[data-testid="user"]').waitFor({ state: 'visible' });
  const user = (await page.textContent('[data-testid="user"]')).trim();
  const roles = (await page.textContent('[data-testid="roles"]')).trim();
  if (!user) throw new Error('[data-testid=user] is empty after signing in');
  const hash = new URL(page.url()).hash;
  if (hash !== '#/approvals') throw new Error(`after signing in the page is ${page.url()}, not the return_to /#/approvals`);
  log(`signed in: user "${user}", roles "${roles}"`);
}

async function screenshots(page, taken) {
  for (const name of PAGES) {
    await page.goto(`${cfg.base}/#/${name}`);
    await pageReady(page, name);
    const file = path.join(cfg.shots, `${name}.png`);
    await page.screenshot({ path: file, fullPage: true });
    taken.push(file);
    const error = await shown(page, '[data-testid="error"]');
    log(`${name}.png${error ? ` (page shows: ${error.replace(/\s+/g, ' ')})` : ''}`);
  }
}

// People and pipelines are shown by their label, as text: every expected name is in the
// text of `root`, no markup from a name (or a comment) became an element, nothing ran, and
// the hostile name's element carries the stable id in its title.
async function checkNames(root, where, names) {
  const found = await root.evaluate((node, { names, hostile }) => ({
    missing: names.filter((n) => !node.textContent.includes(n)),
    injected: [...node.querySelectorAll('img, script, iframe, svg, b, i')].map((e) => e.outerHTML.slice(0, 80)),
    pwned: typeof window.__pwned,
    hostileTitles: hostile ? [...node.querySelectorAll('.actor')]
      .filter((e) => e.textContent.includes(hostile)).map((e) => e.getAttribute('title') || '') : [],
  }), { names, hostile: cfg.hostile });
  if (found.missing.length) throw new Error(`${where} does not show ${JSON.stringify(found.missing)}`);
  if (found.injected.length) throw new Error(`${where} holds elements made from text: ${found.injected.join(', ')}`);
  if (found.pwned !== 'undefined') throw new Error(`${where}: window.__pwned is ${found.pwned}: a name ran as script`);
  if (cfg.hostile) {
    if (!found.hostileTitles.length) throw new Error(`${where} shows ${JSON.stringify(cfg.hostile)} nowhere as an actor`);
    const bad = found.hostileTitles.filter((t) => !t.includes(cfg.hostileId));
    if (bad.length) throw new Error(`${where}: the actor's title ${JSON.stringify(bad)} lacks its id ${cfg.hostileId}`);
  }
  log(`${where} shows ${names.map((n) => JSON.stringify(n)).join(', ')} as text`);
}

// After the approval: the audit log names the actors, and a record's detail is shown as
// labelled fields with the raw JSON one click away.
async function audit(page, taken) {
  await page.goto(`${cfg.base}/#/audit`);
  await pageReady(page, 'audit');
  const errText = await shown(page, '[data-testid="error"]');
  if (errText) throw new Error(`the audit page shows an error: ${errText}`);
  const table = page.locator('main table');
  await checkNames(table, 'the audit log', cfg.auditActors);
  const detail = await table.evaluate((t) => ({
    digest: [...t.querySelectorAll('.audit-detail dt')].some((dt) => dt.textContent === 'Digest'),
    raw: t.querySelectorAll('.audit-detail details > summary').length,
  }));
  if (!detail.digest || !detail.raw) throw new Error(`audit details are not labelled fields with raw JSON: ${JSON.stringify(detail)}`);
  // The raw JSON opens in place.
  const first = table.locator('.audit-detail details').first();
  await first.locator('summary').click();
  if (!(await first.evaluate((d) => d.open && d.querySelector('pre').textContent.trim().startsWith('{')))) {
    throw new Error('the raw JSON of an audit record does not open');
  }
  const file = path.join(cfg.shots, 'audit-after.png');
  await page.screenshot({ path: file, fullPage: true });
  taken.push(file);
}

async function approve(page, taken) {
  await page.goto(`${cfg.base}/#/approvals`);
  await pageReady(page, 'approvals');
  const card = page.locator(`[data-testid="request-${cfg.requestId}"]`);
  if (!(await card.count())) {
    const error = await shown(page, '[data-testid="error"]');
    throw new Error(`pending request ${cfg.requestId} is not on #/approvals${error ? ` (error shown: ${error})` : ''}`);
  }
  await checkNames(card, 'the request card', cfg.deciders);
  await card.locator('[data-testid="approve"]').click();
  const comment = page.locator('dialog[open] [data-testid="comment"]');
  await comment.waitFor({ state: 'visible' });
  if (!(await comment.evaluate((e) => e === document.activeElement))) {
    throw new Error('the confirmation dialog did not focus its comment field');
  }
  await comment.fill(cfg.comment);
  await page.click('dialog[open] [data-testid="confirm"]');

  const notice = page.locator('[data-testid="notice"]');
  const error = page.locator('[data-testid="error"]');
  await Promise.race([
    notice.filter({ hasText: /\S/ }).waitFor({ state: 'visible' }),
    error.filter({ hasText: /\S/ }).waitFor({ state: 'visible' }),
  ]);
  const errText = await shown(page, '[data-testid="error"]');
  if (errText) throw new Error(`approving failed: ${errText}`);
  log(`notice: ${await shown(page, '[data-testid="notice"] span')}`);

  // The list is refreshed: this caller can no longer decide on the request.
  await pageReady(page, 'approvals');
  if (await card.locator('[data-testid="approve"]').count()) {
    throw new Error('the approve button is still offered after approving');
  }
  const file = path.join(cfg.shots, 'approved.png');
  await page.screenshot({ path: file, fullPage: true });
  taken.push(file);
}

async function checkStorage(page) {
  const s = await page.evaluate(() => ({
    cookie: document.cookie,
    local: Object.entries(localStorage),
    session: Object.entries(sessionStorage),
  }));
  if (s.cookie !== '') throw new Error(`document.cookie is not empty (${s.cookie.length} characters): the session cookie must be HttpOnly`);
  for (const [area, entries] of [['localStorage', s.local], ['sessionStorage', s.session]]) {
    for (const [k, v] of entries) {
      scan(`${area} key ${JSON.stringify(k)}`, k);
      scan(`${area}[${JSON.stringify(k)}]`, v);
    }
  }
  log(`document.cookie empty; localStorage ${s.local.length} entries, sessionStorage ${s.session.length}`);
}

// Sign out: the keyclient ends the session and sends the browser to the provider's
// end-session endpoint (RP-initiated logout), which confirms and comes back.
async function signOut(page, taken) {
  // The app navigates away as soon as /logout answers, before the response checker
  // could read the body: check that body on the way through instead.
  let logoutBody = null;
  await page.route(`${cfg.base}/logout`, async (route) => {
    const resp = await route.fetch();
    logoutBody = await resp.text();
    scan('body of /logout', logoutBody);
    routedBodies.add(`${cfg.base}/logout`);
    await route.fulfill({ response: resp, body: logoutBody });
  });
  await page.click('[data-testid="signout"]');
  // The app posts /logout, then goes to the provider's end-session URL.
  await page.waitForURL((u) => u.origin !== cfg.base);
  // panva/oidc-provider asks "Do you want to sign-out?" before it redirects back.
  log(`at the provider's logout page (${new URL(page.url()).origin}): confirming`);
  await page.click('button[name="logout"][value="yes"]');
  await page.waitForURL((u) => u.origin === cfg.base);
  if (logoutBody === null) throw new Error('the /logout response was never seen');
  await page.locator('[data-testid="signin"]').waitFor({ state: 'visible' });
  const session = await page.evaluate(async () => (await fetch('/session')).json());
  if (session.authenticated !== false) throw new Error(`still signed in after sign-out: ${JSON.stringify(session)}`);
  // (Read the body too: Chromium keeps an unread body from the response checker.)
  const status = await page.evaluate(async () => {
    const r = await fetch('/api/v1/me');
    await r.text();
    return r.status;
  });
  if (status !== 401) throw new Error(`/api/v1/me answered ${status} after sign-out, not 401`);
  const file = path.join(cfg.shots, 'signed-out.png');
  await page.screenshot({ path: file, fullPage: true });
  taken.push(file);
  log('signed out at the keyclient and the provider');
}

// ------------------------------------------------------------------ main

let browser;
try {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // Hermetic: no name resolves except localhost and the keyclient's host (IP literals
      // need no resolving). The provider's dev login page @imports Google Fonts otherwise.
      `--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE ${new URL(cfg.base).hostname}`],
  });
} catch (e) {
  process.stderr.write(`[browser] FAIL: could not launch Chromium: ${e.message}\n`);
  process.exit(1);
}
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
context.setDefaultTimeout(STEP_TIMEOUT_MS);
context.on('response', (res) => {
  const p = checkResponse(res).catch((e) => unreadable.push(`${res.url()}: ${e.message}`));
  pending.add(p);
  p.finally(() => pending.delete(p));
});
const page = await context.newPage();
// The web app must run without script errors or CSP violations (the provider's pages are its own).
const ours = () => page.url().startsWith(`${cfg.base}/`);
page.on('pageerror', (e) => { if (ours()) pageErrors.push(`uncaught exception on ${page.url()}: ${e.message}`); });
page.on('console', (m) => {
  if (ours() && m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) {
    pageErrors.push(`CSP violation on ${page.url()}: ${m.text()}`);
  }
});

async function run() {
  await mkdir(cfg.shots, { recursive: true });
  const taken = [];
  await signIn(page);
  await screenshots(page, taken);
  await approve(page, taken);
  await audit(page, taken);
  await checkStorage(page);
  await signOut(page, taken);
  await settleChecks();
  const problems = [...violations, ...pageErrors,
    ...unreadable.map((u) => `response body could not be checked: ${u}`)];
  if (problems.length) throw new Error(`\n  ${problems.join('\n  ')}`);
  return taken;
}

let timer;
const timeout = new Promise((_, reject) => {
  timer = setTimeout(() => reject(new Error(`timed out after ${OVERALL_TIMEOUT_MS / 1000} s`)), OVERALL_TIMEOUT_MS);
});

let code = 0;
try {
  const taken = await Promise.race([run(), timeout]);
  process.stdout.write(`${JSON.stringify({ ok: true, screenshots: taken, responses_checked: responsesChecked })}\n`);
} catch (e) {
  code = 1;
  process.stderr.write(`[browser] FAIL at ${page.url()}: ${e.message}\n`);
  if (violations.length && !e.message.includes(violations[0])) {
    process.stderr.write(`[browser] leaks seen before the failure:\n  ${violations.join('\n  ')}\n`);
  }
  try {
    await mkdir(cfg.shots, { recursive: true });
    await page.screenshot({ path: path.join(cfg.shots, 'failure.png'), fullPage: true, timeout: 5_000 });
    log(`saved ${path.join(cfg.shots, 'failure.png')}`);
  } catch (err) {
    log(`could not save failure.png: ${err.message.split('\n')[0]}`);
  }
} finally {
  clearTimeout(timer);
  await browser.close().catch(() => {});
}
process.exit(code);
