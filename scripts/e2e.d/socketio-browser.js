#!/usr/bin/env node
// Chromium (Debian's, driven by playwright-core as in browser.js) loads the page of
// scripts/e2e.d/socketio-backend.js through wsgate, for the socketio part of scripts/e2e.
//
//   node socketio-browser.js ORIGIN --cookie NAME
//
// ORIGIN is wsgate's http:// origin; its route `/` has `http = true` and the backends are
// Socket.IO processes, so the page, /socket.io/socket.io.js, the polls and the WebSocket all
// come through wsgate on one origin. The page sends five messages (on polling), waits for
// the WebSocket upgrade and sends five more (see the page in socketio-backend.js). Checks:
// every answer correct and from one backend, the connection opened on polling and ended on a
// WebSocket that Chromium opened to ORIGIN/socket.io/, the last answers came over it, and
// wsgate's sticky cookie NAME is in the browser, HttpOnly.
//
// Prints one line per step and "socketio-browser: OK ..." at the end; exits 1 on any mismatch,
// with what the page reported.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { launch, check, Failure, STEP_TIMEOUT_MS } = require("./browser.js");

function log(msg) {
  console.log(`socketio-browser: ${msg}`);
}

async function run(ctx, origin, cookieName) {
  const { context, page } = ctx;
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  const res = await page.goto(`${origin}/`);
  check(res && res.status() === 200, `GET ${origin}/ through wsgate answered ${res && res.status()}`);
  const result = await page.evaluate(
    (ms) => Promise.race([window.__result, new Promise((r) => setTimeout(() => r({ error: `no result in ${ms} ms` }), ms))]),
    STEP_TIMEOUT_MS,
  );
  for (const a of result.acks || []) log(`  answer ${JSON.stringify(a)}`);
  check(!result.error, `the page: ${result.error}`);
  check(result.acks.length === 10 && result.acks.every((a) => a.ok), "answers missing or wrong (above)");
  const from = new Set(result.acks.map((a) => a.from));
  check(from.size === 1, `answers from ${[...from].join(" and ")}: one connection went to two backends`);
  check(result.startedOn === "polling", `the connection opened on ${result.startedOn}, not polling`);
  check(result.transport === "websocket", `the connection ended on ${result.transport}, not websocket`);
  check(result.acks.slice(5).every((a) => a.transport === "websocket"), "answers after the upgrade did not come over the WebSocket");
  const wsOrigin = origin.replace(/^http/, "ws");
  check(
    sockets.length >= 1 && sockets.every((u) => u.startsWith(`${wsOrigin}/socket.io/`)),
    `WebSockets opened: ${JSON.stringify(sockets)}, expected ${wsOrigin}/socket.io/...`,
  );
  const cookie = (await context.cookies(origin)).find((c) => c.name === cookieName);
  check(cookie, `no ${cookieName} cookie in the browser`);
  check(cookie.httpOnly, `the ${cookieName} cookie is not HttpOnly`);
  log(`OK (10 answers from ${[...from][0]}, polling then WebSocket ${sockets[0]}, cookie ${cookieName})`);
}

async function main() {
  const [origin, flag, cookieName] = process.argv.slice(2);
  if (!origin || flag !== "--cookie" || !cookieName) {
    console.error("usage: node socketio-browser.js ORIGIN --cookie NAME");
    process.exit(2);
  }
  const profile = fs.mkdtempSync(path.join(process.env.E2E_TMP || os.tmpdir(), "chromium-profile-"));
  const diag = [];
  let ctx;
  try {
    ctx = await launch("chromium", false, profile);
    ctx.page.setDefaultTimeout(STEP_TIMEOUT_MS);
    ctx.page.on("console", (m) => diag.push(`console.${m.type()}: ${m.text()}`));
    ctx.page.on("pageerror", (e) => diag.push(`pageerror: ${e.message}`));
    ctx.page.on("requestfailed", (r) => diag.push(`request failed: ${r.method()} ${r.url()} ${r.failure() && r.failure().errorText}`));
    ctx.page.on("response", (r) => r.status() >= 400 && diag.push(`response ${r.status()}: ${r.request().method()} ${r.url()}`));
    log(`chromium: ${origin}/`);
    await run(ctx, origin, cookieName);
  } catch (e) {
    console.error(`socketio-browser: FAILED: ${e instanceof Failure ? e.message : e.stack || e}`);
    if (diag.length) console.error(`socketio-browser: what the page reported:\n  ${diag.join("\n  ")}`);
    process.exitCode = 1;
  } finally {
    if (ctx) await ctx.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main();
