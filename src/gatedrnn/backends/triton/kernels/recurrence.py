"""The forward and backward recurrences of one layer and direction, for every cell family.

Work split: program p owns units ``p*BH .. p*BH+BH`` of every gate. With ``RESIDENT`` it loads its
slice of the recurrent weights once, before the time loop (Triton keeps a loop-invariant dot
operand in shared memory); otherwise every phase streams the slice in chunks of ``KA`` / ``KB``
columns each step (the weights-don't-fit path; same math, one chunk when resident). A step is
one or two *phases*; in each, every program reads a full vector that all programs wrote in the
previous phase (h_{t-1}, or a gradient vector), multiplies it by its weight slice and writes its
slice of the next vector. Phases are separated by a grid barrier (:func:`.primitives.grid_sync`).

The constexpr ``PHASE`` selects how the same phase code is driven:

- ``PHASE == 0``: persistent, one launch runs ``n_steps`` steps with a barrier after every phase
  (all programs must be co-resident: the launcher keeps the grid within the SM count).
- ``PHASE == 1`` / ``2``: run only phase A / B of the single step ``s_first``; the host launches
  the phases one after another, and the kernel boundary is the barrier. This is the path for the
  Triton interpreter, which runs programs one after another (a spin barrier would never open),
  and the fallback where the grid cannot be co-resident.

Phases per step (R = output size, H = hidden size, G gates, ``[S]`` a program's slice):

=====================  ==========================================  ==============================
cell                   forward                                     backward
=====================  ==========================================  ==============================
LSTM, RNN, GRU         A: h_{t-1} @ U[S]^T -> gates[S], h_t[S]     A: d_{t+1} @ U[:, S] -> d_t[S]
LSTM with projection   A: as LSTM, h_pre[S]; B: h_pre @ W_hr[S]^T  A: dh_r[S]; B: dh_r @ W_hr[:, S]
GRU, reset before      A: r, z[S], (r h)[S]; B: (r h) @ U_n[S]^T   A: dn, dz[S]; B: dn @ U_n[:, S]
=====================  ==========================================  ==============================

Saved for the backward pass (all indexed by real time t, so ``reverse`` only changes the order):
``hs`` (T+1, B, R) the carried h, with h_{t-1} at ``t + REVERSE`` and h_t at ``t + 1 - REVERSE``;
``cs`` (T+1, B, H) the LSTM cell the same way; ``gates`` (T, B, GS*H) activations; ``aux``
(T, B, H) h before the projection, or r * h_{t-1} for the GRU with the reset before the matmul.
A step where ``t >= lengths[b]`` copies the state and saves zero gradients, so the backward pass
passes the carried gradient through it unchanged.

The backward pass carries the gradient w.r.t. the state in ``carry_h`` (B, R) and ``carry_c``
(B, H): the part of it that is local to a program's units (e.g. z * dh for the GRU, f * dc for
the LSTM); the part through the recurrent matmul is gathered at the start of the next step.
"""

import triton
import triton.language as tl

from .primitives import (
    grid_sync,
    load_gated_cols,
    load_gated_full,
    load_gated_rows_t,
    load_row_chunk,
    pick_gate,
    sigmoid,
    tanh,
)


@triton.jit
def _pre_activation(acc, x_row, g: tl.constexpr, H, mask, BB: tl.constexpr, GAP: tl.constexpr, BH: tl.constexpr,
                    ACC: tl.constexpr):
    """Gate g's (BB, BH) pre-activation: its block of the recurrent product ``acc`` plus its part of
    the input projection xw_t (``x_row``, gate-major rows of width H)."""
    return pick_gate(acc, g, BB, GAP, BH) + tl.load(x_row + g * H, mask=mask, other=0.0).to(ACC)


@triton.jit
def _rows(ptr, t, offs_b, B, width):
    """Row pointers (BB, 1) of batch rows ``offs_b`` at time ``t`` of a (., B, width) buffer."""
    return ptr + (t.to(tl.int64) * B + offs_b[:, None]) * width


@triton.jit
def _times(s, T, REVERSE: tl.constexpr):
    """Real time t of processing step s, and the ``hs`` indices of h_{t-1} and h_t."""
    if REVERSE:
        t = T - 1 - s
        return t, t + 1, t
    else:
        return s, s, s + 1


@triton.jit
def _fwd_a_weights(u_ptr, k0, s0, H, R, GA: tl.constexpr, BH: tl.constexpr, GAP: tl.constexpr,
                   KC: tl.constexpr):
    """(KC, GAP*BH): rows S of phase A's gate blocks of U, columns k0 .. k0+KC, transposed."""
    return load_gated_rows_t(u_ptr, GA, H, s0, R, k0, R, BH, GAP, KC)


