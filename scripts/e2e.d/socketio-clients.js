#!/usr/bin/env node
// Socket.IO clients (`socket.io-client`) through wsgate for the socketio part of scripts/e2e,
// against two scripts/e2e.d/socketio-backend.js processes behind one route with a sticky
// cookie.
//
//   node socketio-clients.js URL --upgrade N --polling N --messages M --after-kill K
//                            --backends A,B --kill A --cookie NAME
//
// 1. N clients with the default transports (they start on HTTP long-polling and upgrade to a
//    WebSocket) and N clients held on polling (`transports: ["polling"]`) connect one after
//    the other, each as a browser would after loading the application's page: the page's
//    answer (GET URL/, which names its backend) brought wsgate's sticky cookie NAME, and the
//    client's first Socket.IO request carries it. The clients go to backends A and B in
//    turn (the page is loaded again until it comes from the backend wanted), so both hold
//    clients of both kinds whatever else the balancer has counted; the first answer must
//    come from the backend the cookie names. Each client exchanges M messages with
//    acknowledgements (up to WINDOW in flight).
//    Every answer must come from one backend per client (polls and the upgrade were all
//    routed to the backend that holds the session), none lost, duplicated or out of order
//    (the backend's own count in each answer, and its `echoed` events in order), and no
//    client may disconnect or fail to connect. The default-transport clients must have
//    started on polling and be on a WebSocket at the end, the others on polling throughout.
//    Then it prints
//      socketio-clients phase1 {"backends":{"a":{"upgrade":..,"polling":..},..},...}
// 2. The caller then kills backend NAME. Its clients must disconnect and reconnect (Socket.IO's
//    own reconnection) to the other backend (upgrading again if they may); the other
//    backend's clients must stay connected. Then every client exchanges K more messages,
//    with the same checks.
// Prints "socketio-clients done {...}" and exits 0, or "socketio-clients FAILED: ..." with
// what went wrong and exits 1. Every wait has a deadline.
//
// Cookies: engine.io-client (6.6) keeps a cookie jar of its own in Node when
// `withCredentials` is true: it reads Set-Cookie from each polling answer and sends the
// cookies on the next polls and on the WebSocket upgrade. That jar belongs to one
// Engine.IO connection and starts empty, so the page's cookie goes on the first request as
// an extra header, dropped once the jar has wsgate's answer (engine.io-client shares the
// extraHeaders object with every request and adds the jar's cookie to it for a WebSocket).
// A reconnection starts with an empty jar and no extra cookie: wsgate balances it anew.
"use strict";

const http = require("http");
const { io } = require("socket.io-client");

const WINDOW = 20; // messages in flight per client
const ACK_TIMEOUT_MS = 10000;
const CONNECT_DEADLINE_MS = 15000;
const UPGRADE_DEADLINE_MS = 10000;
const RECONNECT_DEADLINE_MS = 30000;

class Failure extends Error {}

function parseArgs(argv) {
  const [url, ...rest] = argv;
  const opts = {};
  for (let i = 0; i < rest.length; i += 2) {
    const m = /^--([a-z-]+)$/.exec(rest[i]);
    if (!m || i + 1 >= rest.length) throw new Failure(`bad argument ${rest[i]}`);
    opts[m[1]] = rest[i + 1];
  }
  const num = (k) => {
    const v = Number(opts[k]);
    if (!Number.isInteger(v) || v < 0) throw new Failure(`--${k} needs a whole number`);
    return v;
  };
  const backends = (opts.backends || "").split(",").filter(Boolean);
  if (!url || backends.length !== 2 || !backends.includes(opts.kill) || !opts.cookie) {
    throw new Failure("usage: URL --upgrade N --polling N --messages M --after-kill K --backends A,B --kill A --cookie NAME");
  }
  return {
    url,
    upgrade: num("upgrade"),
    polling: num("polling"),
    messages: num("messages"),
    afterKill: num("after-kill"),
    backends,
    kill: opts.kill,
    cookie: opts.cookie,
  };
}

// until(cond, ms, what): resolves once cond() holds (checked every 10 ms); rejects after ms.
function until(cond, ms, what) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const tick = () => {
      if (cond()) return resolve();
      if (Date.now() >= deadline) return reject(new Failure(`${what}: not within ${ms} ms`));
      setTimeout(tick, 10);
    };
    tick();
  });
}

// GET URL/ (the application's page) -> { from: the backend that answered, cookie: "NAME=value"
// from wsgate's Set-Cookie, or null }
function loadPage(url, cookieName) {
  return new Promise((resolve, reject) => {
    const req = http.get(`${url}/`, (res) => {
      res.resume();
      if (res.statusCode !== 200) return reject(new Failure(`GET ${url}/ answered ${res.statusCode}`));
      const set = (res.headers["set-cookie"] || []).find((c) => c.startsWith(`${cookieName}=`));
      resolve({ from: res.headers["x-socketio-backend"], cookie: set ? set.split(";")[0] : null });
    });
    req.on("error", reject);
    req.setTimeout(ACK_TIMEOUT_MS, () => req.destroy(new Failure(`GET ${url}/: no answer in ${ACK_TIMEOUT_MS} ms`)));
  });
}

