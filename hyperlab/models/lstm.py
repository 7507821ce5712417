"""LSTM building blocks shared by every recurrent model, and the LSTM baselines.

Gates are stored and computed in the order (i, g, f, o) (as in the paper's reference code), all four
in one matrix product. The forget gate gets +1 after its layer norm; recurrent dropout drops only
the candidate g ("without memory loss").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-3  # the paper's layer-norm epsilon


def orthogonal_blocks_(weight: torch.Tensor, n_blocks: int = 4) -> None:
    """Initialise each of the ``n_blocks`` row blocks of ``weight`` (n_blocks*H, H) as orthogonal."""
    if weight.is_meta:  # size_model builds on the meta device: nothing to fill
        return
    with torch.no_grad():
        for block in weight.chunk(n_blocks, 0):
            nn.init.orthogonal_(block)


def glorot_uniform_(weight: torch.Tensor) -> None:
    """Glorot-uniform over the whole matrix, all gates together: bound sqrt(6 / (rows + cols)), e.g.
    sqrt(6 / (4H + N_in)) for W_x (4H, N_in), as the paper's reference code (supercell.py) does."""
    if weight.is_meta:  # size_model builds on the meta device: nothing to fill
        return
    rows, cols = weight.shape
    bound = math.sqrt(6.0 / (rows + cols))
    with torch.no_grad():
        weight.uniform_(-bound, bound)


class GateNorm(nn.Module):
    """Layer norm applied to each of ``n_gates`` gates separately: (..., n_gates*size) -> same shape."""

    def __init__(self, n_gates: int, size: int):
        super().__init__()
        self.size = size
        self.weight = nn.Parameter(torch.ones(n_gates, size))  # gamma = 1
        self.bias = nn.Parameter(torch.zeros(n_gates, size))   # beta = 0

    def forward(self, gates: torch.Tensor) -> torch.Tensor:
        shape = gates.shape
        x = gates.view(*shape[:-1], -1, self.size)  # (..., n_gates, size)
        x = F.layer_norm(x, (self.size,), eps=LN_EPS)
        return torch.addcmul(self.bias, x, self.weight).view(shape)


