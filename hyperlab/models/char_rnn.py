"""Character-level language model: one-hot input -> recurrent stack -> softmax layer (PAPER.md section 3).

Parameter counts match the paper's tables (vocabulary 50): LSTM 1000 4.25M, LN-LSTM 4.26M,
HyperLSTM 1000/128/4 4.91M, LN HyperLSTM 4.92M, 2-layer LN HyperLSTM n_z=16 14.41M.
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import pydantic
import torch
import torch.nn.functional as F
from torch import nn

from hyperlab.models.config import DataShape, ModelConfig
from hyperlab.models.hyperlstm import HyperLSTM
from hyperlab.models.lstm import LSTM, LayerNormLSTM, paper_torch_lstm

Cell = Literal["lstm", "ln_lstm", "hyperlstm", "ln_hyperlstm"]
CELLS: tuple[str, ...] = get_args(Cell)


def recurrent_stack(cell: str, input_size: int, hidden_size: int, hyper_size: int = 128, n_z: int = 4,
                    num_layers: int = 1, dropout: float = 0.0, impl: str = "auto") -> nn.Module:
    """The time-major recurrent stack of one of the four cells (the char and handwriting models share it).
    A plain ``lstm`` without dropout is ``torch.nn.LSTM`` (one trainable bias); with dropout it is this
    package's LSTM (same count)."""
    if cell == "lstm" and dropout == 0.0:
        return paper_torch_lstm(input_size, hidden_size, num_layers)
    if cell == "lstm":
        return LSTM(input_size, hidden_size, num_layers, dropout=dropout)
    if cell == "ln_lstm":
        return LayerNormLSTM(input_size, hidden_size, num_layers, dropout=dropout)
    return HyperLSTM(input_size, hidden_size, hyper_size, n_z, num_layers, layer_norm=cell == "ln_hyperlstm",
                     dropout=dropout, impl=impl)


def zero_state(rnn: nn.Module, batch_size: int, device=None):
    """Zero recurrent state of a ``recurrent_stack`` for ``batch_size`` sequences."""
    if isinstance(rnn, nn.LSTM):
        shape = (rnn.num_layers, batch_size, rnn.hidden_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)
    return rnn.init_state(batch_size, device=device)


class CharRNN(nn.Module):
    """``logits, state = model(tokens, state=None)``: tokens (B, T) long -> logits (B, T, V).

    ``dropout`` is the paper's: on the one-hot input, on the output before the softmax layer and
    recurrent dropout on the candidate; all off in eval mode (the stack: ``recurrent_stack``).
    ``impl`` is the HyperLSTM's implementation (``HyperLSTMCell``). ``model(tokens, state,
    return_scales=True)`` adds the per-layer scaling vectors (an empty list for
    cells without a hypernetwork).
    """

    def __init__(self, vocab_size: int, cell: str, hidden_size: int, hyper_size: int = 128, n_z: int = 4,
                 num_layers: int = 1, dropout: float = 0.0, impl: str = "auto"):
        super().__init__()
        self.vocab_size, self.cell, self.dropout = vocab_size, cell, dropout
        self.rnn = recurrent_stack(cell, vocab_size, hidden_size, hyper_size, n_z, num_layers, dropout, impl)
        self.softmax = nn.Linear(hidden_size, vocab_size)  # H·V + V

    @property
    def is_hyper(self) -> bool:
        """Whether the recurrent stack has a hypernetwork (and so scaling vectors to return)."""
        return isinstance(self.rnn, HyperLSTM)

    def init_state(self, batch_size: int, device=None):
        """Zero recurrent state for ``batch_size`` sequences."""
        return zero_state(self.rnn, batch_size, device)

    def forward(self, tokens: torch.Tensor, state=None, return_scales: bool = False):
        if tokens.dim() != 2:
            raise ValueError(f"expected tokens of shape (B, T), got {tuple(tokens.shape)}")
        weight = self.softmax.weight
        x = F.one_hot(tokens.t(), self.vocab_size).to(weight.dtype)  # (T, B, V)
        x = F.dropout(x, self.dropout, self.training)
        scales = []
        if self.is_hyper and return_scales:
            out, state, scales = self.rnn(x, state, return_scales=True)
        else:
            out, state = self.rnn(x, state)
        out = F.dropout(out, self.dropout, self.training)   # (T, B, H)
        logits = self.softmax(out).transpose(0, 1)           # (B, T, V)
        return (logits, state, scales) if return_scales else (logits, state)


class RecurrentConfig(ModelConfig):
    """What the configs of models over a ``recurrent_stack`` share."""

    cell: Cell
    hidden_size: pydantic.PositiveInt
    hyper_size: pydantic.PositiveInt = 128  # hyper cells only
    n_z: pydantic.PositiveInt = 4           # hyper cells only
    num_layers: pydantic.PositiveInt = 1
    dropout: float = pydantic.Field(0.0, ge=0.0, lt=1.0)


class CharRNNConfig(RecurrentConfig):
    """``model:`` of a char language model (``task: charlm``); the vocabulary comes from the corpus."""

    name: Literal["char_rnn"] = "char_rnn"
    task: ClassVar[str] = "charlm"

    def build(self, data: DataShape) -> CharRNN:
        return CharRNN(data.require("vocab_size"), self.cell, self.hidden_size, self.hyper_size, self.n_z,
                       self.num_layers, self.dropout)
