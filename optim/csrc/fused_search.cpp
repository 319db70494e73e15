// The fused passes of the Adam-preconditioned line searches on CPU. optim/_fused_cpu.py builds
// this file on first use (torch.utils.cpp_extension) and optim/_fused.py calls it.
//
// Per element of tensor i (g the gradient, m and v Adam's moments, p the parameter):
//
//   first_pass:  m <- m + (1 - beta1) (g - m)          v <- beta2 v + (1 - beta2) g^2
//                p <- decays[i] p + (alpha_grad g + alpha_avg m) / (sqrt(v) + eps_hat)
//                and, when asked, the sum over all elements of a b / (sqrt(v) + eps_hat), a and b
//                each g or m (the new moments)
//   move:        p <- p + (alpha_grad g + alpha_avg m) / (sqrt(v) + eps_hat)
//
// One pass reads each tensor once and writes each written tensor once; the direction lives in
// registers only, so a step needs no parameter-sized scratch buffer (a later move recomputes it
// from g, m and v). Arithmetic is in float32 (float64 for float64 tensors); bfloat16 is widened
// to float32 and rounded once, to nearest even, on store. The direction is always computed from
// the moments as stored, so that a move by -alpha after one by +alpha returns to the start up to
// the rounding of p alone (in bfloat16 too).
//
// Speed: the passes are bound by memory bandwidth, so the code is plain loops that GCC
// vectorises, compiled with -O3 for the baseline x86-64 and, through function multi-versioning
// (target_clones, resolved once when the library is loaded), for AVX2 and AVX-512 machines. No
// -march=native: a cluster's shared home holds one build for nodes with different CPUs.
//
// Reductions are deterministic whatever the thread count: each tensor is cut into fixed chunks
// of kChunk elements, a chunk sums its elements in kLanes fixed lanes (float64), and the chunks'
// partial sums are added in order.

// Only the headers needed: torch/extension.h would more than double the compile time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define MULTIVERSIONED __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__linux__) && defined(__clang__)
#define MULTIVERSIONED __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MULTIVERSIONED
#endif

#if defined(__GNUC__)
#define INLINE inline __attribute__((always_inline))
#else
#define INLINE inline
#endif

namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per task of at::parallel_for and per partial sum
constexpr int kLanes = 16;           // independent partial sums within a chunk (vector lanes)

// Which inner product a first pass takes: sum a b / den with (a, b) in {g, m}.
enum Dot : int64_t { kNoDot = 0, kGradGrad = 1, kGradAvg = 2, kAvgAvg = 3 };

// How a stored element widens to the arithmetic type and is rounded back.
template <typename T>
struct Element;

template <>
struct Element<float> {
  using Acc = float;
  static INLINE float load(float x) { return x; }
  static INLINE float store(float x) { return x; }
};

template <>
struct Element<double> {
  using Acc = double;
  static INLINE double load(double x) { return x; }
  static INLINE double store(double x) { return x; }
};

// bfloat16 as its bits: the upper half of a float32.
template <>
struct Element<uint16_t> {
  using Acc = float;
  static INLINE float load(uint16_t x) {
    const uint32_t bits = static_cast<uint32_t>(x) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }
  static INLINE uint16_t store(float value) {  // round to nearest even, as c10::BFloat16 does
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return value != value ? uint16_t{0x7fc0} : static_cast<uint16_t>(rounded);
  }
};

template <typename A>
struct Coefficients {
  A one_minus_beta1, beta2, one_minus_beta2, eps_hat, alpha_grad, alpha_avg, decay;
};

template <typename A>
INLINE A dot_term(int64_t dot, A g, A m, A inv_den) {
  switch (dot) {
    case kGradGrad: return g * g * inv_den;
    case kGradAvg: return g * m * inv_den;
    case kAvgAvg: return m * m * inv_den;
    default: return A(0);
  }
}

