"""Views per second of lightly's SimCLRTransform on one thread, 32x32 RGB.

The reference for pair 2 of bench/run (the `latent` side is the latent-bench `augment` binary:
the `pipeline` plugin loaded from its library) and for
`cargo run --release -p latent-plugin-pipeline --example throughput` (its "lightly-matched"
line: strength 0.5, no blur, ImageNet normalization).

    python bench/lightly_augment.py [SECONDS] [--json FILE]

Rates are per wall-clock second and per CPU second of the process (time.process_time), the
latter robust to other load on a shared machine. SimCLRTransform is a two-view transform: one call gives 2 views, counted as 2. Inputs are
256 fixed random 32x32 RGB PIL images (lightly's transforms take PIL images); the output is
normalized tensors (ToTensor + Normalize are part of the transform).
"""

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image
from lightly.transforms import SimCLRTransform

torch.set_num_threads(1)
torch.set_num_interop_threads(1)


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


ap = argparse.ArgumentParser()
ap.add_argument("seconds", nargs="?", type=float, default=3.0)
ap.add_argument("--json")
a = ap.parse_args()

rng = np.random.default_rng(0)
images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(256)]
transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)

for img in images[:16]:  # warm-up
    transform(img)
views = 0
cpu0 = time.process_time()
start = time.perf_counter()
while time.perf_counter() - start < a.seconds:
    for img in images:
        out = transform(img)
        views += len(out)
elapsed = time.perf_counter() - start
cpu = time.process_time() - cpu0
rate = views / elapsed
print(f"lightly SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0): "
      f"{rate:.0f} views/s wall, {views / cpu:.0f} views per CPU-second ({1e6 / rate:.1f} us/view wall)")
if a.json:
    import lightly

    with open(a.json, "w") as f:
        json.dump({
            "side": "lightly",
            "what": f"lightly {lightly.__version__} SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0), "
                    "PIL 32x32 RGB input, one thread",
            "views": views, "seconds": elapsed, "views_per_s": rate, "us_per_view": 1e6 / rate,
            "cpu_seconds": cpu, "views_per_cpu_s": views / cpu,
            "peak_rss_mib": peak_rss_mib(),
        }, f, indent=2)
