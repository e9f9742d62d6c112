r"""The sLSTM layer on the Triton backend: a layer kernel (:func:`run_layer`) for the family's
``"slstm"`` kernel (:class:`gatedrnn.cells.slstm.SLSTMFamily`).

Per layer and direction:

1. the input projection of all steps as one matmul, the family's ``x W_ih^T + b_ih``, plus
   ``b_hh`` (T, B, 4H);
2. the recurrence in one launch (:mod:`.kernels.slstm`: a program per batch block and head);
3. in the backward pass, the recurrence backwards in one launch, then the recurrent weights'
   gradient as one batched matmul over all steps and heads (deterministic, no atomics):

.. math::
    \frac{\partial L}{\partial R_k} = \sum_t \delta_t[k]^\top h_{t-1}[k]

with :math:`\delta_t[k]` (B, 4D) head k's pre-activation gradients and :math:`h_{t-1}[k]` (B, D)
its units of h (zero where the call's ``reset`` restarted the row at t). The input projection's
gradient is :math:`\delta_t` itself.

c, n and m are carried in float32 (float64 for float64 inputs) inside the kernels; the final c and
n come back in the input's dtype, the final m in float32 (float64), as the family's step gives
them. The ops are ``torch.library`` custom ops (``gatedrnn::triton_slstm`` and its backward) with
fake implementations.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from ...cells.family import CellFamily, LayerWeights
from . import launch
from .kernels.slstm import slstm_bwd_kernel, slstm_fwd_kernel
from .launch import (
    accumulation_dtype,
    accumulation_type,
    dot_precision,
    kernel_lengths,
    layer_outputs,
    restart_arg,
)
from .op import _no_second_derivative, carried_values

BLOCK_B = 16
"""Batch rows per program: the smallest tile ``tl.dot`` takes, for the most programs per head."""
NUM_WARPS = 4
"""Warps per program of both kernels."""
MAX_BLOCK_D = 64
"""The largest unit and column tile of a head's (4D, D) block for 2-byte weights; half of it for
4-byte ones, whose four (BB, BD) accumulators and operand tiles would not fit the registers of four
warps at 64 (the sm_90 build of the float32 forward kernel spills there and does not at 32)."""


def tile_sizes(D: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BD, BK): the unit and column tiles for heads of D units with weights of ``dtype``, powers
    of two from 16 (``tl.dot``'s least) to :data:`MAX_BLOCK_D` (halved for 4-byte dtypes)."""
    limit = MAX_BLOCK_D if dtype.itemsize <= 2 else MAX_BLOCK_D // 2
    block = max(16, min(triton.next_power_of_2(D), limit))
    return block, block


