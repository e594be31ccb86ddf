"""Views per second of lightly's SimCLRTransform on one thread, 32x32 RGB.

The reference for `cargo run --release -p latent-plugin-augment --example throughput`
(its "lightly-matched" line: strength 0.5, no blur, ImageNet normalization).

    /work/venv/bin/python bench/lightly_augment.py [SECONDS]

SimCLRTransform is a two-view transform: one call gives 2 views, counted as 2. Inputs are
256 fixed random 32x32 RGB PIL images (lightly's transforms take PIL images).
"""

import sys
import time

import numpy as np
import torch
from PIL import Image
from lightly.transforms import SimCLRTransform

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
rng = np.random.default_rng(0)
images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(256)]
transform = SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)

for img in images[:16]:  # warm-up
    transform(img)
views = 0
start = time.perf_counter()
while time.perf_counter() - start < seconds:
    for img in images:
        out = transform(img)
        views += len(out)
elapsed = time.perf_counter() - start
rate = views / elapsed
print(f"lightly SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0): "
      f"{rate:.0f} views/s on one thread ({1e6 / rate:.1f} us/view)")
