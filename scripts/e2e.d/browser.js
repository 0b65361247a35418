#!/usr/bin/env node
// Drives Debian's Chromium with playwright-core (or, with --browser firefox, Debian's Firefox ESR
// with puppeteer-core over WebDriver BiDi; never a downloaded browser) through wsgate.
//
//   node browser.js proxy WS_URL       the classic client page against WS_URL, served from a
//                                      throwaway HTTP server on a free port (wsgate serves only
//                                      WebSocket routes)
//   node browser.js demo PAGE_URL [--transport h1|h2]
//                                      the page of `wsgate demo`: type, Send, Close; with
//                                      --transport, the page's info line (the demo backend's
//                                      first message) must name that transport
//   node browser.js transport ORIGIN --transport h1|h2 [--backend-log FILE] [--label L]
//                                      a page of wsgate's own origin opens ORIGIN/ws, echoes,
//                                      closes 1000; the browser must have used --transport
//   node browser.js policy ORIGIN --transport h1|h2 --backend-log FILE [--label L]
//                       [--jwt-secret-env NAME]
//                                      the policy routes of scripts/e2e's wss config: JWT from
//                                      a cookie (valid, none, bad signature, expired) and Origin
//                                      allow-lists (same-origin, elsewhere only)
//
//   --browser firefox (demo and transport only): Firefox ESR instead of Chromium. Firefox has
//   no DevTools Protocol, so there the transport is told by the page (demo), the backend's Via
//   and wsgate's access log alone.
//
// ORIGIN is wsgate's https:// (or http://) origin. wsgate serves no pages outside `wsgate
// demo`, so the page that opens the WebSockets is wsgate's answer to GET ORIGIN/ (404 "no
// route", a text document): Chromium renders it as a document of ORIGIN, so scripts run in
// it have ORIGIN as their Origin, cookies of ORIGIN go along, and the TLS (h2) connection the
// page came over is the one Chromium may reuse for a WebSocket (RFC 8441): exactly like an
// application page served from the same origin. (page.setContent or page.route cannot give a
// page a real origin; a page served from another port would be cross-origin, and Chromium
// then never uses h2 for the WebSocket.)
//
// How the transport is told on the browser's side: the DevTools Protocol's
// Network.webSocketHandshakeResponseReceived reports status 200 for a WebSocket over an
// HTTP/2 extended CONNECT stream and 101 for an HTTP/1.1 Upgrade. With --backend-log (the
// stdout of `echo-backend.js --log-handshakes`), what reached the backend is checked too:
// which scenarios got through, their cookies, Origin, X-User and wsgate's Via (`2 wsgate` or
// `1.1 wsgate`). Scenario URLs carry `?s=LABEL-NAME` so each is found in the backend's log.
//
// Prints one line per step and "browser: <test> OK" at the end; any mismatch throws, prints
// what the page saw (its event log, console and errors) and exits 1.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const http = require("http");
const os = require("os");
const path = require("path");

const CHROMIUM = process.env.E2E_CHROMIUM || "/usr/bin/chromium";
const FIREFOX = process.env.E2E_FIREFOX || "/usr/bin/firefox-esr";
const STEP_TIMEOUT_MS = Number(process.env.E2E_BROWSER_STEP_TIMEOUT_MS || 15000);
const CLOSE_REASON = "Closing Connection Normally";

// Without the background-networking flags Chromium keeps trying Google's hosts, and on a
// closed network those connections pile up.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
// wsgate's TLS listeners in these tests use self-signed development certificates (`wsgate
// cert`, `wsgate demo --tls`), which no CA vouches for: this flag makes Chromium accept them,
// as a person clicks through the warning. It changes nothing else: ALPN, HTTP/2 and the
// reuse of the page's h2 connection for WebSockets are as with a trusted certificate.
// (For Firefox the same is puppeteer's acceptInsecureCerts, a WebDriver capability.)
const CHROMIUM_TLS_ARGS = ["--ignore-certificate-errors"];

// What a WebSocket handshake answers per transport, as DevTools reports it.
const HANDSHAKE_STATUS = { h1: 101, h2: 200 };

function log(msg) {
  console.log(`browser: ${msg}`);
}

class Failure extends Error {}

