// The fused HyperLSTM's recurrence in C++: per-step cell loops, forward and backward, and the loops over time
// that call them (forward_sequence, backward_steps: the two functions Python sees); built by _ext.py with
// torch.utils.cpp_extension.load_inline. Layouts and formulas are those of fused_cell.py and
// hyperlstm_fused.py (the PyTorch code used where this is not built): features first, batch last; gates
// (4N, B) in order (i, g, f, o); states (N, B).
//
// Written on explicit SIMD lanes (GCC/Clang vector extensions, 32 bytes: 8 floats or 4 doubles) so that
// speed does not depend on the auto-vectoriser; columns left over when B is not a multiple of the lane count
// go through the same templates with a scalar as the lane type.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {

template <typename T> struct Simd;
template <> struct Simd<float> { typedef float V __attribute__((vector_size(32))); };
template <> struct Simd<double> { typedef double V __attribute__((vector_size(32))); };
typedef int32_t Int8 __attribute__((vector_size(32)));

template <typename V> inline V load(const void* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
template <typename V> inline void store(void* p, const V& v) { std::memcpy(p, &v, sizeof v); }
template <typename V, typename T> inline V splat(T s) { return V{} + s; }

inline float sum(float v) { return v; }
inline double sum(double v) { return v; }
inline float sum(const Simd<float>::V& v) {  // halves, then pairs: a few shuffles instead of seven lane extracts
  typedef float Half __attribute__((vector_size(16)));
  Half a, b;
  std::memcpy(&a, &v, sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof a, sizeof b);
  a += b;
  return (a[0] + a[2]) + (a[1] + a[3]);
}
template <typename V>
inline auto sum(const V& v) -> typename std::remove_cv<typename std::remove_reference<decltype(v[0])>::type>::type {
  auto s = v[0];
  for (unsigned l = 1; l < sizeof v / sizeof v[0]; ++l) s += v[l];
  return s;
}

// e^x in float: x = n ln 2 + r with |r| <= ln 2 / 2, a degree-6 polynomial for e^r, 2^n from the exponent
// bits; x clamped to [-87, 88] so that every result is finite and normal (relative error about 2e-7). NaN
// stays NaN. Doubles use std::exp, lane by lane (double precision serves the tests, not speed).
inline float pow2(float n) {
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float s;
  std::memcpy(&s, &bits, sizeof s);
  return s;
}
inline Simd<float>::V pow2(Simd<float>::V n) {
  return reinterpret_cast<Simd<float>::V>((__builtin_convertvector(n, Int8) + 127) << 23);
}
template <typename V> inline V exp_float(V x) {
  x = x < -87.0f ? splat<V>(-87.0f) : x;
  x = x > 88.0f ? splat<V>(88.0f) : x;
  const V n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const V r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;  // ln 2 in two parts
  const V p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667e-01f + r * (4.1666667e-02f +
              r * (8.3333333e-03f + r * 1.3888889e-03f)))));
  return p * pow2(n);
}
inline float exp_(float x) { return exp_float(x); }
inline Simd<float>::V exp_(Simd<float>::V x) { return exp_float(x); }
inline double exp_(double x) { return std::exp(x); }
inline Simd<double>::V exp_(Simd<double>::V x) {
  for (int l = 0; l < 4; ++l) x[l] = std::exp(x[l]);
  return x;
}

template <typename V> inline V sigmoid(V x) { return 1 / (1 + exp_(-x)); }

// The cell update at k from pre-activations (i, 2g, f + 1, o) (candidate doubled: tanh(g) = 2σ(2g) - 1).
template <typename T, typename V, bool Masked>
inline void update(V pi, V pg, V pf, V po, int64_t k, int64_t n, const T* c_prev, const T* mask, T* act,
                   T* c_out, T* tanh_c, T* h_out) {
  const V i = sigmoid(pi), g = 2 * sigmoid(pg) - 1, f = sigmoid(pf), o = sigmoid(po);
  const V c = f * load<V>(c_prev + k) + i * (Masked ? g * load<V>(mask + k) : g);
  const V tc = 2 * sigmoid(2 * c) - 1;
  store(act + k, i); store(act + n + k, g); store(act + 2 * n + k, f); store(act + 3 * n + k, o);
  store(c_out + k, c); store(tanh_c + k, tc); store(h_out + k, o * tc);
}

