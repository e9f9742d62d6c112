// The minimal cells' recurrence h_t = a_t h_{t-1} + b_t, forward and backward through time,
// compiled: the layer kernel of gatedrnn/backends/cpu/minimal.py (whose docstring has the
// equations and the gradients). One call runs a layer and direction over the input projection
// xp (T, B, G*H): every (row, block of units) is independent of the others, so each task of one
// parallel region walks all T steps of its own units, one vectorised pass per step, with no
// synchronisation between steps.
//
// Kinds: 0 minGRU (blocks z, n: a = 1 - z, b = z h~), 1 minLSTM (blocks f, i, n:
// a = f / (f + i), b = i / (f + i) h~, from log-sigmoids so that it neither overflows nor divides
// 0 by 0). h~ = g(n) (``g_activation``: n + 1/2 for n >= 0, sigmoid(n) below) or n itself.
//
// A restart (``restart`` (T, B) bool, where given: the layer's reset mask) zeroes row b's state
// just before step t, so that h_t = b_t: the step reads h_{t-1} = 0 (a select: an infinite state
// becomes 0 too), its a_t has no gradient, and nothing flows back to the steps before.

#include "common.h"

namespace {

using namespace gatedrnn_cpu;

constexpr int64_t kUnitBlock = 64;  // units per task: a few vectors, tasks enough for two threads at B = 1

template <typename T>
Vec<T> sigmoid(Vec<T> v) {
  return Vec<T>(T(1)) / (Vec<T>(T(1)) + v.neg().exp());
}

// log sigmoid(v) = min(v, 0) - log1p(exp(-|v|)), finite for every finite v.
template <typename T>
Vec<T> log_sigmoid(Vec<T> v) {
  return at::vec::minimum(v, Vec<T>(T(0))) - v.abs().neg().exp().log1p();
}

// h~ and its derivative at n.
template <typename T>
std::pair<Vec<T>, Vec<T>> candidate(Vec<T> n, bool g_activation) {
  if (!g_activation) return {n, Vec<T>(T(1))};
  const Vec<T> s = sigmoid(n);
  const Vec<T> positive = n >= Vec<T>(T(0));  // all-ones lanes where n >= 0
  return {Vec<T>::blendv(s, n + Vec<T>(T(0.5)), positive), Vec<T>::blendv(s * (Vec<T>(T(1)) - s), Vec<T>(T(1)), positive)};
}

// The step's coefficients and what the backward pass needs of them, from one row of xp.
template <typename T>
struct Coefficients {
  Vec<T> a, b;                     // h_t = a h_{t-1} + b
  Vec<T> c, dc;                    // h~ and dh~/dn
  Vec<T> gate, d_first, d_second;  // b = gate h~; d(a, gate)/d(first, second block) (see below)
};

// The coefficients at units [j, j + count) of one xp row (blocks of H). For the backward pass,
// with D = g (h~ - h_{t-1}) (the gradient at the gate's share):
//   minGRU:  d first = z (1 - z) D = d_first D, no second gate block;
//   minLSTM: with f' i' = sigma(d) sigma(-d), d first = -sigma(-f) f' i' D, d second = sigma(-i) f' i' D.
template <typename T>
Coefficients<T> coefficients(const T* row, int64_t j, int64_t H, int kind, bool g_activation, int64_t count) {
  Coefficients<T> k;
  if (kind == 0) {
    const Vec<T> zr = Vec<T>::loadu(row + j, count), nr = Vec<T>::loadu(row + H + j, count);
    const Vec<T> z = sigmoid(zr);
    std::tie(k.c, k.dc) = candidate(nr, g_activation);
    k.a = sigmoid(zr.neg());
    k.gate = z;
    k.d_first = z * k.a;
    k.d_second = Vec<T>(T(0));
  } else {
    const Vec<T> fr = Vec<T>::loadu(row + j, count), ir = Vec<T>::loadu(row + H + j, count);
    const Vec<T> nr = Vec<T>::loadu(row + 2 * H + j, count);
    const Vec<T> d = log_sigmoid(ir) - log_sigmoid(fr);
    std::tie(k.c, k.dc) = candidate(nr, g_activation);
    k.a = sigmoid(d.neg());
    k.gate = sigmoid(d);
    const Vec<T> both = k.a * k.gate;
    k.d_first = sigmoid(fr.neg()).neg() * both;
    k.d_second = sigmoid(ir.neg()) * both;
  }
  k.b = k.gate * k.c;
  return k;
}

struct Shape {
  int64_t T, B, H, GH;
  bool reverse;
  int64_t step(int64_t k) const { return reverse ? T - 1 - k : k; }  // the k-th step the forward pass takes
  int64_t prev(int64_t t) const { return reverse ? t + 1 : t - 1; }
};

// One vector of units [j, j + count) of batch row b, and its slot in a task's carry buffer.
struct Lane {
  int64_t b, j, count, slot;
};

// Splits the B rows' units into lanes (vectors within blocks of kUnitBlock units), gives each
// task a contiguous range of blocks, and runs f(lanes) once per task: the task then walks all T
// steps over its lanes, reading and writing one contiguous stretch of each (T, B, .) tensor per
// step, with no synchronisation between steps.
template <typename T, typename F>
void for_each_task(int64_t B, int64_t H, const F& f) {
  const int64_t blocks = (H + kUnitBlock - 1) / kUnitBlock;
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<Lane> lanes;
    int64_t slot = 0;
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / blocks, j0 = (u % blocks) * kUnitBlock, stop = std::min(j0 + kUnitBlock, H);
      for (int64_t j = j0; j < stop; j += Vec<T>::size(), slot += Vec<T>::size()) {
        lanes.push_back({b, j, std::min<int64_t>(Vec<T>::size(), stop - j), slot});
      }
    }
    f(lanes, slot);
  });
}

