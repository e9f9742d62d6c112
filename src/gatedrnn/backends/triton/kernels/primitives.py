"""Building blocks the recurrence kernels share: activations, the grid barrier and tile loads.

Triton 3.6 has no ``tl.tanh``, so tanh and the sigmoid are written from ``exp`` in a form that
cannot overflow: with :math:`e = \\exp(-2|x|) \\in (0, 1]`,
:math:`\\tanh x = \\mathrm{sign}(x) (1 - e) / (1 + e)`, and :math:`\\sigma(x) = (1 + \\tanh(x/2)) / 2`.
"""

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def sigmoid(x):
    return 0.5 + 0.5 * tanh(0.5 * x)


@triton.jit
def grid_sync(bar_ptr, count):
    """Wait until every program of the grid has arrived here ``count`` times in total.

    One integer atomic per program and barrier (no floating-point atomics anywhere). Triton runs
    an atomic on a scalar pointer in one thread of the program (thread 0; the result reaches the
    others through shared memory), so the counter grows by exactly one per program and barrier.
    The sequence is the one of CUDA's cooperative ``grid.sync()``: a CTA barrier (every thread's
    stores happen before thread 0's release), a release add at GPU scope, a spin on acquire reads
    until the counter reaches ``count * num_programs``, and a CTA barrier again (no thread reads
    exchanged data before the acquire). Compiled with Triton 3.9 for sm_90 this is
    ``bar.sync; red.release.gpu.add; { bar.sync; ld.acquire.gpu; ... } while (< target); bar.sync``.
    It needs every program co-resident (grid <= SMs, one program per SM fits) and the counter
    zeroed before the launch; the counter only grows, so no reset between barriers is needed.
    """
    tl.debug_barrier()
    tl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")
    target = count * tl.num_programs(0)
    while tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu") < target:
        pass
    tl.debug_barrier()


@triton.jit
def rows_of(ptr, t, offs_b, B, width):
    """Row pointers (BB, 1) of batch rows ``offs_b`` at time ``t`` of a (., B, width) buffer."""
    return ptr + (t.to(tl.int64) * B + offs_b[:, None]) * width


@triton.jit
def gate_index(n_gates, span, BLK: tl.constexpr, GP: tl.constexpr):
    """Offsets ``g * span + j`` and validity for a (GP * BLK,) vector laid out gate by gate,
    with gates g < n_gates (GP a power of two >= n_gates) and j < BLK."""
    idx = tl.arange(0, GP * BLK)
    g = idx // BLK
    j = idx % BLK
    return g * span + j, g < n_gates, j


@triton.jit
def load_gated_rows_t(
    w_ptr, n_gates, span, row0, n_cols, col0, n_valid_cols, BLK: tl.constexpr, GP: tl.constexpr, KP: tl.constexpr
):
    """The (KP, GP*BLK) tile ``w[g*span + row0 + j, col0 + k]^T`` of a row-major (., n_cols)
    weight: rows row0 .. row0+BLK (< span) of each gate block g < n_gates as columns, weight
    columns col0 + k < n_valid_cols as rows (zeros outside), the right operand of ``x @ tile``."""
    offs, mg, j = gate_index(n_gates, span, BLK, GP)
    mrow = mg & (row0 + j < span)
    k = col0 + tl.arange(0, KP)
    ptrs = w_ptr + (row0 + offs)[None, :].to(tl.int64) * n_cols + k[:, None]
    return tl.load(ptrs, mask=(k < n_valid_cols)[:, None] & mrow[None, :], other=0.0)


@triton.jit
def load_gated_cols(
    w_ptr, n_gates, H, row_base, k0, n_cols, col0, n_valid_cols, BLK: tl.constexpr, GP: tl.constexpr, KP: tl.constexpr
):
    """The (GP*KP, BLK) tile ``w[row_base + g*H + k0 + k, col0 + j]`` for gate blocks g < n_gates
    of H rows, k0 + k < H and col0 + j < n_valid_cols: a column slice of a row-major (., n_cols)
    weight, each gate's rows k0 .. k0+KP padded to KP, the right operand of
    ``load_gated_full(..., k0, ...) @ tile``."""
    offs, mg, k = gate_index(n_gates, H, KP, GP)
    mrow = mg & (k0 + k < H)
    j = tl.arange(0, BLK)
    mcol = col0 + j < n_valid_cols
    ptrs = w_ptr + (row_base + k0 + offs)[:, None].to(tl.int64) * n_cols + (col0 + j)[None, :]
    return tl.load(ptrs, mask=mrow[:, None] & mcol[None, :], other=0.0)


@triton.jit
def load_gated_full(ptr, row_stride, offs_b, mb, n_gates, H, gate0, k0, GP: tl.constexpr, KP: tl.constexpr):
    """Units k0 .. k0+KP of the gate blocks gate0 .. gate0+n_gates of rows ``offs_b`` of a
    (., row_stride) buffer as a (BB, GP*KP) tile laid out like :func:`load_gated_cols`'s rows.
    This is data other programs wrote, so it is read past L1 (``.cg``)."""
    offs, mg, k = gate_index(n_gates, H, KP, GP)
    m = mb[:, None] & (mg & (k0 + k < H))[None, :]
    ptrs = ptr + offs_b[:, None].to(tl.int64) * row_stride + (gate0 * H + k0 + offs)[None, :]
    return tl.load(ptrs, mask=m, other=0.0, cache_modifier=".cg")


@triton.jit
def load_row_chunk(ptr, row_stride, offs_b, mb, k0, n_valid, KP: tl.constexpr):
    """Columns k0 .. k0+KP (< n_valid, zeros past it) of rows ``offs_b`` of a (., row_stride)
    buffer as a (BB, KP) tile: a chunk of a vector other programs wrote, read past L1 (``.cg``)."""
    k = k0 + tl.arange(0, KP)
    ptrs = ptr + offs_b[:, None].to(tl.int64) * row_stride + k[None, :]
    return tl.load(ptrs, mask=mb[:, None] & (k < n_valid)[None, :], other=0.0, cache_modifier=".cg")


@triton.jit
def pick_gate(acc, g: tl.constexpr, BB: tl.constexpr, GP: tl.constexpr, BLK: tl.constexpr):
    """Gate g's (BB, BLK) block of a (BB, GP*BLK) gate-major tile."""
    acc3 = tl.reshape(acc, (BB, GP, BLK))
    gid = tl.arange(0, GP)[None, :, None]
    return tl.sum(tl.where(gid == g, acc3, 0.0), axis=1)


@triton.jit
def step_slots(s, T, REVERSE: tl.constexpr):
    """The s-th step in processing order -> (its time t, the slot of the state before it, the slot
    of the state after it) in a (T+1, ...) state buffer: t, t + 1, t walking t = T-1 .. 0 with
    ``REVERSE``, else s, s, s + 1."""
    if REVERSE:
        t = T - 1 - s
        return t, t + 1, t
    else:
        return s, s, s + 1
