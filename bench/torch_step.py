"""The benchmark spec's SimCLR training step in PyTorch CPU: the reference for pair 1 of
bench/run (the `latent` side is `cargo run --release -p latent-bench --bin step`).

    python bench/torch_step.py [--threads 2] [--batch 256] [--steps 5] [--json FILE]
    python bench/torch_step.py --serve [--workload resnet-mini|resnet18-cifar] [--variant joint|per_view]
                               [--device cpu|cuda:N]
        pair 1 (bench/pair.py drives it): prints {"ready": ...}, then answers each `step` line on
        stdin with one step and {"t", "cpu", "loss"}, and `quit` with {"peak_rss_mib"}.

Variants: `joint` runs both views through the encoder as one batch of 2B (batch-norm statistics
over both views, as SimCLR's reference code); `per_view` runs one encoder pass per view (B each,
statistics per view, as lightly's examples do). `resnet18-cifar` is the CIFAR ResNet-18 on
3x32x32 at batch 128 with head 512->512->128 (lightly's SimCLR example).

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
import sys
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
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
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


WORKLOADS = {
    # name: (model kwargs, input shape, default batch, head dims)
    "resnet-mini": (dict(cin=1), (1, 28, 28), 256, (128, 256, 128)),
    "resnet18-cifar": (dict(cin=3, stem=64, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)),
                       (3, 32, 32), 128, (512, 512, 128)),
}


def build(workload, batch, variant, device="cpu"):
    """The model, head, optimizer and a step function of one workload and variant. On a CUDA
    device, `loss.item()` waits for the step's kernels, so a step's time is all of its work."""
    kwargs, shape, default_batch, dims = WORKLOADS[workload]
    batch = batch or default_batch
    torch.manual_seed(0)
    model = ResNetMini(**kwargs).train().to(device)
    head = projection_head(*dims).train().to(device)
    opt = torch.optim.SGD(param_groups(model, head), lr=0.06, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(batch, *shape, generator=g).to(device)
    x1 = torch.rand(batch, *shape, generator=g).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        if variant == "joint":
            h = model(torch.cat([x0, x1]))
            h0, h1 = h[:batch], h[batch:]
        else:
            h0, h1 = model(x0), model(x1)
        loss = nt_xent(head(h0), head(h1), 0.5)
        loss.backward()
        opt.step()
        return loss.item()

    return step, batch, step_gflop(model, head, shape, batch)


def step_gflop(model, head, shape, batch):
    """Multiply-add work of one step in GFLOP: 2 FLOP per multiply-add of every convolution and
    linear layer on the 2B views, times 3 (forward, input gradient, weight gradient)."""
    macs = []

    def count(m, inp, out):
        if isinstance(m, nn.Conv2d):
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            macs.append(out.numel() * k)
        elif isinstance(m, nn.Linear):
            macs.append(out.numel() * m.in_features)

    hooks = [m.register_forward_hook(count) for m in list(model.modules()) + list(head.modules())]
    with torch.no_grad():
        model.eval(), head.eval()
        dev = next(model.parameters()).device
        head(model(torch.zeros(2, *shape, device=dev)))
        model.train(), head.train()
    for h in hooks:
        h.remove()
    return 3 * 2 * sum(macs) / 2 * (2 * batch) / 1e9


def serve(a):
    torch.set_num_threads(a.threads)
    step, batch, gflop = build(a.workload, a.batch, a.variant, a.device)
    where = "CPU" if a.device == "cpu" else f"{a.device} ({torch.cuda.get_device_name(a.device)})"
    print(json.dumps({"ready": True, "step_gflop": gflop, "side": "pytorch", "workload": a.workload, "variant": a.variant,
                      "batch": batch, "views_per_step": 2 * batch, "threads": a.threads, "torch": torch.__version__,
                      "device": a.device,
                      "what": f"SimCLR step, {a.workload}, PyTorch {torch.__version__} {where}, "
                              f"{'one batch of 2B' if a.variant == 'joint' else 'one encoder pass per view'}"}),
          flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "step":
            raise SystemExit(f"serve: unknown command {cmd!r} (step or quit)")
        c0, t0 = time.process_time(), time.perf_counter()
        loss = step()
        t = time.perf_counter() - t0
        print(json.dumps({"t": t, "cpu": time.process_time() - c0, "loss": loss}), flush=True)
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("--workload", default="resnet-mini", choices=sorted(WORKLOADS))
    ap.add_argument("--variant", default="joint", choices=["joint", "per_view"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=0, help="images per view (0: the workload's)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (tests/gpu/run)")
    a = ap.parse_args()
    if a.serve:
        return serve(a)
    torch.set_num_threads(a.threads)
    one, a.batch, _ = build(a.workload, a.batch, a.variant, a.device)

    def step():
        t0 = time.perf_counter()
        loss = one()
        return time.perf_counter() - t0, loss

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
        "what": f"SimCLR training step, {a.workload}, {a.variant}, PyTorch {torch.__version__} CPU, {a.threads} threads",
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
