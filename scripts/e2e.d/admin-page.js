#!/usr/bin/env node
// The status page of wsgate's admin listener, in Debian's Chromium (playwright-core, launched
// as browser.js does), against a running `wsgate run`:
//
//   node admin-page.js ADMIN_URL --ws WS_URL --sessions N --out DIR [--token-env NAME]
//
//   ADMIN_URL   the admin listener's origin (http://127.0.0.1:PORT)
//   WS_URL      a route of the proxy to an echo backend (ws://127.0.0.1:PORT/ws)
//   N           how many WebSocket sessions to open through the proxy (at least 2)
//   DIR         where the screenshots go: admin-page.png (desktop), admin-page-phone.png
//               (375 px wide), admin-page-dark.png (375 px, prefers-color-scheme: dark)
//   NAME        the variable holding the admin token, when the listener has one: the page
//               must ask for it (at the latest when a write gets 401) and work after the login
//
// What it checks: one handshake to a path without a route shows up among the refusals; N
// sessions opened from Node (`ws`) show up as N open, each row with its client address and one
// message each way, then (quiet for the route's hibernate_after, which the config sets short)
// as asleep; the Close button of one row, with code 4000 and a reason typed into the
// page's form, delivers that close frame to that client, which the page then drops (N-1
// open) while the others stay open; a backend drained and undrained from the page shows
// each state; the page loads nothing from another origin, throws no error, does not scroll
// sideways at 375 px, has dark colours when the system asks for them, legible text in both
// (contrast 4.5:1), labels on its buttons and inputs and headers on its tables. Prints one
// line per step; exits 1 on the first mismatch.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const WebSocket = require("ws");
const { launch, check, Failure, STEP_TIMEOUT_MS } = require("./browser.js");

const CLOSE_CODE = 4000;
const CLOSE_REASON = "closed from the status page (e2e)";
const PHONE = { width: 375, height: 812 };

function log(msg) {
  console.log(`admin-page: ${msg}`);
}

function parseArgs(argv) {
  const [target, ...rest] = argv;
  const opts = {};
  for (let i = 0; i < rest.length; i++) {
    const m = /^--([a-z-]+)$/.exec(rest[i]);
    if (!m || i + 1 >= rest.length) throw new Failure(`bad argument ${rest[i]}`);
    opts[m[1]] = rest[++i];
  }
  check(target && opts.ws && opts.out, "usage: admin-page.js ADMIN_URL --ws WS_URL --sessions N --out DIR [--token-env NAME]");
  const sessions = Number(opts.sessions || 3);
  check(Number.isInteger(sessions) && sessions >= 2, `--sessions must be 2 or more, not ${opts.sessions}`);
  let token = null;
  if (opts["token-env"]) {
    token = process.env[opts["token-env"]];
    check(token, `no admin token in $${opts["token-env"]}`);
  }
  return { adminUrl: target.replace(/\/$/, ""), wsUrl: opts.ws, sessions, out: opts.out, token };
}

