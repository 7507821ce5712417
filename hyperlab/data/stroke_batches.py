"""Deterministic batches of handwriting lines, padded, with masks: batch (epoch, i) is a pure function of
(seed, epoch, i), so a resumed run gets exactly the batch the interrupted one would have seen.

Training batches (``augment=True``) take a random window of at most ``max_points`` points of each line
and scale its offsets by a factor drawn uniformly in [0.9, 1.1], per line and per axis (the paper's ±10%
scale augmentation); evaluation batches take whole lines in the stored order. Shorter lines are padded
with zeros after their end, and ``mask`` marks the real points.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hyperlab.errors import UserError

SCALE_AUGMENTATION = 0.1


class StrokeBatches:
    """``points, mask = batches.get(epoch, i)``: float32 (B, T, 3) and bool (B, T)."""

    def __init__(self, lines: list[np.ndarray], batch_size: int, seed: int, augment: bool = False,
                 max_points: int | None = None, name: str = "the lines"):
        if batch_size < 1 or not lines:
            raise UserError(f"{name}: need data.batch_size >= 1 and at least one line, got batch size "
                            f"{batch_size} and {len(lines)} lines")
        self.lines, self.batch_size, self.seed = lines, batch_size, seed
        self.augment, self.max_points = augment, max_points

    def __len__(self) -> int:
        """Batches per epoch (the last may be smaller)."""
        return math.ceil(len(self.lines) / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if not self.augment:
            return np.arange(len(self.lines))
        return np.random.default_rng((self.seed, epoch)).permutation(len(self.lines))

    def get(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = self.order(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        rng = np.random.default_rng((self.seed, epoch, i))
        pieces = []
        for index in chosen:
            line = np.asarray(self.lines[index], dtype=np.float32)
            if self.max_points is not None and len(line) > self.max_points:
                start = int(rng.integers(0, len(line) - self.max_points + 1)) if self.augment else 0
                line = line[start:start + self.max_points]
            if self.augment:
                line = line.copy()
                line[:, :2] *= rng.uniform(1 - SCALE_AUGMENTATION, 1 + SCALE_AUGMENTATION, size=2).astype(np.float32)
            pieces.append(line)
        length = max(len(p) for p in pieces)
        points = np.zeros((len(pieces), length, 3), dtype=np.float32)        # (B, T, 3)
        mask = np.zeros((len(pieces), length), dtype=bool)                    # (B, T)
        for row, piece in enumerate(pieces):
            points[row, :len(piece)] = piece
            mask[row, :len(piece)] = True
        return torch.from_numpy(points), torch.from_numpy(mask)