// The sticky cookie of a page answered by backend `want`. Page loads on an otherwise quiet
// route alternate between the two backends; a few more are allowed for the odd request of
// another client in between.
async function cookieFor(url, cookieName, want) {
  const seen = [];
  for (let t = 0; t < 10; t++) {
    const { from, cookie } = await loadPage(url, cookieName);
    if (!cookie) throw new Failure(`GET ${url}/ (answered by ${from}) set no ${cookieName} cookie`);
    if (from === want) return cookie;
    seen.push(from);
  }
  throw new Failure(`10 page loads never reached backend ${want}: ${seen.join(", ")}`);
}

// One Socket.IO client and what it has seen.
class Client {
  constructor(url, id, kind, cookie, want) {
    this.id = id;
    this.kind = kind; // "upgrade" | "polling"
    this.errors = [];
    this.connects = 0;
    this.disconnects = [];
    this.connectErrors = []; // failed (re)connection attempts: a refused handshake or poll
    this.backend = null; // the backend of the current connection, from its first answer
    this.backends = []; // every backend this client has been answered by, in order
    this.startedOn = []; // the transport each Engine.IO connection opened on
    this.serverTransports = new Set(); // transports the backend saw messages on
    this.sent = 0; // messages sent over all connections
    this.want = want; // the backend the page's cookie names
    this.resetConnection();
    const headers = { cookie };
    const opts = { withCredentials: true, extraHeaders: headers, reconnectionDelay: 200, reconnectionDelayMax: 1000 };
    if (kind === "polling") opts.transports = ["polling"];
    this.socket = io(url, opts);
    this.socket.io.on("open", () => {
      delete headers.cookie;
      this.startedOn.push(this.socket.io.engine.transport.name);
    });
    this.socket.io.on("reconnect_attempt", () => delete headers.cookie);
    this.socket.on("connect", () => {
      this.connects += 1;
      this.resetConnection();
    });
    this.socket.on("disconnect", (reason) => this.disconnects.push(reason));
    this.socket.on("connect_error", (e) => this.connectErrors.push(e.message));
    this.socket.on("echoed", (e) => {
      this.pushes += 1;
      this.expect(e.n === this.pushes, `echoed event n=${e.n}, expected ${this.pushes}`);
      this.answeredBy(e.from);
    });
  }

  // A new Socket.IO connection: the backend counts from 1 again.
  resetConnection() {
    this.onConnection = 0; // sent on this connection
    this.acked = 0; // answers received on this connection
    this.pushes = 0; // `echoed` events on this connection
    this.backend = null;
  }

  expect(cond, msg) {
    if (!cond && this.errors.length < 10) this.errors.push(msg);
  }

  answeredBy(from) {
    if (this.backend === null) {
      this.backend = from;
      this.backends.push(from);
      if (this.backends.length === 1) this.expect(from === this.want, `first answered by ${from}, but the page's cookie names ${this.want}`);
    }
    this.expect(from === this.backend, `answered by ${from} on a connection that ${this.backend} holds (misrouted)`);
  }

  transport() {
    return this.socket.io.engine ? this.socket.io.engine.transport.name : null;
  }

  async send() {
    const i = this.sent++;
    const n = ++this.onConnection;
    const msg = `client ${this.id} message ${i}`;
    const ack = await this.socket.timeout(ACK_TIMEOUT_MS).emitWithAck("echo", { i, msg });
    this.acked += 1;
    this.expect(ack.i === i && ack.msg === msg, `answer ${JSON.stringify(ack)} to message ${i}`);
    this.expect(ack.n === n && ack.n === this.acked, `answer n=${ack.n} to the ${n}th message (answered ${this.acked})`);
    this.answeredBy(ack.from);
    this.serverTransports.add(ack.transport);
  }

  // count messages, at most WINDOW in flight; every answer and `echoed` event arrived.
  async exchange(count) {
    let next = 0;
    const lane = async () => {
      while (next < count) {
        next += 1;
        await this.send();
      }
    };
    const lanes = [];
    for (let k = 0; k < Math.min(WINDOW, count); k++) lanes.push(lane());
    await Promise.all(lanes);
    await until(() => this.pushes === this.onConnection, ACK_TIMEOUT_MS, `client ${this.id}: echoed events`);
  }

  async upgraded() {
    if (this.kind === "upgrade") {
      await until(() => this.transport() === "websocket", UPGRADE_DEADLINE_MS, `client ${this.id}: upgrade to websocket`);
    }
  }

