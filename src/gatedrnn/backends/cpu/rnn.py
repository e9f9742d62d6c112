"""The Elman RNN's loop: :math:`h_t = \\phi(z_t)`, :math:`z_t = xw_t + [LN](\\tilde h_{t-1} U^T)`.

Backward: :math:`\\delta z_t = \\delta h_t \\odot \\phi'(z_t)` (``1 - h^2`` for tanh, ``h > 0`` for
relu, both read from the saved h), :math:`\\delta h_{t-1} = (\\delta z_t U) \\odot m + ...`
with m the recurrent-dropout mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .function import Plan, RecurrentProduct, blend, split_grad


def forward(plan: Plan, xw: Tensor, initial: tuple[Tensor], w: dict[str, Tensor]):
    """Run the steps from ``initial`` (h0,); returns ((output, h_n), saved)."""
    relu = plan.cfg.nonlinearity == "relu"
    states = plan.state_buffer(initial[0])
    # the step's own h before zoneout/length blending, kept only when blending makes it differ
    acts = xw.new_empty(xw.shape) if plan.keep_h is not None else None
    prod = RecurrentProduct(w["weight_hh"], w.get("rec_gain"), plan.cfg, T=plan.T, B=plan.B)
    hm = xw.new_empty(states.shape[1:]) if plan.recurrent_mask is not None else None
    for t in plan.steps():
        h_prev, target = plan.entering(t, states), states[plan.new(t)]
        z = acts[t] if acts is not None else target
        prod.forward(t, plan.matmul_input(h_prev, hm), xw[t], z)
        z.relu_() if relu else z.tanh_()
        if acts is not None:
            blend(plan.keep_h, t, z, h_prev, target)
    outputs = (plan.outputs(states), states[plan.final].clone())
    return outputs, {"states": states, "acts": acts, **prod.saved("rec")}


def backward(
    plan: Plan, w: dict[str, Tensor], saved: dict[str, Tensor], grads: tuple[Tensor, ...]
) -> dict[str, Tensor]:
    d_out, d_hn = grads
    relu = plan.cfg.nonlinearity == "relu"
    states, acts = saved["states"], saved["acts"]
    new_h = acts if acts is not None else states[plan.new_slice]
    prod = RecurrentProduct.restore(w["weight_hh"], w.get("rec_gain"), plan.cfg, saved, "rec")
    d_out = d_out if plan.active is None else d_out * plan.active
    d_z = torch.empty_like(new_h)
    dh = d_hn
    for t in plan.backward_steps():
        d_new, d_old = split_grad(plan.keep_h, t, dh + d_out[t])
        if relu:
            torch.ops.aten.threshold_backward.grad_input(d_new, new_h[t], 0, grad_input=d_z[t])
        else:
            torch.ops.aten.tanh_backward.grad_input(d_new, new_h[t], grad_input=d_z[t])
        dh = prod.backward(t, d_z[t], plan.recurrent_mask)
        if d_old is not None:
            dh += d_old
        dh = plan.zero_restarted(t, dh)
    d_weight, d_gain = prod.grads(d_z, plan.matmul_inputs(states))
    return {"xw": d_z, "h0": dh, "weight_hh": d_weight, "rec_gain": d_gain}
