"""A whole HyperLSTM layer sequence (without layer norm) as one autograd Function with a hand-written
backward. ``HyperLSTMCell``'s eager loop is the readable reference; tests check outputs and gradients agree.

Why it is fast: no autograd graph per step; every buffer is written in place; a step works on contiguous
(features, B) blocks, so gates and the twelve scaling vectors (12, H, B) multiply without transposes.
What does not depend on the recurrence is batched: W_x x and the hyper cell's x-part are one product
before the loop; the backward's input gradient and weight gradients are one product per chunk of steps.
Per step, W_h and the hyper cell's h-part are one product ([W_h ; Ŵ_h] h), forward and backward. The
forward's weights carry the candidate's factor 2 and the forget gate's +1 (see ``fused_cell``), which
saves two passes per cell and step. Measured with torch.profiler and per-line CPU times: at the
benchmark's size the products are about two thirds of the time, per-step elementwise work the rest.

Buffers (forward): x_proj (T, 4H + 4Ĥ, B) = [W_x x ; Ŵ_x x + b̂]; states (T+1, H + Ĥ, B) = [h ; ĥ] and cs,
hyper_cs (T+1, ·, B) start with the initial state; acts (T, 4N, B) hold the gate activations (σ(i),
tanh(g), σ(f+1), σ(o)), tanh_c (T, N, B) the cell's tanh.
"""

from __future__ import annotations

import math
import threading
import weakref

import torch

from hyperlab.models import _ext
from hyperlab.models.fused_cell import (
    cell_backward,
    cell_forward,
    forget_offset,
    gate_scale,
    mm,
    mm_add,
    scaled_cell_backward,
    scaled_cell_forward,
)


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
        hidden, hyper, (n_emb, n_z) = h0.shape[1], hyper_h0.shape[1], weight_scale.shape[:2]
        weight_h_cat, hyper_weight_h_fwd, weight_x_cat, hyper_x_bias, scale_t, gate_bias = _forward_weights(
            weight_x, weight_h, bias, hyper_weight_x, hyper_weight_h, hyper_bias, weight_scale)
        flat, (x_proj, *buffers) = _forward_buffers(x, hidden, hyper, n_emb * n_z)
        if flat is not None:  # back to the pool once the graph is gone
            weakref.finalize(ctx, _pool.put, flat)
        torch.matmul(weight_x_cat, x.transpose(1, 2), out=x_proj)  # (T, 4H + 4Ĥ, B): [W_x x ; Ŵ_x x]
        x_proj[:, 4 * hidden:] += hyper_x_bias
        masks = None if masks is None else masks.transpose(1, 2).contiguous()  # (T, H, B)
        states, cs, hyper_cs = buffers[:3]
        states[0, :hidden], states[0, hidden:], cs[0], hyper_cs[0] = h0.t(), hyper_h0.t(), c0.t(), hyper_c0.t()
        kernels = _cpu_kernels(x)
        if kernels is not None:  # the loop below, in C++
            h_projs = kernels.forward_sequence(x_proj, weight_h_cat, hyper_weight_h_fwd, weight_z, z_bias.unsqueeze(1),
                                               scale_t, gate_bias[8:].view(-1), masks, *buffers)
        else:
            h_projs = _forward_loop(x_proj, weight_h_cat, hyper_weight_h_fwd, weight_z, z_bias, scale_t, gate_bias,
                                    masks, buffers)
        ctx.save_for_backward(x, weight_x, weight_h, hyper_weight_x, hyper_weight_h, weight_z, weight_scale, masks,
                              x_proj, *buffers)
        ctx.h_projs = h_projs  # a list: stacking would only copy
        finals = (states[-1, :hidden], cs[-1], states[-1, hidden:], hyper_cs[-1])
        # copies, never views: the buffers go back to the pool
        return (_copy(states[1:, :hidden].transpose(1, 2)), *(_copy(s.t()) for s in finals))

    @staticmethod
    def backward(ctx, d_outputs, dh, dc, d_hyper_h, d_hyper_c):
        return _Backward(ctx, d_outputs).run(dh, dc, d_hyper_h, d_hyper_c)


