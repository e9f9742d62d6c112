// The LSTM's forward and backward passes through time, compiled: the loops of
// gatedrnn/backends/cpu/lstm.py (whose docstring has the equations) for every variant, with
// recurrent and cell layer norm, peepholes, fgr's gate recurrence, projection, zoneout / length
// masks and recurrent dropout. One call runs a whole layer and direction; only the matrix products go
// through ATen, the gate math of a step is one pass per batch row, vectorised with ATen's
// Vectorized (Sleef's exp and tanh), with no Python and no temporary tensors in the loop.
//
// Shapes: T steps, B batch, H hidden, R = output size (H, or the projection's), G gate blocks of
// H columns in the backend's order (the variant's sigmoid gates among i, f, o, then g).
// Carried states live in (T+1, B, .) buffers: step t reads slot prev(t) and writes new(t).
// fgr's gate recurrence adds q_{t-1} W_gg^T to the (i, f, o) pre-activations (columns [0, 3H)),
// q_{t-1} being the (i, f, o) activations it carries as a third state: the initial gates0 before
// the first step, then each step's, held over inactive steps (the `active` mask, 1 where
// t < length) like h and c; the last is returned as gates_n. A restart (common.h's Restarts)
// zeroes h, c and q before its step, and backward their gradients on its rows.

#include "common.h"

namespace {

using namespace gatedrnn_cpu;

// Where the gate blocks are, from the Python side's Layout: column offsets (-1 when the variant
// lacks the gate), the columns [0, sig_first) that take a sigmoid before c_t, and the switches.
struct Layout {
  int64_t i, f, o, g, sig_first;
  bool cifg, peephole, tanh_g, tanh_y;

