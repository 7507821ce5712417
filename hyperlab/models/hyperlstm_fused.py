"""A whole HyperLSTM layer sequence (without layer norm) as one autograd Function with a hand-written
backward. ``HyperLSTMCell``'s eager loop is the readable reference; tests check outputs and gradients agree.

Why it is fast: no autograd graph per step; every buffer is written in place; buffers are laid out
(T, features, B), so that a step is a contiguous (features, B) block: gates and the twelve scaling
vectors (12, H, B) multiply without transposes or strided access. W_x x is one batched product for all
steps, and every weight gradient one product over all T·B columns after the loop (accumulating them
step by step, with only B = 32 columns a product, measured slower).

Buffers: acts (T, 4N, B) hold the gate activations (σ(i), tanh(g), σ(f+1), σ(o)), tanh_c (T, N, B) the
cell's tanh; hs, cs, hyper_hs, hyper_cs (T+1, N, B) start with the initial state.
"""

from __future__ import annotations

import torch

from hyperlab.models.fused_cell import cell_backward, cell_forward, mm


class HyperLSTMSequence(torch.autograd.Function):
    """apply(x, h0, c0, hyper_h0, hyper_c0, weight_x, weight_h, bias, hyper_weight_x, hyper_weight_h,
    hyper_bias, weight_z, z_bias, weight_scale, masks) -> (outputs (T, B, H), h_T, c_T, hyper_h_T, hyper_c_T).

    x (T, B, N_x); states (B, ·); weights as in ``HyperLSTMCell`` (hyper_weight_x (4Ĥ, N_x + H) reads
    [x ; h]; z_bias (12 N_z) with zeros for z_b); masks (T, B, H) or None. No layer norm: with it this
    path measured no faster than the eager loop (its reductions run across the feature dimension here).
    """

    @staticmethod
    def forward(ctx, x, h0, c0, hyper_h0, hyper_c0, weight_x, weight_h, bias, hyper_weight_x, hyper_weight_h,
                hyper_bias, weight_z, z_bias, weight_scale, masks):
        steps, batch, n_x = x.shape
        hidden, hyper, (n_emb, n_z) = h0.shape[1], hyper_h0.shape[1], weight_scale.shape[:2]
        x_main = torch.matmul(weight_x, x.transpose(1, 2))  # (T, 4H, B): W_x x for all steps at once
        x_hyper = torch.matmul(hyper_weight_x[:, :n_x], x.transpose(1, 2)).add_(hyper_bias.unsqueeze(1))
        hyper_from_h = hyper_weight_x[:, n_x:].contiguous()  # (4Ĥ, H): the hyper cell reads h_{t-1} too
        masks = None if masks is None else masks.transpose(1, 2).contiguous()  # (T, H, B)
        new = x.new_empty
        hs, cs, tanh_c, acts = (new(steps + 1, hidden, batch), new(steps + 1, hidden, batch),
                                new(steps, hidden, batch), new(steps, 4 * hidden, batch))
        hyper_hs, hyper_cs, hyper_tanh_c, hyper_acts = (new(steps + 1, hyper, batch), new(steps + 1, hyper, batch),
                                                        new(steps, hyper, batch), new(steps, 4 * hyper, batch))
        zs, d, gates, h_projs = new(steps, n_emb * n_z, batch), new(n_emb, hidden, batch), new(4 * hidden, batch), []
        hs[0], cs[0], hyper_hs[0], hyper_cs[0] = h0.t(), c0.t(), hyper_h0.t(), hyper_c0.t()
        bias, z_bias = bias.unsqueeze(1), z_bias.unsqueeze(1)
        scale_t = weight_scale.transpose(1, 2).contiguous()  # (12, H, N_z)
        for t in range(steps):
            pre = mm(hyper_from_h, hs[t]).add_(x_hyper[t]).addmm_(hyper_weight_h, hyper_hs[t])  # (4Ĥ, B)
            cell_forward(pre, hyper_cs[t], None, hyper_acts[t], hyper_cs[t + 1], hyper_tanh_c[t], hyper_hs[t + 1])
            torch.addmm(z_bias, weight_z, hyper_hs[t + 1], out=zs[t])                   # (12 N_z, B)
            torch.bmm(scale_t, zs[t].view(n_emb, n_z, batch), out=d)  # (12, H, B); recomputed in backward
            h_projs.append(mm(weight_h, hs[t]))                                         # (4H, B)
            d_x, d_h, d_b = d.view(3, 4 * hidden, batch)
            torch.mul(h_projs[t], d_h, out=gates).addcmul_(x_main[t], d_x).add_(d_b).add_(bias)
            mask = None if masks is None else masks[t]
            cell_forward(gates, cs[t], mask, acts[t], cs[t + 1], tanh_c[t], hs[t + 1])
        ctx.save_for_backward(x, weight_x, weight_h, hyper_weight_x, hyper_weight_h, weight_z, weight_scale, masks,
                              x_main, hs, cs, tanh_c, acts, hyper_hs, hyper_cs, hyper_tanh_c, hyper_acts, zs)
        ctx.h_projs = h_projs  # a list: stacking would only copy
        finals = (hs[-1], cs[-1], hyper_hs[-1], hyper_cs[-1])
        return (hs[1:].transpose(1, 2).contiguous(), *(s.t().contiguous() for s in finals))

    @staticmethod
    def backward(ctx, d_outputs, dh, dc, d_hyper_h, d_hyper_c):
        (x, weight_x, weight_h, hyper_weight_x, hyper_weight_h, weight_z, weight_scale, masks,
         x_main, hs, cs, tanh_c, acts, hyper_hs, hyper_cs, hyper_tanh_c, hyper_acts, zs) = ctx.saved_tensors
        steps, batch, n_x = x.shape
        hidden, (n_emb, n_z) = hs.shape[1], weight_scale.shape[:2]
        start = lambda grad, like: torch.zeros_like(like) if grad is None else grad.t().contiguous()
        dh, dc = start(dh, cs[0]), start(dc, cs[0])
        d_hyper_h, d_hyper_c = start(d_hyper_h, hyper_hs[0]), start(d_hyper_c, hyper_hs[0])
        d_outputs = None if d_outputs is None else d_outputs.transpose(1, 2).contiguous()  # (T, H, B)
        scale_t = weight_scale.transpose(1, 2).contiguous()  # (12, H, N_z)
        weight_h_t, hyper_from_h_t = weight_h.t().contiguous(), hyper_weight_x[:, n_x:].t().contiguous()
        d_gates, d_h_projs, d_x_main = (torch.empty_like(acts) for _ in range(3))
        d_x_hyper, d_zs, d_scale = torch.empty_like(hyper_acts), torch.empty_like(zs), torch.zeros_like(weight_scale)
        d, dd = x.new_empty(n_emb, hidden, batch), x.new_empty(n_emb, hidden, batch)
        dd_x, dd_h, dd_b = dd.view(3, 4 * hidden, batch)
        for t in reversed(range(steps)):
            if d_outputs is not None:
                dh = dh + d_outputs[t]
            mask = None if masks is None else masks[t]
            dc = cell_backward(acts[t], tanh_c[t], cs[t], dh, dc, mask, d_gates[t])
            d_gate, z = d_gates[t], zs[t].view(n_emb, n_z, batch)
            torch.bmm(scale_t, z, out=d)  # (12, H, B), as in forward
            d_x, d_h, _ = d.view(3, 4 * hidden, batch)
            torch.mul(d_gate, x_main[t], out=dd_x)
            torch.mul(d_gate, ctx.h_projs[t], out=dd_h)
            dd_b.copy_(d_gate)
            torch.mul(d_gate, d_x, out=d_x_main[t])
            torch.mul(d_gate, d_h, out=d_h_projs[t])
            d_scale.baddbmm_(z, dd.transpose(1, 2))                      # (12, N_z, H)
            torch.bmm(weight_scale, dd, out=d_zs[t].view(n_emb, n_z, batch))
            d_hyper_h = torch.addmm(d_hyper_h, weight_z.t(), d_zs[t])
            d_hyper_c = cell_backward(hyper_acts[t], hyper_tanh_c[t], hyper_cs[t], d_hyper_h, d_hyper_c, None,
                                      d_x_hyper[t])
            dh = mm(weight_h_t, d_h_projs[t]).addmm_(hyper_from_h_t, d_x_hyper[t])  # to h_{t-1}
            d_hyper_h = torch.mm(hyper_weight_h.t(), d_x_hyper[t])
        d_x = torch.matmul(weight_x.t(), d_x_main).add_(torch.matmul(hyper_weight_x[:, :n_x].t(), d_x_hyper))
        return (d_x.transpose(1, 2), dh.t(), dc.t(), d_hyper_h.t(), d_hyper_c.t(),
                *_weight_gradients(x, hs, hyper_hs, d_x_main, d_h_projs, d_gates, d_x_hyper, d_zs), d_scale, None)