// The fixed-order sum of the lanes: pairwise, so that it does not depend on the vector width.
INLINE double sum_lanes(double* lanes) {
  for (int width = kLanes / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  return lanes[0];
}

// One chunk of a first pass; returns its part of the inner product (0 when kDot is kNoDot).
// kTouchParam false: p is neither read nor written (no decay, no move: L4's first pass).
template <typename T, int64_t kDot, bool kTouchParam>
INLINE double first_pass_chunk(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
                               int64_t n, const Coefficients<typename Element<T>::Acc>& c) {
  using A = typename Element<T>::Acc;
  using E = Element<T>;
  auto element = [&](int64_t i) -> A {
    const A gi = E::load(g[i]);
    const A mi_new = E::load(m[i]) + c.one_minus_beta1 * (gi - E::load(m[i]));
    const A vi_new = c.beta2 * E::load(v[i]) + c.one_minus_beta2 * gi * gi;
    m[i] = E::store(mi_new);
    v[i] = E::store(vi_new);
    const A mi = E::load(m[i]);  // as stored: the direction later moves recompute
    const A inv_den = A(1) / (std::sqrt(E::load(v[i])) + c.eps_hat);
    if (kTouchParam) {
      p[i] = E::store(c.decay * E::load(p[i]) + (c.alpha_grad * gi + c.alpha_avg * mi) * inv_den);
    }
    return dot_term<A>(kDot, gi, mi, inv_den);
  };
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const A term = element(i + l);
      if (kDot != kNoDot) lanes[l] += static_cast<double>(term);
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const A term = element(i);
    if (kDot != kNoDot) lanes[l] += static_cast<double>(term);
  }
  return kDot == kNoDot ? 0.0 : sum_lanes(lanes);
}

template <typename T, bool kGrad, bool kAvg>
INLINE void move_chunk(T* __restrict p, const T* __restrict g, const T* __restrict m, const T* __restrict v,
                       int64_t n, const Coefficients<typename Element<T>::Acc>& c) {
  using A = typename Element<T>::Acc;
  using E = Element<T>;
  for (int64_t i = 0; i < n; ++i) {
    const A inv_den = A(1) / (std::sqrt(E::load(v[i])) + c.eps_hat);
    A numerator = A(0);
    if (kGrad) numerator += c.alpha_grad * E::load(g[i]);
    if (kAvg) numerator += c.alpha_avg * E::load(m[i]);
    p[i] = E::store(E::load(p[i]) + numerator * inv_den);
  }
}

template <typename T>
INLINE double first_pass_variant(T* p, const T* g, T* m, T* v, int64_t n,
                                 const Coefficients<typename Element<T>::Acc>& c, int64_t dot, bool touch) {
#define FUSED_SEARCH_DOT_CASE(DOT)                                                          \
  case DOT:                                                                                 \
    return touch ? first_pass_chunk<T, DOT, true>(p, g, m, v, n, c)                         \
                 : first_pass_chunk<T, DOT, false>(p, g, m, v, n, c);
  switch (dot) {
    FUSED_SEARCH_DOT_CASE(kGradGrad)
    FUSED_SEARCH_DOT_CASE(kGradAvg)
    FUSED_SEARCH_DOT_CASE(kAvgAvg)
    default:
      return touch ? first_pass_chunk<T, kNoDot, true>(p, g, m, v, n, c)
                   : first_pass_chunk<T, kNoDot, false>(p, g, m, v, n, c);
  }
#undef FUSED_SEARCH_DOT_CASE
}

template <typename T>
INLINE void move_variant(T* p, const T* g, const T* m, const T* v, int64_t n,
                         const Coefficients<typename Element<T>::Acc>& c) {
  if (c.alpha_grad != 0 && c.alpha_avg != 0) {
    move_chunk<T, true, true>(p, g, m, v, n, c);
  } else if (c.alpha_grad != 0) {
    move_chunk<T, true, false>(p, g, m, v, n, c);
  } else if (c.alpha_avg != 0) {
    move_chunk<T, false, true>(p, g, m, v, n, c);
  }
}

// The entry points that are compiled once per instruction set (MULTIVERSIONED): one per dtype,
// each holding every variant inlined, and a table from the element type to them.
template <typename T>
struct Chunks;

#define FUSED_SEARCH_ENTRIES(T, SUFFIX)                                                            \
  MULTIVERSIONED double first_pass_##SUFFIX(T* p, const T* g, T* m, T* v, int64_t n,              \
                                             const Coefficients<Element<T>::Acc>& c, int64_t dot, \
                                             bool touch) {                                          \
    return first_pass_variant<T>(p, g, m, v, n, c, dot, touch);                                    \
  }                                                                                                \
  MULTIVERSIONED void move_##SUFFIX(T* p, const T* g, const T* m, const T* v, int64_t n,           \
                                    const Coefficients<Element<T>::Acc>& c) {                     \
    move_variant<T>(p, g, m, v, n, c);                                                             \
  }                                                                                                \
  template <>                                                                                      \
  struct Chunks<T> {                                                                               \
    static double first_pass(T* p, const T* g, T* m, T* v, int64_t n,                              \
                             const Coefficients<Element<T>::Acc>& c, int64_t dot, bool touch) {   \
      return first_pass_##SUFFIX(p, g, m, v, n, c, dot, touch);                                    \
    }                                                                                              \
    static void move(T* p, const T* g, const T* m, const T* v, int64_t n,                          \
                     const Coefficients<Element<T>::Acc>& c) {                                     \
      move_##SUFFIX(p, g, m, v, n, c);                                                             \
    }                                                                                              \
  };