  explicit Layout(at::IntArrayRef v) {
    TORCH_CHECK(v.size() == 9, "gatedrnn: expected 9 layout entries, got ", v.size());
    i = v[0], f = v[1], o = v[2], g = v[3], sig_first = v[4];
    cifg = v[5] != 0, peephole = v[6] != 0, tanh_g = v[7] != 0, tanh_y = v[8] != 0;
  }
};

// fgr's gate recurrence reads and writes columns [0, 3H) as (i, f, o): the backend's order.
inline void check_gate_recurrence(const Layout& L, bool fgr, int64_t H) {
  TORCH_CHECK(!fgr || (L.i == 0 && L.f == H && L.o == 2 * H && L.sig_first == 3 * H),
              "gatedrnn: weight_gg needs the (i, f, o) blocks at columns 0, H, 2H");
}

// The weights a step reads, as raw pointers (null where the configuration has none). With layer
// norm, in_gain / in_bias (the input blocks' gain, every bias summed) and rec_gain come together.
template <typename T>
struct Weights {
  const T *in_gain, *in_bias, *rec_gain, *peep, *ln_w, *ln_b;
  Weights(const OptTensor& in_gain_, const OptTensor& in_bias_, const OptTensor& gain, const OptTensor& peep_,
          const OptTensor& w, const OptTensor& b)
      : in_gain(ptr<T>(in_gain_)), in_bias(ptr<T>(in_bias_)), rec_gain(ptr<T>(gain)), peep(ptr<T>(peep_)),
        ln_w(ptr<T>(w)), ln_b(ptr<T>(b)) {}
};

// fgr's initial carried gates (B, 3H): gates0 where given, else zeros.
inline Tensor initial_gates(const OptTensor& gates0, int64_t B, int64_t width, const at::TensorOptions& opts) {
  if (!gates0) return at::zeros({B, width}, opts);
  TORCH_CHECK(gates0->dim() == 2 && gates0->size(0) == B && gates0->size(1) == width,
              "gatedrnn: gates0 must be (B=", B, ", 3H=", width, "), got ", gates0->sizes());
  return gates0->contiguous().clone();
}

// ---------------------------------------------------------------------------------------------
// Forward

// One batch row of one step, after the recurrent product raw = h_{t-1} U^T: gate activations
// (a, G*H), the new cell c, the layer norms' statistics, and h before the projection. Without
// layer norm xw is the input part with the bias; with it, xw is the plain product x W^T and
// a = LN(xw) in_gain + in_bias + LN(raw) rec_gain block by block (normed keeps LN(raw), rstd its
// 1/sigma, in_stats the input blocks' (mean, 1/sigma)). gate_rec, for fgr after its first step,
// is the row's q_{t-1} W_gg^T (3H), added to the (i, f, o) blocks after the layer norms.
template <typename T>
void forward_row(const Layout& L, const Weights<T>& w, int64_t H, int64_t G, double eps, T* a, const T* xw,
                 const T* raw, T* normed, T* rstd, T* in_stats, const T* gate_rec, const T* c_prev, T* c,
                 T* c_stats, T* h, T* y) {
  if (w.rec_gain != nullptr) {
    for (int64_t k = 0; k < G; ++k) {
      const int64_t off = k * H;
      rstd[k] = normalise(normed + off, raw + off, H, eps).second;
      std::tie(in_stats[2 * k], in_stats[2 * k + 1]) =
          normalise_affine(a + off, xw + off, w.in_gain + off, w.in_bias + off, H, eps);
      at::vec::map3([](Vec<T> x, Vec<T> n, Vec<T> gain) { return x + n * gain; }, a + off, a + off,
                    normed + off, w.rec_gain + off, H);
    }
  } else {  // a = xw + raw
    at::vec::map2([](Vec<T> x, Vec<T> r) { return x + r; }, a, xw, raw, G * H);
  }
  if (gate_rec != nullptr) at::vec::map2([](Vec<T> x, Vec<T> r) { return x + r; }, a, a, gate_rec, 3 * H);
  if (L.peephole) {
    accumulate_product(a + L.i, w.peep, c_prev, H);
    accumulate_product(a + L.f, w.peep + H, c_prev, H);
  }
  sigmoid_inplace(a, L.sig_first);
  if (L.tanh_g) tanh_inplace(a + L.g, H);
  const T* g = a + L.g;
  if (L.cifg) {
    at::vec::map3([](Vec<T> f, Vec<T> cp, Vec<T> gg) { return gg + f * (cp - gg); }, c, a + L.f, c_prev, g, H);
  } else if (L.f < 0) {
    at::vec::map3([](Vec<T> i, Vec<T> cp, Vec<T> gg) { return cp + i * gg; }, c, a + L.i, c_prev, g, H);
  } else if (L.i < 0) {
    at::vec::map3([](Vec<T> f, Vec<T> cp, Vec<T> gg) { return f * cp + gg; }, c, a + L.f, c_prev, g, H);
  } else {
    at::vec::map4([](Vec<T> f, Vec<T> cp, Vec<T> i, Vec<T> gg) { return f * cp + i * gg; }, c, a + L.f, c_prev,
                  a + L.i, g, H);
  }
  if (L.peephole) {
    accumulate_product(a + L.o, w.peep + 2 * H, c, H);
    sigmoid_inplace(a + L.o, H);
  }
  if (w.ln_w != nullptr) {  // y = tanh(LN(c) * w + b)
    std::tie(c_stats[0], c_stats[1]) = normalise_affine(y, c, w.ln_w, w.ln_b, H, eps);
  } else {
    std::copy(c, c + H, y);
  }
  if (L.tanh_y) tanh_inplace(y, H);
  if (L.o >= 0) {
    at::vec::map2([](Vec<T> o, Vec<T> v) { return o * v; }, h, a + L.o, y, H);
  } else {
    std::copy(y, y + H, h);
  }
}

std::vector<Tensor> lstm_forward(const Tensor& xw_, const Tensor& h0, const Tensor& c0, const OptTensor& gates0,
                                 const Tensor& weight_hh,
                                 const OptTensor& in_gain_, const OptTensor& in_bias_, const OptTensor& rec_gain_, const OptTensor& peep_, const OptTensor& ln_w_,
                                 const OptTensor& ln_b_, const OptTensor& weight_hr_, const OptTensor& weight_gg_,
                                 const OptTensor& keep_h, const OptTensor& keep_c, const OptTensor& rec_mask_,
                                 const OptTensor& active_, const OptTensor& restart, at::IntArrayRef layout,
                                 bool reverse, double eps) {
  const NoAutograd no_autograd;
  const OptTensor active = contiguous(active_);
  const Layout L(layout);
  const Tensor xw = xw_.contiguous();
  const OptTensor in_gain = contiguous(in_gain_), in_bias = contiguous(in_bias_), rec_gain = contiguous(rec_gain_),
                  peep = contiguous(peep_), ln_w = contiguous(ln_w_), ln_b = contiguous(ln_b_),
                  weight_hr = contiguous(weight_hr_), rec_mask = contiguous(rec_mask_);
  const int64_t T = xw.size(0), B = xw.size(1), GH = xw.size(2), H = c0.size(1), R = h0.size(1), G = GH / H;
  const Slots slot{T, reverse};
  const auto opts = xw.options();
  const bool proj = weight_hr.has_value(), norm = rec_gain.has_value(), cell_norm = ln_w.has_value();
  const bool fgr = weight_gg_.has_value();
  TORCH_CHECK(norm == in_gain.has_value() && norm == in_bias.has_value(),
              "gatedrnn: layer norm needs in_gain, in_bias and rec_gain together");
  check_gate_recurrence(L, fgr, H);
  check_masks(keep_h, keep_c, active, rec_mask, T, B);
  const Restarts restarts(restart, T, B);

  Tensor states = at::empty({T + 1, B, R}, opts), cells = at::empty({T + 1, B, H}, opts);
  states.select(0, slot.prev(slot.step(0))).copy_(h0);
  cells.select(0, slot.prev(slot.step(0))).copy_(c0);
  Tensor acts = at::empty({T, B, GH}, opts);
  Tensor c_new = keep_c ? at::empty({T, B, H}, opts) : at::empty({0}, opts);
  Tensor h_hat = proj ? at::empty({T, B, H}, opts) : at::empty({0}, opts);
  Tensor normed = norm ? at::empty({T, B, GH}, opts) : at::empty({0}, opts);
  Tensor rstd = norm ? at::empty({T, B, G}, opts) : at::empty({0}, opts);
  Tensor in_stats = norm ? at::empty({T, B, G, 2}, opts) : at::empty({0}, opts);  // (mean, rstd) per block
  Tensor c_stats = cell_norm ? at::empty({T, B, 2}, opts) : at::empty({0}, opts);  // (mean, rstd)
  Tensor h_tmp = keep_h ? at::empty({B, R}, opts) : Tensor();   // h_t before the zoneout / length blend
  Tensor masked = rec_mask ? at::empty({B, R}, opts) : Tensor();  // h_{t-1} times the dropout mask
  Tensor raw = at::empty({B, GH}, opts);                         // h_{t-1} U^T
  // the transposed weights (made contiguous once for a long call, see product_operand)
  const Tensor weight_t = product_operand(weight_hh, T), proj_t = proj ? product_operand(*weight_hr, T) : Tensor();
  const Tensor gg_t = fgr ? product_operand(*weight_gg_, T) : Tensor();  // W_gg^T (3H, 3H)
  Tensor q = fgr ? initial_gates(gates0, B, 3 * H, opts) : Tensor();  // q_{t-1}, then the final gates_n
  Tensor gate_rec = fgr ? at::empty({B, 3 * H}, opts) : Tensor();      // q_{t-1} W_gg^T
  // the carries before a step that restarts rows, with those rows zeroed
  Tensor h_entering = restarts.present() ? at::empty({B, R}, opts) : Tensor();
  Tensor c_entering = restarts.present() ? at::empty({B, H}, opts) : Tensor();

  const at::ThreadLocalState tls;  // for the steps' worker threads (see parallel_rows)
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gatedrnn_lstm_forward", [&] {
    using scalar = scalar_t;
    const Weights<scalar> w(in_gain, in_bias, rec_gain, peep, ln_w, ln_b);
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = slot.step(k), p = slot.prev(t), n = slot.next(t);
      const Tensor h_prev = restarts.entering(step_of(states, p), h_entering, t);
      const Tensor c_prev = restarts.entering(step_of(cells, p), c_entering, t), a = step_of(acts, t);
      const Tensor h_next = step_of(states, n), c_next = step_of(cells, n);
      if (fgr) restarts.zero(q, t);
      const Tensor c = keep_c ? step_of(c_new, t) : c_next;
      const Tensor h = proj ? step_of(h_hat, t) : (keep_h ? h_tmp : h_next);  // h before projection and blend
      const Tensor h_out = keep_h ? h_tmp : h_next;                                 // h before the blend
      const bool gate_recurrence = fgr && (k > 0 || gates0.has_value());  // else q_{t-1} is zero
      // one parallel region per step: each task runs its rows' product, gate math, projection, blend
      parallel_rows(tls, B, row_grain(GH), [&](int64_t begin, int64_t end) {
        const Rows rows{begin, end};
        Tensor h_in = rows(h_prev), raw_rows = rows(raw);
        if (rec_mask) {
          Tensor out = rows(masked);
          h_in = at::mul_out(out, h_in, rows(*rec_mask));
        }
        at::mm_out(raw_rows, h_in, weight_t);
        if (gate_recurrence) {
          Tensor out = rows(gate_rec);
          at::mm_out(out, rows(q), gg_t);
        }
        std::vector<scalar> y(H);
        for (int64_t b = begin; b < end; ++b) {
          forward_row(L, w, H, G, eps, ptr<scalar>(a) + b * GH, ptr<scalar>(xw) + (t * B + b) * GH,
                      ptr<scalar>(raw) + b * GH, norm ? ptr<scalar>(normed) + (t * B + b) * GH : nullptr,
                      norm ? ptr<scalar>(rstd) + (t * B + b) * G : nullptr,
                      norm ? ptr<scalar>(in_stats) + (t * B + b) * G * 2 : nullptr,
                      gate_recurrence ? ptr<scalar>(gate_rec) + b * 3 * H : nullptr, ptr<scalar>(c_prev) + b * H,
                      ptr<scalar>(c) + b * H, cell_norm ? ptr<scalar>(c_stats) + (t * B + b) * 2 : nullptr,
                      ptr<scalar>(h) + b * H, y.data());
        }
        if (proj) {
          Tensor out = rows(h_out);
          at::mm_out(out, rows(h), proj_t);
        }
        if (keep_h) {
          Tensor out = rows(h_next);
          at::lerp_out(out, rows(h_tmp), rows(h_prev), rows(step_of(*keep_h, t)));
        }
        if (keep_c) {
          Tensor out = rows(c_next);
          at::lerp_out(out, rows(c), rows(c_prev), rows(step_of(*keep_c, t)));
        }
        if (fgr) {  // q_t for the next step: this step's (i, f, o), the carry held on an inactive row
          for (int64_t b = begin; b < end; ++b) {
            if (!row_active(active, t, B, b)) continue;
            const scalar* gates = ptr<scalar>(a) + b * GH;
            std::copy(gates, gates + 3 * H, ptr<scalar>(q) + b * 3 * H);
          }
        }
      });
    }
  });
  return {states, cells, acts, c_new, h_hat, normed, rstd, in_stats, c_stats, fgr ? q : at::empty({0}, opts)};
}

