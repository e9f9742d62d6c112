// The LSTM's forward and backward passes through time, compiled: the loops of
// gatedrnn/backends/cpu/lstm.py (whose docstring has the equations) for every variant but fgr,
// with recurrent and cell layer norm, peepholes, projection, zoneout / length masks and
// recurrent dropout. One call runs a whole layer and direction; only the matrix products go
// through ATen, the gate math of a step is one pass per batch row, vectorised with ATen's
// Vectorized (Sleef's exp and tanh), with no Python and no temporary tensors in the loop.
//
// Shapes: T steps, B batch, H hidden, R = output size (H, or the projection's), G gate blocks of
// H columns in the backend's order (the variant's sigmoid gates among i, f, o, then g).
// Carried states live in (T+1, B, .) buffers: step t reads slot prev(t) and writes new(t).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

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

OptTensor contiguous(const OptTensor& t) {
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

// The weights a step reads, as raw pointers (null where the configuration has none).
template <typename T>
struct Weights {
  const T *rec_gain, *peep, *ln_w, *ln_b;
  Weights(const OptTensor& gain, const OptTensor& peep_, const OptTensor& w, const OptTensor& b)
      : rec_gain(ptr<T>(gain)), peep(ptr<T>(peep_)), ln_w(ptr<T>(w)), ln_b(ptr<T>(b)) {}
};

// ---------------------------------------------------------------------------------------------
// Forward

// One batch row of one step, after the recurrent product: gate activations (a, G*H), the new
// cell c, the cell norm's statistics, and h before the projection.
template <typename T>
void forward_row(const Layout& L, const Weights<T>& w, int64_t H, int64_t G, double eps, T* a, const T* xw,
                 const T* raw, T* normed, T* rstd, const T* c_prev, T* c, T* c_stats, T* h, T* y) {
  if (w.rec_gain != nullptr) {  // a = xw + LN(raw) * gain, block by block
    for (int64_t k = 0; k < G; ++k) {
      const int64_t off = k * H;
      const auto [mean, rs] = moments(raw + off, H, eps);
      rstd[k] = rs;
      at::vec::map([mean = mean, rs = rs](Vec<T> v) { return (v - Vec<T>(mean)) * Vec<T>(rs); },
                   normed + off, raw + off, H);
      at::vec::map3([](Vec<T> x, Vec<T> n, Vec<T> gain) { return x + n * gain; }, a + off, xw + off,
                    normed + off, w.rec_gain + off, H);
    }
  }
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
    const auto [mean, rs] = moments(c, H, eps);
    c_stats[0] = mean, c_stats[1] = rs;
    at::vec::map3([mean = mean, rs = rs](Vec<T> v, Vec<T> gain, Vec<T> shift) {
      return (v - Vec<T>(mean)) * Vec<T>(rs) * gain + shift;
    }, y, c, w.ln_w, w.ln_b, H);
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

// Runs every row of step t; rows are independent, so they may run in parallel.
template <typename T>
void forward_rows(const Layout& L, const Weights<T>& w, int64_t B, int64_t H, int64_t G, double eps, T* a,
                  const T* xw, const T* raw, T* normed, T* rstd, const T* c_prev, T* c, T* c_stats, T* h) {
  const int64_t GH = G * H;
  at::parallel_for(0, B, std::max<int64_t>(1, 16384 / GH), [&](int64_t begin, int64_t end) {
    std::vector<T> y(H);
    for (int64_t b = begin; b < end; ++b) {
      forward_row(L, w, H, G, eps, a + b * GH, xw + b * GH, raw ? raw + b * GH : nullptr,
                  normed ? normed + b * GH : nullptr, rstd ? rstd + b * G : nullptr, c_prev + b * H, c + b * H,
                  c_stats ? c_stats + 2 * b : nullptr, h + b * H, y.data());
    }
  });
}

std::vector<Tensor> lstm_forward(const Tensor& xw_, const Tensor& h0, const Tensor& c0, const Tensor& weight_hh,
                                 const OptTensor& rec_gain_, const OptTensor& peep_, const OptTensor& ln_w_,
                                 const OptTensor& ln_b_, const OptTensor& weight_hr_, const OptTensor& keep_h,
                                 const OptTensor& keep_c, const OptTensor& rec_mask_, at::IntArrayRef layout,
                                 bool reverse, double eps) {
  const Layout L(layout);
  const Tensor xw = xw_.contiguous();
  const OptTensor rec_gain = contiguous(rec_gain_), peep = contiguous(peep_), ln_w = contiguous(ln_w_),
                  ln_b = contiguous(ln_b_), weight_hr = contiguous(weight_hr_), rec_mask = contiguous(rec_mask_);
  const int64_t T = xw.size(0), B = xw.size(1), GH = xw.size(2), H = c0.size(1), R = h0.size(1), G = GH / H;
  const Slots slot{T, reverse};
  const auto opts = xw.options();
  const bool proj = weight_hr.has_value(), norm = rec_gain.has_value(), cell_norm = ln_w.has_value();

  Tensor states = at::empty({T + 1, B, R}, opts), cells = at::empty({T + 1, B, H}, opts);
  states.select(0, slot.prev(slot.step(0))).copy_(h0);
  cells.select(0, slot.prev(slot.step(0))).copy_(c0);
  Tensor acts = at::empty({T, B, GH}, opts);
  Tensor c_new = keep_c ? at::empty({T, B, H}, opts) : at::empty({0}, opts);
  Tensor h_hat = proj ? at::empty({T, B, H}, opts) : at::empty({0}, opts);
  Tensor normed = norm ? at::empty({T, B, GH}, opts) : at::empty({0}, opts);
  Tensor rstd = norm ? at::empty({T, B, G}, opts) : at::empty({0}, opts);
  Tensor c_stats = cell_norm ? at::empty({T, B, 2}, opts) : at::empty({0}, opts);  // (mean, rstd)
  Tensor h_tmp = keep_h ? at::empty({B, R}, opts) : Tensor();   // h_t before the zoneout / length blend
  Tensor masked = rec_mask ? at::empty({B, R}, opts) : Tensor();  // h_{t-1} times the dropout mask
  Tensor raw = norm ? at::empty({B, GH}, opts) : Tensor();      // h_{t-1} U^T before its layer norm
  const Tensor weight_t = weight_hh.t(), proj_t = proj ? weight_hr->t() : Tensor();

  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gatedrnn_lstm_forward", [&] {
    const Weights<scalar_t> w(rec_gain, peep, ln_w, ln_b);
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = slot.step(k), p = slot.prev(t), n = slot.next(t);
      Tensor h_prev = states.select(0, p), c_prev = cells.select(0, p), a = acts.select(0, t);
      Tensor h_next = states.select(0, n), c_next = cells.select(0, n);
      const Tensor h_in = rec_mask ? at::mul_out(masked, h_prev, *rec_mask) : h_prev;
      if (norm) {
        at::mm_out(raw, h_in, weight_t);
      } else {
        at::addmm_out(a, xw.select(0, t), h_in, weight_t);
      }
      Tensor c = keep_c ? c_new.select(0, t) : c_next;
      Tensor h = proj ? h_hat.select(0, t) : (keep_h ? h_tmp : h_next);
      forward_rows<scalar_t>(L, w, B, H, G, eps, ptr<scalar_t>(a), ptr<scalar_t>(xw) + t * B * GH,
                             norm ? ptr<scalar_t>(raw) : nullptr, norm ? ptr<scalar_t>(normed) + t * B * GH : nullptr,
                             norm ? ptr<scalar_t>(rstd) + t * B * G : nullptr, ptr<scalar_t>(c_prev), ptr<scalar_t>(c),
                             cell_norm ? ptr<scalar_t>(c_stats) + t * B * 2 : nullptr, ptr<scalar_t>(h));
      if (proj) at::mm_out(keep_h ? h_tmp : h_next, h, proj_t);
      if (keep_h) at::lerp_out(h_next, h_tmp, h_prev, keep_h->select(0, t));
      if (keep_c) at::lerp_out(c_next, c, c_prev, keep_c->select(0, t));
    }
  });
  return {states, cells, acts, c_new, h_hat, normed, rstd, c_stats};
}

