"""GBW in a segmentation-models-pytorch training loop.

A U-Net from segmentation-models-pytorch trained with ``gbw.GBWCrossEntropy`` instead of
``nn.CrossEntropyLoss(ignore_index=255)``; the class weights of every step are logged.
The data here are random tensors so that the script runs anywhere in seconds: replace
``random_batches`` with your DataLoader of (images (B, 3, H, W), labels (B, H, W)).

    python examples/smp_unet_gbw.py --steps 20
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import segmentation_models_pytorch as smp
import torch

import gbw


def random_batches(
    classes: int, size: int, batch: int, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images, labels) with a rare class and some ignored (255) pixels."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        images = torch.rand(batch, 3, size, size, generator=gen)
        p = torch.tensor([0.6] + [0.4 / (classes - 1)] * (classes - 1))
        labels = torch.multinomial(p, batch * size * size, True, generator=gen)
        labels = labels.view(batch, size, size)
        labels[:, :2] = 255
        yield images, labels


def main(argv: list[str] | None = None) -> list[torch.Tensor]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--encoder", default="resnet18")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    # encoder_weights=None: random init, nothing is downloaded ("imagenet" for real training)
    model = smp.Unet(args.encoder, encoder_weights=None, in_channels=3, classes=args.classes)
    criterion = gbw.GBWCrossEntropy(num_classes=args.classes, lam=1.0)  # the one changed line
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    history = []
    batches = random_batches(args.classes, args.size, args.batch)
    model.train()
    for step in range(1, args.steps + 1):
        images, labels = next(batches)
        logits = model(images)  # (B, C, H, W)
        loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        weights = criterion.last_weights.detach().cpu()  # (C,), this step's class weights
        history.append(weights)
        shown = " ".join(f"{w:.4f}" for w in weights.tolist())
        print(f"step {step:3d}  loss {loss.item():.4f}  GBW weights [{shown}]")
    return history


if __name__ == "__main__":
    main()