// The cell's gradients at k: writes dL/d(i, g, f, o pre-activations) (undoubled candidate) and dL/dc_prev.
template <typename T, typename V, bool Masked>
inline void update_backward(const T* act, const T* tanh_c, const T* c_prev, const T* dh, const T* dc,
                            const T* mask, int64_t k, int64_t n, V grad[4], T* dc_prev) {
  const V i = load<V>(act + k), g = load<V>(act + n + k), f = load<V>(act + 2 * n + k);
  const V o = load<V>(act + 3 * n + k), tc = load<V>(tanh_c + k), dhk = load<V>(dh + k);
  const V dct = load<V>(dc + k) + dhk * o * (1 - tc * tc);
  const V dctm = Masked ? dct * load<V>(mask + k) : dct;
  grad[0] = dctm * g * i * (1 - i);
  grad[1] = dctm * i * (1 - g * g);
  grad[2] = dct * load<V>(c_prev + k) * f * (1 - f);
  grad[3] = dhk * tc * o * (1 - o);
  store(dc_prev + k, dct * f);
}

template <typename T, bool Masked>
void forward_loop(const T* pre, const T* c_prev, const T* mask, T* act, T* c_out, T* tanh_c, T* h_out, int64_t n) {
  typedef typename Simd<T>::V V;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  int64_t k = 0;
  for (; k + W <= n; k += W)
    update<T, V, Masked>(load<V>(pre + k), load<V>(pre + n + k), load<V>(pre + 2 * n + k), load<V>(pre + 3 * n + k),
                         k, n, c_prev, mask, act, c_out, tanh_c, h_out);
  for (; k < n; ++k)
    update<T, T, Masked>(pre[k], pre[n + k], pre[2 * n + k], pre[3 * n + k], k, n, c_prev, mask, act, c_out, tanh_c,
                         h_out);
}

template <typename T, bool Masked>
void backward_loop(const T* act, const T* tanh_c, const T* c_prev, const T* dh, const T* dc, const T* mask,
                   T* d_pre, T* dc_prev, int64_t n) {
  typedef typename Simd<T>::V V;
  constexpr int64_t W = sizeof(V) / sizeof(T);
  int64_t k = 0;
  for (; k + W <= n; k += W) {
    V grad[4];
    update_backward<T, V, Masked>(act, tanh_c, c_prev, dh, dc, mask, k, n, grad, dc_prev);
    for (int q = 0; q < 4; ++q) store(d_pre + q * n + k, grad[q]);
  }
  for (; k < n; ++k) {
    T grad[4];
    update_backward<T, T, Masked>(act, tanh_c, c_prev, dh, dc, mask, k, n, grad, dc_prev);
    for (int q = 0; q < 4; ++q) d_pre[q * n + k] = grad[q];
  }
}