// ---------------------------------------------------------------------------------------------
// Backward

// Per-row scratch and the parameter-gradient sums of the rows one thread runs.
template <typename T>
struct RowScratch {
  std::vector<T> y, d_c, normed_c, scaled;
  std::vector<T> d_gain, d_peep, d_ln_w, d_ln_b;
  RowScratch(int64_t H, int64_t GH, bool norm, bool peephole, bool cell_norm)
      : y(H), d_c(H), normed_c(cell_norm ? H : 0), scaled(norm ? H : 0), d_gain(norm ? GH : 0, T(0)),
        d_peep(peephole ? 3 * H : 0, T(0)), d_ln_w(cell_norm ? H : 0, T(0)), d_ln_b(cell_norm ? H : 0, T(0)) {}
};

// One batch row of one step, backward: from dh (at h before the projection) and the part of dc
// that enters the step, writes the pre-activation gradients d (G*H), the raw product's gradient
// d_raw (with layer norm), the gradient of c_{t-1} that passes through the step (dc_prev), and
// adds this row's share of the parameter gradients to ``s``.
template <typename T>
void backward_row(const Layout& L, const Weights<T>& w, int64_t H, int64_t G, const T* a, T* d, T* d_raw,
                  const T* normed, const T* rstd, const T* c, const T* c_prev, const T* c_stats, const T* dh,
                  const T* dc_in, T* dc_prev, RowScratch<T>& s) {
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
  if (L.o >= 0) {  // do = dh y sigma'(o); dy = dh o
    at::vec::map3([one](V g, V yy, V o) { return g * yy * o * (one - o); }, d + L.o, dh, y, a + L.o, H);
    at::vec::map2([](V g, V o) { return g * o; }, d_c, dh, a + L.o, H);
  } else {
    std::copy(dh, dh + H, d_c);
  }
  if (L.tanh_y) at::vec::map2([one](V g, V yy) { return g * (one - yy * yy); }, d_c, d_c, y, H);
  if (w.ln_w != nullptr) {  // through the cell layer norm; d_c holds the gradient at its output
    accumulate_product(s.d_ln_w.data(), d_c, cn, H);
    at::vec::map2([](V acc, V g) { return acc + g; }, s.d_ln_b.data(), s.d_ln_b.data(), d_c, H);
    at::vec::map2([](V g, V gain) { return g * gain; }, d_c, d_c, w.ln_w, H);
    norm_backward(d_c, d_c, cn, c_stats[1], H);
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
  if (w.rec_gain != nullptr) {  // through the recurrent layer norm, block by block
    T* scaled = s.scaled.data();
    for (int64_t k = 0; k < G; ++k) {
      const int64_t off = k * H;
      accumulate_product(s.d_gain.data() + off, d + off, normed + off, H);
      at::vec::map2([](V gr, V gain) { return gr * gain; }, scaled, d + off, w.rec_gain + off, H);
      norm_backward(d_raw + off, scaled, normed + off, rstd[k], H);
    }
  }
}

template <typename T>
void add_into(std::vector<T>& total, const std::vector<T>& part) {
  for (size_t j = 0; j < total.size(); ++j) total[j] += part[j];
}

std::vector<Tensor> lstm_backward(const Tensor& d_out, const Tensor& d_hn, const Tensor& d_cn, const Tensor& states,
                                  const Tensor& cells, const Tensor& acts, const OptTensor& c_new,
                                  const OptTensor& h_hat, const OptTensor& normed, const OptTensor& rstd,
                                  const OptTensor& c_stats, const Tensor& weight_hh, const OptTensor& rec_gain_,
                                  const OptTensor& peep_, const OptTensor& ln_w_, const OptTensor& ln_b_,
                                  const OptTensor& weight_hr_, const OptTensor& keep_h, const OptTensor& keep_c,
                                  const OptTensor& rec_mask_, at::IntArrayRef layout, bool reverse) {
  const Layout L(layout);
  const OptTensor rec_gain = contiguous(rec_gain_), peep = contiguous(peep_), ln_w = contiguous(ln_w_),
                  ln_b = contiguous(ln_b_), weight_hr = contiguous(weight_hr_), rec_mask = contiguous(rec_mask_);
  const Tensor d_out_c = d_out.contiguous();
  const int64_t T = acts.size(0), B = acts.size(1), GH = acts.size(2), H = cells.size(2), R = states.size(2);
  const int64_t G = GH / H;
  const Slots slot{T, reverse};
  const auto opts = acts.options();
  const bool proj = weight_hr.has_value(), norm = rec_gain.has_value(), cell_norm = ln_w.has_value();

  Tensor d_z = at::empty({T, B, GH}, opts);                             // at the pre-activations (= at xw)
  Tensor d_raw = norm ? at::empty({T, B, GH}, opts) : d_z;              // at h_{t-1} U^T
  Tensor d_h_new = proj ? at::empty({T, B, R}, opts) : Tensor();       // at the projected h_t
  Tensor dh_hat = proj ? at::empty({B, H}, opts) : Tensor();
  Tensor dh = d_hn.contiguous().clone(), dc = d_cn.contiguous().clone();
  Tensor gh = at::empty({B, R}, opts), dh_next = at::empty({B, R}, opts), dc_next = at::empty({B, H}, opts);
  const int64_t threads = at::get_num_threads();
  std::vector<Tensor> scratch_sums;

  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "gatedrnn_lstm_backward", [&] {
    using scalar = scalar_t;
    const Weights<scalar> w(rec_gain, peep, ln_w, ln_b);
    std::vector<RowScratch<scalar>> scratch;
    for (int64_t k = 0; k < threads; ++k) scratch.emplace_back(H, GH, norm, L.peephole, cell_norm);
    const Tensor c_out = keep_c ? *c_new : cells;  // c_t of step t: c_new[t], or cells[next(t)]
    for (int64_t k = T - 1; k >= 0; --k) {
      const int64_t t = slot.step(k), p = slot.prev(t);
      at::add_out(gh, dh, d_out_c.select(0, t));
      Tensor dh_step = gh, dh_old, dc_step = dc, dc_old;
      if (keep_h) {
        dh_old = gh * keep_h->select(0, t);
        dh_step = gh - dh_old;
      }
      if (keep_c) {
        dc_old = dc * keep_c->select(0, t);
        dc_step = dc - dc_old;
      }
      if (proj) {
        d_h_new.select(0, t).copy_(dh_step);
        dh_step = at::mm_out(dh_hat, dh_step, *weight_hr);
      }
      dh_step = dh_step.contiguous();
      dc_step = dc_step.contiguous();
      const scalar* a = ptr<scalar>(acts) + t * B * GH;
      scalar* d = ptr<scalar>(d_z) + t * B * GH;
      scalar* dr = ptr<scalar>(d_raw) + t * B * GH;
      const scalar* c = keep_c ? ptr<scalar>(c_out) + t * B * H : ptr<scalar>(c_out) + slot.next(t) * B * H;
      const scalar* cp = ptr<scalar>(cells) + p * B * H;
      const scalar* nrm = norm ? ptr<scalar>(normed) + t * B * GH : nullptr;
      const scalar* rs = norm ? ptr<scalar>(rstd) + t * B * G : nullptr;
      const scalar* cs = cell_norm ? ptr<scalar>(c_stats) + t * B * 2 : nullptr;
      const scalar* dhp = ptr<scalar>(dh_step);
      const scalar* dcp = ptr<scalar>(dc_step);
      scalar* dcn = ptr<scalar>(dc_next);
      at::parallel_for(0, B, std::max<int64_t>(1, 16384 / GH), [&](int64_t begin, int64_t end) {
        RowScratch<scalar>& s = scratch[at::get_thread_num()];
        for (int64_t b = begin; b < end; ++b) {
          backward_row(L, w, H, G, a + b * GH, d + b * GH, dr + b * GH, nrm ? nrm + b * GH : nullptr,
                       rs ? rs + b * G : nullptr, c + b * H, cp + b * H, cs ? cs + 2 * b : nullptr, dhp + b * H,
                       dcp + b * H, dcn + b * H, s);
        }
      });
      at::mm_out(dh_next, d_raw.select(0, t), weight_hh);
      if (rec_mask) dh_next.mul_(*rec_mask);
      if (keep_h) dh_next.add_(dh_old);
      if (keep_c) dc_next.add_(dc_old);
      std::swap(dh, dh_next);
      std::swap(dc, dc_next);
    }
    // the threads' parameter-gradient sums, added up
    RowScratch<scalar>& total = scratch[0];
    for (int64_t k = 1; k < threads; ++k) {
      add_into(total.d_gain, scratch[k].d_gain);
      add_into(total.d_peep, scratch[k].d_peep);
      add_into(total.d_ln_w, scratch[k].d_ln_w);
      add_into(total.d_ln_b, scratch[k].d_ln_b);
    }
    auto as_tensor = [&](const std::vector<scalar>& v) {
      Tensor out = at::empty({static_cast<int64_t>(v.size())}, opts);
      std::copy(v.begin(), v.end(), ptr<scalar>(out));
      return out;
    };
    scratch_sums = {as_tensor(total.d_gain), as_tensor(total.d_peep), as_tensor(total.d_ln_w),
                    as_tensor(total.d_ln_b)};
  });
  const at::indexing::Slice prev_slice = reverse ? at::indexing::Slice(1, T + 1) : at::indexing::Slice(0, T);
  Tensor inputs = states.index({prev_slice});
  if (rec_mask) inputs = inputs * *rec_mask;
  Tensor d_weight_hh = d_raw.view({T * B, GH}).t().mm(inputs.reshape({T * B, R}));
  Tensor d_weight_hr = proj ? d_h_new.view({T * B, R}).t().mm(h_hat->view({T * B, H})) : at::empty({0}, opts);
  return {d_z, dh, dc, d_weight_hh, scratch_sums[0], scratch_sums[1], scratch_sums[2], scratch_sums[3], d_weight_hr};
}

}  // namespace

TORCH_LIBRARY(gatedrnn_cpu, m) {
  m.def("lstm_forward(Tensor xw, Tensor h0, Tensor c0, Tensor weight_hh, Tensor? rec_gain, Tensor? peep, "
        "Tensor? ln_weight_c, Tensor? ln_bias_c, Tensor? weight_hr, Tensor? keep_h, Tensor? keep_c, "
        "Tensor? recurrent_mask, int[] layout, bool reverse, float eps) -> Tensor[]");
  m.def("lstm_backward(Tensor d_out, Tensor d_hn, Tensor d_cn, Tensor states, Tensor cells, Tensor acts, "
        "Tensor? c_new, Tensor? h_hat, Tensor? normed, Tensor? rstd, Tensor? c_stats, Tensor weight_hh, "
        "Tensor? rec_gain, Tensor? peep, Tensor? ln_weight_c, Tensor? ln_bias_c, Tensor? weight_hr, "
        "Tensor? keep_h, Tensor? keep_c, Tensor? recurrent_mask, int[] layout, bool reverse) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(gatedrnn_cpu, CPU, m) {
  m.impl("lstm_forward", &lstm_forward);
  m.impl("lstm_backward", &lstm_backward);
}
