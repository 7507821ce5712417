"""The handwriting task (Graves 2013, section 4.2): IAM-OnDB lines of pen offsets, a mixture density
output, the paper's log-loss.

Training batches are random windows of ``data.max_points`` points of shuffled lines (whole lines when
unset), scaled by ±10%; step ``s`` draws batch ``s % len`` of epoch ``s // len``, a pure function of
(seed, epoch, i), so a resumed run trains on exactly the batches the interrupted one would have. The
loss optimised is the mean negative log-likelihood per point (nats); the reported ``val/nll`` is the
paper's log-loss: the negative log-likelihood summed over each whole validation line and averaged over
lines (``val/nll_per_point`` divides it by the points instead). IAM-OnDB has a training and a validation
side only (``hyperlab.data.strokes``), so ``schedule.test`` adds nothing here.
"""

from __future__ import annotations

from typing import Any

import torch

from hyperlab.training.config import TrainConfig
from hyperlab.training.data_cache import strokes


class HandwritingTask:
    """Train and evaluate a ``HandwritingRNN``; ``model.sequence_nll(points, mask) -> (B,)`` nats."""

    def __init__(self, config: TrainConfig, data_dir: str | None, device: torch.device):
        from hyperlab.data import StrokeBatches

        self.config, self.device = config, device
        self.data = strokes(config.data.dataset, data_dir)
        batch = config.data.batch_size
        self.train = StrokeBatches(self.data.lines("train"), batch, config.seed, augment=config.data.augment,
                                   max_points=config.data.max_points, name="the training lines of IAM-OnDB")
        self.valid = StrokeBatches(self.data.lines("valid"), batch, config.seed, augment=False,
                                   name="the validation lines of IAM-OnDB")

    def data_shape(self):
        from hyperlab.models import DataShape

        return DataShape()

    def train_loss(self, model: torch.nn.Module, step: int) -> tuple[torch.Tensor, int]:
        """Mean negative log-likelihood per predicted point (nats) of the batch of ``step``, and its points."""
        points, mask = self.train.get(step // len(self.train), step % len(self.train))
        predicted = int(mask[:, 1:].sum())  # counted on the CPU: no wait on the device in the step
        points, mask = points.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
        return model.sequence_nll(points, mask).sum() / max(predicted, 1), predicted

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str, max_batches: int | None = None) -> dict[str, float]:
        """``val/nll`` (nats per line) and ``val/nll_per_point`` over whole validation lines."""
        if split != "valid":
            return {}
        n = len(self.valid) if max_batches is None else min(max_batches, len(self.valid))
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        lines = points_count = 0
        for index in range(n):
            points, mask = self.valid.get(0, index)
            lines += len(points)
            points_count += int(mask[:, 1:].sum())
            points, mask = points.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
            total += model.sequence_nll(points, mask).double().sum()
        nll = total.item()
        return {"val/nll": nll / lines, "val/nll_per_point": nll / max(points_count, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {}  # the batches are a function of the step

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
