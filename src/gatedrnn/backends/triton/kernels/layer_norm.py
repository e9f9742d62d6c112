"""Layer norm inside the recurrence: statistics over all H units of a gate block, which the
column split spreads over every program.

With ``layer_norm`` each gate block of the recurrent product ``a = h_{t-1} U^T`` (and the LSTM
cell before its output activation) is normalised over its H units:

.. math::
    \\hat a = (a - \\mu) \\, r, \\quad r = 1 / \\sqrt{\\sigma^2 + \\epsilon}, \\quad
    \\text{recurrent term} = \\gamma \\odot \\hat a

(the shift and the biases are folded into the input projection, as they only add). One program
holds BH of the H units, so a normalisation takes two phases with a grid barrier between them:

1. *partials*: every program writes, per batch row, the mean and the sum of squared deviations
   of its own units (``part`` (P, B, NS, 2), one slot per gate block, slot G for the cell), and
   the raw values to ``hat``;
2. *combine*: every program reads all P partials of its rows, ``PP`` programs at a time, and
   merges them in program order (the mean, then the variance as each program's sum of squared
   deviations plus n_p (mean_p - mean)^2, as in Chan et al.: not a difference of large sums),
   which gives every program the same bitwise statistics; program 0 saves r.

The backward of :math:`y = \\gamma \\hat a` given dy is, with :math:`g = \\gamma \\odot dy`,

.. math::
    da = r \\left(g - \\frac{1}{H}\\sum_j g_j - \\hat a \\frac{1}{H}\\sum_j g_j \\hat a_j\\right)

whose two sums are exchanged the same way (plain per-program sums, added in program order).
No atomics: the result is deterministic.
"""

import triton
import triton.language as tl

from .primitives import gate_index, load_gated_full, rows_of


@triton.jit
def _part_rows(part_ptr, program, offs_b, B, slot, NS: tl.constexpr):
    """Pointers to the (first of two) partials of ``program`` for rows offs_b and a slot (both
    may be tiles that broadcast)."""
    return part_ptr + ((program * B + offs_b) * NS + slot) * 2


@triton.jit
def rstd_rows(rstd_ptr, t, offs_b, B, NS: tl.constexpr):
    """Pointers (BB,) to the saved 1 / sqrt(var + eps) of rows offs_b at time t (add the slot)."""
    return rstd_ptr + (t.to(tl.int64) * B + offs_b) * NS


@triton.jit
def block_xhat_gain(hat_ptr, gain_ptr, t, offset, width, offs_b, B, offs_j, mj, mask):
    """A saved normalised block x̂ (BB, BH) at ``offset`` of a (T, B, width) buffer, and its gain (1, BH)."""
    xhat = tl.load(rows_of(hat_ptr, t, offs_b, B, width) + offset + offs_j[None, :], mask=mask, other=0.0)
    gain = tl.load(gain_ptr + offset + offs_j, mask=mj, other=0.0).to(xhat.dtype)[None, :]
    return xhat, gain


@triton.jit
def store_moments(v, mask, mb, part_ptr, slot, offs_b, s0, B, H, NS: tl.constexpr, BH: tl.constexpr):
    """Phase 1 of a forward normalisation: this program's mean and sum of squared deviations
    of v (BB, BH) over its valid units, per row."""
    n = tl.minimum(H - s0, BH).to(v.dtype)
    mean = tl.sum(tl.where(mask, v, 0.0), axis=1) / n
    dev = tl.where(mask, v - mean[:, None], 0.0)
    ptr = _part_rows(part_ptr, tl.program_id(0), offs_b, B, slot, NS)
    tl.store(ptr, mean, mask=mb)
    tl.store(ptr + 1, tl.sum(dev * dev, axis=1), mask=mb)


@triton.jit
def _load_partials(part_ptr, slot, offs_b, mb, p0, B, H, NS: tl.constexpr, BH: tl.constexpr, PP: tl.constexpr):
    """(BB, PP) tiles of both partials of programs p0 .. p0+PP (zeros past the grid) and (1, PP)
    the number of units each of them holds (0 past the grid)."""
    p = p0 + tl.arange(0, PP)
    mp = p < tl.num_programs(0)
    ptr = _part_rows(part_ptr, p[None, :], offs_b[:, None], B, slot, NS)
    m = mb[:, None] & mp[None, :]
    first = tl.load(ptr, mask=m, other=0.0, cache_modifier=".cg")
    second = tl.load(ptr + 1, mask=m, other=0.0, cache_modifier=".cg")
    units = tl.where(mp, tl.minimum(H - p * BH, BH), 0).to(first.dtype)[None, :]
    return first, second, units