FUSED_SEARCH_ENTRIES(float, f32)
FUSED_SEARCH_ENTRIES(double, f64)
FUSED_SEARCH_ENTRIES(uint16_t, bf16)
#undef FUSED_SEARCH_ENTRIES

// Sum of chunk(begin, length) over the fixed chunks of [0, n), the chunks spread over torch's
// intra-op threads and their results added in chunk order (deterministic for any thread count).
template <typename F>
double over_chunks(int64_t n, const F& chunk) {
  const int64_t count = (n + kChunk - 1) / kChunk;
  if (count <= 1) return n > 0 ? chunk(0, n) : 0.0;
  std::vector<double> partial(count);
  at::parallel_for(0, count, 1, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) partial[k] = chunk(k * kChunk, std::min(kChunk, n - k * kChunk));
  });
  double total = 0.0;
  for (double value : partial) total += value;
  return total;
}

// The four tensors of one parameter as flat arrays of one layout: the tensors themselves when
// they are dense with the parameter's strides (the usual case), else contiguous copies that
// write_back() copies into the tensors written.
struct Operands {
  at::Tensor p, g, m, v;
  bool copied;

  Operands(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
           const at::Tensor& exp_avg_sq, const at::Tensor& first) {
    for (const at::Tensor* t : {&param, &grad, &exp_avg, &exp_avg_sq}) {
      TORCH_CHECK(t->device().is_cpu(), "optim fused CPU kernel: a tensor on ", t->device(), ", not the CPU");
      TORCH_CHECK(t->scalar_type() == first.scalar_type(), "optim fused CPU kernel: tensors of dtypes ",
                  t->scalar_type(), " and ", first.scalar_type(), " in one call (group them by dtype)");
      TORCH_CHECK(t->sizes() == param.sizes(), "optim fused CPU kernel: shapes ", t->sizes(), " and ",
                  param.sizes(), " of one parameter's tensors differ");
    }
    const bool dense = param.is_non_overlapping_and_dense() && grad.strides() == param.strides() &&
                       exp_avg.strides() == param.strides() && exp_avg_sq.strides() == param.strides();
    copied = !dense;
    p = dense ? param : param.contiguous();
    g = dense ? grad : grad.contiguous();
    m = dense ? exp_avg : exp_avg.contiguous();
    v = dense ? exp_avg_sq : exp_avg_sq.contiguous();
  }

  template <typename T>
  T* data(at::Tensor& t) const { return static_cast<T*>(t.data_ptr()); }
};

template <typename T>
double run_first_pass(std::vector<at::Tensor>& params, std::vector<at::Tensor>& grads,
                      std::vector<at::Tensor>& exp_avgs, std::vector<at::Tensor>& exp_avg_sqs,
                      const std::vector<double>& decays, double beta1, double beta2, double eps_hat,
                      double alpha_grad, double alpha_avg, int64_t dot) {
  using A = typename Element<T>::Acc;
  double total = 0.0;
  for (size_t i = 0; i < params.size(); ++i) {
    Operands o(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], params[0]);
    const bool touch = decays[i] != 1.0 || alpha_grad != 0.0 || alpha_avg != 0.0;
    const Coefficients<A> c{A(1.0 - beta1), A(beta2), A(1.0 - beta2), A(eps_hat),
                            A(alpha_grad), A(alpha_avg), A(decays[i])};
    T* p = o.data<T>(o.p);
    const T* g = o.data<T>(o.g);
    T* m = o.data<T>(o.m);
    T* v = o.data<T>(o.v);
    total += over_chunks(o.p.numel(), [&](int64_t begin, int64_t length) {
      return Chunks<T>::first_pass(p + begin, g + begin, m + begin, v + begin, length, c, dot, touch);
    });
    if (o.copied) {
      if (touch) params[i].copy_(o.p);
      exp_avgs[i].copy_(o.m);
      exp_avg_sqs[i].copy_(o.v);
    }
  }
  return total;
}

