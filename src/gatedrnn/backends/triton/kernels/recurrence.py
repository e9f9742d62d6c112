"""The forward and backward recurrences of one layer and direction, for each kernel cell (LSTM, GRU, RNN).

Work split: program p owns units ``p*BH .. p*BH+BH`` of every gate. With ``RESIDENT`` it loads its
slice of the recurrent weights once, before the time loop (Triton keeps a loop-invariant dot
operand in shared memory); otherwise every phase streams the slice in chunks of ``KA`` / ``KB``
columns each step (the weights-don't-fit path; same math, one chunk when resident), a loop that
Triton software-pipelines ``STAGES`` deep (cp.async prefetch of the next chunks; 1 = none). Only
those chunk loops: the step loop is never pipelined, so no load moves above a barrier. A step is
one or two *phases*; in each, every program reads a full vector that all programs wrote in the
previous phase (h_{t-1}, or a gradient vector), multiplies it by its weight slice and writes its
slice of the next vector. Phases are separated by a grid barrier (:func:`.primitives.grid_sync`).

The constexpr ``PHASE`` selects how the same phase code is driven:

- ``PHASE == 0``: persistent, one launch runs ``n_steps`` steps with a barrier after every phase
  (all programs must be co-resident: the launcher keeps the grid within the SM count).
- ``PHASE == k > 0``: run only the k-th phase of the single step ``s_first``; the host launches
  the ``NPH`` phases one after another, and the kernel boundary is the barrier. This is the path
  for the Triton interpreter, which runs programs one after another (a spin barrier would never
  open), and the fallback where the grid cannot be co-resident.

Each phase's place in the step comes from the host as ``PH_*`` constexprs (0 = absent; see
``KernelSpec.phase_slots``).

Phases per step (R = output size, H = hidden size, G gates, ``[S]`` a program's slice):

=====================  ==========================================  ==============================
cell                   forward                                     backward
=====================  ==========================================  ==============================
LSTM, RNN, GRU         A: h_{t-1} @ U[S]^T -> gates[S], h_t[S]     A: d_{t+1} @ U[:, S] -> d_t[S]
LSTM with projection   A: as LSTM, h_pre[S]; B: h_pre @ W_hr[S]^T  A: dh_r[S]; B: dh_r @ W_hr[:, S]
GRU, reset before      A: r, z[S], (r h)[S]; B: (r h) @ U_n[S]^T   A: dn, dz[S]; B: dn @ U_n[:, S]
=====================  ==========================================  ==============================

With layer norm every normalisation needs statistics over all H units, which other programs
hold, so it adds one exchange (see :mod:`.layer_norm`): forward, SA (product h_{t-1} U[S]^T, raw
to ``hat``, partial moments) before A (which normalises it instead of multiplying); for the LSTM,
A stops at c_t and its partials and C computes h_t = o tanh(LN(c_t)); for the GRU with the reset
before, SB ((r h) U_n[S]^T and its partials) before B. Backward, the mirror image: A (gather,
then the LSTM as far as d(LN(c_t)) and its sums; the GRU's gate gradients and their sums), for
the GRU with the reset before DN (the n block's layer-norm backward, gathered by B), C (LSTM: the
cell's layer-norm backward and the gate gradients, with their sums), D (each gate block's
layer-norm backward into ``dprod``, which the next step gathers). Steps: LSTM 3 phases (4 with
projection), GRU 2 (4 with the reset before), forward and backward alike.

Saved for the backward pass (all indexed by real time t, so ``reverse`` only changes the order):
``hs`` (T+1, B, R) the carried h, with h_{t-1} at ``t + REVERSE`` and h_t at ``t + 1 - REVERSE``;
``cs`` (T+1, B, H) the LSTM cell the same way; ``gates`` (T, B, GS*H) activations; ``aux``
(T, B, H) h before the projection, or r * h_{t-1} for the GRU with the reset before the matmul;
with layer norm ``hat`` (T, B, G*H) the normalised products, ``hatc`` (T, B, H) the normalised
LSTM cell and ``rstd`` (T, B, G+1) their 1 / sqrt(var + eps).
A step where ``t >= lengths[b]`` copies the state and saves zero gradients, so the backward pass
passes the carried gradient through it unchanged.

Zoneout (``ZO``) blends each state where it is stored and splits its gradient where it is read
back; recurrent dropout (``DROP``) masks h_{t-1} in the recurrent product and its gathered
gradient (:mod:`.noise`). With zoneout ``hs`` and ``cs`` hold the zoned-out states; the LSTM's
own c_t is recomputed from the gates, the RNN's own h_t saved in ``gates``.

The LSTM's ``fgr`` (``FGR``) adds, in the cell's phase, the previous step's saved activations
times the padded (4H, 4H) ``weight_gg`` (:func:`fgr_product`: no extra exchange, ``gates`` was
written a barrier earlier), and backward gathers the next step's pre-activation gradients
through it into dL/d(i, f, o) (:func:`fgr_gathered`). Its initial gates state enters ``xw`` at each
row's first real step, where no previous step ran (the backend's ``run_layer``); its final one is
the saved activations of each row's last real step, whose gradient ``dg`` the backward pass adds to
dL/d(i, f, o) there.

Restarts (``RESTART``, the layer's ``reset``; :mod:`.restart`): a (T, B) mask marks the rows that
start step t from the zero state. Every read of a state before a step (h_{t-1} in the product and
in the pointwise step, c_{t-1}, fgr's previous activations) leaves those rows out and reads zeros,
while ``hs`` and ``cs`` keep the real states (step t-1's outputs). Backward, what step t carries to
h_{t-1} and c_{t-1} is zero on those rows: the local parts (``carry_h``, ``carry_c``) and, at step
t-1, the gather of step t's gradients (fgr's included).

The backward pass carries the gradient w.r.t. the state in ``carry_h`` (B, R) and ``carry_c``
(B, H): the part of it that is local to a program's units (e.g. z * dh for the GRU, f * dc for
the LSTM); the part through the recurrent matmul is gathered at the start of the next step.
"""

import triton
import triton.language as tl

from .layer_norm import (
    block_xhat_gain,
    bwd_phase_d,
    normalize,
    normalize_block,
    normalized_grad,
    normalized_products,
    rstd_rows,
    store_block_grad_sums,
    store_grad_sums,
    store_moments,
)
from .noise import dropped, product_input, store_h, zone_grads, zone_keep, zoned_store
from .primitives import (
    grid_sync,
    load_gated_cols,
    load_gated_full,
    load_gated_rows_t,
    load_row_chunk,
    pick_gate,
    rows_of,
    sigmoid,
    tanh,
)
from .restart import carried_mask, carried_only, carried_rows


@triton.jit
def _pre_activation(
    acc, x_row, g: tl.constexpr, H, mask, BB: tl.constexpr, GAP: tl.constexpr, BH: tl.constexpr, ACC: tl.constexpr
):
    """Gate g's (BB, BH) pre-activation: its block of the recurrent product ``acc`` plus its part of
    the input projection xw_t (``x_row``, gate-major rows of width H)."""
    return pick_gate(acc, g, BB, GAP, BH) + tl.load(x_row + g * H, mask=mask, other=0.0).to(ACC)


@triton.jit
def _times(s, T, REVERSE: tl.constexpr):
    """Real time t of processing step s, and the ``hs`` indices of h_{t-1} and h_t."""
    if REVERSE:
        t = T - 1 - s
        return t, t + 1, t
    else:
        return s, s, s + 1


@triton.jit
def _fwd_a_weights(u_ptr, k0, s0, H, R, GA: tl.constexpr, BH: tl.constexpr, GAP: tl.constexpr, KC: tl.constexpr):
    """(KC, GAP*BH): rows S of phase A's gate blocks of U, columns k0 .. k0+KC, transposed."""
    return load_gated_rows_t(u_ptr, GA, H, s0, R, k0, R, BH, GAP, KC)


@triton.jit
def _fwd_b_weights(u_ptr, whr_ptr, k0, s0, H, R, CELL: tl.constexpr, BH: tl.constexpr, KC: tl.constexpr):
    """(KC, BH): rows S of W_hr (LSTM) or of U_n (GRU), columns k0 .. k0+KC, transposed."""
    if CELL == 0:
        return load_gated_rows_t(whr_ptr, 1, R, s0, H, k0, H, BH, 1, KC)
    else:
        return load_gated_rows_t(u_ptr + 2 * H * R, 1, H, s0, R, k0, R, BH, 1, KC)


@triton.jit
def _bwd_a_weights(u_ptr, k0, s0, H, R, GA: tl.constexpr, BH: tl.constexpr, GAP: tl.constexpr, KC: tl.constexpr):
    """(GAP*KC, BH): columns S of U, rows k0 .. k0+KC of each of phase A's gate blocks."""
    return load_gated_cols(u_ptr, GA, H, 0, k0, R, s0, R, BH, GAP, KC)


@triton.jit
def _bwd_b_weights(u_ptr, whr_ptr, k0, s0, H, R, CELL: tl.constexpr, BH: tl.constexpr, KC: tl.constexpr):
    """(KC, BH): columns S of W_hr (LSTM, rows k0.. of R) or of U_n (GRU, rows k0.. of H)."""
    if CELL == 0:
        return load_gated_cols(whr_ptr, 1, R, 0, k0, H, s0, H, BH, 1, KC)
    else:
        return load_gated_cols(u_ptr, 1, H, 2 * H, k0, R, s0, H, BH, 1, KC)


@triton.jit
def fwd_product_a(
    h_ptr,
    offs_b,
    mb,
    u_ptr,
    u_tile,
    s0,
    B,
    H,
    R,
    GA: tl.constexpr,
    RESIDENT: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KA: tl.constexpr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BB, GAP*BH) gate-major: h_{t-1} @ U[S]^T for phase A's gate blocks, h_{t-1} the (B, R)
    matrix at ``h_ptr`` (:func:`.noise.product_input`), rows ``mb``. Also fgr's gate-to-gate
    product (:func:`fgr_product`), whose vector, the saved activations, is rounded to U's dtype."""
    acc = tl.zeros((BB, GAP * BH), ACC)
    # one chunk of KA >= R columns when the weights are resident, else streamed in chunks of KA
    for k0 in tl.range(0, R, KA, num_stages=STAGES):
        h_chunk = load_row_chunk(h_ptr, R, offs_b, mb, k0, R, KA)  # (BB, KA)
        if RESIDENT:
            w = u_tile
        else:
            w = _fwd_a_weights(u_ptr, k0, s0, H, R, GA, BH, GAP, KA)
        acc += tl.dot(h_chunk.to(w.dtype), w, out_dtype=ACC, input_precision=PREC)  # (BB, GAP*BH)
    return acc