@triton.jit
def combined_rstd_mean(part_ptr, slot, offs_b, mb, B, H, eps, NS: tl.constexpr, BH: tl.constexpr, PP: tl.constexpr):
    """Phase 2: (mean, r) (BB,) over all H units, merging the programs' partials PP programs at a
    time, in program order: first the mean, then the variance as the sum of each program's squared
    deviations plus n_p (mean_p - mean)^2 (exact, not a difference of large sums)."""
    # the first chunk stays loaded for both passes (with a single chunk, the usual case, nothing is read twice)
    mean_0, m2_0, n_0 = _load_partials(part_ptr, slot, offs_b, mb, 0, B, H, NS, BH, PP)
    total = tl.sum(mean_0 * n_0, axis=1)
    for p0 in range(PP, tl.num_programs(0), PP):
        mean_p, _, n_p = _load_partials(part_ptr, slot, offs_b, mb, p0, B, H, NS, BH, PP)
        total += tl.sum(mean_p * n_p, axis=1)
    mean = total / H
    dev = mean_0 - mean[:, None]
    ss = tl.sum(m2_0 + n_0 * dev * dev, axis=1)
    for p0 in range(PP, tl.num_programs(0), PP):
        mean_p, m2_p, n_p = _load_partials(part_ptr, slot, offs_b, mb, p0, B, H, NS, BH, PP)
        dev = mean_p - mean[:, None]
        ss += tl.sum(m2_p + n_p * dev * dev, axis=1)
    return mean, 1.0 / tl.sqrt(ss / H + eps)


@triton.jit
def normalize(
    src,
    dst,
    rstd_row,
    slot,
    mask,
    mb,
    offs_b,
    B,
    H,
    eps,
    part_ptr,
    NS: tl.constexpr,
    BH: tl.constexpr,
    PP: tl.constexpr,
):
    """Phase 2 of a forward normalisation: x̂ (BB, BH) of the values at ``src`` (whose partials
    phase 1 left in ``slot``), stored at ``dst``; program 0 saves r at ``rstd_row + slot``."""
    raw = tl.load(src, mask=mask, other=0.0)
    mean, rstd = combined_rstd_mean(part_ptr, slot, offs_b, mb, B, H, eps, NS, BH, PP)
    xhat = (raw - mean[:, None]) * rstd[:, None]
    tl.store(dst, xhat, mask=mask)
    tl.store(rstd_row + slot, rstd, mask=mb & (offs_b * 0 + tl.program_id(0) == 0))
    return xhat


@triton.jit
def normalize_block(
    hat_row, rstd_row, g, mask, mb, offs_b, B, H, eps, part_ptr, NS: tl.constexpr, BH: tl.constexpr, PP: tl.constexpr
):
    """:func:`normalize` of gate block g in place: its raw product, left in ``hat_row + g*H`` by
    phase 1, is replaced there by x̂."""
    return normalize(hat_row + g * H, hat_row + g * H, rstd_row, g, mask, mb, offs_b, B, H, eps, part_ptr, NS, BH, PP)


@triton.jit
def normalized_products(
    hat_ptr,
    rstd_ptr,
    gln_ptr,
    part_ptr,
    t,
    offs_b,
    mb,
    offs_j,
    mask,
    s0,
    B,
    H,
    eps,
    G: tl.constexpr,
    GA: tl.constexpr,
    NS: tl.constexpr,
    BH: tl.constexpr,
    GAP: tl.constexpr,
    PP: tl.constexpr,
):
    """(BB, GAP*BH) gate-major ``γ ⊙ x̂`` of gate blocks 0 .. GA-1: the layer-normalised
    recurrent terms, laid out like the product they replace (see ``fwd_product_a``)."""
    hat_row = rows_of(hat_ptr, t, offs_b, B, G * H) + offs_j[None, :]
    rstd_row = rstd_rows(rstd_ptr, t, offs_b, B, NS)
    for g in tl.static_range(GA):
        normalize_block(hat_row, rstd_row, g, mask, mb, offs_b, B, H, eps, part_ptr, NS, BH, PP)
    # x̂ is read back in the gate-major layout, by other threads of this program
    tl.debug_barrier()
    xhat = load_gated_full(hat_ptr + t.to(tl.int64) * B * (G * H), G * H, offs_b, mb, GA, H, 0, s0, GAP, BH)
    offs, mg, j = gate_index(GA, H, BH, GAP)
    gain = tl.load(gln_ptr + s0 + offs, mask=mg & (s0 + j < H), other=0.0).to(xhat.dtype)
    return xhat * gain[None, :]