template <typename T>
void run_move(std::vector<at::Tensor>& params, std::vector<at::Tensor>& grads, std::vector<at::Tensor>& exp_avgs,
              std::vector<at::Tensor>& exp_avg_sqs, double eps_hat, double alpha_grad, double alpha_avg) {
  using A = typename Element<T>::Acc;
  const Coefficients<A> c{A(0), A(0), A(0), A(eps_hat), A(alpha_grad), A(alpha_avg), A(1)};
  for (size_t i = 0; i < params.size(); ++i) {
    Operands o(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], params[0]);
    T* p = o.data<T>(o.p);
    const T* g = o.data<T>(o.g);
    const T* m = o.data<T>(o.m);
    const T* v = o.data<T>(o.v);
    over_chunks(o.p.numel(), [&](int64_t begin, int64_t length) {
      Chunks<T>::move(p + begin, g + begin, m + begin, v + begin, length, c);
      return 0.0;
    });
    if (o.copied) params[i].copy_(o.p);
  }
}

void check_lists(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                 const std::vector<at::Tensor>& exp_avgs, const std::vector<at::Tensor>& exp_avg_sqs) {
  TORCH_CHECK(grads.size() == params.size() && exp_avgs.size() == params.size() &&
                  exp_avg_sqs.size() == params.size(),
              "optim fused CPU kernel: lists of ", params.size(), " params, ", grads.size(), " grads, ",
              exp_avgs.size(), " exp_avgs and ", exp_avg_sqs.size(), " exp_avg_sqs");
}

// The element type a dtype is computed through, or an error naming the dtypes supported.
#define FUSED_SEARCH_DISPATCH(DTYPE, CALL)                                                        \
  switch (DTYPE) {                                                                                \
    case at::kFloat: { using T = float; CALL; break; }                                            \
    case at::kDouble: { using T = double; CALL; break; }                                          \
    case at::kBFloat16: { using T = uint16_t; CALL; break; }                                      \
    default:                                                                                      \
      TORCH_CHECK(false, "optim fused CPU kernel: dtype ", DTYPE,                                 \
                  " is not supported (float32, float64, bfloat16)");                              \
  }

}  // namespace

// See the top of this file; dot: kNoDot, kGradGrad, kGradAvg or kAvgAvg. Returns the inner
// product as a 0-d float32 tensor (float64 for float64 tensors), or an undefined tensor (None in
// Python) without one.
at::Tensor first_pass(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                      std::vector<at::Tensor> exp_avgs, std::vector<at::Tensor> exp_avg_sqs,
                      std::vector<double> decays, double beta1, double beta2, double eps_hat,
                      double alpha_grad, double alpha_avg, int64_t dot) {
  check_lists(params, grads, exp_avgs, exp_avg_sqs);
  TORCH_CHECK(decays.size() == params.size(), "optim fused CPU kernel: ", decays.size(),
              " decays for ", params.size(), " params");
  TORCH_CHECK(dot >= kNoDot && dot <= kAvgAvg, "optim fused CPU kernel: unknown inner product ", dot);
  const at::ScalarType dtype = params.empty() ? at::kFloat : params[0].scalar_type();
  double total = 0.0;
  if (!params.empty()) {
    c10::AutoGradMode no_grad(false);  // copy_ into parameters that require grad
    FUSED_SEARCH_DISPATCH(dtype, total = run_first_pass<T>(params, grads, exp_avgs, exp_avg_sqs, decays, beta1,
                                                           beta2, eps_hat, alpha_grad, alpha_avg, dot))
  }
  if (dot == kNoDot) return at::Tensor();
  return at::scalar_tensor(total, at::TensorOptions().dtype(dtype == at::kDouble ? at::kDouble : at::kFloat));
}

void move(std::vector<at::Tensor> params, std::vector<at::Tensor> grads, std::vector<at::Tensor> exp_avgs,
          std::vector<at::Tensor> exp_avg_sqs, double eps_hat, double alpha_grad, double alpha_avg) {
  check_lists(params, grads, exp_avgs, exp_avg_sqs);
  if (params.empty() || (alpha_grad == 0.0 && alpha_avg == 0.0)) return;
  c10::AutoGradMode no_grad(false);  // copy_ into parameters that require grad
  FUSED_SEARCH_DISPATCH(params[0].scalar_type(),
                        run_move<T>(params, grads, exp_avgs, exp_avg_sqs, eps_hat, alpha_grad, alpha_avg))
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("first_pass", &first_pass, "Moments, decay, move and inner product in one pass",
             py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
             py::arg("decays"), py::arg("beta1"), py::arg("beta2"), py::arg("eps_hat"),
             py::arg("alpha_grad"), py::arg("alpha_avg"), py::arg("dot"));
  module.def("move", &move, "p <- p + (alpha_grad g + alpha_avg m) / (sqrt(v) + eps_hat)", py::arg("params"),
             py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("eps_hat"),
             py::arg("alpha_grad"), py::arg("alpha_avg"));
}
