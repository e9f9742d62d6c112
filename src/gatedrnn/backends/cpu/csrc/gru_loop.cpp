// The GRU's forward and backward passes through time, compiled: the loop of
// gatedrnn/backends/cpu/gru.py (whose docstring has the equations) for both reset forms, with
// layer norm (input and recurrent blocks), zoneout / length masks and recurrent dropout, in the
// same structure as lstm_loop.cpp: one call per layer and direction, one parallel region per
// step over blocks of batch rows, each task running its rows' products and gate math.
//
// Gate blocks r, z, n of H columns. Saved activations per step: r, z, n, and for reset after
// v = u_n + s_n (the n block's recurrent part with its shift, which r multiplies). A restart (the
// layer's reset mask, common.h's Restarts; not the reset gate r) zeroes h before its step, and
// backward the gradient at h_{t-1} on its rows.

#include "common.h"

namespace {

using namespace gatedrnn_cpu;

// The weights a step reads (null where absent): with layer norm the input gain, the summed bias
// and the recurrent gain come together; ``shift`` is reset-after's n-block recurrent shift.
template <typename T>
struct GruWeights {
  const T *in_gain, *in_bias, *rec_gain, *shift;
};

// The per-row pointers of one step: activations a (r, z, n[, v]), the input row xw (x W^T with
// layer norm), the layer norms' saved statistics, the states.
template <typename T>
struct GruRow {
  T* a;
  const T* xw;
  T *normed, *rstd, *in_stats;
};

// Input part of block k: LN(x W^T) in_gain + in_bias into ``out`` (saving the statistics), or
// the precomputed input part itself.
template <typename T>
const T* input_block(const GruWeights<T>& w, const GruRow<T>& row, int64_t k, int64_t H, double eps, T* out) {
  if (w.in_gain == nullptr) return row.xw + k * H;
  const int64_t off = k * H;
  std::tie(row.in_stats[2 * k], row.in_stats[2 * k + 1]) =
      normalise_affine(out, row.xw + off, w.in_gain + off, w.in_bias + off, H, eps);
  return out;
}

// Recurrent part of block k from its raw product: LN(raw) rec_gain into ``out``, or raw itself.
template <typename T>
const T* recurrent_block(const GruWeights<T>& w, const GruRow<T>& row, const T* raw, int64_t k, int64_t H,
                         double eps, T* out) {
  if (w.rec_gain == nullptr) return raw;
  const int64_t off = k * H;
  row.rstd[k] = normalise(row.normed + off, raw, H, eps).second;
  at::vec::map2([](Vec<T> n, Vec<T> g) { return n * g; }, out, row.normed + off, w.rec_gain + off, H);
  return out;
}

// r, z = sigmoid(input + recurrent) for the first two blocks; raw holds their products.
template <typename T>
void update_and_reset_gates(const GruWeights<T>& w, const GruRow<T>& row, const T* raw, int64_t H, double eps,
                            T* scratch_x, T* scratch_u) {
  for (int64_t k = 0; k < 2; ++k) {
    const T* x = input_block(w, row, k, H, eps, scratch_x);
    const T* u = recurrent_block(w, row, raw + k * H, k, H, eps, scratch_u);
    at::vec::map2([](Vec<T> a, Vec<T> b) { return a + b; }, row.a + k * H, x, u, H);
  }
  sigmoid_inplace(row.a, 2 * H);
}

// h = n + z (h_prev - n).
template <typename T>
void new_state(const T* a, const T* h_prev, T* h, int64_t H) {
  at::vec::map3([](Vec<T> n, Vec<T> z, Vec<T> hp) { return n + z * (hp - n); }, h, a + 2 * H, a + H, h_prev, H);
}

std::vector<Tensor> gru_forward(const Tensor& xw_, const Tensor& h0, const Tensor& weight_hh, const OptTensor& in_gain_,
                                const OptTensor& in_bias_, const OptTensor& rec_gain_, const OptTensor& rec_shift_,
                                const OptTensor& keep_h, const OptTensor& rec_mask_, const OptTensor& restart,
                                bool reset_after, bool reverse, double eps) {
  const NoAutograd no_autograd;
  const Tensor xw = xw_.contiguous();
  const OptTensor in_gain = contiguous(in_gain_), in_bias = contiguous(in_bias_), rec_gain = contiguous(rec_gain_),
                  rec_shift = contiguous(rec_shift_), rec_mask = contiguous(rec_mask_);
  const int64_t T = xw.size(0), B = xw.size(1), H = h0.size(1), A = (reset_after ? 4 : 3) * H;
  const Slots slot{T, reverse};
  const auto opts = xw.options();
  const bool norm = rec_gain.has_value();
  TORCH_CHECK(norm == in_gain.has_value() && norm == in_bias.has_value(),
              "gatedrnn: layer norm needs in_gain, in_bias and rec_gain together");
  check_masks(keep_h, std::nullopt, std::nullopt, rec_mask, T, B);
  const Restarts restarts(restart, T, B);

  Tensor states = at::empty({T + 1, B, H}, opts);
  states.select(0, slot.prev(slot.step(0))).copy_(h0);
  Tensor acts = at::empty({T, B, A}, opts);
  Tensor normed = norm ? at::empty({T, B, 3 * H}, opts) : at::empty({0}, opts);
  Tensor rstd = norm ? at::empty({T, B, 3}, opts) : at::empty({0}, opts);
  Tensor in_stats = norm ? at::empty({T, B, 3, 2}, opts) : at::empty({0}, opts);
  // the recurrent products of a step: all three blocks (reset after), or r, z and n apart (reset
  // before, where n's product takes r h and comes second)
  Tensor raw = at::empty({B, (reset_after ? 3 : 2) * H}, opts), raw_n = reset_after ? Tensor() : at::empty({B, H}, opts);
  Tensor rh = reset_after ? Tensor() : at::empty({B, H}, opts);        // r * h_{t-1}, reset before
  Tensor h_tmp = keep_h ? at::empty({B, H}, opts) : Tensor();
  Tensor masked = rec_mask ? at::empty({B, H}, opts) : Tensor();
  Tensor h_entering = restarts.present() ? at::empty({B, H}, opts) : Tensor();  // h_{t-1} of a restarting step
  // U^T (H, 3H), or its (r, z) and n columns when the reset comes first (see product_operand)
  const Tensor weight_t = reset_after ? product_operand(weight_hh, T) : Tensor();
  const Tensor w_rz = reset_after ? Tensor() : product_operand(weight_hh.narrow(0, 0, 2 * H), T);
  const Tensor w_n = reset_after ? Tensor() : product_operand(weight_hh.narrow(0, 2 * H, H), T);

  const at::ThreadLocalState tls;  // for the steps' worker threads (see parallel_rows)
  AT_DISPATCH_FLOATING_TYPES(xw.scalar_type(), "gatedrnn_gru_forward", [&] {
    using scalar = scalar_t;
    const GruWeights<scalar> w{ptr<scalar>(in_gain), ptr<scalar>(in_bias), ptr<scalar>(rec_gain),
                               ptr<scalar>(rec_shift)};
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = slot.step(k), p = slot.prev(t), n = slot.next(t);
      const Tensor h_prev = restarts.entering(step_of(states, p), h_entering, t), h_next = step_of(states, n);
      const Tensor h_out = keep_h ? h_tmp : h_next;
      parallel_rows(tls, B, row_grain(A), [&](int64_t begin, int64_t end) {
        const Rows rows{begin, end};
        Tensor h_in = rows(h_prev);
        if (rec_mask) {
          Tensor out = rows(masked);
          h_in = at::mul_out(out, h_in, rows(*rec_mask));
        }
        std::vector<scalar> sx(H), su(H);
        auto row_of = [&](int64_t b) {
          const int64_t tb = t * B + b;
          return GruRow<scalar>{ptr<scalar>(acts) + tb * A, ptr<scalar>(xw) + tb * 3 * H,
                                norm ? ptr<scalar>(normed) + tb * 3 * H : nullptr,
                                norm ? ptr<scalar>(rstd) + tb * 3 : nullptr,
                                norm ? ptr<scalar>(in_stats) + tb * 6 : nullptr};
        };
        const scalar* hp = ptr<scalar>(h_prev);
        scalar* ho = ptr<scalar>(h_out);
        if (reset_after) {  // n = tanh(x_n + r (u_n + s_n))
          Tensor raw_rows = rows(raw);
          at::mm_out(raw_rows, h_in, weight_t);
          for (int64_t b = begin; b < end; ++b) {
            const GruRow<scalar> row = row_of(b);
            const scalar* r_raw = ptr<scalar>(raw) + b * 3 * H;
            update_and_reset_gates(w, row, r_raw, H, eps, sx.data(), su.data());
            scalar* v = row.a + 3 * H;
            const scalar* u = recurrent_block(w, row, r_raw + 2 * H, int64_t(2), H, eps, v);
            if (w.shift != nullptr) {
              at::vec::map2([](Vec<scalar> a, Vec<scalar> s) { return a + s; }, v, u, w.shift, H);
            } else if (u != v) {
              std::copy(u, u + H, v);
            }
            const scalar* x = input_block(w, row, int64_t(2), H, eps, sx.data());
            at::vec::map3([](Vec<scalar> xn, Vec<scalar> r, Vec<scalar> vv) { return xn + r * vv; }, row.a + 2 * H,
                          x, row.a, v, H);
            tanh_inplace(row.a + 2 * H, H);
            new_state(row.a, hp + b * H, ho + b * H, H);
          }
        } else {  // n = tanh(x_n + (r h) U_n^T)
          Tensor raw_rz = rows(raw);
          at::mm_out(raw_rz, h_in, w_rz);
          const Tensor h_in_c = h_in.contiguous();
          for (int64_t b = begin; b < end; ++b) {
            const GruRow<scalar> row = row_of(b);
            update_and_reset_gates(w, row, ptr<scalar>(raw) + b * 2 * H, H, eps, sx.data(), su.data());
            at::vec::map2([](Vec<scalar> r, Vec<scalar> h) { return r * h; }, ptr<scalar>(rh) + b * H, row.a,
                          ptr<scalar>(h_in_c) + (b - begin) * H, H);
          }
          Tensor raw_n_rows = rows(raw_n);
          at::mm_out(raw_n_rows, rows(rh), w_n);
          for (int64_t b = begin; b < end; ++b) {
            const GruRow<scalar> row = row_of(b);
            const scalar* x = input_block(w, row, int64_t(2), H, eps, sx.data());
            const scalar* u = recurrent_block(w, row, ptr<scalar>(raw_n) + b * H, int64_t(2), H, eps, su.data());
            at::vec::map2([](Vec<scalar> a, Vec<scalar> bb) { return a + bb; }, row.a + 2 * H, x, u, H);
            tanh_inplace(row.a + 2 * H, H);
            new_state(row.a, hp + b * H, ho + b * H, H);
          }
        }
        if (keep_h) {
          Tensor out = rows(h_next);
          at::lerp_out(out, rows(h_tmp), rows(h_prev), rows(step_of(*keep_h, t)));
        }
      });
    }
  });
  return {states, acts, normed, rstd, in_stats};
}

