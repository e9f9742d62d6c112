r"""The sLSTM recurrence (:class:`gatedrnn.cells.slstm.SLSTMFamily`) forward and backward in Triton.

Work split: the recurrent matrix is block-diagonal over the heads, so head k's gates at step t
depend on its own D units of h_{t-1} alone. Program (p, k) owns batch rows ``p*BB .. p*BB+BB`` of
head k and runs every step of the sequence in one launch, with no exchange between programs:
the only dependency between steps is inside the program, and a CTA barrier
(``tl.debug_barrier``) after each phase makes its stores visible to all its threads. Each step
reads the head's (4D, D) weight block in (BK, BD) tiles (from L2 on a GPU: the block is re-read
every step rather than held on chip, which works at every head size).

Forward step (per unit, in the accumulation dtype, pre-activations from ``xw`` (the input
projection plus both biases) and the product of h_{t-1} with the head's block):

.. math::
    \begin{array}{ll}
    \ell_t = \operatorname{logsigmoid}(\tilde f_t) \text{ (or } \tilde f_t\text{)}, \quad
    a_t = \ell_t + m_{t-1}, \quad
    m_t = \tilde\imath_t \text{ where } n_{t-1} = 0, \text{ else } \max(a_t, \tilde\imath_t) \\
    i'_t = \min(e^{\tilde\imath_t - m_t}, 1), \quad f'_t = \min(e^{a_t - m_t}, 1), \quad
    c_t = f'_t c_{t-1} + i'_t \tanh\tilde z_t, \quad n_t = f'_t n_{t-1} + i'_t, \quad
    h_t = \sigma(\tilde o_t)\, c_t / n_t
    \end{array}

Backward step, from the gradients :math:`g_h, g_c, g_n, g_m` of the states after the step
(:math:`g_h` adds the step's output gradient to the one carried from the step after):

.. math::
    \begin{array}{ll}
    \bar g_c = g_c + g_h o / n, \quad \bar g_n = g_n - g_h o c / n^2, \quad
    \delta\tilde o = g_h (c / n)\, o (1 - o), \quad
    \delta\tilde z = \bar g_c i' (1 - \tanh^2\tilde z) \\
    e_i = [e^{\tilde\imath - m} \le 1]\, (\bar g_c \tanh\tilde z + \bar g_n)\, i', \quad
    e_f = [e^{a - m} \le 1]\, (\bar g_c c_{t-1} + \bar g_n n_{t-1})\, f', \quad
    \bar g_m = g_m - e_i - e_f \\
    \delta\tilde\imath = e_i + \bar g_m \pi_i, \quad \delta a = e_f + \bar g_m (1 - \pi_i), \quad
    \delta\tilde f = \delta a \cdot \sigma(-\tilde f) \text{ (or } \delta a\text{)} \\
    g_{c,t-1} = \bar g_c f', \quad g_{n,t-1} = \bar g_n f', \quad g_{m,t-1} = \delta a, \quad
    g_{h,t-1} = \delta_t R_k \text{ (the head's block, a product over its 4D rows)}
    \end{array}

where :math:`\pi_i` is the share of :math:`m_t` that :math:`\tilde\imath_t` receives: 1 where
:math:`n_{t-1} = 0` or :math:`\tilde\imath > a`, 1/2 where they tie, 0 otherwise (autograd's rule
for ``maximum``); the bracket is the clamp's pass-through. A step where ``t >= lengths[b]`` keeps
every state, saves zero pre-activation gradients and passes the carried gradients through.

With ``RESTART``, a step whose row the (T, B) mask ``restart`` marks reads the states before it as
zero (:mod:`.restart`): n_{t-1} = 0 there, so the first step's rule (keyed on n_{t-1} = 0 per unit,
not on t) sets m_t = i~ as at t = 0; backward, the gradients it carries to the states before it
(g_{h,t-1}, g_{c,t-1}, g_{n,t-1}, g_{m,t-1}) are zero on those rows.

Buffers, by real time t (``reverse`` changes only the order): ``hs``, ``cs``, ``ns``, ``ms``
(T+1, B, H) with the state before step t at ``t + REVERSE`` and after it at ``t + 1 - REVERSE``
(h in the input's dtype, c, n, m in the accumulation dtype); ``pre`` (T, B, 4H) the
pre-activations, gate-major i, f, z, o, which the backward pass reads instead of recomputing
the product; ``dpre`` (T, B, 4H) their gradients.
"""

import triton
import triton.language as tl