// ---------------------------------------------------------------------------------------------
// Backward

// Per-row scratch and the parameter-gradient sums of the rows one thread runs.
template <typename T>
struct RowScratch {
  std::vector<T> y, d_c, normed_c, scaled, normed_in;
  std::vector<T> d_in_gain, d_in_bias, d_gain, d_peep, d_ln_w, d_ln_b;
  RowScratch(int64_t H, int64_t GH, bool norm, bool peephole, bool cell_norm)
      : y(H), d_c(H), normed_c(cell_norm ? H : 0), scaled(norm || cell_norm ? H : 0), normed_in(norm ? H : 0),
        d_in_gain(norm ? GH : 0, T(0)), d_in_bias(norm ? GH : 0, T(0)), d_gain(norm ? GH : 0, T(0)),
        d_peep(peephole ? 3 * H : 0, T(0)), d_ln_w(cell_norm ? H : 0, T(0)), d_ln_b(cell_norm ? H : 0, T(0)) {}

  void add(const RowScratch& other) {
    for (auto [total, part] : {std::pair{&d_in_gain, &other.d_in_gain}, std::pair{&d_in_bias, &other.d_in_bias},
                               std::pair{&d_gain, &other.d_gain}, std::pair{&d_peep, &other.d_peep},
                               std::pair{&d_ln_w, &other.d_ln_w}, std::pair{&d_ln_b, &other.d_ln_b}}) {
      for (size_t j = 0; j < total->size(); ++j) (*total)[j] += (*part)[j];
    }
  }
};

