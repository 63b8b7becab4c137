#!/usr/bin/env python3
"""bench/storm_watch.py MOCK_PORT SECRET SECONDS: turn one mock key into a steady `429, Retry-After: 5`
and watch how many requests still reach it (used by run.sh's storm phase; Python stdlib only).

Prints a TSV timeline (seconds since the switch, arrivals at the key since the switch) with one
line each time the count changes, then `#`-lines with the summary. The count is read over one
keep-alive connection every ~2 ms, so an arrival is placed within a few ms. `before` is read
just before the switch and `after` just after it: arrivals between them may have been answered
with the old behaviour (200), so the in-window figure is given as a range.
"""
import http.client
import json
import sys
import time

port, secret, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)


def count():
    conn.request("GET", "/_mock/stats")
    return json.loads(conn.getresponse().read())["keys"].get(secret, 0)


def steady(behavior):
    body = json.dumps({"steady": behavior})
    conn.request("POST", f"/_mock/keys/{secret}", body, {"Content-Type": "application/json"})
    conn.getresponse().read()


before = count()
t0 = time.monotonic()
steady("429:5")
after = count()
t_after = time.monotonic() - t0
timeline, last = [], after - before
print(f"0.000\t{last}")
while time.monotonic() - t0 < seconds:
    n = count() - before
    if n != last:
        t = time.monotonic() - t0
        timeline.append((t, n))
        print(f"{t:.3f}\t{n}")
        last = n
    time.sleep(0.002)
steady("ok")

# Arrivals in the first cooldown window: everything before 4.9 s after the switch.
in_window = max([n for t, n in timeline if t < 4.9] + [after - before])
total = last
print(f"# switch took {t_after * 1000:.1f} ms; arrivals during it: {after - before}")
print(f"# arrivals within 4.9 s of the switch: {in_window} (after the first 429: "
      f"{max(in_window - (after - before) - 1, 0)} to {in_window - 1})")
first_jump = [t for t, n in timeline if t < 4.9]
if first_jump:
    print(f"# the last of them arrived {first_jump[-1] * 1000:.1f} ms after the switch")
later = [(t, n) for t, n in timeline if t >= 4.9]
if later:
    print(f"# after the cooldown: {total - in_window} more arrivals, the first at {later[0][0]:.2f} s")
print(f"# whole watch ({seconds:.0f} s): {total}")
