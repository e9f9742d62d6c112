// The sLSTM's forward and backward passes through time, compiled: the loops of
// gatedrnn/backends/cpu/slstm.py (whose docstring has the equations and the gradients, autograd's
// subgradients of the reference loop at m's max and the clamps included). One call runs a whole
// layer and direction; only the per-head products go through ATen, the gate math of a step is one
// pass per batch row and head, vectorised with ATen's Vectorized (Sleef's exp, log1p and tanh).
//
// Shapes: T steps, B batch, H hidden, K heads of D = H / K units. Gate rows are head-major: head
// k's pre-activations are the 4D columns [4kD, 4(k+1)D) of a (B, 4H) row, in gate order i, f, z, o
// (D each). ``pre`` (T, B, 4H) enters as the input part of every step and leaves holding the full
// pre-activations (the recurrent product added), which the backward pass recomputes the gates
// from. The states h, c, n, m live in (T+1, B, H) buffers: step t reads slot prev(t), writes next(t).
// ``active`` (T, B, 1), where given, is 1 on a step that runs, 0 on one that keeps the states.
// ``restart`` (T, B) bool, where given, zeroes h, c, n and m of row b just before step t
// (common.h's Restarts); n = 0 then makes the step take the first-step rule m_t = i~, as at the
// start, and backward the gradients at the states before the step are zeroed on those rows.

#include "common.h"

namespace {

using namespace gatedrnn_cpu;

// torch's softplus turns linear above this (softplus(x) = x), and its derivative is then exactly 1.
constexpr double kSoftplusThreshold = 20.0;

// A (rows, cols) matrix over raw memory with leading dimension ld: one head's block of a step.
inline Tensor block(void* data, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
                    const at::TensorOptions& opts) {
  return at::from_blob(data, {rows, cols}, {row_stride, col_stride}, opts);
}

// log f and its derivative d log f / d f~: logsigmoid as -softplus(-f~), or f~ itself (exp gate).
template <typename T>
inline void log_forget(bool exp_gate, Vec<T> f_raw, Vec<T>& log_f, Vec<T>& d_log_f) {
  const Vec<T> one(T(1));
  if (exp_gate) {
    log_f = f_raw, d_log_f = one;
    return;
  }
  const Vec<T> x = f_raw.neg(), e = x.exp();
  const Vec<T> linear = x > Vec<T>(T(kSoftplusThreshold));
  log_f = Vec<T>::blendv(e.log1p().neg(), f_raw, linear);
  d_log_f = Vec<T>::blendv(e / (e + one), one, linear);
}

// One step's gate values for a vector of units, from the pre-activations and n, m before the step.
template <typename T>
struct Gates {
  Vec<T> i_raw, a, d_log_f, m, i_exp, f_exp, i, f, u, o, first;

