"""Combines the figures bench/run wrote in bench/out/ into bench/out/results.json and prints
the table (standard library only).

    python3 bench/report.py [OUT_DIR]
"""
import json
import os
import statistics
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def load(name):
    path = os.path.join(OUT, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def latent_run(run_dir):
    """Per-epoch training seconds and kNN from a `latent train` run's metrics.jsonl."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    epochs, evals = {}, {}
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("kind") == "epoch":
                epochs[r["epoch"]] = r
            elif r.get("kind") == "eval":
                evals[r["epoch"]] = r  # the final eval repeats the last epoch's: keep the last
    per_epoch, cum = [], 0.0
    for e in sorted(epochs):
        cum += epochs[e]["seconds"]
        ev = evals.get(e, {})
        per_epoch.append({"epoch": e, "seconds": epochs[e]["seconds"], "train_seconds_cum": cum, "loss": epochs[e]["loss"],
                          "knn_200": ev.get("knn_200"), "knn_20": ev.get("knn_20")})
    return {"epochs": len(per_epoch), "train_seconds": cum, "knn_200": per_epoch[-1]["knn_200"] if per_epoch else None,
            "per_epoch": per_epoch}


def time_to(per_epoch, target):
    for e in per_epoch:
        if e.get("knn_200") is not None and e["knn_200"] >= target - 1e-12:
            return e["train_seconds_cum"], e["epoch"] + 1
    return None, None


def mean_curve(runs):
    """The runs' mean per epoch (kNN-200 and cumulative training seconds), over the epochs all have."""
    epochs = min(len(r["per_epoch"]) for r in runs)
    per_epoch = []
    for e in range(epochs):
        rows = [r["per_epoch"][e] for r in runs]
        knn = [x["knn_200"] for x in rows]
        per_epoch.append({"epoch": e, "train_seconds_cum": statistics.mean(x["train_seconds_cum"] for x in rows),
                          "knn_200": statistics.mean(knn) if None not in knn else None})
    last = per_epoch[-1] if per_epoch else {}
    return {"runs": len(runs), "epochs": epochs, "train_seconds": last.get("train_seconds_cum"),
            "knn_200": last.get("knn_200"), "per_epoch": per_epoch}


def fmt_time(t, epoch):
    return f"{t:.1f} (ep {epoch})" if t is not None else "not reached"


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def main():
    res = {"machine": {"cpus": os.cpu_count(), "load_avg_at_report": os.getloadavg()}, "pairs": {}}
    meta = load("meta.json")
    if meta:
        res["machine"].update(meta)
    rows = []  # (pair, metric, latent, reference, ratio text, goal text, met)

    loads = {}
    for name in sorted(os.listdir(OUT)):
        if name.startswith("load_") and name.endswith(".json"):
            loads[name[len("load_"):-len(".json")]] = load(name)
    res["loads"] = loads

    def flag(label, reliable):
        return label if reliable else f"{label} (UNRELIABLE: load >= 1)"

    steps = {}
    for key, label, goal in (("a", "1a step, resnet-mini", 1.5), ("b", "1b step, resnet-mini", 1.2),
                             ("c", "1c step, resnet18-cifar", None)):
        d = load(f"step_{key}.json")
        if not d:
            continue
        steps[key] = d
        sides = d["sides"]
        compared = d.get("latent_compared", "latent")
        lat, fast = sides[compared], sides[d["fastest_pytorch"]]
        r = d["speedup_vs_fastest_pytorch"]
        met = r >= goal if goal else None
        label = flag(f"{label}, {d['threads']} thr, load {d['load_at_start']:.2f}", d["reliable"])
        rows.append((label, "views/s (median)", f"{lat['views_per_s']:.0f} ({compared})",
                     f"{fast['views_per_s']:.0f} ({d['fastest_pytorch']})", f"{r:.2f}x speed",
                     f">= {goal}x" if goal else "-", met))
        if compared != "latent":
            rows.append(("  latent's default (all views in one batch)", "views/s (median)",
                         f"{sides['latent']['views_per_s']:.0f}", f"{fast['views_per_s']:.0f}",
                         f"{d['speedup_latent_default_vs_fastest_pytorch']:.2f}x speed", "-", None))
        for n, sd in sides.items():
            rows.append((f"  {n}", "s per step", f"{sd['median_step_s']:.3f} [{sd['q1_s']:.3f}-{sd['q3_s']:.3f}]",
                         f"{sd['cpu_s_per_step']:.2f} CPU-s", f"{sd['fraction_of_gemm_limit'] * 100:.0f}% of gemm limit",
                         f"limit {d['gemm_limit_gflops']:.0f} GFLOP/s", None))
        if "speedup_latent_per_view_vs_torch_per_view" in d and compared != "latent_per_view":
            rows.append(("  same maths, per-view batch norm", "ratio", "", "",
                         f"{d['speedup_latent_per_view_vs_torch_per_view']:.2f}x speed", "-", None))
    if steps:
        res["pairs"]["1_training_step"] = steps
    al, ll = load("augment_latent.json"), load("augment_lightly.json")
    if al and ll:
        r = ratio(al["views_per_s"], ll["views_per_s"])
        res["pairs"]["2_augmentation"] = {"latent": al, "lightly": ll, "speed_ratio": r, "goal": ">= 10", "met": r >= 10}
        rows.append((flag("2 augmentation (1 core)", loads.get("2", {}).get("reliable", True)), "views/s", f"{al['views_per_s']:.0f}", f"{ll['views_per_s']:.0f}",
                     f"{r:.1f}x speed", ">= 10x", r >= 10))
        if al.get("views_per_cpu_s") and ll.get("views_per_cpu_s"):
            rc = ratio(al["views_per_cpu_s"], ll["views_per_cpu_s"])
            res["pairs"]["2_augmentation"]["cpu_speed_ratio"] = rc
            rows.append(("2 augmentation per CPU-second", "views/CPU-s", f"{al['views_per_cpu_s']:.0f}",
                         f"{ll['views_per_cpu_s']:.0f}", f"{rc:.1f}x speed", ">= 10x", rc >= 10))
    ab = load("abi.json")
    if ab:
        p = ab["abi_overhead_pct"]
        res["pairs"]["3_abi_overhead"] = {**ab, "goal": "<= 2 %", "met": p <= 2.0}
        if not ab.get("same_build", True):
            print("warning: pair 3 compared plugin libraries and linked crates from different builds", file=sys.stderr)
        rows.append((flag("3 ABI overhead", loads.get("3", {}).get("reliable", True)), "% of a step", f"{ab['median_plugin_s'] * 1e3:.0f} ms",
                     f"{ab['median_direct_s'] * 1e3:.0f} ms in-process", f"{p:+.2f} %", "<= 2 %", p <= 2.0))
        if "abi_overhead_cpu_pct" in ab:
            rows.append(("3 ABI overhead, CPU time", "% of a step", f"{statistics.median(ab['plugin_cpu_s']):.2f} CPU-s",
                         f"{statistics.median(ab['direct_cpu_s']):.2f} CPU-s", f"{ab['abi_overhead_cpu_pct']:+.2f} %", "<= 2 %", None))
        rows.append(("3 of which dynamic loading", "% of a step", "", "", f"{ab['dynamic_loading_pct']:+.2f} %", "-", None))
        if "param_sync_through_abi_ms" in ab:
            rows.append(("3 parameter round trip alone", "ms per step", f"{ab['param_sync_through_abi_ms']:.1f} through ABI",
                         f"{ab['param_update_in_place_ms']:.1f} in place", f"{ab['param_sync_overhead_pct_of_step']:+.3f} %",
                         "<= 2 %", ab['param_sync_overhead_pct_of_step'] <= 2.0))
        rows.append(("3 of which call protocol", "% of a step", "", "", f"{ab['boundary_protocol_pct']:+.2f} %", "-", None))
    mem = {}
    if "a" in steps:
        sides = steps["a"]["sides"]
        lat = sides["latent"]["peak_rss_mib"]
        ref = min(v["peak_rss_mib"] for k, v in sides.items() if k.startswith("torch"))
        r = ratio(lat, ref)
        mem["step"] = {"latent_mib": lat, "pytorch_mib": ref, "ratio": r, "met": r <= 1.0}
        rows.append(("4 peak RSS, step", "MiB", f"{lat:.0f}", f"{ref:.0f}", f"{r:.2f}x", "<= 1.0x", r <= 1.0))
    if al and ll:
        r = ratio(al["peak_rss_mib"], ll["peak_rss_mib"])
        mem["augmentation"] = {"latent_mib": al["peak_rss_mib"], "lightly_mib": ll["peak_rss_mib"], "ratio": r, "met": r <= 1.0}
        rows.append(("4 peak RSS, augmentation", "MiB", f"{al['peak_rss_mib']:.0f}", f"{ll['peak_rss_mib']:.0f}", f"{r:.2f}x", "<= 1.0x", r <= 1.0))
    # pair 5: one training per side and seed (seed 0 without a suffix, seed i with "-s<i>")
    seeds = []
    for i in range(1000):
        sfx = f"-s{i}" if i else ""
        tl, tp = latent_run(os.path.join(OUT, f"latent-run{sfx}")), load(f"train_torch{sfx}.json")
        if not (tl and tp and tl["per_epoch"] and tp["per_epoch"]):
            break
        tl.update({"process": load(f"train_latent_process{sfx}.json")})
        seeds.append((i, tl, tp))
    if seeds:
        n = len(seeds)
        tl, tp = seeds[0][1], seeds[0][2]
        tproc = tl["process"]
        mean_l, mean_p = mean_curve([s[1] for s in seeds]), mean_curve([s[2] for s in seeds])
        of = f" (mean of {n} seeds)" if n > 1 else ""
        r = ratio(mean_l["train_seconds"], mean_p["train_seconds"])
        rows.append((f"5 train {tl['epochs']} epochs{of}", "s (training)", f"{mean_l['train_seconds']:.1f}",
                     f"{mean_p['train_seconds']:.1f}", f"{r:.2f}x time", "-", None))
        rows.append((f"5 final kNN-200 accuracy{of}", "top-1", f"{mean_l['knn_200']:.4f}", f"{mean_p['knn_200']:.4f}",
                     f"{(mean_l['knn_200'] - mean_p['knn_200']) * 100:+.1f} pts", "-", None))
        # the time each side's (mean) curve needs to reach the lower of the two final accuracies
        target = min(mean_l["knn_200"], mean_p["knn_200"])
        (sl_t, el), (sp_t, ep) = time_to(mean_l["per_epoch"], target), time_to(mean_p["per_epoch"], target)
        rt = ratio(sl_t, sp_t)
        reliable = all(l.get("reliable", True) for k, l in loads.items() if k.startswith("5"))
        rows.append((flag(f"5 time to kNN {target:.4f}{of}", reliable), "s (training)", fmt_time(sl_t, el),
                     fmt_time(sp_t, ep), f"{rt:.2f}x time" if rt is not None else "not reached", "<= 0.5x",
                     rt is not None and rt <= 0.5))
        per_seed = []
        for seed, a, b in seeds:
            t = min(a["knn_200"], b["knn_200"])
            (at, ae), (bt, be) = time_to(a["per_epoch"], t), time_to(b["per_epoch"], t)
            per_seed.append({"seed": seed, "knn_target": t, "latent_seconds_to_target": at, "latent_epoch": ae,
                             "pytorch_seconds_to_target": bt, "pytorch_epoch": be, "time_to_target_ratio": ratio(at, bt),
                             "latent_knn_200": a["knn_200"], "pytorch_knn_200": b["knn_200"]})
        if n > 1:
            text = ", ".join(f"{p['time_to_target_ratio']:.2f} (ep {p['latent_epoch']}/{p['pytorch_epoch']})"
                             if p["time_to_target_ratio"] is not None else "-" for p in per_seed)
            rows.append(("  each seed, to its own lower final kNN", "time ratio", "", "", text, "-", None))
        if tproc:
            mem["train"] = {"latent_mib": tproc["peak_rss_mib"], "pytorch_main_mib": tp["peak_rss_mib"],
                            "pytorch_workers_max_mib": tp.get("workers_peak_rss_mib")}
            rows.append(("4 peak RSS, training (info)", "MiB", f"{tproc['peak_rss_mib']:.0f}",
                         f"{tp['peak_rss_mib']:.0f} + workers", f"{ratio(tproc['peak_rss_mib'], tp['peak_rss_mib']):.2f}x", "-", None))
        res["pairs"]["5_train_mnist5k"] = {"latent": tl, "pytorch": tp, "seeds": n,
                                           "latent_seeds": [s[1] for s in seeds[1:]], "pytorch_seeds": [s[2] for s in seeds[1:]],
                                           "latent_mean": mean_l, "pytorch_mean": mean_p, "train_time_ratio": r,
                                           "knn_target": target, "latent_seconds_to_target": sl_t,
                                           "pytorch_seconds_to_target": sp_t, "time_to_target_ratio": rt,
                                           "per_seed": per_seed,
                                           "goal": "time to the same kNN <= half of PyTorch's (the seeds' mean curves)",
                                           "met": rt is not None and rt <= 0.5}
    if mem:
        res["pairs"]["4_peak_memory"] = {**mem, "goal": "<= PyTorch's / lightly's",
                                         "met": all(m.get("met", True) for m in mem.values())}
    res["table"] = [dict(zip(["pair", "unit", "latent", "reference", "ratio", "goal", "met"], r)) for r in rows]
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(res, f, indent=2)

    heads = ("pair", "unit", "latent", "reference", "ratio", "goal", "met")
    cells = [[str(c) for c in r[:6]] + ["yes" if r[6] else ("no" if r[6] is not None else "")] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(heads)]
    line = lambda cs: "| " + " | ".join(c.ljust(w) for c, w in zip(cs, widths)) + " |"
    print(line(heads))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print(line(c))
    print(f"\nfigures: {os.path.join(OUT, 'results.json')}")


if __name__ == "__main__":
    main()
