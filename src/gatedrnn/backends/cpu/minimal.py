r"""The CPU backend's layer kernel for the minimal cells (:mod:`gatedrnn.cells.mingru`: the ``mingru``
and ``minlstm`` kernels), a ``run_layer`` of its own (contract: :mod:`gatedrnn.backends.reference`).

One layer and direction is one ``torch.autograd.Function`` (:class:`MinimalScan`), whose graph
holds one node however long the sequence. With the input projection :math:`p = x W^T + b`
(T, B, G*H) and the coefficients :math:`a_t, b_t` that the family's math takes pointwise from
:math:`p_t` (:meth:`~gatedrnn.cells.mingru.MinimalFamily.coefficients`):

.. math::
    \begin{array}{ll}
    \text{forward:} & h_t = a_t \odot h_{t-1} + b_t \\
    \text{backward:} & \gamma_t = \partial L / \partial o_t + a_{t+1} \odot \gamma_{t+1}, \quad
        \gamma_{T-1} \mathrel{+}= \partial L / \partial h_n, \\
    & \partial L / \partial a_t = \gamma_t \odot h_{t-1}, \quad \partial L / \partial b_t = \gamma_t
        \;\to\; \partial L / \partial p_t \text{ through the gates}, \\
    & \partial L / \partial h_0 = a_0 \odot \gamma_0, \quad \partial L / \partial x = (\partial L / \partial p) W,
        \quad \partial L / \partial W = (\partial L / \partial p)^T x,
    \end{array}

in the order of the pass (t = T-1 .. 0 when ``reverse``). An inactive step of a packed batch
(``t >= lengths[b]``) has a = 1, b = 0 and outputs zeros. A restart (``reset[t, b]``, in the pass's
order) zeroes h_{t-1} before step t, which makes a_t = 0 there: h_t = b_t, a_t's inputs get no
gradient from it (:math:`\partial L / \partial a_t = \gamma_t h_{t-1} = 0`) and nothing flows to
the steps before (:math:`\gamma_{t-1}` has no :math:`a_t \gamma_t` term). The projection and the two input
gradients are one matmul each over all T·B rows. It saves x, the projection and the outputs
(T, B, H), from which the backward pass reads h_{t-1} (h_0 before the first active step) and
recomputes a and b.

The recurrence runs on one of two paths, both exact (they agree to rounding):

- the compiled pass (``csrc/min_scan.cpp``), float32 and float64: each task of one parallel region
  walks all T steps of its own batch rows and units, the gates' math and the step fused, forward and
  backward; one read of the projection and one write of the output (forward), one read each of
  them and of the incoming gradient and one write of the projection's gradient (backward);
- the chunked scan :func:`gatedrnn.cells.mingru.linear_scan` in torch ops (vectorised over time),
  forward and, on the time-flipped gradients, backward, with the gates' gradient by autograd through
  the family's ``coefficients`` (a pointwise graph, not one through time). Restarts are the scan's
  own (its ``restart`` argument: a = 0 exactly, no log of zero, no NaN).

``mode`` (the family's option): ``"sequential"`` and ``"auto"`` take the compiled pass (measured
faster than the scan at every length, BENCHMARKS.md "Minimal cells on the CPU"), ``"parallel"``
the scan; where the compiled pass is unavailable (not built, switched off with
``GATEDRNN_CPU_COMPILED=0``, another dtype) every mode takes the scan.

Zoneout and recurrent dropout (``noise``) run on the reference loop, step by step, as does gate
recording. The backward pass is first order; where its gradients must be differentiable again
(``create_graph=True``) it replays the layer on the reference loop and differentiates that.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...cells.family import CellFamily, LayerWeights
from ...cells.mingru import linear_scan
from .. import active_steps, reference
from . import compiled
from .function import input_grads, input_pre_activations

KINDS = {"mingru": 0, "minlstm": 1}
"""The compiled pass's number for each kernel name a family gives (``cfg.kernel("cpu")``)."""


