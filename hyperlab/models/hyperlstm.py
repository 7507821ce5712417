"""HyperLSTM (PAPER.md section 1): a small hyper LSTM rescales the rows of a large LSTM's weights.

Memory-efficient "weight scaling" form: W(z) is never built; each gate is
    y_t = LN(d_h ⊙ (W_h h_{t-1}) + d_x ⊙ (W_x x_t) + W_bz z_b + b_0)
with d_x, d_h, z_b computed from the hyper cell's output ĥ_t at every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hyperlab.models.hyperlstm_fused import HyperLSTMSequence
from hyperlab.models.lstm import (
    LN_EPS,
    GateNorm,
    LSTMLayer,
    _check_input,
    cell_update,
    dropout_masks,
    glorot_uniform_,
    orthogonal_blocks_,
)

N_EMBEDDINGS = 12  # (x, h, b) × (i, g, f, o)
IMPLEMENTATIONS = ("auto", "eager", "fused")


class HyperLSTMCell(nn.Module):
    """One HyperLSTM layer over a whole sequence (time-major); a one-step call is a length-1 sequence.

    ``outputs, (h, c, hyper_h, hyper_c), scales = cell(x, state, return_scales)`` with x (T, B, N_x),
    state tensors (B, H) / (B, Ĥ), outputs (T, B, H); scales is None, or with ``return_scales`` the pair
    (d_x, d_h), each (T, B, 4, H) in gate order (i, g, f, o).
    ``dropout`` is recurrent dropout on the main cell's candidate. ``impl`` picks the implementation:
    ``"eager"`` the readable step-by-step loop below (autograd through every operation), ``"fused"``
    one autograd Function over the sequence with a hand-written backward (``HyperLSTMSequence``; no
    layer norm yet), ``"auto"`` the fused one where it applies. A call with ``return_scales`` always
    runs the eager loop (the scales are a diagnostic, not kept by the fused path).

    Parameters: 4H(N_x+H+1) + 4Ĥ(N_x+H+Ĥ+1) + 12·N_z·(Ĥ+H) + 8·N_z, plus 10H + 10Ĥ with layer norm.
    """

    def __init__(self, input_size: int, hidden_size: int, hyper_size: int = 128, n_z: int = 4,
                 layer_norm: bool = False, dropout: float = 0.0, impl: str = "auto"):
        super().__init__()
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        if impl == "fused" and layer_norm:
            raise ValueError("the fused HyperLSTM has no layer norm; use impl 'auto' or 'eager'")
        self.input_size, self.hidden_size, self.hyper_size, self.n_z = input_size, hidden_size, hyper_size, n_z
        self.dropout = dropout
        self._fused = impl != "eager" and not layer_norm
        # main cell: W_x, W_h, b_0
        self.weight_x = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_h = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        # hyper cell: an LSTM reading [x_t ; h_{t-1}]
        self.hyper = LSTMLayer(input_size + hidden_size, hyper_size, layer_norm, bias=True)
        # twelve embeddings z = W ĥ (+ b): rows are [z_x (i,g,f,o) ; z_h (i,g,f,o) ; z_b (i,g,f,o)]
        self.weight_z = nn.Parameter(torch.empty(N_EMBEDDINGS * n_z, hyper_size))
        self.bias_z = nn.Parameter(torch.ones(8 * n_z))  # z_x and z_h only; z_b has no bias
        # z -> scaling vectors: W_xz, W_hz, W_bz stacked (12, N_z, H)
        self.weight_scale = nn.Parameter(torch.empty(N_EMBEDDINGS, n_z, hidden_size))
        self.gate_norm = GateNorm(4, hidden_size) if layer_norm else None
        self.cell_norm = nn.LayerNorm(hidden_size, eps=LN_EPS) if layer_norm else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's initialisation: at start d_x = d_h = 0.1 and the dynamic bias is 0."""
        if self.weight_x.is_meta:  # size_model: nothing to fill (and random ops on meta are slow)
            return
        glorot_uniform_(self.weight_x)
        orthogonal_blocks_(self.weight_h)
        n_z = self.n_z
        with torch.no_grad():
            self.bias.zero_()
            self.weight_z.zero_()
            self.weight_z[8 * n_z:].normal_(0.0, 0.01)
            self.bias_z.fill_(1.0)
            self.weight_scale.fill_(0.1 / n_z)
            self.weight_scale[8:].zero_()

    def init_state(self, batch_size: int, device=None, dtype=None) -> tuple[torch.Tensor, ...]:
        """Zero (h, c, hyper_h, hyper_c)."""
        main = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        hyper = torch.zeros(batch_size, self.hyper_size, device=device, dtype=dtype)
        return main, main.clone(), hyper, hyper.clone()

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None,
                return_scales: bool = False):
        if state is None:
            state = self.init_state(x.shape[1], x.device, x.dtype)
        z_bias = torch.cat([self.bias_z, self.bias_z.new_zeros(4 * self.n_z)])  # (12 N_z)
        masks = dropout_masks(x, self.hidden_size, self.dropout, self.training)
        if self._fused and not return_scales:
            outputs, *final = HyperLSTMSequence.apply(
                x, *state, self.weight_x, self.weight_h, self.bias, self.hyper.weight_x, self.hyper.weight_h,
                self.hyper.bias, self.weight_z, z_bias, self.weight_scale,
                masks if isinstance(masks, torch.Tensor) else None)
            return outputs, tuple(final), None
        return self._eager(x, state, z_bias, masks, return_scales)

    def _eager(self, x, state, z_bias, masks, return_scales):
        """The readable reference: one step at a time, autograd through every operation."""
        n_x = self.input_size
        x_main = F.linear(x, self.weight_x)  # (T, B, 4H): W_x x_t for every step in one product
        x_hyper = F.linear(x, self.hyper.weight_x[:, :n_x], self.hyper.bias)  # (T, B, 4Ĥ)
        hyper_from_h = self.hyper.weight_x[:, n_x:]  # (4Ĥ, H): the hyper cell reads h_{t-1} too
        h, c, hyper_h, hyper_c = state
        outputs, scales_x, scales_h = [], [], []
        for x_main_t, x_hyper_t, mask in zip(x_main.unbind(0), x_hyper.unbind(0), masks):
            hyper_h, hyper_c = self.hyper.step(torch.addmm(x_hyper_t, h, hyper_from_h.t()), hyper_h, hyper_c)
            h, c, d_x, d_h = self._main_step(x_main_t, h, c, hyper_h, z_bias, mask)
            outputs.append(h)
            scales_x.append(d_x)
            scales_h.append(d_h)
        scales = (torch.stack(scales_x), torch.stack(scales_h)) if return_scales else None
        return torch.stack(outputs), (h, c, hyper_h, hyper_c), scales

    def _main_step(self, x_main_t, h, c, hyper_h, z_bias, candidate_mask):
        batch, hidden = h.shape
        z = F.linear(hyper_h, self.weight_z, z_bias).view(batch, N_EMBEDDINGS, self.n_z)
        d = torch.bmm(z.transpose(0, 1), self.weight_scale)  # (12, B, H): all scaling vectors at once
        d_x, d_h, d_b = d.view(3, 4, batch, hidden).transpose(1, 2)  # each (B, 4, H)
        h_proj = torch.mm(h, self.weight_h.t()).view(batch, 4, hidden)  # row scaling: W(z) never built
        gates = d_h * h_proj + d_x * x_main_t.view(batch, 4, hidden) + d_b + self.bias.view(4, hidden)
        gates = gates.reshape(batch, 4 * hidden)
        if self.gate_norm is not None:
            gates = self.gate_norm(gates)
        h, c = cell_update(gates, c, self.cell_norm, candidate_mask)
        return h, c, d_x, d_h


