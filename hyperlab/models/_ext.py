"""C++ loops for the fused LSTM cell's per-step elementwise work (forward and backward), compiled with
``torch.utils.cpp_extension.load_inline`` on first use and cached by torch (``TORCH_EXTENSIONS_DIR``).

``kernels()`` returns the compiled module, or None: when ``HYPERLAB_NO_EXTENSION=1`` is set, or when
compiling or loading fails (no compiler, no ninja), after one logged warning. Callers then use the
pure-PyTorch code in ``fused_cell``. Layouts and formulas are those of ``fused_cell.cell_forward`` and
``cell_backward``: contiguous (4N, B) gate blocks in order (i, g, f, o), (N, B) states, float32 or float64.

Compiled with -O3 -ffast-math (compile only: the link step gets no -ffast-math, so the process's
floating-point mode is left alone): the loops then call glibc's vector exp (libmvec).
"""

from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)

_CPP = r"""
#include <torch/extension.h>
#include <cmath>

namespace {

template <typename T> inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

// pre (4N, B) or, with d, pre = d_b + d_h * h_proj + d_x * x_proj (d: (12, N, B) = [d_x ; d_h ; d_b]).
template <typename T, bool Scaled>
void forward_loop(const T* __restrict__ pre, const T* __restrict__ d, const T* __restrict__ h_proj,
                  const T* __restrict__ x_proj, const T* __restrict__ c_prev, const T* __restrict__ mask,
                  T* __restrict__ act, T* __restrict__ c_out, T* __restrict__ tanh_c, T* __restrict__ h_out,
                  int64_t n) {
  const int64_t m = 4 * n;
  for (int64_t k = 0; k < n; ++k) {
    T p[4];
    for (int q = 0; q < 4; ++q) {
      const int64_t j = q * n + k;
      p[q] = Scaled ? d[2 * m + j] + d[m + j] * h_proj[j] + d[j] * x_proj[j] : pre[j];
    }
    const T i = sigmoid(p[0]);
    const T g = T(2) * sigmoid(p[1]) - T(1);  // the candidate's pre-activation is doubled
    const T f = sigmoid(p[2]);
    const T o = sigmoid(p[3]);
    const T gm = mask == nullptr ? g : g * mask[k];
    const T c = f * c_prev[k] + i * gm;
    const T tc = T(2) * sigmoid(T(2) * c) - T(1);
    act[k] = i; act[n + k] = g; act[2 * n + k] = f; act[3 * n + k] = o;
    c_out[k] = c; tanh_c[k] = tc; h_out[k] = o * tc;
  }
}

template <typename T>
void backward_loop(const T* __restrict__ act, const T* __restrict__ tanh_c, const T* __restrict__ c_prev,
                   const T* __restrict__ dh, const T* __restrict__ dc, const T* __restrict__ mask,
                   T* __restrict__ d_pre, T* __restrict__ dc_prev, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const T i = act[k], g = act[n + k], f = act[2 * n + k], o = act[3 * n + k], tc = tanh_c[k];
    const T m = mask == nullptr ? T(1) : mask[k];
    const T dct = dc[k] + dh[k] * o * (T(1) - tc * tc);
    d_pre[k] = dct * g * m * i * (T(1) - i);
    d_pre[n + k] = dct * i * m * (T(1) - g * g);
    d_pre[2 * n + k] = dct * c_prev[k] * f * (T(1) - f);
    d_pre[3 * n + k] = dh[k] * tc * o * (T(1) - o);
    dc_prev[k] = dct * f;
  }
}

// The main cell's scaled gates: from d_gate (4N, B), dd (3, 4N, B) = d_gate * [x_proj ; h_proj ; 1]
// (dd[2] is d_gate itself), d_x_main = d_gate * d_x, d_h_proj = d_gate * d_h, d_bias (4N) row sums.
template <typename T>
void scale_backward_loop(T* __restrict__ dd, const T* __restrict__ x_proj, const T* __restrict__ h_proj,
                         const T* __restrict__ d, T* __restrict__ d_x_main, T* __restrict__ d_h_proj,
                         T* __restrict__ d_bias, int64_t rows, int64_t batch) {
  const int64_t m = rows * batch;
  const T* d_gate = dd + 2 * m;
  for (int64_t k = 0; k < m; ++k) {
    const T v = d_gate[k];
    dd[k] = v * x_proj[k];
    dd[m + k] = v * h_proj[k];
    d_x_main[k] = v * d[k];
    d_h_proj[k] = v * d[m + k];
  }
  for (int64_t r = 0; r < rows; ++r) {
    T s = 0;
    for (int64_t b = 0; b < batch; ++b) s += d_gate[r * batch + b];
    d_bias[r] = s;
  }
}

void check(const at::Tensor& t, const at::Tensor& like, int64_t numel, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu() && t.scalar_type() == like.scalar_type() &&
              t.numel() == numel, name, ": expected a contiguous CPU tensor of ", numel, " elements");
}

}  // namespace

void cell_forward(const at::Tensor& pre, const c10::optional<at::Tensor>& d, const c10::optional<at::Tensor>& h_proj,
                  const c10::optional<at::Tensor>& x_proj, const at::Tensor& c_prev,
                  const c10::optional<at::Tensor>& mask, at::Tensor& act, at::Tensor& c_out, at::Tensor& tanh_c,
                  at::Tensor& h_out) {
  const int64_t n = c_prev.numel();
  const bool scaled = d.has_value();
  if (scaled) {
    check(*d, act, 12 * n, "d"); check(*h_proj, act, 4 * n, "h_proj"); check(*x_proj, act, 4 * n, "x_proj");
  } else {
    check(pre, act, 4 * n, "pre");
  }
  check(c_prev, act, n, "c_prev"); check(act, act, 4 * n, "act"); check(c_out, act, n, "c_out");
  check(tanh_c, act, n, "tanh_c"); check(h_out, act, n, "h_out");
  if (mask.has_value()) check(*mask, act, n, "mask");
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "cell_forward", [&] {
    auto run = scaled ? forward_loop<scalar_t, true> : forward_loop<scalar_t, false>;
    run(scaled ? nullptr : pre.data_ptr<scalar_t>(), scaled ? d->data_ptr<scalar_t>() : nullptr,
                           scaled ? h_proj->data_ptr<scalar_t>() : nullptr,
                           scaled ? x_proj->data_ptr<scalar_t>() : nullptr, c_prev.data_ptr<scalar_t>(),
                           mask.has_value() ? mask->data_ptr<scalar_t>() : nullptr, act.data_ptr<scalar_t>(),
                           c_out.data_ptr<scalar_t>(), tanh_c.data_ptr<scalar_t>(), h_out.data_ptr<scalar_t>(), n);
  });
}

at::Tensor cell_backward(const at::Tensor& act, const at::Tensor& tanh_c, const at::Tensor& c_prev,
                         const at::Tensor& dh, const at::Tensor& dc, const c10::optional<at::Tensor>& mask,
                         at::Tensor& d_pre) {
  const int64_t n = c_prev.numel();
  check(act, act, 4 * n, "act"); check(tanh_c, act, n, "tanh_c"); check(c_prev, act, n, "c_prev");
  check(dh, act, n, "dh"); check(dc, act, n, "dc"); check(d_pre, act, 4 * n, "d_pre");
  if (mask.has_value()) check(*mask, act, n, "mask");
  at::Tensor dc_prev = at::empty_like(dc);
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "cell_backward", [&] {
    backward_loop<scalar_t>(act.data_ptr<scalar_t>(), tanh_c.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(),
                            dh.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(),
                            mask.has_value() ? mask->data_ptr<scalar_t>() : nullptr, d_pre.data_ptr<scalar_t>(),
                            dc_prev.data_ptr<scalar_t>(), n);
  });
  return dc_prev;
}

void scale_backward(at::Tensor& dd, const at::Tensor& x_proj, const at::Tensor& h_proj, const at::Tensor& d,
                    at::Tensor& d_x_main, at::Tensor& d_h_proj, at::Tensor& d_bias) {
  const int64_t rows = d_bias.numel(), m = x_proj.numel();
  TORCH_CHECK(rows > 0 && m % rows == 0, "scale_backward: d_bias does not match x_proj");
  check(dd, dd, 3 * m, "dd"); check(x_proj, dd, m, "x_proj"); check(h_proj, dd, m, "h_proj");
  check(d, dd, 2 * m, "d"); check(d_x_main, dd, m, "d_x_main"); check(d_h_proj, dd, m, "d_h_proj");
  check(d_bias, dd, rows, "d_bias");
  AT_DISPATCH_FLOATING_TYPES(dd.scalar_type(), "scale_backward", [&] {
    scale_backward_loop<scalar_t>(dd.data_ptr<scalar_t>(), x_proj.data_ptr<scalar_t>(), h_proj.data_ptr<scalar_t>(),
                                  d.data_ptr<scalar_t>(), d_x_main.data_ptr<scalar_t>(),
                                  d_h_proj.data_ptr<scalar_t>(), d_bias.data_ptr<scalar_t>(), rows, m / rows);
  });
}
"""

_FUNCTIONS = ["cell_forward", "cell_backward", "scale_backward"]


def _arch_flags() -> list[str]:
    """AVX2 + FMA where torch's own CPU dispatch says the machine has them (the build is per machine)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        return []
    return ["-mavx2", "-mfma"] if capability in ("AVX2", "AVX512") else []


@functools.cache
def kernels():
    """The compiled module, or None (HYPERLAB_NO_EXTENSION=1, or the build failed: one warning)."""
    if os.environ.get("HYPERLAB_NO_EXTENSION", "") not in ("", "0"):
        return None
    flags = _arch_flags()
    try:
        from torch.utils.cpp_extension import load_inline

        return load_inline(name="hyperlab_cell" + ("_avx2" if flags else ""), cpp_sources=[_CPP],
                           functions=_FUNCTIONS, extra_cflags=["-O3", "-ffast-math", *flags], verbose=False)
    except Exception as error:  # noqa: BLE001 - any build or load failure means the fallback
        log.warning("hyperlab: C++ cell kernels unavailable (%s: %s); using the PyTorch code",
                    type(error).__name__, str(error).strip().splitlines()[-1] if str(error).strip() else "")
        return None