from .primitives import sigmoid, step_slots, tanh
from .restart import carried_mask, carried_only, carried_rows


@triton.jit
def _weight_tile_t(r_ptr, gate, offs_j, mj, offs_k, mk, D):
    """(BK, BD): rows gate*D + offs_j, columns offs_k of a head's (4D, D) block, transposed (the
    right operand of ``h @ tile``); zeros outside."""
    ptrs = r_ptr + (gate * D + offs_j)[None, :].to(tl.int64) * D + offs_k[:, None]
    return tl.load(ptrs, mask=mk[:, None] & mj[None, :], other=0.0)


@triton.jit
def _weight_tile(r_ptr, gate, offs_j, mj, offs_k, mk, D):
    """(BD, BK): rows gate*D + offs_j, columns offs_k of a head's (4D, D) block (the right
    operand of ``delta @ tile``); zeros outside."""
    ptrs = r_ptr + (gate * D + offs_j)[:, None].to(tl.int64) * D + offs_k[None, :]
    return tl.load(ptrs, mask=mj[:, None] & mk[None, :], other=0.0)


@triton.jit
def _program_slice(len_ptr, r_ptr, B, D, BB: tl.constexpr):
    """Program (p, k)'s head k, batch rows p*BB .. p*BB+BB, their validity and lengths, and the
    head's (4D, D) block."""
    head = tl.program_id(1)
    offs_b = tl.program_id(0) * BB + tl.arange(0, BB)
    mb = offs_b < B
    lens = tl.load(len_ptr + offs_b, mask=mb, other=0)
    return head, offs_b, mb, lens, r_ptr + head.to(tl.int64) * 4 * D * D


@triton.jit
def _log_forget(f_raw, EXP_FORGET: tl.constexpr):
    """log f: the exponential gate's pre-activation itself, else logsigmoid = -softplus(-f)."""
    if EXP_FORGET:
        return f_raw
    else:
        return -(tl.maximum(-f_raw, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(f_raw))))


@triton.jit
def _stabiliser(i_raw, a, n_prev):
    """m_t: i~ where n_{t-1} = 0 (the first step), else max(a, i~)."""
    return tl.where(n_prev == 0, i_raw, tl.maximum(a, i_raw))


@triton.jit
def _cell_states_before(cs_ptr, ns_ptr, ms_ptr, at_prev, prev_mask, keep, RESTART: tl.constexpr):
    """(c, n, m) before a step at ``at_prev``, read with ``prev_mask`` (:func:`.restart.carried_mask`):
    zero on the rows not in ``keep``, restarted there (n = 0 sets the first step's rule), and n = 1
    on the padding of a tile (no division by zero there)."""
    c_prev = tl.load(cs_ptr + at_prev, mask=prev_mask, other=0.0)
    n_prev = carried_only(tl.load(ns_ptr + at_prev, mask=prev_mask, other=1.0), keep, RESTART)
    m_prev = tl.load(ms_ptr + at_prev, mask=prev_mask, other=0.0)
    return c_prev, n_prev, m_prev


@triton.jit
def _cell(i_raw, f_raw, z_raw, o_raw, c_prev, n_prev, m_prev, EXP_FORGET: tl.constexpr):
    """One step's states (h, c, n, m) from the pre-activations and the states before it."""
    a = _log_forget(f_raw, EXP_FORGET) + m_prev
    m = _stabiliser(i_raw, a, n_prev)
    i_g = tl.minimum(tl.exp(i_raw - m), 1.0)
    f_g = tl.minimum(tl.exp(a - m), 1.0)
    c = f_g * c_prev + i_g * tanh(z_raw)
    n = f_g * n_prev + i_g
    h = sigmoid(o_raw) * c / n
    return h, c, n, m