@triton.jit
def fwd_product_b(
    aux_ptr,
    t,
    offs_b,
    mb,
    u_ptr,
    whr_ptr,
    w_tile,
    s0,
    B,
    H,
    R,
    CELL: tl.constexpr,
    RESIDENT: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KB: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BB, BH): aux_t @ W_hr[S]^T (LSTM, aux = h before projection) or aux_t @ U_n[S]^T (GRU, aux = r h)."""
    acc = tl.zeros((BB, BH), ACC)
    for k0 in tl.range(0, H, KB, num_stages=STAGES):
        a_chunk = load_row_chunk(aux_ptr + t.to(tl.int64) * B * H, H, offs_b, mb, k0, H, KB)  # (BB, KB)
        if RESIDENT:
            w = w_tile
        else:
            w = _fwd_b_weights(u_ptr, whr_ptr, k0, s0, H, R, CELL, BH, KB)
        acc += tl.dot(a_chunk, w, out_dtype=ACC, input_precision=PREC)  # (BB, BH)
    return acc


@triton.jit
def gathered_product(
    rec_ptr,
    t_next,
    s,
    offs_b,
    mb,
    w_ptr,
    w_tile,
    s0,
    B,
    H,
    n_cols,
    n_valid,
    G: tl.constexpr,
    GA: tl.constexpr,
    RESIDENT: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KA: tl.constexpr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BB, BH): rec_{t_next}[:, blocks < GA] @ w[:, S] with rec the (T, B, G*H) gradients of the
    next step's pre-activations and w a row-major weight of ``n_cols`` columns (columns s0 ..
    s0+BH, those < ``n_valid`` real; rows gate-major, H per block); zero at backward step s == 0,
    which has no next step. ``w_tile`` holds the slice when ``RESIDENT``."""
    has_next = mb & ((offs_b * 0 + s) > 0)
    gather = tl.zeros((BB, BH), ACC)
    for k0 in tl.range(0, H, KA, num_stages=STAGES):
        d_next = load_gated_full(
            rec_ptr + t_next.to(tl.int64) * B * (G * H), G * H, offs_b, has_next, GA, H, 0, k0, GAP, KA
        )  # (BB, GAP*KA)
        if RESIDENT:
            w = w_tile
        else:
            w = load_gated_cols(w_ptr, GA, H, 0, k0, n_cols, s0, n_valid, BH, GAP, KA)  # (GAP*KA, BH)
        gather += tl.dot(d_next, w, out_dtype=ACC, input_precision=PREC)  # (BB, BH)
    return gather


@triton.jit
def fgr_product(
    gates_ptr,
    gg_ptr,
    len_ptr,
    t,
    offs_b,
    mb,
    s0,
    B,
    H,
    REVERSE: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KG: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BB, 4*BH) gate-major, fgr's gate-to-gate recurrence: the previous step's saved (i, f, g, o)
    of all H units times gg[S]^T, gg = weight_gg padded to (4H, 4H) with zero g row and column
    blocks; streamed in chunks of KG columns. Zero for rows whose previous step did not run (the
    first step, and a reversed row's first real step after its padding; the initial gates state
    enters the input projection there instead) and for rows not in ``mb`` (restarted at t)."""
    t_prev = t - 1 + 2 * REVERSE
    ran = mb & ((offs_b * 0 + t_prev) >= 0) & (t_prev < tl.load(len_ptr + offs_b, mask=mb, other=0))
    prev_row = gates_ptr + tl.maximum(t_prev, 0).to(tl.int64) * B * (4 * H)
    return fwd_product_a(prev_row, offs_b, ran, gg_ptr, 0, s0, B, H, 4 * H, 4, False, STAGES, BB, BH, KG, 4, ACC, PREC)


@triton.jit
def fgr_gathered(
    d_ptr,
    gg_ptr,
    dg_ptr,
    len_ptr,
    t_next,
    s,
    m: tl.constexpr,
    offs_b,
    mb,
    next_rows,
    offs_j,
    mask,
    s0,
    B,
    H,
    FGR: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KG: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BB, BH) with ``FGR``, else 0: dL/d(the step's activation block m)[S]: through the next step's
    gate-to-gate product, d_{t_next} @ gg[:, m*H + S] (d the (T, B, 4H) pre-activation gradients;
    see :func:`fgr_product`) on ``next_rows`` (the rows of ``mb`` not restarted at t_next), and on
    the rows whose last real step this is (none follows: s == 0, or t_next >= lengths[b]) the
    gradient of the final gates state, ``dg`` (B, 4H)."""
    if FGR:  # both branches (one return each): the compiler sees only the taken one
        lens = tl.load(len_ptr + offs_b, mask=mb, other=0)
        last = mb & (((offs_b * 0 + s) == 0) | (t_next >= lens))
        final = tl.load(
            dg_ptr + offs_b[:, None].to(tl.int64) * (4 * H) + m * H + offs_j[None, :],
            mask=mask & last[:, None],
            other=0.0,
        )
        return final + gathered_product(
            d_ptr,
            t_next,
            s,
            offs_b,
            next_rows,
            gg_ptr + m * H,
            0,
            s0,
            B,
            H,
            4 * H,
            H,
            4,
            4,
            False,
            STAGES,
            BB,
            BH,
            KG,
            4,
            ACC,
            PREC,
        )
    else:
        return 0.0


@triton.jit
def bwd_gathered_dh(
    rec_ptr,
    dhs_ptr,
    ch_ptr,
    t_next,
    new,
    s,
    offs_b,
    mb,
    offs_j,
    mask,
    u_ptr,
    u_tile,
    rmask_ptr,
    s0,
    B,
    H,
    R,
    G: tl.constexpr,
    GA: tl.constexpr,
    DROP: tl.constexpr,
    RESIDENT: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KA: tl.constexpr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BB, BH) dL/dh_t[S]: the carried local part (``ch_ptr``), dL/dhs, and the gather
    rec_{t+1} @ U[:, S] of the next step's recurrent pre-activation gradients (zero at s == 0),
    times the recurrent dropout mask with ``DROP`` (h_t entered that product masked)."""
    gather = gathered_product(
        rec_ptr,
        t_next,
        s,
        offs_b,
        mb,
        u_ptr,
        u_tile,
        s0,
        B,
        H,
        R,
        R,
        G,
        GA,
        RESIDENT,
        STAGES,
        BB,
        BH,
        KA,
        GAP,
        ACC,
        PREC,
    )
    gather = dropped(gather, rmask_ptr, offs_b, mb, offs_j, R, DROP)
    return (
        tl.load(ch_ptr, mask=mask, other=0.0)
        + gather
        + tl.load(rows_of(dhs_ptr, new, offs_b, B, R) + offs_j[None, :], mask=mask, other=0.0).to(ACC)
    )


@triton.jit
def bwd_product_b(
    ghr_ptr,
    d_ptr,
    t,
    offs_b,
    mb,
    u_ptr,
    whr_ptr,
    w_tile,
    s0,
    B,
    H,
    R,
    CELL: tl.constexpr,
    G: tl.constexpr,
    RESIDENT: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KB: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BB, BH): LSTM dh_r @ W_hr[:, S] (dh_r from ``ghr_ptr``), GRU da_n @ U_n[:, S] (the n block of
    the (T, B, G*H) buffer ``d_ptr``). K = R for the LSTM and H = R for the GRU."""
    prod = tl.zeros((BB, BH), ACC)
    for k0 in tl.range(0, R, KB, num_stages=STAGES):
        if CELL == 0:
            a_chunk = load_row_chunk(ghr_ptr + t.to(tl.int64) * B * R, R, offs_b, mb, k0, R, KB)  # (BB, KB)
        else:
            a_chunk = load_gated_full(
                d_ptr + t.to(tl.int64) * B * (G * H), G * H, offs_b, mb, 1, H, 2, k0, 1, KB
            )  # (BB, KB) of da_n
        if RESIDENT:
            w = w_tile
        else:
            w = _bwd_b_weights(u_ptr, whr_ptr, k0, s0, H, R, CELL, BH, KB)
        prod += tl.dot(a_chunk, w, out_dtype=ACC, input_precision=PREC)  # (BB, BH)
    return prod


# ----- forward ------------------------------------------------------------------------------------


@triton.jit
def _lstm_gate(g_row, idx: tl.constexpr, one, mask, H):
    """Gate block ``idx`` of the saved activations, or ``one`` where the variant has no such gate."""
    if idx >= 0:
        return tl.load(g_row + idx * H, mask=mask, other=0.0)
    return one


@triton.jit
def _lstm_fwd_a(
    x_row,
    g_row,
    c_prev,
    act,
    mask,
    peep_ptr,
    offs_j,
    mj,
    H,
    acc,
    IDX_I: tl.constexpr,
    IDX_F: tl.constexpr,
    IDX_G: tl.constexpr,
    IDX_O: tl.constexpr,
    CIFG: tl.constexpr,
    PEEP: tl.constexpr,
    G_ACT: tl.constexpr,
    O_ACT: tl.constexpr,
    BB: tl.constexpr,
    GAP: tl.constexpr,
    BH: tl.constexpr,
    ACC: tl.constexpr,
):
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
def _lstm_store_h(
    h,
    t,
    prev,
    new,
    act,
    offs_b,
    mb,
    offs_j,
    mask,
    prev_mask,
    hs_ptr,
    aux_ptr,
    hin_ptr,
    rmask_ptr,
    keep_h_ptr,
    B,
    H,
    R,
    PROJ: tl.constexpr,
    ZO: tl.constexpr,
    DROP: tl.constexpr,
    ACC: tl.constexpr,
):
    """The LSTM's h_t (BB, BH): before the projection into ``aux`` (phase B projects and stores
    it), else the carried state into ``hs`` (:func:`.noise.store_h`; h_{t-1} read with
    ``prev_mask``, zero on restarted rows)."""
    if PROJ:
        tl.store(rows_of(aux_ptr, t, offs_b, B, H) + offs_j[None, :], h, mask=mask)
    else:
        h_prev = tl.load(rows_of(hs_ptr, prev, offs_b, B, R) + offs_j[None, :], mask=prev_mask, other=0.0)
        store_h(
            hs_ptr,
            hin_ptr,
            rmask_ptr,
            new,
            h_prev,
            h,
            act,
            keep_h_ptr,
            t,
            offs_b,
            mb,
            offs_j,
            mask,
            B,
            R,
            ZO,
            DROP,
            ACC,
        )