// The main cell, hidden unit j, batch columns [col, col + U lanes): pre-activations d_b + d_h h_proj + d_x x_proj
// with the scaling vectors d_e = scale[e] z[e] (e over [x ; h ; b] x gates; scale (12, N, nz) with the
// forward's candidate doubling, z (12, nz, B)) and b0 (4N) added to d_b; then the cell update. U lane groups
// at once, so that each scale weight is loaded once per U groups.
template <typename T, typename V, int U, bool Masked>
inline void scaled_forward_block(const T* scale, const T* z, const T* b0, int64_t nz, const T* h_proj,
                                 const T* x_proj, const T* c_prev, const T* mask, T* act, T* c_out, T* tanh_c,
                                 T* h_out, int64_t hidden, int64_t batch, int64_t j, int64_t col) {
  constexpr int64_t W = sizeof(V) / sizeof(T);
  V pre[4][U];
  for (int q = 0; q < 4; ++q) {
    const int64_t r = q * hidden + j;
    const T *sx = scale + r * nz, *sh = scale + (4 * hidden + r) * nz, *sb = scale + (8 * hidden + r) * nz;
    V dx[U], dh[U], db[U];
    for (int u = 0; u < U; ++u) { dx[u] = splat<V>(T(0)); dh[u] = splat<V>(T(0)); db[u] = splat<V>(b0[r]); }
    for (int64_t kk = 0; kk < nz; ++kk) {
      const T *zx = z + (q * nz + kk) * batch + col, *zh = z + ((4 + q) * nz + kk) * batch + col;
      const T* zb = z + ((8 + q) * nz + kk) * batch + col;
      const T a = sx[kk], c = sh[kk], e = sb[kk];
      for (int u = 0; u < U; ++u) {
        dx[u] += a * load<V>(zx + u * W);
        dh[u] += c * load<V>(zh + u * W);
        db[u] += e * load<V>(zb + u * W);
      }
    }
    for (int u = 0; u < U; ++u)
      pre[q][u] = db[u] + dh[u] * load<V>(h_proj + r * batch + col + u * W) +
                  dx[u] * load<V>(x_proj + r * batch + col + u * W);
  }
  for (int u = 0; u < U; ++u)
    update<T, V, Masked>(pre[0][u], pre[1][u], pre[2][u], pre[3][u], j * batch + col + u * W, hidden * batch, c_prev,
                         mask, act, c_out, tanh_c, h_out);
}

// Its backward up to the scaling vectors' gradients: the gate gradients g (undoubled candidate), then per
// gate q (row r = qN + j), with d_x, d_h recomputed: dd = g [x_proj ; h_proj ; 1] (the gradients of
// [d_x ; d_h ; d_b], (3, 4N, B)), d_x_main = g d_x and d_h_proj = g d_h (to W_x x and W_h h), d_bias[r] += Σ g;
// and dc_prev. scale (12, N, nz) without the doubling.
template <typename T, typename V, int U, bool Masked>
inline void scaled_backward_block(const T* act, const T* tanh_c, const T* c_prev, const T* dh, const T* dc,
                                  const T* mask, const T* x_proj, const T* h_proj, const T* scale, const T* z,
                                  int64_t nz, T* dd, T* d_x_main, T* d_h_proj, T* d_bias, T* dc_prev, int64_t hidden,
                                  int64_t batch, int64_t j, int64_t col) {
  constexpr int64_t W = sizeof(V) / sizeof(T);
  const int64_t n = hidden * batch, m = 4 * n;
  V grad[4][U];
  for (int u = 0; u < U; ++u) {
    V g4[4];
    update_backward<T, V, Masked>(act, tanh_c, c_prev, dh, dc, mask, j * batch + col + u * W, n, g4, dc_prev);
    for (int q = 0; q < 4; ++q) grad[q][u] = g4[q];
  }
  for (int q = 0; q < 4; ++q) {
    const int64_t r = q * hidden + j, at = r * batch + col;
    const T *sx = scale + r * nz, *sh = scale + (4 * hidden + r) * nz;
    V dx[U], dhs[U], total = splat<V>(T(0));
    for (int u = 0; u < U; ++u) { dx[u] = splat<V>(T(0)); dhs[u] = splat<V>(T(0)); }
    for (int64_t kk = 0; kk < nz; ++kk) {
      const T *zx = z + (q * nz + kk) * batch + col, *zh = z + ((4 + q) * nz + kk) * batch + col;
      const T a = sx[kk], c = sh[kk];
      for (int u = 0; u < U; ++u) {
        dx[u] += a * load<V>(zx + u * W);
        dhs[u] += c * load<V>(zh + u * W);
      }
    }
    for (int u = 0; u < U; ++u) {
      const V g = grad[q][u];
      const int64_t k = at + u * W;
      store(dd + k, g * load<V>(x_proj + k));
      store(dd + m + k, g * load<V>(h_proj + k));
      store(dd + 2 * m + k, g);
      store(d_x_main + k, g * dx[u]);
      store(d_h_proj + k, g * dhs[u]);
      total += g;
    }
    d_bias[r] += sum(total);
  }
}