@triton.jit
def slstm_fwd_kernel(
    xw_ptr,  # (T, B, 4H) input projection plus b_ih + b_hh, gate-major i, f, z, o
    len_ptr,  # (B,) int32 sequence lengths, each <= T
    restart_ptr,  # (T, B) uint8: the states restart from zero before step t where nonzero (RESTART)
    r_ptr,  # (NH, 4D, D) the heads' recurrent blocks
    hs_ptr,  # (T+1, B, H) h in xw's dtype; the initial slot filled by the host, the rest here
    cs_ptr,  # (T+1, B, H) accumulation dtype: c, likewise
    ns_ptr,  # (T+1, B, H) accumulation dtype: n, likewise
    ms_ptr,  # (T+1, B, H) accumulation dtype: m, likewise
    pre_ptr,  # (T, B, 4H) accumulation dtype: the pre-activations (written with STORE_PRE)
    T,  # steps
    B,  # batch rows
    H,  # units, NH * D
    D,  # units per head
    EXP_FORGET: tl.constexpr,  # the forget gate is exp (else sigmoid)
    REVERSE: tl.constexpr,  # walk t = T-1 .. 0
    STORE_PRE: tl.constexpr,  # save the pre-activations for the backward pass
    RESTART: tl.constexpr,  # restarts inside the sequence (kernels/restart.py)
    BB: tl.constexpr,  # batch rows per program
    BD: tl.constexpr,  # units per tile of the gate loop
    BK: tl.constexpr,  # columns per tile of the product
    ACC: tl.constexpr,  # accumulation dtype
    PREC: tl.constexpr,  # tl.dot input precision
):
    head, offs_b, mb, lens, r_head = _program_slice(len_ptr, r_ptr, B, D, BB)
    H4 = 4 * H
    for s in range(T):
        t, prev, new = step_slots(s, T, REVERSE)
        active = (t < lens)[:, None]  # (BB, 1)
        keep = carried_rows(restart_ptr, t, offs_b, mb, B, RESTART)  # rows whose states carry into t
        for j0 in range(0, D, BD):
            offs_j = j0 + tl.arange(0, BD)
            mj = offs_j < D
            acc_i = tl.zeros((BB, BD), ACC)
            acc_f = tl.zeros((BB, BD), ACC)
            acc_z = tl.zeros((BB, BD), ACC)
            acc_o = tl.zeros((BB, BD), ACC)
            for k0 in range(0, D, BK):
                offs_k = k0 + tl.arange(0, BK)
                mk = offs_k < D
                h_ptrs = hs_ptr + (tl.cast(prev, tl.int64) * B + offs_b[:, None]) * H + head * D + offs_k[None, :]
                h_tile = tl.load(h_ptrs, mask=keep[:, None] & mk[None, :], other=0.0)  # (BB, BK)
                w = _weight_tile_t(r_head, 0, offs_j, mj, offs_k, mk, D)
                acc_i += tl.dot(h_tile.to(w.dtype), w, out_dtype=ACC, input_precision=PREC)
                w = _weight_tile_t(r_head, 1, offs_j, mj, offs_k, mk, D)
                acc_f += tl.dot(h_tile.to(w.dtype), w, out_dtype=ACC, input_precision=PREC)
                w = _weight_tile_t(r_head, 2, offs_j, mj, offs_k, mk, D)
                acc_z += tl.dot(h_tile.to(w.dtype), w, out_dtype=ACC, input_precision=PREC)
                w = _weight_tile_t(r_head, 3, offs_j, mj, offs_k, mk, D)
                acc_o += tl.dot(h_tile.to(w.dtype), w, out_dtype=ACC, input_precision=PREC)
            m2 = mb[:, None] & mj[None, :]
            cols = (head * D + offs_j)[None, :]  # (1, BD) units in 0 .. H
            x_row = xw_ptr + (tl.cast(t, tl.int64) * B + offs_b[:, None]) * H4 + cols
            i_raw = acc_i + tl.load(x_row, mask=m2, other=0.0).to(ACC)
            f_raw = acc_f + tl.load(x_row + H, mask=m2, other=0.0).to(ACC)
            z_raw = acc_z + tl.load(x_row + 2 * H, mask=m2, other=0.0).to(ACC)
            o_raw = acc_o + tl.load(x_row + 3 * H, mask=m2, other=0.0).to(ACC)
            if STORE_PRE:
                p_row = pre_ptr + (tl.cast(t, tl.int64) * B + offs_b[:, None]) * H4 + cols
                tl.store(p_row, i_raw, mask=m2)
                tl.store(p_row + H, f_raw, mask=m2)
                tl.store(p_row + 2 * H, z_raw, mask=m2)
                tl.store(p_row + 3 * H, o_raw, mask=m2)
            at_prev = (tl.cast(prev, tl.int64) * B + offs_b[:, None]) * H + cols
            at_new = (tl.cast(new, tl.int64) * B + offs_b[:, None]) * H + cols
            prev_mask = carried_mask(m2, keep, RESTART)
            h_prev = tl.load(hs_ptr + at_prev, mask=prev_mask, other=0.0)
            c_prev, n_prev, m_prev = _cell_states_before(cs_ptr, ns_ptr, ms_ptr, at_prev, prev_mask, keep, RESTART)
            h, c, n, m = _cell(i_raw, f_raw, z_raw, o_raw, c_prev, n_prev, m_prev, EXP_FORGET)
            tl.store(hs_ptr + at_new, tl.where(active, h.to(h_prev.dtype), h_prev), mask=m2)
            tl.store(cs_ptr + at_new, tl.where(active, c, c_prev), mask=m2)
            tl.store(ns_ptr + at_new, tl.where(active, n, n_prev), mask=m2)
            tl.store(ms_ptr + at_new, tl.where(active, m, m_prev), mask=m2)
        # this step's h is the next step's product input, read by other threads of the program
        tl.debug_barrier()


