"""SimCLR on the embedded MNIST-5k with PyTorch + lightly: the reference for pair 5 of
bench/run, the same recipe as `latent train` with its defaults:

- data: host/data/mnist_5k.csv.gz read directly, split as host/src/data/embedded.rs splits it
  (within each class the first 400 images in file order train, the last 100 test; 4,000 / 1,000)
- views (`--recipe grey`, the default, latent's `grey` preset): lightly's MultiViewTransform of
  two torchvision pipelines RandomResizedCrop(28, scale=(0.3, 1)), RandomApply(ColorJitter(0.4,
  0.4, 0, 0), p=0.8), ToTensor(): values in [0, 1], no flip, no blur.
  `--recipe simclr` (latent's `simclr` preset): lightly's SimCLRTransform(input_size=28,
  cj_strength=1.0, gaussian_blur=0.5, normalize=None): crop 0.08-1, flip 0.5, jitter
  0.8/0.8/0.8/0.2 p 0.8, grey 0.2, blur sigma 0.1-2 p 0.5, values in [0, 1]
- model: resnet-mini (bench/torch_resnet_mini.py) on both views as one batch, lightly's
  SimCLRProjectionHead(128, 256, 128) on each view, lightly's NTXentLoss(temperature=0.5)
- SGD lr 0.06 momentum 0.9 weight decay 5e-4 on weights only, cosine decay per step to 0
  without warmup (latent's default schedule), batch 256, last short batch dropped (15 steps
  per epoch), data loading in 2 worker processes (latent's loader: one thread per core)
- after every epoch: kNN (k=200, T=0.1, and k=20, T=0.07) on the encoder output of the plain
  train and test images in [0, 1], the weighted kNN of host/src/eval.rs

    python bench/torch_train_mnist5k.py [--epochs 10] [--recipe grey|simclr] [--workers 2] [--threads 2] [--json FILE]

Epoch times count training only (loading, augmenting and stepping), not the evaluation.
"""
import argparse
import gzip
import json
import math
import os
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
import torchvision.transforms as T
from lightly.transforms import SimCLRTransform
from lightly.transforms.multi_view_transform import MultiViewTransform

from torch_resnet_mini import ResNetMini
from torch_step import param_groups, peak_rss_mib

HERE = os.path.dirname(os.path.abspath(__file__))
CSV = os.path.join(HERE, "..", "host", "data", "mnist_5k.csv.gz")
TRAIN_PER_CLASS = 400


def mnist_5k():
    """(train_x, train_y, test_x, test_y), images u8 [N, 28, 28], as host/src/data/embedded.rs."""
    with gzip.open(CSV, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    assert rows.shape == (5000, 785), rows.shape
    seen = np.zeros(10, dtype=np.int64)
    train, test = [], []
    for i, label in enumerate(rows[:, 784]):
        (train if seen[label] < TRAIN_PER_CLASS else test).append(i)
        seen[label] += 1
    x = rows[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    y = rows[:, 784]
    return x[train], y[train], x[test], y[test]


class Views(torch.utils.data.Dataset):
    def __init__(self, images, transform):
        self.images = [Image.fromarray(im) for im in images]
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])


def knn_accuracy(tr, tr_y, te, te_y, k=200, t=0.1, classes=10):
    """host/src/eval.rs: normalise, cosine similarities, the k most similar training features
    vote with weight exp(s / T), argmax."""
    tr = F.normalize(tr, dim=1)
    te = F.normalize(te, dim=1)
    sims = te @ tr.t()
    s, idx = sims.topk(min(k, tr.shape[0]), dim=1)
    scores = torch.zeros(te.shape[0], classes, dtype=torch.float64)
    scores.scatter_add_(1, tr_y[idx], (s / t).exp().double())
    return (scores.argmax(1) == te_y).double().mean().item()


@torch.no_grad()
def features(model, images):
    model.eval()
    out = []
    for i in range(0, len(images), 256):
        x = torch.from_numpy(images[i:i + 256]).float().div_(255.0).unsqueeze(1)
        out.append(model(x))
    model.train()
    return torch.cat(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe", choices=["grey", "simclr"], default="grey")
    ap.add_argument("--json")
    a = ap.parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tr_x, tr_y, te_x, te_y = mnist_5k()
    tr_yt, te_yt = torch.from_numpy(tr_y), torch.from_numpy(te_y)
    if a.recipe == "grey":
        view = T.Compose([
            T.RandomResizedCrop(28, scale=(0.3, 1.0)),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0)], p=0.8),
            T.ToTensor(),
        ])
        transform = MultiViewTransform([view, view])
    else:
        transform = SimCLRTransform(input_size=28, cj_strength=1.0, gaussian_blur=0.5, normalize=None)
    loader = torch.utils.data.DataLoader(
        Views(tr_x, transform), batch_size=a.batch, shuffle=True, drop_last=True, num_workers=a.workers,
        persistent_workers=a.workers > 0, generator=torch.Generator().manual_seed(a.seed))
    model = ResNetMini(cin=1).train()
    head = SimCLRProjectionHead(128, 256, 128).train()
    criterion = NTXentLoss(temperature=0.5)
    base_lr = 0.06
    opt = torch.optim.SGD(param_groups(model, head), lr=base_lr, momentum=0.9)
    total = a.epochs * len(loader)
    step = 0
    epochs = []
    train_s = 0.0
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        losses = []
        for x0, x1 in loader:
            lr = base_lr * (1 + math.cos(math.pi * step / total)) / 2
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            h = model(torch.cat([x0, x1]))
            loss = criterion(head(h[: len(x0)]), head(h[len(x0):]))
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        secs = time.perf_counter() - t0
        train_s += secs
        tr_f, te_f = features(model, tr_x), features(model, te_x)
        knn200 = knn_accuracy(tr_f, tr_yt, te_f, te_yt, 200, 0.1)
        knn20 = knn_accuracy(tr_f, tr_yt, te_f, te_yt, 20, 0.07)
        epochs.append({"epoch": epoch, "seconds": secs, "train_seconds_cum": train_s, "loss": float(np.mean(losses)),
                       "knn_200": knn200, "knn_20": knn20})
        print(f"epoch {epoch}: loss {np.mean(losses):.4f}, {secs:.1f} s, kNN-200 {knn200:.4f}, kNN-20 {knn20:.4f}", flush=True)
    del loader
    out = {
        "side": "pytorch",
        "what": f"PyTorch {torch.__version__} + lightly SimCLR on embedded MNIST-5k (4,000 / 1,000), recipe {a.recipe}, {a.threads} threads, {a.workers} loader workers",
        "recipe": a.recipe,
        "epochs": a.epochs, "steps": step, "train_seconds": train_s, "wall_seconds": time.perf_counter() - t_start,
        "knn_200": epochs[-1]["knn_200"] if epochs else None, "per_epoch": epochs,
        "peak_rss_mib": peak_rss_mib(),
        "workers_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
    }
    text = json.dumps(out, indent=2)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
