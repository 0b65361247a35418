#!/usr/bin/env node
// Reads a wsgate log written with `--log-format json` and checks its access log.
//
//   node access-log.js FILE [--sessions N] [--min-up BYTES] [--min-down BYTES] [--clean]
//                           [--transport h1|h2] [--refused ROUTE:POLICY[:STATUS]=N]...
//                           [--refused-reason ROUTE:TEXT]... [--allow-warning TEXT]...
//
// Prints one summary line (sessions by closed_by and outcome, refused handshakes, warnings),
// then, with --sessions, each session record. Checks, when asked:
//   --sessions N    exactly N "session closed" records, each naming closed_by and both byte counts
//   --min-up B      every session moved at least B bytes client->backend
//   --min-down B    every session moved at least B bytes backend->client
//   --clean         every session has outcome "closed" (not "error"/"ended_by_proxy") and
//                   closed_by "client" or "backend", and no WARN/ERROR line was logged
//   --transport T   every session came over T: "h2" (an HTTP/2 extended CONNECT stream,
//                   RFC 8441) or "h1" (an HTTP/1.1 Upgrade)
//   --refused ROUTE:POLICY[:STATUS]=N
//                   exactly N "handshake refused" records on route ROUTE, each refused by
//                   policy POLICY (origin, jwt, cookie, ...), with status STATUS if given;
//                   repeatable
//   --refused-reason ROUTE:TEXT
//                   some "handshake refused" record on route ROUTE has TEXT in its reason
//                   (e.g. "e2e-jwt:token expired"); repeatable
//   --allow-warning TEXT
//                   with --clean, a WARN line whose message contains TEXT is expected, not a
//                   problem (e.g. "development certificate": wsgate warns at every start
//                   with one); repeatable
// Exit 1 on a failed check, 2 if the file is unreadable.
"use strict";

const fs = require("fs");

const argv = process.argv.slice(2);
const file = argv[0];
const opt = (name) => {
  const i = argv.indexOf(name);
  return i > 0 && i + 1 < argv.length ? Number(argv[i + 1]) : undefined;
};
const wantSessions = opt("--sessions");
const minUp = opt("--min-up");
const minDown = opt("--min-down");
const clean = argv.includes("--clean");
const transport = (() => {
  const i = argv.indexOf("--transport");
  return i > 0 ? argv[i + 1] : undefined;
})();
const allowed = argv.filter((a, i) => i > 0 && argv[i - 1] === "--allow-warning");
const wantReasons = argv
  .filter((a, i) => i > 0 && argv[i - 1] === "--refused-reason")
  .map((a) => ({ route: a.slice(0, a.indexOf(":")), text: a.slice(a.indexOf(":") + 1) }));
const wantRefused = [];
argv.forEach((a, i) => {
  if (a !== "--refused") return;
  const m = /^([^:]+):([^:=]+)(?::(\d{3}))?=(\d+)$/.exec(argv[i + 1] || "");
  if (!m) {
    console.error(`access-log: --refused wants ROUTE:POLICY[:STATUS]=N, not ${argv[i + 1]}`);
    process.exit(2);
  }
  wantRefused.push({ route: m[1], policy: m[2], status: m[3] && Number(m[3]), n: Number(m[4]) });
});

let text;
try {
  text = fs.readFileSync(file, "utf8");
} catch (e) {
  console.error(`access-log: cannot read ${file}: ${e.message}`);
  process.exit(2);
}

const records = [];
const unparsed = [];
for (const line of text.split("\n")) {
  if (!line.trim()) continue;
  try {
    records.push(JSON.parse(line));
  } catch {
    unparsed.push(line);
  }
}

const sessions = records.filter((r) => r.message === "session closed");
const refused = records.filter((r) => r.message === "handshake refused");
const warnings = records.filter((r) => r.level === "WARN" || r.level === "ERROR");
const unexpected = warnings.filter((w) => !(w.level === "WARN" && allowed.some((t) => String(w.message).includes(t))));

const tally = (rs, f) => {
  const t = {};
  for (const r of rs) t[r[f]] = (t[r[f]] || 0) + 1;
  return Object.entries(t).map(([k, v]) => `${k} ${v}`).join(", ") || "-";
};
console.log(
  `access-log: ${sessions.length} session(s) (closed_by: ${tally(sessions, "closed_by")}; ` +
    `outcome: ${tally(sessions, "outcome")}; transport: ${tally(sessions, "transport")}), ` +
    `${refused.length} refused (status: ${tally(refused, "status")}; policy: ` +
    `${tally(refused.filter((r) => r.policy), "policy")}), ${warnings.length} warning/error line(s)` +
    (warnings.length > unexpected.length ? ` (${warnings.length - unexpected.length} expected)` : "") +
    (unparsed.length ? `, ${unparsed.length} non-JSON line(s)` : ""),
);

const problems = [];
const show = (r) => {
  const { timestamp, level, target, message, ...rest } = r;
  return `${level} ${message} ${JSON.stringify(rest)}`;
};
if (wantSessions !== undefined) {
  for (const s of sessions) console.log(`access-log:   ${show(s)}`);
  if (sessions.length !== wantSessions) {
    problems.push(`expected ${wantSessions} "session closed" record(s), found ${sessions.length}`);
  }
}
for (const s of sessions) {
  const id = `session ${s.session}`;
  for (const k of ["closed_by", "bytes_client_to_backend", "bytes_backend_to_client", "outcome"]) {
    if (s[k] === undefined) problems.push(`${id}: no ${k} field`);
  }
  if (minUp !== undefined && !(s.bytes_client_to_backend >= minUp)) {
    problems.push(`${id}: bytes_client_to_backend ${s.bytes_client_to_backend} < ${minUp}`);
  }
  if (minDown !== undefined && !(s.bytes_backend_to_client >= minDown)) {
    problems.push(`${id}: bytes_backend_to_client ${s.bytes_backend_to_client} < ${minDown}`);
  }
  if (clean) {
    if (s.outcome !== "closed") problems.push(`${id}: outcome ${s.outcome} (error: ${s.error || "-"})`);
    if (!["client", "backend"].includes(s.closed_by)) problems.push(`${id}: closed_by ${s.closed_by}`);
  }
}
for (const s of sessions) {
  if (transport !== undefined && s.transport !== transport) {
    problems.push(`session ${s.session}: transport ${s.transport}, expected ${transport}`);
  }
}
for (const { route, policy, status, n } of wantRefused) {
  const rs = refused.filter((r) => r.route === route);
  for (const r of rs) console.log(`access-log:   ${show(r)}`);
  if (rs.length !== n) problems.push(`route ${route}: ${rs.length} refused handshake(s), expected ${n}`);
  for (const r of rs) {
    if (r.policy !== policy) problems.push(`route ${route}: refused by policy ${JSON.stringify(r.policy)} (${r.reason}), expected ${policy}`);
    if (status && r.status !== status) problems.push(`route ${route}: refused with status ${r.status} (${r.reason}), expected ${status}`);
  }
}
for (const { route, text } of wantReasons) {
  if (!refused.some((r) => r.route === route && String(r.reason).includes(text))) {
    problems.push(`route ${route}: no refusal whose reason says ${JSON.stringify(text)}`);
  }
}
if (clean) {
  for (const w of unexpected) problems.push(`logged ${show(w)}`);
}
if (problems.length) {
  for (const p of problems) console.log(`access-log: PROBLEM: ${p}`);
  process.exitCode = 1;
}