def cell_update(gates: torch.Tensor, c: torch.Tensor, cell_norm: nn.Module | None = None,
                candidate_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM state update from (normalised) pre-activations ``gates`` (B, 4H) in order (i, g, f, o).

    c_t = sigmoid(f + 1) * c + sigmoid(i) * mask * tanh(g);  h_t = sigmoid(o) * tanh(LN(c_t)).
    The stored c_t is not normalised. ``candidate_mask`` (B, H) is the recurrent dropout mask.
    """
    i, g, f, o = gates.chunk(4, -1)
    candidate = torch.tanh(g)
    if candidate_mask is not None:
        candidate = candidate * candidate_mask
    c = torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * candidate
    h = torch.sigmoid(o) * torch.tanh(c if cell_norm is None else cell_norm(c))
    return h, c


def dropout_masks(like: torch.Tensor, size: int, p: float, training: bool) -> list | torch.Tensor:
    """Recurrent dropout masks for a sequence ``like`` (T, B, ·): (T, B, size) scaled by 1/(1-p), or
    T Nones when dropout is off. Drawn up front so every implementation of a cell sees the same masks."""
    if p == 0.0 or not training:
        return [None] * like.shape[0]
    return F.dropout(like.new_ones(like.shape[0], like.shape[1], size), p, training=True)


class LSTMLayer(nn.Module):
    """One LSTM layer (optionally layer-normed, optionally with recurrent dropout) over a sequence.

    Parameters: weight_x (4H, N_in) glorot over all gates, weight_h (4H, H) orthogonal per gate, bias (4H) zeros
    (absent when ``bias=False``), and with layer norm 10H more (per-gate gamma/beta and the cell's).
    """

    def __init__(self, input_size: int, hidden_size: int, layer_norm: bool = False,
                 bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.input_size, self.hidden_size, self.dropout = input_size, hidden_size, dropout
        self.weight_x = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_h = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size)) if bias else None
        self.gate_norm = GateNorm(4, hidden_size) if layer_norm else None
        self.cell_norm = nn.LayerNorm(hidden_size, eps=LN_EPS) if layer_norm else None
        glorot_uniform_(self.weight_x)
        orthogonal_blocks_(self.weight_h)

    def step(self, x_proj: torch.Tensor, h: torch.Tensor, c: torch.Tensor, candidate_mask=None):
        """One step from the precomputed input projection ``x_proj`` (B, 4H); returns (h, c)."""
        gates = torch.addmm(x_proj, h, self.weight_h.t())  # (B, 4H)
        if self.gate_norm is not None:
            gates = self.gate_norm(gates)
        return cell_update(gates, c, self.cell_norm, candidate_mask)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """x (T, B, N_in), state (h, c) each (B, H) -> outputs (T, B, H), (h_T, c_T)."""
        x_proj = F.linear(x, self.weight_x, self.bias)  # (T, B, 4H): one product for all steps
        masks = dropout_masks(x, self.hidden_size, self.dropout, self.training)
        h, c = state
        outputs = []
        for x_t, mask in zip(x_proj.unbind(0), masks):
            h, c = self.step(x_t, h, c, mask)
            outputs.append(h)
        return torch.stack(outputs), (h, c)


def _check_input(x: torch.Tensor, input_size: int, batch_first: bool) -> torch.Tensor:
    """Validate a (T, B, N) or (B, T, N) batch and return it time-major."""
    if x.dim() != 3 or x.shape[-1] != input_size:
        raise ValueError(f"expected input of shape ({'B, T' if batch_first else 'T, B'}, {input_size}), "
                         f"got {tuple(x.shape)}")
    return x.transpose(0, 1) if batch_first else x


class LSTM(nn.Module):
    """Stacked LSTM with the paper's recurrent dropout and optional layer norm; ``torch.nn.LSTM`` interface.

    ``output, (h, c) = model(x, state=None)`` with x (T, B, N) (or (B, T, N) with ``batch_first``),
    output the last layer's h at every step, h and c each (num_layers, B, H). ``dropout`` is recurrent
    dropout on the candidate. One gate bias per layer: 4H(N_in + H + 1) parameters per layer, plus 10H
    with layer norm.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, layer_norm: bool = False,
                 dropout: float = 0.0, batch_first: bool = False, bias: bool = True):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first = batch_first
        self.layers = nn.ModuleList(
            LSTMLayer(input_size if n == 0 else hidden_size, hidden_size, layer_norm, bias, dropout)
            for n in range(num_layers))

    def init_state(self, batch_size: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero state (h, c), each (num_layers, B, H)."""
        zeros = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device, dtype=dtype)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, state=None):
        x = _check_input(x, self.input_size, self.batch_first)
        if state is None:
            state = self.init_state(x.shape[1], x.device, x.dtype)
        finals = []
        for layer, h, c in zip(self.layers, *state):
            x, final = layer(x, (h, c))
            finals.append(final)
        h, c = (torch.stack(s) for s in zip(*finals))
        return (x.transpose(0, 1) if self.batch_first else x), (h, c)


class LayerNormLSTM(LSTM):
    """The paper's layer-norm LSTM: per-gate and cell layer norm, no gate bias (LN's beta plays its role).

    Parameters per layer: 4H(N_in + H) + 10H, as the paper counts them.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 batch_first: bool = False):
        super().__init__(input_size, hidden_size, num_layers, layer_norm=True, dropout=dropout,
                         batch_first=batch_first, bias=False)


def paper_torch_lstm(input_size: int, hidden_size: int, num_layers: int = 1,
                     batch_first: bool = False) -> nn.LSTM:
    """A ``torch.nn.LSTM`` that is the paper's plain LSTM: one trainable bias, forget bias 1.

    torch keeps two biases; ``bias_hh`` is zeroed and frozen so the trainable count is 4H(N_in + H + 1).
    Weights are initialised as in the paper's reference code (W_x glorot-uniform over all four gates,
    W_h orthogonal per gate). Note
    torch's gate order is (i, f, g, o).
    """
    lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=batch_first)
    for n in range(num_layers):
        glorot_uniform_(getattr(lstm, f"weight_ih_l{n}"))
        orthogonal_blocks_(getattr(lstm, f"weight_hh_l{n}"))
        bias_ih, bias_hh = getattr(lstm, f"bias_ih_l{n}"), getattr(lstm, f"bias_hh_l{n}")
        with torch.no_grad():
            bias_ih.zero_()
            bias_ih[hidden_size:2 * hidden_size] = 1.0  # forget gate, torch order (i, f, g, o)
            bias_hh.zero_()
        bias_hh.requires_grad_(False)
    return lstm
