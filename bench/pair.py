"""Pair 1 of bench/run: the SimCLR training step of latent and PyTorch, interleaved.

    python bench/pair.py --bin DIR [--workload resnet-mini|resnet18-cifar] [--threads 2]
                         [--steps 10] [--warmup 3] [--settle 240] [--json FILE]

Every side is a process that holds its model and answers one training step per request
(`step --mode serve`, `torch_step.py --serve`). The sides:

    latent             the host Learner over the plugins loaded from DIR, the views as one batch
    latent per_view    the same with train.batch_norm = "per_view" (statistics per view)
    pytorch joint      both views through the model as one batch of 2B
    pytorch per_view   one model pass per view (lightly's examples)

How the figures are kept honest on a shared machine:
- before the pair, the 1-minute load average is recorded and the pair waits (at most --settle
  seconds) for it to fall below 1.0; a pair that starts above 1.0 is marked unreliable;
- the sides step in turn, A B C D, D C B A, B C D A, A D C B, ... (forward and reversed
  rotations alternate, so no side always follows the same one), with a pause between steps so
  that one side's spinning threads do not run into the next side's step;
- --warmup steps per side are not timed, then --steps steps per side are: the median, the
  quartiles and the range are reported, with the load average seen before each round;
- the start order is balanced: the sides' processes start in the order given for the first
  half of the rounds, then are stopped and started again in reverse order (each with its
  --warmup steps again) for the second. On the 2-core Intel VM of 2026-12-05 the process
  started second of two ran 1.5-2.5 % faster whatever it ran (bench/ab-dirs, a build against
  a copy of itself: 0.997 and 0.975), and until then latent's sides always started first;
  the medians of each start order are kept in the JSON (median_step_s_per_start_order; in
  runs 8 and 9 they differed by a few per cent either way, with no consistent sign);
- the machine's matrix-product limit is measured in the same run: PyTorch's sgemm on the same
  threads (a 4096x4096 product, best of 3) and latent's own product as its convolutions run it
  (`step --mode gemm`), the higher of the two taken as the limit; each side's FLOP rate (the
  step's multiply-adds, counted by torch_step.py) is given as a fraction of it. On AMD CPUs
  PyTorch's sgemm (MKL) is far below the FMA units' rate, so its figure alone flatters everyone.
The headline ratio is over the faster PyTorch variant's views/s, of latent's side that runs the
same maths (its per-view batch norm against PyTorch's one pass per view, its default of all
views in one batch against PyTorch's one batch of 2B), where that side ran; the ratio of
latent's default against the faster PyTorch variant is printed beside it.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from settle import settle

HERE = os.path.dirname(os.path.abspath(__file__))


# latent's side that runs the same maths as each PyTorch variant (batch-norm statistics over
# both views, or per view)
SAME_MATHS = {"torch_joint": "latent", "torch_per_view": "latent_per_view"}


def load1():
    return os.getloadavg()[0]


class Side:
    def __init__(self, name, cmd, env):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     text=True, bufsize=1)
        self.ready = self.read()
        if not self.ready.get("ready"):
            raise SystemExit(f"pair: side {name} did not start: {self.ready}")
        self.t, self.cpu, self.loss = [], [], []

    def read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"pair: side {self.name} ended early (exit {self.proc.wait()})")
        return json.loads(line)

    def step(self, record):
        """One step; its answer (tests/gpu/step_ratio.py reads more of it)."""
        self.proc.stdin.write("step\n")
        r = self.read()
        if record:
            self.t.append(r["t"])
            self.cpu.append(r["cpu"])
        self.loss.append(r["loss"])
        return r

    def quit(self):
        self.proc.stdin.write("quit\n")
        r = self.read()
        self.proc.wait()
        return r.get("peak_rss_mib")


def sgemm_gflops(threads, n=4096, reps=3):
    import torch
    torch.set_num_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def quartiles(xs):
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="target/release of latent (step and the plugins)")
    ap.add_argument("--workload", default="resnet-mini", choices=["resnet-mini", "resnet18-cifar"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--settle", type=float, default=240, help="longest wait for load < 1 (s)")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between two steps")
    ap.add_argument("--sides", default="latent,latent_per_view,torch_joint,torch_per_view")
    ap.add_argument("--halves", type=int, choices=[1, 2], default=2,
                    help="2: half the rounds with the sides started in the order given, half with "
                         "them started again in reverse order; 1: one start, in the order given")
    ap.add_argument("--json")
    a = ap.parse_args()

    load = settle(a.settle)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    step_bin = os.path.join(a.bin, "step")
    cmds = {
        "latent": [step_bin, "--mode", "serve", "--workload", a.workload, "--plugin-dir", a.bin],
        "latent_per_view": [step_bin, "--mode", "serve", "--workload", a.workload, "--bn", "per_view",
                            "--plugin-dir", a.bin],
        "torch_joint": [sys.executable, os.path.join(HERE, "torch_step.py"), "--serve", "--workload",
                        a.workload, "--variant", "joint", "--threads", str(a.threads)],
        "torch_per_view": [sys.executable, os.path.join(HERE, "torch_step.py"), "--serve", "--workload",
                           a.workload, "--variant", "per_view", "--threads", str(a.threads)],
    }
    names = a.sides.split(",")
    unknown = [n for n in names if n not in cmds]
    if unknown or not any(n.startswith("torch") for n in names):
        raise SystemExit(f"pair: --sides {a.sides!r}: names from {sorted(cmds)}, at least one torch side "
                         f"(it counts the step's FLOPs); unknown: {', '.join(unknown) or 'none'}")
    if a.steps < 2:
        raise SystemExit(f"pair: --steps {a.steps}: at least 2 timed steps (quartiles need two)")
    # the start orders: as listed, then (the processes started again) reversed
    starts = [names, names[::-1]] if a.halves == 2 and len(names) > 1 else [names]
    rounds = [a.steps - a.steps // len(starts)] + [a.steps // len(starts)] * (len(starts) - 1)
    t = {n: [] for n in names}
    cpu, loss, rss, half_medians = ({n: [] for n in names} for _ in range(4))
    round_loads, gflop, ready = [], None, {}
    for start, count in zip(starts, rounds):
        sides = [Side(n, cmds[n], env) for n in start]
        gflop = gflop or next(s.ready["step_gflop"] for s in sides if "step_gflop" in s.ready)
        for _ in range(a.warmup):
            for s in sides:
                s.step(False)
        for r in range(count):
            round_loads.append(load1())
            k = r // 2 % len(sides)
            order = sides[k:] + sides[:k]
            for s in (order if r % 2 == 0 else order[::-1]):
                time.sleep(a.pause)
                s.step(True)
        for s in sides:
            rss[s.name].append(s.quit())
            t[s.name] += s.t
            cpu[s.name] += s.cpu
            loss[s.name] += s.loss
            half_medians[s.name].append(statistics.median(s.t))
            ready[s.name] = s.ready
    torch_gemm = sgemm_gflops(a.threads)
    latent_gemm = json.loads(subprocess.run([step_bin, "--mode", "gemm"], env=env, check=True,
                                            capture_output=True, text=True).stdout)["gemm_gflops"]
    gemm = max(torch_gemm, latent_gemm)

    out = {"workload": a.workload, "threads": a.threads, "steps": a.steps, "warmup": a.warmup,
           "start_orders": starts,
           **load, "round_loads": round_loads, "load_at_end": load1(),
           "step_gflop": gflop, "sgemm_gflops_pytorch": torch_gemm, "gemm_gflops_latent": latent_gemm,
           "gemm_limit_gflops": gemm, "sides": {}}
    for n in names:
        med, r = statistics.median(t[n]), ready[n]
        q1, q3 = quartiles(t[n])
        out["sides"][n] = {
            "what": r["what"], "batch": r["batch"], "views_per_step": r["views_per_step"],
            "step_s": t[n], "median_step_s": med, "q1_s": q1, "q3_s": q3, "min_s": min(t[n]), "max_s": max(t[n]),
            "median_step_s_per_start_order": half_medians[n],
            "views_per_s": r["views_per_step"] / med, "cpu_s_per_step": statistics.median(cpu[n]),
            "losses": loss[n], "peak_rss_mib": max(rss[n]),
            "gflops": gflop / med, "fraction_of_gemm_limit": gflop / med / gemm,
        }
    torch_sides = [n for n in out["sides"] if n.startswith("torch")]
    if "latent" in out["sides"] and torch_sides:
        fastest = min(torch_sides, key=lambda n: out["sides"][n]["median_step_s"])
        out["fastest_pytorch"] = fastest
        # the headline: the same maths as PyTorch's faster variant (its batch-norm statistics
        # per view or over both views), where that latent side ran; latent's default beside it
        same = SAME_MATHS[fastest]
        compared = same if same in out["sides"] else "latent"
        out["latent_compared"] = compared
        out["same_maths"] = compared == same
        out["speedup_vs_fastest_pytorch"] = (out["sides"][fastest]["median_step_s"]
                                             / out["sides"][compared]["median_step_s"])
        out["speedup_latent_default_vs_fastest_pytorch"] = (out["sides"][fastest]["median_step_s"]
                                                            / out["sides"]["latent"]["median_step_s"])
        for ref, lat in SAME_MATHS.items():
            if lat in out["sides"] and ref in out["sides"]:
                out[f"speedup_{lat}_vs_{ref}"] = (out["sides"][ref]["median_step_s"]
                                                  / out["sides"][lat]["median_step_s"])
    text = json.dumps(out, indent=2)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(summary(out))


def summary(out):
    orders = " then ".join("/".join(o) for o in out.get("start_orders", []))
    lines = [f"{out['workload']}, {out['threads']} thread(s), {out['steps']} steps after {out['warmup']} warm-ups "
             f"(the warm-ups at each start; started {orders or 'once'}), "
             f"load {out['load_at_start']:.2f} at start{'' if out['reliable'] else ' (UNRELIABLE: above 1.0)'}; "
             f"gemm limit {out['gemm_limit_gflops']:.0f} GFLOP/s (PyTorch sgemm {out['sgemm_gflops_pytorch']:.0f}, "
             f"latent {out['gemm_gflops_latent']:.0f}), step {out['step_gflop']:.0f} GFLOP"]
    for n, s in out["sides"].items():
        lines.append(f"  {n:16} median {s['median_step_s']:.3f} s (quartiles {s['q1_s']:.3f}-{s['q3_s']:.3f}, "
                     f"range {s['min_s']:.3f}-{s['max_s']:.3f}), {s['views_per_s']:.0f} views/s, "
                     f"{s['cpu_s_per_step']:.2f} CPU-s, {s['fraction_of_gemm_limit'] * 100:.0f}% of the limit, "
                     f"peak {s['peak_rss_mib']:.0f} MiB"
                     + (f"; per start order {', '.join(f'{m:.3f}' for m in s['median_step_s_per_start_order'])} s"
                        if len(s.get("median_step_s_per_start_order", [])) > 1 else ""))
    if "speedup_vs_fastest_pytorch" in out:
        how = ("the same maths" if out["same_maths"]
               else f"no {SAME_MATHS[out['fastest_pytorch']]} side in this pair")
        lines.append(f"  {out['latent_compared']} / fastest PyTorch ({out['fastest_pytorch']}), {how}: "
                     f"{out['speedup_vs_fastest_pytorch']:.2f}x the views/s")
        if out["latent_compared"] != "latent":
            lines.append(f"  latent (default, all views in one batch) / {out['fastest_pytorch']}: "
                         f"{out['speedup_latent_default_vs_fastest_pytorch']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