def _cpu_kernels(like: torch.Tensor):
    """The C++ recurrence (``_ext``) for CPU tensors where it is built, else None: the Python loops here."""
    return _ext.kernels() if like.device.type == "cpu" else None


def _forward_loop(x_proj, weight_h_cat, hyper_weight_h_fwd, weight_z, z_bias, scale_t, gate_bias, masks, buffers):
    """HyperLSTMSequence.forward's recurrence over its buffers; returns the per-step W_h h."""
    states, cs, hyper_cs, tanh_c, acts, hyper_tanh_c, hyper_acts, zs = buffers
    (n_emb, hidden, n_z), batch = scale_t.shape, cs.shape[2]
    d, h_projs = cs.new_empty(n_emb, hidden, batch), []
    z_bias = z_bias.unsqueeze(1)
    for t in range(acts.shape[0]):
        h, hyper_h = states[t, :hidden], states[t, hidden:]
        proj = mm(weight_h_cat, h)                                       # (4H + 4Ĥ, B): [W_h h ; Ŵ h]
        h_projs.append(proj[:4 * hidden])
        pre = proj[4 * hidden:].add_(x_proj[t, 4 * hidden:]).addmm_(hyper_weight_h_fwd, hyper_h)  # (4Ĥ, B)
        hyper_h = states[t + 1, hidden:]
        cell_forward(pre, hyper_cs[t], None, hyper_acts[t], hyper_cs[t + 1], hyper_tanh_c[t], hyper_h)
        torch.addmm(z_bias, weight_z, hyper_h, out=zs[t])                                 # (12 N_z, B)
        mask = None if masks is None else masks[t]
        scaled_cell_forward(scale_t, zs[t].view(n_emb, n_z, batch), gate_bias, d, h_projs[t],  # (12, H, B)
                            x_proj[t, :4 * hidden], cs[t], mask, acts[t], cs[t + 1], tanh_c[t],
                            states[t + 1, :hidden])  # gates d_b + b_0 + d_h W_h h + d_x W_x x
    return h_projs


def _forward_weights(weight_x, weight_h, bias, hyper_weight_x, hyper_weight_h, hyper_bias, weight_scale):
    """The forward's weights: the candidate rows doubled and the forget gate's +1 in the biases (exact
    scalings, see ``fused_cell.cell_forward``). Returns [W_h ; Ŵ_h] (4H + 4Ĥ, H), Ŵ_ĥ (4Ĥ, Ĥ),
    [W_x ; Ŵ_x] (4H + 4Ĥ, N_x), b̂ (4Ĥ, 1), the scale weights transposed (12, H, N_z) and the gate bias
    (12, H, 1): b_0 on the d_b rows, 0 on the d_x and d_h rows."""
    n_x, hidden, hyper = weight_x.shape[1], weight_h.shape[1], hyper_weight_h.shape[1]
    main_scale, hyper_scale = gate_scale(hidden, bias), gate_scale(hyper, bias)  # (4N, 1)
    weight_h_cat = torch.cat([weight_h, hyper_scale * hyper_weight_x[:, n_x:]])
    weight_x_cat = torch.cat([weight_x, hyper_scale * hyper_weight_x[:, :n_x]])
    hyper_x_bias = hyper_scale * (hyper_bias + forget_offset(hyper, bias)).unsqueeze(1)
    scale_t = (weight_scale * main_scale.view(4, 1, hidden).repeat(3, 1, 1)).transpose(1, 2).contiguous()
    gate_bias = main_scale * (bias + forget_offset(hidden, bias)).unsqueeze(1)                   # (4H, 1)
    gate_bias = torch.cat([gate_bias.new_zeros(8 * hidden, 1), gate_bias]).view(-1, hidden, 1)
    return weight_h_cat, hyper_scale * hyper_weight_h, weight_x_cat, hyper_x_bias, scale_t, gate_bias


