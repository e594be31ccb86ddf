"""The communication share of a data-parallel step (issue #18): the README's main job (SimCLR +
resnet-mini on the embedded MNIST-5k, global batch 256) for a few steps in one process and
under `mpirun -np N`, one after the other on an idle machine, in rounds (standard library only).

    cargo build --release && cargo build --release -p latent-host --features mpi \
        && cp target/release/latent target/release/latent-mpi
    python3 bench/distributed.py [--ranks 2] [--steps 20] [--rounds 2] [--config FILE]

For each run it prints the median step time (rank 0's clock; the first 3 steps are left out as
warm-up), and for the N ranks the bytes rank 0 sent in collectives per step and the seconds it
spent in them (`comm_bytes`, `comm_s` in metrics.jsonl; the time includes waiting for the
slowest rank). The ranks share this machine's cores: on one machine the figure says what the
exchange costs, not what N machines would gain.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from settle import settle  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(ranks, steps, config, out):
    exe = os.path.join(ROOT, "target/release/latent-mpi")
    cmd = [exe, "train", config, "--out", out]
    for s in (f"train.max_steps={steps}", "eval.every_epochs=0", "eval.linear_probe=false",
              "data.max_test_images=100"):
        cmd += ["--set", s]
    if ranks > 1:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)] + cmd
    load = settle(240)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    recs = [r for r in recs if r["kind"] == "step"][3:]
    dt = [256 / r["images_per_s"] for r in recs]
    res = {"ranks": ranks, "step_s": statistics.median(dt), "load": load["load_at_start"]}
    if ranks > 1:
        res["comm_s"] = statistics.median(r["comm_s"] for r in recs)
        res["comm_bytes"] = statistics.median(r["comm_bytes"] for r in recs)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--config", default=os.path.join(ROOT, "examples/configs/simclr-mnist.toml"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(a.rounds):
            for ranks in (1, a.ranks) if k % 2 == 0 else (a.ranks, 1):
                r = run(ranks, a.steps, a.config, os.path.join(tmp, f"r{k}-{ranks}"))
                line = f"round {k}: {ranks} rank(s): step {r['step_s']:.3f} s (load {r['load']:.2f})"
                if ranks > 1:
                    line += (f"; rank 0 in collectives {r['comm_s']:.3f} s "
                             f"({100 * r['comm_s'] / r['step_s']:.1f} % of the step), "
                             f"{r['comm_bytes'] / 1e6:.2f} MB sent")
                print(line, flush=True)
                time.sleep(1)


if __name__ == "__main__":
    main()