function check(cond, msg) {
  if (!cond) throw new Failure(msg);
}

function parseArgs(argv) {
  const [mode, target, ...rest] = argv;
  const opts = {};
  for (let i = 0; i < rest.length; i++) {
    const m = /^--([a-z-]+)$/.exec(rest[i]);
    if (!m || i + 1 >= rest.length) throw new Failure(`bad argument ${rest[i]}`);
    opts[m[1]] = rest[++i];
  }
  return { mode, target, opts };
}

// ------------------------------------------------------------------------- proxy ----

// The page under test for `proxy`: the classic client, recording every event in
// window.__events and resolving window.__done when the close has arrived.
function clientPage(wsUrl) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>wsgate e2e</title></head>
<body><pre id="log"></pre>
<script>
  window.__events = [];
  const rec = (e) => { window.__events.push(e); document.getElementById("log").textContent += JSON.stringify(e) + "\\n"; };
  window.__done = new Promise((resolve) => {
    const ws = new WebSocket(${JSON.stringify(wsUrl)}, ["chat", "superchat"]);
    ws.binaryType = "arraybuffer";
    const text = "Hello through wsgate \\u2713 " + Date.now();
    // 256 KiB of random bytes: several relay read chunks, and incompressible, so the byte
    // counts in wsgate's access log are at least this even with permessage-deflate.
    const big = new Uint8Array(256 * 1024);
    for (let i = 0; i < big.length; i += 65536) crypto.getRandomValues(big.subarray(i, i + 65536));
    const expected = [text, big];
    const got = [];
    const same = (m, e) => typeof e === "string" ? m === e
      : m instanceof ArrayBuffer && m.byteLength === e.length && new Uint8Array(m).every((b, i) => b === e[i]);
    const show = (m) => typeof m === "string" ? m : "binary " + m.byteLength + " bytes";
    ws.onopen = () => {
      rec({ type: "open", protocol: ws.protocol, extensions: ws.extensions });
      ws.send(text); ws.send(big);
    };
    ws.onmessage = (e) => {
      const i = got.length;
      got.push(e.data);
      rec({ type: "message", data: show(e.data), ok: i < expected.length && same(e.data, expected[i]) });
      if (got.length === expected.length) {
        rec({ type: "closing" });
        ws.close(1000, ${JSON.stringify(CLOSE_REASON)});
      }
    };
    ws.onerror = () => rec({ type: "error" });
    ws.onclose = (e) => {
      rec({ type: "close", code: e.code, reason: e.reason, wasClean: e.wasClean,
            echoes: got.length, allEchoesMatch: got.length === expected.length && got.every((m, i) => same(m, expected[i])) });
      resolve(window.__events);
    };
  });
</script></body></html>`;
}

function servePage(html) {
  return new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => {
      if (req.url === "/favicon.ico") {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
      res.end(html);
    });
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

async function proxyTest({ page }, wsUrl) {
  const server = await servePage(clientPage(wsUrl));
  const pageUrl = `http://127.0.0.1:${server.address().port}/`;
  log(`page ${pageUrl} -> ${wsUrl}`);
  try {
    await page.goto(pageUrl);
    const events = await page.evaluate(
      (ms) =>
        Promise.race([
          window.__done,
          new Promise((r) => setTimeout(() => r(window.__events.concat([{ type: "timeout", ms }])), ms)),
        ]),
      STEP_TIMEOUT_MS,
    );
    for (const e of events) log(`  event ${JSON.stringify(e)}`);
    const open = events.find((e) => e.type === "open");
    const close = events.find((e) => e.type === "close");
    check(open, "no open event (handshake through wsgate failed?)");
    check(open.protocol === "chat", `ws.protocol is ${JSON.stringify(open.protocol)}, expected "chat"`);
    check(events[0] === open, `first event is ${JSON.stringify(events[0])}, expected open`);
    check(close, "no close event within the timeout");
    check(close.allEchoesMatch, `echoes wrong or missing: got ${close.echoes} of 2 (see events above)`);
    check(close.code === 1000, `close code ${close.code}, expected 1000`);
    check(close.reason === CLOSE_REASON, `close reason ${JSON.stringify(close.reason)}, expected ${JSON.stringify(CLOSE_REASON)}`);
    check(close.wasClean, "close was not clean");
    check(!events.some((e) => e.type === "error"), "the page saw a WebSocket error event");
    log(`proxy OK (protocol ${open.protocol}, extensions ${JSON.stringify(open.extensions)}, text and 256 KiB binary echoed, close 1000 clean)`);
  } finally {
    server.close();
  }
}

