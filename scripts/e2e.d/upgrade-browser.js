#!/usr/bin/env node
// A browser across a binary upgrade over HTTP/2, for the upgrade part of scripts/e2e.
//
//   node upgrade-browser.js ORIGIN --pid PID --log FILE [--browser chromium|firefox]
//                           [--held N] [--spread-ms MS] [--label L]
//
// ORIGIN is the https:// origin of a `wsgate run` with a TLS listener (HTTP/2 on), `[upgrade]
// socket` and `[shutdown] close_spread` of MS (default 6000) milliseconds, whose route /ws
// (a prefix) leads to the Node echo backend; PID is that process and FILE its log
// (`--log-format json`; the successor inherits its stderr, so FILE holds both processes').
//
// The page is wsgate's own answer to GET ORIGIN/ over h2 (see browser.js: only then does the
// browser put a WebSocket on that connection, RFC 8441). In it:
//   1. N (default 3) held WebSockets A1..AN (ORIGIN/ws/aI) open over that h2 connection and
//      echo one message after another, each 100 ms after the last echo, for the whole test;
//   2. SIGUSR2 to PID; once the successor logs that the previous process has stopped
//      accepting (it serves: the hand-over is done) and 100 ms more have passed, the page
//      opens WebSocket B (ORIGIN/ws/b) and echoes on it. B must open and be the successor's:
//      the draining process answers a new WebSocket with 503 (the page sees an error and
//      close 1006), and before its drain began it admitted one (then closed it with 1001);
//      with the GOAWAY the old process sends at the hand-over, the browser opens B on a new
//      connection, which the successor accepts;
//   3. every A goes on echoing until its 1001 comes (each at its own moment within the
//      close_spread window), and closes cleanly with code 1001;
//   4. once the old process has logged "shutdown complete", B still echoes (so the successor
//      serves it), and closes 1000 cleanly.
// Several A's, not one: each gets its 1001 at a uniformly random moment within the window,
// and the test means something only while an A still holds the old h2 connection open when B
// is opened (else the connection is gone and B needs a new one whatever wsgate does); with
// N = 3 and 6 s, all three closing within the ~0.3 s before B opens is about 1 in 10^4 (it
// fails as inconclusive).
//
// Checked in wsgate's log too: the A's came over h2 ("transport":"h2" in their "session open"
// records; for Chromium also DevTools' handshake status 200), B was admitted ("session open"
// for /ws/b) and never refused ("handshake refused" for /ws/b, the draining process's 503).
// B's transport is reported, not checked (Chromium opens a WebSocket over h2 only on an h2
// connection it already has, so on its new connection B is an HTTP/1.1 Upgrade; Firefox
// opens a new h2 connection for it). The old process's exit status is the caller's to check
// (it is not this script's child).
//
// Prints one line per step and "upgrade-browser: OK ..." at the end; any failure prints what
// the page saw and exits 1.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { launch, check, Failure, STEP_TIMEOUT_MS } = require("./browser.js");

const ECHO_INTERVAL_MS = 100;
// After the last echo, the next message goes out ECHO_INTERVAL_MS later; its echo takes a
// few ms on loopback. A longer silence before the 1001 means the A's had stalled.
const MAX_SILENCE_MS = 1500;
// From the successor's "the previous process has stopped accepting" to B: the old process's
// GOAWAY, sent before that line, crosses loopback in far less.
const GOAWAY_MARGIN_MS = 100;

function log(msg) {
  console.log(`upgrade-browser: ${msg}`);
}

function parseArgs(argv) {
  const [target, ...rest] = argv;
  const opts = {};
  for (let i = 0; i < rest.length; i++) {
    const m = /^--([a-z-]+)$/.exec(rest[i]);
    if (!m || i + 1 >= rest.length) throw new Failure(`bad argument ${rest[i]}`);
    opts[m[1]] = rest[++i];
  }
  return { target, opts };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// wsgate's JSON log lines so far (a line still being written is left for the next read).
function readLog(file) {
  const out = [];
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      out.push(JSON.parse(line));
    } catch {
      // a partial last line
    }
  }
  return out;
}