// Per-thread scratch rows and parameter-gradient sums.
template <typename T>
struct GruScratch {
  std::vector<T> scaled, xn, d_in_gain, d_in_bias, d_gain, d_shift;
  GruScratch(int64_t H, bool norm, bool shift)
      : scaled(H), xn(H), d_in_gain(norm ? 3 * H : 0, T(0)), d_in_bias(norm ? 3 * H : 0, T(0)),
        d_gain(norm ? 3 * H : 0, T(0)), d_shift(shift ? H : 0, T(0)) {}

  void add(const GruScratch& other) {
    for (auto [total, part] : {std::pair{&d_in_gain, &other.d_in_gain}, std::pair{&d_in_bias, &other.d_in_bias},
                               std::pair{&d_gain, &other.d_gain}, std::pair{&d_shift, &other.d_shift}}) {
      for (size_t j = 0; j < total->size(); ++j) (*total)[j] += (*part)[j];
    }
  }
};

// Backward of the recurrent layer norm of block k, in place on d_raw's block (gradient at u_k
// in, at the raw product out).
template <typename T>
void recurrent_block_backward(const GruWeights<T>& w, const GruRow<T>& row, T* d_raw, int64_t k, int64_t H,
                              GruScratch<T>& s) {
  if (w.rec_gain == nullptr) return;
  const int64_t off = k * H;
  affine_norm_backward(d_raw + off, d_raw + off, row.normed + off, row.rstd[k], w.rec_gain + off,
                       s.d_gain.data() + off, static_cast<T*>(nullptr), s.scaled.data(), H);
}

