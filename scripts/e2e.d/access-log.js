#!/usr/bin/env node
// Reads a wsgate log written with `--log-format json` and checks its access log.
//
//   node access-log.js FILE [--sessions N] [--min-up BYTES] [--min-down BYTES] [--clean]
//
// Prints one summary line (sessions by closed_by and outcome, refused handshakes, warnings),
// then, with --sessions, each session record. Checks, when asked:
//   --sessions N    exactly N "session closed" records, each naming closed_by and both byte counts
//   --min-up B      every session moved at least B bytes client->backend
//   --min-down B    every session moved at least B bytes backend->client
//   --clean         every session has outcome "closed" (not "error"/"ended_by_proxy") and
//                   closed_by "client" or "backend", and no WARN/ERROR line was logged
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

const tally = (rs, f) => {
  const t = {};
  for (const r of rs) t[r[f]] = (t[r[f]] || 0) + 1;
  return Object.entries(t).map(([k, v]) => `${k} ${v}`).join(", ") || "-";
};
console.log(
  `access-log: ${sessions.length} session(s) (closed_by: ${tally(sessions, "closed_by")}; ` +
    `outcome: ${tally(sessions, "outcome")}), ${refused.length} refused ` +
    `(${tally(refused, "status")}), ${warnings.length} warning/error line(s)` +
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
if (clean) {
  for (const w of warnings) problems.push(`logged ${show(w)}`);
}
if (problems.length) {
  for (const p of problems) console.log(`access-log: PROBLEM: ${p}`);
  process.exitCode = 1;
}