  Gates(bool exp_gate, const T* pre, int64_t D, int64_t j, int64_t count, Vec<T> n_p, Vec<T> m_p) {
    const Vec<T> one(T(1)), zero(T(0));
    i_raw = Vec<T>::loadu(pre + j, count);
    Vec<T> log_f;
    log_forget(exp_gate, Vec<T>::loadu(pre + D + j, count), log_f, d_log_f);
    a = log_f + m_p;
    first = n_p == zero;
    m = Vec<T>::blendv(at::vec::maximum(a, i_raw), i_raw, first);
    i_exp = (i_raw - m).exp(), f_exp = (a - m).exp();
    i = at::vec::minimum(i_exp, one), f = at::vec::minimum(f_exp, one);
    u = Vec<T>::loadu(pre + 2 * D + j, count).tanh();
    o = one / (one + Vec<T>::loadu(pre + 3 * D + j, count).neg().exp());
  }
};

// The forward gate math of one row and head: D units.
template <typename T>
void forward_head(bool exp_gate, const T* pre, int64_t D, const T* c_p, const T* n_p, const T* m_p, T* h, T* c,
                  T* n, T* m) {
  constexpr int64_t V = Vec<T>::size();
  for (int64_t j = 0; j < D; j += V) {
    const int64_t count = std::min(V, D - j);
    const Vec<T> cp = Vec<T>::loadu(c_p + j, count), np = Vec<T>::loadu(n_p + j, count);
    const Gates<T> g(exp_gate, pre, D, j, count, np, Vec<T>::loadu(m_p + j, count));
    const Vec<T> c_new = g.f * cp + g.i * g.u, n_new = g.f * np + g.i;
    (g.o * c_new / n_new).store(h + j, count);
    c_new.store(c + j, count);
    n_new.store(n + j, count);
    g.m.store(m + j, count);
  }
}

// The backward gate math of one row and head: from the gradients dh, dc, dn, dm at the step's new
// states (dh the output's and the next step's), writes the gradient at the pre-activations to
// d_pre and the gradients at the states before the step to dc, dn, dm (in place).
template <typename T>
void backward_head(bool exp_gate, const T* pre, int64_t D, const T* c_p, const T* n_p, const T* m_p, const T* dh,
                   T* dc, T* dn, T* dm, T* d_pre) {
  constexpr int64_t V = Vec<T>::size();
  const Vec<T> one(T(1)), zero(T(0)), half(T(0.5));
  for (int64_t j = 0; j < D; j += V) {
    const int64_t count = std::min(V, D - j);
    const Vec<T> cp = Vec<T>::loadu(c_p + j, count), np = Vec<T>::loadu(n_p + j, count);
    const Gates<T> g(exp_gate, pre, D, j, count, np, Vec<T>::loadu(m_p + j, count));
    const Vec<T> c = g.f * cp + g.i * g.u, n = g.f * np + g.i;
    const Vec<T> d_h = Vec<T>::loadu(dh + j, count), g_oc = d_h / n;
    const Vec<T> d_n = Vec<T>::loadu(dn + j, count) - d_h * (g.o * c) / (n * n);
    const Vec<T> d_c = Vec<T>::loadu(dc + j, count) + g_oc * g.o;
    const Vec<T> d_f = d_c * cp + d_n * np, d_i = d_c * g.u + d_n;
    const Vec<T> g_i = Vec<T>::blendv(zero, d_i * g.i_exp, g.i_exp <= one);
    const Vec<T> g_f = Vec<T>::blendv(zero, d_f * g.f_exp, g.f_exp <= one);
    const Vec<T> d_m = Vec<T>::loadu(dm + j, count) - g_i - g_f;
    // m's subgradient: all to i~ on a first step, else to the larger of a and i~, halves on a tie
    const Vec<T> w_a = Vec<T>::blendv(Vec<T>::blendv(Vec<T>::blendv(zero, one, g.a > g.i_raw), half, g.a == g.i_raw),
                                      zero, g.first);
    const Vec<T> d_a = g_f + d_m * w_a;
    (g_i + d_m * (one - w_a)).store(d_pre + j, count);
    (d_a * g.d_log_f).store(d_pre + D + j, count);
    (d_c * g.i * (one - g.u * g.u)).store(d_pre + 2 * D + j, count);
    (g_oc * c * g.o * (one - g.o)).store(d_pre + 3 * D + j, count);
    (d_c * g.f).store(dc + j, count);
    (d_n * g.f).store(dn + j, count);
    d_a.store(dm + j, count);
  }
}

struct Shape {
  int64_t T, B, H, K, D;
  Shape(const Tensor& pre, const Tensor& h0, const Tensor& weight_hh)
      : T(pre.size(0)), B(pre.size(1)), H(h0.size(1)), K(weight_hh.size(0)), D(weight_hh.size(2)) {
    TORCH_CHECK(pre.dim() == 3 && pre.size(2) == 4 * H, "gatedrnn: sLSTM pre-activations must be (T, B, 4H=",
                4 * H, "), got ", pre.sizes());
    TORCH_CHECK(weight_hh.dim() == 3 && K * D == H && weight_hh.size(1) == 4 * D,
                "gatedrnn: sLSTM weight_hh must be (heads, 4D, D) with heads * D = H = ", H, ", got ",
                weight_hh.sizes());
  }
};

// The states before step t as the step reads them: the (T+1, B, H) buffers' slot prev(t), or
// where the step restarts rows, copies in ``entering`` (one (B, H) row per state) with those
// rows zeroed. Returns the (B, H) tensors, in the order of ``buffers``.
std::vector<Tensor> states_entering(const std::vector<Tensor>& buffers, std::vector<Tensor>& entering,
                                    const Restarts& restarts, const Slots& slot, int64_t t) {
  std::vector<Tensor> before;
  for (size_t i = 0; i < buffers.size(); ++i) {
    before.push_back(restarts.entering(step_of(buffers[i], slot.prev(t)), entering[i], t));
  }
  return before;
}

// One (B, H) scratch row per state, for states_entering (none without restarts).
std::vector<Tensor> entering_scratch(const Restarts& restarts, int64_t count, int64_t B, int64_t H,
                                     const at::TensorOptions& opts) {
  std::vector<Tensor> scratch;
  for (int64_t i = 0; i < count; ++i) scratch.push_back(restarts.present() ? at::empty({B, H}, opts) : Tensor());
  return scratch;
}

std::vector<Tensor> slstm_forward(Tensor& pre, const Tensor& h0, const Tensor& c0, const Tensor& n0,
                                  const Tensor& m0, const Tensor& weight_hh, const OptTensor& active_,
                                  const OptTensor& restart, bool reverse, bool exp_gate) {
  const NoAutograd no_autograd;
  TORCH_CHECK(pre.is_contiguous(), "gatedrnn: sLSTM pre-activations must be contiguous");
  const Shape s(pre, h0, weight_hh);
  const int64_t T = s.T, B = s.B, H = s.H, K = s.K, D = s.D;
  const OptTensor active = contiguous(active_);
  check_step_mask(active, "active", T, B);
  const Restarts restarts(restart, T, B);
  const Slots slot{T, reverse};
  const auto opts = pre.options();
  std::vector<Tensor> entering = entering_scratch(restarts, 4, B, H, opts);
  std::vector<Tensor> states;
  for (const Tensor* init : {&h0, &c0, &n0, &m0}) {
    Tensor buf = at::empty({T + 1, B, H}, opts);
    buf.select(0, slot.prev(slot.step(0))).copy_(*init);
    states.push_back(buf);
  }
  const Tensor weight_t = weight_hh.transpose(1, 2).contiguous();  // (K, D, 4D)
  const at::ThreadLocalState tls;
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "gatedrnn_slstm_forward", [&] {
    using scalar = scalar_t;
    scalar *h = ptr<scalar>(states[0]), *c = ptr<scalar>(states[1]), *n = ptr<scalar>(states[2]),
           *m = ptr<scalar>(states[3]), *p_all = ptr<scalar>(pre), *w = ptr<scalar>(weight_t);
    for (int64_t k_step = 0; k_step < T; ++k_step) {
      const int64_t t = slot.step(k_step), sn = slot.next(t) * B * H;
      const std::vector<Tensor> before = states_entering(states, entering, restarts, slot, t);
      // the states before the step (B, H each), and those it writes (row b at b * H)
      const scalar *hp = ptr<scalar>(before[0]), *cp = ptr<scalar>(before[1]), *np = ptr<scalar>(before[2]),
                   *mp = ptr<scalar>(before[3]);
      scalar* p_t = p_all + t * B * 4 * H;
      parallel_rows(tls, B, row_grain(4 * H), [&](int64_t begin, int64_t end) {
        const int64_t rows = end - begin;
        for (int64_t k = 0; k < K; ++k) {  // pre[t, rows, head k] += h_{t-1}[rows, head k] R_k^T
          Tensor out = block(p_t + begin * 4 * H + k * 4 * D, rows, 4 * D, 4 * H, 1, opts);
          out.addmm_(block(const_cast<scalar*>(hp) + begin * H + k * D, rows, D, H, 1, opts),
                     block(w + k * D * 4 * D, D, 4 * D, 4 * D, 1, opts));
        }
        for (int64_t b = begin; b < end; ++b) {
          const int64_t row_p = b * H, row_n = sn + b * H;
          if (!row_active(active, t, B, b)) {
            for (auto [from, to] : {std::pair{hp, h}, std::pair{cp, c}, std::pair{np, n}, std::pair{mp, m}}) {
              std::copy(from + row_p, from + row_p + H, to + row_n);
            }
            continue;
          }
          for (int64_t k = 0; k < K; ++k) {
            const int64_t u = k * D;
            forward_head<scalar>(exp_gate, p_t + b * 4 * H + 4 * u, D, cp + row_p + u, np + row_p + u, mp + row_p + u,
                                 h + row_n + u, c + row_n + u, n + row_n + u, m + row_n + u);
          }
        }
      });
    }
  });
  return states;
}