// ---------------------------------------------------------------- devtools watch ----

// Every WebSocket the page opens, as the DevTools Protocol sees it: URL, handshake status
// (200 = HTTP/2 extended CONNECT, 101 = HTTP/1.1 Upgrade, or a refusal's status) and errors.
// Chromium only: for Firefox, `available` is false and `settle` finds nothing.
async function watchWebSockets({ browserName, context, page }) {
  if (browserName !== "chromium") return { available: false, forUrl: () => [], settle: async () => null };
  const cdp = await context.newCDPSession(page);
  const byId = new Map();
  const all = [];
  cdp.on("Network.webSocketCreated", ({ requestId, url }) => {
    const r = { url, status: null, errors: [], closed: false };
    byId.set(requestId, r);
    all.push(r);
  });
  cdp.on("Network.webSocketHandshakeResponseReceived", ({ requestId, response }) => {
    const r = byId.get(requestId);
    if (r) r.status = response.status;
  });
  cdp.on("Network.webSocketFrameError", ({ requestId, errorMessage }) => {
    const r = byId.get(requestId);
    if (r) r.errors.push(errorMessage);
  });
  cdp.on("Network.webSocketClosed", ({ requestId }) => {
    const r = byId.get(requestId);
    if (r) r.closed = true;
  });
  await cdp.send("Network.enable");
  return {
    available: true,
    forUrl: (url) => all.filter((r) => r.url === url),
    // DevTools events arrive on their own channel: give them a moment to catch up with
    // what the page already saw.
    settle: async (url, pred) => {
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline) {
        const rs = all.filter((r) => r.url === url);
        if (rs.length && pred(rs[rs.length - 1])) return rs[rs.length - 1];
        await new Promise((r) => setTimeout(r, 20));
      }
      const rs = all.filter((r) => r.url === url);
      return rs[rs.length - 1] || null;
    },
  };
}

// What both playwright's and puppeteer's pages can do, the same way.
const textOf = (page, selector) => page.$eval(selector, (e) => e.textContent);
const setValue = (page, selector, value) => page.$eval(selector, (e, v) => { e.value = v; }, value);

function transportOf(status) {
  return Object.keys(HANDSHAKE_STATUS).find((t) => HANDSHAKE_STATUS[t] === status) || `status ${status}`;
}

// ------------------------------------------------------------------------- demo -----

