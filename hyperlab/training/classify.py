"""The image classification task: epochs of deterministic (optionally augmented) batches, accuracy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hyperlab.training.config import TrainConfig
from hyperlab.training.data_cache import images


class ClassifyTask:
    """Train and evaluate a classifier; ``model(images (B, C, H, W)) -> logits (B, classes)``.

    Step ``s`` reads batch ``s % n`` of epoch ``s // n``; batches are a pure function of
    (seed, epoch, index), so the data position is the step and resume is exact.
    """

    def __init__(self, config: TrainConfig, data_dir: str | None, device: torch.device):
        from hyperlab.data import ImageBatches

        self.device = device
        self.data = images(config.data.dataset, data_dir)
        size, seed, data = config.data.batch_size, config.seed, self.data
        norm = {"mean": data.mean, "std": data.std}  # training-set statistics for every split
        names = {split: f"the {split} split of {config.data.dataset}" for split in ("train", "valid", "test")}
        self.batches = {
            "train": ImageBatches(*data.train, size, config.data.augment, seed, drop_last=True, **norm,
                                  name=names["train"]),
            "valid": ImageBatches(*data.valid, size, False, seed, shuffle=False, **norm, name=names["valid"]),
            "test": ImageBatches(*data.test, size, False, seed, shuffle=False, **norm, name=names["test"]),
        }

    def data_shape(self):
        """What the model learns from the data."""
        from hyperlab.models import DataShape

        return DataShape(num_classes=self.data.num_classes)

    def train_loss(self, model: torch.nn.Module, step: int) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy of the batch of ``step``, and its number of images."""
        epoch, index = divmod(step, len(self.batches["train"]))
        x, y = (t.to(self.device, non_blocking=True) for t in self.batches["train"].get(epoch, index))
        return F.cross_entropy(model(x), y), len(y)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str, max_batches: int | None = None) -> dict[str, float]:
        """Accuracy and mean cross-entropy on ``split`` ('valid' or 'test')."""
        batches = self.batches[split]
        n = len(batches) if max_batches is None else min(max_batches, len(batches))
        loss = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        count = 0
        for index in range(n):
            x, y = (t.to(self.device, non_blocking=True) for t in batches.get(0, index))
            logits = model(x)  # (B, classes)
            loss += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(-1) == y).sum()
            count += len(y)
        prefix = "val" if split == "valid" else split
        return {f"{prefix}/acc": correct.item() / count, f"{prefix}/loss": loss.item() / count}

    def state_dict(self) -> dict[str, Any]:
        """Nothing beyond the step: batches are a function of (seed, epoch, index)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

