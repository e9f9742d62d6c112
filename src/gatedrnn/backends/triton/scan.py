r"""The minimal cells on the Triton backend: a layer kernel (:func:`run_layer`) for the
``"linear_scan"`` kernel of :class:`gatedrnn.cells.mingru.MinGRUFamily` and
:class:`gatedrnn.cells.mingru.MinLSTMFamily`.

Per layer and direction:

1. the input projection of all steps as one matmul (the family's ``x W_ih^T + b_ih``, (T, B, G*H))
   and the recurrence's coefficients from it, :math:`(\log a_t, b_t)` (the family's
   ``coefficients``, differentiated by autograd);
2. the scan :math:`h_t = a_t h_{t-1} + b_t` in one launch (:mod:`.kernels.scan`);
3. in the backward pass, the scan backwards in one launch, which gives the gradients of
   :math:`\log a_t`, :math:`b_t` and the initial state.

It computes what the family's step loop and its chunked scan do (the ``mode`` option chooses
between those on the reference loop; here every mode runs this scan). h is carried in float32
(float64 for float64 inputs) inside the kernel and stored in the input's dtype. The ops are
``torch.library`` custom ops (``gatedrnn::triton_linear_scan`` and its backward) with fake
implementations.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from ...cells.family import CellFamily, LayerWeights
from . import launch
from .kernels.scan import linear_scan_bwd_kernel, linear_scan_fwd_kernel
from .launch import accumulation_dtype, accumulation_type, kernel_lengths, layer_outputs, restart_arg
from .op import _no_second_derivative

BLOCK = 128
"""Units (of the B*H independent recurrences) per program: one per thread of :data:`NUM_WARPS` warps."""
NUM_WARPS = 4


def _grid(units: int) -> tuple[int]:
    return (triton.cdiv(units, BLOCK),)


@torch.library.custom_op("gatedrnn::triton_linear_scan", mutates_args=())
def triton_linear_scan(
    log_a: Tensor, b: Tensor, h0: Tensor, lengths: Tensor, reverse: bool, restart: Tensor | None
) -> Tensor:
    """hs (T+1, B, H) of h_t = exp(log_a_t) h_{t-1} + b_t over log_a, b (T, B, H) from h0 (B, H),
    laid out by real time (:mod:`.kernels.scan`); padded steps keep the state, and the rows
    ``restart`` (T, B) bool marks (in walk order, or None) start step t from h_{t-1} = 0."""
    T, B, H = b.shape
    hs = launch._new_buffer((T + 1, B, H), b.dtype, b.device)
    hs[T if reverse else 0] = h0
    acc = accumulation_type(b.dtype)
    linear_scan_fwd_kernel[_grid(B * H)](
        log_a,
        b,
        lengths,
        restart_arg(restart, b),
        hs,
        T,
        B * H,
        H,
        REVERSE=reverse,
        RESTART=restart is not None,
        BLOCK=BLOCK,
        ACC=acc,
        num_warps=NUM_WARPS,
    )
    return hs


@triton_linear_scan.register_fake
def _(log_a, b, h0, lengths, reverse, restart):
    T, B, H = b.shape
    return b.new_empty((T + 1, B, H))


@torch.library.custom_op("gatedrnn::triton_linear_scan_backward", mutates_args=())
def triton_linear_scan_backward(
    dhs: Tensor, log_a: Tensor, hs: Tensor, lengths: Tensor, reverse: bool, restart: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """From the gradient of hs (T+1, B, H), with the forward's ``restart``: (dL/d log_a, dL/d b
    (T, B, H), dL/d h0 (B, H) in the accumulation dtype)."""
    T, B, H = log_a.shape
    dlog_a = launch._new_buffer((T, B, H), log_a.dtype, log_a.device)
    db = launch._new_buffer((T, B, H), hs.dtype, hs.device)
    dh0 = launch._new_buffer((B, H), accumulation_dtype(hs.dtype), hs.device)
    linear_scan_bwd_kernel[_grid(B * H)](
        dhs,
        log_a,
        lengths,
        restart_arg(restart, log_a),
        hs,
        dlog_a,
        db,
        dh0,
        T,
        B * H,
        H,
        REVERSE=reverse,
        RESTART=restart is not None,
        BLOCK=BLOCK,
        ACC=accumulation_type(hs.dtype),
        num_warps=NUM_WARPS,
    )
    return dlog_a, db, dh0


@triton_linear_scan_backward.register_fake
def _(dhs, log_a, hs, lengths, reverse, restart):
    T, B, H = log_a.shape
    return log_a.new_empty((T, B, H)), hs.new_empty((T, B, H)), hs.new_empty((B, H), dtype=accumulation_dtype(hs.dtype))


def _setup_context(ctx, inputs, output) -> None:
    log_a, _, h0, lengths, reverse, restart = inputs
    ctx.reverse, ctx.h0_dtype = reverse, h0.dtype
    ctx.save_for_backward(log_a, output, lengths, restart)


def _backward(ctx, dhs):
    log_a, hs, lengths, restart = ctx.saved_tensors
    dlog_a, db, dh0 = triton_linear_scan_backward(dhs.contiguous(), log_a, hs, lengths, ctx.reverse, restart)
    return dlog_a, db, dh0.to(ctx.h0_dtype), None, None, None


triton_linear_scan.register_autograd(_backward, setup_context=_setup_context)
triton_linear_scan_backward.register_autograd(_no_second_derivative, setup_context=lambda ctx, inputs, output: None)


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
    """One minimal-cell layer and direction over x (T, B, I) from (h0,) (B, H) (contract:
    :mod:`gatedrnn.backends.reference`, ``reset`` included, without regularisation or recording)."""
    T, B = x.shape[:2]
    log_a, b = cfg.coefficients(cfg.input_projection(x, weights))  # (T, B, H) each
    hs = triton_linear_scan(
        log_a.contiguous(),
        b.contiguous(),
        state[0].contiguous(),
        kernel_lengths(lengths, T, B, x.device),
        reverse,
        reset,
    )
    out, h_n = layer_outputs(hs, lengths, reverse)
    return out, (h_n,), None
