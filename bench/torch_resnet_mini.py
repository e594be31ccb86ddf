"""resnet-mini forward (train mode) + backward in PyTorch CPU, the reference for
plugins/encoders/resnet/examples/speed.rs. Same model (see /work/shared/bench-spec.md), same
batch (512 x 1x28x28), same loss (sum of features times a fixed random tensor).

    /work/venv/bin/python bench/torch_resnet_mini.py [--threads 2] [--batch 512] [--runs 5]
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class ResNetMini(nn.Module):
    """resnet-mini by default; ResNetMini(3, 64, (64, 128, 256, 512), (2, 2, 2, 2)) is the CIFAR
    ResNet-18 (latent's `resnet18-cifar` preset)."""

    def __init__(self, cin=1, stem=32, widths=(32, 64, 128), blocks=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        layers, c = [], stem
        for i, w in enumerate(widths):
            for j in range((blocks or [1] * len(widths))[i]):
                layers.append(BasicBlock(c, w, 2 if i > 0 and j == 0 else 1))
                c = w
        blocks = layers
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(self.stem(x)).mean(dim=(2, 3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = ResNetMini().train()
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.rand(a.batch, 1, 28, 28)
    r = torch.randn(a.batch, 128)

    def step():
        model.zero_grad(set_to_none=False)
        c0 = time.process_time()
        t0 = time.perf_counter()
        y = model(x)
        t1 = time.perf_counter()
        (y * r).sum().backward()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, time.process_time() - c0

    step()  # warm-up
    times = [step() for _ in range(a.runs)]
    fw = statistics.median(t[0] for t in times)
    bw = statistics.median(t[1] for t in times)
    tot = statistics.median(t[0] + t[1] for t in times)
    cpu = statistics.median(t[2] for t in times)
    print(f"pytorch {torch.__version__} threads {a.threads} params {n_params} batch {a.batch}: "
          f"forward {fw * 1e3:.0f} ms, backward {bw * 1e3:.0f} ms, forward+backward median {tot * 1e3:.0f} ms "
          f"({a.batch / tot:.0f} images/s), cpu {cpu * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
