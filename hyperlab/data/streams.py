"""Truncated-BPTT batches: a split cut into B parallel streams, read T tokens at a time.

Stream b is the b-th contiguous slice of the split; batch i holds positions [i*T, i*T+T] of
every stream (inputs the first T, targets the last T), so batch i+1 continues batch i row by
row and the hidden state carries across batches. Batches are addressed by index, so a resumed
run continues at the exact data position; an endless training stream is ``batches[k % len]``.
"""

from __future__ import annotations

import numpy as np
import torch

from hyperlab.errors import UserError


class StreamBatches:
    """Random-access (x, y) batches of shape (B, T) over ``tokens`` for truncated BPTT."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, *, name: str = "the tokens"):
        # ``name`` says in errors which tokens these are ("the valid split of ptb")
        if batch_size < 1 or seq_len < 1:
            raise UserError(f"{name}: data.batch_size and data.seq_len must be >= 1, "
                            f"got {batch_size} and {seq_len}")
        self.batch_size, self.seq_len = batch_size, seq_len
        self.stream_len = len(tokens) // batch_size  # tokens per stream; the ragged tail is dropped
        # (B, L) view of the memmap: row b is stream b; nothing is copied until a batch is read
        self.streams = np.asarray(tokens)[: batch_size * self.stream_len].reshape(batch_size, self.stream_len)
        self._len = (self.stream_len - 1) // seq_len  # the last target needs one token past the inputs
        if self._len <= 0:
            raise UserError(f"{name}: {len(tokens)} tokens are too few for one batch of data.batch_size="
                            f"{batch_size} streams of data.seq_len={seq_len}+1 tokens (needs at least "
                            f"{batch_size * (seq_len + 1)}); lower data.batch_size or data.seq_len")

    def __len__(self) -> int:
        """Batches in one pass over the split."""
        return self._len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index``: x = stream positions [i*T, i*T+T), y = [i*T+1, i*T+T+1), int64 (B, T)."""
        if not 0 <= index < self._len:
            raise IndexError(f"batch {index} out of range [0, {self._len})")
        start = index * self.seq_len
        window = torch.from_numpy(self.streams[:, start:start + self.seq_len + 1].astype(np.int64))  # (B, T+1)
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()

    def __iter__(self):
        return (self[i] for i in range(self._len))