async function demoTest(ctx, pageUrl, opts) {
  const { page } = ctx;
  const want = opts.transport;
  check(!want || HANDSHAKE_STATUS[want], `--transport must be h1 or h2, not ${want}`);
  log(`demo page ${pageUrl}${want ? ` (expecting the WebSocket over ${want})` : ""}`);
  const ws = await watchWebSockets(ctx);
  const resp = await page.goto(pageUrl);
  check(resp && resp.status() === 200, `GET ${pageUrl} answered ${resp && resp.status()}`);
  const logLines = () => page.$$eval("#log > div", (ds) => ds.map((d) => `${d.className}: ${d.textContent}`));
  const wait = async (selector, what) => {
    try {
      await page.waitForSelector(selector, { timeout: STEP_TIMEOUT_MS });
    } catch (e) {
      throw new Failure(`demo page: no ${what} within ${STEP_TIMEOUT_MS} ms; its log:\n  ${(await logLines()).join("\n  ")}`);
    }
  };
  await wait("#log > div.open", "open line");
  const openText = await textOf(page, "#log > div.open");
  check(/subprotocol: chat\)/.test(openText), `demo open line does not name subprotocol chat: ${openText}`);
  if (want) {
    // The demo backend's first message names the transport wsgate received (from its Via).
    await wait("#log > div.info", "info line (the demo backend's greeting)");
    const info = await textOf(page, "#log > div.info");
    const says = want === "h2" ? "over HTTP/2 (an extended CONNECT stream, RFC 8441)" : "over HTTP/1.1 (Upgrade)";
    check(info.includes(says), `demo info line does not say "${says}": ${info}`);
    if (ws.available) {
      const wsUrl = new URL("/echo", pageUrl).href.replace(/^http/, "ws");
      const seen = await ws.settle(wsUrl, (r) => r.status !== null);
      check(seen, `DevTools saw no WebSocket to ${wsUrl}`);
      check(seen.status === HANDSHAKE_STATUS[want],
        `DevTools: the WebSocket's handshake answered ${seen.status} (${transportOf(seen.status)}), expected ${HANDSHAKE_STATUS[want]} (${want})`);
      log(`  info line and DevTools (handshake status ${seen.status}) agree: ${want}`);
    } else {
      log(`  info line: ${want}`);
    }
  }
  const text = `hello demo ${Date.now()}`;
  await setValue(page, "#message", text);
  await page.click("#send");
  await wait("#log > div.message", "echoed message");
  const msgText = await textOf(page, "#log > div.message");
  check(msgText.endsWith(`message: ${text}`), `echo ${JSON.stringify(msgText)} does not end with the sent text ${JSON.stringify(text)}`);
  await page.click("#close");
  await wait("#log > div.close", "close line");
  const closeText = await textOf(page, "#log > div.close");
  const lines = await logLines();
  for (const l of lines) log(`  ${l}`);
  check(/close: code 1000\b/.test(closeText), `demo close line is not code 1000: ${closeText}`);
  check(/\(clean\)/.test(closeText), `demo close was not clean: ${closeText}`);
  check(!lines.some((l) => l.startsWith("error")), "the demo page logged an error");
  check((await textOf(page, "#status")) === "closed", "demo status is not 'closed'");
  log(`demo OK (open with chat, ${want ? `over ${want}, ` : ""}echo, close 1000 clean)`);
}

// ------------------------------------------------------ scenarios at wsgate's origin ----

// One WebSocket from the page: open, send one text, expect it back, close 1000. Resolves
// with the page's events whatever happens (a refused handshake: error, then close 1006).
function openEchoClose(page, url) {
  return page.evaluate(
    ([url, ms, reason]) =>
      new Promise((resolve) => {
        const events = [];
        const text = `e2e ${url} ${Date.now()}`;
        const timer = setTimeout(() => {
          events.push({ type: "timeout", ms });
          resolve(events);
        }, ms);
        let ws;
        try {
          ws = new WebSocket(url, ["chat", "superchat"]);
        } catch (e) {
          clearTimeout(timer);
          resolve([{ type: "throw", message: String(e) }]);
          return;
        }
        ws.onopen = () => {
          events.push({ type: "open", protocol: ws.protocol });
          ws.send(text);
        };
        ws.onmessage = (e) => {
          events.push({ type: "message", ok: e.data === text });
          ws.close(1000, reason);
        };
        ws.onerror = () => events.push({ type: "error" });
        ws.onclose = (e) => {
          events.push({ type: "close", code: e.code, reason: e.reason, wasClean: e.wasClean });
          clearTimeout(timer);
          resolve(events);
        };
      }),
    [url, STEP_TIMEOUT_MS, CLOSE_REASON],
  );
}

// The upgrade requests that reached the Node backend (echo-backend.js --log-handshakes).
function backendHandshakes(file) {
  return fs
    .readFileSync(file, "utf8")
    .split("\n")
    .filter((l) => l.startsWith("echo-backend upgrade "))
    .map((l) => JSON.parse(l.slice("echo-backend upgrade ".length)));
}

// Loads wsgate's own answer to GET ORIGIN/ as the page (see the header comment). Over TLS the
// page itself must come over `transport` too (ALPN: h2, or http/1.1 when wsgate's listener
// has HTTP/2 off): an h2 page connection is what lets Chromium use RFC 8441.
async function gotoOrigin(page, origin, transport) {
  const resp = await page.goto(`${origin}/`);
  check(resp, `GET ${origin}/ got no response`);
  const loc = await page.evaluate(() => ({
    origin: window.location.origin,
    protocol: performance.getEntriesByType("navigation")[0].nextHopProtocol,
  }));
  check(loc.origin === origin, `the page's origin is ${loc.origin}, expected ${origin} (status ${resp.status()})`);
  if (origin.startsWith("https:")) {
    const want = transport === "h2" ? "h2" : "http/1.1";
    check(loc.protocol === want, `the page came over ${loc.protocol}, expected ${want}`);
  }
  log(`page ${origin}/: wsgate's ${resp.status()} document over ${loc.protocol}, origin ${loc.origin}`);
}