class HyperLSTM(nn.Module):
    """Stacked HyperLSTM with the ``torch.nn.LSTM`` interface.

    ``output, state = model(x, state=None)``: x (T, B, N_x) or (B, T, N_x) with ``batch_first``; output
    the last layer's h at every step; state = (h, c, hyper_h, hyper_c), each (num_layers, B, ·), which
    passed back continues the sequence exactly. ``return_scales=True`` adds a list (one per layer) of
    {"d_x": (T, B, 4, H), "d_h": (T, B, 4, H)}, gates in order (i, g, f, o) (time-major even with
    ``batch_first``). ``dropout`` is recurrent dropout on the candidate of each main cell; ``impl`` is
    each cell's implementation (see ``HyperLSTMCell``).
    """

    def __init__(self, input_size: int, hidden_size: int, hyper_size: int = 128, n_z: int = 4,
                 num_layers: int = 1, layer_norm: bool = False, dropout: float = 0.0,
                 batch_first: bool = False, impl: str = "auto"):
        super().__init__()
        self.input_size, self.hidden_size, self.hyper_size = input_size, hidden_size, hyper_size
        self.num_layers, self.batch_first = num_layers, batch_first
        self.layers = nn.ModuleList(
            HyperLSTMCell(input_size if n == 0 else hidden_size, hidden_size, hyper_size, n_z,
                          layer_norm, dropout, impl)
            for n in range(num_layers))

    def init_state(self, batch_size: int, device=None, dtype=None) -> tuple[torch.Tensor, ...]:
        """Zero state (h, c, hyper_h, hyper_c), each (num_layers, B, ·)."""
        per_layer = [layer.init_state(batch_size, device, dtype) for layer in self.layers]
        return tuple(torch.stack(s) for s in zip(*per_layer))

    def forward(self, x: torch.Tensor, state=None, return_scales: bool = False):
        x = _check_input(x, self.input_size, self.batch_first)
        if state is None:
            state = self.init_state(x.shape[1], x.device, x.dtype)
        finals, scales = [], []
        for layer, *layer_state in zip(self.layers, *state):
            x, final, layer_scales = layer(x, tuple(layer_state), return_scales)
            finals.append(final)
            if return_scales:
                scales.append(dict(zip(("d_x", "d_h"), layer_scales)))
        state = tuple(torch.stack(s) for s in zip(*finals))
        output = x.transpose(0, 1) if self.batch_first else x
        return (output, state, scales) if return_scales else (output, state)