// One batch row of one step, backward: from dh (at h before the projection) and the part of dc
// that enters the step, writes the gradient d (G*H) at the pre-activations (with layer norm: at
// the input product x W^T, whose row is xw) and d_raw at the recurrent product, the gradient of
// c_{t-1} that passes through the step (dc_prev), and adds this row's share of the parameter
// gradients to ``s``. For fgr, dq (when a later step read this one's gates) is the gradient at
// q_t, added to those of the (i, f, o) activations, and d_gates (with layer norm, where d becomes
// the gradient at x W^T) receives the gradient at their pre-activations.
template <typename T>
void backward_row(const Layout& L, const Weights<T>& w, int64_t H, int64_t G, const T* a, T* d, T* d_raw,
                  const T* xw, const T* normed, const T* rstd, const T* in_stats, const T* c, const T* c_prev,
                  const T* c_stats, const T* dh, const T* dc_in, const T* dq, T* d_gates, T* dc_prev,
                  RowScratch<T>& s) {
  using V = Vec<T>;
  const V one(T(1));
  T* y = s.y.data();
  T* d_c = s.d_c.data();
  T* cn = s.normed_c.data();
  if (w.ln_w != nullptr) {  // y = tanh(LN(c) w + b), recomputed
    const T mean = c_stats[0], rs = c_stats[1];
    at::vec::map([=](V v) { return (v - V(mean)) * V(rs); }, cn, c, H);
    at::vec::map3([](V x, V gain, V shift) { return x * gain + shift; }, y, cn, w.ln_w, w.ln_b, H);
  } else {
    std::copy(c, c + H, y);
  }
  if (L.tanh_y) tanh_inplace(y, H);
  if (L.o >= 0) {  // do = (dh y [+ dq_o]) sigma'(o); dy = dh o
    if (dq != nullptr) {
      at::vec::map4([one](V g, V yy, V q, V o) { return (g * yy + q) * o * (one - o); }, d + L.o, dh, y, dq + L.o,
                    a + L.o, H);
    } else {
      at::vec::map3([one](V g, V yy, V o) { return g * yy * o * (one - o); }, d + L.o, dh, y, a + L.o, H);
    }
    at::vec::map2([](V g, V o) { return g * o; }, d_c, dh, a + L.o, H);
  } else {
    std::copy(dh, dh + H, d_c);
  }
  if (L.tanh_y) at::vec::map2([one](V g, V yy) { return g * (one - yy * yy); }, d_c, d_c, y, H);
  if (w.ln_w != nullptr) {  // through the cell layer norm; d_c holds the gradient at its output
    affine_norm_backward(d_c, d_c, cn, c_stats[1], w.ln_w, s.d_ln_w.data(), s.d_ln_b.data(), s.scaled.data(), H);
  }
  T* dc_tot = d_c;
  at::vec::map2([](V x, V g) { return x + g; }, dc_tot, dc_tot, dc_in, H);
  if (L.peephole) accumulate_product(dc_tot, d + L.o, w.peep + 2 * H, H);
  const T* g = a + L.g;
  T* dg = d + L.g;
  if (L.cifg) {  // c = g + f (c_prev - g)
    at::vec::map3([](V dct, V cp, V gg) { return dct * (cp - gg); }, d + L.f, dc_tot, c_prev, g, H);
    at::vec::map2([one](V dct, V f) { return dct * (one - f); }, dg, dc_tot, a + L.f, H);
  } else {
    if (L.i >= 0) {
      at::vec::map2([](V dct, V gg) { return dct * gg; }, d + L.i, dc_tot, g, H);
      at::vec::map2([](V dct, V i) { return dct * i; }, dg, dc_tot, a + L.i, H);
    } else {
      std::copy(dc_tot, dc_tot + H, dg);
    }
    if (L.f >= 0) at::vec::map2([](V dct, V cp) { return dct * cp; }, d + L.f, dc_tot, c_prev, H);
  }
  const int64_t sig_if = H * ((L.i >= 0) + (L.f >= 0));  // the i and f blocks come first
  if (dq != nullptr) at::vec::map2([](V gr, V q) { return gr + q; }, d, d, dq, sig_if);
  at::vec::map2([one](V gr, V s_) { return gr * s_ * (one - s_); }, d, d, a, sig_if);
  if (L.tanh_g) at::vec::map2([one](V gr, V gg) { return gr * (one - gg * gg); }, dg, dg, g, H);
  if (L.f >= 0) {
    at::vec::map2([](V dct, V f) { return dct * f; }, dc_prev, dc_tot, a + L.f, H);
  } else {
    std::copy(dc_tot, dc_tot + H, dc_prev);
  }
  if (L.peephole) {
    accumulate_product(dc_prev, d + L.i, w.peep, H);
    accumulate_product(dc_prev, d + L.f, w.peep + H, H);
    accumulate_product(s.d_peep.data(), d + L.i, c_prev, H);
    accumulate_product(s.d_peep.data() + H, d + L.f, c_prev, H);
    accumulate_product(s.d_peep.data() + 2 * H, d + L.o, c, H);
  }
  if (d_gates != nullptr) std::copy(d, d + 3 * H, d_gates);
  if (w.rec_gain != nullptr) {  // through both layer norms, block by block
    T* scaled = s.scaled.data();
    T* xn = s.normed_in.data();
    for (int64_t k = 0; k < G; ++k) {
      const int64_t off = k * H;
      affine_norm_backward(d_raw + off, d + off, normed + off, rstd[k], w.rec_gain + off, s.d_gain.data() + off,
                           static_cast<T*>(nullptr), scaled, H);
      const T in_mean = in_stats[2 * k], in_rs = in_stats[2 * k + 1];
      at::vec::map([=](V v) { return (v - V(in_mean)) * V(in_rs); }, xn, xw + off, H);
      affine_norm_backward(d + off, d + off, xn, in_rs, w.in_gain + off, s.d_in_gain.data() + off,
                           s.d_in_bias.data() + off, scaled, H);
    }
  }
}

