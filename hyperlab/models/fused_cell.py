"""Hand-written forward and backward of one LSTM cell update, for sequence Functions that keep no
autograd graph per step. Layout: features first, batch last, so a step's gates are a (4N, B) slice of a
(4N, T, B) buffer.
"""

from __future__ import annotations

import torch

from hyperlab.models import torch_private


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` if its rows or columns are contiguous, else a contiguous copy (oneDNN is slow on padded strides)."""
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _onednn(a: torch.Tensor) -> bool:
    return a.dtype == torch.float32 and a.device.type == "cpu" and torch_private.has_onednn_matmul()


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b; float32 on the CPU through oneDNN's matmul (see ``torch_private``)."""
    if _onednn(a):
        return torch_private.onednn_mm(_dense(a), _dense(b).t())
    return torch.mm(a, b)


def mm_add(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """a @ b + c (a new tensor), the addition fused into oneDNN's matmul for float32 (``c`` contiguous)."""
    if _onednn(a):
        return torch_private.onednn_mm_add(_dense(a), _dense(b).t(), c)
    return torch.addmm(c, a, b)


def gate_scale(n: int, like: torch.Tensor) -> torch.Tensor:
    """(4n, 1): 2 on the candidate rows, 1 elsewhere. Pre-activations whose g rows are doubled (their
    weights scaled by 2, exact in floating point) give tanh(g) = 2σ(2g) - 1 from one sigmoid over all gates."""
    scale = like.new_ones(4 * n, 1)
    scale[n:2 * n] = 2.0
    return scale


def forget_offset(n: int, like: torch.Tensor) -> torch.Tensor:
    """(4n,): the forget gate's +1, to fold into a bias."""
    offset = like.new_zeros(4 * n)
    offset[2 * n:3 * n] = 1.0
    return offset


def cell_forward(pre, c_prev, mask, act, c_out, tanh_c_out, h_out):
    """LSTM update from pre-activations ``pre`` (4N, B) in gate order (i, 2g, f + 1, o): the candidate
    doubled (``gate_scale``) and the forget gate's +1 added (``forget_offset``) by the caller's weights.
    Writes into the buffers: act the activations (σ(i), tanh(g), σ(f+1), σ(o)), c_out, tanh_c_out = tanh(c),
    h_out."""
    torch.sigmoid(pre, out=act)
    i, g, f, o = act.chunk(4, 0)
    g.mul_(2.0).sub_(1.0)  # tanh(g) = 2σ(2g) - 1: torch's CPU sigmoid is several times faster than its tanh
    torch.mul(f, c_prev, out=c_out).addcmul_(i, g if mask is None else g * mask)
    torch.sigmoid(torch.mul(c_out, 2.0, out=tanh_c_out), out=tanh_c_out).mul_(2.0).sub_(1.0)
    torch.mul(o, tanh_c_out, out=h_out)


def cell_backward(act, tanh_c, c_prev, dh, dc, mask, d_pre):
    """Backward of ``cell_forward``: writes dL/d(pre) into ``d_pre`` (4N, B), for the undoubled candidate
    (so the caller's unscaled weights apply); returns dL/dc_prev."""
    i, g, f, o = act.chunk(4, 0)
    d_i, d_g, d_f, d_o = d_pre.chunk(4, 0)
    torch.mul(dh, tanh_c, out=d_o)                              # dL/dσ(o)
    dc_total = torch.mul(dh, o).add_(dc).addcmul_(d_o * o, tanh_c, value=-1.0)  # dc + dh·o·(1 - tanh²c)
    torch.mul(dc_total, g if mask is None else g * mask, out=d_i)
    torch.mul(dc_total, c_prev, out=d_f)
    d_pre.mul_(act).addcmul_(d_pre, act, value=-1.0)            # σ' = a(1 - a), on all four (g fixed below)
    torch.mul(dc_total, i, out=d_g)
    if mask is not None:
        d_g.mul_(mask)
    d_g.addcmul_(d_g * g, g, value=-1.0)                        # tanh' = 1 - tanh²
    return dc_total.mul_(f)


def scaled_cell_forward(scale_t, z, gate_bias, d, h_proj, x_proj, c_prev, mask, act, c_out, tanh_c_out, h_out):
    """``cell_forward`` of the row-scaled pre-activations d_b + d_h * h_proj + d_x * x_proj, where
    [d_x ; d_h ; d_b] = scale_t z + gate_bias (12, N, B): scale_t (12, N, N_z) contiguous, z (12, N_z, B),
    gate_bias (12, N, 1) (zero but on the d_b rows); ``d`` (12, N, B) is scratch."""
    torch.baddbmm(gate_bias, scale_t, z, out=d)
    d_x, d_h, d_b = d.view(3, -1, d.shape[-1])
    gates = d_b.addcmul_(d_h, h_proj).addcmul_(d_x, x_proj)
    cell_forward(gates, c_prev, mask, act, c_out, tanh_c_out, h_out)


def scaled_cell_backward(act, tanh_c, c_prev, dh, dc, mask, x_proj, h_proj, scale_t, z, d_x_main, d_h_proj, d_bias,
                         d_z, d_scale, scratch):
    """Backward of ``scaled_cell_forward`` for the undoubled candidate (the caller's unscaled ``scale_t``):
    writes d_x_main = g d_x and d_h_proj = g d_h (g = dL/d(gates), (4N, B)), d_bias (4N) = row sums of g,
    d_z (12, N_z, B) = dL/dz; adds dL/d(scale) to ``d_scale`` (12, N_z, N); returns dL/dc_prev.
    ``scratch`` = (dd (3, 4N, B), d (8, N, B))."""
    dd, d = scratch
    d_gate = dd[2]  # dL/d(gates) is also dL/d(d_b)
    dc_prev = cell_backward(act, tanh_c, c_prev, dh, dc, mask, d_gate)
    torch.bmm(scale_t[:8], z[:8], out=d)  # d_x, d_h as in the forward
    d_x, d_h = d.view(2, -1, d.shape[-1])
    torch.mul(d_gate, x_proj, out=dd[0])
    torch.mul(d_gate, h_proj, out=dd[1])
    torch.mul(d_gate, d_x, out=d_x_main)
    torch.mul(d_gate, d_h, out=d_h_proj)
    torch.sum(d_gate, 1, out=d_bias)
    dd = dd.view(scale_t.shape[0], scale_t.shape[1], -1)                  # (12, N, B): [d_x ; d_h ; d_b] gradients
    d_scale.baddbmm_(z, dd.transpose(1, 2))
    torch.bmm(scale_t.transpose(1, 2), dd, out=d_z)
    return dc_prev