def compiled_pass(cfg: CellFamily, dtype: torch.dtype) -> bool:
    """Whether this layer runs the compiled pass (building the compiled ops on first use): not for
    ``mode="parallel"``, and only where the ops run (see :func:`.compiled.loop_for`)."""
    if cfg.mode == "parallel" or dtype not in compiled.DTYPES or compiled.disabled():
        return False
    reason = compiled.unavailable_reason()
    if reason is not None:
        compiled._warn_once(reason)
        return False
    return True


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
    """Run one layer and direction (see the module docstring; zoneout and recurrent dropout never
    reach it: the backend runs them on the reference loop)."""
    T = x.shape[0]
    if lengths is not None:
        lengths = lengths.to(device=x.device, dtype=torch.int64)
        lengths = lengths if bool((lengths < T).any()) else None
    weight, bias = weights["weight_ih"], weights.get("bias_ih")
    out, h_n = MinimalScan.apply(cfg, reverse, lengths, reset, x, weight, bias, state[0])
    return out, (h_n,), None


class MinimalScan(torch.autograd.Function):
    """``apply(cfg, reverse, lengths, reset, x, weight_ih, bias_ih, h0) -> (output (T, B, H), h_n
    (B, H))`` for x (T, B, I), weight_ih (G*H, I), bias_ih (G*H,) or None, h0 (B, H), lengths (B,)
    int64 or None (every sequence T long), reset (T, B) bool in the pass's order or None (no
    restart)."""

    @staticmethod
    def forward(ctx, cfg, reverse, lengths, reset, x, weight, bias, h0):
        xp, _ = input_pre_activations(cfg, x, weight, None, bias)
        fused = compiled_pass(cfg, x.dtype)
        if fused:
            out, h_n = torch.ops.gatedrnn_cpu.min_scan_forward(
                xp, h0, lengths, reset, KINDS[cfg.kernel("cpu")], cfg.activation == "g", reverse
            )
        else:
            out, h_n = _scan_forward(cfg, xp, h0, _active(lengths, x), _restart(reset), reverse)
        ctx.cfg, ctx.reverse, ctx.lengths, ctx.reset, ctx.fused = cfg, reverse, lengths, reset, fused
        # h0 by value for the backward pass (a stateful loop may overwrite it in place), by
        # reference for the replay
        ctx.save_for_backward(x, weight, bias, xp, out, h0.detach().clone())
        ctx.initial = h0
        return out, h_n

    @staticmethod
    def backward(ctx, d_out, d_hn):
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
            return MinimalScan._backward_by_replay(ctx, d_out, d_hn)
        x, weight, bias, xp, out, h0 = ctx.saved_tensors
        cfg, reverse, lengths, reset = ctx.cfg, ctx.reverse, ctx.lengths, ctx.reset
        if ctx.fused:
            d_xp, d_h0 = torch.ops.gatedrnn_cpu.min_scan_backward(
                xp, out, h0, d_out, d_hn, lengths, reset, KINDS[cfg.kernel("cpu")], cfg.activation == "g", reverse
            )
        else:
            active, restart = _active(lengths, x), _restart(reset)
            d_xp, d_h0 = _scan_backward(cfg, xp, out, h0, d_out, d_hn, active, restart, reverse)
        d_x, d_w, _, d_bias = input_grads(cfg, d_xp, x, weight, None, bias, {}, ctx.needs_input_grad[4])
        return None, None, None, None, d_x, d_w, d_bias, d_h0

    @staticmethod
    def _backward_by_replay(ctx, d_out, d_hn):
        """The gradients as a graph: the layer replayed on the reference loop under autograd and
        differentiated with ``create_graph`` (first-order backward passes never come here)."""
        x, weight, bias = ctx.saved_tensors[:3]
        inputs = (x, weight, bias, ctx.initial)
        wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[4 + i]]
        result: list[Tensor | None] = [None] * len(inputs)
        with torch.enable_grad():
            weights = {"weight_ih": weight, **({"bias_ih": bias} if bias is not None else {})}
            out, (h_n,), _ = reference.run_layer(
                ctx.cfg, x, (ctx.initial,), weights, reverse=ctx.reverse, lengths=ctx.lengths, reset=ctx.reset
            )
            found = torch.autograd.grad(
                (out, h_n), [inputs[i] for i in wanted], (d_out, d_hn), create_graph=True, allow_unused=True
            )
        for i, g in zip(wanted, found):
            result[i] = g
        return (None, None, None, None, *result)


