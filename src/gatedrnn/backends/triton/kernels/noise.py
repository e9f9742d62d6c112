"""Zoneout and recurrent dropout inside the recurrence kernels (:class:`gatedrnn.config.Noise`).

Zoneout (Krueger et al. 2016) blends each carried state s (h, and the LSTM's c) after the cell's
step, on active steps only: :math:`s_t = k \\odot s_{t-1} + (1 - k) \\odot \\tilde s_t`, with the
*keep* k chosen by the constexpr ``ZO``:

- ``ZO == 0``: no zoneout, k = 0;
- ``ZO == 1``: a sampled 0/1 mask (T, B, width) (training), applied as a choice, exact;
- ``ZO == 2``: the expectation p (evaluation), one value from a 1-element buffer of the
  accumulation dtype.

Its backward splits the incoming gradient g of :math:`s_t`: :math:`(1 - k) g` goes to the fresh
state :math:`\\tilde s_t` and :math:`k g` passes to :math:`s_{t-1}` unchanged.

Recurrent dropout (Gal & Ghahramani 2016) multiplies one (B, R) mask per sequence (already scaled
by 1 / (1 - p)) into h_{t-1} where it enters the recurrent product, so the gathered gradient of
that product is multiplied by the same mask on its way back to h_{t-1}. The product reads a
whole h_{t-1} (all R columns at once when the weights are resident): masking it there would hold
two (BB, R) tiles in registers, more than a thread holds at large R, so instead each program
stores its slice of h_t ⊙ m beside h_t, into one of two (B, R) slots (``hin``, slot
``index % 2``: the step reading one slot never meets the step writing the other), and the product
reads that.
"""

import triton
import triton.language as tl

from .primitives import rows_of


@triton.jit
def zone_keep(keep_ptr, t, offs_b, offs_j, mask, B, width, ZO: tl.constexpr, ACC: tl.constexpr):
    """The keep k of units ``offs_j`` of batch rows ``offs_b`` at time t: the (BB, BH) slice of the
    sampled mask (``ZO == 1``), the scalar p (``ZO == 2``), or 0 (no zoneout)."""
    if ZO == 1:
        return tl.load(rows_of(keep_ptr, t, offs_b, B, width) + offs_j[None, :], mask=mask, other=0.0).to(ACC)
    elif ZO == 2:
        return tl.load(keep_ptr).to(ACC)
    else:
        return 0.0


@triton.jit
def zone_mix(old, new, k, ZO: tl.constexpr):
    """The carried state after zoneout: ``new`` where nothing is kept, the sampled choice, or
    ``k * old + (1 - k) * new``."""
    if ZO == 1:
        return tl.where(k != 0.0, old, new)
    elif ZO == 2:
        return k * old + (1.0 - k) * new
    else:
        return new


@triton.jit
def zone_grads(g, k, ZO: tl.constexpr):
    """Split the gradient g of a zoned-out state: (part of the fresh state, part of the old one)."""
    if ZO == 1:
        zero = tl.zeros(g.shape, g.dtype)
        kept = k != 0.0
        return tl.where(kept, zero, g), tl.where(kept, g, zero)
    elif ZO == 2:
        return (1.0 - k) * g, k * g
    else:
        return g, tl.zeros(g.shape, g.dtype)


@triton.jit
def dropped(v, mask_ptr, offs_b, mb, offs_j, R, DROP: tl.constexpr):
    """``v`` (BB, BH), units ``offs_j`` of batch rows ``offs_b`` of an h-like (B, R) vector,
    times the same slice of the recurrent dropout mask (``DROP``), in v's dtype (as the
    reference rounds ``h * mask``); else ``v``."""
    if DROP:
        m = tl.load(
            mask_ptr + offs_b[:, None].to(tl.int64) * R + offs_j[None, :],
            mask=mb[:, None] & (offs_j < R)[None, :],
            other=0.0,
        )
        return v * m.to(v.dtype)
    return v


@triton.jit
def zoned_store(ptr, old, new, act, keep_ptr, t, offs_b, offs_j, mask, B, width, ZO: tl.constexpr, ACC: tl.constexpr):
    """Store a carried state (BB, BH) at ``ptr``: on active rows (``act``) the fresh ``new``
    zoned out against ``old``, in old's dtype; on inactive rows ``old`` unchanged. Returns what
    it stored."""
    k = zone_keep(keep_ptr, t, offs_b, offs_j, mask, B, width, ZO, ACC)
    s = zone_mix(old.to(ACC), new, k, ZO)
    stored = tl.where(act, s.to(old.dtype), old)
    tl.store(ptr, stored, mask=mask)
    return stored


@triton.jit
def store_h(
    hs_ptr,
    hin_ptr,
    rmask_ptr,
    new,
    old,
    fresh,
    act,
    keep_ptr,
    t,
    offs_b,
    mb,
    offs_j,
    mask,
    B,
    R,
    ZO: tl.constexpr,
    DROP: tl.constexpr,
    ACC: tl.constexpr,
):
    """Store h_t (BB, BH) at ``hs[new]`` (zoned out, :func:`zoned_store`) and with ``DROP`` its
    masked copy h_t ⊙ m in slot ``new % 2`` of ``hin``, what the next step's product reads."""
    h = zoned_store(
        rows_of(hs_ptr, new, offs_b, B, R) + offs_j[None, :],
        old,
        fresh,
        act,
        keep_ptr,
        t,
        offs_b,
        offs_j,
        mask,
        B,
        R,
        ZO,
        ACC,
    )
    if DROP:
        h_in = dropped(h, rmask_ptr, offs_b, mb, offs_j, R, DROP)
        tl.store(rows_of(hin_ptr, new % 2, offs_b, B, R) + offs_j[None, :], h_in, mask=mask)


@triton.jit
def product_input(hs_ptr, hin_ptr, prev, B, R, DROP: tl.constexpr):
    """The (B, R) h_{t-1} the recurrent product reads: ``hs[prev]``, or with ``DROP`` its masked
    copy in ``hin``."""
    if DROP:
        return hin_ptr + (prev % 2).to(tl.int64) * B * R
    return hs_ptr + prev.to(tl.int64) * B * R