// Backward of the input layer norm, in place on the row's pre-activation gradient d (3H).
template <typename T>
void input_backward(const GruWeights<T>& w, const GruRow<T>& row, T* d, int64_t H, GruScratch<T>& s) {
  if (w.in_gain == nullptr) return;
  for (int64_t k = 0; k < 3; ++k) {
    const int64_t off = k * H;
    const T mean = row.in_stats[2 * k], rs = row.in_stats[2 * k + 1];
    at::vec::map([=](Vec<T> v) { return (v - Vec<T>(mean)) * Vec<T>(rs); }, s.xn.data(), row.xw + off, H);
    affine_norm_backward(d + off, d + off, s.xn.data(), rs, w.in_gain + off, s.d_in_gain.data() + off,
                         s.d_in_bias.data() + off, s.scaled.data(), H);
  }
}

// dn_pre = dh (1 - z) (1 - n^2), dz_pre = dh (h_prev - n) z (1 - z), and the carry dh z.
template <typename T>
void state_backward(const T* a, const T* dh, const T* h_prev, T* d, T* carry, int64_t H) {
  using V = Vec<T>;
  const V one(T(1));
  const T *z = a + H, *n = a + 2 * H;
  at::vec::map2([](V g, V zz) { return g * zz; }, carry, dh, z, H);
  at::vec::map3([one](V g, V zz, V nn) { return g * (one - zz) * (one - nn * nn); }, d + 2 * H, dh, z, n, H);
  at::vec::map4([one](V g, V hp, V nn, V zz) { return g * (hp - nn) * zz * (one - zz); }, d + H, dh, h_prev, n, z,
                H);
}