@triton.jit
def _cell_backward(i_raw, f_raw, z_raw, o_raw, c_prev, n_prev, m_prev, g_h, g_c, g_n, g_m, EXP_FORGET: tl.constexpr):
    """One step's pre-activation gradients and the gradients of c, n, m before it (the module
    docstring's backward step), recomputing the step's values from its inputs."""
    a = _log_forget(f_raw, EXP_FORGET) + m_prev
    m = _stabiliser(i_raw, a, n_prev)
    e_i = tl.exp(i_raw - m)
    e_f = tl.exp(a - m)
    i_g = tl.minimum(e_i, 1.0)
    f_g = tl.minimum(e_f, 1.0)
    tz = tanh(z_raw)
    c = f_g * c_prev + i_g * tz
    n = f_g * n_prev + i_g
    o = sigmoid(o_raw)
    gc = g_c + g_h * o / n
    gn = g_n - g_h * o * c / (n * n)
    d_o = g_h * (c / n) * o * (1.0 - o)
    d_z = gc * i_g * (1.0 - tz * tz)
    grad_i = tl.where(e_i <= 1.0, (gc * tz + gn) * i_g, 0.0)
    grad_f = tl.where(e_f <= 1.0, (gc * c_prev + gn * n_prev) * f_g, 0.0)
    gm = g_m - grad_i - grad_f
    share_i = tl.where(n_prev == 0, 1.0, tl.where(i_raw > a, 1.0, tl.where(i_raw == a, 0.5, 0.0)))
    d_i = grad_i + gm * share_i
    d_a = grad_f + gm * (1.0 - share_i)
    if EXP_FORGET:
        d_f = d_a
    else:
        d_f = d_a * sigmoid(-f_raw)
    return d_i, d_f, d_z, d_o, gc * f_g, gn * f_g, d_a