// Runs the scenarios one after another. Each: { name, path, expect: "ok" | STATUS,
// cookies?: {name: value}, backend?: {field: value} }. ok: open, echo, close 1000 clean, over
// `transport`; STATUS: no open, an error and close 1006, and the DevTools error names STATUS.
// Then what reached the backend: every ok scenario exactly once (with `backend`'s fields),
// no refused one at all.
async function runScenarios(ctx, origin, transport, label, scenarios, backendLog) {
  const { context, page } = ctx;
  const ws = await watchWebSockets(ctx);
  const wsOrigin = origin.replace(/^http/, "ws");
  await gotoOrigin(page, origin, transport);
  const results = [];
  for (const s of scenarios) {
    const id = `${label}-${s.name}`;
    const url = `${wsOrigin}${s.path}?s=${id}`;
    if (s.cookies) check(ctx.browserName === "chromium", `${id}: cookie scenarios need Chromium (playwright's cookie API)`);
    if (ctx.browserName === "chromium") await context.clearCookies();
    const cookies = Object.entries(s.cookies || {}).map(([name, value]) => ({
      name,
      value,
      url: origin,
      // A session cookie as a server would set it: not readable by scripts, sent only to its site.
      httpOnly: name === "session",
      secure: origin.startsWith("https:"),
      sameSite: "Strict",
    }));
    if (cookies.length) await context.addCookies(cookies);
    const events = await openEchoClose(page, url);
    const seen = await ws.settle(url, (r) => r.status !== null || r.errors.length > 0 || r.closed);
    const show = `${events.map((e) => JSON.stringify(e)).join(" ")}; DevTools: ${JSON.stringify(seen)}`;
    const open = events.find((e) => e.type === "open");
    const close = events.find((e) => e.type === "close");
    check(close, `${id}: no close event within ${STEP_TIMEOUT_MS} ms: ${show}`);
    if (s.expect === "ok") {
      check(open, `${id}: ${url} did not open: ${show}`);
      check(open.protocol === "chat", `${id}: ws.protocol ${JSON.stringify(open.protocol)}, expected "chat"`);
      check(events.some((e) => e.type === "message" && e.ok), `${id}: no echo: ${show}`);
      check(close.code === 1000 && close.wasClean && close.reason === CLOSE_REASON, `${id}: close not 1000 clean with the reason: ${show}`);
      check(!events.some((e) => e.type === "error"), `${id}: error event: ${show}`);
      if (ws.available) {
        check(seen && seen.status === HANDSHAKE_STATUS[transport],
          `${id}: DevTools says the handshake answered ${seen && seen.status} (${seen && transportOf(seen.status)}), expected ${HANDSHAKE_STATUS[transport]} (${transport}): ${show}`);
      }
      log(`  ${id}: open (chat), echo, close 1000 clean${ws.available ? `, over ${transport} (handshake status ${seen.status})` : ""}`);
    } else {
      check(!open, `${id}: ${url} opened, but wsgate should have refused it (${s.expect}): ${show}`);
      check(events.some((e) => e.type === "error") && close.code === 1006 && !close.wasClean,
        `${id}: expected an error event and close 1006: ${show}`);
      // DevTools names the refusal's status ("Unexpected response code: 403"), except for a
      // 401: Chromium takes its Bearer challenge to its HTTP auth code, which reports "HTTP
      // Authentication failed; no valid credentials available" over HTTP/1.1 and an empty
      // message over HTTP/2. The status is checked in wsgate's access log either way
      // (scripts/e2e: access-log.js --refused).
      const why = `${seen ? seen.errors.filter((e) => e).join("; ") : ""}${seen && seen.status !== null ? ` status ${seen.status}` : ""}`.trim();
      const named = new RegExp(`\\b${s.expect}\\b`).test(why) ||
        (s.expect === 401 && (transport === "h2" ? why === "" : /^HTTP Authentication failed/.test(why)));
      if (ws.available) check(named, `${id}: DevTools does not report status ${s.expect}: ${show}`);
      log(`  ${id}: refused as expected (${why || "DevTools gave no reason"})`);
    }
    results.push({ s, id });
  }
  if (backendLog) {
    const got = backendHandshakes(backendLog);
    for (const { s, id } of results) {
      const mine = got.filter((h) => new URL(h.path, "http://x").searchParams.get("s") === id);
      if (s.expect !== "ok") {
        check(mine.length === 0, `${id}: refused by wsgate, yet the backend got ${mine.length} upgrade request(s): ${JSON.stringify(mine)}`);
        continue;
      }
      check(mine.length === 1, `${id}: the backend got ${mine.length} upgrade requests for it, expected 1`);
      const h = mine[0];
      const want = { via: transport === "h2" ? "2 wsgate" : "1.1 wsgate", ...(s.backend || {}) };
      for (const [k, v] of Object.entries(want)) {
        check(h[k] === v, `${id}: the backend's request has ${k} ${JSON.stringify(h[k])}, expected ${JSON.stringify(v)} (${JSON.stringify(h)})`);
      }
      log(`  ${id}: backend got ${JSON.stringify(h)}`);
    }
    const ids = new Set(results.map((r) => r.id));
    const strays = got.filter((h) => {
      const s = new URL(h.path, "http://x").searchParams.get("s") || "";
      return s.startsWith(`${label}-`) && !ids.has(s);
    });
    check(strays.length === 0, `the backend got requests no scenario made: ${JSON.stringify(strays)}`);
  }
  return results;
}

