#!/usr/bin/env node
// A Socket.IO application backend for the socketio part of scripts/e2e: `socket.io` on Node's
// http server, one of two such processes behind wsgate.
//
//   node socketio-backend.js --name NAME [--host 127.0.0.1] [--port 0]
//
// Serves GET / (a page that loads /socket.io/socket.io.js, which socket.io serves itself, and
// exchanges a few messages: what scripts/e2e.d/socketio-browser.js drives in Chromium; its
// answer names the backend in `X-Socketio-Backend`) and the Socket.IO endpoint /socket.io/ on
// both transports (HTTP long-polling and WebSocket).
//
// The application is an echo that names itself: `echo` with an acknowledgement is answered
// with `{from: NAME, i, msg, n, transport}` (n counts the messages this connection has
// received, so the client can tell a lost, duplicated or reordered message; transport is
// the one the message came over), and just before that an `echoed` event `{from, n}`, so
// the order from server to client is checked too.
//
// Prints on stdout:
//   socketio-backend listening name=NAME port=PORT      once it accepts connections
//   socketio-backend connection {"sid":..,"transport":..}  an Engine.IO session opened
//   socketio-backend upgrade {"sid":..,"transport":..}     a session moved to a WebSocket
//   socketio-backend connection_error {...}   Engine.IO refused a request: "Session ID
//                                             unknown" is a poll or upgrade that reached a
//                                             backend that does not hold its session
//   socketio-backend unproxied {...}          a request without wsgate's Via and
//                                             X-Forwarded-For (it did not come through
//                                             wsgate, or wsgate lost its headers)
// Exits on SIGTERM/SIGINT.
"use strict";

const http = require("http");
const { Server } = require("socket.io");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  if (i < 0) return fallback;
  if (i + 1 >= process.argv.length) {
    console.error(`socketio-backend: ${name} needs a value`);
    process.exit(2);
  }
  return process.argv[i + 1];
}

const name = arg("--name", null);
const host = arg("--host", "127.0.0.1");
const port = Number(arg("--port", "0"));
if (!name) {
  console.error("socketio-backend: --name is required");
  process.exit(2);
}

const say = (what, rec) => console.log(`socketio-backend ${what} ${JSON.stringify({ name, ...rec })}`);

// The page: same-origin `io()`, so in the browser every request (polls, the upgrade) goes to
// wsgate's origin. It sends five messages, waits for the WebSocket upgrade, sends five more,
// and resolves window.__result with what it saw.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>Socket.IO through wsgate</title><link rel="icon" href="data:,"></head>
<body><pre id="log"></pre>
<script src="/socket.io/socket.io.js"></script>
<script>
  const show = (line) => { document.getElementById("log").textContent += line + "\\n"; };
  window.__result = new Promise((resolve) => {
    const socket = io({ reconnection: false });
    const acks = [];
    let startedOn = null;
    socket.io.on("open", () => { startedOn = socket.io.engine.transport.name; });
    const upgraded = () => new Promise((r) => {
      const engine = socket.io.engine;
      if (engine.transport.name === "websocket") r(); else engine.once("upgrade", () => r());
    });
    const send = async (i) => {
      const msg = "browser message " + i;
      const ack = await socket.timeout(10000).emitWithAck("echo", { i, msg });
      show(JSON.stringify(ack));
      acks.push({ ...ack, ok: ack.i === i && ack.msg === msg });
    };
    socket.on("connect", async () => {
      try {
        for (let i = 0; i < 5; i++) await send(i);
        await upgraded();
        for (let i = 5; i < 10; i++) await send(i);
        resolve({ startedOn, transport: socket.io.engine.transport.name, acks });
        socket.disconnect();
      } catch (e) {
        resolve({ error: String(e), startedOn, acks });
      }
    });
    socket.on("connect_error", (e) => resolve({ error: "connect_error: " + e.message, startedOn, acks }));
  });
</script></body></html>
`;

const server = http.createServer((req, res) => {
  // socket.io answers /socket.io/ itself; this listener gets every other request.
  if (req.method === "GET" && (req.url === "/" || req.url === "/index.html")) {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store", "x-socketio-backend": name });
    res.end(PAGE);
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
});

const io = new Server(server);

// Every request and upgrade, before socket.io sees it: wsgate adds Via and X-Forwarded-For to
// both (docs/http.md, "Headers"); one without them did not come the way the test expects.
function checkProxied(req) {
  const via = req.headers.via || "";
  if (!/\bwsgate\b/.test(via) || !req.headers["x-forwarded-for"]) {
    say("unproxied", { method: req.method, url: req.url, via: via || null, xff: req.headers["x-forwarded-for"] || null });
  }
}
server.prependListener("request", checkProxied);
server.prependListener("upgrade", checkProxied);

io.engine.on("connection", (conn) => {
  say("connection", { sid: conn.id, transport: conn.transport.name });
  conn.on("upgrade", (transport) => say("upgrade", { sid: conn.id, transport: transport.name }));
});
io.engine.on("connection_error", (err) => {
  const url = new URL(err.req.url, "http://backend");
  say("connection_error", {
    code: err.code,
    message: err.message,
    sid: url.searchParams.get("sid"),
    transport: url.searchParams.get("transport"),
    method: err.req.method,
  });
});

io.on("connection", (socket) => {
  let n = 0;
  socket.on("echo", (data, ack) => {
    if (typeof ack !== "function" || !data || typeof data !== "object") return;
    n += 1;
    socket.emit("echoed", { from: name, n });
    ack({ from: name, i: data.i, msg: data.msg, n, transport: socket.conn.transport.name });
  });
});

server.on("error", (e) => {
  console.error(`socketio-backend ${name}: ${e.message}`);
  process.exit(1);
});

server.listen(port, host, () => {
  console.log(`socketio-backend listening name=${name} port=${server.address().port}`);
});

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    io.close();
    // Long polls and sockets still open keep close() waiting; do not.
    setTimeout(() => process.exit(0), 2000).unref();
    server.close(() => process.exit(0));
  });
}
