r"""The linear recurrence :math:`h_t = a_t h_{t-1} + b_t` of the minimal cells
(:class:`gatedrnn.cells.mingru.MinimalFamily`) forward and backward in Triton.

Work split: every one of the B*H units is an independent scalar recurrence. Program p owns the
flat units ``p*BLOCK .. p*BLOCK+BLOCK`` of the (B, H) state and loops over the T steps, carrying
h (forward) or its gradient (backward) in registers in the accumulation dtype. Each coefficient is
read once and each state written once: O(T·B·H) memory traffic, the least any scan can do, and
with B*H in the thousands the programs fill a GPU without the extra passes of a chunked parallel
scan (which would pay only where B*H is too small to).

Forward, with :math:`a_t = e^{\log a_t}` and padded steps (``t >= lengths[b]``) keeping the state:

.. math::
    h_t = a_t h_{t-1} + b_t

Backward, with :math:`g_t` the gradient of the state after step t (the step's output gradient
plus :math:`a_{t+1} g_{t+1}` carried from the step after):

.. math::
    \frac{\partial L}{\partial b_t} = g_t, \quad
    \frac{\partial L}{\partial \log a_t} = g_t\, a_t h_{t-1}, \quad
    g_{t-1} \mathrel{+}= a_t g_t,

zero gradients at padded steps, through which :math:`g` passes unchanged.

With ``RESTART``, a step whose row the (T, B) mask ``restart`` marks starts from h_{t-1} = 0 (a
select, so :math:`h_t = b_t` whatever the state held: the decay :math:`a_t` acts on nothing), and
backward :math:`\partial L / \partial \log a_t = 0` there and nothing is carried to :math:`g_{t-1}`.

Buffers, by real time t: ``hs`` (T+1, B, H) with the state before step t at ``t + REVERSE`` and
after it at ``t + 1 - REVERSE`` (the input's dtype); ``log_a``, ``b`` (T, B, H).
"""

import triton
import triton.language as tl

from .primitives import step_slots
from .restart import carried_rows


@triton.jit
def linear_scan_fwd_kernel(
    log_a_ptr,  # (T, B, H) log of the decays
    b_ptr,  # (T, B, H) the inputs
    len_ptr,  # (B,) int32 sequence lengths, each <= T
    restart_ptr,  # (T, B) uint8: the state restarts from zero before step t where nonzero (RESTART)
    hs_ptr,  # (T+1, B, H) the states; the initial slot filled by the host, the rest here
    T,  # steps
    BH,  # B * H, the number of scalar recurrences
    H,  # units per batch row
    REVERSE: tl.constexpr,  # walk t = T-1 .. 0
    RESTART: tl.constexpr,  # restarts inside the sequence (kernels/restart.py)
    BLOCK: tl.constexpr,  # units per program
    ACC: tl.constexpr,  # accumulation dtype of the carried h
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < BH
    lens = tl.load(len_ptr + offs // H, mask=mask, other=0)
    start = T if REVERSE else 0
    h = tl.load(hs_ptr + tl.cast(start, tl.int64) * BH + offs, mask=mask, other=0.0).to(ACC)
    for s in range(T):
        t, _, new = step_slots(s, T, REVERSE)
        if RESTART:
            h = tl.where(carried_rows(restart_ptr, t, offs // H, mask, BH // H, RESTART), h, 0.0)
        at = tl.cast(t, tl.int64) * BH + offs
        decay = tl.exp(tl.load(log_a_ptr + at, mask=mask, other=0.0).to(ACC))
        b = tl.load(b_ptr + at, mask=mask, other=0.0).to(ACC)
        h = tl.where(t < lens, decay * h + b, h)
        tl.store(hs_ptr + tl.cast(new, tl.int64) * BH + offs, h.to(hs_ptr.dtype.element_ty), mask=mask)


@triton.jit
def linear_scan_bwd_kernel(
    dhs_ptr,  # (T+1, B, H) dL/d hs: the (masked) outputs' gradients and the final state's
    log_a_ptr,  # (T, B, H) log of the decays
    len_ptr,  # (B,) int32 sequence lengths, each <= T
    restart_ptr,  # (T, B) uint8: the forward restarted the state before step t where nonzero (RESTART)
    hs_ptr,  # (T+1, B, H) the forward's states
    dlog_a_ptr,  # (T, B, H) out: dL/d log a
    db_ptr,  # (T, B, H) out: dL/d b
    dh0_ptr,  # (B, H) accumulation dtype, out: dL/d the initial state
    T,  # steps
    BH,  # B * H, the number of scalar recurrences
    H,  # units per batch row
    REVERSE: tl.constexpr,  # the forward walked t = T-1 .. 0
    RESTART: tl.constexpr,  # restarts inside the sequence (kernels/restart.py)
    BLOCK: tl.constexpr,  # units per program
    ACC: tl.constexpr,  # accumulation dtype of the carried gradient
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < BH
    lens = tl.load(len_ptr + offs // H, mask=mask, other=0)
    g = tl.zeros((BLOCK,), ACC)
    for s in range(T - 1, -1, -1):
        t, prev, new = step_slots(s, T, REVERSE)
        at = tl.cast(t, tl.int64) * BH + offs
        g += tl.load(dhs_ptr + tl.cast(new, tl.int64) * BH + offs, mask=mask, other=0.0).to(ACC)
        decay = tl.exp(tl.load(log_a_ptr + at, mask=mask, other=0.0).to(ACC))
        keep = carried_rows(restart_ptr, t, offs // H, mask, BH // H, RESTART)  # h_{t-1} entered step t
        h_prev = tl.load(hs_ptr + tl.cast(prev, tl.int64) * BH + offs, mask=keep, other=0.0).to(ACC)
        active = t < lens
        tl.store(db_ptr + at, tl.where(active, g, 0.0).to(db_ptr.dtype.element_ty), mask=mask)
        dlog_a = tl.where(active, g * decay * h_prev, 0.0)
        tl.store(dlog_a_ptr + at, dlog_a.to(dlog_a_ptr.dtype.element_ty), mask=mask)
        carried = decay * g
        if RESTART:
            carried = tl.where(keep, carried, 0.0)
        g = tl.where(active, carried, g)
    start = T if REVERSE else 0
    g += tl.load(dhs_ptr + tl.cast(start, tl.int64) * BH + offs, mask=mask, other=0.0).to(ACC)
    tl.store(dh0_ptr + offs, g, mask=mask)