// Polls FILE until some record satisfies pred -> that record; fails after ms (or at once if
// the upgrade was aborted).
async function waitForRecord(file, pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const recs = readLog(file);
    const r = recs.find(pred);
    if (r) return r;
    const aborted = recs.find((x) => /binary upgrade aborted|the new binary exited/.test(x.message || ""));
    if (aborted) throw new Failure(`waiting for ${what}: wsgate logged ${JSON.stringify(aborted)}`);
    if (Date.now() > deadline) throw new Failure(`wsgate logged no ${what} within ${ms} ms (${file})`);
    await sleep(50);
  }
}

// Polls the page's state until pred(state) -> that state; fails after ms with what.
async function waitForState(page, pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const st = await page.evaluate(() => window.__up.state());
    if (pred(st)) return st;
    if (Date.now() > deadline) throw new Failure(`${what} within ${ms} ms; the page's sockets: ${showState(st)}`);
    await sleep(50);
  }
}

function showSock(s) {
  const close = s.close ? ` close ${s.close.code}${s.close.wasClean ? " clean" : " not clean"}${s.close.reason ? ` "${s.close.reason}"` : ""}` : "";
  return `${s.name}: ${s.openAt ? "opened" : "not opened"}, ${s.echoed}/${s.sent} echoed${s.bad.length ? `, wrong echoes ${JSON.stringify(s.bad)}` : ""}${s.errorAt ? ", error event" : ""}${close}`;
}
const showState = (st) => Object.values(st).map(showSock).join("; ");

// The page's WebSockets: each echoes one numbered message after another, ECHO_INTERVAL_MS
// after the last echo, until it closes; every time is the page's Date.now() (the same clock
// as this script's).
function installHarness(page) {
  return page.evaluate((interval) => {
    const socks = {};
    const wss = {};
    window.__up = {
      open(name, url) {
        const s = { name, url, sent: 0, echoed: 0, bad: [], echoTimes: [], openAt: null, protocol: null, errorAt: null, closeAt: null, close: null };
        socks[name] = s;
        const ws = new WebSocket(url, ["chat"]);
        wss[name] = ws;
        const sendNext = () => {
          if (ws.readyState !== WebSocket.OPEN) return;
          s.sent += 1;
          ws.send(`${name} ${s.sent}`);
        };
        ws.onopen = () => {
          s.openAt = Date.now();
          s.protocol = ws.protocol;
          sendNext();
        };
        ws.onmessage = (e) => {
          const want = `${name} ${s.echoed + 1}`;
          if (e.data !== want) s.bad.push({ got: String(e.data).slice(0, 40), want });
          s.echoed += 1;
          s.echoTimes.push(Date.now());
          setTimeout(sendNext, interval);
        };
        ws.onerror = () => {
          if (!s.errorAt) s.errorAt = Date.now();
        };
        ws.onclose = (e) => {
          s.closeAt = Date.now();
          s.close = { code: e.code, reason: e.reason, wasClean: e.wasClean };
        };
      },
      close(name, code, reason) {
        wss[name].close(code, reason);
      },
      state() {
        return JSON.parse(JSON.stringify(socks));
      },
    };
  }, ECHO_INTERVAL_MS);
}

// Chromium only: each WebSocket's handshake status as DevTools reports it (200 = an HTTP/2
// extended CONNECT stream, 101 = an HTTP/1.1 Upgrade, or a refusal's status) and its errors.
async function watchHandshakes(ctx) {
  if (ctx.browserName !== "chromium") return null;
  const cdp = await ctx.context.newCDPSession(ctx.page);
  const byId = new Map();
  const byUrl = new Map();
  cdp.on("Network.webSocketCreated", ({ requestId, url }) => {
    const r = { status: null, errors: [] };
    byId.set(requestId, r);
    byUrl.set(url, r);
  });
  cdp.on("Network.webSocketHandshakeResponseReceived", ({ requestId, response }) => {
    const r = byId.get(requestId);
    if (r) r.status = response.status;
  });
  cdp.on("Network.webSocketFrameError", ({ requestId, errorMessage }) => {
    const r = byId.get(requestId);
    if (r) r.errors.push(errorMessage);
  });
  await cdp.send("Network.enable");
  return {
    // DevTools events come on their own channel: give them a moment.
    async get(url) {
      for (let i = 0; i < 100 && !(byUrl.get(url) && byUrl.get(url).status !== null); i++) await sleep(20);
      return byUrl.get(url) || null;
    },
  };
}

const transportOf = (status) => ({ 200: "h2", 101: "h1" })[status] || `status ${status}`;

