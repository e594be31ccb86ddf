"""Writes docs/BENCHMARKS.md from the results of bench/methods (runs/methods/results.jsonl).

    python3 bench/report_methods.py runs/methods/results.jsonl docs/BENCHMARKS.md

The last result of each (data set, epochs, method) counts, so a rerun of one method
(`bench/methods --only NAME`) replaces its row; each (data set, epochs) gets its own table.
"""
import json
import os
import platform
import subprocess
import sys
import time

results_path, out_path = sys.argv[1], sys.argv[2]
rows = {}
for line in open(results_path):
    if line.strip():
        r = json.loads(line)
        rows[(r["data"], r["epochs"], r["method"])] = r

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
cores = os.cpu_count()
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
TITLES = {"mnist5k": "MNIST-5k (embedded: 4,000 train / 1,000 test)", "fashion": "Fashion-MNIST, first 4,000 train / 1,000 test"}


def pct(v):
    return "—" if v is None else f"{100 * v:.1f}"


out = ["# Benchmarks: every method at the same budget", "",
       "Written by `bench/methods` (this file is its output; rerun it to reproduce). Each method trains",
       "resnet-mini with its config from `examples/configs/` for the same number of epochs on the same",
       "data, then the trained encoder's test-split embeddings are evaluated: weighted kNN (k = 200,",
       "T = 0.1 and k = 20, T = 0.07, cosine) and a linear probe, in %. Random init is the same",
       "encoder before training, raw pixels the flattened images; `vs random init` is the row's",
       "kNN@200 / kNN@20 less its own encoder's at random init: latent rows against the random-init rows",
       "under each table (the ViT rows: the ViT's), PyTorch rows against the random-init PyTorch encoder that",
       "bench/torch_train_mnist5k.py measures before training (PyTorch's default initialisation is not ours,",
       "so the two random inits differ). The PyTorch rows run the same",
       "recipe in PyTorch + lightly (`bench/torch_train_mnist5k.py`: the same data split, encoder,",
       "heads, views, optimiser and schedule; kNN only). `train s` counts the training epochs",
       "(loading, augmenting, stepping), not evaluation; peak RSS is the process's (PyTorch: main",
       "process plus its 2 loader workers). Accuracies are deterministic for a given seed; times are",
       "not, and count only beside each other, from one run on an otherwise idle machine. The last",
       "column is the 1-minute load average just before each run (bench/methods waits up to 3",
       "minutes for it to fall below 1).", "",
       f"Machine: {cpu}, {cores} cores, Linux. Commit {rev}. Written {time.strftime('%Y-%m-%d')}.", ""]
def delta(r, init):
    if not init or r["knn_200"] is None:
        return "—"
    return f"{100 * (r['knn_200'] - init['knn_200']):+.1f} / {100 * (r['knn_20'] - init['knn_20']):+.1f}"


sections = sorted({(d, e) for (d, e, _) in rows}, key=lambda k: (["mnist5k", "fashion"].index(k[0]) if k[0] in TITLES else 9, -k[1]))
for data, epochs in sections:
    rs = [r for (d, e, _), r in rows.items() if (d, e) == (data, epochs)]
    encoder = lambda r: r.get("encoder", "resnet-mini")
    # each encoder's random init, from the latent rows (the PyTorch rows bring their own)
    inits = {}
    for r in rs:
        if r["side"] == "latent" and r.get("baselines", {}).get("random init"):
            inits.setdefault(encoder(r), r["baselines"]["random init"])
    out += [f"## {TITLES.get(data, data)}, {epochs} epochs", ""]
    out += ["| method | kind | kNN@200 | kNN@20 | probe | vs random init | train s | peak RSS MiB | load |", "|---|---|---|---|---|---|---|---|---|"]
    order = lambda r: (r["side"] != "latent", r["kind"].startswith("supervised"), -(r["knn_200"] or 0))
    for r in sorted(rs, key=order):
        init = r.get("random_init") or inits.get(encoder(r))
        out.append(f"| {r['method']} | {r['kind']} | {pct(r['knn_200'])} | {pct(r['knn_20'])} | {pct(r['probe'])} | {delta(r, init)} | "
                   f"{r['train_seconds']:.0f} | {r['peak_rss_mib']:.0f} | {r['load_before']:.2f} |")
    base = next((r["baselines"] for r in rs if r["side"] == "latent" and r.get("baselines") and encoder(r) == "resnet-mini"), {})
    for name, b in base.items():
        out.append(f"| *{name}* | baseline | {pct(b['knn_200'])} | {pct(b['knn_20'])} | {pct(b['probe'])} | | — | — | — |")
    for enc, b in inits.items():
        if enc != "resnet-mini":
            out.append(f"| *random init ({enc})* | baseline | {pct(b['knn_200'])} | {pct(b['knn_20'])} | {pct(b['probe'])} | | — | — | — |")
    out.append("")
    runs = {}
    for r in sorted(rs, key=order):
        runs.setdefault(r.get("invocation", "an earlier invocation"), []).append(r["method"])
    if len(runs) > 1:
        out.append("These rows come from more than one invocation of `bench/methods`; times compare only within one:")
        out.append("")
        out += [f"- {inv}: {', '.join(ms)}" for inv, ms in sorted(runs.items())]
        out.append("")
    everywhere = {m for (_, e, m) in rows if e == epochs}
    absent = sorted(everywhere - {r["method"] for r in rs})
    if absent:
        out += ["Not run on this data set yet: " + ", ".join(absent) + f" (`bench/methods --data {data}` runs every row of it; `--only NAME` one latent row).", ""]
    cfgs = sorted({r["config"] for r in rs if r.get("config")})
    out += ["Configs: " + ", ".join(f"`{c}`" for c in cfgs) + ".", ""]
missing = [d for d in ["mnist5k", "fashion"] if not any(k[0] == d for k in rows)]
if missing:
    out += ["Not in this version of the file: " + ", ".join(TITLES[d] for d in missing) +
            f" (`bench/methods --data {','.join(missing)}` adds it; one data set takes about as long as the table above).", ""]
out += ["## The command", "", "```sh",
        "cargo build --release --workspace",
        "bench/methods --epochs 5           # both data sets, with the PyTorch rows (the 5-epoch tables)",
        "bench/methods --data mnist5k --only vicreg     # one row again",
        "bench/methods --epochs 2 --data mnist5k --no-torch   # the 2-epoch table",
        "bench/methods --report-only        # rewrite this file from runs/methods/results.jsonl",
        "```", "",
        "Without `--epochs` it trains 10. Each run is `latent train examples/configs/<method>.toml --set train.epochs=N --set",
        "eval.every_epochs=0` (plus `data.source=idx:/usr/share/datasets/fashion-mnist`,",
        "`data.max_train_images=4000`, `data.max_test_images=1000` for Fashion-MNIST: Debian's",
        "`dataset-fashion-mnist`). The run directories stay in `runs/methods/<data>/<method>/`",
        "(`latent runs runs/methods/mnist5k` lists them; `latent map` and `latent neighbours` show",
        "them).", "",
        "CIFAR-10 with resnet18-cifar is not in the table: the data set could not be downloaded on",
        "the machine that wrote it (no route to cs.toronto.edu, no Debian package), and the repository",
        "holds only 20 CIFAR-10 images (`tests/fixtures/`). With the binary batches in a folder,",
        "`latent train examples/configs/simclr-cifar10.toml --set data.source=cifar10:DIR` trains it.", ""]
open(out_path, "w").write("\n".join(out))
print(f"wrote {out_path}: {len(rows)} rows")