// Blocks of 4 lane groups, then single groups, then single columns (B need not be a multiple of anything).
template <typename T, typename Block4, typename Block1, typename Scalar>
inline void over_columns(int64_t batch, Block4 block4, Block1 block1, Scalar scalar) {
  constexpr int64_t W = sizeof(typename Simd<T>::V) / sizeof(T);
  int64_t col = 0;
  for (; col + 4 * W <= batch; col += 4 * W) block4(col);
  for (; col + W <= batch; col += W) block1(col);
  for (; col < batch; ++col) scalar(col);
}

template <typename T, bool Masked>
void scaled_forward_loop(const T* scale, const T* z, const T* b0, int64_t nz, const T* h_proj, const T* x_proj,
                         const T* c_prev, const T* mask, T* act, T* c_out, T* tanh_c, T* h_out, int64_t hidden,
                         int64_t batch) {
  typedef typename Simd<T>::V V;
  for (int64_t j = 0; j < hidden; ++j) {
    auto block = [&](auto lanes, auto groups, int64_t col) {
      scaled_forward_block<T, decltype(lanes), decltype(groups)::value, Masked>(
          scale, z, b0, nz, h_proj, x_proj, c_prev, mask, act, c_out, tanh_c, h_out, hidden, batch, j, col);
    };
    over_columns<T>(batch, [&](int64_t col) { block(V{}, std::integral_constant<int, 4>{}, col); },
                    [&](int64_t col) { block(V{}, std::integral_constant<int, 1>{}, col); },
                    [&](int64_t col) { block(T{}, std::integral_constant<int, 1>{}, col); });
  }
}

template <typename T, bool Masked>
void scaled_backward_loop(const T* act, const T* tanh_c, const T* c_prev, const T* dh, const T* dc, const T* mask,
                          const T* x_proj, const T* h_proj, const T* scale, const T* z, int64_t nz, T* dd,
                          T* d_x_main, T* d_h_proj, T* d_bias, T* dc_prev, int64_t hidden, int64_t batch) {
  typedef typename Simd<T>::V V;
  std::fill(d_bias, d_bias + 4 * hidden, T(0));
  for (int64_t j = 0; j < hidden; ++j) {
    auto block = [&](auto lanes, auto groups, int64_t col) {
      scaled_backward_block<T, decltype(lanes), decltype(groups)::value, Masked>(
          act, tanh_c, c_prev, dh, dc, mask, x_proj, h_proj, scale, z, nz, dd, d_x_main, d_h_proj, d_bias, dc_prev,
          hidden, batch, j, col);
    };
    over_columns<T>(batch, [&](int64_t col) { block(V{}, std::integral_constant<int, 4>{}, col); },
                    [&](int64_t col) { block(V{}, std::integral_constant<int, 1>{}, col); },
                    [&](int64_t col) { block(T{}, std::integral_constant<int, 1>{}, col); });
  }
}

void check(const at::Tensor& t, const at::Tensor& like, int64_t numel, const char* name) {
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu() && t.scalar_type() == like.scalar_type() &&
              t.numel() == numel, name, ": expected a contiguous CPU tensor of ", numel, " elements");
}

template <typename T> const T* maybe(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

}  // namespace

void cell_forward(const at::Tensor& pre, const at::Tensor& c_prev, const c10::optional<at::Tensor>& mask,
                  at::Tensor& act, at::Tensor& c_out, at::Tensor& tanh_c, at::Tensor& h_out) {
  const int64_t n = c_prev.numel();
  check(pre, act, 4 * n, "pre"); check(c_prev, act, n, "c_prev"); check(act, act, 4 * n, "act");
  check(c_out, act, n, "c_out"); check(tanh_c, act, n, "tanh_c"); check(h_out, act, n, "h_out");
  if (mask.has_value()) check(*mask, act, n, "mask");
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "cell_forward", [&] {
    auto loop = mask.has_value() ? forward_loop<scalar_t, true> : forward_loop<scalar_t, false>;
    loop(pre.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(), maybe<scalar_t>(mask), act.data_ptr<scalar_t>(),
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
    auto loop = mask.has_value() ? backward_loop<scalar_t, true> : backward_loop<scalar_t, false>;
    loop(act.data_ptr<scalar_t>(), tanh_c.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
         dc.data_ptr<scalar_t>(), maybe<scalar_t>(mask), d_pre.data_ptr<scalar_t>(), dc_prev.data_ptr<scalar_t>(), n);
  });
  return dc_prev;
}

