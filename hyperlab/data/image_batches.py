"""Deterministic image batches: batch (epoch, i) is a pure function of (seed, epoch, i).

The order of an epoch is a permutation drawn from a generator seeded by (seed, epoch); the
augmentation of batch i (pad-4-and-crop, horizontal flip) draws from a generator seeded by
(seed, epoch, i). A resumed run asking for (epoch, i) therefore gets exactly the batch the
interrupted run would have seen, whatever happened before.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hyperlab.errors import UserError


class ImageBatches:
    """Batches of (x float32 (B, C, H, W) normalised per channel, y int64 (B,)).

    ``mean``/``std`` (per channel, [0, 1] scale) default to the statistics of ``images``; pass the
    training set's (``ImageData.mean``/``.std``) when batching valid/test. The last batch of an
    epoch is smaller unless ``drop_last``; ``shuffle=False`` keeps the stored order.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, augment: bool, seed: int,
                 *, mean=None, std=None, shuffle: bool = True, drop_last: bool = False, pad: int = 4,
                 name: str = "the images"):
        # ``name`` says in errors which images these are ("the train split of cifar10")
        problems = []
        if batch_size < 1:
            problems.append(f"data.batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            problems.append(f"seed must be >= 0, got {seed}")
        if images.ndim != 4:
            problems.append(f"images must be an array (N, H, W, C), got shape {images.shape}")
        elif len(images) != len(labels):
            problems.append(f"{len(images)} images but {len(labels)} labels")
        if problems:
            raise UserError(f"{name}: {'; '.join(problems)}")
        self.images, self.labels = images, labels
        self.batch_size, self.augment, self.seed, self.pad = batch_size, augment, seed, pad
        self.shuffle, self.drop_last = shuffle, drop_last
        if mean is None or std is None:
            mean, std = channel_stats(images)
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 1, -1)  # broadcasts over (B, H, W, C)
        self.std = np.maximum(np.asarray(std, np.float32), 1e-6).reshape(1, 1, 1, -1)
        self._epoch, self._order = None, None
        if len(self) == 0:
            raise UserError(f"{name}: {len(images)} images are too few for one batch of "
                            f"data.batch_size={batch_size}; lower data.batch_size")

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Indices of the examples in the order epoch ``epoch`` visits them."""
        if self._epoch != epoch:
            n = len(self.images)
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._epoch = epoch
        return self._order

    def get(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of epoch ``epoch``: the same tensors every time it is asked for."""
        if not 0 <= index < len(self) or epoch < 0:
            raise IndexError(f"batch ({epoch}, {index}) out of range: epochs >= 0, batches [0, {len(self)})")
        picked = np.sort(self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size])
        images = np.asarray(self.images[picked])  # (B, H, W, C) uint8; sorted indices read a memmap in order
        if self.augment:
            rng = np.random.default_rng([self.seed, epoch, index])
            shifts = rng.integers(0, 2 * self.pad + 1, size=(2, len(picked)))  # (2, B): dy, dx
            flips = rng.random(len(picked)) < 0.5
            images = crop_and_flip(images, shifts[0], shifts[1], flips, self.pad)
        x = (images.astype(np.float32) / 255.0 - self.mean) / self.std  # (B, H, W, C)
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (B, C, H, W)
        return x, torch.from_numpy(np.asarray(self.labels[picked], dtype=np.int64))


def crop_and_flip(images: np.ndarray, dy: np.ndarray, dx: np.ndarray, flips: np.ndarray, pad: int) -> np.ndarray:
    """Zero-pad each image by ``pad``, crop the original size at offset (dy, dx) in the padded
    image, and mirror left-right where ``flips``; one gather for the whole batch.

    images (B, H, W, C); dy, dx (B,) in [0, 2*pad]; flips (B,) bool. Offset (pad, pad) without a
    flip returns the image unchanged.
    """
    n, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # (B, H+2p, W+2p, C)
    cols = np.arange(width)[None, :]  # (1, W)
    cols = np.where(flips[:, None], width - 1 - cols, cols) + dx[:, None]  # (B, W): mirrored read
    rows = np.arange(height)[None, :] + dy[:, None]  # (B, H)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 images (N, H, W, C) on the [0, 1] scale.

    Exact, from per-channel histograms of 256 bins accumulated over chunks of images, so a
    memory-mapped 50k x 32 x 32 x 3 set never becomes one float64 array of 1.2 GB.
    """
    channels = images.shape[3]
    counts = np.zeros((channels, 256), np.int64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk]).reshape(-1, channels)  # (n*H*W, C)
        for c in range(channels):  # C <= 3 histograms per chunk
            counts[c] += np.bincount(block[:, c], minlength=256)
    levels = np.arange(256) / 255.0
    total = counts.sum(axis=1)  # (C,)
    mean = counts @ levels / total
    var = (counts * (levels[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    return mean.astype(np.float32), np.maximum(np.sqrt(var), 1e-6).astype(np.float32)