def _forward_buffers(x, hidden, hyper, n_zs):
    """(flat, (x_proj (T, 4H + 4Ĥ, B), states (T+1, H + Ĥ, B) = [h ; ĥ], cs (T+1, H, B), hyper_cs (T+1, Ĥ, B),
    tanh_c (T, H, B), acts (T, 4H, B), hyper_tanh_c (T, Ĥ, B), hyper_acts (T, 4Ĥ, B), zs (T, 12 N_z, B))):
    on the CPU views of one flat buffer from the pool, on other devices (whose allocators cache) separate
    tensors and flat None."""
    steps, batch = x.shape[:2]
    sizes = ((0, 4 * (hidden + hyper)), (1, hidden + hyper), (1, hidden), (1, hyper), (0, hidden), (0, 4 * hidden),
             (0, hyper), (0, 4 * hyper), (0, n_zs))
    shapes = [(steps + extra, features, batch) for extra, features in sizes]
    if x.device.type != "cpu":
        return None, [x.new_empty(shape) for shape in shapes]
    flat = _pool.take(sum(math.prod(shape) for shape in shapes), x)
    views, start = [], 0
    for shape in shapes:
        views.append(flat[start:start + math.prod(shape)].view(shape))
        start += math.prod(shape)
    return flat, views


def _copy(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` (``contiguous()`` may return ``t`` itself)."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


class _Pool:
    """The forward's buffers of graphs that are gone, kept for the next forward of the same size. The C
    library maps an allocation this large afresh on every call, and faulting its pages in cost about a tenth
    of the benchmark's time. One buffer per size, the ``SIZES`` sizes used last."""

    SIZES = 4

    def __init__(self):
        self.lock = threading.Lock()
        self.free = {}  # (dtype, numel) -> a free flat buffer, least recently returned first

    def take(self, numel: int, like: torch.Tensor) -> torch.Tensor:
        with self.lock:
            buffer = self.free.pop((like.dtype, numel), None)
        return like.new_empty(numel) if buffer is None else buffer

    def put(self, buffer: torch.Tensor) -> None:
        """Called, from any thread, when the graph that used ``buffer`` is freed."""
        with self.lock:
            self.free.pop((buffer.dtype, buffer.numel()), None)
            self.free[buffer.dtype, buffer.numel()] = buffer
            while len(self.free) > self.SIZES:
                self.free.pop(next(iter(self.free)))


_pool = _Pool()


def _columns(buffer: torch.Tensor) -> torch.Tensor:
    """(T, F, B) -> (F, T·B): every step's batch as columns (a copy)."""
    return buffer.transpose(0, 1).reshape(buffer.shape[1], -1)


class _Scratch(threading.local):
    """Named buffers kept between calls, one set per thread: the backward's chunk buffers. Memory mapped
    afresh on every call costs page faults (measured: more than the chunking saves); these stay mapped."""

    def __init__(self):
        self.buffers = {}

    def get(self, name, shape, like):
        """An uninitialised buffer of ``shape``, a view of the first elements of the kept one (regrown if small)."""
        numel = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self.buffers[name] = like.new_empty(numel)
        return buffer[:numel].view(shape)


_scratch = _Scratch()


def _add_product(total, a, b):
    return mm(a, b) if total is None else mm_add(a, b, total)


class _Backward:
    """HyperLSTMSequence's backward: steps in reverse, in chunks of about ``SCRATCH_BYTES`` of per-step
    gradients; when a chunk is done, its input gradient and its part of every weight gradient are one
    product over the chunk's columns. Bounded scratch, because freshly mapped memory is slow: a whole
    sequence's worth (and its column copy) cost more in page faults than the chunked products lose."""

    SCRATCH_BYTES = 16 * 2 ** 20

    def __init__(self, ctx, d_outputs):
        (self.x, self.weight_x, self.weight_h, self.hyper_weight_x, self.hyper_weight_h, self.weight_z,
         self.weight_scale, self.masks, self.x_proj, self.states, self.cs, self.hyper_cs, self.tanh_c, self.acts,
         self.hyper_tanh_c, self.hyper_acts, self.zs) = ctx.saved_tensors
        self.h_projs = ctx.h_projs
        self.d_outputs = None if d_outputs is None else d_outputs.transpose(1, 2).contiguous()  # (T, H, B)
        steps, batch, n_x = self.x.shape
        hidden, hyper = self.cs.shape[1], self.hyper_cs.shape[1]
        self.hidden, self.hyper = hidden, hyper
        self.scale_t = self.weight_scale.transpose(1, 2).contiguous()  # (12, H, N_z), unscaled
        self.weight_h_cat_t = torch.cat([self.weight_h, self.hyper_weight_x[:, n_x:]]).t().contiguous()
        self.weight_x_cat = torch.cat([self.hyper_weight_x[:, :n_x], self.weight_x])  # (4Ĥ + 4H, N_x)
        new = self.x.new_empty
        self.d, self.dd = new(8, hidden, batch), new(3, 4 * hidden, batch)
        self.d_zs, self.d_bias, self.d_x = new(self.zs.shape), new(steps, 4 * hidden), new(steps, batch, n_x)
        self.d_scale = torch.zeros_like(self.weight_scale)
        self.d_weight_h_cat = self.d_hyper_weight_h = self.d_weight_x_cat = self.d_hyper_bias = None

    def run(self, dh, dc, d_hyper_h, d_hyper_c):
        steps, batch, _ = self.x.shape
        start = lambda grad, like: torch.zeros_like(like) if grad is None else grad.t().contiguous()
        dh, dc = start(dh, self.cs[0]), start(dc, self.cs[0])
        d_hyper_h, d_hyper_c = start(d_hyper_h, self.hyper_cs[0]), start(d_hyper_c, self.hyper_cs[0])
        if self.d_outputs is not None:
            dh.add_(self.d_outputs[-1])
        # per step: dL/d[W_h h ; Ŵ h + ... ; W_x x] (4H + 4Ĥ + 4H, B); the first two blocks go back to h_{t-1}
        features = 8 * self.hidden + 4 * self.hyper
        chunk = max(1, self.SCRATCH_BYTES // (features * batch * self.x.element_size()))
        d_proj = _scratch.get("d_proj", (min(chunk, steps), features, batch), self.x)
        kernels = _cpu_kernels(self.x)
        for end in range(steps, 0, -chunk):
            begin = max(0, end - chunk)
            if kernels is not None:  # the loop below, in C++
                dh, dc, d_hyper_h, d_hyper_c = kernels.backward_steps(
                    begin, end, d_proj, dh, dc, d_hyper_h, d_hyper_c, self.acts, self.tanh_c, self.cs, self.masks,
                    self.x_proj, self.h_projs, self.scale_t, self.weight_scale, self.zs, self.d_bias, self.d_zs,
                    self.d_scale, self.weight_z, self.hyper_acts, self.hyper_tanh_c, self.hyper_cs,
                    self.weight_h_cat_t, self.hyper_weight_h, self.d_outputs, self.dd)
            else:
                for t in reversed(range(begin, end)):
                    dh, dc, d_hyper_h, d_hyper_c = self.step(t, d_proj[t - begin], dh, dc, d_hyper_h, d_hyper_c)
            self.add_chunk(begin, end, d_proj[:end - begin])
        return (self.d_x, dh.t(), dc.t(), d_hyper_h.t(), d_hyper_c.t(), *self.weight_gradients(), self.d_scale,
                None)

    def step(self, t, d_proj, dh, dc, d_hyper_h, d_hyper_c):
        """One step back: fills d_proj (4H + 4Ĥ + 4H, B); returns dL/d(h, c, ĥ, ĉ) at step t - 1."""
        hidden, hyper, (n_emb, n_z, _), batch = self.hidden, self.hyper, self.weight_scale.shape, self.x.shape[1]
        mask = None if self.masks is None else self.masks[t]
        d_h_proj, d_x_hyper, d_x_main = d_proj.split([4 * hidden, 4 * hyper, 4 * hidden])
        dc = scaled_cell_backward(self.acts[t], self.tanh_c[t], self.cs[t], dh, dc, mask, self.x_proj[t, :4 * hidden],
                                  self.h_projs[t], self.scale_t, self.zs[t].view(n_emb, n_z, batch), d_x_main,
                                  d_h_proj, self.d_bias[t], self.d_zs[t].view(n_emb, n_z, batch), self.d_scale,
                                  (self.dd, self.d))
        d_hyper_h = torch.addmm(d_hyper_h, self.weight_z.t(), self.d_zs[t])
        d_hyper_c = cell_backward(self.hyper_acts[t], self.hyper_tanh_c[t], self.hyper_cs[t], d_hyper_h, d_hyper_c,
                                  None, d_x_hyper)
        to_h = d_proj[:4 * (hidden + hyper)]
        dh = (mm(self.weight_h_cat_t, to_h) if t == 0 or self.d_outputs is None else
              mm_add(self.weight_h_cat_t, to_h, self.d_outputs[t - 1]))                    # dL/dh_{t-1}
        return dh, dc, torch.mm(self.hyper_weight_h.t(), d_x_hyper), d_hyper_c

    def add_chunk(self, begin, end, d_proj):
        """Steps [begin, end): their x gradient, and their part of the weight gradients that need the
        per-step products' gradients, one product each over the chunk's columns."""
        hidden, hyper, n_x = self.hidden, self.hyper, self.x.shape[2]
        steps, features, batch = d_proj.shape
        columns = _scratch.get("d_proj_columns", (features, steps, batch), d_proj).copy_(d_proj.transpose(0, 1))
        d_proj = columns.view(features, -1)                                   # (4H + 4Ĥ + 4H, n·B)
        prev_states = _columns(self.states[begin:end])                         # (H + Ĥ, n·B): [h ; ĥ]_{t-1}
        d_to_h, d_x_proj = d_proj[:4 * (hidden + hyper)], d_proj[4 * hidden:]  # [W_h h ; Ŵ h], [Ŵ_x x ; W_x x]
        d_hyper = d_proj[4 * hidden:4 * (hidden + hyper)]                     # the hyper cell's pre-activations
        self.d_x[begin:end] = mm(self.weight_x_cat.t(), d_x_proj).view(n_x, steps, batch).permute(1, 2, 0)
        self.d_weight_h_cat = _add_product(self.d_weight_h_cat, d_to_h, prev_states[:hidden].t())
        self.d_hyper_weight_h = _add_product(self.d_hyper_weight_h, d_hyper, prev_states[hidden:].t())
        self.d_weight_x_cat = _add_product(self.d_weight_x_cat, d_x_proj, self.x[begin:end].reshape(-1, n_x))
        d_hyper_bias = d_hyper.sum(1)
        self.d_hyper_bias = d_hyper_bias if self.d_hyper_bias is None else self.d_hyper_bias.add_(d_hyper_bias)

    def weight_gradients(self):
        """dL/d(weight_x, weight_h, bias, hyper_weight_x, hyper_weight_h, hyper_bias, weight_z, z_bias)."""
        hidden, hyper = self.hidden, self.hyper
        d_zs = _columns(self.d_zs)                                             # (12 N_z, T·B)
        d_weight_z = mm(d_zs, _columns(self.states[1:, hidden:]).t())
        d_hyper_weight_x = torch.cat([self.d_weight_x_cat[:4 * hyper], self.d_weight_h_cat[4 * hidden:]], 1)
        return (self.d_weight_x_cat[4 * hyper:], self.d_weight_h_cat[:4 * hidden], self.d_bias.sum(0),
                d_hyper_weight_x, self.d_hyper_weight_h, self.d_hyper_bias, d_weight_z, d_zs.sum(1))