void scaled_cell_forward(const at::Tensor& scale, const at::Tensor& z, const at::Tensor& b0,
                         const at::Tensor& h_proj, const at::Tensor& x_proj, const at::Tensor& c_prev,
                         const c10::optional<at::Tensor>& mask, at::Tensor& act, at::Tensor& c_out,
                         at::Tensor& tanh_c, at::Tensor& h_out) {
  TORCH_CHECK(c_prev.dim() == 2 && scale.dim() == 3 && scale.size(0) == 12 && scale.size(1) == c_prev.size(0),
              "scaled_cell_forward: expected c_prev (N, B) and scale (12, N, nz)");
  const int64_t n = c_prev.numel(), hidden = c_prev.size(0), batch = c_prev.size(1), nz = scale.size(2);
  check(scale, act, 12 * hidden * nz, "scale"); check(z, act, 12 * nz * batch, "z"); check(b0, act, 4 * hidden, "b0");
  check(h_proj, act, 4 * n, "h_proj"); check(x_proj, act, 4 * n, "x_proj");
  check(c_prev, act, n, "c_prev"); check(act, act, 4 * n, "act"); check(c_out, act, n, "c_out");
  check(tanh_c, act, n, "tanh_c"); check(h_out, act, n, "h_out");
  if (mask.has_value()) check(*mask, act, n, "mask");
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "scaled_cell_forward", [&] {
    auto loop = mask.has_value() ? scaled_forward_loop<scalar_t, true> : scaled_forward_loop<scalar_t, false>;
    loop(scale.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), b0.data_ptr<scalar_t>(), nz, h_proj.data_ptr<scalar_t>(),
         x_proj.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(), maybe<scalar_t>(mask), act.data_ptr<scalar_t>(),
         c_out.data_ptr<scalar_t>(), tanh_c.data_ptr<scalar_t>(), h_out.data_ptr<scalar_t>(), hidden, batch);
  });
}

at::Tensor scaled_cell_backward(const at::Tensor& act, const at::Tensor& tanh_c, const at::Tensor& c_prev,
                                const at::Tensor& dh, const at::Tensor& dc, const c10::optional<at::Tensor>& mask,
                                const at::Tensor& x_proj, const at::Tensor& h_proj, const at::Tensor& scale,
                                const at::Tensor& z, at::Tensor& dd, at::Tensor& d_x_main, at::Tensor& d_h_proj,
                                at::Tensor& d_bias) {
  TORCH_CHECK(c_prev.dim() == 2 && scale.dim() == 3 && scale.size(0) == 12 && scale.size(1) == c_prev.size(0),
              "scaled_cell_backward: expected c_prev (N, B) and scale (12, N, nz)");
  const int64_t n = c_prev.numel(), hidden = c_prev.size(0), batch = c_prev.size(1), nz = scale.size(2);
  check(act, act, 4 * n, "act"); check(tanh_c, act, n, "tanh_c"); check(c_prev, act, n, "c_prev");
  check(dh, act, n, "dh"); check(dc, act, n, "dc"); check(x_proj, act, 4 * n, "x_proj");
  check(h_proj, act, 4 * n, "h_proj"); check(scale, act, 12 * hidden * nz, "scale");
  check(z, act, 12 * nz * batch, "z"); check(dd, act, 12 * n, "dd"); check(d_x_main, act, 4 * n, "d_x_main");
  check(d_h_proj, act, 4 * n, "d_h_proj"); check(d_bias, act, 4 * hidden, "d_bias");
  if (mask.has_value()) check(*mask, act, n, "mask");
  at::Tensor dc_prev = at::empty_like(dc);
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "scaled_cell_backward", [&] {
    auto loop = mask.has_value() ? scaled_backward_loop<scalar_t, true> : scaled_backward_loop<scalar_t, false>;
    loop(act.data_ptr<scalar_t>(), tanh_c.data_ptr<scalar_t>(), c_prev.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
         dc.data_ptr<scalar_t>(), maybe<scalar_t>(mask), x_proj.data_ptr<scalar_t>(), h_proj.data_ptr<scalar_t>(),
         scale.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), nz, dd.data_ptr<scalar_t>(),
         d_x_main.data_ptr<scalar_t>(), d_h_proj.data_ptr<scalar_t>(), d_bias.data_ptr<scalar_t>(),
         dc_prev.data_ptr<scalar_t>(), hidden, batch);
  });
  return dc_prev;
}

