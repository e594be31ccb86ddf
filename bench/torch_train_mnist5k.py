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
  train and test images in [0, 1], the weighted kNN of host/src/eval/knn.rs

`--method byol` (bench/methods' reference row, examples/configs/byol-mnist.toml): lightly's
BYOLProjectionHead(128, 512, 128) and BYOLPredictionHead(128, 512, 128), a momentum copy of
encoder and projector (lightly's update_momentum, tau from 0.996 to 1 on lightly's
cosine_schedule, per step), loss (2 - 2 cos(q1, z2')).mean() + (2 - 2 cos(q2, z1')).mean() as
latent's byol plugin, views as byol-mnist.toml (grey crop and jitter; blur p 1.0 / 0.1 with
sigma 0.1-2 and kernel 3 as latent's blur at 28 px; solarize p 0 / 0.2), lightly's LARS lr 0.2,
momentum 0.9, weight decay 1.5e-6 and trust coefficient 1e-3 on weights (biases and norms:
no decay, so no trust ratio), linear warmup of one epoch then cosine to 0, as latent's
schedule. (lightly's trust ratio is |w| / (|g| + wd |w|), latent's |w| / |g + wd w|.)

`--method dino` (examples/configs/dino-resnet-mnist.toml): lightly's DINOProjectionHead(128, 512,
64, 2048, batch_norm=True, freeze_last_layer=1) with cancel_last_layer_gradients after each
backward, lightly's DINOLoss(output_dim=2048) (tau_t 0.04, tau_s 0.1, centre momentum 0.9), a
momentum copy of encoder and head updated after each optimizer step with tau =
cosine_schedule(step, total + 1, 0.996, 1.0) (latent's schedule exactly), the teacher on both
views; views as the config (grey crop 0.4-1 and jitter; blur p 1.0 / 0.1; solarize p 0 /
0.2); AdamW lr 1e-3, weight decay 0.04 on weights, cosine to 0 without warmup.

`--method dino --encoder vit-mini` (examples/configs/dino-vit-mnist.toml): the `vit` plugin's
vit-mini in PyTorch (bench/torch_vit.py: timm's layout and initialisation, 4x4 patches) without
drop-path (`--drop-path` sets the student's; the teacher has none), batches of 128, lightly's DINOProjectionHead(64, 512, 64,
2048, batch_norm=True, freeze_last_layer=1) and DINOLoss as above, AdamW lr 5e-4 with a linear
warm-up of one epoch then cosine to 0, weight decay on a cosine from 0.04 to 0.4 per step (the
reference's cosine_scheduler, latent's `weight_decay_end`), and each parameter's gradient
clipped to norm 3.0 on its own (the reference's clip_gradients, latent's `clip_grad`).
`--lr`, `--warmup-epochs`, `--drop-path` and `--momentum-base` override the recipe's values.

`--data fashion` reads Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist, IDX
files) and keeps the first 4,000 training and 1,000 test images, as `latent train` with
data.max_train_images=4000 and data.max_test_images=1000.

    python bench/torch_train_mnist5k.py [--epochs 10] [--method simclr|byol|dino] [--data mnist5k|fashion]
        [--encoder resnet-mini|vit-mini] [--recipe grey|simclr] [--workers 2] [--threads 2] [--json FILE]

Epoch times count training only (loading, augmenting and stepping), not the evaluation.
"""
import argparse
import copy
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
from lightly.loss import DINOLoss, NTXentLoss
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, DINOProjectionHead, SimCLRProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.lars import LARS
from lightly.utils.scheduler import cosine_schedule
import torchvision.transforms as T
from lightly.transforms import SimCLRTransform
from lightly.transforms.multi_view_transform import MultiViewTransform

from torch_resnet_mini import ResNetMini
from torch_vit import ViT
from torch_step import param_groups, peak_rss_mib

HERE = os.path.dirname(os.path.abspath(__file__))
CSV = os.path.join(HERE, "..", "host", "data", "mnist_5k.csv.gz")
TRAIN_PER_CLASS = 400


FASHION = "/usr/share/datasets/fashion-mnist"


def idx(path):
    import struct
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion(n_train=4000, n_test=1000):
    """(train_x, train_y, test_x, test_y): the first n_train / n_test images of Fashion-MNIST."""
    def find(stem):
        for name in (stem, stem + ".gz"):
            if os.path.exists(os.path.join(FASHION, name)):
                return os.path.join(FASHION, name)
        raise SystemExit(f"{FASHION}/{stem}[.gz] not found: apt-get install dataset-fashion-mnist")
    tx, ty = idx(find("train-images-idx3-ubyte")), idx(find("train-labels-idx1-ubyte")).astype(np.int64)
    ex, ey = idx(find("t10k-images-idx3-ubyte")), idx(find("t10k-labels-idx1-ubyte")).astype(np.int64)
    return tx[:n_train], ty[:n_train], ex[:n_test], ey[:n_test]


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
    """host/src/eval/knn.rs: normalise, cosine similarities, the k most similar training features
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
    ap.add_argument("--batch", type=int, help="default 256 (128 with --encoder vit-mini)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe", choices=["grey", "simclr"], default="grey")
    ap.add_argument("--method", choices=["simclr", "byol", "dino"], default="simclr")
    ap.add_argument("--views", choices=["joint", "per_view"], default="joint",
                    help="SimCLR: both views through the encoder as one batch (batch-norm statistics over "
                         "both), or one pass per view (lightly's examples)")
    ap.add_argument("--data", choices=["mnist5k", "fashion"], default="mnist5k")
    ap.add_argument("--encoder", choices=["resnet-mini", "vit-mini"], default="resnet-mini")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--warmup-epochs", type=float)
    ap.add_argument("--drop-path", type=float, default=0.0)
    ap.add_argument("--momentum-base", type=float, default=0.996)
    ap.add_argument("--verbose", action="store_true", help="print each step's loss")
    ap.add_argument("--json")
    a = ap.parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.batch is None:
        a.batch = 128 if a.encoder == "vit-mini" else 256
    tr_x, tr_y, te_x, te_y = mnist_5k() if a.data == "mnist5k" else fashion()
    tr_yt, te_yt = torch.from_numpy(tr_y), torch.from_numpy(te_y)
    grey = [T.RandomResizedCrop(28, scale=(0.3, 1.0)),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0)], p=0.8)]
    if a.method == "dino":
        grey[0] = T.RandomResizedCrop(28, scale=(0.4, 1.0))
    if a.method in ("byol", "dino"):
        blur = lambda p: T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 2.0))], p=p)
        transform = MultiViewTransform([
            T.Compose(grey + [blur(1.0), T.ToTensor()]),
            T.Compose(grey + [blur(0.1), T.RandomSolarize(128, p=0.2), T.ToTensor()]),
        ])
    elif a.recipe == "grey":
        view = T.Compose(grey + [T.ToTensor()])
        transform = MultiViewTransform([view, view])
    else:
        transform = SimCLRTransform(input_size=28, cj_strength=1.0, gaussian_blur=0.5, normalize=None)
    loader = torch.utils.data.DataLoader(
        Views(tr_x, transform), batch_size=a.batch, shuffle=True, drop_last=True, num_workers=a.workers,
        persistent_workers=a.workers > 0, generator=torch.Generator().manual_seed(a.seed))
    vit = a.encoder == "vit-mini"
    if vit and a.method != "dino":
        raise SystemExit("--encoder vit-mini is the reference of dino-vit-mnist.toml: use it with --method dino")
    model = (ViT("vit-mini", cin=1, size=28, patch=4, drop_path=a.drop_path) if vit else ResNetMini(cin=1)).train()
    wd_end, clip = None, None
    total = a.epochs * len(loader)
    if a.method == "simclr":
        head = SimCLRProjectionHead(128, 256, 128).train()
        criterion = NTXentLoss(temperature=0.5)
        base_lr, warmup = 0.06, 0
        opt = torch.optim.SGD(param_groups(model, head), lr=base_lr, momentum=0.9)
    elif a.method == "dino":
        dino_head = lambda: DINOProjectionHead(64 if vit else 128, 512, 64, 2048, batch_norm=True, freeze_last_layer=1).train()
        head = dino_head()
        # copy.deepcopy fails on weight_norm's computed weight (pytorch#103001): a twin instead
        teacher_head = dino_head()
        teacher_head.load_state_dict(head.state_dict())
        teacher_model = copy.deepcopy(model)
        if vit:
            teacher_model.without_drop_path()
        deactivate_requires_grad(teacher_model)
        deactivate_requires_grad(teacher_head)
        criterion = DINOLoss(output_dim=2048)
        base_lr, warmup = (5e-4, len(loader)) if vit else (1e-3, 0)
        if vit:
            wd_end, clip = 0.4, 3.0
        opt = torch.optim.AdamW(param_groups(model, head, weight_decay=0.04), lr=base_lr)
    else:
        head = BYOLProjectionHead(128, 512, 128).train()
        predictor = BYOLPredictionHead(128, 512, 128).train()
        target_model, target_head = copy.deepcopy(model), copy.deepcopy(head)
        deactivate_requires_grad(target_model)
        deactivate_requires_grad(target_head)
        base_lr, warmup = 0.2, len(loader)
        opt = LARS(param_groups(model, head, predictor, weight_decay=1.5e-6), lr=base_lr, momentum=0.9, trust_coefficient=0.001)

    if a.lr is not None:
        base_lr = a.lr
    if a.warmup_epochs is not None:
        warmup = round(a.warmup_epochs * len(loader))

    def byol_loss(x0, x1, step):
        tau = cosine_schedule(step, total, 0.996, 1.0)
        update_momentum(model, target_model, tau)
        update_momentum(head, target_head, tau)
        n = len(x0)
        h = model(torch.cat([x0, x1]))
        q = [predictor(head(h[:n])), predictor(head(h[n:]))]
        with torch.no_grad():
            ht = target_model(torch.cat([x0, x1]))
            zt = [target_head(ht[:n]), target_head(ht[n:])]
        l = lambda p, z: (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()
        return l(q[0], zt[1]) + l(q[1], zt[0])

    def lr_at(step):
        if step < warmup:
            return base_lr * (step + 1) / warmup
        return base_lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2

    tr_f, te_f = features(model, tr_x), features(model, te_x)
    init = {"knn_200": knn_accuracy(tr_f, tr_yt, te_f, te_yt, 200, 0.1), "knn_20": knn_accuracy(tr_f, tr_yt, te_f, te_yt, 20, 0.07)}
    print(f"random init: kNN-200 {init['knn_200']:.4f}, kNN-20 {init['knn_20']:.4f}", flush=True)
    step = 0
    epochs = []
    train_s = 0.0
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        losses = []
        for x0, x1 in loader:
            lr = lr_at(step)
            for g in opt.param_groups:
                g["lr"] = lr
                if wd_end is not None and g["weight_decay"] > 0:
                    g["weight_decay"] = wd_end + (0.04 - wd_end) * (1 + math.cos(math.pi * step / total)) / 2
            opt.zero_grad(set_to_none=True)
            if a.method == "simclr" and a.views == "per_view":
                loss = criterion(head(model(x0)), head(model(x1)))
            elif a.method == "simclr":
                h = model(torch.cat([x0, x1]))
                loss = criterion(head(h[: len(x0)]), head(h[len(x0):]))
            elif a.method == "dino":
                x = torch.cat([x0, x1])
                student = head(model(x)).chunk(2)
                with torch.no_grad():
                    teacher = teacher_head(teacher_model(x)).chunk(2)
                loss = criterion(list(teacher), list(student), epoch=epoch)
            else:
                loss = byol_loss(x0, x1, step)
            loss.backward()
            if a.method == "dino":
                if clip is not None:
                    for p in list(model.parameters()) + list(head.parameters()):
                        if p.grad is not None:
                            coef = clip / (p.grad.norm() + 1e-6)
                            if coef < 1:
                                p.grad.mul_(coef)
                head.cancel_last_layer_gradients(current_epoch=epoch)
            opt.step()
            if a.method == "dino":
                tau = cosine_schedule(step, total + 1, a.momentum_base, 1.0)
                update_momentum(model, teacher_model, tau)
                update_momentum(head, teacher_head, tau)
            losses.append(loss.item())
            if a.verbose:
                print(f"step {step + 1}: loss {loss.item():.6f}, lr {lr:.3g}", flush=True)
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
        "what": f"PyTorch {torch.__version__} + lightly {a.method} on {a.data} (4,000 / 1,000), recipe {a.recipe if a.method == 'simclr' else a.method + '-mnist.toml' if a.method == 'byol' else 'dino-vit-mnist.toml' if vit else 'dino-resnet-mnist.toml'}, {a.threads} threads, {a.workers} loader workers, views {a.views}", "views": a.views,
        "recipe": a.recipe, "method": a.method, "data": a.data, "encoder": a.encoder,
        "epochs": a.epochs, "steps": step, "train_seconds": train_s, "wall_seconds": time.perf_counter() - t_start,
        "knn_200": epochs[-1]["knn_200"] if epochs else None, "knn_20": epochs[-1]["knn_20"] if epochs else None,
        "per_epoch": epochs, "random_init": init,
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