template <typename T>
void forward_impl(const Shape& s, const T* xp, const T* h0, const int64_t* lengths, const bool* restart, int kind,
                  bool g_activation, T* out, T* h_n) {
  for_each_task<T>(s.B, s.H, [&](const std::vector<Lane>& lanes, int64_t width) {
    std::vector<T> carry(width);  // h_{t-1} of every lane
    for (const Lane& l : lanes) Vec<T>::loadu(h0 + l.b * s.H + l.j, l.count).store(carry.data() + l.slot, l.count);
    for (int64_t k = 0; k < s.T; ++k) {
      const int64_t t = s.step(k);
      for (const Lane& l : lanes) {
        T* o = out + (t * s.B + l.b) * s.H + l.j;
        if (lengths != nullptr && t >= lengths[l.b]) {  // inactive: keeps the state, outputs zeros
          Vec<T>(T(0)).store(o, l.count);
          continue;
        }
        const auto c = coefficients<T>(xp + (t * s.B + l.b) * s.GH, l.j, s.H, kind, g_activation, l.count);
        if (restart != nullptr && restart[t * s.B + l.b]) Vec<T>(T(0)).store(carry.data() + l.slot, l.count);
        const Vec<T> h = c.a * Vec<T>::loadu(carry.data() + l.slot, l.count) + c.b;
        h.store(o, l.count);
        h.store(carry.data() + l.slot, l.count);
      }
    }
    for (const Lane& l : lanes) Vec<T>::loadu(carry.data() + l.slot, l.count).store(h_n + l.b * s.H + l.j, l.count);
  });
}

template <typename T>
void backward_impl(const Shape& s, const T* xp, const T* out, const T* h0, const T* d_out, const T* d_hn,
                   const int64_t* lengths, const bool* restart, int kind, bool g_activation, T* d_xp, T* d_h0) {
  const int64_t G = s.GH / s.H;
  for_each_task<T>(s.B, s.H, [&](const std::vector<Lane>& lanes, int64_t width) {
    std::vector<T> carry(width);  // dL/dh_t carried from the later steps, starting with dL/dh_n
    for (const Lane& l : lanes) Vec<T>::loadu(d_hn + l.b * s.H + l.j, l.count).store(carry.data() + l.slot, l.count);
    for (int64_t k = s.T - 1; k >= 0; --k) {
      const int64_t t = s.step(k), p = s.prev(t);
      for (const Lane& l : lanes) {
        T* d_row = d_xp + (t * s.B + l.b) * s.GH;
        const int64_t length = lengths == nullptr ? s.T : lengths[l.b];
        if (t >= length) {  // inactive: a = 1, b = 0, a constant output
          for (int64_t q = 0; q < G; ++q) Vec<T>(T(0)).store(d_row + q * s.H + l.j, l.count);
          continue;
        }
        const auto c = coefficients<T>(xp + (t * s.B + l.b) * s.GH, l.j, s.H, kind, g_activation, l.count);
        const bool restarts = restart != nullptr && restart[t * s.B + l.b];
        // h_{t-1}: zero on a restart, else the previous step's output where it was active, else h0
        const T* h_prev = p >= 0 && p < length ? out + (p * s.B + l.b) * s.H : h0 + l.b * s.H;
        const Vec<T> hp = restarts ? Vec<T>(T(0)) : Vec<T>::loadu(h_prev + l.j, l.count);
        const Vec<T> g = Vec<T>::loadu(carry.data() + l.slot, l.count) +
                         Vec<T>::loadu(d_out + (t * s.B + l.b) * s.H + l.j, l.count);
        const Vec<T> D = g * (c.c - hp);
        (c.d_first * D).store(d_row + l.j, l.count);
        if (kind == 1) (c.d_second * D).store(d_row + s.H + l.j, l.count);
        (g * c.gate * c.dc).store(d_row + (G - 1) * s.H + l.j, l.count);
        (restarts ? Vec<T>(T(0)) : c.a * g).store(carry.data() + l.slot, l.count);
      }
    }
    for (const Lane& l : lanes) Vec<T>::loadu(carry.data() + l.slot, l.count).store(d_h0 + l.b * s.H + l.j, l.count);
  });
}