@triton.jit
def _fwd_phase_a(
    t,
    prev,
    new,
    b0,
    s0,
    xw_ptr,
    len_ptr,
    restart_ptr,
    u_ptr,
    bn_ptr,
    peep_ptr,
    gg_ptr,
    hs_ptr,
    cs_ptr,
    gates_ptr,
    aux_ptr,
    u_tile,
    hat_ptr,
    rstd_ptr,
    part_ptr,
    gln_ptr,
    keep_h_ptr,
    keep_c_ptr,
    rmask_ptr,
    hin_ptr,
    eps,
    B,
    H,
    R,
    CELL: tl.constexpr,
    G: tl.constexpr,
    GA: tl.constexpr,
    GS: tl.constexpr,
    IDX_I: tl.constexpr,
    IDX_F: tl.constexpr,
    IDX_G: tl.constexpr,
    IDX_O: tl.constexpr,
    CIFG: tl.constexpr,
    PEEP: tl.constexpr,
    G_ACT: tl.constexpr,
    O_ACT: tl.constexpr,
    PROJ: tl.constexpr,
    RESET_AFTER: tl.constexpr,
    HAS_BN: tl.constexpr,
    RELU: tl.constexpr,
    LN: tl.constexpr,
    NS: tl.constexpr,
    PP: tl.constexpr,
    ZO: tl.constexpr,
    DROP: tl.constexpr,
    FGR: tl.constexpr,
    RESTART: tl.constexpr,
    REVERSE: tl.constexpr,
    RESIDENT: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KA: tl.constexpr,
    KG: tl.constexpr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """h_{t-1} @ U[S]^T (with LN: its normalised form, from phase SA's raw product and partials;
    with ``FGR`` plus the gate recurrence, :func:`fgr_product`) and the cell's pointwise step for
    batch rows b0.. and units s0.., the new state zoned out (with LN the LSTM stops at c_t and its
    partials, unzoned; phase C finishes h_t and c_t). The states before the step are read as zero
    on the rows restarted at t."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    offs_j = s0 + tl.arange(0, BH)
    mj = offs_j < H
    mask = mb[:, None] & mj[None, :]
    keep = carried_rows(restart_ptr, t, offs_b, mb, B, RESTART)
    prev_mask = carried_mask(mask, keep, RESTART)
    if LN:
        acc = normalized_products(
            hat_ptr, rstd_ptr, gln_ptr, part_ptr, t, offs_b, mb, offs_j, mask, s0, B, H, eps, G, GA, NS, BH, GAP, PP
        )
    else:
        acc = fwd_product_a(
            product_input(hs_ptr, hin_ptr, prev, B, R, DROP),
            offs_b,
            keep,
            u_ptr,
            u_tile,
            s0,
            B,
            H,
            R,
            GA,
            RESIDENT,
            STAGES,
            BB,
            BH,
            KA,
            GAP,
            ACC,
            PREC,
        )
    if FGR:
        acc += fgr_product(
            gates_ptr, gg_ptr, len_ptr, t, offs_b, keep, s0, B, H, REVERSE, STAGES, BB, BH, KG, ACC, PREC
        )
    act = (t < tl.load(len_ptr + offs_b, mask=mb, other=0))[:, None]
    x_row = rows_of(xw_ptr, t, offs_b, B, G * H) + offs_j[None, :]
    g_row = rows_of(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :]
    if CELL == 0:
        c_prev = tl.load(rows_of(cs_ptr, prev, offs_b, B, H) + offs_j[None, :], mask=prev_mask, other=0.0)
        c, h = _lstm_fwd_a(
            x_row,
            g_row,
            c_prev,
            act,
            mask,
            peep_ptr,
            offs_j,
            mj,
            H,
            acc,
            IDX_I,
            IDX_F,
            IDX_G,
            IDX_O,
            CIFG,
            PEEP,
            G_ACT,
            O_ACT,
            BB,
            GAP,
            BH,
            ACC,
        )
        c_row = rows_of(cs_ptr, new, offs_b, B, H) + offs_j[None, :]
        if LN:  # phase C normalises c_t, then zones it out
            tl.store(c_row, tl.where(act, c, c_prev), mask=mask)
            store_moments(c, mask, mb, part_ptr, G, offs_b, s0, B, H, NS, BH)
        else:
            zoned_store(c_row, c_prev, c, act, keep_c_ptr, t, offs_b, offs_j, mask, B, H, ZO, ACC)
            _lstm_store_h(
                h,
                t,
                prev,
                new,
                act,
                offs_b,
                mb,
                offs_j,
                mask,
                prev_mask,
                hs_ptr,
                aux_ptr,
                hin_ptr,
                rmask_ptr,
                keep_h_ptr,
                B,
                H,
                R,
                PROJ,
                ZO,
                DROP,
                ACC,
            )
    else:
        h_prev = tl.load(rows_of(hs_ptr, prev, offs_b, B, R) + offs_j[None, :], mask=prev_mask, other=0.0)
        if CELL == 2:
            a = _pre_activation(acc, x_row, 0, H, mask, BB, GAP, BH, ACC)
            if RELU:
                h = tl.maximum(a, 0.0)
            else:
                h = tanh(a)
            if ZO > 0:  # the backward pass needs h before zoneout
                tl.store(g_row, h, mask=mask)
            store_h(
                hs_ptr,
                hin_ptr,
                rmask_ptr,
                new,
                h_prev,
                h,
                act,
                keep_h_ptr,
                t,
                offs_b,
                mb,
                offs_j,
                mask,
                B,
                R,
                ZO,
                DROP,
                ACC,
            )
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
                store_h(
                    hs_ptr,
                    hin_ptr,
                    rmask_ptr,
                    new,
                    h_prev,
                    h,
                    act,
                    keep_h_ptr,
                    t,
                    offs_b,
                    mb,
                    offs_j,
                    mask,
                    B,
                    R,
                    ZO,
                    DROP,
                    ACC,
                )
            else:
                rh = r * dropped(h_prev, rmask_ptr, offs_b, mb, offs_j, R, DROP).to(ACC)
                tl.store(rows_of(aux_ptr, t, offs_b, B, H) + offs_j[None, :], rh.to(h_prev.dtype), mask=mask)


@triton.jit
def _fwd_phase_b(
    t,
    prev,
    new,
    b0,
    s0,
    xw_ptr,
    len_ptr,
    restart_ptr,
    u_ptr,
    whr_ptr,
    hs_ptr,
    gates_ptr,
    aux_ptr,
    w_tile,
    hat_ptr,
    rstd_ptr,
    part_ptr,
    gln_ptr,
    keep_h_ptr,
    rmask_ptr,
    hin_ptr,
    eps,
    B,
    H,
    R,
    CELL: tl.constexpr,
    G: tl.constexpr,
    GS: tl.constexpr,
    LN: tl.constexpr,
    NS: tl.constexpr,
    PP: tl.constexpr,
    ZO: tl.constexpr,
    DROP: tl.constexpr,
    RESTART: tl.constexpr,
    RESIDENT: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KB: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """LSTM: h_r[S] = h_pre @ W_hr[S]^T. GRU (reset before): n = tanh(x_n + (r h) @ U_n[S]^T), h_t
    (with LN the product's normalised form, from phase SB). The new h is zoned out (against zero
    on the rows restarted at t)."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    offs_j = s0 + tl.arange(0, BH)
    if CELL == 0:
        mask = mb[:, None] & (offs_j < R)[None, :]
    else:
        mask = mb[:, None] & (offs_j < H)[None, :]
    if LN and CELL == 1:
        hat_row = rows_of(hat_ptr, t, offs_b, B, G * H) + offs_j[None, :]
        xhat = normalize_block(
            hat_row, rstd_rows(rstd_ptr, t, offs_b, B, NS), 2, mask, mb, offs_b, B, H, eps, part_ptr, NS, BH, PP
        )
        acc = xhat * tl.load(gln_ptr + 2 * H + offs_j, mask=offs_j < H, other=0.0).to(ACC)[None, :]
    else:
        acc = fwd_product_b(
            aux_ptr, t, offs_b, mb, u_ptr, whr_ptr, w_tile, s0, B, H, R, CELL, RESIDENT, STAGES, BB, BH, KB, ACC, PREC
        )
    act = (t < tl.load(len_ptr + offs_b, mask=mb, other=0))[:, None]
    prev_mask = carried_mask(mask, carried_rows(restart_ptr, t, offs_b, mb, B, RESTART), RESTART)
    h_prev = tl.load(rows_of(hs_ptr, prev, offs_b, B, R) + offs_j[None, :], mask=prev_mask, other=0.0)
    h = acc
    if CELL == 1:
        g_row = rows_of(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :]
        x_n = tl.load(rows_of(xw_ptr, t, offs_b, B, G * H) + 2 * H + offs_j[None, :], mask=mask, other=0.0)
        n = tanh(x_n.to(ACC) + acc)
        tl.store(g_row + 2 * H, n, mask=mask)
        z = tl.load(g_row + H, mask=mask, other=0.0)
        h = (1.0 - z) * n + z * h_prev.to(ACC)
    store_h(
        hs_ptr, hin_ptr, rmask_ptr, new, h_prev, h, act, keep_h_ptr, t, offs_b, mb, offs_j, mask, B, R, ZO, DROP, ACC
    )


@triton.jit
def _fwd_stats(
    t,
    prev,
    b0,
    s0,
    restart_ptr,
    hs_ptr,
    aux_ptr,
    u_ptr,
    whr_ptr,
    u_tile,
    w_tile,
    hat_ptr,
    part_ptr,
    hin_ptr,
    B,
    H,
    R,
    SIDE_B: tl.constexpr,
    G: tl.constexpr,
    GA: tl.constexpr,
    NS: tl.constexpr,
    DROP: tl.constexpr,
    RESTART: tl.constexpr,
    RESIDENT: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KA: tl.constexpr,
    KB: tl.constexpr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """LN phase SA (``SIDE_B`` False): h_{t-1} @ U[S]^T for gate blocks 0 .. GA-1; phase SB (the GRU
    with the reset before): (r h) @ U_n[S]^T for block 2. Saves the raw products to ``hat`` and
    this program's partial moments of each block. h_{t-1} is zero on the rows restarted at t (and
    so is r h, which phase A formed from it)."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    offs_j = s0 + tl.arange(0, BH)
    mask = mb[:, None] & (offs_j < H)[None, :]
    hat_row = rows_of(hat_ptr, t, offs_b, B, G * H) + offs_j[None, :]
    if SIDE_B:
        v = fwd_product_b(
            aux_ptr, t, offs_b, mb, u_ptr, whr_ptr, w_tile, s0, B, H, R, 1, RESIDENT, STAGES, BB, BH, KB, ACC, PREC
        )
        tl.store(hat_row + 2 * H, v, mask=mask)
        store_moments(v, mask, mb, part_ptr, 2, offs_b, s0, B, H, NS, BH)
    else:
        acc = fwd_product_a(
            product_input(hs_ptr, hin_ptr, prev, B, R, DROP),
            offs_b,
            carried_rows(restart_ptr, t, offs_b, mb, B, RESTART),
            u_ptr,
            u_tile,
            s0,
            B,
            H,
            R,
            GA,
            RESIDENT,
            STAGES,
            BB,
            BH,
            KA,
            GAP,
            ACC,
            PREC,
        )
        for g in tl.static_range(GA):
            v = pick_gate(acc, g, BB, GAP, BH)
            tl.store(hat_row + g * H, v, mask=mask)
            store_moments(v, mask, mb, part_ptr, g, offs_b, s0, B, H, NS, BH)


@triton.jit
def _fwd_phase_c(
    t,
    prev,
    new,
    b0,
    s0,
    len_ptr,
    restart_ptr,
    hs_ptr,
    cs_ptr,
    gates_ptr,
    aux_ptr,
    hatc_ptr,
    rstd_ptr,
    part_ptr,
    cw_ptr,
    cb_ptr,
    keep_h_ptr,
    keep_c_ptr,
    rmask_ptr,
    hin_ptr,
    eps,
    B,
    H,
    R,
    G: tl.constexpr,
    GS: tl.constexpr,
    IDX_O: tl.constexpr,
    O_ACT: tl.constexpr,
    PROJ: tl.constexpr,
    NS: tl.constexpr,
    ZO: tl.constexpr,
    DROP: tl.constexpr,
    RESTART: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    PP: tl.constexpr,
    ACC: tl.constexpr,
):
    """LN LSTM phase C: h_t = o ⊙ tanh(γ_c ĉ_t + β_c), ĉ_t the normalised cell (from phase A's
    partials); then c_t (and h_t without projection) zoned out (against zero on restarted rows)."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    offs_j = s0 + tl.arange(0, BH)
    mj = offs_j < H
    mask = mb[:, None] & mj[None, :]
    prev_mask = carried_mask(mask, carried_rows(restart_ptr, t, offs_b, mb, B, RESTART), RESTART)
    act = (t < tl.load(len_ptr + offs_b, mask=mb, other=0))[:, None]
    c_row = rows_of(cs_ptr, new, offs_b, B, H) + offs_j[None, :]
    xc = normalize(
        c_row,
        rows_of(hatc_ptr, t, offs_b, B, H) + offs_j[None, :],
        rstd_rows(rstd_ptr, t, offs_b, B, NS),
        G,
        mask,
        mb,
        offs_b,
        B,
        H,
        eps,
        part_ptr,
        NS,
        BH,
        PP,
    )
    chat = (
        tl.load(cw_ptr + offs_j, mask=mj, other=0.0).to(xc.dtype)[None, :] * xc
        + tl.load(cb_ptr + offs_j, mask=mj, other=0.0).to(xc.dtype)[None, :]
    )
    o = _lstm_gate(
        rows_of(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :], IDX_O, tl.full(xc.shape, 1.0, xc.dtype), mask, H
    )
    if O_ACT:
        h = o * tanh(chat)
    else:
        h = o * chat
    if ZO > 0:
        c_prev = tl.load(rows_of(cs_ptr, prev, offs_b, B, H) + offs_j[None, :], mask=prev_mask, other=0.0)
        c_new = tl.load(c_row, mask=mask, other=0.0)
        tl.debug_barrier()  # every thread has read c_t (here and in normalize) before it is overwritten
        zoned_store(c_row, c_prev, c_new, act, keep_c_ptr, t, offs_b, offs_j, mask, B, H, ZO, ACC)
    _lstm_store_h(
        h,
        t,
        prev,
        new,
        act,
        offs_b,
        mb,
        offs_j,
        mask,
        prev_mask,
        hs_ptr,
        aux_ptr,
        hin_ptr,
        rmask_ptr,
        keep_h_ptr,
        B,
        H,
        R,
        PROJ,
        ZO,
        DROP,
        ACC,
    )


@triton.jit
def recurrence_fwd_kernel(
    xw_ptr,  # (T, B, G*H) input projections W_ih x_t + folded biases (and layer-norm shifts)
    len_ptr,  # (B,) int32 sequence lengths
    restart_ptr,  # (T, B) uint8: the state restarts from zero before step t where nonzero (RESTART)
    u_ptr,  # (G*H, R) weight_hh
    whr_ptr,  # (R, H) weight_hr (PROJ)
    peep_ptr,  # (3H,) weight_ch (PEEP)
    gg_ptr,  # (4H, 4H) weight_gg padded (FGR, see fgr_product)
    bn_ptr,  # (H,) bias_hh (+ ln_bias_hh) of the GRU's n rows (HAS_BN)
    hs_ptr,  # (T+1, B, R) carried h, initial state already at its index
    cs_ptr,  # (T+1, B, H) LSTM cell, initial state already at its index
    gates_ptr,  # (T, B, GS*H) saved activations
    aux_ptr,  # (T, B, H) h before projection (PROJ) or r * h_{t-1} (GRU, reset before)
    hat_ptr,  # (T, B, G*H) LN: normalised recurrent products x̂
    hatc_ptr,  # (T, B, H) LN LSTM: normalised cell ĉ
    rstd_ptr,  # (T, B, NS) LN: 1 / sqrt(var + eps) per gate block, slot G the cell's
    gln_ptr,  # (G*H,) LN gain of the recurrent products (ln_weight_hh)
    cw_ptr,  # (H,) LN gain of the cell (ln_weight_c)
    cb_ptr,  # (H,) LN shift of the cell (ln_bias_c)
    keep_h_ptr,  # zoneout of h: (T, B, R) sampled keep mask (ZO == 1) or (1,) its expectation p (ZO == 2)
    keep_c_ptr,  # zoneout of the LSTM cell: (T, B, H) mask or (1,) p, as keep_h_ptr
    rmask_ptr,  # (B, R) recurrent dropout mask, scaled (DROP)
    hin_ptr,  # (2, B, R) DROP: h ⊙ m, what the recurrent product reads, slot (hs index) % 2
    part_ptr,  # (P, B, NS, 2) LN scratch: each program's partial moments
    bar_ptr,  # (1,) int32 zeroed barrier counter (PHASE == 0)
    T,
    B,
    H,
    R,
    eps,  # layer-norm epsilon
    s_first,  # first processing step of this launch
    n_steps,  # steps in this launch
    CELL: tl.constexpr,  # 0 LSTM, 1 GRU, 2 RNN
    G: tl.constexpr,  # gates with weights (row blocks of weight_ih / weight_hh)
    GA: tl.constexpr,  # gate blocks in phase A's matmul
    GS: tl.constexpr,  # saved activation blocks
    IDX_I: tl.constexpr,
    IDX_F: tl.constexpr,
    IDX_G: tl.constexpr,
    IDX_O: tl.constexpr,  # LSTM row blocks, -1 absent
    CIFG: tl.constexpr,
    PEEP: tl.constexpr,
    G_ACT: tl.constexpr,
    O_ACT: tl.constexpr,  # LSTM variant switches
    PROJ: tl.constexpr,
    RESET_AFTER: tl.constexpr,
    HAS_BN: tl.constexpr,
    RELU: tl.constexpr,
    TWO_PHASE: tl.constexpr,  # PROJ or GRU with the reset before the matmul
    LN: tl.constexpr,  # layer norm (see kernels/layer_norm.py)
    NS: tl.constexpr,  # LN statistics slots: G + 1
    PP: tl.constexpr,  # programs whose LN partials are merged at once (a power of two)
    ZO: tl.constexpr,  # zoneout: 0 none, 1 sampled masks, 2 expectation (kernels/noise.py)
    DROP: tl.constexpr,  # recurrent dropout mask on h_{t-1} in the recurrent product
    FGR: tl.constexpr,  # LSTM fgr: the previous step's gates times weight_gg (fgr_product)
    RESTART: tl.constexpr,  # restarts inside the sequence (kernels/restart.py)
    PH_SA: tl.constexpr,
    PH_A: tl.constexpr,
    PH_SB: tl.constexpr,
    PH_C: tl.constexpr,
    PH_B: tl.constexpr,
    # ^ each phase's place in the step, 1-based, 0 absent (module doc)
    PH_UA: tl.constexpr,  # the phase that multiplies by phase A's weight slice
    PH_WB: tl.constexpr,  # the phase that multiplies by phase B's weight slice
    NPH: tl.constexpr,  # phases per step
    REVERSE: tl.constexpr,  # walk t = T-1 .. 0
    PHASE: tl.constexpr,  # 0 persistent with barriers, k > 0 only the k-th phase of step s_first
    RESIDENT: tl.constexpr,  # weight slices loaded once (on chip), else streamed per step in chunks
    STAGES: tl.constexpr,  # software-pipeline depth of the streamed chunk loops (1: none)
    BB: tl.constexpr,  # batch rows per block
    BH: tl.constexpr,  # units per program
    KA: tl.constexpr,  # phase A's chunk of h_{t-1} (>= R when RESIDENT)
    KB: tl.constexpr,  # phase B's chunk of h_pre / r * h (>= H when RESIDENT)
    KG: tl.constexpr,  # FGR: the gate recurrence's chunk of the previous gates (always streamed)
    GAP: tl.constexpr,  # GA rounded up to a power of two
    ACC: tl.constexpr,  # accumulation / pointwise dtype
    PREC: tl.constexpr,  # tl.dot input precision ("ieee" or "tf32")
):
    s0 = tl.program_id(0) * BH
    u_tile = 0
    w_tile = 0
    if RESIDENT and (PHASE == 0 or PHASE == PH_UA):
        u_tile = _fwd_a_weights(u_ptr, 0, s0, H, R, GA, BH, GAP, KA)  # (KA, GAP*BH)
    if RESIDENT and TWO_PHASE and (PHASE == 0 or PHASE == PH_WB):
        w_tile = _fwd_b_weights(u_ptr, whr_ptr, 0, s0, H, R, CELL, BH, KB)  # (KB, BH)
    for k in range(n_steps):
        t, prev, new = _times(s_first + k, T, REVERSE)
        if PH_SA > 0 and (PHASE == 0 or PHASE == PH_SA):
            for b0 in range(0, B, BB):
                _fwd_stats(
                    t,
                    prev,
                    b0,
                    s0,
                    restart_ptr,
                    hs_ptr,
                    aux_ptr,
                    u_ptr,
                    whr_ptr,
                    u_tile,
                    w_tile,
                    hat_ptr,
                    part_ptr,
                    hin_ptr,
                    B,
                    H,
                    R,
                    False,
                    G,
                    GA,
                    NS,
                    DROP,
                    RESTART,
                    RESIDENT,
                    STAGES,
                    BB,
                    BH,
                    KA,
                    KB,
                    GAP,
                    ACC,
                    PREC,
                )
            if PHASE == 0:
                grid_sync(bar_ptr, k * NPH + PH_SA)
        if PHASE == 0 or PHASE == PH_A:
            for b0 in range(0, B, BB):
                _fwd_phase_a(
                    t,
                    prev,
                    new,
                    b0,
                    s0,
                    xw_ptr,
                    len_ptr,
                    restart_ptr,
                    u_ptr,
                    bn_ptr,
                    peep_ptr,
                    gg_ptr,
                    hs_ptr,
                    cs_ptr,
                    gates_ptr,
                    aux_ptr,
                    u_tile,
                    hat_ptr,
                    rstd_ptr,
                    part_ptr,
                    gln_ptr,
                    keep_h_ptr,
                    keep_c_ptr,
                    rmask_ptr,
                    hin_ptr,
                    eps,
                    B,
                    H,
                    R,
                    CELL,
                    G,
                    GA,
                    GS,
                    IDX_I,
                    IDX_F,
                    IDX_G,
                    IDX_O,
                    CIFG,
                    PEEP,
                    G_ACT,
                    O_ACT,
                    PROJ,
                    RESET_AFTER,
                    HAS_BN,
                    RELU,
                    LN,
                    NS,
                    PP,
                    ZO,
                    DROP,
                    FGR,
                    RESTART,
                    REVERSE,
                    RESIDENT,
                    STAGES,
                    BB,
                    BH,
                    KA,
                    KG,
                    GAP,
                    ACC,
                    PREC,
                )
            if PHASE == 0:
                grid_sync(bar_ptr, k * NPH + PH_A)
        if PH_SB > 0 and (PHASE == 0 or PHASE == PH_SB):
            for b0 in range(0, B, BB):
                _fwd_stats(
                    t,
                    prev,
                    b0,
                    s0,
                    restart_ptr,
                    hs_ptr,
                    aux_ptr,
                    u_ptr,
                    whr_ptr,
                    u_tile,
                    w_tile,
                    hat_ptr,
                    part_ptr,
                    hin_ptr,
                    B,
                    H,
                    R,
                    True,
                    G,
                    GA,
                    NS,
                    DROP,
                    RESTART,
                    RESIDENT,
                    STAGES,
                    BB,
                    BH,
                    KA,
                    KB,
                    GAP,
                    ACC,
                    PREC,
                )
            if PHASE == 0:
                grid_sync(bar_ptr, k * NPH + PH_SB)
        if PH_C > 0 and (PHASE == 0 or PHASE == PH_C):
            for b0 in range(0, B, BB):
                _fwd_phase_c(
                    t,
                    prev,
                    new,
                    b0,
                    s0,
                    len_ptr,
                    restart_ptr,
                    hs_ptr,
                    cs_ptr,
                    gates_ptr,
                    aux_ptr,
                    hatc_ptr,
                    rstd_ptr,
                    part_ptr,
                    cw_ptr,
                    cb_ptr,
                    keep_h_ptr,
                    keep_c_ptr,
                    rmask_ptr,
                    hin_ptr,
                    eps,
                    B,
                    H,
                    R,
                    G,
                    GS,
                    IDX_O,
                    O_ACT,
                    PROJ,
                    NS,
                    ZO,
                    DROP,
                    RESTART,
                    BB,
                    BH,
                    PP,
                    ACC,
                )
            if PHASE == 0:
                grid_sync(bar_ptr, k * NPH + PH_C)
        if PH_B > 0 and (PHASE == 0 or PHASE == PH_B):
            for b0 in range(0, B, BB):
                _fwd_phase_b(
                    t,
                    prev,
                    new,
                    b0,
                    s0,
                    xw_ptr,
                    len_ptr,
                    restart_ptr,
                    u_ptr,
                    whr_ptr,
                    hs_ptr,
                    gates_ptr,
                    aux_ptr,
                    w_tile,
                    hat_ptr,
                    rstd_ptr,
                    part_ptr,
                    gln_ptr,
                    keep_h_ptr,
                    rmask_ptr,
                    hin_ptr,
                    eps,
                    B,
                    H,
                    R,
                    CELL,
                    G,
                    GS,
                    LN,
                    NS,
                    PP,
                    ZO,
                    DROP,
                    RESTART,
                    RESIDENT,
                    STAGES,
                    BB,
                    BH,
                    KB,
                    ACC,
                    PREC,
                )
            if PHASE == 0:
                grid_sync(bar_ptr, k * NPH + PH_B)


# ----- backward -----------------------------------------------------------------------------------


@triton.jit
def _bwd_restarts(restart_ptr, t, t_next, offs_b, mb, mask, B, RESTART: tl.constexpr):
    """A backward step's rows by restart (:mod:`.restart`): (those not restarted at t, which carry a
    gradient to the states before it; the load mask of those states; those not restarted at
    t_next, which gather the next step's gradients)."""
    keep = carried_rows(restart_ptr, t, offs_b, mb, B, RESTART)
    return keep, carried_mask(mask, keep, RESTART), carried_rows(restart_ptr, t_next, offs_b, mb, B, RESTART)


@triton.jit
def _lstm_bwd_out(gh, cell, o, dgo, act, d_row, mask, H, IDX_O: tl.constexpr, O_ACT: tl.constexpr, FGR: tl.constexpr):
    """Through h = o ⊙ tanh(cell) (``noaf``: o ⊙ cell), cell = c_t or its layer norm: stores the
    output gate's pre-activation gradient (with ``FGR`` also through ``dgo``, dL/do_t from the next
    step's gate recurrence) and returns (dL/dcell from h, da_o)."""
    if O_ACT:
        tc = tanh(cell)
        dcell = gh * o * (1.0 - tc * tc)
    else:
        tc = cell
        dcell = gh * o
    da_o = tl.zeros(gh.shape, gh.dtype)
    if IDX_O >= 0:
        do = gh * tc
        if FGR:
            do += dgo
        da_o = do * o * (1.0 - o)
        tl.store(d_row + IDX_O * H, tl.where(act, da_o, tl.zeros(gh.shape, gh.dtype)), mask=mask)
    return dcell, da_o


@triton.jit
def _lstm_saved_ifg(g_row, mask, H, IDX_I: tl.constexpr, IDX_F: tl.constexpr, IDX_G: tl.constexpr, CIFG: tl.constexpr):
    """The step's i, f, g (BB, BH) from the saved activations (1 for an absent gate, i = 1 - f for cifg)."""
    g = tl.load(g_row + IDX_G * H, mask=mask, other=0.0)
    one = tl.full(g.shape, 1.0, g.dtype)
    f = _lstm_gate(g_row, IDX_F, one, mask, H)
    if CIFG:
        i = 1.0 - f
    else:
        i = _lstm_gate(g_row, IDX_I, one, mask, H)
    return i, f, g


@triton.jit
def _lstm_bwd_cell(
    dcell,
    gc_in,
    kc,
    da_o,
    dgi,
    dgf,
    t,
    prev,
    offs_b,
    offs_j,
    mask,
    act,
    keep,
    prev_mask,
    cs_ptr,
    gates_ptr,
    d_ptr,
    carry_c_ptr,
    peep_ptr,
    B,
    H,
    G: tl.constexpr,
    GS: tl.constexpr,
    IDX_I: tl.constexpr,
    IDX_F: tl.constexpr,
    IDX_G: tl.constexpr,
    CIFG: tl.constexpr,
    PEEP: tl.constexpr,
    G_ACT: tl.constexpr,
    ZO: tl.constexpr,
    FGR: tl.constexpr,
    RESTART: tl.constexpr,
):
    """From dL/dc_t before zoneout (the carried ``gc_in``'s fresh part under the keep ``kc``, plus
    ``dcell`` from the output side and the output peephole's da_o p_o) to the i, f, g
    pre-activation gradients (with ``FGR`` i and f also through ``dgi``, ``dgf``, their gradients
    from the next step's gate recurrence); carries dL/dc_{t-1} (its kept part added; ``gc_in``
    passes unchanged through an inactive step; zero on the rows not in ``keep``, restarted at t,
    whose c_{t-1}, read with ``prev_mask``, was zero)."""
    mj = offs_j < H
    gc, gc_kept = zone_grads(gc_in, kc, ZO)
    gc += dcell
    if PEEP:
        gc += da_o * tl.load(peep_ptr + 2 * H + offs_j, mask=mj, other=0.0)[None, :]
    g_row = rows_of(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :]
    d_row = rows_of(d_ptr, t, offs_b, B, G * H) + offs_j[None, :]
    c_prev = tl.load(rows_of(cs_ptr, prev, offs_b, B, H) + offs_j[None, :], mask=prev_mask, other=0.0)
    i, f, g = _lstm_saved_ifg(g_row, mask, H, IDX_I, IDX_F, IDX_G, CIFG)
    zero = tl.zeros(g.shape, g.dtype)
    di = gc * g
    df = gc * c_prev
    if FGR:
        di += dgi
        df += dgf
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
    gc_prev = carried_only(gc_prev + gc_kept, keep, RESTART)
    tl.store(carry_c_ptr + offs_b[:, None] * H + offs_j[None, :], tl.where(act, gc_prev, gc_in), mask=mask)


@triton.jit
def _lstm_bwd(
    gh,
    dgi,
    dgf,
    dgo,
    t,
    prev,
    new,
    offs_b,
    offs_j,
    mask,
    act,
    keep,
    prev_mask,
    cs_ptr,
    gates_ptr,
    d_ptr,
    carry_c_ptr,
    peep_ptr,
    keep_c_ptr,
    B,
    H,
    G: tl.constexpr,
    GS: tl.constexpr,
    IDX_I: tl.constexpr,
    IDX_F: tl.constexpr,
    IDX_G: tl.constexpr,
    IDX_O: tl.constexpr,
    CIFG: tl.constexpr,
    PEEP: tl.constexpr,
    G_ACT: tl.constexpr,
    O_ACT: tl.constexpr,
    ZO: tl.constexpr,
    FGR: tl.constexpr,
    RESTART: tl.constexpr,
    ACC: tl.constexpr,
):
    """From dL/dh_t (before projection and zoneout) to the gate pre-activation gradients; carries
    dL/dc. With ``FGR``, dgi, dgf, dgo are dL/d(i_t, f_t, o_t) from the next step's gate recurrence."""
    g_row = rows_of(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :]
    d_row = rows_of(d_ptr, t, offs_b, B, G * H) + offs_j[None, :]
    gc_in = tl.load(carry_c_ptr + offs_b[:, None] * H + offs_j[None, :], mask=mask, other=0.0)
    if ZO > 0:  # the carried c_t is zoned out: the cell's own f c_{t-1} + i g, as the forward computed it
        c_prev = tl.load(rows_of(cs_ptr, prev, offs_b, B, H) + offs_j[None, :], mask=prev_mask, other=0.0)
        i, f, g = _lstm_saved_ifg(g_row, mask, H, IDX_I, IDX_F, IDX_G, CIFG)
        c = f * c_prev + i * g
    else:
        c = tl.load(rows_of(cs_ptr, new, offs_b, B, H) + offs_j[None, :], mask=mask, other=0.0)
    o = _lstm_gate(g_row, IDX_O, tl.full(c.shape, 1.0, c.dtype), mask, H)
    dcell, da_o = _lstm_bwd_out(gh, c, o, dgo, act, d_row, mask, H, IDX_O, O_ACT, FGR)
    kc = zone_keep(keep_c_ptr, t, offs_b, offs_j, mask, B, H, ZO, ACC)
    _lstm_bwd_cell(
        dcell,
        gc_in,
        kc,
        da_o,
        dgi,
        dgf,
        t,
        prev,
        offs_b,
        offs_j,
        mask,
        act,
        keep,
        prev_mask,
        cs_ptr,
        gates_ptr,
        d_ptr,
        carry_c_ptr,
        peep_ptr,
        B,
        H,
        G,
        GS,
        IDX_I,
        IDX_F,
        IDX_G,
        CIFG,
        PEEP,
        G_ACT,
        ZO,
        FGR,
        RESTART,
    )


@triton.jit
def _lstm_bwd_out_ln(
    gh,
    dgo,
    t,
    offs_b,
    mb,
    offs_j,
    mask,
    act,
    gates_ptr,
    d_ptr,
    hatc_ptr,
    cw_ptr,
    cb_ptr,
    dchat_ptr,
    part_ptr,
    B,
    H,
    G: tl.constexpr,
    GS: tl.constexpr,
    NS: tl.constexpr,
    IDX_O: tl.constexpr,
    O_ACT: tl.constexpr,
    FGR: tl.constexpr,
):
    """LN LSTM, first half of a step's backward: through h = o ⊙ tanh(γ_c ĉ + β_c) to dL/d(γ_c ĉ)
    (saved to ``dchat``) and this program's sums for the cell's layer-norm backward (``dgo`` as in
    :func:`_lstm_bwd`)."""
    mj = offs_j < H
    xc, cw = block_xhat_gain(hatc_ptr, cw_ptr, t, 0, H, offs_b, B, offs_j, mj, mask)
    cell = cw * xc + tl.load(cb_ptr + offs_j, mask=mj, other=0.0).to(xc.dtype)[None, :]
    g_row = rows_of(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :]
    o = _lstm_gate(g_row, IDX_O, tl.full(xc.shape, 1.0, xc.dtype), mask, H)
    dcell, _ = _lstm_bwd_out(
        gh, cell, o, dgo, act, rows_of(d_ptr, t, offs_b, B, G * H) + offs_j[None, :], mask, H, IDX_O, O_ACT, FGR
    )
    dcell = tl.where(act, dcell, tl.zeros(dcell.shape, dcell.dtype))
    tl.store(rows_of(dchat_ptr, t, offs_b, B, H) + offs_j[None, :], dcell, mask=mask)
    store_grad_sums(dcell, xc, cw, mask, mb, part_ptr, G, offs_b, B, NS)


@triton.jit
def _lstm_bwd_from_h(
    gh,
    t,
    prev,
    new,
    t_next,
    s,
    offs_b,
    mb,
    offs_j,
    mask,
    act,
    keep,
    prev_mask,
    next_rows,
    s0,
    len_ptr,
    cs_ptr,
    gates_ptr,
    d_ptr,
    carry_c_ptr,
    peep_ptr,
    keep_c_ptr,
    gg_ptr,
    dg_ptr,
    hatc_ptr,
    cw_ptr,
    cb_ptr,
    dchat_ptr,
    part_ptr,
    B,
    H,
    G: tl.constexpr,
    GS: tl.constexpr,
    NS: tl.constexpr,
    IDX_I: tl.constexpr,
    IDX_F: tl.constexpr,
    IDX_G: tl.constexpr,
    IDX_O: tl.constexpr,
    CIFG: tl.constexpr,
    PEEP: tl.constexpr,
    G_ACT: tl.constexpr,
    O_ACT: tl.constexpr,
    LN: tl.constexpr,
    ZO: tl.constexpr,
    FGR: tl.constexpr,
    RESTART: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KG: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """The LSTM's backward from dL/dh_t (before projection, the fresh part under zoneout): the whole
    step (:func:`_lstm_bwd`), or with LN its first half (:func:`_lstm_bwd_out_ln`; phase C
    finishes it); with ``FGR`` the gate recurrence's gradients gathered from step t_next (on
    ``next_rows``) and the final gates' (:func:`fgr_gathered`). ``keep``, ``prev_mask``: the rows
    not restarted at t and the load mask of the states before it (:mod:`.restart`)."""
    dgo = fgr_gathered(
        d_ptr,
        gg_ptr,
        dg_ptr,
        len_ptr,
        t_next,
        s,
        3,
        offs_b,
        mb,
        next_rows,
        offs_j,
        mask,
        s0,
        B,
        H,
        FGR,
        STAGES,
        BB,
        BH,
        KG,
        ACC,
        PREC,
    )
    if LN:
        _lstm_bwd_out_ln(
            gh,
            dgo,
            t,
            offs_b,
            mb,
            offs_j,
            mask,
            act,
            gates_ptr,
            d_ptr,
            hatc_ptr,
            cw_ptr,
            cb_ptr,
            dchat_ptr,
            part_ptr,
            B,
            H,
            G,
            GS,
            NS,
            IDX_O,
            O_ACT,
            FGR,
        )
    else:
        dgi = fgr_gathered(
            d_ptr,
            gg_ptr,
            dg_ptr,
            len_ptr,
            t_next,
            s,
            0,
            offs_b,
            mb,
            next_rows,
            offs_j,
            mask,
            s0,
            B,
            H,
            FGR,
            STAGES,
            BB,
            BH,
            KG,
            ACC,
            PREC,
        )
        dgf = fgr_gathered(
            d_ptr,
            gg_ptr,
            dg_ptr,
            len_ptr,
            t_next,
            s,
            1,
            offs_b,
            mb,
            next_rows,
            offs_j,
            mask,
            s0,
            B,
            H,
            FGR,
            STAGES,
            BB,
            BH,
            KG,
            ACC,
            PREC,
        )
        _lstm_bwd(
            gh,
            dgi,
            dgf,
            dgo,
            t,
            prev,
            new,
            offs_b,
            offs_j,
            mask,
            act,
            keep,
            prev_mask,
            cs_ptr,
            gates_ptr,
            d_ptr,
            carry_c_ptr,
            peep_ptr,
            keep_c_ptr,
            B,
            H,
            G,
            GS,
            IDX_I,
            IDX_F,
            IDX_G,
            IDX_O,
            CIFG,
            PEEP,
            G_ACT,
            O_ACT,
            ZO,
            FGR,
            RESTART,
            ACC,
        )


@triton.jit
def _bwd_phase_c(
    t,
    prev,
    t_next,
    s,
    b0,
    s0,
    len_ptr,
    restart_ptr,
    cs_ptr,
    gates_ptr,
    d_ptr,
    carry_c_ptr,
    peep_ptr,
    gg_ptr,
    dg_ptr,
    hat_ptr,
    hatc_ptr,
    rstd_ptr,
    part_ptr,
    gln_ptr,
    cw_ptr,
    dchat_ptr,
    keep_c_ptr,
    B,
    H,
    G: tl.constexpr,
    GS: tl.constexpr,
    NS: tl.constexpr,
    IDX_I: tl.constexpr,
    IDX_F: tl.constexpr,
    IDX_G: tl.constexpr,
    IDX_O: tl.constexpr,
    CIFG: tl.constexpr,
    PEEP: tl.constexpr,
    G_ACT: tl.constexpr,
    ZO: tl.constexpr,
    FGR: tl.constexpr,
    RESTART: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KG: tl.constexpr,
    PP: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """LN LSTM, second half: dL/dc_t = the carry's part through zoneout + the cell layer norm's
    backward (with every program's sums) + the output peephole; the gate gradients (with ``FGR``
    i and f also through the next step's gate recurrence and the final gates'); this program's
    sums for each gate block's layer-norm backward (finished in phase D)."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    offs_j = s0 + tl.arange(0, BH)
    mj = offs_j < H
    mask = mb[:, None] & mj[None, :]
    act = (t < tl.load(len_ptr + offs_b, mask=mb, other=0))[:, None]
    keep, prev_mask, next_rows = _bwd_restarts(restart_ptr, t, t_next, offs_b, mb, mask, B, RESTART)
    dcell = tl.load(rows_of(dchat_ptr, t, offs_b, B, H) + offs_j[None, :], mask=mask, other=0.0)
    xc, cw = block_xhat_gain(hatc_ptr, cw_ptr, t, 0, H, offs_b, B, offs_j, mj, mask)
    rstd = tl.load(rstd_rows(rstd_ptr, t, offs_b, B, NS) + G, mask=mb, other=0.0)
    gc_in = tl.load(carry_c_ptr + offs_b[:, None] * H + offs_j[None, :], mask=mask, other=0.0)
    dnorm = normalized_grad(dcell, xc, cw, rstd, part_ptr, G, offs_b, mb, B, H, NS, BH, PP)
    d_row = rows_of(d_ptr, t, offs_b, B, G * H) + offs_j[None, :]
    da_o = tl.zeros(dnorm.shape, dnorm.dtype)
    if PEEP:  # the output gate's gradient, stored by phase A or B
        da_o = tl.load(d_row + IDX_O * H, mask=mask, other=0.0)
    kc = zone_keep(keep_c_ptr, t, offs_b, offs_j, mask, B, H, ZO, ACC)
    dgi = fgr_gathered(
        d_ptr,
        gg_ptr,
        dg_ptr,
        len_ptr,
        t_next,
        s,
        0,
        offs_b,
        mb,
        next_rows,
        offs_j,
        mask,
        s0,
        B,
        H,
        FGR,
        STAGES,
        BB,
        BH,
        KG,
        ACC,
        PREC,
    )
    dgf = fgr_gathered(
        d_ptr,
        gg_ptr,
        dg_ptr,
        len_ptr,
        t_next,
        s,
        1,
        offs_b,
        mb,
        next_rows,
        offs_j,
        mask,
        s0,
        B,
        H,
        FGR,
        STAGES,
        BB,
        BH,
        KG,
        ACC,
        PREC,
    )
    _lstm_bwd_cell(
        dnorm,
        gc_in,
        kc,
        da_o,
        dgi,
        dgf,
        t,
        prev,
        offs_b,
        offs_j,
        mask,
        act,
        keep,
        prev_mask,
        cs_ptr,
        gates_ptr,
        d_ptr,
        carry_c_ptr,
        peep_ptr,
        B,
        H,
        G,
        GS,
        IDX_I,
        IDX_F,
        IDX_G,
        CIFG,
        PEEP,
        G_ACT,
        ZO,
        FGR,
        RESTART,
    )
    # the gate gradients are read back by other threads of this program
    tl.debug_barrier()
    for g in tl.static_range(G):
        dy = tl.load(d_row + g * H, mask=mask, other=0.0)
        store_block_grad_sums(dy, g, t, offs_b, mb, offs_j, mj, mask, hat_ptr, gln_ptr, part_ptr, B, H, G, NS)


@triton.jit
def _bwd_phase_a(
    t,
    prev,
    new,
    t_next,
    s,
    b0,
    s0,
    len_ptr,
    restart_ptr,
    u_ptr,
    peep_ptr,
    gg_ptr,
    dg_ptr,
    hs_ptr,
    cs_ptr,
    gates_ptr,
    dhs_ptr,
    d_ptr,
    drec_ptr,
    dprod_ptr,
    ghr_ptr,
    carry_h_ptr,
    carry_c_ptr,
    u_tile,
    hat_ptr,
    hatc_ptr,
    part_ptr,
    gln_ptr,
    cw_ptr,
    cb_ptr,
    dchat_ptr,
    keep_h_ptr,
    keep_c_ptr,
    rmask_ptr,
    B,
    H,
    R,
    CELL: tl.constexpr,
    G: tl.constexpr,
    GA: tl.constexpr,
    GS: tl.constexpr,
    IDX_I: tl.constexpr,
    IDX_F: tl.constexpr,
    IDX_G: tl.constexpr,
    IDX_O: tl.constexpr,
    CIFG: tl.constexpr,
    PEEP: tl.constexpr,
    G_ACT: tl.constexpr,
    O_ACT: tl.constexpr,
    PROJ: tl.constexpr,
    RESET_AFTER: tl.constexpr,
    RELU: tl.constexpr,
    LN: tl.constexpr,
    NS: tl.constexpr,
    ZO: tl.constexpr,
    DROP: tl.constexpr,
    FGR: tl.constexpr,
    RESTART: tl.constexpr,
    RESIDENT: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KA: tl.constexpr,
    KG: tl.constexpr,
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """dL/dh_t[S] = carry + dL/dhs + dprod_{t+1} @ U[:, S] (times the dropout mask), split by
    zoneout into the fresh h_t's part and the part kept for h_{t-1}; then the cell's pointwise
    backward (with LN as far as the first exchange of layer-norm sums). The gather leaves out the
    rows restarted at t+1 (their h_t did not enter that step), and what this step carries to
    h_{t-1} is zero on the rows restarted at t."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    offs_j = s0 + tl.arange(0, BH)
    mj = offs_j < H
    mask = mb[:, None] & (offs_j < R)[None, :]
    keep, prev_mask, next_rows = _bwd_restarts(restart_ptr, t, t_next, offs_b, mb, mask, B, RESTART)
    ch_ptr = carry_h_ptr + offs_b[:, None] * R + offs_j[None, :]
    gh = bwd_gathered_dh(
        dprod_ptr,
        dhs_ptr,
        ch_ptr,
        t_next,
        new,
        s,
        offs_b,
        next_rows,
        offs_j,
        mask,
        u_ptr,
        u_tile,
        rmask_ptr,
        s0,
        B,
        H,
        R,
        G,
        GA,
        DROP,
        RESIDENT,
        STAGES,
        BB,
        BH,
        KA,
        GAP,
        ACC,
        PREC,
    )
    act = (t < tl.load(len_ptr + offs_b, mask=mb, other=0))[:, None]
    zero = tl.zeros(gh.shape, ACC)
    # dL/dh_t splits into the fresh h's part gn and the part gk that zoneout kept from h_{t-1}
    gn, gk = zone_grads(gh, zone_keep(keep_h_ptr, t, offs_b, offs_j, mask, B, R, ZO, ACC), ZO)
    if CELL == 0:
        if PROJ:
            tl.store(rows_of(ghr_ptr, t, offs_b, B, R) + offs_j[None, :], tl.where(act, gn, zero), mask=mask)
        else:
            _lstm_bwd_from_h(
                gn,
                t,
                prev,
                new,
                t_next,
                s,
                offs_b,
                mb,
                offs_j,
                mask,
                act,
                keep,
                prev_mask,
                next_rows,
                s0,
                len_ptr,
                cs_ptr,
                gates_ptr,
                d_ptr,
                carry_c_ptr,
                peep_ptr,
                keep_c_ptr,
                gg_ptr,
                dg_ptr,
                hatc_ptr,
                cw_ptr,
                cb_ptr,
                dchat_ptr,
                part_ptr,
                B,
                H,
                G,
                GS,
                NS,
                IDX_I,
                IDX_F,
                IDX_G,
                IDX_O,
                CIFG,
                PEEP,
                G_ACT,
                O_ACT,
                LN,
                ZO,
                FGR,
                RESTART,
                STAGES,
                BB,
                BH,
                KG,
                ACC,
                PREC,
            )
        tl.store(ch_ptr, tl.where(act, carried_only(gk, keep, RESTART), gh), mask=mask)
    elif CELL == 2:
        if ZO > 0:  # h before zoneout, saved by the forward
            h_row = rows_of(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :]
        else:
            h_row = rows_of(hs_ptr, new, offs_b, B, R) + offs_j[None, :]
        h = tl.load(h_row, mask=mask, other=0.0).to(ACC)
        if RELU:
            da = tl.where(h > 0, gn, zero)
        else:
            da = gn * (1.0 - h * h)
        tl.store(rows_of(d_ptr, t, offs_b, B, G * H) + offs_j[None, :], tl.where(act, da, zero), mask=mask)
        tl.store(ch_ptr, tl.where(act, carried_only(gk, keep, RESTART), gh), mask=mask)
    else:
        g_row = rows_of(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :]
        d_row = rows_of(d_ptr, t, offs_b, B, G * H) + offs_j[None, :]
        z = tl.load(g_row + H, mask=mask, other=0.0)
        n = tl.load(g_row + 2 * H, mask=mask, other=0.0)
        h_prev = tl.load(rows_of(hs_ptr, prev, offs_b, B, R) + offs_j[None, :], mask=prev_mask, other=0.0).to(ACC)
        da_n = tl.where(act, gn * (1.0 - z) * (1.0 - n * n), zero)
        da_z = tl.where(act, gn * (h_prev - n) * z * (1.0 - z), zero)
        tl.store(d_row + H, da_z, mask=mask)
        tl.store(d_row + 2 * H, da_n, mask=mask)
        if RESET_AFTER:
            r = tl.load(g_row, mask=mask, other=0.0)
            da_r = da_n * tl.load(g_row + 3 * H, mask=mask, other=0.0) * r * (1.0 - r)
            tl.store(d_row, da_r, mask=mask)
            rec_row = rows_of(drec_ptr, t, offs_b, B, G * H) + offs_j[None, :]
            tl.store(rec_row, da_r, mask=mask)
            tl.store(rec_row + H, da_z, mask=mask)
            tl.store(rec_row + 2 * H, da_n * r, mask=mask)
            if LN:
                store_block_grad_sums(da_r, 0, t, offs_b, mb, offs_j, mj, mask, hat_ptr, gln_ptr, part_ptr, B, H, G, NS)
                store_block_grad_sums(da_z, 1, t, offs_b, mb, offs_j, mj, mask, hat_ptr, gln_ptr, part_ptr, B, H, G, NS)
                store_block_grad_sums(
                    da_n * r, 2, t, offs_b, mb, offs_j, mj, mask, hat_ptr, gln_ptr, part_ptr, B, H, G, NS
                )
        elif LN:
            store_block_grad_sums(da_n, 2, t, offs_b, mb, offs_j, mj, mask, hat_ptr, gln_ptr, part_ptr, B, H, G, NS)
        tl.store(ch_ptr, tl.where(act, carried_only(gk + gn * z, keep, RESTART), gh), mask=mask)


@triton.jit
def _bwd_phase_b(
    t,
    prev,
    new,
    t_next,
    s,
    b0,
    s0,
    len_ptr,
    restart_ptr,
    u_ptr,
    whr_ptr,
    hs_ptr,
    cs_ptr,
    gates_ptr,
    peep_ptr,
    gg_ptr,
    dg_ptr,
    d_ptr,
    dprod_ptr,
    ghr_ptr,
    carry_h_ptr,
    carry_c_ptr,
    w_tile,
    hat_ptr,
    hatc_ptr,
    part_ptr,
    gln_ptr,
    cw_ptr,
    cb_ptr,
    dchat_ptr,
    keep_c_ptr,
    rmask_ptr,
    B,
    H,
    R,
    CELL: tl.constexpr,
    G: tl.constexpr,
    GS: tl.constexpr,
    IDX_I: tl.constexpr,
    IDX_F: tl.constexpr,
    IDX_G: tl.constexpr,
    IDX_O: tl.constexpr,
    CIFG: tl.constexpr,
    PEEP: tl.constexpr,
    G_ACT: tl.constexpr,
    O_ACT: tl.constexpr,
    LN: tl.constexpr,
    NS: tl.constexpr,
    ZO: tl.constexpr,
    DROP: tl.constexpr,
    FGR: tl.constexpr,
    RESTART: tl.constexpr,
    RESIDENT: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KB: tl.constexpr,
    KG: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """LSTM: dh_pre[S] = dh_r @ W_hr[:, S], then the LSTM backward. GRU (reset before):
    d(r h)[S] = dprod_n @ U_n[:, S] (da_n, or with LN the gradient of the product it normalises),
    giving da_r and the r * d(r h) part of dL/dh_{t-1} (h_{t-1} and that part times the dropout mask;
    h_{t-1} zero and nothing carried to it on the rows restarted at t)."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    offs_j = s0 + tl.arange(0, BH)
    mj = offs_j < H
    mask = mb[:, None] & mj[None, :]
    act = (t < tl.load(len_ptr + offs_b, mask=mb, other=0))[:, None]
    keep, prev_mask, next_rows = _bwd_restarts(restart_ptr, t, t_next, offs_b, mb, mask, B, RESTART)
    # the GRU's n block of dprod: the raw product's gradient with LN, else the same buffer as d
    prod = bwd_product_b(
        ghr_ptr,
        dprod_ptr,
        t,
        offs_b,
        mb,
        u_ptr,
        whr_ptr,
        w_tile,
        s0,
        B,
        H,
        R,
        CELL,
        G,
        RESIDENT,
        STAGES,
        BB,
        BH,
        KB,
        ACC,
        PREC,
    )
    if CELL == 0:
        _lstm_bwd_from_h(
            prod,
            t,
            prev,
            new,
            t_next,
            s,
            offs_b,
            mb,
            offs_j,
            mask,
            act,
            keep,
            prev_mask,
            next_rows,
            s0,
            len_ptr,
            cs_ptr,
            gates_ptr,
            d_ptr,
            carry_c_ptr,
            peep_ptr,
            keep_c_ptr,
            gg_ptr,
            dg_ptr,
            hatc_ptr,
            cw_ptr,
            cb_ptr,
            dchat_ptr,
            part_ptr,
            B,
            H,
            G,
            GS,
            NS,
            IDX_I,
            IDX_F,
            IDX_G,
            IDX_O,
            CIFG,
            PEEP,
            G_ACT,
            O_ACT,
            LN,
            ZO,
            FGR,
            RESTART,
            STAGES,
            BB,
            BH,
            KG,
            ACC,
            PREC,
        )
    else:
        drh = prod
        r = tl.load(rows_of(gates_ptr, t, offs_b, B, GS * H) + offs_j[None, :], mask=mask, other=0.0)
        h_prev = tl.load(rows_of(hs_ptr, prev, offs_b, B, R) + offs_j[None, :], mask=prev_mask, other=0.0)
        h_in = dropped(h_prev, rmask_ptr, offs_b, mb, offs_j, R, DROP).to(ACC)  # as it entered r * h
        zero = tl.zeros(drh.shape, ACC)
        d_row = rows_of(d_ptr, t, offs_b, B, G * H) + offs_j[None, :]
        da_r = tl.where(act, h_in * drh * r * (1.0 - r), zero)
        tl.store(d_row, da_r, mask=mask)
        ch_ptr = carry_h_ptr + offs_b[:, None] * R + offs_j[None, :]
        dh_in = carried_only(dropped(r * drh, rmask_ptr, offs_b, mb, offs_j, R, DROP), keep, RESTART)
        tl.store(ch_ptr, tl.load(ch_ptr, mask=mask, other=0.0) + tl.where(act, dh_in, zero), mask=mask)
        if LN:
            da_z = tl.load(d_row + H, mask=mask, other=0.0)
            store_block_grad_sums(da_r, 0, t, offs_b, mb, offs_j, mj, mask, hat_ptr, gln_ptr, part_ptr, B, H, G, NS)
            store_block_grad_sums(da_z, 1, t, offs_b, mb, offs_j, mj, mask, hat_ptr, gln_ptr, part_ptr, B, H, G, NS)


@triton.jit
def recurrence_bwd_kernel(
    len_ptr,  # (B,) int32 sequence lengths
    restart_ptr,  # (T, B) uint8: the forward restarted the state from zero before step t where nonzero (RESTART)
    u_ptr,  # (G*H, R) weight_hh
    whr_ptr,  # (R, H) weight_hr (PROJ)
    peep_ptr,  # (3H,) weight_ch (PEEP)
    gg_ptr,  # (4H, 4H) weight_gg padded (FGR, see fgr_product)
    dg_ptr,  # (B, 4H) FGR: dL/d(the final gates state), in the saved activations' layout
    hs_ptr,  # (T+1, B, R) forward's carried h
    cs_ptr,  # (T+1, B, H) forward's LSTM cells
    gates_ptr,  # (T, B, GS*H) forward's activations
    dhs_ptr,  # (T+1, B, R) dL/dhs from the outputs and the final state
    d_ptr,  # (T, B, G*H) out: dL/d(input-side pre-activations), zero where inactive
    drec_ptr,  # (T, B, G*H) out: dL/d(recurrent terms as added) (== d_ptr unless GRU reset after)
    dprod_ptr,  # (T, B, G*H) out: dL/d(h_{t-1} U^T), what the next step gathers (== drec_ptr without LN)
    ghr_ptr,  # (T, B, R) out: dL/dh_r, the projected h (PROJ)
    dchat_ptr,  # (T, B, H) out, LN LSTM: dL/d(γ_c ĉ_t)
    carry_h_ptr,  # (B, R) zeroed; out: local part of dL/dh_{-1}
    carry_c_ptr,  # (B, H) dL/dc_final; out: dL/dc_{-1}
    hat_ptr,  # (T, B, G*H) LN: forward's normalised recurrent products
    hatc_ptr,  # (T, B, H) LN LSTM: forward's normalised cells
    rstd_ptr,  # (T, B, NS) LN: forward's 1 / sqrt(var + eps)
    gln_ptr,  # (G*H,) LN gain of the recurrent products
    cw_ptr,  # (H,) LN gain of the cell
    cb_ptr,  # (H,) LN shift of the cell
    keep_h_ptr,  # zoneout of h: (T, B, R) sampled keep mask (ZO == 1) or (1,) its expectation p (ZO == 2)
    keep_c_ptr,  # zoneout of the LSTM cell: (T, B, H) mask or (1,) p, as keep_h_ptr
    rmask_ptr,  # (B, R) recurrent dropout mask, scaled (DROP)
    part_ptr,  # (P, B, NS, 2) LN scratch: each program's partial sums
    bar_ptr,  # (1,) int32 zeroed barrier counter (PHASE == 0)
    T,
    B,
    H,
    R,
    eps,  # layer-norm epsilon (unused: the forward's statistics are saved)
    s_first,  # first backward step of this launch (0 = the forward's last step)
    n_steps,  # steps in this launch
    CELL: tl.constexpr,
    G: tl.constexpr,
    GA: tl.constexpr,
    GS: tl.constexpr,
    IDX_I: tl.constexpr,
    IDX_F: tl.constexpr,
    IDX_G: tl.constexpr,
    IDX_O: tl.constexpr,
    CIFG: tl.constexpr,
    PEEP: tl.constexpr,
    G_ACT: tl.constexpr,
    O_ACT: tl.constexpr,
    PROJ: tl.constexpr,
    RESET_AFTER: tl.constexpr,
    RELU: tl.constexpr,
    TWO_PHASE: tl.constexpr,
    LN: tl.constexpr,
    NS: tl.constexpr,
    PP: tl.constexpr,
    ZO: tl.constexpr,
    DROP: tl.constexpr,
    FGR: tl.constexpr,
    RESTART: tl.constexpr,
    PH_A: tl.constexpr,
    PH_DN: tl.constexpr,
    PH_B: tl.constexpr,
    PH_C: tl.constexpr,
    PH_D: tl.constexpr,
    # ^ each phase's place in the step, 1-based, 0 absent (module doc)
    NPH: tl.constexpr,  # phases per step
    REVERSE: tl.constexpr,
    PHASE: tl.constexpr,
    RESIDENT: tl.constexpr,
    STAGES: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    KA: tl.constexpr,  # phase A's chunk of each gate's H units (>= H when RESIDENT)
    KB: tl.constexpr,  # phase B's chunk of dh_r / da_n (>= R when RESIDENT)
    KG: tl.constexpr,  # FGR: the gate recurrence's chunk of each gate's H units (always streamed)
    GAP: tl.constexpr,
    ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    s0 = tl.program_id(0) * BH
    u_tile = 0
    w_tile = 0
    if RESIDENT and (PHASE == 0 or PHASE == PH_A):
        u_tile = _bwd_a_weights(u_ptr, 0, s0, H, R, GA, BH, GAP, KA)  # (GAP*KA, BH)
    if RESIDENT and TWO_PHASE and (PHASE == 0 or PHASE == PH_B):
        w_tile = _bwd_b_weights(u_ptr, whr_ptr, 0, s0, H, R, CELL, BH, KB)  # (KB, BH)
    for k in range(n_steps):
        s = s_first + k
        t, prev, new = _times(T - 1 - s, T, REVERSE)
        t_next = tl.maximum(tl.minimum(t + 1 - 2 * REVERSE, T - 1), 0)
        if PHASE == 0 or PHASE == PH_A:
            for b0 in range(0, B, BB):
                _bwd_phase_a(
                    t,
                    prev,
                    new,
                    t_next,
                    s,
                    b0,
                    s0,
                    len_ptr,
                    restart_ptr,
                    u_ptr,
                    peep_ptr,
                    gg_ptr,
                    dg_ptr,
                    hs_ptr,
                    cs_ptr,
                    gates_ptr,
                    dhs_ptr,
                    d_ptr,
                    drec_ptr,
                    dprod_ptr,
                    ghr_ptr,
                    carry_h_ptr,
                    carry_c_ptr,
                    u_tile,
                    hat_ptr,
                    hatc_ptr,
                    part_ptr,
                    gln_ptr,
                    cw_ptr,
                    cb_ptr,
                    dchat_ptr,
                    keep_h_ptr,
                    keep_c_ptr,
                    rmask_ptr,
                    B,
                    H,
                    R,
                    CELL,
                    G,
                    GA,
                    GS,
                    IDX_I,
                    IDX_F,
                    IDX_G,
                    IDX_O,
                    CIFG,
                    PEEP,
                    G_ACT,
                    O_ACT,
                    PROJ,
                    RESET_AFTER,
                    RELU,
                    LN,
                    NS,
                    ZO,
                    DROP,
                    FGR,
                    RESTART,
                    RESIDENT,
                    STAGES,
                    BB,
                    BH,
                    KA,
                    KG,
                    GAP,
                    ACC,
                    PREC,
                )
            if PHASE == 0:
                grid_sync(bar_ptr, k * NPH + PH_A)
        if PH_DN > 0 and (PHASE == 0 or PHASE == PH_DN):
            for b0 in range(0, B, BB):
                bwd_phase_d(
                    t, b0, s0, drec_ptr, dprod_ptr, hat_ptr, rstd_ptr, gln_ptr, part_ptr, B, H, 2, 3, G, NS, BB, BH, PP
                )
            if PHASE == 0:
                grid_sync(bar_ptr, k * NPH + PH_DN)
        if PH_B > 0 and (PHASE == 0 or PHASE == PH_B):
            for b0 in range(0, B, BB):
                _bwd_phase_b(
                    t,
                    prev,
                    new,
                    t_next,
                    s,
                    b0,
                    s0,
                    len_ptr,
                    restart_ptr,
                    u_ptr,
                    whr_ptr,
                    hs_ptr,
                    cs_ptr,
                    gates_ptr,
                    peep_ptr,
                    gg_ptr,
                    dg_ptr,
                    d_ptr,
                    dprod_ptr,
                    ghr_ptr,
                    carry_h_ptr,
                    carry_c_ptr,
                    w_tile,
                    hat_ptr,
                    hatc_ptr,
                    part_ptr,
                    gln_ptr,
                    cw_ptr,
                    cb_ptr,
                    dchat_ptr,
                    keep_c_ptr,
                    rmask_ptr,
                    B,
                    H,
                    R,
                    CELL,
                    G,
                    GS,
                    IDX_I,
                    IDX_F,
                    IDX_G,
                    IDX_O,
                    CIFG,
                    PEEP,
                    G_ACT,
                    O_ACT,
                    LN,
                    NS,
                    ZO,
                    DROP,
                    FGR,
                    RESTART,
                    RESIDENT,
                    STAGES,
                    BB,
                    BH,
                    KB,
                    KG,
                    ACC,
                    PREC,
                )
            if PHASE == 0:
                grid_sync(bar_ptr, k * NPH + PH_B)
        if PH_C > 0 and (PHASE == 0 or PHASE == PH_C):
            for b0 in range(0, B, BB):
                _bwd_phase_c(
                    t,
                    prev,
                    t_next,
                    s,
                    b0,
                    s0,
                    len_ptr,
                    restart_ptr,
                    cs_ptr,
                    gates_ptr,
                    d_ptr,
                    carry_c_ptr,
                    peep_ptr,
                    gg_ptr,
                    dg_ptr,
                    hat_ptr,
                    hatc_ptr,
                    rstd_ptr,
                    part_ptr,
                    gln_ptr,
                    cw_ptr,
                    dchat_ptr,
                    keep_c_ptr,
                    B,
                    H,
                    G,
                    GS,
                    NS,
                    IDX_I,
                    IDX_F,
                    IDX_G,
                    IDX_O,
                    CIFG,
                    PEEP,
                    G_ACT,
                    ZO,
                    FGR,
                    RESTART,
                    STAGES,
                    BB,
                    BH,
                    KG,
                    PP,
                    ACC,
                    PREC,
                )
            if PHASE == 0:
                grid_sync(bar_ptr, k * NPH + PH_C)
        if PH_D > 0 and (PHASE == 0 or PHASE == PH_D):
            for b0 in range(0, B, BB):
                bwd_phase_d(
                    t, b0, s0, drec_ptr, dprod_ptr, hat_ptr, rstd_ptr, gln_ptr, part_ptr, B, H, 0, GA, G, NS, BB, BH, PP
                )
            if PHASE == 0:
                grid_sync(bar_ptr, k * NPH + PH_D)