async function run(ctx, origin, opts) {
  const { page } = ctx;
  const pid = Number(opts.pid);
  const logFile = opts.log;
  check(pid > 0 && logFile, "--pid and --log are required");
  const held = Number(opts.held || 3);
  const spreadMs = Number(opts["spread-ms"] || 6000);
  const label = opts.label || ctx.browserName;
  const wsOrigin = origin.replace(/^https:/, "wss:");
  const urlOf = (name) => `${wsOrigin}/ws/${name.toLowerCase()}?s=${label}-${name.toLowerCase()}`;
  const aNames = Array.from({ length: held }, (_, i) => `A${i + 1}`);
  const devtools = await watchHandshakes(ctx);

  // The page, over h2.
  const resp = await page.goto(`${origin}/`);
  check(resp, `GET ${origin}/ got no response`);
  const loc = await page.evaluate(() => ({
    origin: window.location.origin,
    protocol: performance.getEntriesByType("navigation")[0].nextHopProtocol,
  }));
  check(loc.origin === origin, `the page's origin is ${loc.origin}, expected ${origin}`);
  check(loc.protocol === "h2", `the page came over ${loc.protocol}, expected h2 (is http2 on in the TLS listener?)`);
  log(`page ${origin}/: wsgate's ${resp.status()} document over ${loc.protocol}`);
  await installHarness(page);

  // 1. The held WebSockets, over the page's h2 connection.
  for (const a of aNames) await page.evaluate(([n, u]) => window.__up.open(n, u), [a, urlOf(a)]);
  let st = await waitForState(page, (s) => aNames.every((a) => s[a].echoed >= 3 || s[a].close), STEP_TIMEOUT_MS, "the A's did not open and echo 3 times");
  for (const a of aNames) {
    check(st[a].openAt && !st[a].close && !st[a].errorAt && !st[a].bad.length, `${a} did not open and echo: ${showSock(st[a])}`);
    check(st[a].protocol === "chat", `${a}: ws.protocol ${JSON.stringify(st[a].protocol)}, expected "chat"`);
  }
  const isA = (r) => r.message === "session open" && /^\/ws\/a\d+$/.test(r.path);
  for (const a of aNames) {
    await waitForRecord(logFile, (r) => r.message === "session open" && r.path === `/ws/${a.toLowerCase()}`, 5000, `"session open" record for /ws/${a.toLowerCase()}`);
  }
  const opened = readLog(logFile).filter(isA);
  for (const r of opened) check(r.transport === "h2", `wsgate admitted ${r.path} over ${r.transport}, expected h2: ${JSON.stringify(r)}`);
  const aPorts = new Set(opened.map((r) => r.client));
  check(aPorts.size === 1, `the A's came over ${aPorts.size} connections (${[...aPorts].join(", ")}), expected the page's one h2 connection`);
  let aDevtools = "";
  if (devtools) {
    for (const a of aNames) {
      const h = await devtools.get(urlOf(a));
      check(h && h.status === 200, `DevTools: ${a}'s handshake answered ${h && h.status} (${h && transportOf(h.status)}), expected 200 (h2)`);
    }
    aDevtools = ", DevTools: handshake status 200";
  }
  log(`${aNames.join(", ")} open over h2 on one connection (${[...aPorts][0]}; wsgate's log: "transport":"h2"${aDevtools}), echoing every ${ECHO_INTERVAL_MS} ms`);

  // 2. The upgrade.
  const tUsr2 = Date.now();
  process.kill(pid, "SIGUSR2");
  const started = await waitForRecord(logFile, (r) => /^SIGUSR2: started the new binary/.test(r.message || ""), 10000, "'SIGUSR2: started the new binary'");
  const ready = await waitForRecord(logFile, (r) => r.message === "the previous process has stopped accepting and drains", 20000, "'the previous process has stopped accepting and drains' (the successor serving)");
  const tReady = Date.now();
  log(`SIGUSR2 to ${pid}: successor ${started.new_pid} (${started.exe}) serves ${tReady - tUsr2} ms later ("${ready.message}")`);
  // The old process sends GOAWAY on its h2 connections at the hand-over, before the
  // successor logs this line (its drain proper may begin up to handshake_timeout later: it
  // first answers every connection it had accepted, and Chromium sometimes opens a spare
  // connection along with the page's and sends nothing on it). A moment for the GOAWAY to
  // reach the browser (a WebSocket sent on the old connection before it arrives is the old
  // process's, as with any GOAWAY: that race is not what this tests).
  await sleep(GOAWAY_MARGIN_MS);
  st = await page.evaluate(() => window.__up.state());
  const stillOpen = aNames.filter((a) => !st[a].close);
  check(stillOpen.length > 0,
    `inconclusive: every A got its 1001 before B could be opened (${showState(st)}); the old h2 connection is gone, so B would need a new one whatever wsgate does. Raise --held or close_spread`);
  for (const a of aNames) {
    check(!st[a].close || st[a].close.code === 1001, `${a} closed before its 1001: ${showSock(st[a])}`);
  }

  // B, from the same page, to the same origin.
  const tB = Date.now();
  await page.evaluate(([n, u]) => window.__up.open(n, u), ["B", urlOf("B")]);
  st = await waitForState(page, (s) => s.B.echoed >= 3 || s.B.close, STEP_TIMEOUT_MS, "B neither echoed 3 times nor closed");
  const bDev = devtools ? await devtools.get(urlOf("B")) : null;
  if (!st.B.openAt || st.B.close) {
    const refusals = readLog(logFile).filter((r) => r.message === "handshake refused" && r.path === "/ws/b");
    throw new Failure(
      `B (opened ${tB - tReady} ms after the successor served, with ${stillOpen.join(", ")} still open on the old h2 connection) failed: ${showSock(st.B)}` +
        (bDev ? `; DevTools: status ${bDev.status}, errors ${JSON.stringify(bDev.errors)}` : "") +
        `; wsgate's refusals of /ws/b: ${
          refusals.length
            ? refusals
                .map((r) => `${r.status} "${r.reason}" to ${r.method} from ${r.client}${aPorts.has(r.client) ? " (the A's h2 connection)" : ""}`)
                .join("; ")
            : "none"
        }` +
        (refusals.some((r) => aPorts.has(r.client))
          ? ". The browser put B on the old h2 connection, where the draining process answers a new WebSocket with 503: that connection got no GOAWAY at the hand-over"
          : ""),
    );
  }
  check(!st.B.bad.length && !st.B.errorAt, `B: ${showSock(st.B)}`);
  const openAtB = aNames.filter((a) => !st[a].close || st[a].closeAt > st.B.openAt);
  check(openAtB.length > 0, `inconclusive: every A had closed before B opened (${showState(st)})`);
  log(`B opened ${st.B.openAt - tB} ms after it was created, ${st.B.openAt - tReady} ms after the successor served, while ${openAtB.join(", ")} still held the old connection; echoes${bDev ? ` (DevTools: handshake status ${bDev.status}, ${transportOf(bDev.status)})` : ""}`);

  // 3. Every A echoes until its 1001, and closes cleanly with it.
  st = await waitForState(page, (s) => aNames.every((a) => s[a].close), spreadMs + 10000, "not every A got its close");
  const aEchoesAfterB = {};
  for (const a of aNames) {
    const s = st[a];
    check(s.close.code === 1001 && s.close.wasClean, `${a} did not close cleanly with 1001: ${showSock(s)}`);
    check(!s.bad.length && !s.errorAt, `${a}: ${showSock(s)}`);
    check(s.sent - s.echoed <= 1, `${a}: ${s.sent - s.echoed} messages unanswered at its close (at most the one in flight when the 1001 came): ${showSock(s)}`);
    const last = s.echoTimes.length ? s.echoTimes[s.echoTimes.length - 1] : s.openAt;
    check(s.closeAt - last <= MAX_SILENCE_MS,
      `${a} stopped echoing ${s.closeAt - last} ms before its 1001 (its last echo ${last - tReady} ms after the successor served, the 1001 ${s.closeAt - tReady} ms after): ${showSock(s)}`);
    aEchoesAfterB[a] = s.echoTimes.filter((t) => t > st.B.openAt).length;
  }
  log(
    `every A echoed until its 1001 and closed cleanly: ${aNames
      .map((a) => `${a} 1001 at +${st[a].closeAt - tReady} ms (${aEchoesAfterB[a]} echoes after B opened)`)
      .join(", ")} (times from the successor serving)`,
  );

  // 4. The old process has finished its drain: B is the successor's.
  const done = await waitForRecord(logFile, (r) => r.message === "shutdown complete", 20000, "'shutdown complete' from the old process");
  const bBefore = (await page.evaluate(() => window.__up.state())).B.echoed;
  st = await waitForState(page, (s) => s.B.echoed >= bBefore + 3 || s.B.close, STEP_TIMEOUT_MS, "B did not echo after the old process's drain ended");
  check(!st.B.close && !st.B.bad.length, `B after the old process's drain ended: ${showSock(st.B)}`);
  await page.evaluate(() => window.__up.close("B", 1000, "done"));
  st = await waitForState(page, (s) => s.B.close, STEP_TIMEOUT_MS, "B did not close");
  check(st.B.close.code === 1000 && st.B.close.wasClean, `B did not close 1000 cleanly: ${showSock(st.B)}`);
  check(st.B.sent - st.B.echoed <= 1 && !st.B.bad.length, `B: ${showSock(st.B)}`);
  log(`the old process logged "shutdown complete" (after ${done.elapsed}); B echoed on (${st.B.echoed} echoes in all), closed 1000 cleanly`);

  // What wsgate logged of B: admitted (by the successor: the draining process refuses every
  // new WebSocket with 503), never refused.
  const bRefused = readLog(logFile).filter((r) => r.message === "handshake refused" && r.path === "/ws/b");
  check(!bRefused.length, `wsgate refused B: ${bRefused.map((r) => JSON.stringify(r)).join(" ")}`);
  const bOpen = await waitForRecord(logFile, (r) => r.message === "session open" && r.path === "/ws/b", 5000, `"session open" for /ws/b`);
  const after = readLog(logFile);
  const iOpen = after.findIndex((r) => r.message === "session open" && r.path === "/ws/b");
  const iReady = after.findIndex((r) => r.message === "the previous process has stopped accepting and drains");
  check(iOpen > iReady, `wsgate logged B's "session open" before the successor's "the previous process has stopped accepting"`);
  const aClosed = after.filter((r) => r.message === "session closed" && /^\/ws\/a\d+$/.test(r.path));
  check(aClosed.length === held, `wsgate logged ${aClosed.length} "session closed" records for the A's, expected ${held}`);
  log(
    `wsgate's log: B admitted over ${bOpen.transport} from ${bOpen.client} (the A's connection: ${[...aPorts][0]}), session ${bOpen.session} (the A's: ${opened
      .map((r) => r.session)
      .join(", ")}), never refused; the A's closed with outcome ${[...new Set(aClosed.map((r) => r.outcome))].join(", ")}`,
  );
  // Nothing else went wrong: wsgate warns at every start with a development certificate,
  // and about nothing else here.
  const warnings = readLog(logFile).filter((r) => (r.level === "WARN" || r.level === "ERROR") && !/development certificate/.test(r.message));
  check(!warnings.length, `wsgate logged: ${warnings.map((r) => JSON.stringify(r)).join(" ")}`);
  log(`OK (${ctx.browserName}: ${held} WebSockets held over h2 across the hand-over, echoing until their 1001; B opened and served by the successor over ${bOpen.transport})`);
}

async function main() {
  let target, opts;
  try {
    ({ target, opts } = parseArgs(process.argv.slice(2)));
    check(target && /^https:\/\//.test(target), "ORIGIN must be an https:// origin");
  } catch (e) {
    console.error(`upgrade-browser.js: ${e.message}; see the usage at the top of ${__filename}`);
    process.exit(2);
  }
  const browserName = opts.browser || "chromium";
  const profile = fs.mkdtempSync(path.join(process.env.E2E_TMP || os.tmpdir(), `${browserName}-profile-`));
  const diag = [];
  let ctx;
  try {
    ctx = await launch(browserName, true, profile);
    const { page } = ctx;
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    page.on("console", (m) => diag.push(`console.${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => diag.push(`pageerror: ${e.message}`));
    log(`${browserName}: ${target} (wsgate pid ${opts.pid}, log ${opts.log})`);
    await run(ctx, target, opts);
  } catch (e) {
    console.error(`upgrade-browser: FAILED (${browserName}): ${e instanceof Failure ? e.message : e.stack || e}`);
    if (diag.length) console.error(`upgrade-browser: what the page reported:\n  ${diag.join("\n  ")}`);
    process.exitCode = 1;
  } finally {
    if (ctx) await ctx.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main();