// fgr's weight gradient over steps [t0, t0 + n): dW_gg += sum_t d_t^T q_{t-1}, d_block (n, B, 3H)
// holding the gradient at the steps' (i, f, o) pre-activations and q_{t-1} being the (i, f, o)
// carried into step t: gates0 before the first step; else the previous step's activations in acts
// where that step was active, and the carry it held where not, which is gates0 (an active step
// follows an inactive one only in reverse, where every step before it is inactive); zero on the
// rows step t restarts.
void add_gate_weight_grad(Tensor& d_weight_gg, const Tensor& d_block, const Tensor& acts, const Tensor& gates0,
                          const OptTensor& active, const Restarts& restarts, const Slots& slot, int64_t t0,
                          int64_t n) {
  const int64_t Q = d_block.size(2), start = slot.step(0);
  if (start >= t0 && start < t0 + n) {  // the first step reads gates0
    const Tensor q0 = restarts.any(start) ? gates0.masked_fill(restarts.at_step(start), 0) : gates0;
    d_weight_gg.addmm_(d_block.select(0, start - t0).t(), q0);
  }
  const int64_t first = slot.reverse ? t0 : std::max<int64_t>(t0, 1);          // steps [first, last)
  const int64_t last = slot.reverse ? std::min<int64_t>(t0 + n, slot.T - 1) : t0 + n;
  if (last <= first) return;
  const int64_t count = last - first, before = slot.reverse ? first + 1 : first - 1;  // q_{t-1} of `first`
  Tensor q = acts.narrow(0, before, count).narrow(2, 0, Q);
  if (active) q = at::where(active->narrow(0, before, count) > 0, q, gates0);
  if (restarts.present()) q = q.masked_fill(restarts.steps(first, count), 0);
  const Tensor d = d_block.narrow(0, first - t0, count);
  d_weight_gg.addmm_(d.reshape({-1, Q}).t(), q.reshape({-1, Q}));
}

