"""GBW in a Hugging Face ``Trainer``: SegFormer whose ``compute_loss`` uses GBW.

``SegformerForSemanticSegmentation`` returns logits at 1/4 of the input; ``GBWTrainer``
replaces the model's own cross-entropy with ``gbw.GBWCrossEntropy`` (which upsamples the
logits to the labels, as SegFormer's loss does) and logs the class weights through the
Trainer's logger. The model is built from a small ``SegformerConfig`` with random weights
and trained on random tensors, so nothing is downloaded; for real work use
``SegformerForSemanticSegmentation.from_pretrained("nvidia/mit-b0", num_labels=...)`` and your
dataset of {"pixel_values", "labels"}.

    python examples/segformer_trainer_gbw.py --steps 10
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import (
    SegformerConfig,
    SegformerForSemanticSegmentation,
    Trainer,
    TrainingArguments,
)

import gbw


class RandomScenes(Dataset):
    """{"pixel_values": (3, H, W), "labels": (H, W)} with 255 = ignore on the top rows."""

    def __init__(self, n: int, classes: int, size: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, size, size, generator=gen)
        self.labels = torch.randint(0, classes, (n, size, size), generator=gen)
        self.labels[:, :2] = 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


class GBWTrainer(Trainer):
    """A Trainer whose loss is GBW-weighted cross-entropy; logs the weights with the loss."""

    def __init__(self, *args, num_classes: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gbw_loss = gbw.GBWCrossEntropy(num_classes=num_classes)
        self.weight_history: list[torch.Tensor] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)  # no labels: the model computes no loss of its own
        loss = self.gbw_loss(outputs.logits, labels)
        weights = self.gbw_loss.last_weights.detach().float().cpu()
        self.weight_history.append(weights)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.weight_history and "loss" in logs:
            for c, w in enumerate(self.weight_history[-1].tolist()):
                logs[f"gbw_weight/{c}"] = round(w, 4)
        super().log(logs, *args, **kwargs)


def main(argv: list[str] | None = None) -> list[torch.Tensor]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = SegformerConfig(  # a small MiT; random init
        num_labels=args.classes,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 4],
        decoder_hidden_size=64,
    )
    model = SegformerForSemanticSegmentation(config)
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=2,
            learning_rate=6e-5 * 10,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = GBWTrainer(
            model=model,
            args=training,
            train_dataset=RandomScenes(8, args.classes, args.size),
            num_classes=args.classes,
        )
        trainer.train()
    for step, w in enumerate(trainer.weight_history, 1):
        print(f"step {step:3d}  GBW weights [{' '.join(f'{x:.4f}' for x in w.tolist())}]")
    return trainer.weight_history


if __name__ == "__main__":
    main()
