#!/usr/bin/env python3
"""scripts/e2e's bench part: did every scenario of a `benches/compare --quick` run go through
wsgate with nothing lost or wrong, and was wsgate's CPU sampled? Prints one line about the run
and exits 0, or prints what is missing and exits 1.

  bench-check.py RAW_JSON
"""
import json, sys
raw = json.load(open(sys.argv[1]))
w = next(r for r in raw["results"] if r["name"] == "wsgate")
bad = [w["error"]] if w.get("error") else []
for name in ("idle", "hs", "tput64", "tput16k", "rate"):
    s = w.get("scenarios", {}).get(name)
    if s is None:
        bad.append(f"{name}: not run")
        continue
    if s.get("error") or s.get("total_errors") or s.get("mismatches") or s.get("lost"):
        bad.append(f"{name}: error {s.get('error') or s.get('first_error')!r}, "
                   f"{s.get('total_errors')} errors, {s.get('mismatches')} mismatches, "
                   f"{s.get('lost')} lost")
    elif name == "idle" and s.get("opened") != s.get("conns_requested"):
        bad.append(f"idle: {s.get('opened')} of {s.get('conns_requested')} connections opened")
    elif name == "hs" and not s.get("ok"):
        bad.append("hs: no handshake completed")
    elif name not in ("idle", "hs") and not s.get("received"):
        bad.append(f"{name}: no echo received")
    elif (s.get("proxy") or {}).get("cpu_s") is None:
        bad.append(f"{name}: wsgate's CPU was not sampled")
for b in bad:
    print("bench:", b)
if bad:
    sys.exit(1)
sc = w["scenarios"]
print(f"{sc['tput64']['msgs_per_s']:,.0f} echoes/s of 64 B, {sc['tput16k']['mb_per_s']:,.0f} MB/s "
      f"of 16 KiB, {sc['hs']['handshakes_per_s']:,.0f} handshakes/s, "
      f"p99 {sc['rate']['latency_us']['p99_us']:,.0f} µs at {sc['rate']['rate_offered']:g}/s, "
      f"{sc['idle']['opened']} idle sessions; nothing lost")