int gates_of(int64_t kind) {
  TORCH_CHECK(kind == 0 || kind == 1, "gatedrnn: min_scan kind must be 0 (minGRU) or 1 (minLSTM), got ", kind);
  return kind == 0 ? 2 : 3;
}

Shape check_shapes(const Tensor& xp, const Tensor& h0, const OptTensor& lengths, const OptTensor& restart,
                   int64_t kind, bool reverse) {
  TORCH_CHECK(xp.dim() == 3 && h0.dim() == 2, "gatedrnn: min_scan expects xp (T, B, G*H) and h0 (B, H), got ",
              xp.sizes(), " and ", h0.sizes());
  const int64_t T = xp.size(0), B = xp.size(1), H = h0.size(1);
  TORCH_CHECK(h0.size(0) == B && xp.size(2) == gates_of(kind) * H, "gatedrnn: min_scan expects xp (T, B=", B,
              ", ", gates_of(kind), "*H) for h0 (B, H=", H, "), got ", xp.sizes());
  TORCH_CHECK(!lengths || (lengths->dim() == 1 && lengths->size(0) == B && lengths->scalar_type() == at::kLong),
              "gatedrnn: min_scan expects int64 lengths (B=", B, ",)");
  TORCH_CHECK(xp.scalar_type() == h0.scalar_type(), "gatedrnn: min_scan expects one dtype, got ", xp.scalar_type(),
              " and ", h0.scalar_type());
  const Restarts checked(restart, T, B);  // checks the mask's dtype and shape
  return {T, B, H, xp.size(2), reverse};
}

std::vector<Tensor> min_scan_forward(const Tensor& xp_, const Tensor& h0_, const OptTensor& lengths_,
                                     const OptTensor& restart_, int64_t kind, bool g_activation, bool reverse) {
  const NoAutograd no_autograd;
  const Tensor xp = xp_.contiguous(), h0 = h0_.contiguous();
  const OptTensor lengths = contiguous(lengths_), restart = contiguous(restart_);
  const Shape s = check_shapes(xp, h0, lengths, restart, kind, reverse);
  Tensor out = at::empty({s.T, s.B, s.H}, xp.options()), h_n = at::empty({s.B, s.H}, xp.options());
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "min_scan_forward", [&] {
    forward_impl<scalar_t>(s, ptr<scalar_t>(xp), ptr<scalar_t>(h0), ptr<int64_t>(lengths), ptr<bool>(restart),
                           static_cast<int>(kind), g_activation, ptr<scalar_t>(out), ptr<scalar_t>(h_n));
  });
  return {out, h_n};
}

std::vector<Tensor> min_scan_backward(const Tensor& xp_, const Tensor& out_, const Tensor& h0_, const Tensor& d_out_,
                                      const Tensor& d_hn_, const OptTensor& lengths_, const OptTensor& restart_,
                                      int64_t kind, bool g_activation, bool reverse) {
  const NoAutograd no_autograd;
  const Tensor xp = xp_.contiguous(), out = out_.contiguous(), h0 = h0_.contiguous();
  const Tensor d_out = d_out_.contiguous(), d_hn = d_hn_.contiguous();
  const OptTensor lengths = contiguous(lengths_), restart = contiguous(restart_);
  const Shape s = check_shapes(xp, h0, lengths, restart, kind, reverse);
  TORCH_CHECK(out.sizes() == d_out.sizes() && out.size(0) == s.T && out.size(1) == s.B && out.size(2) == s.H &&
                  d_hn.sizes() == h0.sizes(),
              "gatedrnn: min_scan_backward expects out and d_out (T, B, H) and d_hn (B, H), got ", out.sizes(), ", ",
              d_out.sizes(), " and ", d_hn.sizes());
  Tensor d_xp = at::empty_like(xp), d_h0 = at::empty_like(h0);
  AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "min_scan_backward", [&] {
    backward_impl<scalar_t>(s, ptr<scalar_t>(xp), ptr<scalar_t>(out), ptr<scalar_t>(h0), ptr<scalar_t>(d_out),
                            ptr<scalar_t>(d_hn), ptr<int64_t>(lengths), ptr<bool>(restart), static_cast<int>(kind),
                            g_activation, ptr<scalar_t>(d_xp), ptr<scalar_t>(d_h0));
  });
  return {d_xp, d_h0};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("min_scan_forward(Tensor xp, Tensor h0, Tensor? lengths, Tensor? restart, int kind, bool g_activation, "
        "bool reverse) -> Tensor[]");
  m.def("min_scan_backward(Tensor xp, Tensor out, Tensor h0, Tensor d_out, Tensor d_hn, Tensor? lengths, "
        "Tensor? restart, int kind, bool g_activation, bool reverse) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(gatedrnn_cpu, CPU, m) {
  m.impl("min_scan_forward", &min_scan_forward);
  m.impl("min_scan_backward", &min_scan_backward);
}
