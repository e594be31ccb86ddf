"""The benchmark spec's SimCLR training step in PyTorch CPU: the reference for pair 1 of
bench/run (the `latent` side is `cargo run --release -p latent-bench --bin step`).

    python bench/torch_step.py [--threads 2] [--batch 256] [--steps 5] [--json FILE]

resnet-mini (bench/torch_resnet_mini.py) on both views as one batch of 2 x 256 fixed random
1x28x28 images, projection head Linear(128->256, no bias) BatchNorm1d ReLU Linear(256->128)
applied to each view (lightly's SimCLRProjectionHead), NT-Xent with temperature 0.5 and the
positive in the denominator (lightly's NTXentLoss, written out here so that the process holds
only PyTorch: importing lightly would add torchvision to its memory), SGD lr 0.06 momentum 0.9
weight decay 5e-4 on weights only (as latent: no decay on biases and batch-norm affine).
One step = zero_grad, forward, loss, backward, optimizer step. One warm-up step, then the median.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_resnet_mini import ResNetMini


def projection_head(input_dim=128, hidden_dim=256, output_dim=128):
    """lightly's SimCLRProjectionHead(128, 256, 128): Linear(no bias) BN ReLU Linear."""
    return nn.Sequential(
        nn.Linear(input_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, output_dim),
    )


def nt_xent(z0, z1, temperature=0.5):
    """lightly's NTXentLoss (one process): cross-entropy over the 2B-1 other samples, the
    positive included in the denominator, mean over the 2B anchors."""
    b = z0.shape[0]
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(logits, target)


def param_groups(*modules, weight_decay=5e-4):
    """Weight decay on conv / linear weights only, as latent's optimizer (role Weight)."""
    decay, no_decay = [], []
    for m in modules:
        for p in m.parameters():
            (decay if p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = ResNetMini(cin=1).train()
    head = projection_head().train()
    opt = torch.optim.SGD(param_groups(model, head), lr=0.06, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(a.batch, 1, 28, 28, generator=g)
    x1 = torch.rand(a.batch, 1, 28, 28, generator=g)

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        h = model(torch.cat([x0, x1]))
        h0, h1 = h[: a.batch], h[a.batch:]
        loss = nt_xent(head(h0), head(h1), 0.5)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0, loss.item()

    warm, first = step()
    times, losses = [], [first]
    cpu0 = time.process_time()
    for _ in range(a.steps):
        t, l = step()
        times.append(t)
        losses.append(l)
    cpu_per_step = (time.process_time() - cpu0) / a.steps
    med = statistics.median(times)
    out = {
        "side": "pytorch",
        "what": f"SimCLR training step, PyTorch {torch.__version__} CPU, {a.threads} threads",
        "torch": torch.__version__, "threads": a.threads, "batch": a.batch, "views_per_step": 2 * a.batch,
        "warmup_s": warm, "step_s": times, "median_step_s": med, "views_per_s": 2 * a.batch / med,
        "losses": losses, "cpu_s_per_step": cpu_per_step, "peak_rss_mib": peak_rss_mib(),
    }
    text = json.dumps(out, indent=2)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