std::vector<Tensor> lstm_backward(const Tensor& d_out, const Tensor& d_hn, const Tensor& d_cn,
                                  const OptTensor& d_gates_n, const OptTensor& xw_, const Tensor& states,
                                  const Tensor& cells, const Tensor& acts, const OptTensor& c_new,
                                  const OptTensor& h_hat, const OptTensor& normed, const OptTensor& rstd,
                                  const OptTensor& in_stats, const OptTensor& c_stats, const OptTensor& gates0,
                                  const Tensor& weight_hh, const OptTensor& in_gain_, const OptTensor& in_bias_,
                                  const OptTensor& rec_gain_,
                                  const OptTensor& peep_, const OptTensor& ln_w_, const OptTensor& ln_b_,
                                  const OptTensor& weight_hr_, const OptTensor& weight_gg_, const OptTensor& keep_h,
                                  const OptTensor& keep_c, const OptTensor& rec_mask_, const OptTensor& active_,
                                  const OptTensor& restart, at::IntArrayRef layout, bool reverse) {
  const NoAutograd no_autograd;
  const OptTensor active = contiguous(active_);
  const Layout L(layout);
  const OptTensor in_gain = contiguous(in_gain_), in_bias = contiguous(in_bias_), rec_gain = contiguous(rec_gain_),
                  peep = contiguous(peep_), ln_w = contiguous(ln_w_), ln_b = contiguous(ln_b_),
                  weight_hr = contiguous(weight_hr_), rec_mask = contiguous(rec_mask_);
  const Tensor d_out_c = d_out.contiguous();
  const OptTensor xw = contiguous(xw_);  // x W^T, with layer norm only
  const int64_t T = acts.size(0), B = acts.size(1), GH = acts.size(2), H = cells.size(2), R = states.size(2);
  const int64_t G = GH / H;
  const Slots slot{T, reverse};
  const auto opts = acts.options();
  const bool proj = weight_hr.has_value(), norm = rec_gain.has_value(), cell_norm = ln_w.has_value();

  TORCH_CHECK(norm == in_gain.has_value() && norm == in_bias.has_value(),
              "gatedrnn: layer norm needs in_gain, in_bias and rec_gain together");
  TORCH_CHECK(norm == xw.has_value(), "gatedrnn: the backward pass needs x W^T with layer norm only");
  const OptTensor weight_gg = contiguous(weight_gg_);
  const bool fgr = weight_gg.has_value();
  check_gate_recurrence(L, fgr, H);
  check_masks(keep_h, keep_c, active, rec_mask, T, B);
  const Restarts restarts(restart, T, B);
  Tensor d_z = at::empty({T, B, GH}, opts);  // at the pre-activations (= at xw); with layer norm at x W^T
  // The gradient at the recurrent product h_{t-1} U^T, for dh and for dU = sum_t d_raw_t^T h_{t-1}.
  // Without layer norm it is d_z itself, and dU is one product after the loop. With it, it is a
  // ring of a few steps, added into dU a chunk at a time: a (T, B, G*H) buffer would be freshly
  // mapped memory at every call (page faults cost as much as the layer norms' arithmetic here).
  const Chunks chunks{norm ? std::min<int64_t>(T, 16) : T, T, reverse};
  Tensor d_raw = norm ? at::empty({chunks.size, B, GH}, opts) : d_z;
  Tensor d_weight_hh = norm ? at::zeros({GH, R}, opts) : Tensor();
  const at::indexing::Slice prev_slice = reverse ? at::indexing::Slice(1, T + 1) : at::indexing::Slice(0, T);
  const Tensor before = restarts.carried(states.index({prev_slice}));  // h_{t-1} as each step read it
  const Tensor inputs = rec_mask ? before * *rec_mask : before;
  Tensor d_h_new = proj ? at::empty({T, B, R}, opts) : Tensor();       // at the projected h_t
  Tensor dh_hat = proj ? at::empty({B, H}, opts) : Tensor();
  Tensor dh = d_hn.contiguous().clone(), dc = d_cn.contiguous().clone();
  Tensor gh = at::empty({B, R}, opts), dh_next = at::empty({B, R}, opts), dc_next = at::empty({B, H}, opts);
  const int64_t threads = at::get_num_threads();
  std::vector<Tensor> scratch_sums;
  // fgr: the gradient at the (i, f, o) pre-activations, for the gradient of q_{t-1} (dq, one step)
  // and for dW_gg: d_z's own columns without layer norm (dW_gg one product after the loop); with it
  // (the layer norms' backward overwrites d_z) a ring of chunk steps, like d_raw
  Tensor d_gates = fgr ? (norm ? at::empty({chunks.size, B, 3 * H}, opts) : d_z.narrow(2, 0, 3 * H)) : Tensor();
  Tensor d_weight_gg = fgr ? at::zeros({3 * H, 3 * H}, opts) : at::empty({0}, opts);
  // the gradient at the (i, f, o) carried after the step, from the final one's (dq_held: its part
  // that an inactive row's held carry passes to the one before)
  Tensor dq = fgr ? (d_gates_n ? d_gates_n->contiguous().clone() : at::zeros({B, 3 * H}, opts)) : Tensor();
  Tensor dq_held = fgr && active ? at::empty({B, 3 * H}, opts) : Tensor();
  const Tensor q0 = fgr ? initial_gates(gates0, B, 3 * H, opts) : Tensor();
  Tensor c_entering = restarts.present() ? at::empty({B, H}, opts) : Tensor();  // c_{t-1} of a restarting step

  const at::ThreadLocalState tls;  // for the steps' worker threads (see parallel_rows)
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "gatedrnn_lstm_backward", [&] {
    using scalar = scalar_t;
    const Weights<scalar> w(in_gain, in_bias, rec_gain, peep, ln_w, ln_b);
    std::vector<RowScratch<scalar>> scratch;
    for (int64_t k = 0; k < threads; ++k) scratch.emplace_back(H, GH, norm, L.peephole, cell_norm);
    const Tensor c_out = keep_c ? *c_new : cells;  // c_t of step t: c_new[t], or cells[next(t)]
    for (int64_t k = T - 1; k >= 0; --k) {
      const int64_t t = slot.step(k), p = slot.prev(t);
      const scalar* a = ptr<scalar>(acts) + t * B * GH;
      scalar* d = ptr<scalar>(d_z) + t * B * GH;
      scalar* dr = ptr<scalar>(d_raw) + chunks.slot(t) * B * GH;
      const scalar* c = keep_c ? ptr<scalar>(c_out) + t * B * H : ptr<scalar>(c_out) + slot.next(t) * B * H;
      const Tensor c_prev = restarts.entering(step_of(cells, p), c_entering, t);
      const scalar* cp = ptr<scalar>(c_prev);
      const scalar* nrm = norm ? ptr<scalar>(normed) + t * B * GH : nullptr;
      const scalar* rs = norm ? ptr<scalar>(rstd) + t * B * G : nullptr;
      const scalar* ins = norm ? ptr<scalar>(in_stats) + t * B * G * 2 : nullptr;
      const scalar* x = norm ? ptr<scalar>(xw) + t * B * GH : nullptr;
      const scalar* cs = cell_norm ? ptr<scalar>(c_stats) + t * B * 2 : nullptr;
      const Tensor d_out_t = step_of(d_out_c, t), d_raw_t = step_of(d_raw, chunks.slot(t));
      scalar* dqp = fgr ? ptr<scalar>(dq) : nullptr;
      scalar* dg = fgr && norm ? ptr<scalar>(d_gates) + chunks.slot(t) * B * 3 * H : nullptr;
      // one parallel region per step, as in the forward pass
      parallel_rows(tls, B, row_grain(GH), [&](int64_t begin, int64_t end) {
        const Rows rows{begin, end};
        RowScratch<scalar>& s = scratch[at::get_thread_num()];
        if (fgr && active) {  // an inactive row's q_t is q_{t-1} held: its gradient passes there
          Tensor dq_rows = rows(dq), held = rows(dq_held), act = rows(step_of(*active, t));
          at::sub_out(held, dq_rows, dq_rows * act);
          dq_rows.mul_(act);
        }
        Tensor g = rows(gh);
        at::add_out(g, rows(dh), rows(d_out_t));  // the gradient at the carried h_t
        Tensor dh_step = g, dh_old, dc_step = rows(dc), dc_old;
        if (keep_h) {
          dh_old = g * rows(step_of(*keep_h, t));
          dh_step = g - dh_old;
        }
        if (keep_c) {
          dc_old = dc_step * rows(step_of(*keep_c, t));
          dc_step = dc_step - dc_old;
        }
        if (proj) {
          rows(step_of(d_h_new, t)).copy_(dh_step);
          Tensor out = rows(dh_hat);
          dh_step = at::mm_out(out, dh_step, *weight_hr);
        }
        dh_step = dh_step.contiguous();
        dc_step = dc_step.contiguous();
        const scalar* dhp = ptr<scalar>(dh_step);  // these two hold rows [begin, end) only
        const scalar* dcp = ptr<scalar>(dc_step);
        scalar* dcn = ptr<scalar>(dc_next);
        for (int64_t b = begin; b < end; ++b) {
          backward_row(L, w, H, G, a + b * GH, d + b * GH, dr + b * GH, x ? x + b * GH : nullptr,
                       nrm ? nrm + b * GH : nullptr,
                       rs ? rs + b * G : nullptr, ins ? ins + b * G * 2 : nullptr, c + b * H, cp + b * H, cs ? cs + 2 * b : nullptr,
                       dhp + (b - begin) * H, dcp + (b - begin) * H, dqp ? dqp + b * 3 * H : nullptr,
                       dg ? dg + b * 3 * H : nullptr, dcn + b * H, s);
        }
        if (fgr) {  // the gradient at q_{t-1}, for the step before (or gates0)
          Tensor out = rows(dq);
          at::mm_out(out, rows(step_of(d_gates, chunks.slot(t))), *weight_gg);
          if (active) out.add_(rows(dq_held));
        }
        Tensor dh_rows = rows(dh_next);
        at::mm_out(dh_rows, rows(d_raw_t), weight_hh);
        if (rec_mask) dh_rows.mul_(rows(*rec_mask));
        if (keep_h) dh_rows.add_(dh_old);
        if (keep_c) rows(dc_next).add_(dc_old);
      });
      std::swap(dh, dh_next);
      std::swap(dc, dc_next);
      restarts.zero(dh, t);  // nothing flows back through a restart
      restarts.zero(dc, t);
      if (fgr) restarts.zero(dq, t);
      if (norm && chunks.completes(t)) {
        const int64_t t0 = chunks.first(t), n = chunks.length(t);
        d_weight_hh.addmm_(d_raw.narrow(0, 0, n).view({n * B, GH}).t(), inputs.narrow(0, t0, n).reshape({n * B, R}));
        if (fgr) add_gate_weight_grad(d_weight_gg, d_gates.narrow(0, 0, n), acts, q0, active, restarts, slot, t0, n);
      }
    }
    // the threads' parameter-gradient sums, added up
    RowScratch<scalar>& total = scratch[0];
    for (int64_t k = 1; k < threads; ++k) total.add(scratch[k]);
    scratch_sums = {to_tensor(total.d_gain, opts),    to_tensor(total.d_peep, opts),
                    to_tensor(total.d_ln_w, opts),    to_tensor(total.d_ln_b, opts),
                    to_tensor(total.d_in_gain, opts), to_tensor(total.d_in_bias, opts)};
  });
  if (!norm) d_weight_hh = d_raw.view({T * B, GH}).t().mm(inputs.reshape({T * B, R}));
  if (fgr && !norm) add_gate_weight_grad(d_weight_gg, d_gates, acts, q0, active, restarts, slot, 0, T);
  Tensor d_weight_hr = proj ? d_h_new.view({T * B, R}).t().mm(h_hat->view({T * B, H})) : at::empty({0}, opts);
  return {d_z, dh, dc, d_weight_hh, scratch_sums[0], scratch_sums[1], scratch_sums[2], scratch_sums[3], d_weight_hr,
          scratch_sums[4], scratch_sums[5], d_weight_gg, fgr ? dq : at::empty({0}, opts)};
}

}  // namespace

