"""GBW in a torchvision DeepLabV3 loop with automatic mixed precision (``torch.amp``).

torchvision's ``deeplabv3_mobilenet_v3_large`` (random init: ``weights=None,
weights_backbone=None``, nothing is downloaded) trained with ``gbw.GBWCrossEntropy`` under
``torch.autocast`` (bfloat16 on the CPU, float16 with a ``GradScaler`` on CUDA). GBW computes
its statistics and quadratic program in float32 whatever the autocast dtype. The class
weights of every step are logged. Random tensors stand in for your DataLoader.

    python examples/deeplabv3_amp_gbw.py --steps 20
"""

from __future__ import annotations

import argparse

import torch
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

import gbw


def main(argv: list[str] | None = None) -> list[torch.Tensor]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    model = deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=args.classes, aux_loss=True
    ).to(device)
    criterion = gbw.GBWCrossEntropy(num_classes=args.classes)
    aux_criterion = gbw.GBWCrossEntropy(num_classes=args.classes)  # its own weights
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    gen = torch.Generator().manual_seed(0)
    history = []
    model.train()
    for step in range(1, args.steps + 1):
        images = torch.rand(2, 3, args.size, args.size, generator=gen).to(device)
        labels = torch.randint(0, args.classes, (2, args.size, args.size), generator=gen)
        labels[:, -3:] = 255  # ignored pixels
        labels = labels.to(device)
        with torch.autocast(device.type, dtype=amp_dtype):
            out = model(images)  # {"out": (B, C, H, W), "aux": (B, C, H, W)}
            loss = criterion(out["out"], labels) + 0.5 * aux_criterion(out["aux"], labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        weights = criterion.last_weights.detach().float().cpu()
        history.append(weights)
        print(
            f"step {step:3d}  loss {loss.item():.4f}  GBW weights "
            f"[{' '.join(f'{w:.4f}' for w in weights.tolist())}]"
        )
    return history


if __name__ == "__main__":
    main()