@triton.jit
def _fwd_b_weights(u_ptr, whr_ptr, k0, s0, H, R, FAMILY: tl.constexpr, BH: tl.constexpr, KC: tl.constexpr):
    """(KC, BH): rows S of W_hr (LSTM) or of U_n (GRU), columns k0 .. k0+KC, transposed."""
    if FAMILY == 0:
        return load_gated_rows_t(whr_ptr, 1, R, s0, H, k0, H, BH, 1, KC)
    else:
        return load_gated_rows_t(u_ptr + 2 * H * R, 1, H, s0, R, k0, R, BH, 1, KC)


@triton.jit
def _bwd_a_weights(u_ptr, k0, s0, H, R, GA: tl.constexpr, BH: tl.constexpr, GAP: tl.constexpr,
                   KC: tl.constexpr):
    """(GAP*KC, BH): columns S of U, rows k0 .. k0+KC of each of phase A's gate blocks."""
    return load_gated_cols(u_ptr, GA, H, 0, k0, R, s0, R, BH, GAP, KC)


@triton.jit
def _bwd_b_weights(u_ptr, whr_ptr, k0, s0, H, R, FAMILY: tl.constexpr, BH: tl.constexpr, KC: tl.constexpr):
    """(KC, BH): columns S of W_hr (LSTM, rows k0.. of R) or of U_n (GRU, rows k0.. of H)."""
    if FAMILY == 0:
        return load_gated_cols(whr_ptr, 1, R, 0, k0, H, s0, H, BH, 1, KC)
    else:
        return load_gated_cols(u_ptr, 1, H, 2 * H, k0, R, s0, H, BH, 1, KC)


# ----- forward ------------------------------------------------------------------------------------


@triton.jit
def _lstm_fwd_a(x_row, g_row, c_prev, act, mask, peep_ptr, offs_j, mj, H, acc,
                IDX_I: tl.constexpr, IDX_F: tl.constexpr, IDX_G: tl.constexpr, IDX_O: tl.constexpr,
                CIFG: tl.constexpr, PEEP: tl.constexpr, G_ACT: tl.constexpr, O_ACT: tl.constexpr,
                BB: tl.constexpr, GAP: tl.constexpr, BH: tl.constexpr, ACC: tl.constexpr):
    """LSTM gates, saved to ``g_row``; returns (c_t, h_t before projection)."""
    pre_g = _pre_activation(acc, x_row, IDX_G, H, mask, BB, GAP, BH, ACC)
    one = tl.full(pre_g.shape, 1.0, ACC)
    if PEEP:
        p_i = tl.load(peep_ptr + offs_j, mask=mj, other=0.0).to(ACC)[None, :]
        p_f = tl.load(peep_ptr + H + offs_j, mask=mj, other=0.0).to(ACC)[None, :]
        p_o = tl.load(peep_ptr + 2 * H + offs_j, mask=mj, other=0.0).to(ACC)[None, :]
    f = one
    if IDX_F >= 0:
        pre_f = _pre_activation(acc, x_row, IDX_F, H, mask, BB, GAP, BH, ACC)
        if PEEP:
            pre_f += p_f * c_prev
        f = sigmoid(pre_f)
        tl.store(g_row + IDX_F * H, f, mask=mask)
    i = one
    if CIFG:
        i = 1.0 - f
    elif IDX_I >= 0:
        pre_i = _pre_activation(acc, x_row, IDX_I, H, mask, BB, GAP, BH, ACC)
        if PEEP:
            pre_i += p_i * c_prev
        i = sigmoid(pre_i)
        tl.store(g_row + IDX_I * H, i, mask=mask)
    g = pre_g
    if G_ACT:
        g = tanh(pre_g)
    tl.store(g_row + IDX_G * H, g, mask=mask)
    c = f * c_prev + i * g
    o = one
    if IDX_O >= 0:
        pre_o = _pre_activation(acc, x_row, IDX_O, H, mask, BB, GAP, BH, ACC)
        if PEEP:
            pre_o += p_o * c
        o = sigmoid(pre_o)
        tl.store(g_row + IDX_O * H, o, mask=mask)
    if O_ACT:
        h = o * tanh(c)
    else:
        h = o * c
    return c, h