TORCH_LIBRARY(gatedrnn_cpu, m) {
  m.def("lstm_forward(Tensor xw, Tensor h0, Tensor c0, Tensor? gates0, Tensor weight_hh, Tensor? in_gain, "
        "Tensor? in_bias, Tensor? rec_gain, Tensor? peep, Tensor? ln_weight_c, Tensor? ln_bias_c, "
        "Tensor? weight_hr, Tensor? weight_gg, Tensor? keep_h, Tensor? keep_c, Tensor? recurrent_mask, "
        "Tensor? active, Tensor? restart, int[] layout, bool reverse, float eps) -> Tensor[]");
  m.def("lstm_backward(Tensor d_out, Tensor d_hn, Tensor d_cn, Tensor? d_gates_n, Tensor? xw, Tensor states, "
        "Tensor cells, Tensor acts, Tensor? c_new, Tensor? h_hat, Tensor? normed, Tensor? rstd, Tensor? in_stats, "
        "Tensor? c_stats, Tensor? gates0, Tensor weight_hh, Tensor? in_gain, Tensor? in_bias, Tensor? rec_gain, "
        "Tensor? peep, Tensor? ln_weight_c, Tensor? ln_bias_c, Tensor? weight_hr, Tensor? weight_gg, "
        "Tensor? keep_h, Tensor? keep_c, Tensor? recurrent_mask, Tensor? active, Tensor? restart, int[] layout, "
        "bool reverse) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(gatedrnn_cpu, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
}
