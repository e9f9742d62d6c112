// What the compiled loops (lstm_loop.cpp, gru_loop.cpp, slstm_loop.cpp, min_scan.cpp) share: time
// bookkeeping, restarts, row blocks, and the vectorised row operations (activations, reductions,
// layer norm and its backward).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

namespace gatedrnn_cpu {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Step t's slots in the state buffers.
struct Slots {
  int64_t T;
  bool reverse;
  int64_t step(int64_t k) const { return reverse ? T - 1 - k : k; }  // k-th step of the forward pass
  int64_t prev(int64_t t) const { return reverse ? t + 1 : t; }
  int64_t next(int64_t t) const { return reverse ? t : t + 1; }
};

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
T* ptr(const Tensor& t) { return t.data_ptr<T>(); }

template <typename T>
T* ptr(const OptTensor& t) { return t.has_value() ? t->data_ptr<T>() : nullptr; }

inline OptTensor contiguous(const OptTensor& t) {
  return t.has_value() && t->defined() ? OptTensor(t->contiguous()) : std::nullopt;
}

template <typename T>
void sigmoid_inplace(T* x, int64_t n) {
  at::vec::map([](Vec<T> v) { return Vec<T>(T(1)) / (Vec<T>(T(1)) + v.neg().exp()); }, x, x, n);
}

template <typename T>
void tanh_inplace(T* x, int64_t n) {
  at::vec::map([](Vec<T> v) { return v.tanh(); }, x, x, n);
}

template <typename T>
T sum(const T* x, int64_t n) {
  return at::vec::reduce_all<T>([](Vec<T> a, Vec<T> b) { return a + b; }, x, n);
}

template <typename T>
T dot(const T* x, const T* y, int64_t n) {
  return at::vec::map2_reduce_all<T>([](Vec<T> a, Vec<T> b) { return a * b; },
                                     [](Vec<T> a, Vec<T> b) { return a + b; }, x, y, n);
}

// acc += x * y, element-wise.
template <typename T>
void accumulate_product(T* acc, const T* x, const T* y, int64_t n) {
  at::vec::map3([](Vec<T> a, Vec<T> u, Vec<T> v) { return a + u * v; }, acc, acc, x, y, n);
}

// Layer norm statistics of one H-unit row, (mean, 1 / sqrt(var + eps)), var the biased variance.
template <typename T>
std::pair<T, T> moments(const T* x, int64_t n, double eps) {
  const T mean = sum(x, n) / T(n);
  const T var = at::vec::map_reduce_all<T>(
                    [mean](Vec<T> v) { auto d = v - Vec<T>(mean); return d * d; },
                    [](Vec<T> a, Vec<T> b) { return a + b; }, x, n) / T(n);
  return {mean, T(1) / std::sqrt(var + T(eps))};
}

// Backward of a layer norm without gain, for one row: from the gradient ``grad`` at the
// normalised values ``normed``, writes rstd (grad - mean(grad) - normed mean(grad normed)) to out.
template <typename T>
void norm_backward(T* out, const T* grad, const T* normed, T rstd, int64_t n) {
  const T m1 = sum(grad, n) / T(n), m2 = dot(grad, normed, n) / T(n);
  at::vec::map2([=](Vec<T> d, Vec<T> x) { return Vec<T>(rstd) * (d - Vec<T>(m1) - x * Vec<T>(m2)); },
                out, grad, normed, n);
}

// Writes the normalised row (x - mean) / sigma to out; returns (mean, 1 / sigma).
template <typename T>
std::pair<T, T> normalise(T* out, const T* x, int64_t n, double eps) {
  const auto [mean, rs] = moments(x, n, eps);
  at::vec::map([m = mean, r = rs](Vec<T> v) { return (v - Vec<T>(m)) * Vec<T>(r); }, out, x, n);
  return {mean, rs};
}

// Writes the layer norm ((x - mean) / sigma) gain + shift to out; returns (mean, 1 / sigma).
template <typename T>
std::pair<T, T> normalise_affine(T* out, const T* x, const T* gain, const T* shift, int64_t n, double eps) {
  const auto [mean, rs] = moments(x, n, eps);
  at::vec::map3([m = mean, r = rs](Vec<T> v, Vec<T> g, Vec<T> b) { return (v - Vec<T>(m)) * Vec<T>(r) * g + b; },
                out, x, gain, shift, n);
  return {mean, rs};
}

// Backward of y = normed * gain (+ shift) for one row, normed = (x - mean) rstd: from ``grad`` at
// y adds grad * normed to d_gain and grad to d_shift (when given), and writes the gradient at x
// to dx (which may be grad itself). ``scaled`` is an n-long scratch row.
template <typename T>
void affine_norm_backward(T* dx, const T* grad, const T* normed, T rstd, const T* gain, T* d_gain, T* d_shift,
                          T* scaled, int64_t n) {
  accumulate_product(d_gain, grad, normed, n);
  if (d_shift != nullptr) at::vec::map2([](Vec<T> acc, Vec<T> g) { return acc + g; }, d_shift, d_shift, grad, n);
  at::vec::map2([](Vec<T> g, Vec<T> gn) { return g * gn; }, scaled, grad, gain, n);
  norm_backward(dx, scaled, normed, rstd, n);
}

// Steps grouped in chunks of ``size`` consecutive time indices [first, first + length), visited by
// the backward pass in its order (descending t, or ascending in reverse): a step's slot in a
// chunk-sized buffer, and whether it is the last step of its chunk that the pass visits.
struct Chunks {
  int64_t size, T;
  bool reverse;
  int64_t slot(int64_t t) const { return t % size; }
  int64_t first(int64_t t) const { return t - t % size; }
  int64_t length(int64_t t) const { return std::min(first(t) + size, T) - first(t); }
  bool completes(int64_t t) const { return reverse ? t == first(t) + length(t) - 1 : t == first(t); }
};

// Views for the steps' ATen calls without ATen's view bookkeeping. select and narrow cost about
// 1.3 us each, even in no-grad mode (autograd's view metadata), and a step made a dozen: at H = 16
// that was most of the compiled LSTM's 9 us per step, against torch.nn.LSTM's 1.5. The operands
// here never reach autograd and their tensors outlive them, so a contiguous tensor's part is made
// with from_blob (0.3 us) over its memory; any other layout takes the ATen view.
inline Tensor part(const Tensor& x, int64_t first, int64_t count, bool keep_dim) {
  const int64_t inner = x.size(0) == 0 ? 0 : x.numel() / x.size(0);
  std::vector<int64_t> sizes(x.sizes().begin() + (keep_dim ? 0 : 1), x.sizes().end());
  if (keep_dim) sizes[0] = count;
  return at::from_blob(static_cast<char*>(x.data_ptr()) + first * inner * x.element_size(), sizes, x.options());
}

// Set at the top of every op: its products write into out= buffers, which autograd refuses when
// an argument requires grad and grad mode is on. Eagerly the ops run inside the backend's
// autograd.Function (grad mode off), but an exported or compiled graph calls them directly, with
// the parameters requiring grad; the ops compute no gradients of their own either way.
struct NoAutograd {
  at::NoGradGuard no_grad;
  at::AutoDispatchBelowADInplaceOrView below_autograd;
};

// W^T as the right operand of the steps' products. A contiguous copy makes a step's product
// faster at most sizes, but the copy costs about as much as a few tens of steps' worth of that
// gain, so a short call (a stream fed a few steps at a time) multiplies by the transposed view
// instead (BENCHMARKS.md, the loops' per-step overhead).
constexpr int64_t kCopyTransposeFrom = 32;
inline Tensor product_operand(const Tensor& w, int64_t steps) {
  return steps >= kCopyTransposeFrom ? w.t().contiguous() : w.t();
}

// The per-step masks' leading sizes, checked at op entry: the steps index them by t and by batch
// row through part(), which has no bounds checks of its own.
inline void check_step_mask(const OptTensor& mask, const char* name, int64_t T, int64_t B) {
  TORCH_CHECK(!mask || (mask->dim() >= 2 && mask->size(0) == T && (mask->size(1) == B || mask->size(1) == 1)),
              "gatedrnn: ", name, " must be (T=", T, ", B=", B, " or 1, ...), got ", mask->sizes());
}
inline void check_row_mask(const OptTensor& mask, const char* name, int64_t B) {
  TORCH_CHECK(!mask || (mask->dim() == 2 && (mask->size(0) == B || mask->size(0) == 1)),
              "gatedrnn: ", name, " must be (B=", B, " or 1, size), got ", mask->sizes());
}
// Every mask an op takes (the GRU has no keep_c or active: nullopt).
inline void check_masks(const OptTensor& keep_h, const OptTensor& keep_c, const OptTensor& active,
                        const OptTensor& rec_mask, int64_t T, int64_t B) {
  check_step_mask(keep_h, "keep_h", T, B), check_step_mask(keep_c, "keep_c", T, B);
  check_step_mask(active, "active", T, B), check_row_mask(rec_mask, "recurrent_mask", B);
}

// Whether row b is active at step t under an ``active`` mask (T, B, 1) of 1 and 0 (all rows
// without one).
inline bool row_active(const OptTensor& active, int64_t t, int64_t B, int64_t b) {
  if (!active) return true;
  const Tensor& a = *active;
  return a.scalar_type() == at::kDouble ? a.data_ptr<double>()[t * B + b] != 0
                                        : a.data_ptr<float>()[t * B + b] != 0;
}

// The restarts of a call (the layer's ``reset``, in the order the pass walks): a (T, B) bool
// mask, true where row b's carry (every state, and whatever else the cell carries) is zeroed
// just before step t. Zeroing is a select (masked_fill), so an infinite or NaN carry becomes 0;
// backward, the gradient reaching the carry before such a step is zeroed on those rows. A step
// that restarts no row runs as without a mask, and without one nothing is checked per step.
class Restarts {
 public:
  Restarts(const OptTensor& mask, int64_t T, int64_t B) : B_(B) {
    TORCH_CHECK(!mask || (mask->scalar_type() == at::kBool && mask->dim() == 2 && mask->size(0) == T &&
                          mask->size(1) == B),
                "gatedrnn: restart must be a (T=", T, ", B=", B, ") bool tensor, got ", mask->scalar_type(), " ",
                mask->sizes());
    if (mask) {
      mask_ = mask->contiguous();
      data_ = mask_.data_ptr<bool>();
    }
  }
  bool present() const { return data_ != nullptr; }
  bool row(int64_t t, int64_t b) const { return data_ != nullptr && data_[t * B_ + b]; }
  // Whether step t restarts any row.
  bool any(int64_t t) const {
    return data_ != nullptr && std::any_of(data_ + t * B_, data_ + (t + 1) * B_, [](bool v) { return v; });
  }
  // Zeroes, in place, the rows of ``value`` (B, ...) that step t restarts.
  void zero(Tensor& value, int64_t t) const {
    if (any(t)) value.masked_fill_(at_step(t), 0);
  }
  // The carry before step t as the step reads it: ``slot`` itself, or where the step restarts a
  // row, ``scratch`` (shaped like it) holding it with those rows zeroed.
  Tensor entering(const Tensor& slot, Tensor& scratch, int64_t t) const {
    if (!any(t)) return slot;
    scratch.copy_(slot);
    scratch.masked_fill_(at_step(t), 0);
    return scratch;
  }
  // The carried values before every step (T, B, ...) as the steps read them.
  Tensor carried(const Tensor& before) const {
    if (!present()) return before;
    std::vector<int64_t> shape(before.dim(), 1);
    shape[0] = mask_.size(0), shape[1] = B_;
    return before.masked_fill(mask_.view(shape), 0);
  }
  // Step t's rows as a (B, 1) bool mask.
  Tensor at_step(int64_t t) const { return part(mask_, t, 1, false).unsqueeze(1); }
  // Steps [first, first + count) as a (count, B, 1) bool mask.
  Tensor steps(int64_t first, int64_t count) const { return mask_.narrow(0, first, count).unsqueeze(-1); }