// ---- The whole recurrence: the per-step loops of hyperlstm_fused.py's forward and backward in C++, so that
// no Python runs per step. The same operations in the same order as there (that code is the fallback).

namespace {

// torch's oneDNN matmul, mkldnn::_linear_pointwise (or its "binary" overload), if this build has it: called
// boxed through the dispatcher for float32, as fused_cell.mm and mm_add do from Python; else ATen's.
c10::optional<c10::OperatorHandle> onednn(const char* overload) {
  return c10::Dispatcher::singleton().findOp(c10::OperatorName("mkldnn::_linear_pointwise", overload));
}

at::Tensor product(const at::Tensor& a, const at::Tensor& b) {  // a @ b
  static const auto op = onednn("");
  if (!op || a.scalar_type() != at::kFloat) return at::mm(a, b);
  torch::jit::Stack stack{a, b.t(), c10::IValue(), std::string("none"), c10::List<c10::optional<at::Scalar>>(),
                          std::string("")};
  op->callBoxed(&stack);
  return stack[0].toTensor();
}

at::Tensor product_add(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c) {  // a @ b + c
  static const auto op = onednn("binary");
  if (!op || a.scalar_type() != at::kFloat) return at::addmm(c, a, b);
  torch::jit::Stack stack{a, c, b.t(), c10::IValue(), std::string("add")};
  op->callBoxed(&stack);
  return stack[0].toTensor();
}

c10::optional<at::Tensor> step_of(const c10::optional<at::Tensor>& t, int64_t step) {
  return t.has_value() ? c10::optional<at::Tensor>((*t)[step]) : c10::nullopt;
}

}  // namespace

// HyperLSTMSequence.forward's loop over the buffers (shapes as there); returns the per-step W_h h.
std::vector<at::Tensor> forward_sequence(const at::Tensor& x_proj, const at::Tensor& weight_h_cat,
                                         const at::Tensor& hyper_weight_h, const at::Tensor& weight_z,
                                         const at::Tensor& z_bias, const at::Tensor& scale, const at::Tensor& b0,
                                         const c10::optional<at::Tensor>& masks, at::Tensor& states, at::Tensor& cs,
                                         at::Tensor& hyper_cs, at::Tensor& tanh_c, at::Tensor& acts,
                                         at::Tensor& hyper_tanh_c, at::Tensor& hyper_acts, at::Tensor& zs) {
  const int64_t steps = acts.size(0), hidden = cs.size(1), hyper = hyper_cs.size(1), batch = cs.size(2);
  std::vector<at::Tensor> h_projs;
  h_projs.reserve(steps);
  for (int64_t t = 0; t < steps; ++t) {
    at::Tensor state = states[t], next = states[t + 1], step_x = x_proj[t];
    at::Tensor proj = product(weight_h_cat, state.narrow(0, 0, hidden));  // [W_h h ; Ŵ h]
    h_projs.push_back(proj.narrow(0, 0, 4 * hidden));
    at::Tensor pre = proj.narrow(0, 4 * hidden, 4 * hyper);
    pre.add_(step_x.narrow(0, 4 * hidden, 4 * hyper)).addmm_(hyper_weight_h, state.narrow(0, hidden, hyper));
    at::Tensor hyper_h = next.narrow(0, hidden, hyper), h = next.narrow(0, 0, hidden);
    at::Tensor hyper_act = hyper_acts[t], hyper_c = hyper_cs[t + 1], hyper_tc = hyper_tanh_c[t];
    cell_forward(pre, hyper_cs[t], c10::nullopt, hyper_act, hyper_c, hyper_tc, hyper_h);
    at::Tensor z = zs[t];
    at::addmm_out(z, z_bias, weight_z, hyper_h);
    at::Tensor act = acts[t], c = cs[t + 1], tc = tanh_c[t];
    scaled_cell_forward(scale, z.view({scale.size(0), scale.size(2), batch}), b0, h_projs.back(),
                        step_x.narrow(0, 0, 4 * hidden), cs[t], step_of(masks, t), act, c, tc, h);
  }
  return h_projs;
}

