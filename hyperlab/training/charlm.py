"""The character language-modelling task: truncated BPTT over parallel streams, bits per character."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from hyperlab.training.checkpoint import to_device
from hyperlab.training.config import TrainConfig
from hyperlab.training.data_cache import corpus

LN2 = math.log(2.0)


class CharLMTask:
    """Train and evaluate a char model; ``model(tokens (B, T), state) -> (logits (B, T, V), state)``.

    The hidden state is carried (detached) from one training chunk to the next and reset when a
    new pass over the training split starts; it is part of the checkpoint, so resume is exact.
    """

    def __init__(self, config: TrainConfig, data_dir: str | None, device: torch.device):
        from hyperlab.data import StreamBatches

        self.config, self.device = config, device
        self.corpus = corpus(config.data.dataset, data_dir)
        batch, seq = config.data.batch_size, config.data.seq_len
        self.batches = {split: StreamBatches(self.corpus.split(split), batch, seq,
                                             name=f"the {split} split of {config.data.dataset}")
                        for split in ("train", "valid", "test")}
        self.hidden = None  # carried across training chunks

    def data_shape(self):
        """What the model learns from the data."""
        from hyperlab.models import DataShape

        return DataShape(vocab_size=self.corpus.vocab_size)

    def train_loss(self, model: torch.nn.Module, step: int) -> tuple[torch.Tensor, int]:
        """Mean cross-entropy (nats) of the chunk of ``step``, and its number of tokens."""
        from hyperlab.models import detach_state

        index = step % len(self.batches["train"])
        if index == 0:
            self.hidden = None  # a new pass over the split starts from a fresh state
        x, y = (t.to(self.device, non_blocking=True) for t in self.batches["train"][index])  # (B, T)
        logits, hidden = model(x, self.hidden)  # (B, T, V)
        self.hidden = detach_state(hidden)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()), x.numel()

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, split: str, max_batches: int | None = None) -> dict[str, float]:
        """Bits per character on ``split`` ('valid' or 'test'), the state carried through the split."""
        batches = self.batches[split]
        n = len(batches) if max_batches is None else min(max_batches, len(batches))
        nll = torch.zeros((), device=self.device, dtype=torch.float64)
        hidden, count = None, 0
        for index in range(n):
            x, y = (t.to(self.device, non_blocking=True) for t in batches[index])
            logits, hidden = model(x, hidden)
            nll += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
            count += y.numel()
        prefix = "val" if split == "valid" else split
        return {f"{prefix}/bpc": nll.item() / count / LN2}

    def state_dict(self) -> dict[str, Any]:
        """What resume needs beyond model and optimiser: the carried hidden state."""
        return {"hidden": self.hidden}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hidden = to_device(state["hidden"], self.device)