std::vector<Tensor> gru_backward(const Tensor& d_out, const Tensor& d_hn, const OptTensor& xw_, const Tensor& states,
                                 const Tensor& acts, const OptTensor& normed, const OptTensor& rstd,
                                 const OptTensor& in_stats, const Tensor& weight_hh, const OptTensor& in_gain_,
                                 const OptTensor& in_bias_, const OptTensor& rec_gain_, const OptTensor& rec_shift_,
                                 const OptTensor& keep_h, const OptTensor& rec_mask_, const OptTensor& restart,
                                 bool reset_after, bool reverse) {
  const NoAutograd no_autograd;
  const OptTensor in_gain = contiguous(in_gain_), in_bias = contiguous(in_bias_), rec_gain = contiguous(rec_gain_),
                  rec_shift = contiguous(rec_shift_), rec_mask = contiguous(rec_mask_), xw = contiguous(xw_);
  const Tensor d_out_c = d_out.contiguous();
  const int64_t T = acts.size(0), B = acts.size(1), H = states.size(2), A = acts.size(2);
  const Slots slot{T, reverse};
  const auto opts = acts.options();
  const bool norm = rec_gain.has_value(), shift = rec_shift.has_value();
  TORCH_CHECK(norm == in_gain.has_value() && norm == in_bias.has_value() && norm == xw.has_value(),
              "gatedrnn: layer norm needs x W^T, in_gain, in_bias and rec_gain together");
  check_masks(keep_h, std::nullopt, std::nullopt, rec_mask, T, B);
  const Restarts restarts(restart, T, B);

  Tensor d_z = at::empty({T, B, 3 * H}, opts);  // at the pre-activations (= at xw); with layer norm at x W^T
  // the gradient at the recurrent products and the n product's input r h (reset before), a ring
  // of a few steps added into dU a chunk at a time (see lstm_loop.cpp)
  const Chunks chunks{std::min<int64_t>(T, 16), T, reverse};
  Tensor d_raw = at::empty({chunks.size, B, 3 * H}, opts);
  Tensor rh = reset_after ? Tensor() : at::empty({chunks.size, B, H}, opts);
  Tensor d_weight_hh = at::zeros({3 * H, H}, opts);
  const at::indexing::Slice prev_slice = reverse ? at::indexing::Slice(1, T + 1) : at::indexing::Slice(0, T);
  const Tensor before = restarts.carried(states.index({prev_slice}));  // h_{t-1} as each step read it
  const Tensor inputs = rec_mask ? before * *rec_mask : before;
  Tensor dh = d_hn.contiguous().clone();
  Tensor gh = at::empty({B, H}, opts), dh_next = at::empty({B, H}, opts), carry = at::empty({B, H}, opts);
  Tensor d_rh = reset_after ? Tensor() : at::empty({B, H}, opts);
  Tensor h_entering = restarts.present() ? at::empty({B, H}, opts) : Tensor();
  const Tensor w_rz = weight_hh.narrow(0, 0, 2 * H), w_n = weight_hh.narrow(0, 2 * H, H);
  const int64_t threads = at::get_num_threads();
  std::vector<Tensor> sums;

  const at::ThreadLocalState tls;  // for the steps' worker threads (see parallel_rows)
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "gatedrnn_gru_backward", [&] {
    using scalar = scalar_t;
    using V = Vec<scalar>;
    const V one(scalar(1));
    const GruWeights<scalar> w{ptr<scalar>(in_gain), ptr<scalar>(in_bias), ptr<scalar>(rec_gain),
                               ptr<scalar>(rec_shift)};
    std::vector<GruScratch<scalar>> scratch;
    for (int64_t k = 0; k < threads; ++k) scratch.emplace_back(H, norm, shift);
    for (int64_t k = T - 1; k >= 0; --k) {
      const int64_t t = slot.step(k), p = slot.prev(t), c = chunks.slot(t);
      const Tensor h_prev = restarts.entering(step_of(states, p), h_entering, t);
      const Tensor d_out_t = step_of(d_out_c, t), d_raw_t = step_of(d_raw, c);
      parallel_rows(tls, B, row_grain(A), [&](int64_t begin, int64_t end) {
        const Rows rows{begin, end};
        GruScratch<scalar>& s = scratch[at::get_thread_num()];
        Tensor g = rows(gh);
        at::add_out(g, rows(dh), rows(d_out_t));
        Tensor d_new = g, d_old;
        if (keep_h) {
          d_old = g * rows(step_of(*keep_h, t));
          d_new = (g - d_old).contiguous();
        }
        const scalar* dn_ptr = ptr<scalar>(d_new);
        Tensor h_in = rows(h_prev);
        if (rec_mask) h_in = h_in * rows(*rec_mask);
        h_in = h_in.contiguous();
        auto row_of = [&](int64_t b) {
          const int64_t tb = t * B + b;
          return GruRow<scalar>{ptr<scalar>(acts) + tb * A, xw ? ptr<scalar>(xw) + tb * 3 * H : nullptr,
                                norm ? ptr<scalar>(normed) + tb * 3 * H : nullptr,
                                norm ? ptr<scalar>(rstd) + tb * 3 : nullptr,
                                norm ? ptr<scalar>(in_stats) + tb * 6 : nullptr};
        };
        for (int64_t b = begin; b < end; ++b) {
          const GruRow<scalar> row = row_of(b);
          scalar* d = ptr<scalar>(d_z) + (t * B + b) * 3 * H;
          scalar* dr = ptr<scalar>(d_raw_t) + b * 3 * H;
          state_backward(row.a, dn_ptr + (b - begin) * H, ptr<scalar>(h_prev) + b * H, d,
                         ptr<scalar>(carry) + b * H, H);
          if (reset_after) {  // dr = dn v r (1 - r); at u: (dr, dz, dn r)
            const scalar *r = row.a, *v = row.a + 3 * H;
            at::vec::map3([one](V dn, V vv, V rr) { return dn * vv * rr * (one - rr); }, d, d + 2 * H, v, r, H);
            std::copy(d, d + 2 * H, dr);
            at::vec::map2([](V dn, V rr) { return dn * rr; }, dr + 2 * H, d + 2 * H, r, H);
            if (shift) {
              at::vec::map2([](V acc, V g_) { return acc + g_; }, s.d_shift.data(), s.d_shift.data(), dr + 2 * H, H);
            }
            for (int64_t blk = 0; blk < 3; ++blk) recurrent_block_backward(w, row, dr, blk, H, s);
            input_backward(w, row, d, H, s);
          } else {  // the n product first: its gradient gives r's
            std::copy(d + 2 * H, d + 3 * H, dr + 2 * H);
            recurrent_block_backward(w, row, dr, int64_t(2), H, s);
          }
        }
        Tensor dh_rows = rows(dh_next);
        if (reset_after) {
          at::mm_out(dh_rows, rows(d_raw_t), weight_hh);
        } else {
          Tensor d_rh_rows = rows(d_rh);
          at::mm_out(d_rh_rows, rows(d_raw_t).narrow(1, 2 * H, H), w_n);  // at r h
          for (int64_t b = begin; b < end; ++b) {
            const GruRow<scalar> row = row_of(b);
            scalar* d = ptr<scalar>(d_z) + (t * B + b) * 3 * H;
            scalar* dr = ptr<scalar>(d_raw_t) + b * 3 * H;
            const scalar* hin = ptr<scalar>(h_in) + (b - begin) * H;
            at::vec::map3([one](V g_, V h, V rr) { return g_ * h * rr * (one - rr); }, d, ptr<scalar>(d_rh) + b * H,
                          hin, row.a, H);
            std::copy(d, d + 2 * H, dr);
            for (int64_t blk = 0; blk < 2; ++blk) recurrent_block_backward(w, row, dr, blk, H, s);
            at::vec::map2([](V rr, V h) { return rr * h; }, ptr<scalar>(rh) + (c * B + b) * H, row.a, hin, H);
            input_backward(w, row, d, H, s);
          }
          at::mm_out(dh_rows, rows(d_raw_t).narrow(1, 0, 2 * H), w_rz);
          dh_rows.addcmul_(rows(d_rh), rows(step_of(acts, t)).narrow(1, 0, H));
        }
        if (rec_mask) dh_rows.mul_(rows(*rec_mask));
        dh_rows.add_(rows(carry));
        if (keep_h) dh_rows.add_(d_old);
      });
      std::swap(dh, dh_next);
      restarts.zero(dh, t);  // nothing flows back through a restart
      if (chunks.completes(t)) {
        const int64_t t0 = chunks.first(t), n = chunks.length(t);
        const Tensor d_chunk = d_raw.narrow(0, 0, n).view({n * B, 3 * H});
        const Tensor h_chunk = inputs.narrow(0, t0, n).reshape({n * B, H});
        if (reset_after) {
          d_weight_hh.addmm_(d_chunk.t(), h_chunk);
        } else {
          d_weight_hh.narrow(0, 0, 2 * H).addmm_(d_chunk.narrow(1, 0, 2 * H).t(), h_chunk);
          d_weight_hh.narrow(0, 2 * H, H).addmm_(d_chunk.narrow(1, 2 * H, H).t(),
                                                  rh.narrow(0, 0, n).view({n * B, H}));
        }
      }
    }
    GruScratch<scalar>& total = scratch[0];
    for (int64_t k = 1; k < threads; ++k) total.add(scratch[k]);
    sums = {to_tensor(total.d_gain, opts), to_tensor(total.d_shift, opts), to_tensor(total.d_in_gain, opts),
            to_tensor(total.d_in_bias, opts)};
  });
  return {d_z, dh, d_weight_hh, sums[0], sums[1], sums[2], sums[3]};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gatedrnn_cpu, m) {
  m.def("gru_forward(Tensor xw, Tensor h0, Tensor weight_hh, Tensor? in_gain, Tensor? in_bias, Tensor? rec_gain, "
        "Tensor? rec_shift, Tensor? keep_h, Tensor? recurrent_mask, Tensor? restart, bool reset_after, "
        "bool reverse, float eps) -> Tensor[]");
  m.def("gru_backward(Tensor d_out, Tensor d_hn, Tensor? xw, Tensor states, Tensor acts, Tensor? normed, "
        "Tensor? rstd, Tensor? in_stats, Tensor weight_hh, Tensor? in_gain, Tensor? in_bias, Tensor? rec_gain, "
        "Tensor? rec_shift, Tensor? keep_h, Tensor? recurrent_mask, Tensor? restart, bool reset_after, "
        "bool reverse) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(gatedrnn_cpu, CPU, m) {
  m.impl("gru_forward", &gru_forward);
  m.impl("gru_backward", &gru_backward);
}