async function transportTest(ctx, origin, opts) {
  const transport = opts.transport;
  check(HANDSHAKE_STATUS[transport], `--transport must be h1 or h2, not ${transport}`);
  const label = opts.label || transport;
  await runScenarios(ctx, origin, transport, label, [{ name: "echo", path: "/ws", expect: "ok", backend: { x_forwarded_proto: "https" } }], opts["backend-log"]);
  log(`transport OK (${origin}/ws over ${transport}: echo, close 1000 clean)`);
}

// --------------------------------------------------------------------- policy -------

function b64url(x) {
  return Buffer.from(x).toString("base64url");
}

// An HS256 JWT (RFC 7519), minted here as an identity provider would.
function mintJwt(secret, claims) {
  const input = `${b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${crypto.createHmac("sha256", secret).update(input).digest("base64url")}`;
}

// Keep in step with the routes in scripts/e2e (wss_config).
const JWT_ISSUER = "wsgate-e2e";
const JWT_AUDIENCE = "wsgate-e2e-backend";

async function policyTest(ctx, origin, opts) {
  const transport = opts.transport;
  check(HANDSHAKE_STATUS[transport], `--transport must be h1 or h2, not ${transport}`);
  check(opts["backend-log"], "policy needs --backend-log");
  const envName = opts["jwt-secret-env"] || "E2E_JWT_SECRET";
  const secret = process.env[envName];
  check(secret, `no JWT secret in $${envName}`);
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: "e2e-user", iss: JWT_ISSUER, aud: JWT_AUDIENCE, iat: now, exp: now + 300 };
  const valid = mintJwt(secret, claims);
  const forged = mintJwt(`not-${secret}`, claims);
  const expired = mintJwt(secret, { ...claims, iat: now - 7200, exp: now - 3600 });
  const scenarios = [
    // The token cookie is removed before the backend (the JWT's own cookie by default, and
    // strip_cookies says so too); other cookies pass. X-User comes from the verified `sub`.
    { name: "jwt-valid", path: "/jwt", expect: "ok", cookies: { session: valid, theme: "dark" },
      backend: { cookie: "theme=dark", x_user: "e2e-user" } },
    { name: "jwt-no-cookie", path: "/jwt", expect: 401, cookies: { theme: "dark" } },
    { name: "jwt-bad-signature", path: "/jwt", expect: 401, cookies: { session: forged, theme: "dark" } },
    { name: "jwt-expired", path: "/jwt", expect: 401, cookies: { session: expired } },
    // The page's own origin is wsgate's (see the header comment): same-origin allows it.
    { name: "origin-same", path: "/origin-same", expect: "ok", backend: { origin } },
    { name: "origin-elsewhere", path: "/origin-elsewhere", expect: 403 },
  ];
  await runScenarios(ctx, origin, transport, opts.label || transport, scenarios, opts["backend-log"]);
  log(`policy OK (${scenarios.length} scenarios over ${transport}: JWT cookie valid/none/forged/expired, Origin same/elsewhere)`);
}