@triton.jit
def slstm_bwd_kernel(
    dhs_ptr,  # (T+1, B, H) dL/d hs: the (masked) outputs' gradients and the final h's
    len_ptr,  # (B,) int32 sequence lengths, each <= T
    restart_ptr,  # (T, B) uint8: the forward restarted the states before step t where nonzero (RESTART)
    r_ptr,  # (NH, 4D, D) the heads' recurrent blocks
    cs_ptr,  # (T+1, B, H) the forward's c
    ns_ptr,  # (T+1, B, H) the forward's n
    ms_ptr,  # (T+1, B, H) the forward's m
    pre_ptr,  # (T, B, 4H) the forward's pre-activations
    dpre_ptr,  # (T, B, 4H) accumulation dtype, out: dL/d pre-activations (zero at inactive steps)
    gh_ptr,  # (B, H) accumulation dtype: dL/dh carried; in: zeros, out: the initial h's, less dhs there
    gc_ptr,  # (B, H) accumulation dtype: dL/dc carried; in: the final c's, out: the initial c's
    gn_ptr,  # (B, H) accumulation dtype: dL/dn likewise
    gm_ptr,  # (B, H) accumulation dtype: dL/dm likewise
    T,  # steps
    B,  # batch rows
    H,  # units, NH * D
    D,  # units per head
    EXP_FORGET: tl.constexpr,  # the forget gate is exp (else sigmoid)
    REVERSE: tl.constexpr,  # the forward walked t = T-1 .. 0
    RESTART: tl.constexpr,  # restarts inside the sequence (kernels/restart.py)
    BB: tl.constexpr,  # batch rows per program
    BD: tl.constexpr,  # units per tile of the gate loop
    BK: tl.constexpr,  # columns per tile of the gather
    ACC: tl.constexpr,  # accumulation dtype
    PREC: tl.constexpr,  # tl.dot input precision
):
    head, offs_b, mb, lens, r_head = _program_slice(len_ptr, r_ptr, B, D, BB)
    H4 = 4 * H
    for s in range(T - 1, -1, -1):
        t, prev, new = step_slots(s, T, REVERSE)
        active = (t < lens)[:, None]  # (BB, 1)
        keep = carried_rows(restart_ptr, t, offs_b, mb, B, RESTART)  # rows whose states carried into t
        # phase 1: the pointwise step backwards, unit tile by unit tile
        for j0 in range(0, D, BD):
            offs_j = j0 + tl.arange(0, BD)
            m2 = mb[:, None] & (offs_j < D)[None, :]
            cols = (head * D + offs_j)[None, :]
            at_state = offs_b[:, None] * H + cols
            at_prev = (tl.cast(prev, tl.int64) * B + offs_b[:, None]) * H + cols
            at_new = (tl.cast(new, tl.int64) * B + offs_b[:, None]) * H + cols
            p_row = (tl.cast(t, tl.int64) * B + offs_b[:, None]) * H4 + cols
            g_h = tl.load(gh_ptr + at_state, mask=m2, other=0.0)
            g_h += tl.load(dhs_ptr + at_new, mask=m2, other=0.0).to(ACC)
            g_c = tl.load(gc_ptr + at_state, mask=m2, other=0.0)
            g_n = tl.load(gn_ptr + at_state, mask=m2, other=0.0)
            g_m = tl.load(gm_ptr + at_state, mask=m2, other=0.0)
            prev_mask = carried_mask(m2, keep, RESTART)
            c_prev, n_prev, m_prev = _cell_states_before(cs_ptr, ns_ptr, ms_ptr, at_prev, prev_mask, keep, RESTART)
            d_i, d_f, d_z, d_o, gc, gn, gm = _cell_backward(
                tl.load(pre_ptr + p_row, mask=m2, other=0.0),
                tl.load(pre_ptr + p_row + H, mask=m2, other=0.0),
                tl.load(pre_ptr + p_row + 2 * H, mask=m2, other=0.0),
                tl.load(pre_ptr + p_row + 3 * H, mask=m2, other=0.0),
                c_prev,
                n_prev,
                m_prev,
                g_h,
                g_c,
                g_n,
                g_m,
                EXP_FORGET,
            )
            tl.store(dpre_ptr + p_row, tl.where(active, d_i, 0.0), mask=m2)
            tl.store(dpre_ptr + p_row + H, tl.where(active, d_f, 0.0), mask=m2)
            tl.store(dpre_ptr + p_row + 2 * H, tl.where(active, d_z, 0.0), mask=m2)
            tl.store(dpre_ptr + p_row + 3 * H, tl.where(active, d_o, 0.0), mask=m2)
            # nothing flows back through a restart: the states before it were not carried
            tl.store(gc_ptr + at_state, tl.where(active, carried_only(gc, keep, RESTART), g_c), mask=m2)
            tl.store(gn_ptr + at_state, tl.where(active, carried_only(gn, keep, RESTART), g_n), mask=m2)
            tl.store(gm_ptr + at_state, tl.where(active, carried_only(gm, keep, RESTART), g_m), mask=m2)
            tl.store(gh_ptr + at_state, g_h, mask=m2)  # what an inactive step passes on
        tl.debug_barrier()
        # phase 2: dL/dh_{t-1} = delta_t R_k over the head's 4D rows, for the active rows
        for k0 in range(0, D, BK):
            offs_k = k0 + tl.arange(0, BK)
            mk = offs_k < D
            gather = tl.zeros((BB, BK), ACC)
            for j0 in range(0, D, BD):
                offs_j = j0 + tl.arange(0, BD)
                mj = offs_j < D
                d_row = dpre_ptr + (tl.cast(t, tl.int64) * B + offs_b[:, None]) * H4 + (head * D + offs_j)[None, :]
                for g in tl.static_range(4):
                    delta = tl.load(d_row + g * H, mask=mb[:, None] & mj[None, :], other=0.0)  # (BB, BD)
                    w = _weight_tile(r_head, g, offs_j, mj, offs_k, mk, D)
                    gather += tl.dot(delta.to(w.dtype), w, out_dtype=ACC, input_precision=PREC)
            at_k = offs_b[:, None] * H + (head * D + offs_k)[None, :]
            mk2 = mb[:, None] & mk[None, :]
            carried = tl.load(gh_ptr + at_k, mask=mk2, other=0.0)
            tl.store(gh_ptr + at_k, tl.where(active, carried_only(gather, keep, RESTART), carried), mask=mk2)
        tl.debug_barrier()