// Rejects after the step timeout, naming what did not happen.
function within(promise, what, ms = STEP_TIMEOUT_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Failure(`${what}: nothing within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------- WebSocket clients ----

// One session through the proxy: open, one message echoed -> { ws, client, closed } where
// `closed` resolves with the close frame this client receives.
async function openSession(wsUrl, i) {
  const ws = new WebSocket(wsUrl, ["chat"]);
  const closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() })));
  await within(new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
    ws.once("unexpected-response", (_, res) => reject(new Failure(`${wsUrl} answered ${res.statusCode}`)));
  }), `session ${i}: open ${wsUrl}`);
  const text = `admin-page session ${i}`;
  const echo = new Promise((resolve) => ws.once("message", (d) => resolve(d.toString())));
  ws.send(text);
  check((await within(echo, `session ${i}: echo`)) === text, `session ${i}: the echo is not what was sent`);
  return { ws, client: `127.0.0.1:${ws._socket.localPort}`, closed };
}

// A handshake to a path no route has: the proxy must refuse it (404).
async function refusedHandshake(url) {
  const ws = new WebSocket(url);
  const status = await within(new Promise((resolve) => {
    ws.once("unexpected-response", (req, res) => {
      resolve(res.statusCode);
      req.destroy();
    });
    ws.once("open", () => resolve("open"));
    ws.once("error", (e) => resolve(`error ${e.message}`));
  }), `handshake to ${url}`);
  ws.terminate();
  check(status === 404, `a handshake to ${url} got ${status}, expected 404 (no route)`);
}

// ---------------------------------------------------------------------- the page ----

const byTestId = (id) => `[data-testid="${id}"]`;

async function textOf(page, selector) {
  return page.$eval(selector, (e) => e.textContent).catch(() => null);
}

// Waits until fn(arg) is true in the page; on timeout, fails with what describe() says.
async function waitPage(page, what, fn, arg, describe) {
  try {
    await page.waitForFunction(fn, arg, { timeout: STEP_TIMEOUT_MS });
  } catch (e) {
    throw new Failure(`${what}: not within ${STEP_TIMEOUT_MS} ms${describe ? ` (${await describe()})` : ""}`);
  }
}

const waitOpenCount = (page, n) =>
  waitPage(page, `the page showing ${n} open sessions`,
    (n) => document.querySelector('[data-testid="sessions-open"]').textContent === String(n) &&
      document.querySelectorAll("#sessions tr[data-session-id]").length === n,
    n, async () => `it shows ${await textOf(page, byTestId("sessions-open"))} open and ${(await sessionRows(page)).length} rows`);

// The sessions table as the page shows it.
function sessionRows(page) {
  return page.$$eval("#sessions tr[data-session-id]", (trs) => trs.map((tr) => ({
    id: tr.dataset.sessionId,
    client: tr.cells[1].textContent,
    route: tr.cells[2].textContent,
    transport: tr.cells[4].textContent,
    messages: tr.cells[9].textContent,
    lastActive: tr.cells[10].textContent,
  })));
}

function tableRows(page, tbody) {
  return page.$$eval(`${tbody} tr:not(.empty)`, (trs) => trs.map((tr) => Array.from(tr.cells, (td) => td.textContent.trim())));
}

// The page asks for the token with its login form; fills it in and waits for the form to go.
async function logIn(page, token, why) {
  check(token !== null, `the page asks for the admin token (${why}), but none was given (--token-env)`);
  log(`  the page asks for the token (${why}): logging in`);
  await page.fill(byTestId("token"), token);
  await page.click(byTestId("login"));
  await waitPage(page, "the login form closing after the login",
    () => document.querySelector('[data-testid="login-form"]').hidden, null,
    async () => `it says: ${await textOf(page, "#login-why")}`);
}

const loginShown = (page) =>
  page.waitForSelector(byTestId("login-form"), { state: "visible", timeout: 0 }).then(() => "login");

// Runs `action` (which makes the page send a write request) and waits for `done`; if the page
// asks for the token meanwhile, logs in (the page then repeats the request by itself).
async function writeFromPage(page, token, what, action, done) {
  await action();
  const first = await within(Promise.race([done.then(() => "done"), loginShown(page)]), what);
  if (first === "login") {
    await logIn(page, token, `${what} got 401`);
    await within(done, `${what} after the login`);
    return true;
  }
  return false;
}

async function dialogSubmit(page, dialog, fields, confirm) {
  await page.waitForSelector(byTestId(dialog), { state: "visible" });
  for (const [testid, value] of Object.entries(fields)) await page.fill(byTestId(testid), value);
  await page.click(byTestId(confirm));
}

async function drainAndUndrain(page, token) {
  const state = () => page.$eval("#backends tr[data-backend]", (tr) => tr.cells[3].textContent);
  const backend = await page.$eval("#backends tr[data-backend]", (tr) => tr.dataset.backend);
  const stateIs = (want) => page.waitForFunction(
    (want) => document.querySelector("#backends tr[data-backend]").cells[3].textContent === want, want, { timeout: 0 });
  let asked = await writeFromPage(page, token, `draining ${backend}`, async () => {
    await page.click(`#backends tr[data-backend] ${byTestId("drain")}`);
    await dialogSubmit(page, "backend-dialog", {}, "backend-confirm");
  }, stateIs("draining"));
  log(`  backend ${backend}: drained from the page, shown as ${await state()}`);
  asked = (await writeFromPage(page, token, `undraining ${backend}`, async () => {
    await page.click(`#backends tr[data-backend] ${byTestId("drain")}`);
    await dialogSubmit(page, "backend-dialog", {}, "backend-confirm");
  }, stateIs("healthy"))) || asked;
  log(`  backend ${backend}: undrained from the page, shown as ${await state()}`);
  return asked;
}

