"""Runs a command and writes its wall time and peak RSS as JSON (used by bench/run for
`latent train`, which is one process: its peak RSS is the ru_maxrss of that child).

    python3 bench/timed.py OUT.json -- COMMAND [ARGS...]
"""
import json
import os
import subprocess
import sys
import time

out, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
assert sep == "--" and cmd, __doc__
t0 = time.perf_counter()
p = subprocess.Popen(cmd)
_, status, usage = os.wait4(p.pid, 0)
wall = time.perf_counter() - t0
code = os.waitstatus_to_exitcode(status)
with open(out, "w") as f:
    json.dump({"command": cmd, "exit_code": code, "wall_seconds": wall, "peak_rss_mib": usage.ru_maxrss / 1024.0}, f, indent=2)
sys.exit(code)
