#!/usr/bin/env node
// Drives Debian's Chromium (never a downloaded browser) with playwright-core through wsgate.
//
//   node browser.js proxy WS_URL      the classic client page against WS_URL, served from a
//                                     throwaway HTTP server on a free port (wsgate serves only
//                                     WebSocket routes)
//   node browser.js demo  PAGE_URL    the page of `wsgate demo`: type, Send, Close
//
// Prints one line per step and "browser: <test> OK" at the end; any mismatch throws, prints
// what the page saw (its event log, console and errors) and exits 1.
"use strict";

const fs = require("fs");
const http = require("http");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const CHROMIUM = process.env.E2E_CHROMIUM || "/usr/bin/chromium";
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

function log(msg) {
  console.log(`browser: ${msg}`);
}

class Failure extends Error {}

function check(cond, msg) {
  if (!cond) throw new Failure(msg);
}

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

async function proxyTest(page, wsUrl) {
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

async function demoTest(page, pageUrl) {
  log(`demo page ${pageUrl}`);
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
  const openText = await page.textContent("#log > div.open");
  check(/subprotocol: chat\)/.test(openText), `demo open line does not name subprotocol chat: ${openText}`);
  const text = `hello demo ${Date.now()}`;
  await page.fill("#message", text);
  await page.click("#send");
  await wait("#log > div.message", "echoed message");
  const msgText = await page.textContent("#log > div.message");
  check(msgText.endsWith(`message: ${text}`), `echo ${JSON.stringify(msgText)} does not end with the sent text ${JSON.stringify(text)}`);
  await page.click("#close");
  await wait("#log > div.close", "close line");
  const closeText = await page.textContent("#log > div.close");
  const lines = await logLines();
  for (const l of lines) log(`  ${l}`);
  check(/close: code 1000\b/.test(closeText), `demo close line is not code 1000: ${closeText}`);
  check(/\(clean\)/.test(closeText), `demo close was not clean: ${closeText}`);
  check(!lines.some((l) => l.startsWith("error")), "the demo page logged an error");
  check((await page.textContent("#status")) === "closed", "demo status is not 'closed'");
  log("demo OK (open with chat, echo, close 1000 clean)");
}

async function main() {
  const [mode, target] = process.argv.slice(2);
  if (!["proxy", "demo"].includes(mode) || !target) {
    console.error("usage: browser.js proxy WS_URL | demo PAGE_URL");
    process.exit(2);
  }
  const profile = fs.mkdtempSync(path.join(process.env.E2E_TMP || os.tmpdir(), "chromium-profile-"));
  const diag = [];
  let context;
  try {
    // A persistent context on a fresh empty dir is the way to give Chromium its
    // --user-data-dir under playwright (which refuses that flag in `args`).
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 60000,
    });
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(STEP_TIMEOUT_MS);
    page.on("console", (m) => diag.push(`console.${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => diag.push(`pageerror: ${e.message}`));
    page.on("websocket", (ws) => {
      diag.push(`websocket ${ws.url()}`);
      ws.on("socketerror", (e) => diag.push(`websocket error: ${e}`));
      ws.on("close", () => diag.push(`websocket closed ${ws.url()}`));
    });
    if (mode === "proxy") await proxyTest(page, target);
    else await demoTest(page, target);
  } catch (e) {
    console.error(`browser: ${mode} FAILED: ${e instanceof Failure ? e.message : e.stack || e}`);
    if (diag.length) console.error(`browser: what the page reported:\n  ${diag.join("\n  ")}`);
    process.exitCode = 1;
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main();
