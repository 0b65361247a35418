#!/usr/bin/env node
// Sessions back to back through wsgate, for the upgrade part of scripts/e2e: each one opens,
// echoes one message and closes, while a few held sessions stay open the whole time.
//
//   node churn.js URL HELD STOPFILE
//
// Prints "churn sessions=N" after every 10 sessions, and when STOPFILE exists, a last line
// `churn done {"sessions":N,"failures":[...],"held_closes":{"1001":HELD}}` once every held
// session has been closed by the server (or 10 s have passed). A failure is a handshake that
// did not get its 101 (refused, reset, another status) or an echo that did not come back;
// a session the server closes with 1001 (a draining wsgate) is not one. Exits 1 if any
// session failed.
"use strict";

const fs = require("fs");
const WebSocket = require("ws");

const [url, heldArg, stopFile] = process.argv.slice(2);
const held = Number(heldArg);
const failures = [];
const heldCloses = {};
let sessions = 0;

function once(n) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url);
    const text = `message ${n}`;
    let settled = false;
    const done = (failure) => {
      if (settled) return;
      settled = true;
      if (failure) failures.push(`session ${n}: ${failure}`);
      resolve();
    };
    ws.on("unexpected-response", (_req, res) => done(`status ${res.statusCode}`));
    ws.on("error", (e) => done(String(e.message || e)));
    ws.on("open", () => ws.send(text));
    ws.on("message", (data) => {
      if (String(data) !== text) return done(`echo ${String(data)}`);
      ws.close(1000);
    });
    ws.on("close", (code) => done(code === 1000 || code === 1001 ? null : `closed ${code}`));
  });
}

function hold() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.on("open", () => resolve(ws));
    ws.on("error", reject);
    ws.on("close", (code) => {
      heldCloses[code] = (heldCloses[code] || 0) + 1;
    });
  });
}

async function main() {
  const kept = [];
  for (let i = 0; i < held; i++) kept.push(await hold());
  while (!fs.existsSync(stopFile)) {
    sessions += 1;
    await once(sessions);
    if (sessions % 10 === 0) console.log(`churn sessions=${sessions}`);
  }
  const deadline = Date.now() + 10000;
  const closed = () => Object.values(heldCloses).reduce((a, b) => a + b, 0);
  while (closed() < held && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  console.log(`churn done ${JSON.stringify({ sessions, failures, held_closes: heldCloses })}`);
  process.exit(failures.length ? 1 : 0);
}

main().catch((e) => {
  console.log(`churn error ${e.stack || e}`);
  process.exit(2);
});
