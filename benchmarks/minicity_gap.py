"""Measure MiniCity's domain gap: train on the source only, compare source vs target mIoU.

A source-only model is evaluated on held-out source images (``source_val``) and on the
target's evaluation split (``target_val``), mIoU over ``EVAL_CLASSES``. The benchmark is
meant to make the gap real, so the target number must come out clearly lower. Uses
``gbw.models.build_model("tinyseg")`` when present, else an inline ~0.3 M-parameter net.

    .venv/bin/python benchmarks/minicity_gap.py [--steps 600] [--seed 0] [--size default]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gbw.data.classes import CITYSCAPES_CLASSES, IGNORE_INDEX, NUM_CLASSES
from gbw.data.minicity import EVAL_CLASSES, MiniCity, ensure_minicity


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, dilation, dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class InlineNet(nn.Module):
    """Fallback ~0.3 M-parameter encoder-decoder (1/8 dilated encoder, 1/2 skip)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.e1 = nn.Sequential(conv_bn_relu(3, 24, 2), conv_bn_relu(24, 24))
        self.e2 = nn.Sequential(conv_bn_relu(24, 48, 2), conv_bn_relu(48, 48))
        self.e3 = nn.Sequential(
            conv_bn_relu(48, 80, 2),
            conv_bn_relu(80, 80, dilation=2),
            conv_bn_relu(80, 80, dilation=4),
        )
        self.d = conv_bn_relu(80 + 24, 48)
        self.out = nn.Conv2d(48, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.e1(x)
        c = self.e3(self.e2(a))
        c = F.interpolate(c, size=a.shape[-2:], mode="bilinear", align_corners=False)
        return {"main": self.out(self.d(torch.cat([c, a], 1)))}


def build_net() -> tuple[nn.Module, str]:
    try:
        from gbw.models import build_model

        return build_model("tinyseg", num_classes=NUM_CLASSES), "gbw.models tinyseg"
    except (ImportError, ValueError):
        return InlineNet(), "inline net"


def load_split(split: str, root: Path, seed: int, size: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = MiniCity(split, root, seed=seed, size=size, with_labels=True)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([s["image"] for s in items]), torch.stack([s["label"] for s in items])


def logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = net(x)["main"]
    return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def evaluate(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per-class IoU (NaN where a class is absent from labels and predictions)."""
    net.eval()
    conf = torch.zeros(NUM_CLASSES * NUM_CLASSES, dtype=torch.int64, device=images.device)
    for i in range(0, len(images), 32):
        pred = logits(net, images[i : i + 32]).argmax(1)
        t = labels[i : i + 32]
        keep = t != IGNORE_INDEX
        conf += torch.bincount(t[keep] * NUM_CLASSES + pred[keep], minlength=NUM_CLASSES**2)
    m = conf.view(NUM_CLASSES, NUM_CLASSES).double()
    tp = m.diag()
    union = m.sum(0) + m.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.nan).cpu().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="default: $GBW_DATA or ~/.cache")
    ap.add_argument("--seed", type=int, default=0, help="dataset seed")
    ap.add_argument("--train-seed", type=int, default=0, help="initialisation and batch order")
    ap.add_argument("--size", default="default", choices=("default", "quick"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.train_seed)
    dev = torch.device(args.device)

    t0 = time.perf_counter()
    root = ensure_minicity(args.root, seed=args.seed, size=args.size)
    print(f"data: {root} ({time.perf_counter() - t0:.1f} s)")
    xs, ys = (t.to(dev) for t in load_split("source_train", root.parent, args.seed, args.size))
    sets = {
        name: tuple(t.to(dev) for t in load_split(name, root.parent, args.seed, args.size))
        for name in ("source_val", "target_val")
    }

    net, kind = build_net()
    net.to(dev)
    n_params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / args.steps) ** 0.9)
    gen = torch.Generator().manual_seed(args.train_seed)
    t0 = time.perf_counter()
    net.train()
    for step in range(args.steps):
        idx = torch.randint(len(xs), (args.batch,), generator=gen).to(dev)
        x, y = xs[idx], ys[idx]
        if torch.rand((), generator=gen) < 0.5:  # horizontal flip: streets are symmetric
            x, y = x.flip(-1), y.flip(-1)
        loss = F.cross_entropy(logits(net, x), y, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{args.steps} loss {loss.item():.3f}")
    train_s = time.perf_counter() - t0

    ious = {name: evaluate(net, *data) for name, data in sets.items()}
    cls = list(EVAL_CLASSES)
    print(
        f"\nmodel: {kind}, {n_params:,} parameters; {args.steps} steps x batch {args.batch} "
        f"in {train_s:.0f} s ({args.steps / train_s:.1f} steps/s on {args.device}, "
        f"{args.threads} threads)"
    )
    print(f"{'class':14s} {'source':>7s} {'target':>7s}")
    for c in cls:
        s, t = ious["source_val"][c], ious["target_val"][c]
        print(f"{CITYSCAPES_CLASSES[c]:14s} {100 * s:7.1f} {100 * t:7.1f}")
    ms, mt = (100 * float(np.nanmean(ious[k][cls])) for k in ("source_val", "target_val"))
    print(
        f"{'mIoU':14s} {ms:7.1f} {mt:7.1f}   gap {ms - mt:.1f} points "
        f"(data seed {args.seed}, train seed {args.train_seed}, {len(cls)} classes)"
    )


if __name__ == "__main__":
    main()
