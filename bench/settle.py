"""Waits for the machine to settle before a timed pair: until the 1-minute load average is
below 1.0, at most --max seconds, then writes what it saw (standard library only).

    python3 bench/settle.py --json FILE [--max 240]

A pair that starts at a load of 1.0 or more is marked unreliable in bench/run's table: other
work was sharing the cores, and PyTorch's OpenMP threads suffer from that far more than rayon.
"""
import argparse
import json
import os
import time

LIMIT = 1.0


def settle(max_wait, limit=LIMIT):
    """Waits until the 1-minute load average is below `limit` (at most `max_wait` s); returns
    {"load_before", "load_at_start", "waited_s", "reliable"}."""
    before = os.getloadavg()[0]
    t0 = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < max_wait:
        time.sleep(5)
    at_start = os.getloadavg()[0]
    return {"load_before": before, "load_at_start": at_start, "waited_s": time.monotonic() - t0,
            "reliable": at_start < limit}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--max", type=float, default=240)
    a = ap.parse_args()
    r = settle(a.max)
    with open(a.json, "w") as f:
        json.dump(r, f)
    print(f"load {r['load_before']:.2f} -> {r['load_at_start']:.2f} after {r['waited_s']:.0f} s"
          f"{'' if r['reliable'] else ' (UNRELIABLE: still above 1.0)'}")