// Returns [d_pre (T, B, 4H), dh0, dc0, dn0, dm0 (B, H)]. d_out (T, B, H) is the output's gradient,
// zero on inactive steps; dh_n .. dm_n the final states'.
std::vector<Tensor> slstm_backward(const Tensor& pre_, const Tensor& hs, const Tensor& cs, const Tensor& ns,
                                   const Tensor& ms, const Tensor& weight_hh_, const Tensor& d_out_,
                                   const Tensor& dh_n, const Tensor& dc_n, const Tensor& dn_n, const Tensor& dm_n,
                                   const OptTensor& active_, const OptTensor& restart, bool reverse,
                                   bool exp_gate) {
  const NoAutograd no_autograd;
  const Tensor pre = pre_.contiguous(), weight_hh = weight_hh_.contiguous(), d_out = d_out_.contiguous();
  const Tensor c_s = cs.contiguous(), n_s = ns.contiguous(), m_s = ms.contiguous();  // h is not read
  const Shape s(pre, dh_n, weight_hh);
  const int64_t T = s.T, B = s.B, H = s.H, K = s.K, D = s.D;
  const OptTensor active = contiguous(active_);
  check_step_mask(active, "active", T, B);
  const Restarts restarts(restart, T, B);
  const Slots slot{T, reverse};
  const auto opts = pre.options();
  std::vector<Tensor> entering = entering_scratch(restarts, 3, B, H, opts);
  Tensor d_pre = at::empty({T, B, 4 * H}, opts);
  Tensor dh = dh_n.contiguous().clone(), dc = dc_n.contiguous().clone(), dn = dn_n.contiguous().clone(),
         dm = dm_n.contiguous().clone();
  const at::ThreadLocalState tls;
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "gatedrnn_slstm_backward", [&] {
    using scalar = scalar_t;
    const scalar *p_all = ptr<scalar>(pre), *g_out = ptr<scalar>(d_out);
    scalar *d_h = ptr<scalar>(dh), *d_c = ptr<scalar>(dc), *d_n = ptr<scalar>(dn), *d_m = ptr<scalar>(dm),
           *w = ptr<scalar>(weight_hh), *dp_all = ptr<scalar>(d_pre);
    for (int64_t k_step = T - 1; k_step >= 0; --k_step) {
      const int64_t t = slot.step(k_step);
      const std::vector<Tensor> before = states_entering({c_s, n_s, m_s}, entering, restarts, slot, t);
      const scalar *c = ptr<scalar>(before[0]), *n = ptr<scalar>(before[1]), *m = ptr<scalar>(before[2]);
      const scalar* p_t = p_all + t * B * 4 * H;
      scalar* dp_t = dp_all + t * B * 4 * H;
      parallel_rows(tls, B, row_grain(4 * H), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          scalar* row_dh = d_h + b * H;
          if (!row_active(active, t, B, b)) {  // the states' gradients pass to the step before
            std::fill(dp_t + b * 4 * H, dp_t + (b + 1) * 4 * H, scalar(0));
            continue;
          }
          at::vec::map2([](Vec<scalar> x, Vec<scalar> y) { return x + y; }, row_dh, row_dh,
                        g_out + (t * B + b) * H, H);
          for (int64_t k = 0; k < K; ++k) {
            const int64_t u = k * D, ps = b * H + u;
            backward_head<scalar>(exp_gate, p_t + b * 4 * H + 4 * u, D, c + ps, n + ps, m + ps, row_dh + u,
                                  d_c + b * H + u, d_n + b * H + u, d_m + b * H + u, dp_t + b * 4 * H + 4 * u);
          }
          std::fill(row_dh, row_dh + H, scalar(0));  // to be replaced by R^T d_pre below
        }
        const int64_t rows = end - begin;
        for (int64_t k = 0; k < K; ++k) {  // dh_{t-1}[rows, head k] += d_pre[t, rows, head k] R_k
          Tensor out = block(d_h + begin * H + k * D, rows, D, H, 1, opts);
          out.addmm_(block(dp_t + begin * 4 * H + k * 4 * D, rows, 4 * D, 4 * H, 1, opts),
                     block(w + k * 4 * D * D, 4 * D, D, D, 1, opts));
        }
      });
      for (Tensor* grad : {&dh, &dc, &dn, &dm}) restarts.zero(*grad, t);  // nothing flows back through a restart
    }
  });
  return {d_pre, dh, dc, dn, dm};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("slstm_forward(Tensor(a!) pre, Tensor h0, Tensor c0, Tensor n0, Tensor m0, Tensor weight_hh, "
        "Tensor? active, Tensor? restart, bool reverse, bool exp_gate) -> Tensor[]");
  m.def("slstm_backward(Tensor pre, Tensor hs, Tensor cs, Tensor ns, Tensor ms, Tensor weight_hh, Tensor d_out, "
        "Tensor dh_n, Tensor dc_n, Tensor dn_n, Tensor dm_n, Tensor? active, Tensor? restart, bool reverse, "
        "bool exp_gate) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(gatedrnn_cpu, CPU, m) {
  m.impl("slstm_forward", &slstm_forward);
  m.impl("slstm_backward", &slstm_backward);
}