def _restart(reset: Tensor | None) -> Tensor | None:
    """(T, B, 1) bool: the restarted steps, or None."""
    return None if reset is None else reset.unsqueeze(-1)


def _active(lengths: Tensor | None, x: Tensor) -> Tensor | None:
    """(T, B, 1) bool: the active steps, or None when all are."""
    return None if lengths is None else active_steps(lengths, x.shape[0])


def _in_pass_order(t: Tensor | None, reverse: bool) -> Tensor | None:
    """A (T, ...) tensor in the order the forward pass visits the steps (its own inverse)."""
    return t if t is None or not reverse else t.flip(0)


def _scan_forward(
    cfg: CellFamily, xp: Tensor, h0: Tensor, active: Tensor | None, restart: Tensor | None, reverse: bool
) -> tuple[Tensor, Tensor]:
    """The recurrence as :func:`linear_scan` (``restart`` (T, B, 1): a = 0 there): (output (T, B, H),
    h_n (B, H))."""
    log_a, b = cfg.coefficients(xp)
    if active is not None:  # inactive steps keep the state: a = 1, b = 0
        log_a, b = log_a.masked_fill(~active, 0.0), b.masked_fill(~active, 0.0)
    log_a, b, restart = (_in_pass_order(v, reverse) for v in (log_a, b, restart))
    h = _in_pass_order(linear_scan(log_a, b, h0, restart=restart), reverse)
    h_n = h[0 if reverse else -1].clone()
    return (h if active is None else h.masked_fill(~active, 0.0)), h_n


def _scan_backward(
    cfg: CellFamily,
    xp: Tensor,
    out: Tensor,
    h0: Tensor,
    d_out: Tensor,
    d_hn: Tensor,
    active: Tensor | None,
    restart: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor]:
    """The backward pass of :func:`_scan_forward` (module docstring): (d xp, d h0), with the
    gradient recurrence as :func:`linear_scan` over the flipped pass."""
    xp = xp.detach().requires_grad_()
    with torch.enable_grad():
        log_a, b = cfg.coefficients(xp)
    on = torch.ones_like(out, dtype=torch.bool) if active is None else active.expand_as(out)
    log_a_pass = _in_pass_order(log_a.detach().masked_fill(~on, 0.0), reverse)
    d_out_pass = _in_pass_order(d_out.masked_fill(~on, 0.0), reverse)
    restart_pass = _in_pass_order(restart, reverse)
    # gamma_k = d_out_k + a_{k+1} gamma_{k+1} in pass order k, gamma_{T-1} = d_out_{T-1} + d_hn
    # (a_{k+1} = 0 where step k+1 restarts)
    next_log_a = torch.cat([log_a_pass[1:], log_a_pass.new_zeros(1, *log_a_pass.shape[1:])])
    next_restart = None if restart is None else torch.cat([restart_pass[1:], torch.zeros_like(restart_pass[:1])])
    flipped_restart = None if next_restart is None else next_restart.flip(0)
    gamma = linear_scan(next_log_a.flip(0), d_out_pass.flip(0), d_hn, restart=flipped_restart).flip(0)
    d_h0 = log_a_pass[0].exp() * gamma[0]
    # h_{k-1} in pass order: the previous output where that step was active, else h0; zero where
    # step k restarts
    on_pass, out_pass = _in_pass_order(on, reverse), _in_pass_order(out, reverse)
    prev_on = torch.cat([torch.zeros_like(on_pass[:1]), on_pass[:-1]])
    prev_out = torch.cat([torch.zeros_like(out_pass[:1]), out_pass[:-1]])
    h_prev = torch.where(prev_on, prev_out, h0)
    if restart is not None:
        d_h0 = d_h0.masked_fill(restart_pass[0], 0.0)
        h_prev = h_prev.masked_fill(restart_pass, 0.0)
    h_prev = _in_pass_order(h_prev, reverse)
    gamma = _in_pass_order(gamma, reverse).masked_fill(~on, 0.0)
    (d_xp,) = torch.autograd.grad((log_a, b), xp, (gamma * h_prev * log_a.detach().exp(), gamma))
    return d_xp, d_h0
