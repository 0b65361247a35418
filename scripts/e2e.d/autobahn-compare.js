#!/usr/bin/env node
// Compares two Autobahn fuzzingclient reports case by case.
//
//   node autobahn-compare.js DIRECT_DIR PROXIED_DIR
//
// Each DIR holds the index.json that `autobahn run -o DIR` wrote (one agent each). Prints the
// verdict counts of both, every case whose verdict (`behavior`) differs, and close-behaviour
// differences as notes. The last line is "autobahn-compare: N cases same verdict" on success.
// Exit 1 if any case's verdict differs, a case is missing on either side, or a case FAILED
// through the proxy; 2 if a report is missing or unreadable.
"use strict";

const fs = require("fs");
const path = require("path");

const VERDICTS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"];

function load(dir) {
  const file = path.join(dir, "index.json");
  let report;
  try {
    report = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    console.error(`autobahn-compare: cannot read ${file}: ${e.message}`);
    process.exit(2);
  }
  const agents = Object.keys(report);
  if (agents.length !== 1) {
    console.error(`autobahn-compare: ${file} has ${agents.length} agents, expected 1`);
    process.exit(2);
  }
  return { agent: agents[0], cases: report[agents[0]] };
}

function caseKey(id) {
  return id.split(".").map((p) => (/^\d+$/.test(p) ? Number(p) : p));
}

function byCaseId(a, b) {
  const x = caseKey(a);
  const y = caseKey(b);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if (x[i] === undefined) return -1;
    if (y[i] === undefined) return 1;
    if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
  }
  return 0;
}

function counts(cases) {
  const c = {};
  for (const r of Object.values(cases)) c[r.behavior] = (c[r.behavior] || 0) + 1;
  const keys = VERDICTS.concat(Object.keys(c).filter((k) => !VERDICTS.includes(k)));
  return keys.map((k) => `${k} ${c[k] || 0}`).join("  ");
}

// One line on what a case's client saw: what the suite received, and the close it got.
function detail(label, dir, r) {
  const file = path.join(dir, r.reportfile || "");
  let c = {};
  try {
    c = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch {
    return `${label}: (no case report ${file})`;
  }
  const short = (v) => {
    const t = JSON.stringify(v);
    return t.length > 160 ? t.slice(0, 160) + "..." : t;
  };
  return `${label}: received ${short(c.received)}, close ${c.remoteCloseCode} ${JSON.stringify(c.remoteCloseReason || "")} ` +
    `(${c.behaviorClose}; ${c.result}) ${file}`;
}

const [directDir, proxiedDir] = process.argv.slice(2);
if (!directDir || !proxiedDir) {
  console.error("usage: autobahn-compare.js DIRECT_DIR PROXIED_DIR");
  process.exit(2);
}
const direct = load(directDir);
const proxied = load(proxiedDir);

console.log(`autobahn-compare: direct  (${direct.agent}): ${Object.keys(direct.cases).length} cases  ${counts(direct.cases)}`);
console.log(`autobahn-compare: wsgate  (${proxied.agent}): ${Object.keys(proxied.cases).length} cases  ${counts(proxied.cases)}`);

const ids = [...new Set([...Object.keys(direct.cases), ...Object.keys(proxied.cases)])].sort(byCaseId);
const problems = [];
const notes = [];
for (const id of ids) {
  const d = direct.cases[id];
  const p = proxied.cases[id];
  if (!d || !p) {
    problems.push(`${id}: only in the ${d ? "direct" : "wsgate"} report`);
    continue;
  }
  if (d.behavior !== p.behavior) {
    problems.push(`${id}: direct ${d.behavior}, wsgate ${p.behavior}\n    ${detail("direct", directDir, d)}\n    ${detail("wsgate", proxiedDir, p)}`);
  } else if (p.behavior === "FAILED") {
    notes.push(`${id}: FAILED both direct and through wsgate (the backend's verdict, not the proxy's)`);
  }
  if (d.behaviorClose !== p.behaviorClose || d.remoteCloseCode !== p.remoteCloseCode) {
    notes.push(`${id}: close behaviour direct ${d.behaviorClose}/${d.remoteCloseCode}, wsgate ${p.behaviorClose}/${p.remoteCloseCode}`);
  }
}

for (const n of notes) console.log(`autobahn-compare: note: ${n}`);
if (problems.length) {
  for (const m of problems) console.log(`autobahn-compare: DIFFERENT: ${m}`);
  console.log(`autobahn-compare: ${problems.length} of ${ids.length} cases differ between direct and wsgate`);
  process.exit(1);
}
console.log(`autobahn-compare: ${ids.length} cases same verdict`);