// _Backward.step for steps end - 1 down to begin (d_proj holds the chunk's rows, step t at t - begin);
// returns dL/d(h, c, ĥ, ĉ) before step begin. scale (12, N, nz) and weight_scale (12, nz, N) unscaled.
std::vector<at::Tensor> backward_steps(int64_t begin, int64_t end, at::Tensor& d_proj, at::Tensor dh, at::Tensor dc,
                                       at::Tensor d_hyper_h, at::Tensor d_hyper_c, const at::Tensor& acts,
                                       const at::Tensor& tanh_c, const at::Tensor& cs,
                                       const c10::optional<at::Tensor>& masks, const at::Tensor& x_proj,
                                       const std::vector<at::Tensor>& h_projs, const at::Tensor& scale,
                                       const at::Tensor& weight_scale, const at::Tensor& zs, at::Tensor& d_bias,
                                       at::Tensor& d_zs, at::Tensor& d_scale, const at::Tensor& weight_z,
                                       const at::Tensor& hyper_acts, const at::Tensor& hyper_tanh_c,
                                       const at::Tensor& hyper_cs, const at::Tensor& weight_h_cat_t,
                                       const at::Tensor& hyper_weight_h, const c10::optional<at::Tensor>& d_outputs,
                                       at::Tensor& dd) {
  const int64_t hidden = cs.size(1), hyper = hyper_cs.size(1), batch = cs.size(2);
  const int64_t n_emb = scale.size(0), nz = scale.size(2);
  const at::Tensor weight_z_t = weight_z.t(), hyper_weight_h_t = hyper_weight_h.t();
  at::Tensor dd_rows = dd.view({n_emb, hidden, batch});
  for (int64_t t = end - 1; t >= begin; --t) {
    at::Tensor rows = d_proj[t - begin];
    at::Tensor d_h_proj = rows.narrow(0, 0, 4 * hidden), d_x_hyper = rows.narrow(0, 4 * hidden, 4 * hyper);
    at::Tensor d_x_main = rows.narrow(0, 4 * (hidden + hyper), 4 * hidden), d_bias_t = d_bias[t];
    at::Tensor z = zs[t].view({n_emb, nz, batch}), d_z = d_zs[t];
    dc = scaled_cell_backward(acts[t], tanh_c[t], cs[t], dh, dc, step_of(masks, t), x_proj[t].narrow(0, 0, 4 * hidden),
                              h_projs[t], scale, z, dd, d_x_main, d_h_proj, d_bias_t);
    d_scale.baddbmm_(z, dd_rows.transpose(1, 2));
    at::Tensor d_z_rows = d_z.view({n_emb, nz, batch});
    at::bmm_out(d_z_rows, weight_scale, dd_rows);
    d_hyper_h = at::addmm(d_hyper_h, weight_z_t, d_z);
    d_hyper_c = cell_backward(hyper_acts[t], hyper_tanh_c[t], hyper_cs[t], d_hyper_h, d_hyper_c, c10::nullopt,
                              d_x_hyper);
    at::Tensor to_h = rows.narrow(0, 0, 4 * (hidden + hyper));
    dh = (t == 0 || !d_outputs.has_value()) ? product(weight_h_cat_t, to_h)
                                             : product_add(weight_h_cat_t, to_h, (*d_outputs)[t - 1]);
    d_hyper_h = at::mm(hyper_weight_h_t, d_x_hyper);
  }
  return {dh, dc, d_hyper_h, d_hyper_c};
}