  check(phase) {
    const last = this.startedOn[this.startedOn.length - 1];
    this.expect(last === "polling", `${phase}: the Engine.IO connection opened on ${last}, not polling`);
    if (this.kind === "polling") {
      this.expect(this.transport() === "polling", `${phase}: on ${this.transport()}, not polling`);
      this.expect(!this.serverTransports.has("websocket"), `${phase}: a message came over a WebSocket`);
    } else {
      this.expect(this.transport() === "websocket", `${phase}: still on ${this.transport()} (the upgrade failed)`);
    }
    if (this.errors.length) throw new Failure(`client ${this.id} (${this.kind}): ${this.errors.join("; ")}`);
  }

  summary() {
    const { id, kind, backends, connects, disconnects, connectErrors, sent } = this;
    return { id, kind, backends, connects, disconnects, connect_errors: connectErrors, sent };
  }
}

async function connect(client) {
  await until(() => client.socket.connected, CONNECT_DEADLINE_MS, `client ${client.id} (${client.kind}): connect`);
}

function byBackend(clients) {
  const out = {};
  for (const c of clients) {
    out[c.backend] = out[c.backend] || { upgrade: 0, polling: 0 };
    out[c.backend][c.kind] += 1;
  }
  return out;
}

const clients = [];

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const t0 = Date.now();

  // Phase 1. One after the other, alternating between the backends.
  for (const [kind, n] of [["upgrade", opts.upgrade], ["polling", opts.polling]]) {
    for (let k = 0; k < n; k++) {
      const want = opts.backends[clients.length % 2];
      const c = new Client(opts.url, clients.length, kind, await cookieFor(opts.url, opts.cookie, want), want);
      clients.push(c);
      await connect(c);
    }
  }
  await Promise.all(clients.map((c) => c.exchange(opts.messages).then(() => c.upgraded())));
  for (const c of clients) {
    c.check("phase 1");
    if (c.connects !== 1 || c.disconnects.length || c.connectErrors.length) {
      throw new Failure(`client ${c.id} (${c.kind}) before any backend was killed: ${JSON.stringify(c.summary())}`);
    }
  }
  const phase1 = byBackend(clients);
  const names = Object.keys(phase1).sort();
  if (names.length !== 2 || !names.includes(opts.kill)) throw new Failure(`clients spread over ${JSON.stringify(phase1)}, expected two backends, one of them ${opts.kill}`);
  for (const b of names) {
    for (const kind of ["upgrade", "polling"]) {
      if (opts[kind] >= 2 && !phase1[b][kind]) throw new Failure(`no ${kind} client on backend ${b}: ${JSON.stringify(phase1)}`);
    }
  }
  const survivor = names.find((b) => b !== opts.kill);
  console.log(`socketio-clients phase1 ${JSON.stringify({ backends: phase1, messages: opts.messages * clients.length, ms: Date.now() - t0 })}`);

  // Phase 2: the caller kills opts.kill now.
  const t1 = Date.now();
  const moved = clients.filter((c) => c.backend === opts.kill);
  const stayed = clients.filter((c) => c.backend !== opts.kill);
  await until(() => moved.every((c) => c.disconnects.length >= 1), RECONNECT_DEADLINE_MS, `the ${moved.length} clients of ${opts.kill}: disconnect`);
  await until(() => moved.every((c) => c.socket.connected && c.connects >= 2), RECONNECT_DEADLINE_MS, `the ${moved.length} clients of ${opts.kill}: reconnect`);
  const reconnectMs = Date.now() - t1;
  await Promise.all(clients.map((c) => c.exchange(opts.afterKill).then(() => c.upgraded())));
  for (const c of clients) {
    c.check("after the kill");
    if (c.backend !== survivor) throw new Failure(`client ${c.id} (${c.kind}) is answered by ${c.backend} after ${opts.kill} was killed`);
  }
  for (const c of stayed) {
    if (c.disconnects.length || c.connectErrors.length) {
      throw new Failure(`client ${c.id} (${c.kind}) of ${survivor} was disturbed when ${opts.kill} was killed: ${JSON.stringify(c.summary())}`);
    }
  }
  const total = clients.reduce((s, c) => s + c.sent, 0);
  console.log(
    `socketio-clients done ${JSON.stringify({
      clients: clients.length,
      messages: total,
      moved: moved.length,
      reconnect_ms: reconnectMs,
      disconnect_reasons: [...new Set(moved.flatMap((c) => c.disconnects))],
      connect_errors: moved.reduce((s, c) => s + c.connectErrors.length, 0),
      ms: Date.now() - t0,
    })}`,
  );
  for (const c of clients) c.socket.disconnect();
}

main().then(
  () => process.exit(0),
  (e) => {
    console.log(`socketio-clients FAILED: ${e instanceof Failure ? e.message : e.stack || e}`);
    for (const c of clients) console.log(`socketio-clients client ${JSON.stringify(c.summary())}`);
    process.exit(1);
  },
);
