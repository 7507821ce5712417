"""Character-level language model: one-hot input -> recurrent stack -> softmax layer (PAPER.md section 3).

Parameter counts match the paper's tables (vocabulary 50): LSTM 1000 4.25M, LN-LSTM 4.26M,
HyperLSTM 1000/128/4 4.91M, LN HyperLSTM 4.92M, 2-layer LN HyperLSTM n_z=16 14.41M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hyperlab.errors import ConfigError
from hyperlab.models.hyperlstm import HyperLSTM
from hyperlab.models.lstm import LSTM, LayerNormLSTM, paper_torch_lstm

CELLS = ("lstm", "ln_lstm", "hyperlstm", "ln_hyperlstm")


class CharRNN(nn.Module):
    """``logits, state = model(tokens, state=None)``: tokens (B, T) long -> logits (B, T, V).

    ``dropout`` is the paper's: on the one-hot input, on the output before the softmax layer and
    recurrent dropout on the candidate; all off in eval mode. A plain ``lstm`` without dropout is
    ``torch.nn.LSTM`` (one trainable bias); with dropout it is this package's LSTM (same count).
    ``model(tokens, state, return_scales=True)`` adds the per-layer scaling vectors (an empty list for
    cells without a hypernetwork).
    """

    def __init__(self, vocab_size: int, cell: str, hidden_size: int, hyper_size: int = 128, n_z: int = 4,
                 num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        _check_arguments(vocab_size, cell, hidden_size, hyper_size, n_z, num_layers, dropout)
        self.vocab_size, self.cell, self.dropout = vocab_size, cell, dropout
        if cell == "lstm" and dropout == 0.0:
            self.rnn = paper_torch_lstm(vocab_size, hidden_size, num_layers)
        elif cell == "lstm":
            self.rnn = LSTM(vocab_size, hidden_size, num_layers, dropout=dropout)
        elif cell == "ln_lstm":
            self.rnn = LayerNormLSTM(vocab_size, hidden_size, num_layers, dropout=dropout)
        else:
            self.rnn = HyperLSTM(vocab_size, hidden_size, hyper_size, n_z, num_layers,
                                 layer_norm=cell == "ln_hyperlstm", dropout=dropout)
        self.softmax = nn.Linear(hidden_size, vocab_size)  # H·V + V

    @property
    def is_hyper(self) -> bool:
        """Whether the recurrent stack has a hypernetwork (and so scaling vectors to return)."""
        return isinstance(self.rnn, HyperLSTM)

    def init_state(self, batch_size: int, device=None):
        """Zero recurrent state for ``batch_size`` sequences."""
        if isinstance(self.rnn, nn.LSTM):
            shape = (self.rnn.num_layers, batch_size, self.rnn.hidden_size)
            return torch.zeros(shape, device=device), torch.zeros(shape, device=device)
        return self.rnn.init_state(batch_size, device=device)

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


def _check_arguments(vocab_size, cell, hidden_size, hyper_size, n_z, num_layers, dropout) -> None:
    problems = []
    if cell not in CELLS:
        problems.append(("model.cell", f"expected one of {', '.join(CELLS)}, got {cell!r}"))
    for key, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size), ("hyper_size", hyper_size),
                       ("n_z", n_z), ("num_layers", num_layers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append((f"model.{key}", f"expected a positive integer, got {value!r}"))
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        problems.append(("model.dropout", f"expected a probability in [0, 1), got {dropout!r}"))
    if problems:
        raise ConfigError(None, problems)