// Text against its background, WCAG 2 contrast ratio, for the page's kinds of text.
function contrasts(page) {
  return page.evaluate(() => {
    const rgb = (c) => (c.match(/[\d.]+/g) || []).slice(0, 3).map(Number);
    const lum = ([r, g, b]) => {
      const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const bgOf = (e) => {
      for (; e; e = e.parentElement) {
        const c = getComputedStyle(e).backgroundColor;
        if (c && !/rgba\(.*,\s*0\)$/.test(c) && c !== "transparent") return c;
      }
      return "rgb(255, 255, 255)";
    };
    const out = [];
    for (const sel of ["body", "header .muted", "#live", "thead th", "#sessions td", "#backends button", "#sessions button.danger", "#sessions-note"]) {
      const e = document.querySelector(sel);
      if (!e) continue;
      const a = lum(rgb(getComputedStyle(e).color)), b = lum(rgb(bgOf(e)));
      out.push({ sel, ratio: (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05) });
    }
    return { out, background: getComputedStyle(document.body).backgroundColor };
  });
}

async function checkLayoutAndColours(page, out) {
  const shots = {};
  // Clicking a row's button scrolled its table sideways: show the tables from their start.
  await page.evaluate(() => document.querySelectorAll(".wrap").forEach((w) => { w.scrollLeft = 0; }));
  await page.setViewportSize({ width: 1280, height: 900 });
  shots.desktop = path.join(out, "admin-page.png");
  await page.screenshot({ path: shots.desktop, fullPage: true });

  await page.setViewportSize(PHONE);
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  check(width <= PHONE.width, `at ${PHONE.width} px the page is ${width} px wide: it scrolls sideways`);
  shots.phone = path.join(out, "admin-page-phone.png");
  await page.screenshot({ path: shots.phone, fullPage: true });
  log(`  ${PHONE.width} px wide: no sideways scrolling (the page is ${width} px)`);

  for (const scheme of ["light", "dark"]) {
    await page.emulateMedia({ colorScheme: scheme });
    const { out: ratios, background } = await contrasts(page);
    const dark = (background.match(/\d+/g) || []).slice(0, 3).every((v) => Number(v) < 80);
    check(dark === (scheme === "dark"), `with prefers-color-scheme: ${scheme} the background is ${background}`);
    const low = ratios.filter((r) => r.ratio < 4.5);
    check(low.length === 0, `${scheme}: contrast below 4.5:1 for ${low.map((r) => `${r.sel} ${r.ratio.toFixed(2)}`).join(", ")}`);
    log(`  ${scheme}: background ${background}, lowest contrast ${Math.min(...ratios.map((r) => r.ratio)).toFixed(1)}:1 over ${ratios.length} kinds of text`);
  }
  shots.dark = path.join(out, "admin-page-dark.png");
  await page.screenshot({ path: shots.dark, fullPage: true });
  await page.emulateMedia({ colorScheme: "light" });
  return shots;
}

// Buttons and inputs have names, tables have column headers.
async function checkAccessibleNames(page) {
  const problems = await page.evaluate(() => {
    const p = [];
    for (const b of document.querySelectorAll("button")) {
      if (!(b.getAttribute("aria-label") || b.textContent).trim()) p.push(`a button without a name: ${b.outerHTML.slice(0, 80)}`);
    }
    for (const i of document.querySelectorAll("input, select")) {
      if (!i.labels.length && !i.getAttribute("aria-label")) p.push(`an input without a label: ${i.outerHTML.slice(0, 80)}`);
    }
    for (const t of document.querySelectorAll("table")) {
      if (!t.querySelector("thead th")) p.push(`a table without column headers: ${t.tBodies[0].id}`);
    }
    return p;
  });
  check(problems.length === 0, problems.join("; "));
}

// ---------------------------------------------------------------------- the test ----

async function adminPageTest(ctx, args, requests) {
  const { page } = ctx;
  const { adminUrl, wsUrl, sessions: n, token } = args;
  const wsOrigin = new URL(wsUrl).origin;
  let loggedIn = false;

  await refusedHandshake(`${wsOrigin}/no-such-route-e2e`);
  log(`a handshake to ${wsOrigin}/no-such-route-e2e refused with 404`);

  await page.setViewportSize({ width: 1280, height: 900 });
  const resp = await page.goto(`${adminUrl}/`);
  check(resp && resp.status() === 200, `GET ${adminUrl}/ answered ${resp && resp.status()}`);
  const type = resp.headers()["content-type"] || "";
  check(/^text\/html/.test(type), `GET ${adminUrl}/ is ${type}, not text/html`);
  log(`page ${adminUrl}/ (${type}, ${(await resp.body()).length} bytes)`);

  // Either the stream comes up, or the page asks for the token first (reads need it too).
  await waitPage(page, "the page going live or asking for the token",
    () => document.getElementById("live").className === "live" || !document.getElementById("login").hidden, null,
    async () => `its indicator says ${await textOf(page, byTestId("live"))}`);
  if (await page.isVisible(byTestId("login-form"))) {
    await logIn(page, token, "reading needs the token");
    loggedIn = true;
  }
  await waitPage(page, "the page going live", () => document.getElementById("live").className === "live", null,
    async () => `its indicator says ${await textOf(page, byTestId("live"))}`);
  log(`live: version ${await textOf(page, byTestId("version"))}, up ${await textOf(page, byTestId("uptime"))}`);
  await waitOpenCount(page, 0);
  await waitPage(page, "the refusal in the refusals table",
    () => Array.from(document.querySelectorAll("#refusals tr:not(.empty)")).some((tr) => tr.cells[2].textContent === "404"));
  log(`  refusals: ${JSON.stringify(await tableRows(page, "#refusals"))}`);

  const clients = [];
  for (let i = 0; i < n; i++) clients.push(await openSession(wsUrl, i));
  log(`${n} sessions open through ${wsUrl}: ${clients.map((c) => c.client).join(", ")}`);
  await waitOpenCount(page, n);
  log(`  the page shows ${n} open sessions`);
  // Each client's row, once its message each way has been counted.
  await waitPage(page, "every session's row with its client and one message each way",
    (want) => {
      const rows = Array.from(document.querySelectorAll("#sessions tr[data-session-id]"));
      return want.every((c) => rows.some((tr) => tr.cells[1].textContent === c && tr.cells[9].textContent === "1 / 1"));
    },
    clients.map((c) => c.client), async () => JSON.stringify(await sessionRows(page)));
  // Quiet for the route's `hibernate_after`, each session hibernates, and its row says so; the
  // close below then reaches a sleeping session.
  await waitPage(page, "every session's row marked asleep",
    (want) => {
      const rows = Array.from(document.querySelectorAll("#sessions tr[data-session-id]"));
      return want.every((c) => rows.some((tr) => tr.cells[1].textContent === c && tr.cells[10].textContent.endsWith(" ago\nasleep")));
    },
    clients.map((c) => c.client), async () => JSON.stringify(await sessionRows(page)));
  const rows = await sessionRows(page);
  for (const r of rows) log(`  row ${JSON.stringify(r)}`);

  const victim = clients[Math.floor(n / 2)];
  const id = rows.find((r) => r.client === victim.client).id;
  log(`closing session ${id} (client ${victim.client}) from the page: code ${CLOSE_CODE}, reason ${JSON.stringify(CLOSE_REASON)}`);
  loggedIn = (await writeFromPage(page, token, `closing session ${id}`, async () => {
    await page.click(byTestId(`close-${id}`));
    await dialogSubmit(page, "close-dialog", { "close-code": String(CLOSE_CODE), "close-reason": CLOSE_REASON }, "close-confirm");
  }, victim.closed)) || loggedIn;
  const got = await victim.closed;
  check(got.code === CLOSE_CODE && got.reason === CLOSE_REASON,
    `client ${victim.client} got close ${got.code} ${JSON.stringify(got.reason)}, expected ${CLOSE_CODE} ${JSON.stringify(CLOSE_REASON)}`);
  log(`  client ${victim.client} got the close frame: ${got.code} ${JSON.stringify(got.reason)}`);
  await waitOpenCount(page, n - 1);
  check(!(await page.$(`#sessions tr[data-session-id="${id}"]`)), `session ${id}'s row is still there`);
  const others = clients.filter((c) => c !== victim);
  check(others.every((c) => c.ws.readyState === WebSocket.OPEN), "closing one session closed others too");
  log(`  the page shows ${n - 1} open sessions, without ${id}; notice: ${await textOf(page, byTestId("notice"))}`);
  await waitPage(page, "the close code in the close codes table",
    () => Array.from(document.querySelectorAll("#codes tr:not(.empty)")).some((tr) => /^4/.test(tr.cells[2].textContent)), null,
    async () => JSON.stringify(await tableRows(page, "#codes")));
  log(`  close codes: ${JSON.stringify(await tableRows(page, "#codes"))}`);

  loggedIn = (await drainAndUndrain(page, token)) || loggedIn;
  check(token === null || loggedIn, "the admin listener has a token, yet the page never asked for it");

  await checkAccessibleNames(page);
  const shots = await checkLayoutAndColours(page, args.out);
  log(`screenshots: ${shots.desktop}, ${shots.phone}, ${shots.dark}`);

  for (const c of others) c.ws.close(1000, "done");
  await within(Promise.all(others.map((c) => c.closed)), "the other sessions closing");
  await waitOpenCount(page, 0);
  log("  the other sessions closed: the page shows 0 open");

  const foreign = requests.filter((u) => !u.startsWith(`${adminUrl}/`) && !u.startsWith("data:"));
  check(foreign.length === 0, `the page loaded from elsewhere: ${foreign.join(", ")}`);
  log(`admin-page OK (${n} sessions, one closed from the page with ${CLOSE_CODE}, drain and undrain${token ? ", token login" : ""}; ${requests.length} requests, all to the admin listener)`);
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`admin-page.js: ${e.message}`);
    process.exit(2);
  }
  const profile = fs.mkdtempSync(path.join(process.env.E2E_TMP || os.tmpdir(), "chromium-profile-"));
  const diag = [];
  const requests = [];
  let ctx;
  try {
    ctx = await launch("chromium", args.adminUrl.startsWith("https:"), profile);
    const { page } = ctx;
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    page.on("console", (m) => diag.push(`console.${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => diag.push(`pageerror: ${e.message}`));
    page.on("request", (r) => requests.push(r.url()));
    await adminPageTest(ctx, args, requests);
    const errors = diag.filter((d) => d.startsWith("pageerror"));
    check(errors.length === 0, `the page threw: ${errors.join("; ")}`);
  } catch (e) {
    console.error(`admin-page: FAILED: ${e instanceof Failure ? e.message : e.stack || e}`);
    if (diag.length) console.error(`admin-page: what the page reported:\n  ${diag.join("\n  ")}`);
    process.exitCode = 1;
    if (ctx) {
      const shot = path.join(args.out, "admin-page-failed.png");
      await ctx.page.screenshot({ path: shot, fullPage: true }).then(() => console.error(`admin-page: the page as it was: ${shot}`), () => {});
    }
  } finally {
    if (ctx) await ctx.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
    // Sessions still open (after a failure) must not keep Node running.
    setImmediate(() => process.exit());
  }
}

main();