def forward(
    xw: Tensor,
    lengths: Tensor,
    h0: Tensor,
    c0: Tensor,
    n0: Tensor,
    m0: Tensor,
    weight_hh: Tensor,
    exp_forget: bool,
    reverse: bool,
    allow_tf32: bool,
    store_pre: bool,
    restart: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run the forward recurrence over xw (T, B, 4H), restarting the rows ``restart`` (T, B) marks
    (in walk order); returns (hs, cs, ns, ms, pre), see :mod:`.kernels.slstm` (``pre`` empty
    without ``store_pre``)."""
    T, B, H4 = xw.shape
    H = H4 // 4
    heads, _, D = weight_hh.shape
    dev, acc = xw.device, accumulation_dtype(xw.dtype)
    start = T if reverse else 0
    hs = launch._new_buffer((T + 1, B, H), xw.dtype, dev)
    cs, ns, ms = (launch._new_buffer((T + 1, B, H), acc, dev) for _ in range(3))
    for buffer, initial in ((hs, h0), (cs, c0), (ns, n0), (ms, m0)):
        buffer[start] = initial
    pre = launch._new_buffer((T, B, H4), acc, dev) if store_pre else torch.empty(0, dtype=acc, device=dev)
    BD, BK = tile_sizes(D, weight_hh.dtype)
    slstm_fwd_kernel[(triton.cdiv(B, BLOCK_B), heads)](
        xw,
        lengths,
        restart_arg(restart, xw),
        weight_hh,
        hs,
        cs,
        ns,
        ms,
        pre if store_pre else xw,
        T,
        B,
        H,
        D,
        EXP_FORGET=exp_forget,
        REVERSE=reverse,
        STORE_PRE=store_pre,
        RESTART=restart is not None,
        BB=BLOCK_B,
        BD=BD,
        BK=BK,
        ACC=accumulation_type(xw.dtype),
        PREC=dot_precision(xw.dtype, allow_tf32),
        num_warps=NUM_WARPS,
    )
    return hs, cs, ns, ms, pre


def backward(
    dhs: Tensor,
    dc: Tensor,
    dn: Tensor,
    dm: Tensor,
    lengths: Tensor,
    weight_hh: Tensor,
    cs: Tensor,
    ns: Tensor,
    ms: Tensor,
    pre: Tensor,
    exp_forget: bool,
    reverse: bool,
    allow_tf32: bool,
    restart: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run the backward recurrence from the gradients of hs (T+1, B, H) and of the final c, n, m
    (B, H), with the forward's ``restart``; returns (dpre (T, B, 4H), and the gradients of the
    initial h (less ``dhs`` at its slot), c, n, m (B, H)), all in the accumulation dtype."""
    T1, B, H = dhs.shape
    heads, _, D = weight_hh.shape
    dev, acc = dhs.device, cs.dtype
    dpre = launch._new_buffer((T1 - 1, B, 4 * H), acc, dev)
    gh = torch.zeros((B, H), dtype=acc, device=dev)
    gc, gn, gm = (g.to(acc, copy=True).contiguous() for g in (dc, dn, dm))
    BD, BK = tile_sizes(D, weight_hh.dtype)
    slstm_bwd_kernel[(triton.cdiv(B, BLOCK_B), heads)](
        dhs,
        lengths,
        restart_arg(restart, dhs),
        weight_hh,
        cs,
        ns,
        ms,
        pre,
        dpre,
        gh,
        gc,
        gn,
        gm,
        T1 - 1,
        B,
        H,
        D,
        EXP_FORGET=exp_forget,
        REVERSE=reverse,
        RESTART=restart is not None,
        BB=BLOCK_B,
        BD=BD,
        BK=BK,
        ACC=accumulation_type(dhs.dtype),
        PREC=dot_precision(weight_hh.dtype, allow_tf32),
        num_warps=NUM_WARPS,
    )
    return dpre, gh, gc, gn, gm


@torch.library.custom_op("gatedrnn::triton_slstm", mutates_args=())
def triton_slstm(
    xw: Tensor,
    lengths: Tensor,
    h0: Tensor,
    c0: Tensor,
    n0: Tensor,
    m0: Tensor,
    weight_hh: Tensor,
    exp_forget: bool,
    reverse: bool,
    allow_tf32: bool,
    store_pre: bool,
    restart: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The sLSTM recurrence over xw (T, B, 4H) from (h0, c0, n0, m0) (B, H) with the heads' blocks
    ``weight_hh`` (NH, 4D, D) and the restarts ``restart`` (T, B) bool or None: returns (hs
    (T+1, B, H), the final c, n, m (B, H) in the accumulation dtype, then the saved cs, ns, ms and
    pre), see :func:`forward`."""
    hs, cs, ns, ms, pre = forward(
        xw, lengths, h0, c0, n0, m0, weight_hh, exp_forget, reverse, allow_tf32, store_pre, restart
    )
    last = 0 if reverse else -1
    return hs, cs[last].clone(), ns[last].clone(), ms[last].clone(), cs, ns, ms, pre


@triton_slstm.register_fake
def _(xw, lengths, h0, c0, n0, m0, weight_hh, exp_forget, reverse, allow_tf32, store_pre, restart):
    T, B, H4 = xw.shape
    H, acc = H4 // 4, accumulation_dtype(xw.dtype)
    states = [xw.new_empty((B, H), dtype=acc) for _ in range(3)]
    history = [xw.new_empty((T + 1, B, H), dtype=acc) for _ in range(3)]
    pre = xw.new_empty((T, B, H4) if store_pre else (0,), dtype=acc)
    return (xw.new_empty((T + 1, B, H)), *states, *history, pre)


@torch.library.custom_op("gatedrnn::triton_slstm_backward", mutates_args=())
def triton_slstm_backward(
    dhs: Tensor,
    dc: Tensor,
    dn: Tensor,
    dm: Tensor,
    lengths: Tensor,
    weight_hh: Tensor,
    saved: list[Tensor],
    exp_forget: bool,
    reverse: bool,
    allow_tf32: bool,
    restart: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The backward recurrence, see :func:`backward`; ``saved`` is the forward's (cs, ns, ms, pre)."""
    return backward(dhs, dc, dn, dm, lengths, weight_hh, *saved, exp_forget, reverse, allow_tf32, restart)


@triton_slstm_backward.register_fake
def _(dhs, dc, dn, dm, lengths, weight_hh, saved, exp_forget, reverse, allow_tf32, restart):
    T1, B, H = dhs.shape
    acc = saved[0].dtype
    return (dhs.new_empty((T1 - 1, B, 4 * H), dtype=acc), *(dhs.new_empty((B, H), dtype=acc) for _ in range(4)))


def _setup_context(ctx, inputs, output) -> None:
    xw, lengths, h0, c0, n0, m0, weight_hh, exp_forget, reverse, allow_tf32, _, restart = inputs
    hs, _, _, _, cs, ns, ms, pre = output
    ctx.settings = (exp_forget, reverse, allow_tf32)
    ctx.dtypes = (xw.dtype, h0.dtype, c0.dtype, n0.dtype, m0.dtype)
    ctx.mark_non_differentiable(cs, ns, ms, pre)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(lengths, weight_hh, hs, cs, ns, ms, pre, restart)


def _backward(ctx, dhs, dc, dn, dm, *_non_differentiable):
    lengths, weight_hh, hs, cs, ns, ms, pre, restart = ctx.saved_tensors
    exp_forget, reverse, allow_tf32 = ctx.settings
    x_dtype, h_dtype, c_dtype, n_dtype, m_dtype = ctx.dtypes
    final = cs[0]
    dhs = torch.zeros_like(hs) if dhs is None else dhs.contiguous()
    dc, dn, dm = (torch.zeros_like(final) if g is None else g for g in (dc, dn, dm))
    dpre, gh, gc, gn, gm = triton_slstm_backward(
        dhs, dc, dn, dm, lengths, weight_hh, [cs, ns, ms, pre], exp_forget, reverse, allow_tf32, restart
    )
    T, B, H4 = dpre.shape
    heads, _, D = weight_hh.shape
    h_prev = carried_values(hs[1:] if reverse else hs[:-1], restart)  # (T, B, H): h_{t-1} of every step t
    d_weight_hh = torch.einsum(
        "tbgkj,tbkd->kgjd", dpre.view(T, B, 4, heads, D), h_prev.to(dpre.dtype).view(T, B, heads, D)
    ).reshape(heads, 4 * D, D)
    dh0 = gh + dhs[T if reverse else 0]
    # one gradient per input of triton_slstm; none for the lengths, the settings and the restarts
    return (
        dpre.to(x_dtype),
        None,
        dh0.to(h_dtype),
        gc.to(c_dtype),
        gn.to(n_dtype),
        gm.to(m_dtype),
        d_weight_hh.to(weight_hh.dtype),
        None,
        None,
        None,
        None,
        None,
    )


triton_slstm.register_autograd(_backward, setup_context=_setup_context)
triton_slstm_backward.register_autograd(_no_second_derivative, setup_context=lambda ctx, inputs, output: None)


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def run_layer(
    cfg: CellFamily,
    x: Tensor,
    state: tuple[Tensor, ...],
    weights: LayerWeights,
    *,
    reverse: bool = False,
    lengths: Tensor | None = None,
    reset: Tensor | None = None,
) -> tuple[Tensor, tuple[Tensor, ...], None]:
    """One sLSTM layer and direction over x (T, B, I) from the states (h, c, n, m), each (B, H)
    (contract: :mod:`gatedrnn.backends.reference`, ``reset`` included, without regularisation or
    recording)."""
    T, B = x.shape[:2]
    xw = cfg.input_projection(x, weights)  # (T, B, 4H)
    if "bias_hh" in weights:
        xw = xw + weights["bias_hh"]
    h0, c0, n0, m0 = cfg.initial_carry(tuple(state))
    weight_hh = weights["weight_hh"]
    store = _needs_grad(x, *state, *weights.values())
    hs, c_n, n_n, m_n, *_ = triton_slstm(
        xw.contiguous(),
        kernel_lengths(lengths, T, B, x.device),
        h0.contiguous(),
        c0.contiguous(),
        n0.contiguous(),
        m0.contiguous(),
        weight_hh.contiguous(),
        cfg.forget_gate == "exp",
        reverse,
        bool(torch.backends.cuda.matmul.allow_tf32),
        store,
        reset,
    )
    out, h_n = layer_outputs(hs, lengths, reverse)
    return out, (h_n, c_n.to(x.dtype), n_n.to(x.dtype), m_n), None