@triton.jit
def store_grad_sums(dy, xhat, gain, mask, mb, part_ptr, slot, offs_b, B, NS: tl.constexpr):
    """Phase 1 of a backward normalisation: this program's sums of g = γ dy and of g ⊙ x̂."""
    g = tl.where(mask, dy * gain, 0.0)
    ptr = _part_rows(part_ptr, tl.program_id(0), offs_b, B, slot, NS)
    tl.store(ptr, tl.sum(g, axis=1), mask=mb)
    tl.store(ptr + 1, tl.sum(g * xhat, axis=1), mask=mb)


@triton.jit
def normalized_grad(
    dy, xhat, gain, rstd, part_ptr, slot, offs_b, mb, B, H, NS: tl.constexpr, BH: tl.constexpr, PP: tl.constexpr
):
    """Phase 2: dL/da (BB, BH) from dy = dL/d(γ x̂), with the sums of every program (added PP
    programs at a time, in program order)."""
    s1_p, s2_p, _ = _load_partials(part_ptr, slot, offs_b, mb, 0, B, H, NS, BH, PP)
    s1 = tl.sum(s1_p, axis=1)
    s2 = tl.sum(s2_p, axis=1)
    for p0 in range(PP, tl.num_programs(0), PP):
        s1_p, s2_p, _ = _load_partials(part_ptr, slot, offs_b, mb, p0, B, H, NS, BH, PP)
        s1 += tl.sum(s1_p, axis=1)
        s2 += tl.sum(s2_p, axis=1)
    return rstd[:, None] * (dy * gain - (s1[:, None] + xhat * s2[:, None]) / H)


@triton.jit
def store_block_grad_sums(
    dy, g, t, offs_b, mb, offs_j, mj, mask, hat_ptr, gln_ptr, part_ptr, B, H, G: tl.constexpr, NS: tl.constexpr
):
    """:func:`store_grad_sums` for gate block g of the recurrent products at time t."""
    xhat, gain = block_xhat_gain(hat_ptr, gln_ptr, t, g * H, G * H, offs_b, B, offs_j, mj, mask)
    store_grad_sums(dy, xhat, gain, mask, mb, part_ptr, g, offs_b, B, NS)


@triton.jit
def bwd_phase_d(
    t,
    b0,
    s0,
    drec_ptr,
    dprod_ptr,
    hat_ptr,
    rstd_ptr,
    gln_ptr,
    part_ptr,
    B,
    H,
    G0: tl.constexpr,
    G1: tl.constexpr,
    G: tl.constexpr,
    NS: tl.constexpr,
    BB: tl.constexpr,
    BH: tl.constexpr,
    PP: tl.constexpr,
):
    """Phase 2 of the gate blocks G0 .. G1-1: from dL/d(γ x̂) (``drec``) to dL/d(h_{t-1} U^T)
    (``dprod``), what the next step gathers and the recurrent weight gradient is made of."""
    offs_b = b0 + tl.arange(0, BB)
    mb = offs_b < B
    offs_j = s0 + tl.arange(0, BH)
    mj = offs_j < H
    mask = mb[:, None] & mj[None, :]
    rstd_row = rstd_rows(rstd_ptr, t, offs_b, B, NS)
    for g in tl.static_range(G0, G1):
        dy = tl.load(rows_of(drec_ptr, t, offs_b, B, G * H) + g * H + offs_j[None, :], mask=mask, other=0.0)
        xhat, gain = block_xhat_gain(hat_ptr, gln_ptr, t, g * H, G * H, offs_b, B, offs_j, mj, mask)
        rstd = tl.load(rstd_row + g, mask=mb, other=0.0)
        da = normalized_grad(dy.to(xhat.dtype), xhat, gain, rstd, part_ptr, g, offs_b, mb, B, H, NS, BH, PP)
        tl.store(rows_of(dprod_ptr, t, offs_b, B, G * H) + g * H + offs_j[None, :], da, mask=mask)
