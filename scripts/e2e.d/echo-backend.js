#!/usr/bin/env node
// WebSocket echo backend for the end-to-end tests, on the `ws` library.
//
//   node echo-backend.js [--host 127.0.0.1] [--port 0] [--deflate]
//
// Prints "echo-backend listening port=PORT" on stdout once it accepts connections (port 0
// picks a free port, so the caller reads the port from that line). Echoes every message as it
// came (text stays text, binary stays binary); `ws` itself answers pings and echoes the close
// code and reason of the client's close frame. Of the offered subprotocols it picks the
// client's first, as the classic `["chat", "superchat"]` browser client expects.
// Exits on SIGTERM/SIGINT.
"use strict";

const { WebSocketServer } = require("ws");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg("--host", "127.0.0.1");
const port = Number(arg("--port", "0"));
const deflate = process.argv.includes("--deflate");

const wss = new WebSocketServer({
  host,
  port,
  // 64 MiB: above the 16 MiB messages of Autobahn's 9.* cases.
  maxPayload: 64 * 1024 * 1024,
  // ws 8.23 refuses messages of more than 16384 fragments by default (close 1008); Autobahn's
  // 9.3.1/9.4.1 send 4 MiB in 64-byte fragments (65536), so raise it as the Python baseline
  // in ../shared/conformance/baseline does (WEBSOCKETS_MAX_FRAGMENTS=100000).
  maxFragments: 100000,
  perMessageDeflate: deflate,
  // `protocols` is a Set in the client's order; false refuses to pick one (no header).
  handleProtocols: (protocols) => {
    const first = protocols.values().next();
    return first.done ? false : first.value;
  },
});

let sessions = 0;
wss.on("connection", (ws, req) => {
  sessions += 1;
  if (process.env.E2E_BACKEND_VERBOSE) {
    console.error(
      `echo-backend: connection ${sessions} ${req.url} host=${req.headers.host} ` +
        `protocol=${ws.protocol || "-"} extensions=${ws.extensions || "-"}`,
    );
  }
  ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
  // Protocol errors from Autobahn's fuzzing are expected: `ws` closes with the right code.
  ws.on("error", () => {});
});

wss.on("listening", () => {
  const a = wss.address();
  console.log(`echo-backend listening port=${a.port} host=${a.address}`);
});

wss.on("error", (e) => {
  console.error(`echo-backend: ${e.message}`);
  process.exit(1);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    for (const c of wss.clients) c.terminate();
    wss.close(() => process.exit(0));
  });
}