 private:
  Tensor mask_;
  const bool* data_ = nullptr;
  int64_t B_;
};

// x[t], for a (T, ...) tensor.
inline Tensor step_of(const Tensor& x, int64_t t) {
  return x.is_contiguous() ? part(x, t, 1, false) : x.select(0, t);
}

// Rows [begin, end) of a (B, ...) tensor; a broadcast (1, ...) one as it is.
struct Rows {
  int64_t begin, end;
  Tensor operator()(const Tensor& x) const {
    if (x.size(0) == 1) return x;
    return x.is_contiguous() ? part(x, begin, end - begin, true) : x.narrow(0, begin, end - begin);
  }
};

// Batch rows per task of a step's parallel region: whole blocks of rows, so that each thread's
// matrix product has a few rows (one thread's product of 16 rows takes about half the time of
// 32 rows, better than a two-thread product of 32), and tiny layers stay on one thread.
inline int64_t row_grain(int64_t row_size) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(row_size, 1)); }

// at::parallel_for over [0, B) in blocks of ``grain`` rows, each worker thread running its block
// under ``state``, the calling thread's thread-local state (taken once per op). The tasks call
// ATen ops (the products, the blends), and an OpenMP worker's own state has grad mode on and
// none of the caller's dispatch settings: an out= product of a weight that requires grad, in
// the backward pass, would raise there. The calling thread (number 0) runs under its own.
template <typename F>
void parallel_rows(const at::ThreadLocalState& state, int64_t B, int64_t grain, const F& f) {
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    if (at::get_thread_num() == 0) {
      f(begin, end);
    } else {
      at::ThreadLocalStateGuard guard(state);
      f(begin, end);
    }
  });
}

// A 1-d tensor with v's values (a thread's parameter-gradient sums, for instance).
template <typename T>
Tensor to_tensor(const std::vector<T>& v, const at::TensorOptions& opts) {
  Tensor out = at::empty({static_cast<int64_t>(v.size())}, opts);
  std::copy(v.begin(), v.end(), out.data_ptr<T>());
  return out;
}

}  // namespace gatedrnn_cpu