def _columns(buffer: torch.Tensor) -> torch.Tensor:
    """(T, F, B) -> (F, T·B): every step's batch as columns (a copy)."""
    return buffer.transpose(0, 1).reshape(buffer.shape[1], -1)


def _weight_gradients(x, hs, hyper_hs, d_x_main, d_h_projs, d_gates, d_x_hyper, d_zs):
    """dL/d(weight_x, weight_h, bias, hyper_weight_x, hyper_weight_h, hyper_bias, weight_z, z_bias), each
    one product over all T·B columns."""
    steps = d_gates.shape[0]
    x_cols = x.reshape(-1, x.shape[-1])                                   # (T·B, N_x), the same column order
    h_prev, d_hyper = _columns(hs[:steps]), _columns(d_x_hyper)           # (H, T·B), (4Ĥ, T·B)
    d_hyper_weight_x = torch.cat([mm(d_hyper, x_cols), mm(d_hyper, h_prev.t())], dim=1)
    d_zs = _columns(d_zs)
    return (mm(_columns(d_x_main), x_cols), mm(_columns(d_h_projs), h_prev.t()), d_gates.sum((0, 2)),
            d_hyper_weight_x, mm(d_hyper, _columns(hyper_hs[:steps]).t()), d_hyper.sum(1),
            mm(d_zs, _columns(hyper_hs[1:]).t()), d_zs.sum(1))
