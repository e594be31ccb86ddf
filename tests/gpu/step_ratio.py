"""One workload's SimCLR step on a GPU, latent against PyTorch, interleaved in one call.

    python3 step_ratio.py --step ./step --torch ./bench/torch_step.py --workload resnet-mini
                          [--batch B] [--device cuda:0] [--warmup 3] [--steps 10] [--json FILE]

Each side is a process holding its model (`step --mode serve --device D`, `torch_step.py --serve
--device D`) that answers one training step per `step` line; the sides step in turn (A B, B A,
...), --warmup steps each untimed, then --steps each timed. A step's time is all of its work:
latent's ends with the features copied back and the host's optimizer done, PyTorch's with
`loss.item()`, which waits for the GPU. PyTorch runs both of its variants (one batch of 2B, one
pass per view); latent is compared with the faster. Prints one JSON object.
"""
import argparse
import json
import os
import statistics
import sys

# the serve protocol's driver is bench/pair.py's
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import pair  # noqa: E402


class Side(pair.Side):
    """pair.py's side, keeping latent's breakdown of a step on a device as well."""

    def __init__(self, name, cmd):
        super().__init__(name, cmd, os.environ.copy())
        self.copy, self.objective = [], []

    def step(self, record):
        r = super().step(record)
        if record and "copy_s" in r:
            self.copy.append(r["copy_s"])
            self.objective.append(r["objective_s"])
        return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", required=True, help="latent's `step` binary")
    ap.add_argument("--torch", required=True, help="bench/torch_step.py")
    ap.add_argument("--workload", default="resnet-mini")
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json")
    a = ap.parse_args()
    batch = ["--batch", str(a.batch)] if a.batch else []
    sides = [
        Side("latent", [a.step, "--mode", "serve", "--workload", a.workload, "--device", a.device] + batch),
        Side("pytorch joint", [sys.executable, a.torch, "--serve", "--workload", a.workload, "--variant", "joint",
                               "--device", a.device, "--threads", "4"] + batch),
        Side("pytorch per_view", [sys.executable, a.torch, "--serve", "--workload", a.workload, "--variant",
                                  "per_view", "--device", a.device, "--threads", "4"] + batch),
    ]
    for i in range(a.warmup + a.steps):
        order = sides if i % 2 == 0 else sides[::-1]
        for s in order:
            s.step(i >= a.warmup)
    out = {"workload": a.workload, "device": a.device, "warmup": a.warmup, "steps": a.steps, "sides": {}}
    for s in sides:
        peak = s.quit()
        med = statistics.median(s.t)
        views = s.ready.get("views_per_step", 0)
        out["sides"][s.name] = {
            "what": s.ready.get("what"), "median_step_s": med, "min_step_s": min(s.t),
            "max_step_s": max(s.t), "views_per_s": views / med, "first_losses": s.loss[:3],
            "peak_rss_mib": peak,
        }
        if s.copy:
            # latent on a device: the share of its step in host copies and in the CPU objective
            out["sides"][s.name]["copy_share"] = statistics.median(c / t for c, t in zip(s.copy, s.t))
            out["sides"][s.name]["objective_share"] = statistics.median(o / t for o, t in zip(s.objective, s.t))
    lat = out["sides"]["latent"]["median_step_s"]
    faster = min(("pytorch joint", "pytorch per_view"), key=lambda k: out["sides"][k]["median_step_s"])
    out["faster_pytorch"] = faster
    out["ratio_latent_over_pytorch_views_per_s"] = out["sides"][faster]["median_step_s"] / lat
    text = json.dumps(out, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
