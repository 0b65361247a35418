#!/usr/bin/env node
// WebSocket echo backend for the end-to-end tests, on the `ws` library.
//
//   node echo-backend.js [--host 127.0.0.1] [--port 0] [--deflate] [--tls CERT KEY]
//                        [--log-handshakes]
//
// Prints "echo-backend listening port=PORT" on stdout once it accepts connections (port 0
// picks a free port, so the caller reads the port from that line). Echoes every message as it
// came (text stays text, binary stays binary); `ws` itself answers pings and echoes the close
// code and reason of the client's close frame. Of the offered subprotocols it picks the
// client's first, as the classic `["chat", "superchat"]` browser client expects.
//
//   --tls CERT KEY     serve wss:// (PEM files), e.g. a certificate from `wsgate cert`
//   --log-handshakes   one stdout line per upgrade request that reaches the backend, before
//                      it is answered: `echo-backend upgrade {"n":1,"path":...,"cookie":...}`
//                      (path, Cookie, Origin, Via, X-User, X-Forwarded-Proto; null when
//                      absent), so a test can tell which requests got past the proxy and
//                      what the proxy took out or added. Plain (non-upgrade) requests get 426
//                      and an `echo-backend request` line.
// Exits on SIGTERM/SIGINT.
"use strict";

const fs = require("fs");
const http = require("http");
const https = require("https");
const { WebSocketServer } = require("ws");

function arg(name, fallback, n = 1) {
  const i = process.argv.indexOf(name);
  if (i < 0) return fallback;
  if (i + n >= process.argv.length) {
    console.error(`echo-backend: ${name} needs ${n} value(s)`);
    process.exit(2);
  }
  return n === 1 ? process.argv[i + 1] : process.argv.slice(i + 1, i + 1 + n);
}

const host = arg("--host", "127.0.0.1");
const port = Number(arg("--port", "0"));
const deflate = process.argv.includes("--deflate");
const tls = arg("--tls", null, 2);
const logHandshakes = process.argv.includes("--log-handshakes");

const wss = new WebSocketServer({
  noServer: true,
  // 64 MiB: above the 16 MiB messages of Autobahn's 9.* cases.
  maxPayload: 64 * 1024 * 1024,
  // ws 8.23 refuses messages of more than 16384 fragments by default (close 1008); Autobahn's
  // 9.3.1/9.4.1 send 4 MiB in 64-byte fragments (65536), so raise it as the Python baseline
  // in scripts/autobahn.d/echo_server.py does (WEBSOCKETS_MAX_FRAGMENTS=100000).
  maxFragments: 100000,
  perMessageDeflate: deflate,
  // `protocols` is a Set in the client's order; false refuses to pick one (no header).
  handleProtocols: (protocols) => {
    const first = protocols.values().next();
    return first.done ? false : first.value;
  },
});

const server = tls
  ? https.createServer({ cert: fs.readFileSync(tls[0]), key: fs.readFileSync(tls[1]) })
  : http.createServer();

let upgrades = 0;
const h = (req, name) => (req.headers[name] === undefined ? null : req.headers[name]);
server.on("upgrade", (req, socket, head) => {
  upgrades += 1;
  if (logHandshakes) {
    const rec = {
      n: upgrades,
      path: req.url,
      cookie: h(req, "cookie"),
      origin: h(req, "origin"),
      via: h(req, "via"),
      x_user: h(req, "x-user"),
      x_forwarded_proto: h(req, "x-forwarded-proto"),
    };
    console.log(`echo-backend upgrade ${JSON.stringify(rec)}`);
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit("connection", ws, req));
});
server.on("request", (req, res) => {
  if (logHandshakes) console.log(`echo-backend request ${JSON.stringify({ method: req.method, path: req.url })}`);
  res.writeHead(426, { "content-type": "text/plain", upgrade: "websocket" }).end("WebSocket only\n");
});
// A TLS client that goes away mid-handshake, or Autobahn's abrupt closes: not our concern.
server.on("tlsClientError", () => {});
server.on("clientError", (_e, socket) => socket.destroy());

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

server.on("error", (e) => {
  console.error(`echo-backend: ${e.message}`);
  process.exit(1);
});

server.listen(port, host, () => {
  const a = server.address();
  console.log(`echo-backend listening port=${a.port} host=${a.address} tls=${tls ? "yes" : "no"}`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    for (const c of wss.clients) c.terminate();
    wss.close();
    server.close(() => process.exit(0));
    // Sockets still in a handshake keep server.close() waiting; do not.
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