// ----------------------------------------------------------------------- main -------

const MODES = { proxy: proxyTest, demo: demoTest, transport: transportTest, policy: policyTest };

// Launches the browser on a fresh profile -> { browserName, context (playwright, Chromium
// only), page, close }.
async function launch(browserName, tls, profile) {
  if (browserName === "chromium") {
    const { chromium } = require("playwright-core");
    // A persistent context on a fresh empty dir is the way to give Chromium its
    // --user-data-dir under playwright (which refuses that flag in `args`).
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: tls ? CHROMIUM_ARGS.concat(CHROMIUM_TLS_ARGS) : CHROMIUM_ARGS,
      timeout: 60000,
    });
    const page = context.pages()[0] || (await context.newPage());
    return { browserName, context, page, close: () => context.close() };
  }
  if (browserName === "firefox") {
    const puppeteer = require("puppeteer-core");
    const browser = await puppeteer.launch({
      browser: "firefox",
      protocol: "webDriverBiDi",
      executablePath: FIREFOX,
      headless: true,
      userDataDir: profile,
      // The self-signed development certificate (see CHROMIUM_TLS_ARGS).
      acceptInsecureCerts: tls,
      // puppeteer already turns off updates, telemetry, Safe Browsing lists and remote
      // settings; these are the other hosts Firefox would try on its own (see CHROMIUM_ARGS).
      extraPrefsFirefox: {
        "network.captive-portal-service.enabled": false,
        "network.connectivity-service.enabled": false,
        "network.trr.mode": 5,
        "network.dns.disablePrefetch": true,
        "network.prefetch-next": false,
        "browser.region.network.url": "",
        "browser.region.update.enabled": false,
        "extensions.blocklist.enabled": false,
        "messaging-system.rsexperimentloader.enabled": false,
        "toolkit.telemetry.enabled": false,
      },
      timeout: 60000,
    });
    const page = await browser.newPage();
    return { browserName, context: null, page, close: () => browser.close() };
  }
  throw new Failure(`--browser must be chromium or firefox, not ${browserName}`);
}

async function main() {
  let mode, target, opts;
  try {
    ({ mode, target, opts } = parseArgs(process.argv.slice(2)));
    check(MODES[mode] && target, "missing mode or target");
  } catch (e) {
    console.error(`browser.js: ${e.message}; see the usage at the top of ${__filename}`);
    process.exit(2);
  }
  const browserName = opts.browser || "chromium";
  const profile = fs.mkdtempSync(path.join(process.env.E2E_TMP || os.tmpdir(), `${browserName}-profile-`));
  const diag = [];
  let ctx;
  try {
    ctx = await launch(browserName, target.startsWith("https:"), profile);
    const { page } = ctx;
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    page.on("console", (m) => diag.push(`console.${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => diag.push(`pageerror: ${e.message}`));
    page.on("websocket", (ws) => {
      diag.push(`websocket ${ws.url()}`);
      ws.on("socketerror", (e) => diag.push(`websocket error: ${e}`));
      ws.on("close", () => diag.push(`websocket closed ${ws.url()}`));
    });
    log(`${browserName}: ${mode} ${target}`);
    await MODES[mode](ctx, target, opts);
  } catch (e) {
    console.error(`browser: ${mode} (${browserName}) FAILED: ${e instanceof Failure ? e.message : e.stack || e}`);
    if (diag.length) console.error(`browser: what the page reported:\n  ${diag.join("\n  ")}`);
    process.exitCode = 1;
  } finally {
    if (ctx) await ctx.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

// Run as a script; admin-page.js requires it for the same browser launch.
if (require.main === module) main();
module.exports = { launch, check, Failure, STEP_TIMEOUT_MS };