@triton.jit
def _fwd_phase_a(t, prev, new, b0, s0,
                 xw_ptr, len_ptr, u_ptr, bn_ptr, peep_ptr, hs_ptr, cs_ptr, gates_ptr, aux_ptr, u_tile,
                 B, H, R,
                 FAMILY: tl.constexpr, G: tl.constexpr, GA: tl.constexpr, GS: tl.constexpr,
                 IDX_I: tl.constexpr, IDX_F: tl.constexpr, IDX_G: tl.constexpr, IDX_O: tl.constexpr,
                 CIFG: tl.constexpr, PEEP: tl.constexpr, G_ACT: tl.constexpr, O_ACT: tl.constexpr,
                 PROJ: tl.constexpr, RESET_AFTER: tl.constexpr, HAS_BN: tl.constexpr, RELU: tl.constexpr,
                 RESIDENT: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, KA: tl.constexpr,
                 GAP: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    """h_{t-1} @ U[S]^T and the cell's pointwise step for batch rows b0.. and units s0.."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    offs_j = s0 + tl.arange(0, BH)
    mj = offs_j < H
    mask = mb[:, None] & mj[None, :]
    acc = tl.zeros((BB, GAP * BH), ACC)
    # one chunk of KA >= R columns when the weights are resident, else streamed in chunks of KA
    for k0 in range(0, R, KA):
        h_chunk = load_row_chunk(hs_ptr + prev.to(tl.int64) * B * R, R, offs_b, mb, k0, R, KA)  # (BB, KA)
        if RESIDENT:
            w = u_tile
        else:
            w = _fwd_a_weights(u_ptr, k0, s0, H, R, GA, BH, GAP, KA)
        acc += tl.dot(h_chunk, w, out_dtype=ACC, input_precision=PREC)  # (BB, GAP*BH)
    act = (t < tl.load(len_ptr + offs_b, mask=mb, other=0))[:, None]
    x_row = _rows(xw_ptr, t, offs_b, B, G * H) + offs_j[None, :]
    g_row = _rows(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :]
    h_new_ptr = _rows(hs_ptr, new, offs_b, B, R) + offs_j[None, :]
    if FAMILY == 0:
        c_prev = tl.load(_rows(cs_ptr, prev, offs_b, B, H) + offs_j[None, :], mask=mask, other=0.0)
        c, h = _lstm_fwd_a(x_row, g_row, c_prev, act, mask, peep_ptr, offs_j, mj, H, acc,
                           IDX_I, IDX_F, IDX_G, IDX_O, CIFG, PEEP, G_ACT, O_ACT, BB, GAP, BH, ACC)
        tl.store(_rows(cs_ptr, new, offs_b, B, H) + offs_j[None, :], tl.where(act, c, c_prev), mask=mask)
        if PROJ:
            tl.store(_rows(aux_ptr, t, offs_b, B, H) + offs_j[None, :], h, mask=mask)
        else:
            h_prev = tl.load(_rows(hs_ptr, prev, offs_b, B, R) + offs_j[None, :], mask=mask, other=0.0)
            tl.store(h_new_ptr, tl.where(act, h.to(h_prev.dtype), h_prev), mask=mask)
    else:
        h_prev = tl.load(_rows(hs_ptr, prev, offs_b, B, R) + offs_j[None, :], mask=mask, other=0.0)
        if FAMILY == 2:
            a = _pre_activation(acc, x_row, 0, H, mask, BB, GAP, BH, ACC)
            if RELU:
                h = tl.maximum(a, 0.0)
            else:
                h = tanh(a)
            tl.store(h_new_ptr, tl.where(act, h.to(h_prev.dtype), h_prev), mask=mask)
        else:
            r = sigmoid(_pre_activation(acc, x_row, 0, H, mask, BB, GAP, BH, ACC))
            z = sigmoid(_pre_activation(acc, x_row, 1, H, mask, BB, GAP, BH, ACC))
            tl.store(g_row, r, mask=mask)
            tl.store(g_row + H, z, mask=mask)
            if RESET_AFTER:
                u_n = pick_gate(acc, 2, BB, GAP, BH)
                if HAS_BN:
                    u_n += tl.load(bn_ptr + offs_j, mask=mj, other=0.0).to(ACC)[None, :]
                n = tanh(tl.load(x_row + 2 * H, mask=mask, other=0.0).to(ACC) + r * u_n)
                tl.store(g_row + 2 * H, n, mask=mask)
                tl.store(g_row + 3 * H, u_n, mask=mask)
                h = (1.0 - z) * n + z * h_prev.to(ACC)
                tl.store(h_new_ptr, tl.where(act, h.to(h_prev.dtype), h_prev), mask=mask)
            else:
                rh = r * h_prev.to(ACC)
                tl.store(_rows(aux_ptr, t, offs_b, B, H) + offs_j[None, :], rh.to(h_prev.dtype), mask=mask)


@triton.jit
def _fwd_phase_b(t, prev, new, b0, s0, xw_ptr, len_ptr, u_ptr, whr_ptr, hs_ptr, gates_ptr, aux_ptr, w_tile,
                 B, H, R, FAMILY: tl.constexpr, G: tl.constexpr, GS: tl.constexpr, RESIDENT: tl.constexpr,
                 BB: tl.constexpr, BH: tl.constexpr, KB: tl.constexpr,
                 ACC: tl.constexpr, PREC: tl.constexpr):
    """LSTM: h_r[S] = h_pre @ W_hr[S]^T. GRU (reset before): n = tanh(x_n + (r h) @ U_n[S]^T), h_t."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    acc = tl.zeros((BB, BH), ACC)
    for k0 in range(0, H, KB):
        a_chunk = load_row_chunk(aux_ptr + t.to(tl.int64) * B * H, H, offs_b, mb, k0, H, KB)  # (BB, KB)
        if RESIDENT:
            w = w_tile
        else:
            w = _fwd_b_weights(u_ptr, whr_ptr, k0, s0, H, R, FAMILY, BH, KB)
        acc += tl.dot(a_chunk, w, out_dtype=ACC, input_precision=PREC)  # (BB, BH)
    act = (t < tl.load(len_ptr + offs_b, mask=mb, other=0))[:, None]
    offs_j = s0 + tl.arange(0, BH)
    if FAMILY == 0:
        mask = mb[:, None] & (offs_j < R)[None, :]
    else:
        mask = mb[:, None] & (offs_j < H)[None, :]
    h_prev = tl.load(_rows(hs_ptr, prev, offs_b, B, R) + offs_j[None, :], mask=mask, other=0.0)
    h = acc
    if FAMILY == 1:
        g_row = _rows(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :]
        n = tanh(tl.load(_rows(xw_ptr, t, offs_b, B, G * H) + 2 * H + offs_j[None, :], mask=mask, other=0.0).to(ACC) + acc)
        tl.store(g_row + 2 * H, n, mask=mask)
        z = tl.load(g_row + H, mask=mask, other=0.0)
        h = (1.0 - z) * n + z * h_prev.to(ACC)
    tl.store(_rows(hs_ptr, new, offs_b, B, R) + offs_j[None, :], tl.where(act, h.to(h_prev.dtype), h_prev), mask=mask)


@triton.jit
def recurrence_fwd_kernel(
    xw_ptr,     # (T, B, G*H) input projections W_ih x_t + folded biases
    len_ptr,    # (B,) int32 sequence lengths
    u_ptr,      # (G*H, R) weight_hh
    whr_ptr,    # (R, H) weight_hr (PROJ)
    peep_ptr,   # (3H,) weight_ch (PEEP)
    bn_ptr,     # (H,) bias_hh of the GRU's n rows (HAS_BN)
    hs_ptr,     # (T+1, B, R) carried h, initial state already at its index
    cs_ptr,     # (T+1, B, H) LSTM cell, initial state already at its index
    gates_ptr,  # (T, B, GS*H) saved activations
    aux_ptr,    # (T, B, H) h before projection (PROJ) or r * h_{t-1} (GRU, reset before)
    bar_ptr,    # (1,) int32 zeroed barrier counter (PHASE == 0)
    T, B, H, R,
    s_first,    # first processing step of this launch
    n_steps,    # steps in this launch
    FAMILY: tl.constexpr,       # 0 LSTM, 1 GRU, 2 RNN
    G: tl.constexpr,            # gates with weights (row blocks of weight_ih / weight_hh)
    GA: tl.constexpr,           # gate blocks in phase A's matmul
    GS: tl.constexpr,           # saved activation blocks
    IDX_I: tl.constexpr, IDX_F: tl.constexpr, IDX_G: tl.constexpr, IDX_O: tl.constexpr,  # LSTM row blocks, -1 absent
    CIFG: tl.constexpr, PEEP: tl.constexpr, G_ACT: tl.constexpr, O_ACT: tl.constexpr,    # LSTM variant switches
    PROJ: tl.constexpr, RESET_AFTER: tl.constexpr, HAS_BN: tl.constexpr, RELU: tl.constexpr,
    TWO_PHASE: tl.constexpr,    # PROJ or GRU with the reset before the matmul
    REVERSE: tl.constexpr,      # walk t = T-1 .. 0
    PHASE: tl.constexpr,        # 0 persistent with barriers, 1 / 2 only phase A / B (see module doc)
    RESIDENT: tl.constexpr,     # weight slices loaded once (on chip), else streamed per step in chunks
    BB: tl.constexpr,           # batch rows per block
    BH: tl.constexpr,           # units per program
    KA: tl.constexpr,           # phase A's chunk of h_{t-1} (>= R when RESIDENT)
    KB: tl.constexpr,           # phase B's chunk of h_pre / r * h (>= H when RESIDENT)
    GAP: tl.constexpr,          # GA rounded up to a power of two
    ACC: tl.constexpr,          # accumulation / pointwise dtype
    PREC: tl.constexpr,         # tl.dot input precision ("ieee" or "tf32")
):
    s0 = tl.program_id(0) * BH
    u_tile = 0
    w_tile = 0
    if RESIDENT and PHASE != 2:
        u_tile = _fwd_a_weights(u_ptr, 0, s0, H, R, GA, BH, GAP, KA)  # (KA, GAP*BH)
    if RESIDENT and TWO_PHASE and PHASE != 1:
        w_tile = _fwd_b_weights(u_ptr, whr_ptr, 0, s0, H, R, FAMILY, BH, KB)  # (KB, BH)
    for k in range(n_steps):
        t, prev, new = _times(s_first + k, T, REVERSE)
        if PHASE != 2:
            for b0 in range(0, B, BB):
                _fwd_phase_a(t, prev, new, b0, s0, xw_ptr, len_ptr, u_ptr, bn_ptr, peep_ptr, hs_ptr, cs_ptr,
                             gates_ptr, aux_ptr, u_tile, B, H, R, FAMILY, G, GA, GS,
                             IDX_I, IDX_F, IDX_G, IDX_O, CIFG, PEEP, G_ACT, O_ACT,
                             PROJ, RESET_AFTER, HAS_BN, RELU, RESIDENT, BB, BH, KA, GAP, ACC, PREC)
        if PHASE == 0:
            grid_sync(bar_ptr, k * (1 + TWO_PHASE) + 1)
        if TWO_PHASE and PHASE != 1:
            for b0 in range(0, B, BB):
                _fwd_phase_b(t, prev, new, b0, s0, xw_ptr, len_ptr, u_ptr, whr_ptr, hs_ptr, gates_ptr, aux_ptr,
                             w_tile, B, H, R, FAMILY, G, GS, RESIDENT, BB, BH, KB, ACC, PREC)
            if PHASE == 0:
                grid_sync(bar_ptr, k * 2 + 2)


# ----- backward -----------------------------------------------------------------------------------


@triton.jit
def _lstm_bwd(gh, t, prev, new, offs_b, offs_j, mask, act, cs_ptr, gates_ptr, d_ptr, carry_c_ptr, peep_ptr,
              B, H, G: tl.constexpr, GS: tl.constexpr,
              IDX_I: tl.constexpr, IDX_F: tl.constexpr, IDX_G: tl.constexpr, IDX_O: tl.constexpr,
              CIFG: tl.constexpr, PEEP: tl.constexpr, G_ACT: tl.constexpr, O_ACT: tl.constexpr):
    """From dL/dh_t (before projection) to the gate pre-activation gradients; carries dL/dc."""
    mj = offs_j < H
    g_row = _rows(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :]
    d_row = _rows(d_ptr, t, offs_b, B, G * H) + offs_j[None, :]
    cc_ptr = carry_c_ptr + offs_b[:, None] * H + offs_j[None, :]
    gc_in = tl.load(cc_ptr, mask=mask, other=0.0)
    c_prev = tl.load(_rows(cs_ptr, prev, offs_b, B, H) + offs_j[None, :], mask=mask, other=0.0)
    c = tl.load(_rows(cs_ptr, new, offs_b, B, H) + offs_j[None, :], mask=mask, other=0.0)
    g = tl.load(g_row + IDX_G * H, mask=mask, other=0.0)
    one = tl.full(g.shape, 1.0, g.dtype)
    f = one
    if IDX_F >= 0:
        f = tl.load(g_row + IDX_F * H, mask=mask, other=0.0)
    i = one
    if CIFG:
        i = 1.0 - f
    elif IDX_I >= 0:
        i = tl.load(g_row + IDX_I * H, mask=mask, other=0.0)
    o = one
    if IDX_O >= 0:
        o = tl.load(g_row + IDX_O * H, mask=mask, other=0.0)
    if O_ACT:
        tc = tanh(c)
        gc = gc_in + gh * o * (1.0 - tc * tc)
    else:
        tc = c
        gc = gc_in + gh * o
    zero = tl.zeros(g.shape, g.dtype)
    if IDX_O >= 0:
        da_o = gh * tc * o * (1.0 - o)
        tl.store(d_row + IDX_O * H, tl.where(act, da_o, zero), mask=mask)
        if PEEP:
            gc += da_o * tl.load(peep_ptr + 2 * H + offs_j, mask=mj, other=0.0)[None, :]
    di = gc * g
    df = gc * c_prev
    dg = gc * i
    if G_ACT:
        dg = dg * (1.0 - g * g)
    tl.store(d_row + IDX_G * H, tl.where(act, dg, zero), mask=mask)
    if CIFG:
        df -= di
    gc_prev = gc * f
    if IDX_I >= 0:
        da_i = di * i * (1.0 - i)
        tl.store(d_row + IDX_I * H, tl.where(act, da_i, zero), mask=mask)
        if PEEP:
            gc_prev += da_i * tl.load(peep_ptr + offs_j, mask=mj, other=0.0)[None, :]
    if IDX_F >= 0:
        da_f = df * f * (1.0 - f)
        tl.store(d_row + IDX_F * H, tl.where(act, da_f, zero), mask=mask)
        if PEEP:
            gc_prev += da_f * tl.load(peep_ptr + H + offs_j, mask=mj, other=0.0)[None, :]
    tl.store(cc_ptr, tl.where(act, gc_prev, gc_in), mask=mask)


@triton.jit
def _bwd_phase_a(t, prev, new, t_next, s, b0, s0,
                 len_ptr, u_ptr, peep_ptr, hs_ptr, cs_ptr, gates_ptr, dhs_ptr, d_ptr, drec_ptr, ghr_ptr,
                 carry_h_ptr, carry_c_ptr, u_tile, B, H, R,
                 FAMILY: tl.constexpr, G: tl.constexpr, GA: tl.constexpr, GS: tl.constexpr,
                 IDX_I: tl.constexpr, IDX_F: tl.constexpr, IDX_G: tl.constexpr, IDX_O: tl.constexpr,
                 CIFG: tl.constexpr, PEEP: tl.constexpr, G_ACT: tl.constexpr, O_ACT: tl.constexpr,
                 PROJ: tl.constexpr, RESET_AFTER: tl.constexpr, RELU: tl.constexpr, RESIDENT: tl.constexpr,
                 BB: tl.constexpr, BH: tl.constexpr, KA: tl.constexpr, GAP: tl.constexpr,
                 ACC: tl.constexpr, PREC: tl.constexpr):
    """dL/dh_t[S] = carry + dL/dhs + d_{t+1} @ U[:, S], then the cell's pointwise backward."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    offs_j = s0 + tl.arange(0, BH)
    mask = mb[:, None] & (offs_j < R)[None, :]
    # no step after the forward's last one: gather zeros at backward step s == 0
    has_next = mb & ((offs_b * 0 + s) > 0)
    gather = tl.zeros((BB, BH), ACC)
    for k0 in range(0, H, KA):
        d_next = load_gated_full(drec_ptr + t_next.to(tl.int64) * B * (G * H), G * H, offs_b, has_next,
                                 GA, H, 0, k0, GAP, KA)  # (BB, GAP*KA)
        if RESIDENT:
            w = u_tile
        else:
            w = _bwd_a_weights(u_ptr, k0, s0, H, R, GA, BH, GAP, KA)
        gather += tl.dot(d_next, w, out_dtype=ACC, input_precision=PREC)  # (BB, BH)
    ch_ptr = carry_h_ptr + offs_b[:, None] * R + offs_j[None, :]
    gh = (tl.load(ch_ptr, mask=mask, other=0.0) + gather
          + tl.load(_rows(dhs_ptr, new, offs_b, B, R) + offs_j[None, :], mask=mask, other=0.0).to(ACC))
    act = (t < tl.load(len_ptr + offs_b, mask=mb, other=0))[:, None]
    zero = tl.zeros(gh.shape, ACC)
    if FAMILY == 0:
        if PROJ:
            tl.store(_rows(ghr_ptr, t, offs_b, B, R) + offs_j[None, :], tl.where(act, gh, zero), mask=mask)
        else:
            _lstm_bwd(gh, t, prev, new, offs_b, offs_j, mask, act, cs_ptr, gates_ptr, d_ptr, carry_c_ptr,
                      peep_ptr, B, H, G, GS, IDX_I, IDX_F, IDX_G, IDX_O, CIFG, PEEP, G_ACT, O_ACT)
        tl.store(ch_ptr, tl.where(act, zero, gh), mask=mask)
    elif FAMILY == 2:
        h = tl.load(_rows(hs_ptr, new, offs_b, B, R) + offs_j[None, :], mask=mask, other=0.0).to(ACC)
        if RELU:
            da = tl.where(h > 0, gh, zero)
        else:
            da = gh * (1.0 - h * h)
        tl.store(_rows(d_ptr, t, offs_b, B, G * H) + offs_j[None, :], tl.where(act, da, zero), mask=mask)
        tl.store(ch_ptr, tl.where(act, zero, gh), mask=mask)
    else:
        g_row = _rows(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :]
        d_row = _rows(d_ptr, t, offs_b, B, G * H) + offs_j[None, :]
        z = tl.load(g_row + H, mask=mask, other=0.0)
        n = tl.load(g_row + 2 * H, mask=mask, other=0.0)
        h_prev = tl.load(_rows(hs_ptr, prev, offs_b, B, R) + offs_j[None, :], mask=mask, other=0.0).to(ACC)
        da_n = gh * (1.0 - z) * (1.0 - n * n)
        da_z = gh * (h_prev - n) * z * (1.0 - z)
        tl.store(d_row + H, tl.where(act, da_z, zero), mask=mask)
        tl.store(d_row + 2 * H, tl.where(act, da_n, zero), mask=mask)
        if RESET_AFTER:
            r = tl.load(g_row, mask=mask, other=0.0)
            da_r = da_n * tl.load(g_row + 3 * H, mask=mask, other=0.0) * r * (1.0 - r)
            tl.store(d_row, tl.where(act, da_r, zero), mask=mask)
            rec_row = _rows(drec_ptr, t, offs_b, B, G * H) + offs_j[None, :]
            tl.store(rec_row, tl.where(act, da_r, zero), mask=mask)
            tl.store(rec_row + H, tl.where(act, da_z, zero), mask=mask)
            tl.store(rec_row + 2 * H, tl.where(act, da_n * r, zero), mask=mask)
        tl.store(ch_ptr, tl.where(act, gh * z, gh), mask=mask)


@triton.jit
def _bwd_phase_b(t, prev, new, b0, s0, len_ptr, u_ptr, whr_ptr, hs_ptr, cs_ptr, gates_ptr, peep_ptr, d_ptr,
                 ghr_ptr, carry_h_ptr, carry_c_ptr, w_tile, B, H, R,
                 FAMILY: tl.constexpr, G: tl.constexpr, GS: tl.constexpr,
                 IDX_I: tl.constexpr, IDX_F: tl.constexpr, IDX_G: tl.constexpr, IDX_O: tl.constexpr,
                 CIFG: tl.constexpr, PEEP: tl.constexpr, G_ACT: tl.constexpr, O_ACT: tl.constexpr,
                 RESIDENT: tl.constexpr, BB: tl.constexpr, BH: tl.constexpr, KB: tl.constexpr,
                 ACC: tl.constexpr, PREC: tl.constexpr):
    """LSTM: dh_pre[S] = dh_r @ W_hr[:, S], then the LSTM backward. GRU (reset before):
    d(r h)[S] = da_n @ U_n[:, S], giving da_r and the r * d(r h) part of dL/dh_{t-1}."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    offs_j = s0 + tl.arange(0, BH)
    mask = mb[:, None] & (offs_j < H)[None, :]
    act = (t < tl.load(len_ptr + offs_b, mask=mb, other=0))[:, None]
    # K = R for the LSTM (dh_r) and H = R for the GRU (da_n)
    prod = tl.zeros((BB, BH), ACC)
    for k0 in range(0, R, KB):
        if FAMILY == 0:
            a_chunk = load_row_chunk(ghr_ptr + t.to(tl.int64) * B * R, R, offs_b, mb, k0, R, KB)  # (BB, KB)
        else:
            a_chunk = load_gated_full(d_ptr + t.to(tl.int64) * B * (G * H), G * H, offs_b, mb,
                                      1, H, 2, k0, 1, KB)  # (BB, KB) of da_n
        if RESIDENT:
            w = w_tile
        else:
            w = _bwd_b_weights(u_ptr, whr_ptr, k0, s0, H, R, FAMILY, BH, KB)
        prod += tl.dot(a_chunk, w, out_dtype=ACC, input_precision=PREC)  # (BB, BH)
    if FAMILY == 0:
        gh = prod
        _lstm_bwd(gh, t, prev, new, offs_b, offs_j, mask, act, cs_ptr, gates_ptr, d_ptr,
                  carry_c_ptr, peep_ptr, B, H, G, GS, IDX_I, IDX_F, IDX_G, IDX_O, CIFG, PEEP, G_ACT, O_ACT)
    else:
        drh = prod
        r = tl.load(_rows(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :], mask=mask, other=0.0)
        h_prev = tl.load(_rows(hs_ptr, prev, offs_b, B, R) + offs_j[None, :], mask=mask, other=0.0).to(ACC)
        zero = tl.zeros(drh.shape, ACC)
        tl.store(_rows(d_ptr, t, offs_b, B, G * H) + offs_j[None, :],
                 tl.where(act, h_prev * drh * r * (1.0 - r), zero), mask=mask)
        ch_ptr = carry_h_ptr + offs_b[:, None] * R + offs_j[None, :]
        tl.store(ch_ptr, tl.load(ch_ptr, mask=mask, other=0.0) + tl.where(act, r * drh, zero), mask=mask)


@triton.jit
def recurrence_bwd_kernel(
    len_ptr,      # (B,) int32 sequence lengths
    u_ptr,        # (G*H, R) weight_hh
    whr_ptr,      # (R, H) weight_hr (PROJ)
    peep_ptr,     # (3H,) weight_ch (PEEP)
    hs_ptr,       # (T+1, B, R) forward's carried h
    cs_ptr,       # (T+1, B, H) forward's LSTM cells
    gates_ptr,    # (T, B, GS*H) forward's activations
    dhs_ptr,      # (T+1, B, R) dL/dhs from the outputs and the final state
    d_ptr,        # (T, B, G*H) out: dL/d(input-side pre-activations), zero where inactive
    drec_ptr,     # (T, B, G*H) out: dL/d(recurrent pre-activations) (== d_ptr unless GRU reset after)
    ghr_ptr,      # (T, B, R) out: dL/dh_r, the projected h (PROJ)
    carry_h_ptr,  # (B, R) zeroed; out: local part of dL/dh_{-1}
    carry_c_ptr,  # (B, H) dL/dc_final; out: dL/dc_{-1}
    bar_ptr,      # (1,) int32 zeroed barrier counter (PHASE == 0)
    T, B, H, R,
    s_first,      # first backward step of this launch (0 = the forward's last step)
    n_steps,      # steps in this launch
    FAMILY: tl.constexpr, G: tl.constexpr, GA: tl.constexpr, GS: tl.constexpr,
    IDX_I: tl.constexpr, IDX_F: tl.constexpr, IDX_G: tl.constexpr, IDX_O: tl.constexpr,
    CIFG: tl.constexpr, PEEP: tl.constexpr, G_ACT: tl.constexpr, O_ACT: tl.constexpr,
    PROJ: tl.constexpr, RESET_AFTER: tl.constexpr, RELU: tl.constexpr, TWO_PHASE: tl.constexpr,
    REVERSE: tl.constexpr, PHASE: tl.constexpr, RESIDENT: tl.constexpr,
    BB: tl.constexpr, BH: tl.constexpr,
    KA: tl.constexpr,             # phase A's chunk of each gate's H units (>= H when RESIDENT)
    KB: tl.constexpr,             # phase B's chunk of dh_r / da_n (>= R when RESIDENT)
    GAP: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
):
    s0 = tl.program_id(0) * BH
    u_tile = 0
    w_tile = 0
    if RESIDENT and PHASE != 2:
        u_tile = _bwd_a_weights(u_ptr, 0, s0, H, R, GA, BH, GAP, KA)  # (GAP*KA, BH)
    if RESIDENT and TWO_PHASE and PHASE != 1:
        w_tile = _bwd_b_weights(u_ptr, whr_ptr, 0, s0, H, R, FAMILY, BH, KB)  # (KB, BH)
    for k in range(n_steps):
        s = s_first + k
        t, prev, new = _times(T - 1 - s, T, REVERSE)
        t_next = tl.maximum(tl.minimum(t + 1 - 2 * REVERSE, T - 1), 0)
        if PHASE != 2:
            for b0 in range(0, B, BB):
                _bwd_phase_a(t, prev, new, t_next, s, b0, s0, len_ptr, u_ptr, peep_ptr, hs_ptr, cs_ptr,
                             gates_ptr, dhs_ptr, d_ptr, drec_ptr, ghr_ptr, carry_h_ptr, carry_c_ptr, u_tile,
                             B, H, R, FAMILY, G, GA, GS, IDX_I, IDX_F, IDX_G, IDX_O, CIFG, PEEP, G_ACT, O_ACT,
                             PROJ, RESET_AFTER, RELU, RESIDENT, BB, BH, KA, GAP, ACC, PREC)
        if PHASE == 0:
            grid_sync(bar_ptr, k * (1 + TWO_PHASE) + 1)
        if TWO_PHASE and PHASE != 1:
            for b0 in range(0, B, BB):
                _bwd_phase_b(t, prev, new, b0, s0, len_ptr, u_ptr, whr_ptr, hs_ptr, cs_ptr, gates_ptr, peep_ptr,
                             d_ptr, ghr_ptr, carry_h_ptr, carry_c_ptr, w_tile, B, H, R, FAMILY, G, GS,
                             IDX_I, IDX_F, IDX_G, IDX_O, CIFG, PEEP, G_ACT, O_ACT, RESIDENT, BB, BH, KB,
                             ACC, PREC)
            if PHASE == 0:
                grid_sync(bar_ptr, k * 2 + 2)
